#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "spec.h"

void reply_row(rt_resp *o, int status, PGresult *res, db_rc rc, const char *what)
{
    if (rc != DB_OK)
        reply_db(o, rc);
    else if (PQntuples(res) != 1)
        reply_error(o, 404, "not_found", NULL, "no such %s", what);
    else
        reply_raw_json(o, status, PQgetvalue(res, 0, 0));
    PQclear(res);
}

void reply_rows(rt_resp *o, PGresult *res, db_rc rc, const char *key)
{
    if (rc != DB_OK) {
        reply_db(o, rc);
        PQclear(res);
        return;
    }
    size_t cap = 64, len = 0;
    for (int i = 0; i < PQntuples(res); i++)
        cap += (size_t)PQgetlength(res, i, 0) + 1;
    cap += strlen(key);
    char *buf = malloc(cap);
    if (!buf) {
        PQclear(res);
        reply_error(o, 500, "internal", NULL, "out of memory");
        return;
    }
    len = (size_t)sprintf(buf, "{\"%s\":[", key);
    for (int i = 0; i < PQntuples(res); i++) {
        if (i)
            buf[len++] = ',';
        memcpy(buf + len, PQgetvalue(res, i, 0), (size_t)PQgetlength(res, i, 0));
        len += (size_t)PQgetlength(res, i, 0);
    }
    memcpy(buf + len, "]}", 3);
    len += 2;
    PQclear(res);
    free(o->body);
    o->status = 200;
    o->ctype = "application/json";
    o->body = buf;
    o->len = len;
}

db_rc job_insert(db_conn *c, rt_req *r, const char *id, const char *kind, json_t *spec)
{
    char *text = json_dumps(spec, JSON_COMPACT);
    char attempts[16];
    snprintf(attempts, sizeof attempts, "%d", r->app->cfg.max_attempts);
    const char *p[5] = {id, r->tenant_id_s, kind, text, attempts};
    db_rc rc;
    PQclear(db_exec(c, Q_JOB_INSERT, 5, p, &rc));
    free(text);
    if (rc == DB_OK) {
        const char *q[1] = {id};
        PQclear(db_exec(c, Q_JOB_NOTIFY, 1, q, &rc));
    }
    return rc;
}

void reply_artifact(rt_req *r, rt_resp *o, const char *name, const char *ctype, const char *filename)
{
    const char *p[3] = {r->tenant_id_s, r->params[0], name};
    db_rc rc;
    PGresult *res = api_query(r, o, Q_ARTIFACT_GET, 3, p, &rc);
    if (!res)
        return;
    char sha[65] = "";
    if (rc != DB_OK) {
        reply_db(o, rc);
    } else if (PQntuples(res) != 1) {
        reply_error(o, 404, "not_found", NULL, "no such job");
    } else if (strcmp(PQgetvalue(res, 0, 0), "succeeded")) {
        reply_error(o, 409, "conflict", NULL, "the job is %s; its artifacts exist once it has succeeded",
                    PQgetvalue(res, 0, 0));
    } else if (PQgetisnull(res, 0, 1)) {
        reply_error(o, 404, "not_found", NULL, "this job has no %s", name);
    } else {
        snprintf(sha, sizeof sha, "%s", PQgetvalue(res, 0, 1));
    }
    PQclear(res);
    if (sha[0])
        reply_blob(r, o, sha, ctype, filename);
}

void reply_blob(rt_req *r, rt_resp *o, const char *sha, const char *ctype, const char *filename)
{
    char path[PATH_MAX];
    db_rc rc;
    if (blob_fetch(r->app->db, sha, r->app->cache_dir, path, sizeof path, &rc)) {
        reply_db(o, rc == DB_OK ? DB_FAILED : rc);
        return;
    }
    reply_file(o, path, ctype, filename);
}

PGresult *api_query(rt_req *r, rt_resp *o, rt_sql_id q, int n, const char *const *params, db_rc *rc)
{
    db_conn *c = db_get(r->app->db);
    if (!c) {
        reply_db(o, DB_UNAVAILABLE);
        return NULL;
    }
    PGresult *res = db_exec(c, q, n, params, rc);
    db_put(r->app->db, c);
    return res;
}

json_t *checked_spec(rt_req *r, rt_resp *o, const char *kind)
{
    json_t *body = req_json(r, o);
    if (!body)
        return NULL;
    db_conn *c = db_get(r->app->db);
    if (!c) {
        json_decref(body);
        reply_db(o, DB_UNAVAILABLE);
        return NULL;
    }
    json_t *spec = spec_check(r->app, c, r->tenant_id_s, kind, body, o);
    db_put(r->app->db, c);
    json_decref(body);
    return spec;
}
