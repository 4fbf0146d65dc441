"""Verify an encoded video: the pinned format, and not cut short (a truncated source decodes to less).

Units: seconds, frames per second, pixels.
"""

from __future__ import annotations

import math
from pathlib import Path

from pipelines.encode import ERROR_WORDS, ItemFailure, num
from pipelines.media import ProbeError, VideoInfo, probe_video_fast
from tubevit.config.data import DatasetConfig

__all__ = ["verify_video"]


def verify_video(
    path: Path,
    cfg: DatasetConfig,
    window: list[float] | None,
    src: VideoInfo,
    expected: float,
    stderr: list[str],
    timeout: float,
) -> VideoInfo:
    """Probe the encoded file: h264 yuv420p, the fps, frames > 0, no rotation, short side N, not cut short."""
    try:
        out = probe_video_fast(path, count_frames=True, timeout=timeout)
    except ProbeError as exc:
        if window is not None and ("no video stream" in exc.reason or "no frames" in exc.reason):
            raise ItemFailure(
                "trim",
                f"no frames in the trim window [{num(window[0])}, {num(window[1])}] s "
                f"(video duration {num(src.duration)} s)",
            ) from None
        raise ItemFailure("verify", f"re-encoded file is unreadable: {exc.reason}") from None
    problems = []
    if out.codec != "h264":
        problems.append(f"codec {out.codec}, expected h264")
    if out.pix_fmt != "yuv420p":
        problems.append(f"pixel format {out.pix_fmt}, expected yuv420p")
    if not math.isclose(out.fps, cfg.fps, rel_tol=1e-4):
        problems.append(f"fps {out.fps:g}, expected {cfg.fps:g}")
    if out.rotation != 0:
        problems.append(f"rotation {out.rotation}, expected 0")
    if min(out.width, out.height) != cfg.short_side:
        problems.append(f"size {out.width}x{out.height}, expected short side {cfg.short_side}")
    if problems:
        raise ItemFailure("verify", "re-encoded file is wrong: " + "; ".join(problems))
    # A source whose index is intact but whose data is cut short (truncated download) decodes to less video
    # than it declares; ffmpeg still exits 0. Tolerance: 10% or 0.5 s, whichever is larger.
    got = out.frames / cfg.fps
    if got < expected - max(0.5, 0.1 * expected):
        detail = " | ".join(dict.fromkeys(ln for ln in stderr if any(w in ln.lower() for w in ERROR_WORDS)))
        raise ItemFailure(
            "truncated",
            f"truncated or corrupt source: decoded {got:.2f} s of the {expected:.2f} s it declares"
            + (f" ({detail})" if detail else ""),
        )
    return out
