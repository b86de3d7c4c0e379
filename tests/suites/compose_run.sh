#!/usr/bin/env bash
# docker/compose.yaml rehearsed without a Docker engine: its services run as the image would run
# them, each rtaas container in its own pid, uts and mount namespaces (rtaas is pid 1, the
# hostname is a random container id, /run/secrets holds bind-mounted secret files, the data dir
# is an empty tmpfs, the user is the image's non-root one), all on one private network namespace
# where `postgres` resolves and ports 5432 and 8080 are free. The commands, environments, secrets,
# user, entrypoint and health checks are read from docker/compose.yaml and docker/Dockerfile, not
# restated here; the secrets are made by running docker/secrets/README.md's commands.
#
# What it shows: the API node (`serve --no-workers`) and CPU workers (`--profile cpu`, two
# replicas) reach PostgreSQL by the service name with the password from the secret file; the
# image's HEALTHCHECK command passes; `exec api rtaas apikey create` works; the GPU worker without
# a GPU stops at once, saying why; jobs run on the workers only and their artifacts download from
# the API node although no file system is shared; `docker stop` (SIGTERM, 10 s grace) of a worker
# in the middle of a job ends it within the grace and the other replica finishes the job; a worker
# killed mid-job and restarted (same hostname, pid 1 again) takes its job back at once instead of
# after the lease. What it cannot show: the image build, the NVIDIA runtime, Docker's DNS.
# Needs root (namespaces, as the CI runs); skips, saying why, without it.
# shellcheck disable=SC2154 # SVC_<service>_* and IMG_* come from the generated plan ($CT/plan.sh)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
. tests/service/lib.sh
svc_init compose_run

[[ $(id -u) -eq 0 ]] || svc_skip_all "needs root for the containers' namespaces (unshare, mount)"
for t in unshare nsenter setpriv runuser ip pgrep; do
  command -v "$t" >/dev/null || svc_skip_all "$t not installed (util-linux, iproute2, procps)"
done
unshare --net --pid --fork --uts --mount --mount-proc true 2>/dev/null ||
  svc_skip_all "this kernel or sandbox refuses new namespaces (unshare --net --pid --uts --mount)"
id postgres >/dev/null 2>&1 || svc_skip_all "no system user postgres (Debian postgresql)"
"$PY" -c 'import yaml' 2>/dev/null || svc_skip_all "python3-yaml not installed"

PGB=$(pg_bin)
CT=$SVC_TMP/compose
mkdir -p "$CT"/{etc,secrets}
D=$SVC_TMP/files
"$PY" tests/service/mkdata.py "$D" --big-bytes 1 >/dev/null || svc_skip_all "tests/service/mkdata.py failed"

# ---- the plan: what docker/compose.yaml and docker/Dockerfile say ---------------------------
"$PY" - >"$CT/plan.sh" 2>"$CT/plan.err" <<'PY' || { not_ok "read docker/compose.yaml and docker/Dockerfile" "$(cat "$CT/plan.err")"; svc_finish; }
import json, os, re, shlex, sys, yaml
sys.path.insert(0, "tests/service")
import dockerfile

q = shlex.quote
def arr(name, xs):
    print(f"{name}=(" + " ".join(q(str(x)) for x in xs) + ")")

doc = yaml.safe_load(open("docker/compose.yaml"))
def subst(v):  # ${VAR:-default} and ${VAR}, as compose does from the environment
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), str(v))
for name, s in doc["services"].items():
    n = name.replace("-", "_")
    e = s.get("environment") or {}
    if isinstance(e, list):
        e = dict(x.split("=", 1) for x in e if "=" in x)
    arr(f"SVC_{n}_ENV", [f"{k}={subst(v)}" for k, v in e.items()])
    c = s.get("command") or []
    arr(f"SVC_{n}_CMD", c if isinstance(c, list) else shlex.split(c))
    arr(f"SVC_{n}_SECRETS", [x if isinstance(x, str) else x["source"] for x in s.get("secrets") or []])
    t = (s.get("healthcheck") or {}).get("test") or []
    print(f"SVC_{n}_HC={q(t[1] if t and t[0] == 'CMD-SHELL' else '')}")
    print(f"SVC_{n}_GRACE={dockerfile.seconds(s.get('stop_grace_period', '10s'))}")  # docker stop's grace
for name, s in (doc.get("secrets") or {}).items():
    print(f"SECRET_FILE_{name}={q(os.path.normpath(os.path.join('docker', s['file'])))}")
arr("SECRETS", list(doc.get("secrets") or {}))

final = dockerfile.final_stage(dockerfile.instructions("docker/Dockerfile"))
env = []
for i, a in final:
    if i == "ENV":
        toks = shlex.split(a)
        env += toks if "=" in toks[0] else [toks[0] + "=" + " ".join(toks[1:])]
arr("IMG_ENV", env)
last = lambda kind: dockerfile.last(final, kind)
user = last("USER").split(":")[0]
m = next(re.search(r"useradd\b[^&;]*?--uid\s+(\d+)[^&;]*?--home-dir\s+(\S+)[^&;]*\s" + re.escape(user) + r"\b", a)
         for i, a in final if i == "RUN" and "useradd" in a)
print(f"IMG_USER={q(user)}; IMG_UID={m.group(1)}; IMG_HOME={q(m.group(2))}; IMG_WORKDIR={q(last('WORKDIR'))}")
print(f"IMG_HC={q(last('HEALTHCHECK').split(' CMD ', 1)[1])}")
arr("IMG_ENTRY", json.loads(last("ENTRYPOINT")))
PY
# shellcheck disable=SC1091
. "$CT/plan.sh"
# the value of NAME in an env list: envval NAME K=V...
envval() { local n=$1 kv; shift; for kv in "$@"; do [[ $kv == "$n="* ]] && { echo "${kv#*=}"; return 0; }; done; return 1; }

# ---- the secrets, made by the commands docker/secrets/README.md and README.md give ------------
# (each in an empty copy of the tree's docker/secrets/; the first one's files are used)
sh_block() { awk -v from="$2" 'index($0, from) == 1 {f = 1} f && /^ *```sh$/ {b = 1; next} b && /^ *```$/ {exit} b' "$1"; }
k=0
for src in "docker/secrets/README.md:#" "README.md:## Deploy with Docker Compose"; do
  k=$((k + 1))
  file=${src%%:*} block=$(sh_block "${src%%:*}" "${src#*:}")
  mkdir -p "$CT/root$k/docker/secrets"
  (cd "$CT/root$k" && bash -e <<<"$block") >"$CT/secrets$k.log" 2>&1
  [[ -n $block ]]; check $? "$file's commands make the secrets" "$block" "$(cat "$CT/secrets$k.log")"
  for s in "${SECRETS[@]}"; do
    v=SECRET_FILE_$s
    f=$CT/root$k/${!v}
    [[ -s $f && $(stat -c %a "$f") == 644 ]]; check $? "$file: secret $s: ${!v} made, mode 644" "$(ls -l "$f" 2>&1)"
    [[ $k -eq 1 ]] && cp -p "$f" "$CT/secrets/$s" 2>/dev/null
  done
  [[ $(stat -c %a "$CT/root$k/docker/secrets") == 700 ]]; check $? "$file: docker/secrets/ is mode 700 afterwards"
done
# what a container's /run/secrets/NAME is: compose bind-mounts the host file, owner and mode kept
secret_path() { local p=$1; [[ $p == /run/secrets/* ]] && p=$CT/secrets/${p#/run/secrets/}; echo "$p"; }

# ---- the project's network and the containers -----------------------------------------------
unshare --net -- sleep 100000 &
NET_PID=$!
NETNS=/proc/$NET_PID/ns/net
sleep 0.2
nsenter --net="$NETNS" -- ip link set lo up
check $? "a private network for the project (loopback up)"
# the test's curl reaches the API's published port on that network
curl() { nsenter --net="$NETNS" -- curl "$@"; }
SVC_URL=http://127.0.0.1:$(envval RTAAS_LISTEN "${SVC_api_ENV[@]}" | sed 's/.*://')

{ echo "127.0.0.1 localhost"; echo "127.0.0.1 postgres api worker worker-cpu"; } >"$CT/etc/hosts"
cp /etc/passwd "$CT/etc/passwd" && cp /etc/group "$CT/etc/group"
echo "$IMG_USER:x:$IMG_UID:$IMG_UID::$IMG_HOME:/usr/sbin/nologin" >>"$CT/etc/passwd"
echo "$IMG_USER:x:$IMG_UID:" >>"$CT/etc/group"
cp "$RTAAS" "$CT/rtaas"
# pid 1 of a container, as root in its new namespaces: the image's view (hosts, the user, a
# tmpfs home, rtaas in /usr/local/bin, the secrets), then the entrypoint as the image's user
cat >"$CT/init.sh" <<'SH'
set -e
name=$1 host=$2 secrets=$3
shift 3
hostname "$host"
mount -t tmpfs -o mode=755 tmpfs /run
mkdir /run/secrets
for s in $secrets; do
  : >"/run/secrets/$s"
  mount --bind -o ro "$CT/secrets/$s" "/run/secrets/$s"
done
for f in hosts passwd group; do mount --bind -o ro "$CT/etc/$f" "/etc/$f"; done
mount -t tmpfs -o mode=755 tmpfs "$(dirname "$IMG_HOME")"
mkdir -p "$IMG_HOME" "$IMG_WORKDIR"
chown "$IMG_UID:$IMG_UID" "$IMG_HOME"
mount -t tmpfs -o mode=755 tmpfs /usr/local/bin
cp "$CT/rtaas" /usr/local/bin/rtaas
cd "$IMG_WORKDIR"
mapfile -t E <"$CT/$name.env"
exec setpriv --reuid="$IMG_UID" --regid="$IMG_UID" --clear-groups env -i "${E[@]}" "$@"
SH
export CT IMG_HOME IMG_WORKDIR IMG_UID

declare -A CTR_PID=() CTR_UP=() CTR_HOST=() CTR_GRACE=()
# ctr_start NAME SERVICE [HOSTNAME]: one container of SERVICE (compose's command and environment
# over the image's ENV); a new random hostname unless one is given (a restarted container keeps
# its own). Sets CTR_PID[NAME], rtaas's pid as seen from here.
ctr_start() {
  local name=$1 svc=${2//-/_} host=${3:-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')}
  local -n cenv=SVC_${svc}_ENV ccmd=SVC_${svc}_CMD csec=SVC_${svc}_SECRETS
  CTR_HOST[$name]=$host
  local -n cgrace=SVC_${svc}_GRACE
  CTR_GRACE[$name]=$cgrace
  printf '%s\n' PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "HOSTNAME=$host" "HOME=$IMG_HOME" \
    "${IMG_ENV[@]}" "${cenv[@]}" >"$CT/$name.env"
  echo "=== $name start $(date +%T)" >>"$CT/$name.log"
  nsenter --net="$NETNS" -- unshare --pid --fork --uts --mount --mount-proc -- \
    bash "$CT/init.sh" "$name" "$host" "${csec[*]}" "${IMG_ENTRY[@]}" "${ccmd[@]}" >>"$CT/$name.log" 2>&1 &
  CTR_UP[$name]=$!
  local i p=""
  for ((i = 0; i < 50; i++)); do
    p=$(pgrep -P "${CTR_UP[$name]}" | head -n1) && [[ -n $p ]] && break
    sleep 0.1
  done
  CTR_PID[$name]=$p
  [[ -n $p ]]
}
# ctr_exec NAME CMD...: `docker compose exec NAME CMD`: in its namespaces and workdir, as the
# image's user, with its environment
ctr_exec() {
  local name=$1 E
  shift
  mapfile -t E <"$CT/$name.env"
  nsenter -t "${CTR_PID[$name]}" -n -u -m -p -w -- setpriv --reuid="$IMG_UID" --regid="$IMG_UID" --clear-groups \
    env -i "${E[@]}" "$@"
}
# ctr_stop NAME SIGNAL: `docker stop` (TERM, then KILL after the service's stop_grace_period) or
# `docker kill` (KILL). Sets CTR_RC (the exit status) and CTR_SECS (seconds to exit).
ctr_stop() {
  local name=$1 sig=$2 grace=${CTR_GRACE[$1]} t0=$SECONDS t0r=$EPOCHREALTIME up=${CTR_UP[$1]}
  kill -"$sig" "${CTR_PID[$name]}" 2>/dev/null
  while kill -0 "$up" 2>/dev/null && ((SECONDS - t0 < grace)); do sleep 0.1; done
  kill -0 "$up" 2>/dev/null && kill -KILL "${CTR_PID[$name]}" 2>/dev/null
  wait "$up" 2>/dev/null
  CTR_RC=$?
  CTR_SECS=$(since "$t0r")
  CTR_UP[$name]=""
}
# since T0: seconds since $EPOCHREALTIME was T0, to a tenth
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
# ctr_wait_exit NAME SECONDS: whether the container exits by itself within SECONDS; sets CTR_RC
ctr_wait_exit() {
  local up=${CTR_UP[$1]} end=$((SECONDS + $2))
  while kill -0 "$up" 2>/dev/null && ((SECONDS < end)); do sleep 0.2; done
  kill -0 "$up" 2>/dev/null && return 1
  wait "$up" 2>/dev/null
  CTR_RC=$?
  CTR_UP[$1]=""
}
# the image's HEALTHCHECK (shell form: /bin/sh -c) in the api container
api_healthy() { ctr_exec api /bin/sh -c "$IMG_HC" >/dev/null 2>&1; }

pg() { nsenter --net="$NETNS" -- runuser -u postgres -- "$@"; }
psql_ct() { pg "$PGB/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$CT/pgrun" -p 5432 -U "$PG_USER" -d "$PG_DB" -c "$1"; }
pg_healthy() { pg env PATH="$PGB:/usr/bin:/bin" /bin/sh -c "$SVC_postgres_HC" >/dev/null 2>&1; }

# shellcheck disable=SC2317 # run by the EXIT trap
compose_cleanup() {
  local rc=$? n
  for n in "${!CTR_UP[@]}"; do
    [[ -n ${CTR_UP[$n]} ]] && kill -KILL "${CTR_PID[$n]}" 2>/dev/null
  done
  [[ -f $CT/pgdata/postmaster.pid ]] && pg "$PGB/pg_ctl" -D "$CT/pgdata" stop -m immediate >/dev/null 2>&1
  [[ -n ${NET_PID:-} ]] && kill "$NET_PID" 2>/dev/null
  local out=${RTAAS_TEST_OUT:-$SVC_ROOT/${B:-build}/test-output}
  mkdir -p "$out" && for n in "$CT"/*.log; do [[ -f $n ]] && cp "$n" "$out/compose_run.$(basename "$n")"; done
  (exit "$rc")
  svc_cleanup
}
trap compose_cleanup EXIT
chmod 755 "$CT" "$CT/etc"

# ---- postgres: the official image's start, as far as rtaas sees it --------------------------
# the role and database of POSTGRES_USER / POSTGRES_DB, the password from POSTGRES_PASSWORD_FILE,
# host connections asking scram-sha-256, listening on 5432
PG_USER=$(envval POSTGRES_USER "${SVC_postgres_ENV[@]}")
PG_DB=$(envval POSTGRES_DB "${SVC_postgres_ENV[@]}")
pwsrc=$(secret_path "$(envval POSTGRES_PASSWORD_FILE "${SVC_postgres_ENV[@]}")")
mkdir -p "$CT/pgdata" "$CT/pgrun" && chown postgres "$CT/pgdata" "$CT/pgrun"
# the image's entrypoint reads the file as its user postgres (so it must be readable by others)
printf '%s\n' "$(pg cat "$pwsrc")" >"$CT/pwfile" && chown postgres "$CT/pwfile"
! pg_healthy; check $? "the postgres health check fails while no server runs"
pg "$PGB/initdb" -D "$CT/pgdata" -U "$PG_USER" --pwfile="$CT/pwfile" --auth-local=trust --auth-host=scram-sha-256 >"$CT/initdb.log" 2>&1 &&
  pg "$PGB/pg_ctl" -D "$CT/pgdata" -l "$CT/pgrun/postgres.log" -w -t 60 \
    -o "-c listen_addresses=* -p 5432 -k $CT/pgrun" start >/dev/null 2>&1 &&
  pg "$PGB/psql" -X -q -h "$CT/pgrun" -p 5432 -U "$PG_USER" -d postgres -c "CREATE DATABASE \"$PG_DB\"" >/dev/null
check $? "postgres: a cluster with role $PG_USER (password from the secret), database $PG_DB" "$(tail -n 5 "$CT/initdb.log" "$CT/pgrun/postgres.log" 2>&1)"
healthy=1
for ((i = 0; i < 50; i++)); do pg_healthy && { healthy=0; break; }; sleep 0.2; done
check $healthy "postgres: the compose health check ($SVC_postgres_HC) passes"
[[ $healthy -eq 0 ]] || svc_finish

# ---- the API node ---------------------------------------------------------------------------
ctr_start api api
check $? "api: container started (rtaas ${SVC_api_CMD[*]} as pid 1)" "$(tail -n 5 "$CT/api.log")"
end=$((SECONDS + 60)) healthy=1
while ((SECONDS < end)); do
  api_healthy && { healthy=0; break; }
  kill -0 "${CTR_UP[api]}" 2>/dev/null || break
  sleep 0.5
done
check $healthy "api: the image's HEALTHCHECK passes within its 60 s start period" "$(tail -n 8 "$CT/api.log")"
[[ $healthy -eq 0 ]] || svc_finish
grep -q '"event":"started".*"devices":"".*"database":"external"' "$CT/api.log"
check $? "api: runs no worker and uses the external database" "$(grep '"started"' "$CT/api.log")"
! grep -q '"event":"signing_key"' "$CT/api.log"; check $? "api: signs links with the key from the secret file (no random-key warning)"
KEY=$(ctr_exec api rtaas apikey create --tenant acme 2>>"$CT/api.log" | tail -n1 | tr -d '[:space:]')
[[ $KEY == rtaas_* ]]; check $? "exec api rtaas apikey create --tenant acme prints a key"
req GET /v1/datasets; expect 200 "GET /v1/datasets with that key, on the published port"

# ---- the GPU worker: without a GPU it stops at once, saying why ------------------------------
ctr_start gpu worker
if "$RTAAS" info 2>/dev/null | grep -q 'cuda (cuDNN' && nvidia-smi -L >/dev/null 2>&1; then
  sleep 5
  kill -0 "${CTR_UP[gpu]}" 2>/dev/null; check $? "worker (GPU): keeps running on this GPU host" "$(tail -n 5 "$CT/gpu.log")"
else
  ctr_wait_exit gpu 30 && [[ $CTR_RC -ne 0 ]] && grep -q "names cuda:0, but this build or host has no CUDA device" "$CT/gpu.log"
  check $? "worker (GPU) on a host without one: exits non-zero within 30 s naming cuda:0" "rc ${CTR_RC:-running}" "$(tail -n 5 "$CT/gpu.log")"
fi

# ---- two CPU workers (--profile cpu, --scale worker-cpu=2) and a first job --------------------
ctr_start w1 worker-cpu && ctr_start w2 worker-cpu
check $? "worker-cpu: two containers started"
for w in w1 w2; do
  for ((i = 0; i < 100; i++)); do grep -q '"event":"worker_started"' "$CT/$w.log" && break; sleep 0.2; done
  grep -q "\"worker\":\"${CTR_HOST[$w]}:1:cpu\"" "$CT/$w.log"
  check $? "$w: its worker is named after the container (${CTR_HOST[$w]}:1:cpu)" "$(tail -n 5 "$CT/$w.log")"
done

svc_datasets "$D" npz
EVAL='"eval": {"eps": 0.1, "examples": 20, "gradient_maps": 2, "attacks": [{"kind": "pgd", "steps": 2}]}'
svc_backbone 40 '{"epochs": 1}' "$EVAL"
# same_blob JOB ARTIFACT: the last body is the artifact's blob (its sha256 in the database)
same_blob() {
  local want got
  want=$(psql_ct "SELECT sha256 FROM artifacts WHERE job_id = '$1' AND name = '$2'")
  got=$(sha256sum "$SVC_TMP/body" | cut -c1-64)
  [[ -n $want && $got == "$want" ]]
  check $? "its bytes are the stored blob's ($2)" "got $got ($(stat -c %s "$SVC_TMP/body") bytes), want $want"
}
req GET "/v1/transfers/$BBJOB/gradients"; expect 200 "its gradient grid downloads from the API node (no shared file system)"
same_blob "$BBJOB" gradients.png
workers=$(psql_ct "SELECT DISTINCT worker FROM jobs WHERE worker IS NOT NULL")
[[ -n $workers ]] && ! grep -qvE "^(${CTR_HOST[w1]}|${CTR_HOST[w2]}):1:cpu$" <<<"$workers"
check $? "jobs ran on the worker-cpu containers only" "$workers"

# ---- docker stop of the worker running a long job: the other replica finishes it --------------
svc_long_lwf "$EVAL"
# running_on CONTAINERS... : waits (90 s) until T trains with a checkpoint stored, on a worker of
# one of those containers, in an attempt after the first $MIN_ATT; prints the container's name
MIN_ATT=0
running_on() {
  local end=$((SECONDS + 90)) row c
  while ((SECONDS < end)); do
    row=$(psql_ct "SELECT worker FROM jobs WHERE id = '$T' AND state = 'running' AND checkpoint IS NOT NULL
                   AND lease_until > now() AND attempts > $MIN_ATT")
    for c in "$@"; do [[ $row == "${CTR_HOST[$c]}:1:cpu" ]] && { echo "$c"; return 0; }; done
    sleep 0.3
  done
  return 1
}
first=$(running_on w1 w2)
check $? "the transfer trains on a worker-cpu container, a checkpoint stored" "$(psql_ct "SELECT state, worker, checkpoint IS NOT NULL FROM jobs WHERE id = '$T'")"
[[ -n $first ]] || svc_finish
other=w1
[[ $first == w1 ]] && other=w2
ctr_stop "$first" TERM
[[ $CTR_RC -eq 0 && ${CTR_SECS%.*} -lt ${CTR_GRACE[$first]} ]]
check $? "docker stop $first (SIGTERM to pid 1 mid-job): exits 0 in $CTR_SECS s (stop_grace_period ${CTR_GRACE[$first]} s)" \
  "exit ${CTR_RC} after ${CTR_SECS} s" "$(tail -n 4 "$CT/$first.log")"
grep -q '"event":"job_requeued".*"reason":"worker stopping"' "$CT/$first.log"
check $? "$first put the job back in the queue as it stopped"
running_on "$other" >/dev/null
check $? "the other replica ($other) takes the job over and trains from a checkpoint" "$(psql_ct "SELECT state, worker FROM jobs WHERE id = '$T'")"

# ---- docker kill of that one and its restart: the job is back at once, not after the lease ----
# a new claim counts an attempt: until then the dead worker's row looks like a running one
MIN_ATT=$(psql_ct "SELECT attempts FROM jobs WHERE id = '$T'")
ctr_stop "$other" KILL
t_kill=$EPOCHREALTIME
log0=$(wc -l <"$CT/$other.log")
ctr_start "$other" worker-cpu "${CTR_HOST[$other]}"
check $? "restart $other with the same hostname (restart: unless-stopped)"
third=$(running_on "$other")
took=$(since "$t_kill")
tail -n +"$((log0 + 1))" "$CT/$other.log" >"$CT/restarted.log"
[[ -n $third && ${took%.*} -lt 50 ]] && grep -q '"event":"lease_released".*"reason":"its process is gone"' "$CT/restarted.log"
check $? "the restarted $other releases its dead self's lease and runs the job again (${took} s; the lease is 60 s)" \
  "$(grep -E 'lease_released|job_started' "$CT/restarted.log" | tail -n 4)"
wait_job "$T" 420
is "$JOB_STATUS" succeeded "the transfer succeeds"
req GET "/v1/transfers/$T/report"; expect 200 "its report"
jpy 'd["training"]["resumed"] is True and [e["epoch"] for e in d["training"]["epochs"]] == list(range(40))' >/dev/null
check $? "the report: resumed from a checkpoint, each of the 40 epochs logged once" "$(jpy '[d["training"]["resumed"], [e["epoch"] for e in d["training"]["epochs"]]]')"
req GET "/v1/transfers/$T/head"; expect 200 "its weights download from the API node"
same_blob "$T" model.safetensors   # lwf changes the whole network: /head serves the model

# ---- docker compose down ---------------------------------------------------------------------
for c in "$other" api; do
  ctr_stop "$c" TERM
  [[ $CTR_RC -eq 0 && ${CTR_SECS%.*} -lt ${CTR_GRACE[$c]} ]]
  check $? "down: $c exits 0 on SIGTERM in $CTR_SECS s (grace ${CTR_GRACE[$c]} s)" "exit $CTR_RC after $CTR_SECS s" "$(tail -n 3 "$CT/$c.log")"
done
if [[ -n ${CTR_UP[gpu]} ]]; then ctr_stop gpu TERM; fi
r=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$SVC_URL/healthz")
[[ $r != 200 ]]; check $? "after down nothing answers on the API port"
pg "$PGB/pg_ctl" -D "$CT/pgdata" stop -m fast >/dev/null 2>&1
check $? "postgres stops"
svc_finish
