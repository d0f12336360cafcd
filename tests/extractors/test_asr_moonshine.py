"""Moonshine in the speech-recognition ensemble (extractors.moonshine): it hears a real person's voice,
its transcript joins the ones the Whisper models score, and when it wins Whisper times its words."""
from __future__ import annotations

import os

import numpy as np
import pytest

from extractors import moonshine
from extractors.asr import ASR_SAMPLE_RATE as SR
from extractors.asr import SpeechRecognizer, asr_versions
from extractors.decode import load_audio
from extractors.errors import ModelLoadError
from extractors.moonshine import MoonshineListener
from extractors.words import scoring_words
from pipeline.config import AsrConfig, ConfigError, load_config

WITH_MOONSHINE = AsrConfig(model="builtin:base", ensemble=["builtin:tiny.en", "moonshine:base"])


@pytest.fixture(scope="module")
def listener() -> MoonshineListener:
    return MoonshineListener("moonshine:base")


@pytest.fixture(scope="module")
def three() -> SpeechRecognizer:
    return SpeechRecognizer(WITH_MOONSHINE)


def test_moonshine_hears_a_real_voice(listener, real_speech) -> None:
    """CMU ARCTIC's speaker, which Whisper base alone mishears ("separative"), heard word for word."""
    path, said = real_speech
    assert scoring_words(listener.hear(load_audio(path, SR))) == said.split()
    assert listener.hear(np.zeros(0, np.float32)) == ""


def test_the_ensemble_is_named_and_versioned_with_moonshine(three) -> None:
    assert three.name.endswith(" + moonshine:base(moonshine-cpp 0.1.4)"), three.name
    versions = asr_versions(WITH_MOONSHINE, "cpu")
    assert versions["moonshine-cpp"] == "0.1.4" and versions["onnxruntime"] != "unknown"
    assert "moonshine-cpp" not in asr_versions(AsrConfig(model="builtin:base", ensemble=["builtin:tiny.en"]), "cpu")


def test_words_a_whisper_model_heard_too_are_not_scored_again(three, real_speech, scoring_passes) -> None:
    """Moonshine hears what tiny.en hears (capitals and full stop aside): the scoring passes see the
    two distinct transcripts (base's and tiny.en's), not Moonshine's copy, and the right one is kept."""
    path, said = real_speech
    scored = scoring_passes(three)
    words = three.transcribe(load_audio(path, SR), SR)
    assert len(scored) == 2 and all(len(texts) == 2 for texts in scored), scored
    assert [w.text.lower() for w in words] == said.split()


def test_a_winning_moonshine_transcript_is_timed_by_forced_alignment(real_speech, monkeypatch) -> None:
    """Base with Moonshine: base hears "separative", Moonshine "superlative".  Scored so that
    Moonshine's wins, its words come out timed by base's forced alignment (no times of its own), in
    order, inside the clip, the changed word where base heard its own."""
    path, said = real_speech
    audio = load_audio(path, SR)
    rec = SpeechRecognizer(AsrConfig(model="builtin:base", ensemble=["moonshine:base"]))
    base_words = rec._recognise(rec._models[0], audio)[1]
    assert "separative" in [w.text.lower() for w in base_words]      # the two disagree: Moonshine's is new
    monkeypatch.setattr(rec, "_log_probs", lambda model, audio, texts: np.arange(len(texts), dtype=float))
    words = rec.transcribe(audio, SR)
    assert [w.text.lower() for w in words] == said.split()
    starts, ends = np.array([w.start for w in words]), np.array([w.end for w in words])
    assert np.all(np.diff(starts) >= 0) and np.all(ends > starts) and ends[-1] <= len(audio) / SR + 1e-6
    mine = words[said.split().index("superlative")]
    theirs = next(w for w in base_words if w.text.lower() == "separative")
    assert min(mine.end, theirs.end) - max(mine.start, theirs.start) > 0.5 * (theirs.end - theirs.start)


def test_a_moonshine_transcript_that_cannot_be_timed_gives_way(real_speech, monkeypatch) -> None:
    """When forced alignment cannot time the winning Moonshine transcript, the best Whisper one is kept."""
    path, said = real_speech
    audio = load_audio(path, SR)
    rec = SpeechRecognizer(AsrConfig(model="builtin:base", ensemble=["moonshine:base"]))
    scored, timed = [], []
    monkeypatch.setattr(rec, "_log_probs", lambda model, audio, texts: scored.append(texts) or
                        np.arange(len(texts), dtype=float))          # the last (Moonshine's) scores best
    monkeypatch.setattr(rec, "align", lambda words, audio, rate: timed.append(words))
    heard = [w.text.lower() for w in rec.transcribe(audio, SR)]
    assert len(scored) == 1 and len(scored[0]) == 2                # base's and Moonshine's transcripts
    assert [[w.lower() for w in words] for words in timed] == [said.split()]   # Moonshine's was tried first
    assert "separative" in heard and "superlative" not in heard   # then base's was kept


def test_moonshine_cannot_be_the_first_recogniser() -> None:
    with pytest.raises(ConfigError, match="no word times"):
        load_config(None, ['extract.asr.model="moonshine:base"'])
    with pytest.raises(ConfigError, match="demo.asr_model.*demo.asr_ensemble"):
        load_config(None, ['demo.asr_model="moonshine:base"'])
    with pytest.raises(ModelLoadError, match="no word times"):
        SpeechRecognizer(AsrConfig.model_construct(model="moonshine:base", ensemble=[]))


def test_a_missing_moonshine_package_or_model_is_named(monkeypatch) -> None:
    with pytest.raises(ModelLoadError, match="moonshine:tiny.*unknown"):
        MoonshineListener("moonshine:tiny")
    monkeypatch.setattr(moonshine, "package_dir", lambda module: None)
    with pytest.raises(ModelLoadError, match="needs the 'moonshine-cpp' package"):
        MoonshineListener("moonshine:base")


def test_hearing_many_clips_does_not_grow_memory(listener, real_speech) -> None:
    """The package's own library keeps about 70 MB per clip it hears; run on ONNX Runtime, memory
    stays flat over many clips (of different lengths, as a corpus has)."""
    audio = load_audio(real_speech[0], SR)

    def rss_mb() -> float:
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    listener.hear(audio)
    before = rss_mb()
    for i in range(10):
        listener.hear(audio[: len(audio) - 1600 * i])
    assert rss_mb() - before < 100, (before, rss_mb())
