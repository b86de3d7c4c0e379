#!/usr/bin/env bash
# Attack parity suite: PGD-20 and CW-20 of the engine against PyTorch versions written from the
# definitions (tests/parity/gen_attack_ref.py, Debian's python3-torch), on a small CNN it trains
# on Fashion-MNIST; build/tests/attack_check compares. The reference (about 2 minutes to make)
# is reused while it is newer than the generator script; RTAAS_ATTACK_REGEN=1 forces a new one.
set -uo pipefail
cd "$(dirname "$0")/../.."
B=${B:-build}
PY=/usr/bin/python3
DATA=${RTAAS_FMNIST:-/usr/share/datasets/fashion-mnist}

if ! "$PY" -c 'import torch, numpy' >/dev/null 2>&1; then
  echo "ok - attack_parity # SKIP python3-torch not installed"
  exit 0
fi
if [[ ! -r $DATA/t10k-images-idx3-ubyte.gz || ! -r $DATA/train-images-idx3-ubyte.gz ]]; then
  echo "ok - attack_parity # SKIP Fashion-MNIST not found in $DATA (make deps installs it)"
  exit 0
fi
if [[ ! -x $B/tests/attack_check ]]; then
  echo "not ok - attack_parity # $B/tests/attack_check not built (make tests)"
  exit 1
fi

dir=${RTAAS_TEST_OUT:-$B/test-output}/attack
ref=$dir/attack.ref.safetensors
weights=$dir/smallcnn_fmnist.weights.safetensors
mkdir -p "$dir"
if [[ ${RTAAS_ATTACK_REGEN:-0} != 1 && -s $ref && -s $weights \
      && $ref -nt tests/parity/gen_attack_ref.py && $weights -nt tests/parity/gen_attack_ref.py ]]; then
  echo "ok - attack_reference # reused $ref (newer than gen_attack_ref.py)"
else
  start=$(date +%s)
  if ! RTAAS_FMNIST=$DATA "$PY" tests/parity/gen_attack_ref.py "$dir" | sed 's/^/# /'; then
    echo "not ok - attack_reference # gen_attack_ref.py failed"
    exit 1
  fi
  echo "ok - attack_reference # generated in $(( $(date +%s) - start )) s"
fi
"$B"/tests/attack_check "$dir"
