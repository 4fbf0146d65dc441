"""Embedded-default datasets: small synthetic Kinetics, Charades, SSv2 and ImageNet in their real formats.

``generate(format, root, cfg)`` writes ``raw/<ds>/`` exactly as the real dataset's download looks (annotation
files + media), so the same adapter and every later stage serve both. Everything is a pure function of
``cfg.seed`` (numpy ``SeedSequence([seed, dataset, split, item])``; videos encoded in-process by PyAV with one
encoder thread and bit-exact muxing), so two runs on one machine image give identical bytes, whatever ``workers``. Train and val come from different seeds and have
disjoint ids.

Classes need time (docs/design.md, "Synthetic data must need time"): within each class pair, any single frame at
any time index has the same distribution in both classes, the first frame included.
- Kinetics-like: 12 classes = 3 colour families (red, green, blue) x 4 motions (left, right, grow, shrink).
  The object's shape is random noise (not part of the label). Translations wrap around the frame with a
  uniformly random phase, so the position at every time is uniform; scales follow a sawtooth with a uniformly
  random start, so the side at every time is uniform on ``[0.2, 0.5]`` of the frame. Every frame of all four
  motions of one colour therefore has the same distribution: a static model can only find the colour (1/4 of
  the pair-level information), never the motion.
- SSv2-like: 10 classes = 5 exact time-reversal pairs (left/right, up/down, diagonal, grow/shrink, orbit
  clockwise/anticlockwise). Class ``2k+1`` is the frames of a class-``2k`` clip in reverse order. Every motion is
  stationary in distribution, so all ten classes have the same single-frame distribution (static = chance).
- Shots (``cfg.shot_seconds > 0``, Kinetics- and SSv2-like): a long video is a sequence of shots, each
  with a new background and a new random object of the same class (a cut, as in real videos), so one file
  (one encode) holds several independent examples. Every frame keeps the one-shot distribution.
- ImageNet-like: still images of the same objects, 6 classes = colour family x size (small, large).
- Charades-like: videos of ``cfg.seconds`` with 1-3 actions each; an action is one Kinetics-like (colour,
  motion) object visible from its start to its end time. Multi-label, 12 classes.

Source media: mp4 (libx264 veryfast crf 18, yuv420p) at ``cfg.fps`` for Kinetics and Charades, VP9 webm
(libvpx-vp9, ``deadline realtime``, ``cpu-used 8``, crf 32) for SSv2, JPEG (PIL, q=90) for ImageNet. Kinetics files are full length
(``{youtube_id}.mp4``, ``trimmed: false``): each holds ``cfg.seconds + 1`` s and the CSV's
``[time_start, time_end]`` window (``cfg.seconds`` long) starts at 0 or 1 s.
"""

from __future__ import annotations

import colorsys
import csv
import io
import json
import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from pipelines.common import atomic_path, write_bytes_atomic, write_text_atomic
from tubevit.config.data import SyntheticConfig

log = logging.getLogger(__name__)

__all__ = [
    "CHARADES_CLASSES",
    "COLOURS",
    "IMAGENET_CLASSES",
    "KINETICS_CLASSES",
    "KINETICS_MOTIONS",
    "SSV2_CLASSES",
    "SSV2_MOTIONS",
    "Sprite",
    "charades_video",
    "encode_video",
    "generate",
    "imagenet_image",
    "kinetics_clip",
    "ssv2_clip",
]

COLOURS = {"red": 0.0, "green": 1 / 3, "blue": 2 / 3}  # colour family -> base hue
KINETICS_MOTIONS = ("left", "right", "grow", "shrink")
KINETICS_CLASSES = tuple((c, m) for c in COLOURS for m in KINETICS_MOTIONS)  # 12 (colour, motion)
KINETICS_NAMES = {
    "left": "{} object moving left",
    "right": "{} object moving right",
    "grow": "{} object growing",
    "shrink": "{} object shrinking",
}
# SSv2-like: base motion of class 2k; class 2k+1 is its exact time reversal.
SSV2_MOTIONS = ("left", "up", "diagonal", "grow", "orbit")
SSV2_CLASSES = (
    ("Moving [something] from right to left", "Moving [something] from left to right"),
    ("Moving [something] up", "Moving [something] down"),
    ("Moving [something] from bottom right to top left", "Moving [something] from top left to bottom right"),
    ("Approaching [something] with your camera", "Moving away from [something] with your camera"),
    ("Turning [something] clockwise around a point", "Turning [something] anticlockwise around a point"),
)
IMAGENET_CLASSES = tuple((c, s) for c in COLOURS for s in ("small", "large"))  # 6 (colour, size)
CHARADES_CLASSES = KINETICS_CLASSES

SIDE_RANGE = (0.2, 0.5)  # object side as a fraction of the frame side
SPEED_RANGE = (0.3, 0.6)  # translation speed, frame sides per second
PERIOD_RANGE = (1.2, 2.0)  # sawtooth / orbit period in seconds
SHAPE_GRID = 5  # the random shape is a SHAPE_GRID^2 binary pattern, upscaled
_PAINT_CHUNK = 256  # frames painted at once (bounds Sprite.paint's (t, H, W) temporaries)
DATASET_CODE = {"kinetics": 1, "charades": 2, "ssv2": 3, "imagenet": 4}
SPLIT_CODE = {"train": 0, "val": 1}
YOUTUBE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# encoder options (ffmpeg's), on yuv420p with one thread, crf mode (bit rate 0) and a keyframe every second.
# mbtree=0: x264's macroblock-tree rate control (on in every preset) made the output depend on the process's
# heap layout when encoding in-process (13 different files from 30 encodes of one clip); without it, equal
# frames give equal bytes. It only redistributes bits between frames; crf 18 keeps the frames near-lossless.
X264_OPTIONS = {"preset": "veryfast", "crf": "18", "x264-params": "mbtree=0"}
VP9_OPTIONS = {"deadline": "realtime", "cpu-used": "8", "crf": "32"}


# ----------------------------------------------------------------------------------------------- rendering
@dataclass
class Sprite:
    """One object: a random binary shape of one colour that moves on a torus (wrapping at the frame edges).

    ``motion`` is one of ``left right up down diagonal grow shrink orbit`` (orbit: clockwise on screen;
    ``direction=-1`` reverses grow/orbit). Positions are in pixels, times in seconds.
    """

    shape: np.ndarray  # (SHAPE_GRID, SHAPE_GRID) bool
    rgb: np.ndarray  # (3,) uint8
    motion: str
    size: int  # frame side S in pixels
    cx: float  # centre at t = 0, pixels
    cy: float
    side: float  # side in pixels (fixed-size motions)
    speed: float  # pixels per second (translations)
    phase: float  # sawtooth / orbit phase in [0, 1)
    period: float  # seconds
    radius: float  # orbit radius, pixels
    start: float = -math.inf  # visible from start (inclusive) to end (exclusive), seconds
    end: float = math.inf

    @classmethod
    def random(cls, rng: np.random.Generator, size: int, motion: str, hue: float | None = None) -> Sprite:
        """A sprite whose every frame has the same distribution whatever ``motion`` is (see module doc)."""
        shape = rng.random((SHAPE_GRID, SHAPE_GRID)) < 0.55
        shape[SHAPE_GRID // 2 - 1 : SHAPE_GRID // 2 + 1, SHAPE_GRID // 2 - 1 : SHAPE_GRID // 2 + 1] = True
        hue = rng.random() if hue is None else (hue + rng.uniform(-0.05, 0.05)) % 1.0
        rgb = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0))) * 255
        return cls(
            shape=shape,
            rgb=np.round(rgb).astype(np.uint8),
            motion=motion,
            size=size,
            cx=rng.uniform(0, size),
            cy=rng.uniform(0, size),
            side=rng.uniform(*SIDE_RANGE) * size,
            speed=rng.uniform(*SPEED_RANGE) * size,
            phase=rng.random(),
            period=rng.uniform(*PERIOD_RANGE),
            radius=rng.uniform(0.15, 0.3) * size,
        )

    def state(self, t: float) -> tuple[float, float, float]:
        """Centre x, centre y and side (pixels) at time ``t`` seconds."""
        cx, cy, side = self.cx, self.cy, self.side
        lo, hi = SIDE_RANGE[0] * self.size, SIDE_RANGE[1] * self.size
        m = self.motion
        if m in ("left", "right"):
            cx += (-1 if m == "left" else 1) * self.speed * t
        elif m in ("up", "down"):
            cy += (-1 if m == "up" else 1) * self.speed * t
        elif m == "diagonal":  # towards the top left
            cx -= self.speed * t / math.sqrt(2)
            cy -= self.speed * t / math.sqrt(2)
        elif m in ("grow", "shrink"):
            frac = (self.phase + (1 if m == "grow" else -1) * t / self.period) % 1.0
            side = lo + (hi - lo) * frac
        elif m == "orbit":  # the centre circles around (cx, cy), clockwise on screen (y points down)
            angle = 2 * math.pi * (self.phase + t / self.period)
            cx += self.radius * math.cos(angle)
            cy += self.radius * math.sin(angle)
        else:
            raise ValueError(f"unknown motion {m!r}")
        return cx % self.size, cy % self.size, side

    def draw(self, canvas: np.ndarray, t: float) -> None:
        """Paint the sprite into ``canvas`` (H, W, 3) uint8 at time ``t`` seconds, wrapping at the edges."""
        self.paint(canvas[None], [t])

    def paint(self, frames: np.ndarray, times: list[float]) -> None:
        """Paint the sprite into every frame of ``frames`` (T, H, W, 3) uint8; frame ``i`` is at ``times[i]`` s.

        Vectorised over frames; the pixels are those of the per-frame nearest-neighbour upscale of ``shape``
        to an ``n x n`` patch, ``n = max(2, round(side))``, with its top-left corner at
        ``floor(centre - n / 2)``, wrapping at the edges (``n`` never exceeds the frame side). Only frames with
        ``start <= t < end`` are painted; they are consecutive since ``times`` increases.
        """
        visible = [i for i, t in enumerate(times) if self.start <= t < self.end]
        if not visible:
            return
        a, b = visible[0], visible[-1] + 1
        if len(visible) != b - a:
            raise ValueError(
                f"Sprite.paint: times must increase; the sprite shows in frames {visible[:8]}..."
            )
        H, W = frames.shape[1:3]
        for c0 in range(a, b, _PAINT_CHUNK):  # bounded temporaries at any clip length
            c1 = min(c0 + _PAINT_CHUNK, b)
            n, x0, y0 = [], [], []
            for t in times[c0:c1]:  # scalar math per frame: the exact floats of the per-frame renderer
                cx, cy, side = self.state(t)
                k = max(2, round(side))
                n.append(k)
                x0.append(math.floor(cx - k / 2))
                y0.append(math.floor(cy - k / 2))
            n_ = np.array(n)[:, None]
            if n_.max() > min(H, W):
                raise ValueError(f"Sprite.paint: a {n_.max()} px sprite does not fit a {H}x{W} frame")
            # local patch coordinate of every frame row / column: j = (pixel - corner) mod side, inside if j < n
            rows = (np.arange(H) - np.array(y0)[:, None]) % H  # (t, H)
            cols = (np.arange(W) - np.array(x0)[:, None]) % W  # (t, W)
            in_rows, in_cols = rows < n_, cols < n_
            # nearest-neighbour upscale as a product of one-hot selections: mask = R @ shape @ C^T, with
            # R[t, y, g] = 1 if row y is inside and samples shape row g (C likewise for columns); exact in float32
            grid = np.arange(SHAPE_GRID)
            select_rows = (rows[..., None] * SHAPE_GRID // n_[..., None] == grid) & in_rows[..., None]
            select_cols = (cols[..., None] * SHAPE_GRID // n_[..., None] == grid) & in_cols[..., None]
            shape = self.shape.astype(np.float32)
            mask = (
                select_rows.astype(np.float32) @ shape @ select_cols.astype(np.float32).transpose(0, 2, 1)
            ) > 0.5
            frames[c0:c1][mask] = self.rgb


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.full((size, size, 3), int(rng.integers(10, 90)), dtype=np.uint8)


def _render(
    sprites: list[Sprite], background: np.ndarray, n_frames: int, fps: float, out: np.ndarray | None = None
) -> np.ndarray:
    """(T, H, W, 3) uint8: ``background`` (H, W, 3) with ``sprites`` painted in order; frame ``i`` at ``i / fps`` s.

    Written into ``out`` (T, H, W, 3) uint8 when given (no copy), else into a new array.
    """
    frames = np.empty((n_frames, *background.shape), dtype=np.uint8) if out is None else out
    frames[:] = background
    times = [i / fps for i in range(n_frames)]
    for sprite in sprites:
        sprite.paint(frames, times)
    return frames


def _shots(n_frames: int, fps: float, shot_seconds: float) -> list[tuple[int, int]]:
    """Frame ranges ``[a, b)`` of the shots of a video: one per ``shot_seconds`` (0: a single shot)."""
    if shot_seconds <= 0:
        return [(0, n_frames)]
    length = max(1, round(shot_seconds * fps))
    return [(a, min(a + length, n_frames)) for a in range(0, n_frames, length)]


def _render_shots(
    rng: np.random.Generator,
    size: int,
    motion: str,
    hue: float | None,
    n_frames: int,
    fps: float,
    shot: float,
) -> np.ndarray:
    """(T, H, W, 3) uint8: each shot a new background and a new ``Sprite.random`` doing ``motion``.

    Every frame of a shot has the single-frame distribution of a one-shot clip (the sprite's phase and
    position are uniform whatever the time), so shots keep the "no single frame reveals the class"
    property; a shot boundary is a cut between two examples of the same class.
    """
    frames = np.empty((n_frames, size, size, 3), dtype=np.uint8)
    for a, b in _shots(n_frames, fps, shot):
        background = _background(rng, size)
        sprite = Sprite.random(rng, size, motion, hue)
        _render([sprite], background, b - a, fps, out=frames[a:b])
    return frames


def kinetics_clip(
    rng: np.random.Generator,
    colour: str,
    motion: str,
    size: int,
    n_frames: int,
    fps: float,
    shot_seconds: float = 0.0,
) -> np.ndarray:
    """A Kinetics-like clip: one ``colour`` object doing ``motion``. Returns (T, H, W, 3) uint8, T = n_frames.

    With ``shot_seconds > 0`` a new object (same colour family and motion) and background start every
    ``shot_seconds``: several independent examples of the class in one video.
    """
    return _render_shots(rng, size, motion, COLOURS[colour], n_frames, fps, shot_seconds)


def ssv2_clip(
    rng: np.random.Generator, label: int, size: int, n_frames: int, fps: float, shot_seconds: float = 0.0
) -> np.ndarray:
    """An SSv2-like clip of class ``label`` (0..9): (T, H, W, 3) uint8.

    Class ``2k`` is base motion ``SSV2_MOTIONS[k]``; class ``2k+1`` is a class-``2k`` clip drawn from the same
    random numbers with its frames in reverse order (an exact time reversal, shots included). With
    ``shot_seconds > 0`` a new object and background start every ``shot_seconds``.
    """
    frames = _render_shots(rng, size, SSV2_MOTIONS[label // 2], None, n_frames, fps, shot_seconds)
    return frames[::-1].copy() if label % 2 else frames


def imagenet_image(rng: np.random.Generator, colour: str, size_class: str, size: int) -> np.ndarray:
    """An ImageNet-like still image: one object of ``colour``, small (side 0.2-0.35) or large (0.35-0.5)."""
    background = _background(rng, size)
    sprite = Sprite.random(rng, size, "left", COLOURS[colour])
    lo, mid, hi = SIDE_RANGE[0], (SIDE_RANGE[0] + SIDE_RANGE[1]) / 2, SIDE_RANGE[1]
    sprite.side = rng.uniform(*((lo, mid) if size_class == "small" else (mid, hi))) * size
    image = background.copy()
    sprite.draw(image, 0.0)
    return image


def charades_video(
    rng: np.random.Generator, actions: list[tuple[int, float, float]], size: int, n_frames: int, fps: float
) -> np.ndarray:
    """A Charades-like video: for each ``(class, start s, end s)`` a (colour, motion) object visible in [start, end)."""
    background = _background(rng, size)
    sprites = []
    for label, start, end in actions:
        colour, motion = CHARADES_CLASSES[label]
        sprite = Sprite.random(rng, size, motion, COLOURS[colour])
        sprite.start, sprite.end = start, end
        sprites.append(sprite)
    return _render(sprites, background, n_frames, fps)


# ------------------------------------------------------------------------------------------------ encoding
def encode_video(frames: np.ndarray, path: Path, fps: float) -> None:
    """Encode (T, H, W, 3) uint8 RGB frames at ``fps`` frames/s to ``path`` atomically, in-process (PyAV).

    ``.mp4``: libx264 (``X264_OPTIONS``), ``+faststart``; ``.webm``: libvpx-vp9 (``VP9_OPTIONS``); both yuv420p
    with a keyframe every ``round(fps)`` frames, one encoder thread and bit-exact muxing (``fflags +bitexact``:
    no library version, encoder name or creation time in the file), so equal frames give equal bytes on one
    machine image. H and W must be even (yuv420p). Written to a temporary name, then renamed.

    Raises:
        ValueError: ``frames`` is not a non-empty (T, H, W, 3) uint8 array with even H and W, or ``fps`` is not
            positive (the message names ``path``).
        RuntimeError: the encoder or muxer failed; the message names the file and the reason.
    """
    path = Path(path)
    if frames.ndim != 4 or frames.shape[0] < 1 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    _T, H, W, _ = frames.shape
    if H % 2 or W % 2:
        raise ValueError(f"{path}: yuv420p needs even frame sides, got {W}x{H}")
    rate = _rate(fps)
    if rate <= 0:
        raise ValueError(f"{path}: the frame rate must be at least 1/1001000 frames/s, got {fps}")
    if path.suffix == ".webm":
        container, codec, options = "webm", "libvpx-vp9", VP9_OPTIONS
    else:
        container, codec, options = "mp4", "libx264", X264_OPTIONS
    muxer_options = {"fflags": "+bitexact"} | ({"movflags": "+faststart"} if container == "mp4" else {})
    frames = np.ascontiguousarray(frames)
    with atomic_path(path) as tmp:
        try:
            with av.open(str(tmp), "w", format=container, options=muxer_options) as output:
                stream = output.add_stream(codec, rate=rate, options=dict(options))
                ctx = stream.codec_context
                ctx.width, ctx.height, ctx.pix_fmt = W, H, "yuv420p"
                ctx.bit_rate = 0  # constant quality (crf), as ffmpeg's -b:v 0
                ctx.gop_size = max(1, round(fps))
                ctx.thread_count = 1
                for i, rgb in enumerate(frames):
                    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                    frame.pts = i
                    output.mux(stream.encode(frame))
                output.mux(stream.encode(None))  # flush the encoder
        except (av.FFmpegError, OSError) as exc:
            raise RuntimeError(f"{path}: {codec} encoding failed: {exc}") from None


def _rate(fps: float) -> Fraction:
    """``fps`` as the exact ratio ffmpeg's ``-framerate`` parses (denominator at most 1001000)."""
    return Fraction(fps).limit_denominator(1001000)


def _write_jpeg(image: np.ndarray, path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    write_bytes_atomic(path, buffer.getvalue())


# ------------------------------------------------------------------------------------------------- layout
def _rng(cfg: SyntheticConfig, dataset: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, DATASET_CODE[dataset], *keys]))


def _counts(cfg: SyntheticConfig) -> dict[str, int]:
    return {"train": cfg.train, "val": cfg.val}


def _balanced_labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % k)


def _num(x: float) -> str:
    """Seconds as the annotation files write them: ``3`` for integers, else two decimals."""
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}"


def _unique_ids(rng: np.random.Generator, n: int, make: Callable[[np.random.Generator], str]) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        candidate = make(rng)
        if candidate not in seen:
            seen.add(candidate)
            ids.append(candidate)
    return ids


def _split_ids(
    cfg: SyntheticConfig, dataset: str, make: Callable[[np.random.Generator], str]
) -> dict[str, list[str]]:
    """Disjoint ids for train and val, from one id generator (code 99) so that they cannot collide."""
    ids = _unique_ids(_rng(cfg, dataset, 99), cfg.train + cfg.val, make)
    return {"train": ids[: cfg.train], "val": ids[cfg.train :]}


@dataclass(frozen=True)
class _Job:
    path: Path  # absolute output path
    work: Callable[[], None]  # renders and writes the file


def _run_jobs(jobs: list[_Job], workers: int) -> None:
    """Run ``jobs`` on ``workers`` threads (1: in order, here); the first failure cancels the jobs not started.

    Threads, not processes: rendering is vectorised numpy and PyAV encodes with the GIL released, so a job
    holds the GIL for about a third of its time (py-spy ``--gil``); processes would have to re-import the
    stage's main module (Prefect) in each worker or fork a process that has Prefect's threads running.
    """
    if workers <= 1:
        for job in jobs:
            job.work()
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(job.work) for job in jobs]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _kinetics(root: Path, cfg: SyntheticConfig) -> tuple[list[_Job], dict[str, str]]:
    def youtube_id(rng: np.random.Generator) -> str:
        return "".join(YOUTUBE_ALPHABET[i] for i in rng.integers(0, 64, 11))

    ids = _split_ids(cfg, "kinetics", youtube_id)
    jobs, texts = [], {}
    pad = 1.0  # the file is cfg.seconds + pad long; the window starts at 0 or 1 s
    n_frames = round((cfg.seconds + pad) * cfg.fps)
    for split, split_name in (("train", "train"), ("val", "validate")):  # Kinetics-700 spells it "validate"
        labels = _balanced_labels(
            _rng(cfg, "kinetics", SPLIT_CODE[split], 1 << 20), len(ids[split]), len(KINETICS_CLASSES)
        )
        rows = []
        for i, (vid, label) in enumerate(zip(ids[split], labels, strict=True)):
            if i < 2:  # the real quirk, always present: ids that start with '-' and '_'
                vid = ("-", "_")[i] + vid[1:]
            rng = _rng(cfg, "kinetics", SPLIT_CODE[split], i)
            colour, motion = KINETICS_CLASSES[label]
            start = float(rng.integers(0, int(pad) + 1))
            rows.append(
                [
                    KINETICS_NAMES[motion].format(colour),
                    vid,
                    _num(start),
                    _num(start + cfg.seconds),
                    split_name,
                ]
            )
            path = root / split_name / f"{vid}.mp4"

            def work(rng=rng, colour=colour, motion=motion, path=path) -> None:
                clip = kinetics_clip(rng, colour, motion, cfg.size, n_frames, cfg.fps, cfg.shot_seconds)
                encode_video(clip, path, cfg.fps)

            jobs.append(_Job(path, work))
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        writer.writerows(rows)
        texts[f"annotations/{split_name}.csv"] = buffer.getvalue()
    return jobs, texts


def _charades(root: Path, cfg: SyntheticConfig) -> tuple[list[_Job], dict[str, str]]:
    def charades_id(rng: np.random.Generator) -> str:
        return "".join("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[i] for i in rng.integers(0, 36, 5))

    ids = _split_ids(cfg, "charades", charades_id)
    n_frames = round(cfg.seconds * cfg.fps)
    length = n_frames / cfg.fps
    jobs, texts = [], {}
    names = [KINETICS_NAMES[m].format(c) for c, m in CHARADES_CLASSES]
    texts["Charades_v1_classes.txt"] = "".join(f"c{i:03d} {n}\n" for i, n in enumerate(names))
    header = [
        "id",
        "subject",
        "scene",
        "quality",
        "relevance",
        "verified",
        "script",
        "objects",
        "descriptions",
        "actions",
        "length",
    ]
    for split, file in (("train", "Charades_v1_train.csv"), ("val", "Charades_v1_test.csv")):
        rows = []
        for i, vid in enumerate(ids[split]):
            rng = _rng(cfg, "charades", SPLIT_CODE[split], i)
            n_actions = int(rng.integers(1, 4))
            classes = rng.choice(len(CHARADES_CLASSES), size=n_actions, replace=False)
            actions = []
            for c in classes:
                duration = rng.uniform(0.3, 0.6) * length
                start = round(rng.uniform(0, length - duration), 2)
                actions.append((int(c), start, round(start + duration, 2)))
            actions.sort(key=lambda a: (a[1], a[0]))
            text = ";".join(f"c{c:03d} {s:.2f} {e:.2f}" for c, s, e in actions)
            description = "; ".join(names[c] for c, _, _ in actions)
            rows.append(
                [
                    vid,
                    "S" + vid[:2],
                    "Synthetic room",
                    "7",
                    "7",
                    "Yes",
                    description,
                    "object",
                    description,
                    text,
                    f"{length:.2f}",
                ]
            )
            path = root / "Charades_v1_480" / f"{vid}.mp4"

            def work(rng=rng, actions=actions, path=path) -> None:
                encode_video(charades_video(rng, actions, cfg.size, n_frames, cfg.fps), path, cfg.fps)

            jobs.append(_Job(path, work))
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        texts[file] = buffer.getvalue()
    return jobs, texts


def _ssv2(root: Path, cfg: SyntheticConfig) -> tuple[list[_Job], dict[str, str]]:
    order = list(range(1, cfg.train + cfg.val + 1))
    perm = _rng(cfg, "ssv2", 99).permutation(order)
    ids = {"train": [str(v) for v in perm[: cfg.train]], "val": [str(v) for v in perm[cfg.train :]]}
    templates = [t for pair in SSV2_CLASSES for t in pair]
    labels_json = {t.replace("[", "").replace("]", ""): str(i) for i, t in enumerate(templates)}
    n_frames = round(cfg.seconds * cfg.fps)
    jobs, texts = [], {"labels.json": json.dumps(labels_json, indent=1) + "\n"}
    objects = ("a ball", "a box", "a cup", "a pen", "a phone")
    for split, file in (("train", "train.json"), ("val", "validation.json")):
        labels = _balanced_labels(
            _rng(cfg, "ssv2", SPLIT_CODE[split], 1 << 20), len(ids[split]), len(templates)
        )
        entries = []
        for i, (vid, label) in enumerate(zip(ids[split], labels, strict=True)):
            rng = _rng(cfg, "ssv2", SPLIT_CODE[split], i)
            thing = objects[int(rng.integers(0, len(objects)))]
            template = templates[label]
            entries.append(
                {
                    "id": vid,
                    "label": template.replace("[something]", thing),
                    "template": template,
                    "placeholders": [thing],
                }
            )
            path = root / "20bn-something-something-v2" / f"{vid}.webm"

            def work(rng=rng, label=int(label), path=path) -> None:
                encode_video(
                    ssv2_clip(rng, label, cfg.size, n_frames, cfg.fps, cfg.shot_seconds), path, cfg.fps
                )

            jobs.append(_Job(path, work))
        texts[file] = json.dumps(entries, indent=1) + "\n"
    return jobs, texts


def _imagenet(root: Path, cfg: SyntheticConfig) -> tuple[list[_Job], dict[str, str]]:
    synsets = [f"n{90000000 + k:08d}" for k in range(len(IMAGENET_CLASSES))]  # never a real synset (n0...)
    texts = {
        "LOC_synset_mapping.txt": "".join(
            f"{s} {c} object, {z}\n" for s, (c, z) in zip(synsets, IMAGENET_CLASSES, strict=True)
        )
    }
    jobs = []
    for split in ("train", "val"):
        n = _counts(cfg)[split]
        labels = _balanced_labels(_rng(cfg, "imagenet", SPLIT_CODE[split], 1 << 20), n, len(IMAGENET_CLASSES))
        for i, label in enumerate(labels):
            rng = _rng(cfg, "imagenet", SPLIT_CODE[split], i)
            synset = synsets[label]
            name = f"{synset}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{i + 1:08d}.JPEG"
            path = root / split / synset / name
            colour, size_class = IMAGENET_CLASSES[label]

            def work(rng=rng, colour=colour, size_class=size_class, path=path) -> None:
                _write_jpeg(imagenet_image(rng, colour, size_class, cfg.size), path)

            jobs.append(_Job(path, work))
    return jobs, texts


_LAYOUTS = {"kinetics": _kinetics, "charades": _charades, "ssv2": _ssv2, "imagenet": _imagenet}


def generate(format: str, root: Path, cfg: SyntheticConfig, workers: int = 1) -> list[str]:
    """Write a synthetic dataset of ``format`` into ``root`` in the real dataset's layout.

    Media are written first, annotation files last (each atomically), so a killed run leaves no annotation
    that names a missing file. ``workers`` renders and encodes that many files at once (threads; one encoder
    thread each); the output does not depend on it.

    Returns:
        The written files, relative to ``root`` (POSIX), sorted.

    Raises:
        ValueError: an unknown format, or an odd frame size for a video format (yuv420p needs even sides).
        RuntimeError: encoding failed, naming the file.
    """
    if format not in _LAYOUTS:
        raise ValueError(f"unknown synthetic format {format!r}; known: {', '.join(_LAYOUTS)}")
    if format != "imagenet" and cfg.size % 2:
        raise ValueError(f"synthetic.size: video frames need an even side (yuv420p), got {cfg.size}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    jobs, texts = _LAYOUTS[format](root, cfg)
    _run_jobs(jobs, workers)
    for name, text in texts.items():
        write_text_atomic(root / name, text)
    files = [j.path.relative_to(root).as_posix() for j in jobs] + list(texts)
    log.info("generated synthetic %s: %d media files in %s", format, len(jobs), root)
    return sorted(files)
