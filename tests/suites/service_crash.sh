#!/usr/bin/env bash
# Crashes: `rtaas serve` killed with SIGKILL while a job runs and while an upload streams, then
# restarted on the same data dir: the job completes exactly once (one report, attempts counted,
# resumed from its checkpoint), nothing stored is lost, the aborted upload leaves nothing. Then
# PostgreSQL stopped under a running server: requests fail with 503 `unavailable` and the server
# lives; PostgreSQL started again: requests succeed without a server restart.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
. tests/service/lib.sh
svc_init service_crash

D=$SVC_TMP/files
"$PY" tests/service/mkdata.py "$D" >/dev/null || svc_skip_all "tests/service/mkdata.py failed"
dd if=/dev/urandom of="$D/slow.bin" bs=1M count=6 status=none

# a short lease, so that the job of the killed server is claimed again soon (default 60 s)
export RTAAS_LEASE_SECONDS=${RTAAS_LEASE_SECONDS:-10}
svc_start
KEY=$(svc_key crash) || svc_finish

# ---- the data and a backbone ----------------------------------------------------------------
svc_datasets "$D" npz
EVAL='"eval": {"eps": 0.1, "examples": 50, "gradient_maps": 4, "attacks": [{"kind": "pgd", "steps": 2}]}'
svc_backbone 40 '{"epochs": 1}' "$EVAL"

# ---- SIGKILL while a job runs ---------------------------------------------------------------
svc_long_lwf "$EVAL"
# wait until it trains and its checkpoint is in the database (jobs.checkpoint), or 30 s of training
end=$((SECONDS + 120)) trained=""
while ((SECONDS < end)); do
  req GET "/v1/transfers/$T"
  if jpy 'd["status"] == "running" and d["progress"]["phase"] == "train" and d["progress"]["done"] > 0' >/dev/null 2>&1; then
    [[ -n $trained ]] || trained=$SECONDS
    [[ $(sql "SELECT checkpoint IS NOT NULL FROM jobs WHERE id = '$T'") == t ]] && break
    ((SECONDS - trained >= 30)) && break
  fi
  jpy 'd["status"] in ("succeeded", "failed", "cancelled")' >/dev/null 2>&1 && break
  sleep 0.5
done
jpy 'd["status"] == "running" and d["attempts"] == 1' >/dev/null
check $? "the job runs (attempt 1) and trains" "$(req_detail)"
is "$(sql "SELECT checkpoint IS NOT NULL FROM jobs WHERE id = '$T'")" t "a checkpoint of the running job is in the database"
before_progress=$(jf progress.done)
sql "SELECT sha256 || ':' || size FROM blobs ORDER BY 1" >"$SVC_TMP/blobs.before"
req GET /v1/datasets; DATASETS=$(jpy "' '.join(sorted(x['id'] for x in d['datasets']))")
req GET /v1/backbones; BACKBONES=$(jpy "' '.join(sorted(x['id'] + ':' + x['status'] + ':' + str(x.get('sha256')) for x in d['backbones']))")

svc_restart_kill9 90
ok "server restarted on the same data dir after SIGKILL"

wait_job "$T" 420
is "$JOB_STATUS" succeeded "the interrupted job completes after the restart (within 420 s)"
[[ $JOB_STATUS == succeeded ]] || req_detail | sed 's/^/#   /'
jpy 'd["attempts"] == 2' >/dev/null
check $? "attempts counts both claims: 2" "attempts: $(jf attempts)"
jpy 'd["error"] is None and d["finished_at"] and d["summary"] is not None' >/dev/null
check $? "no error, finished_at and summary set" "$BODY"
req GET "/v1/transfers/$T/report"; expect 200 "its report"
jpy 'd["training"]["resumed"] is True' >/dev/null
check $? "the second attempt resumed from a checkpoint (report.training.resumed)" "training: $(jf training.resumed) (killed at step $before_progress)"
jpy '[e["epoch"] for e in d["training"]["epochs"]] == list(range(40))' >/dev/null
check $? "the report logs each of the 40 epochs once" "$(jpy '[e["epoch"] for e in d["training"]["epochs"]]')"
is "$(sql "SELECT state || '/' || attempts || '/' || (report IS NOT NULL) FROM jobs WHERE id = '$T'")" "succeeded/2/true" \
  "the jobs row: succeeded, 2 attempts, one report"
is "$(sql "SELECT count(*) FROM artifacts WHERE job_id = '$T' AND name LIKE 'gradients/%'")" 4 "one set of gradient maps (4)"
req GET "/v1/transfers?status=succeeded"
is "$(jpy "sum(1 for x in d['transfers'] if x['id'] == '$T')")" 1 "the job is listed once"
req GET "/v1/transfers?status=running"
is "$(jf transfers.#)" 0 "nothing left running"
req GET /v1/datasets; is "$(jpy "' '.join(sorted(x['id'] for x in d['datasets']))")" "$DATASETS" "the datasets survived"
req GET /v1/backbones
is "$(jpy "' '.join(sorted(x['id'] + ':' + x['status'] + ':' + str(x.get('sha256')) for x in d['backbones']))")" "$BACKBONES" "the backbones survived"
# every blob from before the kill is still there (new ones, the job's artifacts, are added)
sql "SELECT sha256 || ':' || size FROM blobs ORDER BY 1" >"$SVC_TMP/blobs.after"
lost=$(comm -23 "$SVC_TMP/blobs.before" "$SVC_TMP/blobs.after")
[[ -s $SVC_TMP/blobs.before && -z $lost ]]; check $? "every blob from before the kill is still there" "lost: $lost"
is "$(sql "SELECT count(*) FROM blobs b WHERE b.size <> (SELECT coalesce(sum(octet_length(data)), 0) FROM blob_chunks c WHERE c.sha256 = b.sha256)")" 0 \
  "every blob's chunks add up to its size"
is "$(sql "SELECT count(*) FROM datasets d LEFT JOIN blobs b USING (sha256) WHERE b.sha256 IS NULL")" 0 "every dataset's blob is there"
req GET "/v1/transfers/$T/head"; expect 200 "the job's head downloads"
req GET "/v1/transfers/$T/gradients"; expect 200 "the job's gradient grid downloads"

# ---- SIGKILL during an upload ---------------------------------------------------------------
req GET /v1/datasets; n0=$(jf datasets.#)
b0=$(sql 'SELECT count(*) FROM blobs')
curl -sS --max-time 60 --limit-rate 512K -o /dev/null -H "Authorization: Bearer $KEY" \
  -H 'Content-Type: application/octet-stream' --data-binary "@$D/slow.bin" \
  "$SVC_URL/v1/datasets?name=slow" 2>/dev/null &
slow=$!
sleep 3
[[ $(tmp_files) -ge 1 ]]; check $? "a streaming upload is in a temporary file" "$(find "$RTAAS_DATA_DIR" -newer "$D/slow.bin" -type f | head -n 5)"
svc_restart_kill9 90
wait "$slow" 2>/dev/null
req GET /v1/datasets; is "$(jf datasets.#)" "$n0" "the aborted upload made no dataset"
is "$(sql 'SELECT count(*) FROM blobs')" "$b0" "the aborted upload stored no blob"
is "$(tmp_files)" 0 "the restarted server removed the aborted upload's temporary file"

# ---- PostgreSQL stopped under a running server ----------------------------------------------
pgctl stop -m fast -w >/dev/null 2>"$SVC_TMP/pgctl.err"
check $? "pg_ctl stop (as the cluster's owner)" "$(cat "$SVC_TMP/pgctl.err")"
codes="" allok=0
for p in /v1/datasets "/v1/transfers/$T" /v1/backbones; do
  req GET "$p"
  codes+="$STATUS/$(jf error.code 2>/dev/null) "
  [[ $STATUS == 503 && $(jf error.code) == unavailable ]] || allok=1
done
check $allok "requests while the database is down: 503 unavailable" "$codes" "$(tail -n 5 "$SVC_TMP/server.log")"
json_post /v1/transfers '{"backbone": "'"$BB"'", "method": "linear", "dataset": {"id": "'"$DS"'", "classes": [5, 6]}, "test": "'"$DS"'"}'
expect_error 503 unavailable "POST while the database is down: 503"
req GET /readyz; expect_error 503 unavailable "/readyz while the database is down: 503"
KEY='' req GET /healthz; expect 200 "/healthz while the database is down: 200 (the process is up)"
kill -0 "$SVC_PID" 2>/dev/null; check $? "the server is still running"

# start it again with the options the server gave it (postmaster.opts), so that it listens where
# it did
opts=$(cut -d' ' -f2- "$RTAAS_DATA_DIR/pg/postmaster.opts" 2>/dev/null)
mkdir -p "$SVC_TMP/pglog" && chmod 777 "$SVC_TMP/pglog"   # the cluster's owner writes its log there
pgctl start -w -t 60 -l "$SVC_TMP/pglog/restart.log" ${opts:+-o "$opts"} >/dev/null 2>"$SVC_TMP/pgctl.err"
check $? "pg_ctl start" "$(cat "$SVC_TMP/pgctl.err" "$SVC_TMP/pglog/restart.log" 2>/dev/null | tail -n 10)"
end=$((SECONDS + 30))
while req GET /v1/datasets && [[ $STATUS != 200 ]] && ((SECONDS < end)); do sleep 0.5; done
expect 200 "requests succeed again once PostgreSQL is back (within 30 s), no server restart"
is "$(jf datasets.#)" "$n0" "the same datasets"
req GET /readyz; expect 200 "/readyz is 200 again"
req POST "/v1/datasets?name=after" -H 'Content-Type: application/octet-stream' --data-binary "@$D/conc.npz"
expect 201 "an upload works after the database came back"
json_post /v1/transfers "{\"backbone\": \"$BB\", \"method\": \"linear\", \"seed\": 2,
  \"dataset\": {\"id\": \"$DS\", \"classes\": [5, 6, 7, 8, 9], \"per_class\": 40},
  \"test\": {\"id\": \"$DS\", \"classes\": [5, 6, 7, 8, 9]}, \"params\": {\"epochs\": 2}, $EVAL}"
expect 202 "a job is accepted after the database came back"
T2=$(jf id)
wait_job "$T2" 300
is "$JOB_STATUS" succeeded "and the worker runs it (it reconnected too)"
[[ $JOB_STATUS == succeeded ]] || req_detail | sed 's/^/#   /'

svc_finish
