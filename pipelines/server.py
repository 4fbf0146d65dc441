"""Start, reuse or stop the local Prefect server that every stage reports to.

Without a server, every new Python process that runs a flow starts a temporary one (8-13 s each on 2
cores); every DVC stage is a new process. So the main command starts ONE ``prefect server start --host
127.0.0.1`` (about 11 s to healthy) with ``PREFECT_HOME=.prefect/``, or reuses a healthy one, and leaves
it up for the UI::

    python -m pipelines.server start      # prints the API URL on stdout; how to open/stop it on stderr
    export PREFECT_API_URL=$(python -m pipelines.server start)
    python -m pipelines.server status     # the URL of a healthy server, or exit 1
    python -m pipelines.server stop       # stops the server started here (by its pid), and the
                                          # deployment server (pipelines.deploy start) if one runs

The server runs detached (its own session) and logs to ``.prefect/server.log``. Its pid is in
``.prefect/server.pid`` (the file ``prefect server stop`` reads too) and its URL in ``.prefect/server.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipelines.common import write_json_atomic, write_text_atomic

__all__ = [
    "ServerInfo",
    "find_free_port",
    "healthy",
    "log_tail",
    "main",
    "process_matches",
    "start",
    "status",
    "stop",
    "terminate",
]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HOME = ROOT / ".prefect"
DEFAULT_PORT = 4200
HOST = "127.0.0.1"


@dataclass(frozen=True)
class ServerInfo:
    """A running server: ``url`` is the API URL (``http://127.0.0.1:<port>/api``), ``ui`` the UI URL."""

    pid: int | None  # None: a server we did not start (reused from PREFECT_API_URL)
    url: str
    home: Path
    reused: bool

    @property
    def ui(self) -> str:
        return self.url.removesuffix("/api")


def healthy(url: str, timeout: float = 2.0) -> bool:
    """True when ``GET <url>/health`` answers 200 (``url`` is the API URL)."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def find_free_port(host: str = HOST) -> int:
    """A TCP port free on ``host`` now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_matches(pid: int, *words: bytes) -> bool:
    """The process ``pid`` is alive and its command line holds every one of ``words`` (guards against a
    recycled pid). Without ``/proc``, alive is enough."""
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    text = b" ".join(cmdline)
    return all(word in text for word in words)


def _is_prefect_server(pid: int) -> bool:
    """The process ``pid`` is a ``prefect server start`` (guards against a recycled pid)."""
    return process_matches(pid, b"prefect", b"server", b"start")


def _read_state(home: Path) -> tuple[int, str] | None:
    try:
        state = json.loads((home / "server.json").read_text())
        pid = int((home / "server.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    if state.get("pid") != pid:
        return None
    return pid, str(state["url"])


def server_env(home: Path) -> dict[str, str]:
    """The environment of a server (and of its clients) that keeps its state under ``home``."""
    env = dict(os.environ)
    env["PREFECT_HOME"] = str(home)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env.pop("PREFECT_API_URL", None)  # the server itself must not point at another one
    return env


def status(home: Path = DEFAULT_HOME) -> ServerInfo | None:
    """The server started under ``home``, if it is alive and healthy; else None."""
    home = Path(home).resolve()
    state = _read_state(home)
    if state is None:
        return None
    pid, url = state
    if _alive(pid) and _is_prefect_server(pid) and healthy(url):
        return ServerInfo(pid=pid, url=url, home=home, reused=True)
    return None


def start(
    home: Path = DEFAULT_HOME,
    port: int | None = None,
    timeout: float = 180.0,
    reuse_env: bool = True,
) -> ServerInfo:
    """Reuse a healthy server or start one, and wait until it answers ``/api/health``.

    Reuse order: ``PREFECT_API_URL`` from the environment when it is healthy (``reuse_env``), then the
    server recorded under ``home``. Otherwise start ``prefect server start --host 127.0.0.1 --port <p>``
    detached, with ``PREFECT_HOME=home``; ``p`` is ``port``, else 4200 when free, else a free port.

    Raises:
        RuntimeError: the server exited or did not become healthy within ``timeout`` seconds (the message
            ends with the last lines of its log).
    """
    home = Path(home).resolve()
    env_url = os.environ.get("PREFECT_API_URL")
    if reuse_env and env_url and healthy(env_url):
        return ServerInfo(pid=None, url=env_url, home=home, reused=True)
    running = status(home)
    if running is not None:
        return running

    home.mkdir(parents=True, exist_ok=True)
    if port is None:
        port = DEFAULT_PORT if _port_free(DEFAULT_PORT) else find_free_port()
    url = f"http://{HOST}:{port}/api"
    log_path = home / "server.log"
    prefect = Path(sys.executable).with_name("prefect")
    cmd = [str(prefect) if prefect.exists() else "prefect", "server", "start", "--host", HOST]
    cmd += ["--port", str(port), "--analytics-off"]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            cmd,
            env=server_env(home),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the terminal's Ctrl-C and the caller's exit
            cwd=home,
        )
    write_text_atomic(home / "server.pid", f"{process.pid}\n")
    write_json_atomic(home / "server.json", {"pid": process.pid, "url": url, "port": port})

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _forget(home, process.pid)
            raise RuntimeError(
                f"prefect server exited with status {process.returncode}: {log_tail(log_path)}"
            )
        if healthy(url):
            return ServerInfo(pid=process.pid, url=url, home=home, reused=False)
        time.sleep(0.5)
    stop(home)
    raise RuntimeError(f"prefect server at {url} not healthy after {timeout:.0f} s: {log_tail(log_path)}")


def log_tail(path: Path, lines: int = 5) -> str:
    """The last ``lines`` lines of a log file, joined with `` | `` (for one-line error messages)."""
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _forget(home: Path, pid: int) -> None:
    state = _read_state(home)
    if state is not None and state[0] == pid:
        for name in ("server.pid", "server.json"):
            with contextlib.suppress(FileNotFoundError):
                (home / name).unlink()


def stop(home: Path = DEFAULT_HOME, timeout: float = 30.0) -> bool:
    """Stop the server started under ``home`` (SIGTERM to its pid, SIGKILL after ``timeout`` s).

    Returns True when a server was stopped, False when none was recorded or it had already exited.
    """
    home = Path(home).resolve()
    state = _read_state(home)
    if state is None:
        return False
    pid, _ = state
    if not (_alive(pid) and _is_prefect_server(pid)):
        _forget(home, pid)
        return False
    terminate(pid, signal.SIGTERM, timeout)
    _forget(home, pid)
    return True


def terminate(pid: int, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Send ``sig`` to ``pid``, wait up to ``timeout`` s for it to exit, then SIGKILL it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
        time.sleep(0.2)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


EPILOG = """\
examples:
  python -m pipelines.server start                      # prints the API URL; the UI is the same URL without /api
  export PREFECT_API_URL=$(python -m pipelines.server start)
  python -m pipelines.server status
  python -m pipelines.server stop                       # also stops the deployment server (pipelines.deploy)
  python -m pipelines.server start --port 4300 --home /tmp/prefect-home
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.server",
        description=__doc__.split("\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["start", "status", "stop"], nargs="?", default="start")
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="PREFECT_HOME (default .prefect/)")
    parser.add_argument("--port", type=int, default=None, help="port (default 4200, or a free one)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for health")
    args = parser.parse_args(argv)

    if args.command == "start":
        try:
            info = start(args.home, port=args.port, timeout=args.timeout)
        except RuntimeError as exc:
            print(f"pipelines.server: {exc}", file=sys.stderr)
            return 1
        how = "reusing" if info.reused else "started"
        pid = f" (pid {info.pid})" if info.pid else ""
        print(f"Prefect server {how}{pid}: UI {info.ui}  API {info.url}", file=sys.stderr)
        if info.pid:
            print("  stop it with: python -m pipelines.server stop", file=sys.stderr)
        print(info.url)
        return 0
    if args.command == "status":
        info = status(args.home)
        if info is None:
            print("no healthy Prefect server recorded under " + str(args.home), file=sys.stderr)
            return 1
        print(info.url)
        return 0
    from pipelines import deploy  # the deployment server is useless without this one: stop it first

    if deploy.stop(args.home):
        print("deployment server stopped", file=sys.stderr)
    stopped = stop(args.home)
    print("Prefect server stopped" if stopped else "no Prefect server was running", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
