/* Convolutions through oneDNN primitives: forward (with fused bias, residual sum and relu),
 * backward data and backward weights. Primitives and reordered weights live in the caller's
 * eng_op_cache and are rebuilt only when the shapes, or the weights' pointer or version, change. */
#include "cpu.h"

#include <stdlib.h>
#include <string.h>

typedef struct conv_key {
    int64_t N, C, H, W, K, R, S, P, Q;
    int stride, pad;
    eng_layout lx, ly;
    int bias, relu, acc;
} conv_key;

typedef struct prim {
    int valid;
    conv_key key;
    dnnl_primitive_t p;
    dnnl_primitive_desc_t pd;
    dnnl_memory_desc_t w_md;   /* the primitive's (diff_)weights layout */
    int w_plain;               /* w_md is plain oihw: no reorder */
    int is_ref;                /* oneDNN found only its reference code: the caller uses im2col */
    dnnl_primitive_t w_reorder; /* oihw -> w_md (fwd, bwd data) or w_md -> oihw (bwd weights) */
    float *w_buf;              /* reordered weights (fwd, bwd data) or raw diff weights (bwd weights) */
    const float *w_src;        /* what w_buf was made from ... */
    uint64_t w_version;        /* ... and at which version */
    float *tmp;                /* accumulate: output written here, then added */
    size_t tmp_cap;
} prim;

typedef struct conv_cache {
    prim fwd, bwd_data, bwd_filter;
    float *stage[2]; /* NCHW staging for the im2col fallback */
    size_t stage_cap[2];
} conv_cache;

static void prim_clear(prim *p)
{
    if (p->w_reorder)
        dnnl_primitive_destroy(p->w_reorder);
    if (p->p)
        dnnl_primitive_destroy(p->p);
    if (p->pd)
        dnnl_primitive_desc_destroy(p->pd);
    eng_free(p->w_buf);
    eng_free(p->tmp);
    memset(p, 0, sizeof *p);
}

static void conv_cache_release(void *impl)
{
    conv_cache *c = impl;
    prim_clear(&c->fwd);
    prim_clear(&c->bwd_data);
    prim_clear(&c->bwd_filter);
    eng_free(c->stage[0]);
    eng_free(c->stage[1]);
    free(c);
}

float *cpu_conv_stage(eng_op_cache *cache, int i, size_t floats)
{
    if (!cache || !cache->impl || cache->release != conv_cache_release || i < 0 || i > 1)
        return NULL;
    conv_cache *c = cache->impl;
    if (floats > c->stage_cap[i]) {
        eng_free(c->stage[i]);
        c->stage[i] = eng_alloc(floats * sizeof(float));
        c->stage_cap[i] = c->stage[i] ? floats : 0;
    }
    return c->stage[i];
}

/* The cache slot for this call site, or a temporary one (freed by the caller) without a cache. */
static conv_cache *cache_get(eng_op_cache *cache, int *temporary)
{
    *temporary = 0;
    if (cache && cache->impl && cache->release == conv_cache_release)
        return cache->impl;
    conv_cache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    if (cache) {
        eng_op_cache_cleanup(cache);
        cache->impl = c;
        cache->release = conv_cache_release;
    } else {
        *temporary = 1;
    }
    return c;
}

static dnnl_format_tag_t layout_tag(eng_layout l)
{
    switch (l) {
    case ENG_LAYOUT_NHWC:
        return dnnl_nhwc;
    case ENG_LAYOUT_NCHW8C:
        return dnnl_nChw8c;
    case ENG_LAYOUT_NCHW16C:
        return dnnl_nChw16c;
    default:
        return dnnl_nchw;
    }
}

static conv_key make_key(const eng_tensor *x, const eng_tensor *w, const eng_tensor *y, const eng_conv_desc *d,
                         int bias)
{
    conv_key k;
    memset(&k, 0, sizeof k);
    k.N = x->dim[0];
    k.C = x->dim[1];
    k.H = x->dim[2];
    k.W = x->dim[3];
    k.K = w->dim[0];
    k.R = w->dim[2];
    k.S = w->dim[3];
    k.P = y->dim[2];
    k.Q = y->dim[3];
    k.stride = d->stride;
    k.pad = d->pad;
    k.lx = x->layout;
    k.ly = y->layout;
    k.bias = bias;
    k.relu = d->relu;
    k.acc = d->accumulate;
    return k;
}

#define DN(call, what)                                      \
    do {                                                    \
        eng_status s_ = cpu_dnnl_status((call), (what));    \
        if (s_ != ENG_OK) {                                 \
            st = s_;                                        \
            goto out;                                       \
        }                                                   \
    } while (0)

typedef struct conv_mds {
    dnnl_memory_desc_t x, y, w_any, w_user, b;
    dnnl_dims_t strides, pad_l, pad_r;
} conv_mds;

static eng_status make_mds(conv_mds *m, const conv_key *k)
{
    eng_status st = ENG_OK;
    dnnl_dims_t dx = {k->N, k->C, k->H, k->W}, dy = {k->N, k->K, k->P, k->Q}, dw = {k->K, k->C, k->R, k->S},
                db = {k->K};
    DN(dnnl_memory_desc_init_by_tag(&m->x, 4, dx, dnnl_f32, layout_tag(k->lx)), "src desc");
    DN(dnnl_memory_desc_init_by_tag(&m->y, 4, dy, dnnl_f32, layout_tag(k->ly)), "dst desc");
    DN(dnnl_memory_desc_init_by_tag(&m->w_any, 4, dw, dnnl_f32, dnnl_format_tag_any), "weights desc");
    DN(dnnl_memory_desc_init_by_tag(&m->w_user, 4, dw, dnnl_f32, dnnl_oihw), "weights desc");
    DN(dnnl_memory_desc_init_by_tag(&m->b, 1, db, dnnl_f32, dnnl_x), "bias desc");
    m->strides[0] = m->strides[1] = k->stride;
    m->pad_l[0] = m->pad_l[1] = k->pad;
    /* Right padding that makes oneDNN's output size equal the floor formula's. */
    m->pad_r[0] = (k->P - 1) * k->stride + k->R - k->H - k->pad;
    m->pad_r[1] = (k->Q - 1) * k->stride + k->S - k->W - k->pad;
out:
    return st;
}

static eng_status fwd_pd(eng_ctx *ctx, dnnl_primitive_desc_t *pd, const conv_mds *m, const conv_key *k,
                         dnnl_prop_kind_t prop, int with_attr)
{
    cpu_impl *im = ctx->impl;
    eng_status st = ENG_OK;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_convolution_desc_t cd;
    DN(dnnl_convolution_forward_desc_init(&cd, prop, dnnl_convolution_direct, &m->x, &m->w_any, k->bias ? &m->b : NULL,
                                          &m->y, m->strides, m->pad_l, m->pad_r),
       "convolution forward desc");
    DN(dnnl_primitive_attr_create(&attr), "attr");
    if (with_attr && (k->acc || k->relu)) {
        DN(dnnl_post_ops_create(&po), "post ops");
        if (k->acc)
            DN(dnnl_post_ops_append_sum(po, 1.0f), "sum post op");
        if (k->relu)
            DN(dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_relu, 0.0f, 0.0f), "relu post op");
        DN(dnnl_primitive_attr_set_post_ops(attr, po), "post ops");
    }
    DN(dnnl_primitive_desc_create(pd, &cd, attr, im->engine, NULL), "convolution forward");
out:
    if (po)
        dnnl_post_ops_destroy(po);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    return st;
}

enum { KIND_FWD, KIND_BWD_DATA, KIND_BWD_FILTER };

static eng_status prim_build(eng_ctx *ctx, prim *p, const conv_key *k, int kind)
{
    cpu_impl *im = ctx->impl;
    eng_status st = ENG_OK;
    conv_mds m;
    dnnl_primitive_desc_t hint = NULL;
    prim_clear(p);
    if ((st = make_mds(&m, k)) != ENG_OK)
        return st;
    if (kind == KIND_FWD) {
        if ((st = fwd_pd(ctx, &p->pd, &m, k, dnnl_forward_training, 1)) != ENG_OK)
            goto out;
        p->w_md = *dnnl_primitive_desc_query_md(p->pd, dnnl_query_weights_md, 0);
    } else {
        conv_key hk = *k;
        hk.bias = kind == KIND_BWD_FILTER ? k->bias : 0;
        if ((st = fwd_pd(ctx, &hint, &m, &hk, dnnl_forward_training, 0)) != ENG_OK)
            goto out;
        dnnl_convolution_desc_t cd;
        if (kind == KIND_BWD_DATA) {
            DN(dnnl_convolution_backward_data_desc_init(&cd, dnnl_convolution_direct, &m.x, &m.w_any, &m.y, m.strides,
                                                        m.pad_l, m.pad_r),
               "convolution backward data desc");
            DN(dnnl_primitive_desc_create(&p->pd, &cd, NULL, im->engine, hint), "convolution backward data");
            p->w_md = *dnnl_primitive_desc_query_md(p->pd, dnnl_query_weights_md, 0);
        } else {
            DN(dnnl_convolution_backward_weights_desc_init(&cd, dnnl_convolution_direct, &m.x, &m.w_any,
                                                           k->bias ? &m.b : NULL, &m.y, m.strides, m.pad_l, m.pad_r),
               "convolution backward weights desc");
            DN(dnnl_primitive_desc_create(&p->pd, &cd, NULL, im->engine, hint), "convolution backward weights");
            p->w_md = *dnnl_primitive_desc_query_md(p->pd, dnnl_query_diff_weights_md, 0);
        }
    }
    p->w_plain = dnnl_memory_desc_equal(&p->w_md, &m.w_user);
    const char *impl = NULL;
    DN(dnnl_primitive_desc_query(p->pd, dnnl_query_impl_info_str, 0, &impl), "implementation query");
    p->is_ref = impl && strncmp(impl, "ref", 3) == 0;
    if (p->is_ref) {
        p->key = *k;
        p->valid = 1;
        goto out;
    }
    DN(dnnl_primitive_create(&p->p, p->pd), "convolution primitive");
    if (!p->w_plain) {
        dnnl_primitive_desc_t rpd = NULL;
        const dnnl_memory_desc_t *from = kind == KIND_BWD_FILTER ? &p->w_md : &m.w_user;
        const dnnl_memory_desc_t *to = kind == KIND_BWD_FILTER ? &m.w_user : &p->w_md;
        DN(dnnl_reorder_primitive_desc_create(&rpd, from, im->engine, to, im->engine, NULL), "weights reorder");
        dnnl_status_t rs = dnnl_primitive_create(&p->w_reorder, rpd);
        dnnl_primitive_desc_destroy(rpd);
        DN(rs, "weights reorder");
    }
    p->key = *k;
    p->valid = 1;
out:
    if (hint)
        dnnl_primitive_desc_destroy(hint);
    if (st != ENG_OK)
        prim_clear(p);
    return st;
}

static eng_status prim_get(eng_ctx *ctx, prim *p, const conv_key *k, int kind)
{
    if (p->valid && memcmp(&p->key, k, sizeof *k) == 0)
        return ENG_OK;
    return prim_build(ctx, p, k, kind);
}

/* oneDNN's reference kernels are orders of magnitude slower than im2col (seconds for the 7x7
 * stem's backward data): report them so that the dispatcher takes the GEMM path instead. */
static eng_status ref_only(const prim *p)
{
    return p->is_ref ? eng_fail(ENG_ERR_UNSUPPORTED, "onednn: only a reference kernel for this convolution")
                     : ENG_OK;
}

/* A oneDNN memory object over caller memory. */
static eng_status mem(eng_ctx *ctx, dnnl_memory_t *m, const dnnl_memory_desc_t *md, const void *data)
{
    cpu_impl *im = ctx->impl;
    return cpu_dnnl_status(dnnl_memory_create(m, md, im->engine, (void *)data), "memory");
}

/* Runs the layer's cached weights reorder between caller memory and the primitive's layout. */
static eng_status reorder(eng_ctx *ctx, prim *p, const dnnl_memory_desc_t *from_md, const void *from,
                          const dnnl_memory_desc_t *to_md, void *to)
{
    cpu_impl *im = ctx->impl;
    eng_status st = ENG_OK;
    dnnl_memory_t a = NULL, b = NULL;
    if ((st = mem(ctx, &a, from_md, from)) != ENG_OK || (st = mem(ctx, &b, to_md, to)) != ENG_OK)
        goto out;
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, a}, {DNNL_ARG_TO, b}};
    DN(dnnl_primitive_execute(p->w_reorder, im->stream, 2, args), "reorder");
    DN(dnnl_stream_wait(im->stream), "reorder");
out:
    if (a)
        dnnl_memory_destroy(a);
    if (b)
        dnnl_memory_destroy(b);
    return st;
}

/* Weights in the primitive's layout: the caller's memory when plain, else a cached reorder. */
static eng_status weights_for(eng_ctx *ctx, prim *p, const eng_tensor *w, const float **out)
{
    if (p->w_plain) {
        *out = w->data;
        return ENG_OK;
    }
    if (!p->w_buf) {
        p->w_buf = eng_alloc(dnnl_memory_desc_get_size(&p->w_md));
        if (!p->w_buf)
            return eng_fail(ENG_ERR_NOMEM, "conv: out of memory for weights");
        p->w_src = NULL;
    }
    if (p->w_src != w->data || p->w_version != w->version) {
        dnnl_memory_desc_t user;
        dnnl_dims_t dw = {w->dim[0], w->dim[1], w->dim[2], w->dim[3]};
        eng_status st = cpu_dnnl_status(dnnl_memory_desc_init_by_tag(&user, 4, dw, dnnl_f32, dnnl_oihw), "weights");
        if (st == ENG_OK)
            st = reorder(ctx, p, &user, w->data, &p->w_md, p->w_buf);
        if (st != ENG_OK) {
            p->w_src = NULL;
            return st;
        }
        p->w_src = w->data;
        p->w_version = w->version;
    }
    *out = p->w_buf;
    return ENG_OK;
}

static float *tmp_for(prim *p, size_t floats)
{
    if (floats > p->tmp_cap) {
        eng_free(p->tmp);
        p->tmp = eng_alloc(floats * sizeof(float));
        p->tmp_cap = p->tmp ? floats : 0;
    }
    return p->tmp;
}

static void add_into(float *dst, const float *src, int64_t n)
{
#pragma omp parallel for simd schedule(static) if (n > 32768)
    for (int64_t i = 0; i < n; i++)
        dst[i] += src[i];
}

static eng_status execute(eng_ctx *ctx, prim *p, int nargs, dnnl_exec_arg_t *args)
{
    cpu_impl *im = ctx->impl;
    eng_status st = cpu_dnnl_status(dnnl_primitive_execute(p->p, im->stream, nargs, args), "convolution");
    if (st == ENG_OK)
        st = cpu_dnnl_status(dnnl_stream_wait(im->stream), "convolution");
    return st;
}

static void destroy_mems(dnnl_exec_arg_t *args, int n)
{
    for (int i = 0; i < n; i++)
        if (args[i].memory)
            dnnl_memory_destroy(args[i].memory);
}

eng_status cpu_conv_onednn_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                               const eng_tensor *b, const eng_conv_desc *d, eng_op_cache *cache)
{
    int temporary;
    conv_cache *c = cache_get(cache, &temporary);
    if (!c)
        return eng_fail(ENG_ERR_NOMEM, "conv: out of memory");
    eng_status st;
    conv_key k = make_key(x, w, y, d, b != NULL);
    dnnl_exec_arg_t args[4] = {{0}};
    int n = 0;
    const float *wp;
    if ((st = prim_get(ctx, &c->fwd, &k, KIND_FWD)) != ENG_OK || (st = ref_only(&c->fwd)) != ENG_OK ||
        (st = weights_for(ctx, &c->fwd, w, &wp)) != ENG_OK)
        goto out;
    conv_mds m;
    if ((st = make_mds(&m, &k)) != ENG_OK)
        goto out;
    args[n].arg = DNNL_ARG_SRC;
    if ((st = mem(ctx, &args[n++].memory, &m.x, x->data)) != ENG_OK)
        goto out;
    args[n].arg = DNNL_ARG_WEIGHTS;
    if ((st = mem(ctx, &args[n++].memory, &c->fwd.w_md, wp)) != ENG_OK)
        goto out;
    if (b) {
        args[n].arg = DNNL_ARG_BIAS;
        if ((st = mem(ctx, &args[n++].memory, &m.b, b->data)) != ENG_OK)
            goto out;
    }
    args[n].arg = DNNL_ARG_DST;
    if ((st = mem(ctx, &args[n++].memory, &m.y, y->data)) != ENG_OK)
        goto out;
    st = execute(ctx, &c->fwd, n, args);
out:
    destroy_mems(args, n);
    if (temporary)
        conv_cache_release(c);
    return st;
}

eng_status cpu_conv_onednn_bwd_data(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *w,
                                    const eng_conv_desc *d, bool accumulate, eng_op_cache *cache)
{
    int temporary;
    conv_cache *c = cache_get(cache, &temporary);
    if (!c)
        return eng_fail(ENG_ERR_NOMEM, "conv: out of memory");
    eng_status st;
    eng_conv_desc plain = {d->stride, d->pad, false, false};
    conv_key k = make_key(dx, w, dy, &plain, 0);
    dnnl_exec_arg_t args[3] = {{0}};
    int n = 0;
    const float *wp;
    float *target = dx->data;
    if ((st = prim_get(ctx, &c->bwd_data, &k, KIND_BWD_DATA)) != ENG_OK || (st = ref_only(&c->bwd_data)) != ENG_OK ||
        (st = weights_for(ctx, &c->bwd_data, w, &wp)) != ENG_OK)
        goto out;
    if (accumulate && !(target = tmp_for(&c->bwd_data, (size_t)eng_tensor_storage(dx)))) {
        st = eng_fail(ENG_ERR_NOMEM, "conv: out of memory");
        goto out;
    }
    conv_mds m;
    if ((st = make_mds(&m, &k)) != ENG_OK)
        goto out;
    args[n].arg = DNNL_ARG_DIFF_DST;
    if ((st = mem(ctx, &args[n++].memory, &m.y, dy->data)) != ENG_OK)
        goto out;
    args[n].arg = DNNL_ARG_WEIGHTS;
    if ((st = mem(ctx, &args[n++].memory, &c->bwd_data.w_md, wp)) != ENG_OK)
        goto out;
    args[n].arg = DNNL_ARG_DIFF_SRC;
    if ((st = mem(ctx, &args[n++].memory, &m.x, target)) != ENG_OK)
        goto out;
    if ((st = execute(ctx, &c->bwd_data, n, args)) == ENG_OK && accumulate)
        add_into(dx->data, target, eng_tensor_storage(dx));
out:
    destroy_mems(args, n);
    if (temporary)
        conv_cache_release(c);
    return st;
}

eng_status cpu_conv_onednn_bwd_filter(eng_ctx *ctx, eng_tensor *dw, eng_tensor *db, const eng_tensor *x,
                                      const eng_tensor *dy, const eng_conv_desc *d, bool accumulate,
                                      eng_op_cache *cache)
{
    int temporary;
    conv_cache *c = cache_get(cache, &temporary);
    if (!c)
        return eng_fail(ENG_ERR_NOMEM, "conv: out of memory");
    eng_status st;
    eng_conv_desc plain = {d->stride, d->pad, false, false};
    conv_key k = make_key(x, dw, dy, &plain, db != NULL);
    dnnl_exec_arg_t args[4] = {{0}};
    int n = 0;
    prim *p = &c->bwd_filter;
    const int64_t wn = eng_tensor_numel(dw), K = dw->dim[0];
    float *raw = NULL, *bias_out = NULL;
    if ((st = prim_get(ctx, p, &k, KIND_BWD_FILTER)) != ENG_OK || (st = ref_only(p)) != ENG_OK)
        goto out;
    /* Raw diff weights go to w_buf when they need a reorder or an accumulate, and the
     * bias gradient to tmp when it must be added. */
    int direct = p->w_plain && !accumulate;
    if (!direct && !p->w_buf) {
        p->w_buf = eng_alloc(dnnl_memory_desc_get_size(&p->w_md));
        if (!p->w_buf) {
            st = eng_fail(ENG_ERR_NOMEM, "conv: out of memory");
            goto out;
        }
    }
    raw = direct ? dw->data : p->w_buf;
    /* With accumulate, tmp holds [plain diff weights | diff bias] before they are added. */
    float *acc_buf = NULL;
    if (accumulate && !(acc_buf = tmp_for(p, (size_t)(wn + K)))) {
        st = eng_fail(ENG_ERR_NOMEM, "conv: out of memory");
        goto out;
    }
    if (db)
        bias_out = accumulate ? acc_buf + wn : db->data;
    conv_mds m;
    if ((st = make_mds(&m, &k)) != ENG_OK)
        goto out;
    args[n].arg = DNNL_ARG_SRC;
    if ((st = mem(ctx, &args[n++].memory, &m.x, x->data)) != ENG_OK)
        goto out;
    args[n].arg = DNNL_ARG_DIFF_DST;
    if ((st = mem(ctx, &args[n++].memory, &m.y, dy->data)) != ENG_OK)
        goto out;
    args[n].arg = DNNL_ARG_DIFF_WEIGHTS;
    if ((st = mem(ctx, &args[n++].memory, &p->w_md, raw)) != ENG_OK)
        goto out;
    if (db) {
        args[n].arg = DNNL_ARG_DIFF_BIAS;
        if ((st = mem(ctx, &args[n++].memory, &m.b, bias_out)) != ENG_OK)
            goto out;
    }
    if ((st = execute(ctx, p, n, args)) != ENG_OK)
        goto out;
    if (!direct) {
        if (p->w_plain)
            add_into(dw->data, raw, wn);
        else if (!accumulate)
            st = reorder(ctx, p, &p->w_md, raw, &m.w_user, dw->data);
        else if ((st = reorder(ctx, p, &p->w_md, raw, &m.w_user, acc_buf)) == ENG_OK)
            add_into(dw->data, acc_buf, wn);
    }
    if (st == ENG_OK && db && accumulate)
        add_into(db->data, bias_out, K);
out:
    destroy_mems(args, n);
    if (temporary)
        conv_cache_release(c);
    return st;
}
