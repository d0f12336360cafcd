"""Samples, batches, splits, normalisation, MMSA pickles and cache folders (pipeline.training.dataset, mmsa)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.extract.cache import read_manifest, write_manifest
from pipeline.config import PipelineConfig, with_overrides
from pipeline.training.dataset import (Normalizer, collate, feature_spec, find_entries, load_cache, load_data,
                              sample_from_clip, score_class, split_by_group)
from pipeline.errors import UserError
from pipeline.training.mmsa import is_aligned, read_pickle
from test_train_helpers import SPEC, make_cache, make_clip_features, make_pickle


def test_sample_from_clip_unaligned_keeps_every_frame_and_masks_faceless_ones() -> None:
    clip = make_clip_features("c1", 1.5, np.random.default_rng(0), n_words=3)
    s = sample_from_clip(clip, "unaligned")
    assert s["text"].shape == clip.text_features.shape
    assert s["audio"].shape == clip.audio_features.shape and s["audio_mask"].all()
    assert s["video"].shape == clip.video_features.shape
    assert (s["video_mask"] == clip.face_mask).all() and not s["video_mask"].all()
    assert s["text_bert"].shape == (3, clip.text_ids.shape[0]) and s["text_bert"].dtype == np.int64
    assert (s["text_bert"][0] == clip.text_ids).all() and (s["text_bert"][1] == 1).all()


def test_sample_from_clip_aligned_averages_frames_per_word_and_copies_to_tokens() -> None:
    clip = make_clip_features("c1", -1.0, np.random.default_rng(1), n_words=3)
    s = sample_from_clip(clip, "aligned")
    n_tok = clip.text_features.shape[0]
    assert s["audio"].shape == (n_tok, 5) and s["video"].shape == (n_tok, 6)
    wi = clip.token_word_index
    # word 1 spans [0.6, 0.9): the mean of the audio frames whose time lies inside
    inside = (clip.audio_times >= clip.word_start[1]) & (clip.audio_times < clip.word_end[1])
    assert inside.any()
    expected = clip.audio_features[inside].mean(0)
    for t in np.flatnonzero(wi == 1):
        np.testing.assert_allclose(s["audio"][t], expected, rtol=1e-5)
    # special tokens carry zeros; faceless frames are left out of the video average
    assert (s["audio"][wi == -1] == 0).all() and (s["video"][wi == -1] == 0).all()
    v_in = (clip.video_times >= clip.word_start[1]) & (clip.video_times < clip.word_end[1]) & clip.face_mask
    np.testing.assert_allclose(s["video"][np.flatnonzero(wi == 1)[0]], clip.video_features[v_in].mean(0),
                               rtol=1e-5)
    assert s["audio_mask"].all() and s["video_mask"].all()


def test_collate_pads_and_masks() -> None:
    a = {"text": np.ones((3, 4), np.float32), "audio": np.ones((5, 2), np.float32),
         "video": np.ones((2, 3), np.float32), "video_mask": np.array([True, False]),
         "text_bert": np.ones((3, 3), np.int64), "label": 1.5, "id": "a"}
    b = {"text": np.full((1, 4), 2, np.float32), "audio": np.zeros((0, 2), np.float32),
         "video": np.ones((4, 3), np.float32), "text_bert": np.full((3, 1), 7, np.int64), "label": -2.0, "id": "b"}
    batch = collate([a, b])
    assert batch["text"].shape == (2, 3, 4) and batch["audio"].shape == (2, 5, 2)
    assert batch["video"].shape == (2, 4, 3)
    assert batch["text_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["audio_mask"][1].sum() == 0 and batch["audio_mask"][0].all()
    assert batch["video_mask"].tolist() == [[True, False, False, False], [True, True, True, True]]
    assert batch["text_bert"].shape == (2, 3, 3) and batch["text_bert"][1, 0].tolist() == [7, 0, 0]
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [1.5, -2.0]
    assert batch["ids"] == ["a", "b"]
    assert (batch["text"][1, 1:] == 0).all()
    # a batch where no sample has audio still gets one (masked) frame; int labels stay int
    only = collate([dict(b, label=1)])
    assert only["audio"].shape == (1, 1, 2) and not only["audio_mask"].any()
    assert only["labels"].dtype == torch.int64


def test_normalizer_uses_real_frames_only_and_round_trips() -> None:
    s1 = {"audio": np.array([[1.0, 10.0], [3.0, 10.0], [100.0, -5.0]], np.float32),
          "audio_mask": np.array([True, True, False]), "video": np.array([[2.0]], np.float32)}
    s2 = {"audio": np.array([[5.0, 10.0]], np.float32), "video": np.array([[4.0]], np.float32)}
    norm = Normalizer.fit([s1, s2])
    mean, std = norm.stats["audio"]
    np.testing.assert_allclose(mean, [3.0, 10.0])
    np.testing.assert_allclose(std, [np.sqrt(8 / 3), 1.0], rtol=1e-5)   # constant feature: centred only
    out = Normalizer.from_state(norm.state()).apply(s1)
    np.testing.assert_allclose(out["audio"][:2, 0], [-2 / np.sqrt(8 / 3), 0.0], rtol=1e-5)
    assert (out["audio"][2] == 0).all()                                     # masked frame stays zero
    assert (s1["audio"][2] == [100.0, -5.0]).all()                         # input untouched
    with pytest.raises(ValueError):
        norm.apply({"audio": np.zeros((1, 3), np.float32), "video": np.zeros((1, 1), np.float32)})


def test_clip_baseline_takes_each_clip_relative_to_its_own_median_frame() -> None:
    """train.clip_baseline: two clips that differ only by a constant offset (one person's resting face
    against another's) come out the same; the median is taken over the frames that hold data."""
    moves = np.array([[0.0, 0.0], [0.0, 0.0], [2.0, -1.0], [0.0, 0.0], [0.0, 0.0]], np.float32)
    a = {"video": moves + [5.0, 1.0], "video_mask": np.ones(5, bool), "audio": np.ones((2, 1), np.float32)}
    b = {"video": moves + [-3.0, 4.0], "video_mask": np.ones(5, bool), "audio": np.ones((2, 1), np.float32)}
    masked = {**b, "video": np.vstack([b["video"], [[90.0, 90.0]] * 4]).astype(np.float32),
              "video_mask": np.r_[np.ones(5, bool), np.zeros(4, bool)]}   # faceless frames: not the median
    norm = Normalizer.fit([a, b], clip_baseline=["video"])
    assert norm.clip_baseline == ("video",)
    out_a, out_b, out_m = (norm.apply(s)["video"] for s in (a, b, masked))
    np.testing.assert_allclose(out_a, out_b, atol=1e-6)
    np.testing.assert_allclose(out_m[:5], out_b, atol=1e-6)
    assert (out_m[5:] == 0).all()
    # the stats are those of the departures from the median: mean 0.4 / -0.2 over the ten frames
    np.testing.assert_allclose(norm.stats["video"][0], [0.4, -0.2], atol=1e-6)
    # without the baseline the offset stays (who the person is), and the state keeps the choice
    plain = Normalizer.fit([a, b])
    assert np.abs(plain.apply(a)["video"] - plain.apply(b)["video"]).max() > 1.0
    assert "clip_baseline" not in plain.state()["video"]
    again = Normalizer.from_state(norm.state())
    assert again.clip_baseline == ("video",) and np.array_equal(again.apply(a)["video"], out_a)
    with pytest.raises(ValueError, match="clip baseline"):
        Normalizer.from_state({"video": {"mean": [0.0], "std": [1.0], "clip_baseline": "mean"}})
    with pytest.raises(ValueError, match="clip_baseline"):
        Normalizer({"audio": (np.zeros(1), np.ones(1))}, clip_baseline=["video"])
    with pytest.raises(ValueError, match="clip_baseline"):   # a baseline for a modality not fitted
        Normalizer.fit([a, b], modalities=("audio",), clip_baseline=["video"])


def test_clip_baseline_features_take_some_columns_relative_to_the_clip_and_leave_the_rest() -> None:
    """train.clip_baseline_features: two voices that differ by their spectral shape (column 0, a
    timbre) and speak at different pitches (column 1): with the baseline on column 0 only, the timbre
    offset is gone and the pitch difference stays; the choice survives the checkpoint's state."""
    a = {"audio": np.array([[7.0, 100.0], [7.5, 101.0], [7.0, 99.0]], np.float32), "video": np.zeros((1, 1), np.float32)}
    b = {"audio": np.array([[-2.0, 140.0], [-1.5, 141.0], [-2.0, 139.0]], np.float32), "video": np.zeros((1, 1), np.float32)}
    norm = Normalizer.fit([a, b], clip_baseline=["audio"], baseline_columns={"audio": [0]})
    out_a, out_b = norm.apply(a)["audio"], norm.apply(b)["audio"]
    np.testing.assert_allclose(out_a[:, 0], out_b[:, 0], atol=1e-6)          # the timbre: relative to the clip
    assert (out_b[:, 1] - out_a[:, 1]).min() > 1.5                           # the pitch: as spoken
    state = norm.state()["audio"]
    assert state["clip_baseline"] == "median" and state["clip_baseline_columns"] == [0]
    again = Normalizer.from_state(norm.state())
    assert np.array_equal(again.apply(b)["audio"], out_b)
    whole = Normalizer.fit([a, b], clip_baseline=["audio"])                  # every column: the pitch is gone too
    assert abs(float(whole.apply(b)["audio"][:, 1].mean() - whole.apply(a)["audio"][:, 1].mean())) < 1e-6
    with pytest.raises(ValueError, match="no clip_baseline"):
        Normalizer.fit([a, b], clip_baseline=["video"], baseline_columns={"audio": [0]})
    with pytest.raises(ValueError, match="outside"):
        Normalizer(norm.stats, clip_baseline=["audio"], baseline_columns={"audio": [2]})


def test_baseline_columns_are_found_by_feature_name_prefix() -> None:
    from pipeline.errors import UserError
    from pipeline.training.dataset import baseline_columns

    spec = {"source": "cache", "audio_names": ["mfcc_1", "mfcc_delta_1", "f0_hz", "spectral_centroid_khz", "rms"]}
    assert baseline_columns({"audio": ["mfcc", "spectral"]}, spec) == {"audio": [0, 1, 3]}
    with pytest.raises(UserError, match="spectrum"):                          # a typo is not a silent no-op
        baseline_columns({"audio": ["spectrum"]}, spec)
    with pytest.raises(UserError, match="do not name"):                       # MMSA pickles name no features
        baseline_columns({"audio": ["mfcc"]}, {"source": "mmsa"})


def test_normalizer_centres_only_features_constant_in_training() -> None:
    # feature 0 is constant in training, feature 1 nearly so (std 5e-5 around a large offset),
    # feature 2 varies a little (std 2e-3): only the first two are treated as constant
    train = [{"audio": np.array([[7.0, 1000.0, 0.0]], np.float32)},
             {"audio": np.array([[7.0, 1000.0001, 0.004]], np.float32)}]
    norm = Normalizer.fit(train, modalities=("audio",))
    mean, std = norm.stats["audio"]
    np.testing.assert_allclose(mean, [7.0, 1000.00005, 0.002], rtol=1e-6)
    np.testing.assert_allclose(std, [1.0, 1.0, 0.002], rtol=1e-4)
    # data that varies where training did not is centred, not multiplied by 1e6
    out = norm.apply({"audio": np.array([[7.5, 1000.5, 0.002]], np.float32)})
    np.testing.assert_allclose(out["audio"][0], [0.5, 0.49995, 0.0], rtol=1e-4, atol=1e-4)
    assert np.abs(out["audio"]).max() < 1.0


def _aligned_clip(): # noqa: ANN202 - a hand-made ClipFeatures with known aligned values
    """Words w0 [0, .2), w1 [.2, .3), w2 [.31, .33) (shorter than a frame), w3 [1.0, 1.2); tokens
    [CLS] w0 w1 w1 w2 w3 [SEP].  Audio at 10 Hz (times .05, .15, ...), one feature = 10 * frame index.
    Video at 10 fps (times 0, .1, ..., 1.4), a face only in frames 0-3; feature k of frame i = i + k."""
    from pipeline.extract.cache import ClipFeatures

    tokens = np.array([-1, 0, 1, 1, 2, 3, -1], dtype=np.int32)
    a_times = np.arange(12) * 0.1 + 0.05
    v_times = np.arange(15) * 0.1
    face = v_times < 0.35
    video = np.stack([np.arange(15.0), np.arange(15.0) + 1], axis=1).astype(np.float32)
    video[~face] = 0.0
    return ClipFeatures(
        clip_id="hand", source="/videos/hand.mp4", duration_s=1.5, transcript="a b c d",
        transcript_source="labels", words=["a", "b", "c", "d"],
        word_start=np.array([0.0, 0.2, 0.31, 1.0], np.float32), word_end=np.array([0.2, 0.3, 0.33, 1.2], np.float32),
        word_times_source="matched", text_features=np.ones((7, 4), np.float32),
        text_ids=np.arange(7, dtype=np.int64), text_mask=np.ones(7, dtype=np.int64),
        text_segment=np.zeros(7, dtype=np.int64), token_word_index=tokens,
        audio_features=(np.arange(12.0) * 10)[:, None].astype(np.float32), audio_times=a_times.astype(np.float32),
        video_features=video, video_times=v_times.astype(np.float32), face_mask=face,
        meta={"spec": {"fps": 10.0, "audio_rate_hz": 10.0}})


def test_aligned_words_take_a_face_frame_only_from_within_one_frame_period() -> None:
    s = sample_from_clip(_aligned_clip(), "aligned")
    # w0: faces at 0.0 and 0.1 -> mean of frames 0, 1; w1: frame 2; w2 holds no frame time, its
    # midpoint 0.32 is 0.02 s from the face frame at 0.3 -> frame 3; w3 (1.0-1.2 s) was spoken with no
    # face visible: zeros, not the face frame at 0.3 seen 0.8 s before
    expected = np.array([[0, 0], [0.5, 1.5], [2, 3], [2, 3], [3, 4], [0, 0], [0, 0]], np.float32)
    np.testing.assert_array_equal(s["video"], expected)
    assert s["video_valid"].tolist() == [False, True, True, True, True, False, False]
    # audio covers every word: w0 = mean(0, 10), w1 = 20, w2 -> frame at 0.35 (0.03 s away), w3 = mean(100, 110)
    np.testing.assert_allclose(s["audio"][:, 0], [0, 5, 20, 20, 30, 105, 0], rtol=1e-6)
    assert s["audio_valid"].tolist() == [False, True, True, True, True, True, False]
    # the model masks stay the text mask (MMSA's aligned convention): tokens line up across modalities
    assert s["audio_mask"].all() and s["video_mask"].all()


def test_aligned_normaliser_fits_only_tokens_with_data_and_keeps_the_rest_zero() -> None:
    s = sample_from_clip(_aligned_clip(), "aligned")
    norm = Normalizer.fit([s])
    # audio: the five word tokens 5, 20, 20, 30, 105 ([CLS]/[SEP] zeros are not data)
    a = np.array([5.0, 20, 20, 30, 105])
    np.testing.assert_allclose(norm.stats["audio"][0], [a.mean()], rtol=1e-6)
    np.testing.assert_allclose(norm.stats["audio"][1], [a.std()], rtol=1e-6)
    # video: the four tokens of words with a face (w3 and the special tokens left out)
    v = np.array([[0.5, 1.5], [2, 3], [2, 3], [3, 4]])
    np.testing.assert_allclose(norm.stats["video"][0], v.mean(0), rtol=1e-6)
    np.testing.assert_allclose(norm.stats["video"][1], v.std(0), rtol=1e-6)
    out = norm.apply(s)
    for name in ("audio", "video"):
        assert (out[name][~s[f"{name}_valid"]] == 0).all()          # exactly zero, not -mean/std
    np.testing.assert_allclose(out["video"][1], (v[0] - v.mean(0)) / v.std(0), rtol=1e-5)


def test_aligned_pickle_zero_rows_are_not_fitted(tmp_path: Path) -> None:
    path = make_pickle(tmp_path / "a.pkl", n_train=12, aligned=True, seed=4)
    raw = pickle.load(open(path, "rb"))
    for split in raw.values():
        split["audio"][:, 0] = 0.0             # [CLS] carries no audio / video, as in MMSA's files
        split["vision"][:, 0] = 0.0
    pickle.dump(raw, open(path, "wb"))
    bundle = load_data(path, PipelineConfig())
    train = bundle.splits["train"]
    assert not train[0]["audio_valid"][0] and train[0]["audio_valid"][1:].all()
    norm = Normalizer.fit(train)
    tr = raw["train"]
    rows = np.concatenate([tr["audio"][i, 1:int(tr["text_bert"][i, 1].sum())] for i in range(12)])
    np.testing.assert_allclose(norm.stats["audio"][0], rows.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.stats["audio"][1], rows.std(0), rtol=1e-5)
    assert (norm.apply(train[0])["audio"][0] == 0).all()


def test_split_by_group_keeps_videos_together_and_is_seeded() -> None:
    groups = [f"v{i // 3}" for i in range(60)]
    a = split_by_group(groups, [0.7, 0.15, 0.15], seed=0)
    assert a == split_by_group(groups, [0.7, 0.15, 0.15], seed=0)
    assert a != split_by_group(groups, [0.7, 0.15, 0.15], seed=1)
    for g in set(groups):
        assert len({s for s, gg in zip(a, groups) if gg == g}) == 1
    counts = {k: a.count(k) for k in ("train", "valid", "test")}
    assert 36 <= counts["train"] <= 48 and counts["valid"] >= 6 and counts["test"] >= 6
    # few groups: every split with a positive fraction still gets one
    assert set(split_by_group(["a", "b", "c"], [0.8, 0.1, 0.1], seed=3)) == {"train", "valid", "test"}


def test_score_class_names() -> None:
    assert score_class(-3.4) == "highly negative" and score_class(0.5) == "neutral"
    assert score_class(1.5) == "positive" and score_class(2.5) == "positive"       # 2.5 rounds to 2
    assert score_class(9) == "highly positive"


def test_read_mmsa_pickle_unaligned(tmp_path: Path) -> None:
    path = make_pickle(tmp_path / "u.pkl", n_train=12)
    assert not is_aligned(read_pickle(path))
    cfg = PipelineConfig()
    bundle = load_data(path, cfg)
    assert bundle.source == "mmsa" and bundle.align_mode == "unaligned"
    assert bundle.spec == {"source": "mmsa", "text_dim": 12, "audio_dim": 5, "video_dim": 6, "align": "unaligned"}
    raw = pickle.load(open(path, "rb"))["train"]
    s = bundle.splits["train"][0]
    assert s["audio"].shape[0] == raw["audio_lengths"][0] and s["video"].shape[0] == raw["vision_lengths"][0]
    assert s["text"].shape[0] == raw["text_bert"][0, 1].sum()
    assert np.isfinite(s["audio"]).all() and s["audio"][0, 1] == 0.0        # -inf read as 0
    assert s["label"] == pytest.approx(float(raw["regression_labels"][0]))
    assert s["id"] == raw["id"][0]
    assert bundle.counts() == {"train": 12, "valid": 4, "test": 4}


def test_read_mmsa_pickle_aligned_and_label_variants(tmp_path: Path) -> None:
    path = make_pickle(tmp_path / "a.pkl", n_train=8, aligned=True, labels_key="labels_M")
    bundle = load_data(path, PipelineConfig())
    assert bundle.align_mode == "aligned" and bundle.spec["align"] == "aligned"
    s = bundle.splits["valid"][1]
    assert s["audio"].shape[0] == s["video"].shape[0] == s["text"].shape[0]
    # a binary task refuses score labels with a hint
    with pytest.raises(UserError, match="regression"):
        load_data(path, with_overrides(PipelineConfig(), {"model.task": "binary"}))
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="bad.pkl"):
        load_data(bad, PipelineConfig())


def test_load_cache_with_split_column(tmp_path: Path) -> None:
    root = make_cache(tmp_path / "cache", n_clips=20, unlabelled=3)
    cfg = PipelineConfig()
    bundle = load_cache(root, cfg)
    assert bundle.counts() == {"train": 12, "valid": 4, "test": 4}
    assert bundle.skipped == {"unlabelled": 3, "not_extracted": 0}
    assert bundle.spec == {"source": "cache", "align": "unaligned", **SPEC}
    assert bundle.extract_settings["fps"] == 15.0 and "clip_id" not in bundle.extract_settings
    ids = {s["id"] for s in bundle.splits["valid"]}
    assert ids == {f"vid3_{j}" for j in range(4)}
    aligned = load_cache(root, with_overrides(cfg, {"align.mode": "aligned"}))
    s = aligned.splits["train"][0]
    assert s["audio"].shape[0] == s["text"].shape[0] and aligned.spec["align"] == "aligned"


def test_load_cache_seeded_split_by_video_and_manifest_fallback(tmp_path: Path) -> None:
    root = make_cache(tmp_path / "cache", n_clips=40, with_split=False)
    # a manifest without entry fields: the entries are found by their stored clip ids
    write_manifest(root, [{"clip_id": r["clip_id"], "status": "ok"} for r in read_manifest(root)])
    entries = find_entries(root)
    assert len(entries) == 40
    bundle = load_cache(root, PipelineConfig())
    split_of = {s["id"]: k for k, v in bundle.splits.items() for s in v}
    for v in range(10):
        assert len({split_of[f"vid{v}_{j}"] for j in range(4)}) == 1      # a video never straddles splits
    assert all(bundle.counts()[k] > 0 for k in ("train", "valid", "test"))
    again = load_cache(root, PipelineConfig())
    assert {s["id"] for s in again.splits["test"]} == {s["id"] for s in bundle.splits["test"]}


def test_cache_errors_name_the_problem(tmp_path: Path) -> None:
    root = make_cache(tmp_path / "cache", n_clips=8)
    (root / "labels.csv").unlink()
    with pytest.raises(UserError, match="labels.csv"):
        load_cache(root, PipelineConfig())
    with pytest.raises(UserError, match="no such data"):
        load_data(tmp_path / "nothing", PipelineConfig())
    # entries made with different settings are refused
    rng = np.random.default_rng(0)
    clips = [make_clip_features("a", 1.0, rng), make_clip_features("b", 1.0, rng, spec={**SPEC, "fps": 25.0})]
    with pytest.raises(UserError, match="fps"):
        feature_spec(clips, "unaligned")


def test_split_without_video_id_groups_clips_by_their_source_folder(tmp_path: Path, caplog) -> None:
    # MMSA-FET layout Raw/<video>/<n>.mp4 and no video_id in the labels: the folder is the video
    root = make_cache(tmp_path / "cache", n_clips=40, with_split=False, with_video_id=False, layout="folders")
    with caplog.at_level("INFO", logger="pipeline.training.dataset"):
        bundle = load_cache(root, PipelineConfig())
    assert "split per clip" not in caplog.text and "grouped by their source folder (10 folders)" in caplog.text
    split_of = {s["id"]: k for k, v in bundle.splits.items() for s in v}
    for v in range(10):
        assert len({split_of[f"vid{v}_{j}"] for j in range(4)}) == 1      # a video never straddles splits
    assert all(bundle.counts()[k] > 0 for k in ("train", "valid", "test"))


def test_split_without_video_id_or_folders_is_per_clip_with_a_warning(tmp_path: Path, caplog) -> None:
    root = make_cache(tmp_path / "cache", n_clips=40, with_split=False, with_video_id=False, layout="flat")
    with caplog.at_level("WARNING", logger="pipeline.training.dataset"):
        bundle = load_cache(root, PipelineConfig())
    assert "40 clips have no video_id" in caplog.text and "split per clip" in caplog.text
    split_of = {s["id"]: k for k, v in bundle.splits.items() for s in v}
    assert any(len({split_of[f"vid{v}_{j}"] for j in range(4)}) > 1 for v in range(10))   # per clip indeed


def test_source_groups_rules() -> None:
    from pipeline.training.dataset import source_groups

    ids = ["a", "b", "c", "d", "e", "f"]
    videos = [None, None, None, None, "v9", None]
    sources = ["/in/Raw/v1/1.mp4", "/in/Raw/v1/2.mp4", "/in/Raw/v2/1.mp4", "/in/Raw/loose.mp4",
               "/in/Raw/v3/1.mp4", None]
    assert source_groups(ids, videos, sources) == [
        "folder:/in/Raw/v1", "folder:/in/Raw/v1", "folder:/in/Raw/v2",
        "clip:d",               # directly in the common folder: its own group
        "video:v9",             # the labels' video_id wins
        "clip:f"]               # no known source path
    # every clip in one folder: nothing tells the videos apart
    assert source_groups(["a", "b"], [None, None], ["x/1.mp4", "x/2.mp4"]) == ["clip:a", "clip:b"]


def test_pickle_without_valid_and_test_is_split_by_source_video(tmp_path: Path, caplog) -> None:
    path = make_pickle(tmp_path / "u.pkl", n_train=120, seed=2)
    raw = pickle.load(open(path, "rb"))
    only_train = tmp_path / "train_only.pkl"
    pickle.dump({"train": raw["train"]}, open(only_train, "wb"))
    with caplog.at_level("WARNING", logger="pipeline.training.dataset"):
        bundle = load_data(only_train, PipelineConfig())
    assert "no valid / test split" in caplog.text and "by source video" in caplog.text
    counts = bundle.counts()
    assert sum(counts.values()) == 120 and all(counts[k] > 0 for k in ("train", "valid", "test"))
    video_split: dict[str, set] = {}
    for k, samples in bundle.splits.items():
        for s in samples:
            video_split.setdefault(s["id"].split("$_$")[0], set()).add(k)
    assert len(video_split) == 7 and all(len(v) == 1 for v in video_split.values())
    again = load_data(only_train, PipelineConfig())                     # seeded: the same split again
    assert [s["id"] for s in again.splits["test"]] == [s["id"] for s in bundle.splits["test"]]
    # a given test split is kept as it is; only valid is taken from train
    no_valid = tmp_path / "no_valid.pkl"
    pickle.dump({"train": raw["train"], "test": raw["test"]}, open(no_valid, "wb"))
    b2 = load_data(no_valid, PipelineConfig())
    assert [s["id"] for s in b2.splits["test"]] == list(raw["test"]["id"])
    assert b2.counts()["valid"] > 0 and b2.counts()["train"] + b2.counts()["valid"] == 120
    train_videos = {s["id"].split("$_$")[0] for s in b2.splits["train"]}
    assert not train_videos & {s["id"].split("$_$")[0] for s in b2.splits["valid"]}


def test_modality_dropout_blanks_whole_modalities_never_all_three():
    import torch

    from pipeline.training.dataset import collate, drop_modalities

    rng = np.random.default_rng(0)
    samples = [{"id": str(i), "text": rng.normal(size=(6, 4)) + 1, "audio": rng.normal(size=(9, 3)) + 1,
                "video": rng.normal(size=(7, 5)) + 1, "text_bert": np.full((3, 6), 7), "label": 1.0}
               for i in range(400)]
    batch = collate(samples)
    before = {k: batch[k].clone() for k in ("text", "audio", "video", "text_bert", "text_mask")}
    gen = torch.Generator().manual_seed(3)
    dropped = drop_modalities(batch, 0.4, gen)
    assert dropped.shape == (400, 3) and not dropped.all(dim=1).any()
    # about p of each modality, a little less as no sample loses all three (0.4 * (1 - 0.4**2 / 3))
    assert 0.3 < dropped.float().mean() < 0.45
    for k, name in enumerate(("text", "audio", "video")):
        gone, kept = dropped[:, k], ~dropped[:, k]
        assert torch.all(batch[name][gone] == 0)
        assert torch.equal(batch[name][kept], before[name][kept])
    assert torch.equal(batch["text_mask"], before["text_mask"])             # masks unchanged
    gone = dropped[:, 0]
    assert torch.all(batch["text_bert"][gone][:, :, 1:] == 0) and torch.all(batch["text_bert"][gone][:, :, 0] == 7)
    # the same generator state drops the same modalities (a resumed run repeats its epochs)
    again = collate(samples)
    assert torch.equal(drop_modalities(again, 0.4, torch.Generator().manual_seed(3)), dropped)
    assert not drop_modalities(collate(samples), 0.0, gen).any()


def test_modality_swap_gives_a_sample_another_clips_face_or_voice_never_its_words():
    import torch

    from pipeline.training.dataset import collate, swap_modalities

    rng = np.random.default_rng(1)
    samples = [{"id": str(i), "text": np.full((3, 2), i, float), "audio": np.full((4 + i % 3, 2), i, float),
                "video": np.full((2 + i % 5, 3), i, float), "label": float(i)} for i in range(300)]
    batch = collate(samples)
    before = {k: batch[k].clone() for k in ("text", "audio", "video", "audio_mask", "video_mask", "labels")}
    swapped = swap_modalities(batch, 0.3, torch.Generator().manual_seed(5))
    assert swapped.shape == (300, 2) and 0.2 < swapped.float().mean() < 0.4
    assert torch.equal(batch["text"], before["text"]) and torch.equal(batch["labels"], before["labels"])
    for k, name in enumerate(("audio", "video")):
        for i in range(300):
            origin = int(batch[name][i][batch[f"{name}_mask"][i]][0, 0])   # whose features it now holds
            # features and mask move together: the frames are those of the clip they came from
            assert torch.equal(batch[f"{name}_mask"][i], before[f"{name}_mask"][origin])
            assert (origin != i) == bool(swapped[i, k])
    again = collate(samples)
    assert torch.equal(swap_modalities(again, 0.3, torch.Generator().manual_seed(5)), swapped)
    assert not swap_modalities(collate(samples), 0.0, torch.Generator()).any()
    one = collate(samples[:1])
    assert not swap_modalities(one, 1.0, torch.Generator()).any()       # no other clip to take from


def test_modality_dropout_is_off_by_default_and_in_the_paper_presets():
    from pipeline.config import PipelineConfig
    from pipeline.training.presets import PRESETS, apply_preset

    cfg = PipelineConfig()
    assert cfg.train.modality_dropout == 0.0 and cfg.demo.modality_dropout > 0
    from pipeline.config import with_overrides

    on = with_overrides(cfg, {"train.modality_dropout": 0.3})
    for name in PRESETS:
        assert apply_preset(on, name).train.modality_dropout == 0.0
