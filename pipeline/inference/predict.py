"""``dhmd-pipeline predict``: sentiment of new clips with a trained checkpoint, and why.

A :class:`Predictor` loads the checkpoint and the extractors ONCE and then predicts many clips:

    clip.mp4 -> extract_clip with the checkpoint's own extraction settings (same text model, ASR,
             face backend, rates)  -> sample_from_clip with the checkpoint's alignment mode
             -> the checkpoint's normaliser -> DHMD -> one result dict per clip

so a clip is seen exactly as the training data was.  A checkpoint whose features this installation
cannot reproduce (trained on an MMSA pickle, or on features of another shape/model) is refused with
:class:`~pipeline.errors.UserError` (exit status 2) naming both specs, never silently mispredicted.

Result of one clip (``--json`` prints a JSON array of these; :func:`format_table` the readable view):

    status        "ok" (a failed clip is {"clip", "status": "failed", "error"})
    clip          the path as given
    transcript    the words the model saw (sidecar, or speech recognition)
    score         regression only: the fused prediction, clipped to [-3, 3]
    probabilities classification only: {class name: p}
    label_7       the CMU-MOSI 7-class name, round-half-to-even of clip(score, -3, 3):
                  highly negative, negative, weakly negative, neutral, weakly positive, positive,
                  highly positive (classification: the predicted class name when the checkpoint
                  has 7 classes, else null)
    label_2       "positive" when score >= 0 else "negative" (MMSA's Has0 convention: 0 counts as
                  positive); classification: the predicted class for 2 classes, else null
    unimodal      {"text", "audio", "video"}: the auxiliary unimodal heads (a score each, clipped
                  to [-3, 3] like score, or {class: p} for classification)
    disagreement  how far the unimodal heads pull different ways (:func:`modality_disagreement`):
                  {"spread": max - min of the three head scores (0..6; classification: the largest
                  total-variation distance between two heads' probabilities, 0..1), "level": "low",
                  "moderate" or "high", "against": the modalities whose head clearly points the
                  other way from the fused prediction (e.g. ["video"] when the face smiles at
                  negative words)}
    edges_homo, edges_hetero
                  3x3 nested lists, order text, audio, video; edges[i][j] is the weight of the
                  distillation edge i -> j: row i = teacher (source), column j = student (target);
                  the diagonal is 0 and the six edges together sum to 1 (one softmax over the
                  edges of the clip; null when the model has no GD-Unit)
    top_atoms     {"homo"|"hetero": {"text"|"audio"|"video": [[atom index, weight], ...]}}: the
                  predict.top_atoms dictionary elements with the largest matching weight
    face_frames   sampled video frames in which a face was found
    frames        sampled video frames (extract.fps of the checkpoint)
    time_s        seconds this clip took, extraction + model (+ its explanation PNG)
    flags         extraction flags (no_face, no_speech, word_times_spread): why a prediction may
                  rest on less than the three modalities

A clip that fails becomes a failed entry ({"clip", "status": "failed", "error", "time_s"}; the
error names the clip, the stage and the cause) and the others are still predicted;
:func:`run_predict` then returns exit status 3.  That covers a clip that cannot be extracted
(corrupt, missing, no audio or no video stream) and any other error (MemoryError included) while
extracting, predicting or writing its explanation PNG.  Problems of the whole run stay fatal: a
checkpoint that cannot be used or an extraction model that cannot load (UserError).
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from pipeline.training.dataset import SENTIMENT_CLASSES, score_class, spec_difference_text
from pipeline.errors import UserError, one_line

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.extract.cache import ClipFeatures
    from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

MODALITIES = ("text", "audio", "video")
SPACES = ("homo", "hetero")
LABELS_7 = SENTIMENT_CLASSES          # highly negative .. highly positive (scores -3 .. 3)
RUNS_DIR = Path("data/runs")
UNPREDICTABLE_FLAGS = {"no_audio": "no audio stream (or it decodes to nothing)", "no_video": "no video stream"}
# what a flag of a predicted clip means for the prediction (the table prints it under the clip)
FLAG_NOTES = {
    "no_face": "no face found in any frame: the video modality saw nothing",
    "no_speech": "no words: the text modality saw nothing",
    "word_times_spread": "word times were estimated (spread over the voiced audio), not measured",
}


# ----------------------------------------------------------------------------------- labels

def label_7(score: float) -> str:
    """CMU-MOSI 7-class name of a score: round-half-to-even of clip(score, -3, 3), -3 .. 3."""
    return score_class(score)


def label_2(score: float) -> str:
    """Binary label of a score with MMSA's Has0 convention: score >= 0 is positive."""
    return "positive" if score >= 0 else "negative"


# ----------------------------------------------------------------------------------- checkpoint

def default_checkpoint(runs_dir: Path = RUNS_DIR) -> Path:
    """The newest ``best.pt`` under ``runs_dir/*/`` or one level deeper, ``runs_dir/*/*/`` (the
    ``seed-<n>`` runs of ``train --seeds``), by modification time.

    Raises UserError (exit 2) when there is none: the user has to train a model first.
    """
    runs_dir = Path(runs_dir)
    found = [p for pattern in ("*/best.pt", "*/*/best.pt") for p in runs_dir.glob(pattern) if p.is_file()]
    if not found:
        raise UserError(f"no checkpoint given and none found under {runs_dir}/*/best.pt or "
                        f"{runs_dir}/*/*/best.pt; train one first (dhmd-pipeline train, or make demo) or "
                        f"pass --checkpoint", exit_code=2)
    return max(found, key=lambda p: (p.stat().st_mtime, str(p)))


def resolve_checkpoint(cfg: "PipelineConfig", checkpoint: Path | None) -> Path:
    """--checkpoint, else predict.checkpoint, else :func:`default_checkpoint`; must be a file."""
    path = Path(checkpoint) if checkpoint else (Path(cfg.predict.checkpoint) if cfg.predict.checkpoint
                                                else default_checkpoint())
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found", exit_code=2)
    return path


def _spec_text(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


def spec_mismatch_error(checkpoint: Path, trained: dict[str, Any], produced: dict[str, Any]) -> UserError:
    """The refusal of a checkpoint whose features this installation does not reproduce (exit 2)."""
    diff = spec_difference_text(trained, produced)
    if trained.get("face_features") != produced.get("face_features"):   # say the likely cause first
        diff = (f"it was trained on face features {trained.get('face_features') or 'of an earlier version'} "
                f"but this installation extracts {produced.get('face_features')}; re-extract the training "
                f"clips and retrain; {diff}")
    return UserError(f"{checkpoint}: the checkpoint's features cannot be reproduced here ({diff}); "
                     f"checkpoint spec {_spec_text(trained)} vs. spec extracted now {_spec_text(produced)}; "
                     f"retrain on features extracted by this installation", exit_code=2)


# ----------------------------------------------------------------------------------- predictor

@dataclass
class StageTimes:
    """Seconds one clip spent in each stage (for bench/predict.py)."""

    extract_s: float = 0.0
    model_s: float = 0.0
    explain_s: float = 0.0
    total_s: float = 0.0
    extract_detail: dict[str, float] = field(default_factory=dict)


class Predictor:
    """A checkpoint and its extractors, loaded once, predicting any number of clips.

    ``device`` ("auto", "cpu", "cuda") is used for both the extractors and the model.  The extraction
    settings (text model, ASR, face backend, fps, audio rate...) and the alignment mode are the
    checkpoint's, so a clip becomes exactly the kind of input the model was trained on.
    """

    def __init__(self, checkpoint: Path, device: str = "auto", top_atoms: int = 5) -> None:
        from pipeline.training.checkpoint import load_for_inference
        from pipeline.extract.clip import resolve_device

        self.checkpoint = Path(checkpoint)
        self.device = resolve_device(device)
        self.top_atoms = int(top_atoms)
        t0 = time.perf_counter()
        self.bundle = load_for_inference(self.checkpoint, self.device)
        self.spec: dict[str, Any] = dict(self.bundle.spec)
        self._refuse_unextractable()
        self.extract_cfg = self.bundle.config.extract
        self.align_mode = self.bundle.config.align.mode
        self.label_scheme: dict[str, Any] = dict(self.bundle.label_scheme or {})
        self.task = self.label_scheme.get("task") or self.bundle.config.model.task
        self.class_names = self._class_names()
        from extractors.errors import ModelLoadError
        from pipeline.extract.clip import ExtractorModels

        try:
            self.models = ExtractorModels.load(self.extract_cfg, self.device)
        except ModelLoadError as e:
            raise UserError(f"{self.checkpoint}: cannot load its extraction models: {e}") from None
        self._check_spec()
        self.last_times: list[StageTimes] = []
        self.last_features: list["ClipFeatures | None"] = []
        log.info("loaded %s and its extractors in %.1f s (device %s)", self.checkpoint,
                 time.perf_counter() - t0, self.device)

    # -------------------------------------------------------------------------------- checks
    def _refuse_unextractable(self) -> None:
        """Refuse (exit 2) a checkpoint whose features were not made by ``extract``."""
        source = self.spec.get("source")
        if source not in (None, "cache"):
            raise UserError(
                f"{self.checkpoint}: trained on features from '{source}' (spec {_spec_text(self.spec)}), "
                f"which predict cannot extract from a video; predict needs a checkpoint trained on "
                f"'dhmd-pipeline extract' output (spec source 'cache')", exit_code=2)

    def _check_spec(self) -> None:
        """Refuse (exit 2) a checkpoint whose features these extractors do not reproduce.

        The extractors were loaded with the checkpoint's own extraction settings; the spec they
        produce (:meth:`pipeline.extract.clip.ExtractorModels.spec`: text model and size, audio and
        video feature names, face backend, rates) is what every new entry will carry.  Every key of
        it must equal the checkpoint's, else the model would see inputs it was not trained on (e.g. a
        checkpoint trained on 768-d BERT features while this installation's text model gives 384).
        """
        produced = {"source": "cache", "align": self.align_mode, **self.models.spec()}
        trained = {k: self.spec.get(k) for k in produced}
        if trained != produced:
            raise spec_mismatch_error(self.checkpoint, self.spec, produced)

    def _class_names(self) -> list[str]:
        names = self.label_scheme.get("class_names") or self.label_scheme.get("classes")
        if self.task == "regression":
            return []
        n = int(self.label_scheme.get("n_classes") or self.bundle.config.model.n_classes)
        return [str(c) for c in names] if names else [str(i) for i in range(n)]

    # -------------------------------------------------------------------------------- stages
    def extract(self, path: Path) -> "ClipFeatures":
        """Features of one clip with the checkpoint's settings (raises ExtractionError).

        ``extract`` keeps a clip without an audio or a video stream (flagged); a prediction from it
        would rest on one or two modalities only, so predict refuses it as a failed clip.  A clip
        without a face or without words is predicted (its ``flags`` say so).
        """
        from extractors.errors import ExtractionError
        from pipeline.extract.clip import extract_clip

        clip = extract_clip(Path(path), self.extract_cfg, self.models, clip_id=Path(path).stem)
        for flag, cause in UNPREDICTABLE_FLAGS.items():
            if flag in clip.flags:
                raise ExtractionError(f"{path}: {cause}; predict needs speech and video")
        return clip

    def predict_features(self, clip: "ClipFeatures", name: str | None = None) -> dict[str, Any]:
        """The result dict (without time_s) of already extracted features."""
        import torch

        from pipeline.training.dataset import collate, sample_from_clip

        sample = self.bundle.normalizer.apply(sample_from_clip(clip, self.align_mode))
        batch = collate([sample])
        model = self.bundle.model
        text = batch["text_bert"] if model.config.finetune_bert else batch["text"]
        with torch.inference_mode():
            out = model(text.to(self.device), batch["audio"].to(self.device), batch["video"].to(self.device),
                        text_mask=batch["text_mask"].to(self.device),
                        audio_mask=batch["audio_mask"].to(self.device),
                        video_mask=batch["video_mask"].to(self.device))
        return self._result(clip, name or clip.source, out)

    def _head(self, value: Any) -> Any:
        """One prediction (row 0 of a head) as a score or a {class: p} dict."""
        if self.task == "regression":
            return float(np.clip(float(value[0]), -3.0, 3.0))
        probs = value[0].float().softmax(-1).cpu().numpy()
        return {c: float(p) for c, p in zip(self.class_names, probs)}

    def _top_atoms(self, attn: Any) -> dict[str, list[list[float]]] | None:
        if attn is None:
            return None
        a = attn[0].float().cpu()
        k = min(self.top_atoms, a.shape[-1])
        weights, index = a.topk(k, dim=-1)
        return {m: [[int(i), float(w)] for i, w in zip(index[r].tolist(), weights[r].tolist())]
                for r, m in enumerate(MODALITIES)}

    def _result(self, clip: "ClipFeatures", name: str, out: Any) -> dict[str, Any]:
        res: dict[str, Any] = {"clip": name, "status": "ok", "transcript": clip.transcript}
        pred = self._head(out.prediction)
        if self.task == "regression":
            res.update(score=pred, label_7=label_7(pred), label_2=label_2(pred))
        else:
            best = max(pred, key=pred.get)
            res.update(probabilities=pred, label_7=best if len(pred) == 7 else None,
                       label_2=best if len(pred) == 2 else None)
        res["unimodal"] = {m: self._head(out.unimodal[m]) for m in MODALITIES}
        res["disagreement"] = modality_disagreement(res["unimodal"], res.get("score", res.get("probabilities")))
        for space in SPACES:
            edges = getattr(out, f"edges_{space}")
            res[f"edges_{space}"] = None if edges is None else edges[0].float().cpu().tolist()
        res["top_atoms"] = {s: self._top_atoms(getattr(out, f"dict_attn_{s}")) for s in SPACES}
        mask = np.asarray(clip.face_mask, dtype=bool)
        res["face_frames"] = int(mask.sum())
        res["frames"] = int(mask.size)
        res["flags"] = list(clip.flags)
        return res

    # -------------------------------------------------------------------------------- many clips
    def predict_one(self, path: Path, explain_dir: Path | None = None) -> dict[str, Any]:
        """Extract, predict (and explain) one clip; a failing clip becomes a failed entry.

        Any error of this clip (ExtractionError, MemoryError or any other Exception while
        extracting, predicting or writing its PNG) becomes ``{"clip", "status": "failed", "error",
        "time_s"}``.  A spec mismatch or an extraction model that cannot load fails the whole run
        (UserError), as does an interrupt.
        """
        from extractors.errors import ExtractionError, ModelLoadError

        times = StageTimes()
        t0 = time.perf_counter()
        clip: "ClipFeatures | None" = None
        stage = "extraction"
        try:
            clip = self.extract(path)
            t1 = time.perf_counter()
            times.extract_s = t1 - t0
            times.extract_detail = dict(clip.meta.get("timings_s", {}) or {})
            stage = "prediction"
            result = self.predict_features(clip, name=str(path))
            t2 = time.perf_counter()
            times.model_s = t2 - t1
            if explain_dir is not None:
                from pipeline.inference.explain import explanation_path, write_explanation

                stage = "explanation"
                png = write_explanation(explanation_path(explain_dir, Path(path).name), result, clip)
                log.info("wrote %s", png)
            times.explain_s = time.perf_counter() - t2
        except UserError:
            raise
        except ModelLoadError as e:
            raise UserError(f"cannot load an extraction model of {self.checkpoint}: {e}") from None
        except ExtractionError as e:
            return self._failed(path, str(e), times, t0)
        except (MemoryError, Exception) as e:   # noqa: BLE001 - one clip's failure must not stop the others
            log.debug("%s: %s failed", path, stage, exc_info=True)
            return self._failed(path, f"{path}: {stage} failed: {one_line(e)}", times, t0)
        times.total_s = time.perf_counter() - t0
        result["time_s"] = round(times.total_s, 3)
        self.last_times.append(times)
        self.last_features.append(clip)
        return result

    def _failed(self, path: Path, error: str, times: StageTimes, t0: float) -> dict[str, Any]:
        """The failed entry of one clip (and its place in last_times / last_features)."""
        log.warning("%s", error)
        times.total_s = time.perf_counter() - t0
        self.last_times.append(times)
        self.last_features.append(None)
        return {"clip": str(path), "status": "failed", "error": error, "time_s": round(times.total_s, 3)}

    def predict(self, paths: Sequence[Path], explain_dir: Path | None = None,
                progress: bool | None = None) -> list[dict[str, Any]]:
        """One result dict per path, in order (see the module docstring for the fields)."""
        from tqdm import tqdm

        self.last_times, self.last_features = [], []
        if explain_dir is not None:
            _unique_explain_names(paths)
        disable = (not sys.stderr.isatty()) if progress is None else not progress
        return [self.predict_one(Path(p), explain_dir)
                for p in tqdm(list(paths), desc="predict", unit="clip", disable=disable, file=sys.stderr)]


def _unique_explain_names(paths: Sequence[Path]) -> None:
    """Two clips with the same file stem would overwrite each other's PNG: refuse up front."""
    seen: dict[str, Path] = {}
    for p in paths:
        stem = Path(p).stem
        if stem in seen and Path(seen[stem]) != Path(p):
            raise UserError(f"--explain: {seen[stem]} and {p} would both write {stem}.png; "
                            f"predict them in separate runs", exit_code=2)
        seen[stem] = Path(p)


# ----------------------------------------------------------------------------------- output

def _fmt_head(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        best = max(value, key=value.get)
        return f"{best}:{value[best]:.2f}"
    return f"{value:+.2f}"


def _strongest_edges(edges: list[list[float]] | None, n: int = 2) -> str:
    if edges is None:
        return "-"
    pairs = [(edges[i][j], MODALITIES[i], MODALITIES[j]) for i in range(3) for j in range(3) if i != j]
    pairs.sort(reverse=True)
    return ", ".join(f"{a}->{b} {w:.2f}" for w, a, b in pairs[:n])


# Thresholds of modality_disagreement's "level": spread below the first is low, below the second
# moderate, else high (regression: score units on the -3..3 scale; classification: TV distance).
DISAGREEMENT_LEVELS = {"regression": (1.0, 2.0), "classification": (0.25, 0.5)}
CLEAR_SCORE = 0.5   # a regression head "points" positive/negative only beyond +-CLEAR_SCORE


def modality_disagreement(unimodal: dict[str, Any], fused: Any) -> dict[str, Any]:
    """How far the unimodal heads of one clip disagree, and which ones go against the fused result.

    Regression (float scores): ``spread`` is the largest minus the smallest head score; a head is
    ``against`` the fusion when it is beyond +-:data:`CLEAR_SCORE` on the other side of 0 from the
    fused score (a fused score within +-CLEAR_SCORE has no side, so nothing is against it).
    Classification ({class: p}): ``spread`` is the largest total-variation distance between two
    heads; a head is ``against`` when its most likely class differs from the fused one.  ``level``
    reads the spread with :data:`DISAGREEMENT_LEVELS`; "high" also whenever a head is against the
    fusion, so a user sees at once when the face and the words pull different ways.
    """
    heads = [m for m in MODALITIES if unimodal.get(m) is not None]
    if not heads:
        return {"spread": None, "level": None, "against": []}
    if isinstance(unimodal[heads[0]], dict):
        kind = "classification"
        probs = {m: np.array([unimodal[m][c] for c in sorted(unimodal[m])]) for m in heads}
        spread = max((0.5 * float(np.abs(probs[a] - probs[b]).sum()) for a in heads for b in heads), default=0.0)
        top = max(fused, key=fused.get) if isinstance(fused, dict) else None
        against = [m for m in heads if top is not None and max(unimodal[m], key=unimodal[m].get) != top]
    else:
        kind = "regression"
        scores = [float(unimodal[m]) for m in heads]
        spread = max(scores) - min(scores)
        side = 0 if fused is None or abs(float(fused)) <= CLEAR_SCORE else int(np.sign(float(fused)))
        against = [m for m in heads if side and float(unimodal[m]) * side < -CLEAR_SCORE]
    low, high = DISAGREEMENT_LEVELS[kind]
    level = "low" if spread < low else "moderate" if spread < high else "high"
    if against:
        level = "high"
    return {"spread": round(float(spread), 3), "level": level, "against": against}


def _fmt_disagreement(d: dict[str, Any] | None) -> str:
    if not d or d.get("level") is None:
        return "-"
    text = f"{d['level']} {d['spread']:.2f}"
    return text + (" (" + ",".join(d["against"]) + " against)" if d.get("against") else "")


def format_table(results: list[dict[str, Any]]) -> str:
    """The results as a plain-text table, then a few indented lines per clip (transcript, flags, edges).

    The ``flags`` column and a ``caution`` line per flag (:data:`FLAG_NOTES`) show when a prediction
    rests on less than the three modalities (no face, no words, estimated word times); the
    ``disagreement`` column (level, spread, the heads against the fusion) when the modalities pull
    different ways.
    """
    header = ["clip", "prediction", "label_7", "label_2", "text", "audio", "video", "disagreement", "face",
              "flags", "time_s"]
    rows = []
    for r in results:
        if r.get("status") == "failed":
            rows.append([Path(r["clip"]).name, "FAILED", "-", "-", "-", "-", "-", "-", "-", "-",
                         f"{r.get('time_s', 0):.2f}"])
            continue
        if r.get("score") is not None:
            pred = f"{r['score']:+.2f}"
        else:
            pred = _fmt_head(r.get("probabilities"))
        uni = r.get("unimodal", {})
        rows.append([Path(r["clip"]).name, pred, str(r.get("label_7") or "-"), str(r.get("label_2") or "-"),
                     _fmt_head(uni.get("text")), _fmt_head(uni.get("audio")), _fmt_head(uni.get("video")),
                     _fmt_disagreement(r.get("disagreement")), f"{r['face_frames']}/{r['frames']}", ",".join(r.get("flags") or []) or "-",
                     f"{r['time_s']:.2f}"])
    widths = [max(len(h), *(len(row[k]) for row in rows)) if rows else len(h) for k, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    details = []
    for r in results:
        details.append(f"{r['clip']}:")
        if r.get("status") == "failed":
            details.append(f"    error: {r['error']}")
            continue
        details.append(f"    transcript: {r.get('transcript') or '(none)'}")
        for flag in r.get("flags") or []:
            details.append(f"    caution: {flag} - {FLAG_NOTES.get(flag, 'see the extraction flags')}")
        details.append(f"    strongest edges (teacher->student): homo {_strongest_edges(r.get('edges_homo'))}; "
                       f"hetero {_strongest_edges(r.get('edges_hetero'))}")
        for space in SPACES:
            atoms = (r.get("top_atoms") or {}).get(space)
            if atoms:
                text = "; ".join(f"{m} " + " ".join(f"#{int(i)}({w:.2f})" for i, w in atoms[m][:3])
                                 for m in MODALITIES)
                details.append(f"    top atoms {space}: {text}")
    return "\n".join(lines + [""] + details)


def _json_safe(obj: Any) -> Any:
    """NaN/inf cannot be written as strict JSON: they become null (none expected from a sane model)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def to_json(results: list[dict[str, Any]]) -> str:
    """The JSON array that ``predict --json`` prints."""
    return json.dumps(_json_safe(results), indent=2, allow_nan=False)


def run_predict(cfg: "PipelineConfig", clips: list[Path], checkpoint: Path | None = None,
                as_json: bool = False, explain_dir: Path | None = None) -> int:
    """The CLI entry: predict ``clips``, print JSON or a table; 3 when any clip failed, else 0."""
    import click

    path = resolve_checkpoint(cfg, checkpoint)
    log.info("checkpoint %s", path)
    predictor = Predictor(path, device=cfg.extract.device, top_atoms=cfg.predict.top_atoms)
    results = predictor.predict([Path(c) for c in clips], explain_dir=explain_dir)
    click.echo(to_json(results) if as_json else format_table(results))
    failed = [r for r in results if r.get("status") == "failed"]
    if failed:
        log.warning("%d of %d clips failed", len(failed), len(results))
        return 3
    return 0
