#!/usr/bin/env bash
# Short libFuzzer run of every target in tests/fuzz over its seeds, FUZZ_SMOKE_SECONDS each
# (default 5; make fuzz runs them longer).
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
  echo "ok - fuzz # SKIP no clang"
  exit 0
fi
echo 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }' \
  >"$probe/p.c"
if ! "$cc" -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" >/dev/null 2>&1; then
  echo "ok - fuzz # SKIP no clang fuzzer runtime"
  exit 0
fi
secs=${FUZZ_SMOKE_SECONDS:-5}
rc=0
for src in tests/fuzz/fuzz_*.c; do
  t=$(basename "$src" .c)
  if ! make -s "$B/fuzz/$t" >"$out/$t.build.log" 2>&1; then
    tail -n 20 "$out/$t.build.log" | sed 's/^/# /'
    echo "not ok - ${t}_build"; rc=1; continue
  fi
  # New inputs go to a scratch corpus (the first directory), never into the committed seeds.
  corpus="$probe/corpus-$t"
  mkdir -p "$corpus"
  if "$B/fuzz/$t" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="$out/" \
       "$corpus" "tests/fuzz/seeds/$t" >"$out/$t.log" 2>&1; then
    echo "# $t: $(grep -E '^Done [0-9]+ runs' "$out/$t.log")"
    echo "ok - ${t}_${secs}s"
  else
    tail -n 40 "$out/$t.log" | sed 's/^/# /'
    echo "not ok - ${t}_${secs}s"; rc=1
  fi
done
exit $rc
