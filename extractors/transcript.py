"""A clip's transcript with a start and end time for every word.

Where the words come from (first found wins, in ``AsrConfig.sources`` order):

- ``sidecar``: a file beside the clip with the same stem, tried in this order:
  ``clip.json`` ({"words": [{"word"|"text", "start", "end"}]}, a faster-whisper/WhisperX-like
  {"segments": [{"words": [...]}]} or {"segments": [{"start", "end", "text"}]}, or {"text": "..."}),
  ``clip.srt``, ``clip.vtt`` (cue times; the words of a cue are spread inside it in proportion to
  their length), ``clip.txt`` (plain text, no times).  An empty sidecar counts as found: the user
  said the clip has no words.
- ``labels``: the text column of the labels file (a blank cell counts as absent).
- ``asr``: speech recognition (:class:`extractors.asr.SpeechRecognizer`), loaded lazily.

A transcript without word times (.txt, labels, json text only) gets them by aligning its words to
the recogniser's words (:func:`match_times`, ``times_source="matched"``); if the recogniser hears
nothing, the words are spread over the voiced part of the audio (:func:`spread_over_voiced`,
``times_source="spread"``, which the caller flags).

``times_source`` vocabulary (fixed): ``sidecar`` (times from the sidecar, per word or per cue),
``asr``, ``matched``, ``spread``, ``none`` (no words, or no audio to time them against).

Words are stored as the transcript gives them with surrounding punctuation stripped
(``"movie,"`` -> ``"movie"``); words that are only punctuation are dropped.  Times are
sanitised: starts never decrease, ``end >= start``, everything inside ``[0, duration]``.
"""
from __future__ import annotations

import difflib
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from extractors.errors import ExtractionError

if TYPE_CHECKING:  # pragma: no cover
    from extractors.asr import SpeechRecognizer
    from pipeline.config import AsrConfig

log = logging.getLogger(__name__)

SIDECAR_EXTS = (".json", ".srt", ".vtt", ".txt")
TRANSCRIPT_SOURCES = ("sidecar", "labels", "asr", "none")
TIMES_SOURCES = ("sidecar", "asr", "matched", "spread", "none")

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


@dataclass
class Transcript:
    """The words of a clip, where they came from and where their times came from."""

    text: str
    words: list[Word] = field(default_factory=list)
    source: str = "none"          # "sidecar" | "labels" | "asr" | "none"
    times_source: str = "none"    # "sidecar" | "asr" | "matched" | "spread" | "none"


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


def _spread(texts: Sequence[str], t0: float, t1: float,
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
    return [Word(t, s, e) for t, (s, e) in zip(texts, _spread(texts, 0.0, duration, voicing))]


def _fill_gaps(texts: Sequence[str], starts: list[float | None], ends: list[float | None],
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
        return [Word(t, s, e) for t, (s, e) in zip(texts, _spread(texts, 0.0, duration or 0.0, voicing))]
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
        for m, (s, e) in enumerate(_spread(run, lo, max(hi, lo), voicing_here)):
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
    return _fill_gaps([w.text for w in words], starts, ends, duration, voicing)


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
        return _fill_gaps(texts, [None] * n, [None] * n, duration, voicing)
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
                span = _spread(texts[i1:i2], reference[j1].start, reference[j2 - 1].end)
                for k, (s, e) in enumerate(span):
                    starts[i1 + k], ends[i1 + k] = s, e
            for ia, jb in pairs or []:
                starts[i1 + ia], ends[i1 + ia] = reference[j1 + jb].start, reference[j1 + jb].end
        # "delete": words the recogniser missed, filled below; "insert": extra recognised words, ignored
    return _fill_gaps(texts, starts, ends, duration, voicing)


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


# ----------------------------------------------------------------------------- sidecars

_TIME = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:[.,]\d+)?)")
_TAGS = re.compile(r"<[^>]*>|\{[^}]*\}")


def _parse_time(text: str) -> float | None:
    m = _TIME.fullmatch(text.strip())
    if not m:
        return None
    h, mnt, sec = m.groups()
    return int(h or 0) * 3600 + int(mnt) * 60 + float(sec.replace(",", "."))


def _cue_words(cues: list[tuple[float, float, str]]) -> tuple[list[str], list[float], list[float]]:
    """Words of timed cues, each cue's words spread inside it by length."""
    texts: list[str] = []
    starts: list[float] = []
    ends: list[float] = []
    for s, e, text in cues:
        words = split_words(text)
        for w, (ws, we) in zip(words, _spread(words, s, max(e, s))):
            texts.append(w)
            starts.append(ws)
            ends.append(we)
    return texts, starts, ends


def _read_cues(path: Path, raw: str) -> list[tuple[float, float, str]]:
    """Cues of an .srt or .vtt file: blocks with a 'start --> end' line followed by text lines."""
    cues = []
    for block in re.split(r"\n\s*\n", raw.replace("\r\n", "\n").replace("\r", "\n")):
        lines = [ln.strip() for ln in block.strip().split("\n")]
        arrow = next((i for i, ln in enumerate(lines) if "-->" in ln), None)
        if arrow is None:
            continue   # WEBVTT header, NOTE/STYLE/REGION blocks, stray text
        left, _, right = lines[arrow].partition("-->")
        start = _parse_time(left)
        end = _parse_time(right.split()[0]) if right.split() else None
        if start is None or end is None:
            raise ExtractionError(f"{path}: bad cue time line {lines[arrow]!r}")
        text = " ".join(_TAGS.sub(" ", ln) for ln in lines[arrow + 1:])
        cues.append((start, end, text))
    return cues


def _num(value: Any, path: Path) -> float | None:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ExtractionError(f"{path}: word time {value!r} is not a number") from None
    return f if math.isfinite(f) else None


def _json_words(items: list, path: Path) -> tuple[list[str], list[float | None], list[float | None]]:
    texts: list[str] = []
    starts: list[float | None] = []
    ends: list[float | None] = []
    for item in items:
        if not isinstance(item, dict):
            raise ExtractionError(f"{path}: each word must be an object with 'word' (or 'text'), 'start', 'end'")
        raw = item.get("word", item.get("text"))
        if not isinstance(raw, str):
            raise ExtractionError(f"{path}: a word has no 'word'/'text' string: {item!r}"[:200])
        word = clean_word(raw)
        if not word:
            continue
        # a word entry holding several words ("New York") keeps its time for all of them
        texts.append(word)
        starts.append(_num(item.get("start"), path))
        ends.append(_num(item.get("end"), path))
    return texts, starts, ends


def _read_json(path: Path, raw: str) -> Transcript:
    try:
        data = json.loads(raw) if raw.strip() else {"text": ""}
    except json.JSONDecodeError as e:
        raise ExtractionError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, list):
        data = {"words": data}
    if not isinstance(data, dict):
        raise ExtractionError(f"{path}: expected an object with 'words', 'segments' or 'text'")
    text = data.get("text") if isinstance(data.get("text"), str) else None
    if isinstance(data.get("words"), list):
        texts, starts, ends = _json_words(data["words"], path)
    elif isinstance(data.get("segments"), list):
        segs = data["segments"]
        if not all(isinstance(s, dict) for s in segs):
            raise ExtractionError(f"{path}: 'segments' must be a list of objects")
        if segs and all(isinstance(s.get("words"), list) for s in segs):
            texts, starts, ends = _json_words([w for s in segs for w in s["words"]], path)
        else:
            cues = []
            for s in segs:
                st, en = _num(s.get("start"), path), _num(s.get("end"), path)
                if st is None or en is None or not isinstance(s.get("text"), str):
                    raise ExtractionError(f"{path}: a segment needs 'start', 'end' and 'text' (or 'words')")
                cues.append((st, en, s["text"]))
            t, s_, e_ = _cue_words(cues)
            texts, starts, ends = t, list(s_), list(e_)
            text = text if text is not None else " ".join(c[2].strip() for c in cues)
    elif text is not None:
        words = split_words(text)
        return Transcript(text=text.strip(), words=[Word(w, 0.0, 0.0) for w in words],
                          source="sidecar", times_source="none")
    else:
        raise ExtractionError(f"{path}: expected an object with 'words', 'segments' or 'text'")
    text = text.strip() if text is not None else " ".join(texts)
    if not texts:
        return Transcript(text=text, words=[], source="sidecar", times_source="none")
    if all(s is None or e is None for s, e in zip(starts, ends)):
        return Transcript(text=text, words=[Word(w, 0.0, 0.0) for w in texts], source="sidecar",
                          times_source="none")
    words = _fill_gaps(texts, starts, ends, None, None)
    return Transcript(text=text, words=sanitize_words(words, None), source="sidecar", times_source="sidecar")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ExtractionError(f"{path}: transcript is not UTF-8 text") from None
    except OSError as e:
        raise ExtractionError(f"{path}: cannot read transcript ({e.strerror or e})") from None


def sidecar_path(clip: Path) -> Path | None:
    """The first existing sidecar of ``clip`` (same folder and stem; .json, .srt, .vtt, .txt)."""
    clip = Path(clip)
    for ext in SIDECAR_EXTS:
        cand = clip.with_suffix(ext)
        if cand != clip and cand.is_file():
            return cand
    return None


def read_sidecar(clip: Path) -> Transcript | None:
    """The transcript in the clip's sidecar file, or None when there is none.

    Raises ExtractionError (naming the sidecar) when the file is malformed.  Times are not
    clamped to the clip's duration here (it is unknown); :func:`resolve_transcript` does that.
    """
    path = sidecar_path(clip)
    if path is None:
        return None
    raw = _read_text(path)
    ext = path.suffix.lower()
    if ext == ".json":
        tr = _read_json(path, raw)
    elif ext in (".srt", ".vtt"):
        cues = _read_cues(path, raw)
        texts, starts, ends = _cue_words(cues)
        text = " ".join(" ".join(_TAGS.sub(" ", c[2]).split()) for c in cues)
        words = sanitize_words([Word(*x) for x in zip(texts, starts, ends)], None)
        tr = Transcript(text=text, words=words, source="sidecar",
                        times_source="sidecar" if words else "none")
    else:
        text = " ".join(raw.split())
        tr = Transcript(text=text, words=[Word(w, 0.0, 0.0) for w in split_words(text)], source="sidecar",
                        times_source="none")
    log.debug("%s: transcript from sidecar %s (%d words)", clip, path.name, len(tr.words))
    return tr


# ----------------------------------------------------------------------------- resolution

def resolve_transcript(clip: Path, audio: np.ndarray, sample_rate: int, label_text: str | None,
                       cfg: "AsrConfig", recognizer: Callable[[], "SpeechRecognizer"]) -> Transcript:
    """The clip's transcript with word times; the first source in ``cfg.sources`` that has one wins.

    ``recognizer()`` is called (and so the ASR model loaded) only when a transcript is recognised
    or a transcript without times needs the recogniser's words to be timed; it is called for
    timing even when "asr" is not among the sources, because timing needs it.  With empty
    ``audio`` (a clip without sound) nothing is recognised and untimed words keep zero times
    (``times_source="none"``).  Silence gives an ASR transcript with no words.
    """
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    duration = len(audio) / float(sample_rate) if len(audio) else None
    found: Transcript | None = None
    recognised: list[Word] | None = None
    for src in cfg.sources:
        if src == "sidecar":
            found = read_sidecar(clip)
        elif src == "labels":
            if label_text is not None and label_text.strip():
                text = " ".join(label_text.split())
                found = Transcript(text=text, words=[Word(w, 0.0, 0.0) for w in split_words(text)],
                                   source="labels", times_source="none")
        elif src == "asr":
            if duration:
                recognised = recognizer().transcribe(audio, sample_rate)
                found = Transcript(text=" ".join(w.text for w in recognised), words=list(recognised),
                                   source="asr", times_source="asr" if recognised else "none")
        else:
            raise ValueError(f"unknown transcript source {src!r}")
        if found is not None:
            break
    if found is None:
        log.info("%s: no transcript from %s", clip, ", ".join(cfg.sources))
        return Transcript(text="", words=[], source="none", times_source="none")
    if found.words and found.times_source == "none" and duration:
        texts = [w.text for w in found.words]
        if recognised is None:
            recognised = recognizer().transcribe(audio, sample_rate)
        if recognised:
            found.words, found.times_source = match_times(texts, recognised, audio, sample_rate), "matched"
        else:
            log.warning("%s: the recogniser heard no words; %d transcript words spread over voiced audio",
                        clip, len(texts))
            found.words, found.times_source = spread_over_voiced(texts, audio, sample_rate), "spread"
    found.words = sanitize_words(found.words, duration)
    return found
