"""extractors.transcript: sidecars, labels, recognition, matching and spreading of word times."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from extractors.decode import load_audio
from extractors.errors import ExtractionError
from extractors.transcript import Transcript, read_sidecar, resolve_transcript
from extractors.words import Word, match_times, retime_collapsed_words, spread_over_voiced, voiced_mask
from pipeline.config import AsrConfig

SR = 16000
SPOKEN = "i really love this wonderful movie the acting was great".split()


def check_times(words: list[Word], duration: float | None) -> None:
    """Word times increase (starts non-decreasing, end >= start) and lie inside [0, duration]."""
    starts = np.array([w.start for w in words])
    ends = np.array([w.end for w in words])
    assert np.all(np.diff(starts) >= 0)
    assert np.all(ends >= starts)
    assert np.all(starts >= 0)
    if duration is not None:
        assert np.all(ends <= duration + 1e-9)


class CountingFactory:
    """The real recogniser behind the factory resolve_transcript takes, counting the calls."""

    def __init__(self, recognizer) -> None:
        self.recognizer = recognizer
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.recognizer


@pytest.fixture(scope="module")
def recognizer():
    from extractors.asr import SpeechRecognizer

    return SpeechRecognizer(AsrConfig())


@pytest.fixture(scope="module")
def speech_audio(speech_clip: Path) -> np.ndarray:
    return load_audio(speech_clip, SR)


@pytest.fixture(scope="module")
def asr_words(recognizer, speech_audio) -> list[Word]:
    return recognizer.transcribe(speech_audio, SR)


@pytest.fixture
def clip(tmp_path: Path, speech_clip: Path) -> Path:
    """The speech clip copied to a folder of its own, so sidecars written beside it stay private."""
    p = tmp_path / "clip.mp4"
    shutil.copy(speech_clip, p)
    return p


# ----------------------------------------------------------------------------- sidecar formats

def test_no_sidecar(clip: Path) -> None:
    assert read_sidecar(clip) is None


def test_json_words(clip: Path) -> None:
    clip.with_suffix(".json").write_text(json.dumps({"words": [
        {"word": " Hello,", "start": 0.1, "end": 0.4}, {"text": "--", "start": 0.4, "end": 0.45},
        {"text": "world!", "start": 0.5, "end": 0.9}]}))
    tr = read_sidecar(clip)
    assert tr is not None and tr.source == "sidecar" and tr.times_source == "sidecar"
    assert [(w.text, w.start, w.end) for w in tr.words] == [("Hello", 0.1, 0.4), ("world", 0.5, 0.9)]


def test_json_segments_with_words_some_untimed(clip: Path) -> None:
    # WhisperX leaves words it cannot align (often numbers) without times
    clip.with_suffix(".json").write_text(json.dumps({"segments": [
        {"start": 0.0, "end": 1.0, "text": "I have 2", "words": [
            {"word": "I", "start": 0.0, "end": 0.2}, {"word": "have", "start": 0.25, "end": 0.5},
            {"word": "2"}]},
        {"start": 1.2, "end": 2.0, "text": "cats.", "words": [{"word": "cats.", "start": 1.2, "end": 1.6}]}]}))
    tr = read_sidecar(clip)
    assert [w.text for w in tr.words] == ["I", "have", "2", "cats"]
    assert tr.times_source == "sidecar"
    two = tr.words[2]
    assert 0.5 <= two.start < two.end <= 1.2
    check_times(tr.words, None)


def test_json_segments_without_words_and_text_only(clip: Path) -> None:
    side = clip.with_suffix(".json")
    side.write_text(json.dumps({"segments": [{"start": 1.0, "end": 2.0, "text": "a bb"},
                                             {"start": 3.0, "end": 3.5, "text": "ccc"}]}))
    tr = read_sidecar(clip)
    assert [w.text for w in tr.words] == ["a", "bb", "ccc"] and tr.times_source == "sidecar"
    # words of a cue are spread inside it in proportion to their length
    assert tr.words[0].start == pytest.approx(1.0) and tr.words[0].end == pytest.approx(1 + 1 / 3)
    assert tr.words[1].end == pytest.approx(2.0)
    assert (tr.words[2].start, tr.words[2].end) == pytest.approx((3.0, 3.5))
    side.write_text(json.dumps({"text": "Just the text, please."}))
    tr = read_sidecar(clip)
    assert tr.text == "Just the text, please."
    assert [w.text for w in tr.words] == ["Just", "the", "text", "please"] and tr.times_source == "none"


def test_srt(clip: Path) -> None:
    clip.with_suffix(".srt").write_text(
        "1\r\n00:00:00,500 --> 00:00:01,500\r\n<i>Hello</i> there,\r\n\r\n"
        "2\r\n00:00:02,000 --> 00:00:03,000\r\n{\\an8}general\r\nKenobi!\r\n", encoding="utf-8")
    tr = read_sidecar(clip)
    assert [w.text for w in tr.words] == ["Hello", "there", "general", "Kenobi"]
    assert tr.times_source == "sidecar" and tr.text == "Hello there, general Kenobi!"
    assert tr.words[0].start == pytest.approx(0.5) and tr.words[1].end == pytest.approx(1.5)
    assert tr.words[2].start == pytest.approx(2.0) and tr.words[3].end == pytest.approx(3.0)
    check_times(tr.words, None)


def test_vtt(clip: Path) -> None:
    clip.with_suffix(".vtt").write_text(
        "WEBVTT - made by hand\n\nNOTE this is a comment\n\nintro\n00:01.000 --> 00:02.000 align:start\n"
        "<v Roger>Good morning</v>\n\n01:00:00.000 --> 01:00:01.000\nlater\n", encoding="utf-8")
    tr = read_sidecar(clip)
    assert [w.text for w in tr.words] == ["Good", "morning", "later"]
    assert tr.words[0].start == pytest.approx(1.0) and tr.words[1].end == pytest.approx(2.0)
    assert tr.words[2].start == pytest.approx(3600.0)


def test_txt_and_priority(clip: Path) -> None:
    clip.with_suffix(".txt").write_text("\ufeffPlain words only.\n")
    tr = read_sidecar(clip)
    assert [w.text for w in tr.words] == ["Plain", "words", "only"] and tr.times_source == "none"
    clip.with_suffix(".srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nfrom srt\n")
    assert [w.text for w in read_sidecar(clip).words] == ["from", "srt"]      # .srt before .txt
    clip.with_suffix(".json").write_text('{"text": "from json"}')
    assert [w.text for w in read_sidecar(clip).words] == ["from", "json"]     # .json first


def test_malformed_sidecars_name_the_file(clip: Path) -> None:
    side = clip.with_suffix(".json")
    side.write_text('{"words": [ {"word": "x", "start": 0, ')
    with pytest.raises(ExtractionError, match="not valid JSON") as e:
        read_sidecar(clip)
    assert str(side) in str(e.value)
    side.write_text('{"words": [{"word": "x", "start": "soon", "end": 1}]}')
    with pytest.raises(ExtractionError, match="not a number"):
        read_sidecar(clip)
    side.unlink()
    srt = clip.with_suffix(".srt")
    srt.write_text("1\n00:00:xx,000 --> 00:00:01,000\nhello\n")
    with pytest.raises(ExtractionError, match="bad cue time") as e:
        read_sidecar(clip)
    assert str(srt) in str(e.value)


# ----------------------------------------------------------------------------- matching and spreading

def test_match_times_copies_interpolates_and_ignores_extras() -> None:
    ref = [Word("I", 0.0, 0.3), Word("really", 0.3, 0.5), Word("love", 0.6, 0.8), Word("this", 0.8, 1.0),
           Word("um", 1.0, 1.2), Word("moovie", 1.3, 1.8), Word("today", 2.5, 3.0)]
    texts = ["I", "love", "this", "movie", "a", "lot", "today"]
    out = match_times(texts, ref)
    got = {w.text: (w.start, w.end) for w in out}
    assert got["I"] == (0.0, 0.3) and got["love"] == (0.6, 0.8) and got["today"] == (2.5, 3.0)
    # "movie a lot" against "um moovie": the similar word is paired, "um" is ignored
    assert got["movie"] == (1.3, 1.8)
    # "a lot" was not recognised: it sits in the gap between "movie" and "today"
    assert 1.8 <= got["a"][0] < got["a"][1] <= got["lot"][0] < got["lot"][1] <= 2.5
    # a long stretch with nothing alike falls in the gap between its timed neighbours
    out = match_times(["I", "xyz", "qqq", "today"], ref)
    assert 0.3 <= out[1].start < out[2].end <= 2.5
    check_times(out, 3.0)


def test_match_times_squeezed_words_borrow_time() -> None:
    ref = [Word("was", 2.78, 3.12), Word("great", 3.12, 3.4)]
    out = match_times(["was", "truly", "great"], ref)
    assert out[1].end - out[1].start > 0.1
    assert out[0].start == 2.78 and out[2].end == 3.4
    check_times(out, 3.4)


def test_collapsed_recognised_words_get_the_voiced_gap_before_them() -> None:
    # Whisper stacked "and" on the start of "I" (seen on an espeak-ng clip); the word was spoken in
    # the voiced stretch of the pause before, which is where it must go
    audio = np.zeros(3 * SR, np.float32)
    t = np.arange(SR * 3) / SR
    for lo, hi in ((0.0, 1.24), (1.41, 2.8)):
        on = (t >= lo) & (t < hi)
        audio[on] = 0.3 * np.sin(2 * np.pi * 180 * t[on])
    words = [Word("wonderful", 0.86, 1.24), Word("and", 1.7, 1.7), Word("I", 1.7, 1.86), Word("loved", 1.86, 2.14)]
    out = retime_collapsed_words(words, audio, SR)
    assert [w.text for w in out] == ["wonderful", "and", "I", "loved"]
    assert (out[0].start, out[0].end) == (0.86, 1.24) and (out[2].start, out[2].end) == (1.7, 1.86)
    assert 1.38 <= out[1].start < 1.45 and out[1].end == pytest.approx(1.7)   # the pause's voiced part
    # no room at all: the collapsed word borrows half of each neighbour
    tight = [Word("a", 0.5, 0.9), Word("b", 0.9, 0.9), Word("c", 0.9, 1.3)]
    out = retime_collapsed_words(tight, audio, SR)
    assert out[0].end == pytest.approx(0.7) and out[2].start == pytest.approx(1.1)
    assert out[0].end <= out[1].start < out[1].end <= out[2].start
    # nothing collapsed: the same list back
    assert retime_collapsed_words(words[2:], audio, SR) == words[2:]
    check_times(retime_collapsed_words(words, audio, SR), 3.0)


def test_spread_over_voiced_avoids_leading_silence(speech_audio: np.ndarray) -> None:
    audio = np.concatenate([np.zeros(SR, np.float32), speech_audio, np.zeros(SR // 2, np.float32)])
    mask = voiced_mask(audio, SR)
    first_voiced = np.argmax(mask) * 0.01
    last_voiced = (len(mask) - np.argmax(mask[::-1])) * 0.01
    assert 0.95 <= first_voiced <= 1.1
    words = spread_over_voiced(SPOKEN, audio, SR)
    assert words[0].start == pytest.approx(first_voiced, abs=0.02)
    assert words[-1].end == pytest.approx(last_voiced, abs=0.02)
    check_times(words, len(audio) / SR)
    # nothing voiced: spread over the whole audio
    flat = spread_over_voiced(["a", "b"], np.zeros(2 * SR, np.float32), SR)
    assert (flat[0].start, flat[1].end) == (0.0, 2.0)


# ----------------------------------------------------------------------------- resolution

def test_txt_transcript_gets_matched_times(clip: Path, speech_audio, asr_words, recognizer) -> None:
    clip.with_suffix(".txt").write_text("I really love this wonderful film, the acting was truly great!")
    factory = CountingFactory(recognizer)
    tr = resolve_transcript(clip, speech_audio, SR, "ignored label text", AsrConfig(), factory)
    assert tr.source == "sidecar" and tr.times_source == "matched" and factory.calls == 1
    assert [w.text for w in tr.words] == "I really love this wonderful film the acting was truly great".split()
    # forced alignment (a clip under 30 s) times the words where the recogniser heard them
    by_asr = {w.text.lower(): w for w in asr_words}
    for w in tr.words:
        if w.text.lower() in ("i", "really", "love", "this", "wonderful", "acting"):
            heard = by_asr[w.text.lower()]
            assert abs(w.start - heard.start) <= 0.15 and abs(w.end - heard.end) <= 0.15, (w, heard)
    truly = tr.words[9]                                   # not spoken: squeezed between its neighbours
    assert tr.words[8].start <= truly.start <= truly.end <= tr.words[10].end
    check_times(tr.words, len(speech_audio) / SR)

    # over 30 s (one Whisper window) the clip is recognised and the words matched to what was heard
    long = np.concatenate([speech_audio, np.zeros(31 * SR, np.float32)])
    assert recognizer.align(["I", "really"], long, SR) is None
    factory = CountingFactory(recognizer)
    tr = resolve_transcript(clip, long, SR, None, AsrConfig(), factory)
    assert tr.times_source == "matched" and factory.calls == 2
    by_asr = {w.text.lower(): w for w in recognizer.transcribe(long, SR)}
    for w in tr.words:
        if w.text.lower() in ("i", "really", "love", "this", "wonderful", "acting"):
            assert (w.start, w.end) == (by_asr[w.text.lower()].start, by_asr[w.text.lower()].end)
    check_times(tr.words, len(long) / SR)


def test_sources_order_and_laziness(clip: Path, speech_audio, recognizer) -> None:
    clip.with_suffix(".json").write_text(json.dumps({"words": [{"word": "sidecar", "start": 0.2, "end": 9.0}]}))
    factory = CountingFactory(recognizer)
    tr = resolve_transcript(clip, speech_audio, SR, "from the labels", AsrConfig(), factory)
    assert tr.source == "sidecar" and factory.calls == 0          # timed sidecar: ASR never loaded
    assert tr.words[0].end == pytest.approx(len(speech_audio) / SR)  # clamped to the audio
    cfg = AsrConfig(sources=["labels", "sidecar"])
    tr = resolve_transcript(clip, speech_audio, SR, "I really love this movie", cfg, factory)
    assert tr.source == "labels" and tr.times_source == "matched" and factory.calls == 1
    assert [w.text for w in tr.words] == ["I", "really", "love", "this", "movie"]
    tr = resolve_transcript(clip, speech_audio, SR, "   ", cfg, factory)   # blank label: next source
    assert tr.source == "sidecar"
    clip.with_suffix(".json").unlink()
    tr = resolve_transcript(clip, speech_audio, SR, None, AsrConfig(sources=["sidecar", "labels"]), factory)
    assert (tr.source, tr.words, tr.times_source) == ("none", [], "none")


def test_asr_source(clip: Path, speech_audio, recognizer) -> None:
    factory = CountingFactory(recognizer)
    tr = resolve_transcript(clip, speech_audio, SR, None, AsrConfig(), factory)
    assert tr.source == "asr" and tr.times_source == "asr" and factory.calls == 1
    heard = [w.text.lower() for w in tr.words]
    assert sum(w in heard for w in SPOKEN) >= 0.8 * len(SPOKEN)
    check_times(tr.words, len(speech_audio) / SR)


def test_silence_gives_no_words_and_label_text_is_spread(clip: Path, recognizer) -> None:
    silence = np.zeros(2 * SR, np.float32)
    factory = CountingFactory(recognizer)
    tr = resolve_transcript(clip, silence, SR, None, AsrConfig(), factory)
    assert (tr.source, tr.words, tr.times_source) == ("asr", [], "none")
    tr = resolve_transcript(clip, silence, SR, "words nobody said", AsrConfig(), factory)
    assert tr.source == "labels" and tr.times_source == "spread"
    assert tr.words[0].start == 0.0 and tr.words[-1].end == pytest.approx(2.0)
    check_times(tr.words, 2.0)


def test_no_audio_keeps_text_without_times(clip: Path, recognizer) -> None:
    factory = CountingFactory(recognizer)
    empty = np.zeros(0, np.float32)
    tr = resolve_transcript(clip, empty, SR, "a clip without sound", AsrConfig(), factory)
    assert tr.source == "labels" and tr.times_source == "none" and factory.calls == 0
    assert all(w.start == w.end == 0.0 for w in tr.words)
    tr = resolve_transcript(clip, empty, SR, None, AsrConfig(), factory)
    assert isinstance(tr, Transcript) and tr.source == "none" and factory.calls == 0
