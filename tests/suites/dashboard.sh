#!/usr/bin/env bash
# The web dashboard (static/): a real `rtaas serve` on its private PostgreSQL; curl checks that
# the static files carry their content types and security headers and that nothing outside
# static/ can be read; then Debian's chromium (playwright-core, tests/browser/) uses the page
# against a dataset, a backbone and transfers made through the API. Screenshots go to
# $RTAAS_TEST_OUT/dashboard/.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
CHROMIUM=${RTAAS_CHROMIUM:-/usr/bin/chromium}

skip_all() { echo "ok - dashboard # SKIP $*"; exit 0; }
[[ -x $CHROMIUM ]] || skip_all "$CHROMIUM not installed (Debian chromium; make deps)"
command -v node >/dev/null || skip_all "node not installed (make deps)"
[[ -f tests/browser/node_modules/playwright-core/package.json ]] ||
  skip_all "tests/browser/node_modules missing (make deps runs npm ci there)"

. tests/service/lib.sh
svc_init dashboard
OUT_DIR=${RTAAS_TEST_OUT:-$SVC_ROOT/${B:-build}/test-output}/dashboard
rm -rf "$OUT_DIR" && mkdir -p "$OUT_DIR"

# Three classes a small CNN learns in one epoch: a bright band whose height gives the class,
# on noise (IDX, uncompressed).
D=$SVC_TMP/files
"$PY" - "$D" <<'PY' || svc_skip_all "could not write the test images"
import os, random, struct, sys
out = sys.argv[1]
rng = random.Random(5)
xs, ys = [], []
for i in range(100):
    for c in range(3):
        px = bytearray(rng.randrange(0, 110) for _ in range(784))
        top = 5 * c + 6 + rng.randrange(-2, 3)
        for r in range(top, top + 6):
            for col in range(4, 24):
                px[28 * r + col] = max(px[28 * r + col], rng.randrange(90, 256))
        xs.append(bytes(px))
        ys.append(c)
os.makedirs(out, exist_ok=True)
open(f"{out}/images-idx3-ubyte", "wb").write(struct.pack(">IIII", 0x803, len(xs), 28, 28) + b"".join(xs))
open(f"{out}/labels-idx1-ubyte", "wb").write(struct.pack(">II", 0x801, len(ys)) + bytes(ys))
PY

svc_start
KEY=""

# ---- static files: types, headers, the same bytes as static/ -----------------------------------
csp_ok() {
  local csp
  csp=$(header Content-Security-Policy)
  [[ $csp == *"default-src 'self'"* && $csp == *"img-src 'self' blob: data:"* && $csp == *"object-src 'none'"* &&
    $csp == *"frame-ancestors 'none'"* && $csp != *unsafe-inline* && $csp != *unsafe-eval* ]]
}
for f in / /static/index.html /static/app.js /static/style.css; do
  case $f in
    / | *.html) want="text/html; charset=utf-8" src=static/index.html ;;
    *.js) want="text/javascript; charset=utf-8" src=static/app.js ;;
    *.css) want="text/css; charset=utf-8" src=static/style.css ;;
  esac
  req GET "$f"
  expect 200 "GET $f"
  is "$(header Content-Type)" "$want" "GET $f: Content-Type $want"
  csp_ok
  check $? "GET $f: Content-Security-Policy (self only, blob: images, no inline code)" "$(header Content-Security-Policy)"
  is "$(header X-Content-Type-Options)" nosniff "GET $f: X-Content-Type-Options: nosniff"
  cmp -s "$SVC_TMP/body" "$src"
  check $? "GET $f: the bytes of $src (the binary embeds the current static/)"
done

# Names outside static/: the router or the handler answers 404 JSON, never a file. curl sends
# the paths as written (--path-as-is); encoded dots and slashes must not reach the disk either.
for p in "/static/../README.md" "/static/..%2fREADME.md" "/static/%2e%2e%2fREADME.md" "/static/%2e%2e/README.md" \
  "/static/%2E%2E%2FMakefile" "/static/%252e%252e%252fREADME.md" "/static/.." "/static/%2e%2e" "/static/." \
  "/static/..%5cREADME.md" "/static/%2fetc%2fpasswd" "/static//etc/passwd" "/static/....//README.md" \
  "/../README.md" "/%2e%2e/README.md" "/static/../../../../etc/passwd" "/static/README.md%00.js" \
  "/static/nope.js" "/static/" "/static/README.md" "/static/Makefile" "/index.html/../README.md"; do
  req GET "$p" --path-as-is
  expect_error 404 not_found "GET $p: 404 JSON"
  if grep -q -e 'rtaas' -e 'root:' "$SVC_TMP/body" && ! grep -q '"error"' "$SVC_TMP/body"; then
    not_ok "GET $p: no file content in the reply" "$(head -c 200 "$SVC_TMP/body")"
  fi
done
req POST / -d x; expect_error 405 method_not_allowed "POST /: 405"
req GET /v1/datasets; expect_error 401 unauthorized "the API still wants a key (the dashboard routes need none)"

# ---- data through the API ---------------------------------------------------------------------
KEY=$(svc_key dashboard) && [[ $KEY == rtaas_* ]]
check $? "apikey create prints a key"
[[ -n $KEY ]] || svc_finish
req POST /v1/datasets -F name=bands3 -F "images=@$D/images-idx3-ubyte" -F "labels=@$D/labels-idx1-ubyte"
expect 201 "POST /v1/datasets (IDX, 300 images of 3 classes)"
DS=$(jf id)
json_post /v1/backbones '{"name": "source-natural", "method": "natural", "arch": "smallcnn", "seed": 1,
  "dataset": {"id": "'"$DS"'"}, "test": {"id": "'"$DS"'"}, "params": {"epochs": 1, "batch_size": 32},
  "eval": {"examples": 50, "attacks": [{"kind": "pgd", "steps": 2}]}}'
expect 202 "POST /v1/backbones (a natural smallcnn source, one epoch)"
BB=$(jf id) BB_JOB=$(jf job)
wait_job "$BB_JOB" 120
is "$JOB_STATUS" succeeded "the backbone's training job succeeds"
[[ -n $DS && -n $BB && $JOB_STATUS == succeeded ]] || svc_finish

# ---- the browser ------------------------------------------------------------------------------
log=$SVC_TMP/browser.log
DASH_URL=$SVC_URL DASH_KEY=$KEY DASH_DATASET=$DS DASH_BACKBONE=$BB DASH_OUT=$OUT_DIR DASH_CHROMIUM=$CHROMIUM \
  timeout -k 5 240 node tests/browser/dashboard.test.js >"$log" 2>&1
rc=$?
cat "$log"
n_ok=$(grep -c '^ok - ' "$log")
n_bad=$(grep -c '^not ok - ' "$log")
SVC_CHECKS=$((SVC_CHECKS + n_ok + n_bad)) SVC_FAILS=$((SVC_FAILS + n_bad))
if [[ $rc -ne 0 && $n_bad -eq 0 ]]; then
  not_ok "the browser test exits 0 (status $rc$([[ $rc == 124 ]] && echo ', timed out'))"
fi
for s in list.png transfer.png; do
  [[ -s $OUT_DIR/$s ]]
  check $? "screenshot $s saved under $OUT_DIR"
done

svc_finish
