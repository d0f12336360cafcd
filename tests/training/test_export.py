"""`dhmd-pipeline export --format mmsa`: the MMSA layout from a cache, and the round trip into train."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import PipelineConfig, with_overrides
from pipeline.training.dataset import load_cache, load_data
from pipeline.training.export import mmsa_id
from test_train_helpers import TINY, make_cache, set_args


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cache(tmp_path_factory.mktemp("export") / "cache", n_clips=40, unlabelled=2)


def test_unaligned_export_layout_and_values(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "feat_unaligned.pkl"
    res = _invoke(["export", "--data", str(cache), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "unaligned" in res.stdout and "train 24" in res.stdout
    data = pickle.load(open(out, "rb"))
    assert set(data) == {"train", "valid", "test"}
    tr = data["train"]
    n = len(tr["id"])
    assert n == 24
    assert tr["text"].dtype == np.float32 and tr["text"].ndim == 3 and tr["text"].shape[2] == 8
    assert tr["text_bert"].shape == (n, 3, tr["text"].shape[1])
    assert tr["audio"].shape[::2] == (n, 5) and tr["vision"].shape[::2] == (n, 6)
    assert tr["audio_lengths"].shape == (n,) and tr["vision_lengths"].shape == (n,)
    assert tr["regression_labels"].dtype == np.float32
    # every modality padded to its own longest sequence (over all splits), zeros after each length
    assert tr["audio"].shape[1] != tr["text"].shape[1]
    i = int(np.argmin(tr["audio_lengths"]))
    assert (tr["audio"][i, tr["audio_lengths"][i]:] == 0).all()
    # values are the raw cache features of the same clip
    samples = {s["id"]: s for s in load_cache(cache, PipelineConfig()).splits["train"]}
    for j in (0, n - 1):
        clip_id = str(tr["id"][j]).replace("$_$", "_")
        s = samples[clip_id]
        assert tr["id"][j] == mmsa_id(clip_id, clip_id.split("_")[0])
        assert tr["audio_lengths"][j] == s["audio"].shape[0]
        np.testing.assert_array_equal(tr["audio"][j, :s["audio"].shape[0]], s["audio"])
        assert tr["vision_lengths"][j] == s["video"].shape[0]
        np.testing.assert_array_equal(tr["vision"][j, :s["video"].shape[0]], s["video"])
        assert (tr["vision"][j, s["video"].shape[0]:] == 0).all()
        assert s["video"].any(axis=1).sum() > 0 and not s["video_mask"].all()   # faces and gaps both
        np.testing.assert_array_equal(tr["text"][j, :s["text"].shape[0]], s["text"])
        np.testing.assert_array_equal(tr["text_bert"][j, :, :s["text"].shape[0]], s["text_bert"])
        assert tr["regression_labels"][j] == pytest.approx(s["label"])
    assert mmsa_id("vid3_2", "vid3") == "vid3$_$2" and mmsa_id("clipx", None) == "clipx"
    # the pickle reads back as the same unaligned samples, and trains
    back = {s["id"].replace("$_$", "_"): s for s in load_data(out, PipelineConfig()).splits["train"]}
    assert set(back) == set(samples)
    for clip_id, s in samples.items():
        for key in ("text", "audio", "video"):
            np.testing.assert_array_equal(back[clip_id][key], s[key])
    res = _invoke(["train", "--data", str(out), "--out", str(tmp_path / "run"), *set_args(TINY + ["train.epochs=1"])])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["spec"] == {"source": "mmsa", "text_dim": 8, "audio_dim": 5, "video_dim": 6, "align": "unaligned"}
    assert results["n"] == {"train": 24, "valid": 8, "test": 8} and results["test"]["MAE"] is not None


def test_aligned_export_round_trip_trains(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "feat_aligned.pkl"
    res = _invoke(["export", "--data", str(cache), "--out", str(out), "--set", "align.mode=\"aligned\""])
    assert res.exit_code == 0, res.output
    data = pickle.load(open(out, "rb"))
    te = data["test"]
    assert "audio_lengths" not in te and te["audio"].shape[1] == te["vision"].shape[1] == te["text"].shape[1]
    # reading the pickle back gives the cache's aligned samples (same features, labels and masks)
    cfg = with_overrides(PipelineConfig(), {"align.mode": "aligned"})
    from_cache = {s["id"]: s for s in load_cache(cache, cfg).splits["test"]}
    from_pickle = load_data(out, cfg)
    assert from_pickle.align_mode == "aligned" and from_pickle.counts() == {"train": 24, "valid": 8, "test": 8}
    for s in from_pickle.splits["test"]:
        c = from_cache[s["id"].replace("$_$", "_")]
        for key in ("text", "audio", "video", "text_bert", "audio_valid", "video_valid"):
            np.testing.assert_array_equal(s[key], c[key])
        assert s["label"] == pytest.approx(c["label"])
    # and training on it works end to end
    res = _invoke(["train", "--data", str(out), "--out", str(tmp_path / "run"),
                   *set_args(TINY + ["train.epochs=2"])])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["spec"] == {"source": "mmsa", "text_dim": 8, "audio_dim": 5, "video_dim": 6, "align": "aligned"}
    assert results["n"]["test"] == 8 and results["test"]["MAE"] is not None


def test_export_refuses_a_pickle_as_input(tmp_path: Path) -> None:
    src = tmp_path / "x.pkl"
    src.write_bytes(pickle.dumps({"train": {}}))
    res = _invoke(["export", "--data", str(src), "--out", str(tmp_path / "y.pkl")])
    assert res.exit_code == 2 and "cache folder" in res.stderr
    assert not (tmp_path / "y.pkl").exists()


pytestmark = pytest.mark.usefixtures("torch_one_thread")
