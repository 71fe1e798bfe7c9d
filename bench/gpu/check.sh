#!/usr/bin/env bash
# The GPU check, for the lent GPU machine (see bench/gpu/check.py for what it proves).
#
#   here:   bench/gpu/wheels.sh            # once: the gateway's Python deps as cp312 wheels in .whl/
#   there:  bench/gpu/check.sh             # run with .whl carried; prints figures, last line JSON
#
# The machine has Python with PyTorch and no network: the gateway's own dependencies travel as
# wheels and are installed into /tmp/site. `bench/gpu/check.sh --rehearse` tries the whole flow
# on a host without a GPU first.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
if [ "${1:-}" != "--rehearse" ]; then
  if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  nvidia-smi --query-gpu=name,uuid,memory.total,driver_version --format=csv,noheader || true
  for d in "" /usr/local/nvidia/bin /usr/local/cuda/bin /usr/bin; do
    if [ -z "$d" ]; then c=$(command -v nvidia-cuda-mps-control || true); else c="$d/nvidia-cuda-mps-control"; fi
    if [ -n "$c" ] && [ -x "$c" ]; then export MPS_CONTROL="$c"; break; fi
  done
  echo "MPS control: ${MPS_CONTROL:-not found}"
fi
export PYTHONUNBUFFERED=1
$PY bench/gpu/check.py "$@"
# GPU enforcement by the sandbox: only granted cards' device nodes; no bypass of an MPS share.
if [ "${1:-}" != "--rehearse" ]; then $PY bench/gpu/sandbox_check.py; fi
