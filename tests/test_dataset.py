"""Samples, batches, splits, normalisation, MMSA pickles and cache folders (pipeline.dataset, mmsa)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cache import read_manifest, write_manifest
from pipeline.config import PipelineConfig, with_overrides
from pipeline.dataset import (Normalizer, collate, feature_spec, find_entries, load_cache, load_data,
                              sample_from_clip, score_class, split_by_group)
from pipeline.errors import UserError
from pipeline.mmsa import is_aligned, read_pickle
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
    np.testing.assert_allclose(std, [np.sqrt(8 / 3), 1e-6], rtol=1e-5)   # constant feature: floored
    out = Normalizer.from_state(norm.state()).apply(s1)
    np.testing.assert_allclose(out["audio"][:2, 0], [-2 / np.sqrt(8 / 3), 0.0], rtol=1e-5)
    assert (out["audio"][2] == 0).all()                                     # masked frame stays zero
    assert (s1["audio"][2] == [100.0, -5.0]).all()                         # input untouched
    with pytest.raises(ValueError):
        norm.apply({"audio": np.zeros((1, 3), np.float32), "video": np.zeros((1, 1), np.float32)})


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
