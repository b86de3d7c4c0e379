/* CUDA kernels of the attacks, mirroring attack_cpu.c: margin and DLR losses, l_inf sign steps
 * and projections, APGD's momentum step, random starts, moving example rows, distance checks. */
#include "cu.h"

static __device__ inline float clamp_unit(float v, float lo, float hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Projection onto {|x - x0| <= eps} intersected with [0,1]. */
static __device__ inline float project(float v, float x0, float eps)
{
    return clamp_unit(clamp_unit(v, x0 - eps, x0 + eps), 0.0f, 1.0f);
}

static __device__ inline float sign_of(float g) { return (float)((g > 0.0f) - (g < 0.0f)); }

/* A host array of n values in a device temporary. */
template <typename T> static eng_status to_device(eng_ctx *ctx, cu_temps &tmp, const T *host, int64_t n, T **out)
{
    CU_TRY(tmp.get((size_t)n, out));
    return cu_check(cudaMemcpyAsync(*out, host, (size_t)n * sizeof(T), cudaMemcpyHostToDevice, cu_of(ctx)->stream),
                    "cudaMemcpyAsync");
}

/* ---- losses the attacker maximises: one thread per example ---- */

__global__ void k_margin(const float *logits, const int32_t *labels, int64_t N, int64_t K, float kappa, float gs,
                         float *per, float *dz, double *rows)
{
    CU_LOOP(n, N)
    {
        const float *z = logits + n * K;
        const int32_t y = labels[n];
        int64_t o = y == 0 ? 1 : 0; /* the largest other logit, first on ties */
        for (int64_t k = 0; k < K; k++)
            if (k != y && z[k] > z[o])
                o = k;
        const double m = (double)z[y] - z[o] + kappa;
        const double l = m > 0 ? -m : 0.0;
        if (per)
            per[n] = (float)l;
        if (rows)
            rows[n] = l;
        if (dz) {
            float *g = dz + n * K;
            for (int64_t k = 0; k < K; k++)
                g[k] = 0.0f;
            if (m > 0) {
                g[y] = -gs;
                g[o] = gs;
            }
        }
    }
}

__global__ void k_dlr(const float *logits, const int32_t *labels, int64_t N, int64_t K, float gs, float *per, float *dz,
                      double *rows)
{
    CU_LOOP(n, N)
    {
        const float *z = logits + n * K;
        const int32_t y = labels[n];
        /* the three largest logits, first occurrence first on ties */
        int64_t i1 = -1, i2 = -1, i3 = -1;
        for (int64_t k = 0; k < K; k++) {
            if (i1 < 0 || z[k] > z[i1]) {
                i3 = i2, i2 = i1, i1 = k;
            } else if (i2 < 0 || z[k] > z[i2]) {
                i3 = i2, i2 = k;
            } else if (i3 < 0 || z[k] > z[i3]) {
                i3 = k;
            }
        }
        const int64_t o = i1 == y ? i2 : i1;
        const double a = (double)z[y] - z[o], d = (double)z[i1] - z[i3] + 1e-12;
        const double l = -a / d;
        if (per)
            per[n] = (float)l;
        if (rows)
            rows[n] = l;
        if (dz) {
            float *g = dz + n * K;
            for (int64_t k = 0; k < K; k++)
                g[k] = 0.0f;
            g[y] += (float)(-1.0 / d * gs);
            g[o] += (float)(1.0 / d * gs);
            g[i1] += (float)(a / (d * d) * gs);
            g[i3] -= (float)(a / (d * d) * gs);
        }
    }
}

/* Runs a per-example loss kernel; the host labels go to the device, the sum comes back. */
template <typename Launch>
static eng_status row_loss(eng_ctx *ctx, const eng_tensor *logits, const int32_t *labels, double *loss_sum,
                           const char *what, Launch launch)
{
    CU_TRY(cu_enter(ctx));
    cudaStream_t st = cu_of(ctx)->stream;
    const int64_t N = logits->dim[0];
    cu_temps tmp(ctx);
    int32_t *lab;
    double *rows = NULL;
    CU_TRY(to_device(ctx, tmp, labels, N, &lab));
    if (loss_sum)
        CU_TRY(tmp.get((size_t)N + 1, &rows));
    launch(st, lab, rows);
    CU_TRY(cu_launched(what));
    if (!loss_sum)
        return cu_check(cudaStreamSynchronize(st), what); /* the labels may be pinned memory */
    return cu_rows_sum(ctx, rows, N, loss_sum);
}

eng_status cu_margin_loss(eng_ctx *ctx, const eng_tensor *logits, const int32_t *labels, float kappa, double *loss_sum,
                          eng_tensor *per_example, eng_tensor *dlogits, float grad_scale)
{
    const int64_t N = logits->dim[0], K = logits->dim[1];
    return row_loss(ctx, logits, labels, loss_sum, "margin loss", [&](cudaStream_t st, int32_t *lab, double *rows) {
        k_margin<<<cu_blocks(N, 64), 64, 0, st>>>(logits->data, lab, N, K, kappa, grad_scale,
                                                  per_example ? per_example->data : NULL,
                                                  dlogits ? dlogits->data : NULL, rows);
    });
}

eng_status cu_dlr_loss(eng_ctx *ctx, const eng_tensor *logits, const int32_t *labels, double *loss_sum,
                       eng_tensor *per_example, eng_tensor *dlogits, float grad_scale)
{
    const int64_t N = logits->dim[0], K = logits->dim[1];
    return row_loss(ctx, logits, labels, loss_sum, "DLR loss", [&](cudaStream_t st, int32_t *lab, double *rows) {
        k_dlr<<<cu_blocks(N, 64), 64, 0, st>>>(logits->data, lab, N, K, grad_scale,
                                               per_example ? per_example->data : NULL, dlogits ? dlogits->data : NULL,
                                               rows);
    });
}

/* ---- steps in pixel space ---- */

__global__ void k_sign_step(float *x, const float *g, const float *x0, float alpha, float eps, int64_t n)
{
    CU_LOOP(i, n) x[i] = project(x[i] + alpha * sign_of(g[i]), x0[i], eps);
}

eng_status cu_linf_sign_step(eng_ctx *ctx, eng_tensor *x, const eng_tensor *g, const eng_tensor *x0, float alpha,
                             float eps)
{
    CU_TRY(cu_enter(ctx));
    const int64_t n = eng_tensor_storage(x);
    k_sign_step<<<cu_blocks(n), CU_THREADS, 0, cu_of(ctx)->stream>>>(x->data, g->data, x0->data, alpha, eps, n);
    return cu_launched("l_inf sign step");
}

__global__ void k_apgd(float *xn, const float *x, const float *xp, const float *g, const float *x0, const float *eta,
                       float eps, float a, int64_t per, int64_t n)
{
    CU_LOOP(j, n)
    {
        const float z = project(x[j] + eta[j / per] * sign_of(g[j]), x0[j], eps);
        xn[j] = project(x[j] + a * (z - x[j]) + (1.0f - a) * (x[j] - xp[j]), x0[j], eps);
    }
}

eng_status cu_apgd_step(eng_ctx *ctx, eng_tensor *x_next, const eng_tensor *x, const eng_tensor *x_prev,
                        const eng_tensor *g, const eng_tensor *x0, const float *eta, float eps, float a)
{
    CU_TRY(cu_enter(ctx));
    const int64_t N = x->dim[0], n = eng_tensor_storage(x), per = n / N;
    cu_temps tmp(ctx);
    float *steps;
    CU_TRY(to_device(ctx, tmp, eta, N, &steps));
    k_apgd<<<cu_blocks(n), CU_THREADS, 0, cu_of(ctx)->stream>>>(x_next->data, x->data, x_prev->data, g->data, x0->data,
                                                                steps, eps, a, per, n);
    CU_TRY(cu_launched("APGD step"));
    return cu_check(cudaStreamSynchronize(cu_of(ctx)->stream), "APGD step"); /* eta may be pinned memory */
}

/* ---- random starts: u drawn per logical NCHW index, as on the CPU ---- */

__global__ void k_row_absmax(uint64_t seed, int64_t per, float *scale)
{
    const int64_t n = blockIdx.x;
    float mx = 0.0f;
    for (int64_t i = threadIdx.x; i < per; i += blockDim.x) {
        const float u = fabsf(2.0f * eng_uniform(seed, (uint64_t)(n * per + i)) - 1.0f);
        mx = u > mx ? u : mx;
    }
    mx = block_max(mx);
    if (threadIdx.x == 0)
        scale[n] = mx > 0 ? 1.0f / mx : 1.0f;
}

__global__ void k_random_start(float *x, const float *x0, cu_view v, float eps, uint64_t seed, const float *scale,
                               int64_t total)
{
    CU_LOOP(i, total)
    {
        const int64_t s = i % v.S, t = i / v.S, c = t % v.C, n = t / v.C;
        const int64_t e = cu_at(v, n, c, s);
        const float u = (2.0f * eng_uniform(seed, (uint64_t)i) - 1.0f) * (scale ? scale[n] : 1.0f);
        x[e] = clamp_unit(x0[e] + eps * u, 0.0f, 1.0f);
    }
}

eng_status cu_linf_random_start(eng_ctx *ctx, eng_tensor *x, const eng_tensor *x0, float eps, uint64_t seed,
                                bool normalise)
{
    CU_TRY(cu_enter(ctx));
    cudaStream_t st = cu_of(ctx)->stream;
    const cu_view v = cu_view_of(x0);
    const int64_t per = v.C * v.S, total = v.N * per;
    cu_temps tmp(ctx);
    float *scale = NULL;
    if (normalise) {
        if (v.N > 0x7fffffff)
            return eng_fail(ENG_ERR_LIMIT, "cuda: random start: more than 2^31 examples");
        CU_TRY(tmp.get((size_t)v.N, &scale));
        k_row_absmax<<<(unsigned)v.N, CU_THREADS, 0, st>>>(seed, per, scale);
        CU_TRY(cu_launched("random start scale"));
    }
    k_random_start<<<cu_blocks(total), CU_THREADS, 0, st>>>(x->data, x0->data, v, eps, seed, scale, total);
    return cu_launched("random start");
}

/* ---- example rows ---- */

__global__ void k_move_rows(float *dst, const float *src, const int32_t *di, const int32_t *si, int64_t row,
                            int64_t total)
{
    CU_LOOP(i, total)
    {
        const int64_t k = i / row, j = i % row;
        const int64_t d = di ? di[k] : k, s = si ? si[k] : k;
        dst[d * row + j] = src[s * row + j];
    }
}

eng_status cu_move_rows(eng_ctx *ctx, eng_tensor *dst, const eng_tensor *src, const int32_t *dst_idx,
                        const int32_t *src_idx, int n)
{
    CU_TRY(cu_enter(ctx));
    cudaStream_t st = cu_of(ctx)->stream;
    const int64_t row = eng_tensor_storage(src) / src->dim[0];
    bool reorder = false; /* rows moved within one tensor: copy them in order, as the CPU does */
    for (int k = 0; dst->data == src->data && k < n; k++)
        reorder |= (dst_idx ? dst_idx[k] : k) != (src_idx ? src_idx[k] : k);
    if (reorder) {
        for (int k = 0; k < n; k++) {
            const int64_t d = dst_idx ? dst_idx[k] : k, s = src_idx ? src_idx[k] : k;
            if (d != s)
                CU_TRY(cu_check(cudaMemcpyAsync(dst->data + d * row, src->data + s * row, (size_t)row * sizeof(float),
                                                cudaMemcpyDeviceToDevice, st),
                                "cudaMemcpyAsync"));
        }
        return ENG_OK;
    }
    cu_temps tmp(ctx);
    int32_t *di = NULL, *si = NULL;
    if (dst_idx)
        CU_TRY(to_device(ctx, tmp, dst_idx, n, &di));
    if (src_idx)
        CU_TRY(to_device(ctx, tmp, src_idx, n, &si));
    const int64_t total = (int64_t)n * row;
    k_move_rows<<<cu_blocks(total), CU_THREADS, 0, st>>>(dst->data, src->data, di, si, row, total);
    CU_TRY(cu_launched("move rows"));
    return cu_check(cudaStreamSynchronize(st), "move rows"); /* the indices may be pinned memory */
}

/* ---- checks: largest |x - x0| and how many x fall outside [0,1] ---- */

#define DIST_BLOCKS 256

__global__ void k_linf_dist(const float *x, const float *x0, int64_t n, float *pmax, double *pout)
{
    float mx = 0.0f;
    double outside = 0;
    CU_LOOP(i, n)
    {
        const float d = fabsf(x[i] - x0[i]);
        mx = d > mx ? d : mx;
        outside += !(x[i] >= 0.0f && x[i] <= 1.0f);
    }
    mx = block_max(mx);
    outside = block_sum(outside);
    if (threadIdx.x == 0) {
        pmax[blockIdx.x] = mx;
        pout[blockIdx.x] = outside;
    }
}

eng_status cu_linf_dist(eng_ctx *ctx, const eng_tensor *x, const eng_tensor *x0, double *max_abs, bool *in_unit)
{
    CU_TRY(cu_enter(ctx));
    cudaStream_t st = cu_of(ctx)->stream;
    const int64_t n = eng_tensor_storage(x);
    const unsigned blocks = cu_blocks(n) < DIST_BLOCKS ? cu_blocks(n) : DIST_BLOCKS;
    cu_temps tmp(ctx);
    float *pmax;
    double *pout;
    CU_TRY(tmp.get(blocks, &pmax));
    CU_TRY(tmp.get(blocks, &pout));
    k_linf_dist<<<blocks, CU_THREADS, 0, st>>>(x->data, x0->data, n, pmax, pout);
    CU_TRY(cu_launched("l_inf distance"));
    float hmax[DIST_BLOCKS];
    double hout[DIST_BLOCKS];
    CU_TRY(
        cu_check(cudaMemcpyAsync(hmax, pmax, blocks * sizeof(float), cudaMemcpyDeviceToHost, st), "cudaMemcpyAsync"));
    CU_TRY(
        cu_check(cudaMemcpyAsync(hout, pout, blocks * sizeof(double), cudaMemcpyDeviceToHost, st), "cudaMemcpyAsync"));
    CU_TRY(cu_check(cudaStreamSynchronize(st), "l_inf distance"));
    float mx = 0.0f;
    double outside = 0;
    for (unsigned b = 0; b < blocks; b++) {
        mx = hmax[b] > mx ? hmax[b] : mx;
        outside += hout[b];
    }
    if (max_abs)
        *max_abs = mx;
    if (in_unit)
        *in_unit = outside == 0;
    return ENG_OK;
}

/* One block per example: the row's distance by a block reduction, then its gradient. */
__global__ void k_feature_distance(const float *z, const float *z0, int64_t F, bool l1, float grad_scale, float *dz,
                                   double *rows)
{
    const int64_t n = blockIdx.x;
    const float *a = z + n * F, *b = z0 + n * F;
    double d = 0;
    for (int64_t f = threadIdx.x; f < F; f += blockDim.x) {
        double e = (double)a[f] - b[f];
        d += l1 ? fabs(e) : e * e;
    }
    d = block_sum(d);
    if (!l1)
        d = sqrt(d);
    if (threadIdx.x == 0 && rows)
        rows[n] = d;
    if (dz) {
        const double inv = (!l1 && d > 0) ? 1.0 / d : 0.0;
        for (int64_t f = threadIdx.x; f < F; f += blockDim.x) {
            double e = (double)a[f] - b[f];
            dz[n * F + f] = (float)((l1 ? (double)((e > 0) - (e < 0)) : e * inv) * grad_scale);
        }
    }
}

eng_status cu_feature_distance(eng_ctx *ctx, const eng_tensor *z, const eng_tensor *z0, bool l1, double *loss_sum,
                               eng_tensor *dz, float grad_scale)
{
    CU_TRY(cu_enter(ctx));
    cudaStream_t st = cu_of(ctx)->stream;
    const int64_t N = z->dim[0], F = z->dim[1];
    if (N > 0x7fffffff)
        return eng_fail(ENG_ERR_LIMIT, "cuda: feature distance: more than 2^31 examples");
    cu_temps tmp(ctx);
    double *rows = NULL;
    if (loss_sum)
        CU_TRY(tmp.get((size_t)N + 1, &rows));
    k_feature_distance<<<(unsigned)N, CU_THREADS, 0, st>>>(z->data, z0->data, F, l1, grad_scale,
                                                           dz ? dz->data : NULL, rows);
    CU_TRY(cu_launched("feature distance"));
    return loss_sum ? cu_rows_sum(ctx, rows, N, loss_sum) : ENG_OK;
}
