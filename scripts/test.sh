#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite except `gpu` tests; `slow` tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/python -m pytest -m "not gpu" --durations=20 "$@"
