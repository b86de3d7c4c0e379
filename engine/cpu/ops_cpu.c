/* The CPU backend: OpenMP loops for the elementwise, normalisation, pooling and loss
 * operations, OpenBLAS for fully connected layers, and convolutions through conv_*.c. */
#include "cpu.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Loops below this many elements run on one thread: a parallel region costs microseconds. */
#define PAR_MIN 32768

/* ---- context ---- */

eng_status cpu_dnnl_status(dnnl_status_t s, const char *what)
{
    if (s == dnnl_success)
        return ENG_OK;
    if (s == dnnl_out_of_memory)
        return eng_fail(ENG_ERR_NOMEM, "onednn: out of memory in %s", what);
    if (s == dnnl_unimplemented)
        return eng_fail(ENG_ERR_UNSUPPORTED, "onednn: %s is not implemented for these shapes", what);
    return eng_fail(ENG_ERR_BACKEND, "onednn: %s failed with status %d", what, (int)s);
}

static eng_status cpu_init(eng_ctx *ctx)
{
    cpu_impl *im = calloc(1, sizeof *im);
    if (!im)
        return eng_fail(ENG_ERR_NOMEM, "cpu: out of memory");
    eng_status s = cpu_dnnl_status(dnnl_engine_create(&im->engine, dnnl_cpu, 0), "engine_create");
    if (s == ENG_OK)
        s = cpu_dnnl_status(dnnl_stream_create(&im->stream, im->engine, dnnl_stream_default_flags), "stream_create");
    if (s != ENG_OK) {
        if (im->engine)
            dnnl_engine_destroy(im->engine);
        free(im);
        return s;
    }
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    im->block = (isa & dnnl_cpu_isa_avx512_core) == dnnl_cpu_isa_avx512_core ? 16 : 8;
    ctx->impl = im;
    openblas_set_num_threads(ctx->threads);
    snprintf(ctx->name, sizeof ctx->name, "cpu/%s", ctx->conv == ENG_CONV_GEMM ? "gemm" : "onednn");
    return ENG_OK;
}

static void cpu_fini(eng_ctx *ctx)
{
    cpu_impl *im = ctx->impl;
    if (!im)
        return;
    dnnl_stream_destroy(im->stream);
    dnnl_engine_destroy(im->engine);
    eng_free(im->scratch);
    free(im);
    ctx->impl = NULL;
}

float *cpu_scratch(eng_ctx *ctx, size_t floats)
{
    cpu_impl *im = ctx->impl;
    if (floats > im->scratch_cap) {
        eng_free(im->scratch);
        im->scratch = eng_alloc(floats * sizeof(float));
        im->scratch_cap = im->scratch ? floats : 0;
    }
    return im->scratch;
}

static eng_layout cpu_act_layout(const eng_ctx *ctx, int64_t channels)
{
    const cpu_impl *im = ctx->impl;
    if (ctx->conv == ENG_CONV_GEMM || channels % im->block)
        return ENG_LAYOUT_NCHW;
    return im->block == 16 ? ENG_LAYOUT_NCHW16C : ENG_LAYOUT_NCHW8C;
}

static eng_status cpu_tensor_alloc(eng_ctx *ctx, eng_tensor *t, int ndim, const int64_t *dims, eng_layout layout)
{
    (void)ctx;
    return eng_tensor_alloc_host(t, ndim, dims, layout);
}

static void cpu_tensor_free(eng_ctx *ctx, eng_tensor *t)
{
    (void)ctx;
    eng_tensor_cleanup(t);
}


static eng_status cpu_upload(eng_ctx *ctx, eng_tensor *dst, const eng_tensor *src) { return cpu_relayout(ctx, dst, src); }

static eng_status cpu_download(eng_ctx *ctx, eng_tensor *dst, const eng_tensor *src)
{
    return cpu_relayout(ctx, dst, src);
}

cpu_view cpu_view_of(const eng_tensor *t)
{
    cpu_view v = {0};
    v.N = t->dim[0];
    v.C = t->ndim >= 2 ? t->dim[1] : 1;
    v.H = t->ndim == 4 ? t->dim[2] : 1;
    v.W = t->ndim == 4 ? t->dim[3] : 1;
    v.S = v.H * v.W;
    switch (t->layout) {
    case ENG_LAYOUT_NHWC:
        v.CB = 1;
        v.X = v.C;
        break;
    case ENG_LAYOUT_NCHW8C:
    case ENG_LAYOUT_NCHW16C:
        v.X = eng_layout_block(t->layout);
        v.CB = v.C / v.X;
        break;
    default:
        v.CB = v.C;
        v.X = 1;
    }
    return v;
}

/* ---- elementwise on storage ---- */

static eng_status cpu_fill(eng_ctx *ctx, eng_tensor *t, float value)
{
    (void)ctx;
    int64_t n = eng_tensor_storage(t);
    float *p = t->data;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        p[i] = value;
    return ENG_OK;
}

eng_status cpu_relayout(eng_ctx *ctx, eng_tensor *dst, const eng_tensor *src)
{
    (void)ctx;
    if (dst->layout == src->layout) {
        if (dst->data != src->data)
            memcpy(dst->data, src->data, (size_t)eng_tensor_storage(src) * sizeof(float));
        return ENG_OK;
    }
    cpu_view d = cpu_view_of(dst), s = cpu_view_of(src);
    float *out = dst->data;
    const float *in = src->data;
#pragma omp parallel for collapse(2) schedule(static) if (d.N * d.C * d.S > PAR_MIN)
    for (int64_t n = 0; n < d.N; n++)
        for (int64_t c = 0; c < d.C; c++) {
            const float *ip = in + ((n * s.CB + c / s.X) * s.S) * s.X + c % s.X;
            float *op = out + ((n * d.CB + c / d.X) * d.S) * d.X + c % d.X;
            for (int64_t i = 0; i < d.S; i++)
                op[i * d.X] = ip[i * s.X];
        }
    return ENG_OK;
}

static eng_status cpu_relu_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x)
{
    (void)ctx;
    int64_t n = eng_tensor_storage(x);
    const float *in = x->data;
    float *out = y->data;
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        out[i] = in[i] > 0.0f ? in[i] : 0.0f;
    return ENG_OK;
}

static eng_status cpu_relu_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *y,
                               bool accumulate)
{
    (void)ctx;
    int64_t n = eng_tensor_storage(dy);
    const float *g = dy->data, *o = y->data;
    float *d = dx->data;
    if (accumulate) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            d[i] += o[i] > 0.0f ? g[i] : 0.0f;
    } else {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            d[i] = o[i] > 0.0f ? g[i] : 0.0f;
    }
    return ENG_OK;
}

static eng_status cpu_add(eng_ctx *ctx, eng_tensor *y, const eng_tensor *a, const eng_tensor *b)
{
    (void)ctx;
    int64_t n = eng_tensor_storage(y);
    const float *pa = a->data, *pb = b->data;
    float *py = y->data;
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        py[i] = pa[i] + pb[i];
    return ENG_OK;
}

static eng_status cpu_axpby(eng_ctx *ctx, eng_tensor *y, float alpha, const eng_tensor *x, float beta)
{
    (void)ctx;
    int64_t n = eng_tensor_storage(y);
    const float *px = x->data;
    float *py = y->data;
    if (beta == 0.0f) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            py[i] = alpha * px[i];
    } else {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            py[i] = alpha * px[i] + beta * py[i];
    }
    return ENG_OK;
}

/* Dropout masks are drawn per logical NCHW index so that every layout gets the same mask. */
static eng_status dropout_apply(eng_tensor *out, const eng_tensor *in, float p, uint64_t seed, bool accumulate)
{
    cpu_view v = cpu_view_of(in);
    const float keep = 1.0f / (1.0f - p);
    const float *pi = in->data;
    float *po = out->data;
#pragma omp parallel for collapse(2) schedule(static) if (v.N * v.C * v.S > PAR_MIN)
    for (int64_t n = 0; n < v.N; n++)
        for (int64_t c = 0; c < v.C; c++) {
            int64_t base = ((n * v.CB + c / v.X) * v.S) * v.X + c % v.X;
            uint64_t logical = (uint64_t)((n * v.C + c) * v.S);
            for (int64_t s = 0; s < v.S; s++) {
                int64_t i = base + s * v.X;
                float m = eng_uniform(seed, logical + (uint64_t)s) >= p ? keep : 0.0f;
                po[i] = (accumulate ? po[i] : 0.0f) + pi[i] * m;
            }
        }
    return ENG_OK;
}

static eng_status cpu_dropout_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, float p, uint64_t seed)
{
    (void)ctx;
    return dropout_apply(y, x, p, seed, false);
}

static eng_status cpu_dropout_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, float p, uint64_t seed,
                                  bool accumulate)
{
    (void)ctx;
    return dropout_apply(dx, dy, p, seed, accumulate);
}

/* ---- per-channel statistics ----
 * Each thread sums a contiguous range of (n, cb) rows into its own double accumulators;
 * the partial sums are added in thread order, so results do not depend on scheduling. */

typedef struct chan_acc {
    double *a, *b; /* [threads][C] */
    int threads;
} chan_acc;

static eng_status chan_acc_init(chan_acc *acc, int64_t C)
{
    acc->threads = omp_get_max_threads();
    acc->a = calloc((size_t)acc->threads * (size_t)C * 2, sizeof(double));
    if (!acc->a)
        return eng_fail(ENG_ERR_NOMEM, "cpu: out of memory for channel sums");
    acc->b = acc->a + (size_t)acc->threads * (size_t)C;
    return ENG_OK;
}

/* sums[c] += x and sums2[c] += x*y (y may be NULL: then x*x) over all of N, S. */
static void chan_sums(chan_acc *acc, const cpu_view *v, const float *x, const float *y, const float *ysub_mean,
                      double *sum_x, double *sum_xy)
{
    const int64_t rows = v->N * v->CB;
    const int T = acc->threads;
#pragma omp parallel num_threads(T) if (rows * v->S * v->X > PAR_MIN)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        double *a = acc->a + (size_t)t * (size_t)v->C, *b = acc->b + (size_t)t * (size_t)v->C;
        int64_t r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
        for (int64_t r = r0; r < r1; r++) {
            int64_t cb = r % v->CB;
            const float *px = x + r * v->S * v->X;
            const float *py = y ? y + r * v->S * v->X : px;
            if (v->X == 1) {
                float m = ysub_mean ? ysub_mean[cb] : 0.0f;
                double sa = 0, sb = 0;
#pragma omp simd reduction(+ : sa, sb)
                for (int64_t s = 0; s < v->S; s++) {
                    sa += px[s];
                    sb += (double)px[s] * (py[s] - m);
                }
                a[cb] += sa;
                b[cb] += sb;
            } else {
                /* eight lanes at a time in local accumulators the compiler keeps in registers */
                for (int64_t i0 = 0; i0 < v->X; i0 += 8) {
                    const int m = v->X - i0 < 8 ? (int)(v->X - i0) : 8;
                    double la[8] = {0}, lb[8] = {0};
                    float mu[8] = {0};
                    for (int i = 0; ysub_mean && i < m; i++)
                        mu[i] = ysub_mean[cb * v->X + i0 + i];
                    const float *qx = px + i0, *qy = py + i0;
                    if (m == 8) {
                        for (int64_t s = 0; s < v->S; s++, qx += v->X, qy += v->X)
#pragma omp simd
                            for (int i = 0; i < 8; i++) {
                                la[i] += qx[i];
                                lb[i] += (double)qx[i] * (qy[i] - mu[i]);
                            }
                    } else {
                        for (int64_t s = 0; s < v->S; s++, qx += v->X, qy += v->X)
                            for (int i = 0; i < m; i++) {
                                la[i] += qx[i];
                                lb[i] += (double)qx[i] * (qy[i] - mu[i]);
                            }
                    }
                    for (int i = 0; i < m; i++) {
                        a[cb * v->X + i0 + i] += la[i];
                        b[cb * v->X + i0 + i] += lb[i];
                    }
                }
            }
        }
    }
    for (int64_t c = 0; c < v->C; c++) {
        double sa = 0, sb = 0;
        for (int t = 0; t < T; t++) {
            sa += acc->a[(size_t)t * (size_t)v->C + (size_t)c];
            sb += acc->b[(size_t)t * (size_t)v->C + (size_t)c];
        }
        sum_x[c] = sa;
        sum_xy[c] = sb;
    }
}

/* Up to eight lanes of one [S][X] row: y = relu?(x * a + b + res), or y += that. */
static inline __attribute__((always_inline)) void affine_lanes(float *py, const float *px, const float *pr,
                                                               const float *a, const float *b, int64_t S, int64_t X,
                                                               int m, bool has_res, bool relu, bool acc)
{
    for (int64_t s = 0; s < S; s++, px += X, py += X, pr += has_res ? X : 0) {
        if (m == 8) {
#pragma omp simd
            for (int i = 0; i < 8; i++) {
                float o = px[i] * a[i] + b[i] + (has_res ? pr[i] : 0.0f);
                if (relu)
                    o = o > 0.0f ? o : 0.0f;
                py[i] = acc ? py[i] + o : o;
            }
        } else {
            for (int i = 0; i < m; i++) {
                float o = px[i] * a[i] + b[i] + (has_res ? pr[i] : 0.0f);
                if (relu)
                    o = o > 0.0f ? o : 0.0f;
                py[i] = acc ? py[i] + o : o;
            }
        }
    }
}

/* y = relu?(x * scale[c] + shift[c] + res), or y += that with accumulate; res may be NULL. */
static void chan_affine(const cpu_view *v, float *y, const float *x, const float *scale, const float *shift,
                        const float *res, bool relu, bool accumulate)
{
    const int64_t rows = v->N * v->CB;
#pragma omp parallel for schedule(static) if (rows * v->S * v->X > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        int64_t cb = r % v->CB;
        const float *px = x + r * v->S * v->X;
        const float *pr = res ? res + r * v->S * v->X : NULL;
        float *py = y + r * v->S * v->X;
        if (v->X == 1) {
            float a = scale[cb], b = shift ? shift[cb] : 0.0f;
            for (int64_t s = 0; s < v->S; s++) {
                float o = px[s] * a + b + (pr ? pr[s] : 0.0f);
                if (relu)
                    o = o > 0.0f ? o : 0.0f;
                py[s] = accumulate ? py[s] + o : o;
            }
        } else {
            const int mode = (pr ? 1 : 0) | (relu ? 2 : 0) | (accumulate ? 4 : 0);
            for (int64_t i0 = 0; i0 < v->X; i0 += 8) {
                const int m = v->X - i0 < 8 ? (int)(v->X - i0) : 8;
                float a8[8] = {0}, b8[8] = {0};
                for (int i = 0; i < m; i++) {
                    a8[i] = scale[cb * v->X + i0 + i];
                    b8[i] = shift ? shift[cb * v->X + i0 + i] : 0.0f;
                }
                /* the flags are constants in each case, so every loop compiles branch-free */
                switch (mode) {
                case 0: affine_lanes(py + i0, px + i0, px, a8, b8, v->S, v->X, m, false, false, false); break;
                case 1: affine_lanes(py + i0, px + i0, pr + i0, a8, b8, v->S, v->X, m, true, false, false); break;
                case 2: affine_lanes(py + i0, px + i0, px, a8, b8, v->S, v->X, m, false, true, false); break;
                case 3: affine_lanes(py + i0, px + i0, pr + i0, a8, b8, v->S, v->X, m, true, true, false); break;
                default:
                    affine_lanes(py + i0, px + i0, pr ? pr + i0 : px, a8, b8, v->S, v->X, m, pr != NULL, relu, true);
                }
            }
        }
    }
}

static eng_status cpu_channel_affine_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *scale,
                                         const eng_tensor *shift, bool relu)
{
    (void)ctx;
    cpu_view v = cpu_view_of(x);
    chan_affine(&v, y->data, x->data, scale->data, shift ? shift->data : NULL, NULL, relu, false);
    return ENG_OK;
}

static eng_status cpu_fold_bn(eng_ctx *ctx, eng_tensor *wf, eng_tensor *bf, eng_tensor *scale, const eng_tensor *w,
                              const eng_tensor *b,
                              const eng_tensor *gamma, const eng_tensor *beta, const eng_tensor *mean,
                              const eng_tensor *var, float eps)
{
    (void)ctx;
    const int64_t K = w->dim[0], per = w->dim[1] * w->dim[2] * w->dim[3];
    for (int64_t k = 0; k < K; k++) {
        double sc = gamma->data[k] / sqrt((double)var->data[k] + eps);
        for (int64_t i = 0; i < per; i++)
            wf->data[k * per + i] = (float)(w->data[k * per + i] * sc);
        bf->data[k] = (float)(beta->data[k] + ((b ? b->data[k] : 0.0) - mean->data[k]) * sc);
        if (scale)
            scale->data[k] = (float)sc;
    }
    return ENG_OK;
}

static eng_status cpu_channel_affine_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *scale,
                                         bool accumulate)
{
    (void)ctx;
    cpu_view v = cpu_view_of(dy);
    chan_affine(&v, dx->data, dy->data, scale->data, NULL, NULL, false, accumulate);
    return ENG_OK;
}

static eng_status cpu_channel_sums(eng_ctx *ctx, eng_tensor *sum_dy, eng_tensor *sum_dyx, const eng_tensor *dy,
                                   const eng_tensor *x)
{
    (void)ctx;
    cpu_view v = cpu_view_of(dy);
    chan_acc acc;
    eng_status s = chan_acc_init(&acc, v.C);
    if (s != ENG_OK)
        return s;
    double *sa = calloc((size_t)v.C * 2, sizeof(double));
    if (!sa) {
        free(acc.a);
        return eng_fail(ENG_ERR_NOMEM, "cpu: out of memory for channel sums");
    }
    chan_sums(&acc, &v, dy->data, x ? x->data : NULL, NULL, sa, sa + v.C);
    for (int64_t c = 0; c < v.C; c++) {
        if (sum_dy)
            sum_dy->data[c] = (float)sa[c];
        if (sum_dyx)
            sum_dyx->data[c] = (float)sa[v.C + c];
    }
    free(sa);
    free(acc.a);
    return ENG_OK;
}

static eng_status cpu_bn_train_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *gamma,
                                   const eng_tensor *beta, eng_tensor *running_mean, eng_tensor *running_var,
                                   eng_tensor *save_mean, eng_tensor *save_invstd, float momentum, float eps,
                                   const eng_tensor *residual, bool relu)
{
    (void)ctx;
    cpu_view v = cpu_view_of(x);
    const int64_t C = v.C, count = v.N * v.S;
    chan_acc acc;
    eng_status s = chan_acc_init(&acc, C);
    if (s != ENG_OK)
        return s;
    double *sum = calloc((size_t)C * 2, sizeof(double));
    float *ab = malloc((size_t)C * 2 * sizeof(float));
    if (!sum || !ab) {
        free(acc.a);
        free(sum);
        free(ab);
        return eng_fail(ENG_ERR_NOMEM, "cpu: out of memory for batch norm");
    }
    /* One pass for the sum and the sum of squares: in double, E[x^2] - mean^2 loses nothing
     * that matters for float activations (cancellation needs |mean| / std beyond ~1e6). */
    double *sq = sum + C;
    chan_sums(&acc, &v, x->data, NULL, NULL, sum, sq);
    for (int64_t c = 0; c < C; c++) {
        double mean = sum[c] / (double)count;
        double var = sq[c] / (double)count - mean * mean;
        if (var < 0)
            var = 0;
        double invstd = 1.0 / sqrt(var + eps);
        save_mean->data[c] = (float)mean;
        save_invstd->data[c] = (float)invstd;
        ab[c] = (float)(gamma->data[c] * invstd);
        ab[C + c] = (float)(beta->data[c] - mean * gamma->data[c] * invstd);
        double unbiased = var * (double)count / (double)(count - 1);
        running_mean->data[c] = (float)((1.0 - momentum) * running_mean->data[c] + momentum * mean);
        running_var->data[c] = (float)((1.0 - momentum) * running_var->data[c] + momentum * unbiased);
    }
    running_mean->version++;
    running_var->version++;
    chan_affine(&v, y->data, x->data, ab, ab + C, residual ? residual->data : NULL, relu, false);
    free(ab);
    free(sum);
    free(acc.a);
    return ENG_OK;
}

static eng_status cpu_bn_train_bwd(eng_ctx *ctx, eng_tensor *dx, eng_tensor *dgamma, eng_tensor *dbeta,
                                   const eng_tensor *dy, const eng_tensor *x, const eng_tensor *gamma,
                                   const eng_tensor *save_mean, const eng_tensor *save_invstd, bool accumulate)
{
    (void)ctx;
    cpu_view v = cpu_view_of(x);
    const int64_t C = v.C, count = v.N * v.S;
    chan_acc acc;
    eng_status s = chan_acc_init(&acc, C);
    if (s != ENG_OK)
        return s;
    double *sums = calloc((size_t)C * 2, sizeof(double));
    float *k = malloc((size_t)C * 3 * sizeof(float));
    if (!sums || !k) {
        free(acc.a);
        free(sums);
        free(k);
        return eng_fail(ENG_ERR_NOMEM, "cpu: out of memory for batch norm");
    }
    /* sum_dy and sum dy * (x - mean) */
    chan_sums(&acc, &v, dy->data, x->data, save_mean->data, sums, sums + C);
    for (int64_t c = 0; c < C; c++) {
        double is = save_invstd->data[c];
        double g_beta = sums[c], g_gamma = sums[C + c] * is;
        if (dbeta)
            dbeta->data[c] = (float)((accumulate ? dbeta->data[c] : 0.0) + g_beta);
        if (dgamma)
            dgamma->data[c] = (float)((accumulate ? dgamma->data[c] : 0.0) + g_gamma);
        /* dx = gamma * is * (dy - mean(dy) - (x - mean) * is^2 * mean(dy * (x - mean))) */
        double a = gamma->data[c] * is;
        k[c] = (float)a;
        k[C + c] = (float)(a * is * is * sums[C + c] / (double)count);
        k[2 * C + c] = (float)(a * (sums[c] / (double)count) - k[C + c] * save_mean->data[c]);
    }
    if (dx) {
        const int64_t rows = v.N * v.CB;
        const float *py = dy->data, *px = x->data;
        float *pd = dx->data;
#pragma omp parallel for schedule(static) if (rows * v.S * v.X > PAR_MIN)
        for (int64_t r = 0; r < rows; r++) {
            int64_t cb = r % v.CB;
            int64_t off = r * v.S * v.X;
            for (int64_t sidx = 0; sidx < v.S; sidx++) {
#pragma omp simd
                for (int64_t i = 0; i < v.X; i++) {
                    int64_t c = cb * v.X + i, e = off + sidx * v.X + i;
                    /* a*dy - b*x - c' where b = k[C+c], c' = a*mean(dy) - b*mean */
                    float o = k[c] * py[e] - k[C + c] * px[e] - k[2 * C + c];
                    pd[e] = accumulate ? pd[e] + o : o;
                }
            }
        }
    }
    free(k);
    free(sums);
    free(acc.a);
    return ENG_OK;
}

/* ---- pooling ---- */

static eng_status cpu_maxpool_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, int k, int stride, int pad,
                                  eng_op_cache *cache)
{
    (void)ctx;
    (void)cache;
    cpu_view vx = cpu_view_of(x), vy = cpu_view_of(y);
    const int64_t X = vx.X, rows = vx.N * vx.CB;
    const float *in = x->data;
    float *out = y->data;
#pragma omp parallel for schedule(static) if (rows * vy.S * X > PAR_MIN / 4)
    for (int64_t r = 0; r < rows; r++) {
        const float *ip = in + r * vx.S * X;
        float *op = out + r * vy.S * X;
        for (int64_t p = 0; p < vy.H; p++)
            for (int64_t q = 0; q < vy.W; q++) {
                float *o = op + (p * vy.W + q) * X;
                for (int64_t i = 0; i < X; i++)
                    o[i] = -INFINITY;
                for (int a = 0; a < k; a++) {
                    int64_t h = p * stride - pad + a;
                    if (h < 0 || h >= vx.H)
                        continue;
                    for (int b = 0; b < k; b++) {
                        int64_t w = q * stride - pad + b;
                        if (w < 0 || w >= vx.W)
                            continue;
                        const float *e = ip + (h * vx.W + w) * X;
#pragma omp simd
                        for (int64_t i = 0; i < X; i++)
                            o[i] = e[i] > o[i] || isnan(e[i]) ? e[i] : o[i];
                    }
                }
            }
    }
    return ENG_OK;
}

static eng_status cpu_maxpool_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *x, int k,
                                  int stride, int pad, bool accumulate, eng_op_cache *cache)
{
    (void)ctx;
    (void)cache;
    cpu_view vx = cpu_view_of(x), vy = cpu_view_of(dy);
    const int64_t X = vx.X, rows = vx.N * vx.CB;
    const float *in = x->data, *g = dy->data;
    float *d = dx->data;
    if (!accumulate)
        memset(d, 0, (size_t)eng_tensor_storage(dx) * sizeof(float));
#pragma omp parallel for schedule(static) if (rows * vy.S * X > PAR_MIN / 4)
    for (int64_t r = 0; r < rows; r++) {
        const float *ip = in + r * vx.S * X;
        const float *gp = g + r * vy.S * X;
        float *dp = d + r * vx.S * X;
        /* Branch-free argmax of up to 16 lanes at a time (the lanes of a blocked layout are
         * contiguous): the first maximum wins, and a NaN, once seen, stays, as in the forward. */
        for (int64_t p = 0; p < vy.H; p++)
            for (int64_t q = 0; q < vy.W; q++)
                for (int64_t i0 = 0; i0 < X; i0 += 16) {
                    const int m = X - i0 < 16 ? (int)(X - i0) : 16;
                    float best[16];
                    int32_t arg[16];
                    int first = 1;
                    for (int a = 0; a < k; a++) {
                        int64_t h = p * stride - pad + a;
                        if (h < 0 || h >= vx.H)
                            continue;
                        for (int b = 0; b < k; b++) {
                            int64_t w = q * stride - pad + b;
                            if (w < 0 || w >= vx.W)
                                continue;
                            const float *e = ip + (h * vx.W + w) * X + i0;
                            const int32_t idx = (int32_t)(h * vx.W + w);
                            if (first) {
                                for (int i = 0; i < m; i++)
                                    best[i] = e[i], arg[i] = idx;
                                first = 0;
                                continue;
                            }
#pragma omp simd
                            for (int i = 0; i < m; i++) {
                                float v = e[i], bv = best[i];
                                int take = (v > bv) | ((v != v) & (bv == bv));
                                best[i] = take ? v : bv;
                                arg[i] = take ? idx : arg[i];
                            }
                        }
                    }
                    if (first)
                        continue;
                    const float *gq = gp + (p * vy.W + q) * X + i0;
                    for (int i = 0; i < m; i++)
                        dp[(int64_t)arg[i] * X + i0 + i] += gq[i];
                }
    }
    return ENG_OK;
}

static eng_status cpu_gap_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x)
{
    (void)ctx;
    cpu_view v = cpu_view_of(x);
    const float *in = x->data;
    float *out = y->data;
    const float inv = 1.0f / (float)v.S;
#pragma omp parallel for schedule(static) if (v.N * v.CB * v.S * v.X > PAR_MIN)
    for (int64_t r = 0; r < v.N * v.CB; r++) {
        int64_t n = r / v.CB, cb = r % v.CB;
        const float *p = in + r * v.S * v.X;
        float *o = out + n * v.C + cb * v.X;
        if (v.X == 1) {
            double acc = 0;
            for (int64_t s = 0; s < v.S; s++)
                acc += p[s];
            o[0] = (float)acc * inv;
        } else {
            float acc[64] = {0};
            for (int64_t i0 = 0; i0 < v.X; i0 += 64) {
                int64_t m = v.X - i0 < 64 ? v.X - i0 : 64;
                memset(acc, 0, sizeof acc);
                for (int64_t s = 0; s < v.S; s++)
                    for (int64_t i = 0; i < m; i++)
                        acc[i] += p[s * v.X + i0 + i];
                for (int64_t i = 0; i < m; i++)
                    o[i0 + i] = acc[i] * inv;
            }
        }
    }
    return ENG_OK;
}

static eng_status cpu_gap_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, bool accumulate)
{
    (void)ctx;
    cpu_view v = cpu_view_of(dx);
    const float *g = dy->data;
    float *d = dx->data;
    const float inv = 1.0f / (float)v.S;
#pragma omp parallel for schedule(static) if (v.N * v.CB * v.S * v.X > PAR_MIN)
    for (int64_t r = 0; r < v.N * v.CB; r++) {
        int64_t n = r / v.CB, cb = r % v.CB;
        float *p = d + r * v.S * v.X;
        const float *gi = g + n * v.C + cb * v.X;
        for (int64_t s = 0; s < v.S; s++)
            for (int64_t i = 0; i < v.X; i++)
                p[s * v.X + i] = (accumulate ? p[s * v.X + i] : 0.0f) + gi[i] * inv;
    }
    return ENG_OK;
}

/* ---- bilinear resize (align_corners = false) ---- */

typedef struct lerp {
    int64_t i0, i1;
    float w0, w1;
} lerp;

static void lerp_table(lerp *t, int64_t out, int64_t in)
{
    const double scale = (double)in / (double)out;
    for (int64_t o = 0; o < out; o++) {
        double src = ((double)o + 0.5) * scale - 0.5;
        if (src < 0)
            src = 0;
        int64_t i0 = (int64_t)src;
        if (i0 > in - 1)
            i0 = in - 1;
        int64_t i1 = i0 + (i0 < in - 1 ? 1 : 0);
        float l = (float)(src - (double)i0);
        t[o] = (lerp){i0, i1, 1.0f - l, l};
    }
}

static eng_status resize_tables(lerp **th, lerp **tw, const eng_tensor *small, const eng_tensor *big)
{
    *th = malloc((size_t)(big->dim[2] + big->dim[3]) * sizeof(lerp));
    if (!*th)
        return eng_fail(ENG_ERR_NOMEM, "upsample: out of memory");
    *tw = *th + big->dim[2];
    lerp_table(*th, big->dim[2], small->dim[2]);
    lerp_table(*tw, big->dim[3], small->dim[3]);
    return ENG_OK;
}

static eng_status cpu_upsample_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x)
{
    (void)ctx;
    lerp *th, *tw;
    eng_status s = resize_tables(&th, &tw, x, y);
    if (s != ENG_OK)
        return s;
    const int64_t planes = x->dim[0] * x->dim[1], H = x->dim[2], W = x->dim[3], P = y->dim[2], Q = y->dim[3];
#pragma omp parallel for schedule(static) if (planes * P * Q > PAR_MIN)
    for (int64_t pl = 0; pl < planes; pl++) {
        const float *ip = x->data + pl * H * W;
        float *op = y->data + pl * P * Q;
        for (int64_t p = 0; p < P; p++) {
            const lerp a = th[p];
            for (int64_t q = 0; q < Q; q++) {
                const lerp b = tw[q];
                op[p * Q + q] = a.w0 * (b.w0 * ip[a.i0 * W + b.i0] + b.w1 * ip[a.i0 * W + b.i1]) +
                                a.w1 * (b.w0 * ip[a.i1 * W + b.i0] + b.w1 * ip[a.i1 * W + b.i1]);
            }
        }
    }
    free(th);
    return ENG_OK;
}

static eng_status cpu_upsample_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, bool accumulate)
{
    (void)ctx;
    lerp *th, *tw;
    eng_status s = resize_tables(&th, &tw, dx, dy);
    if (s != ENG_OK)
        return s;
    const int64_t planes = dx->dim[0] * dx->dim[1], H = dx->dim[2], W = dx->dim[3], P = dy->dim[2], Q = dy->dim[3];
    if (!accumulate)
        memset(dx->data, 0, (size_t)eng_tensor_storage(dx) * sizeof(float));
#pragma omp parallel for schedule(static) if (planes * P * Q > PAR_MIN)
    for (int64_t pl = 0; pl < planes; pl++) {
        float *ip = dx->data + pl * H * W;
        const float *op = dy->data + pl * P * Q;
        for (int64_t p = 0; p < P; p++) {
            const lerp a = th[p];
            for (int64_t q = 0; q < Q; q++) {
                const lerp b = tw[q];
                float g = op[p * Q + q];
                ip[a.i0 * W + b.i0] += a.w0 * b.w0 * g;
                ip[a.i0 * W + b.i1] += a.w0 * b.w1 * g;
                ip[a.i1 * W + b.i0] += a.w1 * b.w0 * g;
                ip[a.i1 * W + b.i1] += a.w1 * b.w1 * g;
            }
        }
    }
    free(th);
    return ENG_OK;
}

/* ---- fully connected through OpenBLAS ---- */

static eng_status cpu_linear_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                                 const eng_tensor *b)
{
    (void)ctx;
    const int N = (int)x->dim[0], In = (int)x->dim[1], Out = (int)w->dim[0];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, Out, In, 1.0f, x->data, In, w->data, In, 0.0f, y->data, Out);
    if (b)
        for (int n = 0; n < N; n++)
            for (int o = 0; o < Out; o++)
                y->data[(size_t)n * Out + o] += b->data[o];
    return ENG_OK;
}

static eng_status cpu_linear_bwd_data(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *w,
                                      bool accumulate)
{
    (void)ctx;
    const int N = (int)dy->dim[0], In = (int)w->dim[1], Out = (int)w->dim[0];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, In, Out, 1.0f, dy->data, Out, w->data, In,
                accumulate ? 1.0f : 0.0f, dx->data, In);
    return ENG_OK;
}

static eng_status cpu_linear_bwd_weight(eng_ctx *ctx, eng_tensor *dw, eng_tensor *db, const eng_tensor *x,
                                        const eng_tensor *dy, bool accumulate)
{
    (void)ctx;
    const int N = (int)x->dim[0], In = (int)x->dim[1], Out = (int)dw->dim[0];
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Out, In, N, 1.0f, dy->data, Out, x->data, In,
                accumulate ? 1.0f : 0.0f, dw->data, In);
    if (db)
        for (int o = 0; o < Out; o++) {
            double s = 0;
            for (int n = 0; n < N; n++)
                s += dy->data[(size_t)n * Out + o];
            db->data[o] = (float)((accumulate ? db->data[o] : 0.0) + s);
        }
    return ENG_OK;
}

/* ---- loss ---- */

static eng_status cpu_xent(eng_ctx *ctx, const eng_tensor *logits, const int32_t *labels, double *loss_sum,
                           eng_tensor *per_example, eng_tensor *dlogits, float grad_scale)
{
    (void)ctx;
    const int64_t N = logits->dim[0], K = logits->dim[1];
    double total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static) if (N * K > PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        const float *z = logits->data + n * K;
        float m = z[0];
        for (int64_t k = 1; k < K; k++)
            m = z[k] > m ? z[k] : m;
        double se = 0;
        for (int64_t k = 0; k < K; k++)
            se += exp((double)z[k] - m);
        double lse = m + log(se);
        double l = lse - z[labels[n]];
        total += l;
        if (per_example)
            per_example->data[n] = (float)l;
        if (dlogits) {
            float *g = dlogits->data + n * K;
            for (int64_t k = 0; k < K; k++)
                g[k] = (float)((exp((double)z[k] - lse) - (k == labels[n] ? 1.0 : 0.0)) * grad_scale);
        }
    }
    if (loss_sum)
        *loss_sum = total;
    return ENG_OK;
}

/* ---- optimiser ---- */

static eng_status cpu_sgd_step(eng_ctx *ctx, eng_tensor *p, const eng_tensor *g, eng_tensor *buf,
                               const eng_sgd_desc *d, bool first_step)
{
    (void)ctx;
    const int64_t n = eng_tensor_storage(p);
    float *pp = p->data, *pb = buf ? buf->data : NULL;
    const float *pg = g->data;
    const float lr = d->lr, mom = d->momentum, damp = d->dampening, wd = d->weight_decay;
    const bool nest = d->nesterov;
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float gi = pg[i] + wd * pp[i];
        if (pb) {
            float b = first_step ? gi : mom * pb[i] + (1.0f - damp) * gi;
            pb[i] = b;
            gi = nest ? gi + mom * b : b;
        }
        pp[i] -= lr * gi;
    }
    if (buf)
        buf->version++;
    return ENG_OK;
}

/* ---- convolution dispatch ----
 * oneDNN unless the context asks for im2col, or oneDNN has only a reference kernel for the
 * shape (ENG_ERR_UNSUPPORTED): then im2col + GEMM, converting blocked layouts around it. */

static bool gemm_first(const eng_ctx *ctx, const eng_tensor *a, const eng_tensor *b)
{
    return ctx->conv == ENG_CONV_GEMM && a->layout == ENG_LAYOUT_NCHW && b->layout == ENG_LAYOUT_NCHW;
}

static eng_status cpu_conv2d_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                                 const eng_tensor *b, const eng_conv_desc *d, eng_op_cache *cache)
{
    if (gemm_first(ctx, x, y))
        return cpu_conv_gemm_fwd(ctx, y, x, w, b, d);
    eng_status s = cpu_conv_onednn_fwd(ctx, y, x, w, b, d, cache);
    return s == ENG_ERR_UNSUPPORTED ? cpu_conv_gemm_any_fwd(ctx, y, x, w, b, d, cache) : s;
}

static eng_status cpu_conv2d_bwd_data(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *w,
                                      const eng_conv_desc *d, bool accumulate, eng_op_cache *cache)
{
    if (gemm_first(ctx, dx, dy))
        return cpu_conv_gemm_bwd_data(ctx, dx, dy, w, d, accumulate);
    eng_status s = cpu_conv_onednn_bwd_data(ctx, dx, dy, w, d, accumulate, cache);
    return s == ENG_ERR_UNSUPPORTED ? cpu_conv_gemm_any_bwd_data(ctx, dx, dy, w, d, accumulate, cache) : s;
}

static eng_status cpu_conv2d_bwd_filter(eng_ctx *ctx, eng_tensor *dw, eng_tensor *db, const eng_tensor *x,
                                        const eng_tensor *dy, const eng_conv_desc *d, bool accumulate,
                                        eng_op_cache *cache)
{
    if (gemm_first(ctx, x, dy))
        return cpu_conv_gemm_bwd_filter(ctx, dw, db, x, dy, d, accumulate);
    eng_status s = cpu_conv_onednn_bwd_filter(ctx, dw, db, x, dy, d, accumulate, cache);
    return s == ENG_ERR_UNSUPPORTED ? cpu_conv_gemm_any_bwd_filter(ctx, dw, db, x, dy, d, accumulate, cache) : s;
}

const eng_backend eng_cpu_backend = {
    .name = "cpu",
    .dev = ENG_DEV_CPU,
    .init = cpu_init,
    .fini = cpu_fini,
    .act_layout = cpu_act_layout,
    .tensor_alloc = cpu_tensor_alloc,
    .tensor_free = cpu_tensor_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .conv2d_fwd = cpu_conv2d_fwd,
    .conv2d_bwd_data = cpu_conv2d_bwd_data,
    .conv2d_bwd_filter = cpu_conv2d_bwd_filter,
    .bn_train_fwd = cpu_bn_train_fwd,
    .bn_train_bwd = cpu_bn_train_bwd,
    .fold_bn = cpu_fold_bn,
    .channel_affine_fwd = cpu_channel_affine_fwd,
    .channel_affine_bwd = cpu_channel_affine_bwd,
    .channel_sums = cpu_channel_sums,
    .relu_fwd = cpu_relu_fwd,
    .relu_bwd = cpu_relu_bwd,
    .add = cpu_add,
    .axpby = cpu_axpby,
    .fill = cpu_fill,
    .copy = cpu_relayout,
    .dropout_fwd = cpu_dropout_fwd,
    .dropout_bwd = cpu_dropout_bwd,
    .maxpool_fwd = cpu_maxpool_fwd,
    .maxpool_bwd = cpu_maxpool_bwd,
    .gap_fwd = cpu_gap_fwd,
    .gap_bwd = cpu_gap_bwd,
    .upsample_fwd = cpu_upsample_fwd,
    .upsample_bwd = cpu_upsample_bwd,
    .linear_fwd = cpu_linear_fwd,
    .linear_bwd_data = cpu_linear_bwd_data,
    .linear_bwd_weight = cpu_linear_bwd_weight,
    .xent = cpu_xent,
    .sgd_step = cpu_sgd_step,
    .margin_loss = cpu_margin_loss,
    .dlr_loss = cpu_dlr_loss,
    .linf_sign_step = cpu_linf_sign_step,
    .apgd_step = cpu_apgd_step,
    .linf_random_start = cpu_linf_random_start,
    .move_rows = cpu_move_rows,
    .linf_dist = cpu_linf_dist,
    .feature_distance = cpu_feature_distance,
};
