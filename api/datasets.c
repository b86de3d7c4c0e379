#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api.h"
#include "data.h"
#include "engine.h"

/* The spec's name of a format (engine/job.c's "format" values). */
static const char *format_name(eng_data_format f)
{
    switch (f) {
    case ENG_FMT_IDX_IMAGES: return "idx";
    case ENG_FMT_CIFAR10: return "cifar10";
    case ENG_FMT_CIFAR100: return "cifar100";
    case ENG_FMT_NPY: return "npy";
    case ENG_FMT_NPZ: return "npz";
    case ENG_FMT_TAR: return "tar";
    case ENG_FMT_TAR_GZ: return "tar.gz";
    case ENG_FMT_ZIP: return "zip";
    default: return NULL;
    }
}

static eng_data_format format_parse(const char *s)
{
    static const eng_data_format all[] = {ENG_FMT_IDX_IMAGES, ENG_FMT_CIFAR10, ENG_FMT_CIFAR100, ENG_FMT_NPY,
                                          ENG_FMT_NPZ,        ENG_FMT_TAR,     ENG_FMT_TAR_GZ,   ENG_FMT_ZIP};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        if (!strcmp(s, format_name(all[i])))
            return all[i];
    return ENG_FMT_UNKNOWN;
}

typedef struct {
    rt_req *r;
    rt_part *images, *labels;
    char id[32];
    const char *name, *format;
    char *info;
    PGresult *row;
    db_rc rc;
} create_args;

static db_rc create_tx(db_conn *c, void *user)
{
    create_args *a = user;
    db_rc rc = blob_store(c, a->images->path, a->images->sha, a->images->size);
    if (rc == DB_OK && a->labels)
        rc = blob_store(c, a->labels->path, a->labels->sha, a->labels->size);
    if (rc != DB_OK)
        return rc;
    char size[24];
    snprintf(size, sizeof size, "%lld", (long long)(a->images->size + (a->labels ? a->labels->size : 0)));
    const char *p[8] = {a->id, a->r->tenant_id_s, a->name, a->format, a->images->sha,
                        a->labels ? a->labels->sha : NULL, size, a->info};
    PQclear(a->row);
    a->row = db_exec(c, Q_DS_INSERT, 8, p, &rc);
    return rc;
}

void h_dataset_create(rt_req *r, rt_resp *o)
{
    rt_part *images = NULL, *labels = NULL;
    if (r->body == BODY_FILE) {
        images = req_part(r, "body");
    } else if (r->body == BODY_MULTIPART) {
        images = req_part(r, "images");
        if (!images)
            images = req_part(r, "file");
        labels = req_part(r, "labels");
    }
    if (!images || images->size == 0) {
        reply_error(o, 400, r->body == BODY_MULTIPART ? "missing_field" : "bad_request",
                    r->body == BODY_MULTIPART ? "images" : NULL,
                    "no dataset in the request: send the file as the body, or multipart parts images (and labels)");
        return;
    }
    const char *name = req_field(r, "name");
    if (!name || !*name)
        name = images->filename[0] ? images->filename : "dataset";
    if (strlen(name) > 200) {
        reply_error(o, 400, "invalid_field", "name", "at most 200 characters");
        return;
    }
    const char *fmt_s = req_field(r, "format");
    eng_data_format fmt;
    if (fmt_s && *fmt_s && strcmp(fmt_s, "auto")) {
        fmt = format_parse(fmt_s);
        if (fmt == ENG_FMT_UNKNOWN) {
            reply_error(o, 400, "invalid_field", "format",
                        "must be one of idx, cifar10, cifar100, npy, npz, tar, tar.gz, zip, auto");
            return;
        }
    } else {
        unsigned char head[4096];
        int fd = open(images->path, O_RDONLY);
        ssize_t got = fd >= 0 ? read(fd, head, sizeof head) : -1;
        if (fd >= 0)
            close(fd);
        fmt = eng_dataset_detect(head, got > 0 ? (size_t)got : 0, images->filename[0] ? images->filename : NULL);
        if (fmt == ENG_FMT_IDX_LABELS || fmt == ENG_FMT_UNKNOWN || !format_name(fmt)) {
            reply_error(o, 415, "unsupported_format", "format",
                        "not a dataset format rtaas reads (IDX, CIFAR binary, .npy, .npz, ImageFolder "
                        ".tar/.tar.gz/.zip); name it with format= if it is one");
            return;
        }
    }
    bool two_files = fmt == ENG_FMT_IDX_IMAGES || fmt == ENG_FMT_NPY;
    if (two_files && !labels) {
        reply_error(o, 400, "missing_field", "labels",
                    "%s datasets come as two files: send multipart parts images and labels", format_name(fmt));
        return;
    }
    if (!two_files && labels) {
        reply_error(o, 400, "invalid_field", "labels", "%s datasets hold their labels; send one file",
                    format_name(fmt));
        return;
    }
    eng_data_opts opts = {0};
    const char *cifar = req_field(r, "cifar");
    if (cifar && !strcmp(cifar, "coarse"))
        opts.cifar = ENG_CIFAR_100_COARSE;
    else if (fmt == ENG_FMT_CIFAR100)
        opts.cifar = ENG_CIFAR_100;
    else if (fmt == ENG_FMT_CIFAR10)
        opts.cifar = ENG_CIFAR_10;
    eng_dataset d = {0};
    eng_status s = eng_dataset_read_file(&d, fmt, images->path, labels ? labels->path : NULL, &opts);
    if (s != ENG_OK) {
        reply_error(o, 422, "unprocessable", NULL, "cannot read it as %s: %s", format_name(fmt), eng_last_error());
        return;
    }
    int64_t *counts = calloc((size_t)d.num_classes, sizeof *counts);
    eng_dataset_class_counts(&d, counts);
    json_t *cj = json_array();
    for (int i = 0; i < d.num_classes; i++)
        json_array_append_new(cj, json_integer(counts[i]));
    free(counts);
    json_t *info = json_pack("{s:I,s:i,s:o,s:[i,i,i],s:s}", "n", (json_int_t)d.n, "classes", d.num_classes, "counts",
                             cj, "shape", d.c, d.h, d.w, "pixels", d.type == ENG_PIX_U8 ? "uint8" : "float32");
    if (d.class_names) {
        json_t *names = json_array();
        for (int i = 0; i < d.num_classes; i++)
            json_array_append_new(names, json_string(d.class_names[i] ? d.class_names[i] : ""));
        json_object_set_new(info, "class_names", names);
    }
    eng_dataset_cleanup(&d);
    create_args a = {.r = r, .images = images, .labels = labels, .name = name, .format = format_name(fmt)};
    a.info = json_dumps(info, JSON_COMPACT);
    json_decref(info);
    rt_new_id(a.id, sizeof a.id, "ds_");
    db_rc rc = db_tx(r->app->db, create_tx, &a);
    free(a.info);
    reply_row(o, 201, a.row, rc, "dataset");
}

void h_dataset_list(rt_req *r, rt_resp *o)
{
    const char *p[1] = {r->tenant_id_s};
    db_rc rc;
    PGresult *res = api_query(r, o, Q_DS_LIST, 1, p, &rc);
    if (!res)
        return;
    reply_rows(o, res, rc, "datasets");
}

void h_dataset_get(rt_req *r, rt_resp *o)
{
    const char *p[2] = {r->tenant_id_s, r->params[0]};
    db_rc rc;
    PGresult *res = api_query(r, o, Q_DS_GET, 2, p, &rc);
    if (!res)
        return;
    reply_row(o, 200, res, rc, "dataset");
}

typedef struct {
    rt_req *r;
    rt_sql_id in_use, del;
    int status;
    char job[64];
} delete_args;

static db_rc delete_tx(db_conn *c, void *user)
{
    delete_args *a = user;
    const char *p[2] = {a->r->tenant_id_s, a->r->params[0]};
    db_rc rc;
    PGresult *res = db_exec(c, a->in_use, 2, p, &rc);
    if (rc == DB_OK && PQntuples(res) > 0) {
        snprintf(a->job, sizeof a->job, "%s", PQgetvalue(res, 0, 0));
        a->status = 409;
        PQclear(res);
        return DB_FAILED;
    }
    PQclear(res);
    if (rc != DB_OK)
        return rc;
    res = db_exec(c, a->del, 2, p, &rc);
    a->status = rc == DB_OK ? (PQntuples(res) == 1 ? 204 : 404) : 0;
    if (rc == DB_FOREIGN)
        a->status = 409;
    if (a->status == 204) {
        /* its blobs go too, unless something else refers to them */
        const char *g[2] = {PQgetisnull(res, 0, 1) ? NULL : PQgetvalue(res, 0, 1),
                            PQgetisnull(res, 0, 2) ? NULL : PQgetvalue(res, 0, 2)};
        PQclear(db_exec(c, Q_BLOB_GC, 2, g, &rc));
    }
    PQclear(res);
    return rc;
}

/* Shared by datasets and backbones: 409 while a queued or running job uses it. */
void delete_resource(rt_req *r, rt_resp *o, rt_sql_id in_use, rt_sql_id del, const char *what)
{
    delete_args a = {.r = r, .in_use = in_use, .del = del};
    db_rc rc = db_tx(r->app->db, delete_tx, &a);
    if (a.status == 409)
        reply_error(o, 409, "conflict", NULL, "the %s is in use by %s%s", what, a.job[0] ? "job " : "a job",
                    a.job);
    else if (a.status == 404)
        reply_error(o, 404, "not_found", NULL, "no such %s", what);
    else if (rc != DB_OK)
        reply_db(o, rc);
    else {
        free(o->body);
        o->body = NULL;
        o->len = 0;
        o->status = 204;
    }
}

void h_dataset_delete(rt_req *r, rt_resp *o) { delete_resource(r, o, Q_DS_IN_USE, Q_DS_DELETE, "dataset"); }
