"""predict: a real (tiny) checkpoint trained in this module on clips made here, then new clips.

One module fixture extracts six short espeak-ng clips and trains a tiny DHMD for two epochs through
the CLI; the tests then predict clips the model never saw, a corrupt file and a clip without audio,
and check the JSON, the explanation PNGs and figure, that models load once for many clips, that a
clip failing in any stage fails alone, the exit statuses and the refusal of foreign checkpoints.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.config import PipelineConfig
from pipeline.cli import main
from pipeline.inference.predict import LABELS_7, format_table, label_2, label_7, modality_disagreement

TRAIN_SENTENCES = [
    ("good_one", "What a lovely and wonderful day.", 2.4, "train"),
    ("bad_one", "This was a terrible boring film.", -2.2, "train"),
    ("good_two", "I enjoyed every minute of it.", 1.8, "train"),
    ("bad_two", "I hated the awful ending.", -2.6, "train"),
    ("mid_one", "It was an ordinary movie.", 0.2, "valid"),
    ("mid_two", "The plot was fine, nothing more.", -0.4, "test"),
]
TINY = ["model.hidden_dim=16", "model.num_heads=2", "model.num_layers=1", "model.dictionary_size=16",
        "train.epochs=2", "train.batch_size=4"]


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, make_clip) -> Path:
    """A tiny DHMD trained for two epochs on six extracted clips (via the CLI, as a user would)."""
    root = tmp_path_factory.mktemp("predict_train")
    videos = root / "videos"
    videos.mkdir()
    for k, (name, text, _, _) in enumerate(TRAIN_SENTENCES):
        src = make_clip(text, expression=0.8 if "good" in name else -0.8 if "bad" in name else 0.0,
                        voice="en-us" if k % 2 else "en-us+f3", seed=k)
        (videos / f"{name}.mp4").write_bytes(src.read_bytes())
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "label", "text", "split"])
        for name, text, label, split in TRAIN_SENTENCES:
            w.writerow([name, label, text, split])
    res = _invoke(["extract", str(videos), "--out", str(root / "cache"), "--labels", str(root / "labels.csv")])
    assert res.exit_code == 0, res.output
    res = _invoke(["train", "--data", str(root / "cache"), "--out", str(root / "run"),
                   *[a for s in TINY for a in ("--set", s)]])
    assert res.exit_code == 0, res.output
    ckpt = root / "run" / "best.pt"
    assert ckpt.is_file()
    return ckpt


@pytest.fixture(scope="module")
def new_clips(tmp_path_factory: pytest.TempPathFactory, make_clip) -> dict[str, Path]:
    """Clips the model never saw: a good one, a corrupt mp4 and a clip without an audio stream."""
    root = tmp_path_factory.mktemp("predict_new")
    good = make_clip("The actors were brilliant and funny.", expression=0.6, seed=11)
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(good.read_bytes()[:3000])          # truncated: no moov index
    silent = make_clip("Nobody can hear this sentence.", audio=False, seed=12)
    return {"good": good, "corrupt": corrupt, "silent": silent}


@pytest.fixture(scope="module")
def cli_run(checkpoint: Path, new_clips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """One `predict --json --explain` run over a good clip, a corrupt one and a silent one."""
    explain = tmp_path_factory.mktemp("explain")
    res = CliRunner().invoke(main, ["predict", str(new_clips["good"]), str(new_clips["corrupt"]),
                                    str(new_clips["silent"]), "--checkpoint", str(checkpoint),
                                    "--json", "--explain", str(explain)], catch_exceptions=False)
    return res, explain


def _check_edges(edges) -> None:
    m = np.asarray(edges, dtype=float)
    assert m.shape == (3, 3)
    assert np.all(np.isfinite(m)) and np.all(m >= 0)
    assert np.allclose(np.diag(m), 0.0)
    # rows are teachers, columns students; one softmax over the six edges of the clip
    assert np.isclose(m.sum(), 1.0, atol=1e-4)


def test_predict_json_fields_and_failures(cli_run, new_clips, checkpoint) -> None:
    res, _ = cli_run
    assert res.exit_code == 3, res.output                      # some clips failed
    results = json.loads(res.stdout)
    assert [r["clip"] for r in results] == [str(new_clips[k]) for k in ("good", "corrupt", "silent")]
    good, corrupt, silent = results
    assert good["status"] == "ok"
    assert good["transcript"].strip()
    assert -3.0 <= good["score"] <= 3.0
    assert good["label_7"] == label_7(good["score"]) and good["label_7"] in LABELS_7
    assert good["label_2"] == ("positive" if good["score"] >= 0 else "negative")
    assert set(good["unimodal"]) == {"text", "audio", "video"}
    assert all(math.isfinite(v) and -3 <= v <= 3 for v in good["unimodal"].values())
    assert good["disagreement"] == modality_disagreement(good["unimodal"], good["score"])
    _check_edges(good["edges_homo"])
    _check_edges(good["edges_hetero"])
    for space in ("homo", "hetero"):
        atoms = good["top_atoms"][space]
        assert set(atoms) == {"text", "audio", "video"}
        for pairs in atoms.values():
            assert len(pairs) == 5                               # predict.top_atoms default
            idx = [int(i) for i, _ in pairs]
            weights = [w for _, w in pairs]
            assert all(0 <= i < 16 for i in idx) and len(set(idx)) == 5   # dictionary_size=16
            assert weights == sorted(weights, reverse=True) and 0 < sum(weights) <= 1 + 1e-6
    assert 0 < good["face_frames"] <= good["frames"]
    assert good["time_s"] > 0
    for bad, name in ((corrupt, "corrupt.mp4"), (silent, new_clips["silent"].name)):
        assert bad["status"] == "failed"
        assert name in bad["error"]
        assert "score" not in bad


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_explain_png_per_good_clip(cli_run, new_clips) -> None:
    from PIL import Image

    _, explain = cli_run
    pngs = sorted(explain.glob("*.png"))
    assert [p.name for p in pngs] == [new_clips["good"].stem + ".png"]
    data = pngs[0].read_bytes()
    assert _png_size(data) == (1300, 1000)                 # 13 x 10 inches at 100 dpi
    img = np.asarray(Image.open(pngs[0]).convert("RGB"), dtype=int)
    assert (img.std(axis=(0, 1)) > 20).all()                  # drawn, not blank
    assert (img == 255).all(axis=-1).mean() > 0.5             # on a white page
    # the strongest edge of each heat map is drawn in the darkest blue of the colour map, in the top half
    darkest = (np.abs(img - np.array([8, 48, 107])).max(axis=-1) <= 12)
    rows = np.nonzero(darkest)[0]
    assert darkest.sum() > 2000 and rows.max() < 500


@pytest.fixture(scope="module")
def counted(checkpoint, new_clips, tmp_path_factory):
    """A Predictor made with every model loader counted, then used for three clips."""
    from collections import Counter

    import extractors.asr
    import extractors.face
    import extractors.text
    import pipeline.training.checkpoint
    from pipeline.inference.predict import Predictor

    counts: Counter = Counter()

    def counting(name, original):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return original(*args, **kwargs)
        return wrapper

    other = tmp_path_factory.mktemp("counted") / "other_good.mp4"
    other.write_bytes(new_clips["good"].read_bytes())
    with pytest.MonkeyPatch.context() as mp:
        for module, attr in ((pipeline.training.checkpoint, "load_for_inference"), (extractors.text, "TextEncoder"),
                             (extractors.face, "make_face_extractor"), (extractors.asr, "SpeechRecognizer")):
            mp.setattr(module, attr, counting(attr, getattr(module, attr)))
        pred = Predictor(checkpoint, device="cpu", top_atoms=3)
        loaded = dict(counts)
        results = pred.predict([new_clips["good"], other, new_clips["good"]])
    return pred, results, loaded, dict(counts)


def test_predictor_loads_models_once_for_many_clips(counted) -> None:
    _, results, loaded, counts = counted
    assert [r["status"] for r in results] == ["ok", "ok", "ok"]
    readers = PipelineConfig().extract.face.threads          # Face Landmarker instances, one per thread
    assert readers == 2
    assert loaded == {"load_for_inference": 1, "TextEncoder": 1, "make_face_extractor": readers}
    # three clips later: still the same models, and the recogniser (the clips have no sidecar) once
    assert counts == {"load_for_inference": 1, "TextEncoder": 1, "make_face_extractor": readers,
                      "SpeechRecognizer": 1}


def test_predictor_is_deterministic(counted) -> None:
    _, (first, other, again), _, _ = counted
    assert first["score"] == pytest.approx(again["score"], abs=1e-5)
    assert first["score"] == pytest.approx(other["score"], abs=1e-5)    # same media, other name
    np.testing.assert_allclose(first["edges_hetero"], again["edges_hetero"], atol=1e-5)
    assert all(len(v) == 3 for v in first["top_atoms"]["hetero"].values())


def test_table_shows_failures_and_flags(counted) -> None:
    _, (first, *_), _, _ = counted
    table = format_table([first, {"clip": "x/broken.mp4", "status": "failed", "error": "x/broken.mp4: corrupt",
                                  "time_s": 0.1}])
    assert "broken.mp4" in table and "FAILED" in table and first["label_7"] in table
    assert "flags" in table.splitlines()[0]
    faceless = {**first, "clip": "x/faceless.mp4", "flags": ["no_face", "word_times_spread"], "face_frames": 0}
    table = format_table([faceless])
    row = table.splitlines()[2]
    assert "no_face,word_times_spread" in row and f"0/{first['frames']}" in row
    assert "caution: no_face" in table and "video modality saw nothing" in table
    assert "caution: word_times_spread" in table


def test_explanation_figure_shows_edges_and_timeline(counted) -> None:
    import matplotlib.pyplot as plt

    from pipeline.inference.explain import build_explanation_figure

    pred, (result, *_), _, _ = counted
    clip = pred.last_features[0]
    assert clip is not None and clip.words
    fig = build_explanation_figure(result, clip)
    try:
        homo, hetero, info, words, voice, face = fig.axes[:6]
        for ax, name, key in ((homo, "homogeneous", "edges_homo"), (hetero, "heterogeneous", "edges_hetero")):
            assert ax.get_title() == f"{name}: edge i -> j"
            (image,) = ax.images
            np.testing.assert_allclose(np.asarray(image.get_array()), np.asarray(result[key]), atol=1e-6)
            off = np.asarray(result[key])[~np.eye(3, dtype=bool)]
            assert image.get_clim() == pytest.approx((0.0, off.max()))     # darkest = the strongest edge
            assert [t.get_text() for t in ax.get_xticklabels()] == ["text", "audio", "video"]
            assert [t.get_text() for t in ax.get_yticklabels()] == ["text", "audio", "video"]
            assert "student" in ax.get_xlabel() and "teacher" in ax.get_ylabel()
            cells = [t.get_text() for t in ax.texts]
            assert len(cells) == 9 and cells.count("-") == 3                # the empty diagonal
            assert cells[1] == f"{result[key][0][1]:.2f}"
        summary = "\n".join(t.get_text() for t in info.texts)
        assert f"score: {result['score']:+.2f}" in summary and result["label_7"] in summary
        assert result["transcript"].split()[0] in summary
        # every word on the time axis, at its time
        shown = [t.get_text() for t in words.texts]
        assert shown == list(clip.words)
        for t, start, end in zip(words.texts, clip.word_start, clip.word_end):
            assert start - 1e-6 <= t.get_position()[0] <= end + 1e-6
        assert words.get_ylabel() == "words" and words.get_xlim()[1] >= float(np.max(clip.word_end))
        assert voice.get_ylabel() == "F0 (Hz)"
        assert "F0 (voiced)" in [line.get_label() for line in voice.lines]
        labels = [line.get_label() for line in face.lines]
        assert {"AU12 smile", "AU15 lip corner down"} <= set(labels)
        assert face.get_xlabel() == "time (s)"
    finally:
        plt.close(fig)


def test_one_failing_clip_does_not_stop_the_others(checkpoint, new_clips, tmp_path, monkeypatch) -> None:
    """An error that is not an ExtractionError (the PNG writer, the model, memory) fails that clip only."""
    import pipeline.inference.explain
    from pipeline.inference.predict import Predictor

    clips = {}
    for name in ("first", "png_fails", "model_fails", "last"):
        clips[name] = tmp_path / f"{name}.mp4"
        clips[name].write_bytes(new_clips["good"].read_bytes())
    real_writer = pipeline.inference.explain.write_explanation
    real_predict = Predictor.predict_features

    def writer(out_path, result, clip):
        if "png_fails" in str(out_path):
            raise OSError(28, "No space left on device")
        return real_writer(out_path, result, clip)

    def predict_features(self, clip, name=None):
        if name and "model_fails" in name:
            raise MemoryError()
        return real_predict(self, clip, name=name)

    monkeypatch.setattr(pipeline.inference.explain, "write_explanation", writer)
    monkeypatch.setattr(Predictor, "predict_features", predict_features)
    explain = tmp_path / "explain"
    res = CliRunner().invoke(main, ["predict", *map(str, clips.values()), "--checkpoint", str(checkpoint),
                                    "--json", "--explain", str(explain)], catch_exceptions=False)
    assert res.exit_code == 3, res.output
    first, png, model, last = json.loads(res.stdout)
    assert first["status"] == last["status"] == "ok" and -3 <= last["score"] <= 3
    assert png["status"] == model["status"] == "failed"
    assert png["error"] == f"{clips['png_fails']}: explanation failed: OSError: [Errno 28] No space left on device"
    assert model["error"] == f"{clips['model_fails']}: prediction failed: MemoryError"
    assert sorted(p.name for p in explain.glob("*.png")) == ["first.png", "last.png"]
    assert "2 of 4 clips failed" in res.stderr and "Traceback" not in res.stderr


def _rewrite_spec(checkpoint: Path, out: Path, change: dict) -> dict:
    """Copy a checkpoint with its feature spec changed; returns the changed spec."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state["spec"] = {**state["spec"], **change}
    torch.save(state, out)
    return state["spec"]


def test_spec_mismatch_refused(checkpoint, new_clips, tmp_path) -> None:
    foreign = tmp_path / "foreign.pt"
    _rewrite_spec(checkpoint, foreign, {"text_dim": 768, "text_model": "bert-base-uncased"})
    res = _invoke(["predict", str(new_clips["good"]), "--checkpoint", str(foreign), "--json"])
    assert res.exit_code == 2
    msg = res.stderr
    assert "768" in msg and "384" in msg and "bert-base-uncased" in msg    # both specs named
    assert res.stdout.strip() == ""


def test_checkpoint_trained_on_earlier_face_features_refused(checkpoint, new_clips, tmp_path) -> None:
    """A checkpoint from before the Face Landmarker features (landmark geometry, no face_features in
    its spec) is refused with a message that names the face features as the cause."""
    foreign = tmp_path / "old_faces.pt"
    old_names = ["est_head_pitch_deg", "est_head_yaw_deg", "est_head_roll_deg", "face_width_rel"] + \
        [f"geometry_{i}" for i in range(18)] + [f"est_AU{i:02d}" for i in range(10)]
    _rewrite_spec(checkpoint, foreign, {"video_names": old_names, "video_dim": 32, "face_features": None})
    res = _invoke(["predict", str(new_clips["good"]), "--checkpoint", str(foreign), "--json"])
    assert res.exit_code == 2 and res.stdout.strip() == ""
    assert "trained on face features of an earlier version" in res.stderr
    assert "mediapipe:landmarker1" in res.stderr and "re-extract" in res.stderr


def test_mmsa_checkpoint_refused(checkpoint, new_clips, tmp_path) -> None:
    foreign = tmp_path / "mmsa.pt"
    _rewrite_spec(checkpoint, foreign, {"source": "mmsa"})
    res = _invoke(["predict", str(new_clips["good"]), "--checkpoint", str(foreign)])
    assert res.exit_code == 2
    assert "mmsa" in res.stderr


def test_no_checkpoint_says_train_first(new_clips, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = _invoke(["predict", str(new_clips["good"])])
    assert res.exit_code == 2
    assert "train" in res.stderr and "best.pt" in res.stderr


def test_default_checkpoint_is_newest_best(tmp_path) -> None:
    import os

    from pipeline.inference.predict import default_checkpoint

    for name, mtime in (("2026-a", 1000), ("2026-b", 3000), ("2026-c", 2000)):   # names do not decide
        p = tmp_path / name / "best.pt"
        p.parent.mkdir()
        p.write_bytes(b"x")
        os.utime(p, (mtime, mtime))
    (tmp_path / "2026-d").mkdir()
    (tmp_path / "2026-d" / "last.pt").write_bytes(b"x")
    assert default_checkpoint(tmp_path) == tmp_path / "2026-b" / "best.pt"
    # train --seeds writes RUN/seed-<n>/best.pt: one level deeper counts too, newest still wins
    for seed, mtime in ((1, 2500), (2, 4000)):
        p = tmp_path / "2026-e" / f"seed-{seed}" / "best.pt"
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x")
        os.utime(p, (mtime, mtime))
    assert default_checkpoint(tmp_path) == tmp_path / "2026-e" / "seed-2" / "best.pt"
    os.utime(tmp_path / "2026-c" / "best.pt", (5000, 5000))
    assert default_checkpoint(tmp_path) == tmp_path / "2026-c" / "best.pt"
    # deeper than that is not searched
    deep = tmp_path / "2026-f" / "a" / "b" / "best.pt"
    deep.parent.mkdir(parents=True)
    deep.write_bytes(b"x")
    os.utime(deep, (9000, 9000))
    assert default_checkpoint(tmp_path) == tmp_path / "2026-c" / "best.pt"


def test_default_checkpoint_finds_a_seed_run_alone(tmp_path) -> None:
    from pipeline.errors import UserError
    from pipeline.inference.predict import default_checkpoint

    with pytest.raises(UserError, match=r"\*/\*/best.pt"):
        default_checkpoint(tmp_path)
    p = tmp_path / "run" / "seed-3" / "best.pt"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"x")
    assert default_checkpoint(tmp_path) == p


@pytest.mark.parametrize("score,name7,name2", [
    (-3.7, "highly negative", "negative"), (-2.5, "negative", "negative"), (-0.5, "neutral", "negative"),
    (0.0, "neutral", "positive"), (0.5, "neutral", "positive"), (0.51, "weakly positive", "positive"),
    (1.5, "positive", "positive"), (2.5, "positive", "positive"), (3.2, "highly positive", "positive")])
def test_label_conventions(score, name7, name2) -> None:
    # round half to even of clip(score, -3, 3); Has0: 0 counts as positive
    assert label_7(score) == name7
    assert label_2(score) == name2


def test_pick_au_columns() -> None:
    from pipeline.inference.explain import pick_au_columns

    names = ["yaw", "est_AU26_jaw_drop", "est_AU12_lip_corner_pull", "AU12_r", "est_AU04", "mouth_open"]
    assert pick_au_columns(names) == [(4, "AU04 brow lowerer"), (2, "AU12 smile"), (1, "AU26 jaw drop")]
    assert pick_au_columns(["AU01", "AU45", "pitch"]) == [(0, "AU01"), (1, "AU45")]
    assert pick_au_columns(["yaw", "pitch"]) == []
    from extractors.face import face_feature_names

    for backend in ("mediapipe", "pyfeat"):   # both backends' names give the five main traces
        picked = pick_au_columns(face_feature_names(backend))
        assert [label.split()[0] for _, label in picked] == ["AU04", "AU06", "AU12", "AU15", "AU25"]
