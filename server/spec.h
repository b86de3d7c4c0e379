/* Job requests: what POST /v1/transfers and POST /v1/backbones (training) accept, checked
 * against the tenant's datasets and backbones and the engine's own spec parser, and how a
 * stored request becomes the engine's spec (engine/job.h) with local files at run time. */
#ifndef RT_SPEC_H
#define RT_SPEC_H

#include <jansson.h>

#include "http.h"

/* Checks a request body (kind "transfer" or "backbone"); on success returns the spec to store
 * (the body, normalised: dataset references as objects) and leaves o alone; on failure replies
 * (400, 404-like 422, 409, 503) and returns NULL. */
json_t *spec_check(rt_app *app, db_conn *c, const char *tenant_id, const char *kind, json_t *body, rt_resp *o);

/* The engine spec of a stored job, with blobs fetched into the cache. NULL with a message in
 * err (and *rc = DB_UNAVAILABLE when that is why: the job is retried). */
json_t *spec_to_engine(rt_app *app, const char *tenant_id, const char *kind, json_t *spec, char *err, size_t n,
                       db_rc *rc);

#endif
