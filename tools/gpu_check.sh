#!/usr/bin/env bash
# The GPU check (issue 12): one short run that measures every GPU path and writes
# docs/benchmarks/gpu-<date>.json plus its table in docs/benchmarks.md (or, with --out-dir DIR, DIR/gpu-<date>.json,
# DIR/gpu-<date>.md and the logs; merge those later with `python -m backend gpu-check --merge DIR/gpu-<date>.json`).
# Options: see `python -m backend gpu-check --help`. Without CUDA it prints why and exits 2.
#
# Carried wheels: if .whl/*.whl exist and diffusers or gsplat is missing, they are installed into /tmp/mvp4d-site
# (no index, no deps) and put on PYTHONPATH. .whl/gpu-check-job, if present, is the fit section's prepared job
# (`python -m backend gpu-check --prepare .whl/gpu-check-job` on any machine with the full install).
#
# This project's device tool (nvidia-h200; run from the main checkout, where .whl/ is git-ignored):
#   run(command="bash tools/gpu_check.sh --out-dir $OUT --budget 390", carry=[".whl"], timeout_s=480)
# ($OUT gets gpu-<date>.json, gpu-<date>.md and three logs: five files, within the eight that come back)
# then here: python -m backend gpu-check --merge <files_at>/gpu-<date>.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ls .whl/*.whl >/dev/null 2>&1 && ! "$PY" -c "import diffusers, gsplat" >/dev/null 2>&1; then
  echo "gpu-check: installing the carried wheels (.whl/) into /tmp/mvp4d-site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/mvp4d-site .whl/*.whl
  export PYTHONPATH="/tmp/mvp4d-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" -m backend.gpucheck "$@"
