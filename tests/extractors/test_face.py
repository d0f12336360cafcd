"""Face features: MediaPipe geometry and landmark AU estimates on a real face photograph, py-feat mapping.

The face is scikit-image's astronaut photograph (pipeline.demo.synth.base_face).  Expressions are made
here with our own local warps around the landmarks MediaPipe finds (independent of the demo's
expression synthesis), so the AU estimates are checked against a known movement of the lips, jaw,
brows and upper eyelids.  Not covered: AU06 (cheek raise): warping the smooth cheek of a photograph
does not move MediaPipe's cheek points.
"""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest

from extractors.errors import ExtractionError, ModelLoadError
from extractors.face import FACE_BACKENDS, FaceExtractor, face_feature_names, make_face_extractor
from extractors.face_mediapipe import (AU_NAMES, FEATURE_NAMES, GEOMETRY_NAMES, mesh_features)
from extractors.face_pyfeat import (FEATURE_NAMES as PYFEAT_NAMES, PYFEAT_AU_COLUMNS, PYFEAT_BOX_COLUMNS,
                                    PYFEAT_EMOTION_COLUMNS, PYFEAT_POSE_COLUMNS, pyfeat_features)
from pipeline.config import FaceConfig
from pipeline.demo.synth import base_face, blank_frames


@pytest.fixture(scope="module")
def mp_face():
    ex = make_face_extractor(FaceConfig(backend="mediapipe"))
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    return base_face()


@pytest.fixture(scope="module")
def face_points(mp_face, face) -> np.ndarray:
    mp_face.reset()
    pts = mp_face.largest_face_points(face)
    assert pts is not None, "MediaPipe must find the astronaut's face"
    return pts


def features(ex, frame: np.ndarray) -> dict[str, float] | None:
    """Features of one still frame, with a fresh track so frames do not influence each other."""
    ex.reset()
    vec = ex.process(frame)
    return None if vec is None else dict(zip(ex.names, vec.tolist()))


def warp(image: np.ndarray, controls: list[tuple[np.ndarray, np.ndarray, float]]) -> np.ndarray:
    """Move image content by a smooth displacement field: Gaussian bumps ``(centre, shift, radius)``.

    Pixels near a centre move by about its shift; far away nothing moves.  cv2.remap needs the
    backward map, taken as ``x - d(x)`` (close enough for shifts of a few pixels).
    """
    h, w = image.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    num_x = np.zeros((h, w), np.float32)
    num_y = np.zeros((h, w), np.float32)
    weight = np.zeros((h, w), np.float32)
    for (cx, cy), (sx, sy), radius in controls:
        g = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2.0 * radius ** 2)).astype(np.float32)
        num_x += g * sx
        num_y += g * sy
        weight += g
    norm = np.maximum(weight, 1.0)          # inside a bump: its shift; far away: fades to zero
    return cv2.remap(image, xs - num_x / norm, ys - num_y / norm, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT)


def lip_corner_warp(image: np.ndarray, pts: np.ndarray, up: float) -> np.ndarray:
    """Move both lip corners (mesh 61, 291) up (``up`` > 0) or down by ``up`` mouth widths."""
    left, right = pts[61, :2], pts[291, :2]
    mouth_w = float(np.linalg.norm(right - left))
    shift = np.array([0.0, -up * mouth_w])
    return warp(image, [(left, shift, 0.15 * mouth_w), (right, shift, 0.15 * mouth_w)])


def jaw_open_warp(image: np.ndarray, pts: np.ndarray, drop: float) -> np.ndarray:
    """Open the mouth: everything below the inner upper lip (mesh 13) moves down by ``drop`` mouth widths.

    The shift ramps from 0 at the inner upper lip to full at the inner lower lip (mesh 14), so the
    lips part and the lower lip and chin (152) move down; it fades out sideways beyond the mouth and
    below the chin, leaving the upper face untouched.
    """
    h, w = image.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    mouth_w = float(np.linalg.norm(pts[291, :2] - pts[61, :2]))
    cx = float(pts[[61, 291], 0].mean())
    top, bottom, chin = float(pts[13, 1]), float(pts[14, 1]), float(pts[152, 1])
    ramp = np.clip((ys - top) / max(bottom - top, 1.0), 0.0, 1.0)
    ramp = ramp * ramp * (3.0 - 2.0 * ramp)                                   # smoothstep
    sideways = np.exp(-((xs - cx) ** 2) / (2.0 * (0.8 * mouth_w) ** 2))
    below_chin = np.maximum(ys - chin, 0.0)
    fade = np.exp(-(below_chin ** 2) / (2.0 * (0.6 * mouth_w) ** 2))
    dy = (drop * mouth_w * ramp * sideways * fade).astype(np.float32)
    return cv2.remap(image, xs, ys - dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


# both brows of the MediaPipe mesh, upper and lower edge (subject's right brow, then left)
BROW_POINTS = (70, 63, 105, 66, 107, 46, 53, 52, 65, 55, 300, 293, 334, 296, 336, 276, 283, 282, 295, 285)
UPPER_LID_POINTS = (161, 160, 159, 158, 157, 388, 387, 386, 385, 384)


def iod(pts: np.ndarray) -> float:
    """Inter-ocular distance in pixels (between the eye centres, as the features use it)."""
    return float(np.linalg.norm(pts[[33, 133], :2].mean(axis=0) - pts[[263, 362], :2].mean(axis=0)))


def brow_warp(image: np.ndarray, pts: np.ndarray, up: float) -> np.ndarray:
    """Move both brows up (``up`` > 0) or down by ``up`` inter-ocular distances, eyes left in place."""
    d = iod(pts)
    return warp(image, [(pts[i, :2], np.array([0.0, -up * d]), 0.12 * d) for i in BROW_POINTS])


def lid_close_warp(image: np.ndarray, pts: np.ndarray, down: float) -> np.ndarray:
    """Lower both upper eyelids by ``down`` inter-ocular distances (the eyes close partly)."""
    d = iod(pts)
    return warp(image, [(pts[i, :2], np.array([0.0, down * d]), 0.06 * d) for i in UPPER_LID_POINTS])


# --- the feature vector -------------------------------------------------------------------------

def test_vector_matches_names_and_is_finite(mp_face, face):
    assert isinstance(mp_face, FaceExtractor)
    mp_face.reset()
    vec = mp_face.process(face)
    assert vec is not None and vec.dtype == np.float32 and vec.shape == (len(mp_face.names),)
    assert np.isfinite(vec).all()
    assert mp_face.names == FEATURE_NAMES == face_feature_names("mediapipe")
    assert len(set(mp_face.names)) == len(mp_face.names) == 32
    assert mp_face.name == "mediapipe" and "geom" in mp_face.version
    # AU features are named as landmark estimates, never as py-feat output
    assert [n for n in mp_face.names if "AU" in n] == AU_NAMES
    assert all(n.startswith("est_AU") for n in AU_NAMES) and len(AU_NAMES) == 10
    d = dict(zip(mp_face.names, vec))
    assert all(0.0 < d[n] < 5.0 for n in AU_NAMES)
    assert 0.2 < d["face_width_rel"] < 0.6 and 0.3 < d["face_center_x"] < 0.6


def test_frames_without_a_face_give_none(mp_face, face):
    rng = np.random.default_rng(0)
    frames = [next(blank_frames(1)), np.zeros((240, 320, 3), np.uint8),
              rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)]
    for frame in frames:
        mp_face.reset()
        assert mp_face.process(frame) is None
    # a face frame followed by an empty one: the tracker must not keep reporting the old face
    mp_face.reset()
    assert mp_face.process(face) is not None
    assert mp_face.process(frames[0]) is None


def test_bad_frames_raise_a_clear_error(mp_face, face):
    with pytest.raises(ExtractionError, match="expected H x W x 3"):
        mp_face.process(face[:, :, 0])
    with pytest.raises(ExtractionError, match="uint8"):
        mp_face.process(face.astype(np.float32))


def test_reset_gives_every_clip_a_fresh_track(mp_face, face):
    first = features(mp_face, face)
    mp_face.process(np.ascontiguousarray(face[:, ::-1]))   # a different clip's frames in between
    mp_face.process(cv2.warpAffine(face, cv2.getRotationMatrix2D((128, 128), 10, 1.1), (256, 256)))
    again = features(mp_face, face)
    assert again == first


# --- pose normalisation -------------------------------------------------------------------------

def test_geometry_ignores_image_rotation_and_scale_and_roll_follows_rotation(mp_face, face):
    base = features(mp_face, face)
    size = 256
    for angle, scale in [(12.0, 1.0), (-10.0, 1.0), (0.0, 1.6)]:
        canvas = cv2.resize(face, (int(size * scale),) * 2, interpolation=cv2.INTER_LINEAR)
        c = canvas.shape[0] / 2
        moved = cv2.warpAffine(canvas, cv2.getRotationMatrix2D((c, c), angle, 1.0), canvas.shape[:2][::-1],
                               borderMode=cv2.BORDER_REFLECT)
        got = features(mp_face, moved)
        assert got is not None
        # cv2's positive angle turns the image counter-clockwise: roll grows by that angle
        assert got["est_head_roll_deg"] - base["est_head_roll_deg"] == pytest.approx(angle, abs=2.5)
        assert got["face_width_rel"] == pytest.approx(base["face_width_rel"], rel=0.08)
        for name in ["mouth_width", "nose_to_chin", "brow_inner_height_r", "brow_outer_height_l",
                     "lip_corner_height_r", "eye_open_l"]:
            assert got[name] == pytest.approx(base[name], abs=0.03), (name, angle, scale)


def _rotate(points: np.ndarray, yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """Turn mesh points (pixels, y down, z away) about the head centre by a yaw and a pitch."""
    q = points * np.array([1.0, -1.0, -1.0])          # y up, z towards the camera
    centre = q.mean(axis=0)
    a, b = np.radians(yaw_deg), np.radians(pitch_deg)
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), np.sin(b)], [0, -np.sin(b), np.cos(b)]])
    q = (q - centre) @ (ry @ rx).T + centre
    return q * np.array([1.0, -1.0, -1.0])


def test_head_turn_of_the_real_mesh_changes_pose_not_geometry(face_points):
    base = dict(zip(FEATURE_NAMES, mesh_features(face_points, 256, 256)))
    for yaw, pitch in [(25.0, 0.0), (-20.0, 0.0), (0.0, 15.0), (0.0, -15.0)]:
        turned = dict(zip(FEATURE_NAMES, mesh_features(_rotate(face_points, yaw, pitch), 256, 256)))
        assert turned["est_head_yaw_deg"] - base["est_head_yaw_deg"] == pytest.approx(yaw, abs=1.5)
        assert turned["est_head_pitch_deg"] - base["est_head_pitch_deg"] == pytest.approx(pitch, abs=1.5)
        for name in GEOMETRY_NAMES + AU_NAMES:
            assert turned[name] == pytest.approx(base[name], abs=1e-3), (name, yaw, pitch)


# --- landmark AU estimates follow real movements of the face ------------------------------------

def test_lip_corners_up_raise_au12_and_down_raise_au15(mp_face, face, face_points):
    neutral = features(mp_face, face)
    smile = features(mp_face, lip_corner_warp(face, face_points, up=0.12))
    frown = features(mp_face, lip_corner_warp(face, face_points, up=-0.2))
    assert smile is not None and frown is not None
    assert smile["lip_corner_height_r"] > neutral["lip_corner_height_r"] > frown["lip_corner_height_r"]
    assert smile["lip_corner_height_l"] > neutral["lip_corner_height_l"] > frown["lip_corner_height_l"]
    assert smile["est_AU12_lip_corner_pull"] > neutral["est_AU12_lip_corner_pull"] + 0.5
    assert frown["est_AU15_lip_corner_depress"] > neutral["est_AU15_lip_corner_depress"] + 0.5
    assert smile["est_AU15_lip_corner_depress"] <= neutral["est_AU15_lip_corner_depress"]
    assert frown["est_AU12_lip_corner_pull"] < neutral["est_AU12_lip_corner_pull"]
    # the upper face did not move: brow estimates stay put
    for name in ["est_AU01_inner_brow_raise", "est_AU02_outer_brow_raise"]:
        assert smile[name] == pytest.approx(neutral[name], abs=0.3)
        assert frown[name] == pytest.approx(neutral[name], abs=0.3)


def test_stronger_smile_gives_larger_au12(mp_face, face, face_points):
    au12 = [features(mp_face, lip_corner_warp(face, face_points, up=u))["est_AU12_lip_corner_pull"]
            for u in (0.0, 0.06, 0.12)]
    assert au12[0] < au12[1] < au12[2]


def test_jaw_drop_raises_au26_and_au25(mp_face, face, face_points):
    neutral = features(mp_face, face)
    opened = features(mp_face, jaw_open_warp(face, face_points, drop=0.2))
    assert opened is not None
    assert opened["nose_to_chin"] > neutral["nose_to_chin"] + 0.05
    assert opened["lips_gap"] > neutral["lips_gap"]
    assert opened["est_AU26_jaw_drop"] > neutral["est_AU26_jaw_drop"] + 0.5
    assert opened["est_AU25_lips_part"] > neutral["est_AU25_lips_part"]


def test_brows_up_raise_au01_au02_and_brows_down_raise_au04(mp_face, face, face_points):
    neutral = features(mp_face, face)
    up = {k: features(mp_face, brow_warp(face, face_points, k)) for k in (0.05, 0.1)}
    down = {k: features(mp_face, brow_warp(face, face_points, -k)) for k in (0.05, 0.1)}
    assert all(f is not None for f in [*up.values(), *down.values()])
    for name in ("brow_inner_height_r", "brow_inner_height_l", "brow_outer_height_r", "brow_outer_height_l"):
        assert up[0.1][name] > up[0.05][name] > neutral[name] > down[0.05][name] > down[0.1][name], name
    for au in ("est_AU01_inner_brow_raise", "est_AU02_outer_brow_raise"):
        assert up[0.1][au] > up[0.05][au] > neutral[au], au
        assert up[0.1][au] > neutral[au] + 1.0, au
        assert down[0.1][au] < neutral[au], au
    au4 = "est_AU04_brow_lower"
    assert down[0.1][au4] > down[0.05][au4] > neutral[au4] > up[0.1][au4]
    assert down[0.1][au4] > neutral[au4] + 1.0
    # the mouth did not move: the lip-corner estimate stays near its neutral value
    for f in [*up.values(), *down.values()]:
        assert f["est_AU12_lip_corner_pull"] == pytest.approx(neutral["est_AU12_lip_corner_pull"], abs=0.5)


def test_lowered_upper_lids_raise_au43(mp_face, face, face_points):
    neutral = features(mp_face, face)
    closing = [features(mp_face, lid_close_warp(face, face_points, k)) for k in (0.03, 0.06, 0.09)]
    assert all(f is not None for f in closing)
    for name in ("eye_open_r", "eye_open_l"):
        assert neutral[name] > closing[0][name] > closing[1][name] > closing[2][name], name
    au43 = [f["est_AU43_eye_closure"] for f in closing]
    assert neutral["est_AU43_eye_closure"] < au43[0] < au43[1] < au43[2]
    assert au43[2] > neutral["est_AU43_eye_closure"] + 1.0


def test_lip_corners_apart_raise_au20(mp_face, face, face_points):
    d = iod(face_points)
    neutral = features(mp_face, face)
    stretched = []
    for k in (0.05, 0.1):                    # each lip corner moves outward by k inter-ocular distances
        moved = warp(face, [(face_points[61, :2], np.array([-k * d, 0.0]), 0.12 * d),
                            (face_points[291, :2], np.array([k * d, 0.0]), 0.12 * d)])
        stretched.append(features(mp_face, moved))
    assert neutral["mouth_width"] < stretched[0]["mouth_width"] < stretched[1]["mouth_width"]
    au20 = [f["est_AU20_lip_stretch"] for f in stretched]
    assert neutral["est_AU20_lip_stretch"] + 0.5 < au20[0] < au20[1]


# --- the largest face ---------------------------------------------------------------------------

def test_largest_of_two_faces_is_reported(mp_face, face):
    w, h, small = 512, 300, 176
    canvas = np.full((h, w, 3), 200, np.uint8)
    canvas[(h - 256) // 2:(h - 256) // 2 + 256, w - 264:w - 8] = face                       # big, right
    y0 = (h - small) // 2
    canvas[y0:y0 + small, 8:8 + small] = cv2.resize(face, (small, small), interpolation=cv2.INTER_AREA)
    only_small = canvas.copy()
    only_small[:, w - 264:] = 200
    only_big = canvas.copy()
    only_big[:, :8 + small] = 200

    both, big, little = (features(mp_face, c) for c in (canvas, only_big, only_small))
    assert little is not None, "the small face must be detectable on its own for this test to mean anything"
    assert both["face_center_x"] == pytest.approx(big["face_center_x"], abs=0.01)
    assert both["face_width_rel"] == pytest.approx(big["face_width_rel"], rel=0.05)
    assert both["face_center_x"] > 0.6 > 0.3 > little["face_center_x"]
    assert both["face_width_rel"] > little["face_width_rel"] * 1.25


# --- backends and py-feat ----------------------------------------------------------------------

def test_unknown_backend_is_refused():
    cfg = FaceConfig.model_construct(backend="openface")   # skips validation to reach the factory's check
    with pytest.raises(ValueError, match="openface"):
        make_face_extractor(cfg)
    with pytest.raises(ValueError, match="openface"):
        face_feature_names("openface")
    assert FACE_BACKENDS == ("mediapipe", "pyfeat")


def test_pyfeat_is_imported_only_when_chosen():
    code = ("import sys, extractors.face, extractors.face_pyfeat, extractors.face_mediapipe; "
            "print('feat' in sys.modules, 'mediapipe' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_pyfeat_backend_loads_or_says_what_it_needs(face):
    try:
        ex = make_face_extractor(FaceConfig(backend="pyfeat"), device="cpu")
    except ModelLoadError as e:          # the usual case offline: no torchvision match / no hub weights
        msg = str(e)
        assert "py-feat" in msg and "hub" in msg and "torchvision" in msg and 'mediapipe' in msg
        assert "\n" not in msg
        return
    try:                                 # a machine with py-feat and its weights: the real thing
        vec = ex.process(face)
        assert vec is not None and vec.shape == (len(PYFEAT_NAMES),) and np.isfinite(vec).all()
        assert ex.process(np.zeros((128, 128, 3), np.uint8)) is None
    finally:
        ex.close()


def _fex_row(frame: int, rect: tuple[float, float, float, float] | None, level: float) -> dict:
    """One row with py-feat's real column names; ``rect`` None is py-feat's no-face row (NaN)."""
    row: dict = {"frame": frame}
    nan = float("nan")
    for i, c in enumerate(PYFEAT_AU_COLUMNS):
        row[c] = nan if rect is None else level * (i + 1) / 20
    for i, c in enumerate(PYFEAT_EMOTION_COLUMNS):
        row[c] = nan if rect is None else level / (i + 1)
    for i, c in enumerate(PYFEAT_POSE_COLUMNS):
        row[c] = nan if rect is None else level * 10 * (i + 1)
    for c, v in zip(PYFEAT_BOX_COLUMNS, (rect or (nan,) * 4) + ((nan,) if rect is None else (0.99,))):
        row[c] = v
    row.update({"x_0": 1.0, "y_0": 2.0, "input": "tensor", "Identity": "Person_0"})   # other Fex columns
    return row


def test_pyfeat_features_keep_the_largest_face_and_mark_missing_faces():
    rows = [
        _fex_row(0, (10, 10, 40, 50), level=0.2),        # small face in frame 0
        _fex_row(0, (80, 20, 100, 120), level=0.8),      # large face in frame 0
        _fex_row(1, None, level=0.0),                   # frame 1: no face (py-feat's NaN row)
        _fex_row(2, (30, 30, 90, 90), level=0.5),        # frame 2: one face, pose missing
    ]
    rows[3]["Yaw"] = float("nan")
    fex = pd.DataFrame([rows[3], rows[0], rows[2], rows[1]])   # row order must not matter
    arr, names = pyfeat_features(fex)
    assert names == PYFEAT_NAMES and len(names) == 31 and arr.dtype == np.float32
    assert arr.shape == (3, 31)
    d0 = dict(zip(names, arr[0]))
    assert d0["AU12"] == pytest.approx(0.8 * 10 / 20)            # AU12 is the 10th AU column
    assert d0["happiness"] == pytest.approx(0.8 / 4)
    assert d0["pose_pitch_deg"] == pytest.approx(8.0) and d0["pose_roll_deg"] == pytest.approx(16.0)
    assert d0["face_score"] == pytest.approx(0.99)
    assert np.isnan(arr[1]).all()                                 # no face: a NaN row, never dropped
    d2 = dict(zip(names, arr[2]))
    assert d2["pose_yaw_deg"] == 0.0 and d2["AU01"] == pytest.approx(0.5 / 20)
    assert set(PYFEAT_AU_COLUMNS) <= set(names) and not any(n.startswith("est_") for n in names)


def test_pyfeat_features_of_a_single_image_and_a_foreign_table():
    fex = pd.DataFrame([_fex_row(0, (0, 0, 10, 10), 0.3)]).drop(columns=["frame"])
    arr, _ = pyfeat_features(fex)
    assert arr.shape == (1, 31) and np.isfinite(arr).all()
    with pytest.raises(ExtractionError, match="AU01"):
        pyfeat_features(fex.drop(columns=["AU01"]))


NOISE_PROBE = r"""
import logging, os, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
from extractors.face_mediapipe import MediaPipeFaceExtractor, quiet_native_stderr
from pipeline.config import FaceConfig
from pipeline.demo.synth import base_face
ex = MediaPipeFaceExtractor(FaceConfig())
found = ex.process(base_face()) is not None
ex.reset()
ex.process(base_face())
with quiet_native_stderr():
    os.write(2, b"W0000 00:00:1795407025.657258   14449 fake.cc:114] native noise\n")
    os.write(2, b"E0000 00:00:1795407025.657258   14449 fake.cc:114] native error kept\n")
    logging.getLogger("probe").info("python log kept during the window")
ex.close()
print("face found" if found else "no face")
"""


def test_mediapipe_native_noise_is_dropped_and_other_stderr_kept():
    """MediaPipe's C++ graph threads print absl warnings at every graph start; our filter drops those
    lines (and only those) from fd 2, and restores stderr afterwards."""
    run = subprocess.run([sys.executable, "-c", NOISE_PROBE + "\nos.write(2, b'after the window\\n')\n"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "face found"
    assert "inference_feedback_manager" not in run.stderr
    assert "native noise" not in run.stderr and "XNNPACK" not in run.stderr
    assert "native error kept" in run.stderr
    assert "python log kept during the window" in run.stderr
    assert run.stderr.rstrip().endswith("after the window")
