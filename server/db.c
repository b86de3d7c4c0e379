#include "db.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "blob.h"
#include "embed.h"
#include "log.h"

struct db {
    char *conninfo;
    char *password; /* NULL: the connection string's own (or libpq's defaults) */
    int size;
    db_conn *conns;
    bool *busy;
    pthread_mutex_t lock;
    pthread_cond_t freed;
};

static __thread char last_error[512];

const char *db_last_error(void) { return last_error; }

static void set_error(const char *msg)
{
    snprintf(last_error, sizeof last_error, "%s", msg ? msg : "unknown database error");
    size_t n = strlen(last_error);
    while (n && (last_error[n - 1] == '\n' || last_error[n - 1] == ' '))
        last_error[--n] = 0;
}

db *db_open(const char *conninfo, const char *password, int size)
{
    db *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->conninfo = strdup(conninfo);
    d->password = password && *password ? strdup(password) : NULL;
    d->size = size;
    d->conns = calloc((size_t)size, sizeof *d->conns);
    d->busy = calloc((size_t)size, sizeof *d->busy);
    if (!d->conninfo || !d->conns || !d->busy || (password && *password && !d->password)) {
        db_close(d);
        return NULL;
    }
    for (int i = 0; i < size; i++) {
        d->conns[i].index = i;
        d->conns[i].owner = d;
    }
    pthread_mutex_init(&d->lock, NULL);
    pthread_cond_init(&d->freed, NULL);
    return d;
}

void db_close(db *d)
{
    if (!d)
        return;
    for (int i = 0; d->conns && i < d->size; i++)
        if (d->conns[i].pg)
            PQfinish(d->conns[i].pg);
    free(d->conns);
    free(d->busy);
    free(d->conninfo);
    if (d->password) {
        memset(d->password, 0, strlen(d->password));
        free(d->password);
    }
    free(d);
}

PGconn *db_connect(const db *d)
{
    if (!d->password)
        return PQconnectdb(d->conninfo);
    /* the connection string is expanded where "dbname" stands, and a keyword after it wins: the
     * password from its file overrides one the URL may carry, and never passes through the
     * environment (PGPASSWORD would reach every child process) */
    const char *const keys[] = {"dbname", "password", NULL};
    const char *const vals[] = {d->conninfo, d->password, NULL};
    return PQconnectdbParams(keys, vals, 1);
}

/* Server notices ("already exists, skipping") are not worth a log line. */
static void quiet(void *arg, const char *message)
{
    (void)arg, (void)message;
}

/* Connects (or reconnects) and prepares every statement of the table. */
static bool conn_open(db *d, db_conn *c)
{
    if (c->pg && PQstatus(c->pg) == CONNECTION_OK && !c->broken)
        return true;
    if (c->pg)
        PQfinish(c->pg);
    c->pg = db_connect(d);
    c->broken = false;
    if (PQstatus(c->pg) != CONNECTION_OK) {
        set_error(PQerrorMessage(c->pg));
        PQfinish(c->pg);
        c->pg = NULL;
        return false;
    }
    PQsetNoticeProcessor(c->pg, quiet, NULL);
    PQclear(PQexec(c->pg, "SET client_min_messages = warning"));
    for (int i = 0; i < RT_SQL_COUNT; i++) {
        PGresult *r = PQprepare(c->pg, rt_sql[i].name, rt_sql[i].sql, 0, NULL);
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok) {
            char msg[400];
            snprintf(msg, sizeof msg, "preparing %s: %s", rt_sql[i].name, PQresultErrorMessage(r));
            set_error(msg);
        }
        PQclear(r);
        if (!ok) {
            /* before the migrations ran, statements on missing tables fail: keep the
             * connection and prepare again later */
            PQfinish(c->pg);
            c->pg = NULL;
            return false;
        }
    }
    return true;
}

db_conn *db_get(db *d)
{
    pthread_mutex_lock(&d->lock);
    int i;
    for (;;) {
        for (i = 0; i < d->size && d->busy[i]; i++)
            ;
        if (i < d->size)
            break;
        pthread_cond_wait(&d->freed, &d->lock);
    }
    d->busy[i] = true;
    pthread_mutex_unlock(&d->lock);
    db_conn *c = &d->conns[i];
    if (!conn_open(d, c)) {
        db_put(d, c);
        return NULL;
    }
    return c;
}

void db_put(db *d, db_conn *c)
{
    if (!c)
        return;
    if (c->pg && PQtransactionStatus(c->pg) != PQTRANS_IDLE && PQstatus(c->pg) == CONNECTION_OK)
        PQclear(PQexec(c->pg, "ROLLBACK"));
    pthread_mutex_lock(&d->lock);
    d->busy[c->index] = false;
    pthread_cond_signal(&d->freed);
    pthread_mutex_unlock(&d->lock);
}

db_rc db_result_rc(db_conn *c, const PGresult *r)
{
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return DB_OK;
    set_error(r ? PQresultErrorMessage(r) : PQerrorMessage(c->pg));
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    if (!c->pg || PQstatus(c->pg) != CONNECTION_OK || !state || !strncmp(state, "08", 2) ||
        !strncmp(state, "57P", 3)) {
        c->broken = true;
        return DB_UNAVAILABLE;
    }
    if (!strcmp(state, "40001") || !strcmp(state, "40P01"))
        return DB_RETRY;
    if (!strcmp(state, "23505"))
        return DB_UNIQUE;
    if (!strcmp(state, "23503"))
        return DB_FOREIGN;
    return DB_FAILED;
}

PGresult *db_exec_bin(db_conn *c, rt_sql_id q, int n, const char *const *params, const int *lengths,
                      const int *formats, db_rc *rc)
{
    bool idle = PQtransactionStatus(c->pg) == PQTRANS_IDLE;
    PGresult *r = PQexecPrepared(c->pg, rt_sql[q].name, n, params, lengths, formats, 0);
    if (!r)
        r = PQmakeEmptyPGresult(c->pg, PGRES_FATAL_ERROR);
    db_rc x = db_result_rc(c, r);
    if (x == DB_UNAVAILABLE && idle && conn_open(c->owner, c)) {
        /* the server restarted since this connection was last used: one more try on a new one */
        PQclear(r);
        r = PQexecPrepared(c->pg, rt_sql[q].name, n, params, lengths, formats, 0);
        if (!r)
            r = PQmakeEmptyPGresult(c->pg, PGRES_FATAL_ERROR);
        x = db_result_rc(c, r);
    }
    if (x != DB_OK && x != DB_UNIQUE && x != DB_RETRY)
        rlog(x == DB_UNAVAILABLE ? LOG_WARN : LOG_ERROR, "db_error",
             json_pack("{s:s,s:s}", "statement", rt_sql[q].name, "error", last_error));
    if (rc)
        *rc = x;
    return r;
}

PGresult *db_exec(db_conn *c, rt_sql_id q, int n, const char *const *params, db_rc *rc)
{
    return db_exec_bin(c, q, n, params, NULL, NULL, rc);
}

bool db_command(db_conn *c, const char *sql)
{
    bool idle = PQtransactionStatus(c->pg) == PQTRANS_IDLE;
    PGresult *r = PQexec(c->pg, sql);
    bool ok = db_result_rc(c, r) == DB_OK;
    if (!ok && c->broken && idle && !strcmp(sql, "BEGIN") && conn_open(c->owner, c)) {
        PQclear(r);
        r = PQexec(c->pg, sql);
        ok = db_result_rc(c, r) == DB_OK;
    }
    PQclear(r);
    return ok;
}

db_rc db_tx(db *d, db_rc (*fn)(db_conn *c, void *user), void *user)
{
    db_rc rc = DB_RETRY;
    for (int attempt = 0; attempt < 8 && rc == DB_RETRY; attempt++) {
        if (attempt) {
            struct timespec ts = {0, (long)(1000000L << (attempt < 6 ? attempt : 6))};
            nanosleep(&ts, NULL);
        }
        db_conn *c = db_get(d);
        if (!c)
            return DB_UNAVAILABLE;
        if (!db_command(c, "BEGIN")) {
            rc = c->broken ? DB_UNAVAILABLE : DB_FAILED;
            db_put(d, c);
            return rc;
        }
        rc = fn(c, user);
        if (rc == DB_OK) {
            PGresult *r = PQexec(c->pg, "COMMIT");
            rc = db_result_rc(c, r);
            PQclear(r);
        } else if (!c->broken) {
            db_command(c, "ROLLBACK");
        }
        db_put(d, c);
    }
    return rc;
}

/* ---- migrations ---- */

#define MIGRATION_LOCK "727274101"

/* Migrations run on a connection of their own: the pool's connections prepare statements
 * that need the tables. */
int db_migrate(db *d, char *err, size_t n)
{
    PGconn *pg = db_connect(d);
    if (PQstatus(pg) != CONNECTION_OK) {
        snprintf(err, n, "connecting: %s", PQerrorMessage(pg));
        PQfinish(pg);
        return -1;
    }
    PQsetNoticeProcessor(pg, quiet, NULL);
    int ret = -1;
    PGresult *r = PQexec(pg, "SELECT pg_advisory_lock(" MIGRATION_LOCK ")");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        snprintf(err, n, "advisory lock: %s", PQresultErrorMessage(r));
        PQclear(r);
        PQfinish(pg);
        return -1;
    }
    PQclear(r);
    r = PQexec(pg, "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, checksum text NOT NULL, "
                   "applied_at timestamptz NOT NULL DEFAULT now())");
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        snprintf(err, n, "schema_migrations: %s", PQresultErrorMessage(r));
        goto out;
    }
    PQclear(r);
    r = PQexec(pg, "SELECT name, checksum FROM schema_migrations ORDER BY name");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        snprintf(err, n, "reading schema_migrations: %s", PQresultErrorMessage(r));
        goto out;
    }
    for (int row = 0; row < PQntuples(r); row++) {
        const char *name = PQgetvalue(r, row, 0);
        size_t i;
        for (i = 0; i < rt_migrations_n && strcmp(rt_migrations[i].name, name); i++)
            ;
        if (i == rt_migrations_n) {
            snprintf(err, n, "the database has migration %s, which this rtaas does not know (a newer version?)", name);
            goto out;
        }
        char hex[65];
        sha256_hex(rt_migrations[i].data, rt_migrations[i].len, hex);
        if (strcmp(hex, PQgetvalue(r, row, 1))) {
            snprintf(err, n, "migration %s was edited after it was applied (checksum %.12s, recorded %.12s); "
                     "write a new migration instead", name, hex, PQgetvalue(r, row, 1));
            goto out;
        }
    }
    for (size_t i = 0; i < rt_migrations_n; i++) {
        bool applied = false;
        for (int row = 0; row < PQntuples(r); row++)
            applied |= !strcmp(PQgetvalue(r, row, 0), rt_migrations[i].name);
        if (applied)
            continue;
        char hex[65];
        sha256_hex(rt_migrations[i].data, rt_migrations[i].len, hex);
        PGresult *b = PQexec(pg, "BEGIN");
        PQclear(b);
        b = PQexec(pg, (const char *)rt_migrations[i].data);
        if (PQresultStatus(b) != PGRES_COMMAND_OK && PQresultStatus(b) != PGRES_TUPLES_OK) {
            snprintf(err, n, "migration %s: %s", rt_migrations[i].name, PQresultErrorMessage(b));
            PQclear(b);
            PQclear(PQexec(pg, "ROLLBACK"));
            goto out;
        }
        PQclear(b);
        const char *vals[2] = {rt_migrations[i].name, hex};
        b = PQexecParams(pg, "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)", 2, NULL, vals, NULL,
                         NULL, 0);
        bool ok = PQresultStatus(b) == PGRES_COMMAND_OK;
        PQclear(b);
        b = PQexec(pg, ok ? "COMMIT" : "ROLLBACK");
        ok = ok && PQresultStatus(b) == PGRES_COMMAND_OK;
        PQclear(b);
        if (!ok) {
            snprintf(err, n, "recording migration %s: %s", rt_migrations[i].name, PQerrorMessage(pg));
            goto out;
        }
        rlog(LOG_INFO, "migration_applied", json_pack("{s:s,s:s}", "name", rt_migrations[i].name, "sha256", hex));
    }
    ret = 0;
out:
    PQclear(r);
    PQclear(PQexec(pg, "SELECT pg_advisory_unlock(" MIGRATION_LOCK ")"));
    PQfinish(pg);
    return ret;
}

bool db_migrations_current(db *d)
{
    db_conn *c = db_get(d);
    if (!c)
        return false;
    PGresult *r = db_exec(c, Q_MIGRATIONS, 0, NULL, NULL);
    bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && (size_t)PQntuples(r) == rt_migrations_n;
    for (int row = 0; ok && row < PQntuples(r); row++) {
        char hex[65];
        ok = !strcmp(PQgetvalue(r, row, 0), rt_migrations[row].name);
        if (ok) {
            sha256_hex(rt_migrations[row].data, rt_migrations[row].len, hex);
            ok = !strcmp(hex, PQgetvalue(r, row, 1));
        }
    }
    PQclear(r);
    db_put(d, c);
    return ok;
}
