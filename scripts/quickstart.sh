#!/usr/bin/env bash
# Quick start: set up .venv, then run the whole pipeline on a generated dataset on the CPU (actrec demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/actrec demo --workdir quickstart_workdir "$@"
