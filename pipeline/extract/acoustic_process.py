"""The acoustic stage in a helper process beside a one-process ``extract``.

Why: librosa's first call costs about 3.5 s on this 2-core machine (it imports scipy.signal, whose
import parses scipy's own docstrings, and loads numba kernels), and every clip's pYIN then holds the
interpreter for about half a second.  In the extracting process both compete for the one
interpreter lock with the model loading and the face threads.  In a helper process they run on the
other core instead: the helper starts when the models start loading, warms librosa up meanwhile,
then computes :func:`extractors.acoustic.acoustic_features` for each clip sent to it (the audio
goes over a pipe: 64 kB a second of 16 kHz audio).  The features are the same function's output,
so they are identical to computing them in process.

The helper exits when its pipe closes, so it never outlives the extracting process, killed or not
(a killed parent closes the pipe; :meth:`AcousticProcess.close` closes it on a normal end).  If
the helper dies, the remaining clips are computed in process.
"""
from __future__ import annotations

import logging
import multiprocessing
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from extractors.errors import ExtractionError

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import AudioConfig

log = logging.getLogger(__name__)


def warm_up_audio(sample_rate: int) -> np.ndarray:
    """Half a second of a quiet 150 Hz tone in noise: enough for every acoustic code path."""
    t = np.arange(sample_rate // 2) / sample_rate
    noise = np.random.default_rng(0).standard_normal(t.size)
    return (0.1 * np.sin(2 * np.pi * 150 * t) + 0.01 * noise).astype(np.float32)


def _serve(conn: Any, sample_rate: int, audio_cfg: dict[str, Any]) -> None:
    """The helper: warm up, then answer ``(audio, sr)`` with ``("ok", result)`` or ``("error", e)``."""
    from extractors.acoustic import acoustic_features
    from pipeline.config import AudioConfig

    cfg = AudioConfig(**audio_cfg)
    try:
        acoustic_features(warm_up_audio(sample_rate), sample_rate, cfg)
    except Exception:  # a real clip will raise it again, with its name
        pass
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return                       # the extracting process is gone
        if msg is None:
            return
        audio, sr = msg
        try:
            reply = ("ok", acoustic_features(audio, sr, cfg))
        except Exception as e:
            reply = ("error", ExtractionError(str(e)) if isinstance(e, ExtractionError)
                     else RuntimeError(f"{type(e).__name__}: {e}"))
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return


class AcousticProcess:
    """A started helper process; :meth:`features` is ``acoustic_features(audio, sr, cfg)`` run there."""

    def __init__(self, sample_rate: int, cfg: "AudioConfig") -> None:
        ctx = multiprocessing.get_context("spawn")
        self._cfg = cfg
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, int(sample_rate), cfg.model_dump()),
                                 name="dhmd-acoustic", daemon=True)
        self._proc.start()
        child.close()
        self._lock = threading.Lock()
        self._dead = False
        self._used = False

    def features(self, audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The clip's acoustic features, computed in the helper (in process once it has died)."""
        if not self._dead:
            self._used = True
            with self._lock:
                try:
                    self._conn.send((np.ascontiguousarray(audio, dtype=np.float32), int(sample_rate)))
                    status, value = self._conn.recv()
                except (EOFError, OSError, BrokenPipeError):
                    self._dead = True
                    log.warning("the acoustic helper process ended (exit code %s); computing acoustic "
                                "features in this process from now on", self._proc.exitcode)
                else:
                    if status == "error":
                        raise value
                    return value
        from extractors.acoustic import acoustic_features

        return acoustic_features(audio, sample_rate, self._cfg)

    def close(self) -> None:
        """Ask the helper to stop and wait for it (killed after 5 s, or at once if it was never
        used: it may still be warming up).  Safe to call twice."""
        if self._conn.closed:
            return
        if not self._used:
            self._proc.kill()
        else:
            try:
                self._conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        self._conn.close()
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
