#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "spec.h"

typedef struct {
    rt_req *r;
    json_t *spec;
    char id[32];
} create_args;

static db_rc create_tx(db_conn *c, void *user)
{
    create_args *a = user;
    return job_insert(c, a->r, a->id, "transfer", a->spec);
}

void h_transfer_create(rt_req *r, rt_resp *o)
{
    json_t *spec = checked_spec(r, o, "transfer");
    if (!spec)
        return;
    create_args a = {.r = r, .spec = spec};
    rt_new_id(a.id, sizeof a.id, "job_");
    db_rc rc = db_tx(r->app->db, create_tx, &a);
    json_decref(spec);
    if (rc != DB_OK)
        reply_db(o, rc);
    else
        reply_json(o, 202, json_pack("{s:s,s:s}", "id", a.id, "status", "queued"));
}

void h_transfer_list(rt_req *r, rt_resp *o)
{
    const char *status = req_query(r, "status"), *kind = req_query(r, "kind");
    static const char *const states[] = {"queued", "running", "succeeded", "failed", "cancelled"};
    bool ok = !status;
    for (int i = 0; !ok && i < 5; i++)
        ok = !strcmp(status, states[i]);
    if (!ok) {
        reply_error(o, 400, "invalid_field", "status", "must be one of queued, running, succeeded, failed, cancelled");
        return;
    }
    if (!kind)
        kind = "transfer";
    else if (!strcmp(kind, "all"))
        kind = NULL;
    else if (strcmp(kind, "transfer") && strcmp(kind, "backbone")) {
        reply_error(o, 400, "invalid_field", "kind", "must be transfer, backbone or all");
        return;
    }
    const char *p[3] = {r->tenant_id_s, status, kind};
    db_rc rc;
    PGresult *res = api_query(r, o, Q_JOB_LIST, 3, p, &rc);
    if (!res)
        return;
    reply_rows(o, res, rc, "transfers");
}

void h_transfer_get(rt_req *r, rt_resp *o)
{
    const char *p[2] = {r->tenant_id_s, r->params[0]};
    db_rc rc;
    PGresult *res = api_query(r, o, Q_JOB_GET, 2, p, &rc);
    if (!res)
        return;
    reply_row(o, 200, res, rc, "job");
}

void h_transfer_cancel(rt_req *r, rt_resp *o)
{
    db_conn *c = db_get(r->app->db);
    if (!c) {
        reply_db(o, DB_UNAVAILABLE);
        return;
    }
    const char *p[2] = {r->tenant_id_s, r->params[0]};
    db_rc rc;
    PGresult *res = db_exec(c, Q_JOB_CANCEL, 2, p, &rc);
    if (rc == DB_OK && PQntuples(res) == 1) {
        const char *state = PQgetvalue(res, 0, 0);
        reply_json(o, 202, json_pack("{s:s,s:s,s:b}", "id", r->params[0], "status", state, "cancel_requested", 1));
    } else if (rc == DB_OK) {
        PQclear(res);
        res = db_exec(c, Q_JOB_STATE, 2, p, &rc);
        if (rc != DB_OK)
            reply_db(o, rc);
        else if (PQntuples(res) == 0)
            reply_error(o, 404, "not_found", NULL, "no such job");
        else
            reply_error(o, 409, "conflict", NULL, "the job has %s already", PQgetvalue(res, 0, 0));
    } else {
        reply_db(o, rc);
    }
    PQclear(res);
    db_put(r->app->db, c);
}

void h_transfer_report(rt_req *r, rt_resp *o)
{
    const char *p[2] = {r->tenant_id_s, r->params[0]};
    db_rc rc;
    PGresult *res = api_query(r, o, Q_JOB_REPORT, 2, p, &rc);
    if (!res)
        return;
    if (rc != DB_OK)
        reply_db(o, rc);
    else if (PQntuples(res) != 1)
        reply_error(o, 404, "not_found", NULL, "no such job");
    else if (PQgetisnull(res, 0, 1))
        reply_error(o, 409, "conflict", NULL, "the job is %s; its report exists once it has succeeded",
                    PQgetvalue(res, 0, 0));
    else
        reply_raw_json(o, 200, PQgetvalue(res, 0, 1));
    PQclear(res);
}

void h_transfer_gradients(rt_req *r, rt_resp *o)
{
    const char *i = req_query(r, "i");
    if (!i) {
        reply_artifact(r, o, "gradients.png", "image/png", "gradients.png");
        return;
    }
    char *end;
    long k = strtol(i, &end, 10);
    if (!*i || *end || k < 0 || k > 9999) {
        reply_error(o, 400, "invalid_field", "i", "must be an example index (0, 1, ...)");
        return;
    }
    char name[32], file[32];
    snprintf(name, sizeof name, "gradients/%04ld.png", k);
    snprintf(file, sizeof file, "gradient-%04ld.png", k);
    reply_artifact(r, o, name, "image/png", file);
}

void h_transfer_head(rt_req *r, rt_resp *o)
{
    reply_artifact(r, o, "head.safetensors", "application/octet-stream", "head.safetensors");
    if (o->status == 404 && strstr(o->body ? o->body : "", "has no"))
        reply_artifact(r, o, "model.safetensors", "application/octet-stream", "model.safetensors");
}
