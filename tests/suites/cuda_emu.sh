#!/usr/bin/env bash
# The CUDA backend's own test on the CPU emulation of engine/cuda/emu (no nvcc, no GPU): a check
# of the backend's indexing, layouts and library calls, not of GPU numerics or speed. Cases are
# reported as "cuda-emu <case>". On a GPU machine `make test-gpu` runs the real thing.
set -uo pipefail
cd "$(dirname "$0")/../.."
if [[ ! -d engine/cuda/emu ]]; then
  echo "ok - cuda-emu # SKIP no CUDA backend sources"; exit 0
fi
if ! make -s -j2 build/emu/test_cuda build/emu/test_job >build/cuda-emu.log 2>&1; then
  echo "not ok - cuda-emu build"; tail -n 30 build/cuda-emu.log; exit 1
fi
rc=0
for env in "" "CUEMU_NHWC_UNSUPPORTED=1 CUEMU_FUSE_UNSUPPORTED=1"; do
  tag=${env:+ (no NHWC, no fusion)}
  env $env build/emu/test_cuda --small | sed -E "s/^(not ok|ok) - /\1 - cuda-emu$tag /" || rc=1
done
# the job-level retry at half the batch, on an emulated card too small for the batches asked
build/emu/test_job | sed -E "s/^(not ok|ok) - /\1 - cuda-emu /" || rc=1
exit $rc
