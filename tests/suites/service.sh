#!/usr/bin/env bash
# The service scenario: a real `rtaas serve` on its private PostgreSQL, driven through every
# endpoint with curl; checks status codes and bodies, each error status, uploads that must leave
# nothing behind, one blob for 20 concurrent uploads, jobs end to end, and tenant isolation.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
. tests/service/lib.sh
svc_init service

D=$SVC_TMP/files
"$PY" tests/service/mkdata.py "$D" >/dev/null || svc_skip_all "tests/service/mkdata.py failed"
sha() { sha256sum "$1" | cut -c1-64; }
fsize() { stat -c %s "$1"; }
png_magic() { [[ $(head -c 8 "$1" | od -An -tx1 | tr -d ' \n') == 89504e470d0a1a0a ]]; }
# safetensors: 8-byte little-endian header length, a JSON header, tensor data that ends the file
st_check() {
  "$PY" - "$1" <<'PY'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
ends = [t["data_offsets"][1] for k, t in h.items() if k != "__metadata__"]
assert ends and 8 + n + max(ends) == len(b), "data does not end the file"
print(len(ends))
PY
}
# paths_with TEXT: the JSON paths of the strings in $BODY that contain TEXT, one a line
paths_with() {
  "$PY" - "$1" "$BODY" <<'PY'
import json, sys
def walk(v, path):
    if isinstance(v, dict):
        for k, x in v.items():
            walk(x, f"{path}.{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            walk(x, f"{path}[{i}]")
    elif isinstance(v, str) and sys.argv[1] in v:
        print(path, v)
walk(json.loads(sys.argv[2]), "")
PY
}
ids_of() { jpy "' '.join(sorted(x['id'] for x in d['$1']))"; }   # the ids in list $1 of $BODY

svc_start
KA=$(svc_key tenant-a) && KB=$(svc_key tenant-b)
check $? "apikey create prints a key for each tenant"
[[ $KA == rtaas_* && $KB == rtaas_* && $KA != "$KB" ]]
check $? "keys look like rtaas_... and differ" "a: ${KA:0:10}... b: ${KB:0:10}..."
[[ -n $KA && -n $KB ]] || svc_finish

# ---- operations, auth, routing --------------------------------------------------------------
KEY=
req GET /healthz; expect 200 "GET /healthz"
is "$(jf status)" ok "/healthz says ok"
req GET /readyz; expect 200 "GET /readyz"
is "$(jf status)" ready "/readyz says ready"
req GET /; expect 200 "GET / (the dashboard) without a key"
[[ $(header Content-Type) == text/html* ]]; check $? "the dashboard is text/html" "$(header Content-Type)"
req GET /static/no-such-file.js; expect_error 404 not_found "GET /static/ of a file that is not there: 404"
req GET /static/..%2f..%2f..%2fetc%2fpasswd
[[ $STATUS == 404 || $STATUS == 400 ]] && [[ $BODY != *root:* ]]
check $? "GET /static/ with ../ in the name: 404 or 400, nothing outside static/" "$(req_detail)"
req GET /v1/datasets; expect_error 401 unauthorized "no key: 401"
[[ -n $(header WWW-Authenticate) ]]; check $? "401 has WWW-Authenticate" "$HEADERS"
req POST /v1/transfers -H 'Content-Type: application/json' --data-binary '{"x":'
expect_error 401 unauthorized "no key on POST: 401 before the body is read"
KEY=rtaas_not_a_key req GET /v1/datasets; expect_error 401 unauthorized "bad key: 401"
KEY=${KA}x req GET /v1/datasets; expect_error 401 unauthorized "key with a character added: 401"
req GET /v1/datasets -H "Authorization: Basic $KA"; expect_error 401 unauthorized "not a Bearer scheme: 401"

KEY=$KA
req GET /v1/datasets; expect 200 "GET /v1/datasets with a key"
is "$(jf datasets.#)" 0 "a new tenant has no datasets"
req GET /v1/nowhere; expect_error 404 not_found "unknown /v1 route: 404"
req GET /nowhere; expect_error 404 not_found "unknown route: 404"
req PUT /v1/datasets; expect_error 405 method_not_allowed "PUT /v1/datasets: 405"
allow=$(header Allow)
[[ $allow == *GET* && $allow == *POST* ]]; check $? "405 has Allow: GET, POST" "Allow: $allow"
req DELETE /v1/transfers/job_x; expect_error 405 method_not_allowed "DELETE /v1/transfers/{id}: 405"
req GET /v1/transfers/job_x/cancel; expect_error 405 method_not_allowed "GET /v1/transfers/{id}/cancel: 405"
req POST /v1/backbones/bb_x/weights; expect_error 405 method_not_allowed "POST /v1/backbones/{id}/weights: 405"
KEY='' req POST /healthz; expect_error 405 method_not_allowed "POST /healthz: 405"

# ---- datasets -------------------------------------------------------------------------------
req POST /v1/datasets -F name=tiny -F "images=@$D/images-idx3-ubyte.gz" -F "labels=@$D/labels-idx1-ubyte.gz"
expect 201 "upload an IDX pair as multipart"
DS=$(jf id)
[[ $DS == ds_* ]]; check $? "dataset id ds_..." "id: $DS"
jpy 'd["name"] == "tiny" and d["format"] == "idx" and d["n"] == 500 and d["classes"] == 10 and d["counts"] == [50] * 10 and d["shape"] == [1, 28, 28]' >/dev/null
check $? "IDX dataset: name, format, n, classes, counts, shape" "$BODY"
jpy 'len(d["sha256"]) == 64 and d["size"] > 0 and d["created_at"]' >/dev/null; check $? "IDX dataset: sha256, size, created_at" "$BODY"
schema_ok Dataset "the upload's reply is a Dataset (api/openapi.yaml)"
req GET "/v1/datasets/$DS"; expect 200 "GET /v1/datasets/{id}"
is "$(jf id)" "$DS" "GET one dataset gives its id"
is "$(jf n)" 500 "GET one dataset gives n"

NPZ_SHA=$(sha "$D/data.npz")
req POST "/v1/datasets?name=npz&format=npz" -H 'Content-Type: application/octet-stream' --data-binary "@$D/data.npz"
expect 201 "upload an .npz as the raw body"
DN=$(jf id)
jpy 'd["format"] == "npz" and d["n"] == 3000 and d["classes"] == 10 and d["shape"] == [1, 28, 28]' >/dev/null
check $? "npz dataset: format, n, classes, shape" "$BODY"
is "$(jf sha256)" "$NPZ_SHA" "npz dataset: sha256 of the bytes sent"
is "$(jf size)" "$(fsize "$D/data.npz")" "npz dataset: size of the bytes sent"
blobs0=$(sql 'SELECT count(*) FROM blobs')
check $? "psql reaches the private cluster" "$(sql 'SELECT 1' 2>&1)"
req POST "/v1/datasets?name=npz-again" -H 'Content-Type: application/octet-stream' --data-binary "@$D/data.npz"
expect 201 "the same .npz again, format detected"
DN2=$(jf id)
is "$(jf format)" npz "format detected: npz"
is "$(jf sha256)" "$NPZ_SHA" "same content, same sha256"
[[ $DN2 != "$DN" ]]; check $? "a second upload is a second dataset"
is "$(sql 'SELECT count(*) FROM blobs')" "$blobs0" "the same content is stored once (no new blob)"
is "$(sql "SELECT count(*) FROM blobs WHERE sha256 = '$NPZ_SHA'")" 1 "one blob row for the npz"
req GET /v1/datasets; expect 200 "list datasets"
BODY=$(jf datasets.0) schema_ok Dataset "a listed dataset is a Dataset"
is "$(ids_of datasets)" "$(tr ' ' '\n' <<<"$DS $DN $DN2" | sort | xargs)" "the list holds the three uploads"
req DELETE "/v1/datasets/$DN2"; expect 204 "DELETE a dataset"
[[ -z $BODY ]]; check $? "204 has no body" "$BODY"
req GET "/v1/datasets/$DN2"; expect_error 404 not_found "a deleted dataset is gone"
req DELETE "/v1/datasets/$DN2"; expect_error 404 not_found "DELETE it again: 404"
is "$(sql "SELECT count(*) FROM blobs WHERE sha256 = '$NPZ_SHA'")" 1 "a blob another dataset uses stays"

# upload_fails STATUS CODE DESC [FIELD] -- CURL-ARGS: the upload fails with that status and code,
# and leaves nothing: the same datasets, blobs and chunks, no temporary file.
upload_fails() {
  local st=$1 code=$2 desc=$3 field=$4
  shift 5
  local list0 b0 c0 b1 c1 end
  KEY=$KA req GET /v1/datasets; list0=$(ids_of datasets)
  b0=$(sql 'SELECT count(*) FROM blobs'); c0=$(sql 'SELECT count(*) FROM blob_chunks')
  KEY=$KA req POST "$@"
  expect_error "$st" "$code" "$desc" "$field"
  end=$((SECONDS + 5))
  while [[ $(tmp_files) != 0 ]] && ((SECONDS < end)); do sleep 0.2; done
  is "$(tmp_files)" 0 "$desc: no temporary file left"
  b1=$(sql 'SELECT count(*) FROM blobs'); c1=$(sql 'SELECT count(*) FROM blob_chunks')
  is "$b1/$c1" "$b0/$c0" "$desc: no blob or chunk stored"
  KEY=$KA req GET /v1/datasets
  is "$(ids_of datasets)" "$list0" "$desc: no dataset added"
}
upload_fails 415 unsupported_format "garbage raw body: 415" "" -- \
  "/v1/datasets?name=junk" -H 'Content-Type: application/octet-stream' --data-binary "@$D/garbage.dat"
upload_fails 415 unsupported_format "garbage multipart parts: 415" "" -- \
  /v1/datasets -F name=junk -F "images=@$D/garbage.dat" -F "labels=@$D/garbage.dat"
upload_fails 422 unprocessable "truncated IDX images: 422" "" -- \
  /v1/datasets -F name=trunc -F "images=@$D/trunc-images-idx3-ubyte" -F "labels=@$D/trunc-labels-idx1-ubyte"
upload_fails 413 too_large "17 MiB raw body over a 16 MiB limit: 413" "" -- \
  "/v1/datasets?name=big" -H 'Content-Type: application/octet-stream' --data-binary "@$D/big.dat"
upload_fails 413 too_large "17 MiB chunked body (no length) over the limit: 413" "" -- \
  "/v1/datasets?name=big" -H 'Content-Type: application/octet-stream' -H 'Transfer-Encoding: chunked' \
  --data-binary "@$D/big.dat"
upload_fails 413 too_large "17 MiB multipart over the limit: 413" "" -- \
  /v1/datasets -F name=big -F "images=@$D/big.dat" -F "labels=@$D/labels-idx1-ubyte.gz"
upload_fails 400 invalid_field "unknown format=: 400" format -- \
  "/v1/datasets?name=x&format=bmp" -H 'Content-Type: application/octet-stream' --data-binary "@$D/data.npz"
upload_fails 400 missing_field "IDX images without labels: 400" labels -- \
  /v1/datasets -F name=x -F "images=@$D/images-idx3-ubyte.gz"

# 20 concurrent uploads of one file: all 201, one sha256, one blob with all its bytes
CONC_SHA=$(sha "$D/conc.npz") CONC_SIZE=$(fsize "$D/conc.npz")
b0=$(sql 'SELECT count(*) FROM blobs')
pids=()
for i in $(seq 1 20); do
  curl -sS --max-time 120 -o "$SVC_TMP/conc.$i" -w '%{http_code}' -H "Authorization: Bearer $KA" \
    -H 'Content-Type: application/octet-stream' --data-binary "@$D/conc.npz" \
    "$SVC_URL/v1/datasets?name=conc-$i" >"$SVC_TMP/conc.$i.status" 2>/dev/null &
  pids+=($!)
done
wait "${pids[@]}"
statuses=$(for f in "$SVC_TMP"/conc.*.status; do cat "$f"; echo; done | sort | uniq -c | xargs)
is "$statuses" "20 201" "20 concurrent uploads of one file: all 201"
conc_ids=() shas=""
for i in $(seq 1 20); do
  conc_ids+=("$(jf id "$(cat "$SVC_TMP/conc.$i")" 2>/dev/null)")
  shas+="$(jf sha256 "$(cat "$SVC_TMP/conc.$i")" 2>/dev/null) "
done
is "$(xargs -n1 <<<"$shas" | sort -u | xargs)" "$CONC_SHA" "20 concurrent uploads: one sha256, the file's"
is "$(printf '%s\n' "${conc_ids[@]}" | grep -c '^ds_' | tr -d ' ')/$(printf '%s\n' "${conc_ids[@]}" | sort -u | grep -c . | tr -d ' ')" \
  "20/20" "20 concurrent uploads: 20 distinct dataset ids"
is "$(sql "SELECT count(*) FROM blobs WHERE sha256 = '$CONC_SHA'")" 1 "20 concurrent uploads: exactly one blob row"
is "$(sql 'SELECT count(*) FROM blobs')" $((b0 + 1)) "20 concurrent uploads: one new blob in all"
is "$(sql "SELECT b.size || '/' || coalesce(sum(octet_length(c.data)), 0) || '/' || count(c.seq) || '/' || coalesce(max(c.seq), -1)
           FROM blobs b LEFT JOIN blob_chunks c USING (sha256) WHERE b.sha256 = '$CONC_SHA' GROUP BY b.size")" \
  "$CONC_SIZE/$CONC_SIZE/$(( (CONC_SIZE + 1048575) / 1048576 ))/$(( (CONC_SIZE + 1048575) / 1048576 - 1 ))" \
  "the blob's chunks hold every byte once (size/bytes/chunks/last seq)"
is "$(tmp_files)" 0 "20 concurrent uploads: no temporary file left"
del=""
for id in "${conc_ids[@]}"; do
  [[ -n $id ]] || continue
  req DELETE "/v1/datasets/$id"; del+="$STATUS "
done
is "$(xargs -n1 <<<"$del" | sort | uniq -c | xargs)" "20 204" "delete the 20 datasets: all 204"
is "$(sql "SELECT count(*) FROM blobs WHERE sha256 = '$CONC_SHA'")" 0 "a blob no dataset uses any more is removed"

# ---- backbones ------------------------------------------------------------------------------
EVAL='"eval": {"eps": 0.1, "examples": 50, "gradient_maps": 4, "attacks": [{"kind": "pgd", "steps": 2}]}'
json_post /v1/backbones "{\"name\": \"src\", \"method\": \"natural\", \"arch\": \"smallcnn\", \"seed\": 1,
  \"dataset\": {\"id\": \"$DS\", \"classes\": [0, 1, 2, 3, 4], \"per_class\": 40},
  \"test\": {\"id\": \"$DS\", \"classes\": [0, 1, 2, 3, 4]}, \"params\": {\"epochs\": 2, \"lr\": 0.05}, $EVAL}"
expect 202 "POST /v1/backbones (train natural smallcnn): 202"
BB=$(jf id) BBJOB=$(jf job)
[[ $BB == bb_* && $BBJOB == job_* && $(jf status) == training ]]; check $? "202 gives bb_ id, job_ id, status training" "$BODY"
end=$((SECONDS + 300))
while :; do
  req GET "/v1/backbones/$BB"; s=$(jf status)
  if [[ $s != training ]] || ((SECONDS >= end)); then break; fi
  sleep 0.5
done
is "$s" ready "the backbone is ready when its job succeeds (within 300 s)"
[[ $s == ready ]] || req_detail | sed 's/^/#   /'
jpy 'd["id"] == "'"$BB"'" and d["name"] == "src" and d["arch"] == "smallcnn" and len(d["sha256"]) == 64 and d["job"] == "'"$BBJOB"'"' >/dev/null
check $? "backbone: id, name, arch, sha256, job" "$BODY"
jpy 'd.get("input_size") == 28 and len(d.get("mean", [])) == 1 and len(d.get("std", [])) == 1' >/dev/null
check $? "backbone: input_size 28, 1-channel mean and std" "$BODY"
schema_ok Backbone "GET /v1/backbones/{id} is a Backbone"
BB_SHA=$(jf sha256)
req GET "/v1/backbones/$BB/weights"; expect 200 "GET /v1/backbones/{id}/weights"
st_check "$SVC_TMP/body" >/dev/null; check $? "weights are safetensors"
is "$(sha "$SVC_TMP/body")" "$BB_SHA" "weights: the bytes of the backbone's sha256"
req GET "/v1/transfers/$BBJOB"; expect 200 "the backbone's job is served under /v1/transfers/{id}"
jpy 'd["kind"] == "backbone" and d["status"] == "succeeded" and d["method"] == "natural"' >/dev/null
check $? "backbone job: kind backbone, succeeded, method natural" "$BODY"
req GET /v1/backbones; expect 200 "list backbones"
is "$(ids_of backbones)" "$BB" "the list holds the backbone"

# ---- a transfer, end to end -----------------------------------------------------------------
TSPEC="{\"backbone\": \"$BB\", \"method\": \"linear\", \"seed\": 2, \"math\": \"bf16\",
  \"dataset\": {\"id\": \"$DS\", \"classes\": [5, 6, 7, 8, 9], \"per_class\": 40},
  \"test\": {\"id\": \"$DS\", \"classes\": [5, 6, 7, 8, 9]}, \"params\": {\"epochs\": 5}, $EVAL}"
json_post /v1/transfers "$TSPEC"
expect 202 "POST /v1/transfers (linear): 202"
T1=$(jf id)
[[ $T1 == job_* && $(jf status) == queued ]]; check $? "202 gives a job_ id and status queued" "$BODY"
wait_job "$T1" 300
is "$JOB_STATUS" succeeded "the transfer succeeds (within 300 s)"
[[ $JOB_STATUS == succeeded ]] || req_detail | sed 's/^/#   /'
jpy 'd["id"] == "'"$T1"'" and d["kind"] == "transfer" and d["method"] == "linear" and d["attempts"] == 1 and d["error"] is None' >/dev/null
check $? "job: id, kind, method, attempts 1, no error" "$BODY"
jpy 'd["summary"] is not None and d["started_at"] and d["finished_at"] and d["created_at"]' >/dev/null
check $? "job: summary and timestamps once it succeeded" "$BODY"
schema_ok Job "a succeeded job is a Job"
req GET "/v1/transfers/$T1/report"; expect 200 "GET report"
schema_ok Report "the report is a Report"
jpy 'd["backend"]["math"] == "fp32" and d["spec"]["math"] == "bf16" and d["batches"]["eval_batch"] > 0 and d["oom_retries"] == []' >/dev/null
check $? "report: bf16 asked, a CPU worker ran fp32 and says so; batches; no out-of-memory retry" "$(jpy 'd["backend"], d["batches"], d["oom_retries"]')"
jpy '0 <= d["evaluation"]["clean"]["accuracy"] <= 1 and d["evaluation"]["attacks"][0]["kind"] == "pgd"' >/dev/null
check $? "report: evaluation.clean.accuracy and the PGD attack" "$(head -c 300 <<<"$BODY")"
is "$(jf rtaas_version)" "$("$RTAAS" version | awk '{print $2}')" "report: rtaas_version"
jpy 'd["spec"]["method"] == "linear" and d["spec"]["backbone"] == "'"$BB"'" and d["spec"]["dataset"]["id"] == "'"$DS"'"' >/dev/null
check $? "report: the spec as accepted (backbone and dataset ids)" "$(jf spec)"
leaks=$(paths_with "$SVC_TMP")
[[ -z $leaks ]]; check $? "report: no server path in it" "$leaks"
req GET "/v1/transfers/$T1/gradients"; expect 200 "GET gradients (grid)"
png_magic "$SVC_TMP/body"; check $? "gradients: PNG"
[[ $(header Content-Type) == image/png* ]]; check $? "gradients: Content-Type image/png" "$(header Content-Type)"
req GET "/v1/transfers/$T1/gradients?i=0"; expect 200 "GET gradients?i=0"
png_magic "$SVC_TMP/body"; check $? "gradients?i=0: PNG"
req GET "/v1/transfers/$T1/gradients?i=3"; expect 200 "GET gradients?i=3 (the last of 4)"
req GET "/v1/transfers/$T1/gradients?i=4"; expect_error 404 not_found "gradients?i=4 (one past the last): 404"
req GET "/v1/transfers/$T1/gradients?i=9999"; expect_error 404 not_found "gradients?i=9999: 404"
req GET "/v1/transfers/$T1/gradients?i=abc"; expect_error 400 invalid_field "gradients?i=abc: 400" i
req GET "/v1/transfers/$T1/gradients?i=-1"; expect_error 400 invalid_field "gradients?i=-1: 400" i
req GET "/v1/transfers/$T1/head"; expect 200 "GET head"
n=$(st_check "$SVC_TMP/body"); check $? "head: safetensors (8-byte LE header length, JSON header, data)"
[[ ${n:-0} -ge 1 ]]; check $? "head: holds tensors" "$n"
req GET "/v1/transfers?status=succeeded"; expect 200 "list transfers ?status=succeeded"
jpy '"'"$T1"'" in [x["id"] for x in d["transfers"]] and all(x["status"] == "succeeded" for x in d["transfers"])' >/dev/null
check $? "?status=succeeded holds the transfer, and only succeeded jobs" "$BODY"
req GET "/v1/transfers?status=running"; expect 200 "list transfers ?status=running"
jpy '"'"$T1"'" not in [x["id"] for x in d["transfers"]]' >/dev/null; check $? "?status=running does not hold it"
req GET "/v1/transfers?status=bogus"; expect_error 400 invalid_field "?status=bogus: 400" status
req GET "/v1/transfers?kind=bogus"; expect_error 400 invalid_field "?kind=bogus: 400" kind
req GET /v1/transfers; expect 200 "list transfers"
jpy '"'"$T1"'" in [x["id"] for x in d["transfers"]] and "'"$BBJOB"'" not in [x["id"] for x in d["transfers"]]' >/dev/null
check $? "the list holds transfers, not backbone trainings (kind=transfer by default)" "$BODY"
req GET "/v1/transfers?kind=all"; expect 200 "list transfers ?kind=all"
is "$(ids_of transfers)" "$(tr ' ' '\n' <<<"$T1 $BBJOB" | sort | xargs)" "?kind=all holds both jobs"
req GET "/v1/transfers?kind=backbone"; expect 200 "list transfers ?kind=backbone"
is "$(ids_of transfers)" "$BBJOB" "?kind=backbone holds the backbone training only"
req POST "/v1/transfers/$T1/cancel"; expect_error 409 conflict "cancel a finished job: 409"

# ---- jobs in flight: conflicts and cancelling -----------------------------------------------
# T2 (lwf on 1500 images, ~20 s on one CPU thread) runs while T3 and a backbone training queue
# behind it on the one CPU worker.
json_post /v1/transfers "{\"backbone\": \"$BB\", \"method\": \"lwf\", \"seed\": 3,
  \"dataset\": {\"id\": \"$DN\", \"classes\": [5, 6, 7, 8, 9], \"per_class\": 300},
  \"test\": {\"id\": \"$DS\", \"classes\": [5, 6, 7, 8, 9]}, \"params\": {\"epochs\": 30}, $EVAL}"
expect 202 "POST a long lwf transfer: 202"
T2=$(jf id)
json_post /v1/transfers "$TSPEC"; expect 202 "POST a second transfer: 202"
T3=$(jf id)
json_post /v1/backbones "{\"name\": \"src2\", \"method\": \"natural\", \"arch\": \"smallcnn\",
  \"dataset\": {\"id\": \"$DS\", \"classes\": [0, 1]}, \"test\": \"$DS\", \"params\": {\"epochs\": 1, \"batch_size\": 50}, $EVAL}"
expect 202 "POST a second backbone training: 202"
BB2=$(jf id) BB2JOB=$(jf job)
wait_job "$T2" 60 "running succeeded failed cancelled"
is "$JOB_STATUS" running "the lwf transfer runs"
req GET "/v1/transfers/$T3"; is "$(jf status)" queued "the second transfer waits, queued"
end=$((SECONDS + 20))
while req GET "/v1/transfers/$T2" && ! jpy 'd["progress"]["total"] > 0 and d["progress"]["phase"]' >/dev/null 2>&1 && ((SECONDS < end)); do
  sleep 0.5
done
jpy '(lambda p: p["phase"] in ("load", "features", "train", "eval", "gradients") and 0 <= p["done"] <= p["total"] and bool(d["started_at"]) and d["attempts"] == 1)(d["progress"])' >/dev/null
check $? "a running job shows progress (phase, done <= total), started_at, attempts 1" "$BODY"
schema_ok Job "a running job is a Job"
req GET "/v1/transfers/$T2/report"; expect_error 409 conflict "report of a running job: 409"
schema_ok Error "a 409 is an Error"
req GET "/v1/transfers/$T2/gradients"; expect_error 409 conflict "gradients of a running job: 409"
req GET "/v1/transfers/$T2/head"; expect_error 409 conflict "head of a running job: 409"
req GET "/v1/transfers/$T3/report"; expect_error 409 conflict "report of a queued job: 409"
req DELETE "/v1/datasets/$DN"; expect_error 409 conflict "delete a dataset a running job uses: 409"
req DELETE "/v1/datasets/$DS"; expect_error 409 conflict "delete a dataset queued jobs use: 409"
req DELETE "/v1/backbones/$BB"; expect_error 409 conflict "delete a backbone a running job uses: 409"
req GET "/v1/backbones/$BB2"; is "$(jf status)" training "a backbone whose job is queued is training"
req GET "/v1/backbones/$BB2/weights"; expect_error 409 conflict "weights of a training backbone: 409"
req DELETE "/v1/backbones/$BB2"; expect_error 409 conflict "delete a training backbone: 409"
json_post /v1/transfers "${TSPEC/$BB/$BB2}"; expect_error 409 conflict "transfer from a training backbone: 409"
req POST "/v1/transfers/$T3/cancel"; expect 202 "cancel a queued job: 202"
req GET "/v1/transfers/$T3"
jpy 'd["status"] == "cancelled" and d["finished_at"]' >/dev/null; check $? "a cancelled queued job is cancelled at once" "$BODY"
req POST "/v1/transfers/$T3/cancel"; expect_error 409 conflict "cancel it again: 409"
req POST "/v1/transfers/$BB2JOB/cancel"; expect 202 "cancel the queued backbone training: 202"
req GET "/v1/backbones/$BB2"; is "$(jf status)" cancelled "a backbone whose training was cancelled is cancelled"
req POST "/v1/transfers/$T2/cancel"; expect 202 "cancel a running job: 202"
wait_job "$T2" 60
is "$JOB_STATUS" cancelled "the running job stops and is cancelled (within 60 s)"
req GET "/v1/transfers/$T2/report"; expect_error 409 conflict "report of a cancelled job: 409"
req GET "/v1/transfers?status=cancelled&kind=all"; expect 200 "list transfers ?status=cancelled&kind=all"
jpy 'set(["'"$T2"'", "'"$T3"'", "'"$BB2JOB"'"]) <= set(x["id"] for x in d["transfers"]) and all(x["status"] == "cancelled" for x in d["transfers"])' >/dev/null
check $? "?status=cancelled holds the three cancelled jobs" "$BODY"

# ---- request validation ---------------------------------------------------------------------
# mutate PY-STATEMENT: $TSPEC changed by a Python statement over d
mutate() { "$PY" -c 'import json, sys; d = json.loads(sys.argv[1]); exec(sys.argv[2]); print(json.dumps(d))' "$TSPEC" "$1"; }
json_post /v1/transfers '{"backbone": "'"$BB"'", "method": '; expect_error 400 bad_json "not JSON: 400 bad_json"
json_post /v1/transfers '[1, 2]'
[[ $STATUS == 400 && ( $(jf error.code) == bad_json || $(jf error.code) == bad_request ) ]]
check $? "a JSON array, not an object: 400 bad_json or bad_request" "$(req_detail)"
json_post /v1/transfers "$(mutate 'd["seed"] = "two"')"; expect_error 400 invalid_field "seed of the wrong type: 400" seed
json_post /v1/transfers "$(mutate 'd["params"]["epochs"] = "five"')"; expect_error 400 invalid_field "params.epochs of the wrong type: 400" params.epochs
json_post /v1/transfers "$(mutate 'd["colour"] = "red"')"; expect_error 400 invalid_field "an unknown field: 400" colour
json_post /v1/transfers "$(mutate 'd["math"] = "fp16"')"; expect_error 400 invalid_field "math fp16 (not a mode): 400" math
json_post /v1/transfers "$(mutate 'd["dataset"]["path"] = "/etc/passwd"')"; expect_error 400 invalid_field "a file path instead of an id: 400" dataset.path
json_post /v1/transfers "$(mutate 'del d["dataset"]')"; expect_error 400 missing_field "no dataset: 400" dataset
json_post /v1/transfers "$(mutate 'del d["backbone"]')"; expect_error 400 missing_field "no backbone: 400" backbone
json_post /v1/transfers "$(mutate 'del d["method"]')"; expect_error 400 missing_field "no method: 400" method
json_post /v1/transfers "$(mutate 'del d["test"]')"; expect_error 400 missing_field "no test set: 400" test
json_post /v1/transfers "$(mutate 'd["eval"]["eps"] = -1')"; expect_error 422 unprocessable "eval.eps -1: 422" eval.eps
json_post /v1/transfers "$(mutate 'd["dataset"]["classes"] = [5]')"; expect_error 422 unprocessable "a one-class subset: 422" dataset.classes
json_post /v1/transfers "$(mutate 'd["dataset"]["classes"] = [5, 42]')"; expect_error 422 unprocessable "a class the dataset lacks: 422" 'dataset.classes*'
json_post /v1/transfers "$(mutate 'd["dataset"]["per_class"] = 51')"; expect_error 422 unprocessable "per_class over what a class has: 422" dataset.per_class
json_post /v1/transfers "$(mutate 'd["method"] = "natural"')"; expect_error 400 invalid_field "a source method as a transfer: 400" method
json_post /v1/transfers "$(mutate 'd["backbone"] = "bb_nope"')"; expect_error 422 unprocessable "an unknown backbone: 422" backbone
json_post /v1/transfers "$(mutate 'd["dataset"]["id"] = "ds_nope"')"; expect_error 422 unprocessable "an unknown dataset: 422" 'dataset*'
json_post /v1/transfers "$(mutate 'd["dataset"] = "'"$DS"'"')"; expect 202 "a dataset given as its id alone: 202"
req POST "/v1/transfers/$(jf id)/cancel"; expect 202 "cancel that one: 202"
big_json=$("$PY" -c 'import json, sys; d = json.loads(sys.argv[1]); d["pad"] = "x" * (1 << 20); print(json.dumps(d))' "$TSPEC")
req POST /v1/transfers -H 'Content-Type: application/json' --data-binary @- <<<"$big_json"
expect_error 413 too_large "a JSON body over 1 MiB: 413"
json_post /v1/backbones '{"name": "x", "method": "natural", "arch": "smallcnn", "dataset": "'"$DS"'", "test": "'"$DS"'", "eval": {"eps": -1}}'
expect_error 422 unprocessable "backbone training with eval.eps -1: 422" eval.eps
json_post /v1/backbones '{"name": "x", "method": "natural", "arch": "vgg99", "dataset": "'"$DS"'", "test": "'"$DS"'"}'
expect_error 400 invalid_field "backbone training with an unknown arch: 400" arch
json_post /v1/backbones '{"name": "x", "method": "lwf", "arch": "smallcnn", "dataset": "'"$DS"'", "test": "'"$DS"'"}'
expect_error 400 invalid_field "backbone training with a transfer method: 400" method
json_post /v1/backbones '{"name": "x", "method": "natural"'; expect_error 400 bad_json "backbone training, not JSON: 400"
req POST "/v1/backbones?name=w&arch=smallcnn" -H 'Content-Type: application/octet-stream' --data-binary "@$D/garbage.dat"
expect_error 415 unsupported_format "backbone upload of garbage: 415"
req GET "/v1/backbones/$BB/weights"; cp "$SVC_TMP/body" "$SVC_TMP/bb.safetensors"
req POST "/v1/backbones?name=up&arch=smallcnn&mean=0.5&std=0.5&input_size=28" -H 'Content-Type: application/octet-stream' \
  --data-binary "@$SVC_TMP/bb.safetensors"
expect 201 "upload safetensors weights as a backbone: 201"
BB3=$(jf id)
jpy 'd["status"] == "ready" and d["arch"] == "smallcnn" and d["sha256"] == "'"$BB_SHA"'" and d["input_size"] == 28' >/dev/null
check $? "uploaded backbone: ready, arch, sha256 of the file, input_size" "$BODY"
req POST "/v1/backbones?name=up&arch=resnet50&input_size=224" -H 'Content-Type: application/octet-stream' --data-binary "@$SVC_TMP/bb.safetensors"
expect_error 422 unprocessable "weights that do not fit the arch: 422"

for p in "/v1/transfers/job_nope" "/v1/transfers/job_nope/report" "/v1/transfers/job_nope/gradients" \
         "/v1/transfers/job_nope/head" "/v1/datasets/ds_nope" "/v1/backbones/bb_nope" "/v1/backbones/bb_nope/weights"; do
  req GET "$p"; expect_error 404 not_found "GET $p: 404"
done
req POST /v1/transfers/job_nope/cancel; expect_error 404 not_found "cancel an unknown job: 404"
req DELETE /v1/datasets/ds_nope; expect_error 404 not_found "DELETE an unknown dataset: 404"
req DELETE /v1/backbones/bb_nope; expect_error 404 not_found "DELETE an unknown backbone: 404"
req GET "/v1/datasets/'%20OR%201=1--"; expect_error 404 not_found "an id with SQL in it: 404"

# ---- tenant isolation -----------------------------------------------------------------------
KEY=$KB
for l in datasets backbones transfers; do
  req GET "/v1/$l"; expect 200 "tenant B lists $l"
  is "$(jf "$l.#")" 0 "tenant B sees none of A's $l"
done
for p in "/v1/datasets/$DS" "/v1/backbones/$BB" "/v1/backbones/$BB/weights" "/v1/transfers/$T1" \
         "/v1/transfers/$T1/report" "/v1/transfers/$T1/gradients" "/v1/transfers/$T1/head" "/v1/transfers/$BBJOB"; do
  req GET "$p"; expect_error 404 not_found "tenant B: GET $p is 404"
done
req POST "/v1/transfers/$T1/cancel"; expect_error 404 not_found "tenant B: cancel A's job is 404"
req DELETE "/v1/datasets/$DS"; expect_error 404 not_found "tenant B: DELETE A's dataset is 404"
req DELETE "/v1/backbones/$BB"; expect_error 404 not_found "tenant B: DELETE A's backbone is 404"
json_post /v1/transfers "$TSPEC"; expect_error 422 unprocessable "tenant B: a transfer from A's backbone is 422 (no such backbone)" backbone
json_post /v1/backbones "{\"name\": \"b\", \"method\": \"natural\", \"arch\": \"smallcnn\", \"dataset\": \"$DS\", \"test\": \"$DS\"}"
expect_error 422 unprocessable "tenant B: training on A's dataset is 422 (no such dataset)" 'dataset*' 
KEY=$KA
req GET "/v1/datasets/$DS"; expect 200 "A's dataset is still there"
req GET "/v1/backbones/$BB"; expect 200 "A's backbone is still there"

# ---- metrics --------------------------------------------------------------------------------
KEY='' req GET /metrics; expect 200 "GET /metrics without a key"
[[ $(header Content-Type) == text/plain* ]]; check $? "metrics: Content-Type text/plain" "$(header Content-Type)"
printf '%s\n' "$BODY" >"$SVC_TMP/metrics.txt"
"$PY" - "$SVC_TMP/metrics.txt" >"$SVC_TMP/metrics.check" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
samples, types = [], {}
for line in text.splitlines():
    m = re.match(r"# TYPE (\S+) (\S+)", line)
    if m:
        types[m.group(1)] = m.group(2)
    if not line or line.startswith("#"):
        continue
    m = re.match(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)', line)
    if not m:
        print("not ok - service: metrics: a line that does not parse: %r" % line); continue
    labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
    samples.append((m.group(1), labels, float(m.group(4))))
def check(ok, desc):
    print(("ok" if ok else "not ok") + " - service: metrics: " + desc)
req = [(l, v) for n, l, v in samples if n == "rtaas_http_requests_total"]
check(types.get("rtaas_http_requests_total") == "counter", "rtaas_http_requests_total is a counter")
check(any(l.get("route") == "/v1/datasets" and l.get("status") == "201" and v >= 1 for l, v in req),
      'rtaas_http_requests_total{route="/v1/datasets",status="201"} counts the uploads')
check(any(l.get("route") == "/v1/transfers/{id}" and l.get("status") == "404" for l, v in req),
      "requests counted by route template (/v1/transfers/{id}) and status (404)")
check(not any(re.search(r"(ds|bb|job)_[A-Za-z0-9]", l.get("route", "")) for l, v in req),
      "no raw id in a route label")
jobs = {l.get("state"): v for n, l, v in samples if n == "rtaas_jobs"}
check(types.get("rtaas_jobs") == "gauge", "rtaas_jobs is a gauge")
check(set(jobs) >= {"queued", "running", "succeeded", "failed", "cancelled"}, "rtaas_jobs has every state: %s" % sorted(jobs))
check(jobs.get("succeeded", 0) >= 2 and jobs.get("cancelled", 0) >= 3, "rtaas_jobs counts at least 2 succeeded and 3 cancelled: %s" % jobs)
check(any(n == "rtaas_http_request_duration_seconds_bucket" for n, l, v in samples), "a latency histogram (rtaas_http_request_duration_seconds)")
PY
while IFS= read -r line; do
  if [[ $line == "ok - "* ]]; then ok "${line#ok - service: }"; else not_ok "${line#not ok - service: }"; fi
done <"$SVC_TMP/metrics.check"

# ---- deletes after the jobs ended -----------------------------------------------------------
KEY=$KA
req DELETE "/v1/datasets/$DN"; expect 204 "delete a dataset only finished jobs used: 204"
req DELETE "/v1/datasets/$DS"; expect 204 "delete the other one: 204"
req GET /v1/datasets; is "$(jf datasets.#)" 0 "no dataset left"
req DELETE "/v1/backbones/$BB3"; expect 204 "delete an uploaded backbone: 204"
req DELETE "/v1/backbones/$BB2"; expect 204 "delete a failed backbone: 204"
req GET "/v1/transfers/$T1/report"; expect 200 "a finished job keeps its report after its data went"
req DELETE "/v1/backbones/$BB"; expect 204 "delete the trained backbone: 204"
req GET "/v1/backbones/$BB"; expect_error 404 not_found "a deleted backbone is gone"
req GET "/v1/transfers/$T1/head"; expect 200 "a finished job keeps its head after its backbone went"
is "$(tmp_files)" 0 "no temporary file left at the end"
if grep -qF -e "$KA" -e "$KB" "$SVC_TMP/server.log"; then not_ok "no API key in the server's log"; else ok "no API key in the server's log"; fi

svc_finish
