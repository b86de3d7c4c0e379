#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api.h"
#include "engine.h"
#include "ptimport.h"
#include "safetensors.h"
#include "spec.h"
#include "weights.h"

static const char *const archs[] = {"resnet18", "resnet34", "resnet50", "wide_resnet50_2", "resnet20", "smallcnn",
                                    NULL};

/* "0.485,0.456,0.406" or "[0.485, 0.456, 0.406]" -> a JSON array of 1 or 3 numbers. */
static json_t *parse_floats(const char *s, double lo, double hi)
{
    if (!s)
        return NULL;
    json_t *a = json_array();
    const char *p = s + (*s == '[');
    while (*p) {
        char *end;
        double v = strtod(p, &end);
        if (end == p || !(v >= lo && v <= hi))
            break;
        json_array_append_new(a, json_real(v));
        p = end;
        while (*p == ' ')
            p++;
        if (*p == ',')
            p++;
        else
            break;
        while (*p == ' ')
            p++;
    }
    if (*p == ']')
        p++;
    if (*p || (json_array_size(a) != 1 && json_array_size(a) != 3)) {
        json_decref(a);
        return NULL;
    }
    return a;
}

typedef struct {
    rt_req *r;
    rt_part *w;
    char id[32], job[32];
    const char *name, *arch;
    json_t *meta, *train_spec;
    db_rc rc;
} create_args;

static db_rc upload_tx(db_conn *c, void *user)
{
    create_args *a = user;
    db_rc rc = blob_store(c, a->w->path, a->w->sha, a->w->size);
    if (rc != DB_OK)
        return rc;
    char *meta = json_dumps(a->meta, JSON_COMPACT);
    const char *p[7] = {a->id, a->r->tenant_id_s, a->name, a->arch, meta, a->w->sha, NULL};
    PQclear(db_exec(c, Q_BB_INSERT, 7, p, &rc));
    free(meta);
    return rc;
}

static db_rc train_tx(db_conn *c, void *user)
{
    create_args *a = user;
    db_rc rc = job_insert(c, a->r, a->job, "backbone", a->train_spec);
    if (rc != DB_OK)
        return rc;
    char *meta = json_dumps(a->meta, JSON_COMPACT);
    const char *p[7] = {a->id, a->r->tenant_id_s, a->name, a->arch, meta, NULL, a->job};
    PQclear(db_exec(c, Q_BB_INSERT, 7, p, &rc));
    free(meta);
    return rc;
}

static void get_one(rt_req *r, rt_resp *o, const char *id, int status)
{
    const char *p[2] = {r->tenant_id_s, id};
    db_rc rc;
    PGresult *res = api_query(r, o, Q_BB_GET, 2, p, &rc);
    if (!res)
        return;
    reply_row(o, status, res, rc, "backbone");
}

/* A JSON body: train a source backbone (natural or free adversarial training) on a dataset. */
static void train(rt_req *r, rt_resp *o)
{
    json_t *spec = checked_spec(r, o, "backbone");
    if (!spec)
        return;
    json_t *name = json_object_get(spec, "name");
    create_args a = {.r = r, .train_spec = spec};
    a.arch = json_string_value(json_object_get(spec, "arch"));
    a.name = name ? json_string_value(json_object_get(spec, "name")) : a.arch;
    json_t *eps = json_object_get(json_object_get(spec, "params"), "eps");
    const char *method = json_string_value(json_object_get(spec, "method"));
    a.meta = json_pack("{s:s,s:O?}", "trained_by", method, "eps", !strcmp(method, "free_at") ? eps : NULL);
    rt_new_id(a.id, sizeof a.id, "bb_");
    rt_new_id(a.job, sizeof a.job, "job_");
    db_rc rc = db_tx(r->app->db, train_tx, &a);
    json_decref(a.meta);
    json_decref(spec);
    if (rc != DB_OK)
        reply_db(o, rc);
    else
        reply_json(o, 202, json_pack("{s:s,s:s,s:s}", "id", a.id, "status", "training", "job", a.job));
}

/* A PyTorch checkpoint: recognised and converted to a safetensors backbone in a temporary
 * file (engine/ptimport.h). 0 on success; otherwise the reply is made. */
static int import_pt(rt_req *r, rt_resp *o, rt_part *w, json_t *meta, const char **arch, rt_part *out,
                     char **report_json)
{
    eng_pt_import_opts opts = {0};
    json_t *mean = json_object_get(meta, "mean"), *std = json_object_get(meta, "std");
    if (mean && std) {
        if (json_array_size(mean) != json_array_size(std)) {
            reply_error(o, 400, "invalid_field", "std", "mean and std must have as many values");
            return -1;
        }
        opts.n_norm = (int)json_array_size(mean);
        for (int i = 0; i < opts.n_norm; i++) {
            opts.mean[i] = (float)json_number_value(json_array_get(mean, (size_t)i));
            opts.std[i] = (float)json_number_value(json_array_get(std, (size_t)i));
        }
    }
    json_t *is = json_object_get(meta, "input_size");
    opts.input_size = is ? (int)json_integer_value(is) : 0;
    snprintf(out->path, sizeof out->path, "%s/import-XXXXXX", r->app->tmp_dir);
    int fd = mkstemp(out->path);
    if (fd < 0) {
        out->path[0] = 0;
        reply_error(o, 500, "internal", NULL, "cannot create a temporary file");
        return -1;
    }
    close(fd);
    eng_ctx *ctx = NULL;
    eng_pt_report rep;
    eng_pt_report_init(&rep);
    eng_status s = eng_ctx_new(&ctx, NULL);
    if (s == ENG_OK)
        s = eng_pt_import(ctx, w->path, out->path, &opts, &rep);
    eng_ctx_free(ctx);
    char why[400];
    snprintf(why, sizeof why, "%s", eng_last_error());
    *report_json = eng_pt_report_json(&rep);
    if (s == ENG_OK && *arch && strcmp(*arch, rep.arch)) {
        reply_error(o, 422, "unprocessable", "arch", "the checkpoint holds a %s, not a %s", rep.arch, *arch);
        s = ENG_ERR_ARG;
    } else if (s != ENG_OK) {
        reply_error(o, 422, "unprocessable", NULL, "cannot import the PyTorch checkpoint: %s", why);
    } else if (rep.norm == ENG_PT_NORM_MISSING) {
        reply_error(o, 422, "unprocessable", "mean",
                    "the checkpoint stores no input normalisation: give mean and std (torchvision ImageNet models: "
                    "mean=0.485,0.456,0.406&std=0.229,0.224,0.225)");
        s = ENG_ERR_ARG;
    } else {
        for (int i = 0; archs[i]; i++)
            if (!strcmp(archs[i], rep.arch))
                *arch = archs[i];
    }
    eng_pt_report_cleanup(&rep);
    if (s != ENG_OK || !*arch) {
        if (s == ENG_OK)
            reply_error(o, 422, "unprocessable", "arch", "unsupported architecture in the checkpoint");
        unlink(out->path);
        out->path[0] = 0;
        free(*report_json);
        *report_json = NULL;
        return -1;
    }
    if (sha256_file(out->path, out->sha, &out->size)) {
        reply_error(o, 500, "internal", NULL, "cannot read the converted weights");
        unlink(out->path);
        out->path[0] = 0;
        return -1;
    }
    snprintf(out->name, sizeof out->name, "weights");
    snprintf(out->filename, sizeof out->filename, "%s", w->filename);
    return 0;
}

void h_backbone_create(rt_req *r, rt_resp *o)
{
    if (r->body == BODY_MEM) {
        train(r, o);
        return;
    }
    rt_part *w = r->body == BODY_FILE ? req_part(r, "body") : req_part(r, "weights");
    if (!w || w->size == 0) {
        reply_error(o, 400, r->body == BODY_MULTIPART ? "missing_field" : "bad_request", "weights",
                    "no weights in the request: send safetensors as the body, or a multipart part weights");
        return;
    }
    const char *arch = req_field(r, "arch"), *name = req_field(r, "name");
    unsigned char head[16] = {0};
    int fd = open(w->path, O_RDONLY);
    ssize_t got = fd >= 0 ? read(fd, head, sizeof head) : -1;
    if (fd >= 0)
        close(fd);
    /* a PyTorch checkpoint (zip, or the legacy pickle stream): the architecture comes from it */
    bool pt = got >= 4 && ((head[0] == 'P' && head[1] == 'K' && head[2] == 3 && head[3] == 4) ||
                           (head[0] == 0x80 && head[1] >= 2 && head[1] <= 5));
    if (!arch && !pt) {
        reply_error(o, 400, "missing_field", "arch", "required: %s", "resnet18, resnet34, resnet50, ...");
        return;
    }
    bool known = !arch;
    for (int i = 0; arch && archs[i]; i++)
        known |= !strcmp(arch, archs[i]);
    if (!known) {
        reply_error(o, 400, "invalid_field", "arch",
                    "must be one of resnet18, resnet34, resnet50, wide_resnet50_2, resnet20, smallcnn");
        return;
    }
    if (name && strlen(name) > 200) {
        reply_error(o, 400, "invalid_field", "name", "at most 200 characters");
        return;
    }
    json_t *meta = json_object();
    static const char *const ms[] = {"mean", "std"};
    for (int i = 0; i < 2; i++) {
        const char *v = req_field(r, ms[i]);
        if (!v)
            continue;
        json_t *a = parse_floats(v, i == 0 ? -10.0 : 1e-6, 10.0);
        if (!a) {
            json_decref(meta);
            reply_error(o, 400, "invalid_field", ms[i], "must be 1 or 3 numbers, e.g. 0.485,0.456,0.406%s",
                        i ? " (each > 0)" : "");
            return;
        }
        json_object_set_new(meta, ms[i], a);
    }
    const char *is = req_field(r, "input_size"), *eps = req_field(r, "eps");
    if (is) {
        char *end;
        long v = strtol(is, &end, 10);
        if (!*is || *end || v < 8 || v > 4096) {
            json_decref(meta);
            reply_error(o, 400, "invalid_field", "input_size", "must be an integer in [8, 4096]");
            return;
        }
        json_object_set_new(meta, "input_size", json_integer(v));
    }
    if (eps) {
        char *end;
        double v = strtod(eps, &end);
        if (!*eps || *end) {
            json_decref(meta);
            reply_error(o, 400, "invalid_field", "eps", "must be a number (the eps the backbone was trained at)");
            return;
        }
        if (v < 0) {
            json_decref(meta);
            reply_error(o, 422, "unprocessable", "eps", "must be >= 0");
            return;
        }
        json_object_set_new(meta, "eps", json_real(v));
    }
    char *import_report = NULL;
    rt_part converted = {.fd = -1};
    if (pt) {
        if (import_pt(r, o, w, meta, &arch, &converted, &import_report)) {
            json_decref(meta);
            return;
        }
        w = &converted;
        got = 9;
        head[8] = '{';
        memset(head, 1, 8);
    }
    /* the file: safetensors whose tensors fit the architecture */
    unsigned long long hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | head[i];
    if (!pt && (got < 9 || head[8] != '{' || hlen < 2 || hlen > 100000000ull)) {
        json_decref(meta);
        reply_error(o, 415, "unsupported_format", NULL,
                    "neither safetensors (an 8-byte header length, then JSON) nor a PyTorch checkpoint (torch.save)");
        goto done;
    }
    eng_st_file *st = NULL;
    if (eng_st_open(w->path, &st) != ENG_OK) {
        json_decref(meta);
        reply_error(o, 422, "unprocessable", NULL, "damaged safetensors: %s", eng_last_error());
        goto done;
    }
    const eng_st_entry *fc = eng_st_find(st, "fc.weight");
    int classes = fc && fc->ndim == 2 ? (int)fc->dim[0] : 0;
    for (int i = 0; i < 2; i++) /* metadata written by rtaas itself fills what the request left out */
        if (!json_object_get(meta, ms[i]) && eng_st_meta(st, ms[i])) {
            json_t *a = parse_floats(eng_st_meta(st, ms[i]), i == 0 ? -10.0 : 1e-6, 10.0);
            if (a)
                json_object_set_new(meta, ms[i], a);
        }
    eng_st_close(st);
    if (classes < 1) {
        json_decref(meta);
        reply_error(o, 422, "unprocessable", NULL, "no classifier fc.weight [classes, features] in the file");
        goto done;
    }
    json_object_set_new(meta, "classes", json_integer(classes));
    eng_ctx *ctx = NULL;
    eng_model *m = NULL;
    eng_model_spec ms_ = {.arch = arch, .num_classes = classes};
    eng_load_report rep = {0};
    eng_status s = eng_ctx_new(&ctx, NULL);
    if (s == ENG_OK)
        s = eng_model_new(ctx, &ms_, &m);
    if (s == ENG_OK)
        s = eng_model_load_safetensors(m, w->path, true, &rep);
    char why[300];
    snprintf(why, sizeof why, "%s", eng_last_error());
    eng_model_free(m);
    eng_ctx_free(ctx);
    if (s != ENG_OK) {
        json_decref(meta);
        reply_error(o, 422, "unprocessable", "arch", "the weights do not fit %s: %s", arch, why);
        goto done;
    }
    json_object_set_new(meta, "tensors", json_integer(rep.loaded));
    if (!json_object_get(meta, "mean") || !json_object_get(meta, "std")) {
        reply_error(o, 422, "unprocessable", "mean",
                    "the weights carry no input normalisation: give mean and std (torchvision ImageNet models: "
                    "mean=0.485,0.456,0.406&std=0.229,0.224,0.225; identity: mean=0&std=1)");
        json_decref(meta);
        goto done;
    }
    if (import_report)
        json_object_set_new(meta, "import", json_loads(import_report, 0, NULL));
    create_args a = {.r = r, .w = w, .name = name ? name : w->filename[0] ? w->filename : arch, .arch = arch,
                     .meta = meta};
    rt_new_id(a.id, sizeof a.id, "bb_");
    db_rc rc = db_tx(r->app->db, upload_tx, &a);
    json_decref(meta);
    if (rc != DB_OK)
        reply_db(o, rc);
    else
        get_one(r, o, a.id, 201);
done:
    free(import_report);
    if (converted.path[0])
        unlink(converted.path);
}

void h_backbone_list(rt_req *r, rt_resp *o)
{
    const char *p[1] = {r->tenant_id_s};
    db_rc rc;
    PGresult *res = api_query(r, o, Q_BB_LIST, 1, p, &rc);
    if (!res)
        return;
    reply_rows(o, res, rc, "backbones");
}

void h_backbone_get(rt_req *r, rt_resp *o) { get_one(r, o, r->params[0], 200); }

void h_backbone_delete(rt_req *r, rt_resp *o) { delete_resource(r, o, Q_BB_IN_USE, Q_BB_DELETE, "backbone"); }

void h_backbone_weights(rt_req *r, rt_resp *o)
{
    const char *p[2] = {r->tenant_id_s, r->params[0]};
    db_rc rc;
    PGresult *res = api_query(r, o, Q_BB_RESOLVE, 2, p, &rc);
    if (!res)
        return;
    char sha[65] = "";
    if (rc != DB_OK)
        reply_db(o, rc);
    else if (PQntuples(res) != 1)
        reply_error(o, 404, "not_found", NULL, "no such backbone");
    else if (PQgetisnull(res, 0, 2))
        reply_error(o, 409, "conflict", NULL, "the backbone has no weights yet");
    else
        snprintf(sha, sizeof sha, "%s", PQgetvalue(res, 0, 2));
    PQclear(res);
    if (!sha[0])
        return;
    char file[200];
    snprintf(file, sizeof file, "%s.safetensors", r->params[0]);
    reply_blob(r, o, sha, "application/octet-stream", file);
}
