"""Decode clips from mp4 bytes with decord, and choose which frames to read.

Frames are read at the file's own frame rate: the reencode stage already wrote every file at its dataset's
fps (Kinetics 15, Charades 6, SSv2 24), so T consecutive frames span T / fps seconds.

- Training: one random window of T consecutive frames (:func:`train_indices`).
- Evaluation: V uniform views, starts evenly over [0, n - T] (:func:`eval_indices`); one view is centred.
- A clip shorter than T repeats its last frame.

Decoded clips are uint8 ``(T, H, W, C)`` (RGB, channels last, as decord returns them); the transforms turn
them into ``(T, C, H, W)``. A ``decord.VideoReader`` is built where the bytes are decoded, i.e. inside a
DataLoader worker, never in the parent, with ``num_threads=1``.

Decoding reads only what a clip needs: ``VideoReader.get_batch`` of the sorted unique indices seeks to the
keyframe at or before the first one (reencode writes a keyframe every second: ``-g round(fps)``), decodes
forward and converts only the requested frames to RGB. For a contiguous window this is the same work as
``seek_accurate(start)`` + ``next()`` T times, and measured as fast or faster (``benchmarks/data.py``,
"decode strategies"), so it is the one path. The frames come out of decord through DLPack (no copy):
``asnumpy()`` would copy each clip once more (10% of the decode time at 64 x 256 x 602).
"""

from __future__ import annotations

import io
import logging
import random

import numpy as np
from torch.utils.dlpack import from_dlpack

log = logging.getLogger(__name__)

__all__ = [
    "DecodeError",
    "decode_all",
    "decode_frames",
    "decode_with_reader",
    "eval_indices",
    "frame_count",
    "train_indices",
]


class DecodeError(ValueError):
    """A sample's video bytes could not be decoded; the message names the sample."""


def train_indices(num_frames: int, frames: int, rng: random.Random) -> np.ndarray:
    """Frame indices of a random window of ``frames`` consecutive frames in a video of ``num_frames``.

    The start is uniform over [0, num_frames - frames]; if the video is shorter than ``frames`` the window
    starts at 0 and its tail repeats the last frame. Returns int64 ``(frames,)``.
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least 1 frame, got {num_frames}")
    start = rng.randint(0, max(num_frames - frames, 0))
    return np.minimum(np.arange(start, start + frames), num_frames - 1).astype(np.int64)


def eval_indices(num_frames: int, frames: int, views: int) -> np.ndarray:
    """Frame indices of ``views`` uniform views of ``frames`` consecutive frames.

    View starts are evenly spaced over [0, num_frames - frames] (both ends included; a single view is
    centred), rounded to whole frames; short videos repeat their last frame. Returns int64 ``(views, frames)``.
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least 1 frame, got {num_frames}")
    last_start = max(num_frames - frames, 0)
    starts = np.array([last_start / 2]) if views == 1 else np.linspace(0, last_start, views)
    starts = np.floor(starts + 0.5).astype(np.int64)
    idx = starts[:, None] + np.arange(frames)[None, :]
    return np.minimum(idx, num_frames - 1)


def _reader(data: bytes, name: str):
    import decord  # imported here: decord is needed only where clips are decoded (the workers)

    try:
        return decord.VideoReader(io.BytesIO(data), num_threads=1)
    except Exception as exc:  # decord raises DECORDError (a RuntimeError) or others on bad input
        raise DecodeError(
            f"{name}: cannot open video ({str(exc).splitlines()[0] if str(exc) else exc!r})"
        ) from None


def frame_count(data: bytes, name: str = "video") -> int:
    """Number of frames decord finds in the mp4 ``data``."""
    return len(_reader(data, name))


def decode_frames(data: bytes, indices, name: str = "video") -> np.ndarray:
    """Decode the frames ``indices`` (any shape, values in [0, n)) of the mp4 ``data``.

    Repeated indices are decoded once. Returns uint8 ``indices.shape + (H, W, C)`` (RGB).

    Raises:
        DecodeError: the bytes do not open or an index is out of range; the message starts with ``name``.
    """
    vr = _reader(data, name)
    return decode_with_reader(vr, indices, name)


def decode_with_reader(vr, indices, name: str = "video") -> np.ndarray:
    """As :func:`decode_frames`, with an open ``decord.VideoReader``."""
    indices = np.asarray(indices, dtype=np.int64)
    n = len(vr)
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise DecodeError(f"{name}: frame index out of range [0, {n}): {indices.min()}..{indices.max()}")
    flat = indices.reshape(-1)
    if flat.size > 1 and np.all(np.diff(flat) == 1):  # a window: the common case, no gather needed
        unique, inverse = flat, None
    else:
        unique, inverse = np.unique(flat, return_inverse=True)
    try:
        # (U, H, W, C) uint8, shared with decord's buffer through DLPack (no copy)
        frames = from_dlpack(vr.get_batch(unique.tolist()).to_dlpack()).numpy()
    except Exception as exc:
        raise DecodeError(f"{name}: decoding frames failed ({exc})") from None
    if inverse is not None:
        frames = frames[inverse]
    return frames.reshape(*indices.shape, *frames.shape[1:])


def decode_all(data: bytes, name: str = "video") -> np.ndarray:
    """Every frame of the mp4 ``data``: uint8 ``(N, H, W, C)`` (RGB), N = the video's frame count.

    The frames equal :func:`decode_frames` of any subset of indices (the decoder is deterministic), so a
    window sliced from this array is the window :func:`decode_clip_train` decodes.
    """
    vr = _reader(data, name)
    return decode_with_reader(vr, np.arange(len(vr)), name)


def decode_clip_train(
    data: bytes, frames: int, rng: random.Random, name: str = "video"
) -> tuple[np.ndarray, int, int]:
    """A random training window: uint8 ``(T, H, W, C)``, its start frame and the video's frame count.

    The window of :func:`train_indices` (the same draw from ``rng``), decoded without index arrays: the
    frames [start, min(start + T, n)) in one ``get_batch``, the last one repeated for a short video.
    """
    vr = _reader(data, name)
    n = len(vr)
    start = rng.randint(0, max(n - frames, 0))  # train_indices' draw
    stop = min(start + frames, n)
    try:
        # (stop - start, H, W, C) uint8, shared with decord's buffer through DLPack (no copy)
        clip = from_dlpack(vr.get_batch(list(range(start, stop))).to_dlpack()).numpy()
    except Exception as exc:
        raise DecodeError(f"{name}: decoding frames failed ({exc})") from None
    if stop - start < frames:  # a short video: repeat its last frame
        clip = clip[np.minimum(np.arange(frames), stop - start - 1)]
    return clip, start, n


def decode_clip_eval(data: bytes, frames: int, views: int, name: str = "video") -> tuple[np.ndarray, int]:
    """``views`` uniform views: uint8 ``(V, T, H, W, C)`` and the video's frame count."""
    vr = _reader(data, name)
    n = len(vr)
    return decode_with_reader(vr, eval_indices(n, frames, views), name), n
