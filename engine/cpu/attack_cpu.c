/* CPU kernels of the attacks: margin and DLR losses, l_inf sign steps and projections,
 * APGD's momentum step, random starts, and moving example rows. */
#include <math.h>
#include <string.h>

#include "cpu.h"

#define PAR_MIN 32768

static inline float clampf(float v, float lo, float hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Projection onto {|x - x0| <= eps} intersected with [0,1]. */
static inline float project(float v, float x0, float eps) { return clampf(clampf(v, x0 - eps, x0 + eps), 0.0f, 1.0f); }

static inline float signf(float g) { return (float)((g > 0.0f) - (g < 0.0f)); }

/* The largest logit other than the label's (first one on ties). */
static int64_t max_other(const float *z, int64_t K, int32_t y)
{
    int64_t best = y == 0 ? 1 : 0;
    for (int64_t k = 0; k < K; k++)
        if (k != y && z[k] > z[best])
            best = k;
    return best;
}

eng_status cpu_margin_loss(eng_ctx *ctx, const eng_tensor *logits, const int32_t *labels, float kappa,
                           double *loss_sum, eng_tensor *per_example, eng_tensor *dlogits, float grad_scale)
{
    (void)ctx;
    const int64_t N = logits->dim[0], K = logits->dim[1];
    double total = 0;
    for (int64_t n = 0; n < N; n++) {
        const float *z = logits->data + n * K;
        int64_t o = max_other(z, K, labels[n]);
        double m = (double)z[labels[n]] - z[o] + kappa;
        double l = m > 0 ? -m : 0.0;
        total += l;
        if (per_example)
            per_example->data[n] = (float)l;
        if (dlogits) {
            float *g = dlogits->data + n * K;
            memset(g, 0, (size_t)K * sizeof(float));
            if (m > 0) {
                g[labels[n]] = -grad_scale;
                g[o] = grad_scale;
            }
        }
    }
    if (loss_sum)
        *loss_sum = total;
    return ENG_OK;
}

eng_status cpu_dlr_loss(eng_ctx *ctx, const eng_tensor *logits, const int32_t *labels, double *loss_sum,
                        eng_tensor *per_example, eng_tensor *dlogits, float grad_scale)
{
    (void)ctx;
    const int64_t N = logits->dim[0], K = logits->dim[1];
    double total = 0;
    for (int64_t n = 0; n < N; n++) {
        const float *z = logits->data + n * K;
        const int32_t y = labels[n];
        /* indices of the three largest logits, first occurrence first on ties */
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
        int64_t o = i1 == y ? i2 : i1;
        double a = (double)z[y] - z[o], d = (double)z[i1] - z[i3] + 1e-12;
        double l = -a / d;
        total += l;
        if (per_example)
            per_example->data[n] = (float)l;
        if (dlogits) {
            float *g = dlogits->data + n * K;
            memset(g, 0, (size_t)K * sizeof(float));
            g[y] += (float)(-1.0 / d * grad_scale);
            g[o] += (float)(1.0 / d * grad_scale);
            g[i1] += (float)(a / (d * d) * grad_scale);
            g[i3] -= (float)(a / (d * d) * grad_scale);
        }
    }
    if (loss_sum)
        *loss_sum = total;
    return ENG_OK;
}

eng_status cpu_linf_sign_step(eng_ctx *ctx, eng_tensor *x, const eng_tensor *g, const eng_tensor *x0, float alpha,
                              float eps)
{
    (void)ctx;
    const int64_t n = eng_tensor_storage(x);
    float *px = x->data;
    const float *pg = g->data, *p0 = x0->data;
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        px[i] = project(px[i] + alpha * signf(pg[i]), p0[i], eps);
    return ENG_OK;
}

eng_status cpu_apgd_step(eng_ctx *ctx, eng_tensor *x_next, const eng_tensor *x, const eng_tensor *x_prev,
                         const eng_tensor *g, const eng_tensor *x0, const float *eta, float eps, float a)
{
    (void)ctx;
    const int64_t N = x->dim[0], per = eng_tensor_storage(x) / N;
    float *pn = x_next->data;
    const float *px = x->data, *pp = x_prev->data, *pg = g->data, *p0 = x0->data;
#pragma omp parallel for schedule(static) if (N * per > PAR_MIN)
    for (int64_t e = 0; e < N; e++) {
        const float step = eta[e];
        for (int64_t j = e * per; j < (e + 1) * per; j++) {
            float z = project(px[j] + step * signf(pg[j]), p0[j], eps);
            pn[j] = project(px[j] + a * (z - px[j]) + (1.0f - a) * (px[j] - pp[j]), p0[j], eps);
        }
    }
    return ENG_OK;
}

eng_status cpu_linf_random_start(eng_ctx *ctx, eng_tensor *x, const eng_tensor *x0, float eps, uint64_t seed,
                                 bool normalise)
{
    (void)ctx;
    cpu_view v = cpu_view_of(x0);
    const int64_t per = v.C * v.S;
#pragma omp parallel for schedule(static) if (v.N * per > PAR_MIN)
    for (int64_t n = 0; n < v.N; n++) {
        float scale = 1.0f;
        if (normalise) {
            float mx = 0;
            for (int64_t i = 0; i < per; i++) {
                float u = fabsf(2.0f * eng_uniform(seed, (uint64_t)(n * per + i)) - 1.0f);
                mx = u > mx ? u : mx;
            }
            scale = mx > 0 ? 1.0f / mx : 1.0f;
        }
        for (int64_t c = 0; c < v.C; c++) {
            int64_t base = ((n * v.CB + c / v.X) * v.S) * v.X + c % v.X;
            for (int64_t s = 0; s < v.S; s++) {
                int64_t e = base + s * v.X;
                float u = (2.0f * eng_uniform(seed, (uint64_t)(n * per + c * v.S + s)) - 1.0f) * scale;
                x->data[e] = clampf(x0->data[e] + eps * u, 0.0f, 1.0f);
            }
        }
    }
    return ENG_OK;
}

eng_status cpu_move_rows(eng_ctx *ctx, eng_tensor *dst, const eng_tensor *src, const int32_t *dst_idx,
                         const int32_t *src_idx, int n)
{
    (void)ctx;
    const int64_t row = eng_tensor_storage(src) / src->dim[0];
#pragma omp parallel for schedule(static) if ((int64_t)n * row > PAR_MIN)
    for (int k = 0; k < n; k++) {
        int64_t d = dst_idx ? dst_idx[k] : k, s = src_idx ? src_idx[k] : k;
        if (dst->data + d * row != src->data + s * row)
            memcpy(dst->data + d * row, src->data + s * row, (size_t)row * sizeof(float));
    }
    return ENG_OK;
}

eng_status cpu_linf_dist(eng_ctx *ctx, const eng_tensor *x, const eng_tensor *x0, double *max_abs, bool *in_unit)
{
    (void)ctx;
    const int64_t n = eng_tensor_storage(x);
    float mx = 0;
    int64_t outside = 0;
#pragma omp parallel for reduction(max : mx) reduction(+ : outside) schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float d = fabsf(x->data[i] - x0->data[i]);
        mx = d > mx ? d : mx;
        outside += !(x->data[i] >= 0.0f && x->data[i] <= 1.0f);
    }
    if (max_abs)
        *max_abs = mx;
    if (in_unit)
        *in_unit = outside == 0;
    return ENG_OK;
}

eng_status cpu_feature_distance(eng_ctx *ctx, const eng_tensor *z, const eng_tensor *z0, bool l1, double *loss_sum,
                                eng_tensor *dz, float grad_scale)
{
    (void)ctx;
    const int64_t N = z->dim[0], F = z->dim[1];
    double total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static) if (N * F > PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        const float *a = z->data + n * F, *b = z0->data + n * F;
        double d = 0;
        for (int64_t f = 0; f < F; f++) {
            double e = (double)a[f] - b[f];
            d += l1 ? fabs(e) : e * e;
        }
        if (!l1)
            d = sqrt(d);
        total += d;
        if (dz) {
            float *g = dz->data + n * F;
            const double inv = (!l1 && d > 0) ? 1.0 / d : 0.0;
            for (int64_t f = 0; f < F; f++) {
                double e = (double)a[f] - b[f];
                g[f] = (float)((l1 ? (double)((e > 0) - (e < 0)) : e * inv) * grad_scale);
            }
        }
    }
    if (loss_sum)
        *loss_sum = total;
    return ENG_OK;
}
