"""The Prefect deployments that run the DAG: scheduled ``dvc repro`` and ``dvc exp run`` from the UI.

One process serves both deployments with ``serve(..., limit=1)``, so it never runs two DVC commands at
once, and every DVC command runs as ``dvc --wait-for-lock ...``, so a scheduled run and a hand-run
``dvc repro`` in the same workspace queue instead of failing on DVC's repository lock::

    export PREFECT_API_URL=$(python -m pipelines.server start)
    python -m pipelines.deploy                      # serves until Ctrl-C

- ``dvc-repro/tubevit-repro``: ``dvc --wait-for-lock repro`` on the cron schedule ``deploy.cron`` (in
  ``deploy.timezone``) from params.yaml; "Run" in the UI starts one now (optional parameter ``targets``).
- ``dvc-exp/tubevit-exp``: ``dvc --wait-for-lock exp run -S key=value ...``; in the UI, "Run > Custom run"
  and fill ``set_params`` (e.g. ``{"pretrain.steps": 800}``) and an optional experiment ``name``.

Each run streams DVC's output into the flow run's logs; the stages' own flows (download, reencode, ...)
appear as separate flow runs on the same server. A DVC failure fails the flow run with the output's tail.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, serve
from prefect.schedules import Cron

from pipelines.params import load_params_or_exit

__all__ = ["DvcError", "dvc_command", "exp_flow", "main", "repro_flow", "run_dvc", "set_args"]

ROOT = Path(__file__).resolve().parents[1]
REPRO_DEPLOYMENT = "tubevit-repro"
EXP_DEPLOYMENT = "tubevit-exp"


class DvcError(RuntimeError):
    """A DVC command exited with a non-zero status; the message holds the command and its output's tail."""


def dvc_command(*args: str) -> list[str]:
    """``[python, -m, dvc, --wait-for-lock, *args]``: this environment's DVC, queueing on the repo lock."""
    return [sys.executable, "-m", "dvc", "--wait-for-lock", *args]


def _env() -> dict[str, str]:
    """The DVC subprocess's environment: this venv first on PATH (stage commands say ``python``), the
    same Prefect server, and library logs (``tubevit``) forwarded to the UI."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tubevit")
    return env


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
        env=_env(),
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


@flow(name="dvc-repro", log_prints=True)
def repro_flow(workspace: str = str(ROOT), targets: list[str] | None = None) -> dict[str, Any]:
    """``dvc --wait-for-lock repro [targets]`` in ``workspace``; returns the stages that ran."""
    log = get_run_logger()
    lines = run_dvc(["repro", *(targets or [])], Path(workspace), log)
    ran = [line.split("'")[1] for line in lines if line.startswith("Running stage '")]
    return {"ran": ran, "up_to_date": not ran}


@flow(name="dvc-exp", log_prints=True)
def exp_flow(
    set_params: dict[str, Any] | None = None, name: str | None = None, workspace: str = str(ROOT)
) -> dict[str, Any]:
    """``dvc --wait-for-lock exp run [-n name] -S key=value ...`` in ``workspace``; returns the experiment's
    name and the stages that ran."""
    log = get_run_logger()
    args = ["exp", "run", *(["--name", name] if name else []), *set_args(set_params or {})]
    lines = run_dvc(args, Path(workspace), log)
    ran = [line.split("'")[1] for line in lines if line.startswith("Running stage '")]
    created = [line for line in lines if line.startswith("Ran experiment(s):")]
    experiment = created[-1].split(":", 1)[1].strip() if created else None
    return {"experiment": experiment, "ran": ran}


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.deploy", description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, default=ROOT, help="the DVC repository (default: this one)")
    parser.add_argument("--params", type=Path, default=None, help="default: <workspace>/params.yaml")
    parser.add_argument("--no-schedule", action="store_true", help="register tubevit-repro without its cron")
    args = parser.parse_args(argv)
    params = load_params_or_exit(args.params or args.workspace / "params.yaml")
    cron, tz = params.deploy.cron, params.deploy.timezone
    # limit=1: this process runs one flow at a time, so two DVC commands never overlap
    serve(*deployments(args.workspace, cron, tz, schedule=not args.no_schedule), limit=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
