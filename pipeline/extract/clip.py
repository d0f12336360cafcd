"""Extraction of one clip: decode -> transcript -> text tokens -> acoustic -> face, into ClipFeatures.

:class:`ExtractorModels` loads every model once (text encoder, face extractor; the speech recogniser
lazily, only when a clip needs ASR) and :func:`extract_clip` turns one video file into the
unaligned :class:`~pipeline.extract.cache.ClipFeatures` of a cache entry.  Both are free of CLI concerns:
``extract`` runs them over a folder (:mod:`pipeline.extract.batch`), ``predict`` on single clips
with the settings stored in a checkpoint.

What a clip becomes (documented outcome, also in the manifest's ``status``/``flags``):

======================================  ========  =====================================================
input                                   status    what is stored
======================================  ========  =====================================================
speech over a face                      ok        everything
no audio stream (or it decodes empty)   ok        flag ``no_audio``: no words ([CLS][SEP] only) and
                                                  audio (0, Da), even if a label text exists
audio without words (silence)           ok        flag ``no_speech``: [CLS][SEP] only
words whose times had to be guessed     ok        flag ``word_times_spread`` (recogniser heard none)
no video stream                         ok        flag ``no_video``: video (0, Dv)
video without a face in any frame       ok        flag ``no_face``: rows zero, face_mask all False
missing, empty, unreadable, not a       failed    nothing; the manifest's ``error`` gives the cause
regular file, not media, a still
image, corrupt, longer than
extract.max_duration_s, killing its
worker process (see pipeline.extract.pool)
======================================  ========  =====================================================

Frames without a face are kept as zero rows with ``face_mask`` False, never dropped (dropping
would shift time).  The video branch (frames + face) runs in a thread beside the audio branch
(audio, transcript, text, acoustic).  Per-stage wall times are kept in ``meta["timings_s"]`` for
the benchmark; because of the overlap they add up to more than ``total``.
"""
from __future__ import annotations

import logging
import os
import stat
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from extractors.errors import ExtractionError, ModelLoadError
from extractors.packaged_models import package_version
from pipeline.extract.cache import ClipFeatures, file_hash, settings_hash

if TYPE_CHECKING:  # pragma: no cover
    from extractors.asr import SpeechRecognizer
    from extractors.decode import MediaInfo
    from pipeline.config import ExtractConfig

log = logging.getLogger(__name__)

FEATURE_FORMAT = 1          # bump when this module changes what an entry holds (part of the cache key)
FLAGS = ("no_audio", "no_speech", "word_times_spread", "no_video", "no_face")


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; ``"cpu"``/``"cuda"`` as given."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("extract.device is 'cuda' but torch sees no CUDA device here; use 'auto' or 'cpu'")
    return device


def extraction_settings(cfg: "ExtractConfig") -> dict[str, Any]:
    """Every setting that changes what an entry holds (cache key, and the ``settings`` of an entry).

    Left out on purpose: where and how fast things run (out, workers, device, batch size,
    max_duration_s, video_exts, face.threads), which do not change the features.  (The device does change one
    thing, the ASR compute type; that enters the key through :func:`extraction_versions`.)
    """
    return {
        "format": FEATURE_FORMAT,
        "fps": float(cfg.fps),
        "sample_rate": int(cfg.sample_rate),
        "text": {"model": cfg.text.model, "max_tokens": cfg.text.max_tokens, "layer": cfg.text.layer},
        # no ensemble is left out, so the keys of caches made before it existed still match
        "asr": cfg.asr.model_dump(mode="json", exclude=set() if cfg.asr.ensemble else {"ensemble"}),
        "face": cfg.face.model_dump(mode="json", exclude={"threads"}),
        "audio": cfg.audio.model_dump(mode="json"),
    }


def extraction_versions(cfg: "ExtractConfig", device: str) -> dict[str, dict[str, str]]:
    """The versions block of the cache key: everything besides the settings that changes features.

    Per stage: decode (ffmpeg program, OpenCV), text (transformers, tokenizers, torch, the package
    carrying a builtin model), asr (faster-whisper, ctranslate2, the package carrying a builtin
    model, the compute type in effect on ``device``: float16 on CUDA, ``asr.compute_type`` on CPU),
    face (backend package; the Face Landmarker model package and our definitions FEATURE_VERSION for mediapipe) and acoustic
    (librosa, our ACOUSTIC_VERSION).  Cheap: package metadata read once per process, no model is
    imported or loaded.  ``device`` is the resolved one ("cpu" or "cuda", see :func:`resolve_device`).
    """
    from extractors.acoustic import acoustic_versions
    from extractors.asr import asr_versions
    from extractors.decode import decode_versions
    from extractors.face import face_versions
    from extractors.text import text_versions

    return {"decode": decode_versions(), "text": text_versions(cfg.text), "asr": asr_versions(cfg.asr, device),
            "face": face_versions(cfg.face), "acoustic": acoustic_versions()}


def sidecar_digest(clip: Path) -> str | None:
    """Hash of the clip's transcript sidecar files (same stem), so editing one re-extracts the clip."""
    from extractors.transcript import SIDECAR_EXTS

    parts = []
    for ext in SIDECAR_EXTS:
        side = Path(clip).with_suffix(ext)
        if side != Path(clip) and side.is_file():
            parts.append(f"{ext}:{file_hash(side)}")
    return settings_hash({"sidecars": parts}) if parts else None


def clip_settings(path: Path, cfg: "ExtractConfig", clip_id: str, label_text: str | None,
                  device: str | None = None) -> dict[str, Any]:
    """What one clip's entry key is made of (with the file's content hash).

    :func:`extraction_settings`, the versions block (:func:`extraction_versions` on ``device``, the
    resolved device; None resolves ``cfg.device``), and what is particular to the clip: its id
    (stored in the entry), the labels-file text and the sidecar transcript when those are transcript
    sources.  Changing any of them makes a new entry.
    """
    settings = extraction_settings(cfg)
    settings["versions"] = extraction_versions(cfg, device or resolve_device(cfg.device))
    settings["clip_id"] = clip_id
    settings["label_text"] = (" ".join(label_text.split()) or None) if (
        label_text and "labels" in cfg.asr.sources) else None
    settings["sidecar"] = sidecar_digest(path) if "sidecar" in cfg.asr.sources else None
    return settings


@contextmanager
def _naming_setting(setting: str) -> Iterator[None]:
    """Add the setting to change to a ModelLoadError raised inside (one line, as before)."""
    try:
        yield
    except ModelLoadError as e:
        raise ModelLoadError(f"{e} (setting {setting})") from None


class ExtractorModels:
    """Every model of the extraction, loaded once and reused for many clips.

    Attributes: ``device`` ("cpu"/"cuda"), ``text`` (:class:`extractors.text.TextEncoder`),
    ``face`` (:class:`extractors.face.FaceExtractor`), ``audio_names`` (acoustic feature names).
    :meth:`recognizer` loads the speech recogniser on first use; a load failure is remembered and
    raised again for every clip that needs it (the batch stops at the first: see
    :func:`pipeline.extract.jobs.extract_job`).
    """

    def __init__(self, cfg: "ExtractConfig", device: str, text: Any, face: Any, audio_names: list[str],
                 more_faces: list[Any] | None = None, acoustic: Any = None):
        self.cfg = cfg
        self.acoustic = acoustic                     # an AcousticProcess (not owned), or None: in process
        self.device = device
        self.text = text
        self.face = face
        self.faces = [face, *(more_faces or [])]    # readers of one clip's frames, in parallel
        self.audio_names = list(audio_names)
        self._recognizer: "SpeechRecognizer | None" = None
        self._recognizer_error: ModelLoadError | None = None

    @classmethod
    def load(cls, cfg: "ExtractConfig", device: str = "auto", face_device: str | None = None,
             acoustic: Any = None) -> "ExtractorModels":
        """Load the text encoder and face extractor (ModelLoadError names the model, the cause and
        the setting to change).  ``face_device`` puts the face backend elsewhere than the text
        encoder and speech recogniser (the Ray engine keeps faces on an actor's CPUs; default:
        ``device``).  ``acoustic``: a started :class:`pipeline.extract.acoustic_process.AcousticProcess`
        that computes the acoustic features (librosa warms up there while the models load here; whoever
        started it closes it); without one they are computed here, and the first clip pays librosa's
        first call (about 3.5 s: scipy.signal's import and numba kernels)."""
        from extractors.acoustic import acoustic_feature_names
        from extractors.face import make_face_extractor
        from extractors.text import TextEncoder

        dev = resolve_device(device)
        t0 = time.perf_counter()
        with _naming_setting("extract.text.model"):
            text = TextEncoder(cfg.text, device=dev)
        with _naming_setting("extract.face.backend"):
            face = make_face_extractor(cfg.face, device=face_device or dev)
            # MediaPipe reads frames independently, one model instance per thread
            n_faces = cfg.face.threads if cfg.face.backend == "mediapipe" else 1
            more_faces = [make_face_extractor(cfg.face, device=face_device or dev) for _ in range(n_faces - 1)]
        log.info("extraction models ready on %s in %.1f s", dev, time.perf_counter() - t0)
        return cls(cfg, dev, text, face, acoustic_feature_names(cfg.audio.n_mfcc), more_faces, acoustic)

    def acoustic_features(self, audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """:func:`extractors.acoustic.acoustic_features` of a clip's audio, in the helper process
        when there is one."""
        if self.acoustic is not None:
            return self.acoustic.features(audio, sample_rate)
        from extractors.acoustic import acoustic_features

        return acoustic_features(audio, sample_rate, self.cfg.audio)

    def recognizer(self) -> "SpeechRecognizer":
        """The speech recogniser, loaded on first call (only clips that need ASR pay for it)."""
        if self._recognizer is None:
            if self._recognizer_error is not None:
                raise self._recognizer_error
            from extractors.asr import SpeechRecognizer

            try:
                with _naming_setting("extract.asr.model"):
                    self._recognizer = SpeechRecognizer(self.cfg.asr, device=self.device)
            except ModelLoadError as e:
                self._recognizer_error = e
                raise
        return self._recognizer

    @property
    def video_names(self) -> list[str]:
        return list(self.face.names)

    def spec(self) -> dict[str, Any]:
        """What the features look like (stored in every entry; checked by training and predict)."""
        from extractors.face import face_features_id

        return {"text_model": self.cfg.text.model, "text_dim": int(self.text.dim),
                "audio_dim": len(self.audio_names), "video_dim": len(self.video_names),
                "audio_names": list(self.audio_names), "video_names": self.video_names,
                "face_backend": self.cfg.face.backend, "face_features": face_features_id(self.cfg.face.backend),
                "fps": float(self.cfg.fps),
                "audio_rate_hz": float(self.cfg.audio.rate_hz)}

    def versions(self, used_asr: bool) -> dict[str, str]:
        """Versions of each extractor (the ``versions`` of an entry and of its manifest record)."""
        import cv2

        from extractors.acoustic import ACOUSTIC_VERSION

        out = {
            "decode": f"ffmpeg-python {package_version('ffmpeg-python')}; opencv {cv2.__version__}",
            "text": f"{self.text.name}; {self.text.version}",
            "face": f"{self.face.name}; {self.face.version}",
            "acoustic": f"librosa {package_version('librosa')}; {ACOUSTIC_VERSION}",
            "pipeline": f"dhmd-pipeline {package_version('dhmd-pipeline')}; format {FEATURE_FORMAT}",
        }
        if used_asr and self._recognizer is not None:
            out["asr"] = f"{self._recognizer.name}; {self._recognizer.version}"
        return out

    def close(self) -> None:
        """Release the face backend's resources."""
        for face in self.faces:
            close = getattr(face, "close", None)
            if close is not None:
                close()


@contextmanager
def _timer(timings: dict[str, float], stage: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0


def check_regular_file(path: Path) -> None:
    """Raise ExtractionError for a path that is not a readable regular file.

    Done before anything opens the file: opening a FIFO would block the whole batch, and a
    dangling symbolic link or a socket would give an obscure ffmpeg message.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise ExtractionError(f"{path}: unreadable: broken symbolic link "
                                  f"(points to {os.readlink(path)!r}, which does not exist)") from None
        raise ExtractionError(f"{path}: file not found") from None
    except OSError as e:
        raise ExtractionError(f"{path}: unreadable ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ExtractionError(f"{path}: is a directory, not a media file")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
        raise ExtractionError(f"{path}: unreadable: {kind}, not a regular media file")
    if not os.access(path, os.R_OK):
        raise ExtractionError(f"{path}: unreadable file (permission denied)")


def probe_clip(path: Path, cfg: "ExtractConfig") -> "MediaInfo":
    """What the clip holds (ffprobe), or ExtractionError for every input that cannot be used.

    Cheap (no model): the batch runs it before loading models, so a rerun over bad files only
    does not load anything.  Refuses non-regular files, empty/corrupt/non-media files and clips
    longer than ``extract.max_duration_s``.
    """
    from extractors.decode import probe

    check_regular_file(path)
    info = probe(path)
    if info.duration_s > cfg.max_duration_s:
        raise ExtractionError(f"{path}: too long ({info.duration_s:.1f} s; extract.max_duration_s is "
                              f"{cfg.max_duration_s:g} s): cut it into clips or raise the limit")
    return info


def _video_features(path: Path, cfg: "ExtractConfig", models: ExtractorModels,
                    timings: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Face features of every sampled frame, streamed: (Tv, Dv), times (Tv,), face_mask (Tv,).

    With several face readers (``extract.face.threads``, MediaPipe), frame ``i`` goes to reader
    ``i % n``, each in its own thread (the first in this one); at most ``n`` frames are held, and results are taken
    in frame order, so the output is the same as with one reader.
    """
    from extractors.decode import iter_frames

    dim = len(models.video_names)
    rows: list[np.ndarray] = []
    times: list[float] = []
    mask: list[bool] = []
    zeros = np.zeros(dim, dtype=np.float32)
    readers = models.faces
    for face in readers:
        reset = getattr(face, "reset", None)
        if reset is not None:
            reset()

    def take(vec: np.ndarray | None, t: float) -> None:
        if vec is None:
            rows.append(zeros)
            mask.append(False)
        else:
            vec = np.nan_to_num(np.asarray(vec, dtype=np.float32).reshape(-1))
            if vec.shape[0] != dim:
                raise ExtractionError(f"{path}: face extractor gave {vec.shape[0]} features, expected {dim}")
            rows.append(vec)
            mask.append(True)
        times.append(float(t))

    decode = 0.0
    t_branch = time.perf_counter()
    frames = iter(iter_frames(path, float(cfg.fps)))
    pools = [ThreadPoolExecutor(max_workers=1, thread_name_prefix="face") for _ in readers[1:]]
    pending: deque[tuple[float, Any]] = deque()
    try:
        i = 0
        while True:
            t0 = time.perf_counter()
            try:
                t, frame = next(frames)
            except StopIteration:
                decode += time.perf_counter() - t0
                break
            decode += time.perf_counter() - t0
            k = i % len(readers)
            i += 1
            if k == 0:      # the first reader runs in this thread, beside the others' frames
                vec = readers[0].process(frame)
                while pending:                  # the frames before this one, in order
                    t_prev, job = pending.popleft()
                    take(job.result(), t_prev)
                take(vec, t)
            else:
                pending.append((t, pools[k - 1].submit(readers[k].process, frame)))
            del frame
        while pending:
            t_prev, job = pending.popleft()
            take(job.result(), t_prev)
    finally:
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
    timings["decode_frames"] = timings.get("decode_frames", 0.0) + decode
    timings["face"] = timings.get("face", 0.0) + time.perf_counter() - t_branch - decode
    feats = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    return feats, np.asarray(times, dtype=np.float32), np.asarray(mask, dtype=bool)


VideoBranch = tuple[tuple[np.ndarray, np.ndarray, np.ndarray], dict[str, float]]


def video_branch(path: Path, cfg: "ExtractConfig", models: ExtractorModels) -> VideoBranch:
    """:func:`_video_features` of a clip with its own timings (decode_frames, face), as a thread
    running it beside the audio branch returns them."""
    timings: dict[str, float] = {}
    return _video_features(path, cfg, models, timings), timings


class VideoAhead:
    """The video branches (frames and faces) of a run's clips, in one thread, ahead of the audio.

    In one process, each clip's video branch already runs beside its audio branch; but the clip is
    done only when both are, and the branches differ in length (the first clip's audio pays for
    warming up librosa and Whisper; a long clip's faces take longer than its speech), so one core
    idles while the other finishes.  Here the video branch of the next ``ahead`` clips starts as
    soon as the thread is free: :meth:`get` gives the branch of clip ``i`` (starting it, and
    those of the following clips, when needed) as a future that :func:`extract_clip` waits on.
    Futures hold only features (about 0.3 kB a frame), so memory stays small.
    """

    def __init__(self, paths: list[tuple[Path, bool]], cfg: "ExtractConfig", models: ExtractorModels,
                 ahead: int = 2) -> None:
        self._paths = paths                        # (clip, has video) in run order
        self._cfg, self._models, self._ahead = cfg, models, ahead
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="video-ahead")
        self._futures: dict[int, Any] = {}
        self._next = 0

    def get(self, i: int) -> Any:
        """The future of clip ``i``'s video branch (None for a clip without video)."""
        while self._next < len(self._paths) and self._next <= i + self._ahead:
            path, has_video = self._paths[self._next]
            if has_video:
                self._futures[self._next] = self._pool.submit(video_branch, path, self._cfg, self._models)
            self._next += 1
        return self._futures.pop(i, None)

    def close(self) -> None:
        """Cancel what has not started and wait for the running branch (no face work left behind)."""
        for f in self._futures.values():
            f.cancel()
        self._futures.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


def extract_clip(path: Path, cfg: "ExtractConfig", models: ExtractorModels, clip_id: str | None = None,
                 label_text: str | None = None, *, info: "MediaInfo | None" = None,
                 video: Any = None) -> ClipFeatures:
    """Every feature of one clip, unaligned, as stored in a cache entry.

    ``label_text`` is the labels file's text for the clip (a transcript source when
    ``extract.asr.sources`` names "labels").  ``info`` is the clip's :func:`probe_clip` result
    when the caller has it already (the batch probes before loading any model).  Raises
    ExtractionError (one line naming the file and the cause) for inputs that cannot be used; see
    the module docstring for flags.  Raises its subclass ModelLoadError when the speech recogniser,
    loaded by the first clip that needs it, cannot be loaded (a setting, not this clip, is wrong).
    ``video``: this clip's :func:`video_branch` already started by :class:`VideoAhead` (a future);
    without it the branch runs in a thread of its own beside the audio.
    """
    from extractors.decode import load_audio
    from extractors.transcript import Transcript, resolve_transcript

    path = Path(path)
    timings: dict[str, float] = {}
    flags: list[str] = []
    t_start = time.perf_counter()
    if info is None:
        with _timer(timings, "probe"):
            info = probe_clip(path, cfg)
    sr = int(cfg.sample_rate)

    # the video branch (frame decoding + face) runs in a thread beside the audio branch: OpenCV,
    # MediaPipe and CTranslate2 release the GIL, so on two cores the branches overlap
    pool = None
    if info.has_video and video is None:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="video")
        video = pool.submit(video_branch, path, cfg, models)
    try:
        audio = np.zeros(0, dtype=np.float32)
        if info.has_audio:
            with _timer(timings, "decode_audio"):
                audio = load_audio(path, sr)
        if audio.size == 0:
            flags.append("no_audio")

        asr_calls: list[bool] = []

        def recognizer() -> "SpeechRecognizer":
            asr_calls.append(True)
            return models.recognizer()

        with _timer(timings, "transcript"):
            if audio.size:
                transcript = resolve_transcript(path, audio, sr, label_text, cfg.asr, recognizer)
            else:   # no sound: nothing to hear or to time words against, so no words (documented)
                transcript = Transcript(text="", words=[], source="none", times_source="none")
        used_asr = bool(asr_calls)
        if audio.size and not transcript.words:
            flags.append("no_speech")
        if transcript.times_source == "spread":
            flags.append("word_times_spread")
        words = [w.text for w in transcript.words]

        with _timer(timings, "text"):
            tokens = models.text.encode(words)

        with _timer(timings, "acoustic"):
            if audio.size:
                a_feats, a_times, a_names = models.acoustic_features(audio, sr)
                a_feats = np.nan_to_num(np.asarray(a_feats, dtype=np.float32))
            else:
                a_names = list(models.audio_names)
                a_feats, a_times = np.zeros((0, len(a_names)), np.float32), np.zeros(0, np.float32)
        del audio

        if info.has_video:
            (v_feats, v_times, face_mask), video_timings = video.result()
            for stage, seconds in video_timings.items():
                timings[stage] = timings.get(stage, 0.0) + seconds
            if face_mask.size and not face_mask.any():
                flags.append("no_face")
        else:
            flags.append("no_video")
            v_feats = np.zeros((0, len(models.video_names)), np.float32)
            v_times, face_mask = np.zeros(0, np.float32), np.zeros(0, bool)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # never leave the face extractor busy in a thread
    timings["total"] = time.perf_counter() - t_start

    spec = models.spec()
    meta = {
        "versions": models.versions(used_asr),
        "settings": extraction_settings(cfg),
        "spec": spec,
        "device": models.device,
        "counts": {"n_words": len(words), "n_tokens": int(tokens.ids.shape[0]), "frames": int(face_mask.size),
                   "face_frames": int(face_mask.sum()), "audio_frames": int(a_feats.shape[0])},
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
    }
    return ClipFeatures(
        clip_id=clip_id or path.stem, source=str(path), duration_s=float(info.duration_s),
        transcript=transcript.text, transcript_source=transcript.source, words=words,
        word_start=np.asarray([w.start for w in transcript.words], dtype=np.float32),
        word_end=np.asarray([w.end for w in transcript.words], dtype=np.float32),
        word_times_source=transcript.times_source,
        text_features=np.asarray(tokens.features, dtype=np.float32),
        text_ids=np.asarray(tokens.ids, dtype=np.int64), text_mask=np.asarray(tokens.mask, dtype=np.int64),
        text_segment=np.asarray(tokens.segment, dtype=np.int64),
        token_word_index=np.asarray(tokens.word_index, dtype=np.int32),
        audio_features=a_feats, audio_times=np.asarray(a_times, dtype=np.float32),
        video_features=v_feats, video_times=v_times, face_mask=face_mask,
        audio_names=list(a_names), video_names=models.video_names, flags=flags, meta=meta)
