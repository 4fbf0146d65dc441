"""PyAV probes in a long-lived helper process: fast like in-process, isolated like ffprobe.

:func:`pipelines.media.probe_video_fast` reads a file's header with PyAV. Doing that in the stage's own
process saves the ~50 ms launch of an ffprobe per file, but a hostile file that crashes or hangs the
demuxer or decoder would take the stage with it, on every rerun. So the reading happens here, in helper
processes (``python -m pipelines.probe``) that start once and answer one request per line:

- request: ``{"path": <absolute path>, "timeout": <s>, "max_side": <pixels or null>}``;
- answer: ``{"info": {<VideoInfo fields>}}``, ``{"info": null}`` (unusual: ffprobe decides) or
  ``{"cap": <reason>}`` (a frame over ``max_side``).

A helper that does not answer within the timeout is killed (:class:`~pipelines.media.ProbeError`, "probe took
longer than ..."); one that dies (a crash on a hostile file) is replaced, and the file goes to ffprobe,
which gives the reason. Idle helpers are kept for the next probe (one per concurrent caller) and closed at
exit.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

from pipelines.media import MediaCapError, ProbeError, VideoInfo, pyav_info

log = logging.getLogger(__name__)

__all__ = ["probe_in_helper", "serve"]

STARTUP_TIMEOUT = 60.0  # seconds a new helper may take to import PyAV and say it is ready
READY = b"ready\n"


class _HelperGone(Exception):
    """The helper exited (crashed) or could not start."""


class _Helper:
    """One helper process and its pipes."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[1])  # the folder holding the pipelines package
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.probe"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.buffer = b""
        if self._read_line(time.monotonic() + STARTUP_TIMEOUT) + b"\n" != READY:
            self.close()
            raise _HelperGone("the probe helper did not start")

    def _read_line(self, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise _HelperGone(f"the probe helper exited (status {self.proc.poll()})")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def ask(self, request: dict, timeout: float) -> dict:
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise _HelperGone("the probe helper exited") from None
        return json.loads(self._read_line(time.monotonic() + timeout))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                f.close()


_idle: list[_Helper] = []
_lock = threading.Lock()


def _take() -> _Helper:
    with _lock:
        while _idle:
            helper = _idle.pop()
            if helper.proc.poll() is None:
                return helper
            helper.close()
    return _Helper()


def _give_back(helper: _Helper) -> None:
    with _lock:
        _idle.append(helper)


@atexit.register
def _close_all() -> None:
    with _lock:
        while _idle:
            _idle.pop().close()


def probe_in_helper(path: Path, timeout: float, max_side: int | None) -> VideoInfo | None:
    """Read ``path``'s first video stream with PyAV in a helper process.

    Returns:
        The :class:`VideoInfo`, or ``None`` when the file is unusual or the helper died on it (ffprobe
        then decides and gives the reason).

    Raises:
        MediaCapError: the frame is larger than ``max_side`` pixels.
        ProbeError: no answer within ``timeout`` seconds (the helper is killed).
    """
    try:
        helper = _take()
    except (_HelperGone, OSError) as exc:
        log.warning("%s: %s; probing with ffprobe", path, exc)
        return None
    try:
        answer = helper.ask({"path": str(path), "timeout": timeout, "max_side": max_side}, timeout)
    except TimeoutError:
        helper.close()
        raise ProbeError(path, f"probe took longer than {timeout:g} s (probe_timeout_s)") from None
    except _HelperGone as exc:
        helper.close()
        log.warning("%s: %s while probing it; probing with ffprobe", path, exc)
        return None
    _give_back(helper)
    if "cap" in answer:
        raise MediaCapError(path, answer["cap"])
    return None if answer["info"] is None else VideoInfo(**answer["info"])


def serve() -> None:
    """The helper's loop: one JSON request per line on stdin, one JSON answer per line on stdout."""
    import av  # noqa: F401  (imported before "ready": the first request does not pay for it)

    out = sys.stdout.buffer
    out.write(READY)
    out.flush()
    for line in sys.stdin.buffer:
        request = json.loads(line)
        try:
            info = pyav_info(Path(request["path"]), request["timeout"], request["max_side"])
            answer = {"info": None if info is None else dataclasses.asdict(info)}
        except MediaCapError as exc:
            answer = {"cap": exc.reason}
        out.write(json.dumps(answer).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    serve()
