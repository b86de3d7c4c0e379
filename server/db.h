/* PostgreSQL through libpq: a fixed pool of connections, every query a prepared statement
 * (the table in sql.c, prepared on each connection as it opens), a transaction runner that
 * retries serialization failures and deadlocks, and the migrations runner. */
#ifndef RT_DB_H
#define RT_DB_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#include "sql.h"

typedef struct db db;

typedef struct db_conn {
    PGconn *pg;
    db *owner;
    bool broken;   /* set by db_exec when the connection failed; reset before reuse */
    int index;
} db_conn;

/* What a failed call meant, for the HTTP status. */
typedef enum {
    DB_OK = 0,
    DB_UNAVAILABLE, /* cannot connect, or the connection dropped: 503, retry later */
    DB_RETRY,       /* serialization failure or deadlock: the transaction runner retries */
    DB_UNIQUE,      /* unique_violation */
    DB_FOREIGN,     /* foreign_key_violation */
    DB_FAILED,      /* anything else: a bug, 500 */
} db_rc;

/* Opens a pool of `size` connections to `conninfo` (connected lazily, reconnected when broken).
 * password (copied; NULL or "" for none) overrides any password conninfo carries. */
db *db_open(const char *conninfo, const char *password, int size);
void db_close(db *d);
/* A new connection outside the pool, with the pool's conninfo and password; PQfinish it (check
 * PQstatus: libpq returns a connection object even when connecting failed). */
PGconn *db_connect(const db *d);

/* A connection from the pool, waiting for a free one; NULL (and DB_UNAVAILABLE) when the server
 * cannot be reached. Give it back with db_put. */
db_conn *db_get(db *d);
void db_put(db *d, db_conn *c);

/* Runs prepared statement q with n text parameters (NULL is SQL NULL). The result is never NULL;
 * *rc says what happened (rc may be NULL). PQclear it. */
PGresult *db_exec(db_conn *c, rt_sql_id q, int n, const char *const *params, db_rc *rc);
/* The same with per-parameter lengths and formats (1 = binary, for bytea). */
PGresult *db_exec_bin(db_conn *c, rt_sql_id q, int n, const char *const *params, const int *lengths,
                      const int *formats, db_rc *rc);
/* Classifies a result. */
db_rc db_result_rc(db_conn *c, const PGresult *r);

/* Runs fn inside BEGIN ... COMMIT on one pooled connection; fn returns DB_OK to commit, anything
 * else to roll back. Serialization failures and deadlocks are retried (up to 8 times). */
db_rc db_tx(db *d, db_rc (*fn)(db_conn *c, void *user), void *user);

/* Plain SQL without parameters (BEGIN, COMMIT, LISTEN); true on success. */
bool db_command(db_conn *c, const char *sql);

/* Applies the embedded migrations in order under an advisory lock, recording each with its
 * SHA-256; refuses (returns -1, message in err) when an applied migration's text changed or
 * the database holds a migration this binary does not know. */
int db_migrate(db *d, char *err, size_t err_len);
/* True when every embedded migration is recorded with the same checksum. */
bool db_migrations_current(db *d);

/* Uppercase hex SHA-256 helpers live in blob.h; this is the last libpq error of the pool. */
const char *db_last_error(void);

#endif
