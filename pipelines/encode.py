"""Encode one item: the pinned ffmpeg command (video) or Pillow (images), and the errors of one item.

- :func:`encode_spec` / :func:`ffmpeg_command`: the pinned re-encode command (see :mod:`pipelines.reencode`);
- :func:`probe_source`, :func:`plan_trim`, :func:`encode_video`: probe a source, plan its trim window,
  run ffmpeg into a temporary file (with a timeout);
- :func:`encode_image`: EXIF orientation, RGB, short side N (bicubic), JPEG;
- :class:`ItemFailure`: why one item fails (``kind`` groups reasons), caught per item by the stage.

Units: seconds, frames per second, pixels.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import ffmpeg

from pipelines.common import TMP_MARK
from pipelines.datasets.base import Item
from pipelines.media import MediaCapError, ProbeError, VideoInfo, probe_video_fast
from tubevit.config.data import DatasetConfig, ReencodeConfig

__all__ = [
    "ERROR_WORDS",
    "ItemFailure",
    "codec_params",
    "encode_image",
    "encode_spec",
    "encode_video",
    "ffmpeg_command",
    "gop",
    "num",
    "plan_trim",
    "probe_source",
    "run_ffmpeg",
    "scale_filter",
    "temporary",
    "trim_window",
    "video_filter",
]


class ItemFailure(Exception):
    """One item cannot be re-encoded; ``kind`` groups reasons (missing, unreadable, trim, past_end, ...)."""

    def __init__(self, kind: str, reason: str):
        self.kind = kind
        self.reason = reason
        super().__init__(reason)


def num(x: float) -> str:
    """A number as ffmpeg reads it, stable across runs: ``15`` not ``15.0``; at most 6 decimals."""
    text = f"{x:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def gop(fps: float) -> int:
    """The keyframe interval ``-g``: one keyframe about every second, in frames."""
    return max(1, round(fps))


def scale_filter(display_width: int, display_height: int, short_side: int) -> str:
    """``scale=-2:N`` for landscape or square sources, ``scale=N:-2`` for portrait (display size, pixels)."""
    if display_width >= display_height:
        return f"scale=-2:{short_side}"
    return f"scale={short_side}:-2"


def video_filter(fps: float, scale: str) -> str:
    return f"fps={num(fps)},{scale},setsar=1,format=yuv420p"


def codec_params(fps: float, preset: str, crf: int) -> dict[str, Any]:
    """The output options of the pinned command other than the filter (recorded in every sidecar)."""
    return {
        "map": "0:v:0",
        "an": None,
        "sn": None,
        "dn": None,
        "c:v": "libx264",
        "preset": preset,
        "crf": crf,
        "g": gop(fps),
        "threads": 1,
        "fflags": "+bitexact",
        "map_metadata": "-1",
        "movflags": "+faststart",
    }


def encode_spec(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    fps: float,
    scale: str,
    preset: str,
    crf: int,
    start: float | None = None,
    length: float | None = None,
):
    """The ffmpeg-python spec of the pinned re-encode command (docs/design.md "Re-encode").

    Args:
        src: the source file; made absolute (ids, hence names, may start with ``-``).
        dst: the output file (its ``.mp4`` suffix picks the muxer); made absolute.
        fps: output frame rate (frames per second); also the keyframe interval ``-g`` (rounded).
        scale: the scale filter, from :func:`scale_filter`.
        preset, crf: x264 preset and constant rate factor.
        start, length: the trim window in seconds (input-side ``-ss``/``-t``, accurate seek), or ``None``.
    """
    input_options: dict[str, Any] = {"threads": 1}
    if start is not None:
        if length is None:
            raise ValueError("a trim needs both start and length")
        input_options.update(ss=num(start), t=num(length))
    stream = ffmpeg.input(str(Path(src).absolute()), **input_options)
    options = {**codec_params(fps, preset, crf), "vf": video_filter(fps, scale)}
    return stream.output(str(Path(dst).absolute()), **options).global_args("-nostdin")


def ffmpeg_command(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    fps: float,
    scale: str,
    preset: str,
    crf: int,
    start: float | None = None,
    length: float | None = None,
    cmd: str = "ffmpeg",
) -> list[str]:
    """The argv the stage runs for one video (the benchmark runs the same list directly)."""
    spec = encode_spec(src, dst, fps=fps, scale=scale, preset=preset, crf=crf, start=start, length=length)
    return spec.compile(cmd=cmd)


def temporary(final: Path) -> Path:
    """``.<name>.tmp-<uuid><suffix>``: matches the stale-temporary pattern and keeps the media suffix."""
    return final.with_name(f".{final.name}{TMP_MARK}{uuid.uuid4().hex}{final.suffix}")


def trim_window(item: Item, cfg: DatasetConfig) -> list[float] | None:
    """The trim window [start, end] in seconds, or None (whole file: trimmed sources, or no window)."""
    if cfg.trimmed or (item.start is None and item.end is None):
        return None
    start = 0.0 if item.start is None else float(item.start)
    end = math.inf if item.end is None else float(item.end)
    return [start, end]


POINTER = re.compile(r" @ 0x[0-9a-fA-F]+")
ERROR_WORDS = (
    "error",
    "invalid",
    "partial file",
    "failed",
    "not found",
    "cannot",
    "could not",
    "no such",
    "corrupt",
)


def clean_stderr(stderr: bytes, src: Path, tmp: Path) -> list[str]:
    """ffmpeg's stderr lines without run-specific text (pointers, the temporary's uuid, absolute paths)."""
    text = stderr.decode("utf-8", "replace").replace(str(tmp), "<output>").replace(str(src), "<source>")
    return [POINTER.sub("", ln.strip()) for ln in text.splitlines() if ln.strip()]


def ffmpeg_reason(lines: list[str]) -> str:
    """The error lines of ffmpeg's log (deduplicated, last 3), or its last lines when none looks like one."""
    errors = [ln for ln in lines if any(w in ln.lower() for w in ERROR_WORDS)]
    unique = list(dict.fromkeys(errors or lines[-3:]))
    return " | ".join(unique[-3:])[:500]


def run_ffmpeg(spec, src: Path, tmp: Path, timeout: float) -> list[str]:
    """Run an ffmpeg-python spec; returns its cleaned stderr lines. Raises ItemFailure on failure or timeout."""
    proc = ffmpeg.run_async(spec, pipe_stdout=True, pipe_stderr=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise ItemFailure("encode", f"ffmpeg took longer than {timeout:g} s (max_encode_s)") from None
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    lines = clean_stderr(err, src, tmp)
    if proc.returncode:
        reason = f"ffmpeg failed (exit {proc.returncode}): {ffmpeg_reason(lines)}"
        if any("partial file" in ln for ln in lines):  # the data ends before the index says it does
            raise ItemFailure("truncated", f"truncated source (partial file); {reason}")
        raise ItemFailure("encode", reason)
    return lines


def probe_source(src: Path, rcfg: ReencodeConfig) -> VideoInfo:
    """Probe the source (PyAV in a helper process; ffprobe, with a timeout, for a file PyAV finds unusual,
    which then gets ffprobe's reason). A frame over ``rcfg.max_side`` fails with kind ``cap`` before any decoding."""
    try:
        return probe_video_fast(src, count_frames=False, timeout=rcfg.probe_timeout_s, max_side=rcfg.max_side)
    except MediaCapError as exc:
        raise ItemFailure("cap", exc.reason) from None
    except ProbeError as exc:
        kind = "missing" if exc.reason == "missing file" else "unreadable"
        raise ItemFailure(kind, exc.reason) from None


def plan_trim(
    info: VideoInfo, window: list[float] | None, rcfg: ReencodeConfig
) -> tuple[float | None, float | None, float]:
    """``(start, length, expected)`` in seconds: the input-side ``-ss``/``-t`` (``None`` for the whole file) and
    the seconds of video the output should hold. Refuses an empty window (``trim``), one that starts past
    the end (``past_end``) and more than ``rcfg.max_duration_s`` seconds (``cap``)."""
    start = length = None
    expected = info.duration
    if window is not None:
        start, end = window
        if not end > start:
            raise ItemFailure("trim", f"empty trim window [{num(start)}, {num(end)}] s")
        if start >= info.duration:
            raise ItemFailure(
                "past_end",
                f"trim window [{num(start)}, {num(end)}] s starts past the end of the video "
                f"(duration {num(info.duration)} s)",
            )
        length = min(end, info.duration) - start
        expected = length
    if expected > rcfg.max_duration_s:
        raise ItemFailure(
            "cap",
            f"{expected:.1f} s of video to encode is over the cap of {rcfg.max_duration_s:g} s (max_duration_s)",
        )
    return start, length, expected


def encode_video(
    src: Path,
    dst: Path,
    info: VideoInfo,
    cfg: DatasetConfig,
    rcfg: ReencodeConfig,
    start: float | None,
    length: float | None,
    expected: float,
) -> list[str]:
    """Run the pinned command from ``src`` to ``dst`` (a temporary ``.mp4``). Returns ffmpeg's cleaned stderr.

    The timeout is ``min(rcfg.max_encode_s, 120 s + 10 x expected)``: the header's duration is untrusted,
    so it is capped (``max_duration_s``, checked by :func:`plan_trim`) and so is the timeout.
    """
    scale = scale_filter(info.display_width, info.display_height, cfg.short_side)
    spec = encode_spec(
        src, dst, fps=cfg.fps, scale=scale, preset=rcfg.preset, crf=rcfg.crf, start=start, length=length
    )
    return run_ffmpeg(spec, src, dst, timeout=min(rcfg.max_encode_s, 120.0 + 10.0 * expected))


def encode_image(src: Path, final: Path, cfg: DatasetConfig, rcfg: ReencodeConfig) -> dict:
    """PIL: EXIF orientation, RGB, short side N (bicubic), JPEG at ``jpeg_quality``; written atomically."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if src.stat().st_size == 0:
        raise ItemFailure("unreadable", "zero-byte file")
    try:
        with Image.open(src) as img:
            source_format, source_mode = img.format or "unknown", img.mode
            if max(img.size) > rcfg.max_side:
                w, h = img.size
                raise ItemFailure(
                    "cap", f"resolution {w}x{h} is over the cap of {rcfg.max_side} pixels (max_side)"
                )
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.new("RGB", rgba.size, (255, 255, 255))
                img.paste(rgba, mask=rgba.getchannel("A"))
            else:
                img = img.convert("RGB")
            w, h = img.size
            if min(w, h) < 1:
                raise ItemFailure("unreadable", f"image has no pixels ({w}x{h})")
            n = cfg.short_side
            size = (n, max(1, round(h * n / w))) if w <= h else (max(1, round(w * n / h)), n)
            out = img.resize(size, Image.Resampling.BICUBIC)
    except UnidentifiedImageError:
        raise ItemFailure("unreadable", "not an image file (Pillow cannot identify it)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ItemFailure("unreadable", f"unreadable image: {exc}") from None
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(final)
    try:
        out.save(tmp, format="JPEG", quality=rcfg.jpeg_quality)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    media = {"fps": None, "frames": 1, "duration": None, "width": size[0], "height": size[1]}
    quality = {
        "source_format": source_format,
        "source_mode": source_mode,
        "source_width": w,
        "source_height": h,
    }
    return {"media": media, "quality": quality}
