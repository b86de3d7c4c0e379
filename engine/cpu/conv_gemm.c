/* Convolution as im2col + OpenBLAS sgemm, NCHW only: the portable path, the fallback for
 * shapes where oneDNN has only reference kernels, and the yardstick of bench/. With at least as
 * many images as threads, images run in parallel (each thread its own im2col buffer and a
 * single-threaded GEMM); otherwise one image at a time with threaded im2col and GEMM. */
#include "cpu.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

typedef struct geo {
    int64_t N, C, H, W, K, R, S, P, Q;
    int st, pad;
} geo;

static geo geo_of(const eng_tensor *x, const eng_tensor *w, const eng_tensor *y, const eng_conv_desc *d)
{
    geo g = {x->dim[0], x->dim[1], x->dim[2], x->dim[3], w->dim[0], w->dim[2], w->dim[3],
             y->dim[2], y->dim[3], d->stride, d->pad};
    return g;
}

static int is_pointwise(const geo *g) { return g->R == 1 && g->S == 1 && g->st == 1 && g->pad == 0; }

/* cols[(c*R + r)*S + s][p*Q + q] = x[c][p*st - pad + r][q*st - pad + s], zero outside. */
static void im2col(const geo *g, const float *x, float *cols, bool par)
{
    const int64_t PQ = g->P * g->Q;
#pragma omp parallel for collapse(2) schedule(static) if (par)
    for (int64_t c = 0; c < g->C; c++)
        for (int64_t r = 0; r < g->R; r++)
            for (int64_t s = 0; s < g->S; s++) {
                float *row = cols + ((c * g->R + r) * g->S + s) * PQ;
                for (int64_t p = 0; p < g->P; p++) {
                    int64_t h = p * g->st - g->pad + r;
                    float *o = row + p * g->Q;
                    if (h < 0 || h >= g->H) {
                        memset(o, 0, (size_t)g->Q * sizeof(float));
                        continue;
                    }
                    const float *in = x + (c * g->H + h) * g->W;
                    for (int64_t q = 0; q < g->Q; q++) {
                        int64_t w = q * g->st - g->pad + s;
                        o[q] = (w >= 0 && w < g->W) ? in[w] : 0.0f;
                    }
                }
            }
}

/* dx[c][h][w] += cols[...]: the adjoint of im2col, gathered per input row (c, h) so that
 * threads never write the same element and few channels (the RGB stem) still split evenly. */
static void col2im(const geo *g, const float *cols, float *dx, bool par)
{
    const int64_t PQ = g->P * g->Q;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t ch = 0; ch < g->C * g->H; ch++) {
        const int64_t c = ch / g->H, h = ch % g->H;
        float *o = dx + ch * g->W;
        for (int64_t r = 0; r < g->R; r++) {
            int64_t t = h + g->pad - r; /* = p * st */
            if (t < 0 || t % g->st)
                continue;
            int64_t p = t / g->st;
            if (p >= g->P)
                continue;
            for (int64_t s = 0; s < g->S; s++) {
                const float *row = cols + ((c * g->R + r) * g->S + s) * PQ + p * g->Q;
                for (int64_t q = 0; q < g->Q; q++) {
                    int64_t w = q * g->st - g->pad + s;
                    if (w >= 0 && w < g->W)
                        o[w] += row[q];
                }
            }
        }
    }
}

/* Threads that work on whole images: all of them when there are enough images, else none. */
static int image_threads(const geo *g)
{
    int t = omp_get_max_threads();
    return g->N >= t ? t : 1;
}

static void bias_relu(const geo *g, float *yn, const float *b, bool relu, bool par)
{
    const int64_t PQ = g->P * g->Q;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t k = 0; k < g->K; k++) {
        float bk = b ? b[k] : 0.0f, *row = yn + k * PQ;
        for (int64_t i = 0; i < PQ; i++) {
            float v = row[i] + bk;
            row[i] = relu && v < 0.0f ? 0.0f : v;
        }
    }
}

eng_status cpu_conv_gemm_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                             const eng_tensor *b, const eng_conv_desc *d)
{
    geo g = geo_of(x, w, y, d);
    const int64_t CRS = g.C * g.R * g.S, PQ = g.P * g.Q;
    const int T = image_threads(&g), pw = is_pointwise(&g);
    float *cols = NULL;
    if (!pw && !(cols = cpu_scratch(ctx, (size_t)(T * CRS * PQ))))
        return eng_fail(ENG_ERR_NOMEM, "conv: out of memory for im2col");
#pragma omp parallel for schedule(static) num_threads(T) if (T > 1)
    for (int64_t n = 0; n < g.N; n++) {
        const bool inner = T == 1;
        const float *xn = x->data + n * g.C * g.H * g.W;
        float *yn = y->data + n * g.K * PQ;
        float *cn = cols ? cols + (int64_t)omp_get_thread_num() * CRS * PQ : NULL;
        if (cn)
            im2col(&g, xn, cn, inner);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)g.K, (int)PQ, (int)CRS, 1.0f, w->data, (int)CRS,
                    cn ? cn : xn, (int)PQ, d->accumulate ? 1.0f : 0.0f, yn, (int)PQ);
        if (b || d->relu)
            bias_relu(&g, yn, b ? b->data : NULL, d->relu, inner);
    }
    return ENG_OK;
}

eng_status cpu_conv_gemm_bwd_data(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *w,
                                  const eng_conv_desc *d, bool accumulate)
{
    geo g = geo_of(dx, w, dy, d);
    const int64_t CRS = g.C * g.R * g.S, PQ = g.P * g.Q;
    const int T = image_threads(&g), pw = is_pointwise(&g);
    float *cols = NULL;
    if (!pw && !(cols = cpu_scratch(ctx, (size_t)(T * CRS * PQ))))
        return eng_fail(ENG_ERR_NOMEM, "conv: out of memory for col2im");
    if (!accumulate && !pw)
        memset(dx->data, 0, (size_t)eng_tensor_storage(dx) * sizeof(float));
#pragma omp parallel for schedule(static) num_threads(T) if (T > 1)
    for (int64_t n = 0; n < g.N; n++) {
        float *dxn = dx->data + n * g.C * g.H * g.W;
        const float *dyn = dy->data + n * g.K * PQ;
        float *cn = cols ? cols + (int64_t)omp_get_thread_num() * CRS * PQ : NULL;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)CRS, (int)PQ, (int)g.K, 1.0f, w->data, (int)CRS,
                    dyn, (int)PQ, pw && accumulate ? 1.0f : 0.0f, pw ? dxn : cn, (int)PQ);
        if (!pw)
            col2im(&g, cn, dxn, T == 1);
    }
    return ENG_OK;
}

eng_status cpu_conv_gemm_bwd_filter(eng_ctx *ctx, eng_tensor *dw, eng_tensor *db, const eng_tensor *x,
                                    const eng_tensor *dy, const eng_conv_desc *d, bool accumulate)
{
    geo g = geo_of(x, dw, dy, d);
    const int64_t CRS = g.C * g.R * g.S, PQ = g.P * g.Q, KW = g.K * CRS;
    const int T = image_threads(&g), pw = is_pointwise(&g);
    /* per thread: an im2col buffer and, past the first thread, a private dW summed at the end */
    const int64_t per = (pw ? 0 : CRS * PQ) + KW;
    float *scratch = cpu_scratch(ctx, (size_t)(T * per));
    if (!scratch)
        return eng_fail(ENG_ERR_NOMEM, "conv: out of memory for im2col");
#pragma omp parallel num_threads(T) if (T > 1)
    {
        const int t = omp_get_thread_num();
        float *cn = pw ? NULL : scratch + (int64_t)t * per;
        float *acc = t == 0 ? dw->data : scratch + (int64_t)t * per + (pw ? 0 : CRS * PQ);
        bool started = t == 0 && accumulate;
#pragma omp for schedule(static)
        for (int64_t n = 0; n < g.N; n++) {
            const float *xn = x->data + n * g.C * g.H * g.W;
            const float *dyn = dy->data + n * g.K * PQ;
            if (cn)
                im2col(&g, xn, cn, T == 1);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)g.K, (int)CRS, (int)PQ, 1.0f, dyn, (int)PQ,
                        cn ? cn : xn, (int)PQ, started ? 1.0f : 0.0f, acc, (int)CRS);
            started = true;
        }
        if (!started)
            memset(acc, 0, (size_t)KW * sizeof(float));
    }
    for (int t = 1; t < T; t++) {
        const float *part = scratch + (int64_t)t * per + (pw ? 0 : CRS * PQ);
        for (int64_t i = 0; i < KW; i++)
            dw->data[i] += part[i];
    }
    if (db) {
#pragma omp parallel for schedule(static)
        for (int64_t k = 0; k < g.K; k++) {
            double s = 0;
            for (int64_t n = 0; n < g.N; n++) {
                const float *row = dy->data + (n * g.K + k) * PQ;
                for (int64_t i = 0; i < PQ; i++)
                    s += row[i];
            }
            db->data[k] = (float)((accumulate ? db->data[k] : 0.0) + s);
        }
    }
    return ENG_OK;
}

/* ---- any layout: NCHW copies of blocked operands ---- */

typedef struct nchw_copy {
    eng_tensor t; /* the copy: a view of a cache staging buffer, or owned */
} nchw_copy;

/* *use points at src itself when it is NCHW, else at an NCHW copy (converted when `load`). */
static eng_status as_nchw(eng_ctx *ctx, nchw_copy *c, const eng_tensor *src, bool load, eng_op_cache *cache,
                          int slot, const eng_tensor **use)
{
    memset(c, 0, sizeof *c);
    if (src->layout == ENG_LAYOUT_NCHW) {
        *use = src;
        return ENG_OK;
    }
    eng_status s = ENG_OK;
    float *buf = cpu_conv_stage(cache, slot, (size_t)eng_tensor_numel(src));
    if (buf)
        eng_tensor_view(&c->t, buf, 4, src->dim, ENG_LAYOUT_NCHW, ENG_DEV_CPU);
    else
        s = eng_tensor_alloc_host(&c->t, 4, src->dim, ENG_LAYOUT_NCHW);
    if (s == ENG_OK && load)
        s = cpu_relayout(ctx, &c->t, src);
    *use = &c->t;
    return s;
}

/* Writes a converted result back into the caller's (blocked) tensor. */
static eng_status store_back(eng_ctx *ctx, nchw_copy *c, eng_tensor *dst)
{
    return c->t.data ? cpu_relayout(ctx, dst, &c->t) : ENG_OK;
}

eng_status cpu_conv_gemm_any_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                                 const eng_tensor *b, const eng_conv_desc *d, eng_op_cache *cache)
{
    nchw_copy cx, cy;
    const eng_tensor *ux, *uy;
    eng_status s = as_nchw(ctx, &cx, x, true, cache, 0, &ux);
    if (s == ENG_OK)
        s = as_nchw(ctx, &cy, y, d->accumulate, cache, 1, &uy);
    if (s == ENG_OK)
        s = cpu_conv_gemm_fwd(ctx, (eng_tensor *)uy, ux, w, b, d);
    if (s == ENG_OK)
        s = store_back(ctx, &cy, y);
    eng_tensor_cleanup(&cx.t);
    eng_tensor_cleanup(&cy.t);
    return s;
}

eng_status cpu_conv_gemm_any_bwd_data(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *w,
                                      const eng_conv_desc *d, bool accumulate, eng_op_cache *cache)
{
    nchw_copy cx, cy;
    const eng_tensor *ux, *uy;
    eng_status s = as_nchw(ctx, &cy, dy, true, cache, 0, &uy);
    if (s == ENG_OK)
        s = as_nchw(ctx, &cx, dx, accumulate, cache, 1, &ux);
    if (s == ENG_OK)
        s = cpu_conv_gemm_bwd_data(ctx, (eng_tensor *)ux, uy, w, d, accumulate);
    if (s == ENG_OK)
        s = store_back(ctx, &cx, dx);
    eng_tensor_cleanup(&cx.t);
    eng_tensor_cleanup(&cy.t);
    return s;
}

eng_status cpu_conv_gemm_any_bwd_filter(eng_ctx *ctx, eng_tensor *dw, eng_tensor *db, const eng_tensor *x,
                                        const eng_tensor *dy, const eng_conv_desc *d, bool accumulate,
                                        eng_op_cache *cache)
{
    nchw_copy cx, cy;
    const eng_tensor *ux, *uy;
    eng_status s = as_nchw(ctx, &cx, x, true, cache, 0, &ux);
    if (s == ENG_OK)
        s = as_nchw(ctx, &cy, dy, true, cache, 1, &uy);
    if (s == ENG_OK)
        s = cpu_conv_gemm_bwd_filter(ctx, dw, db, ux, uy, d, accumulate);
    eng_tensor_cleanup(&cx.t);
    eng_tensor_cleanup(&cy.t);
    return s;
}
