"""Acoustic features with librosa: short frames, summarised to a fixed output rate.

Frame features are computed every ``hop_ms`` (default 10 ms) over ``win_ms`` windows (25 ms; the
FFT size is the next power of two), then averaged over consecutive windows of ``1 / rate_hz``
seconds (default 80 ms, i.e. 12.5 rows a second).  Output row ``k`` covers
``[k / rate_hz, (k + 1) / rate_hz)`` and its time is the centre of that span; the last, partial
window is kept (its time is the centre of what remains), so a clip of ``d`` seconds gives
``ceil(d * rate_hz)`` rows.  Each short frame is assigned to the window holding its centre.

Features (2 * n_mfcc + 18 = 44 with the default ``n_mfcc = 13``; :func:`acoustic_feature_names`
gives the list):

=============================  ====  ============================================================
names                          dims  what (window mean of the frame values unless said)
=============================  ====  ============================================================
mfcc_1 .. mfcc_N               N     MFCCs of a 40-band mel power spectrogram (dB), N = n_mfcc
mfcc_delta_1 .. mfcc_delta_N   N     their first time derivative (librosa ``delta``, 9 frames)
f0_hz                          1     pYIN fundamental frequency, mean over the window's *voiced*
                                     frames; 0 when none is voiced (NaN never escapes)
f0_log_hz                      1     natural log of ``f0_hz`` (0 when unvoiced)
voiced_prob                    1     pYIN voicing probability
voiced_frac                    1     fraction of the window's frames that pYIN calls voiced
rms                            1     root-mean-square amplitude (audio in [-1, 1])
rms_db                         1     20 log10(rms), floored at -100 dB
zcr                            1     zero-crossing rate (crossings per sample)
spectral_centroid_khz          1     spectral centroid, kHz
spectral_bandwidth_khz         1     spectral bandwidth (2nd order), kHz
spectral_rolloff_khz           1     85 % roll-off frequency, kHz
spectral_flatness              1     Wiener entropy, 0 (tonal) .. 1 (noise-like)
spectral_contrast_1 .. _7      7     peak-to-valley contrast (dB) in 7 bands split at octaves of
                                     min(200 Hz, sr / 256) (62.5 Hz at 16 kHz)
=============================  ====  ============================================================

pYIN searches ``f0_min`` .. ``f0_max`` (default 65-500 Hz) at every short frame, with a frame of at
least three periods of ``f0_min`` (1024 samples at 16 kHz) and a pitch grid of 0.2 semitone (f0
within about 0.6 %).  pYIN is the slow part: its Viterbi pass grows with the square of the number of
pitch bins, and 0.2 semitone is about 3x faster than librosa's default 0.1 with the same voicing on
tones (measured: about 0.05-0.1 s per second of 16 kHz audio on one busy core, everything else
about 0.015 s).  The first librosa call in a fresh environment JIT-compiles its kernels (about
20 s, cached on disk after).

Empty audio gives a ``(0, D)`` array, an empty time vector and the names, so a clip without sound
is still a well-formed entry.  Silence gives finite values (f0 and voicing 0, rms_db -100).
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np

from extractors.errors import ExtractionError
from extractors.packaged_models import package_version

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import AudioConfig

log = logging.getLogger(__name__)

ACOUSTIC_VERSION = "ac1"        # bump when a feature definition here changes (in the cache key: acoustic_versions)


def acoustic_versions() -> dict[str, str]:
    """What changes the acoustic features besides the settings (for the cache key): the librosa
    version and :data:`ACOUSTIC_VERSION`, read without importing librosa."""
    return {"librosa": package_version("librosa"), "definitions": ACOUSTIC_VERSION}
N_MELS = 40
N_CONTRAST_BANDS = 6          # librosa returns n_bands + 1 contrast rows
ROLLOFF = 0.85
RMS_DB_FLOOR = -100.0
PYIN_PERIODS = 3              # pYIN frame >= this many periods of f0_min
PYIN_RESOLUTION = 0.2         # pitch grid of pYIN in semitones (librosa's default is 0.1)


def acoustic_feature_names(n_mfcc: int = 13) -> list[str]:
    """Names of the feature columns, in order, for ``n_mfcc`` MFCCs (13 by default: 44 names)."""
    return ([f"mfcc_{i + 1}" for i in range(n_mfcc)] + [f"mfcc_delta_{i + 1}" for i in range(n_mfcc)]
            + ["f0_hz", "f0_log_hz", "voiced_prob", "voiced_frac", "rms", "rms_db", "zcr",
               "spectral_centroid_khz", "spectral_bandwidth_khz", "spectral_rolloff_khz",
               "spectral_flatness"]
            + [f"spectral_contrast_{i + 1}" for i in range(N_CONTRAST_BANDS + 1)])


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 1).bit_length()


def _window_index(frame_times: np.ndarray, rate_hz: float, n_out: int) -> np.ndarray:
    """Output window of each short frame (by its centre time), clipped into ``[0, n_out)``."""
    idx = np.floor(frame_times * rate_hz + 1e-9).astype(np.int64)
    return np.clip(idx, 0, n_out - 1)


def _window_mean(values: np.ndarray, idx: np.ndarray, n_out: int, weights: np.ndarray | None = None,
                 fill_empty: bool = True) -> np.ndarray:
    """Mean of ``values`` (F, K) per output window (``idx`` = window of each frame).

    A window that no frame falls in (only when ``rate_hz`` exceeds the frame rate) takes the
    nearest window's value with ``fill_empty``, else 0 (as for f0 without a voiced frame).
    """
    w = np.ones(len(idx)) if weights is None else weights.astype(np.float64)
    sums = np.zeros((n_out, values.shape[1]))
    np.add.at(sums, idx, values * w[:, None])
    counts = np.bincount(idx, weights=w, minlength=n_out)
    out = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0)
    filled = np.flatnonzero(counts > 0)
    if fill_empty and 0 < filled.size < n_out:
        rows = np.arange(n_out)
        pos = np.searchsorted(filled, rows)
        right = filled[np.minimum(pos, filled.size - 1)]
        left = filled[np.maximum(pos - 1, 0)]
        out = out[np.where(np.abs(rows - left) <= np.abs(right - rows), left, right)]
    return out


def _check_audio(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    arr = np.asarray(audio)
    if arr.ndim != 1:
        raise ExtractionError(f"acoustic features: audio of shape {arr.shape}; expected mono 1-D samples")
    if not np.issubdtype(arr.dtype, np.number):
        raise ExtractionError(f"acoustic features: audio of dtype {arr.dtype}; expected float samples")
    if sample_rate <= 0:
        raise ExtractionError(f"acoustic features: sample rate {sample_rate}; expected a positive rate")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        log.warning("acoustic features: %d non-finite samples set to 0", int((~np.isfinite(arr)).sum()))
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    return arr


def acoustic_features(audio: np.ndarray, sample_rate: int, cfg: "AudioConfig"
                      ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Acoustic features of mono audio: ``(features (Ta, D) float32, times (Ta,) s, names)``.

    ``audio`` is float samples in [-1, 1] at ``sample_rate``; no file is read.  Row times are window
    centres (see the module doc); ``Ta = ceil(duration * cfg.rate_hz)``.
    """
    import librosa

    names = acoustic_feature_names(cfg.n_mfcc)
    y = _check_audio(audio, sample_rate)
    sr = int(sample_rate)
    duration = len(y) / sr
    n_out = int(math.ceil(duration * cfg.rate_hz - 1e-9))
    if n_out == 0:
        return np.zeros((0, len(names)), np.float32), np.zeros(0, np.float64), names
    if cfg.f0_min >= cfg.f0_max:
        raise ExtractionError(f"acoustic features: f0_min {cfg.f0_min} Hz is not below "
                              f"f0_max {cfg.f0_max} Hz")

    hop = max(1, int(round(sr * cfg.hop_ms / 1000.0)))
    win = max(2, int(round(sr * cfg.win_ms / 1000.0)))
    n_fft = _next_pow2(win)
    f0_frame = max(n_fft, _next_pow2(int(math.ceil(PYIN_PERIODS * sr / cfg.f0_min))))
    # Very short audio: pad with silence so every analysis frame is defined; rows past the real
    # duration are never produced (frames are clipped into the last window).
    y_pad = np.pad(y, (0, max(0, f0_frame - len(y))))
    fmax = min(cfg.f0_max, sr / 2.0 - 1.0)

    spec = np.abs(librosa.stft(y_pad, n_fft=n_fft, hop_length=hop, win_length=win, center=True))
    mel_db = librosa.power_to_db(librosa.feature.melspectrogram(S=spec ** 2, sr=sr, n_mels=N_MELS,
                                                                fmax=sr / 2.0))
    mfcc = librosa.feature.mfcc(S=mel_db, n_mfcc=cfg.n_mfcc)
    n_frames = mfcc.shape[1]
    width = min(9, n_frames if n_frames % 2 else n_frames - 1)
    delta = (librosa.feature.delta(mfcc, width=width, mode="interp") if width >= 3
             else np.zeros_like(mfcc))
    rms = librosa.feature.rms(y=y_pad, frame_length=win, hop_length=hop, center=True)[0]
    zcr = librosa.feature.zero_crossing_rate(y_pad, frame_length=win, hop_length=hop, center=True)[0]
    centroid = librosa.feature.spectral_centroid(S=spec, sr=sr)[0]
    bandwidth = librosa.feature.spectral_bandwidth(S=spec, sr=sr)[0]
    rolloff = librosa.feature.spectral_rolloff(S=spec, sr=sr, roll_percent=ROLLOFF)[0]
    flatness = librosa.feature.spectral_flatness(S=spec)[0]
    contrast = librosa.feature.spectral_contrast(S=spec, sr=sr, n_bands=N_CONTRAST_BANDS,
                                                 fmin=min(200.0, sr / 2.0 ** (N_CONTRAST_BANDS + 2)))
    f0, voiced, voiced_p = librosa.pyin(y_pad, fmin=cfg.f0_min, fmax=fmax, sr=sr,
                                        frame_length=f0_frame, hop_length=hop, center=True,
                                        resolution=PYIN_RESOLUTION)

    n = min(n_frames, len(rms), len(zcr), len(f0))
    frame_times = np.arange(n) * hop / sr
    idx = _window_index(frame_times, cfg.rate_hz, n_out)
    keep = frame_times < max(duration, hop / sr)     # padding frames past the end add nothing

    frame_feats = np.column_stack([
        mfcc[:, :n].T, delta[:, :n].T, voiced_p[:n], voiced[:n].astype(np.float64), rms[:n],
        zcr[:n], centroid[:n] / 1000.0, bandwidth[:n] / 1000.0, rolloff[:n] / 1000.0, flatness[:n],
        contrast[:, :n].T,
    ]).astype(np.float64)
    frame_feats = np.nan_to_num(frame_feats, nan=0.0, posinf=0.0, neginf=0.0)
    means = _window_mean(frame_feats[keep], idx[keep], n_out)

    f0_voiced = np.where(voiced[:n] & np.isfinite(f0[:n]), f0[:n], 0.0)
    is_voiced = (f0_voiced > 0)[keep]
    f0_mean = _window_mean(f0_voiced[keep][:, None], idx[keep], n_out, weights=is_voiced,
                           fill_empty=False)[:, 0]
    f0_log = np.where(f0_mean > 0, np.log(np.maximum(f0_mean, 1e-6)), 0.0)

    k = cfg.n_mfcc
    mf, dl, rest = means[:, :k], means[:, k:2 * k], means[:, 2 * k:]
    voiced_prob, voiced_frac, rms_mean, zcr_mean = rest[:, 0], rest[:, 1], rest[:, 2], rest[:, 3]
    spectral = rest[:, 4:]                 # centroid, bandwidth, rolloff, flatness, contrast
    rms_db = np.maximum(20.0 * np.log10(np.maximum(rms_mean, 1e-12)), RMS_DB_FLOOR)
    out = np.column_stack([mf, dl, f0_mean, f0_log, voiced_prob, voiced_frac, rms_mean, rms_db,
                           zcr_mean, spectral])
    out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
    assert out.shape == (n_out, len(names)), (out.shape, len(names))

    starts = np.arange(n_out) / cfg.rate_hz
    ends = np.minimum(starts + 1.0 / cfg.rate_hz, duration)
    times = (starts + ends) / 2.0
    return out, times, names
