#!/usr/bin/env bash
# Short libFuzzer run of the safetensors reader over its seeds (make fuzz runs it longer).
# Skips when clang or its fuzzer runtime is missing; a build failure is a failure.
set -uo pipefail
cd "$(dirname "$0")/../.."
B=${B:-build}
cc=${FUZZ_CC:-clang}
out=${RTAAS_TEST_OUT:-$B/test-output}
mkdir -p "$out"

probe=$(mktemp -d "$out/fuzzprobe.XXXXXX")
trap 'rm -rf "$probe"' EXIT
if ! command -v "$cc" >/dev/null 2>&1; then
  echo "ok - fuzz_safetensors # SKIP no clang"
  exit 0
fi
echo 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }' \
  >"$probe/p.c"
if ! "$cc" -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" >/dev/null 2>&1; then
  echo "ok - fuzz_safetensors # SKIP no clang fuzzer runtime"
  exit 0
fi
if ! make -s "$B/fuzz/fuzz_safetensors"; then
  echo "not ok - fuzz_safetensors_build"
  exit 1
fi

# New inputs go to a scratch corpus (the first directory), never into the committed seeds.
corpus="$probe/corpus"
mkdir -p "$corpus"
if "$B/fuzz/fuzz_safetensors" -max_total_time=10 -print_final_stats=1 -artifact_prefix="$out/" \
     "$corpus" tests/fuzz/seeds/fuzz_safetensors >"$out/fuzz_safetensors.log" 2>&1; then
  echo "# $(grep -E '^Done [0-9]+ runs' "$out/fuzz_safetensors.log")"
  echo "ok - fuzz_safetensors_10s"
else
  tail -n 40 "$out/fuzz_safetensors.log" | sed 's/^/# /'
  echo "not ok - fuzz_safetensors_10s"
  exit 1
fi
