/* The engine's operations: forward/backward pairs on eng_tensor, the same signature on every
 * backend. Outputs come first; shapes are in the comments (N batch, C/K channels in/out).
 * Each call checks shapes and layouts, then dispatches to the context's backend.
 *
 * Conventions: a backward with `accumulate` adds into its outputs, otherwise it overwrites.
 * 4-D activations may be in any layout the context's backend produced; operands of one
 * elementwise call share a layout. Weights and 1-D/2-D tensors are plain row-major. */
#ifndef ENG_OPS_H
#define ENG_OPS_H

#include <stdbool.h>
#include <stdint.h>

#include "ctx.h"
#include "rng.h"

/* A slot where a backend keeps per-call-site state between calls: oneDNN primitives and
 * reordered weights, cuDNN algorithm choices. Owned by the caller; zero-initialise, release
 * with eng_op_cache_cleanup. Passing NULL is always allowed (slower). */
typedef struct eng_op_cache {
    void *impl;
    void (*release)(void *impl);
} eng_op_cache;
void eng_op_cache_cleanup(eng_op_cache *c);

/* ---- convolution (dilation 1, groups 1) ----
 * x [N,C,H,W], w [K,C,R,S], b [K] or NULL, y [N,K,P,Q] with P = (H + 2*pad - R)/stride + 1. */
typedef struct eng_conv_desc {
    int stride, pad;
    bool relu;       /* forward: y = relu(conv + b [+ y]) */
    bool accumulate; /* forward: add the previous contents of y before the relu (residual sum) */
} eng_conv_desc;

eng_status eng_conv2d_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                          const eng_tensor *b, const eng_conv_desc *d, eng_op_cache *cache);
/* dx [N,C,H,W] (+)= conv_transpose(dy, w). */
eng_status eng_conv2d_bwd_data(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *w,
                               const eng_conv_desc *d, bool accumulate, eng_op_cache *cache);
/* dw [K,C,R,S] (+)= x (*) dy; db [K] (+)= sum of dy (db may be NULL). */
eng_status eng_conv2d_bwd_filter(eng_ctx *ctx, eng_tensor *dw, eng_tensor *db, const eng_tensor *x,
                                 const eng_tensor *dy, const eng_conv_desc *d, bool accumulate,
                                 eng_op_cache *cache);

/* ---- batch normalisation over N, H, W per channel; works on 2-D [N,C] too ----
 * Training: normalises with the batch mean and biased variance, saves mean and 1/sqrt(var+eps)
 * for the backward, and updates running stats with the unbiased variance:
 * r = (1 - momentum) * r + momentum * batch (PyTorch's convention). */
eng_status eng_bn_train_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *gamma,
                            const eng_tensor *beta, eng_tensor *running_mean, eng_tensor *running_var,
                            eng_tensor *save_mean, eng_tensor *save_invstd, float momentum, float eps);
/* The same with the residual block's tail fused in: y = relu?(bn(x) + residual) (residual may be
 * NULL), so that training reads the activation twice instead of five times. */
eng_status eng_bn_train_fwd_fused(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *gamma,
                                  const eng_tensor *beta, eng_tensor *running_mean, eng_tensor *running_var,
                                  eng_tensor *save_mean, eng_tensor *save_invstd, float momentum, float eps,
                                  const eng_tensor *residual, bool relu);
/* dx = full BN backward; dgamma, dbeta (+)= (either may be NULL). */
eng_status eng_bn_train_bwd(eng_ctx *ctx, eng_tensor *dx, eng_tensor *dgamma, eng_tensor *dbeta,
                            const eng_tensor *dy, const eng_tensor *x, const eng_tensor *gamma,
                            const eng_tensor *save_mean, const eng_tensor *save_invstd, bool accumulate);

/* Folds eval-mode batch norm into the convolution before it: with s = gamma / sqrt(var + eps),
 * wf[k] = w[k] * s[k] and bf[k] = beta[k] + (b[k] - mean[k]) * s[k] (b may be NULL: 0);
 * s itself goes to scale [K] unless NULL (the chain rule for w needs it). */
eng_status eng_fold_bn(eng_ctx *ctx, eng_tensor *wf, eng_tensor *bf, eng_tensor *scale, const eng_tensor *w,
                       const eng_tensor *b,
                       const eng_tensor *gamma, const eng_tensor *beta, const eng_tensor *mean,
                       const eng_tensor *var, float eps);

/* ---- per-channel affine: y = x * scale[c] + shift[c] (shift may be NULL: 0) ---- */
eng_status eng_channel_affine_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *scale,
                                  const eng_tensor *shift, bool relu);
/* dx (+)= dy * scale[c]. */
eng_status eng_channel_affine_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *scale,
                                  bool accumulate);
/* Per-channel sums for parameter gradients: sum_dy[c] = sum dy, sum_dyx[c] = sum dy * x
 * (either output may be NULL). */
eng_status eng_channel_sums(eng_ctx *ctx, eng_tensor *sum_dy, eng_tensor *sum_dyx, const eng_tensor *dy,
                            const eng_tensor *x);

/* ---- elementwise ---- */
eng_status eng_relu_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x);
/* dx (+)= dy where y > 0 (y is the forward output). */
eng_status eng_relu_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *y, bool accumulate);
/* y = a + b (y may alias a or b). */
eng_status eng_add(eng_ctx *ctx, eng_tensor *y, const eng_tensor *a, const eng_tensor *b);
/* y = alpha * x + beta * y. */
eng_status eng_axpby(eng_ctx *ctx, eng_tensor *y, float alpha, const eng_tensor *x, float beta);
eng_status eng_fill(eng_ctx *ctx, eng_tensor *t, float value);
/* dst = src, converting layouts; shapes must match. */
eng_status eng_copy(eng_ctx *ctx, eng_tensor *dst, const eng_tensor *src);

/* Inverted dropout: y = x * mask / (1 - p), mask[i] = (u(seed, i) >= p) from a counter-based
 * generator, so the same seed gives the same mask on every backend and thread count. */
eng_status eng_dropout_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, float p, uint64_t seed);
eng_status eng_dropout_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, float p, uint64_t seed,
                           bool accumulate);

/* ---- pooling ---- */
/* Max pool, kernel k, stride s, padding pad (padding never wins); y [N,C,P,Q]. */
eng_status eng_maxpool_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, int k, int stride, int pad,
                           eng_op_cache *cache);
/* dx (+)= dy routed to the first maximum of each window (x and y from the forward). */
eng_status eng_maxpool_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *x,
                           int k, int stride, int pad, bool accumulate, eng_op_cache *cache);
/* Global average pool: x [N,C,H,W] -> y [N,C]. */
eng_status eng_gap_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x);
eng_status eng_gap_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, bool accumulate);

/* Bilinear resize, align_corners = false (PyTorch's F.interpolate default); NCHW only. */
eng_status eng_upsample_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x);
eng_status eng_upsample_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, bool accumulate);

/* ---- fully connected: x [N,I], w [O,I], b [O] or NULL, y [N,O] ---- */
eng_status eng_linear_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                          const eng_tensor *b);
eng_status eng_linear_bwd_data(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *w,
                               bool accumulate);
eng_status eng_linear_bwd_weight(eng_ctx *ctx, eng_tensor *dw, eng_tensor *db, const eng_tensor *x,
                                 const eng_tensor *dy, bool accumulate);

/* ---- losses ----
 * Softmax cross-entropy over logits [N,K] with labels in [0,K) (host array).
 * loss_sum (host, may be NULL) = sum over examples; per_example (may be NULL) [N];
 * dlogits (may be NULL) = (softmax - onehot) * grad_scale (pass 1/N for the mean loss). */
eng_status eng_xent(eng_ctx *ctx, const eng_tensor *logits, const int32_t *labels, double *loss_sum,
                    eng_tensor *per_example, eng_tensor *dlogits, float grad_scale);

/* Feature distance for Learning without Forgetting: d_n = ||z_n - z0_n||_2 (or ||.||_1 with
 * l1) over rows of z, z0 [N, F]. loss_sum (host, may be NULL) = sum of d_n; dz (may be NULL) =
 * d d_n / d z_n * grad_scale, taken as 0 where z_n == z0_n (the l2 norm's kink). */
eng_status eng_feature_distance_loss(eng_ctx *ctx, const eng_tensor *z, const eng_tensor *z0, bool l1,
                                     double *loss_sum, eng_tensor *dz, float grad_scale);

/* ---- optimiser ----
 * PyTorch's SGD: g' = g + wd * p; buf = first ? g' : momentum * buf + (1 - dampening) * g';
 * step = nesterov ? g' + momentum * buf : buf (g' when momentum is 0); p -= lr * step. */
typedef struct eng_sgd_desc {
    float lr, momentum, dampening, weight_decay;
    bool nesterov;
} eng_sgd_desc;
eng_status eng_sgd_step(eng_ctx *ctx, eng_tensor *p, const eng_tensor *g, eng_tensor *buf,
                        const eng_sgd_desc *d, bool first_step);

/* ---- attacks: losses the attacker maximises, l_inf steps in pixel space, example rows ----
 * Pixels are in [0,1]; eps and step sizes are in the same units (8/255 = 0.0314). */

/* Carlini-Wagner margin: L_i = -relu(z_y - max_{j != y} z_j + kappa), the wrong-class maximum
 * taken with the true class masked out. Outputs as eng_xent's. */
eng_status eng_margin_loss(eng_ctx *ctx, const eng_tensor *logits, const int32_t *labels, float kappa,
                           double *loss_sum, eng_tensor *per_example, eng_tensor *dlogits, float grad_scale);

/* Difference of logits ratio (Croce & Hein 2020): L_i = -(z_y - max_{j != y} z_j) / (z_(1) - z_(3) + 1e-12),
 * z_(k) the k-th largest logit. Needs at least 3 classes (ENG_ERR_ARG otherwise). */
eng_status eng_dlr_loss(eng_ctx *ctx, const eng_tensor *logits, const int32_t *labels, double *loss_sum,
                        eng_tensor *per_example, eng_tensor *dlogits, float grad_scale);

/* x = clip(clip(x + alpha * sign(g), x0 - eps, x0 + eps), 0, 1); sign(0) = 0. */
eng_status eng_linf_sign_step(eng_ctx *ctx, eng_tensor *x, const eng_tensor *g, const eng_tensor *x0, float alpha,
                              float eps);

/* APGD's step with a step size per example (eta: host array of N): z = P(x + eta_n sign(g)),
 * x_next = P(x + a (z - x) + (1 - a) (x - x_prev)), P the projection onto the eps-ball of x0
 * intersected with [0,1]. x_next must not alias x or x_prev. */
eng_status eng_apgd_step(eng_ctx *ctx, eng_tensor *x_next, const eng_tensor *x, const eng_tensor *x_prev,
                         const eng_tensor *g, const eng_tensor *x0, const float *eta, float eps, float a);

/* x = clip(x0 + eps * u, 0, 1), u uniform in [-1, 1) drawn from (seed, logical index); with
 * `normalise`, u is divided per example by its largest |u| (AutoAttack's start on the sphere). */
eng_status eng_linf_random_start(eng_ctx *ctx, eng_tensor *x, const eng_tensor *x0, float eps, uint64_t seed,
                                 bool normalise);

/* Example rows (dim 0) of tensors with the same per-example shape and layout:
 * gather: dst row k = src row idx[k] (k < dst rows); scatter: dst row idx[k] = src row k (k < src rows);
 * copy_rows: dst row idx[k] = src row idx[k] (k < n). Indices are host arrays, checked. */
eng_status eng_gather_rows(eng_ctx *ctx, eng_tensor *dst, const eng_tensor *src, const int32_t *idx);
eng_status eng_scatter_rows(eng_ctx *ctx, eng_tensor *dst, const eng_tensor *src, const int32_t *idx);
eng_status eng_copy_rows(eng_ctx *ctx, eng_tensor *dst, const eng_tensor *src, const int32_t *idx, int n);

/* Largest |x - x0| and whether every x lies in [0,1] (host outputs): checks of the attacks. */
eng_status eng_linf_dist(eng_ctx *ctx, const eng_tensor *x, const eng_tensor *x0, double *max_abs, bool *in_unit);

#endif
