"""Evaluation metrics, defined exactly as the MMSA framework defines them (so numbers compare).

Regression (sentiment scores in [-3, 3]; MMSA ``__eval_mosei_regression``):

=============  ==========================================================================
MAE            mean |pred - true|, predictions NOT clipped
Corr           Pearson correlation of pred and true (NaN when either is constant)
Mult_acc_7     clip both to [-3, 3], round both with numpy's round (half to even), accuracy
Mult_acc_5     the same with [-2, 2]
Has0_acc_2     classes (true >= 0) vs (pred >= 0), accuracy;  Has0_F1: weighted F1 of the same
Non0_acc_2     samples whose true label is exactly 0 dropped, then (x > 0); Non0_F1 likewise
=============  ==========================================================================

Classification (humor, sarcasm, any ``n_classes``): ``Acc``, and ``Precision``, ``Recall`` and ``F1``
all averaged with sklearn's ``average="weighted"`` (each class's score weighted by its support), also
for binary tasks: not the positive class's score alone (``average="binary"``).  The reference notes ask
for weighted F1, and MUStARD's sarcasm results are reported as weighted precision / recall / F1, so
precision and recall use the same averaging.  A weighted recall equals the accuracy.

Values are full-precision Python floats; MMSA rounds to 4 decimals only for display.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

REGRESSION_METRICS = ("Has0_acc_2", "Has0_F1", "Non0_acc_2", "Non0_F1", "Mult_acc_5", "Mult_acc_7",
                      "MAE", "Corr")
CLASSIFICATION_METRICS = ("Acc", "Precision", "Recall", "F1")
LOWER_IS_BETTER = frozenset({"MAE", "loss"})


def _f1_weighted(true: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(true, pred, average="weighted", zero_division=0))


def multiclass_acc(pred: np.ndarray, true: np.ndarray) -> float:
    """Share of samples whose rounded (half to even) prediction equals the rounded label."""
    return float(np.mean(np.round(pred) == np.round(true)))


def regression_metrics(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> dict[str, float]:
    """The MMSA regression metrics of predicted scores against true scores (see the module doc)."""
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    t = np.asarray(true, dtype=np.float64).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"{p.size} predictions but {t.size} labels")
    if p.size == 0:
        raise ValueError("no samples to evaluate")
    out: dict[str, float] = {}

    has0_t, has0_p = t >= 0, p >= 0
    out["Has0_acc_2"] = float(np.mean(has0_t == has0_p))
    out["Has0_F1"] = _f1_weighted(has0_t, has0_p)

    nz = t != 0
    if nz.any():
        non0_t, non0_p = t[nz] > 0, p[nz] > 0
        out["Non0_acc_2"] = float(np.mean(non0_t == non0_p))
        out["Non0_F1"] = _f1_weighted(non0_t, non0_p)
    else:                                   # every label is exactly 0: undefined
        out["Non0_acc_2"] = out["Non0_F1"] = float("nan")

    out["Mult_acc_5"] = multiclass_acc(np.clip(p, -2.0, 2.0), np.clip(t, -2.0, 2.0))
    out["Mult_acc_7"] = multiclass_acc(np.clip(p, -3.0, 3.0), np.clip(t, -3.0, 3.0))
    out["MAE"] = float(np.mean(np.abs(p - t)))
    if p.size < 2 or np.std(p) == 0 or np.std(t) == 0:
        out["Corr"] = float("nan")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out["Corr"] = float(np.corrcoef(p, t)[0, 1])
    return out


def classification_metrics(pred: Sequence[int] | np.ndarray, true: Sequence[int] | np.ndarray) -> dict[str, float]:
    """Accuracy and support-weighted (sklearn ``average="weighted"``) precision, recall and F1 of
    predicted class indices, binary tasks included (see the module docstring)."""
    from sklearn.metrics import precision_recall_fscore_support

    p = np.asarray(pred).reshape(-1).astype(np.int64)
    t = np.asarray(true).reshape(-1).astype(np.int64)
    if p.shape != t.shape:
        raise ValueError(f"{p.size} predictions but {t.size} labels")
    if p.size == 0:
        raise ValueError("no samples to evaluate")
    precision, recall, f1, _ = precision_recall_fscore_support(t, p, average="weighted", zero_division=0)
    return {"Acc": float(np.mean(p == t)), "Precision": float(precision), "Recall": float(recall),
            "F1": float(f1)}


def task_metrics(task: str, prediction: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Metrics for a model output: (N,) scores for regression, (N, C) logits otherwise."""
    prediction = np.asarray(prediction)
    if task == "regression":
        return regression_metrics(prediction.reshape(-1), true)
    classes = prediction.argmax(axis=-1) if prediction.ndim == 2 else prediction
    return classification_metrics(classes, true)


def metric_names(task: str) -> tuple[str, ...]:
    return REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS


def is_better(metric: str, new: float, best: float | None) -> bool:
    """Whether ``new`` improves on ``best`` for ``metric`` (NaN never improves)."""
    if new is None or (isinstance(new, float) and math.isnan(new)):
        return False
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    return new < best if metric in LOWER_IS_BETTER else new > best


def json_safe(value: float) -> float | None:
    """NaN/inf -> None so a metrics dict can be written as strict JSON."""
    return None if value is None or not math.isfinite(float(value)) else float(value)


def format_metrics(metrics: dict[str, float], names: Sequence[str] | None = None) -> str:
    """A two-line table (names, then values with 4 decimals as MMSA prints them)."""
    names = list(names or metrics)
    cells = [("n/a" if metrics.get(n) is None or not math.isfinite(metrics[n]) else f"{metrics[n]:.4f}")
             for n in names]
    widths = [max(len(n), len(c)) for n, c in zip(names, cells)]
    return "\n".join(["  ".join(n.rjust(w) for n, w in zip(names, widths)),
                      "  ".join(c.rjust(w) for c, w in zip(cells, widths))])
