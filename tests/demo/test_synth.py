"""pipeline.demo.synth (clips of espeak-ng speech over an expressive real face) and the demo sentences."""
from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.demo import corpus as dc
from pipeline.demo import synth

SHORT = "The soup was warm and tasty."


def _streams(path: Path) -> dict[str, float]:
    """codec_type -> duration (s) of each stream, read with ffprobe."""
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,duration",
                          "-of", "json", str(path)], check=True, capture_output=True, text=True).stdout
    return {s["codec_type"]: float(s["duration"]) for s in json.loads(out)["streams"]}


def _frames(path: Path, every: int = 6) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames, i = [], 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        if i % every == 0:
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        i += 1
    cap.release()
    return frames


@pytest.fixture(scope="module")
def face_mesh():
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True) as m:
        yield m


def _lip_lift(mesh, frame: np.ndarray) -> float:
    """How far the lip corners sit above the lip centre, in interocular distances (smile > 0)."""
    res = mesh.process(frame)
    assert res.multi_face_landmarks, "MediaPipe lost the face in a rendered frame"
    h, w = frame.shape[:2]
    p = np.array([[q.x * w, q.y * h] for q in res.multi_face_landmarks[0].landmark])
    # Measured along the face's own vertical axis, so the gentle head roll does not bias it.
    across = p[263] - p[33]
    iod = float(np.linalg.norm(across))
    up = np.array([across[1], -across[0]]) / iod          # perpendicular to the eye line, pointing up
    centre = (p[13] + p[14]) / 2
    corners = (p[61] + p[291]) / 2
    return float(np.dot(corners - centre, up) / iod)


def test_clip_has_audio_and_video_of_the_speech_duration(make_clip, tmp_path):
    clip = make_clip(SHORT, voice="en+f2", rate=170, pitch=60, fps=15.0, expression=0.5)
    speech_s = synth.speak(SHORT, tmp_path / "ref.wav", voice="en+f2", rate=170, pitch=60)
    streams = _streams(clip)
    assert set(streams) == {"audio", "video"}
    expected = speech_s + 0.3
    assert streams["video"] == pytest.approx(expected, abs=0.15)
    assert streams["audio"] == pytest.approx(expected, abs=0.15)
    frames = _frames(clip, every=1)
    assert len(frames) == pytest.approx(expected * 15, abs=3)
    assert frames[0].shape == (synth.FACE_SIZE, synth.FACE_SIZE, 3)
    # The head moves gently: frames differ, but not wildly.
    diff = np.abs(frames[0].astype(float) - frames[len(frames) // 2].astype(float)).mean()
    assert 1.0 < diff < 40.0


def test_clip_without_audio_has_only_video(make_clip):
    clip = make_clip("Short and silent.", audio=False)
    assert set(_streams(clip)) == {"video"}


def test_expression_warp_moves_lip_corners_in_rendered_clips(make_clip, face_mesh):
    lifts = {}
    for e in (-1.0, 0.0, 1.0):
        clip = make_clip(SHORT, voice="en-us", fps=15.0, expression=e, seed=3)
        lifts[e] = float(np.median([_lip_lift(face_mesh, f) for f in _frames(clip)]))
    # Corners up for a smile, down for a frown, by a clear margin over frame-to-frame noise.
    assert lifts[1.0] > lifts[0.0] + 0.03
    assert lifts[-1.0] < lifts[0.0] - 0.03


def test_expression_warp_is_smooth_local_and_zero_at_zero():
    face = synth.base_face()
    assert np.array_equal(synth.expressive_face(0.0), face)
    smile = synth.expressive_face(1.0).astype(float)
    changed = np.abs(smile - face).max(axis=2) > 12
    ys, xs = np.nonzero(changed)
    pts = synth.base_landmarks()
    # Only the face changes: nothing far outside the box of the face-mesh landmarks moves.
    x0, y0 = pts.min(axis=0) - 20
    x1, y1 = pts.max(axis=0) + 20
    assert changed.sum() > 50
    assert xs.min() >= x0 and xs.max() <= x1 and ys.min() >= y0 and ys.max() <= y1
    map_x, map_y = synth.expression_maps(-1.0)
    grid_y, grid_x = np.mgrid[0:synth.FACE_SIZE, 0:synth.FACE_SIZE]
    shift = np.hypot(map_x - grid_x, map_y - grid_y)
    assert 3.0 < shift.max() < 15.0          # a few pixels, not a distortion


def test_sentences_are_many_distinct_graded_and_varied():
    texts = [s.text for s in dc.SENTENCES]
    assert len(set(texts)) == len(texts) >= 100
    scores = np.array([s.score for s in dc.SENTENCES])
    assert scores.min() >= -3 and scores.max() <= 3
    classes = Counter(int(round(s)) for s in scores)
    assert set(classes) == set(range(-3, 4)) and min(classes.values()) >= 8
    signs = Counter(np.sign(scores).astype(int))
    assert signs[0] >= 10 and abs(signs[1] - signs[-1]) <= 0.1 * len(scores)
    assert len({s.topic for s in dc.SENTENCES}) >= 8
    assert all(5 <= len(t.split()) <= 20 for t in texts)
    # Not templates: few sentences share their first three words.
    openings = Counter(" ".join(t.lower().split()[:3]) for t in texts)
    assert openings.most_common(1)[0][1] <= 3


def test_training_only_sentences_are_new_situations_not_rewordings():
    """TRAIN_SENTENCES are graded, balanced and varied like the corpus, and none of them rewords a corpus
    sentence (else a test sentence could leak into training): no pair shares most of its content words."""
    texts = [s.text for s in dc.TRAIN_SENTENCES]
    assert len(set(texts)) == len(texts) >= 100
    assert not set(texts) & {s.text for s in dc.SENTENCES}
    scores = np.array([s.score for s in dc.TRAIN_SENTENCES])
    signs = Counter(np.sign(scores).astype(int))
    assert signs[0] >= 10 and abs(signs[1] - signs[-1]) <= 0.1 * len(scores)
    assert set(Counter(int(round(x)) for x in scores)) == set(range(-3, 4))
    assert all(5 <= len(t.split()) <= 20 for t in texts)
    openings = Counter(" ".join(t.lower().split()[:3]) for t in texts + [s.text for s in dc.SENTENCES])
    assert openings.most_common(1)[0][1] <= 3
    stop = {"the", "a", "an", "and", "i", "was", "is", "it", "of", "to", "my", "in", "we", "for", "at", "on",
            "me", "so", "but", "with", "our", "this", "that", "all", "be", "are", "have", "has", "been"}

    def words(t: str) -> set[str]:
        return {w.strip(".,!?;'").lower() for w in t.split()} - stop - {""}

    for t in texts:
        for c in dc.SENTENCES:
            a, b = words(t), words(c.text)
            assert len(a & b) / len(a | b) < 0.35, (t, c.text)


def test_training_only_sentences_train_and_change_no_other_clip():
    main = dc.plan_corpus(dc.select_sentences(None), voices_per_sentence=1)
    extra = dc.training_sentences(None)
    both = dc.plan_corpus(dc.select_sentences(None), voices_per_sentence=1, extra=extra)
    assert both[:len(main)] == main
    added = both[len(main):]
    assert len(added) == len(extra) == len(dc.TRAIN_SENTENCES)
    assert all(s.split == "train" and s.video_id.startswith("x") for s in added)
    assert {s.voice for s in added} <= {v.name for v in dc.TRAIN_VOICES}
    assert {s.identity for s in added} <= set(dc.TRAIN_IDENTITIES)
    assert len({s.clip_id for s in both}) == len(both)
    # a shrunk demo takes the same share of them, balanced by sign
    few = dc.training_sentences(30)
    assert len(few) == round(len(dc.TRAIN_SENTENCES) * 30 / len(dc.SENTENCES))
    assert {int(np.sign(s.score)) for s in few} == {-1, 0, 1}
    assert dc.training_sentences(2) == []           # a share below 4 sentences: none


@pytest.mark.parametrize("n", [None, 12, 30])
def test_corpus_plan_keeps_sentences_and_test_voices_apart(n):
    sentences = dc.select_sentences(n)
    specs = dc.plan_corpus(sentences, voices_per_sentence=3, extra=dc.training_sentences(n))
    split_of: dict[str, set[str]] = {}
    for s in specs:
        split_of.setdefault(s.text, set()).add(s.split)
    assert all(len(v) == 1 for v in split_of.values()), "a sentence is in two splits"
    assert {s.split for s in specs} == set(dc.SPLITS)
    test_voices = {s.voice for s in specs if s.split == "test"}
    seen_voices = {s.voice for s in specs if s.split != "test"}
    assert test_voices and not test_voices & seen_voices
    for split in dc.SPLITS:
        signs = {int(np.sign(s.score)) for s in specs if s.split == split}
        if split != "valid" or n is None:
            assert {-1, 1} <= signs, f"{split} lacks a sign"
    assert len({s.clip_id for s in specs}) == len(specs)
    # The face follows its condition: with the words, the photograph as it is, or against them.
    for s in specs:
        if s.condition == "agree":
            assert np.sign(s.expression) == np.sign(s.score) and abs(s.expression) >= 0.4
        elif s.condition == "contradict":
            assert np.sign(s.expression) == -np.sign(s.score) and abs(s.expression) >= 0.4
        elif s.condition == "neutral":
            assert s.expression == 0.0
        else:
            assert s.condition == "unscored" and s.score == 0
    # Test clips show a face no training or validation clip shows, in all three conditions.
    test_ids = {s.identity for s in specs if s.split == "test"}
    assert test_ids and not test_ids & {s.identity for s in specs if s.split != "test"}
    assert {s.condition for s in specs if s.split == "test" and s.score != 0} == set(dc.TEST_CONDITIONS)
    # Prosody leans with the label on average (faster and higher when positive), not always.
    pos = [s for s in specs if s.score >= 2]
    neg = [s for s in specs if s.score <= -2]
    assert np.mean([s.prosody for s in pos]) > np.mean([s.prosody for s in neg])


def test_corpus_statistics_are_those_the_readme_states():
    """The full demo corpus: face and prosody correlate moderately with the score, the shares of the
    face conditions, and the identities per split, as README.md's demo section states them."""
    import re

    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8").split())
    from pipeline.config import DemoConfig
    from pipeline.demo.run import plan_demo_corpus

    stats = dc.corpus_statistics(plan_demo_corpus(DemoConfig())[2])     # the full demo as make demo runs it
    m = re.search(r"expression-score correlation ([\d.]+), prosody-score correlation ([\d.]+)", readme)
    assert m, "README.md states no corpus correlations"
    assert (float(m[1]), float(m[2])) == (round(stats["expression_score_corr"], 2),
                                          round(stats["prosody_score_corr"], 2))
    assert 0.3 <= stats["expression_score_corr"] <= 0.5 and 0.3 <= stats["prosody_score_corr"] <= 0.5
    m = re.search(r"face agrees (\d+)%, is neutral (\d+)%, contradicts (\d+)%", readme)
    assert m, "README.md states no shares of face conditions"
    assert [int(m[i]) for i in (1, 2, 3)] == [round(100 * stats["conditions"][c])
                                              for c in ("agree", "neutral", "contradict")]
    assert stats["conditions"]["contradict"] >= 0.1 and stats["conditions"]["neutral"] >= 0.2
    m = re.search(r"identities: train (\d+), valid (\d+), test (\d+)", readme)
    assert m, "README.md states no identities per split"
    ids = stats["identities"]
    assert [int(m[i]) for i in (1, 2, 3)] == [len(ids["train"]), len(ids["valid"]), len(ids["test"])]
    assert not set(ids["test"]) & (set(ids["train"]) | set(ids["valid"]))
    m = re.search(r"test clips: (\d+) agree, (\d+) neutral, (\d+) contradict", readme)
    assert m and [int(m[i]) for i in (1, 2, 3)] == [stats["test_conditions"][c] for c in dc.TEST_CONDITIONS]


def test_every_identity_is_a_real_face_the_warp_moves(face_mesh):
    """Each face photograph is found by MediaPipe, and the expression warp smiles and frowns on it."""
    assert len(synth.IDENTITIES) >= 5 and synth.ASTRONAUT in synth.IDENTITIES
    faces = [synth.base_face(i) for i in synth.IDENTITIES]
    for k, identity in enumerate(synth.IDENTITIES):
        assert faces[k].shape == (synth.FACE_SIZE, synth.FACE_SIZE, 3)
        assert synth.base_landmarks(identity).shape == (478, 2)
        lifts = {e: _lip_lift(face_mesh, synth.expressive_face(e, identity)) for e in (-1.0, 0.0, 1.0)}
        assert lifts[1.0] > lifts[0.0] + 0.02 and lifts[-1.0] < lifts[0.0] - 0.02, (identity, lifts)
    # different people, not one photograph cropped several times
    for a in range(len(faces)):
        for b in range(a + 1, len(faces)):
            assert np.abs(faces[a].astype(float) - faces[b].astype(float)).mean() > 10


def test_look_changes_framing_light_and_background_but_the_default_none():
    face = synth.base_face()
    default = next(synth.face_frames(1, 10.0, seed=3))
    assert np.array_equal(default, next(synth.face_frames(1, 10.0, seed=3, look=synth.Look())))
    looks = [synth.random_look(np.random.default_rng(i)) for i in range(20)]
    assert len({lk.zoom for lk in looks}) == 20 and any(lk.backdrop > 0 for lk in looks)
    dark = synth.lit_face(face, synth.Look(gain=0.7))
    assert dark.mean() < face.mean() - 10
    backdrop = synth.lit_face(face, synth.Look(backdrop=1.0, backdrop_rgb=(0, 255, 0)))
    assert backdrop[2, 2, 1] > 240 and backdrop[2, 2, 0] < 15            # a corner: the new background
    centre = synth.FACE_SIZE // 2
    assert np.array_equal(backdrop[centre, centre], face[centre, centre])  # the face itself untouched
    zoomed = next(synth.face_frames(1, 10.0, seed=3, look=synth.Look(zoom=1.2)))
    assert not np.array_equal(zoomed, default)


def test_shrunk_selection_is_balanced():
    sel = dc.select_sentences(12)
    assert len(sel) == 12 == len({s.text for s in sel})
    signs = Counter(int(np.sign(s.score)) for s in sel)
    assert signs[1] == signs[-1] == 5 and signs[0] == 2


def _pcm(wav: Path) -> bytes:
    import wave

    with wave.open(str(wav)) as w:
        return w.readframes(w.getnframes())


def test_test_voices_share_neither_accent_nor_variant_with_training_voices():
    train = [v.name.split("+") for v in dc.TRAIN_VOICES]
    for accent, variant in (v.name.split("+") for v in dc.TEST_VOICES):
        assert all(accent != a and variant != b for a, b in train), (accent, variant)
    assert len({a for a, _ in train}) >= 6 and len(train) >= 12


def test_every_demo_voice_sounds_different_and_its_variant_applies(tmp_path):
    """espeak-ng silently ignores some variants (1.51: anything on "en-gb"): every demo voice must
    render audio unlike every other demo voice and unlike its base voice without the variant."""
    voices = [v.name for v in dc.TRAIN_VOICES + dc.TEST_VOICES]
    assert len(set(voices)) == len(voices)
    audio = {}
    for name in voices + sorted({v.split("+")[0] for v in voices}):
        wav = tmp_path / f"{name.replace('+', '_')}.wav"
        synth.speak(SHORT, wav, voice=name, rate=150, pitch=50)     # same text, rate and pitch for all
        audio[name] = _pcm(wav)
        assert len(audio[name]) > 1000
    for i, a in enumerate(voices):
        for b in voices[i + 1:]:
            assert audio[a] != audio[b], f"{a} and {b} render the same audio"
        base = a.split("+")[0]
        assert "+" in a and audio[a] != audio[base], f"the variant of {a} changes nothing (same as {base})"


def _no_tools_path(tmp_path: Path, monkeypatch, keep: tuple[str, ...] = ()) -> None:
    """PATH = an empty folder, plus links to the programs in ``keep``."""
    import shutil

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in keep:
        (bin_dir / name).symlink_to(shutil.which(name))
    monkeypatch.setenv("PATH", str(bin_dir))


def test_missing_espeak_ng_is_one_clear_user_error(tmp_path, monkeypatch):
    from pipeline.errors import UserError

    _no_tools_path(tmp_path, monkeypatch, keep=("ffmpeg",))
    with pytest.raises(UserError) as e:
        synth.speak(SHORT, tmp_path / "x.wav")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("espeak-ng is not installed")
    assert "make install" in msg and "apt-get install espeak-ng ffmpeg" in msg
    with pytest.raises(UserError, match="^espeak-ng is not installed"):
        synth.make_clip(tmp_path / "x.mp4", SHORT)
    assert not (tmp_path / "x.mp4").exists()


def test_missing_ffmpeg_is_one_clear_user_error(tmp_path, monkeypatch):
    from pipeline.errors import UserError

    _no_tools_path(tmp_path, monkeypatch, keep=("espeak-ng",))
    with pytest.raises(UserError) as e:
        synth.make_clip(tmp_path / "x.mp4", SHORT, fps=5.0)
    assert str(e.value).startswith("ffmpeg is not installed") and "make install" in str(e.value)
    with pytest.raises(UserError, match="^ffmpeg is not installed"):
        synth.write_video(synth.blank_frames(2), 5.0, tmp_path / "y.mp4")


def test_failing_espeak_ng_is_one_clear_user_error(tmp_path):
    from pipeline.errors import UserError

    with pytest.raises(UserError) as e:
        synth.speak(SHORT, tmp_path / "x.wav", voice="xx-no-such-voice")
    msg = str(e.value)
    assert "\n" not in msg and "espeak-ng failed" in msg and "xx-no-such-voice" in msg
    assert "voice does not exist" in msg                        # espeak-ng's own reason
    # espeak-ng exits 0 when it cannot write the file: still an error, not a crash in wave
    with pytest.raises(UserError, match="espeak-ng wrote no audio"):
        synth.speak(SHORT, tmp_path / "no" / "such" / "dir" / "x.wav")


def test_failing_ffmpeg_is_one_clear_user_error(tmp_path):
    from pipeline.errors import UserError

    with pytest.raises(UserError) as e:
        synth.write_video(synth.blank_frames(3), 5.0, tmp_path / "x.mp4", wav_path=tmp_path / "missing.wav")
    assert str(e.value).startswith(f"ffmpeg failed writing {tmp_path / 'x.mp4'}: ") and "\n" not in str(e.value)
