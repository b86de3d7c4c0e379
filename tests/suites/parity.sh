#!/usr/bin/env bash
# PyTorch parity suite: regenerates the reference outputs with Debian's python3-torch
# (tests/parity/gen_ref.py) and checks the engine against them (build/tests/parity_check).
set -uo pipefail
cd "$(dirname "$0")/../.."
B=${B:-build}
PY=/usr/bin/python3

if ! "$PY" -c 'import torch, torchvision' >/dev/null 2>&1; then
  echo "ok - parity # SKIP python3-torch not installed"
  exit 0
fi
if [[ ! -x $B/tests/parity_check ]]; then
  echo "not ok - parity # $B/tests/parity_check not built (make tests)"
  exit 1
fi

dir=${RTAAS_TEST_OUT:-$B/test-output}/parity
mkdir -p "$dir"
start=$(date +%s)
if ! "$PY" tests/parity/gen_ref.py "$dir" | sed 's/^/# /'; then
  echo "not ok - parity_reference # gen_ref.py failed"
  exit 1
fi
echo "ok - parity_reference # generated in $(( $(date +%s) - start )) s"
"$B"/tests/parity_check "$dir"
