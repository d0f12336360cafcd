"""Word alignment of frame-rate features: average the frames inside each word, copy to its tokens.

The cache stores every modality at its own rate (the *unaligned* view).  The *word-aligned* view the
paper's aligned setting uses is computed from the same arrays here, at load time:

1. :func:`word_average` turns a sequence of frames ``(T, D)`` with time stamps into one vector per
   word: the mean of the frames whose time lies in the word's ``[start, end)``.  Unlike the
   reference tools, a word shorter than one frame period (no frame time inside it) is never NaN: it
   takes the frame nearest to the word's midpoint.  The same holds for a word that lies before the
   first or after the last frame, and a modality with no frames at all gives zeros.
   :func:`word_frames` also says which words hold data, and can limit how far that nearest frame
   may be (the training data's aligned view takes it only within one frame period).
2. :func:`to_tokens` copies each word's vector to every subword token of that word; special tokens
   ([CLS], [SEP], padding; word index -1) get zeros.  The result has the text's token length.

Pure numpy, no knowledge of the cache or the model, so training, export and prediction share it.
"""
from __future__ import annotations

import numpy as np


def _as_frames(frames: np.ndarray, frame_times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and sort frames by time; NaN/inf feature values become 0 (so no NaN can leak)."""
    frames = np.asarray(frames)
    if frames.ndim != 2:
        raise ValueError(f"frames must be 2-D (T, D), got shape {frames.shape}")
    times = np.asarray(frame_times, dtype=np.float64).reshape(-1)
    if times.shape[0] != frames.shape[0]:
        raise ValueError(f"{frames.shape[0]} frames but {times.shape[0]} frame times")
    if not np.all(np.isfinite(times)):
        raise ValueError("frame times must be finite")
    frames = np.nan_to_num(frames.astype(np.float64, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    if times.size > 1 and np.any(np.diff(times) < 0):
        order = np.argsort(times, kind="stable")
        times, frames = times[order], frames[order]
    return frames, times


def word_average(frames: np.ndarray, frame_times: np.ndarray, word_start: np.ndarray,
                 word_end: np.ndarray, frame_period: float) -> np.ndarray:
    """One vector per word: the mean of the frames whose time lies in ``[start, end)``.

    Args:
        frames: ``(T, D)`` features, one row per frame (T may be 0).
        frame_times: ``(T,)`` time stamp of each frame in seconds (need not be sorted).
        word_start, word_end: ``(Nw,)`` word times in seconds.  ``end < start`` is read as an
            empty interval at ``start``.
        frame_period: seconds between frames (> 0).  A frame stands for the span
            ``[t - period/2, t + period/2)``; a word that contains no frame time takes the frame
            whose span holds the word's midpoint, i.e. the frame nearest to that midpoint (ties go
            to the earlier frame).  Words before the first / after the last frame take that frame.

    Returns:
        ``(Nw, D)`` float32, never NaN.  With no frames (``T == 0``) every row is zeros.
    """
    return word_frames(frames, frame_times, word_start, word_end, frame_period)[0]


def word_frames(frames: np.ndarray, frame_times: np.ndarray, word_start: np.ndarray, word_end: np.ndarray,
                frame_period: float, max_distance: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
    """:func:`word_average` and which words hold data: ``((Nw, D) float32, (Nw,) bool)``.

    A word holds data when a frame time lies inside it, or when the frame nearest to its midpoint is
    at most ``max_distance`` seconds away (a word shorter than a frame takes its neighbour; with
    ``max_distance = frame_period`` a word spoken while, say, no face was visible does not borrow a
    frame from seconds away).  Words without data get zero vectors.
    """
    if not (np.isfinite(frame_period) and frame_period > 0):
        raise ValueError(f"frame_period must be a positive number of seconds, got {frame_period!r}")
    frames, times = _as_frames(frames, frame_times)
    start = np.nan_to_num(np.asarray(word_start, dtype=np.float64).reshape(-1))
    end = np.nan_to_num(np.asarray(word_end, dtype=np.float64).reshape(-1))
    if start.shape != end.shape:
        raise ValueError(f"{start.shape[0]} word starts but {end.shape[0]} word ends")
    end = np.maximum(end, start)
    n_words, dim = start.shape[0], frames.shape[1]
    if frames.shape[0] == 0 or n_words == 0:
        return np.zeros((n_words, dim), dtype=np.float32), np.zeros(n_words, dtype=bool)

    # frames lo..hi-1 have start <= t < end; a prefix sum gives every word's sum in O(T + Nw)
    lo = np.searchsorted(times, start, side="left")
    hi = np.searchsorted(times, end, side="left")
    count = hi - lo
    csum = np.concatenate([np.zeros((1, dim)), np.cumsum(frames, axis=0)], axis=0)
    out = (csum[hi] - csum[lo]) / np.maximum(count, 1)[:, None]

    has = count > 0
    empty = ~has
    if np.any(empty):
        mid = 0.5 * (start[empty] + end[empty])
        right = np.clip(np.searchsorted(times, mid, side="left"), 0, times.size - 1)
        left = np.clip(right - 1, 0, times.size - 1)
        to_left, to_right = np.abs(mid - times[left]), np.abs(times[right] - mid)
        nearest = np.where(to_left <= to_right, left, right)
        close = np.minimum(to_left, to_right) <= max_distance * (1 + 1e-6)
        out[empty] = np.where(close[:, None], frames[nearest], 0.0)
        has[empty] = close
    return out.astype(np.float32), has


def to_tokens(word_vectors: np.ndarray, token_word_index: np.ndarray) -> np.ndarray:
    """Copy each word's vector to its subword tokens; tokens with word index -1 get zeros.

    Args:
        word_vectors: ``(Nw, D)`` one vector per word.
        token_word_index: ``(Nt,)`` index into the words of each token, -1 for special tokens.

    Returns:
        ``(Nt, D)`` float32.
    """
    word_vectors = np.asarray(word_vectors)
    if word_vectors.ndim != 2:
        raise ValueError(f"word_vectors must be 2-D (Nw, D), got shape {word_vectors.shape}")
    idx = np.asarray(token_word_index).reshape(-1).astype(np.int64)
    if np.any(idx >= word_vectors.shape[0]) or np.any(idx < -1):
        raise ValueError(f"token word index out of range for {word_vectors.shape[0]} words: "
                         f"min {idx.min()}, max {idx.max()}")
    out = np.zeros((idx.shape[0], word_vectors.shape[1]), dtype=np.float32)
    real = idx >= 0
    out[real] = word_vectors[idx[real]]
    return out


def align_to_tokens(frames: np.ndarray, frame_times: np.ndarray, word_start: np.ndarray,
                    word_end: np.ndarray, token_word_index: np.ndarray, frame_period: float) -> np.ndarray:
    """The word-aligned view of one modality: ``(Nt, D)``, the text's token length, never NaN."""
    return to_tokens(word_average(frames, frame_times, word_start, word_end, frame_period), token_word_index)
