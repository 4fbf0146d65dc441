"""pipelines.media: ffprobe results of good files, and the reason for each kind of bad file."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pipelines.media import MediaCapError, ProbeError, parse_rate, probe_video, probe_video_fast


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    src = "testsrc=size=64x48:rate=30:duration=2"
    x264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-threads", "1"]
    ffmpeg("-f", "lavfi", "-i", src, *x264, str(d / "good.mp4"))
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=12:duration=2", "-c:v", "libvpx-vp9", "-pix_fmt", "yuv420p",
           "-deadline", "realtime", "-cpu-used", "8", "-fflags", "+bitexact", str(d / "good.webm"))  # fmt: skip
    ffmpeg("-i", str(d / "good.mp4"), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(d / "rotated.mp4"))
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(d / "audio.mp4"))
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=30000/1001:duration=1.3", *x264, str(d / "ntsc.mp4"))
    (d / "zero.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n")
    data = (d / "good.mp4").read_bytes()  # moov at the end (no +faststart): cutting it loses the index
    (d / "cut.mp4").write_bytes(data[: len(data) // 2])
    (d / "-dash.mp4").write_bytes(data)
    return d


def test_probe_h264_mp4(media):
    info = probe_video(media / "good.mp4")
    assert (info.codec, info.width, info.height, info.pix_fmt) == ("h264", 64, 48, "yuv420p")
    assert info.fps == 30.0 and info.frames == 60 and info.duration == pytest.approx(2.0)
    assert info.rotation == 0 and not info.frames_counted
    assert info.path == str((media / "good.mp4").absolute())


def test_probe_webm_counts_packets_when_the_container_has_no_frame_count(media):
    info = probe_video(media / "good.webm")
    assert (info.codec, info.fps, info.frames) == ("vp9", 12.0, 24)
    assert info.frames_counted
    assert info.duration == pytest.approx(2.0)


def test_probe_rotation_swaps_the_display_size(media):
    info = probe_video(media / "rotated.mp4")
    assert info.rotation in (90, 270)
    assert (info.width, info.height) == (64, 48)
    assert (info.display_width, info.display_height) == (48, 64)


def test_probe_a_name_starting_with_dash(media, monkeypatch):
    monkeypatch.chdir(media)  # a relative "-dash.mp4" would be read by ffprobe as an option
    assert probe_video(Path("-dash.mp4")).frames == 60


BAD = [
    ("missing.mp4", "missing file"),
    ("zero.mp4", "zero-byte file"),
    ("text.mp4", "not a media file (starts with b'this is not '"),
    ("cut.mp4", "truncated or incomplete mp4 (moov atom not found)"),
    ("audio.mp4", "no video stream (only audio streams)"),
]


@pytest.mark.parametrize(("name", "reason"), BAD)
def test_probe_refuses_bad_files_naming_file_and_reason(media, name, reason):
    with pytest.raises(ProbeError) as exc:
        probe_video(media / name)
    assert exc.value.reason.startswith(reason)
    assert str(exc.value).startswith(str((media / name).absolute()) + ": ")


def test_parse_rate():
    assert parse_rate("30000/1001") == pytest.approx(29.97002997)
    assert parse_rate("25") == 25.0
    assert parse_rate("0/0") == 0.0 and parse_rate("") == 0.0 and parse_rate(None) == 0.0


@pytest.mark.parametrize("name", ["good.mp4", "good.webm", "rotated.mp4", "-dash.mp4", "ntsc.mp4"])
def test_fast_probe_equals_ffprobe(media, name):
    """PyAV in-process reads the same facts as ffprobe (frames: the stored count, none for WebM)."""
    fast = probe_video_fast(media / name, count_frames=False)
    assert fast == probe_video(media / name, count_frames=False)
    if name == "rotated.mp4":
        assert (fast.rotation, fast.display_width, fast.display_height) in [(90, 48, 64), (270, 48, 64)]
    if name == "ntsc.mp4":
        assert fast.fps == pytest.approx(30000 / 1001) and fast.frames == 39


def test_fast_probe_counts_frames_with_ffprobe_when_the_container_stores_none(media):
    info = probe_video_fast(media / "good.webm", count_frames=True)
    assert (info.frames, info.frames_counted) == (24, True)


@pytest.mark.parametrize(("name", "reason"), BAD)
def test_fast_probe_gives_ffprobes_reason_for_bad_files(media, name, reason):
    with pytest.raises(ProbeError) as exc:
        probe_video_fast(media / name)
    assert exc.value.reason.startswith(reason)
    assert str(exc.value).startswith(str((media / name).absolute()) + ": ")


def test_fast_probe_refuses_a_frame_over_max_side(media):
    with pytest.raises(MediaCapError) as exc:
        probe_video_fast(media / "good.mp4", max_side=63)
    assert exc.value.reason == "resolution 64x48 is over the cap of 63 pixels (max_side)"
    assert probe_video_fast(media / "good.mp4", max_side=64).width == 64


def test_ffprobe_is_killed_after_its_timeout(media, tmp_path, monkeypatch):
    """A hung ffprobe (here a stand-in that sleeps) is killed: the file fails with the reason, in time."""
    fake = tmp_path / "bin" / "ffprobe"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    t0 = time.monotonic()
    with pytest.raises(ProbeError) as exc:
        probe_video(media / "good.mp4", timeout=0.5)
    assert exc.value.reason == "ffprobe took longer than 0.5 s (probe_timeout_s)"
    assert time.monotonic() - t0 < 10


def test_fast_probe_runs_in_a_helper_process_that_is_reused(media):
    from pipelines import probe

    probe._close_all()
    probe_video_fast(media / "good.mp4")
    [helper] = probe._idle
    assert helper.proc.pid != os.getpid() and helper.proc.poll() is None
    probe_video_fast(media / "rotated.mp4")
    assert probe._idle == [helper]  # the same process answered again


def test_a_crashed_helper_is_replaced_and_the_file_goes_to_ffprobe(media):
    """A helper that dies (as on a file that crashes the demuxer) costs that file a fallback, not the stage."""
    from pipelines import probe

    probe._close_all()
    probe_video_fast(media / "good.mp4")
    [helper] = probe._idle
    helper.proc.kill()  # it dies; the next probe takes it, finds it dead and starts a new one
    helper.proc.wait()
    assert probe_video_fast(media / "good.mp4") == probe_video(media / "good.mp4")
    [fresh] = probe._idle
    assert fresh is not helper and fresh.proc.poll() is None
    crashing = probe._take()  # now one dies in the middle of a request: the answer is "ask ffprobe"
    fifo = media / "blocks.fifo"
    os.mkfifo(fifo)  # opening a FIFO without a writer blocks the helper
    try:
        threading.Timer(0.5, crashing.proc.kill).start()
        probe._give_back(crashing)
        assert probe.probe_in_helper(fifo, 30.0, None) is None
    finally:
        fifo.unlink()
    assert probe._idle == []


def test_a_hung_helper_is_killed_after_the_timeout(media):
    from pipelines import probe

    probe._close_all()
    fifo = media / "hangs.fifo"
    os.mkfifo(fifo)
    try:
        t0 = time.monotonic()
        with pytest.raises(ProbeError) as exc:
            probe.probe_in_helper(fifo, 0.5, None)
        assert time.monotonic() - t0 < 10
    finally:
        fifo.unlink()
    assert exc.value.reason == "probe took longer than 0.5 s (probe_timeout_s)"
    assert probe._idle == []  # the hung helper was killed, not kept
