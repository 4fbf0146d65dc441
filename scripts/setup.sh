#!/usr/bin/env bash
# Idempotent setup for a fresh Debian machine: Debian's ffmpeg, a virtual environment in .venv,
# torch/torchvision (CPU use; pip takes 2.14.1/0.29.1 from local disk where present) and this package
# with its dev extra. Re-running does nothing once everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
  echo "[setup] installing Debian's ffmpeg" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q ffmpeg
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv" >&2
  "$PY" -m venv .venv
fi

stamp=.venv/.tubevit-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing Python packages into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and pinned, so that no range below pulls a newer multi-GB build.
  .venv/bin/python -m pip install -q ${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi
