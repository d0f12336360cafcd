"""Words and their times: the word type, cleaning, voicing, and the timing helpers.

Shared by :mod:`extractors.transcript` (sidecars, labels text, the choice of source) and
:mod:`extractors.asr` (the recogniser's words), so that neither imports the other for them:
``asr -> words``, ``transcript -> words``, ``transcript -> asr``.

- :func:`clean_word` / :func:`split_words`: words as stored (surrounding punctuation stripped).
- :func:`scoring_words`, :func:`word_errors`: words as a word error rate compares them, and the count.
- :func:`voiced_mask`: energy-based voicing, to keep guessed times out of silence.
- :func:`spread_over_voiced`, :func:`match_times`, :func:`fill_gaps`: word times when a transcript
  has none (spread over voiced audio, or matched to the recogniser's words).
- :func:`retime_collapsed_words`, :func:`sanitize_words`: repairs of times that are given.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

VOICING_HOP_S = 0.01        # hop of the energy-based voicing frames
VOICING_WIN_S = 0.025       # window of the voicing frames
VOICING_FLOOR = 1e-3        # RMS below this (-60 dBFS) is never voiced
VOICING_REL_DB = 35.0       # frames this far below the loudest frame are unvoiced
TYPICAL_WORD_S = 0.3        # word length used when nothing better is known
MIN_GAP_WORD_S = 0.1        # a missed word squeezed into less than this borrows time from its neighbours
MIN_WORD_S = 0.02           # a recognised word shorter than this has collapsed (see retime_collapsed_words)


@dataclass
class Word:
    """One word and where it is spoken, in seconds from the start of the clip."""

    text: str
    start: float
    end: float


# ----------------------------------------------------------------------------- words

_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$", re.UNICODE)
_NON_ALNUM = re.compile(r"[\W_]+", re.UNICODE)


def clean_word(text: str) -> str:
    """``text`` with surrounding punctuation and whitespace removed (inner ' and - stay)."""
    return _EDGE_PUNCT.sub("", text.strip())


def split_words(text: str) -> list[str]:
    """Whitespace-separated words of ``text``, cleaned, punctuation-only tokens dropped."""
    return [w for w in (clean_word(t) for t in text.split()) if w]


def _norm(text: str) -> str:
    """Comparison key for matching: lower case, letters and digits only."""
    return _NON_ALNUM.sub("", text.lower())


def scoring_words(text: str) -> list[str]:
    """Words of ``text`` as a word error rate compares them: lower case, letters, digits and ' only
    (a hyphen or other punctuation separates words)."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("\u2019", "'")).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words) of ``hypothesis`` against
    ``reference``, over :func:`scoring_words`; a corpus' WER is the sum of the first over the sum
    of the second."""
    ref, hyp = scoring_words(reference), scoring_words(hypothesis)
    d = np.arange(len(hyp) + 1)
    for i, r in enumerate(ref, 1):
        prev, d[0] = d.copy(), i
        for j, h in enumerate(hyp, 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (r != h))
    return int(d[-1]), len(ref)


# ----------------------------------------------------------------------------- voicing and spreading

def voiced_mask(audio: np.ndarray, sample_rate: int, hop_s: float = VOICING_HOP_S,
                win_s: float = VOICING_WIN_S) -> np.ndarray:
    """Energy-based voicing: one bool per ``hop_s`` frame (frame i starts at ``i * hop_s``).

    A frame is voiced when its RMS is above :data:`VOICING_FLOOR` and within
    :data:`VOICING_REL_DB` of the loudest frame.  Crude, but enough to keep spread words and the
    recogniser away from silence.
    """
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    hop = max(1, int(round(hop_s * sample_rate)))
    win = max(hop, int(round(win_s * sample_rate)))
    n = int(math.ceil(len(audio) / hop)) if len(audio) else 0
    if n == 0:
        return np.zeros(0, dtype=bool)
    padded = np.concatenate([audio, np.zeros(win, np.float32)])
    sq = np.concatenate([[0.0], np.cumsum(padded.astype(np.float64) ** 2)])
    starts = np.arange(n) * hop
    rms = np.sqrt(np.maximum(sq[starts + win] - sq[starts], 0.0) / win)
    thr = max(VOICING_FLOOR, float(rms.max()) * 10 ** (-VOICING_REL_DB / 20))
    return rms > thr


def spread_span(texts: Sequence[str], t0: float, t1: float,
            voicing: tuple[np.ndarray, float] | None = None) -> list[tuple[float, float]]:
    """(start, end) for ``texts`` laid end to end over [t0, t1] in proportion to their length.

    With ``voicing`` = (mask, hop) only the voiced time inside [t0, t1] is used, so words do not
    land in pauses; if that span holds (almost) no voiced time the whole span is used.
    """
    if not texts:
        return []
    t1 = max(t1, t0)
    weights = np.array([max(len(t), 1) for t in texts], dtype=np.float64)
    frac = np.concatenate([[0.0], np.cumsum(weights)]) / weights.sum()
    if voicing is not None and t1 > t0:
        mask, hop = voicing
        i0, i1 = int(math.floor(t0 / hop)), min(len(mask), int(math.ceil(t1 / hop)))
        idx = np.nonzero(mask[i0:i1])[0] + i0 if i1 > i0 else np.zeros(0, int)
        seg_s = np.maximum(idx * hop, t0)
        seg_e = np.minimum((idx + 1) * hop, t1)
        keep = seg_e > seg_s
        seg_s, seg_e = seg_s[keep], seg_e[keep]
        lengths = seg_e - seg_s
        total = float(lengths.sum())
        if total >= 0.02:
            cum_end = np.cumsum(lengths)
            cum_start = cum_end - lengths
            x = frac * total

            def at(v: np.ndarray, side: str) -> np.ndarray:
                k = np.clip(np.searchsorted(cum_end, v, side=side), 0, len(lengths) - 1)
                return np.minimum(seg_s[k] + (v - cum_start[k]), seg_e[k])

            # a boundary falling between two voiced stretches: words start after the pause, end before it
            starts, ends = at(x[:-1], "right"), at(x[1:], "left")
            return [(float(s), float(max(e, s))) for s, e in zip(starts, ends)]
    times = t0 + frac * (t1 - t0)
    return [(float(times[k]), float(times[k + 1])) for k in range(len(texts))]


def spread_over_voiced(texts: Sequence[str], audio: np.ndarray, sample_rate: int) -> list[Word]:
    """Words spread over the voiced part of ``audio`` (all of it when nothing is voiced)."""
    duration = len(audio) / float(sample_rate) if len(audio) else 0.0
    voicing = (voiced_mask(audio, sample_rate), VOICING_HOP_S) if len(audio) else None
    return [Word(t, s, e) for t, (s, e) in zip(texts, spread_span(texts, 0.0, duration, voicing))]


def fill_gaps(texts: Sequence[str], starts: list[float | None], ends: list[float | None],
               duration: float | None, voicing: tuple[np.ndarray, float] | None) -> list[Word]:
    """Give times to the words that have none, inside the gap between their timed neighbours.

    Runs at the start use [0, next start], runs at the end [previous end, duration] (or a typical
    word length each when the duration is unknown); voiced time is preferred inside the gap.  A
    run between two words with (almost) no gap takes the second half of the word before and the
    first half of the word after it.
    """
    n = len(texts)
    known = [k for k in range(n) if starts[k] is not None and ends[k] is not None]
    if not known:
        return [Word(t, s, e) for t, (s, e) in zip(texts, spread_span(texts, 0.0, duration or 0.0, voicing))]
    lens = [ends[k] - starts[k] for k in known]  # type: ignore[operator]
    typical = float(np.median(lens)) if lens and np.median(lens) > 0 else TYPICAL_WORD_S
    s_out = list(starts)
    e_out = list(ends)
    k = 0
    while k < n:
        if s_out[k] is not None and e_out[k] is not None:
            k += 1
            continue
        j = k
        while j < n and (s_out[j] is None or e_out[j] is None):
            j += 1
        run = texts[k:j]
        if k == 0:
            hi = float(s_out[j])  # type: ignore[arg-type]
            lo = 0.0 if duration is not None else max(0.0, hi - typical * len(run))
        else:
            lo = float(e_out[k - 1])  # type: ignore[arg-type]
            if j < n:
                hi = float(s_out[j])  # type: ignore[arg-type]
            else:
                hi = duration if duration is not None else lo + typical * len(run)
        if hi - lo < MIN_GAP_WORD_S * len(run) and 0 < k and j < n:
            # no room between the neighbours: take the second half of the previous word and the
            # first half of the next one, so the missed words get a share of real time
            lo = 0.5 * (float(s_out[k - 1]) + float(e_out[k - 1]))  # type: ignore[arg-type]
            hi = max(lo, 0.5 * (float(s_out[j]) + float(e_out[j])))  # type: ignore[arg-type]
            e_out[k - 1], s_out[j] = lo, hi
            voicing_here = None
        else:
            voicing_here = voicing
        for m, (s, e) in enumerate(spread_span(run, lo, max(hi, lo), voicing_here)):
            s_out[k + m], e_out[k + m] = s, e
        k = j
    return [Word(t, float(s), float(e)) for t, s, e in zip(texts, s_out, e_out)]  # type: ignore[arg-type]


def retime_collapsed_words(words: list[Word], audio: np.ndarray, sample_rate: int) -> list[Word]:
    """Give recognised words that collapsed to (almost) no duration a real span.

    Whisper's word alignment (cross-attention DTW) now and then returns a word with ``start ==
    end``, stacked on the start of the next word ("and" at [1.70, 1.70] before "I" at [1.70,
    1.86]), though the word was spoken in the pause before.  Such words are timed again like words
    the recogniser missed (:func:`_fill_gaps`): inside the gap between their timed neighbours, on
    its voiced part, or with half of each neighbour when there is no gap.
    """
    collapsed = [w.end - w.start < MIN_WORD_S for w in words]
    if not any(collapsed):
        return words
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    duration = len(audio) / float(sample_rate) if len(audio) else None
    voicing = (voiced_mask(audio, sample_rate), VOICING_HOP_S) if duration else None
    starts = [None if c else w.start for w, c in zip(words, collapsed)]
    ends = [None if c else w.end for w, c in zip(words, collapsed)]
    return fill_gaps([w.text for w in words], starts, ends, duration, voicing)


def sanitize_words(words: list[Word], duration: float | None) -> list[Word]:
    """Clamp times into [0, duration] (no upper bound when None), starts non-decreasing, end >= start."""
    out: list[Word] = []
    prev = 0.0
    hi = math.inf if duration is None else max(0.0, duration)
    for w in words:
        s = w.start if math.isfinite(w.start) else prev
        e = w.end if math.isfinite(w.end) else s
        s = min(max(s, prev, 0.0), hi)
        e = min(max(e, s), hi)
        out.append(Word(w.text, float(s), float(e)))
        prev = s
    return out


# ----------------------------------------------------------------------------- matching

def match_times(texts: Sequence[str], reference: Sequence[Word], audio: np.ndarray | None = None,
                sample_rate: int = 16000) -> list[Word]:
    """Times for ``texts`` taken from the recogniser's ``reference`` words.

    The two word sequences are aligned with difflib's SequenceMatcher on normalised words (lower
    case, letters and digits).  Equal words copy the recogniser's times; a replaced stretch of the
    same length copies them one to one (misrecognised words), of another length is spread over the
    recogniser's span; words the recogniser missed are placed in the gap between their neighbours
    (on voiced audio when ``audio`` is given).
    """
    n = len(texts)
    if n == 0:
        return []
    duration = len(audio) / float(sample_rate) if audio is not None and len(audio) else None
    voicing = (voiced_mask(audio, sample_rate), VOICING_HOP_S) if duration else None
    if not reference:
        return fill_gaps(texts, [None] * n, [None] * n, duration, voicing)
    a = [_norm(t) for t in texts]
    b = [_norm(w.text) for w in reference]
    starts: list[float | None] = [None] * n
    ends: list[float | None] = [None] * n
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal" or (tag == "replace" and i2 - i1 == j2 - j1):
            for k in range(i2 - i1):
                starts[i1 + k], ends[i1 + k] = reference[j1 + k].start, reference[j1 + k].end
        elif tag == "replace":
            pairs = _pair_similar(a[i1:i2], b[j1:j2])
            if pairs is None:       # too long to pair word by word: spread over the recogniser's span
                span = spread_span(texts[i1:i2], reference[j1].start, reference[j2 - 1].end)
                for k, (s, e) in enumerate(span):
                    starts[i1 + k], ends[i1 + k] = s, e
            for ia, jb in pairs or []:
                starts[i1 + ia], ends[i1 + ia] = reference[j1 + jb].start, reference[j1 + jb].end
        # "delete": words the recogniser missed, filled below; "insert": extra recognised words, ignored
    return fill_gaps(texts, starts, ends, duration, voicing)


def _pair_similar(a: Sequence[str], b: Sequence[str], min_ratio: float = 0.5,
                  max_cells: int = 40000) -> list[tuple[int, int]] | None:
    """Order-keeping pairs (i, j) of similar words (difflib ratio >= ``min_ratio``), best total.

    A small dynamic programme over a replaced stretch of unequal length ("movie" against
    "um moovie"); None when the stretch is too long for it.
    """
    n, m = len(a), len(b)
    if n * m > max_cells:
        return None
    sim = np.zeros((n, m))
    for i in range(n):
        for j in range(m):
            r = difflib.SequenceMatcher(None, a[i], b[j], autojunk=False).ratio()
            sim[i, j] = r if r >= min_ratio else 0.0
    score = np.zeros((n + 1, m + 1))
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            diag = score[i - 1, j - 1] + sim[i - 1, j - 1] if sim[i - 1, j - 1] > 0 else -1.0
            score[i, j] = max(score[i - 1, j], score[i, j - 1], diag)
    pairs = []
    i, j = n, m
    while i > 0 and j > 0:
        if sim[i - 1, j - 1] > 0 and score[i, j] == score[i - 1, j - 1] + sim[i - 1, j - 1]:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif score[i, j] == score[i - 1, j]:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]
