/* Request handlers, one file per resource; the route table is in routes.c. Handlers validate
 * the request, call the server's services (db, blob, spec) and shape the reply. */
#ifndef RT_API_H
#define RT_API_H

#include "http.h"

void h_healthz(rt_req *r, rt_resp *o);
void h_readyz(rt_req *r, rt_resp *o);
void h_metrics(rt_req *r, rt_resp *o);
/* The dashboard: "/" is static/index.html, "/static/{file}" a file of static/ (compiled in). */
void h_static(rt_req *r, rt_resp *o);

void h_dataset_create(rt_req *r, rt_resp *o);
void h_dataset_list(rt_req *r, rt_resp *o);
void h_dataset_get(rt_req *r, rt_resp *o);
void h_dataset_delete(rt_req *r, rt_resp *o);

void h_backbone_create(rt_req *r, rt_resp *o);
void h_backbone_list(rt_req *r, rt_resp *o);
void h_backbone_get(rt_req *r, rt_resp *o);
void h_backbone_delete(rt_req *r, rt_resp *o);
void h_backbone_weights(rt_req *r, rt_resp *o);

void h_transfer_create(rt_req *r, rt_resp *o);
void h_transfer_list(rt_req *r, rt_resp *o);
void h_transfer_get(rt_req *r, rt_resp *o);
void h_transfer_cancel(rt_req *r, rt_resp *o);
void h_transfer_report(rt_req *r, rt_resp *o);
void h_transfer_gradients(rt_req *r, rt_resp *o);
void h_transfer_head(rt_req *r, rt_resp *o);

/* Signed download links (links.c): POST /v1/transfers/{id}/links makes one for an artifact of a
 * job (head, report, gradients); GET /v1/links/{token} serves it without an API key until it
 * expires (403 `forbidden` when altered or expired). */
void h_link_create(rt_req *r, rt_resp *o);
void h_link_get(rt_req *r, rt_resp *o);


/* ---- shared by the handlers (common.c) ---- */
/* Replies with the single JSON text column of a one-row result, or 404 when there is no row. */
void reply_row(rt_resp *o, int status, PGresult *res, db_rc rc, const char *what);
/* Replies {"<key>": [rows...]} from a result of JSON text rows. */
void reply_rows(rt_resp *o, PGresult *res, db_rc rc, const char *key);
/* Runs one statement on a pooled connection; NULL (after replying 503) when the database is away. */
PGresult *api_query(rt_req *r, rt_resp *o, rt_sql_id q, int n, const char *const *params, db_rc *rc);
/* The request body checked as a job spec of this kind ("transfer", "backbone"), or NULL after
 * replying with the error. */
json_t *checked_spec(rt_req *r, rt_resp *o, const char *kind);
/* Inserts a job and wakes the workers, inside the caller's transaction. */
db_rc job_insert(db_conn *c, rt_req *r, const char *id, const char *kind, json_t *spec);
/* Sends an artifact (a blob) of a job: 404 unknown job, 409 not succeeded, 404 no such artifact. */
void reply_artifact(rt_req *r, rt_resp *o, const char *name, const char *ctype, const char *filename);
/* Sends a stored blob (fetched into the local cache) as a download. */
void reply_blob(rt_req *r, rt_resp *o, const char *sha, const char *ctype, const char *filename);
/* DELETE of a dataset or backbone: 409 while a queued or running job uses it. */
void delete_resource(rt_req *r, rt_resp *o, rt_sql_id in_use, rt_sql_id del, const char *what);

#endif
