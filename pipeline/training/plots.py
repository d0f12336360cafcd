"""PNG plots of a training run: loss curves per epoch, and the mean HoGD / HeGD edge matrices.

Both are written atomically (rendered to memory, then temp file + rename) with matplotlib's Agg
backend, so they work without a display.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.files import atomic_write_bytes

MODALITY_LABELS = ("text", "audio", "video")


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def _figure(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def plot_loss_curves(history: Sequence[dict[str, Any]], path: Path, val_metric: str) -> Path:
    """Left: every train loss term and the valid total per epoch (log scale); right: ``val_metric``."""
    fig, (ax_loss, ax_metric) = _figure(1, 2, figsize=(13, 4.2), layout="constrained",
                                        gridspec_kw={"width_ratios": [1.4, 1.0]})
    epochs = [h["epoch"] for h in history]
    terms = sorted({k for h in history for k in h.get("train", {})})
    for term in terms:
        values = [h.get("train", {}).get(term, np.nan) for h in history]
        ax_loss.plot(epochs, values, marker=".", lw=2.2 if term == "total" else 1.0,
                     label=f"train {term}")
    valid = [h.get("valid", {}).get("total", np.nan) for h in history]
    if not np.all(np.isnan(np.asarray(valid, dtype=float))):
        ax_loss.plot(epochs, valid, marker="o", lw=2.2, ls="--", color="black", label="valid total")
    values = np.asarray([v for h in history for v in (list(h.get("train", {}).values()) + valid)
                         if v is not None], dtype=float)
    if values.size and np.all(values[np.isfinite(values)] > 0):
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("losses")
    ax_loss.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    metric = [h.get("valid_metrics", {}).get(val_metric) for h in history]
    metric = [np.nan if m is None else m for m in metric]
    ax_metric.plot(epochs, metric, marker="o", color="tab:red")
    ax_metric.set_xlabel("epoch")
    ax_metric.set_title(f"validation {val_metric}")
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_edge_matrices(edges: dict[str, np.ndarray | None], path: Path, title: str = "") -> Path:
    """One heat map per space ("homo" -> HoGD, "hetero" -> HeGD) of a mean (3, 3) edge matrix
    W[teacher, student]; a missing space (ablated) is drawn as an empty panel.

    Each sample's W is one softmax over its six off-diagonal edges (:mod:`dhmd.graph_distill`): the
    diagonal is 0 and the six weights sum to 1, so the mean matrix's entries also sum to 1 (neither a
    row nor a column does on its own).  Colours run from 0 to the largest entry."""
    names = {"homo": "HoGD (homogeneous)", "hetero": "HeGD (heterogeneous)"}
    fig, axes = _figure(1, 2, figsize=(10, 4.2), layout="constrained")
    for ax, space in zip(axes, ("homo", "hetero")):
        w = edges.get(space)
        ax.set_title(names[space])
        if w is None:
            ax.text(0.5, 0.5, "not in this model", ha="center", va="center")
            ax.set_axis_off()
            continue
        w = np.asarray(w, dtype=float)
        im = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=max(float(w.max()), 1e-6))
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center",
                        color="white" if w[i, j] < 0.6 * w.max() else "black")
        ax.set_xticks(range(3), MODALITY_LABELS)
        ax.set_yticks(range(3), MODALITY_LABELS)
        ax.set_xlabel("student (to)")
        ax.set_ylabel("teacher (from)")
        fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
