#!/usr/bin/env bash
# Signed download links and the secrets read from files: a link serves the same bytes as the
# authenticated download without a key; an altered, expired or foreign one is refused; links die
# with a random signing key and survive restarts with RTAAS_SIGNING_KEY_FILE; `serve --no-workers`
# runs no job; RTAAS_DATABASE_URL_FILE and RTAAS_DATABASE_PASSWORD_FILE reach a cluster that
# asks for a password (the private one, switched to scram-sha-256).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
. tests/service/lib.sh
svc_init service_links

D=$SVC_TMP/files
"$PY" tests/service/mkdata.py "$D" --big-bytes 1 >/dev/null || svc_skip_all "tests/service/mkdata.py failed"
sha() { sha256sum "$1" | cut -c1-64; }

# tamper TOKEN WHAT: the token with one thing changed, the MAC kept
tamper() {
  "$PY" - "$1" "$2" <<'PY'
import base64, sys
tok, what = sys.argv[1], sys.argv[2]
p, mac = tok.split(".")
def dec(s): return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)).decode()
def enc(s): return base64.urlsafe_b64encode(s.encode()).decode().rstrip("=")
job, art, exp, ten = dec(p).split(".")
if what == "mac":        # one character of the MAC
    mac = ("A" if mac[5] != "A" else "B").join((mac[:5], mac[6:]))
elif what == "artifact":
    art = "r" if art != "r" else "h"
elif what == "expiry":
    exp = str(int(exp) + 86400)
elif what == "tenant":
    ten = str(int(ten) + 1)
print(enc(".".join((job, art, exp, ten))) + "." + mac)
PY
}
# token_of URL: the token of a link URL
token_of() { echo "${1#/v1/links/}"; }
# link ARTIFACT [EXPIRES_IN]: POST a link for $T1; sets LINK (the URL path) on 201
link() {
  local body="{\"artifact\": \"$1\"${2:+, \"expires_in\": $2}}"
  json_post "/v1/transfers/$T1/links" "$body"
  LINK=$(jf url 2>/dev/null)
}

svc_start
KA=$(svc_key tenant-a) && KB=$(svc_key tenant-b)
check $? "apikey create for two tenants"
[[ -n $KA && -n $KB ]] || svc_finish
grep -q '"event":"signing_key"' "$SVC_TMP/server.log"
check $? "without RTAAS_SIGNING_KEY(_FILE) the server warns that links use a random key"

# ---- a finished transfer to link to (small: 200 images, the small CNN, 2 epochs) -------------
KEY=$KA
svc_datasets "$D"
EVAL='"eval": {"eps": 0.1, "examples": 20, "gradient_maps": 2, "attacks": [{"kind": "pgd", "steps": 2}]}'
svc_backbone 20 '{"epochs": 1, "lr": 0.05, "batch_size": 32}' "$EVAL"
json_post /v1/transfers "{\"backbone\": \"$BB\", \"method\": \"linear\", \"seed\": 2,
  \"dataset\": {\"id\": \"$DS\", \"classes\": [5, 6, 7, 8, 9], \"per_class\": 20},
  \"test\": {\"id\": \"$DS\", \"classes\": [5, 6, 7, 8, 9]}, \"params\": {\"epochs\": 2, \"batch_size\": 32}, $EVAL}"
expect 202 "POST a linear transfer"
T1=$(jf id)
wait_job "$T1" 300
is "$JOB_STATUS" succeeded "the transfer succeeds"
[[ $JOB_STATUS == succeeded ]] || svc_finish

# ---- a link serves the same bytes, without a key ---------------------------------------------
declare -A AUTH_SHA=() LINKS=()
for a in head report gradients; do
  KEY=$KA req GET "/v1/transfers/$T1/$a"
  AUTH_SHA[$a]=$(sha "$SVC_TMP/body")
  KEY=$KA link "$a"
  expect 201 "POST /v1/transfers/{id}/links for $a: 201"
  schema_ok Link "the $a link is a Link"
  jpy '"'"$a"'" == d["artifact"] and d["job"] == "'"$T1"'" and d["url"].startswith("/v1/links/")' >/dev/null
  check $? "the $a link names the artifact and the job" "$BODY"
  LINKS[$a]=$LINK
  KEY='' req GET "$LINK"
  expect 200 "GET the $a link without a key: 200"
  is "$(sha "$SVC_TMP/body")" "${AUTH_SHA[$a]}" "the $a link serves the bytes of the authenticated download"
  [[ $(header Cache-Control) == *no-store* && $(header Referrer-Policy) == no-referrer ]]
  check $? "the $a link's reply is not cached and sends no Referer" "$HEADERS"
done
KEY=$KA req GET "${LINKS[head]}"
expect 200 "a link with a bearer key beside it still works (the key is not needed)"
jpy '3500 <= __import__("calendar").timegm(__import__("time").strptime(d["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - __import__("time").time() <= 3601' \
  "$(KEY=$KA link report; echo "$BODY")" >/dev/null
check $? "expires_in defaults to 3600 s"

# ---- refused links ---------------------------------------------------------------------------
KEY=''
TOK=$(token_of "${LINKS[head]}")
for what in mac artifact expiry tenant; do
  req GET "/v1/links/$(tamper "$TOK" "$what")"
  expect_error 403 forbidden "a link with its $what altered: 403"
done
req GET "/v1/links/${TOK%.*}"; expect_error 403 forbidden "a link without its MAC: 403"
req GET "/v1/links/x.y"; expect_error 403 forbidden "garbage as a token: 403"
req GET "/v1/links/${TOK}AA"; expect_error 403 forbidden "a MAC with bytes added: 403"
KEY=$KA link head 1
expect 201 "a link that expires in 1 s"
sleep 2.2
KEY='' req GET "$LINK"
expect_error 403 forbidden "the link 2 s later: 403"
[[ $(jf error.message) == *expired* ]]; check $? "the 403 says it expired" "$BODY"

# ---- creating links: another tenant, validation ----------------------------------------------
KEY=$KB json_post "/v1/transfers/$T1/links" '{"artifact": "head"}'
expect_error 404 not_found "another tenant's job: 404, as an unknown one"
KEY=$KA json_post "/v1/transfers/job_nosuchjob/links" '{"artifact": "head"}'
expect_error 404 not_found "an unknown job: 404"
KEY='' json_post "/v1/transfers/$T1/links" '{"artifact": "head"}'
expect_error 401 unauthorized "no key: 401"
KEY=$KA
json_post "/v1/transfers/$T1/links" '{}'; expect_error 400 missing_field "no artifact: 400" artifact
json_post "/v1/transfers/$T1/links" '{"artifact": "weights"}'; expect_error 400 invalid_field "artifact weights: 400" artifact
json_post "/v1/transfers/$T1/links" '{"artifact": "head", "expires_in": "60"}'
expect_error 400 invalid_field "expires_in as a string: 400" expires_in
json_post "/v1/transfers/$T1/links" '{"artifact": "head", "expires_in": 0}'
expect_error 422 unprocessable "expires_in 0: 422" expires_in
json_post "/v1/transfers/$T1/links" '{"artifact": "head", "expires_in": 604801}'
expect_error 422 unprocessable "expires_in over 7 days: 422" expires_in
json_post "/v1/transfers/$T1/links" '{"artifact": "head", "expires_in": 604800}'; expect 201 "expires_in of 7 days: 201"
json_post "/v1/transfers/$T1/links" '{"artifact": "head", "path": "/etc/passwd"}'
expect_error 400 invalid_field "an unknown field: 400" path

# ---- a signing key from a file; serve --no-workers -------------------------------------------
svc_stop
OLD_REPORT=${LINKS[report]}
out=$(RTAAS_SIGNING_KEY_FILE=$SVC_TMP/no-such-key "$RTAAS" serve 2>&1); rc=$?
[[ $rc -ne 0 && $out == *RTAAS_SIGNING_KEY_FILE*no-such-key* ]]
check $? "a missing RTAAS_SIGNING_KEY_FILE stops serve with a message naming it" "rc=$rc $out"
printf 'short\n' >"$SVC_TMP/short-key"
out=$(RTAAS_SIGNING_KEY_FILE=$SVC_TMP/short-key "$RTAAS" serve 2>&1); rc=$?
[[ $rc -ne 0 && $out == *"at least 16"* ]]; check $? "a signing key under 16 bytes is refused" "rc=$rc $out"
openssl rand -hex 32 >"$SVC_TMP/signing-key" 2>/dev/null || head -c 48 /dev/urandom | base64 >"$SVC_TMP/signing-key"
export RTAAS_SIGNING_KEY_FILE=$SVC_TMP/signing-key
SVC_SERVE_ARGS=--no-workers
log0=$(wc -l <"$SVC_TMP/server.log")
svc_start
newlog=$(tail -n +"$((log0 + 1))" "$SVC_TMP/server.log")
started=$(grep '"event":"started"' <<<"$newlog")
[[ $started == *'"devices":""'* ]]
check $? "serve --no-workers starts no worker (devices empty in the started line)" "$started"
[[ $newlog != *'"event":"signing_key"'* ]]
check $? "with RTAAS_SIGNING_KEY_FILE there is no random-key warning"
KEY='' req GET "$OLD_REPORT"
expect_error 403 forbidden "a link signed with the previous random key dies with that process"
KEY=$KA link head
expect 201 "a link under the key file"
KEY='' req GET "$LINK"
expect 200 "it serves"
is "$(sha "$SVC_TMP/body")" "${AUTH_SHA[head]}" "the same head bytes"
KEY=$KA json_post /v1/transfers "{\"backbone\": \"$BB\", \"method\": \"linear\", \"seed\": 3,
  \"dataset\": {\"id\": \"$DS\", \"classes\": [5, 6], \"per_class\": 10},
  \"test\": {\"id\": \"$DS\", \"classes\": [5, 6]}, \"params\": {\"epochs\": 1, \"batch_size\": 16}, $EVAL}"
T2=$(jf id)
sleep 2
KEY=$KA req GET "/v1/transfers/$T2"
is "$(jf status)" queued "with --no-workers a new job stays queued"
KEY=$KA req POST "/v1/transfers/$T2/cancel"; expect 202 "cancel it"

# ---- the database URL and password from files ------------------------------------------------
svc_stop
KEYED_LINK=$LINK
pgctl -w -l "$RTAAS_DATA_DIR/pg.log" start >/dev/null 2>&1
DBPW=$(openssl rand -hex 12 2>/dev/null || echo "pw$RANDOM$RANDOM")
sql "ALTER ROLE rtaas PASSWORD '$DBPW'" >/dev/null
check $? "give the role rtaas a password"
pg_as_owner sed -i -E 's/[[:space:]]trust[[:space:]]*$/ scram-sha-256/' "$RTAAS_DATA_DIR/pg/pg_hba.conf"
pgctl reload >/dev/null 2>&1
PGH=$RTAAS_DATA_DIR/pg
printf 'postgresql:///rtaas?host=%s&user=rtaas&password=wrong\n' "$PGH" >"$SVC_TMP/db-url"
printf '%s\n' "$DBPW" >"$SVC_TMP/db-password"
out=$(RTAAS_DATABASE_URL_FILE=$SVC_TMP/db-url timeout 30 "$RTAAS" apikey create --tenant nopw 2>&1); rc=$?
[[ $rc -ne 0 && $rc -ne 124 && $out == *password* ]]
check $? "the URL's wrong password is refused at once, with the reason" "rc=$rc ${out: -300}"
export RTAAS_DATABASE_URL_FILE=$SVC_TMP/db-url RTAAS_DATABASE_PASSWORD_FILE=$SVC_TMP/db-password
K3=$("$RTAAS" apikey create --tenant withpw 2>>"$SVC_TMP/server.log" | tail -n1)
[[ $K3 == rtaas_* ]]; check $? "RTAAS_DATABASE_PASSWORD_FILE overrides the URL's password (apikey create)"
svc_start
KEY='' req GET "$KEYED_LINK"
expect 200 "serve on RTAAS_DATABASE_URL_FILE + RTAAS_DATABASE_PASSWORD_FILE: the keyed link survives a restart"
KEY=$K3 req GET /v1/transfers; expect 200 "the key made through the password file works"
svc_stop
is "$SVC_STOP_RC" 0 "server exits 0 on SIGTERM"
pgctl -w -m fast stop >/dev/null 2>&1
unset RTAAS_DATABASE_URL_FILE RTAAS_DATABASE_PASSWORD_FILE
svc_finish
