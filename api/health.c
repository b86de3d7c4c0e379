#include <stdlib.h>

#include "api.h"
#include "embed.h"
#include "engine.h"
#include "metrics.h"

void h_healthz(rt_req *r, rt_resp *o)
{
    (void)r;
    reply_json(o, 200, json_pack("{s:s,s:s}", "status", "ok", "version", RTAAS_VERSION));
}

void h_readyz(rt_req *r, rt_resp *o)
{
    db_conn *c = db_get(r->app->db);
    db_rc rc = DB_UNAVAILABLE;
    if (c) {
        PQclear(db_exec(c, Q_PING, 0, NULL, &rc));
        db_put(r->app->db, c);
    }
    if (rc != DB_OK) {
        reply_json(o, 503, json_pack("{s:s,s:s,s:{s:s,s:s,s:n}}", "status", "unavailable", "database", "unreachable",
                                     "error", "code", "unavailable", "message", "the database cannot be reached",
                                     "field"));
        return;
    }
    if (!db_migrations_current(r->app->db)) {
        reply_json(o, 503, json_pack("{s:s,s:s,s:{s:s,s:s,s:n}}", "status", "unavailable", "migrations", "behind",
                                     "error", "code", "unavailable", "message",
                                     "the database's migrations are not those of this rtaas", "field"));
        return;
    }
    reply_json(o, 200, json_pack("{s:s,s:s,s:I}", "status", "ready", "database", "ok", "migrations",
                                 (json_int_t)rt_migrations_n));
}

void h_metrics(rt_req *r, rt_resp *o)
{
    size_t len = 0;
    char *text = metrics_render(r->app->db, &len);
    free(o->body);
    o->status = 200;
    o->ctype = "text/plain; version=0.0.4";
    o->body = text;
    o->len = len;
}
