/* Argument checking for every operation, then dispatch to the context's backend.
 * Backends may assume what is checked here. */
#include "backend.h"

#include <math.h>
#include <stdio.h>

#define TRY(expr)                         \
    do {                                  \
        eng_status s_ = (expr);           \
        if (s_ != ENG_OK)                 \
            return s_;                    \
    } while (0)

static eng_status need(const eng_ctx *ctx, const eng_tensor *t, const char *op, const char *what, int ndim)
{
    if (!t || !t->data)
        return eng_fail(ENG_ERR_ARG, "%s: %s is empty", op, what);
    if (t->dev != ctx->be->dev)
        return eng_fail(ENG_ERR_ARG, "%s: %s is on the wrong device", op, what);
    if (eng_tensor_numel(t) == 0)
        return eng_fail(ENG_ERR_ARG, "%s: %s has no elements", op, what);
    if (ndim && t->ndim != ndim)
        return eng_fail(ENG_ERR_SHAPE, "%s: %s has %d dimensions, expected %d", op, what, t->ndim, ndim);
    if (t->ndim != 4 && t->layout != ENG_LAYOUT_NCHW)
        return eng_fail(ENG_ERR_ARG, "%s: %s is not 4-D but has a blocked layout", op, what);
    return ENG_OK;
}

static eng_status need_opt(const eng_ctx *ctx, const eng_tensor *t, const char *op, const char *what, int ndim)
{
    return t ? need(ctx, t, op, what, ndim) : ENG_OK;
}

static eng_status same(const eng_tensor *a, const eng_tensor *b, const char *op, const char *an, const char *bn)
{
    char sa[64], sb[64];
    if (!eng_tensor_same_shape(a, b))
        return eng_fail(ENG_ERR_SHAPE, "%s: %s %s and %s %s differ", op, an, eng_tensor_shape_str(a, sa, sizeof sa),
                        bn, eng_tensor_shape_str(b, sb, sizeof sb));
    if (a->layout != b->layout)
        return eng_fail(ENG_ERR_ARG, "%s: %s is %s but %s is %s", op, an, eng_layout_name(a->layout), bn,
                        eng_layout_name(b->layout));
    return ENG_OK;
}

static eng_status vec(const eng_tensor *v, int64_t n, const char *op, const char *what)
{
    if (v->ndim != 1 || v->dim[0] != n)
        return eng_fail(ENG_ERR_SHAPE, "%s: %s must be [%lld]", op, what, (long long)n);
    return ENG_OK;
}

/* Channels of an activation: dim 1 of a 2-D or 4-D tensor. */
static eng_status act(const eng_ctx *ctx, const eng_tensor *t, const char *op, const char *what)
{
    TRY(need(ctx, t, op, what, 0));
    if (t->ndim != 2 && t->ndim != 4)
        return eng_fail(ENG_ERR_SHAPE, "%s: %s must be [N,C] or [N,C,H,W]", op, what);
    int b = eng_layout_block(t->layout);
    if (b > 1 && t->dim[1] % b)
        return eng_fail(ENG_ERR_ARG, "%s: %s has %lld channels, not a multiple of its block %d", op, what,
                        (long long)t->dim[1], b);
    return ENG_OK;
}

void eng_op_cache_cleanup(eng_op_cache *c)
{
    if (c && c->impl && c->release)
        c->release(c->impl);
    if (c) {
        c->impl = NULL;
        c->release = NULL;
    }
}

/* ---- convolution ---- */

static eng_status conv_shapes(const eng_ctx *ctx, const eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                              const eng_conv_desc *d, const char *op)
{
    TRY(act(ctx, x, op, "x"));
    TRY(act(ctx, y, op, "y"));
    TRY(need(ctx, w, op, "w", 4));
    if (!d || d->stride < 1 || d->pad < 0)
        return eng_fail(ENG_ERR_ARG, "%s: stride must be >= 1 and padding >= 0", op);
    if (x->ndim != 4 || y->ndim != 4)
        return eng_fail(ENG_ERR_SHAPE, "%s: x and y must be 4-D", op);
    if (w->dim[1] != x->dim[1])
        return eng_fail(ENG_ERR_SHAPE, "%s: w has %lld input channels, x has %lld", op, (long long)w->dim[1],
                        (long long)x->dim[1]);
    int64_t P = (x->dim[2] + 2 * d->pad - w->dim[2]), Q = (x->dim[3] + 2 * d->pad - w->dim[3]);
    if (P < 0 || Q < 0)
        return eng_fail(ENG_ERR_SHAPE, "%s: kernel larger than padded input", op);
    P = P / d->stride + 1;
    Q = Q / d->stride + 1;
    if (y->dim[0] != x->dim[0] || y->dim[1] != w->dim[0] || y->dim[2] != P || y->dim[3] != Q)
        return eng_fail(ENG_ERR_SHAPE, "%s: y must be [%lld, %lld, %lld, %lld]", op, (long long)x->dim[0],
                        (long long)w->dim[0], (long long)P, (long long)Q);
    return ENG_OK;
}

eng_status eng_conv2d_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                          const eng_tensor *b, const eng_conv_desc *d, eng_op_cache *cache)
{
    TRY(conv_shapes(ctx, y, x, w, d, "conv2d_fwd"));
    TRY(need_opt(ctx, b, "conv2d_fwd", "b", 1));
    if (b)
        TRY(vec(b, w->dim[0], "conv2d_fwd", "b"));
    return ctx->be->conv2d_fwd(ctx, y, x, w, b, d, cache);
}

eng_status eng_conv2d_bwd_data(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *w,
                               const eng_conv_desc *d, bool accumulate, eng_op_cache *cache)
{
    TRY(conv_shapes(ctx, dy, dx, w, d, "conv2d_bwd_data"));
    return ctx->be->conv2d_bwd_data(ctx, dx, dy, w, d, accumulate, cache);
}

eng_status eng_conv2d_bwd_filter(eng_ctx *ctx, eng_tensor *dw, eng_tensor *db, const eng_tensor *x,
                                 const eng_tensor *dy, const eng_conv_desc *d, bool accumulate, eng_op_cache *cache)
{
    TRY(conv_shapes(ctx, dy, x, dw, d, "conv2d_bwd_filter"));
    TRY(need_opt(ctx, db, "conv2d_bwd_filter", "db", 1));
    if (db)
        TRY(vec(db, dw->dim[0], "conv2d_bwd_filter", "db"));
    return ctx->be->conv2d_bwd_filter(ctx, dw, db, x, dy, d, accumulate, cache);
}

/* ---- batch norm and per-channel affine ---- */

eng_status eng_bn_train_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *gamma,
                            const eng_tensor *beta, eng_tensor *running_mean, eng_tensor *running_var,
                            eng_tensor *save_mean, eng_tensor *save_invstd, float momentum, float eps)
{
    return eng_bn_train_fwd_fused(ctx, y, x, gamma, beta, running_mean, running_var, save_mean, save_invstd,
                                  momentum, eps, NULL, false);
}

eng_status eng_bn_train_fwd_fused(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *gamma,
                                  const eng_tensor *beta, eng_tensor *running_mean, eng_tensor *running_var,
                                  eng_tensor *save_mean, eng_tensor *save_invstd, float momentum, float eps,
                                  const eng_tensor *residual, bool relu)
{
    const char *op = "bn_train_fwd";
    TRY(act(ctx, x, op, "x"));
    TRY(act(ctx, y, op, "y"));
    TRY(same(y, x, op, "y", "x"));
    if (residual) {
        TRY(act(ctx, residual, op, "residual"));
        TRY(same(residual, x, op, "residual", "x"));
        if (residual->data == x->data)
            return eng_fail(ENG_ERR_ARG, "%s: residual must not alias x", op);
    }
    int64_t C = x->dim[1];
    const eng_tensor *vs[] = {gamma, beta, running_mean, running_var, save_mean, save_invstd};
    const char *names[] = {"gamma", "beta", "running_mean", "running_var", "save_mean", "save_invstd"};
    for (int i = 0; i < 6; i++) {
        TRY(need(ctx, vs[i], op, names[i], 1));
        TRY(vec(vs[i], C, op, names[i]));
    }
    int64_t per = eng_tensor_numel(x) / C;
    if (per < 2)
        return eng_fail(ENG_ERR_ARG, "%s: batch statistics need more than one value per channel", op);
    if (!(eps > 0) || !(momentum >= 0 && momentum <= 1))
        return eng_fail(ENG_ERR_ARG, "%s: eps must be > 0 and momentum in [0,1]", op);
    return ctx->be->bn_train_fwd(ctx, y, x, gamma, beta, running_mean, running_var, save_mean, save_invstd, momentum,
                                 eps, residual, relu);
}

eng_status eng_bn_train_bwd(eng_ctx *ctx, eng_tensor *dx, eng_tensor *dgamma, eng_tensor *dbeta,
                            const eng_tensor *dy, const eng_tensor *x, const eng_tensor *gamma,
                            const eng_tensor *save_mean, const eng_tensor *save_invstd, bool accumulate)
{
    const char *op = "bn_train_bwd";
    TRY(act(ctx, x, op, "x"));
    TRY(act(ctx, dy, op, "dy"));
    TRY(same(dy, x, op, "dy", "x"));
    if (dx) {
        TRY(act(ctx, dx, op, "dx"));
        TRY(same(dx, x, op, "dx", "x"));
    }
    int64_t C = x->dim[1];
    const eng_tensor *vs[] = {gamma, save_mean, save_invstd, dgamma, dbeta};
    const char *names[] = {"gamma", "save_mean", "save_invstd", "dgamma", "dbeta"};
    for (int i = 0; i < 5; i++) {
        if (!vs[i] && i >= 3)
            continue;
        TRY(need(ctx, vs[i], op, names[i], 1));
        TRY(vec(vs[i], C, op, names[i]));
    }
    return ctx->be->bn_train_bwd(ctx, dx, dgamma, dbeta, dy, x, gamma, save_mean, save_invstd, accumulate);
}

eng_status eng_fold_bn(eng_ctx *ctx, eng_tensor *wf, eng_tensor *bf, eng_tensor *scale, const eng_tensor *w,
                       const eng_tensor *b,
                       const eng_tensor *gamma, const eng_tensor *beta, const eng_tensor *mean,
                       const eng_tensor *var, float eps)
{
    const char *op = "fold_bn";
    TRY(need(ctx, w, op, "w", 4));
    TRY(need(ctx, wf, op, "wf", 4));
    TRY(same(wf, w, op, "wf", "w"));
    int64_t K = w->dim[0];
    const eng_tensor *vs[] = {bf, b, gamma, beta, mean, var, scale};
    const char *names[] = {"bf", "b", "gamma", "beta", "mean", "var", "scale"};
    for (int i = 0; i < 7; i++) {
        if ((i == 1 && !b) || (i == 6 && !scale))
            continue;
        TRY(need(ctx, vs[i], op, names[i], 1));
        TRY(vec(vs[i], K, op, names[i]));
    }
    if (!(eps > 0))
        return eng_fail(ENG_ERR_ARG, "%s: eps must be > 0", op);
    TRY(ctx->be->fold_bn(ctx, wf, bf, scale, w, b, gamma, beta, mean, var, eps));
    wf->version++;
    bf->version++;
    return ENG_OK;
}

eng_status eng_channel_affine_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *scale,
                                  const eng_tensor *shift, bool relu)
{
    const char *op = "channel_affine_fwd";
    TRY(act(ctx, x, op, "x"));
    TRY(act(ctx, y, op, "y"));
    TRY(same(y, x, op, "y", "x"));
    TRY(need(ctx, scale, op, "scale", 1));
    TRY(vec(scale, x->dim[1], op, "scale"));
    if (shift) {
        TRY(need(ctx, shift, op, "shift", 1));
        TRY(vec(shift, x->dim[1], op, "shift"));
    }
    return ctx->be->channel_affine_fwd(ctx, y, x, scale, shift, relu);
}

eng_status eng_channel_affine_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *scale,
                                  bool accumulate)
{
    const char *op = "channel_affine_bwd";
    TRY(act(ctx, dy, op, "dy"));
    TRY(act(ctx, dx, op, "dx"));
    TRY(same(dx, dy, op, "dx", "dy"));
    TRY(need(ctx, scale, op, "scale", 1));
    TRY(vec(scale, dy->dim[1], op, "scale"));
    return ctx->be->channel_affine_bwd(ctx, dx, dy, scale, accumulate);
}

eng_status eng_channel_sums(eng_ctx *ctx, eng_tensor *sum_dy, eng_tensor *sum_dyx, const eng_tensor *dy,
                            const eng_tensor *x)
{
    const char *op = "channel_sums";
    TRY(act(ctx, dy, op, "dy"));
    if (sum_dy) {
        TRY(need(ctx, sum_dy, op, "sum_dy", 1));
        TRY(vec(sum_dy, dy->dim[1], op, "sum_dy"));
    }
    if (sum_dyx) {
        TRY(act(ctx, x, op, "x"));
        TRY(same(x, dy, op, "x", "dy"));
        TRY(need(ctx, sum_dyx, op, "sum_dyx", 1));
        TRY(vec(sum_dyx, dy->dim[1], op, "sum_dyx"));
    }
    return ctx->be->channel_sums(ctx, sum_dy, sum_dyx, dy, x);
}

/* ---- elementwise ---- */

eng_status eng_relu_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x)
{
    TRY(need(ctx, x, "relu_fwd", "x", 0));
    TRY(need(ctx, y, "relu_fwd", "y", 0));
    TRY(same(y, x, "relu_fwd", "y", "x"));
    return ctx->be->relu_fwd(ctx, y, x);
}

eng_status eng_relu_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *y, bool accumulate)
{
    TRY(need(ctx, dx, "relu_bwd", "dx", 0));
    TRY(need(ctx, dy, "relu_bwd", "dy", 0));
    TRY(need(ctx, y, "relu_bwd", "y", 0));
    TRY(same(dx, dy, "relu_bwd", "dx", "dy"));
    TRY(same(y, dy, "relu_bwd", "y", "dy"));
    return ctx->be->relu_bwd(ctx, dx, dy, y, accumulate);
}

eng_status eng_add(eng_ctx *ctx, eng_tensor *y, const eng_tensor *a, const eng_tensor *b)
{
    TRY(need(ctx, y, "add", "y", 0));
    TRY(need(ctx, a, "add", "a", 0));
    TRY(need(ctx, b, "add", "b", 0));
    TRY(same(y, a, "add", "y", "a"));
    TRY(same(y, b, "add", "y", "b"));
    return ctx->be->add(ctx, y, a, b);
}

eng_status eng_axpby(eng_ctx *ctx, eng_tensor *y, float alpha, const eng_tensor *x, float beta)
{
    TRY(need(ctx, y, "axpby", "y", 0));
    TRY(need(ctx, x, "axpby", "x", 0));
    TRY(same(y, x, "axpby", "y", "x"));
    return ctx->be->axpby(ctx, y, alpha, x, beta);
}

eng_status eng_fill(eng_ctx *ctx, eng_tensor *t, float value)
{
    TRY(need(ctx, t, "fill", "t", 0));
    return ctx->be->fill(ctx, t, value);
}

eng_status eng_copy(eng_ctx *ctx, eng_tensor *dst, const eng_tensor *src)
{
    TRY(need(ctx, dst, "copy", "dst", 0));
    TRY(need(ctx, src, "copy", "src", 0));
    if (!eng_tensor_same_shape(dst, src))
        return same(dst, src, "copy", "dst", "src");
    return ctx->be->copy(ctx, dst, src);
}

eng_status eng_dropout_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, float p, uint64_t seed)
{
    TRY(need(ctx, x, "dropout_fwd", "x", 0));
    TRY(need(ctx, y, "dropout_fwd", "y", 0));
    TRY(same(y, x, "dropout_fwd", "y", "x"));
    if (!(p >= 0 && p < 1))
        return eng_fail(ENG_ERR_ARG, "dropout: p must be in [0,1), got %g", p);
    return ctx->be->dropout_fwd(ctx, y, x, p, seed);
}

eng_status eng_dropout_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, float p, uint64_t seed,
                           bool accumulate)
{
    TRY(need(ctx, dx, "dropout_bwd", "dx", 0));
    TRY(need(ctx, dy, "dropout_bwd", "dy", 0));
    TRY(same(dx, dy, "dropout_bwd", "dx", "dy"));
    if (!(p >= 0 && p < 1))
        return eng_fail(ENG_ERR_ARG, "dropout: p must be in [0,1), got %g", p);
    return ctx->be->dropout_bwd(ctx, dx, dy, p, seed, accumulate);
}

/* ---- pooling ---- */

static eng_status pool_shapes(const eng_ctx *ctx, const eng_tensor *y, const eng_tensor *x, int k, int stride,
                              int pad, const char *op)
{
    TRY(act(ctx, x, op, "x"));
    TRY(act(ctx, y, op, "y"));
    if (x->ndim != 4 || y->ndim != 4)
        return eng_fail(ENG_ERR_SHAPE, "%s: x and y must be 4-D", op);
    if (k < 1 || stride < 1 || pad < 0 || 2 * pad > k)
        return eng_fail(ENG_ERR_ARG, "%s: need k >= 1, stride >= 1, 0 <= pad <= k/2", op);
    if (x->layout != y->layout)
        return eng_fail(ENG_ERR_ARG, "%s: x and y layouts differ", op);
    int64_t P = (x->dim[2] + 2 * pad - k), Q = (x->dim[3] + 2 * pad - k);
    if (P < 0 || Q < 0)
        return eng_fail(ENG_ERR_SHAPE, "%s: window larger than padded input", op);
    P = P / stride + 1;
    Q = Q / stride + 1;
    if (y->dim[0] != x->dim[0] || y->dim[1] != x->dim[1] || y->dim[2] != P || y->dim[3] != Q)
        return eng_fail(ENG_ERR_SHAPE, "%s: y must be [%lld, %lld, %lld, %lld]", op, (long long)x->dim[0],
                        (long long)x->dim[1], (long long)P, (long long)Q);
    return ENG_OK;
}

eng_status eng_maxpool_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, int k, int stride, int pad,
                           eng_op_cache *cache)
{
    TRY(pool_shapes(ctx, y, x, k, stride, pad, "maxpool_fwd"));
    return ctx->be->maxpool_fwd(ctx, y, x, k, stride, pad, cache);
}

eng_status eng_maxpool_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *x, int k,
                           int stride, int pad, bool accumulate, eng_op_cache *cache)
{
    TRY(pool_shapes(ctx, dy, x, k, stride, pad, "maxpool_bwd"));
    TRY(act(ctx, dx, "maxpool_bwd", "dx"));
    TRY(same(dx, x, "maxpool_bwd", "dx", "x"));
    return ctx->be->maxpool_bwd(ctx, dx, dy, x, k, stride, pad, accumulate, cache);
}

eng_status eng_gap_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x)
{
    TRY(act(ctx, x, "gap_fwd", "x"));
    TRY(need(ctx, y, "gap_fwd", "y", 2));
    if (x->ndim != 4 || y->dim[0] != x->dim[0] || y->dim[1] != x->dim[1])
        return eng_fail(ENG_ERR_SHAPE, "gap_fwd: x must be [N,C,H,W] and y [N,C]");
    return ctx->be->gap_fwd(ctx, y, x);
}

eng_status eng_gap_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, bool accumulate)
{
    TRY(act(ctx, dx, "gap_bwd", "dx"));
    TRY(need(ctx, dy, "gap_bwd", "dy", 2));
    if (dx->ndim != 4 || dy->dim[0] != dx->dim[0] || dy->dim[1] != dx->dim[1])
        return eng_fail(ENG_ERR_SHAPE, "gap_bwd: dx must be [N,C,H,W] and dy [N,C]");
    return ctx->be->gap_bwd(ctx, dx, dy, accumulate);
}

static eng_status resize_shapes(const eng_ctx *ctx, const eng_tensor *y, const eng_tensor *x, const char *op)
{
    TRY(need(ctx, x, op, "x", 4));
    TRY(need(ctx, y, op, "y", 4));
    if (x->layout != ENG_LAYOUT_NCHW || y->layout != ENG_LAYOUT_NCHW)
        return eng_fail(ENG_ERR_ARG, "%s: NCHW only", op);
    if (x->dim[0] != y->dim[0] || x->dim[1] != y->dim[1] || x->dim[2] < 1 || x->dim[3] < 1 || y->dim[2] < 1 ||
        y->dim[3] < 1)
        return eng_fail(ENG_ERR_SHAPE, "%s: N and C must match and sizes be positive", op);
    return ENG_OK;
}

eng_status eng_upsample_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x)
{
    TRY(resize_shapes(ctx, y, x, "upsample_fwd"));
    return ctx->be->upsample_fwd(ctx, y, x);
}

eng_status eng_upsample_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, bool accumulate)
{
    TRY(resize_shapes(ctx, dy, dx, "upsample_bwd"));
    return ctx->be->upsample_bwd(ctx, dx, dy, accumulate);
}

/* ---- fully connected ---- */

static eng_status linear_shapes(const eng_ctx *ctx, const eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                                const char *op)
{
    TRY(need(ctx, x, op, "x", 2));
    TRY(need(ctx, y, op, "y", 2));
    TRY(need(ctx, w, op, "w", 2));
    if (w->dim[1] != x->dim[1] || y->dim[0] != x->dim[0] || y->dim[1] != w->dim[0])
        return eng_fail(ENG_ERR_SHAPE, "%s: need x [N,%lld], y [N,%lld] for w [%lld,%lld]", op, (long long)w->dim[1],
                        (long long)w->dim[0], (long long)w->dim[0], (long long)w->dim[1]);
    return ENG_OK;
}

eng_status eng_linear_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *w, const eng_tensor *b)
{
    TRY(linear_shapes(ctx, y, x, w, "linear_fwd"));
    if (b) {
        TRY(need(ctx, b, "linear_fwd", "b", 1));
        TRY(vec(b, w->dim[0], "linear_fwd", "b"));
    }
    return ctx->be->linear_fwd(ctx, y, x, w, b);
}

eng_status eng_linear_bwd_data(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *w,
                               bool accumulate)
{
    TRY(linear_shapes(ctx, dy, dx, w, "linear_bwd_data"));
    return ctx->be->linear_bwd_data(ctx, dx, dy, w, accumulate);
}

eng_status eng_linear_bwd_weight(eng_ctx *ctx, eng_tensor *dw, eng_tensor *db, const eng_tensor *x,
                                 const eng_tensor *dy, bool accumulate)
{
    TRY(linear_shapes(ctx, dy, x, dw, "linear_bwd_weight"));
    if (db) {
        TRY(need(ctx, db, "linear_bwd_weight", "db", 1));
        TRY(vec(db, dw->dim[0], "linear_bwd_weight", "db"));
    }
    return ctx->be->linear_bwd_weight(ctx, dw, db, x, dy, accumulate);
}

/* ---- losses and optimiser ---- */

eng_status eng_xent(eng_ctx *ctx, const eng_tensor *logits, const int32_t *labels, double *loss_sum,
                    eng_tensor *per_example, eng_tensor *dlogits, float grad_scale)
{
    TRY(need(ctx, logits, "xent", "logits", 2));
    int64_t N = logits->dim[0], K = logits->dim[1];
    if (N < 1 || K < 1)
        return eng_fail(ENG_ERR_ARG, "xent: empty batch");
    if (!labels)
        return eng_fail(ENG_ERR_ARG, "xent: no labels");
    for (int64_t i = 0; i < N; i++)
        if (labels[i] < 0 || labels[i] >= K)
            return eng_fail(ENG_ERR_ARG, "xent: label %d of example %lld outside [0,%lld)", labels[i], (long long)i,
                            (long long)K);
    if (per_example) {
        TRY(need(ctx, per_example, "xent", "per_example", 1));
        TRY(vec(per_example, N, "xent", "per_example"));
    }
    if (dlogits) {
        TRY(need(ctx, dlogits, "xent", "dlogits", 2));
        TRY(same(dlogits, logits, "xent", "dlogits", "logits"));
    }
    return ctx->be->xent(ctx, logits, labels, loss_sum, per_example, dlogits, grad_scale);
}

eng_status eng_sgd_step(eng_ctx *ctx, eng_tensor *p, const eng_tensor *g, eng_tensor *buf, const eng_sgd_desc *d,
                        bool first_step)
{
    TRY(need(ctx, p, "sgd", "p", 0));
    TRY(need(ctx, g, "sgd", "g", 0));
    TRY(same(p, g, "sgd", "p", "g"));
    if (!d || !(d->lr >= 0) || !(d->momentum >= 0) || !(d->weight_decay >= 0))
        return eng_fail(ENG_ERR_ARG, "sgd: lr, momentum and weight decay must be >= 0");
    if (d->nesterov && (d->momentum <= 0 || d->dampening != 0))
        return eng_fail(ENG_ERR_ARG, "sgd: Nesterov needs momentum > 0 and no dampening");
    if (d->momentum > 0) {
        TRY(need(ctx, buf, "sgd", "momentum buffer", 0));
        TRY(same(buf, p, "sgd", "buf", "p"));
    }
    eng_status s = ctx->be->sgd_step(ctx, p, g, d->momentum > 0 ? buf : NULL, d, first_step);
    p->version++;
    return s;
}

/* ---- attacks ---- */

#define NEED_OP(fn)                                                                                     \
    do {                                                                                                \
        if (!ctx->be->fn)                                                                               \
            return eng_fail(ENG_ERR_UNSUPPORTED, "%s: not available on the %s backend", #fn, ctx->be->name); \
    } while (0)

static eng_status loss_args(eng_ctx *ctx, const eng_tensor *logits, const int32_t *labels, eng_tensor *per_example,
                            eng_tensor *dlogits, const char *op)
{
    TRY(need(ctx, logits, op, "logits", 2));
    int64_t N = logits->dim[0], K = logits->dim[1];
    if (!labels)
        return eng_fail(ENG_ERR_ARG, "%s: no labels", op);
    for (int64_t i = 0; i < N; i++)
        if (labels[i] < 0 || labels[i] >= K)
            return eng_fail(ENG_ERR_ARG, "%s: label %d of example %lld outside [0,%lld)", op, labels[i],
                            (long long)i, (long long)K);
    if (per_example) {
        TRY(need(ctx, per_example, op, "per_example", 1));
        TRY(vec(per_example, N, op, "per_example"));
    }
    if (dlogits) {
        TRY(need(ctx, dlogits, op, "dlogits", 2));
        TRY(same(dlogits, logits, op, "dlogits", "logits"));
    }
    return ENG_OK;
}

eng_status eng_margin_loss(eng_ctx *ctx, const eng_tensor *logits, const int32_t *labels, float kappa,
                           double *loss_sum, eng_tensor *per_example, eng_tensor *dlogits, float grad_scale)
{
    NEED_OP(margin_loss);
    TRY(loss_args(ctx, logits, labels, per_example, dlogits, "margin_loss"));
    if (logits->dim[1] < 2)
        return eng_fail(ENG_ERR_ARG, "margin_loss: needs at least 2 classes");
    if (!isfinite(kappa) || kappa < 0)
        return eng_fail(ENG_ERR_ARG, "margin_loss: kappa must be finite and >= 0");
    return ctx->be->margin_loss(ctx, logits, labels, kappa, loss_sum, per_example, dlogits, grad_scale);
}

eng_status eng_dlr_loss(eng_ctx *ctx, const eng_tensor *logits, const int32_t *labels, double *loss_sum,
                        eng_tensor *per_example, eng_tensor *dlogits, float grad_scale)
{
    NEED_OP(dlr_loss);
    TRY(loss_args(ctx, logits, labels, per_example, dlogits, "dlr_loss"));
    if (logits->dim[1] < 3)
        return eng_fail(ENG_ERR_ARG, "dlr_loss: the DLR loss needs at least 3 classes, the model has %lld",
                        (long long)logits->dim[1]);
    return ctx->be->dlr_loss(ctx, logits, labels, loss_sum, per_example, dlogits, grad_scale);
}

static eng_status eps_ok(float eps, const char *op)
{
    if (!isfinite(eps) || eps < 0 || eps > 1)
        return eng_fail(ENG_ERR_ARG, "%s: eps must be in [0, 1] (pixel units), got %g", op, eps);
    return ENG_OK;
}

eng_status eng_linf_sign_step(eng_ctx *ctx, eng_tensor *x, const eng_tensor *g, const eng_tensor *x0, float alpha,
                              float eps)
{
    NEED_OP(linf_sign_step);
    TRY(need(ctx, x, "linf_sign_step", "x", 0));
    TRY(need(ctx, g, "linf_sign_step", "g", 0));
    TRY(need(ctx, x0, "linf_sign_step", "x0", 0));
    TRY(same(x, g, "linf_sign_step", "x", "g"));
    TRY(same(x, x0, "linf_sign_step", "x", "x0"));
    TRY(eps_ok(eps, "linf_sign_step"));
    if (!isfinite(alpha) || alpha < 0)
        return eng_fail(ENG_ERR_ARG, "linf_sign_step: step size must be >= 0");
    return ctx->be->linf_sign_step(ctx, x, g, x0, alpha, eps);
}

eng_status eng_apgd_step(eng_ctx *ctx, eng_tensor *x_next, const eng_tensor *x, const eng_tensor *x_prev,
                         const eng_tensor *g, const eng_tensor *x0, const float *eta, float eps, float a)
{
    const char *op = "apgd_step";
    NEED_OP(apgd_step);
    const eng_tensor *ts[] = {x_next, x, x_prev, g, x0};
    const char *names[] = {"x_next", "x", "x_prev", "g", "x0"};
    for (int i = 0; i < 5; i++) {
        TRY(need(ctx, ts[i], op, names[i], 0));
        TRY(same(ts[i], x, op, names[i], "x"));
    }
    if (x_next->data == x->data || x_next->data == x_prev->data)
        return eng_fail(ENG_ERR_ARG, "%s: x_next must not alias x or x_prev", op);
    TRY(eps_ok(eps, op));
    if (!eta || !(a >= 0 && a <= 1))
        return eng_fail(ENG_ERR_ARG, "%s: need step sizes and a in [0,1]", op);
    return ctx->be->apgd_step(ctx, x_next, x, x_prev, g, x0, eta, eps, a);
}

eng_status eng_linf_random_start(eng_ctx *ctx, eng_tensor *x, const eng_tensor *x0, float eps, uint64_t seed,
                                 bool normalise)
{
    NEED_OP(linf_random_start);
    TRY(need(ctx, x, "linf_random_start", "x", 0));
    TRY(need(ctx, x0, "linf_random_start", "x0", 0));
    TRY(same(x, x0, "linf_random_start", "x", "x0"));
    TRY(eps_ok(eps, "linf_random_start"));
    return ctx->be->linf_random_start(ctx, x, x0, eps, seed, normalise);
}

static eng_status rows_args(eng_ctx *ctx, const eng_tensor *dst, const eng_tensor *src, const char *op)
{
    TRY(need(ctx, dst, op, "dst", 0));
    TRY(need(ctx, src, op, "src", 0));
    if (dst->ndim != src->ndim || dst->layout != src->layout)
        return eng_fail(ENG_ERR_SHAPE, "%s: dst and src differ in rank or layout", op);
    for (int i = 1; i < dst->ndim; i++)
        if (dst->dim[i] != src->dim[i])
            return eng_fail(ENG_ERR_SHAPE, "%s: dst and src differ in their per-example shape", op);
    return ENG_OK;
}

static eng_status idx_ok(const int32_t *idx, int64_t n, int64_t rows, const char *op)
{
    if (n > 0 && !idx)
        return eng_fail(ENG_ERR_ARG, "%s: no indices", op);
    for (int64_t k = 0; k < n; k++)
        if (idx[k] < 0 || idx[k] >= rows)
            return eng_fail(ENG_ERR_ARG, "%s: index %d outside [0,%lld)", op, idx[k], (long long)rows);
    return ENG_OK;
}

eng_status eng_gather_rows(eng_ctx *ctx, eng_tensor *dst, const eng_tensor *src, const int32_t *idx)
{
    NEED_OP(move_rows);
    TRY(rows_args(ctx, dst, src, "gather_rows"));
    TRY(idx_ok(idx, dst->dim[0], src->dim[0], "gather_rows"));
    return ctx->be->move_rows(ctx, dst, src, NULL, idx, (int)dst->dim[0]);
}

eng_status eng_scatter_rows(eng_ctx *ctx, eng_tensor *dst, const eng_tensor *src, const int32_t *idx)
{
    NEED_OP(move_rows);
    TRY(rows_args(ctx, dst, src, "scatter_rows"));
    TRY(idx_ok(idx, src->dim[0], dst->dim[0], "scatter_rows"));
    return ctx->be->move_rows(ctx, dst, src, idx, NULL, (int)src->dim[0]);
}

eng_status eng_copy_rows(eng_ctx *ctx, eng_tensor *dst, const eng_tensor *src, const int32_t *idx, int n)
{
    NEED_OP(move_rows);
    TRY(rows_args(ctx, dst, src, "copy_rows"));
    if (dst->dim[0] != src->dim[0] || n < 0 || n > dst->dim[0])
        return eng_fail(ENG_ERR_SHAPE, "copy_rows: dst and src must have the same rows and 0 <= n <= rows");
    TRY(idx_ok(idx, n, dst->dim[0], "copy_rows"));
    return n ? ctx->be->move_rows(ctx, dst, src, idx, idx, n) : ENG_OK;
}

eng_status eng_linf_dist(eng_ctx *ctx, const eng_tensor *x, const eng_tensor *x0, double *max_abs, bool *in_unit)
{
    NEED_OP(linf_dist);
    TRY(need(ctx, x, "linf_dist", "x", 0));
    TRY(need(ctx, x0, "linf_dist", "x0", 0));
    TRY(same(x, x0, "linf_dist", "x", "x0"));
    return ctx->be->linf_dist(ctx, x, x0, max_abs, in_unit);
}

eng_status eng_feature_distance_loss(eng_ctx *ctx, const eng_tensor *z, const eng_tensor *z0, bool l1,
                                     double *loss_sum, eng_tensor *dz, float grad_scale)
{
    NEED_OP(feature_distance);
    TRY(need(ctx, z, "feature_distance", "z", 2));
    TRY(need(ctx, z0, "feature_distance", "z0", 2));
    TRY(same(z, z0, "feature_distance", "z", "z0"));
    if (dz) {
        TRY(need(ctx, dz, "feature_distance", "dz", 2));
        TRY(same(dz, z, "feature_distance", "dz", "z"));
    }
    return ctx->be->feature_distance(ctx, z, z0, l1, loss_sum, dz, grad_scale);
}
