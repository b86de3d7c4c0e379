/* Convolutions through cuDNN's convolution API (forward with bias, residual sum and relu;
 * backward data; backward filter and bias) and fully connected layers through cuBLAS, in FP32,
 * TF32 or BF16 (bfloat16 operands, FP32 accumulation and results). Algorithm choices live in
 * the call site's eng_op_cache, one per shape. */
#include "cu.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Largest cuDNN workspace an algorithm may ask for; beyond it the next candidate is taken. */
#define CU_WS_LIMIT ((size_t)1 << 30)

typedef enum { CONV_FWD = 0, CONV_BWD_DATA, CONV_BWD_FILTER } conv_kind;

/* What a convolution hands cuDNN. FP32 and TF32 contexts: the FP32 tensors. BF16 contexts
 * (autocast-style): bfloat16 copies of the operands (activations, weights, incoming gradients)
 * in cuDNN's pseudo-bfloat16 configuration, FP32 accumulation; the bfloat16 result is widened
 * into the FP32 output by conv_widen, which also adds bias and residual and applies relu in
 * FP32. Where cuDNN has no bfloat16 algorithm for a shape in any layout: FP32 tensors holding
 * the operands rounded to bfloat16, run by FP32 algorithms (TF32 tensor cores are exact on
 * such values), so that the numbers are those of the BF16 mode, only slower. */
typedef enum { DATA_F32 = 0, DATA_BF16, DATA_BF16_ROUNDED } conv_data;

typedef struct conv_key {
    int kind, device, math, layout, data; /* math: eng_math, data: conv_data */
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

/* A BF16 context may try four (data, layout) pairs per kind before one runs (cu_conv2d_fwd). */
#define CONV_PICKS 24

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

/* x [n,c,h,w], w [k,c,r,s], y [n,k,p,q] as a key, after checking cuDNN's int limits. The math
 * mode and the data type are part of it: the same shape has other algorithms in each. */
static eng_status make_key(const eng_ctx *ctx, conv_kind kind, eng_layout L, conv_data data, const eng_tensor *x,
                           const eng_tensor *w, const eng_tensor *y, const eng_conv_desc *d, conv_key *k)
{
    if (!fits_int(x) || !fits_int(w) || !fits_int(y))
        return eng_fail(ENG_ERR_LIMIT, "cuda: convolution tensors of 2^31 elements or more");
    memset(k, 0, sizeof *k);
    k->kind = kind;
    k->device = cu_of(ctx)->device;
    k->math = (int)ctx->opts.math;
    k->layout = (int)L;
    k->data = (int)data;
    k->n = (int)x->dim[0], k->c = (int)x->dim[1], k->h = (int)x->dim[2], k->w = (int)x->dim[3];
    k->k = (int)w->dim[0], k->r = (int)w->dim[2], k->s = (int)w->dim[3];
    k->p = (int)y->dim[2], k->q = (int)y->dim[3];
    k->stride = d->stride, k->pad = d->pad;
    return ENG_OK;
}

/* x, w and y of one data type (the legacy API refuses a mix), FP32 compute in every mode. */
static eng_status set_descs(cu_impl *im, const conv_key *k)
{
    const cudnnTensorFormat_t f = format_of((eng_layout)k->layout);
    const cudnnDataType_t t = k->data == DATA_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
    CU_TRY(cu_dnn(cudnnSetTensor4dDescriptor(im->xd, f, t, k->n, k->c, k->h, k->w), "cudnnSetTensor4dDescriptor"));
    CU_TRY(cu_dnn(cudnnSetTensor4dDescriptor(im->yd, f, t, k->n, k->k, k->p, k->q), "cudnnSetTensor4dDescriptor"));
    CU_TRY(cu_dnn(cudnnSetFilter4dDescriptor(im->wd, t, f, k->k, k->c, k->r, k->s), "cudnnSetFilter4dDescriptor"));
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
 * BF16 takes what TF32 takes: its error is the rounding of the operands, not the algorithm's.
 * The descriptors must be set. pk->algo = -1 when none is usable. */
static eng_status pick_algo(eng_ctx *ctx, conv_kind kind, conv_pick *pk)
{
    cu_impl *im = cu_of(ctx);
    const bool fp32 = pk->key.math == ENG_MATH_FP32;
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
                        "cuda: cuDNN has no %s algorithm for x [%d,%d,%d,%d] w [%d,%d,%d,%d] stride %d pad %d in %s%s",
                        kind_name((conv_kind)key->kind), key->n, key->c, key->h, key->w, key->k, key->c, key->r, key->s,
                        key->stride, key->pad, eng_layout_name((eng_layout)key->layout),
                        key->data == DATA_BF16 ? " bfloat16" : "");
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

/* ---- bfloat16 operands and results (BF16 contexts) ---- */

/* dst = src in another layout (views of the same logical shape), rounded to bfloat16 to nearest
 * even: packed into 16 bits, or (k_round_bf16) kept as the float of that value. */
__global__ void k_pack_bf16(__nv_bfloat16 *dst, cu_view dv, const float *src, cu_view sv, int64_t total)
{
    CU_LOOP(i, total)
    {
        int64_t s = i % dv.S, t = i / dv.S, c = t % dv.C, n = t / dv.C;
        dst[cu_at(dv, n, c, s)] = __float2bfloat16(src[cu_at(sv, n, c, s)]);
    }
}

__global__ void k_round_bf16(float *dst, cu_view dv, const float *src, cu_view sv, int64_t total)
{
    CU_LOOP(i, total)
    {
        int64_t s = i % dv.S, t = i / dv.S, c = t % dv.C, n = t / dv.C;
        dst[cu_at(dv, n, c, s)] = __bfloat162float(__float2bfloat16(src[cu_at(sv, n, c, s)]));
    }
}

/* The epilogue of a bfloat16 convolution: y = relu(r + (acc ? y : 0) + b[c]) in FP32, r the
 * bfloat16 result in its own layout (y's may differ); b NULL: no bias. */
__global__ void k_widen_bf16(float *y, cu_view yv, const __nv_bfloat16 *r, cu_view rv, const float *b, bool relu,
                             bool acc, int64_t total)
{
    CU_LOOP(i, total)
    {
        int64_t s = i % yv.S, t = i / yv.S, c = t % yv.C, n = t / yv.C;
        const int64_t o = cu_at(yv, n, c, s);
        float v = __bfloat162float(r[cu_at(rv, n, c, s)]);
        if (acc)
            v += y[o];
        if (b)
            v += b[c];
        if (relu)
            v = v > 0.0f ? v : 0.0f;
        y[o] = v;
    }
}

/* Operand t of a convolution in layout L as `data` asks: t itself or an FP32 copy (in_layout),
 * a bfloat16 copy, or an FP32 copy of the bfloat16-rounded values. Temporaries go to tmp. */
static eng_status conv_operand(eng_ctx *ctx, cu_temps &tmp, const eng_tensor *t, eng_layout L, conv_data data,
                               void **out)
{
    if (data == DATA_F32) {
        float *p;
        CU_TRY(in_layout(ctx, tmp, t, L, true, &p));
        *out = p;
        return ENG_OK;
    }
    const int64_t n = eng_tensor_numel(t);
    const cu_view sv = cu_view_of(t), dv = cu_view_dims(t->ndim, t->dim, L);
    const cudaStream_t st = cu_of(ctx)->stream;
    if (data == DATA_BF16) {
        __nv_bfloat16 *p;
        CU_TRY(tmp.get((size_t)n, &p));
        k_pack_bf16<<<cu_blocks(n), CU_THREADS, 0, st>>>(p, dv, t->data, sv, n);
        *out = p;
        return cu_launched("pack bfloat16");
    }
    float *p;
    CU_TRY(tmp.get((size_t)n, &p));
    k_round_bf16<<<cu_blocks(n), CU_THREADS, 0, st>>>(p, dv, t->data, sv, n);
    *out = p;
    return cu_launched("round to bfloat16");
}

/* out (FP32, its own layout) from the bfloat16 result r in layout L: see k_widen_bf16. */
static eng_status conv_widen(eng_ctx *ctx, eng_tensor *out, const __nv_bfloat16 *r, eng_layout L, const eng_tensor *b,
                             bool relu, bool accumulate)
{
    const int64_t n = eng_tensor_numel(out);
    const cu_view ov = cu_view_of(out), rv = cu_view_dims(out->ndim, out->dim, L);
    k_widen_bf16<<<cu_blocks(n), CU_THREADS, 0, cu_of(ctx)->stream>>>(out->data, ov, r, rv, b ? b->data : NULL, relu,
                                                                       accumulate, n);
    return cu_launched("widen bfloat16");
}

/* Runs attempt(layout, data) on the pairs a convolution tries in turn until cuDNN takes one
 * (a status other than ENG_ERR_UNSUPPORTED): the output's layout, then NCHW (cuDNN has less for
 * NHWC with few channels); BF16 contexts try bfloat16 tensors first, then the rounded FP32 ones. */
template <typename F> static eng_status conv_attempts(const eng_ctx *ctx, eng_layout out, F attempt)
{
    const bool bf16 = ctx->opts.math == ENG_MATH_BF16;
    eng_status s = ENG_ERR_UNSUPPORTED;
    for (int i = 0; i < (bf16 ? 2 : 1) && s == ENG_ERR_UNSUPPORTED; i++) {
        const conv_data d = !bf16 ? DATA_F32 : i == 0 ? DATA_BF16 : DATA_BF16_ROUNDED;
        s = attempt(out, d);
        if (s == ENG_ERR_UNSUPPORTED && out != ENG_LAYOUT_NCHW)
            s = attempt(ENG_LAYOUT_NCHW, d);
    }
    return s;
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

static eng_status fwd_in(eng_ctx *ctx, eng_layout L, conv_data data, eng_tensor *y, const eng_tensor *x,
                         const eng_tensor *w, const eng_tensor *b, const eng_conv_desc *d, conv_cache *cc)
{
    cu_impl *im = cu_of(ctx);
    conv_key key;
    CU_TRY(make_key(ctx, CONV_FWD, L, data, x, w, y, d, &key));
    conv_pick local, *pk;
    void *ws;
    CU_TRY(prepare(ctx, cc, &key, &local, &pk, &ws));
    cu_temps tmp(ctx);
    void *xp, *wp;
    CU_TRY(conv_operand(ctx, tmp, x, L, data, &xp));
    CU_TRY(conv_operand(ctx, tmp, w, L, data, &wp)); /* [K,C,R,S] -> [K,R,S,C] for NHWC */
    const float one = 1.0f, zero = 0.0f, beta = d->accumulate ? 1.0f : 0.0f;
    if (data == DATA_BF16) {
        /* The residual stays out of cuDNN (its y is bfloat16); bias and relu come after in the
         * widening pass, which there has to be anyway, so the fused call would save nothing. */
        __nv_bfloat16 *r;
        CU_TRY(tmp.get((size_t)eng_tensor_numel(y), &r));
        CU_TRY(ran(cudnnConvolutionForward(im->dnn, &one, im->xd, xp, im->wd, wp, im->cd,
                                           (cudnnConvolutionFwdAlgo_t)pk->algo, ws, pk->ws, &zero, im->yd, r),
                   pk, "cudnnConvolutionForward"));
        return conv_widen(ctx, y, r, L, b, d->relu, d->accumulate);
    }
    float *yp;
    CU_TRY(in_layout(ctx, tmp, y, L, d->accumulate, &yp));
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
 * nothing for that layout (NHWC with few channels, say) it runs again in NCHW, and BF16 then
 * tries the same on rounded FP32 tensors (conv_attempts). */
eng_status cu_conv2d_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *w, const eng_tensor *b,
                         const eng_conv_desc *d, eng_op_cache *cache)
{
    CU_TRY(cu_enter(ctx));
    CU_TRY(refuse_blocked(x, y, "conv2d_fwd"));
    conv_cache *cc = cache_of(cache);
    return conv_attempts(ctx, y->layout,
                         [&](eng_layout L, conv_data data) { return fwd_in(ctx, L, data, y, x, w, b, d, cc); });
}

/* ---- backward data ---- */

static eng_status bwd_data_in(eng_ctx *ctx, eng_layout L, conv_data data, eng_tensor *dx, const eng_tensor *dy,
                              const eng_tensor *w, const eng_conv_desc *d, bool accumulate, conv_cache *cc)
{
    cu_impl *im = cu_of(ctx);
    conv_key key;
    CU_TRY(make_key(ctx, CONV_BWD_DATA, L, data, dx, w, dy, d, &key));
    conv_pick local, *pk;
    void *ws;
    CU_TRY(prepare(ctx, cc, &key, &local, &pk, &ws));
    cu_temps tmp(ctx);
    void *dyp, *wp;
    CU_TRY(conv_operand(ctx, tmp, dy, L, data, &dyp));
    CU_TRY(conv_operand(ctx, tmp, w, L, data, &wp));
    const float one = 1.0f, zero = 0.0f, beta = accumulate ? 1.0f : 0.0f;
    if (data == DATA_BF16) { /* the sum into dx stays FP32: see fwd_in */
        __nv_bfloat16 *r;
        CU_TRY(tmp.get((size_t)eng_tensor_numel(dx), &r));
        CU_TRY(ran(cudnnConvolutionBackwardData(im->dnn, &one, im->wd, wp, im->yd, dyp, im->cd,
                                                (cudnnConvolutionBwdDataAlgo_t)pk->algo, ws, pk->ws, &zero, im->xd, r),
                   pk, "cudnnConvolutionBackwardData"));
        return conv_widen(ctx, dx, r, L, NULL, false, accumulate);
    }
    float *dxp;
    CU_TRY(in_layout(ctx, tmp, dx, L, accumulate, &dxp));
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
    return conv_attempts(ctx, dy->layout, [&](eng_layout L, conv_data data) {
        return bwd_data_in(ctx, L, data, dx, dy, w, d, accumulate, cc);
    });
}

/* ---- backward filter and bias ---- */

static eng_status bwd_filter_in(eng_ctx *ctx, eng_layout L, conv_data data, eng_tensor *dw, const eng_tensor *x,
                                const eng_tensor *dy, const eng_conv_desc *d, bool accumulate, conv_cache *cc)
{
    cu_impl *im = cu_of(ctx);
    conv_key key;
    CU_TRY(make_key(ctx, CONV_BWD_FILTER, L, data, x, dw, dy, d, &key));
    conv_pick local, *pk;
    void *ws;
    CU_TRY(prepare(ctx, cc, &key, &local, &pk, &ws));
    cu_temps tmp(ctx);
    void *xp, *dyp;
    CU_TRY(conv_operand(ctx, tmp, x, L, data, &xp));
    CU_TRY(conv_operand(ctx, tmp, dy, L, data, &dyp));
    const float one = 1.0f, zero = 0.0f, beta = accumulate ? 1.0f : 0.0f;
    if (data == DATA_BF16) { /* [K,R,S,C] for NHWC, widened into dw's [K,C,R,S] */
        __nv_bfloat16 *r;
        CU_TRY(tmp.get((size_t)eng_tensor_numel(dw), &r));
        CU_TRY(ran(cudnnConvolutionBackwardFilter(im->dnn, &one, im->xd, xp, im->yd, dyp, im->cd,
                                                  (cudnnConvolutionBwdFilterAlgo_t)pk->algo, ws, pk->ws, &zero, im->wd,
                                                  r),
                   pk, "cudnnConvolutionBackwardFilter"));
        return conv_widen(ctx, dw, r, L, NULL, false, accumulate);
    }
    float *dwp;
    CU_TRY(in_layout(ctx, tmp, dw, L, accumulate, &dwp)); /* [K,R,S,C] for NHWC */
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
    const eng_status s = conv_attempts(ctx, dy->layout, [&](eng_layout L, conv_data data) {
        return bwd_filter_in(ctx, L, data, dw, x, dy, d, accumulate, cc);
    });
    if (s != ENG_OK || !db)
        return s;
    /* the bias gradient is a sum of the FP32 dy in every mode */
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

__global__ void k_to_bf16(__nv_bfloat16 *dst, const float *src, int64_t n)
{
    CU_LOOP(i, n) dst[i] = __float2bfloat16(src[i]);
}

/* C[m,n] = op(A) op(B) + beta C, column-major, C FP32. FP32 and TF32 contexts: sgemm (the
 * handle's math mode says whether tensor cores round). BF16: A and B (a_n and b_n floats) go
 * through bfloat16 copies into cublasGemmEx with FP32 compute and an FP32 C, so that only the
 * operands are rounded; the products are summed and the result kept in FP32. */
static eng_status gemm(eng_ctx *ctx, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float *A,
                       int64_t a_n, int lda, const float *B, int64_t b_n, int ldb, float beta, float *C, int ldc)
{
    cu_impl *im = cu_of(ctx);
    const float one = 1.0f;
    if (ctx->opts.math != ENG_MATH_BF16)
        return cu_blas(cublasSgemm(im->blas, ta, tb, m, n, k, &one, A, lda, B, ldb, &beta, C, ldc), "cublasSgemm");
    cu_temps tmp(ctx);
    __nv_bfloat16 *a, *b;
    CU_TRY(tmp.get((size_t)a_n, &a));
    CU_TRY(tmp.get((size_t)b_n, &b));
    k_to_bf16<<<cu_blocks(a_n), CU_THREADS, 0, im->stream>>>(a, A, a_n);
    CU_TRY(cu_launched("to bfloat16"));
    k_to_bf16<<<cu_blocks(b_n), CU_THREADS, 0, im->stream>>>(b, B, b_n);
    CU_TRY(cu_launched("to bfloat16"));
    return cu_blas(cublasGemmEx(im->blas, ta, tb, m, n, k, &one, a, CUDA_R_16BF, lda, b, CUDA_R_16BF, ldb, &beta, C,
                                CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                   "cublasGemmEx");
}

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
    CU_TRY(gemm(ctx, CUBLAS_OP_T, CUBLAS_OP_N, Out, N, In, w->data, eng_tensor_numel(w), In, x->data,
                eng_tensor_numel(x), In, 0.0f, y->data, Out));
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
    const int N = (int)dy->dim[0], In = (int)w->dim[1], Out = (int)w->dim[0];
    return gemm(ctx, CUBLAS_OP_N, CUBLAS_OP_N, In, N, Out, w->data, eng_tensor_numel(w), In, dy->data,
                eng_tensor_numel(dy), Out, accumulate ? 1.0f : 0.0f, dx->data, In);
}

/* dw[O,I] (+)= dy^T[O,N] x[N,I]: column-major dw^T[I,O] = x^T[I,N] dy[N,O]. */
eng_status cu_linear_bwd_weight(eng_ctx *ctx, eng_tensor *dw, eng_tensor *db, const eng_tensor *x, const eng_tensor *dy,
                                bool accumulate)
{
    CU_TRY(cu_enter(ctx));
    CU_TRY(gemm_dims(x, dy, dw));
    cu_impl *im = cu_of(ctx);
    const int N = (int)x->dim[0], In = (int)x->dim[1], Out = (int)dw->dim[0];
    CU_TRY(gemm(ctx, CUBLAS_OP_N, CUBLAS_OP_T, In, Out, N, x->data, eng_tensor_numel(x), In, dy->data,
                eng_tensor_numel(dy), Out, accumulate ? 1.0f : 0.0f, dw->data, In));
    if (!db)
        return ENG_OK;
    /* the bias gradient sums the FP32 dy in every mode */
    k_colsum<<<cu_blocks(Out), CU_THREADS, 0, im->stream>>>(db->data, dy->data, N, Out, accumulate);
    return cu_launched("linear bias gradient");
}
