/* The embedded default: a private PostgreSQL cluster under $RTAAS_DATA_DIR/pg, made with
 * Debian's initdb and run with pg_ctl, reachable only through its unix socket in that folder.
 * Run as root, the cluster's files and processes belong to the `postgres` user. */
#ifndef RT_PGEMBED_H
#define RT_PGEMBED_H

#include <stdbool.h>
#include <stddef.h>

/* Creates the cluster if needed, starts it unless it runs already (*started says which), makes
 * the database `rtaas`, and writes a libpq connection string into conninfo. 0 on success; -1
 * with the reason in err. */
int pg_embed_start(const char *data_dir, char *conninfo, size_t conninfo_len, bool *started, char *err,
                   size_t err_len);
/* Stops the cluster (fast shutdown: open transactions roll back). */
void pg_embed_stop(const char *data_dir);

#endif
