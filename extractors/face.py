"""Per-frame face features of the largest face, from a chosen backend.

Two backends share one small interface (:class:`FaceExtractor`):

- ``mediapipe`` (default, offline, CPU): MediaPipe's 478-point face mesh, turned into
  pose-normalised geometry, head-pose estimates and landmark-based AU *estimates*
  (:mod:`extractors.face_mediapipe`, 32 features).
- ``pyfeat``: py-feat's AU intensities, emotions and head pose (:mod:`extractors.face_pyfeat`,
  31 features); imported only when chosen, needs py-feat's hub weights, uses CUDA when given.

``process(frame)`` returns None for a frame without a face.  The caller must keep that frame (zeros
plus False in a per-frame face mask), never drop it: dropping frames shifts time.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import FaceConfig

FACE_BACKENDS = ("mediapipe", "pyfeat")


@runtime_checkable
class FaceExtractor(Protocol):
    """What the extraction stage needs from a face backend."""

    name: str            # backend id: "mediapipe" or "pyfeat"
    version: str         # changes whenever the features would change (part of the cache key)
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
