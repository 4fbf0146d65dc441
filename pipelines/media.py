"""Probe a video: what a media file holds, or a :class:`ProbeError` saying why it is unusable.

Two probes give the same :class:`VideoInfo` for a good file:
- :func:`probe_video` runs ffprobe (a subprocess, killed after ``timeout`` seconds): the authoritative answer
  and the reason for a bad file;
- :func:`probe_video_fast` reads the header with PyAV in a long-lived helper process (no process launch per
  file: a few ms instead of ~50 ms; a crash or hang stays in the helper) and hands anything unusual (an error, no video stream, no frame count, no duration) to
  :func:`probe_video`, so a bad file gets ffprobe's reason word for word. It refuses a frame larger than
  ``max_side`` before decoding anything (:class:`MediaCapError`).

:func:`probe_video` answers, for the first video stream of a file: codec, coded size, display size (after
the rotation that ffmpeg applies when decoding), frame rate (``avg_frame_rate``, frames per second), frame
count, duration in seconds and rotation in degrees. It refuses, with the file and the reason in the message:
a missing file, a zero-byte file, a file that is not media (a text file named ``.mp4``), a truncated
container (``moov atom not found``), a file with no video stream (audio only) and a stream with no frames.

A container whose index is intact but whose data is cut short (an mp4 written with ``+faststart`` and then
truncated) still probes; the re-encode stage finds it by decoding (see ``pipelines.reencode``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "MediaCapError",
    "ProbeError",
    "VideoInfo",
    "parse_rate",
    "probe_video",
    "probe_video_fast",
    "pyav_info",
]

PROBE_TIMEOUT = 30.0  # seconds, default for one probe


class ProbeError(ValueError):
    """A file cannot be used as a video: the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class MediaCapError(ProbeError):
    """A file is over a cap on untrusted input (resolution); the message names the file, value and cap."""


@dataclass(frozen=True)
class VideoInfo:
    """The first video stream of a file, as ffprobe reports it.

    ``width`` and ``height`` are the coded size in pixels; ``display_width`` and ``display_height`` are the
    size after rotation (what ffmpeg's decoder outputs, since it applies the rotation). ``fps`` is the
    average frame rate in frames per second, ``frames`` the number of frames (from the stream header, or by
    counting packets when the container does not store it, as in Matroska/WebM), ``duration`` the stream
    duration in seconds (the container's when the stream has none), ``rotation`` the display-matrix
    rotation in degrees (0, 90, 180, 270), ``frames_counted`` whether ``frames`` came from counting.
    """

    path: str
    codec: str
    width: int
    height: int
    fps: float
    frames: int
    duration: float
    rotation: int
    pix_fmt: str
    frames_counted: bool = False

    @property
    def display_width(self) -> int:
        return self.height if self.rotation in (90, 270) else self.width

    @property
    def display_height(self) -> int:
        return self.width if self.rotation in (90, 270) else self.height


def parse_rate(text: str | None) -> float:
    """``"30000/1001"`` -> 29.97..., ``"25"`` -> 25.0; ``"0/0"``, empty or ``None`` -> 0.0."""
    if not text:
        return 0.0
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(value)


def _float(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _rotation(stream: dict) -> int:
    """Display rotation in degrees, normalised to 0/90/180/270 (side data of ffmpeg >= 5, or the old tag)."""
    angle: float | None = None
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            angle = _float(side["rotation"])
            break
    if angle is None:
        angle = _float((stream.get("tags") or {}).get("rotate"))
    if angle is None:
        return 0
    return round(angle) % 360


# ISO base media (mp4/mov) box types that can open a file: a file starting with one of them is media.
_ISO_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid"}


def _head(path: Path, n: int = 16) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


class _FFprobeFailed(Exception):
    def __init__(self, stderr: bytes):
        self.stderr = stderr


def _ffprobe(path: Path, timeout: float, *args: str) -> dict:
    """``ffprobe -show_format -show_streams -of json [args] <path>`` (as ffmpeg-python's ``probe``), with a
    timeout: the process is killed and :class:`ProbeError` raised after ``timeout`` seconds."""
    cmd = ["ffprobe", "-show_format", "-show_streams", "-of", "json", *args, str(path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ProbeError(path, f"ffprobe took longer than {timeout:g} s (probe_timeout_s)") from None
    if proc.returncode:
        raise _FFprobeFailed(proc.stderr)
    return json.loads(proc.stdout.decode("utf-8", "replace"))


def _ffprobe_reason(path: Path, exc: _FFprobeFailed) -> str:
    text = (exc.stderr or b"").decode("utf-8", "replace").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if any("moov atom not found" in line for line in lines):
        head = _head(path)
        if head[4:8] in _ISO_BOXES:
            return "truncated or incomplete mp4 (moov atom not found)"
        return f"not a media file (starts with {head[:12]!r})"
    if lines:
        # ffprobe ends with "<path>: <reason>"; keep the reason, drop the (absolute) path.
        last = lines[-1]
        return "not a readable media file: " + last.rsplit(": ", 1)[-1]
    return "not a readable media file (ffprobe failed)"


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ProbeError(path, "missing file")
    if not path.is_file():
        raise ProbeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise ProbeError(path, "zero-byte file")


def probe_video(
    path: str | os.PathLike, count_frames: bool = True, timeout: float = PROBE_TIMEOUT
) -> VideoInfo:
    """Probe the first video stream of ``path`` with ffprobe.

    Args:
        path: the file; probed by its absolute path (names may start with ``-``).
        count_frames: when the container stores no frame count, count the stream's packets (reads the file).
        timeout: seconds each ffprobe run may take before it is killed.

    Raises:
        ProbeError: missing, zero-byte, not media, truncated, no video stream, no frames, or a timeout.
    """
    path = Path(path).absolute()
    _check_file(path)
    try:
        info = _ffprobe(path, timeout)
    except _FFprobeFailed as exc:
        raise ProbeError(path, _ffprobe_reason(path, exc)) from None
    streams = info.get("streams") or []
    videos = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    if not videos:
        kinds = sorted({str(s.get("codec_type")) for s in streams})
        what = ("only " + "/".join(kinds) + " streams") if kinds else "no streams"
        raise ProbeError(path, f"no video stream ({what})")
    stream = videos[0]
    width, height = int(stream.get("width") or 0), int(stream.get("height") or 0)
    if width <= 0 or height <= 0:
        raise ProbeError(path, f"video stream has no frame size ({width}x{height})")
    fps = parse_rate(stream.get("avg_frame_rate")) or parse_rate(stream.get("r_frame_rate"))
    duration = _float(stream.get("duration"))
    if duration is None:
        duration = _float((info.get("format") or {}).get("duration"))
    frames_counted = False
    frames = int(_float(stream.get("nb_frames")) or 0)
    if frames <= 0 and count_frames:
        frames = _count_packets(path, int(stream.get("index", 0)), timeout)
        frames_counted = True
    if frames <= 0 and (count_frames or duration is None or duration <= 0):
        raise ProbeError(path, "video stream has no frames")
    if duration is None or duration <= 0:
        if fps > 0 and frames > 0:
            duration = frames / fps
        else:
            raise ProbeError(path, "video stream has no duration")
    return VideoInfo(
        path=str(path),
        codec=str(stream.get("codec_name") or "unknown"),
        width=width,
        height=height,
        fps=fps,
        frames=frames,
        duration=float(duration),
        rotation=_rotation(stream),
        pix_fmt=str(stream.get("pix_fmt") or "unknown"),
        frames_counted=frames_counted,
    )


def _count_packets(path: Path, index: int, timeout: float) -> int:
    """Count the packets of stream ``index`` (one per frame for video) without decoding."""
    try:
        info = _ffprobe(path, timeout, "-count_packets", "-select_streams", str(index))
    except _FFprobeFailed as exc:
        raise ProbeError(path, _ffprobe_reason(path, exc)) from None
    streams = info.get("streams") or []
    return int(_float(streams[0].get("nb_read_packets")) or 0) if streams else 0


def pyav_info(path: Path, timeout: float, max_side: int | None) -> VideoInfo | None:
    """The first video stream read with PyAV in this process, or ``None`` when anything is unusual (ffprobe
    then decides). :func:`probe_video_fast` runs it in a helper process (:mod:`pipelines.probe`)."""
    import av

    try:
        with av.open(str(path), timeout=timeout) as container:
            videos = [
                s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
            ]
            if not videos:
                return None
            stream = videos[0]
            cc = stream.codec_context
            width, height = int(cc.width or 0), int(cc.height or 0)
            if width <= 0 or height <= 0:
                return None
            if max_side is not None and max(width, height) > max_side:
                raise MediaCapError(
                    path, f"resolution {width}x{height} is over the cap of {max_side} pixels (max_side)"
                )
            rate = stream.average_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                return None
            duration = round(duration, 6)  # ffprobe prints 6 decimals: the same number either way
            frames = int(stream.frames or 0)
            if duration <= 0 or fps <= 0:
                return None
            cc.thread_count = 1
            first = next(container.decode(stream), None)  # the display rotation is side data of the frames
            if first is None:
                return None
            rotation = round(first.rotation) % 360
            return VideoInfo(
                path=str(path),
                codec=str(cc.name or "unknown"),
                width=width,
                height=height,
                fps=fps,
                frames=frames,
                duration=duration,
                rotation=rotation,
                pix_fmt=str(cc.format.name if cc.format is not None else "unknown"),
            )
    except MediaCapError:
        raise
    except Exception:  # any PyAV error: ffprobe gives the reason
        return None


def probe_video_fast(
    path: str | os.PathLike,
    count_frames: bool = True,
    timeout: float = PROBE_TIMEOUT,
    max_side: int | None = None,
) -> VideoInfo:
    """:func:`probe_video`'s answer for ``path``, read with PyAV in a long-lived helper process when the file
    is ordinary (:mod:`pipelines.probe`: no process launch per file, and a crash or hang on a hostile file
    stays in the helper).

    A file that PyAV cannot open, or whose stream lacks a size, rate, duration or (with ``count_frames``)
    a stored frame count, or on which the helper died, is probed with ffprobe instead, so errors and
    counted frames are ffprobe's. A helper that takes longer than ``timeout`` seconds is killed.

    Raises:
        MediaCapError: the frame is larger than ``max_side`` pixels on a side (checked before any decoding).
        ProbeError: as :func:`probe_video`.
    """
    path = Path(path).absolute()
    _check_file(path)
    from pipelines.probe import probe_in_helper

    info = probe_in_helper(path, timeout, max_side)
    if info is not None and (info.frames > 0 or not count_frames):
        return info
    info = probe_video(path, count_frames=count_frames, timeout=timeout)
    if max_side is not None and max(info.width, info.height) > max_side:
        raise MediaCapError(
            path, f"resolution {info.width}x{info.height} is over the cap of {max_side} pixels (max_side)"
        )
    return info
