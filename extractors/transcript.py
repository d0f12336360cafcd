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

A transcript without word times (.txt, labels, json text only) gets them from the recogniser
(``times_source="matched"``): by forced alignment of its words to the audio
(:meth:`extractors.asr.SpeechRecognizer.align`, clips up to 30 s), else by recognising the clip and
aligning its words to the recogniser's words (:func:`match_times`); if the recogniser hears
nothing, the words are spread over the voiced part of the audio (:func:`spread_over_voiced`,
``times_source="spread"``, which the caller flags).

``times_source`` vocabulary (fixed): ``sidecar`` (times from the sidecar, per word or per cue),
``asr``, ``matched`` (given words timed by the recogniser: aligned or matched), ``spread``, ``none``
(no words, or no audio to time them against).

Words are stored as the transcript gives them with surrounding punctuation stripped
(``"movie,"`` -> ``"movie"``); words that are only punctuation are dropped.  Times are
sanitised: starts never decrease, ``end >= start``, everything inside ``[0, duration]``.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from extractors.errors import ExtractionError
from extractors.words import (Word, clean_word, fill_gaps, match_times, sanitize_words, spread_over_voiced,
                              spread_span, split_words)

if TYPE_CHECKING:  # pragma: no cover
    from extractors.asr import SpeechRecognizer
    from pipeline.config import AsrConfig

log = logging.getLogger(__name__)

SIDECAR_EXTS = (".json", ".srt", ".vtt", ".txt")
TRANSCRIPT_SOURCES = ("sidecar", "labels", "asr", "none")
TIMES_SOURCES = ("sidecar", "asr", "matched", "spread", "none")

@dataclass
class Transcript:
    """The words of a clip, where they came from and where their times came from."""

    text: str
    words: list[Word] = field(default_factory=list)
    source: str = "none"          # "sidecar" | "labels" | "asr" | "none"
    times_source: str = "none"    # "sidecar" | "asr" | "matched" | "spread" | "none"


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
        for w, (ws, we) in zip(words, spread_span(words, s, max(e, s))):
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
    words = fill_gaps(texts, starts, ends, None, None)
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
        aligned = recognizer().align(texts, audio, sample_rate) if recognised is None else None
        if aligned is None and recognised is None:
            recognised = recognizer().transcribe(audio, sample_rate)
        if aligned is not None:
            found.words, found.times_source = aligned, "matched"
        elif recognised:
            found.words, found.times_source = match_times(texts, recognised, audio, sample_rate), "matched"
        else:
            log.warning("%s: the recogniser heard no words; %d transcript words spread over voiced audio",
                        clip, len(texts))
            found.words, found.times_source = spread_over_voiced(texts, audio, sample_rate), "spread"
    found.words = sanitize_words(found.words, duration)
    return found
