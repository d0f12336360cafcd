"""predict's ``disagreement`` field: how far the unimodal heads pull different ways."""
from __future__ import annotations

import pytest

from pipeline.inference.predict import format_table, modality_disagreement


def test_agreeing_heads_are_low():
    d = modality_disagreement({"text": 1.8, "audio": 1.2, "video": 2.0}, 1.9)
    assert d == {"spread": pytest.approx(0.8), "level": "low", "against": []}


def test_a_face_smiling_at_negative_words_is_named():
    d = modality_disagreement({"text": -2.1, "audio": -0.7, "video": 1.9}, -1.2)
    assert d["spread"] == pytest.approx(4.0) and d["level"] == "high" and d["against"] == ["video"]
    # the fusion sided with the face: then the words are the ones against it
    d = modality_disagreement({"text": -2.1, "audio": 0.2, "video": 1.9}, 1.1)
    assert d["against"] == ["text"] and d["level"] == "high"


def test_spread_without_opposite_sides_is_moderate_and_an_undecided_fusion_has_no_side():
    d = modality_disagreement({"text": 0.3, "audio": 1.0, "video": 1.8}, 1.0)
    assert d["level"] == "moderate" and d["against"] == []
    # a fused score within +-0.5 takes no side, so no head is "against" it, however far apart
    d = modality_disagreement({"text": -2.0, "audio": 0.0, "video": 2.0}, 0.1)
    assert d["against"] == [] and d["level"] == "high" and d["spread"] == pytest.approx(4.0)
    # a head that is only slightly on the other side is not against it
    assert modality_disagreement({"text": 2.0, "audio": -0.4, "video": 1.0}, 1.5)["against"] == []


def test_classification_heads_use_probabilities():
    same = {"negative": 0.2, "positive": 0.8}
    d = modality_disagreement({"text": same, "audio": same, "video": same}, same)
    assert d == {"spread": 0.0, "level": "low", "against": []}
    d = modality_disagreement({"text": same, "audio": same, "video": {"negative": 0.9, "positive": 0.1}}, same)
    assert d["spread"] == pytest.approx(0.7) and d["against"] == ["video"] and d["level"] == "high"


def test_table_has_a_disagreement_column():
    row = {"clip": "a/clip.mp4", "status": "ok", "score": -1.2, "label_7": "weakly negative",
           "label_2": "negative", "unimodal": {"text": -2.1, "audio": -0.7, "video": 1.9},
           "face_frames": 10, "frames": 10, "flags": [], "time_s": 1.0, "transcript": "bad"}
    row["disagreement"] = modality_disagreement(row["unimodal"], row["score"])
    lines = format_table([row]).splitlines()
    assert "disagreement" in lines[0]
    assert "high 4.00 (video against)" in lines[2]
