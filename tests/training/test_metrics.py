"""Metrics against hand-computed cases (MMSA definitions: half-to-even rounding, zero labels)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.training.metrics import (classification_metrics, format_metrics, is_better, regression_metrics,
                              task_metrics)

# true / pred chosen so that every metric has a hand-computable value; see the comments per metric
TRUE = [2.6, -1.4, 0.0, 0.5, -3.0, 2.0]
PRED = [3.4, -0.5, 0.2, -0.1, -1.5, 2.5]


def test_regression_metrics_hand_computed() -> None:
    m = regression_metrics(PRED, TRUE)
    # Has0: (true >= 0) = T F T T F T, (pred >= 0) = T F T F F T -> 5 of 6 agree
    assert m["Has0_acc_2"] == pytest.approx(5 / 6)
    # weighted F1: class True (support 4) P=1 R=3/4 F1=6/7; class False (support 2) P=2/3 R=1 F1=4/5
    assert m["Has0_F1"] == pytest.approx((4 * 6 / 7 + 2 * 4 / 5) / 6)
    # Non0: the label 0.0 is dropped; (x > 0): true T F T F T, pred T F F F T -> 4 of 5
    assert m["Non0_acc_2"] == pytest.approx(4 / 5)
    # class True (3): P=1 R=2/3 F1=0.8; class False (2): P=2/3 R=1 F1=0.8
    assert m["Non0_F1"] == pytest.approx(0.8)
    # Mult_acc_7: round(clip(pred)) = 3 -0 0 -0 -2 2 ; round(true) = 3 -1 0 0 -3 2 (0.5 -> 0, 2.5 -> 2)
    assert m["Mult_acc_7"] == pytest.approx(4 / 6)
    # Mult_acc_5: clip to [-2, 2]: pred 2 -0 0 -0 -2 2 ; true 2 -1 0 0 -2 2
    assert m["Mult_acc_5"] == pytest.approx(5 / 6)
    # MAE: 0.8 + 0.9 + 0.2 + 0.6 + 1.5 + 0.5 = 4.5 over 6
    assert m["MAE"] == pytest.approx(0.75)
    # Pearson, written out by hand
    mp, mt = sum(PRED) / 6, sum(TRUE) / 6
    cov = sum((p - mp) * (t - mt) for p, t in zip(PRED, TRUE))
    var_p = sum((p - mp) ** 2 for p in PRED)
    var_t = sum((t - mt) ** 2 for t in TRUE)
    assert m["Corr"] == pytest.approx(cov / math.sqrt(var_p * var_t))


def test_rounding_is_half_to_even_not_half_away() -> None:
    # half-away-from-zero would round 0.5 -> 1, 1.5 -> 2, 2.5 -> 3, -0.5 -> -1: only one of four matching
    m = regression_metrics([0.5, 2.5, -0.5, 1.5], [0.0, 2.0, 0.0, 2.0])
    assert m["Mult_acc_7"] == 1.0
    m = regression_metrics([0.5, 2.5, -0.5, 1.5], [1.0, 3.0, -1.0, 2.0])
    assert m["Mult_acc_7"] == pytest.approx(1 / 4)


def test_clipping_before_rounding() -> None:
    # predictions beyond the range count as the end class; MAE stays unclipped
    m = regression_metrics([5.0, -4.0, 2.7], [3.0, -3.0, 2.0])
    assert m["Mult_acc_7"] == pytest.approx(2 / 3)          # 3 == 3, -3 == -3, 3 != 2
    assert m["Mult_acc_5"] == 1.0                            # clipped to [-2, 2] all three agree
    assert m["MAE"] == pytest.approx((2.0 + 1.0 + 0.7) / 3)


def test_zero_labels() -> None:
    # a zero label is positive for Has0 and absent for Non0
    m = regression_metrics([-0.1, 0.3, -2.0], [0.0, 1.0, -1.0])
    assert m["Has0_acc_2"] == pytest.approx(2 / 3)          # 0.0 >= 0 but -0.1 < 0
    assert m["Non0_acc_2"] == 1.0                            # the zero label is dropped
    all_zero = regression_metrics([0.5, -0.5], [0.0, 0.0])
    assert math.isnan(all_zero["Non0_acc_2"]) and math.isnan(all_zero["Non0_F1"])
    assert all_zero["Has0_acc_2"] == 0.5
    assert math.isnan(all_zero["Corr"])                     # constant labels: undefined, not 0


def test_classification_metrics_hand_computed() -> None:
    true = [1, 1, 1, 1, 0, 0]
    pred = [1, 1, 1, 0, 1, 1]
    m = classification_metrics(pred, true)
    # class 1 (support 4): TP 3 FP 2 FN 1 -> P 3/5 R 3/4 F1 2/3; class 0 (support 2): all 0
    assert m["Acc"] == pytest.approx(0.5)
    assert m["Precision"] == pytest.approx(4 / 6 * 3 / 5)
    assert m["Recall"] == pytest.approx(4 / 6 * 3 / 4)
    assert m["F1"] == pytest.approx(4 / 6 * 2 / 3)
    # weighted, not the positive class alone (binary averaging would give P 3/5, R 3/4, F1 2/3);
    # a support-weighted recall is the accuracy
    assert m["Precision"] != pytest.approx(3 / 5) and m["Recall"] != pytest.approx(3 / 4)
    assert m["Recall"] == pytest.approx(m["Acc"])
    # from logits: argmax
    logits = np.array([[0.1, 2.0], [0.0, 1.0], [0.3, 0.4], [2.0, -1.0], [-1.0, 0.0], [0.0, 0.5]])
    assert task_metrics("binary", logits, np.array(true)) == m


def test_is_better_and_format() -> None:
    assert is_better("MAE", 0.5, 0.6) and not is_better("MAE", 0.7, 0.6)
    assert is_better("Has0_acc_2", 0.8, 0.7) and not is_better("F1", 0.6, 0.7)
    assert is_better("MAE", 1.0, None) and not is_better("Corr", float("nan"), 0.1)
    text = format_metrics({"MAE": 0.123456, "Corr": float("nan")})
    assert "0.1235" in text and "n/a" in text
    with pytest.raises(ValueError):
        regression_metrics([1.0], [1.0, 2.0])
