/* Spec parsing (every field checked, errors name the field) and the job pipeline: datasets,
 * models, the method, evaluation, gradient maps, artifacts and the report. */
#include "job.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "data.h"
#include "engine.h"
#include "gradmap.h"
#include "png.h"
#include "safetensors.h"
#include "weights.h"

#define MAX_ATTACKS 8
#define MAX_CLASSES_SPEC 1024

typedef enum { M_LINEAR, M_MLP, M_LWF, M_RETRAIN, M_ADV, M_FREE, M_NATURAL } method_kind;
static const char *const method_names[] = {"linear", "mlp", "lwf", "retrain_blocks", "adv_finetune", "free_at",
                                           "natural"};

typedef struct data_spec {
    bool given;
    eng_data_format format; /* ENG_FMT_UNKNOWN: detect */
    char *path, *labels;
    eng_data_opts opts;
    int32_t classes[MAX_CLASSES_SPEC];
    int n_classes;
    int64_t per_class;
    double validation; /* train set only */
    int64_t limit;     /* at most this many examples (test set) */
} data_spec;

struct eng_job {
    method_kind method;
    uint64_t seed;
    char *device;
    eng_math math; /* ENG_MATH_DEFAULT: the device's own (TF32 on CUDA, FP32 on the CPU) */
    /* the source backbone (transfer methods) or the architecture to train (natural, free_at) */
    char *arch, *weights;
    float mean[ENG_MAX_CHANNELS], std[ENG_MAX_CHANNELS];
    int n_mean;
    int input_size;
    data_spec train, test;
    eng_train_opts topts;
    int crop_pad;
    bool flip;
    eng_head_spec head;
    float lambda_d, warm_start;
    bool l1;
    int blocks;
    eng_attack_spec adv;
    float free_eps;
    int replay;
    int feature_batch;
    /* evaluation */
    eng_attack_spec attacks[MAX_ATTACKS];
    int n_attacks;
    float eval_eps;
    int64_t eval_examples;
    int eval_batch;
    int gradient_maps;
    json_t *spec; /* the spec as given, for the report */
};

/* ---- parsing ---- */

typedef struct parser {
    char path[160]; /* the field being read */
    char *field;
    size_t field_len;
} parser;

static eng_status bad(parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static eng_status bad(parser *p, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (p->field)
        snprintf(p->field, p->field_len, "%s", p->path);
    return eng_fail(ENG_ERR_ARG, "%s%s%s", p->path, p->path[0] ? ": " : "", msg);
}

/* Enters object member `key` (or array element when key is NULL and idx >= 0) for errors. */
static size_t enter(parser *p, const char *key, int idx)
{
    size_t old = strlen(p->path);
    if (key)
        snprintf(p->path + old, sizeof p->path - old, "%s%s", old ? "." : "", key);
    else
        snprintf(p->path + old, sizeof p->path - old, "[%d]", idx);
    return old;
}

static void leave(parser *p, size_t old) { p->path[old] = '\0'; }

/* Refuses members other than the allowed ones: a misspelt field is an error, not a default. */
static eng_status only(parser *p, json_t *obj, const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        bool ok = false;
        for (int i = 0; allowed[i]; i++)
            ok |= strcmp(key, allowed[i]) == 0;
        if (!ok) {
            size_t o = enter(p, key, -1);
            eng_status s = bad(p, "unknown field");
            leave(p, o);
            return s;
        }
    }
    return ENG_OK;
}

static eng_status get_int(parser *p, json_t *obj, const char *key, int64_t lo, int64_t hi, int64_t *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return ENG_OK;
    size_t o = enter(p, key, -1);
    eng_status s = ENG_OK;
    if (!json_is_integer(v))
        s = bad(p, "must be an integer");
    else if (json_integer_value(v) < lo || json_integer_value(v) > hi)
        s = bad(p, "%lld is not in [%lld, %lld]", (long long)json_integer_value(v), (long long)lo, (long long)hi);
    else
        *out = json_integer_value(v);
    leave(p, o);
    return s;
}

static eng_status get_i(parser *p, json_t *obj, const char *key, int lo, int hi, int *out)
{
    int64_t v = *out;
    eng_status s = get_int(p, obj, key, lo, hi, &v);
    *out = (int)v;
    return s;
}

static eng_status get_num(parser *p, json_t *obj, const char *key, double lo, double hi, float *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return ENG_OK;
    size_t o = enter(p, key, -1);
    eng_status s = ENG_OK;
    if (!json_is_number(v))
        s = bad(p, "must be a number");
    else if (!(json_number_value(v) >= lo && json_number_value(v) <= hi))
        s = bad(p, "%g is not in [%g, %g]", json_number_value(v), lo, hi);
    else
        *out = (float)json_number_value(v);
    leave(p, o);
    return s;
}

static eng_status get_bool(parser *p, json_t *obj, const char *key, bool *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return ENG_OK;
    size_t o = enter(p, key, -1);
    eng_status s = ENG_OK;
    if (!json_is_boolean(v))
        s = bad(p, "must be true or false");
    else
        *out = json_is_true(v);
    leave(p, o);
    return s;
}

static eng_status get_str(parser *p, json_t *obj, const char *key, char **out)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return ENG_OK;
    size_t o = enter(p, key, -1);
    eng_status s = ENG_OK;
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 4096)
        s = bad(p, "must be a non-empty string");
    else if (!(*out = strdup(json_string_value(v))))
        s = eng_fail(ENG_ERR_NOMEM, "spec: out of memory");
    leave(p, o);
    return s;
}

/* An eps: "8/255", "0.0314" or a number, in pixel units [0, 1]. */
static eng_status get_eps(parser *p, json_t *obj, const char *key, float *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return ENG_OK;
    size_t o = enter(p, key, -1);
    eng_status s = ENG_OK;
    if (json_is_number(v)) {
        double d = json_number_value(v);
        if (!(d >= 0 && d <= 1))
            s = bad(p, "%g is outside [0, 1]: eps is in pixel units (8/255, not 8)", d);
        else
            *out = (float)d;
    } else if (json_is_string(v)) {
        if (eng_parse_eps(json_string_value(v), out) != ENG_OK)
            s = bad(p, "%s", eng_last_error());
    } else {
        s = bad(p, "must be a number or a fraction string such as \"8/255\"");
    }
    leave(p, o);
    return s;
}

static eng_status get_floats(parser *p, json_t *obj, const char *key, float *out, int max, int *n, double lo,
                             double hi)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return ENG_OK;
    size_t o = enter(p, key, -1);
    eng_status s = ENG_OK;
    if (!json_is_array(v) || json_array_size(v) < 1 || (int)json_array_size(v) > max) {
        s = bad(p, "must be an array of 1 to %d numbers", max);
    } else {
        for (size_t i = 0; i < json_array_size(v) && s == ENG_OK; i++) {
            json_t *e = json_array_get(v, i);
            if (!json_is_number(e) || !(json_number_value(e) >= lo && json_number_value(e) <= hi)) {
                size_t o2 = enter(p, NULL, (int)i);
                s = bad(p, "must be a number in [%g, %g]", lo, hi);
                leave(p, o2);
            } else {
                out[i] = (float)json_number_value(e);
            }
        }
        *n = (int)json_array_size(v);
    }
    leave(p, o);
    return s;
}

static eng_status parse_data(parser *p, json_t *obj, data_spec *d, bool train)
{
    static const char *const allowed[] = {"format", "path", "labels", "layout", "resize", "channels", "classes",
                                          "per_class", "validation", "limit", "cifar", "images_key",
                                          "labels_key", NULL};
    eng_status s;
    if (!json_is_object(obj))
        return bad(p, "must be an object");
    if ((s = only(p, obj, allowed)) != ENG_OK)
        return s;
    d->given = true;
    if ((s = get_str(p, obj, "path", &d->path)) != ENG_OK || (s = get_str(p, obj, "labels", &d->labels)) != ENG_OK)
        return s;
    if (!d->path) {
        size_t o = enter(p, "path", -1);
        s = bad(p, "is required");
        leave(p, o);
        return s;
    }
    char *fmt = NULL;
    if ((s = get_str(p, obj, "format", &fmt)) != ENG_OK)
        return s;
    if (fmt && strcmp(fmt, "auto") != 0) {
        static const struct {
            const char *name;
            eng_data_format f;
        } fmts[] = {{"idx", ENG_FMT_IDX_IMAGES}, {"cifar10", ENG_FMT_CIFAR10}, {"cifar100", ENG_FMT_CIFAR100},
                    {"npy", ENG_FMT_NPY},        {"npz", ENG_FMT_NPZ},         {"tar", ENG_FMT_TAR},
                    {"tar.gz", ENG_FMT_TAR_GZ},  {"zip", ENG_FMT_ZIP}};
        bool found = false;
        for (size_t i = 0; i < sizeof fmts / sizeof *fmts; i++)
            if (strcmp(fmt, fmts[i].name) == 0) {
                d->format = fmts[i].f;
                found = true;
            }
        if (!found) {
            size_t o = enter(p, "format", -1);
            s = bad(p, "'%s' is not one of idx, cifar10, cifar100, npy, npz, tar, tar.gz, zip, auto", fmt);
            leave(p, o);
        }
    }
    free(fmt);
    if (s != ENG_OK)
        return s;
    char *layout = NULL;
    if ((s = get_str(p, obj, "layout", &layout)) != ENG_OK)
        return s;
    if (layout) {
        if (strcmp(layout, "nhwc") == 0)
            d->opts.layout = ENG_NPY_NHWC;
        else if (strcmp(layout, "nchw") == 0)
            d->opts.layout = ENG_NPY_NCHW;
        else {
            size_t o = enter(p, "layout", -1);
            s = bad(p, "must be \"nhwc\" or \"nchw\"");
            leave(p, o);
        }
        free(layout);
        if (s != ENG_OK)
            return s;
    }
    json_t *rs = json_object_get(obj, "resize");
    if (rs) {
        size_t o = enter(p, "resize", -1);
        if (!json_is_array(rs) || json_array_size(rs) != 2 || !json_is_integer(json_array_get(rs, 0)) ||
            !json_is_integer(json_array_get(rs, 1)) || json_integer_value(json_array_get(rs, 0)) < 1 ||
            json_integer_value(json_array_get(rs, 1)) < 1 || json_integer_value(json_array_get(rs, 0)) > 4096 ||
            json_integer_value(json_array_get(rs, 1)) > 4096)
            s = bad(p, "must be [height, width] with sides in [1, 4096]");
        else {
            d->opts.resize_h = (int)json_integer_value(json_array_get(rs, 0));
            d->opts.resize_w = (int)json_integer_value(json_array_get(rs, 1));
        }
        leave(p, o);
        if (s != ENG_OK)
            return s;
    }
    if ((s = get_i(p, obj, "channels", 1, 3, &d->opts.channels)) != ENG_OK)
        return s;
    if (d->opts.channels == 2) {
        size_t o = enter(p, "channels", -1);
        s = bad(p, "must be 1 or 3");
        leave(p, o);
        return s;
    }
    char *cifar = NULL;
    if ((s = get_str(p, obj, "cifar", &cifar)) != ENG_OK)
        return s;
    if (cifar) {
        if (strcmp(cifar, "fine") == 0)
            d->opts.cifar = ENG_CIFAR_100;
        else if (strcmp(cifar, "coarse") == 0)
            d->opts.cifar = ENG_CIFAR_100_COARSE;
        else {
            size_t o = enter(p, "cifar", -1);
            s = bad(p, "must be \"fine\" or \"coarse\" (CIFAR-100 labels)");
            leave(p, o);
        }
        free(cifar);
        if (s != ENG_OK)
            return s;
    }
    char *ik = NULL, *lk = NULL;
    if ((s = get_str(p, obj, "images_key", &ik)) != ENG_OK || (s = get_str(p, obj, "labels_key", &lk)) != ENG_OK) {
        free(ik);
        return s;
    }
    d->opts.images_key = ik;
    d->opts.labels_key = lk;
    json_t *cl = json_object_get(obj, "classes");
    if (cl) {
        size_t o = enter(p, "classes", -1);
        if (!json_is_array(cl) || json_array_size(cl) < 2 || json_array_size(cl) > MAX_CLASSES_SPEC)
            s = bad(p, "must list at least 2 classes (a classifier of one class is not one)");
        for (size_t i = 0; s == ENG_OK && i < json_array_size(cl); i++) {
            json_t *e = json_array_get(cl, i);
            if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) >= ENG_DATA_MAX_CLASSES) {
                size_t o2 = enter(p, NULL, (int)i);
                s = bad(p, "must be a class index >= 0");
                leave(p, o2);
            } else {
                d->classes[i] = (int32_t)json_integer_value(e);
                for (size_t j = 0; j < i; j++)
                    if (d->classes[j] == d->classes[i])
                        s = bad(p, "class %d is listed twice", d->classes[i]);
            }
        }
        d->n_classes = (int)json_array_size(cl);
        leave(p, o);
        if (s != ENG_OK)
            return s;
    }
    if ((s = get_int(p, obj, "per_class", 0, (int64_t)1 << 31, &d->per_class)) != ENG_OK ||
        (s = get_int(p, obj, "limit", 0, (int64_t)1 << 31, &d->limit)) != ENG_OK)
        return s;
    float val = 0;
    if ((s = get_num(p, obj, "validation", 0, 0.9, &val)) != ENG_OK)
        return s;
    d->validation = val;
    if (!train && d->validation > 0) {
        size_t o = enter(p, "validation", -1);
        s = bad(p, "applies to the training dataset only");
        leave(p, o);
    }
    return s;
}

static eng_status parse_attack(parser *p, json_t *obj, eng_attack_spec *a, float default_eps, uint64_t seed)
{
    static const char *const allowed[] = {"kind", "steps", "eps", "alpha", "random_start", "restarts", "best",
                                          "kappa", NULL};
    eng_status s;
    if (!json_is_object(obj))
        return bad(p, "must be an object");
    if ((s = only(p, obj, allowed)) != ENG_OK)
        return s;
    char *kind = NULL;
    if ((s = get_str(p, obj, "kind", &kind)) != ENG_OK)
        return s;
    eng_attack_kind k = ENG_ATTACK_PGD;
    if (!kind || eng_attack_parse_kind(kind, &k) != ENG_OK) {
        size_t o = enter(p, "kind", -1);
        s = bad(p, "must be one of fgsm, pgd, cw, apgd-ce, apgd-dlr");
        leave(p, o);
        free(kind);
        return s;
    }
    free(kind);
    int steps = k == ENG_ATTACK_FGSM ? 1 : k >= ENG_ATTACK_APGD_CE ? 100 : 20;
    float eps = default_eps;
    if ((s = get_i(p, obj, "steps", 1, 100000, &steps)) != ENG_OK || (s = get_eps(p, obj, "eps", &eps)) != ENG_OK)
        return s;
    eng_attack_defaults(a, k, eps, steps);
    a->seed = seed;
    if ((s = get_eps(p, obj, "alpha", &a->alpha)) != ENG_OK ||
        (s = get_bool(p, obj, "random_start", &a->random_start)) != ENG_OK ||
        (s = get_i(p, obj, "restarts", 1, 1000, &a->restarts)) != ENG_OK ||
        (s = get_bool(p, obj, "best", &a->best)) != ENG_OK ||
        (s = get_num(p, obj, "kappa", 0, 1e6, &a->kappa)) != ENG_OK)
        return s;
    return ENG_OK;
}

static void data_free(data_spec *d)
{
    free(d->path);
    free(d->labels);
    free((char *)d->opts.images_key);
    free((char *)d->opts.labels_key);
}

void eng_job_free(eng_job *job)
{
    if (!job)
        return;
    free(job->device);
    free(job->arch);
    free(job->weights);
    data_free(&job->train);
    data_free(&job->test);
    json_decref(job->spec);
    free(job);
}

const char *eng_job_method(const eng_job *job) { return method_names[job->method]; }

static eng_status parse_params(parser *p, json_t *obj, eng_job *j)
{
    static const char *const allowed[] = {"epochs", "batch_size", "lr", "lr_schedule", "momentum", "weight_decay",
                                          "nesterov", "augment", "hidden", "bn", "dropout", "lambda_d",
                                          "distance", "warm_start", "blocks", "attack", "eps", "replay",
                                          "checkpoint_seconds", "feature_batch", NULL};
    eng_status s;
    if (!json_is_object(obj))
        return bad(p, "must be an object");
    if ((s = only(p, obj, allowed)) != ENG_OK)
        return s;
    eng_train_opts *o = &j->topts;
    float ckpt = (float)o->checkpoint_seconds;
    if ((s = get_i(p, obj, "epochs", 1, 100000, &o->epochs)) != ENG_OK ||
        (s = get_i(p, obj, "batch_size", 2, 65536, &o->batch_size)) != ENG_OK ||
        (s = get_num(p, obj, "lr", 0, 100, &o->lr)) != ENG_OK ||
        (s = get_num(p, obj, "momentum", 0, 0.999, &o->momentum)) != ENG_OK ||
        (s = get_num(p, obj, "weight_decay", 0, 1, &o->weight_decay)) != ENG_OK ||
        (s = get_bool(p, obj, "nesterov", &o->nesterov)) != ENG_OK ||
        (s = get_num(p, obj, "checkpoint_seconds", 1, 86400, &ckpt)) != ENG_OK ||
        (s = get_i(p, obj, "feature_batch", 1, 65536, &j->feature_batch)) != ENG_OK)
        return s;
    o->checkpoint_seconds = ckpt;
    if (o->nesterov && o->momentum <= 0) {
        size_t old = enter(p, "nesterov", -1);
        s = bad(p, "needs momentum > 0");
        leave(p, old);
        return s;
    }
    json_t *sch = json_object_get(obj, "lr_schedule");
    if (sch) {
        size_t old = enter(p, "lr_schedule", -1);
        if (!json_is_array(sch) || json_array_size(sch) > 8)
            s = bad(p, "must be an array of at most 8 [epoch, lr] pairs");
        for (size_t i = 0; s == ENG_OK && i < json_array_size(sch); i++) {
            json_t *e = json_array_get(sch, i);
            size_t o2 = enter(p, NULL, (int)i);
            if (!json_is_array(e) || json_array_size(e) != 2 || !json_is_integer(json_array_get(e, 0)) ||
                !json_is_number(json_array_get(e, 1)) || json_integer_value(json_array_get(e, 0)) < 0 ||
                json_integer_value(json_array_get(e, 0)) > 100000 || !(json_number_value(json_array_get(e, 1)) >= 0))
                s = bad(p, "must be [epoch, lr] with epoch >= 0 and lr >= 0");
            else if (i > 0 && json_integer_value(json_array_get(e, 0)) <= o->step_epoch[i - 1])
                s = bad(p, "epochs must increase");
            else {
                o->step_epoch[i] = (int)json_integer_value(json_array_get(e, 0));
                o->step_lr[i] = (float)json_number_value(json_array_get(e, 1));
            }
            leave(p, o2);
        }
        o->n_steps = (int)json_array_size(sch);
        leave(p, old);
        if (s != ENG_OK)
            return s;
    }
    json_t *aug = json_object_get(obj, "augment");
    if (aug) {
        static const char *const aallowed[] = {"crop", "flip", NULL};
        size_t old = enter(p, "augment", -1);
        if (json_is_false(aug)) {
            j->crop_pad = 0;
            j->flip = false;
        } else if (!json_is_object(aug)) {
            s = bad(p, "must be false or an object {\"crop\": padding, \"flip\": true}");
        } else if ((s = only(p, aug, aallowed)) == ENG_OK && (s = get_i(p, aug, "crop", 0, 64, &j->crop_pad)) == ENG_OK) {
            s = get_bool(p, aug, "flip", &j->flip);
        }
        leave(p, old);
        if (s != ENG_OK)
            return s;
    }
    int n = 0;
    float hidden[ENG_MAX_HIDDEN];
    if ((s = get_floats(p, obj, "hidden", hidden, ENG_MAX_HIDDEN, &n, 1, 65536)) != ENG_OK)
        return s;
    for (int i = 0; i < n; i++) {
        if (hidden[i] != floorf(hidden[i])) {
            size_t old = enter(p, "hidden", -1);
            s = bad(p, "layer widths must be integers");
            leave(p, old);
            return s;
        }
        j->head.hidden[i] = (int)hidden[i];
    }
    if (json_object_get(obj, "hidden"))
        j->head.n_hidden = n;
    if ((s = get_bool(p, obj, "bn", &j->head.bn)) != ENG_OK ||
        (s = get_num(p, obj, "dropout", 0, 0.95, &j->head.dropout)) != ENG_OK ||
        (s = get_num(p, obj, "lambda_d", 0, 1e6, &j->lambda_d)) != ENG_OK ||
        (s = get_num(p, obj, "warm_start", 0, 1, &j->warm_start)) != ENG_OK ||
        (s = get_i(p, obj, "blocks", 1, 256, &j->blocks)) != ENG_OK ||
        (s = get_eps(p, obj, "eps", &j->free_eps)) != ENG_OK ||
        (s = get_i(p, obj, "replay", 1, 64, &j->replay)) != ENG_OK)
        return s;
    char *dist = NULL;
    if ((s = get_str(p, obj, "distance", &dist)) != ENG_OK)
        return s;
    if (dist) {
        if (strcmp(dist, "l2") && strcmp(dist, "l1")) {
            size_t old = enter(p, "distance", -1);
            s = bad(p, "must be \"l2\" (the paper's text) or \"l1\" (the authors' code)");
            leave(p, old);
        }
        j->l1 = strcmp(dist, "l1") == 0;
        free(dist);
        if (s != ENG_OK)
            return s;
    }
    json_t *atk = json_object_get(obj, "attack");
    if (atk) {
        size_t old = enter(p, "attack", -1);
        s = parse_attack(p, atk, &j->adv, j->adv.eps, eng_hash64(j->seed, 0xad));
        leave(p, old);
    }
    return s;
}

/* "math": fp32, tf32 or bf16 (a CUDA device's math mode; the CPU computes in FP32 whatever is asked). */
static eng_status parse_math(parser *p, json_t *root, eng_math *out)
{
    char *m = NULL;
    eng_status s = get_str(p, root, "math", &m);
    *out = ENG_MATH_DEFAULT;
    for (eng_math i = ENG_MATH_FP32; s == ENG_OK && m && i <= ENG_MATH_BF16; i++)
        if (strcmp(m, eng_math_name(i)) == 0)
            *out = i;
    if (s == ENG_OK && m && *out == ENG_MATH_DEFAULT) {
        size_t o = enter(p, "math", -1);
        s = bad(p, "must be one of fp32, tf32, bf16");
        leave(p, o);
    }
    free(m);
    return s;
}

eng_status eng_job_parse(const char *text, size_t len, eng_job **out, char *field, size_t field_len)
{
    static const char *const allowed[] = {"method", "seed", "device", "math", "backbone", "arch", "dataset", "test",
                                          "params", "eval", NULL};
    static const char *const bb_allowed[] = {"arch", "weights", "mean", "std", "input_size", NULL};
    static const char *const ev_allowed[] = {"attacks", "eps", "examples", "batch_size", "gradient_maps", NULL};
    parser P = {.field = field, .field_len = field_len}, *p = &P;
    *out = NULL;
    if (field && field_len)
        field[0] = '\0';
    json_error_t err;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        return eng_fail(ENG_ERR_FORMAT, "spec: not JSON: %s (line %d, column %d)", err.text, err.line, err.column);
    eng_status s = ENG_OK;
    eng_job *j = calloc(1, sizeof *j);
    if (!j) {
        json_decref(root);
        return eng_fail(ENG_ERR_NOMEM, "spec: out of memory");
    }
    j->spec = root;
    if (!json_is_object(root)) {
        s = bad(p, "the spec must be a JSON object");
        goto out;
    }
    if ((s = only(p, root, allowed)) != ENG_OK)
        goto out;
    char *method = NULL;
    if ((s = get_str(p, root, "method", &method)) != ENG_OK)
        goto out;
    bool found = false;
    for (int i = 0; method && i < (int)(sizeof method_names / sizeof *method_names); i++)
        if (strcmp(method, method_names[i]) == 0) {
            j->method = (method_kind)i;
            found = true;
        }
    free(method);
    if (!found) {
        size_t o = enter(p, "method", -1);
        s = bad(p, "must be one of linear, mlp, lwf, retrain_blocks, adv_finetune, free_at, natural");
        leave(p, o);
        goto out;
    }
    int64_t seed = 0;
    if ((s = get_int(p, root, "seed", 0, INT64_MAX, &seed)) != ENG_OK ||
        (s = get_str(p, root, "device", &j->device)) != ENG_OK)
        goto out;
    j->seed = (uint64_t)seed;
    if ((s = parse_math(p, root, &j->math)) != ENG_OK)
        goto out;
    /* defaults: the paper's appendix A where it gives them */
    eng_train_defaults(&j->topts);
    j->topts.seed = j->seed;
    j->topts.epochs = j->method == M_LINEAR || j->method == M_MLP ? 50 : 10;
    if (j->method == M_LINEAR || j->method == M_MLP) { /* A.2: 50 epochs, 0.01, 0.001 from epoch 30 */
        j->topts.n_steps = 1;
        j->topts.step_epoch[0] = 30;
        j->topts.step_lr[0] = 0.001f;
    }
    if (j->method == M_NATURAL || j->method == M_FREE)
        j->topts.lr = 0.1f;
    j->crop_pad = 0;
    j->flip = false;
    j->head.dropout = j->method == M_MLP ? 0.25f : 0.0f;
    j->head.bn = j->method == M_MLP;
    if (j->method == M_MLP) {
        j->head.n_hidden = 1;
        j->head.hidden[0] = 2048;
    }
    j->lambda_d = 0.01f;
    j->warm_start = 0.5f;
    j->blocks = 1;
    j->free_eps = 8.0f / 255;
    j->replay = 4;
    j->feature_batch = 128;
    eng_attack_defaults(&j->adv, ENG_ATTACK_PGD, 5.0f / 255, 3);
    j->adv.alpha = 3.0f / 255; /* A.2: PGD-3, step 3, eps 5 */
    j->adv.seed = eng_hash64(j->seed, 0xad);
    j->eval_eps = 8.0f / 255;
    j->eval_examples = 1000;
    j->eval_batch = 100;
    j->gradient_maps = 16;
    json_t *bb = json_object_get(root, "backbone");
    bool transfer = j->method != M_NATURAL && j->method != M_FREE;
    if (bb) {
        size_t o = enter(p, "backbone", -1);
        if (!json_is_object(bb))
            s = bad(p, "must be an object");
        else if ((s = only(p, bb, bb_allowed)) == ENG_OK && (s = get_str(p, bb, "arch", &j->arch)) == ENG_OK &&
                 (s = get_str(p, bb, "weights", &j->weights)) == ENG_OK &&
                 (s = get_floats(p, bb, "mean", j->mean, ENG_MAX_CHANNELS, &j->n_mean, -10, 10)) == ENG_OK) {
            int ns = 0;
            s = get_floats(p, bb, "std", j->std, ENG_MAX_CHANNELS, &ns, 1e-6, 100);
            if (s == ENG_OK && ns != j->n_mean)
                s = bad(p, "mean and std must have the same length");
            if (s == ENG_OK)
                s = get_i(p, bb, "input_size", 1, 4096, &j->input_size);
        }
        leave(p, o);
        if (s != ENG_OK)
            goto out;
    } else if (transfer) {
        snprintf(p->path, sizeof p->path, "backbone");
        s = bad(p, "is required for %s (the source model)", method_names[j->method]);
        goto out;
    }
    if (transfer && !j->weights) {
        snprintf(p->path, sizeof p->path, "backbone.weights");
        s = bad(p, "is required: the source model's safetensors file");
        goto out;
    }
    if (!transfer) {
        char *arch = NULL;
        if ((s = get_str(p, root, "arch", &arch)) != ENG_OK)
            goto out;
        if (arch) {
            free(j->arch);
            j->arch = arch;
        }
    }
    if (!j->arch) {
        snprintf(p->path, sizeof p->path, transfer ? "backbone.arch" : "arch");
        s = bad(p, "is required (resnet18, resnet34, resnet50, wide_resnet50_2, resnet20, smallcnn)");
        goto out;
    }
    json_t *ds = json_object_get(root, "dataset");
    if (!ds) {
        snprintf(p->path, sizeof p->path, "dataset");
        s = bad(p, "is required");
        goto out;
    }
    size_t o = enter(p, "dataset", -1);
    s = parse_data(p, ds, &j->train, true);
    leave(p, o);
    if (s != ENG_OK)
        goto out;
    json_t *ts = json_object_get(root, "test");
    if (ts) {
        o = enter(p, "test", -1);
        s = parse_data(p, ts, &j->test, false);
        leave(p, o);
        if (s != ENG_OK)
            goto out;
    }
    json_t *pa = json_object_get(root, "params");
    if (pa) {
        o = enter(p, "params", -1);
        s = parse_params(p, pa, j);
        leave(p, o);
        if (s != ENG_OK)
            goto out;
    }
    j->topts.augment = j->crop_pad > 0 || j->flip;
    if (j->method == M_LWF && j->topts.augment) {
        snprintf(p->path, sizeof p->path, "params.augment");
        s = bad(p, "must be off for lwf: the source features are of un-augmented images (appendix B)");
        goto out;
    }
    if ((j->method == M_LINEAR || j->method == M_MLP) && j->topts.augment) {
        snprintf(p->path, sizeof p->path, "params.augment");
        s = bad(p, "must be off for %s: the head trains on features cached once", method_names[j->method]);
        goto out;
    }
    if (j->method == M_LINEAR && j->head.n_hidden > 0) {
        snprintf(p->path, sizeof p->path, "params.hidden");
        s = bad(p, "linear trains a single layer; use the mlp method for hidden layers");
        goto out;
    }
    json_t *ev = json_object_get(root, "eval");
    if (ev) {
        o = enter(p, "eval", -1);
        if (!json_is_object(ev))
            s = bad(p, "must be an object");
        else if ((s = only(p, ev, ev_allowed)) == ENG_OK && (s = get_eps(p, ev, "eps", &j->eval_eps)) == ENG_OK &&
                 (s = get_int(p, ev, "examples", 1, (int64_t)1 << 31, &j->eval_examples)) == ENG_OK &&
                 (s = get_i(p, ev, "batch_size", 1, 65536, &j->eval_batch)) == ENG_OK)
            s = get_i(p, ev, "gradient_maps", 0, 256, &j->gradient_maps);
        json_t *al = s == ENG_OK ? json_object_get(ev, "attacks") : NULL;
        if (al) {
            size_t o2 = enter(p, "attacks", -1);
            if (!json_is_array(al) || json_array_size(al) > MAX_ATTACKS)
                s = bad(p, "must be an array of at most %d attacks", MAX_ATTACKS);
            for (size_t i = 0; s == ENG_OK && i < json_array_size(al); i++) {
                size_t o3 = enter(p, NULL, (int)i);
                s = parse_attack(p, json_array_get(al, i), &j->attacks[i], j->eval_eps,
                                 eng_hash64(j->seed, 0xe0 + i));
                leave(p, o3);
            }
            j->n_attacks = (int)json_array_size(al);
            leave(p, o2);
        }
        leave(p, o);
        if (s != ENG_OK)
            goto out;
        if (!al)
            goto default_attacks;
    } else {
    default_attacks:
        /* the paper's evaluation: PGD-20 and CW-20 */
        eng_attack_defaults(&j->attacks[0], ENG_ATTACK_PGD, j->eval_eps, 20);
        eng_attack_defaults(&j->attacks[1], ENG_ATTACK_CW, j->eval_eps, 20);
        j->attacks[0].seed = eng_hash64(j->seed, 0xe0);
        j->attacks[1].seed = eng_hash64(j->seed, 0xe1);
        j->n_attacks = 2;
    }
out:
    if (s != ENG_OK) {
        eng_job_free(j);
        return s;
    }
    *out = j;
    return ENG_OK;
}

/* ---- running ---- */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* A dataset as a training source, converted to the model's input (size, channels) and
 * augmented (crop with padding, flip) when the loop asks. */
typedef struct ds_source {
    const eng_dataset *d;
    eng_batch_opts base;
    int crop_pad;
    bool flip;
} ds_source;

static eng_status ds_batch(void *user, const int64_t *idx, int count, uint64_t aug_seed, eng_tensor *x,
                           int32_t *labels)
{
    const ds_source *s = user;
    eng_batch_opts bo = s->base;
    if (aug_seed) {
        bo.crop_pad = s->crop_pad;
        bo.flip = s->flip;
        bo.seed = aug_seed;
    }
    const int64_t per = x->dim[1] * x->dim[2] * x->dim[3];
    int32_t idx32[256];
    for (int start = 0; start < count; start += 256) {
        int n = count - start < 256 ? count - start : 256;
        for (int i = 0; i < n; i++)
            idx32[i] = (int32_t)idx[start + i];
        eng_tensor v;
        int64_t d[4] = {n, x->dim[1], x->dim[2], x->dim[3]};
        eng_tensor_view(&v, x->data + start * per, 4, d, ENG_LAYOUT_NCHW, ENG_DEV_CPU);
        eng_status st = eng_dataset_batch_ex(s->d, idx32, n, &bo, &v, labels ? labels + start : NULL);
        if (st != ENG_OK)
            return st;
    }
    return ENG_OK;
}

static void ds_source_init(eng_source *src, ds_source *s, const eng_dataset *d, int c, int h, int w, int crop,
                           bool flip, int num_classes)
{
    memset(s, 0, sizeof *s);
    s->d = d;
    s->base.c = c;
    s->base.h = h;
    s->base.w = w;
    s->crop_pad = crop;
    s->flip = flip;
    memset(src, 0, sizeof *src);
    src->n = d->n;
    src->num_classes = num_classes;
    src->c = c;
    src->h = h;
    src->w = w;
    src->user = s;
    src->batch = ds_batch;
}

static eng_status load_data(const data_spec *ds, const char *what, eng_dataset *out)
{
    memset(out, 0, sizeof *out);
    eng_data_format f = ds->format;
    if (f == ENG_FMT_UNKNOWN) {
        unsigned char head[4096];
        FILE *fp = fopen(ds->path, "rb");
        if (!fp)
            return eng_fail(ENG_ERR_NOT_FOUND, "%s.path: cannot open %s: %s", what, ds->path, strerror(errno));
        size_t n = fread(head, 1, sizeof head, fp);
        fclose(fp);
        f = eng_dataset_detect(head, n, ds->path);
        if (f == ENG_FMT_UNKNOWN)
            return eng_fail(ENG_ERR_FORMAT, "%s.path: %s is in no format rtaas reads (give \"format\")", what,
                            ds->path);
    }
    if ((f == ENG_FMT_IDX_IMAGES || (f == ENG_FMT_NPY && ds->labels == NULL)) && !ds->labels)
        return eng_fail(ENG_ERR_ARG, "%s.labels: %s needs a labels file", what, eng_data_format_name(f));
    eng_dataset raw;
    eng_status s = eng_dataset_read_file(&raw, f, ds->path, ds->labels, &ds->opts);
    if (s != ENG_OK)
        return s;
    if (ds->n_classes == 0 && ds->per_class == 0) {
        *out = raw;
        return ENG_OK;
    }
    eng_subset sub = {ds->n_classes ? ds->classes : NULL, ds->n_classes, ds->per_class, 0, 0};
    s = eng_dataset_subset(out, &raw, &sub);
    eng_dataset_cleanup(&raw);
    return s;
}

/* Per-channel mean and std of (up to 20,000) examples at the model's channel count. */
static eng_status data_stats(const eng_dataset *d, int c, float *mean, float *std)
{
    const int64_t n = d->n < 20000 ? d->n : 20000, per = (int64_t)d->h * d->w;
    double sum[ENG_MAX_CHANNELS] = {0}, sq[ENG_MAX_CHANNELS] = {0};
    eng_tensor x = ENG_TENSOR_INIT;
    int64_t dims[4] = {256, c, d->h, d->w};
    eng_status s = eng_tensor_alloc_host(&x, 4, dims, ENG_LAYOUT_NCHW);
    int32_t idx[256];
    eng_batch_opts bo = {.c = c};
    for (int64_t start = 0; s == ENG_OK && start < n; start += 256) {
        int cnt = n - start < 256 ? (int)(n - start) : 256;
        for (int i = 0; i < cnt; i++)
            idx[i] = (int32_t)(start + i);
        eng_tensor v;
        int64_t vd[4] = {cnt, c, d->h, d->w};
        eng_tensor_view(&v, x.data, 4, vd, ENG_LAYOUT_NCHW, ENG_DEV_CPU);
        if ((s = eng_dataset_batch_ex(d, idx, cnt, &bo, &v, NULL)) != ENG_OK)
            break;
        for (int i = 0; i < cnt; i++)
            for (int ch = 0; ch < c; ch++) {
                const float *q = x.data + ((int64_t)i * c + ch) * per;
                for (int64_t k = 0; k < per; k++) {
                    sum[ch] += q[k];
                    sq[ch] += (double)q[k] * q[k];
                }
            }
    }
    eng_tensor_cleanup(&x);
    for (int ch = 0; s == ENG_OK && ch < c; ch++) {
        double cnt = (double)n * per, m = sum[ch] / cnt, var = sq[ch] / cnt - m * m;
        mean[ch] = (float)m;
        std[ch] = (float)(var > 1e-12 ? sqrt(var) : 1.0);
    }
    return s;
}

/* Copies every parameter of dst not under the skip prefixes from the same name in src. */
static eng_status copy_params(eng_model *dst, eng_model *src, const char *const *skip)
{
    for (int i = 0; i < eng_model_num_params(dst); i++) {
        eng_param *p = eng_model_param(dst, i);
        bool skipped = false;
        for (int k = 0; skip && skip[k]; k++)
            skipped |= strncmp(p->name, skip[k], strlen(skip[k])) == 0;
        if (skipped)
            continue;
        eng_param *q = eng_model_find(src, p->name);
        if (!q || !eng_tensor_same_shape(&q->value, &p->value))
            return eng_fail(ENG_ERR_SHAPE, "backbone: %s is missing from the source model or has another shape",
                            p->name);
        eng_ctx *ctx = eng_model_ctx(dst);
        eng_status s;
        if (p->value.dev == ENG_DEV_CPU && q->value.dev == ENG_DEV_CPU) {
            memcpy(p->value.data, q->value.data, (size_t)eng_tensor_numel(&p->value) * sizeof(float));
        } else if ((s = eng_copy(ctx, &p->value, &q->value)) != ENG_OK) {
            return s;
        }
    }
    eng_model_touch(dst);
    return ENG_OK;
}

static const char *const skip_head[] = {"fc.", "head.", NULL};

/* The metadata of a model file: architecture, classes, normalisation, head. */
static eng_status save_model(eng_model *m, const char *path, const eng_job *j, int input_size, const char *role)
{
    const eng_model_spec *sp = eng_model_get_spec(m);
    char classes[16], inch[16], size[16], mean[96] = "", std[96] = "", hidden[96] = "", seed[32], drop[32];
    snprintf(classes, sizeof classes, "%d", sp->num_classes);
    snprintf(inch, sizeof inch, "%d", sp->in_channels);
    snprintf(size, sizeof size, "%d", input_size);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)j->seed);
    snprintf(drop, sizeof drop, "%g", sp->head.dropout);
    for (int i = 0; strcmp(sp->arch, "head") && i < sp->in_channels; i++) {
        size_t a = strlen(mean), b = strlen(std);
        snprintf(mean + a, sizeof mean - a, "%s%.9g", i ? "," : "", sp->mean[i]);
        snprintf(std + b, sizeof std - b, "%s%.9g", i ? "," : "", sp->std[i]);
    }
    for (int i = 0; i < sp->head.n_hidden; i++) {
        size_t a = strlen(hidden);
        snprintf(hidden + a, sizeof hidden - a, "%s%d", i ? "," : "", sp->head.hidden[i]);
    }
    const char *keys[] = {"arch", "num_classes", "in_channels", "input_size", "mean", "std", "head_hidden",
                          "head_bn", "head_dropout", "method", "seed", "role", "rtaas_version"};
    const char *vals[] = {sp->arch, classes, inch, size, mean, std, hidden, sp->head.bn ? "1" : "0", drop,
                          method_names[j->method], seed, role, RTAAS_VERSION};
    return eng_model_save_safetensors(m, path, keys, vals, 13);
}

/* Reads the source model: its classes from "fc.weight", channels from "conv1.weight", the
 * normalisation from the file's metadata unless the spec gives it. */
static eng_status load_source(eng_ctx *ctx, eng_job *j, eng_model **out, eng_load_report *rep)
{
    *out = NULL;
    eng_st_file *f = NULL;
    eng_status s = eng_st_open(j->weights, &f);
    if (s != ENG_OK)
        return eng_fail(s, "backbone.weights: %s", eng_last_error());
    eng_model_spec sp = {.arch = j->arch};
    const eng_st_entry *fc = eng_st_find(f, "fc.weight"), *c1 = eng_st_find(f, "conv1.weight");
    sp.num_classes = fc && fc->ndim == 2 ? (int)fc->dim[0] : 1000;
    sp.in_channels = c1 && c1->ndim == 4 ? (int)c1->dim[1] : 0;
    const char *hh = eng_st_meta(f, "head_hidden");
    if (hh && *hh) {
        for (const char *q = hh; *q && sp.head.n_hidden < ENG_MAX_HIDDEN;) {
            sp.head.hidden[sp.head.n_hidden++] = atoi(q);
            q = strchr(q, ',');
            if (!q)
                break;
            q++;
        }
        const char *hb = eng_st_meta(f, "head_bn"), *hd = eng_st_meta(f, "head_dropout");
        sp.head.bn = hb && strcmp(hb, "1") == 0;
        sp.head.dropout = hd ? (float)atof(hd) : 0;
    }
    /* An imported checkpoint that stored no normaliser (rtaas import): guessing one is the
     * classic way robust evaluations go wrong, so the spec must say. */
    const char *norm = eng_st_meta(f, "normalization");
    if (j->n_mean == 0 && norm && strcmp(norm, "missing") == 0) {
        eng_st_close(f);
        return eng_fail(ENG_ERR_ARG, "backbone: %s was imported without input normalisation; give backbone.mean and "
                        "backbone.std (torchvision ImageNet: [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])",
                        j->weights);
    }
    if (j->n_mean == 0) {
        const char *m = eng_st_meta(f, "mean"), *sd = eng_st_meta(f, "std");
        for (int i = 0; m && sd && *m && i < ENG_MAX_CHANNELS; i++) {
            j->mean[i] = (float)strtod(m, (char **)&m);
            j->std[i] = (float)strtod(sd, (char **)&sd);
            j->n_mean = i + 1;
            if (*m != ',' || *sd != ',')
                break;
            m++, sd++;
        }
    }
    if (!j->input_size) {
        const char *is = eng_st_meta(f, "input_size");
        j->input_size = is ? atoi(is) : 0;
    }
    eng_st_close(f);
    for (int i = 0; i < j->n_mean; i++) {
        sp.mean[i] = j->mean[i];
        sp.std[i] = j->std[i];
    }
    eng_model *m = NULL;
    if ((s = eng_model_new(ctx, &sp, &m)) != ENG_OK)
        return eng_fail(s, "backbone: %s", eng_last_error());
    if ((s = eng_model_load_safetensors(m, j->weights, false, rep)) != ENG_OK) {
        eng_model_free(m);
        return eng_fail(s, "backbone.weights: %s", eng_last_error());
    }
    if (rep->missing > 0) {
        eng_model_free(m);
        return eng_fail(ENG_ERR_ARG, "backbone.weights: %d parameters of %s are missing (first: %s)", rep->missing,
                        j->arch, rep->first_missing);
    }
    *out = m;
    return ENG_OK;
}

typedef struct run_state {
    eng_job *j;
    const eng_job_hooks *h;
    eng_ctx *ctx;
    eng_dataset train_all, train, val, test;
    const eng_dataset *eval_set;
    const char *eval_on;
    int K, c, size;
    eng_model *src, *model, *head;
    float *feats;
    int64_t F;
    eng_train_log log;
    eng_eval *ev;
    double t_load, t_features, t_train, t_eval, t_grad;
    eng_load_report rep;
    json_t *artifacts;
    const char *stage;  /* what runs now, for the out-of-memory retry: "features", "train", ... */
    json_t *oom_retries; /* one object per retry at a smaller batch */
    char path[4096];
} run_state;

static const char *out_path(run_state *r, const char *name)
{
    snprintf(r->path, sizeof r->path, "%s/%s", r->h->out_dir, name);
    return r->path;
}

static void add_artifact(run_state *r, const char *name, const char *kind)
{
    struct stat st;
    json_int_t bytes = stat(out_path(r, name), &st) == 0 ? (json_int_t)st.st_size : -1;
    json_array_append_new(r->artifacts, json_pack("{s:s, s:s, s:I}", "name", name, "kind", kind, "bytes", bytes));
}

static eng_status prepare_data(run_state *r)
{
    eng_job *j = r->j;
    eng_status s;
    if ((s = load_data(&j->train, "dataset", &r->train_all)) != ENG_OK)
        return s;
    if (j->train.validation > 0) {
        int32_t *tr = NULL, *va = NULL;
        int64_t ntr = 0, nva = 0;
        if ((s = eng_dataset_split(&r->train_all, j->train.validation, eng_hash64(j->seed, 0x5a1), &tr, &ntr, &va,
                                   &nva)) != ENG_OK)
            return s;
        s = eng_dataset_take(&r->train, &r->train_all, tr, ntr);
        if (s == ENG_OK)
            s = eng_dataset_take(&r->val, &r->train_all, va, nva);
        free(tr);
        free(va);
        if (s != ENG_OK)
            return s;
        eng_dataset_cleanup(&r->train_all);
    } else {
        r->train = r->train_all;
        memset(&r->train_all, 0, sizeof r->train_all);
    }
    if (j->test.given && (s = load_data(&j->test, "test", &r->test)) != ENG_OK)
        return s;
    r->K = r->train.num_classes;
    if (r->test.n && r->test.num_classes > r->K)
        return eng_fail(ENG_ERR_ARG, "test: labels reach %d but the training data has %d classes",
                        r->test.num_classes - 1, r->K);
    r->eval_set = r->test.n ? &r->test : r->val.n ? &r->val : &r->train;
    r->eval_on = r->test.n ? "test" : r->val.n ? "validation" : "train";
    return ENG_OK;
}

static bool cancelled(run_state *r) { return r->h->cancelled && r->h->cancelled(r->h->user); }

static void progress(run_state *r, const char *phase, int64_t done, int64_t total)
{
    if (r->h->progress)
        r->h->progress(r->h->user, phase, done, total);
}

static eng_status build_target(run_state *r, int in_channels, const eng_head_spec *head, eng_model **out)
{
    eng_model_spec sp = {.arch = r->j->arch, .num_classes = r->K, .in_channels = in_channels};
    for (int i = 0; i < r->j->n_mean; i++) {
        sp.mean[i] = r->j->mean[i];
        sp.std[i] = r->j->std[i];
    }
    if (head)
        sp.head = *head;
    eng_status s = eng_model_new(r->ctx, &sp, out);
    if (s == ENG_OK)
        s = eng_model_init(*out, eng_hash64(r->j->seed, 0x1417));
    return s;
}

static eng_status run_method(run_state *r)
{
    eng_job *j = r->j;
    eng_status s = ENG_OK;
    r->stage = "model";
    eng_train_opts o = j->topts;
    o.progress = r->h->progress;
    o.cancelled = r->h->cancelled;
    o.user = r->h->user;
    char ckpt[4096];
    snprintf(ckpt, sizeof ckpt, "%s/checkpoint.safetensors", r->h->out_dir);
    o.checkpoint = ckpt;
    const bool transfer = j->method != M_NATURAL && j->method != M_FREE;
    int in_c = 0;
    if (transfer) {
        if ((s = load_source(r->ctx, j, &r->src, &r->rep)) != ENG_OK)
            return s;
        in_c = eng_model_get_spec(r->src)->in_channels;
    }
    /* the model's input: its architecture's size unless the backbone says otherwise */
    eng_model *probe = NULL;
    if (!transfer) {
        eng_model_spec ps = {.arch = j->arch, .num_classes = r->K};
        if ((s = eng_model_new(r->ctx, &ps, &probe)) != ENG_OK)
            return s;
        in_c = eng_model_get_spec(probe)->in_channels;
        if (!j->input_size)
            j->input_size = eng_model_default_size(probe);
        eng_model_free(probe);
        if (j->n_mean == 0) { /* train from scratch: normalise by the data's own statistics */
            if ((s = data_stats(&r->train, in_c, j->mean, j->std)) != ENG_OK)
                return s;
            j->n_mean = in_c;
        }
    } else if (!j->input_size) {
        j->input_size = eng_model_default_size(r->src);
    }
    r->c = in_c;
    r->size = j->input_size;
    eng_source src;
    ds_source dss;
    ds_source_init(&src, &dss, &r->train, in_c, r->size, r->size, j->crop_pad, j->flip, r->K);
    double t0 = now_s();
    switch (j->method) {
    case M_NATURAL:
    case M_FREE:
        if ((s = build_target(r, in_c, NULL, &r->model)) != ENG_OK)
            return s;
        t0 = now_s();
        r->stage = "train";
        s = j->method == M_NATURAL ? eng_train_natural(r->model, &src, &o, &r->log)
                                   : eng_train_free_at(r->model, &src, &o, j->free_eps, j->replay, &r->log);
        break;
    case M_LINEAR:
    case M_MLP: {
        eng_head_spec hs = j->method == M_MLP ? j->head : (eng_head_spec){0};
        r->stage = "features";
        if ((s = eng_extract_features(r->src, &src, j->feature_batch, r->h->progress, r->h->user, &r->feats,
                                      &r->F)) != ENG_OK)
            return s;
        r->t_features = now_s() - t0;
        r->stage = "model";
        eng_model_spec hsp = {.arch = "head", .num_classes = r->K, .in_channels = (int)r->F, .head = hs};
        if ((s = eng_model_new(r->ctx, &hsp, &r->head)) != ENG_OK ||
            (s = eng_model_init(r->head, eng_hash64(j->seed, 0x4ead))) != ENG_OK)
            return s;
        eng_source fs;
        eng_feature_data fd;
        eng_feature_source(&fs, &fd, r->feats, r->train.labels, r->train.n, r->F, r->K);
        t0 = now_s();
        r->stage = "train";
        if ((s = eng_train_natural(r->head, &fs, &o, &r->log)) != ENG_OK)
            return s;
        r->stage = "model";
        /* backbone + the trained head in one model, for the attacks */
        if ((s = build_target(r, in_c, &hs, &r->model)) != ENG_OK || (s = copy_params(r->model, r->src, skip_head)) != ENG_OK)
            return s;
        for (int i = 0; i < eng_model_num_params(r->head); i++) {
            eng_param *hp = eng_model_param(r->head, i), *mp = eng_model_find(r->model, hp->name);
            if (!mp || !eng_tensor_same_shape(&hp->value, &mp->value))
                return eng_fail(ENG_ERR_SHAPE, "head: %s does not fit the model", hp->name);
            if ((s = eng_copy(r->ctx, &mp->value, &hp->value)) != ENG_OK)
                return s;
        }
        eng_model_touch(r->model);
        break;
    }
    case M_LWF:
        r->stage = "features";
        if ((s = eng_extract_features(r->src, &src, j->feature_batch, r->h->progress, r->h->user, &r->feats,
                                      &r->F)) != ENG_OK)
            return s;
        r->t_features = now_s() - t0;
        r->stage = "model";
        if ((s = build_target(r, in_c, NULL, &r->model)) != ENG_OK || (s = copy_params(r->model, r->src, skip_head)) != ENG_OK)
            return s;
        t0 = now_s();
        r->stage = "train";
        s = eng_train_lwf(r->model, &src, r->feats, &o, j->lambda_d, j->l1, j->warm_start, &r->log);
        break;
    case M_RETRAIN:
    case M_ADV:
        if ((s = build_target(r, in_c, NULL, &r->model)) != ENG_OK || (s = copy_params(r->model, r->src, skip_head)) != ENG_OK)
            return s;
        if (j->method == M_RETRAIN && (s = eng_prepare_retrain_blocks(r->model, j->blocks, j->seed)) != ENG_OK)
            return eng_fail(s, "params.blocks: %s", eng_last_error());
        t0 = now_s();
        r->stage = "train";
        s = j->method == M_RETRAIN ? eng_train_natural(r->model, &src, &o, &r->log)
                                   : eng_train_adversarial(r->model, &src, &o, &j->adv, &r->log);
        break;
    }
    r->t_train = now_s() - t0;
    return s;
}

static eng_status run_eval(run_state *r)
{
    eng_job *j = r->j;
    const eng_dataset *d = r->eval_set;
    int64_t n = d->n < j->eval_examples ? d->n : j->eval_examples;
    if (j->test.limit > 0 && n > j->test.limit)
        n = j->test.limit;
    r->stage = "eval";
    if (j->eval_batch > n && n > 0)
        j->eval_batch = (int)n; /* a batch larger than the examples would only halve in vain */
    eng_eval_free(r->ev); /* a retry at a smaller batch starts the counts again */
    r->ev = NULL;
    eng_status s = eng_eval_new(&r->ev, r->K, j->attacks, j->n_attacks);
    if (s != ENG_OK)
        return s;
    for (int i = 0; i < r->ev->n_attacks; i++) /* a stop need not wait for a batch's attacks */
        r->ev->attacks[i].cancelled = r->h->cancelled, r->ev->attacks[i].cancel_user = r->h->user;
    eng_source src;
    ds_source dss;
    ds_source_init(&src, &dss, d, r->c, r->size, r->size, 0, false, r->K);
    const int B = j->eval_batch;
    eng_tensor hx = ENG_TENSOR_INIT, x = ENG_TENSOR_INIT;
    int64_t *idx = malloc((size_t)B * sizeof(int64_t));
    int32_t *labels = malloc((size_t)B * sizeof(int32_t));
    double t0 = now_s();
    if (!idx || !labels)
        s = eng_fail(ENG_ERR_NOMEM, "eval: out of memory");
    for (int64_t start = 0; s == ENG_OK && start < n; start += B) {
        if (cancelled(r)) {
            s = eng_fail(ENG_ERR_CANCELLED, "eval: cancelled");
            break;
        }
        int cnt = n - start < B ? (int)(n - start) : B;
        int64_t dims[4] = {cnt, r->c, r->size, r->size};
        if (hx.dim[0] != cnt) {
            eng_tensor_cleanup(&hx);
            eng_ctx_tensor_free(r->ctx, &x);
            if ((s = eng_tensor_alloc_host(&hx, 4, dims, ENG_LAYOUT_NCHW)) != ENG_OK ||
                (s = eng_ctx_tensor_alloc(r->ctx, &x, 4, dims, ENG_LAYOUT_NCHW)) != ENG_OK)
                break;
        }
        for (int i = 0; i < cnt; i++)
            idx[i] = start + i;
        if ((s = src.batch(src.user, idx, cnt, 0, &hx, labels)) != ENG_OK || (s = eng_ctx_upload(r->ctx, &x, &hx)) != ENG_OK ||
            (s = eng_eval_batch(r->ev, r->model, &x, labels)) != ENG_OK)
            break;
        progress(r, "eval", start + cnt, n);
    }
    r->t_eval = now_s() - t0;
    eng_tensor_cleanup(&hx);
    eng_ctx_tensor_free(r->ctx, &x);
    free(idx);
    free(labels);
    return s;
}

/* Input, gradient and adversarial example (the first attack) of the first examples. */
static eng_status run_gradients(run_state *r)
{
    eng_job *j = r->j;
    const eng_dataset *d = r->eval_set;
    const int G = (int)(d->n < j->gradient_maps ? d->n : j->gradient_maps);
    if (G < 1)
        return ENG_OK;
    r->stage = "gradients";
    double t0 = now_s();
    eng_source src;
    ds_source dss;
    ds_source_init(&src, &dss, d, r->c, r->size, r->size, 0, false, r->K);
    int64_t dims[4] = {G, r->c, r->size, r->size};
    eng_tensor hx = ENG_TENSOR_INIT, x = ENG_TENSOR_INIT, g = ENG_TENSOR_INIT, xa = ENG_TENSOR_INIT,
               hg = ENG_TENSOR_INIT, ha = ENG_TENSOR_INIT;
    int64_t idx[256];
    int32_t labels[256];
    uint8_t *png = NULL;
    size_t len = 0;
    eng_status s;
    for (int i = 0; i < G; i++)
        idx[i] = i;
    if ((s = eng_tensor_alloc_host(&hx, 4, dims, ENG_LAYOUT_NCHW)) != ENG_OK ||
        (s = eng_tensor_alloc_host(&hg, 4, dims, ENG_LAYOUT_NCHW)) != ENG_OK ||
        (s = eng_tensor_alloc_host(&ha, 4, dims, ENG_LAYOUT_NCHW)) != ENG_OK ||
        (s = eng_ctx_tensor_alloc(r->ctx, &x, 4, dims, ENG_LAYOUT_NCHW)) != ENG_OK ||
        (s = eng_ctx_tensor_alloc(r->ctx, &g, 4, dims, ENG_LAYOUT_NCHW)) != ENG_OK ||
        (s = eng_ctx_tensor_alloc(r->ctx, &xa, 4, dims, ENG_LAYOUT_NCHW)) != ENG_OK)
        goto out;
    if ((s = src.batch(src.user, idx, G, 0, &hx, labels)) != ENG_OK || (s = eng_ctx_upload(r->ctx, &x, &hx)) != ENG_OK ||
        (s = eng_input_gradient(r->model, &x, labels, &g)) != ENG_OK || (s = eng_ctx_download(r->ctx, &hg, &g)) != ENG_OK)
        goto out;
    eng_attack_spec a;
    if (j->n_attacks > 0)
        a = j->attacks[0];
    else {
        eng_attack_defaults(&a, ENG_ATTACK_PGD, j->eval_eps, 20);
        a.seed = j->seed;
    }
    a.cancelled = r->h->cancelled, a.cancel_user = r->h->user;
    if ((s = eng_attack_run(r->model, &a, &x, labels, &xa, NULL, NULL)) != ENG_OK ||
        (s = eng_ctx_download(r->ctx, &ha, &xa)) != ENG_OK)
        goto out;
    const int scale = r->size >= 96 ? 1 : r->size >= 48 ? 2 : 4;
    const int64_t per = (int64_t)r->c * r->size * r->size;
    char name[64];
    if (mkdir(out_path(r, "gradients"), 0755) != 0 && errno != EEXIST) {
        s = eng_fail(ENG_ERR_IO, "gradients: cannot create %s: %s", r->path, strerror(errno));
        goto out;
    }
    for (int i = 0; i < G; i++) {
        if ((s = eng_gradmap_triplet_png(hx.data + i * per, hg.data + i * per, ha.data + i * per, r->c, r->size,
                                         r->size, scale, &png, &len)) != ENG_OK)
            goto out;
        snprintf(name, sizeof name, "gradients/%04d.png", i);
        FILE *fp = fopen(out_path(r, name), "wb");
        bool ok = fp && fwrite(png, 1, len, fp) == len;
        if (fp && fclose(fp) != 0)
            ok = false;
        free(png);
        png = NULL;
        if (!ok) {
            s = eng_fail(ENG_ERR_IO, "gradients: cannot write %s", r->path);
            goto out;
        }
        add_artifact(r, name, "gradient");
    }
    if ((s = eng_gradmap_grid_png(hx.data, hg.data, ha.data, G, r->c, r->size, r->size, 4, scale, &png, &len)) !=
        ENG_OK)
        goto out;
    {
        FILE *fp = fopen(out_path(r, "gradients.png"), "wb");
        bool ok = fp && fwrite(png, 1, len, fp) == len;
        if (fp && fclose(fp) != 0)
            ok = false;
        if (!ok)
            s = eng_fail(ENG_ERR_IO, "gradients: cannot write %s", r->path);
        else
            add_artifact(r, "gradients.png", "gradient-grid");
    }
out:
    free(png);
    r->t_grad = now_s() - t0;
    eng_tensor_cleanup(&hx), eng_tensor_cleanup(&hg), eng_tensor_cleanup(&ha);
    eng_ctx_tensor_free(r->ctx, &x), eng_ctx_tensor_free(r->ctx, &g), eng_ctx_tensor_free(r->ctx, &xa);
    return s;
}

static json_t *counts_json(const eng_eval_counts *c, const eng_eval *ev, bool clean)
{
    json_t *pc = json_array();
    for (int k = 0; k < ev->num_classes; k++)
        json_array_append_new(pc, ev->total_per_class[k] ? json_real((double)c->per_class[k] / ev->total_per_class[k])
                                                          : json_null());
    double acc = ev->total ? (double)c->correct / (double)ev->total : 0;
    json_t *o = json_pack("{s:f, s:I, s:o, s:f}", clean ? "accuracy" : "robust_accuracy", acc, "correct",
                          (json_int_t)c->correct, "per_class", pc, "seconds", c->seconds);
    if (c->attacked)
        json_object_set_new(o, "mean_loss", json_real(c->loss_sum / (double)c->attacked));
    return o;
}

static char *report_text(run_state *r)
{
    eng_job *j = r->j;
    json_t *rep = json_object();
    json_object_set_new(rep, "rtaas_version", json_string(RTAAS_VERSION));
    json_object_set_new(rep, "method", json_string(method_names[j->method]));
    json_object_set_new(rep, "seed", json_integer((json_int_t)j->seed));
    json_object_set_new(rep, "spec", json_deep_copy(j->spec));
    json_object_set_new(rep, "backend", json_pack("{s:s, s:i, s:s}", "name", eng_ctx_backend_name(r->ctx), "threads",
                                                  eng_ctx_threads(r->ctx), "math", eng_math_name(eng_ctx_math(r->ctx))));
    json_t *mean = json_array(), *std = json_array();
    for (int i = 0; i < j->n_mean; i++) {
        json_array_append_new(mean, json_real(j->mean[i]));
        json_array_append_new(std, json_real(j->std[i]));
    }
    json_object_set_new(rep, "model", json_pack("{s:s, s:i, s:i, s:i, s:o, s:o}", "arch", j->arch, "num_classes", r->K,
                                                "in_channels", r->c, "input_size", r->size, "mean", mean, "std", std));
    json_object_set_new(rep, "data", json_pack("{s:I, s:I, s:I, s:i, s:[i,i,i], s:s}", "train", (json_int_t)r->train.n,
                                               "validation", (json_int_t)r->val.n, "test", (json_int_t)r->test.n,
                                               "classes", r->K, "stored_shape", r->train.c, r->train.h, r->train.w,
                                               "evaluated_on", r->eval_on));
    if (r->src)
        json_object_set_new(rep, "backbone", json_pack("{s:s, s:i, s:i, s:s}", "weights", j->weights, "tensors_loaded",
                                                       r->rep.loaded, "tensors_ignored", r->rep.ignored,
                                                       "first_ignored", r->rep.first_ignored));
    json_t *epochs = json_array();
    for (int i = 0; i < r->log.n; i++) {
        const eng_epoch_log *e = &r->log.epochs[i];
        json_array_append_new(epochs, json_pack("{s:i, s:f, s:f, s:f, s:f}", "epoch", e->epoch, "loss", e->loss,
                                                "accuracy", e->accuracy, "lr", e->lr, "seconds", e->seconds));
    }
    json_object_set_new(rep, "training", json_pack("{s:o, s:I, s:f, s:b}", "epochs", epochs, "steps",
                                                   (json_int_t)r->log.steps, "seconds", r->log.seconds, "resumed",
                                                   r->log.resumed));
    if (r->ev) {
        json_t *attacks = json_array();
        for (int a = 0; a < r->ev->n_attacks; a++) {
            const eng_attack_spec *sp = &r->ev->attacks[a];
            char name[48];
            snprintf(name, sizeof name, "%s-%d", eng_attack_name(sp->kind), sp->steps);
            json_t *c = counts_json(&r->ev->attack[a], r->ev, false);
            json_object_set_new(c, "name", json_string(name));
            json_object_set_new(c, "kind", json_string(eng_attack_name(sp->kind)));
            json_object_set_new(c, "eps", json_real(sp->eps));
            json_object_set_new(c, "steps", json_integer(sp->steps));
            json_object_set_new(c, "alpha", json_real(sp->alpha));
            json_object_set_new(c, "restarts", json_integer(sp->restarts));
            json_object_set_new(c, "random_start", json_boolean(sp->random_start));
            if (sp->kind == ENG_ATTACK_CW)
                json_object_set_new(c, "kappa", json_real(sp->kappa));
            json_array_append_new(attacks, c);
        }
        json_t *ev = json_pack("{s:I, s:s, s:o, s:o}", "examples", (json_int_t)r->ev->total, "on", r->eval_on, "clean",
                               counts_json(&r->ev->clean, r->ev, true), "attacks", attacks);
        if (r->ev->n_attacks > 0)
            json_object_set_new(ev, "worst_case", counts_json(&r->ev->worst, r->ev, false));
        json_object_set_new(rep, "evaluation", ev);
    }
    json_object_set_new(rep, "timings", json_pack("{s:f, s:f, s:f, s:f, s:f}", "load", r->t_load, "features",
                                                  r->t_features, "train", r->t_train, "eval", r->t_eval, "gradients",
                                                  r->t_grad));
    json_object_set(rep, "artifacts", r->artifacts);
    /* the batches the job ran at, which differ from the spec's after an out-of-memory retry */
    json_object_set_new(rep, "batches", json_pack("{s:i, s:i, s:i, s:i}", "batch_size", j->topts.batch_size,
                                                  "feature_batch", j->feature_batch, "eval_batch", j->eval_batch,
                                                  "gradient_maps", j->gradient_maps));
    json_object_set(rep, "oom_retries", r->oom_retries);
    char *text = json_dumps(rep, JSON_INDENT(2) | JSON_REAL_PRECISION(10));
    json_decref(rep);
    return text;
}

/* The batch that sets the memory a stage needs, and the least it may become. */
typedef struct batch_knob {
    int *value;
    int floor;
    const char *field; /* as the spec names it */
} batch_knob;

static batch_knob stage_knob(run_state *r)
{
    eng_job *j = r->j;
    const char *st = r->stage ? r->stage : "";
    if (!strcmp(st, "features"))
        return (batch_knob){&j->feature_batch, 1, "params.feature_batch"};
    if (!strcmp(st, "train"))
        return (batch_knob){&j->topts.batch_size, 2, "params.batch_size"}; /* batch norm needs two */
    if (!strcmp(st, "eval"))
        return (batch_knob){&j->eval_batch, 1, "eval.batch_size"};
    if (!strcmp(st, "gradients"))
        return (batch_knob){&j->gradient_maps, 1, "eval.gradient_maps"};
    return (batch_knob){0}; /* weights and datasets: a smaller batch would not help */
}

/* Frees what run_method built, so that it can run again from the start. */
static void reset_method(run_state *r)
{
    eng_model_free(r->src), eng_model_free(r->model), eng_model_free(r->head);
    r->src = r->model = r->head = NULL;
    free(r->feats);
    r->feats = NULL;
    r->F = 0;
    eng_train_log_cleanup(&r->log);
    memset(&r->rep, 0, sizeof r->rep);
}

/* Runs a phase; when it runs out of memory (a device too small for the batch asked), runs it
 * again at half the batch of the stage that failed, down to that batch's floor. Each retry is
 * recorded for the report. Training starts again from its first epoch: its checkpoint, if it
 * wrote one, belongs to the larger batch. */
static eng_status run_halving(run_state *r, eng_status (*phase)(run_state *))
{
    for (;;) {
        eng_status s = phase(r);
        batch_knob k = stage_knob(r);
        if (s != ENG_ERR_NOMEM || !k.value || *k.value / 2 < k.floor)
            return s;
        const int from = *k.value;
        *k.value = from / 2;
        json_array_append_new(r->oom_retries, json_pack("{s:s, s:s, s:i, s:i, s:s}", "stage", r->stage, "field",
                                                        k.field, "from", from, "to", *k.value, "error",
                                                        eng_last_error()));
        if (phase == run_method) {
            if (!strcmp(r->stage, "train"))
                unlink(out_path(r, "checkpoint.safetensors"));
            reset_method(r);
        }
    }
}

eng_status eng_job_run(eng_job *j, const eng_job_hooks *h, char **report)
{
    if (report)
        *report = NULL;
    if (!j || !h || !h->out_dir)
        return eng_fail(ENG_ERR_ARG, "job: need a job and an output folder");
    if (mkdir(h->out_dir, 0755) != 0 && errno != EEXIST)
        return eng_fail(ENG_ERR_IO, "job: cannot create %s: %s", h->out_dir, strerror(errno));
    run_state r;
    memset(&r, 0, sizeof r);
    r.j = j;
    r.h = h;
    r.artifacts = json_array();
    r.oom_retries = json_array();
    eng_ctx_opts co = {.device = h->device ? h->device : j->device, .math = j->math};
    eng_status s = eng_ctx_new(&r.ctx, &co);
    if (s != ENG_OK)
        goto out;
    double t0 = now_s();
    progress(&r, "load", 0, 1);
    if ((s = prepare_data(&r)) != ENG_OK)
        goto out;
    r.t_load = now_s() - t0;
    progress(&r, "load", 1, 1);
    if ((s = run_halving(&r, run_method)) != ENG_OK)
        goto out;
    if ((s = save_model(r.model, out_path(&r, "model.safetensors"), j, r.size, "model")) != ENG_OK)
        goto out;
    add_artifact(&r, "model.safetensors", "model");
    if (r.head) {
        if ((s = save_model(r.head, out_path(&r, "head.safetensors"), j, r.size, "head")) != ENG_OK)
            goto out;
        add_artifact(&r, "head.safetensors", "head");
    }
    if ((s = run_halving(&r, run_eval)) != ENG_OK || (s = run_halving(&r, run_gradients)) != ENG_OK)
        goto out;
    char *text = report_text(&r);
    if (!text) {
        s = eng_fail(ENG_ERR_NOMEM, "report: out of memory");
        goto out;
    }
    FILE *fp = fopen(out_path(&r, "report.json"), "w");
    bool ok = fp && fputs(text, fp) >= 0;
    if (fp && fclose(fp) != 0)
        ok = false;
    if (!ok) {
        free(text);
        s = eng_fail(ENG_ERR_IO, "report: cannot write %s", r.path);
        goto out;
    }
    if (report)
        *report = text;
    else
        free(text);
out:
    eng_eval_free(r.ev);
    eng_train_log_cleanup(&r.log);
    free(r.feats);
    eng_model_free(r.model);
    eng_model_free(r.head);
    eng_model_free(r.src);
    eng_dataset_cleanup(&r.train_all);
    eng_dataset_cleanup(&r.train);
    eng_dataset_cleanup(&r.val);
    eng_dataset_cleanup(&r.test);
    eng_ctx_free(r.ctx);
    json_decref(r.artifacts);
    json_decref(r.oom_retries);
    return s;
}
