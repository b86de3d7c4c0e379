#!/usr/bin/env bash
# Rebuilds the engine and the unit tests with AddressSanitizer and UndefinedBehaviorSanitizer
# (build/asan) and runs them; one TAP line per test binary.
set -uo pipefail
cd "$(dirname "$0")/../.."
B=build/asan
flags="-O1 -g -march=x86-64-v3 -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
if ! make -s -j2 B=$B CFLAGS="$flags" $(ls tests/unit/test_*.c | sed "s|tests/unit/|$B/tests/|; s|\.c$||") \
    >"$B.log" 2>&1; then
  echo "not ok - sanitizer build"; tail -n 30 "$B.log"; exit 1
fi
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1
# Leaks inside libgomp's thread pool and oneDNN's primitive cache live until exit by design.
export LSAN_OPTIONS=suppressions=$PWD/tests/suites/lsan.supp:print_suppressions=0
rc=0
for t in $B/tests/test_*; do
  n=$(basename "$t")
  if "$t" >"$B/$n.out" 2>&1 && ! grep -q -E 'not ok|runtime error|ERROR: (Address|Leak)Sanitizer' "$B/$n.out"; then
    echo "ok - sanitizers $n"
  else
    echo "not ok - sanitizers $n"; grep -E -A20 'not ok|runtime error|Sanitizer' "$B/$n.out" | head -n 40; rc=1
  fi
done
exit $rc
