/* Every operation's forward against a double-precision reference, and every backward against
 * central differences of that reference (h = 1e-6 in double), in each activation layout and
 * on both convolution paths. Tolerance: relative L2 error <= 1e-4 unless a case says otherwise. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "t.h"

#define TOL 1e-4
#define FD_H 1e-6

static eng_ctx *ctx_onednn, *ctx_gemm;

/* ---- helpers ---- */

static void fill_uniform(float *p, long n, uint64_t seed, float lo, float hi)
{
    for (long i = 0; i < n; i++)
        p[i] = lo + (hi - lo) * eng_uniform(seed, (uint64_t)i);
}

/* Values bounded away from zero (relu kinks) and pairwise distinct (max-pool ties). */
static void fill_distinct(float *p, long n, uint64_t seed)
{
    for (long i = 0; i < n; i++) {
        float u = eng_uniform(seed, (uint64_t)i);
        float sign = eng_uniform(seed ^ 0xabc, (uint64_t)i) < 0.5f ? -1.0f : 1.0f;
        p[i] = sign * (0.05f + u) + 1e-4f * (float)(i % 97);
    }
}

static double *to_double(const float *p, long n)
{
    double *d = malloc((size_t)n * sizeof(double));
    for (long i = 0; i < n; i++)
        d[i] = p[i];
    return d;
}

static double rel_err_fd(const float *a, const double *b, long n)
{
    double num = 0, den = 0;
    for (long i = 0; i < n; i++) {
        double d = a[i] - b[i];
        num += d * d;
        den += b[i] * b[i];
    }
    return sqrt(num) / (den > 0 ? sqrt(den) : 1e-30);
}

/* A copy of an NCHW host tensor in another layout. */
static eng_tensor in_layout(const eng_tensor *src, eng_layout l)
{
    eng_tensor t = ENG_TENSOR_INIT;
    eng_tensor_alloc_host(&t, src->ndim, src->dim, src->ndim == 4 ? l : ENG_LAYOUT_NCHW);
    eng_tensor_copy_host(&t, src);
    return t;
}

static eng_tensor to_nchw(const eng_tensor *src)
{
    eng_tensor t = ENG_TENSOR_INIT;
    eng_tensor_alloc_host(&t, src->ndim, src->dim, ENG_LAYOUT_NCHW);
    eng_tensor_copy_host(&t, src);
    return t;
}

/* Central differences of loss(param) over every element of param. */
typedef double (*loss_fn)(void *c);
static void fd(double *param, long n, loss_fn f, void *c, double *out)
{
    for (long i = 0; i < n; i++) {
        double s = param[i];
        param[i] = s + FD_H;
        double lp = f(c);
        param[i] = s - FD_H;
        double lm = f(c);
        param[i] = s;
        out[i] = (lp - lm) / (2 * FD_H);
    }
}

static const eng_layout layouts[] = {ENG_LAYOUT_NCHW, ENG_LAYOUT_NHWC, ENG_LAYOUT_NCHW8C, ENG_LAYOUT_NCHW16C};
#define N_LAYOUTS 4

/* ---- convolution ---- */

typedef struct conv_ref {
    int N, C, H, W, K, R, S, P, Q, st, pad;
    double *x, *w, *b, *g, *y;
    int relu;
} conv_ref;

static void conv_ref_fwd(conv_ref *c)
{
    for (int n = 0; n < c->N; n++)
        for (int k = 0; k < c->K; k++)
            for (int p = 0; p < c->P; p++)
                for (int q = 0; q < c->Q; q++) {
                    double s = c->b ? c->b[k] : 0;
                    for (int ch = 0; ch < c->C; ch++)
                        for (int r = 0; r < c->R; r++)
                            for (int u = 0; u < c->S; u++) {
                                int h = p * c->st - c->pad + r, w = q * c->st - c->pad + u;
                                if (h >= 0 && h < c->H && w >= 0 && w < c->W)
                                    s += c->x[((n * c->C + ch) * c->H + h) * c->W + w] *
                                         c->w[((k * c->C + ch) * c->R + r) * c->S + u];
                            }
                    c->y[((n * c->K + k) * c->P + p) * c->Q + q] = s;
                }
}

static double conv_loss(void *p)
{
    conv_ref *c = p;
    conv_ref_fwd(c);
    double l = 0;
    long n = (long)c->N * c->K * c->P * c->Q;
    for (long i = 0; i < n; i++)
        l += c->g[i] * c->y[i];
    return l;
}

static void check_conv(eng_ctx *ctx, const char *tag, int N, int C, int H, int K, int R, int st, int pad,
                       eng_layout lx, eng_layout ly, int bias)
{
    int W = H + 1, P = (H + 2 * pad - R) / st + 1, Q = (W + 2 * pad - R) / st + 1;
    eng_tensor x = ENG_TENSOR_INIT, w = ENG_TENSOR_INIT, b = ENG_TENSOR_INIT, g = ENG_TENSOR_INIT;
    eng_tensor_alloc4(&x, N, C, H, W);
    int64_t wd[4] = {K, C, R, R};
    eng_tensor_alloc_host(&w, 4, wd, ENG_LAYOUT_NCHW);
    eng_tensor_alloc1(&b, K);
    eng_tensor_alloc4(&g, N, K, P, Q);
    fill_uniform(x.data, eng_tensor_numel(&x), 1, -1, 1);
    fill_uniform(w.data, eng_tensor_numel(&w), 2, -0.5f, 0.5f);
    fill_uniform(b.data, K, 3, -1, 1);
    fill_uniform(g.data, eng_tensor_numel(&g), 4, -1, 1);
    eng_tensor xl = in_layout(&x, lx), gl = in_layout(&g, ly), yl = ENG_TENSOR_INIT, dxl = ENG_TENSOR_INIT;
    eng_tensor_alloc_host(&yl, 4, g.dim, ly);
    eng_tensor_alloc_host(&dxl, 4, x.dim, lx);
    eng_tensor dw = ENG_TENSOR_INIT, db = ENG_TENSOR_INIT;
    eng_tensor_alloc_host(&dw, 4, wd, ENG_LAYOUT_NCHW);
    eng_tensor_alloc1(&db, K);

    conv_ref c = {N, C, H, W, K, R, R, P, Q, st, pad, NULL, NULL, NULL, NULL, NULL, 0};
    long nx = eng_tensor_numel(&x), nw = eng_tensor_numel(&w), ny = eng_tensor_numel(&g);
    c.x = to_double(x.data, nx);
    c.w = to_double(w.data, nw);
    c.b = bias ? to_double(b.data, K) : NULL;
    c.g = to_double(g.data, ny);
    c.y = calloc((size_t)ny, sizeof(double));

    eng_conv_desc d = {st, pad, false, false};
    eng_op_cache cache = {0};
    eng_status s = eng_conv2d_fwd(ctx, &yl, &xl, &w, bias ? &b : NULL, &d, &cache);
    CHECKF(s == ENG_OK, "%s fwd: %s", tag, eng_last_error());
    conv_ref_fwd(&c);
    eng_tensor y = to_nchw(&yl);
    double e = rel_err_fd(y.data, c.y, ny);
    CHECKF(e <= TOL, "%s fwd rel err %.3g", tag, e);

    /* fused relu and accumulate: y = relu(conv + b + y0) */
    eng_tensor y0 = ENG_TENSOR_INIT;
    eng_tensor_alloc_host(&y0, 4, g.dim, ENG_LAYOUT_NCHW);
    fill_uniform(y0.data, ny, 5, -1, 1);
    eng_tensor y0l = in_layout(&y0, ly);
    eng_conv_desc dr = {st, pad, true, true};
    s = eng_conv2d_fwd(ctx, &y0l, &xl, &w, bias ? &b : NULL, &dr, &cache);
    CHECKF(s == ENG_OK, "%s fused fwd: %s", tag, eng_last_error());
    eng_tensor yf = to_nchw(&y0l);
    double worst = 0;
    for (long i = 0; i < ny; i++) {
        double ref = c.y[i] + y0.data[i];
        ref = ref > 0 ? ref : 0;
        double diff = fabs(yf.data[i] - ref) / (1 + fabs(ref));
        worst = diff > worst ? diff : worst;
    }
    CHECKF(worst <= 1e-5, "%s fused relu+sum max err %.3g", tag, worst);

    /* backward against finite differences */
    double *gx = malloc((size_t)nx * sizeof(double)), *gw = malloc((size_t)nw * sizeof(double));
    double *gb = malloc((size_t)K * sizeof(double));
    fd(c.x, nx, conv_loss, &c, gx);
    fd(c.w, nw, conv_loss, &c, gw);
    if (bias)
        fd(c.b, K, conv_loss, &c, gb);
    s = eng_conv2d_bwd_data(ctx, &dxl, &gl, &w, &d, false, &cache);
    CHECKF(s == ENG_OK, "%s bwd data: %s", tag, eng_last_error());
    eng_tensor dx = to_nchw(&dxl);
    e = rel_err_fd(dx.data, gx, nx);
    CHECKF(e <= TOL, "%s bwd data rel err %.3g", tag, e);
    s = eng_conv2d_bwd_filter(ctx, &dw, bias ? &db : NULL, &xl, &gl, &d, false, &cache);
    CHECKF(s == ENG_OK, "%s bwd filter: %s", tag, eng_last_error());
    e = rel_err_fd(dw.data, gw, nw);
    CHECKF(e <= TOL, "%s bwd filter rel err %.3g", tag, e);
    if (bias) {
        e = rel_err_fd(db.data, gb, K);
        CHECKF(e <= TOL, "%s bwd bias rel err %.3g", tag, e);
    }
    /* accumulate: running both backwards again adds the same amounts */
    s = eng_conv2d_bwd_data(ctx, &dxl, &gl, &w, &d, true, &cache);
    s = s == ENG_OK ? eng_conv2d_bwd_filter(ctx, &dw, bias ? &db : NULL, &xl, &gl, &d, true, &cache) : s;
    CHECKF(s == ENG_OK, "%s accumulate: %s", tag, eng_last_error());
    eng_tensor dx2 = to_nchw(&dxl);
    for (long i = 0; i < nx; i++)
        gx[i] *= 2;
    for (long i = 0; i < nw; i++)
        gw[i] *= 2;
    e = rel_err_fd(dx2.data, gx, nx);
    CHECKF(e <= TOL, "%s accumulated bwd data rel err %.3g", tag, e);
    e = rel_err_fd(dw.data, gw, nw);
    CHECKF(e <= TOL, "%s accumulated bwd filter rel err %.3g", tag, e);
    printf("# %s ok (N%d C%d H%d K%d R%d s%d p%d %s->%s)\n", tag, N, C, H, K, R, st, pad, eng_layout_name(lx),
           eng_layout_name(ly));

    eng_op_cache_cleanup(&cache);
    free(gx), free(gw), free(gb);
    free(c.x), free(c.w), free(c.b), free(c.g), free(c.y);
    eng_tensor *all[] = {&x, &w, &b, &g, &xl, &gl, &yl, &dxl, &dw, &db, &y, &y0, &y0l, &yf, &dx, &dx2};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        eng_tensor_cleanup(all[i]);
}

static void test_conv_onednn(void)
{
    check_conv(ctx_onednn, "3x3 s1 p1 nchw", 2, 3, 6, 4, 3, 1, 1, ENG_LAYOUT_NCHW, ENG_LAYOUT_NCHW, 1);
    check_conv(ctx_onednn, "3x3 s2 p1 blocked", 2, 16, 7, 16, 3, 2, 1, ENG_LAYOUT_NCHW8C, ENG_LAYOUT_NCHW8C, 0);
    check_conv(ctx_onednn, "1x1 s1 blocked16", 2, 16, 5, 32, 1, 1, 0, ENG_LAYOUT_NCHW16C, ENG_LAYOUT_NCHW16C, 1);
    check_conv(ctx_onednn, "1x1 s2 nhwc", 2, 16, 6, 16, 1, 2, 0, ENG_LAYOUT_NHWC, ENG_LAYOUT_NHWC, 0);
    check_conv(ctx_onednn, "7x7 s2 p3 stem", 2, 3, 12, 16, 7, 2, 3, ENG_LAYOUT_NCHW, ENG_LAYOUT_NCHW8C, 0);
    check_conv(ctx_onednn, "5x5 p2 1ch", 2, 1, 8, 8, 5, 1, 2, ENG_LAYOUT_NCHW, ENG_LAYOUT_NCHW8C, 1);
}

static void test_conv_gemm(void)
{
    check_conv(ctx_gemm, "gemm 3x3 s1 p1", 2, 3, 6, 4, 3, 1, 1, ENG_LAYOUT_NCHW, ENG_LAYOUT_NCHW, 1);
    check_conv(ctx_gemm, "gemm 3x3 s2 p1", 2, 5, 7, 6, 3, 2, 1, ENG_LAYOUT_NCHW, ENG_LAYOUT_NCHW, 0);
    check_conv(ctx_gemm, "gemm 1x1 s1", 2, 6, 5, 7, 1, 1, 0, ENG_LAYOUT_NCHW, ENG_LAYOUT_NCHW, 1);
    check_conv(ctx_gemm, "gemm 7x7 s2 p3", 2, 3, 12, 4, 7, 2, 3, ENG_LAYOUT_NCHW, ENG_LAYOUT_NCHW, 0);
    check_conv(ctx_gemm, "gemm 5x5 even input", 2, 2, 8, 3, 5, 2, 2, ENG_LAYOUT_NCHW, ENG_LAYOUT_NCHW, 1);
}

static void test_conv_errors(void)
{
    eng_tensor x = ENG_TENSOR_INIT, w = ENG_TENSOR_INIT, y = ENG_TENSOR_INIT;
    eng_tensor_alloc4(&x, 1, 3, 8, 8);
    eng_tensor_alloc4(&w, 4, 2, 3, 3); /* wrong input channels */
    eng_tensor_alloc4(&y, 1, 4, 8, 8);
    eng_conv_desc d = {1, 1, false, false};
    CHECK(eng_conv2d_fwd(ctx_onednn, &y, &x, &w, NULL, &d, NULL) == ENG_ERR_SHAPE);
    CHECK(strstr(eng_last_error(), "input channels") != NULL);
    eng_tensor_alloc4(&w, 4, 3, 3, 3);
    eng_tensor_alloc4(&y, 1, 4, 7, 8); /* wrong output height */
    CHECK(eng_conv2d_fwd(ctx_onednn, &y, &x, &w, NULL, &d, NULL) == ENG_ERR_SHAPE);
    eng_conv_desc bad = {0, 1, false, false};
    eng_tensor_alloc4(&y, 1, 4, 8, 8);
    CHECK(eng_conv2d_fwd(ctx_onednn, &y, &x, &w, NULL, &bad, NULL) == ENG_ERR_ARG);
    eng_tensor empty = ENG_TENSOR_INIT;
    CHECK(eng_conv2d_fwd(ctx_onednn, &y, &empty, &w, NULL, &d, NULL) == ENG_ERR_ARG);
    eng_tensor_cleanup(&x), eng_tensor_cleanup(&w), eng_tensor_cleanup(&y);
}

/* ---- batch norm (training) ---- */

typedef struct bn_ref {
    int N, C, S;
    double *x, *gamma, *beta, *g, *y, eps;
} bn_ref;

static void bn_ref_fwd(bn_ref *b, double *mean_out, double *var_out)
{
    long cnt = (long)b->N * b->S;
    for (int c = 0; c < b->C; c++) {
        double m = 0, v = 0;
        for (int n = 0; n < b->N; n++)
            for (int s = 0; s < b->S; s++)
                m += b->x[((long)n * b->C + c) * b->S + s];
        m /= cnt;
        for (int n = 0; n < b->N; n++)
            for (int s = 0; s < b->S; s++) {
                double d = b->x[((long)n * b->C + c) * b->S + s] - m;
                v += d * d;
            }
        v /= cnt;
        if (mean_out)
            mean_out[c] = m, var_out[c] = v;
        for (int n = 0; n < b->N; n++)
            for (int s = 0; s < b->S; s++) {
                long i = ((long)n * b->C + c) * b->S + s;
                b->y[i] = (b->x[i] - m) / sqrt(v + b->eps) * b->gamma[c] + b->beta[c];
            }
    }
}

static double bn_loss(void *p)
{
    bn_ref *b = p;
    bn_ref_fwd(b, NULL, NULL);
    double l = 0;
    for (long i = 0; i < (long)b->N * b->C * b->S; i++)
        l += b->g[i] * b->y[i];
    return l;
}

static void check_bn(eng_layout lay, int ndim)
{
    const int N = 3, C = 16, H = ndim == 4 ? 3 : 1, W = ndim == 4 ? 4 : 1;
    int64_t d4[4] = {N, C, H, W};
    eng_tensor x = ENG_TENSOR_INIT, g = ENG_TENSOR_INIT, gamma = ENG_TENSOR_INIT, beta = ENG_TENSOR_INIT,
               rm = ENG_TENSOR_INIT, rv = ENG_TENSOR_INIT, sm = ENG_TENSOR_INIT, si = ENG_TENSOR_INIT,
               dgam = ENG_TENSOR_INIT, dbet = ENG_TENSOR_INIT;
    eng_tensor_alloc_host(&x, ndim, d4, ENG_LAYOUT_NCHW);
    eng_tensor_alloc_host(&g, ndim, d4, ENG_LAYOUT_NCHW);
    eng_tensor *vecs[] = {&gamma, &beta, &rm, &rv, &sm, &si, &dgam, &dbet};
    for (int i = 0; i < 8; i++)
        eng_tensor_alloc1(vecs[i], C);
    long n = eng_tensor_numel(&x);
    fill_uniform(x.data, n, 11, -2, 3); /* a mean far from 0 */
    fill_uniform(g.data, n, 12, -1, 1);
    fill_uniform(gamma.data, C, 13, 0.5f, 1.5f);
    fill_uniform(beta.data, C, 14, -0.5f, 0.5f);
    fill_uniform(rm.data, C, 15, -0.1f, 0.1f);
    fill_uniform(rv.data, C, 16, 0.5f, 2.0f);
    float rm0[16], rv0[16];
    memcpy(rm0, rm.data, sizeof rm0), memcpy(rv0, rv.data, sizeof rv0);
    eng_layout l = ndim == 4 ? lay : ENG_LAYOUT_NCHW;
    eng_tensor xl = in_layout(&x, l), gl = in_layout(&g, l), yl = ENG_TENSOR_INIT, dxl = ENG_TENSOR_INIT;
    eng_tensor_alloc_host(&yl, ndim, d4, l);
    eng_tensor_alloc_host(&dxl, ndim, d4, l);
    REQUIRE_OK(eng_bn_train_fwd(ctx_onednn, &yl, &xl, &gamma, &beta, &rm, &rv, &sm, &si, 0.1f, 1e-5f));
    bn_ref b = {N, C, H * W, to_double(x.data, n), to_double(gamma.data, C), to_double(beta.data, C),
                to_double(g.data, n), calloc((size_t)n, sizeof(double)), 1e-5};
    double mean[16], var[16];
    bn_ref_fwd(&b, mean, var);
    eng_tensor y = to_nchw(&yl);
    double e = rel_err_fd(y.data, b.y, n);
    CHECKF(e <= TOL, "bn %s %dD fwd rel err %.3g", eng_layout_name(l), ndim, e);
    double rs_err = 0;
    for (int c = 0; c < C; c++) {
        double unb = var[c] * (N * H * W) / (N * H * W - 1.0);
        double erm = 0.9 * rm0[c] + 0.1 * mean[c], erv = 0.9 * rv0[c] + 0.1 * unb;
        rs_err = fmax(rs_err, fabs(rm.data[c] - erm) + fabs(rv.data[c] - erv));
        rs_err = fmax(rs_err, fabs(sm.data[c] - mean[c]) + fabs(si.data[c] - 1 / sqrt(var[c] + 1e-5)) * 1e-1);
    }
    CHECKF(rs_err <= 1e-5, "bn running stats err %.3g", rs_err);
    /* fused residual block tail: relu(bn(x) + r) */
    eng_tensor r = ENG_TENSOR_INIT;
    eng_tensor_alloc_host(&r, ndim, d4, ENG_LAYOUT_NCHW);
    fill_uniform(r.data, n, 17, -1, 1);
    eng_tensor rl = in_layout(&r, l), fl = ENG_TENSOR_INIT;
    eng_tensor_alloc_host(&fl, ndim, d4, l);
    REQUIRE_OK(eng_bn_train_fwd_fused(ctx_onednn, &fl, &xl, &gamma, &beta, &rm, &rv, &sm, &si, 0.1f, 1e-5f, &rl, true));
    eng_tensor f = to_nchw(&fl);
    double fe = 0;
    for (long i = 0; i < n; i++) {
        double ref = b.y[i] + r.data[i];
        fe = fmax(fe, fabs(f.data[i] - (ref > 0 ? ref : 0)));
    }
    CHECKF(fe <= 1e-5, "bn fused residual+relu %s err %.3g", eng_layout_name(l), fe);
    CHECK(eng_bn_train_fwd_fused(ctx_onednn, &fl, &xl, &gamma, &beta, &rm, &rv, &sm, &si, 0.1f, 1e-5f, &xl, true) ==
          ENG_ERR_ARG);
    eng_tensor_cleanup(&r), eng_tensor_cleanup(&rl), eng_tensor_cleanup(&fl), eng_tensor_cleanup(&f);
    REQUIRE_OK(eng_bn_train_bwd(ctx_onednn, &dxl, &dgam, &dbet, &gl, &xl, &gamma, &sm, &si, false));
    double *gx = malloc((size_t)n * sizeof(double)), *gg = malloc(C * sizeof(double)), *gb = malloc(C * sizeof(double));
    fd(b.x, n, bn_loss, &b, gx);
    fd(b.gamma, C, bn_loss, &b, gg);
    fd(b.beta, C, bn_loss, &b, gb);
    eng_tensor dx = to_nchw(&dxl);
    e = rel_err_fd(dx.data, gx, n);
    CHECKF(e <= 1e-3, "bn %s bwd dx rel err %.3g", eng_layout_name(l), e);
    e = rel_err_fd(dgam.data, gg, C);
    CHECKF(e <= TOL, "bn bwd dgamma rel err %.3g", e);
    e = rel_err_fd(dbet.data, gb, C);
    CHECKF(e <= TOL, "bn bwd dbeta rel err %.3g", e);
    printf("# bn %s %dD: dx rel err %.2g\n", eng_layout_name(l), ndim, rel_err_fd(dx.data, gx, n));
    free(gx), free(gg), free(gb), free(b.x), free(b.gamma), free(b.beta), free(b.g), free(b.y);
    eng_tensor *all[] = {&x, &g, &xl, &gl, &yl, &dxl, &y, &dx};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        eng_tensor_cleanup(all[i]);
    for (int i = 0; i < 8; i++)
        eng_tensor_cleanup(vecs[i]);
}

static void test_batchnorm(void)
{
    for (int i = 0; i < N_LAYOUTS; i++)
        check_bn(layouts[i], 4);
    check_bn(ENG_LAYOUT_NCHW, 2);
    /* one value per channel cannot give batch statistics */
    eng_tensor x = ENG_TENSOR_INIT, v = ENG_TENSOR_INIT;
    eng_tensor_alloc2(&x, 1, 4);
    eng_tensor_alloc1(&v, 4);
    CHECK(eng_bn_train_fwd(ctx_onednn, &x, &x, &v, &v, &v, &v, &v, &v, 0.1f, 1e-5f) == ENG_ERR_ARG);
    eng_tensor_cleanup(&x), eng_tensor_cleanup(&v);
}

/* ---- per-channel affine, frozen BN folding, channel sums ---- */

static void test_affine_and_fold(void)
{
    const int N = 2, C = 16, H = 3, W = 5;
    eng_tensor x = ENG_TENSOR_INIT, sc = ENG_TENSOR_INIT, sh = ENG_TENSOR_INIT, g = ENG_TENSOR_INIT;
    eng_tensor_alloc4(&x, N, C, H, W);
    eng_tensor_alloc4(&g, N, C, H, W);
    eng_tensor_alloc1(&sc, C);
    eng_tensor_alloc1(&sh, C);
    long n = eng_tensor_numel(&x);
    fill_uniform(x.data, n, 21, -1, 1);
    fill_uniform(g.data, n, 22, -1, 1);
    fill_uniform(sc.data, C, 23, -2, 2);
    fill_uniform(sh.data, C, 24, -1, 1);
    for (int li = 0; li < N_LAYOUTS; li++) {
        eng_layout l = layouts[li];
        eng_tensor xl = in_layout(&x, l), gl = in_layout(&g, l), yl = in_layout(&x, l), dl = in_layout(&x, l);
        REQUIRE_OK(eng_channel_affine_fwd(ctx_onednn, &yl, &xl, &sc, &sh, true));
        REQUIRE_OK(eng_channel_affine_bwd(ctx_onednn, &dl, &gl, &sc, false));
        eng_tensor y = to_nchw(&yl), d = to_nchw(&dl);
        double ey = 0, ed = 0;
        for (long i = 0; i < n; i++) {
            int c = (int)((i / (H * W)) % C);
            double r = x.data[i] * (double)sc.data[c] + sh.data[c];
            ey = fmax(ey, fabs(y.data[i] - (r > 0 ? r : 0)));
            ed = fmax(ed, fabs(d.data[i] - g.data[i] * (double)sc.data[c]));
        }
        CHECKF(ey <= 1e-6 && ed <= 1e-6, "affine %s errs %.3g %.3g", eng_layout_name(l), ey, ed);
        eng_tensor s1 = ENG_TENSOR_INIT, s2 = ENG_TENSOR_INIT;
        eng_tensor_alloc1(&s1, C);
        eng_tensor_alloc1(&s2, C);
        REQUIRE_OK(eng_channel_sums(ctx_onednn, &s1, &s2, &gl, &xl));
        double es = 0;
        for (int c = 0; c < C; c++) {
            double a = 0, b = 0;
            for (int nn = 0; nn < N; nn++)
                for (int s = 0; s < H * W; s++) {
                    long i = ((long)nn * C + c) * H * W + s;
                    a += g.data[i];
                    b += (double)g.data[i] * x.data[i];
                }
            es = fmax(es, fabs(s1.data[c] - a) + fabs(s2.data[c] - b));
        }
        CHECKF(es <= 1e-5, "channel sums %s err %.3g", eng_layout_name(l), es);
        eng_tensor *all[] = {&xl, &gl, &yl, &dl, &y, &d, &s1, &s2};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++)
            eng_tensor_cleanup(all[i]);
    }
    /* folding: conv(x, wf) + bf == bn_eval(conv(x, w) + b) */
    const int K = 4;
    eng_tensor w = ENG_TENSOR_INIT, b = ENG_TENSOR_INIT, wf = ENG_TENSOR_INIT, bf = ENG_TENSOR_INIT,
               s = ENG_TENSOR_INIT, ga = ENG_TENSOR_INIT, be = ENG_TENSOR_INIT, mu = ENG_TENSOR_INIT,
               va = ENG_TENSOR_INIT;
    eng_tensor_alloc4(&w, K, 3, 3, 3);
    eng_tensor_alloc4(&wf, K, 3, 3, 3);
    eng_tensor *v[] = {&b, &bf, &s, &ga, &be, &mu, &va};
    for (int i = 0; i < 7; i++)
        eng_tensor_alloc1(v[i], K);
    fill_uniform(w.data, eng_tensor_numel(&w), 31, -1, 1);
    fill_uniform(b.data, K, 32, -1, 1);
    fill_uniform(ga.data, K, 33, 0.5f, 1.5f);
    fill_uniform(be.data, K, 34, -1, 1);
    fill_uniform(mu.data, K, 35, -1, 1);
    fill_uniform(va.data, K, 36, 0.5f, 2);
    REQUIRE_OK(eng_fold_bn(ctx_onednn, &wf, &bf, &s, &w, &b, &ga, &be, &mu, &va, 1e-5f));
    double ef = 0;
    for (int k = 0; k < K; k++) {
        double sc_ = ga.data[k] / sqrt(va.data[k] + 1e-5);
        ef = fmax(ef, fabs(s.data[k] - sc_));
        ef = fmax(ef, fabs(bf.data[k] - (be.data[k] + (b.data[k] - mu.data[k]) * sc_)));
        for (int i = 0; i < 27; i++)
            ef = fmax(ef, fabs(wf.data[k * 27 + i] - w.data[k * 27 + i] * sc_));
    }
    CHECKF(ef <= 1e-6, "fold err %.3g", ef);
    for (int i = 0; i < 7; i++)
        eng_tensor_cleanup(v[i]);
    eng_tensor *all[] = {&x, &sc, &sh, &g, &w, &wf};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        eng_tensor_cleanup(all[i]);
}

/* ---- relu, add, axpby, fill, copy ---- */

static void test_elementwise(void)
{
    const int N = 2, C = 16, H = 3, W = 3;
    eng_tensor x = ENG_TENSOR_INIT, g = ENG_TENSOR_INIT, z = ENG_TENSOR_INIT;
    eng_tensor_alloc4(&x, N, C, H, W);
    eng_tensor_alloc4(&g, N, C, H, W);
    eng_tensor_alloc4(&z, N, C, H, W);
    long n = eng_tensor_numel(&x);
    fill_distinct(x.data, n, 41);
    fill_uniform(g.data, n, 42, -1, 1);
    fill_uniform(z.data, n, 43, -1, 1);
    for (int li = 0; li < N_LAYOUTS; li++) {
        eng_layout l = layouts[li];
        eng_tensor xl = in_layout(&x, l), gl = in_layout(&g, l), zl = in_layout(&z, l), yl = in_layout(&x, l),
                   dl = in_layout(&z, l);
        REQUIRE_OK(eng_relu_fwd(ctx_onednn, &yl, &xl));
        REQUIRE_OK(eng_relu_bwd(ctx_onednn, &dl, &gl, &yl, true)); /* dl = z + g * (y > 0) */
        eng_tensor y = to_nchw(&yl), d = to_nchw(&dl);
        int bad = 0;
        for (long i = 0; i < n; i++) {
            bad += y.data[i] != (x.data[i] > 0 ? x.data[i] : 0.0f);
            bad += fabsf(d.data[i] - (z.data[i] + (x.data[i] > 0 ? g.data[i] : 0.0f))) > 1e-6f;
        }
        CHECKF(bad == 0, "relu %s: %d wrong", eng_layout_name(l), bad);
        REQUIRE_OK(eng_add(ctx_onednn, &yl, &xl, &zl));
        REQUIRE_OK(eng_axpby(ctx_onednn, &yl, 2.0f, &gl, 0.5f)); /* y = 2g + 0.5(x+z) */
        eng_tensor y2 = to_nchw(&yl);
        for (long i = 0; i < n; i++)
            bad += fabsf(y2.data[i] - (2 * g.data[i] + 0.5f * (x.data[i] + z.data[i]))) > 1e-5f;
        CHECKF(bad == 0, "add/axpby %s: %d wrong", eng_layout_name(l), bad);
        /* copy between layouts round-trips exactly */
        eng_tensor back = ENG_TENSOR_INIT;
        eng_tensor_alloc4(&back, N, C, H, W);
        REQUIRE_OK(eng_copy(ctx_onednn, &back, &xl));
        CHECKF(memcmp(back.data, x.data, (size_t)n * sizeof(float)) == 0, "copy %s not exact", eng_layout_name(l));
        REQUIRE_OK(eng_fill(ctx_onednn, &back, 3.5f));
        CHECK(back.data[0] == 3.5f && back.data[n - 1] == 3.5f);
        eng_tensor *all[] = {&xl, &gl, &zl, &yl, &dl, &y, &d, &y2, &back};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++)
            eng_tensor_cleanup(all[i]);
    }
    /* mixed layouts are refused, not silently misread */
    eng_tensor bl = in_layout(&x, ENG_LAYOUT_NCHW8C);
    CHECK(eng_add(ctx_onednn, &x, &x, &bl) == ENG_ERR_ARG);
    eng_tensor_cleanup(&bl);
    eng_tensor_cleanup(&x), eng_tensor_cleanup(&g), eng_tensor_cleanup(&z);
}

/* ---- pooling ---- */

typedef struct pool_ref {
    int N, C, H, W, P, Q, k, st, pad;
    double *x, *g;
} pool_ref;

static double maxpool_loss(void *p)
{
    pool_ref *r = p;
    double l = 0;
    for (int n = 0; n < r->N; n++)
        for (int c = 0; c < r->C; c++)
            for (int a = 0; a < r->P; a++)
                for (int b = 0; b < r->Q; b++) {
                    double m = -INFINITY;
                    for (int i = 0; i < r->k; i++)
                        for (int j = 0; j < r->k; j++) {
                            int h = a * r->st - r->pad + i, w = b * r->st - r->pad + j;
                            if (h >= 0 && h < r->H && w >= 0 && w < r->W)
                                m = fmax(m, r->x[((n * r->C + c) * r->H + h) * r->W + w]);
                        }
                    l += m * r->g[((n * r->C + c) * r->P + a) * r->Q + b];
                }
    return l;
}

static void check_maxpool(eng_layout l, int H, int k, int st, int pad)
{
    const int N = 2, C = 16, W = H + 1, P = (H + 2 * pad - k) / st + 1, Q = (W + 2 * pad - k) / st + 1;
    eng_tensor x = ENG_TENSOR_INIT, g = ENG_TENSOR_INIT;
    eng_tensor_alloc4(&x, N, C, H, W);
    eng_tensor_alloc4(&g, N, C, P, Q);
    long nx = eng_tensor_numel(&x), ny = eng_tensor_numel(&g);
    fill_distinct(x.data, nx, 51);
    fill_uniform(g.data, ny, 52, -1, 1);
    eng_tensor xl = in_layout(&x, l), gl = in_layout(&g, l), yl = ENG_TENSOR_INIT, dl = ENG_TENSOR_INIT;
    eng_tensor_alloc_host(&yl, 4, g.dim, l);
    eng_tensor_alloc_host(&dl, 4, x.dim, l);
    REQUIRE_OK(eng_maxpool_fwd(ctx_onednn, &yl, &xl, k, st, pad, NULL));
    REQUIRE_OK(eng_maxpool_bwd(ctx_onednn, &dl, &gl, &xl, k, st, pad, false, NULL));
    pool_ref r = {N, C, H, W, P, Q, k, st, pad, to_double(x.data, nx), to_double(g.data, ny)};
    double *gx = malloc((size_t)nx * sizeof(double));
    fd(r.x, nx, maxpool_loss, &r, gx);
    eng_tensor d = to_nchw(&dl), y = to_nchw(&yl);
    double e = rel_err_fd(d.data, gx, nx);
    CHECKF(e <= 1e-6, "maxpool %s k%d s%d p%d bwd rel err %.3g", eng_layout_name(l), k, st, pad, e);
    /* forward: y dotted with g equals the reference loss */
    double dot = 0;
    for (long i = 0; i < ny; i++)
        dot += (double)y.data[i] * g.data[i];
    CHECKF(fabs(dot - maxpool_loss(&r)) <= 1e-5 * (1 + fabs(dot)), "maxpool fwd mismatch");
    free(gx), free(r.x), free(r.g);
    eng_tensor *all[] = {&x, &g, &xl, &gl, &yl, &dl, &d, &y};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        eng_tensor_cleanup(all[i]);
}

static void test_pooling(void)
{
    for (int li = 0; li < N_LAYOUTS; li++) {
        check_maxpool(layouts[li], 7, 3, 2, 1);
        check_maxpool(layouts[li], 6, 2, 2, 0);
    }
    /* global average pool: forward is the mean, backward spreads dy / (H*W) */
    const int N = 2, C = 16, H = 3, W = 4;
    eng_tensor x = ENG_TENSOR_INIT, y = ENG_TENSOR_INIT, g = ENG_TENSOR_INIT;
    eng_tensor_alloc4(&x, N, C, H, W);
    eng_tensor_alloc2(&y, N, C);
    eng_tensor_alloc2(&g, N, C);
    fill_uniform(x.data, eng_tensor_numel(&x), 61, -1, 1);
    fill_uniform(g.data, N * C, 62, -1, 1);
    for (int li = 0; li < N_LAYOUTS; li++) {
        eng_tensor xl = in_layout(&x, layouts[li]), dl = in_layout(&x, layouts[li]);
        REQUIRE_OK(eng_gap_fwd(ctx_onednn, &y, &xl));
        REQUIRE_OK(eng_gap_bwd(ctx_onednn, &dl, &g, false));
        eng_tensor d = to_nchw(&dl);
        double e = 0;
        for (int n = 0; n < N; n++)
            for (int c = 0; c < C; c++) {
                double m = 0;
                for (int s = 0; s < H * W; s++) {
                    m += x.data[(n * C + c) * H * W + s];
                    e = fmax(e, fabs(d.data[(n * C + c) * H * W + s] - g.data[n * C + c] / (H * W)));
                }
                e = fmax(e, fabs(y.data[n * C + c] - m / (H * W)));
            }
        CHECKF(e <= 1e-6, "gap %s err %.3g", eng_layout_name(layouts[li]), e);
        eng_tensor_cleanup(&xl), eng_tensor_cleanup(&dl), eng_tensor_cleanup(&d);
    }
    eng_tensor_cleanup(&x), eng_tensor_cleanup(&y), eng_tensor_cleanup(&g);
}

/* ---- linear ---- */

typedef struct lin_ref {
    int N, I, O;
    double *x, *w, *b, *g;
} lin_ref;

static double linear_loss(void *p)
{
    lin_ref *r = p;
    double l = 0;
    for (int n = 0; n < r->N; n++)
        for (int o = 0; o < r->O; o++) {
            double s = r->b[o];
            for (int i = 0; i < r->I; i++)
                s += r->x[n * r->I + i] * r->w[o * r->I + i];
            l += s * r->g[n * r->O + o];
        }
    return l;
}

static void test_linear(void)
{
    const int N = 3, I = 7, O = 5;
    eng_tensor x = ENG_TENSOR_INIT, w = ENG_TENSOR_INIT, b = ENG_TENSOR_INIT, y = ENG_TENSOR_INIT,
               g = ENG_TENSOR_INIT, dx = ENG_TENSOR_INIT, dw = ENG_TENSOR_INIT, db = ENG_TENSOR_INIT;
    eng_tensor_alloc2(&x, N, I);
    eng_tensor_alloc2(&w, O, I);
    eng_tensor_alloc1(&b, O);
    eng_tensor_alloc2(&y, N, O);
    eng_tensor_alloc2(&g, N, O);
    eng_tensor_alloc2(&dx, N, I);
    eng_tensor_alloc2(&dw, O, I);
    eng_tensor_alloc1(&db, O);
    fill_uniform(x.data, N * I, 71, -1, 1);
    fill_uniform(w.data, O * I, 72, -1, 1);
    fill_uniform(b.data, O, 73, -1, 1);
    fill_uniform(g.data, N * O, 74, -1, 1);
    REQUIRE_OK(eng_linear_fwd(ctx_onednn, &y, &x, &w, &b));
    REQUIRE_OK(eng_linear_bwd_data(ctx_onednn, &dx, &g, &w, false));
    REQUIRE_OK(eng_linear_bwd_weight(ctx_onednn, &dw, &db, &x, &g, false));
    lin_ref r = {N, I, O, to_double(x.data, N * I), to_double(w.data, O * I), to_double(b.data, O),
                 to_double(g.data, N * O)};
    double dot = 0;
    for (int i = 0; i < N * O; i++)
        dot += (double)y.data[i] * g.data[i];
    CHECKF(fabs(dot - linear_loss(&r)) <= 1e-5 * (1 + fabs(dot)), "linear fwd mismatch");
    double gx[21], gw[35], gb[5];
    fd(r.x, N * I, linear_loss, &r, gx);
    fd(r.w, O * I, linear_loss, &r, gw);
    fd(r.b, O, linear_loss, &r, gb);
    CHECKF(rel_err_fd(dx.data, gx, N * I) <= TOL, "linear dx");
    CHECKF(rel_err_fd(dw.data, gw, O * I) <= TOL, "linear dw");
    CHECKF(rel_err_fd(db.data, gb, O) <= TOL, "linear db");
    CHECK(eng_linear_fwd(ctx_onednn, &g, &x, &dw, &b) == ENG_OK);
    CHECK(eng_linear_fwd(ctx_onednn, &x, &y, &w, &b) == ENG_ERR_SHAPE);
    free(r.x), free(r.w), free(r.b), free(r.g);
    eng_tensor *all[] = {&x, &w, &b, &y, &g, &dx, &dw, &db};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        eng_tensor_cleanup(all[i]);
}

/* ---- bilinear upsample ---- */

typedef struct up_ref {
    int N, C, H, W, P, Q;
    double *x, *g;
} up_ref;

/* PyTorch's align_corners=False source coordinate, clamped at 0. */
static void src_index(int o, int in, int out, int *i0, int *i1, double *l)
{
    double s = ((double)o + 0.5) * in / out - 0.5;
    if (s < 0)
        s = 0;
    *i0 = (int)s;
    if (*i0 > in - 1)
        *i0 = in - 1;
    *i1 = *i0 < in - 1 ? *i0 + 1 : *i0;
    *l = s - *i0;
}

static double upsample_loss(void *p)
{
    up_ref *r = p;
    double l = 0;
    for (int n = 0; n < r->N * r->C; n++)
        for (int a = 0; a < r->P; a++)
            for (int b = 0; b < r->Q; b++) {
                int h0, h1, w0, w1;
                double lh, lw;
                src_index(a, r->H, r->P, &h0, &h1, &lh);
                src_index(b, r->W, r->Q, &w0, &w1, &lw);
                const double *x = r->x + (long)n * r->H * r->W;
                double v = (1 - lh) * ((1 - lw) * x[h0 * r->W + w0] + lw * x[h0 * r->W + w1]) +
                           lh * ((1 - lw) * x[h1 * r->W + w0] + lw * x[h1 * r->W + w1]);
                l += v * r->g[((long)n * r->P + a) * r->Q + b];
            }
    return l;
}

static void check_upsample(int H, int W, int P, int Q)
{
    const int N = 2, C = 3;
    eng_tensor x = ENG_TENSOR_INIT, y = ENG_TENSOR_INIT, g = ENG_TENSOR_INIT, dx = ENG_TENSOR_INIT;
    eng_tensor_alloc4(&x, N, C, H, W);
    eng_tensor_alloc4(&y, N, C, P, Q);
    eng_tensor_alloc4(&g, N, C, P, Q);
    eng_tensor_alloc4(&dx, N, C, H, W);
    long nx = eng_tensor_numel(&x), ny = eng_tensor_numel(&y);
    fill_uniform(x.data, nx, 81, 0, 1);
    fill_uniform(g.data, ny, 82, -1, 1);
    REQUIRE_OK(eng_upsample_fwd(ctx_onednn, &y, &x));
    REQUIRE_OK(eng_upsample_bwd(ctx_onednn, &dx, &g, false));
    up_ref r = {N, C, H, W, P, Q, to_double(x.data, nx), to_double(g.data, ny)};
    double dot = 0;
    for (long i = 0; i < ny; i++)
        dot += (double)y.data[i] * g.data[i];
    CHECKF(fabs(dot - upsample_loss(&r)) <= 1e-5 * (1 + fabs(dot)), "upsample fwd %dx%d->%dx%d", H, W, P, Q);
    double *gx = malloc((size_t)nx * sizeof(double));
    fd(r.x, nx, upsample_loss, &r, gx);
    double e = rel_err_fd(dx.data, gx, nx);
    CHECKF(e <= TOL, "upsample bwd %dx%d->%dx%d rel err %.3g", H, W, P, Q, e);
    free(gx), free(r.x), free(r.g);
    eng_tensor_cleanup(&x), eng_tensor_cleanup(&y), eng_tensor_cleanup(&g), eng_tensor_cleanup(&dx);
}

static void test_upsample(void)
{
    check_upsample(4, 5, 9, 13);  /* up, non-integer factors */
    check_upsample(8, 8, 56, 56); /* 7x, like CIFAR 32 -> 224 */
    check_upsample(9, 7, 4, 3);   /* down */
}

/* ---- dropout ---- */

static void test_dropout(void)
{
    const int N = 4, C = 16, H = 8, W = 8;
    const float p = 0.25f;
    eng_tensor x = ENG_TENSOR_INIT, y = ENG_TENSOR_INIT, dx = ENG_TENSOR_INIT;
    eng_tensor_alloc4(&x, N, C, H, W);
    eng_tensor_alloc4(&dx, N, C, H, W);
    long n = eng_tensor_numel(&x);
    fill_uniform(x.data, n, 91, 0.5f, 1.5f);
    eng_tensor_alloc4(&y, N, C, H, W);
    REQUIRE_OK(eng_dropout_fwd(ctx_onednn, &y, &x, p, 7));
    long dropped = 0, bad = 0;
    for (long i = 0; i < n; i++) {
        if (y.data[i] == 0)
            dropped++;
        else
            bad += fabsf(y.data[i] - x.data[i] / (1 - p)) > 1e-6f;
    }
    double frac = (double)dropped / n;
    CHECKF(bad == 0 && fabs(frac - p) < 0.03, "dropout kept values wrong (%ld) or rate %.3f", bad, frac);
    /* backward uses the same mask; other layouts draw the same logical mask */
    REQUIRE_OK(eng_dropout_bwd(ctx_onednn, &dx, &x, p, 7, false));
    CHECK(memcmp(dx.data, y.data, (size_t)n * sizeof(float)) == 0);
    eng_tensor xl = in_layout(&x, ENG_LAYOUT_NCHW8C), yl = in_layout(&x, ENG_LAYOUT_NCHW8C);
    REQUIRE_OK(eng_dropout_fwd(ctx_onednn, &yl, &xl, p, 7));
    eng_tensor yb = to_nchw(&yl);
    CHECK(memcmp(yb.data, y.data, (size_t)n * sizeof(float)) == 0);
    REQUIRE_OK(eng_dropout_fwd(ctx_onednn, &yl, &xl, p, 8));
    eng_tensor yc = to_nchw(&yl);
    CHECK(memcmp(yc.data, y.data, (size_t)n * sizeof(float)) != 0);
    CHECK(eng_dropout_fwd(ctx_onednn, &y, &x, 1.0f, 7) == ENG_ERR_ARG);
    eng_tensor *all[] = {&x, &y, &dx, &xl, &yl, &yb, &yc};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        eng_tensor_cleanup(all[i]);
}

/* ---- softmax cross-entropy ---- */

typedef struct xent_ref {
    int N, K;
    double *z;
    const int32_t *y;
} xent_ref;

static double xent_loss(void *p)
{
    xent_ref *r = p;
    double l = 0;
    for (int n = 0; n < r->N; n++) {
        double m = -INFINITY, s = 0;
        for (int k = 0; k < r->K; k++)
            m = fmax(m, r->z[n * r->K + k]);
        for (int k = 0; k < r->K; k++)
            s += exp(r->z[n * r->K + k] - m);
        l += m + log(s) - r->z[n * r->K + r->y[n]];
    }
    return l / r->N;
}

static void test_xent(void)
{
    const int N = 5, K = 7;
    int32_t labels[5] = {0, 6, 3, 3, 1};
    eng_tensor z = ENG_TENSOR_INIT, dz = ENG_TENSOR_INIT, per = ENG_TENSOR_INIT;
    eng_tensor_alloc2(&z, N, K);
    eng_tensor_alloc2(&dz, N, K);
    eng_tensor_alloc1(&per, N);
    fill_uniform(z.data, N * K, 101, -30, 30); /* large logits: the log-sum-exp must not overflow */
    double sum = 0;
    REQUIRE_OK(eng_xent(ctx_onednn, &z, labels, &sum, &per, &dz, 1.0f / N));
    xent_ref r = {N, K, to_double(z.data, N * K), labels};
    double ref = xent_loss(&r);
    CHECKF(fabs(sum / N - ref) <= 1e-5 * (1 + fabs(ref)), "xent loss %.8g vs %.8g", sum / N, ref);
    double per_sum = 0;
    for (int n = 0; n < N; n++)
        per_sum += per.data[n];
    CHECK(fabs(per_sum - sum) <= 1e-4 * (1 + fabs(sum)));
    double g[35];
    fd(r.z, N * K, xent_loss, &r, g);
    double e = rel_err_fd(dz.data, g, N * K);
    CHECKF(e <= TOL, "xent grad rel err %.3g", e);
    int32_t bad[5] = {0, 7, 0, 0, 0};
    CHECK(eng_xent(ctx_onednn, &z, bad, &sum, NULL, NULL, 1) == ENG_ERR_ARG);
    CHECK(strstr(eng_last_error(), "label 7") != NULL);
    free(r.z);
    eng_tensor_cleanup(&z), eng_tensor_cleanup(&dz), eng_tensor_cleanup(&per);
}

/* ---- feature distance (LwF) ---- */

typedef struct fdist_ref {
    int N, F, l1;
    double *z, *z0;
} fdist_ref;

static double fdist_loss(void *p)
{
    fdist_ref *r = p;
    double l = 0;
    for (int n = 0; n < r->N; n++) {
        double d = 0;
        for (int f = 0; f < r->F; f++) {
            double e = r->z[n * r->F + f] - r->z0[n * r->F + f];
            d += r->l1 ? fabs(e) : e * e;
        }
        l += r->l1 ? d : sqrt(d);
    }
    return l / r->N;
}

static void test_feature_distance(void)
{
    const int N = 4, F = 9;
    eng_tensor z = ENG_TENSOR_INIT, z0 = ENG_TENSOR_INIT, dz = ENG_TENSOR_INIT;
    eng_tensor_alloc2(&z, N, F);
    eng_tensor_alloc2(&z0, N, F);
    eng_tensor_alloc2(&dz, N, F);
    fill_distinct(z.data, N * F, 121); /* |z - z0| >= 0.05: away from the l1 kinks */
    for (int i = 0; i < N * F; i++)
        z0.data[i] = 0;
    for (int l1 = 0; l1 <= 1; l1++) {
        double sum = 0;
        REQUIRE_OK(eng_feature_distance_loss(ctx_onednn, &z, &z0, l1, &sum, &dz, 1.0f / N));
        fdist_ref r = {N, F, l1, to_double(z.data, N * F), to_double(z0.data, N * F)};
        double ref = fdist_loss(&r);
        CHECKF(fabs(sum / N - ref) <= 1e-6 * (1 + ref), "feature distance l%d: %.8g vs %.8g", l1 ? 1 : 2, sum / N,
               ref);
        double g[36];
        fd(r.z, N * F, fdist_loss, &r, g);
        double e = rel_err_fd(dz.data, g, N * F);
        CHECKF(e <= TOL, "feature distance l%d grad rel err %.3g", l1 ? 1 : 2, e);
        free(r.z), free(r.z0);
    }
    /* identical rows: distance 0 and a zero gradient, not NaN */
    double sum = -1;
    REQUIRE_OK(eng_feature_distance_loss(ctx_onednn, &z, &z, false, &sum, &dz, 1.0f));
    CHECK(sum == 0 && dz.data[0] == 0 && dz.data[N * F - 1] == 0);
    eng_tensor_cleanup(&z), eng_tensor_cleanup(&z0), eng_tensor_cleanup(&dz);
}

/* ---- SGD: PyTorch's update rule, three steps against a double recurrence ---- */

static void check_sgd(float momentum, float dampening, float wd, bool nesterov)
{
    const int n = 9;
    eng_tensor p = ENG_TENSOR_INIT, g = ENG_TENSOR_INIT, buf = ENG_TENSOR_INIT;
    eng_tensor_alloc1(&p, n);
    eng_tensor_alloc1(&g, n);
    eng_tensor_alloc1(&buf, n);
    fill_uniform(p.data, n, 111, -1, 1);
    double rp[9], rb[9];
    for (int i = 0; i < n; i++)
        rp[i] = p.data[i];
    eng_sgd_desc d = {0.1f, momentum, dampening, wd, nesterov};
    double e = 0;
    for (int step = 0; step < 3; step++) {
        fill_uniform(g.data, n, 112 + step, -1, 1);
        REQUIRE_OK(eng_sgd_step(ctx_onednn, &p, &g, &buf, &d, step == 0));
        for (int i = 0; i < n; i++) {
            double gi = g.data[i] + (double)wd * rp[i];
            if (momentum > 0) {
                rb[i] = step == 0 ? gi : momentum * rb[i] + (1 - dampening) * gi;
                gi = nesterov ? gi + momentum * rb[i] : rb[i];
            }
            rp[i] -= 0.1 * gi;
            e = fmax(e, fabs(p.data[i] - rp[i]));
        }
    }
    CHECKF(e <= 1e-6, "sgd m%.1f d%.1f wd%.3g nesterov %d err %.3g", momentum, dampening, wd, nesterov, e);
    eng_tensor_cleanup(&p), eng_tensor_cleanup(&g), eng_tensor_cleanup(&buf);
}

static void test_sgd(void)
{
    check_sgd(0, 0, 0, false);
    check_sgd(0.9f, 0, 5e-4f, false);
    check_sgd(0.9f, 0, 5e-4f, true);
    check_sgd(0.5f, 0.3f, 0.01f, false);
    eng_tensor p = ENG_TENSOR_INIT;
    eng_tensor_alloc1(&p, 3);
    eng_sgd_desc bad = {0.1f, 0.9f, 0.1f, 0, true}; /* Nesterov with dampening */
    CHECK(eng_sgd_step(ctx_onednn, &p, &p, &p, &bad, true) == ENG_ERR_ARG);
    eng_tensor_cleanup(&p);
}

int main(void)
{
    eng_ctx_opts go = {.conv = ENG_CONV_GEMM};
    if (eng_ctx_new(&ctx_onednn, NULL) != ENG_OK || eng_ctx_new(&ctx_gemm, &go) != ENG_OK) {
        printf("not ok - context: %s\n", eng_last_error());
        return 1;
    }
    T_RUN(test_conv_onednn);
    T_RUN(test_conv_gemm);
    T_RUN(test_conv_errors);
    T_RUN(test_batchnorm);
    T_RUN(test_affine_and_fold);
    T_RUN(test_elementwise);
    T_RUN(test_pooling);
    T_RUN(test_linear);
    T_RUN(test_upsample);
    T_RUN(test_dropout);
    T_RUN(test_xent);
    T_RUN(test_feature_distance);
    T_RUN(test_sgd);
    eng_ctx_free(ctx_onednn);
    eng_ctx_free(ctx_gemm);
    return t_exit();
}
