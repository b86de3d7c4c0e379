/* Convolution as im2col + OpenBLAS sgemm, one image at a time, NCHW only. It is the portable
 * path and the yardstick the oneDNN path is measured against in bench/. */
#include "cpu.h"

#include <cblas.h>
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
static void im2col(const geo *g, const float *x, float *cols)
{
    const int64_t PQ = g->P * g->Q;
#pragma omp parallel for collapse(2) schedule(static)
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

/* dx[c][h][w] += cols[...]: the adjoint of im2col. Parallel over channels, so no races. */
static void col2im(const geo *g, const float *cols, float *dx)
{
    const int64_t PQ = g->P * g->Q;
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < g->C; c++)
        for (int64_t r = 0; r < g->R; r++)
            for (int64_t s = 0; s < g->S; s++) {
                const float *row = cols + ((c * g->R + r) * g->S + s) * PQ;
                for (int64_t p = 0; p < g->P; p++) {
                    int64_t h = p * g->st - g->pad + r;
                    if (h < 0 || h >= g->H)
                        continue;
                    float *o = dx + (c * g->H + h) * g->W;
                    for (int64_t q = 0; q < g->Q; q++) {
                        int64_t w = q * g->st - g->pad + s;
                        if (w >= 0 && w < g->W)
                            o[w] += row[p * g->Q + q];
                    }
                }
            }
}

eng_status cpu_conv_gemm_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                             const eng_tensor *b, const eng_conv_desc *d)
{
    geo g = geo_of(x, w, y, d);
    const int64_t CRS = g.C * g.R * g.S, PQ = g.P * g.Q;
    float *cols = NULL;
    if (!is_pointwise(&g) && !(cols = cpu_scratch(ctx, (size_t)(CRS * PQ))))
        return eng_fail(ENG_ERR_NOMEM, "conv: out of memory for im2col");
    for (int64_t n = 0; n < g.N; n++) {
        const float *xn = x->data + n * g.C * g.H * g.W;
        float *yn = y->data + n * g.K * PQ;
        if (cols)
            im2col(&g, xn, cols);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)g.K, (int)PQ, (int)CRS, 1.0f, w->data, (int)CRS,
                    cols ? cols : xn, (int)PQ, d->accumulate ? 1.0f : 0.0f, yn, (int)PQ);
        if (b || d->relu) {
#pragma omp parallel for schedule(static)
            for (int64_t k = 0; k < g.K; k++) {
                float bk = b ? b->data[k] : 0.0f, *row = yn + k * PQ;
                for (int64_t i = 0; i < PQ; i++) {
                    float v = row[i] + bk;
                    row[i] = d->relu && v < 0.0f ? 0.0f : v;
                }
            }
        }
    }
    return ENG_OK;
}

eng_status cpu_conv_gemm_bwd_data(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *w,
                                  const eng_conv_desc *d, bool accumulate)
{
    geo g = geo_of(dx, w, dy, d);
    const int64_t CRS = g.C * g.R * g.S, PQ = g.P * g.Q;
    const int pw = is_pointwise(&g);
    float *cols = NULL;
    if (!pw && !(cols = cpu_scratch(ctx, (size_t)(CRS * PQ))))
        return eng_fail(ENG_ERR_NOMEM, "conv: out of memory for col2im");
    if (!accumulate && !pw)
        memset(dx->data, 0, (size_t)eng_tensor_storage(dx) * sizeof(float));
    for (int64_t n = 0; n < g.N; n++) {
        float *dxn = dx->data + n * g.C * g.H * g.W;
        const float *dyn = dy->data + n * g.K * PQ;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)CRS, (int)PQ, (int)g.K, 1.0f, w->data, (int)CRS,
                    dyn, (int)PQ, pw && accumulate ? 1.0f : 0.0f, pw ? dxn : cols, (int)PQ);
        if (!pw)
            col2im(&g, cols, dxn);
    }
    return ENG_OK;
}

eng_status cpu_conv_gemm_bwd_filter(eng_ctx *ctx, eng_tensor *dw, eng_tensor *db, const eng_tensor *x,
                                    const eng_tensor *dy, const eng_conv_desc *d, bool accumulate)
{
    geo g = geo_of(x, dw, dy, d);
    const int64_t CRS = g.C * g.R * g.S, PQ = g.P * g.Q;
    float *cols = NULL;
    if (!is_pointwise(&g) && !(cols = cpu_scratch(ctx, (size_t)(CRS * PQ))))
        return eng_fail(ENG_ERR_NOMEM, "conv: out of memory for im2col");
    for (int64_t n = 0; n < g.N; n++) {
        const float *xn = x->data + n * g.C * g.H * g.W;
        const float *dyn = dy->data + n * g.K * PQ;
        if (cols)
            im2col(&g, xn, cols);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)g.K, (int)CRS, (int)PQ, 1.0f, dyn, (int)PQ,
                    cols ? cols : xn, (int)PQ, (accumulate || n > 0) ? 1.0f : 0.0f, dw->data, (int)CRS);
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

/* ---- any layout: NCHW copies of blocked operands, freed on return ---- */

typedef struct nchw_copy {
    eng_tensor t;
    const eng_tensor *orig;
} nchw_copy;

/* *use points at src itself when it is NCHW, else at a fresh NCHW copy (converted when `load`). */
static eng_status as_nchw(eng_ctx *ctx, nchw_copy *c, const eng_tensor *src, bool load, const eng_tensor **use)
{
    memset(c, 0, sizeof *c);
    c->orig = src;
    if (src->layout == ENG_LAYOUT_NCHW) {
        *use = src;
        return ENG_OK;
    }
    eng_status s = eng_tensor_alloc_host(&c->t, 4, src->dim, ENG_LAYOUT_NCHW);
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
                                 const eng_tensor *b, const eng_conv_desc *d)
{
    nchw_copy cx, cy;
    const eng_tensor *ux, *uy;
    eng_status s = as_nchw(ctx, &cx, x, true, &ux);
    if (s == ENG_OK)
        s = as_nchw(ctx, &cy, y, d->accumulate, &uy);
    if (s == ENG_OK)
        s = cpu_conv_gemm_fwd(ctx, (eng_tensor *)uy, ux, w, b, d);
    if (s == ENG_OK)
        s = store_back(ctx, &cy, y);
    eng_tensor_cleanup(&cx.t);
    eng_tensor_cleanup(&cy.t);
    return s;
}

eng_status cpu_conv_gemm_any_bwd_data(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *w,
                                      const eng_conv_desc *d, bool accumulate)
{
    nchw_copy cx, cy;
    const eng_tensor *ux, *uy;
    eng_status s = as_nchw(ctx, &cy, dy, true, &uy);
    if (s == ENG_OK)
        s = as_nchw(ctx, &cx, dx, accumulate, &ux);
    if (s == ENG_OK)
        s = cpu_conv_gemm_bwd_data(ctx, (eng_tensor *)ux, uy, w, d, accumulate);
    if (s == ENG_OK)
        s = store_back(ctx, &cx, dx);
    eng_tensor_cleanup(&cx.t);
    eng_tensor_cleanup(&cy.t);
    return s;
}

eng_status cpu_conv_gemm_any_bwd_filter(eng_ctx *ctx, eng_tensor *dw, eng_tensor *db, const eng_tensor *x,
                                        const eng_tensor *dy, const eng_conv_desc *d, bool accumulate)
{
    nchw_copy cx, cy;
    const eng_tensor *ux, *uy;
    eng_status s = as_nchw(ctx, &cx, x, true, &ux);
    if (s == ENG_OK)
        s = as_nchw(ctx, &cy, dy, true, &uy);
    if (s == ENG_OK)
        s = cpu_conv_gemm_bwd_filter(ctx, dw, db, ux, uy, d, accumulate);
    eng_tensor_cleanup(&cx.t);
    eng_tensor_cleanup(&cy.t);
    return s;
}
