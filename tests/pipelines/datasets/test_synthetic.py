"""The synthetic datasets: real formats, determinism, disjoint splits, and classes that need time.

The separability tests are the proof behind docs/design.md "Synthetic data must need time": within a class pair,
a single-frame classifier stays at chance at every time index, while a time-difference feature separates the
pair; the same single-frame classifier does tell colour families apart (it is not blind).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import av
import ffmpeg
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score

from pipelines.common import sha256_file
from pipelines.datasets import get_adapter, kinetics
from pipelines.datasets import synthetic as syn
from tubevit.config.data import SyntheticConfig

TINY = SyntheticConfig(train=4, val=2, size=32, seconds=1.0, fps=10.0, seed=3)


def probe(path: Path) -> dict:
    info = ffmpeg.probe(str(path.resolve()), count_frames=None, select_streams="v:0")
    stream = info["streams"][0]
    return {
        "codec": stream["codec_name"],
        "width": stream["width"],
        "height": stream["height"],
        "fps": stream["r_frame_rate"],
        "frames": int(stream["nb_read_frames"]),
        "pix_fmt": stream["pix_fmt"],
    }


def decode(path: Path) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames of a video file."""
    info = ffmpeg.probe(str(path.resolve()), select_streams="v:0")["streams"][0]
    out, _ = (
        ffmpeg.input(str(path.resolve()))
        .output("pipe:", format="rawvideo", pix_fmt="rgb24")
        .global_args("-loglevel", "error")
        .run(capture_stdout=True)
    )
    return np.frombuffer(out, np.uint8).reshape(-1, info["height"], info["width"], 3)


# ------------------------------------------------------------------------------------- features for tests
def object_mask(frames: np.ndarray) -> np.ndarray:
    """(T, H, W) bool: pixels far (> 40 levels in some channel) from the clip's background, its median colour.

    The synthetic background is one grey level in [10, 90), objects have a channel >= 178, so the threshold
    also holds after lossy encoding.
    """
    background = np.median(frames.reshape(-1, 3), axis=0)
    return (np.abs(frames.astype(np.int16) - background).max(-1) > 40).reshape(frames.shape[:3])


def circular_shifts(profiles: np.ndarray) -> np.ndarray:
    """(T, n) profiles -> (T-1,) shifts s in (-n/2, n/2] that best map profile t onto t+1 (circular)."""
    a, b = np.fft.rfft(profiles[:-1]), np.fft.rfft(profiles[1:])
    corr = np.fft.irfft(np.conj(a) * b, n=profiles.shape[1])  # corr[s] = sum_i a[i] b[i + s]
    s = corr.argmax(1)
    n = profiles.shape[1]
    return np.where(s > n // 2, s - n, s)


def temporal_features(frames: np.ndarray) -> np.ndarray:
    """Per clip: mean horizontal shift, mean vertical shift, mean area change between consecutive frames."""
    mask = object_mask(frames).astype(np.float64)
    cols, rows, area = mask.sum(1), mask.sum(2), mask.sum((1, 2))
    darea = np.diff(area)
    darea = np.delete(darea, np.argmax(np.abs(darea)))  # drop the sawtooth's wrap (at most one per second)
    return np.array([circular_shifts(cols).mean(), circular_shifts(rows).mean(), darea.mean()])


def single_frame_features(frame: np.ndarray) -> np.ndarray:
    """One frame: 8x8x3 average-pooled pixels plus area, mean colour and circular centroid of the object."""
    H, W, _ = frame.shape
    pooled = frame.reshape(8, H // 8, 8, W // 8, 3).mean((1, 3)).ravel() / 255
    mask = object_mask(frame[None])[0]
    ys, xs = np.nonzero(mask)
    colour = frame[mask].mean(0) / 255 if mask.any() else np.zeros(3)
    ang_x, ang_y = 2 * np.pi * xs / W, 2 * np.pi * ys / H
    centroid = (
        [np.cos(ang_x).mean(), np.sin(ang_x).mean(), np.cos(ang_y).mean(), np.sin(ang_y).mean()]
        if mask.any()
        else [0] * 4
    )
    return np.concatenate([pooled, [mask.mean()], colour, centroid])


def cv_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    model = LogisticRegression(C=1.0, solver="liblinear", max_iter=2000)
    return float(cross_val_score(model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0)).mean())


def clips(render, n: int, seed: int) -> list[np.ndarray]:
    return [render(np.random.default_rng([seed, i])) for i in range(n)]


N_PER_CLASS, SIZE, FRAMES, FPS = 150, 32, 10, 10.0


def pair_report(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[list[float], float]:
    """Single-frame CV accuracy at every time index, and the time-difference CV accuracy, for two classes."""
    y = np.array([0] * len(a) + [1] * len(b))
    single = []
    for t in range(FRAMES):
        x = np.stack([single_frame_features(c[t]) for c in a + b])
        single.append(cv_accuracy(x, y))
    temporal = cv_accuracy(np.stack([temporal_features(c) for c in a + b]), y)
    return single, temporal


@pytest.mark.parametrize(("first", "second"), [("left", "right"), ("grow", "shrink")])
def test_kinetics_pairs_need_time(first: str, second: str, capsys):
    def render(motion):
        return lambda rng: syn.kinetics_clip(rng, "red", motion, SIZE, FRAMES, FPS)

    a, b = clips(render(first), N_PER_CLASS, 1), clips(render(second), N_PER_CLASS, 2)
    single, temporal = pair_report(a, b)
    with capsys.disabled():
        print(
            f"\nkinetics {first}/{second}: single-frame acc per t {np.round(single, 3).tolist()}, temporal {temporal:.3f}"
        )
    assert max(abs(s - 0.5) for s in single) < 0.1, single  # chance at every time index, the first included
    assert temporal > 0.97
    # the single-frame classifier is not blind: it separates colour families at once
    other = clips(lambda rng: syn.kinetics_clip(rng, "green", first, SIZE, FRAMES, FPS), N_PER_CLASS, 3)
    x = np.stack([single_frame_features(c[0]) for c in a + other])
    assert cv_accuracy(x, np.array([0] * N_PER_CLASS + [1] * N_PER_CLASS)) > 0.97


def test_kinetics_motions_share_single_frame_statistics():
    """At every time index, object area and position have the same distribution in all four motions.

    Two-sample z-tests of the means of area, cos/sin of the circular column and row centroids, per time
    index: |z| stays below 4.5 for all 10 x 5 x 3 comparisons (a 4.5 sigma miss has probability ~1e-5).
    """

    def stats(cs: list[np.ndarray]) -> np.ndarray:
        masks = np.stack([object_mask(c) for c in cs]).astype(np.float64)  # (N, T, H, W)
        angle = 2 * np.pi * np.arange(SIZE) / SIZE
        cols, rows = masks.sum(2), masks.sum(3)  # (N, T, W), (N, T, H)
        total = masks.sum((2, 3)) + 1e-9
        return np.stack(
            [
                masks.mean((2, 3)),
                (cols * np.cos(angle)).sum(-1) / total,
                (cols * np.sin(angle)).sum(-1) / total,
                (rows * np.cos(angle)).sum(-1) / total,
                (rows * np.sin(angle)).sum(-1) / total,
            ]
        )  # (5, N, T)

    n = 300
    by_motion = {
        m: stats(clips(lambda rng, m=m: syn.kinetics_clip(rng, "blue", m, SIZE, FRAMES, FPS), n, 10 + k))
        for k, m in enumerate(syn.KINETICS_MOTIONS)
    }
    ref = by_motion["left"]
    for motion in syn.KINETICS_MOTIONS[1:]:
        got = by_motion[motion]
        z = (got.mean(1) - ref.mean(1)) / np.sqrt((got.var(1) + ref.var(1)) / n + 1e-12)  # (5, T)
        assert np.abs(z).max() < 4.5, (motion, np.round(z, 2))


def test_ssv2_reversed_class_is_exact_time_reversal_and_needs_time(capsys):
    for k in range(5):
        forward = syn.ssv2_clip(np.random.default_rng(7), 2 * k, SIZE, FRAMES, FPS)
        backward = syn.ssv2_clip(np.random.default_rng(7), 2 * k + 1, SIZE, FRAMES, FPS)
        np.testing.assert_array_equal(backward, forward[::-1])
        assert not np.array_equal(forward, backward)
    # translation pair (left / right) and orbit pair: single frames at chance, time separates
    for label in (0, 8):
        a = clips(lambda rng, lab=label: syn.ssv2_clip(rng, lab, SIZE, FRAMES, FPS), N_PER_CLASS, 20 + label)
        b = clips(
            lambda rng, lab=label: syn.ssv2_clip(rng, lab + 1, SIZE, FRAMES, FPS), N_PER_CLASS, 40 + label
        )
        y = np.array([0] * N_PER_CLASS + [1] * N_PER_CLASS)
        single = [
            cv_accuracy(np.stack([single_frame_features(c[t]) for c in a + b]), y) for t in (0, FRAMES - 1)
        ]
        with capsys.disabled():
            print(
                f"\nssv2 classes {label}/{label + 1}: single-frame acc at first/last frame {np.round(single, 3).tolist()}"
            )
        assert max(abs(s - 0.5) for s in single) < 0.1, single
    # left (0) vs up (2): different pairs, yet single frames alike; the temporal feature separates them
    a = clips(lambda rng: syn.ssv2_clip(rng, 0, SIZE, FRAMES, FPS), N_PER_CLASS, 60)
    b = clips(lambda rng: syn.ssv2_clip(rng, 2, SIZE, FRAMES, FPS), N_PER_CLASS, 61)
    single, temporal = pair_report(a, b)
    with capsys.disabled():
        print(
            f"ssv2 left vs up: single-frame max |acc-0.5| {max(abs(s - 0.5) for s in single):.3f}, temporal {temporal:.3f}"
        )
    assert max(abs(s - 0.5) for s in single) < 0.1
    assert temporal > 0.97


def test_shots_are_independent_examples_of_the_class(capsys):
    """shot_seconds > 0: a new background and object every shot; a shot's frames keep the class's motion;
    the SSv2 reversal stays exact; single frames (any shot) still do not tell a pair apart."""
    n, fps, shot = 40, 10.0, 1.0  # 4 shots of 10 frames
    assert syn._shots(n, fps, shot) == [(0, 10), (10, 20), (20, 30), (30, 40)]
    assert syn._shots(n, fps, 0.0) == [(0, 40)]
    assert syn._shots(25, fps, shot) == [(0, 10), (10, 20), (20, 25)]
    video = syn.kinetics_clip(np.random.default_rng(3), "red", "right", SIZE, n, fps, shot)
    assert video.shape == (n, SIZE, SIZE, 3) and video.dtype == np.uint8
    backgrounds = [int(np.bincount(video[a, ..., 0].ravel()).argmax()) for a in (0, 10, 20, 30)]
    within = [np.abs(video[a].astype(int) - video[a + 1]).mean() for a in range(0, n - 1) if (a + 1) % 10]
    across = [np.abs(video[a - 1].astype(int) - video[a]).mean() for a in (10, 20, 30)]
    assert len(set(backgrounds)) > 1, backgrounds  # new background per shot (a random level each)
    assert min(across) > max(within), (across, max(within))  # cuts only at shot boundaries
    # one shot (shot_seconds=0) is the former single-object clip: same random draws, same frames
    one = syn.kinetics_clip(np.random.default_rng(3), "red", "right", SIZE, n, fps)
    np.testing.assert_array_equal(one[:10], video[:10])
    assert not np.array_equal(one[10:], video[10:])
    for k in range(5):
        forward = syn.ssv2_clip(np.random.default_rng(7), 2 * k, SIZE, n, fps, shot)
        backward = syn.ssv2_clip(np.random.default_rng(7), 2 * k + 1, SIZE, n, fps, shot)
        np.testing.assert_array_equal(backward, forward[::-1])
    # left/right pair with shots: single frames at chance at the first frame and inside a later shot
    a = clips(lambda rng: syn.ssv2_clip(rng, 0, SIZE, 20, fps, shot), N_PER_CLASS, 80)
    b = clips(lambda rng: syn.ssv2_clip(rng, 1, SIZE, 20, fps, shot), N_PER_CLASS, 81)
    y = np.array([0] * N_PER_CLASS + [1] * N_PER_CLASS)
    single = [cv_accuracy(np.stack([single_frame_features(c[t]) for c in a + b]), y) for t in (0, 15)]
    with capsys.disabled():
        print(f"\nssv2 shots 0/1: single-frame acc at frames 0 and 15 {np.round(single, 3).tolist()}")
    assert max(abs(s - 0.5) for s in single) < 0.1, single
    with pytest.raises(ValueError, match="shot_seconds"):
        SyntheticConfig(shot_seconds=-1.0)


# ------------------------------------------------------------------- renderer: equal to the per-frame oracle
def oracle_draw(sprite: syn.Sprite, canvas: np.ndarray, t: float) -> None:
    """The per-frame renderer that the vectorised ``Sprite.paint`` replaced, kept verbatim as the oracle."""
    if not (sprite.start <= t < sprite.end):
        return
    cx, cy, side = sprite.state(t)
    n = max(2, round(side))
    idx = np.arange(n) * syn.SHAPE_GRID // n  # nearest-neighbour upscale of the shape
    mask = sprite.shape[np.ix_(idx, idx)]
    x0, y0 = math.floor(cx - n / 2), math.floor(cy - n / 2)
    rows = (y0 + np.arange(n)) % canvas.shape[0]
    cols = (x0 + np.arange(n)) % canvas.shape[1]
    patch = canvas[np.ix_(rows, cols)]
    patch[mask] = sprite.rgb
    canvas[np.ix_(rows, cols)] = patch


def oracle_render(sprites, background, n_frames, fps, out=None):
    frames = np.empty((n_frames, *background.shape), dtype=np.uint8) if out is None else out
    for i in range(n_frames):
        frames[i] = background
        for sprite in sprites:
            oracle_draw(sprite, frames[i], i / fps)
    return frames


ALL_MOTIONS = ("left", "right", "up", "down", "diagonal", "grow", "shrink", "orbit")


@pytest.mark.parametrize("chunk", [syn._PAINT_CHUNK, 7])
def test_vectorised_render_equals_per_frame_oracle(monkeypatch, chunk: int):
    """Every motion, frame sides 16-66, sprites with visibility windows and the largest sides, painted in one
    chunk of frames or in chunks of 7: equal pixels."""
    monkeypatch.setattr(syn, "_PAINT_CHUNK", chunk)
    for seed in range(40):
        rng = np.random.default_rng([5, seed])
        size = (16, 32, 64, 66)[seed % 4]
        sprites = [syn.Sprite.random(rng, size, m) for m in ALL_MOTIONS]
        for sprite in sprites[::3]:  # some appear and vanish mid-clip (Charades-like)
            sprite.start, sprite.end = rng.uniform(0, 1.5), rng.uniform(1.0, 4.0)
        sprites[1].side = syn.SIDE_RANGE[1] * size  # the largest patch
        background = syn._background(rng, size)
        fps = (10.0, 12.0, 15.0, 29.97)[seed % 4]
        got = syn._render(sprites, background, 45, fps)
        want = oracle_render(sprites, background, 45, fps)
        assert got.shape == (45, size, size, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, want, err_msg=f"seed {seed}")
        assert (got != background).any()  # something was painted
    # a single frame (draw) and a sprite never visible
    sprite = syn.Sprite.random(np.random.default_rng(1), 64, "orbit")
    canvas, oracle = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)
    sprite.draw(canvas, 0.7)
    oracle_draw(sprite, oracle, 0.7)
    np.testing.assert_array_equal(canvas, oracle)
    sprite.start, sprite.end = 5.0, 6.0
    np.testing.assert_array_equal(
        syn._render([sprite], canvas * 0, 30, 10.0), np.zeros((30, 64, 64, 3), np.uint8)
    )


def test_dataset_renderers_equal_the_oracle(monkeypatch):
    """kinetics_clip (shots), ssv2_clip (reversed), charades_video and imagenet_image: the same frames as with
    the per-frame renderer, for the same seeds."""
    calls = [
        lambda rng: syn.kinetics_clip(rng, "green", "shrink", 64, 50, 15.0, 1.0),
        lambda rng: syn.kinetics_clip(rng, "red", "left", 32, 20, 10.0),
        lambda rng: syn.ssv2_clip(rng, 9, 64, 40, 12.0, 1.0),
        lambda rng: syn.ssv2_clip(rng, 4, 32, 20, 12.0),
        lambda rng: syn.charades_video(rng, [(0, 0.0, 2.0), (5, 0.5, 3.0), (11, 2.5, 4.0)], 64, 48, 12.0),
        lambda rng: syn.imagenet_image(rng, "blue", "large", 64),
    ]
    new = [[call(np.random.default_rng([9, k, s])) for s in range(3)] for k, call in enumerate(calls)]
    monkeypatch.setattr(syn, "_render", oracle_render)
    monkeypatch.setattr(syn.Sprite, "draw", oracle_draw)
    old = [[call(np.random.default_rng([9, k, s])) for s in range(3)] for k, call in enumerate(calls)]
    for k, (a, b) in enumerate(zip(new, old, strict=True)):
        for s, (x, y) in enumerate(zip(a, b, strict=True)):
            np.testing.assert_array_equal(x, y, err_msg=f"renderer {k}, seed {s}")


# ------------------------------------------------------------------------------------------ the encoder
def read_video(path: Path) -> tuple[np.ndarray, list[int], dict]:
    """PyAV: (T, H, W, 3) RGB frames, the indices of keyframe packets and the stream's codec and rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        keyframes = [
            i for i, packet in enumerate(p for p in container.demux(stream) if p.size) if packet.is_keyframe
        ]
        container.seek(0)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        info = {"codec": stream.codec_context.name, "rate": stream.average_rate}
    return frames, keyframes, info


def moving_clip(n: int = 40, size: int = 64) -> np.ndarray:
    return syn.kinetics_clip(np.random.default_rng(11), "blue", "right", size, n, 10.0)


@pytest.mark.parametrize(("suffix", "codec"), [(".mp4", "h264"), (".webm", "vp9")])
def test_encode_video_roundtrip_settings_and_keyframes(tmp_path: Path, suffix: str, codec: str):
    clip = moving_clip()
    path = tmp_path / f"clip{suffix}"
    syn.encode_video(clip, path, 10.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left
    frames, keyframes, info = read_video(path)
    assert frames.shape == clip.shape and info == {"codec": codec, "rate": 10}
    assert keyframes[:4] == [0, 10, 20, 30]  # a keyframe every round(fps) frames (x264 may add scene cuts)
    # against the frames' own yuv420p conversion (which alone costs ~2.2 levels of mean error on these edges)
    yuv = [av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p") for f in clip]
    reference = np.stack([f.to_ndarray(format="rgb24") for f in yuv])
    error = np.abs(frames.astype(np.int16) - reference).mean()
    assert error < (0.5 if codec == "h264" else 1.5), error  # crf 18 / crf 32: ~0.1 / ~0.8 measured
    assert probe(path) == {
        "codec": codec,
        "width": 64,
        "height": 64,
        "fps": "10/1",
        "frames": 40,
        "pix_fmt": "yuv420p",
    }  # the Debian ffmpeg CLI (reencode's reader) reads it too
    data = path.read_bytes()
    assert b"Lavc" not in data and not re.search(rb"Lavf\d", data)  # bit-exact: no library versions
    if codec == "h264":
        settings = re.search(rb"x264 - core \d+.*? options: ([^\x00]*)", data).group(1).decode()
        for option in ("threads=1", "keyint=10", "rc=crf", "crf=18.0", "mbtree=0", "subme=2", "ref=1"):
            assert option in settings.split(), (option, settings)  # veryfast is subme=2 ref=1
        mvhd = data.index(b"mvhd")
        assert data[mvhd + 8 : mvhd + 16] == bytes(8)  # creation and modification times are zero
        assert data.index(b"moov") < data.index(b"mdat")  # +faststart


def test_decord_reads_the_files(tmp_path: Path):
    decord = pytest.importorskip("decord")
    clip = moving_clip(30)
    for suffix in (".mp4", ".webm"):
        syn.encode_video(clip, tmp_path / f"c{suffix}", 10.0)
        reader = decord.VideoReader(str(tmp_path / f"c{suffix}"), num_threads=1)
        assert len(reader) == 30
        frames = reader.get_batch([0, 14, 29]).asnumpy()
        assert frames.shape == (3, 64, 64, 3)
        assert np.abs(frames.astype(np.int16) - clip[[0, 14, 29]]).mean() < 6.0


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_encode_video_equal_frames_equal_bytes(tmp_path: Path, suffix: str):
    """Repeated in-process encodes of one clip, between allocations that change the heap's layout, give one
    file (x264's mbtree broke this: 13 different files in 30 encodes); a different clip gives another file."""
    clip = syn.kinetics_clip(np.random.default_rng(0), "red", "grow", 64, 60, 15.0, 2.0)
    digests, keep = set(), []
    for k in range(8):
        keep = [*keep[-3:], np.ones(50_000 + 37_311 * k, np.uint8)]
        syn.encode_video(clip, tmp_path / f"{k}{suffix}", 15.0)
        digests.add(sha256_file(tmp_path / f"{k}{suffix}"))
    assert len(digests) == 1, digests
    # a fresh process (another run) writes the same bytes
    script = (
        "import sys, numpy as np; from pathlib import Path; from pipelines.datasets import synthetic as syn; "
        "clip = syn.kinetics_clip(np.random.default_rng(0), 'red', 'grow', 64, 60, 15.0, 2.0); "
        "syn.encode_video(clip, Path(sys.argv[1]), 15.0)"
    )
    fresh = tmp_path / f"fresh{suffix}"
    subprocess.run([sys.executable, "-c", script, str(fresh)], check=True, cwd=Path(__file__).parents[3])
    assert sha256_file(fresh) in digests
    syn.encode_video(clip[::-1].copy(), tmp_path / f"reversed{suffix}", 15.0)
    assert sha256_file(tmp_path / f"reversed{suffix}") not in digests


def test_encode_video_errors_name_the_file(tmp_path: Path, monkeypatch):
    frames = np.zeros((3, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=r"odd\.mp4: yuv420p needs even frame sides, got 32x33"):
        syn.encode_video(np.zeros((3, 33, 32, 3), np.uint8), tmp_path / "odd.mp4", 10.0)
    with pytest.raises(
        ValueError, match=r"f\.webm: frames must be \(T, H, W, 3\) uint8, got \(3, 32, 32, 3\) float32"
    ):
        syn.encode_video(frames.astype(np.float32), tmp_path / "f.webm", 10.0)
    with pytest.raises(ValueError, match=r"empty\.mp4: frames must be"):
        syn.encode_video(frames[:0], tmp_path / "empty.mp4", 10.0)
    with pytest.raises(ValueError, match=r"slow\.mp4: the frame rate must be"):
        syn.encode_video(frames, tmp_path / "slow.mp4", 1e-9)
    monkeypatch.setattr(syn, "X264_OPTIONS", {"preset": "no-such-preset"})
    with pytest.raises(RuntimeError, match=r"bad\.mp4: libx264 encoding failed: .*avcodec_open2"):
        syn.encode_video(frames, tmp_path / "bad.mp4", 10.0)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file left


# ------------------------------------------------------------------------------------ files on disk
@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    for fmt in ("kinetics", "charades", "ssv2", "imagenet"):
        syn.generate(fmt, root / fmt, TINY, workers=2)
    return root


def test_kinetics_like_files_and_csv(generated: Path):
    root = generated / "kinetics"
    header = (root / "annotations" / "validate.csv").read_text().splitlines()[0]
    assert header == "label,youtube_id,time_start,time_end,split"
    assert (root / "annotations" / "validate.csv").read_text().splitlines()[1].endswith(",validate")
    train, val = kinetics.read_items(root, "train"), kinetics.read_items(root, "val")
    assert (len(train), len(val)) == (TINY.train, TINY.val)
    assert not {i.id for i in train} & {i.id for i in val}
    for items in (train, val):  # the id quirk is always present
        assert items[0].extra["youtube_id"][0] == "-" and items[1].extra["youtube_id"][0] == "_"
    assert len(kinetics.class_names(root)) <= 12
    for item in train + val:
        assert item.extra == {"youtube_id": item.extra["youtube_id"], "trimmed_name": False, "found": True}
        assert (
            item.source
            == f"{'train' if item.split == 'train' else 'validate'}/{item.extra['youtube_id']}.mp4"
        )
        info = probe(root / item.source)
        assert info == {
            "codec": "h264",
            "width": 32,
            "height": 32,
            "fps": "10/1",
            "frames": 20,
            "pix_fmt": "yuv420p",
        }
        assert (
            item.start in (0.0, 1.0) and item.end == item.start + TINY.seconds
        )  # window inside the 2 s file


def test_kinetics_like_motion_matches_label_after_encoding(generated: Path):
    root = generated / "kinetics"
    names = kinetics.class_names(root)
    for item in kinetics.read_items(root, "train"):
        dx, _, darea = temporal_features(decode(root / item.source))
        name = names[item.label]
        colour = name.split()[0]
        frame = decode(root / item.source)[0]
        mask = object_mask(frame[None])[0]
        rgb = frame[mask].mean(0)
        assert int(np.argmax(rgb)) == list(syn.COLOURS).index(colour), (name, rgb)
        if name.endswith("left"):
            assert dx < -0.5
        elif name.endswith("right"):
            assert dx > 0.5
        elif name.endswith("growing"):
            assert darea > 0
        else:
            assert darea < 0


def test_charades_like(generated: Path):
    root = generated / "charades"
    adapter = get_adapter("charades")
    assert len(adapter.class_names(root)) == 12
    train, val = adapter.read_items(root, "train"), adapter.read_items(root, "val")
    assert (len(train), len(val)) == (TINY.train, TINY.val)
    assert not {i.id for i in train} & {i.id for i in val}
    for item in train + val:
        assert 1 <= len(item.actions) <= 3 and item.labels == tuple(sorted({a[0] for a in item.actions}))
        assert all(0 <= s < e <= TINY.seconds for _, s, e in item.actions)
        info = probe(root / item.source)
        assert (info["codec"], info["frames"], info["fps"]) == ("h264", 10, "10/1")
        # each action's object is visible only inside its window
        mask = object_mask(decode(root / item.source))
        visible = mask.any((1, 2))
        times = np.arange(len(visible)) / TINY.fps
        inside = np.zeros_like(visible)
        for _, s, e in item.actions:
            inside |= (times >= s) & (times < e)
        assert np.array_equal(visible, inside), (item.id, item.actions)


def test_ssv2_like(generated: Path):
    root = generated / "ssv2"
    adapter = get_adapter("ssv2")
    labels = json.loads((root / "labels.json").read_text())
    assert len(labels) == 10 and all("[" not in k for k in labels)
    train = adapter.read_items(root, "train")
    val = adapter.read_items(root, "val")
    assert not {i.id for i in train} & {i.id for i in val}
    for item in train + val:
        assert "[something]" in item.extra["template"]
        assert item.extra["text"] == item.extra["template"].replace(
            "[something]", item.extra["placeholders"][0]
        )
        info = probe(root / item.source)
        assert (info["codec"], info["frames"], info["width"]) == ("vp9", 10, 32)


def test_imagenet_like(generated: Path):
    from PIL import Image

    root = generated / "imagenet"
    adapter = get_adapter("imagenet")
    assert adapter.class_names(root) == [f"n{90000000 + k}" for k in range(6)]
    items = adapter.read_items(root, "train") + adapter.read_items(root, "val")
    assert len(items) == TINY.train + TINY.val
    for item in items:
        with Image.open(root / item.source) as im:
            assert (im.format, im.size, im.mode) == ("JPEG", (32, 32), "RGB")
        words = adapter.synset_words(root)[item.extra["synset"]]
        colour = words.split()[0]
        image = np.asarray(Image.open(root / item.source))
        mask = object_mask(image[None])[0]
        assert int(np.argmax(image[mask].mean(0))) == list(syn.COLOURS).index(colour)


def test_generation_is_deterministic_and_seeded(generated: Path, tmp_path: Path):
    for fmt in ("kinetics", "charades", "ssv2"):
        files = syn.generate(fmt, tmp_path / fmt, TINY, workers=1)
        assert files == sorted(
            p.relative_to(generated / fmt).as_posix() for p in (generated / fmt).rglob("*") if p.is_file()
        )
        for rel in files:
            assert sha256_file(tmp_path / fmt / rel) == sha256_file(generated / fmt / rel), rel
    other = syn.generate("imagenet", tmp_path / "other", dataclasses.replace(TINY, seed=4))
    changed = [rel for rel in other if rel.endswith(".JPEG") and (generated / "imagenet" / rel).exists()]
    assert any(
        sha256_file(tmp_path / "other" / r) != sha256_file(generated / "imagenet" / r) for r in changed
    )


def test_generate_rejects_bad_arguments(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown synthetic format 'kinetics700'"):
        syn.generate("kinetics700", tmp_path, TINY)
    with pytest.raises(ValueError, match=r"synthetic.size: video frames need an even side"):
        syn.generate("kinetics", tmp_path, dataclasses.replace(TINY, size=33))


@pytest.mark.parametrize("workers", [1, 2])
def test_generate_stops_at_an_encoding_failure_and_writes_no_annotation(tmp_path: Path, monkeypatch, workers):
    monkeypatch.setattr(syn, "VP9_OPTIONS", {"deadline": "no-such-deadline"})
    with pytest.raises(
        RuntimeError, match=r"20bn-something-something-v2/\d+\.webm: libvpx-vp9 encoding failed"
    ):
        syn.generate("ssv2", tmp_path, TINY, workers=workers)
    assert not list(tmp_path.rglob("*.json"))  # annotations come last: none names a missing file
    assert not list(tmp_path.rglob("*.webm"))  # every job failed; no temporary file left either
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_paint_rejects_unordered_times_and_oversized_sprites():
    sprite = syn.Sprite.random(np.random.default_rng(0), 32, "left")
    sprite.start, sprite.end = 0.0, 0.5
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=r"times must increase; the sprite shows in frames \[0, 2, 3\]"):
        sprite.paint(frames, [0.0, 1.0, 0.2, 0.3])
    sprite.side = 40.0
    with pytest.raises(ValueError, match="a 40 px sprite does not fit a 32x32 frame"):
        sprite.paint(frames, [0.0, 0.1, 0.2, 0.3])
    assert not frames.any()  # nothing painted by either
