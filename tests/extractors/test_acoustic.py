"""Acoustic features on real espeak-ng speech, silence and pure tones."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from extractors.acoustic import acoustic_feature_names, acoustic_features
from extractors.errors import ExtractionError
from pipeline.config import AudioConfig
from pipeline.demo.synth import speak

SR = 16000
CFG = AudioConfig()


def _speech(text: str, pitch: int = 50) -> np.ndarray:
    """espeak-ng speech, mono float32 at SR."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        speak(text, wav, pitch=pitch)
        y, sr = sf.read(wav, dtype="float32")
    return librosa.resample(y, orig_sr=sr, target_sr=SR).astype(np.float32)


def _tone(freq: float, seconds: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _col(names: list[str], feats: np.ndarray, name: str) -> np.ndarray:
    return feats[:, names.index(name)]


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """One sentence of espeak-ng speech; computing it once also warms librosa's JIT for the module."""
    y = _speech("I really love this wonderful movie, the acting was great.")
    acoustic_features(y[:SR], SR, CFG)
    return y


@pytest.fixture(scope="module")
def speech_then_silence(speech):
    y = np.concatenate([speech, np.zeros(SR, np.float32)])
    return y, acoustic_features(y, SR, CFG)


def test_names_and_dimensions():
    names = acoustic_feature_names(13)
    assert len(names) == 44 == len(set(names))
    assert {"f0_hz", "voiced_prob", "rms"} <= set(names)          # used by the explanation timeline
    assert names[:2] == ["mfcc_1", "mfcc_2"] and "mfcc_delta_13" in names
    assert len(acoustic_feature_names(20)) == 58


def test_shape_times_and_finiteness(speech_then_silence):
    y, (feats, times, names) = speech_then_silence
    duration = len(y) / SR
    assert names == acoustic_feature_names(CFG.n_mfcc)
    assert feats.dtype == np.float32 and feats.shape == (math.ceil(duration * CFG.rate_hz), len(names))
    assert times.shape == (feats.shape[0],) and np.all(np.diff(times) > 0)
    assert times[0] == pytest.approx(0.5 / CFG.rate_hz)
    assert np.allclose(np.diff(times[:-1]), 1.0 / CFG.rate_hz)
    assert times[-1] < duration and times[-1] > duration - 1.0 / CFG.rate_hz   # centre of the partial window
    assert np.isfinite(feats).all()


def test_speech_is_voiced_and_loud_where_silence_is_not(speech, speech_then_silence):
    y, (feats, times, names) = speech_then_silence
    speech_end = len(speech) / SR
    in_speech = times < speech_end - 0.3                      # espeak leaves a short tail
    in_silence = times > speech_end + 0.1
    assert in_speech.sum() > 20 and in_silence.sum() >= 8
    for name in ["voiced_prob", "voiced_frac", "f0_hz", "rms", "rms_db"]:
        col = _col(names, feats, name)
        assert col[in_speech].mean() > col[in_silence].mean() + 1e-3, name
    f0 = _col(names, feats, "f0_hz")
    assert np.all(f0[in_silence] == 0) and np.all(_col(names, feats, "rms_db")[in_silence] == -100.0)
    voiced = f0[in_speech] > 0
    assert voiced.mean() > 0.5
    assert 60 < np.median(f0[in_speech][voiced]) < 300            # a speaking voice
    assert np.allclose(_col(names, feats, "f0_log_hz")[in_speech][voiced], np.log(f0[in_speech][voiced]),
                       atol=1e-4)
    # the spectrum changes through speech: MFCCs are not constant
    assert _col(names, feats, "mfcc_2")[in_speech].std() > 1.0


def test_higher_espeak_pitch_gives_higher_f0(speech):
    low, high = _speech("This was fine.", pitch=15), _speech("This was fine.", pitch=90)
    med = []
    for y in (low, high):
        feats, _, names = acoustic_features(y, SR, CFG)
        f0 = _col(names, feats, "f0_hz")
        med.append(np.median(f0[f0 > 0]))
    assert med[1] > med[0] * 1.15


def test_pure_tone_f0_and_spectrum(speech):
    feats, times, names = acoustic_features(_tone(200.0, 1.5), SR, CFG)
    inner = (times > 0.1) & (times < 1.4)
    assert np.allclose(_col(names, feats, "f0_hz")[inner], 200.0, rtol=0.02)
    assert np.all(_col(names, feats, "voiced_frac")[inner] > 0.9)
    assert np.all(_col(names, feats, "voiced_prob")[inner] > 0.5)
    rms = _col(names, feats, "rms")[inner]
    assert np.allclose(rms, 0.3 / np.sqrt(2), rtol=0.05)          # rms of a sine
    assert np.all(_col(names, feats, "spectral_centroid_khz")[inner] < 0.5)
    assert np.all(_col(names, feats, "spectral_flatness")[inner] < 0.05)
    # 2 zero crossings per period: 400 per second
    assert np.allclose(_col(names, feats, "zcr")[inner], 400.0 / SR, rtol=0.1)


def test_white_noise_is_flat_and_unvoiced(speech):
    rng = np.random.default_rng(0)
    feats, times, names = acoustic_features((0.1 * rng.standard_normal(SR)).astype(np.float32), SR, CFG)
    assert _col(names, feats, "spectral_flatness").mean() > 0.3
    assert _col(names, feats, "voiced_frac").mean() < 0.2
    assert _col(names, feats, "spectral_centroid_khz").mean() > 2.0


def test_output_rate_and_hop_are_configurable(speech):
    y = speech[: int(2.03 * SR)]
    for cfg in (AudioConfig(rate_hz=25.0), AudioConfig(hop_ms=20.0, win_ms=40.0, rate_hz=5.0),
                AudioConfig(n_mfcc=20)):
        feats, times, names = acoustic_features(y, SR, cfg)
        assert feats.shape == (math.ceil(2.03 * cfg.rate_hz), 2 * cfg.n_mfcc + 18)
        assert np.isfinite(feats).all() and np.all(np.diff(times) > 0)
    # a row rate above the frame rate still fills every row from the nearest frames
    feats, _, names = acoustic_features(_tone(200.0, 0.5), SR, AudioConfig(hop_ms=20.0, rate_hz=100.0))
    assert feats.shape[0] == 50 and not np.any(np.all(feats == 0, axis=1))


def test_other_sample_rates(speech):
    for sr in (8000, 22050):
        y = librosa.resample(speech, orig_sr=SR, target_sr=sr)
        feats, times, _ = acoustic_features(y, sr, CFG)
        assert feats.shape[0] == math.ceil(len(y) / sr * CFG.rate_hz) and np.isfinite(feats).all()


def test_empty_short_and_silent_audio(speech):
    feats, times, names = acoustic_features(np.zeros(0, np.float32), SR, CFG)
    assert feats.shape == (0, 44) and times.shape == (0,) and len(names) == 44
    feats, times, _ = acoustic_features(_tone(150.0, 0.01), SR, CFG)       # one 10 ms blip
    assert feats.shape == (1, 44) and np.isfinite(feats).all() and times[0] == pytest.approx(0.005)
    feats, _, names = acoustic_features(np.zeros(SR // 2, np.float32), SR, CFG)
    assert feats.shape == (7, 44) and np.isfinite(feats).all()
    assert np.all(_col(names, feats, "f0_hz") == 0) and np.all(_col(names, feats, "voiced_frac") == 0)


def test_bad_audio(speech):
    with pytest.raises(ExtractionError, match="mono"):
        acoustic_features(np.zeros((SR, 2), np.float32), SR, CFG)
    y = _tone(200.0, 0.5)
    y[100:200] = np.nan
    feats, _, _ = acoustic_features(y, SR, CFG)
    assert np.isfinite(feats).all()


def test_audio_of_a_real_clip(speech_clip, speech):
    from extractors.decode import load_audio

    audio = load_audio(speech_clip, SR)
    feats, times, names = acoustic_features(audio, SR, CFG)
    assert feats.shape[0] == math.ceil(len(audio) / SR * CFG.rate_hz)
    assert (_col(names, feats, "f0_hz") > 0).mean() > 0.3 and np.isfinite(feats).all()
