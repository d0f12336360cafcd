"""Face features from py-feat: AU intensities, emotions and head pose of the largest face.

py-feat (``pip install py-feat --no-deps``; tested against the 2.1.5 sources) is the backend for
users who have its model weights: every model it uses (RetinaFace, MobileFaceNet landmarks, the XGB
AU model, ResMaskNet emotions, the pose MLP) is fetched from the Hugging Face hub (``py-feat/...``)
on first use and cached under ``feat/resources``; ``import feat`` also needs a torchvision build that
matches the installed torch, plus xgboost, skops and torchcodec.  Offline, pre-fill that hub cache.
The module imports ``feat`` only when a :class:`PyFeatFaceExtractor` is created, so the rest of the
pipeline never depends on it; MediaPipe (``face.backend = "mediapipe"``) is the offline default.

Feature vector (31 dims, :data:`FEATURE_NAMES`), mapped from py-feat's own output columns:

- ``AU01`` ... ``AU43``: the 20 AU intensities py-feat's Detector reports (its ``AU_LANDMARK_MAP
  ["Feat"]`` list).  py-feat's names are the FACS names of the shared vocabulary
  (:mod:`extractors.face_aus`), so ``AU12`` means the lip corner puller here as in the MediaPipe
  backend's derived AUs; the feature spec's ``face_backend`` / ``face_features`` still keep a model
  trained on one backend from being fed the other's.
- ``anger`` ... ``neutral``: its 7 emotion probabilities.
- ``pose_pitch_deg``, ``pose_roll_deg``, ``pose_yaw_deg``: its ``Pitch``, ``Roll``, ``Yaw`` columns.
- ``face_score``: its ``FaceScore`` (face detection confidence).

The largest face of each frame is the one with the largest ``FaceRectWidth * FaceRectHeight``.
"""
from __future__ import annotations

import contextlib
import io
import logging
from typing import TYPE_CHECKING

import numpy as np

from extractors.errors import ExtractionError, ModelLoadError
from extractors.face_mediapipe import check_frame

if TYPE_CHECKING:  # pragma: no cover
    import pandas
    from pipeline.config import FaceConfig

log = logging.getLogger(__name__)

PYFEAT_AU_COLUMNS = ["AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU11", "AU12",
                     "AU14", "AU15", "AU17", "AU20", "AU23", "AU24", "AU25", "AU26", "AU28", "AU43"]
PYFEAT_EMOTION_COLUMNS = ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]
PYFEAT_POSE_COLUMNS = ["Pitch", "Roll", "Yaw"]
PYFEAT_BOX_COLUMNS = ["FaceRectX", "FaceRectY", "FaceRectWidth", "FaceRectHeight", "FaceScore"]

FEATURE_NAMES: list[str] = (PYFEAT_AU_COLUMNS + PYFEAT_EMOTION_COLUMNS
                            + ["pose_pitch_deg", "pose_roll_deg", "pose_yaw_deg", "face_score"])
_VALUE_COLUMNS = PYFEAT_AU_COLUMNS + PYFEAT_EMOTION_COLUMNS + PYFEAT_POSE_COLUMNS + ["FaceScore"]

_NEEDS = ("it needs py-feat with a torchvision build matching the installed torch (plus xgboost, "
          "skops, torchcodec) and py-feat's model weights from the Hugging Face hub (py-feat/*, "
          "cached in feat/resources); face.backend = \"mediapipe\" is the offline default")


def pyfeat_features(fex: "pandas.DataFrame") -> tuple[np.ndarray, list[str]]:
    """Turn py-feat's output table into one feature row per frame: ``(array (F, 31), names)``.

    ``fex`` is what ``Detector.detect`` returns (a ``Fex``, a pandas DataFrame): one row per detected
    face, a ``frame`` column saying which frame (absent: all rows belong to one image).  For each
    frame (in increasing ``frame`` order) the face with the largest ``FaceRectWidth *
    FaceRectHeight`` is kept.  A frame whose rows have no face box (py-feat writes a row of NaN for
    a frame without a face) gives a row of NaN: the one way this function marks "no face", which
    :class:`PyFeatFaceExtractor` turns into None.  Within a detected face a missing value (e.g. pose
    that the chosen model does not give) becomes 0.  Raises ExtractionError when py-feat's columns
    are missing (a different py-feat output schema).
    """
    missing = [c for c in PYFEAT_BOX_COLUMNS + _VALUE_COLUMNS if c not in fex.columns]
    if missing:
        raise ExtractionError(f"py-feat output lacks the columns {missing}; expected py-feat 2.x "
                              "Detector output (AU01..AU43, emotions, Pitch/Roll/Yaw, FaceRect*)")
    if "frame" in fex.columns:
        frame_ids = fex["frame"].to_numpy()
        order = sorted(set(frame_ids.tolist()))
    else:
        frame_ids = np.zeros(len(fex), dtype=np.int64)
        order = [0]
    box = fex[["FaceRectX", "FaceRectY", "FaceRectWidth", "FaceRectHeight"]].to_numpy(dtype=np.float64)
    area = box[:, 2] * box[:, 3]
    valid = np.isfinite(box).all(axis=1) & np.isfinite(area) & (area > 0)
    values = fex[_VALUE_COLUMNS].to_numpy(dtype=np.float64)
    out = np.full((len(order), len(FEATURE_NAMES)), np.nan, dtype=np.float32)
    for i, fid in enumerate(order):
        rows = np.flatnonzero((frame_ids == fid) & valid)
        if rows.size == 0:
            continue
        best = rows[np.argmax(area[rows])]
        out[i] = np.nan_to_num(values[best], nan=0.0, posinf=0.0, neginf=0.0)
    return out, list(FEATURE_NAMES)


class PyFeatFaceExtractor:
    """Per-frame py-feat features of the largest face (GPU when ``device`` is "cuda").

    Imports py-feat and loads its models here (lazily, only when this backend is chosen); any
    failure is a :class:`ModelLoadError` that says what py-feat needs.
    """

    name = "pyfeat"

    def __init__(self, cfg: "FaceConfig", device: str = "cpu") -> None:
        self._cfg = cfg
        self.names: list[str] = list(FEATURE_NAMES)
        try:
            import torch
            import feat
        except Exception as e:  # ImportError, or torchvision's "operator torchvision::nms does not exist"
            raise ModelLoadError(
                f"face backend 'pyfeat': cannot import py-feat ({type(e).__name__}: {e}); {_NEEDS}") from None
        self._torch = torch
        detector_cls = getattr(feat, "Detector", None) or getattr(feat, "Detectorv1", None)
        if detector_cls is None:
            raise ModelLoadError(f"face backend 'pyfeat': py-feat {getattr(feat, '__version__', '?')} "
                                 "has no Detector class; py-feat 2.x is expected")
        try:
            try:  # identity and gaze models are not used: skip loading them where py-feat allows
                self._detector = detector_cls(device=device, identity_model=None, gaze_model=None)
            except TypeError:
                self._detector = detector_cls(device=device)
        except Exception as e:
            raise ModelLoadError(
                f"face backend 'pyfeat': cannot load py-feat's models ({type(e).__name__}: {e}); {_NEEDS}"
            ) from None
        self.version = f"py-feat-{getattr(feat, '__version__', 'unknown')}"

    def reset(self) -> None:
        """py-feat keeps no state between frames; present so every backend can be reset per clip."""

    def process(self, frame_rgb: np.ndarray) -> np.ndarray | None:
        """py-feat features of the largest face in an RGB uint8 frame, or None when there is none."""
        frame = check_frame(frame_rgb)
        tensor = self._torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0)   # (1, 3, H, W) RGB
        # py-feat draws a tqdm bar on every call even with progress_bar=False: keep stderr clean.
        with contextlib.redirect_stderr(io.StringIO()):
            fex = self._detector.detect(tensor, data_type="tensor", progress_bar=False,
                                        face_detection_threshold=self._cfg.min_detection_confidence)
        rows, _ = pyfeat_features(fex)
        if rows.shape[0] == 0 or not np.isfinite(rows[0]).all():
            return None
        return rows[0]

    def close(self) -> None:
        """Drop the models (frees GPU memory once nothing else holds them)."""
        self._detector = None
