#!/usr/bin/env bash
# Migrations: applied once under the advisory lock with their checksums, current at /readyz;
# a database whose recorded migration differs from the binary's text (an edited migration), or
# that holds a migration this binary does not know, is refused at start with a clear message.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/service/lib.sh
svc_init service_migrations
svc_start
req GET /readyz
expect 200 "readyz: migrations current"
is "$(sql "SELECT count(*) FROM schema_migrations")" "$(ls migrations/*.sql | wc -l | tr -d ' ')" \
  "every migration recorded once"
is "$(sql "SELECT checksum FROM schema_migrations WHERE name = '0001_init.sql'")" \
  "$(sha256sum migrations/0001_init.sql | cut -d' ' -f1)" "checksum is the SHA-256 of the file"
# two processes migrating at once (serve running, apikey starting): still one row each
KEY=$(svc_key racer)
[[ -n $KEY ]]; check $? "apikey create beside a running server"
is "$(sql "SELECT count(*) FROM schema_migrations")" "$(ls migrations/*.sql | wc -l | tr -d ' ')" \
  "a second process does not apply them again"
svc_stop
# an edited migration: the recorded checksum no longer matches the binary's text
pgctl -w -l "$RTAAS_DATA_DIR/pg.log" start >/dev/null 2>&1
sql "UPDATE schema_migrations SET checksum = repeat('0', 64) WHERE name = '0001_init.sql'" >/dev/null
out=$("$RTAAS" serve 2>&1 >/dev/null); rc=$?
[[ $rc -ne 0 && $out == *"was edited after it was applied"* ]]
check $? "serve refuses an edited applied migration" "rc=$rc" "${out: -400}"
sql "UPDATE schema_migrations SET checksum = '$(sha256sum migrations/0001_init.sql | cut -d' ' -f1)'" >/dev/null
# a migration from a newer rtaas
sql "INSERT INTO schema_migrations (name, checksum) VALUES ('9999_future.sql', repeat('1', 64))" >/dev/null
out=$("$RTAAS" serve 2>&1 >/dev/null); rc=$?
[[ $rc -ne 0 && $out == *"does not know"* ]]
check $? "serve refuses a database with an unknown migration" "rc=$rc" "${out: -400}"
sql "DELETE FROM schema_migrations WHERE name = '9999_future.sql'" >/dev/null
pgctl -w -m fast stop >/dev/null 2>&1
svc_start
req GET /readyz
expect 200 "starts again once the database is consistent"
svc_finish
