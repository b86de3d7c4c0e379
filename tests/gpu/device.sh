#!/usr/bin/env bash
# Every GPU check in one call of the lent device machine (about 9 minutes at most): the CUDA
# backend's tests, bench-gpu against PyTorch, and the tests' short cases under memcheck.
# The device has nvcc, PyTorch and NVIDIA's libraries (pip), but not this build's Debian
# libraries: tools/gpu-bundle packs the binaries and those libraries into build/gpu first.
#
# Here, from the repo root:   tools/gpu-bundle          (builds; prints the bundle's size)
# Then the `run` tool call:   command: bash tests/gpu/device.sh
#                             carry:   ["build/gpu"]
#                             timeout_s: 600
# Its logs come back from $OUT (7 files): summary.txt, env.log, ldd.log, test_cuda.log,
# memcheck.log, bench_gpu.log (the table), bench_gpu_full.log (every run's output). Without
# $OUT (a local try) they go to build/gpu-out. Without a GPU every GPU step says skipped.
# The bundle unpacks into a scratch folder (removed at the end), so that build/gpu stays as
# small as it was carried; the binaries run from there.
#
# Steps, in this order, and their limits in seconds: the environment and libraries (about 20),
# test_cuda (DEVICE_T_TEST, 150), bench/gpu (DEVICE_T_BENCH, 240), test_cuda --small under
# compute-sanitizer memcheck (DEVICE_T_MEMCHECK, 150); every limit is cut to what is left of
# DEVICE_BUDGET_S (540) from the start, so the whole stays inside one 600 s call.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD
T0=$SECONDS
BUDGET=${DEVICE_BUDGET_S:-540}
OUT=${OUT:-$ROOT/build/gpu-out}
mkdir -p "$OUT"
BUNDLE=$ROOT/build/gpu
U=$(mktemp -d "${TMPDIR:-/tmp}/rtaas-gpu.XXXXXX") || exit 1
trap 'rm -rf "$U"' EXIT
TEST=$U/bin/test_cuda
BENCH=$U/bin/bench_rtaas
summary=()

note() { echo "== $*" >&2; }
# left: seconds before the budget runs out
left() { echo $((BUDGET - (SECONDS - T0))); }
# cap LIMIT: LIMIT, or what is left of the budget if less (0 when nothing is)
cap() {
  local l
  l=$(left)
  ((l < 10)) && l=0
  (($1 < l)) && l=$1
  echo "$l"
}
# step NAME LIMIT LOG CMD...: runs CMD under timeout into LOG and records the outcome, with
# the TAP counts where CMD prints "ok - "/"not ok - " lines. A run that only skipped for want
# of a GPU ("bench-gpu: skipped: no GPU", every case "# SKIP no GPU") is reported as skipped.
step() {
  local name=$1 lim log=$3 t=$SECONDS rc res nok nfail nskip
  lim=$(cap "$2")
  shift 3
  if ((lim == 0)); then
    summary+=("$(printf '%-22s %-44s %5s s' "$name" "not run: out of time" 0)")
    return
  fi
  note "$name (limit $lim s): $*"
  echo "+ $* (limit $lim s)" >"$log"
  timeout --kill-after=15 "$lim" "$@" >>"$log" 2>&1
  rc=$?
  nok=$(grep -c '^ok - ' "$log")
  nfail=$(grep -c '^not ok - ' "$log")
  nskip=$(grep -c '^ok - .*# SKIP' "$log")
  if ((rc == 124 || rc == 137)); then
    res="TIMED OUT after $lim s"
  elif ((rc != 0)); then
    res="FAILED (exit $rc)"
  elif grep -q 'skipped: no GPU' "$log" ||
    { ((nskip > 0 && nskip == nok && nfail == 0)) && grep -q '# SKIP no GPU' "$log"; }; then
    res="skipped: no GPU"
  else
    res="ok"
  fi
  ((nok + nfail)) && res="$res ($((nok - nskip)) ok, $nfail not ok, $nskip skip)"
  summary+=("$(printf '%-22s %-44s %5d s' "$name" "$res" $((SECONDS - t)))")
  tail -3 "$log" >&2
}

# ---- the environment, the bundle and the libraries ----
env_log=$OUT/env.log
{
  echo "device.sh at $(date -u '+%Y-%m-%d %H:%M:%S UTC') in $ROOT"
  uname -a
  sed -n 's/^PRETTY_NAME=//p' /etc/os-release 2>/dev/null
  ldd --version 2>/dev/null | head -1
  timeout 20 nvidia-smi -L 2>&1 || echo "nvidia-smi: not available"
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv 2>&1 || true
  command -v nvcc && nvcc --version | tail -1
  timeout 60 python3 -c 'import torch, torchvision; print("python3:", __import__("sys").executable, "torch", torch.__version__,
  "torchvision", torchvision.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
  "gpu", torch.cuda.is_available())' 2>&1
} >"$env_log" 2>&1
note "environment: $(grep -m1 -E '^GPU 0|nvidia-smi: not' "$env_log")"

if [[ ! -f $BUNDLE/bundle.tar.xz ]]; then
  echo "device.sh: $BUNDLE/bundle.tar.xz is missing: run tools/gpu-bundle here and carry build/gpu" | tee -a "$env_log" >&2
  exit 1
fi
tar -C "$U" -xJf "$BUNDLE/bundle.tar.xz" || { echo "device.sh: cannot unpack the bundle" >&2; exit 1; }
cat "$U/MANIFEST" >>"$env_log"

# CUDA's libraries on this machine: python3's nvidia.* packages (what PyTorch uses), then the
# toolkit's folders
cuda_dirs=$(timeout 60 python3 - 2>/dev/null <<'EOF'
import os
seen = []
try:
    import nvidia
    for base in nvidia.__path__:
        for root, dirs, files in sorted(os.walk(base)):
            if any(f.startswith("lib") and ".so" in f for f in files) and root not in seen:
                seen.append(root)
except ImportError:
    pass
print(":".join(seen))
EOF
)
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [[ -d $d ]] && cuda_dirs="${cuda_dirs:+$cuda_dirs:}$d"
done
ORIG_LD=${LD_LIBRARY_PATH:-}
export LD_LIBRARY_PATH="$U/lib${cuda_dirs:+:$cuda_dirs}${ORIG_LD:+:$ORIG_LD}"
export RTAAS_TEST_MNIST_DIR=$U/mnist
{
  echo
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  echo "RTAAS_TEST_MNIST_DIR=$RTAAS_TEST_MNIST_DIR ($(find "$U/mnist" -type f | wc -l) files)"
} >>"$env_log"

ldd_log=$OUT/ldd.log
: >"$ldd_log"
missing=""
for b in "$TEST" "$BENCH"; do
  {
    echo "ldd $b:"
    ldd "$b"
    echo
  } >>"$ldd_log" 2>&1
  # -r resolves every symbol too: a cuDNN or cuBLAS older than the build's headers shows here
  missing+=$(ldd -r "$b" 2>&1 | grep -E 'not found|undefined symbol' | sed "s|^|${b##*/}: |")
done
# cuDNN's own version as loaded (the build's headers are in the MANIFEST)
cudnn=$(ldd "$TEST" | awk '/libcudnn.so/ { print $3 }')
echo "libcudnn loaded from: ${cudnn:-none}" >>"$ldd_log"
if [[ -n $missing ]]; then
  summary+=("$(printf '%-22s %-44s' libraries "MISSING: see ldd.log")")
  echo "$missing" | tee -a "$ldd_log" >&2
else
  summary+=("$(printf '%-22s %-44s' libraries "ok (cuDNN ${cudnn:-none})")")
fi
ngpu=$("$BENCH" --gpu-info 2>>"$ldd_log" | sed -n 's/^cuda_devices=\([0-9]*\).*/\1/p')
echo "bench_rtaas --gpu-info: ${ngpu:-failed} CUDA device(s)" >>"$ldd_log"

# ---- the checks ----
# test_cuda first (is the backend right?), then bench-gpu, then memcheck, which gets what is
# left: under the sanitizer cuDNN's kernels run many times slower and its duration is the least
# known, so it must not eat the benchmark's time.
step test_cuda "${DEVICE_T_TEST:-150}" "$OUT/test_cuda.log" "$TEST"

# bench/gpu cuts its own runs at its deadline; PyTorch runs with the environment it came with
bench_lim=$(cap "${DEVICE_T_BENCH:-240}")
commit=$(sed -n 's/.*, commit \([^ ]*\)$/\1/p' "$U/MANIFEST" | head -1)
step bench-gpu "$bench_lim" "$OUT/bench_gpu.log" env BENCH_BIN="$BENCH" BENCH_PYTHON="${BENCH_PYTHON:-python3}" \
  BENCH_DEADLINE_S=$((bench_lim > 15 ? bench_lim - 15 : 1)) BENCH_TORCH_LD_LIBRARY_PATH="$ORIG_LD" \
  BENCH_COMMIT="$commit (bundle)" bash bench/gpu
# (only what this run wrote: a local try may find older ones)
[[ -n $(find build/bench/gpu-log.txt -newer "$env_log" 2>/dev/null) ]] && cp build/bench/gpu-log.txt "$OUT/bench_gpu_full.log"

sanitizer=$(command -v compute-sanitizer)
for f in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer; do
  [[ -z $sanitizer && -x $f ]] && sanitizer=$f
done
if ((${ngpu:-0} == 0)); then
  echo "compute-sanitizer: skipped: no GPU (${sanitizer:-no compute-sanitizer either})" >"$OUT/memcheck.log"
  summary+=("$(printf '%-22s %-44s %5d s' "memcheck --small" "skipped: no GPU" 0)")
elif [[ -z $sanitizer ]]; then
  echo "compute-sanitizer: not found" >"$OUT/memcheck.log"
  summary+=("$(printf '%-22s %-44s %5d s' "memcheck --small" "SKIPPED: no compute-sanitizer found" 0)")
else
  step "memcheck --small" "${DEVICE_T_MEMCHECK:-150}" "$OUT/memcheck.log" \
    "$sanitizer" --tool memcheck --error-exitcode 1 "$TEST" --small
fi

# ---- summary (the last thing printed: the run tool returns the output's tail) ----
{
  echo "device.sh summary, $(date -u '+%Y-%m-%d %H:%M UTC'), $((SECONDS - T0)) s"
  grep -m1 -E '^GPU 0|nvidia-smi: not' "$env_log"
  grep -m1 '^python3:' "$env_log"
  printf '%s\n' "${summary[@]}"
  if [[ -n $(find build/bench/gpu-latest.txt -newer "$env_log" 2>/dev/null) ]]; then
    echo
    cat build/bench/gpu-latest.txt
  fi
  grep -h -E '^not ok' "$OUT/test_cuda.log" "$OUT/memcheck.log" 2>/dev/null | head -20
  grep -h -E '========= (ERROR SUMMARY|Invalid|Program hit)' "$OUT/memcheck.log" 2>/dev/null | head -10
} >"$OUT/summary.txt"
cat "$OUT/summary.txt"
grep -qE 'FAILED|TIMED OUT|MISSING' "$OUT/summary.txt" && exit 1
exit 0
