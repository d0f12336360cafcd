"""One PNG per section of analysis.json (pipeline.analysis.analyze), drawn from the section alone.

Written atomically with matplotlib's Agg backend (pipeline.training.plots' helpers).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.training.plots import _figure, _save

MODALITIES = ("text", "audio", "video")
SPACES = ("homo", "hetero")
SPACE_NAMES = {"homo": "homogeneous", "hetero": "heterogeneous"}
COLORS = {"text": "tab:blue", "audio": "tab:orange", "video": "tab:green"}


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    ax.set_axis_off()


def plot_unimodal_accuracy(section: dict[str, Any], path: Path) -> Path:
    """Grouped bars: per modality, the homogeneous head, the heterogeneous head and their average;
    a dashed line at the fused model's accuracy (Table 7)."""
    fig, ax = _figure(figsize=(7.5, 4.2), layout="constrained")
    groups = [g for g in ("homo", "hetero", "average") if section.get(g)]
    width = 0.8 / max(len(groups), 1)
    for i, g in enumerate(groups):
        vals = [section[g][m]["accuracy"] or 0.0 for m in MODALITIES]
        bars = ax.bar(np.arange(3) + (i - (len(groups) - 1) / 2) * width, vals, width,
                      label=SPACE_NAMES.get(g, "average of the spaces"))
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    fused = section["fused"]["accuracy"]
    if fused is not None:
        ax.axhline(fused, color="black", ls="--", lw=1.2, label=f"fused model {fused:.2f}")
    ax.set_xticks(range(3), MODALITIES)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(section["accuracy_metric"])
    ax.set_title(f"unimodal auxiliary heads per space (n={section['n']})")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_edges_by_epoch(section: dict[str, Any], path: Path) -> Path:
    """Each of the six edges of HoGD and HeGD (mean over the valid split) against the epoch."""
    epochs = section["epochs"]
    if not epochs:
        fig, ax = _figure(figsize=(7, 2.5))
        _empty(ax, section.get("note") or "no edges recorded")
        return _save(fig, path)
    fig, axes = _figure(1, 2, figsize=(11, 4), layout="constrained", sharey=True)
    x = [e["epoch"] for e in epochs]
    for ax, space in zip(axes, SPACES):
        ax.set_title(f"{'HoGD' if space == 'homo' else 'HeGD'} edges ({SPACE_NAMES[space]})")
        if all(e[space] is None for e in epochs):
            _empty(ax, "not in this model")
            continue
        for i, teacher in enumerate(MODALITIES):
            for j, student in enumerate(MODALITIES):
                if i != j:
                    ax.plot(x, [np.nan if e[space] is None else e[space][i][j] for e in epochs], marker=".",
                            label=f"{teacher[0].upper()}->{student[0].upper()}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean edge weight")
    axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def plot_feature_embedding(section: dict[str, Any], path: Path) -> Path:
    """Per space: the t-SNE points coloured by modality (Figs. 7-8)."""
    fig, axes = _figure(1, 2, figsize=(11, 4.8), layout="constrained")
    for ax, space in zip(axes, SPACES):
        data = section["spaces"].get(space)
        ax.set_title(f"{SPACE_NAMES[space]} features ({section['method']})")
        if data is None:
            _empty(ax, "not in this model")
            continue
        xy = np.asarray(data["points"])
        mods = np.asarray(data["modality"])
        for m in MODALITIES:
            sel = mods == m
            ax.scatter(xy[sel, 0], xy[sel, 1], s=10, alpha=0.7, color=COLORS[m], label=m)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_dictionary_by_class(section: dict[str, Any], path: Path) -> Path:
    """Per space: mean dictionary attention over the atoms (columns) for each class (rows) (Fig. 11)."""
    fig, axes = _figure(1, 2, figsize=(12, 4), layout="constrained")
    classes = section["classes"]
    for ax, space in zip(axes, SPACES):
        data = section["spaces"].get(space)
        ax.set_title(f"{'HoDM' if space == 'homo' else 'HeDM'} mean activation per class")
        if data is None:
            _empty(ax, "not in this model")
            continue
        means = np.asarray(data["mean"])
        im = ax.imshow(means, aspect="auto", cmap="magma", interpolation="nearest")
        ax.set_yticks(range(len(classes)), [f"{c} (n={n})" for c, n in zip(classes, data["count"])])
        ax.set_xlabel("dictionary atom")
        ax.set_ylabel("class")
        fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_attention_maps(section: dict[str, Any], path: Path) -> Path:
    """Rows: samples; columns: the six cross-modal transformers (target frames x source frames)."""
    samples = section["samples"]
    if not samples:
        fig, ax = _figure(figsize=(7, 2.5))
        _empty(ax, section.get("note") or "no samples")
        return _save(fig, path)
    names = list(samples[0]["maps"])
    fig, axes = _figure(len(samples), len(names), figsize=(2.3 * len(names), 2.2 * len(samples)),
                        layout="constrained", squeeze=False)
    for r, sample in enumerate(samples):
        for c, name in enumerate(names):
            ax = axes[r][c]
            ax.imshow(np.asarray(sample["maps"][name]), aspect="auto", cmap="viridis", vmin=0.0)
            src, _, tgt = name.split("_")
            ax.set_title(f"{src}->{tgt}" if r == 0 else "", fontsize=9)
            ax.set_xlabel(f"{src} frame", fontsize=7)
            sid = sample["id"][:14].replace("$", r"\$")
            ax.set_ylabel(f"{sid}\n{tgt} frame" if c == 0 else f"{tgt} frame", fontsize=7)
            ax.tick_params(labelsize=6)
    return _save(fig, path)


def plot_ablation(table: dict[str, Any], metrics: list[str], path: Path) -> Path:
    """One panel per metric: each ablation row's mean over seeds with its standard deviation."""
    fig, axes = _figure(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), layout="constrained", squeeze=False)
    labels = [r["label"] for r in table["rows"]]
    for ax, name in zip(axes[0], metrics):
        means = [r["metrics"][name]["mean"] for r in table["rows"]]
        stds = [r["metrics"][name]["std"] or 0.0 for r in table["rows"]]
        means = [np.nan if m is None else m for m in means]
        ax.bar(range(len(labels)), means, yerr=stds, capsize=4,
               color=["tab:red" if r["row"] == "full" else "tab:gray" for r in table["rows"]])
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{name} (mean ± std over seeds {', '.join(map(str, table['seeds']))})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


PLOTS: dict[str, Callable[[dict[str, Any], Path], Path]] = {
    "unimodal_accuracy": plot_unimodal_accuracy,
    "edges_by_epoch": plot_edges_by_epoch,
    "feature_embedding": plot_feature_embedding,
    "dictionary_by_class": plot_dictionary_by_class,
    "attention_maps": plot_attention_maps,
}
