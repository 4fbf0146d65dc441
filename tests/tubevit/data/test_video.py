"""Temporal sampling and decord decoding: the decoded frames are the requested ones."""

from __future__ import annotations

import gc
import random

import numpy as np
import pytest

from tests.tubevit.data.clips import decoded_indices, encode, index_frames
from tubevit.data.video import (
    DecodeError,
    decode_clip_eval,
    decode_clip_train,
    decode_frames,
    eval_indices,
    frame_count,
    train_indices,
)


@pytest.fixture(scope="module")
def clip20(tmp_path_factory) -> bytes:
    """An mp4 of 20 frames at 15 fps whose frame i has gray level 8 * i."""
    return encode(tmp_path_factory.mktemp("v") / "c.mp4", index_frames(20), 15.0).read_bytes()


def test_train_indices_are_a_window_of_consecutive_frames():
    rng = random.Random(0)
    starts = set()
    for _ in range(200):
        idx = train_indices(20, 8, rng)
        assert idx.dtype == np.int64 and idx.shape == (8,)
        assert np.array_equal(idx, np.arange(idx[0], idx[0] + 8)) and 0 <= idx[0] <= 12
        starts.add(int(idx[0]))
    assert starts == set(range(13))  # every start in [0, n - T] is drawn
    assert train_indices(5, 8, rng).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]  # short: repeat the last frame
    with pytest.raises(ValueError, match="at least 1 frame"):
        train_indices(0, 8, rng)


def test_eval_indices_are_uniform_views():
    assert eval_indices(20, 8, 3).tolist() == [list(range(0, 8)), list(range(6, 14)), list(range(12, 20))]
    assert eval_indices(20, 8, 1).tolist() == [list(range(6, 14))]  # one view is centred
    assert eval_indices(21, 8, 4)[:, 0].tolist() == [0, 4, 9, 13]  # starts 0, 4.33, 8.67, 13 rounded
    assert eval_indices(3, 5, 2).tolist() == [[0, 1, 2, 2, 2], [0, 1, 2, 2, 2]]


def test_decoded_frames_are_the_requested_ones(clip20):
    assert frame_count(clip20) == 20
    idx = np.array([[3, 3, 19], [0, 7, 12]])
    frames = decode_frames(clip20, idx, "c")
    assert frames.dtype == np.uint8 and frames.shape == (2, 3, 48, 64, 3)
    assert decoded_indices(frames) == idx.tolist()
    assert (frames[0, 0, :6, :6] > 240).all()  # the white corner survives: channels-last RGB


def test_decode_train_window_and_eval_views(clip20):
    for seed in range(5):
        frames, start, n = decode_clip_train(clip20, 8, random.Random(seed), "c")
        assert n == 20 and frames.shape == (8, 48, 64, 3)
        assert decoded_indices(frames) == list(range(start, start + 8))
        assert start == train_indices(20, 8, random.Random(seed))[0]
    views, n = decode_clip_eval(clip20, 8, 3, "c")
    assert views.shape == (3, 8, 48, 64, 3)
    assert decoded_indices(views) == eval_indices(20, 8, 3).tolist()
    short, _ = decode_clip_eval(clip20, 24, 1, "c")
    assert decoded_indices(short) == [[*range(20), 19, 19, 19, 19]]


def test_bad_bytes_raise_naming_the_sample(clip20):
    with pytest.raises(DecodeError, match=r"^shard-3\.tar:000000007: cannot open video"):
        decode_frames(b"this is not a video", [0], "shard-3.tar:000000007")
    with pytest.raises(DecodeError, match=r"c: frame index out of range \[0, 20\)"):
        decode_frames(clip20, [20], "c")


def test_windows_and_scattered_indices_decode_the_same_frames(clip20):
    """A contiguous window takes get_batch's frames as they come (DLPack, no gather); scattered or repeated
    indices go through unique + gather. Both give the same pixels, in arrays that outlive the reader."""
    window = decode_frames(clip20, np.arange(4, 12), "c")
    scattered = decode_frames(clip20, np.array([11, 4, 7, 7, 5, 6, 8, 9, 10]), "c")
    gc.collect()  # the readers and decord's batch objects are gone; the arrays must still hold the frames
    assert window.shape == (8, 48, 64, 3) and decoded_indices(window) == list(range(4, 12))
    assert np.array_equal(scattered[0], window[7]) and np.array_equal(scattered[1], window[0])
    assert np.array_equal(scattered[2], scattered[3]) and np.array_equal(scattered[2], window[3])
    window[0, 0, 0, 0] = 1  # writable
    assert np.array_equal(decode_frames(clip20, [5], "c")[0], window[1])


def test_a_training_window_longer_than_the_video_repeats_its_last_frame(clip20):
    frames, start, n = decode_clip_train(clip20, 24, random.Random(3), "c")
    assert (start, n) == (0, 20) and frames.shape == (24, 48, 64, 3)
    assert decoded_indices(frames) == [*range(20), 19, 19, 19, 19]
    assert decoded_indices(decode_clip_train(clip20, 20, random.Random(3), "c")[0]) == list(range(20))
    with pytest.raises(DecodeError, match=r"^shard-1\.tar:x: cannot open video"):
        decode_clip_train(b"junk", 8, random.Random(0), "shard-1.tar:x")
