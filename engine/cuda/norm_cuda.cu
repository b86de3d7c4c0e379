/* CUDA kernels for the per-channel operations (batch norm, affine, folding, channel sums),
 * pooling, bilinear resizing and the softmax cross-entropy, mirroring ops_cpu.c formula for
 * formula. Reductions accumulate in double in a fixed order, so results are deterministic. */
#include "cu.h"

#include <math.h>

/* ---- per-channel sums ----
 * Pass 1 writes partial sums [splits][C]; pass 2 adds the splits of each channel in order. */

/* X == 1 (NCHW, and 1-D/2-D tensors): one block per (channel, split), threads along the rows. */
__global__ void k_partial_x1(const float *x1, const float *x2, const float *m, cu_view v, int splits, bool want_b,
                             double *pa, double *pb)
{
    const int64_t c = blockIdx.x, sp = blockIdx.y, M = v.N * v.S;
    const int64_t m0 = M * sp / splits, m1 = M * (sp + 1) / splits;
    const float mc = m ? m[c] : 0.0f;
    double a = 0, b = 0;
    int64_t j = m0 + threadIdx.x, n = j / v.S, s = j % v.S;
    for (; j < m1; j += blockDim.x) {
        const int64_t o = (n * v.CB + c) * v.S + s;
        const float u = x1[o];
        a += u;
        if (want_b)
            b += (double)u * ((x2 ? x2[o] : u) - mc);
        s += blockDim.x;
        if (s >= v.S) {
            n += s / v.S;
            s %= v.S;
        }
    }
    a = block_sum(a);
    if (want_b)
        b = block_sum(b);
    if (threadIdx.x == 0) {
        pa[sp * v.C + c] = a;
        pb[sp * v.C + c] = b;
    }
}

/* X > 1 (NHWC): 32 channels across a warp, 8 rows of positions down the block. */
__global__ void k_partial_xn(const float *x1, const float *x2, const float *m, cu_view v, int splits, bool want_b,
                             double *pa, double *pb)
{
    __shared__ double sa[8][33], sb[8][33];
    const int64_t c = (int64_t)blockIdx.x * 32 + threadIdx.x, sp = blockIdx.y, R = v.N * v.S;
    const int64_t r0 = R * sp / splits, r1 = R * (sp + 1) / splits;
    double a = 0, b = 0;
    if (c < v.C) {
        const float mc = m ? m[c] : 0.0f;
        for (int64_t r = r0 + threadIdx.y; r < r1; r += blockDim.y) {
            const int64_t o = v.CB == 1 ? r * v.X + c : cu_at(v, r / v.S, c, r % v.S);
            const float u = x1[o];
            a += u;
            if (want_b)
                b += (double)u * ((x2 ? x2[o] : u) - mc);
        }
    }
    sa[threadIdx.y][threadIdx.x] = a;
    sb[threadIdx.y][threadIdx.x] = b;
    __syncthreads();
    if (threadIdx.y == 0 && c < v.C) {
        for (int i = 1; i < (int)blockDim.y; i++) {
            a += sa[i][threadIdx.x];
            b += sb[i][threadIdx.x];
        }
        pa[sp * v.C + c] = a;
        pb[sp * v.C + c] = b;
    }
}

__global__ void k_sum_splits(const double *pa, const double *pb, int splits, int64_t C, double *sa, double *sb)
{
    CU_LOOP(c, C)
    {
        double a = 0, b = 0;
        for (int s = 0; s < splits; s++) {
            a += pa[s * C + c];
            b += pb[s * C + c];
        }
        sa[c] = a;
        if (sb)
            sb[c] = b;
    }
}

static int clamp_splits(int64_t want, int64_t work)
{
    int64_t s = want < work ? want : work;
    return (int)(s < 1 ? 1 : s > 256 ? 256 : s);
}

eng_status cu_chan_sums(eng_ctx *ctx, const eng_tensor *x1, const float *x2, const float *m, bool want_b, double *sa,
                        double *sb)
{
    cudaStream_t st = cu_of(ctx)->stream;
    const cu_view v = cu_view_of(x1);
    const int64_t rows = v.N * v.S;
    cu_temps tmp(ctx);
    int splits;
    double *part;
    if (v.X == 1) {
        splits = clamp_splits((1024 + v.C - 1) / v.C, rows / 4096);
        CU_TRY(tmp.get((size_t)splits * (size_t)v.C * 2, &part));
        dim3 grid((unsigned)v.C, (unsigned)splits);
        k_partial_x1<<<grid, CU_THREADS, 0, st>>>(x1->data, x2, m, v, splits, want_b, part,
                                                  part + (size_t)splits * v.C);
    } else {
        const int64_t tiles = (v.C + 31) / 32;
        splits = clamp_splits((1024 + tiles - 1) / tiles, rows / 256);
        CU_TRY(tmp.get((size_t)splits * (size_t)v.C * 2, &part));
        dim3 grid((unsigned)tiles, (unsigned)splits), block(32, 8);
        k_partial_xn<<<grid, block, 0, st>>>(x1->data, x2, m, v, splits, want_b, part, part + (size_t)splits * v.C);
    }
    CU_TRY(cu_launched("channel partial sums"));
    k_sum_splits<<<cu_blocks(v.C), CU_THREADS, 0, st>>>(part, part + (size_t)splits * v.C, splits, v.C, sa,
                                                        want_b ? sb : NULL);
    return cu_launched("channel sums");
}

/* ---- per-channel affine: y (+)= x * scale[c] + shift[c], optionally relu ---- */

__global__ void k_affine(float *y, const float *x, cu_view v, const float *scale, const float *shift,
                         const float *res, bool relu, bool acc, int64_t n)
{
    CU_LOOP(i, n)
    {
        const int64_t c = cu_chan(v, i);
        float o = x[i] * scale[c] + (shift ? shift[c] : 0.0f) + (res ? res[i] : 0.0f);
        if (relu)
            o = o > 0.0f ? o : 0.0f;
        y[i] = acc ? y[i] + o : o;
    }
}

static eng_status affine(eng_ctx *ctx, float *y, const eng_tensor *x, const float *scale, const float *shift,
                         const float *res, bool relu, bool acc)
{
    const cu_view v = cu_view_of(x);
    const int64_t n = eng_tensor_storage(x);
    k_affine<<<cu_blocks(n), CU_THREADS, 0, cu_of(ctx)->stream>>>(y, x->data, v, scale, shift, res, relu, acc, n);
    return cu_launched("channel affine");
}

eng_status cu_channel_affine_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *scale,
                                 const eng_tensor *shift, bool relu)
{
    CU_TRY(cu_enter(ctx));
    return affine(ctx, y->data, x, scale->data, shift ? shift->data : NULL, NULL, relu, false);
}

eng_status cu_channel_affine_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *scale,
                                 bool accumulate)
{
    CU_TRY(cu_enter(ctx));
    return affine(ctx, dx->data, dy, scale->data, NULL, NULL, false, accumulate);
}

__global__ void k_sums_out(float *sum_dy, float *sum_dyx, const double *sa, const double *sb, int64_t C)
{
    CU_LOOP(c, C)
    {
        if (sum_dy)
            sum_dy[c] = (float)sa[c];
        if (sum_dyx)
            sum_dyx[c] = (float)sb[c];
    }
}

eng_status cu_channel_sums(eng_ctx *ctx, eng_tensor *sum_dy, eng_tensor *sum_dyx, const eng_tensor *dy,
                           const eng_tensor *x)
{
    CU_TRY(cu_enter(ctx));
    const int64_t C = dy->dim[1];
    cu_temps tmp(ctx);
    double *s;
    CU_TRY(tmp.get((size_t)C * 2, &s));
    CU_TRY(cu_chan_sums(ctx, dy, x ? x->data : NULL, NULL, sum_dyx != NULL, s, s + C));
    k_sums_out<<<cu_blocks(C), CU_THREADS, 0, cu_of(ctx)->stream>>>(sum_dy ? sum_dy->data : NULL,
                                                                    sum_dyx ? sum_dyx->data : NULL, s, s + C, C);
    return cu_launched("channel sums out");
}

/* ---- batch norm (training) ---- */

__global__ void k_bn_mean(float *save_mean, const double *sum, int64_t count, int64_t C)
{
    CU_LOOP(c, C) save_mean[c] = (float)(sum[c] / (double)count);
}

/* sq[c] = sum x (x - mean) = sum (x - mean)^2; ab = [scale, shift] of the normalising affine. */
__global__ void k_bn_stats(const double *sq, int64_t count, const float *save_mean, const float *gamma,
                           const float *beta, float eps, float momentum, float *save_invstd, float *ab,
                           float *running_mean, float *running_var, int64_t C)
{
    CU_LOOP(c, C)
    {
        double mean = save_mean[c];
        double var = sq[c] / (double)count;
        if (var < 0)
            var = 0;
        double invstd = 1.0 / sqrt(var + eps);
        save_invstd[c] = (float)invstd;
        ab[c] = (float)(gamma[c] * invstd);
        ab[C + c] = (float)(beta[c] - mean * gamma[c] * invstd);
        double unbiased = var * (double)count / (double)(count - 1);
        running_mean[c] = (float)((1.0 - momentum) * running_mean[c] + momentum * mean);
        running_var[c] = (float)((1.0 - momentum) * running_var[c] + momentum * unbiased);
    }
}

eng_status cu_bn_train_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *gamma,
                           const eng_tensor *beta, eng_tensor *running_mean, eng_tensor *running_var,
                           eng_tensor *save_mean, eng_tensor *save_invstd, float momentum, float eps,
                           const eng_tensor *residual, bool relu)
{
    CU_TRY(cu_enter(ctx));
    cudaStream_t st = cu_of(ctx)->stream;
    const cu_view v = cu_view_of(x);
    const int64_t C = v.C, count = v.N * v.S;
    cu_temps tmp(ctx);
    double *s;
    float *ab;
    CU_TRY(tmp.get((size_t)C * 2, &s));
    CU_TRY(tmp.get((size_t)C * 2, &ab));
    /* Two passes (mean, then deviations from it) keep the variance exact for large means. */
    CU_TRY(cu_chan_sums(ctx, x, NULL, NULL, false, s, s + C));
    k_bn_mean<<<cu_blocks(C), CU_THREADS, 0, st>>>(save_mean->data, s, count, C);
    CU_TRY(cu_launched("bn mean"));
    CU_TRY(cu_chan_sums(ctx, x, x->data, save_mean->data, true, s, s + C));
    k_bn_stats<<<cu_blocks(C), CU_THREADS, 0, st>>>(s + C, count, save_mean->data, gamma->data, beta->data, eps,
                                                    momentum, save_invstd->data, ab, running_mean->data,
                                                    running_var->data, C);
    CU_TRY(cu_launched("bn stats"));
    running_mean->version++;
    running_var->version++;
    return affine(ctx, y->data, x, ab, ab + C, residual ? residual->data : NULL, relu, false);
}

__global__ void k_bn_bwd_coef(const double *sdy, const double *sdyx, int64_t count, const float *gamma,
                              const float *save_mean, const float *save_invstd, float *dgamma, float *dbeta, bool acc,
                              float *k, int64_t C)
{
    CU_LOOP(c, C)
    {
        double is = save_invstd[c];
        double g_beta = sdy[c], g_gamma = sdyx[c] * is;
        if (dbeta)
            dbeta[c] = (float)((acc ? dbeta[c] : 0.0) + g_beta);
        if (dgamma)
            dgamma[c] = (float)((acc ? dgamma[c] : 0.0) + g_gamma);
        /* dx = gamma * is * (dy - mean(dy) - (x - mean) * is^2 * mean(dy * (x - mean))) */
        double a = gamma[c] * is;
        k[c] = (float)a;
        k[C + c] = (float)(a * is * is * sdyx[c] / (double)count);
        float kb_mean = k[C + c] * save_mean[c];
        k[2 * C + c] = (float)(a * (sdy[c] / (double)count) - kb_mean);
    }
}

__global__ void k_bn_bwd_dx(float *dx, const float *dy, const float *x, cu_view v, const float *k, bool acc, int64_t n)
{
    CU_LOOP(i, n)
    {
        const int64_t c = cu_chan(v, i);
        float o = k[c] * dy[i] - k[v.C + c] * x[i] - k[2 * v.C + c];
        dx[i] = acc ? dx[i] + o : o;
    }
}

eng_status cu_bn_train_bwd(eng_ctx *ctx, eng_tensor *dx, eng_tensor *dgamma, eng_tensor *dbeta, const eng_tensor *dy,
                           const eng_tensor *x, const eng_tensor *gamma, const eng_tensor *save_mean,
                           const eng_tensor *save_invstd, bool accumulate)
{
    CU_TRY(cu_enter(ctx));
    cudaStream_t st = cu_of(ctx)->stream;
    const cu_view v = cu_view_of(x);
    const int64_t C = v.C, count = v.N * v.S;
    cu_temps tmp(ctx);
    double *s;
    float *k;
    CU_TRY(tmp.get((size_t)C * 2, &s));
    CU_TRY(tmp.get((size_t)C * 3, &k));
    /* sum dy and sum dy * (x - mean) */
    CU_TRY(cu_chan_sums(ctx, dy, x->data, save_mean->data, true, s, s + C));
    k_bn_bwd_coef<<<cu_blocks(C), CU_THREADS, 0, st>>>(s, s + C, count, gamma->data, save_mean->data, save_invstd->data,
                                                       dgamma ? dgamma->data : NULL, dbeta ? dbeta->data : NULL,
                                                       accumulate, k, C);
    CU_TRY(cu_launched("bn backward coefficients"));
    if (!dx)
        return ENG_OK;
    const int64_t n = eng_tensor_storage(x);
    k_bn_bwd_dx<<<cu_blocks(n), CU_THREADS, 0, st>>>(dx->data, dy->data, x->data, v, k, accumulate, n);
    return cu_launched("bn backward");
}

/* ---- eval-mode batch norm folded into the convolution ---- */

__global__ void k_fold_w(float *wf, const float *w, const float *gamma, const float *var, float eps, int64_t per,
                         int64_t n)
{
    CU_LOOP(i, n)
    {
        const int64_t k = i / per;
        double sc = gamma[k] / sqrt((double)var[k] + eps);
        wf[i] = (float)(w[i] * sc);
    }
}

__global__ void k_fold_b(float *bf, float *scale, const float *b, const float *gamma, const float *beta,
                         const float *mean, const float *var, float eps, int64_t K)
{
    CU_LOOP(k, K)
    {
        double sc = gamma[k] / sqrt((double)var[k] + eps);
        bf[k] = (float)(beta[k] + ((b ? b[k] : 0.0) - mean[k]) * sc);
        if (scale)
            scale[k] = (float)sc;
    }
}

eng_status cu_fold_bn(eng_ctx *ctx, eng_tensor *wf, eng_tensor *bf, eng_tensor *scale, const eng_tensor *w,
                      const eng_tensor *b, const eng_tensor *gamma, const eng_tensor *beta, const eng_tensor *mean,
                      const eng_tensor *var, float eps)
{
    CU_TRY(cu_enter(ctx));
    cudaStream_t st = cu_of(ctx)->stream;
    const int64_t K = w->dim[0], per = w->dim[1] * w->dim[2] * w->dim[3];
    k_fold_w<<<cu_blocks(K * per), CU_THREADS, 0, st>>>(wf->data, w->data, gamma->data, var->data, eps, per, K * per);
    CU_TRY(cu_launched("fold weights"));
    k_fold_b<<<cu_blocks(K), CU_THREADS, 0, st>>>(bf->data, scale ? scale->data : NULL, b ? b->data : NULL, gamma->data,
                                                  beta->data, mean->data, var->data, eps, K);
    return cu_launched("fold bias");
}

/* ---- pooling ----
 * Threads walk outputs (or inputs) channel-fastest for channels-last data, position-fastest
 * otherwise, so that neighbouring threads read neighbouring floats. */

__device__ static void decompose(int64_t i, bool cl, int64_t C, int64_t H, int64_t W, int64_t *n, int64_t *c,
                                 int64_t *h, int64_t *w)
{
    if (cl) {
        *c = i % C;
        i /= C;
        *w = i % W;
        i /= W;
        *h = i % H;
        *n = i / H;
    } else {
        *w = i % W;
        i /= W;
        *h = i % H;
        i /= H;
        *c = i % C;
        *n = i / C;
    }
}

__global__ void k_maxpool_fwd(float *y, cu_view vy, const float *x, cu_view vx, int k, int stride, int pad,
                              int64_t total)
{
    CU_LOOP(i, total)
    {
        int64_t n, c, p, q;
        decompose(i, vy.X > 1, vy.C, vy.H, vy.W, &n, &c, &p, &q);
        float o = -INFINITY;
        for (int a = 0; a < k; a++) {
            const int64_t h = p * stride - pad + a;
            if (h < 0 || h >= vx.H)
                continue;
            for (int b = 0; b < k; b++) {
                const int64_t w = q * stride - pad + b;
                if (w < 0 || w >= vx.W)
                    continue;
                const float e = x[cu_at(vx, n, c, h * vx.W + w)];
                o = e > o || isnan(e) ? e : o;
            }
        }
        y[cu_at(vy, n, c, p * vy.W + q)] = o;
    }
}

eng_status cu_maxpool_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, int k, int stride, int pad,
                          eng_op_cache *cache)
{
    (void)cache;
    CU_TRY(cu_enter(ctx));
    const cu_view vx = cu_view_of(x), vy = cu_view_of(y);
    const int64_t total = vy.N * vy.C * vy.S;
    k_maxpool_fwd<<<cu_blocks(total), CU_THREADS, 0, cu_of(ctx)->stream>>>(y->data, vy, x->data, vx, k, stride, pad,
                                                                           total);
    return cu_launched("maxpool");
}

/* Each input gathers the gradients of the windows whose first maximum it is, in window order
 * (the order in which the CPU adds them), with no atomics. */
__global__ void k_maxpool_bwd(float *dx, const float *dy, cu_view vy, const float *x, cu_view vx, int k, int stride,
                              int pad, bool acc, int64_t total)
{
    CU_LOOP(i, total)
    {
        int64_t n, c, h, w;
        decompose(i, vx.X > 1, vx.C, vx.H, vx.W, &n, &c, &h, &w);
        const int64_t off = cu_at(vx, n, c, h * vx.W + w);
        float g = acc ? dx[off] : 0.0f;
        const int64_t ph = h + pad - k + 1, pw = w + pad - k + 1;
        const int64_t p0 = ph > 0 ? (ph + stride - 1) / stride : 0, q0 = pw > 0 ? (pw + stride - 1) / stride : 0;
        int64_t p1 = (h + pad) / stride, q1 = (w + pad) / stride;
        if (p1 > vy.H - 1)
            p1 = vy.H - 1;
        if (q1 > vy.W - 1)
            q1 = vy.W - 1;
        for (int64_t p = p0; p <= p1; p++)
            for (int64_t q = q0; q <= q1; q++) {
                /* the first maximum of window (p, q); a NaN, once seen, stays */
                float best = 0.0f;
                int64_t bh = -1, bw = -1;
                for (int a = 0; a < k; a++) {
                    const int64_t hh = p * stride - pad + a;
                    if (hh < 0 || hh >= vx.H)
                        continue;
                    for (int b = 0; b < k; b++) {
                        const int64_t ww = q * stride - pad + b;
                        if (ww < 0 || ww >= vx.W)
                            continue;
                        const float e = x[cu_at(vx, n, c, hh * vx.W + ww)];
                        if (bh < 0 || e > best || (isnan(e) && !isnan(best))) {
                            best = e;
                            bh = hh;
                            bw = ww;
                        }
                    }
                }
                if (bh == h && bw == w)
                    g += dy[cu_at(vy, n, c, p * vy.W + q)];
            }
        dx[off] = g;
    }
}

eng_status cu_maxpool_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *x, int k, int stride,
                          int pad, bool accumulate, eng_op_cache *cache)
{
    (void)cache;
    CU_TRY(cu_enter(ctx));
    const cu_view vx = cu_view_of(x), vy = cu_view_of(dy);
    const int64_t total = vx.N * vx.C * vx.S;
    k_maxpool_bwd<<<cu_blocks(total), CU_THREADS, 0, cu_of(ctx)->stream>>>(dx->data, dy->data, vy, x->data, vx, k,
                                                                           stride, pad, accumulate, total);
    return cu_launched("maxpool backward");
}

__global__ void k_gap_fwd(float *y, const float *x, cu_view v, float inv)
{
    CU_LOOP(i, v.N * v.C)
    {
        const int64_t n = i / v.C, c = i % v.C;
        double acc = 0;
        for (int64_t s = 0; s < v.S; s++)
            acc += x[cu_at(v, n, c, s)];
        y[i] = (float)acc * inv;
    }
}

__global__ void k_gap_bwd(float *dx, const float *dy, cu_view v, float inv, bool acc, int64_t n)
{
    CU_LOOP(i, n)
    {
        const int64_t c = cu_chan(v, i), b = i / (v.CB * v.S * v.X);
        const float o = dy[b * v.C + c] * inv;
        dx[i] = acc ? dx[i] + o : o;
    }
}

eng_status cu_gap_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x)
{
    CU_TRY(cu_enter(ctx));
    const cu_view v = cu_view_of(x);
    k_gap_fwd<<<cu_blocks(v.N * v.C), CU_THREADS, 0, cu_of(ctx)->stream>>>(y->data, x->data, v, 1.0f / (float)v.S);
    return cu_launched("global average pool");
}

eng_status cu_gap_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, bool accumulate)
{
    CU_TRY(cu_enter(ctx));
    const cu_view v = cu_view_of(dx);
    const int64_t n = eng_tensor_storage(dx);
    k_gap_bwd<<<cu_blocks(n), CU_THREADS, 0, cu_of(ctx)->stream>>>(dx->data, dy->data, v, 1.0f / (float)v.S, accumulate,
                                                                   n);
    return cu_launched("global average pool backward");
}

/* ---- bilinear resize (align_corners = false), as lerp_table in ops_cpu.c ---- */

struct cu_lerp {
    int64_t i0, i1;
    float w0, w1;
};

__device__ static cu_lerp lerp_at(int64_t o, int64_t out, int64_t in)
{
    const double scale = (double)in / (double)out;
    double src = ((double)o + 0.5) * scale - 0.5;
    if (src < 0)
        src = 0;
    int64_t i0 = (int64_t)src;
    if (i0 > in - 1)
        i0 = in - 1;
    const int64_t i1 = i0 + (i0 < in - 1 ? 1 : 0);
    const float l = (float)(src - (double)i0);
    cu_lerp r = {i0, i1, 1.0f - l, l};
    return r;
}

__global__ void k_upsample_fwd(float *y, const float *x, int64_t H, int64_t W, int64_t P, int64_t Q, int64_t total)
{
    CU_LOOP(i, total)
    {
        const int64_t q = i % Q, p = (i / Q) % P, pl = i / (P * Q);
        const float *ip = x + pl * H * W;
        const cu_lerp a = lerp_at(p, P, H), b = lerp_at(q, Q, W);
        y[i] = a.w0 * (b.w0 * ip[a.i0 * W + b.i0] + b.w1 * ip[a.i0 * W + b.i1]) +
               a.w1 * (b.w0 * ip[a.i1 * W + b.i0] + b.w1 * ip[a.i1 * W + b.i1]);
    }
}

/* Outputs whose interpolation can touch input i lie in [lo, hi) (a margin of 2 either side
 * absorbs rounding; lerp_at decides exactly). */
__device__ static void touching(int64_t i, int64_t in, int64_t out, int64_t *lo, int64_t *hi)
{
    const double r = (double)out / (double)in;
    int64_t a = (int64_t)floor(((double)i - 0.5) * r - 0.5) - 2, b = (int64_t)ceil(((double)i + 1.5) * r - 0.5) + 2;
    *lo = a < 0 ? 0 : a;
    *hi = b > out ? out : b;
}

__global__ void k_upsample_bwd(float *dx, const float *dy, int64_t H, int64_t W, int64_t P, int64_t Q, bool acc,
                               int64_t total)
{
    CU_LOOP(i, total)
    {
        const int64_t w = i % W, h = (i / W) % H, pl = i / (H * W);
        const float *g = dy + pl * P * Q;
        int64_t p0, p1, q0, q1;
        touching(h, H, P, &p0, &p1);
        touching(w, W, Q, &q0, &q1);
        float sum = 0.0f;
        for (int64_t p = p0; p < p1; p++) {
            const cu_lerp a = lerp_at(p, P, H);
            if (a.i0 != h && a.i1 != h)
                continue;
            const float wa = (a.i0 == h ? a.w0 : 0.0f) + (a.i1 == h ? a.w1 : 0.0f);
            for (int64_t q = q0; q < q1; q++) {
                const cu_lerp b = lerp_at(q, Q, W);
                if (b.i0 != w && b.i1 != w)
                    continue;
                const float wb = (b.i0 == w ? b.w0 : 0.0f) + (b.i1 == w ? b.w1 : 0.0f);
                sum += wa * wb * g[p * Q + q];
            }
        }
        dx[i] = acc ? dx[i] + sum : sum;
    }
}

eng_status cu_upsample_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x)
{
    CU_TRY(cu_enter(ctx));
    const int64_t total = eng_tensor_numel(y);
    k_upsample_fwd<<<cu_blocks(total), CU_THREADS, 0, cu_of(ctx)->stream>>>(y->data, x->data, x->dim[2], x->dim[3],
                                                                            y->dim[2], y->dim[3], total);
    return cu_launched("upsample");
}

eng_status cu_upsample_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, bool accumulate)
{
    CU_TRY(cu_enter(ctx));
    const int64_t total = eng_tensor_numel(dx);
    k_upsample_bwd<<<cu_blocks(total), CU_THREADS, 0, cu_of(ctx)->stream>>>(dx->data, dy->data, dx->dim[2], dx->dim[3],
                                                                            dy->dim[2], dy->dim[3], accumulate, total);
    return cu_launched("upsample backward");
}

/* ---- softmax cross-entropy: one block per example ---- */

__global__ void k_xent(const float *logits, const int32_t *labels, int64_t K, float grad_scale, float *per_example,
                       float *dlogits, double *rows)
{
    const int64_t n = blockIdx.x;
    const float *z = logits + n * K;
    float m = z[0];
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x)
        m = z[k] > m ? z[k] : m;
    m = block_max(m);
    double se = 0;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x)
        se += exp((double)z[k] - m);
    se = block_sum(se);
    const double lse = m + log(se);
    const int32_t y = labels[n];
    if (threadIdx.x == 0) {
        const double l = lse - z[y];
        if (per_example)
            per_example[n] = (float)l;
        if (rows)
            rows[n] = l;
    }
    if (dlogits) {
        float *g = dlogits + n * K;
        for (int64_t k = threadIdx.x; k < K; k += blockDim.x)
            g[k] = (float)((exp((double)z[k] - lse) - (k == y ? 1.0 : 0.0)) * grad_scale);
    }
}

__global__ void k_sum_rows(const double *rows, int64_t N, double *out)
{
    double s = 0;
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x)
        s += rows[i];
    s = block_sum(s);
    if (threadIdx.x == 0)
        *out = s;
}

eng_status cu_rows_sum(eng_ctx *ctx, double *rows, int64_t n, double *out)
{
    cudaStream_t st = cu_of(ctx)->stream;
    k_sum_rows<<<1, CU_THREADS, 0, st>>>(rows, n, rows + n);
    CU_TRY(cu_launched("row sum"));
    CU_TRY(cu_check(cudaMemcpyAsync(out, rows + n, sizeof(double), cudaMemcpyDeviceToHost, st), "cudaMemcpyAsync"));
    return cu_check(cudaStreamSynchronize(st), "row sum");
}

eng_status cu_xent(eng_ctx *ctx, const eng_tensor *logits, const int32_t *labels, double *loss_sum,
                   eng_tensor *per_example, eng_tensor *dlogits, float grad_scale)
{
    CU_TRY(cu_enter(ctx));
    cudaStream_t st = cu_of(ctx)->stream;
    const int64_t N = logits->dim[0], K = logits->dim[1];
    if (N > 0x7fffffff)
        return eng_fail(ENG_ERR_LIMIT, "cuda: xent: more than 2^31 examples");
    cu_temps tmp(ctx);
    int32_t *lab;
    double *rows = NULL;
    CU_TRY(tmp.get((size_t)N, &lab));
    if (loss_sum)
        CU_TRY(tmp.get((size_t)N + 1, &rows));
    /* labels live on the host; a pageable copy is staged before this call returns */
    CU_TRY(cu_check(cudaMemcpyAsync(lab, labels, (size_t)N * sizeof(int32_t), cudaMemcpyHostToDevice, st),
                    "cudaMemcpyAsync"));
    k_xent<<<(unsigned)N, CU_THREADS, 0, st>>>(logits->data, lab, K, grad_scale, per_example ? per_example->data : NULL,
                                               dlogits ? dlogits->data : NULL, rows);
    CU_TRY(cu_launched("xent"));
    if (!loss_sum)
        return cu_check(cudaStreamSynchronize(st), "xent"); /* the label buffer may be pinned memory */
    return cu_rows_sum(ctx, rows, N, loss_sum);
}
