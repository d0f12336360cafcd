"""The explanation picture of one prediction: who distilled to whom, and what happened when.

``predict --explain DIR`` writes one PNG per clip with :func:`write_explanation`:

* top: the two 3x3 distillation graphs of the model (``edges_homo`` and ``edges_hetero``) as
  annotated heat maps, rows = teacher (source) modality i, columns = student (target) modality j,
  so cell (i, j) is the weight of the edge i -> j (the six edges sum to 1, the diagonal is 0;
  colours run up to the strongest edge);
  next to them the prediction, the unimodal heads and the transcript;
* below, on one shared time axis: the words at their times, then the voicing probability with the
  fundamental frequency (F0) of the voiced frames, then the main facial action-unit traces (AU12
  smile, AU15 lip-corner depressor, AU04 brow lowerer, AU06 cheek raiser, AU25/26 lips apart/jaw
  drop) with the frames where no face was found shaded.

It draws from the unaligned cache entry (:class:`pipeline.extract.cache.ClipFeatures`) so every trace is
at its own rate and in its own units, not the normalised model input.  Matplotlib runs with the
non-interactive Agg backend; the file appears atomically.
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.extract.cache import ClipFeatures
from pipeline.files import atomic_write_bytes

MODALITY_LABELS = ("text", "audio", "video")
# action units worth showing, in order of preference, with a short reading
MAIN_AUS = {4: "AU04 brow lowerer", 6: "AU06 cheek raiser", 12: "AU12 smile",
            15: "AU15 lip corner down", 25: "AU25 lips apart", 26: "AU26 jaw drop"}
MAX_AU_TRACES = 5
_AU_NAME = re.compile(r"^(?:est_)?AU0*(\d+)(?:_\w*)?$", re.IGNORECASE)   # est_AU12_lip_corner_pull, AU12, AU12_r


def pick_au_columns(video_names: list[str]) -> list[tuple[int, str]]:
    """(column index, legend label) of the main facial AU traces present in ``video_names``.

    Accepts our estimated AUs (``est_AU12_lip_corner_pull``) and py-feat columns (``AU12``, ``AU12_r``); when both
    spellings of one AU exist the first column wins.  Falls back to any other AU columns (lowest
    number first) when none of :data:`MAIN_AUS` is there.
    """
    found: dict[int, int] = {}
    for col, name in enumerate(video_names):
        m = _AU_NAME.match(name.strip())
        if m:
            found.setdefault(int(m.group(1)), col)
    main = [(found[au], MAIN_AUS[au]) for au in MAIN_AUS if au in found]
    if main:
        return main[:MAX_AU_TRACES]
    return [(found[au], f"AU{au:02d}") for au in sorted(found)][:MAX_AU_TRACES]


def _column(names: list[str], wanted: str) -> int | None:
    return names.index(wanted) if wanted in names else None


def _heatmap(ax, matrix: Any, title: str) -> None:
    """One annotated 3x3 edge matrix (rows = teacher i, columns = student j).

    The six edges share one unit budget, so each is small; the colours run from 0 (white) to the
    strongest edge of this matrix (darkest blue), and every cell is labelled with its weight.
    """
    if matrix is None:
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"{title}\n(not in this model)", ha="center", va="center", fontsize=10)
        return
    m = np.asarray(matrix, dtype=float)
    off = m[~np.eye(m.shape[0], dtype=bool)]
    top = float(np.nanmax(off)) if off.size and np.isfinite(off).any() and np.nanmax(off) > 0 else 1.0
    ax.imshow(m, cmap="Blues", vmin=0.0, vmax=top)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            text = "-" if i == j else f"{m[i, j]:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=11,
                    color="white" if m[i, j] > 0.6 * top else "black")
    ax.set_xticks(range(3), MODALITY_LABELS)
    ax.set_yticks(range(3), MODALITY_LABELS)
    ax.set_xlabel("student (target j); the six edges sum to 1", fontsize=9)
    ax.set_ylabel("teacher (source i)")
    ax.set_title(f"{title}: edge i -> j", fontsize=11)


def _summary_lines(result: dict[str, Any]) -> list[str]:
    """The prediction in a few lines of text for the top-right panel."""
    lines = [f"clip: {_wrap(Path(str(result.get('clip', ''))).name, 44, 2)}"]
    if result.get("score") is not None:
        lines.append(f"score: {result['score']:+.2f}  ({result.get('label_7')}, {result.get('label_2')})")
    elif result.get("probabilities"):
        probs = result["probabilities"]
        best = max(probs, key=probs.get)
        lines.append(f"predicted: {best} (p = {probs[best]:.2f})")
    uni = result.get("unimodal") or {}
    for name in MODALITY_LABELS:
        value = uni.get(name)
        if isinstance(value, dict):
            best = max(value, key=value.get)
            lines.append(f"{name} head: {best} ({value[best]:.2f})")
        elif value is not None:
            lines.append(f"{name} head: {value:+.2f}")
    lines.append(f"face in {result.get('face_frames', 0)} of {result.get('frames', 0)} frames")
    return lines


def _wrap(text: str, width: int = 48, max_lines: int = 6) -> str:
    import textwrap

    lines = textwrap.wrap(text, width) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: width - 3] + "..."
    return "\n".join(lines)


def _word_track(ax, clip: ClipFeatures, duration: float) -> None:
    """Words as labelled spans at their start/end times, on three staggered rows so they stay legible."""
    ax.set_ylim(0, 3)
    ax.set_yticks([])
    ax.set_ylabel("words", rotation=0, ha="right", va="center")
    starts = np.asarray(clip.word_start, dtype=float)
    ends = np.asarray(clip.word_end, dtype=float)
    if not clip.words:
        ax.text(duration / 2, 1.5, "(no words)", ha="center", va="center", color="0.4")
        return
    renderer = ax.figure.canvas.get_renderer()
    for k, (word, s, e) in enumerate(zip(clip.words, starts, ends)):
        row = 2 - k % 3
        ax.axvspan(s, max(e, s + 1e-3), ymin=row / 3 + 0.04, ymax=(row + 1) / 3 - 0.04,
                   color="tab:blue", alpha=0.15, lw=0)
        label = ax.text((s + e) / 2, row + 0.5, word, ha="center", va="center", fontsize=9, clip_on=True)
        # a word at the very start or end of the clip would be cut by the axes: align it inwards
        box, frame = label.get_window_extent(renderer), ax.get_window_extent(renderer)
        if box.x0 < frame.x0:
            label.set_x(max(float(s), 0.0))
            label.set_horizontalalignment("left")
        elif box.x1 > frame.x1:
            label.set_x(min(float(e), duration))
            label.set_horizontalalignment("right")
    if clip.word_times_source in ("spread", "none"):
        ax.set_title("word times estimated (spread evenly)", fontsize=8, loc="right", color="0.4")


def _voice_track(ax, clip: ClipFeatures) -> None:
    """F0 of the voiced frames (line, left axis) over voicing (right axis, 0..1).

    Voicing is drawn as the fraction of pYIN frames called voiced in each feature window (filled,
    ``voiced_frac``) and pYIN's mean voicing probability (thin line, ``voiced_prob``), whichever of
    the two the acoustic features have.  F0 is drawn where it is positive (0 = unvoiced window).
    """
    names = list(clip.audio_names)
    feats = np.asarray(clip.audio_features, dtype=float)
    times = np.asarray(clip.audio_times, dtype=float)
    f0_col = _column(names, "f0_hz")
    frac_col, prob_col = _column(names, "voiced_frac"), _column(names, "voiced_prob")
    ax.set_ylabel("F0 (Hz)")
    if feats.size == 0 or (f0_col is None and frac_col is None and prob_col is None):
        ax.text(0.5, 0.5, "(no voicing / F0 features)", transform=ax.transAxes, ha="center", color="0.4")
        return
    handles = []
    if frac_col is not None or prob_col is not None:
        twin = ax.twinx()
        if frac_col is not None:
            handles.append(twin.fill_between(times, 0, feats[:, frac_col], color="tab:orange", alpha=0.25,
                                             lw=0, label="voiced fraction"))
        if prob_col is not None:
            handles += twin.plot(times, feats[:, prob_col], color="tab:orange", lw=0.8, label="voicing prob.")
        twin.set_ylim(0, 1.05)
        twin.set_ylabel("voicing", color="tab:orange")
        ax.set_zorder(twin.get_zorder() + 1)          # F0 drawn over the voicing
        ax.patch.set_visible(False)
    if f0_col is not None:
        f0 = feats[:, f0_col].copy()
        f0[~(f0 > 0)] = np.nan
        handles += ax.plot(times, f0, color="tab:red", lw=1.6, marker=".", ms=3, label="F0 (voiced)")
        if np.isfinite(f0).any():
            lo, hi = np.nanmin(f0), np.nanmax(f0)
            pad = max(10.0, 0.15 * (hi - lo))
            ax.set_ylim(lo - pad, hi + pad)
    _legend_above(ax, handles)


def _legend_above(ax, handles: list) -> None:
    """A one-line legend just above the axes' top right corner, outside the data."""
    if handles:
        ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(handles),
                  fontsize=8, frameon=False, borderaxespad=0.1)


def _face_track(ax, clip: ClipFeatures) -> None:
    """The main AU traces over time, the frames without a face shaded grey."""
    times = np.asarray(clip.video_times, dtype=float)
    feats = np.asarray(clip.video_features, dtype=float)
    mask = np.asarray(clip.face_mask, dtype=bool)
    ax.set_ylabel("facial AUs")
    handles = []
    if times.size and (~mask).any():
        step = float(np.median(np.diff(times))) if times.size > 1 else 0.1
        for t in times[~mask]:
            ax.axvspan(t - step / 2, t + step / 2, color="0.85", lw=0)
        handles += ax.plot([], [], color="0.85", lw=6, label="no face")
    columns = pick_au_columns(list(clip.video_names))
    if not columns or feats.size == 0:
        ax.text(0.5, 0.5, "(no action-unit features)", transform=ax.transAxes, ha="center", color="0.4")
    for col, label in columns:
        trace = feats[:, col].copy()
        trace[~mask] = np.nan
        handles += ax.plot(times, trace, lw=1.5, label=label)
    _legend_above(ax, handles)


def build_explanation_figure(result: dict[str, Any], clip: ClipFeatures, dpi: int = 100):
    """The explanation of one predicted clip as a matplotlib Figure (Agg canvas; see the module
    docstring).  ``fig.axes[:6]`` are, in order: the homogeneous and heterogeneous edge heat maps,
    the summary text, the word track, the voice track and the face track; the voice track's voicing
    axis (a twin, when the features have voicing) comes after them.  The caller closes the figure
    (``matplotlib.pyplot.close(fig)``)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    duration = float(clip.duration_s) if clip.duration_s else 0.0
    for arr in (clip.word_end, clip.audio_times, clip.video_times):
        if np.size(arr):
            duration = max(duration, float(np.max(arr)))
    duration = max(duration, 0.5)

    fig = plt.figure(figsize=(13, 10), dpi=dpi)
    grid = GridSpec(4, 3, figure=fig, height_ratios=[3.2, 1.1, 1.6, 1.8], hspace=0.32, wspace=0.35,
                    left=0.09, right=0.93, top=0.94, bottom=0.06)
    try:
        _heatmap(fig.add_subplot(grid[0, 0]), result.get("edges_homo"), "homogeneous")
        _heatmap(fig.add_subplot(grid[0, 1]), result.get("edges_hetero"), "heterogeneous")
        info = fig.add_subplot(grid[0, 2])
        info.set_axis_off()
        text = "\n".join(_summary_lines(result))
        text += "\n\n" + _wrap(f"\"{result.get('transcript') or clip.transcript}\"")
        info.text(0.0, 1.0, text, va="top", ha="left", fontsize=10, transform=info.transAxes)

        words = fig.add_subplot(grid[1, :])
        voice = fig.add_subplot(grid[2, :], sharex=words)
        face = fig.add_subplot(grid[3, :], sharex=words)
        words.set_xlim(0, duration)
        _word_track(words, clip, duration)
        _voice_track(voice, clip)
        _face_track(face, clip)
        for ax in (words, voice):
            ax.tick_params(labelbottom=False)
        face.set_xlabel("time (s)")
        fig.suptitle("DHMD prediction explained: distillation graphs (top) and the clip's timeline (below)",
                     fontsize=12)
    except BaseException:
        plt.close(fig)
        raise
    return fig


def render_explanation(result: dict[str, Any], clip: ClipFeatures, dpi: int = 100) -> bytes:
    """The explanation figure of one predicted clip (:func:`build_explanation_figure`) as PNG bytes,
    1300 x 1000 pixels at the default ``dpi``."""
    import matplotlib.pyplot as plt

    fig = build_explanation_figure(result, clip, dpi=dpi)
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buf.getvalue()


def explanation_path(explain_dir: Path, clip_name: str) -> Path:
    """Where the PNG of ``clip_name`` goes: DIR/<clip name without suffix>.png."""
    stem = Path(clip_name).stem or "clip"
    return Path(explain_dir) / f"{stem}.png"


def write_explanation(out_path: Path, result: dict[str, Any], clip: ClipFeatures) -> Path:
    """Render :func:`render_explanation` and store it at ``out_path`` atomically; returns the path."""
    atomic_write_bytes(Path(out_path), render_explanation(result, clip))
    return Path(out_path)
