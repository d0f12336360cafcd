"""bench/demo_cv.py's folds: what a fold holds out is never trained on (planning only, no training)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pipeline.config import DemoConfig
from pipeline.demo.run import plan_demo_corpus


def _demo_cv():
    path = Path(__file__).resolve().parents[2] / "bench" / "demo_cv.py"
    spec = importlib.util.spec_from_file_location("demo_cv", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("by, k", [("voice", 6), ("identity", 3), ("accent", 3)])
def test_folds_hold_out_groups_and_their_sentences(by, k):
    cv = _demo_cv()
    group = cv.GROUPS[by]
    folds = cv.folds_of(plan_demo_corpus(DemoConfig())[2], k, by)
    assert len(folds) == k
    held_everywhere = []
    for fold in folds:
        test = [s for s in fold if s.split == "test"]
        train = [s for s in fold if s.split == "train"]
        assert test and train and any(s.split == "valid" for s in fold)
        # the held-out voices (identities) and sentences appear in no training or validation clip
        assert not {group(s) for s in test} & {group(s) for s in fold if s.split != "test"}
        assert not {s.video_id for s in test} & {s.video_id for s in fold if s.split != "test"}
        held_everywhere += [s.clip_id for s in test]
    # every clip of the pool is held out exactly once
    pool = [s.clip_id for s in folds[0]]
    assert sorted(held_everywhere) == sorted(pool)
    if by == "accent":   # both variants of a held-out accent are held out
        assert all(len({s.voice for s in fold if s.split == "test"}) == 4 for fold in folds)
    with pytest.raises(ValueError):
        cv.folds_of(folds[0], 2, "sentence")


def test_folds_by_accent_and_identity_hold_out_both_and_train_on_neither():
    cv = _demo_cv()
    pool = [s for s in plan_demo_corpus(DemoConfig())[2] if s.split != "test"]
    folds = cv.folds_of(pool, 3, "accent+identity")
    assert len(folds) == 3
    accent, identity = cv.GROUPS["accent"], cv.GROUPS["identity"]
    for fold in folds:
        test = [s for s in fold if s.split == "test"]
        seen = [s for s in fold if s.split != "test"]
        assert test and seen
        assert not {accent(s) for s in test} & {accent(s) for s in seen}
        assert not {identity(s) for s in test} & {identity(s) for s in seen}
        assert len(fold) < len(pool)           # the clips in one held-out group only: in no split
    with pytest.raises(ValueError):
        cv.folds_of(folds[0], 2, "sentence")
