#include "spec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "job.h"

/* Whether an engine parse error is about the shape of the JSON (400) rather than its sense (422). */
static bool shape_error(const char *msg)
{
    static const char *const shape[] = {"unknown field", "must be an ", "must be true or false",
                                        "must be a non-empty string", "must be a number or a fraction",
                                        "must be one of", "must be an integer", "must be a number\0"};
    if (strstr(msg, " in [") || strstr(msg, "is outside"))
        return false;
    for (size_t i = 0; i < sizeof shape / sizeof *shape; i++)
        if (!strncmp(msg, shape[i], strlen(shape[i])) || !strcmp(msg, shape[i]))
            return true;
    return !strncmp(msg, "must be a ", 10) && !strstr(msg, "class");
}

static int default_size(const char *arch)
{
    if (!strcmp(arch, "smallcnn"))
        return 28;
    if (!strcmp(arch, "resnet20"))
        return 32;
    return 224;
}

typedef struct {
    rt_resp *o;      /* replies go here when checking; NULL at run time */
    char *err;
    size_t n;
    db_rc rc;
} ctx;

static void failf(ctx *x, int status, const char *code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void failf(ctx *x, int status, const char *code, const char *field, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (x->o)
        reply_error(x->o, status, code, field, "%s", msg);
    if (x->err)
        snprintf(x->err, x->n, "%s%s%s", field ? field : "", field ? ": " : "", msg);
}

/* A dataset reference ("ds_…" or {"id": …, …}) -> the engine's dataset object. shape receives
 * the stored images' [c, h, w]. paths: local files when fetch, placeholders when checking. */
static json_t *dataset_ref(rt_app *app, db_conn *c, const char *tenant, json_t *ref, const char *field, bool fetch,
                           int shape[3], int64_t *examples, ctx *x)
{
    json_t *obj = json_is_string(ref) ? json_pack("{s:O}", "id", ref) : json_incref(ref);
    const char *id = json_string_value(json_object_get(obj, "id"));
    if (!json_is_object(obj) || !id) {
        json_decref(obj);
        failf(x, 400, "invalid_field", field, "must be a dataset id or an object with \"id\"");
        return NULL;
    }
    static const char *const stored[] = {"path", "labels", "format"};
    for (int i = 0; i < 3; i++)
        if (json_object_get(obj, stored[i])) {
            char f[64];
            snprintf(f, sizeof f, "%s.%s", field, stored[i]);
            failf(x, 400, "invalid_field", f, "comes from the stored dataset; name it by \"id\"");
            json_decref(obj);
            return NULL;
        }
    const char *p[2] = {tenant, id};
    PGresult *r = db_exec(c, Q_DS_RESOLVE, 2, p, &x->rc);
    if (x->rc != DB_OK || PQntuples(r) != 1) {
        if (x->rc == DB_OK)
            failf(x, 422, "unprocessable", field, "no dataset %s", id);
        else if (x->o)
            reply_db(x->o, x->rc);
        else
            snprintf(x->err, x->n, "database: %s", db_last_error());
        PQclear(r);
        json_decref(obj);
        return NULL;
    }
    json_t *info = json_loads(PQgetvalue(r, 0, 3), 0, NULL);
    json_t *e = json_deep_copy(obj);
    json_object_del(e, "id");
    json_object_set_new(e, "format", json_string(PQgetvalue(r, 0, 0)));
    const char *shas[2] = {PQgetvalue(r, 0, 1), PQgetisnull(r, 0, 2) ? NULL : PQgetvalue(r, 0, 2)};
    const char *keys[2] = {"path", "labels"};
    bool ok = true;
    for (int i = 0; i < 2 && ok; i++) {
        if (!shas[i])
            continue;
        char path[4200];
        if (fetch) {
            db_rc rc;
            if (blob_fetch(app->db, shas[i], app->cache_dir, path, sizeof path, &rc)) {
                x->rc = rc;
                snprintf(x->err, x->n, "fetching dataset %s (blob %.12s) failed", id, shas[i]);
                ok = false;
            }
        } else {
            snprintf(path, sizeof path, "/nonexistent/%s", shas[i]);
        }
        json_object_set_new(e, keys[i], json_string(path));
    }
    json_t *sh = json_object_get(info, "shape");
    for (int i = 0; i < 3; i++)
        shape[i] = (int)json_integer_value(json_array_get(sh, (size_t)i));
    /* class subsets must name classes the dataset has, with enough examples */
    json_t *cl = json_object_get(obj, "classes"), *counts = json_object_get(info, "counts");
    int nclasses = (int)json_integer_value(json_object_get(info, "classes"));
    json_int_t per = json_integer_value(json_object_get(obj, "per_class"));
    size_t i;
    json_t *v;
    json_array_foreach(json_is_array(cl) ? cl : NULL, i, v)
    {
        if (!json_is_integer(v) || !ok)
            continue;
        json_int_t k = json_integer_value(v);
        char f[64];
        snprintf(f, sizeof f, "%s.classes[%zu]", field, i);
        if (k < 0 || k >= nclasses) {
            failf(x, 422, "unprocessable", f, "class %lld: dataset %s has classes 0..%d", (long long)k, id,
                  nclasses - 1);
            ok = false;
        } else if (per > json_integer_value(json_array_get(counts, (size_t)k))) {
            snprintf(f, sizeof f, "%s.per_class", field);
            failf(x, 422, "unprocessable", f, "class %lld has %lld examples, fewer than per_class %lld", (long long)k,
                  (long long)json_integer_value(json_array_get(counts, (size_t)k)), (long long)per);
            ok = false;
        }
    }
    /* the examples the subset keeps */
    *examples = 0;
    for (int k = 0; k < nclasses; k++) {
        bool kept = !json_is_array(cl);
        json_array_foreach(json_is_array(cl) ? cl : NULL, i, v) kept |= json_integer_value(v) == k;
        json_int_t n = json_integer_value(json_array_get(counts, (size_t)k));
        if (kept)
            *examples += per > 0 && per < n ? per : n;
    }
    double val = json_number_value(json_object_get(obj, "validation"));
    *examples -= (int64_t)(val * (double)*examples + 0.5);
    PQclear(r);
    json_decref(info);
    json_decref(obj);
    if (!ok) {
        json_decref(e);
        return NULL;
    }
    return e;
}

static json_t *backbone_ref(rt_app *app, db_conn *c, const char *tenant, json_t *ref, bool fetch, int *size, ctx *x)
{
    const char *id = json_string_value(ref);
    if (!id) {
        failf(x, ref ? 400 : 400, ref ? "invalid_field" : "missing_field", "backbone", "must be a backbone id");
        return NULL;
    }
    const char *p[2] = {tenant, id};
    PGresult *r = db_exec(c, Q_BB_RESOLVE, 2, p, &x->rc);
    if (x->rc != DB_OK || PQntuples(r) != 1) {
        if (x->rc == DB_OK)
            failf(x, 422, "unprocessable", "backbone", "no backbone %s", id);
        else if (x->o)
            reply_db(x->o, x->rc);
        else
            snprintf(x->err, x->n, "database: %s", db_last_error());
        PQclear(r);
        return NULL;
    }
    if (PQgetisnull(r, 0, 2)) {
        failf(x, 409, "conflict", "backbone", "backbone %s has no weights yet (still training, or its training failed)",
              id);
        PQclear(r);
        return NULL;
    }
    json_t *meta = json_loads(PQgetvalue(r, 0, 1), 0, NULL);
    json_t *e = json_pack("{s:s}", "arch", PQgetvalue(r, 0, 0));
    char path[4200];
    snprintf(path, sizeof path, "/nonexistent/%s", PQgetvalue(r, 0, 2));
    if (fetch && blob_fetch(app->db, PQgetvalue(r, 0, 2), app->cache_dir, path, sizeof path, &x->rc)) {
        snprintf(x->err, x->n, "fetching backbone %s failed", id);
        json_decref(e);
        e = NULL;
    }
    if (e) {
        json_object_set_new(e, "weights", json_string(path));
        static const char *const keys[] = {"mean", "std", "input_size"};
        for (int i = 0; i < 3; i++)
            if (json_object_get(meta, keys[i]) && !json_is_null(json_object_get(meta, keys[i])))
                json_object_set(e, keys[i], json_object_get(meta, keys[i]));
        json_t *is = json_object_get(meta, "input_size");
        *size = json_is_integer(is) ? (int)json_integer_value(is) : default_size(PQgetvalue(r, 0, 0));
    }
    json_decref(meta);
    PQclear(r);
    return e;
}

/* Builds the engine spec from a request (shared by the check and the run). */
static json_t *to_engine(rt_app *app, db_conn *c, const char *tenant, const char *kind, json_t *spec, bool fetch,
                         ctx *x)
{
    static const char *const transfer_keys[] = {"backbone", "dataset", "test", "method", "params", "eval", "seed",
                                                "math", "name", NULL};
    static const char *const backbone_keys[] = {"arch", "dataset", "test", "method", "params", "eval", "seed",
                                                "math", "name", "eps", NULL};
    bool transfer = !strcmp(kind, "transfer");
    const char *const *allowed = transfer ? transfer_keys : backbone_keys;
    const char *key;
    json_t *v;
    json_object_foreach(spec, key, v)
    {
        bool ok = false;
        for (int i = 0; allowed[i]; i++)
            ok |= !strcmp(allowed[i], key);
        if (!ok) {
            failf(x, 400, "invalid_field", key, "unknown field");
            return NULL;
        }
    }
    const char *method = json_string_value(json_object_get(spec, "method"));
    if (!json_object_get(spec, "method")) {
        failf(x, 400, "missing_field", "method", "required");
        return NULL;
    }
    static const char *const tm[] = {"linear", "mlp", "lwf", "retrain_blocks", "adv_finetune", NULL};
    static const char *const bm[] = {"natural", "free_at", NULL};
    bool known = false;
    for (const char *const *m = transfer ? tm : bm; method && *m; m++)
        known |= !strcmp(*m, method);
    if (!known) {
        failf(x, 400, "invalid_field", "method", "must be one of %s",
              transfer ? "linear, mlp, lwf, retrain_blocks, adv_finetune" : "natural, free_at");
        return NULL;
    }
    if (!json_object_get(spec, "dataset")) {
        failf(x, 400, "missing_field", "dataset", "required");
        return NULL;
    }
    if (!json_object_get(spec, "test")) {
        failf(x, 400, "missing_field", "test", "required: the dataset the model is evaluated and attacked on");
        return NULL;
    }
    if (json_object_get(spec, "name") && !json_is_string(json_object_get(spec, "name"))) {
        failf(x, 400, "invalid_field", "name", "must be a string");
        return NULL;
    }
    json_t *e = json_object();
    int size = 0, shape[3], tshape[3];
    if (transfer) {
        if (!json_object_get(spec, "backbone")) {
            failf(x, 400, "missing_field", "backbone", "required");
            json_decref(e);
            return NULL;
        }
        json_t *bb = backbone_ref(app, c, tenant, json_object_get(spec, "backbone"), fetch, &size, x);
        if (!bb) {
            json_decref(e);
            return NULL;
        }
        json_object_set_new(e, "backbone", bb);
    } else {
        json_t *arch = json_object_get(spec, "arch");
        if (!arch) {
            failf(x, 400, "missing_field", "arch", "required");
            json_decref(e);
            return NULL;
        }
        static const char *const archs[] = {"resnet18", "resnet34", "resnet50", "wide_resnet50_2", "resnet20",
                                            "smallcnn", NULL};
        bool known = false;
        for (int i = 0; json_is_string(arch) && archs[i]; i++)
            known |= !strcmp(archs[i], json_string_value(arch));
        if (!known) {
            failf(x, 400, "invalid_field", "arch",
                  "must be one of resnet18, resnet34, resnet50, wide_resnet50_2, resnet20, smallcnn");
            json_decref(e);
            return NULL;
        }
        json_object_set(e, "arch", arch);
        size = default_size(json_string_value(arch));
    }
    int64_t n_train = 0, n_test = 0;
    json_t *ds = dataset_ref(app, c, tenant, json_object_get(spec, "dataset"), "dataset", fetch, shape, &n_train, x);
    json_t *ts =
        ds ? dataset_ref(app, c, tenant, json_object_get(spec, "test"), "test", fetch, tshape, &n_test, x) : NULL;
    if (!ds || !ts) {
        json_decref(ds);
        json_decref(e);
        return NULL;
    }
    json_object_set_new(e, "dataset", ds);
    json_object_set_new(e, "test", ts);
    /* the backbone's input must be reachable from the images by at most 8x resizing */
    int h = shape[1];
    json_t *rs = json_object_get(ds, "resize");
    if (json_is_array(rs))
        h = (int)json_integer_value(json_array_get(rs, 0));
    if (size > 0 && h > 0 && (size > 8 * h || h > 8 * size)) {
        failf(x, 422, "unprocessable", "dataset",
              "the backbone takes %dx%d inputs; images of %dx%d cannot be resized that far (at most 8x)", size, size,
              h, shape[2]);
        json_decref(e);
        return NULL;
    }
    static const char *const copy[] = {"method", "params", "eval", "seed", "math"};
    for (size_t i = 0; i < sizeof copy / sizeof *copy; i++)
        if (json_object_get(spec, copy[i]))
            json_object_set(e, copy[i], json_object_get(spec, copy[i]));
    /* the engine's own parser has the last word on params and eval */
    char *text = json_dumps(e, JSON_COMPACT);
    eng_job *job = NULL;
    char field[160] = "";
    eng_status s = text ? eng_job_parse(text, strlen(text), &job, field, sizeof field) : ENG_ERR_NOMEM;
    free(text);
    eng_job_free(job);
    if (s != ENG_OK) {
        const char *msg = eng_last_error();
        /* the parser's message starts with the field path: keep the reason only */
        size_t fl = strlen(field);
        if (fl && !strncmp(msg, field, fl) && msg[fl] == ':')
            msg += fl + 2;
        bool shape_err = shape_error(msg);
        failf(x, shape_err ? 400 : 422, shape_err ? "invalid_field" : "unprocessable", field[0] ? field : NULL, "%s",
              msg);
        json_decref(e);
        return NULL;
    }
    json_t *bs = json_object_get(json_object_get(spec, "params"), "batch_size");
    json_int_t batch = json_is_integer(bs) ? json_integer_value(bs) : 128;
    if (n_train < batch) {
        failf(x, 422, "unprocessable", "dataset",
              "the training subset has %lld examples, fewer than one batch of %lld (params.batch_size)",
              (long long)n_train, (long long)batch);
        json_decref(e);
        return NULL;
    }
    return e;
}

json_t *spec_check(rt_app *app, db_conn *c, const char *tenant, const char *kind, json_t *body, rt_resp *o)
{
    ctx x = {.o = o};
    json_t *e = to_engine(app, c, tenant, kind, body, false, &x);
    if (!e)
        return NULL;
    json_decref(e);
    json_t *stored = json_deep_copy(body);
    static const char *const refs[] = {"dataset", "test"};
    for (int i = 0; i < 2; i++)
        if (json_is_string(json_object_get(stored, refs[i])))
            json_object_set_new(stored, refs[i], json_pack("{s:O}", "id", json_object_get(stored, refs[i])));
    return stored;
}

json_t *spec_to_engine(rt_app *app, const char *tenant, const char *kind, json_t *spec, char *err, size_t n, db_rc *rc)
{
    ctx x = {.err = err, .n = n};
    db_conn *c = db_get(app->db);
    *rc = DB_OK;
    if (!c) {
        *rc = DB_UNAVAILABLE;
        snprintf(err, n, "database unavailable");
        return NULL;
    }
    json_t *e = to_engine(app, c, tenant, kind, spec, true, &x);
    db_put(app->db, c);
    *rc = x.rc;
    return e;
}
