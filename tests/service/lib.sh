# shellcheck shell=bash
# Harness for the service suites (tests/suites/service*.sh), sourced, not run: starts
# `rtaas serve` on a private data dir and port, makes API keys, and offers curl and TAP helpers.
#
# A suite does:
#   . tests/service/lib.sh
#   svc_init service          # skips (exit 0) without curl, initdb or `rtaas routes`
#   svc_start                 # waits for /readyz
#   KEY=$(svc_key acme)
#   req GET /v1/datasets; expect 200 "list datasets"
#   svc_finish                # stops the server (checked), prints the tally, sets the exit status
#
# Variables the suites read: SVC_TMP (scratch, removed at exit), SVC_URL, RTAAS (the binary),
# STATUS, BODY, HEADERS (after req), KEY (the bearer key req sends; empty: none), PY; and
# SVC_SERVE_ARGS (words after `rtaas serve`, e.g. --no-workers), which they may set.
# RTAAS_SVC_KEEP=1 keeps the scratch dir; the server log is always copied to
# $RTAAS_TEST_OUT/<suite>.server.log.

SVC_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RTAAS=${RTAAS_BIN:-$SVC_ROOT/${B:-build}/rtaas}
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3
SVC_NAME=service
SVC_TMP=""
SVC_PID=""
SVC_URL=""
SVC_FAILS=0
SVC_CHECKS=0
SVC_PSQL=()
STATUS="" BODY="" HEADERS="" LAST_REQ=""
KEY=${KEY:-}

# ---- TAP ------------------------------------------------------------------------------------

ok() { SVC_CHECKS=$((SVC_CHECKS + 1)); echo "ok - $SVC_NAME: $*"; }

# not_ok DESC [detail...]: a failed check, with details as TAP comments.
not_ok() {
  SVC_CHECKS=$((SVC_CHECKS + 1)) SVC_FAILS=$((SVC_FAILS + 1))
  echo "not ok - $SVC_NAME: $1"
  shift
  local d
  for d in "$@"; do printf '%s\n' "$d" | sed 's/^/#   /'; done
}

# check COND-STATUS DESC [detail...]: ok when the status (0 or not) of the previous command was 0.
check() { local rc=$1; shift; if [[ $rc -eq 0 ]]; then ok "$1"; else not_ok "$@"; fi; }

# is GOT WANT DESC
is() {
  if [[ "$1" == "$2" ]]; then ok "$3"; else not_ok "$3" "got:  $1" "want: $2"; fi
}

skip() { SVC_CHECKS=$((SVC_CHECKS + 1)); echo "ok - $SVC_NAME: $1 # SKIP ${2:-}"; }

# The whole suite skips: one TAP line, exit 0.
svc_skip_all() { echo "ok - $SVC_NAME # SKIP $*"; exit 0; }

# Details of the last request for a failure: what was sent, what came back, and the server's
# log lines for its request id (X-Request-Id), else the log's last lines.
req_detail() {
  echo "request: $LAST_REQ -> $STATUS"
  echo "body: $(head -c 600 <<<"$BODY")"
  [[ -s $SVC_TMP/curl.err ]] && echo "curl: $(head -c 300 "$SVC_TMP/curl.err")"
  local rid
  rid=$(grep -i '^x-request-id:' <<<"$HEADERS" | head -n1 | cut -d: -f2- | tr -d ' \r')
  if [[ -n $rid && -f $SVC_TMP/server.log ]] && grep -qF -- "$rid" "$SVC_TMP/server.log"; then
    echo "server log ($rid):"
    grep -F -- "$rid" "$SVC_TMP/server.log" | tail -n 8
  elif [[ -f $SVC_TMP/server.log ]]; then
    echo "server log (last lines):"
    tail -n 6 "$SVC_TMP/server.log"
  fi
}

# expect STATUS DESC: checks the status of the last request.
expect() {
  if [[ $STATUS == "$1" ]]; then ok "$2"; else not_ok "$2 (want $1)" "$(req_detail)"; fi
}

# expect_error STATUS CODE DESC [FIELD]: the status, and a JSON error body with that code (and
# field, when given; FIELD* matches fields that start with FIELD, e.g. dataset.classes[1]).
expect_error() {
  local want=$1 code=$2 desc=$3 field=${4-} got_code got_field
  got_code=$(jf error.code 2>/dev/null)
  got_field=$(jf error.field 2>/dev/null)
  if [[ $STATUS != "$want" ]]; then
    not_ok "$desc (want $want $code)" "$(req_detail)"
  elif [[ $got_code != "$code" ]]; then
    not_ok "$desc (want error code $code)" "$(req_detail)"
  elif [[ -n $field && $field != *'*' && $got_field != "$field" ]] ||
    [[ $field == *'*' && $got_field != "${field%'*'}"* ]]; then
    not_ok "$desc (want error field $field)" "$(req_detail)"
  elif ! jpy 'isinstance(d["error"].get("message"), str) and d["error"]["message"] != ""' >/dev/null; then
    not_ok "$desc (error without a message)" "$(req_detail)"
  elif [[ $(header Content-Type) != application/json* ]]; then
    not_ok "$desc (Content-Type $(header Content-Type), want application/json)" "$(req_detail)"
  else
    ok "$desc"
  fi
}

# ---- JSON -----------------------------------------------------------------------------------

# jf PATH [JSON]: a field of $BODY (or JSON) by a dotted path (a.b.0.c; "#" as the last part is a
# length). Strings print raw, other values as JSON, null as "null"; a missing path prints nothing
# and fails.
jf() {
  "$PY" -c '
import json, sys
try:
    v = json.loads(sys.argv[2])
except ValueError:
    sys.exit(2)
for k in [k for k in sys.argv[1].split(".") if k]:
    if k == "#" and isinstance(v, (list, dict, str)):
        v = len(v)
    elif isinstance(v, list) and k.lstrip("-").isdigit() and -len(v) <= int(k) < len(v):
        v = v[int(k)]
    elif isinstance(v, dict) and k in v:
        v = v[k]
    else:
        sys.exit(1)
print(v if isinstance(v, str) else json.dumps(v))
' "$1" "${2-$BODY}"
}

# jpy EXPR [JSON]: evaluates a Python expression over d = the parsed $BODY (or JSON); prints the
# result; fails when it is falsy (status 1) or raises (status 2).
jpy() {
  "$PY" -c '
import json, sys
try:
    d = json.loads(sys.argv[2])
    r = eval(sys.argv[1])
except Exception as e:
    print("error: %s" % e)
    sys.exit(2)
print(r if isinstance(r, str) else json.dumps(r))
sys.exit(0 if r else 1)
' "$1" "${2-$BODY}"
}

# schema_ok NAME DESC: $BODY validates against components.schemas.NAME of api/openapi.yaml (a
# check; skipped when no python3 on the PATH has jsonschema and yaml).
SVC_SCHEMA_PY="unset"
schema_ok() {
  if [[ $SVC_SCHEMA_PY == "unset" ]]; then
    SVC_SCHEMA_PY=""
    local p
    for p in python3 "$PY"; do
      if "$p" -c 'import jsonschema, yaml' 2>/dev/null; then SVC_SCHEMA_PY=$p; break; fi
    done
  fi
  if [[ -z $SVC_SCHEMA_PY ]]; then skip "$2" "no python3 with jsonschema"; return 0; fi
  local out
  # shellcheck disable=SC2016 # Python, not shell
  if out=$("$SVC_SCHEMA_PY" -c '
import json, sys, yaml, jsonschema
doc = yaml.safe_load(open(sys.argv[1]))
schema = dict(doc, **{"$ref": "#/components/schemas/" + sys.argv[2]})
errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(json.loads(sys.argv[3])), key=lambda e: list(e.absolute_path))
for e in errors[:5]:
    print("/".join(str(p) for p in e.absolute_path) or "(top)", ":", e.message[:200])
sys.exit(1 if errors else 0)
' "$SVC_ROOT/api/openapi.yaml" "$1" "$BODY" 2>&1); then
    ok "$2"
  else
    not_ok "$2" "$out"
  fi
}

# ---- HTTP -----------------------------------------------------------------------------------

# req METHOD PATH [curl args...]: sets STATUS, BODY and HEADERS; sends $KEY as a bearer key when
# set. The body is also in $SVC_TMP/body (for binary responses).
req() {
  local m=$1 p=$2
  shift 2
  local auth=()
  [[ -n ${KEY:-} ]] && auth=(-H "Authorization: Bearer $KEY")
  LAST_REQ="$m $p"
  STATUS=$(curl -sS --max-time "${SVC_CURL_TIMEOUT:-120}" -o "$SVC_TMP/body" -D "$SVC_TMP/headers" \
    -w '%{http_code}' -X "$m" "${auth[@]}" "$@" "$SVC_URL$p" 2>"$SVC_TMP/curl.err")
  BODY=$(tr -d '\0' <"$SVC_TMP/body" 2>/dev/null | head -c 2000000)
  HEADERS=$(tr -d '\r' <"$SVC_TMP/headers" 2>/dev/null)
}

# json_post PATH JSON: POST with a JSON body.
json_post() { req POST "$1" -H 'Content-Type: application/json' --data-binary "$2"; }

# header NAME: a header of the last response (the last one when 100 Continue came first).
header() { grep -i "^$1:" <<<"$HEADERS" | tail -n1 | cut -d: -f2- | sed 's/^ *//'; }

# wait_job ID TIMEOUT [STATES]: polls GET /v1/transfers/ID until its status is one of STATES
# (default: a final state) or TIMEOUT seconds pass; sets JOB_STATUS and leaves the last reply in
# STATUS/BODY; fails on timeout. Not in a subshell: the suites read what it sets.
JOB_STATUS=""
wait_job() {
  local id=$1 t=$2 states=${3:-succeeded failed cancelled} end
  JOB_STATUS=""
  [[ -n $id ]] || return 1
  end=$((SECONDS + t))
  while :; do
    req GET "/v1/transfers/$id"
    JOB_STATUS=$(jf status 2>/dev/null)
    [[ " $states " == *" $JOB_STATUS "* ]] && return 0
    ((SECONDS >= end)) && return 1
    sleep 0.5
  done
}

# ---- the common small workload -----------------------------------------------------------------

# svc_datasets DIR [npz]: uploads DIR's IDX pair (sets DS) and, with npz, DIR/data.npz (sets DN):
# the files tests/service/mkdata.py writes; each upload is a check.
# shellcheck disable=SC2034 # DS, DN, BB and BBJOB are for the suites
svc_datasets() {
  req POST /v1/datasets -F name=tiny -F "images=@$1/images-idx3-ubyte.gz" -F "labels=@$1/labels-idx1-ubyte.gz"
  expect 201 "upload an IDX pair"
  DS=$(jf id)
  if [[ ${2:-} == npz ]]; then
    req POST "/v1/datasets?name=npz" -H 'Content-Type: application/octet-stream' --data-binary "@$1/data.npz"
    expect 201 "upload an .npz"
    DN=$(jf id)
  fi
}

# svc_backbone PER_CLASS PARAMS EVAL: trains the natural small CNN on classes 0-4 of $DS
# (PER_CLASS images each, tested on the same classes) with PARAMS (a JSON object) and EVAL (the
# member "eval": {...}); waits up to 300 s. Sets BB, BBJOB and JOB_STATUS; the suite ends unless
# the job succeeded.
# shellcheck disable=SC2034
svc_backbone() {
  json_post /v1/backbones "{\"name\": \"src\", \"method\": \"natural\", \"arch\": \"smallcnn\", \"seed\": 1,
    \"dataset\": {\"id\": \"$DS\", \"classes\": [0, 1, 2, 3, 4], \"per_class\": $1},
    \"test\": {\"id\": \"$DS\", \"classes\": [0, 1, 2, 3, 4]}, \"params\": $2, $3}"
  expect 202 "train a small backbone"
  BB=$(jf id) BBJOB=$(jf job)
  wait_job "$BBJOB" 300
  is "$JOB_STATUS" succeeded "the backbone's job succeeds"
  [[ $JOB_STATUS == succeeded ]] || { req_detail | sed 's/^/#   /'; svc_finish; }
}

# svc_long_lwf EVAL: queues an LwF transfer from $BB long enough to interrupt (classes 5-9 of
# $DN, 300 images each, 40 epochs: some 30 s on one CPU thread), a checkpoint every 2 s; sets T.
# shellcheck disable=SC2034
svc_long_lwf() {
  json_post /v1/transfers "{\"backbone\": \"$BB\", \"method\": \"lwf\", \"seed\": 5,
    \"dataset\": {\"id\": \"$DN\", \"classes\": [5, 6, 7, 8, 9], \"per_class\": 300},
    \"test\": {\"id\": \"$DS\", \"classes\": [5, 6, 7, 8, 9]},
    \"params\": {\"epochs\": 40, \"checkpoint_seconds\": 2}, $1}"
  expect 202 "queue a long lwf transfer"
  T=$(jf id)
}

# ---- server ---------------------------------------------------------------------------------

pg_bin() { # the newest Debian PostgreSQL's bin dir
  local d
  d=$(printf "%s\n" /usr/lib/postgresql/*/bin | sort -V | tail -n1)
  [[ -n $d && -x $d/initdb ]] && echo "$d"
}

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# svc_init NAME: checks what the suite needs (else skips), makes the scratch dir, sets the env.
svc_init() {
  SVC_NAME=$1
  command -v curl >/dev/null || svc_skip_all "curl not installed"
  [[ -n $(pg_bin) ]] || svc_skip_all "PostgreSQL server not installed (/usr/lib/postgresql/*/bin/initdb; Debian postgresql)"
  [[ -x $RTAAS ]] || svc_skip_all "$RTAAS not built"
  "$RTAAS" routes >/dev/null 2>&1 || svc_skip_all "build/rtaas has no service yet (\`rtaas routes\` failed)"
  SVC_TMP=$(mktemp -d "${TMPDIR:-/tmp}/rtaas-$SVC_NAME.XXXXXX") || svc_skip_all "mktemp failed"
  # traversable: a server running as root runs its PostgreSQL as another user under it
  chmod 755 "$SVC_TMP"
  trap svc_cleanup EXIT
  trap 'exit 130' INT TERM
  unset RTAAS_DATABASE_URL
  export RTAAS_DATA_DIR=$SVC_TMP/data
  # 16 MiB: the small CNN's weights (13 MB) fit, tests/service/mkdata.py's big.dat (17 MiB) does not
  export RTAAS_MAX_UPLOAD=${SVC_MAX_UPLOAD:-$((16 * 1024 * 1024))}
  export RTAAS_DEVICES=cpu
  export RTAAS_CPU_THREADS=1
  local port
  port=$(free_port) || svc_skip_all "no free port"
  export RTAAS_LISTEN=127.0.0.1:$port
  SVC_URL=http://$RTAAS_LISTEN
  : >"$SVC_TMP/server.log"
}

# svc_start [TIMEOUT]: starts `rtaas serve $SVC_SERVE_ARGS` in the background and waits for /readyz (200);
# a failure to start is a failed check and ends the suite.
svc_start() {
  local t=${1:-60} end
  echo "=== rtaas serve (start at $(date +%T))" >>"$SVC_TMP/server.log"
  # shellcheck disable=SC2086 # SVC_SERVE_ARGS: words such as --no-workers
  "$RTAAS" serve ${SVC_SERVE_ARGS:-} >>"$SVC_TMP/server.log" 2>&1 &
  SVC_PID=$!
  end=$((SECONDS + t))
  while :; do
    if ! kill -0 "$SVC_PID" 2>/dev/null; then
      wait "$SVC_PID"
      not_ok "server starts and becomes ready (it exited with status $?)" "$(tail -n 20 "$SVC_TMP/server.log")"
      SVC_PID=""
      svc_finish
    fi
    if [[ $(curl -s -o "$SVC_TMP/readyz" -w '%{http_code}' --max-time 2 "$SVC_URL/readyz" 2>/dev/null) == 200 ]]; then
      return 0
    fi
    if ((SECONDS >= end)); then
      not_ok "server ready within ${t}s" "/readyz: $(head -c 300 "$SVC_TMP/readyz" 2>/dev/null)" \
        "$(grep -v '"route":"/readyz"' "$SVC_TMP/server.log" | tail -n 12)" \
        "$(tail -n 5 "$RTAAS_DATA_DIR/pg.log" 2>/dev/null)"
      svc_finish
    fi
    sleep 0.2
  done
}

# svc_stop [TIMEOUT]: SIGTERM and wait; sets SVC_STOP_RC to the exit status, or "killed" after
# TIMEOUT s (then SIGKILL). Not in a subshell: the server is this shell's child.
SVC_STOP_RC=""
svc_stop() {
  local t=${1:-30} end rc
  [[ -n $SVC_PID ]] || { SVC_STOP_RC=none; return 0; }
  kill -TERM "$SVC_PID" 2>/dev/null
  end=$((SECONDS + t))
  while kill -0 "$SVC_PID" 2>/dev/null && ((SECONDS < end)); do sleep 0.2; done
  if kill -0 "$SVC_PID" 2>/dev/null; then
    kill -KILL "$SVC_PID" 2>/dev/null
    wait "$SVC_PID" 2>/dev/null
    rc=killed
  else
    wait "$SVC_PID" 2>/dev/null
    rc=$?
  fi
  SVC_PID=""
  SVC_STOP_RC=$rc
}

# svc_kill9: kills the server with SIGKILL (its PostgreSQL lives on, as after a crash).
svc_kill9() {
  [[ -n $SVC_PID ]] || return 0
  kill -KILL "$SVC_PID" 2>/dev/null
  wait "$SVC_PID" 2>/dev/null
  SVC_PID=""
  echo "=== rtaas serve killed with SIGKILL at $(date +%T)" >>"$SVC_TMP/server.log"
}

# svc_restart_kill9 [TIMEOUT]: SIGKILL, then a new server on the same data dir and port.
svc_restart_kill9() { svc_kill9; svc_start "${1:-60}"; }

# The private cluster's postmaster pid, when one runs.
pg_pid() {
  local f=$RTAAS_DATA_DIR/pg/postmaster.pid p
  [[ -f $f ]] || return 1
  p=$(head -n1 "$f")
  [[ $p =~ ^[0-9]+$ ]] && kill -0 "$p" 2>/dev/null && echo "$p"
}

# pg_as_owner CMD...: runs CMD as the owner of the cluster's directory (PostgreSQL refuses root).
pg_as_owner() {
  local owner
  owner=$(stat -c %U "$RTAAS_DATA_DIR/pg" 2>/dev/null)
  if [[ -z $owner || $owner == "$(id -un)" ]]; then
    "$@"
  elif command -v runuser >/dev/null && [[ $(id -u) -eq 0 ]]; then
    runuser -u "$owner" -- "$@"
  else
    sudo -n -u "$owner" -- "$@"
  fi
}

# pgctl ARGS...: pg_ctl on the private cluster, as its owner.
pgctl() { pg_as_owner "$(pg_bin)/pg_ctl" -D "$RTAAS_DATA_DIR/pg" "$@"; }

# sql QUERY: runs QUERY on the private cluster's database `rtaas`, through its unix socket
# (socket dir and port from postmaster.pid); prints rows unaligned, tuples only, "|" between
# fields. Finds a way in the first time: as the current user, as the cluster's owner, as
# the roles rtaas or postgres.
sql() {
  local f=$RTAAS_DATA_DIR/pg/postmaster.pid host port
  [[ -f $f ]] || { echo "sql: no $f" >&2; return 1; }
  port=$(sed -n 4p "$f")
  host=$(sed -n 5p "$f")
  [[ -n $host ]] || host=$RTAAS_DATA_DIR/pg
  local base=(psql -X -q -A -t -v ON_ERROR_STOP=1 -h "$host" -p "$port" -d rtaas)
  if [[ ${#SVC_PSQL[@]} -eq 0 ]]; then
    local owner try
    owner=$(stat -c %U "$RTAAS_DATA_DIR/pg")
    # shellcheck disable=SC2086 # $try is empty or "-U role"
    for try in "" "-U $owner" "-U rtaas" "-U postgres" "as-owner"; do
      if [[ $try == as-owner ]]; then
        if pg_as_owner "${base[@]}" -c 'SELECT 1' >/dev/null 2>&1; then SVC_PSQL=(pg_as_owner); break; fi
      elif "${base[@]}" $try -c 'SELECT 1' >/dev/null 2>&1; then
        SVC_PSQL=(env) ; [[ -n $try ]] && SVC_PSQL=(env PGUSER="${try#-U }")
        break
      fi
    done
    [[ ${#SVC_PSQL[@]} -gt 0 ]] || { echo "sql: cannot connect to $host:$port/rtaas" >&2; return 1; }
  fi
  "${SVC_PSQL[@]}" "${base[@]}" -c "$1"
}

# tmp_files: the files under the server's temporary upload dir.
tmp_files() { find "$RTAAS_DATA_DIR/tmp" -type f 2>/dev/null | wc -l | tr -d ' '; }

# svc_key TENANT: a new API key for TENANT (the key alone on stdout).
svc_key() {
  local k
  k=$("$RTAAS" apikey create --tenant "$1" 2>>"$SVC_TMP/server.log" | tail -n1 | tr -d '[:space:]')
  [[ -n $k ]] || { echo "svc_key: apikey create --tenant $1 printed nothing" >&2; return 1; }
  echo "$k"
}

# svc_finish: stops the server (a clean stop is a check: exit 0 within 30 s, its PostgreSQL
# stopped), prints the tally and exits 1 when anything failed.
svc_finish() {
  if [[ -n $SVC_PID ]]; then
    svc_stop 30
    is "$SVC_STOP_RC" 0 "server exits 0 on SIGTERM within 30 s"
    local left end=$((SECONDS + 10))
    while left=$(pg_pid) && ((SECONDS < end)); do sleep 0.2; done
    if [[ -n $left ]]; then
      not_ok "server stops its PostgreSQL on exit" "postmaster $left still runs"
    else
      ok "server stops its PostgreSQL on exit"
    fi
  fi
  echo "# $SVC_NAME: $SVC_CHECKS checks, $SVC_FAILS failed"
  exit $((SVC_FAILS > 0))
}

svc_cleanup() {
  local rc=$?
  [[ -n $SVC_PID ]] && svc_stop 20
  local p
  if [[ -n $SVC_TMP && -n ${RTAAS_DATA_DIR:-} ]] && p=$(pg_pid); then
    pgctl stop -m immediate >/dev/null 2>&1 || kill -QUIT "$p" 2>/dev/null
  fi
  if [[ -n $SVC_TMP && -f $SVC_TMP/server.log ]]; then
    local out=${RTAAS_TEST_OUT:-$SVC_ROOT/${B:-build}/test-output}
    mkdir -p "$out" 2>/dev/null && cp "$SVC_TMP/server.log" "$out/$SVC_NAME.server.log" 2>/dev/null
  fi
  if [[ -n $SVC_TMP && ${RTAAS_SVC_KEEP:-0} != 1 ]]; then
    rm -rf "$SVC_TMP"
  elif [[ -n $SVC_TMP ]]; then
    echo "# kept $SVC_TMP"
  fi
  exit "$rc"
}
