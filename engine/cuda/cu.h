/* Internal interface of the CUDA backend: per-context state (stream, cuDNN and cuBLAS handles,
 * caching allocator) and the helpers its .cu files (ops, conv, norm, attack) share. */
#ifndef ENG_CU_H
#define ENG_CU_H

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

extern "C" {
#include "../backend.h"
}

/* ---- caching device allocator ----
 * Blocks are rounded up to a size class (512 bytes, then four classes per power of two, so
 * at most 25% waste) and kept on a free list per class when released. Everything runs on the
 * context's one stream, so a block released while kernels still use it can be handed out
 * again at once: its next user is ordered after them. */
#define CU_BINS 128

typedef struct cu_bin {
    void **ptrs;
    size_t n, cap;
} cu_bin;

typedef struct cu_slot {
    void *ptr; /* NULL: empty; CU_TOMB: deleted */
    size_t bytes;
} cu_slot;

typedef struct cu_pool {
    cu_bin bins[CU_BINS];
    cu_slot *live; /* open-addressing map of the blocks handed out: pointer -> class bytes */
    size_t live_cap, live_used, live_n;
    size_t cached_bytes, live_bytes;
} cu_pool;

typedef struct cu_impl {
    int device;
    cudaStream_t stream;
    cudnnHandle_t dnn;
    cublasHandle_t blas;
    cudnnTensorDescriptor_t xd, yd, bd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    cudnnActivationDescriptor_t relu;
    cu_pool pool;
    void *ws; /* cuDNN workspace: a pool block that only grows */
    size_t ws_bytes;
    bool fuse; /* cudnnConvolutionBiasActivationForward allowed (RTAAS_CUDA_FUSE=0 turns it off) */
} cu_impl;

static inline cu_impl *cu_of(const eng_ctx *ctx) { return (cu_impl *)ctx->impl; }

/* Status helpers: ENG_OK, or eng_fail(ENG_ERR_BACKEND, "cuda: <what>: <error string>"). A
 * cuDNN "not supported" becomes ENG_ERR_UNSUPPORTED, so that callers can try another layout. */
eng_status cu_check(cudaError_t e, const char *what);
eng_status cu_dnn(cudnnStatus_t s, const char *what);
eng_status cu_blas(cublasStatus_t s, const char *what);
/* Checks that the kernel launched just before succeeded (launch errors only: execution
 * errors surface at the next synchronisation). */
eng_status cu_launched(const char *kernel);

/* Makes the context's device current on the calling thread. */
eng_status cu_enter(eng_ctx *ctx);

/* Uninitialised device memory of at least `bytes` from the pool; release with cu_free. */
eng_status cu_alloc(eng_ctx *ctx, size_t bytes, void **out);
void cu_free(eng_ctx *ctx, void *p);

/* The cuDNN workspace, grown to at least `bytes`; valid until the next call. */
eng_status cu_workspace(eng_ctx *ctx, size_t bytes, void **out);

/* Temporary device buffers released when the holder goes out of scope. */
struct cu_temps {
    eng_ctx *ctx;
    void *p[8];
    int n;
    explicit cu_temps(eng_ctx *c) : ctx(c), p(), n(0) {}
    ~cu_temps()
    {
        for (int i = n - 1; i >= 0; i--)
            cu_free(ctx, p[i]);
    }
    cu_temps(const cu_temps &) = delete;
    cu_temps &operator=(const cu_temps &) = delete;
    template <typename T> eng_status get(size_t count, T **out)
    {
        *out = nullptr;
        if (n == 8)
            return eng_fail(ENG_ERR_BACKEND, "cuda: too many temporaries in one call");
        void *q;
        eng_status s = cu_alloc(ctx, count * sizeof(T), &q);
        if (s != ENG_OK)
            return s;
        p[n++] = q;
        *out = (T *)q;
        return ENG_OK;
    }
};

/* ---- launching ---- */
#define CU_THREADS 256

/* Blocks for a grid-stride loop over n items (capped; the loop covers the rest). */
static inline unsigned cu_blocks(int64_t n, int threads = CU_THREADS)
{
    int64_t b = (n + threads - 1) / threads;
    const int64_t cap = 65536 * 4;
    return (unsigned)(b < 1 ? 1 : b > cap ? cap : b);
}

#define CU_LOOP(i, n)                                                                                                  \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (int64_t)(n);                                 \
         i += (int64_t)gridDim.x * blockDim.x)

#define CU_TRY(expr)                                                                                                   \
    do {                                                                                                               \
        eng_status s_ = (expr);                                                                                        \
        if (s_ != ENG_OK)                                                                                              \
            return s_;                                                                                                 \
    } while (0)

/* ---- block reductions (blockDim.x a multiple of 32, every thread taking part) ---- */

static __device__ inline double warp_sum(double v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

static __device__ inline float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) {
        float u = __shfl_down_sync(0xffffffffu, v, o);
        v = u > v ? u : v;
    }
    return v;
}

/* Sum over the block; every thread gets the result. */
static __device__ inline double block_sum(double v)
{
    __shared__ double sh[32];
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads(); /* an earlier call may still be reading sh[0] */
    if (lane == 0)
        sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        v = lane < nw ? sh[lane] : 0.0;
        v = warp_sum(v);
        if (lane == 0)
            sh[0] = v;
    }
    __syncthreads();
    return sh[0];
}

static __device__ inline float block_max(float v)
{
    __shared__ float sh[32];
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0)
        sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        v = lane < nw ? sh[lane] : sh[0];
        v = warp_max(v);
        if (lane == 0)
            sh[0] = v;
    }
    __syncthreads();
    return sh[0];
}

/* ---- layouts ----
 * An activation as [N, CB, S, X], as in the CPU backend: channel c = cb * X + x, spatial
 * s = h * W + w, element ((n * CB + cb) * S + s) * X + x. Covers NCHW (X = 1), NHWC (CB = 1)
 * and the blocked layouts; 1-D and 2-D tensors are NCHW with S = 1. */
typedef struct cu_view {
    int64_t N, C, CB, S, X, H, W;
} cu_view;

cu_view cu_view_dims(int ndim, const int64_t *dim, eng_layout layout);
static inline cu_view cu_view_of(const eng_tensor *t) { return cu_view_dims(t->ndim, t->dim, t->layout); }

static inline __host__ __device__ int64_t cu_at(const cu_view &v, int64_t n, int64_t c, int64_t s)
{
    return ((n * v.CB + c / v.X) * v.S + s) * v.X + c % v.X;
}

/* Channel of storage element i (blocked layouts have no padding here: C is a multiple of X). */
static inline __host__ __device__ int64_t cu_chan(const cu_view &v, int64_t i)
{
    return (i / (v.S * v.X)) % v.CB * v.X + i % v.X;
}

/* dst = src for 4-D data of logical shape dims in two layouts (device pointers). */
eng_status cu_relayout(eng_ctx *ctx, float *dst, eng_layout dl, const float *src, eng_layout sl, const int64_t *dims);

/* Per-channel sums over N and the spatial positions, in double:
 * sa[c] = sum x1, sb[c] = sum x1 * (x2 - m[c]) (x2 NULL: x1; m NULL: 0; want_b false: sb unused).
 * sa and sb are device arrays of C doubles. */
eng_status cu_chan_sums(eng_ctx *ctx, const eng_tensor *x1, const float *x2, const float *m, bool want_b, double *sa,
                        double *sb);

/* Sums rows[0..n) (device doubles, with room for one more at rows[n]) into *out on the host,
 * in a fixed order; synchronises. */
eng_status cu_rows_sum(eng_ctx *ctx, double *rows, int64_t n, double *out);

/* ---- the backend's operations, by file ---- */
/* conv_cuda.cu */
eng_status cu_conv2d_fwd(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, const eng_tensor *,
                         const eng_conv_desc *, eng_op_cache *);
eng_status cu_conv2d_bwd_data(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, const eng_conv_desc *,
                              bool, eng_op_cache *);
eng_status cu_conv2d_bwd_filter(eng_ctx *, eng_tensor *, eng_tensor *, const eng_tensor *, const eng_tensor *,
                                const eng_conv_desc *, bool, eng_op_cache *);
eng_status cu_linear_fwd(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, const eng_tensor *);
eng_status cu_linear_bwd_data(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, bool);
eng_status cu_linear_bwd_weight(eng_ctx *, eng_tensor *, eng_tensor *, const eng_tensor *, const eng_tensor *, bool);

/* norm_cuda.cu */
eng_status cu_bn_train_fwd(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, const eng_tensor *,
                           eng_tensor *, eng_tensor *, eng_tensor *, eng_tensor *, float, float, const eng_tensor *, bool);
eng_status cu_bn_train_bwd(eng_ctx *, eng_tensor *, eng_tensor *, eng_tensor *, const eng_tensor *, const eng_tensor *,
                           const eng_tensor *, const eng_tensor *, const eng_tensor *, bool);
eng_status cu_fold_bn(eng_ctx *, eng_tensor *, eng_tensor *, eng_tensor *, const eng_tensor *, const eng_tensor *,
                      const eng_tensor *, const eng_tensor *, const eng_tensor *, const eng_tensor *, float);
eng_status cu_channel_affine_fwd(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, const eng_tensor *,
                                 bool);
eng_status cu_channel_affine_bwd(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, bool);
eng_status cu_channel_sums(eng_ctx *, eng_tensor *, eng_tensor *, const eng_tensor *, const eng_tensor *);
eng_status cu_maxpool_fwd(eng_ctx *, eng_tensor *, const eng_tensor *, int, int, int, eng_op_cache *);
eng_status cu_maxpool_bwd(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, int, int, int, bool,
                          eng_op_cache *);
eng_status cu_gap_fwd(eng_ctx *, eng_tensor *, const eng_tensor *);
eng_status cu_gap_bwd(eng_ctx *, eng_tensor *, const eng_tensor *, bool);
eng_status cu_upsample_fwd(eng_ctx *, eng_tensor *, const eng_tensor *);
eng_status cu_upsample_bwd(eng_ctx *, eng_tensor *, const eng_tensor *, bool);
eng_status cu_xent(eng_ctx *, const eng_tensor *, const int32_t *, double *, eng_tensor *, eng_tensor *, float);

/* attack_cuda.cu */
eng_status cu_margin_loss(eng_ctx *, const eng_tensor *, const int32_t *, float, double *, eng_tensor *, eng_tensor *,
                          float);
eng_status cu_dlr_loss(eng_ctx *, const eng_tensor *, const int32_t *, double *, eng_tensor *, eng_tensor *, float);
eng_status cu_linf_sign_step(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, float, float);
eng_status cu_apgd_step(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, const eng_tensor *,
                        const eng_tensor *, const float *, float, float);
eng_status cu_linf_random_start(eng_ctx *, eng_tensor *, const eng_tensor *, float, uint64_t, bool);
eng_status cu_move_rows(eng_ctx *, eng_tensor *, const eng_tensor *, const int32_t *, const int32_t *, int);
eng_status cu_linf_dist(eng_ctx *, const eng_tensor *, const eng_tensor *, double *, bool *);
eng_status cu_feature_distance(eng_ctx *, const eng_tensor *, const eng_tensor *, bool, double *, eng_tensor *, float);

#endif
