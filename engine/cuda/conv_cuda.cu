/* Convolutions through cuDNN's convolution API (forward with bias, residual sum and relu;
 * backward data; backward filter and bias) and fully connected layers through cuBLAS.
 * Algorithm choices live in the call site's eng_op_cache, one per shape. */
#include "cu.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Largest cuDNN workspace an algorithm may ask for; beyond it the next candidate is taken. */
#define CU_WS_LIMIT ((size_t)1 << 30)

typedef enum { CONV_FWD = 0, CONV_BWD_DATA, CONV_BWD_FILTER } conv_kind;

typedef struct conv_key {
    int kind, device, math, layout;
    int n, c, h, w, k, r, s, p, q, stride, pad;
} conv_key;

typedef struct conv_pick {
    conv_key key;
    int valid;
    int algo; /* -1: cuDNN has none for this layout */
    cudnnMathType_t math;
    size_t ws;
    int fuse_failed; /* cudnnConvolutionBiasActivationForward refused this shape */
} conv_pick;

#define CONV_PICKS 12

/* What a convolution's eng_op_cache holds: the last few shapes' choices (attacks and
 * evaluation often alternate two batch sizes). */
typedef struct conv_cache {
    conv_pick e[CONV_PICKS];
    int next;
} conv_cache;

static void conv_cache_release(void *impl) { free(impl); }

/* The cache's state, made on first use; NULL (no caching) without a cache or when another
 * backend owns the slot. */
static conv_cache *cache_of(eng_op_cache *c)
{
    if (!c)
        return NULL;
    if (c->impl)
        return c->release == conv_cache_release ? (conv_cache *)c->impl : NULL;
    conv_cache *cc = (conv_cache *)calloc(1, sizeof *cc);
    if (!cc)
        return NULL;
    c->impl = cc;
    c->release = conv_cache_release;
    return cc;
}

static conv_pick *cache_find(conv_cache *cc, const conv_key *k)
{
    for (int i = 0; cc && i < CONV_PICKS; i++)
        if (cc->e[i].valid && memcmp(&cc->e[i].key, k, sizeof *k) == 0)
            return &cc->e[i];
    return NULL;
}

static conv_pick *cache_slot(conv_cache *cc)
{
    conv_pick *e = &cc->e[cc->next];
    cc->next = (cc->next + 1) % CONV_PICKS;
    memset(e, 0, sizeof *e);
    return e;
}

static cudnnTensorFormat_t format_of(eng_layout l)
{
    return l == ENG_LAYOUT_NHWC ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
}

static eng_status refuse_blocked(const eng_tensor *a, const eng_tensor *b, const char *op)
{
    if (eng_layout_block(a->layout) > 1 || eng_layout_block(b->layout) > 1)
        return eng_fail(ENG_ERR_ARG, "cuda: %s: blocked layouts are CPU-only", op);
    return ENG_OK;
}

static bool fits_int(const eng_tensor *t) { return eng_tensor_storage(t) <= INT_MAX; }

/* x [n,c,h,w], w [k,c,r,s], y [n,k,p,q] as a key, after checking cuDNN's int limits. */
static eng_status make_key(const eng_ctx *ctx, conv_kind kind, eng_layout L, const eng_tensor *x, const eng_tensor *w,
                           const eng_tensor *y, const eng_conv_desc *d, conv_key *k)
{
    if (!fits_int(x) || !fits_int(w) || !fits_int(y))
        return eng_fail(ENG_ERR_LIMIT, "cuda: convolution tensors of 2^31 elements or more");
    memset(k, 0, sizeof *k);
    k->kind = kind;
    k->device = cu_of(ctx)->device;
    k->math = (int)ctx->opts.math;
    k->layout = (int)L;
    k->n = (int)x->dim[0], k->c = (int)x->dim[1], k->h = (int)x->dim[2], k->w = (int)x->dim[3];
    k->k = (int)w->dim[0], k->r = (int)w->dim[2], k->s = (int)w->dim[3];
    k->p = (int)y->dim[2], k->q = (int)y->dim[3];
    k->stride = d->stride, k->pad = d->pad;
    return ENG_OK;
}

static eng_status set_descs(cu_impl *im, const conv_key *k)
{
    const cudnnTensorFormat_t f = format_of((eng_layout)k->layout);
    CU_TRY(cu_dnn(cudnnSetTensor4dDescriptor(im->xd, f, CUDNN_DATA_FLOAT, k->n, k->c, k->h, k->w),
                  "cudnnSetTensor4dDescriptor"));
    CU_TRY(cu_dnn(cudnnSetTensor4dDescriptor(im->yd, f, CUDNN_DATA_FLOAT, k->n, k->k, k->p, k->q),
                  "cudnnSetTensor4dDescriptor"));
    CU_TRY(cu_dnn(cudnnSetFilter4dDescriptor(im->wd, CUDNN_DATA_FLOAT, f, k->k, k->c, k->r, k->s),
                  "cudnnSetFilter4dDescriptor"));
    CU_TRY(cu_dnn(cudnnSetConvolution2dDescriptor(im->cd, k->pad, k->pad, k->stride, k->stride, 1, 1,
                                                  CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
                  "cudnnSetConvolution2dDescriptor"));
    return ENG_OK;
}

/* FP32 contexts stay with the GEMM-like algorithms: FFT and Winograd transform the data and
 * lose a few bits, which the 1e-5 agreement with the CPU does not leave room for. */
static bool exact_algo(conv_kind kind, int a)
{
    switch (kind) {
    case CONV_FWD:
        return a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM || a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ||
               a == CUDNN_CONVOLUTION_FWD_ALGO_GEMM || a == CUDNN_CONVOLUTION_FWD_ALGO_DIRECT;
    case CONV_BWD_DATA:
        return a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 || a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
    case CONV_BWD_FILTER:
        return a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 || a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1 ||
               a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3;
    }
    return false;
}

typedef struct conv_cand {
    int algo;
    cudnnStatus_t status;
    cudnnMathType_t math;
    cudnnDeterminism_t det;
} conv_cand;

static cudnnStatus_t ws_size(cu_impl *im, conv_kind kind, int algo, size_t *bytes)
{
    switch (kind) {
    case CONV_FWD:
        return cudnnGetConvolutionForwardWorkspaceSize(im->dnn, im->xd, im->wd, im->cd, im->yd,
                                                       (cudnnConvolutionFwdAlgo_t)algo, bytes);
    case CONV_BWD_DATA:
        return cudnnGetConvolutionBackwardDataWorkspaceSize(im->dnn, im->wd, im->yd, im->cd, im->xd,
                                                            (cudnnConvolutionBwdDataAlgo_t)algo, bytes);
    case CONV_BWD_FILTER:
        return cudnnGetConvolutionBackwardFilterWorkspaceSize(im->dnn, im->xd, im->yd, im->cd, im->wd,
                                                              (cudnnConvolutionBwdFilterAlgo_t)algo, bytes);
    }
    return CUDNN_STATUS_BAD_PARAM;
}

/* cuDNN's heuristic ranking (what PyTorch uses without cudnn.benchmark), filtered by the
 * math mode: the first usable algorithm whose workspace can be had, deterministic ones first.
 * The descriptors must be set. pk->algo = -1 when none is usable. */
static eng_status pick_algo(eng_ctx *ctx, conv_kind kind, conv_pick *pk)
{
    cu_impl *im = cu_of(ctx);
    const bool fp32 = ctx->opts.math == ENG_MATH_FP32;
    CU_TRY(cu_dnn(cudnnSetConvolutionMathType(im->cd, fp32 ? CUDNN_FMA_MATH : CUDNN_DEFAULT_MATH),
                  "cudnnSetConvolutionMathType"));
    conv_cand c[16];
    int got = 0;
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
    switch (kind) {
    case CONV_FWD: {
        cudnnConvolutionFwdAlgoPerf_t p[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
        st = cudnnGetConvolutionForwardAlgorithm_v7(im->dnn, im->xd, im->wd, im->cd, im->yd,
                                                    CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got, p);
        for (int i = 0; st == CUDNN_STATUS_SUCCESS && i < got; i++)
            c[i] = {(int)p[i].algo, p[i].status, p[i].mathType, p[i].determinism};
        break;
    }
    case CONV_BWD_DATA: {
        cudnnConvolutionBwdDataAlgoPerf_t p[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
        st = cudnnGetConvolutionBackwardDataAlgorithm_v7(im->dnn, im->wd, im->yd, im->cd, im->xd,
                                                         CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &got, p);
        for (int i = 0; st == CUDNN_STATUS_SUCCESS && i < got; i++)
            c[i] = {(int)p[i].algo, p[i].status, p[i].mathType, p[i].determinism};
        break;
    }
    case CONV_BWD_FILTER: {
        cudnnConvolutionBwdFilterAlgoPerf_t p[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
        st = cudnnGetConvolutionBackwardFilterAlgorithm_v7(im->dnn, im->xd, im->yd, im->cd, im->wd,
                                                           CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &got, p);
        for (int i = 0; st == CUDNN_STATUS_SUCCESS && i < got; i++)
            c[i] = {(int)p[i].algo, p[i].status, p[i].mathType, p[i].determinism};
        break;
    }
    }
    CU_TRY(cu_dnn(st, "cudnnGet*Algorithm_v7"));
    pk->algo = -1;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < got; i++) {
            if (c[i].status != CUDNN_STATUS_SUCCESS || (c[i].det == CUDNN_DETERMINISTIC) != (pass == 0))
                continue;
            if (c[i].math == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION) /* would round to half precision */
                continue;
            if (fp32 && (!exact_algo(kind, c[i].algo) || c[i].math == CUDNN_TENSOR_OP_MATH))
                continue;
            const cudnnMathType_t mt = fp32 ? CUDNN_FMA_MATH : c[i].math;
            size_t bytes = 0;
            if (cudnnSetConvolutionMathType(im->cd, mt) != CUDNN_STATUS_SUCCESS ||
                ws_size(im, kind, c[i].algo, &bytes) != CUDNN_STATUS_SUCCESS || bytes > CU_WS_LIMIT)
                continue;
            void *ws;
            eng_status s = cu_workspace(ctx, bytes, &ws);
            if (s == ENG_ERR_NOMEM)
                continue;
            CU_TRY(s);
            pk->algo = c[i].algo;
            pk->math = mt;
            pk->ws = bytes;
            return ENG_OK;
        }
    return ENG_OK;
}

static const char *kind_name(conv_kind k)
{
    return k == CONV_FWD ? "forward" : k == CONV_BWD_DATA ? "backward data" : "backward filter";
}

/* Sets the descriptors for key and returns the algorithm to run (cached per call site, else
 * kept in *local), with its math type applied and its workspace in *ws. ENG_ERR_UNSUPPORTED
 * when cuDNN has none. */
static eng_status prepare(eng_ctx *ctx, conv_cache *cc, const conv_key *key, conv_pick *local, conv_pick **out,
                          void **ws)
{
    cu_impl *im = cu_of(ctx);
    CU_TRY(set_descs(im, key));
    conv_pick *pk = cache_find(cc, key);
    if (!pk) {
        pk = cc ? cache_slot(cc) : local;
        memset(pk, 0, sizeof *pk);
        pk->key = *key;
        CU_TRY(pick_algo(ctx, (conv_kind)key->kind, pk));
        pk->valid = 1; /* failures are remembered too: algo -1 */
    }
    if (pk->algo < 0)
        return eng_fail(ENG_ERR_UNSUPPORTED,
                        "cuda: cuDNN has no %s algorithm for x [%d,%d,%d,%d] w [%d,%d,%d,%d] stride %d pad %d in %s",
                        kind_name((conv_kind)key->kind), key->n, key->c, key->h, key->w, key->k, key->c, key->r, key->s,
                        key->stride, key->pad, eng_layout_name((eng_layout)key->layout));
    CU_TRY(cu_dnn(cudnnSetConvolutionMathType(im->cd, pk->math), "cudnnSetConvolutionMathType"));
    CU_TRY(cu_workspace(ctx, pk->ws, ws));
    *out = pk;
    return ENG_OK;
}

/* The status of running pk's algorithm; one that cuDNN refuses at run time is dropped from the
 * cache, so that later calls go straight to the NCHW fallback. */
static eng_status ran(cudnnStatus_t st, conv_pick *pk, const char *what)
{
    if ((int)st / 1000 == 3) /* CUDNN_STATUS_NOT_SUPPORTED_* */
        pk->algo = -1;
    return cu_dnn(st, what);
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* The data of t in layout L: t's own memory, or a temporary holding it converted (filled only
 * when `load`; an output that is overwritten need not be). Views into a parameter block can
 * sit at any float offset; cuDNN gets 16-byte aligned copies of those. */
static eng_status in_layout(eng_ctx *ctx, cu_temps &tmp, const eng_tensor *t, eng_layout L, bool load, float **out)
{
    if (t->layout == L && aligned16(t->data)) {
        *out = t->data;
        return ENG_OK;
    }
    float *p;
    CU_TRY(tmp.get((size_t)eng_tensor_numel(t), &p));
    if (load)
        CU_TRY(cu_relayout(ctx, p, L, t->data, t->layout, t->dim));
    *out = p;
    return ENG_OK;
}

/* y = relu(y + b[c]) after an unfused convolution. */
__global__ void k_bias_relu(float *y, cu_view v, const float *b, bool relu, int64_t n)
{
    CU_LOOP(i, n)
    {
        float o = y[i];
        if (b)
            o += b[cu_chan(v, i)];
        if (relu)
            o = o > 0.0f ? o : 0.0f;
        y[i] = o;
    }
}

/* ---- forward ---- */

static eng_status fwd_in(eng_ctx *ctx, eng_layout L, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                         const eng_tensor *b, const eng_conv_desc *d, conv_cache *cc)
{
    cu_impl *im = cu_of(ctx);
    conv_key key;
    CU_TRY(make_key(ctx, CONV_FWD, L, x, w, y, d, &key));
    conv_pick local, *pk;
    void *ws;
    CU_TRY(prepare(ctx, cc, &key, &local, &pk, &ws));
    cu_temps tmp(ctx);
    float *xp, *wp, *yp;
    CU_TRY(in_layout(ctx, tmp, x, L, true, &xp));
    CU_TRY(in_layout(ctx, tmp, w, L, true, &wp)); /* [K,C,R,S] -> [K,R,S,C] for NHWC */
    CU_TRY(in_layout(ctx, tmp, y, L, d->accumulate, &yp));
    const float one = 1.0f, zero = 0.0f, beta = d->accumulate ? 1.0f : 0.0f;
    bool done = false;
    /* Fused bias + relu when cuDNN takes it; the residual sum stays unfused (z would alias y). */
    if (im->fuse && d->relu && b && aligned16(b->data) && !d->accumulate && !pk->fuse_failed) {
        CU_TRY(cu_dnn(cudnnSetTensor4dDescriptor(im->bd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, key.k, 1, 1),
                      "cudnnSetTensor4dDescriptor"));
        cudnnStatus_t st = cudnnConvolutionBiasActivationForward(im->dnn, &one, im->xd, xp, im->wd, wp, im->cd,
                                                                 (cudnnConvolutionFwdAlgo_t)pk->algo, ws, pk->ws, &zero,
                                                                 im->yd, yp, im->bd, b->data, im->relu, im->yd, yp);
        int cat = (int)st / 1000;
        if (st == CUDNN_STATUS_SUCCESS)
            done = true;
        else if (cat == 2 || cat == 3) /* bad parameter or not supported: not for this shape */
            pk->fuse_failed = 1;
        else
            return cu_dnn(st, "cudnnConvolutionBiasActivationForward");
    }
    if (!done) {
        CU_TRY(ran(cudnnConvolutionForward(im->dnn, &one, im->xd, xp, im->wd, wp, im->cd,
                                           (cudnnConvolutionFwdAlgo_t)pk->algo, ws, pk->ws, &beta, im->yd, yp),
                   pk, "cudnnConvolutionForward"));
        if (b || d->relu) {
            const cu_view v = cu_view_dims(4, y->dim, L);
            const int64_t n = eng_tensor_numel(y);
            k_bias_relu<<<cu_blocks(n), CU_THREADS, 0, im->stream>>>(yp, v, b ? b->data : NULL, d->relu, n);
            CU_TRY(cu_launched("bias relu"));
        }
    }
    if (yp != y->data)
        CU_TRY(cu_relayout(ctx, y->data, y->layout, yp, L, y->dim));
    return ENG_OK;
}

/* Each convolution runs in its output's layout, converting the other operands; when cuDNN has
 * nothing for that layout (NHWC with few channels, say) it runs again in NCHW. */
eng_status cu_conv2d_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *w, const eng_tensor *b,
                         const eng_conv_desc *d, eng_op_cache *cache)
{
    CU_TRY(cu_enter(ctx));
    CU_TRY(refuse_blocked(x, y, "conv2d_fwd"));
    conv_cache *cc = cache_of(cache);
    eng_status s = fwd_in(ctx, y->layout, y, x, w, b, d, cc);
    if (s == ENG_ERR_UNSUPPORTED && y->layout != ENG_LAYOUT_NCHW)
        s = fwd_in(ctx, ENG_LAYOUT_NCHW, y, x, w, b, d, cc);
    return s;
}

/* ---- backward data ---- */

static eng_status bwd_data_in(eng_ctx *ctx, eng_layout L, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *w,
                              const eng_conv_desc *d, bool accumulate, conv_cache *cc)
{
    cu_impl *im = cu_of(ctx);
    conv_key key;
    CU_TRY(make_key(ctx, CONV_BWD_DATA, L, dx, w, dy, d, &key));
    conv_pick local, *pk;
    void *ws;
    CU_TRY(prepare(ctx, cc, &key, &local, &pk, &ws));
    cu_temps tmp(ctx);
    float *dyp, *wp, *dxp;
    CU_TRY(in_layout(ctx, tmp, dy, L, true, &dyp));
    CU_TRY(in_layout(ctx, tmp, w, L, true, &wp));
    CU_TRY(in_layout(ctx, tmp, dx, L, accumulate, &dxp));
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    CU_TRY(ran(cudnnConvolutionBackwardData(im->dnn, &one, im->wd, wp, im->yd, dyp, im->cd,
                                            (cudnnConvolutionBwdDataAlgo_t)pk->algo, ws, pk->ws, &beta, im->xd, dxp),
               pk, "cudnnConvolutionBackwardData"));
    if (dxp != dx->data)
        CU_TRY(cu_relayout(ctx, dx->data, dx->layout, dxp, L, dx->dim));
    return ENG_OK;
}

eng_status cu_conv2d_bwd_data(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *w,
                              const eng_conv_desc *d, bool accumulate, eng_op_cache *cache)
{
    CU_TRY(cu_enter(ctx));
    CU_TRY(refuse_blocked(dx, dy, "conv2d_bwd_data"));
    conv_cache *cc = cache_of(cache);
    eng_status s = bwd_data_in(ctx, dy->layout, dx, dy, w, d, accumulate, cc);
    if (s == ENG_ERR_UNSUPPORTED && dy->layout != ENG_LAYOUT_NCHW)
        s = bwd_data_in(ctx, ENG_LAYOUT_NCHW, dx, dy, w, d, accumulate, cc);
    return s;
}

/* ---- backward filter and bias ---- */

static eng_status bwd_filter_in(eng_ctx *ctx, eng_layout L, eng_tensor *dw, const eng_tensor *x, const eng_tensor *dy,
                                const eng_conv_desc *d, bool accumulate, conv_cache *cc)
{
    cu_impl *im = cu_of(ctx);
    conv_key key;
    CU_TRY(make_key(ctx, CONV_BWD_FILTER, L, x, dw, dy, d, &key));
    conv_pick local, *pk;
    void *ws;
    CU_TRY(prepare(ctx, cc, &key, &local, &pk, &ws));
    cu_temps tmp(ctx);
    float *xp, *dyp, *dwp;
    CU_TRY(in_layout(ctx, tmp, x, L, true, &xp));
    CU_TRY(in_layout(ctx, tmp, dy, L, true, &dyp));
    CU_TRY(in_layout(ctx, tmp, dw, L, accumulate, &dwp)); /* [K,R,S,C] for NHWC */
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    CU_TRY(
        ran(cudnnConvolutionBackwardFilter(im->dnn, &one, im->xd, xp, im->yd, dyp, im->cd,
                                           (cudnnConvolutionBwdFilterAlgo_t)pk->algo, ws, pk->ws, &beta, im->wd, dwp),
            pk, "cudnnConvolutionBackwardFilter"));
    if (dwp != dw->data)
        CU_TRY(cu_relayout(ctx, dw->data, dw->layout, dwp, L, dw->dim));
    return ENG_OK;
}

__global__ void k_bias_grad(float *db, const double *sum, bool acc, int64_t K)
{
    CU_LOOP(k, K) db[k] = (float)((acc ? db[k] : 0.0) + sum[k]);
}

eng_status cu_conv2d_bwd_filter(eng_ctx *ctx, eng_tensor *dw, eng_tensor *db, const eng_tensor *x, const eng_tensor *dy,
                                const eng_conv_desc *d, bool accumulate, eng_op_cache *cache)
{
    CU_TRY(cu_enter(ctx));
    CU_TRY(refuse_blocked(x, dy, "conv2d_bwd_filter"));
    conv_cache *cc = cache_of(cache);
    eng_status s = bwd_filter_in(ctx, dy->layout, dw, x, dy, d, accumulate, cc);
    if (s == ENG_ERR_UNSUPPORTED && dy->layout != ENG_LAYOUT_NCHW)
        s = bwd_filter_in(ctx, ENG_LAYOUT_NCHW, dw, x, dy, d, accumulate, cc);
    if (s != ENG_OK || !db)
        return s;
    const int64_t K = dy->dim[1];
    cu_temps tmp(ctx);
    double *sum;
    CU_TRY(tmp.get((size_t)K, &sum));
    CU_TRY(cu_chan_sums(ctx, dy, NULL, NULL, false, sum, NULL));
    k_bias_grad<<<cu_blocks(K), CU_THREADS, 0, cu_of(ctx)->stream>>>(db->data, sum, accumulate, K);
    return cu_launched("bias gradient");
}

/* ---- fully connected through cuBLAS ----
 * Row-major [a,b] is column-major [b,a], so y[N,O] = x[N,I] w[O,I]^T is, column-major,
 * y^T[O,N] = w^T[O,I] x^T[I,N]: sgemm(T, N) on the same memory. */

static eng_status gemm_dims(const eng_tensor *a, const eng_tensor *b, const eng_tensor *c)
{
    if (a->dim[0] > INT_MAX || a->dim[1] > INT_MAX || b->dim[0] > INT_MAX || b->dim[1] > INT_MAX ||
        c->dim[0] > INT_MAX || c->dim[1] > INT_MAX)
        return eng_fail(ENG_ERR_LIMIT, "cuda: linear layer dimensions of 2^31 or more");
    return ENG_OK;
}

__global__ void k_bias_rows(float *y, const float *b, int64_t O, int64_t n) { CU_LOOP(i, n) y[i] += b[i % O]; }

__global__ void k_colsum(float *db, const float *dy, int64_t N, int64_t O, bool acc)
{
    CU_LOOP(o, O)
    {
        double s = 0;
        for (int64_t n = 0; n < N; n++)
            s += dy[n * O + o];
        db[o] = (float)((acc ? db[o] : 0.0) + s);
    }
}

eng_status cu_linear_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *w, const eng_tensor *b)
{
    CU_TRY(cu_enter(ctx));
    CU_TRY(gemm_dims(x, w, y));
    cu_impl *im = cu_of(ctx);
    const int N = (int)x->dim[0], In = (int)x->dim[1], Out = (int)w->dim[0];
    const float one = 1.0f, zero = 0.0f;
    CU_TRY(cu_blas(cublasSgemm(im->blas, CUBLAS_OP_T, CUBLAS_OP_N, Out, N, In, &one, w->data, In, x->data, In, &zero,
                               y->data, Out),
                   "cublasSgemm"));
    if (!b)
        return ENG_OK;
    const int64_t n = (int64_t)N * Out;
    k_bias_rows<<<cu_blocks(n), CU_THREADS, 0, im->stream>>>(y->data, b->data, Out, n);
    return cu_launched("linear bias");
}

/* dx[N,I] (+)= dy[N,O] w[O,I]: column-major dx^T[I,N] = w^T[I,O] dy^T[O,N]. */
eng_status cu_linear_bwd_data(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *w, bool accumulate)
{
    CU_TRY(cu_enter(ctx));
    CU_TRY(gemm_dims(dy, w, dx));
    cu_impl *im = cu_of(ctx);
    const int N = (int)dy->dim[0], In = (int)w->dim[1], Out = (int)w->dim[0];
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    return cu_blas(cublasSgemm(im->blas, CUBLAS_OP_N, CUBLAS_OP_N, In, N, Out, &one, w->data, In, dy->data, Out, &beta,
                               dx->data, In),
                   "cublasSgemm");
}

/* dw[O,I] (+)= dy^T[O,N] x[N,I]: column-major dw^T[I,O] = x^T[I,N] dy[N,O]. */
eng_status cu_linear_bwd_weight(eng_ctx *ctx, eng_tensor *dw, eng_tensor *db, const eng_tensor *x, const eng_tensor *dy,
                                bool accumulate)
{
    CU_TRY(cu_enter(ctx));
    CU_TRY(gemm_dims(x, dy, dw));
    cu_impl *im = cu_of(ctx);
    const int N = (int)x->dim[0], In = (int)x->dim[1], Out = (int)dw->dim[0];
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    CU_TRY(cu_blas(cublasSgemm(im->blas, CUBLAS_OP_N, CUBLAS_OP_T, In, Out, N, &one, x->data, In, dy->data, Out, &beta,
                               dw->data, In),
                   "cublasSgemm"));
    if (!db)
        return ENG_OK;
    k_colsum<<<cu_blocks(Out), CU_THREADS, 0, im->stream>>>(db->data, dy->data, N, Out, accumulate);
    return cu_launched("linear bias gradient");
}
