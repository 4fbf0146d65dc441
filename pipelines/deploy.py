"""The Prefect deployments that run the DAG: scheduled ``dvc repro`` and ``dvc exp run`` from the UI.

One process serves both deployments with ``serve(..., limit=1)``, so it never runs two DVC commands at
once, and every DVC command runs as ``dvc --wait-for-lock ...``, so a scheduled run and a hand-run
``dvc repro`` in the same workspace queue instead of failing on DVC's repository lock. The main command
(``bash scripts/demo.sh``) starts it in the background beside the Prefect server; by hand::

    export PREFECT_API_URL=$(python -m pipelines.server start)
    python -m pipelines.deploy                      # serves in the foreground until Ctrl-C
    python -m pipelines.deploy start                # or in the background: pid in .prefect/deploy.pid
    python -m pipelines.deploy status               # its pid, or exit 1
    python -m pipelines.deploy stop                 # stops it (by its pid)

- ``dvc-repro/tubevit-repro``: ``dvc --wait-for-lock repro`` on the cron schedule ``deploy.cron`` (in
  ``deploy.timezone``) from params.yaml; "Run" in the UI starts one now (optional parameter ``targets``).
- ``dvc-exp/tubevit-exp``: ``dvc --wait-for-lock exp run --temp -S key=value ...``; in the UI, "Run > Custom
  run" and fill ``set_params`` (e.g. ``{"pretrain.steps": 800}``) and an optional experiment ``name``. The
  experiment runs in a temporary copy of the workspace (``--temp``): the workspace's params.yaml and outputs
  are left as they were, so the nightly ``tubevit-repro`` never reruns someone's experiment as if it were the
  baseline. Its results are in ``dvc exp show``; ``dvc exp apply <name>`` brings one into the workspace.

Each run streams DVC's output into the flow run's logs (runs are named ``dvc-repro-<UTC time>`` and
``dvc-exp-<name>-<UTC time>``); the stages' own flows (``reencode-kinetics-...``) appear as separate flow runs
on the same server. A DVC failure fails the flow run with the output's tail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, serve
from prefect.schedules import Cron

from pipelines import server
from pipelines.common import (
    forward_logs_to_prefect,
    publish_result,
    run_name,
    write_json_atomic,
    write_text_atomic,
)
from pipelines.params import load_params_or_exit

__all__ = [
    "DeployInfo",
    "DvcError",
    "dvc_command",
    "exp_flow",
    "main",
    "repro_flow",
    "run_dvc",
    "set_args",
    "start",
    "status",
    "stop",
]

ROOT = Path(__file__).resolve().parents[1]
REPRO_DEPLOYMENT = "tubevit-repro"
EXP_DEPLOYMENT = "tubevit-exp"
DEPLOYMENT_NAMES = ("dvc-repro/tubevit-repro", "dvc-exp/tubevit-exp")


class DvcError(RuntimeError):
    """A DVC command exited with a non-zero status; the message holds the command and its output's tail."""


def dvc_command(*args: str) -> list[str]:
    """``[python, -m, dvc, --wait-for-lock, *args]``: this environment's DVC, queueing on the repo lock."""
    return [sys.executable, "-m", "dvc", "--wait-for-lock", *args]


_SITE_CACHE_DIR = re.compile(r"^\s*site_cache_dir\s*=\s*(\S.*?)\s*$", re.MULTILINE)


def _env(workspace: Path | None = None) -> dict[str, str]:
    """The DVC subprocess's environment: this venv first on PATH (stage commands say ``python``), the
    same Prefect server, and the ``tubevit.*`` and ``pipelines.*`` logs forwarded to the UI.

    DVC reads a relative ``core.site_cache_dir`` (this project's ``.dvc/site``) against the current
    directory, which breaks ``dvc exp run --temp`` (its temporary workspace has no such folder: "unable to
    open database file"). So a relative one in ``<workspace>/.dvc/config`` is passed as an absolute
    ``DVC_SITE_CACHE_DIR`` (the same folder).
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if workspace is not None and "DVC_SITE_CACHE_DIR" not in env:
        try:
            match = _SITE_CACHE_DIR.search((Path(workspace) / ".dvc" / "config").read_text())
        except OSError:
            match = None
        if match and not os.path.isabs(match.group(1)):
            env["DVC_SITE_CACHE_DIR"] = str((Path(workspace) / match.group(1)).resolve())
    return forward_logs_to_prefect(env)


def run_dvc(args: list[str], workspace: Path, log=None, tail: int = 40) -> list[str]:
    """Run ``dvc --wait-for-lock <args>`` in ``workspace``, forwarding every output line to ``log``.

    Returns:
        the output lines.

    Raises:
        DvcError: a non-zero exit status (the message ends with the last ``tail`` lines).
    """
    cmd = dvc_command(*args)
    lines: list[str] = []
    last: deque[str] = deque(maxlen=tail)
    with subprocess.Popen(
        cmd,
        cwd=workspace,
        env=_env(workspace),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as process:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            last.append(line)
            if log is not None:
                log.info(line)
    if process.returncode:
        shown = " ".join(["dvc", *cmd[3:]])
        raise DvcError(
            f"`{shown}` in {workspace} exited with status {process.returncode}:\n" + "\n".join(last)
        )
    return lines


def set_args(set_params: dict[str, Any]) -> list[str]:
    """``{"pretrain.steps": 800, "model.tubes": "paper"}`` -> ``["-S", "pretrain.steps=800", ...]``.

    Values are written as JSON (a subset of YAML, which DVC parses), so numbers, booleans, null and lists
    keep their types.
    """
    args = []
    for key, value in set_params.items():
        if not key or any(c.isspace() for c in key) or "=" in key:
            raise ValueError(f"set_params: bad params key {key!r}")
        text = value if isinstance(value, str) else json.dumps(value)
        args += ["-S", f"{key}={text}"]
    return args


@flow(name="dvc-repro", flow_run_name=run_name("dvc-repro", None), log_prints=True)
def repro_flow(workspace: str = str(ROOT), targets: list[str] | None = None) -> dict[str, Any]:
    """``dvc --wait-for-lock repro [targets]`` in ``workspace``; returns the stages that ran."""
    log = get_run_logger()
    lines = run_dvc(["repro", *(targets or [])], Path(workspace), log)
    ran = [line.split("'")[1] for line in lines if line.startswith("Running stage '")]
    return publish_result("dvc-repro", None, {"ran": ran, "up_to_date": not ran})


@flow(name="dvc-exp", flow_run_name=run_name("dvc-exp", "name"), log_prints=True)
def exp_flow(
    set_params: dict[str, Any] | None = None, name: str | None = None, workspace: str = str(ROOT)
) -> dict[str, Any]:
    """``dvc --wait-for-lock exp run --temp [-n name] -S key=value ...`` in ``workspace``; returns the
    experiment's name and the stages that ran. ``--temp``: the workspace (params.yaml, outputs) is left
    unchanged; the experiment is recorded in ``dvc exp show``."""
    log = get_run_logger()
    args = ["exp", "run", "--temp", *(["--name", name] if name else []), *set_args(set_params or {})]
    lines = run_dvc(args, Path(workspace), log)
    ran = [line.split("'")[1] for line in lines if line.startswith("Running stage '")]
    created = [line for line in lines if line.startswith("Ran experiment(s):")]
    experiment = created[-1].split(":", 1)[1].strip() if created else None
    result = {"experiment": experiment, "set_params": set_params or {}, "ran": ran}
    return publish_result("dvc-exp", name, result)


def deployments(workspace: Path, cron: str, timezone: str, schedule: bool = True) -> list:
    """The two runner deployments for ``workspace``: tubevit-repro (on the cron schedule) and tubevit-exp."""
    workspace = Path(workspace).resolve()
    repro = repro_flow.to_deployment(
        name=REPRO_DEPLOYMENT,
        schedule=Cron(cron, timezone=timezone) if schedule else None,
        parameters={"workspace": str(workspace)},
        description=f"dvc repro in {workspace} (cron {cron!r}, {timezone})",
        tags=["tubevit", "dvc"],
    )
    exp = exp_flow.to_deployment(
        name=EXP_DEPLOYMENT,
        parameters={"workspace": str(workspace), "set_params": {}},
        description=f"dvc exp run -S key=value in {workspace}: fill set_params",
        tags=["tubevit", "dvc"],
    )
    return [repro, exp]


@dataclass(frozen=True)
class DeployInfo:
    """The background process serving the deployments: its pid, log file and the API it registered with."""

    pid: int
    url: str
    log: Path
    reused: bool


def _state(home: Path) -> dict | None:
    try:
        state = json.loads((home / "deploy.json").read_text())
        pid = int((home / "deploy.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return state if state.get("pid") == pid else None


def _is_serving(pid: int) -> bool:
    """``pid`` is alive and is a ``pipelines.deploy serve`` process (guards against a recycled pid)."""
    return server.process_matches(pid, b"pipelines.deploy", b"serve")


def status(home: Path = server.DEFAULT_HOME) -> DeployInfo | None:
    """The deployment server started under ``home`` (``.prefect/``), if it is still running; else None."""
    home = Path(home).resolve()
    state = _state(home)
    if state is None or not _is_serving(state["pid"]):
        return None
    return DeployInfo(pid=state["pid"], url=state["url"], log=home / "deploy.log", reused=True)


def start(
    api_url: str,
    workspace: Path = ROOT,
    home: Path = server.DEFAULT_HOME,
    params: Path | None = None,
    schedule: bool = True,
    check_s: float = 3.0,
) -> DeployInfo:
    """Serve the two deployments in the background (``python -m pipelines.deploy serve``), detached from this
    process, against the Prefect API ``api_url``; or reuse the one already serving for ``api_url``.

    The pid goes to ``<home>/deploy.pid`` (and, with the URL, ``<home>/deploy.json``), the output to
    ``<home>/deploy.log``. Registration with the server takes a few seconds after this returns.

    Raises:
        RuntimeError: the process exited within ``check_s`` seconds (the message ends with its log's tail),
            e.g. on a malformed params file.
    """
    home = Path(home).resolve()
    running = status(home)
    if running is not None and running.url == api_url:
        return running
    if running is not None:
        stop(home)
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "deploy.log"
    cmd = [sys.executable, "-m", "pipelines.deploy", "serve", "--workspace", str(Path(workspace).resolve())]
    cmd += [*(["--params", str(params)] if params else []), *([] if schedule else ["--no-schedule"])]
    env = forward_logs_to_prefect(dict(os.environ))
    env |= {"PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the terminal's Ctrl-C and the caller's exit
        )
    write_text_atomic(home / "deploy.pid", f"{process.pid}\n")
    write_json_atomic(home / "deploy.json", {"pid": process.pid, "url": api_url, "workspace": str(workspace)})
    deadline = time.monotonic() + check_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _forget(home, process.pid)
            raise RuntimeError(
                f"pipelines.deploy serve exited with status {process.returncode}: {server.log_tail(log_path)}"
            )
        time.sleep(0.2)
    return DeployInfo(pid=process.pid, url=api_url, log=log_path, reused=False)


def _forget(home: Path, pid: int) -> None:
    state = _state(home)
    if state is not None and state["pid"] == pid:
        for name in ("deploy.pid", "deploy.json"):
            with contextlib.suppress(FileNotFoundError):
                (home / name).unlink()


def stop(home: Path = server.DEFAULT_HOME, timeout: float = 30.0) -> bool:
    """Stop the deployment server started under ``home`` (SIGINT, as Ctrl-C; SIGKILL after ``timeout`` s).

    Returns True when one was stopped, False when none was recorded or it had already exited.
    """
    home = Path(home).resolve()
    state = _state(home)
    if state is None:
        return False
    pid = state["pid"]
    if not _is_serving(pid):
        _forget(home, pid)
        return False
    server.terminate(pid, signal.SIGINT, timeout)
    _forget(home, pid)
    return True


EPILOG = """\
examples:
  python -m pipelines.deploy                  # serve tubevit-repro (cron) and tubevit-exp in the foreground
  python -m pipelines.deploy start            # the same in the background (bash scripts/demo.sh does this)
  python -m pipelines.deploy status           # the background server's pid, or exit 1
  python -m pipelines.deploy stop
  python -m pipelines.deploy --no-schedule    # register tubevit-repro without its cron
then, from the UI or the CLI:
  prefect deployment run dvc-repro/tubevit-repro
  prefect deployment run dvc-exp/tubevit-exp -p set_params='{"pretrain.steps": 800}' -p name=steps800
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.deploy",
        description=__doc__.split("\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=["serve", "start", "status", "stop"],
        help="serve in the foreground (default), or start / check / stop the background server",
    )
    parser.add_argument("--workspace", type=Path, default=ROOT, help="the DVC repository (default: this one)")
    parser.add_argument("--params", type=Path, default=None, help="default: <workspace>/params.yaml")
    parser.add_argument("--no-schedule", action="store_true", help="register tubevit-repro without its cron")
    parser.add_argument("--home", type=Path, default=server.DEFAULT_HOME, help="where the pid file goes")
    args = parser.parse_args(argv)
    if args.command == "status":
        info = status(args.home)
        if info is None:
            print(f"no deployment server recorded under {args.home}", file=sys.stderr)
            return 1
        print(info.pid)
        return 0
    if args.command == "stop":
        stopped = stop(args.home)
        print("deployment server stopped" if stopped else "no deployment server was running", file=sys.stderr)
        return 0
    params = load_params_or_exit(args.params or args.workspace / "params.yaml")
    if args.command == "start":
        api_url = (
            os.environ.get("PREFECT_API_URL") or (server.status(args.home) or server.start(args.home)).url
        )
        try:
            info = start(api_url, args.workspace, args.home, args.params, schedule=not args.no_schedule)
        except RuntimeError as exc:
            print(f"pipelines.deploy: {exc}", file=sys.stderr)
            return 1
        how = "reusing" if info.reused else "started"
        print(
            f"deployment server {how} (pid {info.pid}, log {info.log}): {api_url.removesuffix('/api')}/deployments"
        )
        print("  stop it with: python -m pipelines.deploy stop", file=sys.stderr)
        return 0
    cron, tz = params.deploy.cron, params.deploy.timezone
    # limit=1: this process runs one flow at a time, so two DVC commands never overlap
    serve(*deployments(args.workspace, cron, tz, schedule=not args.no_schedule), limit=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
