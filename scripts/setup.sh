#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install everything into it:
# torch's CPU wheel first and alone, then the pinned environment without dependency resolution
# (see requirements.txt for why), then the project itself, editable (pyproject.toml: the packages
# unimed, trainers, benchmarks and servers, and the `unimed` command). Safe to run again; it only
# installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check torch==2.13.0
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.txt
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
"$VENV/bin/python" -I - <<'PY'
import monai, monailabel, torch
import unimed, trainers, benchmarks, servers  # the project, installed (-I: not found through the current folder)
print(f"environment ready: torch {torch.__version__}, monai {monai.__version__}, monailabel {monailabel.__version__}")
PY
