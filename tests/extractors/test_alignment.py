"""extractors.alignment: per-word averaging of frames and copying to subword tokens."""
from __future__ import annotations

import numpy as np
import pytest

from extractors.alignment import align_to_tokens, to_tokens, word_average, word_frames

PERIOD = 0.1


def _grid(n: int, dim: int = 3, period: float = PERIOD, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)).astype(np.float32), np.arange(n) * period


def test_frames_inside_half_open_interval_are_averaged():
    frames, times = _grid(10)          # times 0.0, 0.1, ..., 0.9
    # word [0.2, 0.5): frames at 0.2, 0.3, 0.4 (0.5 excluded: end is open)
    out = word_average(frames, times, np.array([0.2]), np.array([0.5]), PERIOD)
    np.testing.assert_allclose(out[0], frames[2:5].mean(axis=0), rtol=1e-5, atol=1e-6)
    # start is closed: a word starting exactly on a frame includes it
    out = word_average(frames, times, np.array([0.3]), np.array([0.31]), PERIOD)
    np.testing.assert_allclose(out[0], frames[3], rtol=1e-6)


def test_every_word_independent_and_brute_force_equal():
    frames, times = _grid(40, dim=5, seed=1)
    rng = np.random.default_rng(2)
    start = np.sort(rng.uniform(0, 3.5, size=25))
    end = start + rng.uniform(0.15, 0.6, size=25)       # each word holds at least one frame time
    out = word_average(frames, times, start, end, PERIOD)
    for w in range(25):
        inside = (times >= start[w]) & (times < end[w])
        assert inside.any()
        np.testing.assert_allclose(out[w], frames[inside].mean(axis=0), rtol=1e-4, atol=1e-5)


def test_word_shorter_than_a_frame_takes_nearest_frame_not_nan():
    frames, times = _grid(10)
    # [0.31, 0.33) holds no frame time; midpoint 0.32 is nearest to the frame at 0.3
    out = word_average(frames, times, np.array([0.31, 0.36]), np.array([0.33, 0.39]), PERIOD)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[0], frames[3])
    np.testing.assert_array_equal(out[1], frames[4])   # midpoint 0.375 -> frame at 0.4


def test_zero_length_and_reversed_words():
    frames, times = _grid(10)
    out = word_average(frames, times, np.array([0.52, 0.7]), np.array([0.52, 0.6]), PERIOD)
    np.testing.assert_array_equal(out[0], frames[5])    # empty interval at 0.52 -> frame 0.5
    np.testing.assert_array_equal(out[1], frames[7])    # end < start read as empty at 0.7


def test_words_outside_the_frames_take_the_end_frames():
    frames, times = _grid(10)                           # last frame at 0.9
    out = word_average(frames, times, np.array([-0.5, 2.0, 5.0]), np.array([-0.2, 2.4, 6.0]), PERIOD)
    np.testing.assert_array_equal(out[0], frames[0])
    np.testing.assert_array_equal(out[1], frames[9])
    np.testing.assert_array_equal(out[2], frames[9])


def test_no_frames_gives_zeros_and_no_words_gives_empty():
    out = word_average(np.zeros((0, 7), np.float32), np.zeros(0), np.array([0.0, 0.5]),
                       np.array([0.4, 0.9]), PERIOD)
    assert out.shape == (2, 7) and out.dtype == np.float32
    assert not out.any()
    frames, times = _grid(5)
    out = word_average(frames, times, np.zeros(0), np.zeros(0), PERIOD)
    assert out.shape == (0, 3)


def test_nan_features_never_leak():
    frames, times = _grid(6)
    frames[2, 1] = np.nan
    frames[3, 0] = np.inf
    out = word_average(frames, times, np.array([0.15, 0.0]), np.array([0.45, 0.05]), PERIOD)
    assert np.all(np.isfinite(out))


def test_unsorted_frame_times_are_sorted_first():
    frames, times = _grid(8)
    order = np.random.default_rng(3).permutation(8)
    a = word_average(frames, times, np.array([0.1, 0.42]), np.array([0.35, 0.43]), PERIOD)
    b = word_average(frames[order], times[order], np.array([0.1, 0.42]), np.array([0.35, 0.43]), PERIOD)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_bad_shapes_and_period_are_rejected():
    frames, times = _grid(4)
    with pytest.raises(ValueError):
        word_average(frames, times[:3], np.array([0.0]), np.array([0.1]), PERIOD)
    with pytest.raises(ValueError):
        word_average(frames, times, np.array([0.0]), np.array([0.1]), 0.0)
    with pytest.raises(ValueError):
        word_average(frames[:, 0], times, np.array([0.0]), np.array([0.1]), PERIOD)
    with pytest.raises(ValueError):
        to_tokens(np.zeros((2, 3)), np.array([-1, 0, 2, -1]))


def test_to_tokens_copies_words_to_subwords_and_zeros_specials():
    words = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=np.float32)
    # [CLS] w0 w1 w1 w1 w2 [SEP] [PAD]
    idx = np.array([-1, 0, 1, 1, 1, 2, -1, -1], dtype=np.int32)
    out = to_tokens(words, idx)
    assert out.shape == (8, 2)
    np.testing.assert_array_equal(out[[0, 6, 7]], 0.0)
    np.testing.assert_array_equal(out[2], words[1])
    np.testing.assert_array_equal(out[4], words[1])
    np.testing.assert_array_equal(out[5], words[2])


def test_align_to_tokens_has_token_length():
    frames, times = _grid(30, dim=4)
    start, end = np.array([0.0, 0.8, 1.9]), np.array([0.7, 1.9, 2.05])
    idx = np.array([-1, 0, 0, 1, 2, 2, -1])
    out = align_to_tokens(frames, times, start, end, idx, PERIOD)
    assert out.shape == (7, 4)
    np.testing.assert_allclose(out[1], frames[0:7].mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[1], out[2])
    np.testing.assert_allclose(out[4], frames[19:21].mean(axis=0), rtol=1e-5, atol=1e-6)
    assert not out[0].any() and not out[-1].any()
    # the empty-text case: [CLS] [SEP] only, no words
    out = align_to_tokens(frames, times, np.zeros(0), np.zeros(0), np.array([-1, -1]), PERIOD)
    assert out.shape == (2, 4) and not out.any()


def test_word_frames_says_which_words_hold_data_within_a_distance():
    frames = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)
    times = np.array([0.0, 0.1, 0.2, 0.9])
    start = np.array([0.05, 0.12, 0.4, 0.95, 1.2, 0.5])
    end = np.array([0.15, 0.13, 0.8, 1.0, 1.3, 0.45])      # the last one reversed: empty at 0.5
    # a frame inside; midpoint 0.025 s from a frame; none within 0.1 s of 0.6; 0.075 s after the last
    # frame; 0.35 s after it; an empty word at 0.5, 0.3 s from the frame at 0.2
    vectors, has = word_frames(frames, times, start, end, PERIOD, max_distance=PERIOD)
    assert has.tolist() == [True, True, False, True, False, False]
    assert vectors[:, 0].tolist() == [2.0, 2.0, 0.0, 4.0, 0.0, 0.0]
    # without a limit every word takes its nearest frame, exactly as word_average does
    vectors, has = word_frames(frames, times, start, end, PERIOD)
    assert has.all()
    np.testing.assert_array_equal(vectors, word_average(frames, times, start, end, PERIOD))
    vectors, has = word_frames(np.zeros((0, 1), np.float32), np.zeros(0), start, end, PERIOD)
    assert not has.any() and not vectors.any()
