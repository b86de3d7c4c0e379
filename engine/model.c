/* The model executor: a list of layers in topological order, run forward and backward through
 * the op interface, with batch norm folded into the convolutions whenever it uses running
 * statistics. Parameters live in one block; gradients and momentum in two more. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "backend.h"

#define TRY(expr)                   \
    do {                            \
        eng_status s_ = (expr);     \
        if (s_ != ENG_OK)           \
            return s_;              \
    } while (0)

/* ---- construction ---- */

static eng_status grow(void **arr, int *cap, int need, size_t elem)
{
    if (need <= *cap)
        return ENG_OK;
    int nc = *cap ? *cap * 2 : 64;
    while (nc < need)
        nc *= 2;
    void *p = realloc(*arr, (size_t)nc * elem);
    if (!p)
        return eng_fail(ENG_ERR_NOMEM, "model: out of memory");
    memset((char *)p + (size_t)*cap * elem, 0, (size_t)(nc - *cap) * elem);
    *arr = p;
    *cap = nc;
    return ENG_OK;
}

int arch_param(eng_model *m, const char *name, int ndim, const int64_t *dims, bool buffer, arch_init init)
{
    if (m->build_error)
        return -1;
    if (grow((void **)&m->params, &m->cap_params, m->n_params + 1, sizeof *m->params) != ENG_OK ||
        grow((void **)&m->pinfo, &m->cap_pinfo, m->n_params + 1, sizeof *m->pinfo) != ENG_OK) {
        m->build_error = ENG_ERR_NOMEM;
        return -1;
    }
    eng_param *p = &m->params[m->n_params];
    char *copy = strdup(name);
    if (!copy) {
        m->build_error = ENG_ERR_NOMEM;
        return -1;
    }
    p->name = copy;
    p->buffer = buffer;
    p->trainable = !buffer;
    eng_tensor_shape(&p->value, ndim, dims, ENG_LAYOUT_NCHW);
    m->pinfo[m->n_params].init = init;
    return m->n_params++;
}

void arch_block(eng_model *m, const char *a, const char *b)
{
    if (m->n_blocks >= (int)(sizeof m->blocks / sizeof m->blocks[0])) {
        m->build_error = ENG_ERR_LIMIT;
        return;
    }
    snprintf(m->blocks[m->n_blocks][0], sizeof m->blocks[0][0], "%s", a);
    snprintf(m->blocks[m->n_blocks][1], sizeof m->blocks[0][1], "%s", b ? b : "");
    m->n_blocks++;
}

int eng_model_num_blocks(const eng_model *m) { return m->n_blocks; }

eng_status eng_model_block(const eng_model *m, int i, const char **first, const char **second)
{
    if (i < 0 || i >= m->n_blocks)
        return eng_fail(ENG_ERR_ARG, "model: block %d outside [0, %d)", i, m->n_blocks);
    const int j = m->n_blocks - 1 - i;
    *first = m->blocks[j][0];
    *second = m->blocks[j][1][0] ? m->blocks[j][1] : NULL;
    return ENG_OK;
}

int arch_layer(eng_model *m, const arch_layer_desc *d)
{
    if (m->build_error)
        return -1;
    if (grow((void **)&m->layers, &m->cap_layers, m->n_layers + 1, sizeof *m->layers) != ENG_OK) {
        m->build_error = ENG_ERR_NOMEM;
        return -1;
    }
    layer *l = &m->layers[m->n_layers];
    memset(l, 0, sizeof *l);
    l->d = *d;
    return m->n_layers++;
}

/* Views every parameter into one block, so that loads, saves and optimiser passes are simple
 * and a device copy is a single transfer. */
static eng_status alloc_param_block(eng_model *m)
{
    int64_t total = 0;
    for (int i = 0; i < m->n_params; i++)
        total += eng_tensor_numel(&m->params[i].value);
    TRY(eng_ctx_tensor_alloc(m->ctx, &m->param_block, 1, &total, ENG_LAYOUT_NCHW));
    int64_t off = 0;
    for (int i = 0; i < m->n_params; i++) {
        eng_tensor *v = &m->params[i].value;
        eng_tensor_view(v, m->param_block.data + off, v->ndim, v->dim, ENG_LAYOUT_NCHW, m->param_block.dev);
        off += eng_tensor_numel(v);
    }
    return ENG_OK;
}

static eng_status alloc_side_block(eng_model *m, eng_tensor *block, int which)
{
    if (block->data)
        return ENG_OK;
    int64_t total = m->param_block.dim[0];
    TRY(eng_ctx_tensor_alloc(m->ctx, block, 1, &total, ENG_LAYOUT_NCHW));
    int64_t off = 0;
    for (int i = 0; i < m->n_params; i++) {
        eng_param *p = &m->params[i];
        eng_tensor *t = which == 0 ? &p->grad : &m->pinfo[i].momentum;
        eng_tensor_view(t, block->data + off, p->value.ndim, p->value.dim, ENG_LAYOUT_NCHW, block->dev);
        off += eng_tensor_numel(&p->value);
    }
    return ENG_OK;
}

static eng_status make_normalizer(eng_model *m)
{
    const int C = m->spec.in_channels;
    eng_tensor hs = ENG_TENSOR_INIT, hb = ENG_TENSOR_INIT;
    int64_t c = C;
    eng_status st = eng_tensor_alloc_host(&hs, 1, &c, ENG_LAYOUT_NCHW);
    if (st == ENG_OK)
        st = eng_tensor_alloc_host(&hb, 1, &c, ENG_LAYOUT_NCHW);
    if (st == ENG_OK)
        for (int i = 0; i < C; i++) {
            double sd = m->spec.std[i], mu = m->spec.mean[i];
            hs.data[i] = (float)(1.0 / sd);
            hb.data[i] = (float)(-mu / sd);
        }
    if (st == ENG_OK)
        st = eng_ctx_tensor_alloc(m->ctx, &m->norm_scale, 1, &c, ENG_LAYOUT_NCHW);
    if (st == ENG_OK)
        st = eng_ctx_tensor_alloc(m->ctx, &m->norm_shift, 1, &c, ENG_LAYOUT_NCHW);
    if (st == ENG_OK)
        st = eng_ctx_upload(m->ctx, &m->norm_scale, &hs);
    if (st == ENG_OK)
        st = eng_ctx_upload(m->ctx, &m->norm_shift, &hb);
    eng_tensor_cleanup(&hs);
    eng_tensor_cleanup(&hb);
    return st;
}

eng_status eng_model_new(eng_ctx *ctx, const eng_model_spec *spec, eng_model **out)
{
    *out = NULL;
    if (!ctx || !spec || !spec->arch)
        return eng_fail(ENG_ERR_ARG, "model: no context or architecture");
    const arch_def *a = arch_lookup(spec->arch);
    if (!a)
        return eng_fail(ENG_ERR_ARG,
                        "model: unknown architecture '%s' (resnet18, resnet34, resnet50, wide_resnet50_2, resnet20, "
                        "smallcnn, head)",
                        spec->arch);
    if (spec->num_classes < 1 || spec->num_classes > 1000000)
        return eng_fail(ENG_ERR_ARG, "model: num_classes must be in [1, 1000000], got %d", spec->num_classes);
    const eng_head_spec *h = &spec->head;
    if (h->n_hidden < 0 || h->n_hidden > ENG_MAX_HIDDEN)
        return eng_fail(ENG_ERR_ARG, "model: head.hidden has %d layers (at most %d)", h->n_hidden, ENG_MAX_HIDDEN);
    for (int i = 0; i < h->n_hidden; i++)
        if (h->hidden[i] < 1 || h->hidden[i] > 1 << 16)
            return eng_fail(ENG_ERR_ARG, "model: head.hidden[%d] = %d is not in [1, 65536]", i, h->hidden[i]);
    if (!(h->dropout >= 0 && h->dropout < 1))
        return eng_fail(ENG_ERR_ARG, "model: head.dropout must be in [0, 1)");
    if (a->in_channels == 0 && (spec->in_channels < 1 || spec->in_channels > 1 << 20))
        return eng_fail(ENG_ERR_ARG, "model: the head architecture needs in_channels = the feature length");
    eng_model *m = calloc(1, sizeof *m);
    if (!m)
        return eng_fail(ENG_ERR_NOMEM, "model: out of memory");
    m->ctx = ctx;
    m->arch = a;
    m->spec = *spec;
    if (m->spec.in_channels == 0)
        m->spec.in_channels = a->in_channels;
    if (a->in_channels > 0 && (m->spec.in_channels < 1 || m->spec.in_channels > ENG_MAX_CHANNELS)) {
        free(m);
        return eng_fail(ENG_ERR_ARG, "model: in_channels must be in [1, %d]", ENG_MAX_CHANNELS);
    }
    int any_std = 0;
    const int nc = a->in_channels > 0 ? m->spec.in_channels : 0; /* the head has no normalisation */
    for (int i = 0; i < nc; i++)
        any_std |= m->spec.std[i] != 0.0f;
    for (int i = 0; i < nc; i++) {
        if (!any_std) {
            m->spec.mean[i] = 0.0f;
            m->spec.std[i] = 1.0f;
        }
        if (!(m->spec.std[i] > 0.0f) || !isfinite(m->spec.mean[i])) {
            free(m);
            return eng_fail(ENG_ERR_ARG, "model: std[%d] must be > 0 and mean finite", i);
        }
    }
    m->spec.arch = a->name;
    m->feature_layer = -1;
    const char *prof = getenv("RTAAS_PROFILE");
    m->profile = prof && *prof && strcmp(prof, "0") != 0;
    eng_status st = a->build(m);
    if (st == ENG_OK && m->build_error)
        st = eng_fail(m->build_error, "model: building %s failed", a->name);
    if (st == ENG_OK)
        st = alloc_param_block(m);
    if (st == ENG_OK && nc > 0)
        st = make_normalizer(m);
    if (st != ENG_OK) {
        eng_model_free(m);
        return st;
    }
    *out = m;
    return ENG_OK;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static const char *kind_name(layer_kind k)
{
    static const char *names[] = {"input", "normalize", "conv", "maxpool", "gap", "flatten", "linear", "dropout"};
    return names[k];
}

/* The RTAAS_PROFILE table: per layer, forward and backward seconds summed over all calls. */
static void print_profile(const eng_model *m)
{
    double tf = 0, tb = 0;
    for (int i = 0; i < m->n_layers; i++)
        tf += m->layers[i].prof_fwd, tb += m->layers[i].prof_bwd;
    fprintf(stderr, "rtaas profile %s: forward %.3f s, backward %.3f s\n", m->arch->name, tf, tb);
    fprintf(stderr, "%4s %-9s %6s %6s %4s %-6s %10s %10s\n", "layer", "kind", "in_c", "out_c", "k/s", "layout",
            "fwd ms", "bwd ms");
    for (int i = 0; i < m->n_layers; i++) {
        const layer *l = &m->layers[i];
        fprintf(stderr, "%4d %-9s %6lld %6lld %2d/%d %-6s %10.2f %10.2f\n", i, kind_name(l->d.kind),
                (long long)l->d.in_c, (long long)l->d.out_c, l->d.k, l->d.stride, eng_layout_name(l->out.layout),
                l->prof_fwd * 1e3, l->prof_bwd * 1e3);
    }
}

static void free_runtime(eng_model *m)
{
    for (int i = 0; i < m->n_layers; i++) {
        layer *l = &m->layers[i];
        if (l->d.kind != LAYER_INPUT)
            eng_ctx_tensor_free(m->ctx, &l->out);
        else
            memset(&l->out, 0, sizeof l->out);
        eng_ctx_tensor_free(m->ctx, &l->grad);
        eng_ctx_tensor_free(m->ctx, &l->pre);
        eng_ctx_tensor_free(m->ctx, &l->save_mean);
        eng_ctx_tensor_free(m->ctx, &l->save_invstd);
    }
    eng_ctx_tensor_free(m->ctx, &m->tmp_a);
    eng_ctx_tensor_free(m->ctx, &m->tmp_b);
    m->planned_n = 0;
}

void eng_model_free(eng_model *m)
{
    if (!m)
        return;
    if (m->profile)
        print_profile(m);
    free_runtime(m);
    for (int i = 0; i < m->n_layers; i++) {
        layer *l = &m->layers[i];
        eng_op_cache_cleanup(&l->cache);
        eng_ctx_tensor_free(m->ctx, &l->wf);
        eng_ctx_tensor_free(m->ctx, &l->bf);
        eng_ctx_tensor_free(m->ctx, &l->fscale);
    }
    for (int i = 0; i < m->n_params; i++)
        free((char *)m->params[i].name);
    eng_ctx_tensor_free(m->ctx, &m->param_block);
    eng_ctx_tensor_free(m->ctx, &m->grad_block);
    eng_ctx_tensor_free(m->ctx, &m->mom_block);
    eng_ctx_tensor_free(m->ctx, &m->norm_scale);
    eng_ctx_tensor_free(m->ctx, &m->norm_shift);
    free(m->layers);
    free(m->params);
    free(m->pinfo);
    free(m);
}

const eng_model_spec *eng_model_get_spec(const eng_model *m) { return &m->spec; }
eng_ctx *eng_model_ctx(const eng_model *m) { return m->ctx; }
int eng_model_default_size(const eng_model *m) { return m->arch->default_size; }

int64_t eng_model_feature_dim(const eng_model *m)
{
    const layer *l = &m->layers[m->feature_layer];
    return l->d.out_c;
}

/* ---- parameters ---- */

int eng_model_num_params(const eng_model *m) { return m->n_params; }
eng_param *eng_model_param(eng_model *m, int i) { return i >= 0 && i < m->n_params ? &m->params[i] : NULL; }

eng_param *eng_model_find(eng_model *m, const char *name)
{
    for (int i = 0; i < m->n_params; i++)
        if (strcmp(m->params[i].name, name) == 0)
            return &m->params[i];
    return NULL;
}

void eng_model_set_trainable(eng_model *m, const char *prefix, bool trainable)
{
    size_t n = strlen(prefix);
    for (int i = 0; i < m->n_params; i++)
        if (!m->params[i].buffer && strncmp(m->params[i].name, prefix, n) == 0)
            m->params[i].trainable = trainable;
}

int64_t eng_model_param_floats(const eng_model *m, bool trainable_only)
{
    int64_t n = 0;
    for (int i = 0; i < m->n_params; i++)
        if (!m->params[i].buffer && (!trainable_only || m->params[i].trainable))
            n += eng_tensor_numel(&m->params[i].value);
    return n;
}

void eng_model_touch(eng_model *m)
{
    for (int i = 0; i < m->n_params; i++)
        m->params[i].value.version++;
}

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

eng_status eng_model_init(eng_model *m, uint64_t seed) { return eng_model_init_prefix(m, seed, ""); }

eng_status eng_model_init_prefix(eng_model *m, uint64_t seed, const char *prefix)
{
    eng_tensor host = ENG_TENSOR_INIT;
    TRY(eng_tensor_alloc_host(&host, 1, m->param_block.dim, ENG_LAYOUT_NCHW));
    eng_status st = eng_ctx_download(m->ctx, &host, &m->param_block);
    const size_t plen = strlen(prefix);
    int64_t off = 0;
    for (int i = 0; st == ENG_OK && i < m->n_params; i++) {
        const eng_tensor *v = &m->params[i].value;
        int64_t n = eng_tensor_numel(v);
        float *p = host.data + off;
        off += n;
        if (strncmp(m->params[i].name, prefix, plen) != 0)
            continue;
        /* a generator per parameter: re-initialising a block draws what a full init would */
        eng_rng r;
        eng_rng_init(&r, eng_hash64(seed, name_hash(m->params[i].name)));
        /* fan_in = C*R*S (or in features), fan_out = K*R*S: the owning weight's, for biases too */
        int64_t fan_in = v->ndim >= 2 ? n / v->dim[0] : m->pinfo[i].fan_in;
        int64_t fan_out = v->ndim == 4 ? v->dim[0] * v->dim[2] * v->dim[3] : v->dim[0];
        switch (m->pinfo[i].init) {
        case INIT_KAIMING_OUT: {
            double sd = sqrt(2.0 / (double)fan_out);
            for (int64_t j = 0; j < n; j++)
                p[j] = (float)(eng_rng_normal(&r) * sd);
            break;
        }
        case INIT_TORCH_DEFAULT: {
            double bound = fan_in > 0 ? 1.0 / sqrt((double)fan_in) : 0.0;
            for (int64_t j = 0; j < n; j++)
                p[j] = (float)((eng_rng_uniform(&r) * 2.0 - 1.0) * bound);
            break;
        }
        case INIT_ONE:
            for (int64_t j = 0; j < n; j++)
                p[j] = 1.0f;
            break;
        case INIT_ZERO:
            for (int64_t j = 0; j < n; j++)
                p[j] = 0.0f;
            break;
        }
    }
    if (st == ENG_OK)
        st = eng_ctx_upload(m->ctx, &m->param_block, &host);
    eng_tensor_cleanup(&host);
    eng_model_touch(m);
    return st;
}

/* ---- planning: shapes and buffers for a batch ---- */

/* A batch norm normalises with batch statistics only in training mode and only while its own
 * parameters train: a frozen block (linear probe, LwF, retrain_blocks) stays bit-identical,
 * running statistics included. */
static bool batch_stats(const eng_model *m, const layer *l, eng_mode mode)
{
    return l->d.bn >= 0 && mode == ENG_MODE_TRAIN && m->params[l->d.bn].trainable;
}

static eng_status alloc_act(eng_model *m, eng_tensor *t, int ndim, const int64_t *dims, eng_layout layout)
{
    return eng_ctx_tensor_alloc(m->ctx, t, ndim, dims, layout);
}

/* Computes every layer's output shape for input x and allocates outputs (and, as needed,
 * gradients and training buffers). Reuses what an earlier call with the same shape made. */
static eng_status plan(eng_model *m, const eng_tensor *x, const eng_forward_opts *o)
{
    const int64_t N = x->dim[0], H = x->dim[2], W = x->dim[3];
    bool want_grads = o->grads != ENG_GRAD_NONE;
    bool train = o->mode == ENG_MODE_TRAIN;
    if (m->planned_n != N || m->planned_h != H || m->planned_w != W) {
        free_runtime(m);
        int64_t biggest = 0;
        for (int i = 0; i < m->n_layers; i++) {
            layer *l = &m->layers[i];
            const layer *in = l->d.in >= 0 ? &m->layers[l->d.in] : NULL;
            int64_t dims[4] = {N, 0, 0, 0};
            int nd = 4;
            int64_t ic = in ? in->out.dim[1] : 0, ih = in ? in->out.dim[2] : 0, iw = in ? in->out.dim[3] : 0;
            eng_layout lay = ENG_LAYOUT_NCHW;
            switch (l->d.kind) {
            case LAYER_INPUT:
                eng_tensor_view(&l->out, NULL, 4, x->dim, ENG_LAYOUT_NCHW, x->dev);
                l->d.out_c = x->dim[1];
                continue;
            case LAYER_NORMALIZE:
            case LAYER_DROPOUT:
                memcpy(dims, in->out.dim, sizeof dims);
                nd = in->out.ndim;
                lay = in->out.layout;
                break;
            case LAYER_CONV:
            case LAYER_MAXPOOL: {
                int64_t k = l->d.k, ph = ih + 2 * l->d.pad - k, pw = iw + 2 * l->d.pad - k;
                if (ph < 0 || pw < 0)
                    return eng_fail(ENG_ERR_SHAPE, "model: input %lldx%lld is too small for %s (layer %d)",
                                    (long long)H, (long long)W, m->arch->name, i);
                dims[1] = l->d.kind == LAYER_CONV ? l->d.out_c : ic;
                dims[2] = ph / l->d.stride + 1;
                dims[3] = pw / l->d.stride + 1;
                lay = l->d.kind == LAYER_CONV ? eng_ctx_act_layout(m->ctx, dims[1]) : in->out.layout;
                break;
            }
            case LAYER_GAP:
                nd = 2;
                dims[1] = ic;
                break;
            case LAYER_FLATTEN:
                nd = 2;
                dims[1] = ic * (in->out.ndim == 4 ? ih * iw : 1);
                break;
            case LAYER_LINEAR:
                nd = 2;
                dims[1] = l->d.out_c;
                if (in->out.ndim != 2 || in->out.dim[1] != l->d.in_c)
                    return eng_fail(ENG_ERR_SHAPE, "model: layer %d expects %lld features, gets %lld", i,
                                    (long long)l->d.in_c, (long long)(in->out.ndim == 2 ? in->out.dim[1] : -1));
                break;
            }
            l->d.out_c = dims[1];
            TRY(alloc_act(m, &l->out, nd, dims, lay));
            int64_t sz = eng_tensor_storage(&l->out);
            if (sz > biggest)
                biggest = sz;
        }
        TRY(alloc_act(m, &m->tmp_a, 1, &biggest, ENG_LAYOUT_NCHW));
        TRY(alloc_act(m, &m->tmp_b, 1, &biggest, ENG_LAYOUT_NCHW));
        m->planned_n = N;
        m->planned_h = H;
        m->planned_w = W;
    }
    for (int i = 0; i < m->n_layers; i++) {
        layer *l = &m->layers[i];
        if (want_grads && !l->grad.data)
            TRY(alloc_act(m, &l->grad, l->out.ndim, l->out.dim, l->out.layout));
        if (train && l->d.bn >= 0 && !l->pre.data) {
            TRY(alloc_act(m, &l->pre, l->out.ndim, l->out.dim, l->out.layout));
            TRY(alloc_act(m, &l->save_mean, 1, &l->d.out_c, ENG_LAYOUT_NCHW));
            TRY(alloc_act(m, &l->save_invstd, 1, &l->d.out_c, ENG_LAYOUT_NCHW));
        }
    }
    return ENG_OK;
}

/* ---- forward ---- */

static eng_param *P(eng_model *m, int idx) { return idx >= 0 ? &m->params[idx] : NULL; }
static eng_tensor *V(eng_model *m, int idx) { return idx >= 0 ? &m->params[idx].value : NULL; }

static eng_tensor as4(const eng_tensor *w);

/* Refreshes the folded weights of a conv or linear + BN layer when any source changed. */
static eng_status fold(eng_model *m, layer *l)
{
    const int bn = l->d.bn;
    const eng_tensor w4 = as4(V(m, l->d.w));
    const eng_tensor *src[6] = {&w4, V(m, l->d.b), V(m, bn), V(m, bn + 1), V(m, bn + 2), V(m, bn + 3)};
    uint64_t key[6];
    for (int i = 0; i < 6; i++)
        key[i] = src[i] ? src[i]->version : 0;
    if (l->wf.data && memcmp(key, l->fold_key, sizeof key) == 0)
        return ENG_OK;
    if (!l->wf.data) {
        const eng_tensor *w = src[0];
        TRY(eng_ctx_tensor_alloc(m->ctx, &l->wf, 4, w->dim, ENG_LAYOUT_NCHW));
        TRY(eng_ctx_tensor_alloc(m->ctx, &l->bf, 1, &w->dim[0], ENG_LAYOUT_NCHW));
        TRY(eng_ctx_tensor_alloc(m->ctx, &l->fscale, 1, &w->dim[0], ENG_LAYOUT_NCHW));
    }
    TRY(eng_fold_bn(m->ctx, &l->wf, &l->bf, &l->fscale, src[0], src[1], src[2], src[3], src[4], src[5],
                    l->d.bn_eps));
    memcpy(l->fold_key, key, sizeof key);
    return ENG_OK;
}

/* A 2-D weight [O, I] seen as the [O, I, 1, 1] convolution weight that folding works on. */
static eng_tensor as4(const eng_tensor *w)
{
    eng_tensor v;
    int64_t d[4] = {w->dim[0], w->ndim == 2 ? w->dim[1] : w->dim[1], w->ndim == 4 ? w->dim[2] : 1,
                    w->ndim == 4 ? w->dim[3] : 1};
    eng_tensor_view(&v, w->data, 4, d, ENG_LAYOUT_NCHW, w->dev);
    v.version = w->version;
    return v;
}

/* The same memory with a linear layer's 2-D shape. */
static eng_tensor as2(const eng_tensor *w)
{
    eng_tensor v;
    int64_t d[2] = {w->dim[0], eng_tensor_numel(w) / w->dim[0]};
    eng_tensor_view(&v, w->data, 2, d, ENG_LAYOUT_NCHW, w->dev);
    v.version = w->version;
    return v;
}

/* ---- weighted layers: convolution or fully connected, each with optional batch norm,
 * residual sum and relu ---- */

static eng_status w_fwd(eng_model *m, layer *l, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                        const eng_tensor *b, bool relu, bool acc)
{
    if (l->d.kind == LAYER_CONV) {
        eng_conv_desc cd = {l->d.stride, l->d.pad, relu, acc};
        return eng_conv2d_fwd(m->ctx, y, x, w, b, &cd, &l->cache);
    }
    eng_tensor w2 = as2(w);
    TRY(eng_linear_fwd(m->ctx, y, x, &w2, b));
    return relu ? eng_relu_fwd(m->ctx, y, y) : ENG_OK;
}

static eng_status w_bwd_data(eng_model *m, layer *l, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *w,
                             bool acc)
{
    if (l->d.kind == LAYER_CONV) {
        eng_conv_desc cd = {l->d.stride, l->d.pad, false, false};
        return eng_conv2d_bwd_data(m->ctx, dx, dy, w, &cd, acc, &l->cache);
    }
    eng_tensor w2 = as2(w);
    return eng_linear_bwd_data(m->ctx, dx, dy, &w2, acc);
}

static eng_status w_bwd_filter(eng_model *m, layer *l, eng_tensor *dw, eng_tensor *db, const eng_tensor *x,
                               const eng_tensor *dy)
{
    if (l->d.kind == LAYER_CONV) {
        eng_conv_desc cd = {l->d.stride, l->d.pad, false, false};
        return eng_conv2d_bwd_filter(m->ctx, dw, db, x, dy, &cd, false, &l->cache);
    }
    return eng_linear_bwd_weight(m->ctx, dw, db, x, dy, false);
}

static eng_status fwd_weighted(eng_model *m, layer *l, const eng_forward_opts *o)
{
    eng_ctx *ctx = m->ctx;
    const eng_tensor *x = &m->layers[l->d.in].out;
    const eng_tensor *res = l->d.res >= 0 ? &m->layers[l->d.res].out : NULL;
    l->batch_stats = batch_stats(m, l, o->mode);
    if (!l->batch_stats) {
        const eng_tensor *w = V(m, l->d.w), *b = V(m, l->d.b);
        if (l->d.bn >= 0) {
            TRY(fold(m, l));
            w = &l->wf;
            b = &l->bf;
        }
        if (res)
            TRY(eng_copy(ctx, &l->out, res));
        return w_fwd(m, l, &l->out, x, w, b, l->d.relu, res != NULL);
    }
    /* Batch statistics: the plain layer, then the normalisation with the residual sum and relu
     * fused in. */
    const int bn = l->d.bn;
    TRY(w_fwd(m, l, &l->pre, x, V(m, l->d.w), V(m, l->d.b), false, false));
    return eng_bn_train_fwd_fused(ctx, &l->out, &l->pre, V(m, bn), V(m, bn + 1), V(m, bn + 2), V(m, bn + 3),
                                  &l->save_mean, &l->save_invstd, l->d.bn_momentum, l->d.bn_eps, res, l->d.relu);
}

/* A 4-D NCHW view of a 2-D [N, C*H*W] tensor, shaped like `like`. */
static eng_tensor flat_view(const eng_tensor *flat, const eng_tensor *like)
{
    eng_tensor v;
    eng_tensor_view(&v, flat->data, like->ndim, like->dim, ENG_LAYOUT_NCHW, flat->dev);
    return v;
}

static uint64_t layer_seed(uint64_t seed, int i) { return eng_hash64(seed, 0x5eed0000u + (uint64_t)i); }

eng_status eng_model_forward(eng_model *m, const eng_tensor *x, const eng_forward_opts *opts,
                             const eng_tensor **logits)
{
    eng_ctx *ctx = m->ctx;
    eng_forward_opts o = {0};
    if (opts)
        o = *opts;
    if (logits)
        *logits = NULL;
    if (!x || !x->data || x->ndim != 4 || x->layout != ENG_LAYOUT_NCHW || x->dev != eng_ctx_device(ctx))
        return eng_fail(ENG_ERR_ARG, "model: input must be a 4-D NCHW tensor in the context's memory");
    if (x->dim[0] < 1 || x->dim[1] != m->spec.in_channels || x->dim[2] < 1 || x->dim[3] < 1)
        return eng_fail(ENG_ERR_SHAPE, "model: input must be [N>=1, %d, H, W], got [%lld, %lld, %lld, %lld]",
                        m->spec.in_channels, (long long)x->dim[0], (long long)x->dim[1], (long long)x->dim[2],
                        (long long)x->dim[3]);
    if (o.mode == ENG_MODE_TRAIN && x->dim[0] < 2 && m->has_bn)
        return eng_fail(ENG_ERR_ARG, "model: training-mode batch norm needs a batch of at least 2");
    eng_ctx_bind_threads(ctx);
    TRY(plan(m, x, &o));
    m->last = o;
    m->have_forward = 0;
    m->layers[0].out.data = x->data;
    for (int i = 1; i < m->n_layers; i++) {
        layer *l = &m->layers[i];
        const eng_tensor *in = &m->layers[l->d.in].out;
        double t0 = m->profile ? now_s() : 0;
        switch (l->d.kind) {
        case LAYER_INPUT:
            break;
        case LAYER_NORMALIZE:
            TRY(eng_channel_affine_fwd(ctx, &l->out, in, &m->norm_scale, &m->norm_shift, false));
            break;
        case LAYER_CONV:
        case LAYER_LINEAR:
            TRY(fwd_weighted(m, l, &o));
            break;
        case LAYER_MAXPOOL:
            TRY(eng_maxpool_fwd(ctx, &l->out, in, l->d.k, l->d.stride, l->d.pad, &l->cache));
            break;
        case LAYER_GAP:
            TRY(eng_gap_fwd(ctx, &l->out, in));
            break;
        case LAYER_FLATTEN: {
            if (in->ndim != 4) {
                TRY(eng_copy(ctx, &l->out, in));
                break;
            }
            eng_tensor v = flat_view(&l->out, in);
            TRY(eng_copy(ctx, &v, in));
            break;
        }
        case LAYER_DROPOUT:
            if (o.mode != ENG_MODE_EVAL && l->d.drop_p > 0)
                TRY(eng_dropout_fwd(ctx, &l->out, in, l->d.drop_p, layer_seed(o.seed, i)));
            else
                TRY(eng_copy(ctx, &l->out, in));
            break;
        }
        if (m->profile)
            l->prof_fwd += now_s() - t0;
    }
    m->have_forward = 1;
    if (logits)
        *logits = &m->layers[m->n_layers - 1].out;
    return ENG_OK;
}

const eng_tensor *eng_model_features(const eng_model *m)
{
    return m->have_forward ? &m->layers[m->feature_layer].out : NULL;
}

/* ---- backward ---- */

/* Adds t into layer p's gradient (a copy for the first contribution). */
static eng_status grad_into(eng_model *m, int p, const eng_tensor *t)
{
    layer *l = &m->layers[p];
    eng_status st = l->grad_set ? eng_add(m->ctx, &l->grad, &l->grad, t) : eng_copy(m->ctx, &l->grad, t);
    l->grad_set = 1;
    return st;
}

static eng_tensor tmp_like(const eng_tensor *tmp, const eng_tensor *like)
{
    eng_tensor v;
    eng_tensor_view(&v, tmp->data, like->ndim, like->dim, like->layout, tmp->dev);
    return v;
}

static bool wants(eng_model *m, int param) { return param >= 0 && m->params[param].trainable; }

static eng_status bwd_weighted(eng_model *m, layer *l, bool params)
{
    eng_ctx *ctx = m->ctx;
    layer *xin = &m->layers[l->d.in];
    const eng_tensor *x = &xin->out;
    eng_tensor dpre = l->grad;
    if (l->d.relu) {
        dpre = tmp_like(&m->tmp_a, &l->out);
        TRY(eng_relu_bwd(ctx, &dpre, &l->grad, &l->out, false));
    }
    if (l->d.res >= 0 && m->layers[l->d.res].up)
        TRY(grad_into(m, l->d.res, &dpre));
    eng_param *w = P(m, l->d.w), *b = P(m, l->d.b);
    bool pw = params && wants(m, l->d.w), pb = params && wants(m, l->d.b);
    if (l->d.bn < 0) {
        if (pw || pb)
            TRY(w_bwd_filter(m, l, &w->grad, pb ? &b->grad : NULL, x, &dpre));
        if (xin->up) {
            TRY(w_bwd_data(m, l, &xin->grad, &dpre, &w->value, xin->grad_set));
            xin->grad_set = 1;
        }
        return ENG_OK;
    }
    if (!l->batch_stats) {
        /* Folded: w_f[k] = w[k] * s[k], so dL/dw[k] = dL/dw_f[k] * s[k]; the normalisation's own
         * parameters are frozen here (batch_stats). */
        if (pw) {
            TRY(w_bwd_filter(m, l, &w->grad, NULL, x, &dpre));
            eng_tensor rows;
            int64_t d4[4] = {1, w->grad.dim[0], eng_tensor_numel(&w->grad) / w->grad.dim[0], 1};
            eng_tensor_view(&rows, w->grad.data, 4, d4, ENG_LAYOUT_NCHW, w->grad.dev);
            TRY(eng_channel_affine_fwd(ctx, &rows, &rows, &l->fscale, NULL, false));
        }
        if (xin->up) {
            TRY(w_bwd_data(m, l, &xin->grad, &dpre, &l->wf, xin->grad_set));
            xin->grad_set = 1;
        }
        return ENG_OK;
    }
    const int bn = l->d.bn;
    eng_param *g = P(m, bn), *be = P(m, bn + 1);
    bool pg = params && wants(m, bn), pbe = params && wants(m, bn + 1);
    eng_tensor dlin = tmp_like(&m->tmp_b, &l->pre);
    TRY(eng_bn_train_bwd(ctx, &dlin, pg ? &g->grad : NULL, pbe ? &be->grad : NULL, &dpre, &l->pre, &g->value,
                         &l->save_mean, &l->save_invstd, false));
    if (pw || pb)
        TRY(w_bwd_filter(m, l, &w->grad, pb ? &b->grad : NULL, x, &dlin));
    if (xin->up) {
        TRY(w_bwd_data(m, l, &xin->grad, &dlin, &w->value, xin->grad_set));
        xin->grad_set = 1;
    }
    return ENG_OK;
}

static eng_status bwd_layer(eng_model *m, int i, bool params)
{
    eng_ctx *ctx = m->ctx;
    layer *l = &m->layers[i];
    layer *in = l->d.in >= 0 ? &m->layers[l->d.in] : NULL;
    bool need_in = in && in->up;
    switch (l->d.kind) {
    case LAYER_INPUT:
        return ENG_OK;
    case LAYER_NORMALIZE:
        if (need_in) {
            TRY(eng_channel_affine_bwd(ctx, &in->grad, &l->grad, &m->norm_scale, in->grad_set));
            in->grad_set = 1;
        }
        return ENG_OK;
    case LAYER_CONV:
    case LAYER_LINEAR:
        return bwd_weighted(m, l, params);
    case LAYER_MAXPOOL:
        if (need_in) {
            TRY(eng_maxpool_bwd(ctx, &in->grad, &l->grad, &in->out, l->d.k, l->d.stride, l->d.pad, in->grad_set,
                                &l->cache));
            in->grad_set = 1;
        }
        return ENG_OK;
    case LAYER_GAP:
        if (need_in) {
            TRY(eng_gap_bwd(ctx, &in->grad, &l->grad, in->grad_set));
            in->grad_set = 1;
        }
        return ENG_OK;
    case LAYER_FLATTEN:
        if (need_in) {
            eng_tensor v = in->out.ndim == 4 ? flat_view(&l->grad, &in->out) : l->grad;
            if (!in->grad_set) {
                TRY(eng_copy(ctx, &in->grad, &v));
                in->grad_set = 1;
            } else {
                eng_tensor t = tmp_like(&m->tmp_b, &in->grad);
                TRY(eng_copy(ctx, &t, &v));
                TRY(grad_into(m, l->d.in, &t));
            }
        }
        return ENG_OK;
    case LAYER_DROPOUT:
        if (!need_in)
            return ENG_OK;
        if (m->last.mode != ENG_MODE_EVAL && l->d.drop_p > 0) {
            TRY(eng_dropout_bwd(ctx, &in->grad, &l->grad, l->d.drop_p, layer_seed(m->last.seed, i), in->grad_set));
            in->grad_set = 1;
            return ENG_OK;
        }
        return grad_into(m, l->d.in, &l->grad);
    }
    return ENG_OK;
}

/* Zeroes the gradients of a layer's trainable parameters (its output got no gradient). */
static eng_status zero_param_grads(eng_model *m, const layer *l)
{
    int idx[4] = {l->d.w, l->d.b, l->d.bn, l->d.bn >= 0 ? l->d.bn + 1 : -1};
    for (int j = 0; j < 4; j++)
        if (wants(m, idx[j]))
            TRY(eng_fill(m->ctx, &m->params[idx[j]].grad, 0.0f));
    return ENG_OK;
}

static bool layer_has_trainable(eng_model *m, const layer *l)
{
    if (wants(m, l->d.w) || wants(m, l->d.b))
        return true;
    return l->batch_stats && (wants(m, l->d.bn) || wants(m, l->d.bn + 1));
}

eng_status eng_model_backward(eng_model *m, const eng_tensor *dlogits, const eng_tensor *dfeatures,
                              const eng_tensor **dx)
{
    eng_ctx *ctx = m->ctx;
    if (dx)
        *dx = NULL;
    if (!m->have_forward)
        return eng_fail(ENG_ERR_ARG, "model: backward without a forward");
    if (m->last.grads == ENG_GRAD_NONE)
        return eng_fail(ENG_ERR_ARG, "model: the forward was run without gradients (ENG_GRAD_NONE)");
    const bool params = (m->last.grads & ENG_GRAD_PARAMS) != 0;
    const bool input = (m->last.grads & ENG_GRAD_INPUT) != 0;
    layer *last = &m->layers[m->n_layers - 1];
    if (!dlogits || !eng_tensor_same_shape(dlogits, &last->out))
        return eng_fail(ENG_ERR_SHAPE, "model: dlogits must be [%lld, %lld]", (long long)last->out.dim[0],
                        (long long)last->out.dim[1]);
    layer *feat = &m->layers[m->feature_layer];
    if (dfeatures && !eng_tensor_same_shape(dfeatures, &feat->out))
        return eng_fail(ENG_ERR_SHAPE, "model: dfeatures must be [%lld, %lld]", (long long)feat->out.dim[0],
                        (long long)feat->out.dim[1]);
    if (params)
        TRY(alloc_side_block(m, &m->grad_block, 0));
    eng_ctx_bind_threads(ctx);
    /* up[i]: the gradient of layer i's output is needed by some parameter or by the input. */
    for (int i = 0; i < m->n_layers; i++) {
        layer *l = &m->layers[i];
        bool up = (l->d.kind == LAYER_INPUT && input) || (params && layer_has_trainable(m, l));
        if (l->d.in >= 0 && m->layers[l->d.in].up)
            up = true;
        if (l->d.res >= 0 && m->layers[l->d.res].up)
            up = true;
        l->up = up;
        l->grad_set = 0;
    }
    TRY(eng_copy(ctx, &last->grad, dlogits));
    last->grad_set = 1;
    if (dfeatures && feat->up) {
        TRY(eng_copy(ctx, &feat->grad, dfeatures));
        feat->grad_set = 1;
    }
    for (int i = m->n_layers - 1; i >= 1; i--) {
        layer *l = &m->layers[i];
        if (!l->up)
            continue;
        if (!l->grad_set) {
            if (params)
                TRY(zero_param_grads(m, l));
            continue;
        }
        double t0 = m->profile ? now_s() : 0;
        TRY(bwd_layer(m, i, params));
        if (m->profile)
            l->prof_bwd += now_s() - t0;
    }
    if (dx && input) {
        layer *in = &m->layers[0];
        if (!in->grad_set)
            TRY(eng_fill(ctx, &in->grad, 0.0f));
        *dx = &in->grad;
    }
    return ENG_OK;
}

eng_status eng_model_sgd_step(eng_model *m, const eng_sgd_desc *d, bool first)
{
    if (!m->grad_block.data)
        return eng_fail(ENG_ERR_ARG, "model: SGD step without gradients (run a backward with ENG_GRAD_PARAMS)");
    if (d->momentum > 0)
        TRY(alloc_side_block(m, &m->mom_block, 1));
    for (int i = 0; i < m->n_params; i++) {
        eng_param *p = &m->params[i];
        if (p->buffer || !p->trainable)
            continue;
        bool start = first || !m->pinfo[i].momentum_started;
        TRY(eng_sgd_step(m->ctx, &p->value, &p->grad, d->momentum > 0 ? &m->pinfo[i].momentum : NULL, d, start));
        m->pinfo[i].momentum_started = d->momentum > 0;
    }
    return ENG_OK;
}
