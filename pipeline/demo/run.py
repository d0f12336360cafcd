"""``dhmd-pipeline demo``: the whole pipeline, offline, on a corpus it makes itself.

1. corpus   render the sentences of :mod:`pipeline.demo.corpus` (espeak-ng voices over real faces whose
            expression agrees with the words only partly) into ``WORKDIR/corpus`` with its
            ``labels.csv``; clips already there
            with the same settings are kept.  Test clips carry no transcript in the labels, so
            their words come from speech recognition, as for any new clip.  A shrunk demo
            (``--sentences N``) uses ``WORKDIR/corpus-N`` and ``WORKDIR/cache-N`` instead.
2. extract  ``WORKDIR/corpus`` -> ``WORKDIR/cache`` (the extraction cache makes a rerun cheap).
3. train    a small DHMD sized for a CPU (``[demo]`` settings, regression on the -3..3 scores,
            with modality dropout ``demo.modality_dropout``)
            into ``demo.runs_dir`` (``data/runs/demo``), trained afresh on every run.  That folder
            is the demo's own: it is made with a marker file (``.dhmd-demo-run``), and each run
            deletes only the files a demo run writes there; a folder the demo did not make that holds
            anything else is refused before any work starts.
4. evaluate the best checkpoint on the test split: held-out sentences in held-out voices.
5. predict  one held-out test clip end to end (extraction with speech recognition, model,
            explanation) and print its prediction, then the sign accuracy of the model on every
            test clip (features from the cache), overall, per voice, per unimodal head and per face
            condition (agree / neutral / contradict); everything measured goes to
            ``RUNS_DIR/demo_summary.json``.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from pipeline.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import DemoConfig, PipelineConfig
    from pipeline.demo.corpus import ClipSpec

log = logging.getLogger(__name__)

RUN_MARKER = ".dhmd-demo-run"   # written in demo.runs_dir when the demo makes (or adopts) it
# what one demo run writes in demo.runs_dir (train, evaluate, the summary); only these are deleted
RUN_FILES = ("best.pt", "last.pt", "config.json", "metrics.jsonl", "results.json", "loss_curves.png", "edges.png",
             "demo_summary.json")
DEMO_ONLY = "demo_summary.json"  # no other command writes it: marks a run folder of an older demo (no marker)
EXPLAIN_DIR = "explain"         # predict --explain PNGs of the demo run (*.png only)


def demo_overrides(cfg: "PipelineConfig", epochs: int) -> dict[str, Any]:
    """The settings the demo trains and extracts with, as dotted ``with_overrides`` keys.

    A small DHMD (``demo.hidden_dim``, ``demo.num_layers``...) so that the demo trains on two CPU cores
    in a few minutes, always a regression on the corpus' -3..3 scores (whatever ``model.task`` says),
    faces read at the clips' own frame rate ``demo.fps`` and taken relative to each clip's median face
    (``demo.clip_baseline``), text features from ``demo.text_layer``, speech heard by
    ``demo.asr_model`` with ``demo.asr_ensemble``, and (``demo.finetune_bert``) the text model that extracted the features fine-tuned
    inside the model at ``demo.bert_lr``; everything else is the user's configuration.
    """
    d = cfg.demo
    return {
        "model.task": "regression",
        "extract.workers": d.workers,
        "extract.fps": d.fps,
        "extract.text.layer": d.text_layer,
        "extract.asr.model": d.asr_model,
        "extract.asr.ensemble": list(d.asr_ensemble),
        "model.hidden_dim": d.hidden_dim,
        "model.num_heads": d.num_heads,
        "model.num_layers": d.num_layers,
        "model.dictionary_size": d.dictionary_size,
        "train.batch_size": d.batch_size,
        "train.lr": d.lr,
        "train.epochs": epochs,
        "train.val_metric": d.val_metric,
        "train.modality_dropout": d.modality_dropout,
        "train.clip_baseline": list(d.clip_baseline),
        "train.clip_baseline_features": {k: list(v) for k, v in d.clip_baseline_features.items()},
        "train.modality_swap": d.modality_swap,
        "train.ema_decay": d.ema_decay,
        "model.finetune_bert": d.finetune_bert,
        "model.bert_model": cfg.extract.text.model,
        "train.bert_lr": d.bert_lr,
    }


def plan_demo_corpus(demo: "DemoConfig", n_sentences: int | None = None) -> tuple[list, list, list]:
    """(corpus sentences, training-only sentences, clip specs) of a demo of ``n_sentences`` corpus
    sentences (None: all) with the ``[demo]`` settings; ValueError when n is too small."""
    from pipeline.demo.corpus import plan_corpus, select_sentences, training_sentences

    chosen = select_sentences(n_sentences)
    extra = training_sentences(n_sentences) if demo.train_sentences else []
    specs = plan_corpus(chosen, voices_per_sentence=demo.voices_per_sentence, fps=demo.fps, extra=extra)
    return chosen, extra, specs


@contextmanager
def _stage(timings: dict[str, float], name: str) -> Iterator[None]:
    """Time one stage and announce it (stderr, so stdout keeps the results)."""
    print(f"\n== {name} ==", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - t0, 1)
        log.info("%s took %.1f s", name, timings[name])


def _echo(text: str = "") -> None:
    print(text, flush=True)


def _run_dir_entries(path: Path) -> tuple[list[Path], list[Path]]:
    """``(files a demo run writes, anything else)`` directly in ``path`` (the marker counts as the
    former; the explain folder's PNGs too, the folder itself is 'else' when it holds other files)."""
    ours, other = [], []
    for entry in sorted(path.iterdir()):
        if entry.name == RUN_MARKER or (entry.is_file() and entry.name in RUN_FILES):
            ours.append(entry)
        elif entry.name == EXPLAIN_DIR and entry.is_dir() and not entry.is_symlink():
            pngs = [f for f in entry.iterdir() if f.suffix == ".png" and f.is_file() and not f.is_symlink()]
            ours += pngs
            if len(pngs) != len(list(entry.iterdir())):
                other.append(entry)
        elif entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
            ours.append(entry)   # left by an interrupted atomic write
        else:
            other.append(entry)
    return ours, other


def check_run_dir(path: Path) -> None:
    """Refuse (UserError, exit 2) a ``demo.runs_dir`` the demo must not write into.

    Accepted: a missing or empty folder, a folder with the demo's marker (:data:`RUN_MARKER`), or a
    folder left by an older demo (no marker) that holds its ``demo_summary.json`` and nothing but demo
    run files.  Anything else (a file, a training run of ``train``, a folder with other files) is
    someone else's: refused, untouched.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        raise UserError(f"{path}: demo.runs_dir is not a folder the demo made; choose another demo.runs_dir "
                        f"(e.g. --set demo.runs_dir=data/runs/demo)", exit_code=2)
    if (path / RUN_MARKER).is_file():
        return
    ours, other = _run_dir_entries(path)
    if not ours and not other:
        return
    if other or not (path / DEMO_ONLY).is_file():
        names = ", ".join(p.name for p in (other or ours)[:5])
        raise UserError(f"{path}: demo.runs_dir holds files the demo did not write ({names}); the demo only "
                        f"replaces its own run folder (marked {RUN_MARKER}): choose another demo.runs_dir, "
                        f"e.g. --set demo.runs_dir=data/runs/demo", exit_code=2)


def clean_run_dir(path: Path) -> None:
    """Make ``path`` ready for a fresh demo training run: create it (with :data:`RUN_MARKER`), or
    delete the files an earlier demo run wrote there (:data:`RUN_FILES`, ``explain/*.png``).

    Nothing else is ever deleted: a folder that :func:`check_run_dir` refuses raises UserError
    (exit 2) before anything is touched; other files in a marked folder are left where they are.
    """
    path = Path(path)
    check_run_dir(path)
    path.mkdir(parents=True, exist_ok=True)
    ours, other = _run_dir_entries(path)
    for f in ours:
        if f.name != RUN_MARKER:
            f.unlink()
    explain = path / EXPLAIN_DIR
    if explain.is_dir() and not explain.is_symlink() and not any(explain.iterdir()):
        explain.rmdir()
    if other:
        log.warning("%s: left %s in the demo's run folder untouched", path, ", ".join(p.name for p in other[:5]))
    (path / RUN_MARKER).write_text("made by dhmd-pipeline demo; the demo replaces its run files here on "
                                   "every run\n", encoding="utf-8")


def corpus_summary(specs: list["ClipSpec"]) -> dict[str, Any]:
    """Counts of the corpus: sentences and clips per split, and the voices of each split."""
    out: dict[str, Any] = {}
    for split in ("train", "valid", "test"):
        sel = [s for s in specs if s.split == split]
        out[split] = {"sentences": len({s.video_id for s in sel}), "clips": len(sel),
                      "voices": sorted({s.voice for s in sel}),
                      "positive": sum(s.score > 0 for s in sel), "negative": sum(s.score < 0 for s in sel),
                      "neutral": sum(s.score == 0 for s in sel)}
    return out


def cached_entries(cache_dir: Path, clip_ids: set[str]) -> list[tuple[dict[str, Any], Path]]:
    """``(manifest record, entry path)`` of the usable cached clips among ``clip_ids``."""
    from pipeline.extract.cache import read_manifest

    out = []
    for rec in read_manifest(cache_dir):
        if rec.get("clip_id") in clip_ids and rec.get("status") in ("ok", "cached") and rec.get("entry"):
            out.append((rec, Path(cache_dir) / rec["entry"]))
    return sorted(out, key=lambda x: x[0]["clip_id"])


def sign_accuracy(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Sign agreement of predictions with labels on the clips whose label is not 0 (MMSA's Non0)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, float)
    keep = labels != 0
    n = int(keep.sum())
    correct = int(((scores[keep] > 0) == (labels[keep] > 0)).sum())
    return {"accuracy": round(correct / n, 4) if n else None, "correct": correct, "clips": n,
            "mae": round(float(np.abs(np.clip(scores, -3, 3) - labels).mean()), 4) if scores.size else None}


def held_out_predictions(predictor: Any, cache_dir: Path, specs: list["ClipSpec"]) -> list[dict[str, Any]]:
    """The model's score for every test clip, from the clip's cached features.

    ``predictor`` is a :class:`pipeline.inference.predict.Predictor`; its ``predict_features`` is the same path
    as ``predict`` takes after extraction, so nothing is extracted twice.  Each row also carries the
    scores of the unimodal heads, to show what each modality learnt.
    """
    from pipeline.extract.cache import load_entry

    test = {s.clip_id: s for s in specs if s.split == "test"}
    entries = cached_entries(cache_dir, set(test))
    if len(entries) < len(test):
        log.warning("%d of %d test clips have no cache entry", len(test) - len(entries), len(test))
    rows = []
    for rec, path in entries:
        res = predictor.predict_features(load_entry(path), name=rec["clip_id"])
        spec = test[rec["clip_id"]]
        rows.append({"clip_id": spec.clip_id, "voice": spec.voice, "identity": spec.identity,
                     "condition": spec.condition, "expression": spec.expression, "label": spec.score,
                     "score": res["score"], "text": spec.text, "transcript": res["transcript"],
                     "unimodal": res["unimodal"], "disagreement": res["disagreement"]})
    return rows


def held_out_figures(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The demo's held-out figures of :func:`held_out_predictions` rows, each a :func:`sign_accuracy`:
    ``fused`` and each head alone (``text``, ``audio``, ``video``), then the fused prediction per face
    condition (``agree``, ``neutral``, ``contradict``)."""
    labels = np.array([r["label"] for r in rows])
    out = {"fused": sign_accuracy(np.array([r["score"] for r in rows]), labels)}
    out.update({m: sign_accuracy(np.array([r["unimodal"][m] for r in rows]), labels)
                for m in ("text", "audio", "video")})
    out.update({c: v["fused"] for c, v in accuracy_by_condition(rows).items()})
    return out


def held_out_word_error_rate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How well speech recognition heard the held-out clips: the word error rate of their transcripts
    against the sentences spoken, overall and per voice (``errors`` / ``words`` summed over clips)."""
    from extractors.words import word_errors

    def rate(sel: list[dict[str, Any]]) -> dict[str, Any]:
        counts = [word_errors(r["text"], r["transcript"] or "") for r in sel]
        errors, words = sum(c[0] for c in counts), sum(c[1] for c in counts)
        return {"wer": round(errors / words, 4) if words else None, "errors": int(errors), "words": int(words)}

    return {**rate(rows), "per_voice": {v: rate([r for r in rows if r["voice"] == v])
                                        for v in sorted({r["voice"] for r in rows})}}


def accuracy_by_condition(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Sign accuracy of the fused prediction and of each unimodal head, per face condition of the
    held-out clips (agree / neutral / contradict: the face against the words)."""
    from pipeline.demo.corpus import TEST_CONDITIONS

    out: dict[str, dict[str, Any]] = {}
    for cond in TEST_CONDITIONS:
        sel = [r for r in rows if r.get("condition") == cond]
        labels = np.array([r["label"] for r in sel])
        out[cond] = {"fused": sign_accuracy(np.array([r["score"] for r in sel]), labels),
                     **{m: sign_accuracy(np.array([r["unimodal"][m] for r in sel]), labels)
                        for m in ("text", "audio", "video")}}
    return out


def run_demo(cfg: "PipelineConfig", workdir: Path | None = None, sentences: int | None = None,
             epochs: int | None = None) -> int:
    """The ``demo`` command (see the module docstring); returns the exit status."""
    from pipeline.files import atomic_write_text
    from pipeline.config import with_overrides
    from pipeline.demo.corpus import SENTENCES, build_corpus, corpus_statistics

    t_start = time.perf_counter()
    workdir = Path(workdir) if workdir is not None else Path(cfg.demo.workdir)
    n_sentences = sentences if sentences is not None else (cfg.demo.sentences or None)
    epochs = int(epochs or cfg.demo.epochs)
    runs_dir = Path(cfg.demo.runs_dir)
    # a shrunk demo gets its own folders, so it never disturbs the full corpus and its cache
    suffix = "" if n_sentences is None or n_sentences >= len(SENTENCES) else f"-{n_sentences}"
    corpus_dir, cache_dir = workdir / f"corpus{suffix}", workdir / f"cache{suffix}"
    overrides = demo_overrides(cfg, epochs)
    dcfg = with_overrides(cfg, overrides)
    timings: dict[str, float] = {}

    check_run_dir(runs_dir)   # before any work: a folder that is not the demo's is refused untouched
    try:
        chosen, extra, specs = plan_demo_corpus(cfg.demo, n_sentences)
    except ValueError as e:
        given = f"--sentences {n_sentences}" if sentences is not None else f"demo.sentences = {n_sentences}"
        raise UserError(f"{given}: {e}", exit_code=2) from None
    summary_corpus = corpus_summary(specs)
    corpus_stats = corpus_statistics(specs)
    _echo(f"dhmd-pipeline demo: {len(chosen)} of {len(SENTENCES)} sentences"
          f"{f' and {len(extra)} training-only ones' if extra else ''}, {len(specs)} clips in {workdir}")
    for split, c in summary_corpus.items():
        _echo(f"  {split:5s}: {c['sentences']:3d} sentences, {c['clips']:3d} clips "
              f"(+{c['positive']} / -{c['negative']} / 0 {c['neutral']}), voices {', '.join(c['voices'])}")
    _echo(f"  faces: train {', '.join(corpus_stats['identities']['train'])}; test "
          f"{', '.join(corpus_stats['identities']['test'])} (never in training); face and prosody correlate "
          f"{corpus_stats.get('expression_score_corr')} and {corpus_stats.get('prosody_score_corr')} with the score")
    _echo("  demo settings: " + ", ".join(f"{k}={v}" for k, v in overrides.items()))

    with _stage(timings, "corpus"):
        labels = build_corpus(corpus_dir, specs, workers=cfg.demo.workers)

    with _stage(timings, "extract"):
        from pipeline.extract.batch import run_extract

        code = run_extract(dcfg, videos_dir=corpus_dir, out=cache_dir, labels=labels, workers=cfg.demo.workers)
        if code != 0:
            raise UserError(f"demo: extraction of {corpus_dir} failed for some clips (exit status {code}); "
                            f"see {cache_dir / 'manifest.jsonl'}", exit_code=1)

    with _stage(timings, "train"):
        from pipeline.training.train import run_train

        clean_run_dir(runs_dir)
        code = run_train(dcfg, data=cache_dir, out=runs_dir, preset=None, resume=None, seeds=None)
        if code != 0:
            return code
        best = runs_dir / "best.pt"
        if not best.is_file():
            raise UserError(f"demo: training finished without {best}", exit_code=1)

    with _stage(timings, "evaluate"):
        from pipeline.training.evaluate import run_evaluate

        _echo("\nTest metrics (held-out sentences, held-out voices):")
        code = run_evaluate(dcfg, checkpoint=best, data=cache_dir, split="test", as_json=False)
        if code != 0:
            return code

    with _stage(timings, "predict"):
        from pipeline.inference.predict import Predictor, format_table

        test_specs = [s for s in specs if s.split == "test"]
        # the most strongly labelled test clip: a clear example to look at
        example = max(test_specs, key=lambda s: (abs(s.score), s.clip_id))
        predictor = Predictor(best, device=dcfg.extract.device, top_atoms=dcfg.predict.top_atoms)
        results = predictor.predict([corpus_dir / f"{example.clip_id}.mp4"], explain_dir=runs_dir / "explain")
        _echo(f"\nPrediction for a held-out clip ({example.voice}, label {example.score:+g}: "
              f"\"{example.text}\"):")
        _echo(format_table(results))
        if results[0].get("status") != "ok":
            raise UserError(f"demo: predicting {example.clip_id} failed: {results[0].get('error')}", exit_code=1)

    with _stage(timings, "held-out accuracy"):
        rows = held_out_predictions(predictor, cache_dir, specs)
        figures = held_out_figures(rows)
        acc = figures["fused"]
        per_voice = {v: sign_accuracy(np.array([r["score"] for r in rows if r["voice"] == v]),
                                      np.array([r["label"] for r in rows if r["voice"] == v]))
                     for v in sorted({r["voice"] for r in rows})}
        per_modality = {m: figures[m] for m in ("text", "audio", "video")}
        by_condition = accuracy_by_condition(rows)
        wer = held_out_word_error_rate(rows)
    timings["total"] = round(time.perf_counter() - t_start, 1)

    _echo(f"\nHeld-out sign accuracy (unseen sentences, voices never heard in training, transcripts "
          f"from speech recognition): {_pct(acc)}")
    for v, a in per_voice.items():
        _echo(f"  voice {v}: {_pct(a)}")
    for m, a in per_modality.items():
        _echo(f"  {m} head alone: {_pct(a)}")
    if wer["words"]:
        _echo(f"Speech recognition ({' + '.join(dcfg.extract.asr.models)}) on the held-out clips: word error rate "
              f"{wer['wer']:.3f} ({wer['errors']} errors in {wer['words']} words)")
    _echo("By face condition (held-out face; the face agrees with the words, is the photograph as it is, "
          "or contradicts them):")
    for cond, accs in by_condition.items():
        heads = ", ".join(f"{m} {_short(accs[m])}" for m in ("text", "audio", "video"))
        _echo(f"  {cond:10s}: {_pct(accs['fused'])}; heads alone: {heads}")
    _echo("Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    _echo(f"Model: {best}")

    summary = {"sentences": len(chosen), "training_only_sentences": len(extra), "clips": len(specs),
               "corpus": summary_corpus, "epochs": epochs, "settings": overrides,
               "held_out_sign_accuracy": acc, "per_voice": per_voice,
               "per_modality_head": per_modality, "by_face_condition": by_condition, "held_out_asr": wer,
               "corpus_statistics": corpus_stats,
               "example_clip": example.clip_id, "timings_s": timings, "checkpoint": str(best),
               "test_predictions": rows}
    atomic_write_text(runs_dir / "demo_summary.json", json.dumps(summary, indent=2))
    _echo(f"Summary: {runs_dir / 'demo_summary.json'}")
    return 0


def _short(a: dict[str, Any]) -> str:
    return "-" if a["accuracy"] is None else f"{100 * a['accuracy']:.0f}%"


def _pct(a: dict[str, Any]) -> str:
    if a["accuracy"] is None:
        return "no non-neutral test clips"
    return f"{100 * a['accuracy']:.1f}% ({a['correct']}/{a['clips']} non-neutral clips), MAE {a['mae']:.2f}"
