/* Loading and saving a model's parameters through safetensors files. Loads stage every
 * tensor on the host first so that a bad file leaves the model exactly as it was. */
#include "weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#include "safetensors.h"

static void weights_shape_str(int ndim, const int64_t *dim, char *buf, size_t len)
{
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, i ? ", %lld" : "%lld", (long long)dim[i]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
}

static bool weights_same_shape(const eng_st_entry *e, const eng_tensor *t)
{
    if (e->ndim != t->ndim)
        return false;
    for (int i = 0; i < e->ndim; i++)
        if (e->dim[i] != t->dim[i])
            return false;
    return true;
}

/* Checks every parameter against the file and fills rep; on success *total is the floats to stage. */
static eng_status weights_check(eng_model *m, const eng_st_file *f, const char *path, bool strict,
                                eng_load_report *rep, int64_t *total)
{
    int np = eng_model_num_params(m);
    *total = 0;
    for (int i = 0; i < eng_st_count(f); i++) {
        const eng_st_entry *e = eng_st_get(f, i);
        if (!eng_model_find(m, e->name) && rep->ignored++ == 0)
            snprintf(rep->first_ignored, sizeof rep->first_ignored, "%s", e->name);
    }
    for (int i = 0; i < np; i++) {
        const eng_param *p = eng_model_param(m, i);
        const eng_st_entry *e = eng_st_find(f, p->name);
        if (!e) {
            if (rep->missing++ == 0)
                snprintf(rep->first_missing, sizeof rep->first_missing, "%s", p->name);
            continue;
        }
        if (e->dtype != ENG_ST_F32 && e->dtype != ENG_ST_F16 && e->dtype != ENG_ST_BF16 && e->dtype != ENG_ST_F64)
            return eng_fail(ENG_ERR_FORMAT, "weights: tensor '%.200s' in '%.200s' has dtype %s, not a floating-point one",
                            p->name, path, eng_st_dtype_name(e->dtype));
        if (!weights_same_shape(e, &p->value)) {
            char fs[160], ms[160];
            weights_shape_str(e->ndim, e->dim, fs, sizeof fs);
            weights_shape_str(p->value.ndim, p->value.dim, ms, sizeof ms);
            return eng_fail(ENG_ERR_SHAPE, "weights: tensor '%.200s' has shape %s in '%.200s', the model needs %s",
                            p->name, fs, path, ms);
        }
        *total += e->numel;
    }
    if (strict && rep->missing > 0)
        return eng_fail(ENG_ERR_NOT_FOUND, "weights: '%.200s' lacks %d of the model's %d parameters, first '%.127s'",
                        path, rep->missing, np, rep->first_missing);
    return ENG_OK;
}

eng_status eng_model_load_safetensors(eng_model *m, const char *path, bool strict, eng_load_report *rep)
{
    eng_status s;
    eng_st_file *f = NULL;
    float *stage = NULL;
    eng_load_report local;
    if (!rep)
        rep = &local;
    memset(rep, 0, sizeof *rep);
    if (!m || !path)
        return eng_fail(ENG_ERR_ARG, "weights: NULL model or path");
    if ((s = eng_st_open(path, &f)) != ENG_OK)
        goto out;
    int64_t total;
    if ((s = weights_check(m, f, path, strict, rep, &total)) != ENG_OK)
        goto out;
    /* total is bounded by the model's own size, which was allocated already. */
    if (!(stage = eng_alloc((size_t)total * sizeof(float)))) {
        s = eng_fail(ENG_ERR_NOMEM, "weights: cannot stage %lld floats", (long long)total);
        goto out;
    }
    int np = eng_model_num_params(m);
    int64_t off = 0;
    for (int i = 0; i < np; i++) {
        const eng_param *p = eng_model_param(m, i);
        const eng_st_entry *e = eng_st_find(f, p->name);
        if (!e)
            continue;
        if ((s = eng_st_read_f32(f, e, stage + off, e->numel)) != ENG_OK)
            goto out;
        off += e->numel;
    }
    /* Every tensor is read; from here only a failing device copy can stop the load midway. */
    off = 0;
    for (int i = 0; i < np; i++) {
        eng_param *p = eng_model_param(m, i);
        const eng_st_entry *e = eng_st_find(f, p->name);
        if (!e)
            continue;
        eng_tensor view;
        eng_tensor_view(&view, stage + off, p->value.ndim, p->value.dim, ENG_LAYOUT_NCHW, ENG_DEV_CPU);
        if (p->value.dev == ENG_DEV_CPU)
            s = eng_tensor_copy_host(&p->value, &view);
        else
            s = eng_ctx_upload(eng_model_ctx(m), &p->value, &view);
        if (s != ENG_OK) {
            eng_model_touch(m); /* some parameters may have changed; caches must not trust them */
            goto out;
        }
        off += e->numel;
        rep->loaded++;
    }
    eng_model_touch(m);
out:
    eng_free(stage);
    eng_st_close(f);
    return s;
}

eng_status eng_model_save_safetensors(eng_model *m, const char *path, const char *const *meta_keys,
                                      const char *const *meta_values, int n_meta)
{
    eng_status s = ENG_OK;
    eng_st_item *items = NULL;
    float *stage = NULL;
    if (!m || !path)
        return eng_fail(ENG_ERR_ARG, "weights: NULL model or path");
    int np = eng_model_num_params(m);
    if (!(items = calloc(np ? (size_t)np : 1, sizeof *items)))
        return eng_fail(ENG_ERR_NOMEM, "weights: out of memory");
    /* Parameters not already plain host memory are copied to one host block first. */
    int64_t total = 0;
    for (int i = 0; i < np; i++) {
        const eng_tensor *v = &eng_model_param(m, i)->value;
        if (v->dev != ENG_DEV_CPU || v->layout != ENG_LAYOUT_NCHW)
            total += eng_tensor_numel(v);
    }
    if (total > 0 && !(stage = eng_alloc((size_t)total * sizeof(float)))) {
        s = eng_fail(ENG_ERR_NOMEM, "weights: cannot stage %lld floats", (long long)total);
        goto out;
    }
    int64_t off = 0;
    for (int i = 0; i < np; i++) {
        eng_param *p = eng_model_param(m, i);
        const eng_tensor *v = &p->value;
        items[i] = (eng_st_item){.name = p->name, .data = v->data, .ndim = v->ndim, .dim = v->dim};
        if (v->dev == ENG_DEV_CPU && v->layout == ENG_LAYOUT_NCHW)
            continue;
        eng_tensor view;
        eng_tensor_view(&view, stage + off, v->ndim, v->dim, ENG_LAYOUT_NCHW, ENG_DEV_CPU);
        s = v->dev == ENG_DEV_CPU ? eng_tensor_copy_host(&view, v) : eng_ctx_download(eng_model_ctx(m), &view, v);
        if (s != ENG_OK)
            goto out;
        items[i].data = stage + off;
        off += eng_tensor_numel(v);
    }
    s = eng_st_write(path, items, np, meta_keys, meta_values, n_meta);
out:
    eng_free(stage);
    free(items);
    return s;
}
