/* Importing a PyTorch checkpoint: the recognised layout (pt_layout.c) filled into an rtaas
 * model, every shape checked before anything is read, then saved as the backbone file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "pt_internal.h"
#include "weights.h"

static bool same_shape(const eng_pt_tensor_info *t, const eng_tensor *v)
{
    if (t->ndim != v->ndim)
        return false;
    for (int i = 0; i < t->ndim; i++)
        if (t->dim[i] != v->dim[i])
            return false;
    return true;
}

static void shape_str(int ndim, const int64_t *dim, char *buf, size_t len)
{
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, i ? ", %lld" : "%lld", (long long)dim[i]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
}

static bool is_float(eng_st_dtype d)
{
    return d == ENG_ST_F32 || d == ENG_ST_F16 || d == ENG_ST_BF16 || d == ENG_ST_F64;
}

/* Checks every parameter of m against the mapped tensors before any is read. */
static eng_status check_params(eng_model *m, const pt_layout *lay, const eng_pt_report *rep)
{
    int np = eng_model_num_params(m), missing = 0;
    const char *first = NULL;
    for (int i = 0; i < np; i++) {
        const eng_param *p = eng_model_param(m, i);
        const pt_sd_entry *e = pt_layout_find(lay, p->name);
        if (!e) {
            if (rep->has_fc || strncmp(p->name, "fc.", 3) != 0) /* an absent fc stays zero */
                first = missing++ ? first : p->name;
            continue;
        }
        eng_pt_tensor_info t;
        eng_status s = eng_pt_tensor(e->v, &t);
        if (s != ENG_OK)
            return s;
        if (!same_shape(&t, &p->value)) {
            char a[160], b[160];
            shape_str(t.ndim, t.dim, a, sizeof a);
            shape_str(p->value.ndim, p->value.dim, b, sizeof b);
            return eng_fail(ENG_ERR_SHAPE, "import: '%.200s' has shape %s, %s needs %s", e->key, a, rep->arch, b);
        }
        if (!is_float(t.dtype))
            return eng_fail(ENG_ERR_FORMAT, "import: '%.200s' is %s, not a floating-point tensor", e->key,
                            eng_st_dtype_name(t.dtype));
    }
    if (missing)
        return eng_fail(ENG_ERR_NOT_FOUND, "import: the checkpoint lacks %d of the %d parameters of %s, first '%s%s'",
                        missing, np, rep->arch, rep->prefix, first);
    return ENG_OK;
}

static int cmp_order(const void *a, const void *b)
{
    return (*(const pt_sd_entry *const *)a)->order - (*(const pt_sd_entry *const *)b)->order;
}

eng_status eng_pt_import_model(eng_ctx *ctx, eng_pt_file *f, const eng_pt_import_opts *opts, eng_pt_report *rep,
                               eng_model **out)
{
    eng_status s;
    pt_layout lay = {0};
    eng_model *m = NULL;
    float *stage = NULL;
    const pt_sd_entry **unused = NULL;
    if (!out)
        return eng_fail(ENG_ERR_ARG, "import: NULL output");
    *out = NULL;
    if (!ctx || !f || !rep)
        return eng_fail(ENG_ERR_ARG, "import: NULL context, file or report");
    if ((s = pt_layout_build(f, opts, rep, &lay)) != ENG_OK)
        return s;
    eng_model_spec spec = {.arch = rep->arch, .num_classes = rep->num_classes, .in_channels = rep->in_channels};
    if (rep->norm != ENG_PT_NORM_MISSING) {
        memcpy(spec.mean, rep->mean, sizeof spec.mean);
        memcpy(spec.std, rep->std, sizeof spec.std);
    }
    if ((s = eng_model_new(ctx, &spec, &m)) != ENG_OK || (s = check_params(m, &lay, rep)) != ENG_OK)
        goto out;
    int np = eng_model_num_params(m);
    for (int i = 0; i < np; i++) {
        eng_param *p = eng_model_param(m, i);
        pt_sd_entry *e = pt_layout_find(&lay, p->name);
        if (!e)
            continue;
        eng_pt_tensor_info t;
        eng_pt_tensor(e->v, &t);
        int64_t n = eng_tensor_numel(&p->value);
        bool direct = p->value.dev == ENG_DEV_CPU && p->value.layout == ENG_LAYOUT_NCHW;
        float *dst = direct ? p->value.data : (stage = eng_alloc((size_t)n * sizeof(float)));
        if (!dst) {
            s = eng_fail(ENG_ERR_NOMEM, "import: cannot stage %lld floats", (long long)n);
            goto out;
        }
        if ((s = eng_pt_read_f32(f, e->v, dst, n)) != ENG_OK) {
            s = eng_fail(s, "import: '%.200s': %s", e->key, eng_last_error());
            goto out;
        }
        if (!direct) {
            eng_tensor view;
            eng_tensor_view(&view, stage, p->value.ndim, p->value.dim, ENG_LAYOUT_NCHW, ENG_DEV_CPU);
            s = p->value.dev == ENG_DEV_CPU ? eng_tensor_copy_host(&p->value, &view) : eng_ctx_upload(ctx, &p->value, &view);
            eng_free(stage);
            stage = NULL;
            if (s != ENG_OK)
                goto out;
        }
        e->used = true;
        rep->used++;
        rep->by_dtype[t.dtype]++;
    }
    eng_model_touch(m);
    /* Tensors under the prefix that the model has no parameter for, in file order. */
    if (!(unused = calloc(lay.n ? (size_t)lay.n : 1, sizeof *unused))) {
        s = eng_fail(ENG_ERR_NOMEM, "import: out of memory");
        goto out;
    }
    int nu = 0;
    for (int i = 0; i < lay.n; i++)
        if (!lay.e[i].used)
            unused[nu++] = &lay.e[i];
    qsort(unused, (size_t)nu, sizeof *unused, cmp_order);
    for (int i = 0; i < nu; i++)
        if ((s = pt_report_ignore(rep, unused[i]->key, "not a parameter of the recognised architecture")) != ENG_OK)
            goto out;
    *out = m;
    m = NULL;
out:
    free(unused);
    eng_free(stage);
    eng_model_free(m);
    pt_layout_cleanup(&lay);
    return s;
}

static void floats_str(const float *v, int n, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%.9g", i ? "," : "", v[i]);
}

eng_status eng_pt_import(eng_ctx *ctx, const char *pt_path, const char *out_path, const eng_pt_import_opts *opts,
                         eng_pt_report *rep)
{
    eng_status s;
    eng_pt_file *f = NULL;
    eng_model *m = NULL;
    if (!pt_path || !out_path || !rep)
        return eng_fail(ENG_ERR_ARG, "import: NULL path or report");
    if ((s = eng_pt_open(pt_path, &f)) != ENG_OK || (s = eng_pt_import_model(ctx, f, opts, rep, &m)) != ENG_OK)
        goto out;
    /* The keys save_model (job.c) writes and load_source reads, plus where this one came from. */
    char classes[16], inch[16], size[16], mean[96] = "", std[96] = "", norm[200], source[32];
    snprintf(classes, sizeof classes, "%d", rep->num_classes);
    snprintf(inch, sizeof inch, "%d", rep->in_channels);
    snprintf(size, sizeof size, "%d", rep->input_size);
    if (rep->norm != ENG_PT_NORM_MISSING) {
        floats_str(rep->mean, rep->in_channels, mean, sizeof mean);
        floats_str(rep->std, rep->in_channels, std, sizeof std);
    }
    if (rep->norm == ENG_PT_NORM_FILE)
        snprintf(norm, sizeof norm, "file:%s", rep->norm_keys[0]);
    else
        snprintf(norm, sizeof norm, "%s", rep->norm == ENG_PT_NORM_OPTION ? "option" : "missing");
    snprintf(source, sizeof source, "pytorch-%s", eng_pt_format_name(rep->format));
    const char *keys[] = {"arch",         "num_classes", "in_channels", "input_size",    "mean",
                          "std",          "head_hidden", "head_bn",     "head_dropout", "role",
                          "normalization", "source",     "rtaas_version"};
    const char *vals[] = {rep->arch, classes, inch, size, mean, std, "", "0", "0", "backbone", norm, source,
                          RTAAS_VERSION};
    s = eng_model_save_safetensors(m, out_path, keys, vals, (int)(sizeof keys / sizeof *keys));
out:
    eng_model_free(m);
    eng_pt_close(f);
    return s;
}
