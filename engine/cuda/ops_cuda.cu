/* The CUDA backend: context (one stream, cuDNN and cuBLAS handles per context), the caching
 * device allocator, transfers, elementwise kernels, and the backend table. */
#include "cu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- status helpers ---- */

eng_status cu_check(cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return ENG_OK;
    cudaGetLastError(); /* clear a non-sticky error so that it is not reported twice */
    if (e == cudaErrorMemoryAllocation)
        return eng_fail(ENG_ERR_NOMEM, "cuda: %s: %s", what, cudaGetErrorString(e));
    return eng_fail(ENG_ERR_BACKEND, "cuda: %s: %s", what, cudaGetErrorString(e));
}

eng_status cu_dnn(cudnnStatus_t s, const char *what)
{
    if (s == CUDNN_STATUS_SUCCESS)
        return ENG_OK;
    char detail[256];
    cudnnGetLastErrorString(detail, sizeof detail);
    const int category = (int)s / 1000;
    if (category == 3) /* CUDNN_STATUS_NOT_SUPPORTED_* */
        return eng_fail(ENG_ERR_UNSUPPORTED, "cuda: %s: %s %s", what, cudnnGetErrorString(s), detail);
    if (s == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED ||
        s == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED)
        return eng_fail(ENG_ERR_NOMEM, "cuda: %s: %s %s", what, cudnnGetErrorString(s), detail);
    return eng_fail(ENG_ERR_BACKEND, "cuda: %s: %s %s", what, cudnnGetErrorString(s), detail);
}

eng_status cu_blas(cublasStatus_t s, const char *what)
{
    if (s == CUBLAS_STATUS_SUCCESS)
        return ENG_OK;
    if (s == CUBLAS_STATUS_ALLOC_FAILED)
        return eng_fail(ENG_ERR_NOMEM, "cuda: %s: %s", what, cublasGetStatusString(s));
    return eng_fail(ENG_ERR_BACKEND, "cuda: %s: %s", what, cublasGetStatusString(s));
}

eng_status cu_launched(const char *kernel)
{
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess)
        return ENG_OK;
    return eng_fail(ENG_ERR_BACKEND, "cuda: kernel %s: %s", kernel, cudaGetErrorString(e));
}

eng_status cu_enter(eng_ctx *ctx) { return cu_check(cudaSetDevice(cu_of(ctx)->device), "cudaSetDevice"); }

extern "C" int eng_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

/* ---- caching allocator ---- */

#define CU_TOMB ((void *)1)
#define CU_MAX_BYTES ((size_t)1 << 40)

/* Size class of a request: its bin, and the bytes the bin's blocks have. */
static int size_class(size_t bytes, size_t *cls)
{
    if (bytes <= 512) {
        *cls = 512;
        return 0;
    }
    if (bytes > CU_MAX_BYTES)
        return -1;
    const int k = 63 - __builtin_clzll((unsigned long long)(bytes - 1)); /* 2^k < bytes <= 2^(k+1) */
    const size_t step = (size_t)1 << (k - 2);
    const size_t j = (bytes - ((size_t)1 << k) + step - 1) / step; /* 1..4 */
    *cls = ((size_t)1 << k) + j * step;
    int bin = 1 + (k - 9) * 4 + (int)(j - 1);
    return bin < CU_BINS ? bin : -1;
}

static size_t ptr_hash(const void *p)
{
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (size_t)x;
}

static int live_grow(cu_pool *p)
{
    size_t cap = 64;
    while (cap < (p->live_n + 1) * 4)
        cap *= 2;
    cu_slot *s = (cu_slot *)calloc(cap, sizeof *s);
    if (!s)
        return -1;
    for (size_t i = 0; i < p->live_cap; i++) {
        void *q = p->live[i].ptr;
        if (!q || q == CU_TOMB)
            continue;
        size_t j = ptr_hash(q) & (cap - 1);
        while (s[j].ptr)
            j = (j + 1) & (cap - 1);
        s[j] = p->live[i];
    }
    free(p->live);
    p->live = s;
    p->live_cap = cap;
    p->live_used = p->live_n;
    return 0;
}

static int live_put(cu_pool *p, void *ptr, size_t bytes)
{
    if ((p->live_used + 1) * 2 > p->live_cap && live_grow(p) != 0)
        return -1;
    size_t mask = p->live_cap - 1, i = ptr_hash(ptr) & mask;
    while (p->live[i].ptr && p->live[i].ptr != CU_TOMB)
        i = (i + 1) & mask;
    if (!p->live[i].ptr)
        p->live_used++;
    p->live[i].ptr = ptr;
    p->live[i].bytes = bytes;
    p->live_n++;
    return 0;
}

/* Removes ptr from the live map; returns its class bytes, 0 when it is not ours. */
static size_t live_take(cu_pool *p, void *ptr)
{
    if (!p->live_cap)
        return 0;
    size_t mask = p->live_cap - 1, i = ptr_hash(ptr) & mask;
    while (p->live[i].ptr) {
        if (p->live[i].ptr == ptr) {
            p->live[i].ptr = CU_TOMB;
            p->live_n--;
            return p->live[i].bytes;
        }
        i = (i + 1) & mask;
    }
    return 0;
}

/* Returns every cached block to the driver (after the stream has finished with them). */
static void pool_trim(cu_impl *im)
{
    cudaStreamSynchronize(im->stream);
    for (int b = 0; b < CU_BINS; b++) {
        cu_bin *bin = &im->pool.bins[b];
        for (size_t i = 0; i < bin->n; i++)
            cudaFree(bin->ptrs[i]);
        bin->n = 0;
    }
    im->pool.cached_bytes = 0;
    cudaGetLastError();
}

static void pool_release(cu_impl *im)
{
    pool_trim(im);
    cu_pool *p = &im->pool;
    for (size_t i = 0; i < p->live_cap; i++)
        if (p->live[i].ptr && p->live[i].ptr != CU_TOMB)
            cudaFree(p->live[i].ptr); /* tensors the caller never freed */
    for (int b = 0; b < CU_BINS; b++)
        free(p->bins[b].ptrs);
    free(p->live);
    memset(p, 0, sizeof *p);
    cudaGetLastError();
}

eng_status cu_alloc(eng_ctx *ctx, size_t bytes, void **out)
{
    cu_impl *im = cu_of(ctx);
    cu_pool *p = &im->pool;
    *out = NULL;
    size_t cls;
    int b = size_class(bytes, &cls);
    if (b < 0)
        return eng_fail(ENG_ERR_LIMIT, "cuda: allocation of %zu bytes is too large", bytes);
    void *ptr = NULL;
    cu_bin *bin = &p->bins[b];
    if (bin->n) {
        ptr = bin->ptrs[--bin->n];
        p->cached_bytes -= cls;
    } else {
        cudaError_t e = cudaMalloc(&ptr, cls);
        if (e == cudaErrorMemoryAllocation) {
            cudaGetLastError();
            pool_trim(im);
            e = cudaMalloc(&ptr, cls);
        }
        if (e == cudaErrorMemoryAllocation) {
            cudaGetLastError();
            return eng_fail(ENG_ERR_NOMEM, "cuda: out of memory allocating %zu bytes", bytes);
        }
        if (e != cudaSuccess)
            return cu_check(e, "cudaMalloc");
    }
    if (live_put(p, ptr, cls) != 0) {
        cudaStreamSynchronize(im->stream);
        cudaFree(ptr);
        return eng_fail(ENG_ERR_NOMEM, "cuda: out of host memory for the allocator");
    }
    p->live_bytes += cls;
    *out = ptr;
    return ENG_OK;
}

void cu_free(eng_ctx *ctx, void *ptr)
{
    if (!ptr)
        return;
    cu_impl *im = cu_of(ctx);
    cu_pool *p = &im->pool;
    size_t bytes = live_take(p, ptr);
    if (!bytes)
        return; /* not from this context: leave it alone */
    p->live_bytes -= bytes;
    size_t cls;
    int b = size_class(bytes, &cls);
    cu_bin *bin = &p->bins[b];
    if (bin->n == bin->cap) {
        size_t nc = bin->cap ? bin->cap * 2 : 8;
        void **q = (void **)realloc(bin->ptrs, nc * sizeof *q);
        if (!q) {
            cudaStreamSynchronize(im->stream);
            cudaFree(ptr);
            cudaGetLastError();
            return;
        }
        bin->ptrs = q;
        bin->cap = nc;
    }
    bin->ptrs[bin->n++] = ptr;
    p->cached_bytes += cls;
}

eng_status cu_workspace(eng_ctx *ctx, size_t bytes, void **out)
{
    cu_impl *im = cu_of(ctx);
    if (bytes <= im->ws_bytes) {
        *out = im->ws;
        return ENG_OK;
    }
    /* The old block goes back to the pool first: stream order makes that safe, and the
     * out-of-memory retry can then give it back to the driver. */
    cu_free(ctx, im->ws);
    im->ws = NULL;
    im->ws_bytes = 0;
    void *p;
    CU_TRY(cu_alloc(ctx, bytes, &p));
    size_t cls;
    size_class(bytes, &cls);
    im->ws = p;
    im->ws_bytes = cls;
    *out = p;
    return ENG_OK;
}

/* ---- context ---- */

static void impl_destroy(cu_impl *im)
{
    if (!im)
        return;
    cudaSetDevice(im->device);
    if (im->stream)
        cudaStreamSynchronize(im->stream);
    if (im->relu)
        cudnnDestroyActivationDescriptor(im->relu);
    if (im->cd)
        cudnnDestroyConvolutionDescriptor(im->cd);
    if (im->wd)
        cudnnDestroyFilterDescriptor(im->wd);
    if (im->bd)
        cudnnDestroyTensorDescriptor(im->bd);
    if (im->yd)
        cudnnDestroyTensorDescriptor(im->yd);
    if (im->xd)
        cudnnDestroyTensorDescriptor(im->xd);
    if (im->blas)
        cublasDestroy(im->blas);
    if (im->dnn)
        cudnnDestroy(im->dnn);
    if (im->stream) {
        pool_release(im);
        cudaStreamDestroy(im->stream);
    }
    cudaGetLastError();
    free(im);
}

static eng_status impl_create(eng_ctx *ctx, cu_impl *im)
{
    const bool tf32 = ctx->opts.math == ENG_MATH_TF32;
    CU_TRY(cu_check(cudaSetDevice(im->device), "cudaSetDevice"));
    cudaDeviceProp prop;
    CU_TRY(cu_check(cudaGetDeviceProperties(&prop, im->device), "cudaGetDeviceProperties"));
    /* bfloat16 tensor-core GEMMs and cuDNN's pseudo-bfloat16 convolutions start with Ampere */
    if (ctx->opts.math == ENG_MATH_BF16 && prop.major < 8)
        return eng_fail(ENG_ERR_UNSUPPORTED,
                        "cuda: BF16 math needs compute capability 8.0 or newer (%.40s is %d.%d); use fp32 or tf32",
                        prop.name, prop.major, prop.minor);
    CU_TRY(cu_check(cudaStreamCreateWithFlags(&im->stream, cudaStreamNonBlocking), "cudaStreamCreate"));
    CU_TRY(cu_dnn(cudnnCreate(&im->dnn), "cudnnCreate"));
    CU_TRY(cu_dnn(cudnnSetStream(im->dnn, im->stream), "cudnnSetStream"));
    CU_TRY(cu_blas(cublasCreate(&im->blas), "cublasCreate"));
    CU_TRY(cu_blas(cublasSetStream(im->blas, im->stream), "cublasSetStream"));
    /* FP32 keeps every product in full precision; TF32 lets tensor cores round inputs. BF16
     * runs its GEMMs through cublasGemmEx on bfloat16 copies (conv_cuda.cu), where the types
     * say what is rounded, so the handle keeps the default. */
    CU_TRY(cu_blas(cublasSetMathMode(im->blas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH),
                   "cublasSetMathMode"));
    CU_TRY(cu_dnn(cudnnCreateTensorDescriptor(&im->xd), "cudnnCreateTensorDescriptor"));
    CU_TRY(cu_dnn(cudnnCreateTensorDescriptor(&im->yd), "cudnnCreateTensorDescriptor"));
    CU_TRY(cu_dnn(cudnnCreateTensorDescriptor(&im->bd), "cudnnCreateTensorDescriptor"));
    CU_TRY(cu_dnn(cudnnCreateFilterDescriptor(&im->wd), "cudnnCreateFilterDescriptor"));
    CU_TRY(cu_dnn(cudnnCreateConvolutionDescriptor(&im->cd), "cudnnCreateConvolutionDescriptor"));
    CU_TRY(cu_dnn(cudnnCreateActivationDescriptor(&im->relu), "cudnnCreateActivationDescriptor"));
    /* NaN -> 0, as the CPU's relu (x > 0 ? x : 0) does */
    CU_TRY(cu_dnn(cudnnSetActivationDescriptor(im->relu, CUDNN_ACTIVATION_RELU, CUDNN_NOT_PROPAGATE_NAN, 0.0),
                  "cudnnSetActivationDescriptor"));
    const char *fuse = getenv("RTAAS_CUDA_FUSE");
    im->fuse = !(fuse && strcmp(fuse, "0") == 0);
    snprintf(ctx->name, sizeof ctx->name, "cuda:%d %.40s", im->device, prop.name);
    return ENG_OK;
}

static eng_status cu_init(eng_ctx *ctx)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return eng_fail(ENG_ERR_UNSUPPORTED, "cuda: no GPU (%s)", cudaGetErrorString(e));
    }
    if (n <= 0)
        return eng_fail(ENG_ERR_UNSUPPORTED, "cuda: no GPU (no CUDA device found)");
    if (ctx->device_index < 0 || ctx->device_index >= n)
        return eng_fail(ENG_ERR_UNSUPPORTED, "cuda: no GPU (device %d asked for, %d present)", ctx->device_index, n);
    if (ctx->opts.math != ENG_MATH_FP32 && ctx->opts.math != ENG_MATH_TF32 && ctx->opts.math != ENG_MATH_BF16)
        return eng_fail(ENG_ERR_ARG, "cuda: unknown math mode %d", (int)ctx->opts.math);
    cu_impl *im = (cu_impl *)calloc(1, sizeof *im);
    if (!im)
        return eng_fail(ENG_ERR_NOMEM, "cuda: out of memory");
    im->device = ctx->device_index;
    ctx->impl = im;
    eng_status s = impl_create(ctx, im);
    if (s != ENG_OK) {
        impl_destroy(im);
        ctx->impl = NULL;
    }
    return s;
}

static void cu_fini(eng_ctx *ctx)
{
    impl_destroy(cu_of(ctx));
    ctx->impl = NULL;
}

static eng_layout cu_act_layout(const eng_ctx *ctx, int64_t channels)
{
    (void)ctx;
    return channels % 8 == 0 ? ENG_LAYOUT_NHWC : ENG_LAYOUT_NCHW;
}

cu_view cu_view_dims(int ndim, const int64_t *dim, eng_layout layout)
{
    cu_view v;
    v.N = ndim >= 1 ? dim[0] : 1;
    v.C = ndim >= 2 ? dim[1] : 1;
    v.H = ndim == 4 ? dim[2] : 1;
    v.W = ndim == 4 ? dim[3] : 1;
    v.S = v.H * v.W;
    switch (ndim == 4 ? layout : ENG_LAYOUT_NCHW) {
    case ENG_LAYOUT_NHWC:
        v.CB = 1;
        v.X = v.C;
        break;
    case ENG_LAYOUT_NCHW8C:
    case ENG_LAYOUT_NCHW16C:
        v.X = eng_layout_block(layout);
        v.CB = (v.C + v.X - 1) / v.X; /* a host tensor may pad the last block */
        break;
    default:
        v.CB = v.C;
        v.X = 1;
    }
    if (v.X < 1) /* NHWC with no channels: never indexed */
        v.X = 1;
    return v;
}

/* ---- memory and transfers ---- */

static eng_status cu_tensor_alloc(eng_ctx *ctx, eng_tensor *t, int ndim, const int64_t *dims, eng_layout layout)
{
    if (layout == ENG_LAYOUT_NCHW8C || layout == ENG_LAYOUT_NCHW16C)
        return eng_fail(ENG_ERR_ARG, "cuda: layout %s is CPU-only", eng_layout_name(layout));
    eng_tensor tmp = ENG_TENSOR_INIT;
    CU_TRY(eng_tensor_shape(&tmp, ndim, dims, layout));
    int64_t need = eng_tensor_storage(&tmp);
    if (need > ((int64_t)1 << 36))
        return eng_fail(ENG_ERR_LIMIT, "tensor: more than 2^36 elements");
    CU_TRY(cu_enter(ctx));
    size_t bytes = (size_t)(need > 0 ? need : 1) * sizeof(float), cls;
    void *p;
    CU_TRY(cu_alloc(ctx, bytes, &p));
    size_class(bytes, &cls);
    eng_status s = cu_check(cudaMemsetAsync(p, 0, bytes, cu_of(ctx)->stream), "cudaMemsetAsync");
    if (s != ENG_OK) {
        cu_free(ctx, p);
        return s;
    }
    tmp.data = (float *)p;
    tmp.dev = ENG_DEV_CUDA;
    tmp.cap = cls / sizeof(float);
    if (t->data && t->cap) { /* like eng_tensor_alloc_host: what t owned is released */
        if (t->dev == ENG_DEV_CUDA)
            cu_free(ctx, t->data);
        else
            eng_tensor_cleanup(t);
    }
    *t = tmp;
    return ENG_OK;
}

static void cu_tensor_free(eng_ctx *ctx, eng_tensor *t)
{
    if (t->dev == ENG_DEV_CUDA && t->cap && t->data && cu_enter(ctx) == ENG_OK)
        cu_free(ctx, t->data);
    memset(t, 0, sizeof *t);
}

__global__ void k_relayout(float *dst, cu_view dv, const float *src, cu_view sv, int64_t total)
{
    CU_LOOP(i, total)
    {
        int64_t s = i % dv.S, t = i / dv.S, c = t % dv.C, n = t / dv.C;
        dst[cu_at(dv, n, c, s)] = src[cu_at(sv, n, c, s)];
    }
}

eng_status cu_relayout(eng_ctx *ctx, float *dst, eng_layout dl, const float *src, eng_layout sl, const int64_t *dims)
{
    cu_view dv = cu_view_dims(4, dims, dl), sv = cu_view_dims(4, dims, sl);
    int64_t total = dv.N * dv.C * dv.S;
    if (total == 0)
        return ENG_OK;
    k_relayout<<<cu_blocks(total), CU_THREADS, 0, cu_of(ctx)->stream>>>(dst, dv, src, sv, total);
    return cu_launched("relayout");
}

static eng_status cu_upload(eng_ctx *ctx, eng_tensor *dst, const eng_tensor *src)
{
    CU_TRY(cu_enter(ctx));
    cu_impl *im = cu_of(ctx);
    const size_t bytes = (size_t)eng_tensor_storage(src) * sizeof(float);
    if (dst->ndim != 4 || dst->layout == src->layout) {
        CU_TRY(cu_check(cudaMemcpyAsync(dst->data, src->data, bytes, cudaMemcpyHostToDevice, im->stream),
                        "cudaMemcpyAsync"));
    } else {
        cu_temps tmp(ctx);
        float *stage;
        CU_TRY(tmp.get(bytes / sizeof(float), &stage));
        CU_TRY(
            cu_check(cudaMemcpyAsync(stage, src->data, bytes, cudaMemcpyHostToDevice, im->stream), "cudaMemcpyAsync"));
        CU_TRY(cu_relayout(ctx, dst->data, dst->layout, stage, src->layout, dst->dim));
    }
    /* The source may be pinned memory that the caller reuses as soon as we return. */
    return cu_check(cudaStreamSynchronize(im->stream), "upload");
}

static eng_status cu_sync(eng_ctx *ctx)
{
    CU_TRY(cu_enter(ctx));
    return cu_check(cudaStreamSynchronize(cu_of(ctx)->stream), "cudaStreamSynchronize");
}

static eng_status cu_download(eng_ctx *ctx, eng_tensor *dst, const eng_tensor *src)
{
    CU_TRY(cu_enter(ctx));
    cu_impl *im = cu_of(ctx);
    const size_t bytes = (size_t)eng_tensor_storage(dst) * sizeof(float);
    cu_temps tmp(ctx);
    const float *from = src->data;
    if (src->ndim == 4 && dst->layout != src->layout) {
        float *stage;
        CU_TRY(tmp.get(bytes / sizeof(float), &stage));
        if (eng_tensor_storage(dst) != eng_tensor_numel(dst)) /* padded blocked host layout */
            CU_TRY(cu_check(cudaMemsetAsync(stage, 0, bytes, im->stream), "cudaMemsetAsync"));
        CU_TRY(cu_relayout(ctx, stage, dst->layout, src->data, src->layout, src->dim));
        from = stage;
    }
    CU_TRY(cu_check(cudaMemcpyAsync(dst->data, from, bytes, cudaMemcpyDeviceToHost, im->stream), "cudaMemcpyAsync"));
    return cu_check(cudaStreamSynchronize(im->stream), "download");
}

/* ---- elementwise on storage ---- */

__global__ void k_fill(float *p, float v, int64_t n) { CU_LOOP(i, n) p[i] = v; }

__global__ void k_relu(float *y, const float *x, int64_t n) { CU_LOOP(i, n) y[i] = x[i] > 0.0f ? x[i] : 0.0f; }

__global__ void k_relu_bwd(float *dx, const float *dy, const float *y, bool acc, int64_t n)
{
    CU_LOOP(i, n)
    {
        float g = y[i] > 0.0f ? dy[i] : 0.0f;
        dx[i] = acc ? dx[i] + g : g;
    }
}

__global__ void k_add(float *y, const float *a, const float *b, int64_t n) { CU_LOOP(i, n) y[i] = a[i] + b[i]; }

__global__ void k_axpby(float *y, float alpha, const float *x, float beta, int64_t n)
{
    if (beta == 0.0f) {
        CU_LOOP(i, n) y[i] = alpha * x[i];
    } else {
        CU_LOOP(i, n) y[i] = alpha * x[i] + beta * y[i];
    }
}

static cudaStream_t stream_of(eng_ctx *ctx) { return cu_of(ctx)->stream; }

static eng_status cu_fill(eng_ctx *ctx, eng_tensor *t, float value)
{
    CU_TRY(cu_enter(ctx));
    int64_t n = eng_tensor_storage(t);
    k_fill<<<cu_blocks(n), CU_THREADS, 0, stream_of(ctx)>>>(t->data, value, n);
    return cu_launched("fill");
}

static eng_status cu_relu_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x)
{
    CU_TRY(cu_enter(ctx));
    int64_t n = eng_tensor_storage(x);
    k_relu<<<cu_blocks(n), CU_THREADS, 0, stream_of(ctx)>>>(y->data, x->data, n);
    return cu_launched("relu");
}

static eng_status cu_relu_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *y, bool accumulate)
{
    CU_TRY(cu_enter(ctx));
    int64_t n = eng_tensor_storage(dy);
    k_relu_bwd<<<cu_blocks(n), CU_THREADS, 0, stream_of(ctx)>>>(dx->data, dy->data, y->data, accumulate, n);
    return cu_launched("relu_bwd");
}

static eng_status cu_add(eng_ctx *ctx, eng_tensor *y, const eng_tensor *a, const eng_tensor *b)
{
    CU_TRY(cu_enter(ctx));
    int64_t n = eng_tensor_storage(y);
    k_add<<<cu_blocks(n), CU_THREADS, 0, stream_of(ctx)>>>(y->data, a->data, b->data, n);
    return cu_launched("add");
}

static eng_status cu_axpby(eng_ctx *ctx, eng_tensor *y, float alpha, const eng_tensor *x, float beta)
{
    CU_TRY(cu_enter(ctx));
    int64_t n = eng_tensor_storage(y);
    k_axpby<<<cu_blocks(n), CU_THREADS, 0, stream_of(ctx)>>>(y->data, alpha, x->data, beta, n);
    return cu_launched("axpby");
}

static eng_status cu_copy(eng_ctx *ctx, eng_tensor *dst, const eng_tensor *src)
{
    CU_TRY(cu_enter(ctx));
    if (dst->ndim != 4 || dst->layout == src->layout) {
        if (dst->data == src->data)
            return ENG_OK;
        return cu_check(cudaMemcpyAsync(dst->data, src->data, (size_t)eng_tensor_storage(src) * sizeof(float),
                                        cudaMemcpyDeviceToDevice, stream_of(ctx)),
                        "cudaMemcpyAsync");
    }
    return cu_relayout(ctx, dst->data, dst->layout, src->data, src->layout, dst->dim);
}

/* Masks are drawn per logical NCHW index, as on the CPU, so both backends drop the same units. */
__global__ void k_dropout(float *out, const float *in, cu_view v, float p, float keep, uint64_t seed, bool acc,
                          int64_t total)
{
    CU_LOOP(i, total)
    {
        int64_t s = i % v.S, t = i / v.S, c = t % v.C, n = t / v.C;
        int64_t o = cu_at(v, n, c, s);
        float m = eng_uniform(seed, (uint64_t)i) >= p ? keep : 0.0f;
        out[o] = (acc ? out[o] : 0.0f) + in[o] * m;
    }
}

static eng_status dropout_apply(eng_ctx *ctx, eng_tensor *out, const eng_tensor *in, float p, uint64_t seed,
                                bool accumulate)
{
    CU_TRY(cu_enter(ctx));
    cu_view v = cu_view_of(in);
    const float keep = 1.0f / (1.0f - p);
    int64_t total = v.N * v.C * v.S;
    k_dropout<<<cu_blocks(total), CU_THREADS, 0, stream_of(ctx)>>>(out->data, in->data, v, p, keep, seed, accumulate,
                                                                   total);
    return cu_launched("dropout");
}

static eng_status cu_dropout_fwd(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, float p, uint64_t seed)
{
    return dropout_apply(ctx, y, x, p, seed, false);
}

static eng_status cu_dropout_bwd(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, float p, uint64_t seed,
                                 bool accumulate)
{
    return dropout_apply(ctx, dx, dy, p, seed, accumulate);
}

/* ---- optimiser (PyTorch's SGD, as in the CPU backend) ---- */

__global__ void k_sgd(float *p, const float *g, float *buf, float lr, float mom, float damp, float wd, bool nest,
                      bool first, int64_t n)
{
    CU_LOOP(i, n)
    {
        float gi = g[i] + wd * p[i];
        if (buf) {
            float b = first ? gi : mom * buf[i] + (1.0f - damp) * gi;
            buf[i] = b;
            gi = nest ? gi + mom * b : b;
        }
        p[i] -= lr * gi;
    }
}

static eng_status cu_sgd_step(eng_ctx *ctx, eng_tensor *p, const eng_tensor *g, eng_tensor *buf, const eng_sgd_desc *d,
                              bool first_step)
{
    CU_TRY(cu_enter(ctx));
    int64_t n = eng_tensor_storage(p);
    k_sgd<<<cu_blocks(n), CU_THREADS, 0, stream_of(ctx)>>>(p->data, g->data, buf ? buf->data : NULL, d->lr, d->momentum,
                                                           d->dampening, d->weight_decay, d->nesterov, first_step, n);
    if (buf)
        buf->version++;
    return cu_launched("sgd");
}

/* Initialised in declaration order (C++ requires it). */
extern "C" const eng_backend eng_cuda_backend = {
    .name = "cuda",
    .dev = ENG_DEV_CUDA,
    .init = cu_init,
    .fini = cu_fini,
    .act_layout = cu_act_layout,
    .tensor_alloc = cu_tensor_alloc,
    .tensor_free = cu_tensor_free,
    .upload = cu_upload,
    .download = cu_download,
    .sync = cu_sync,
    .conv2d_fwd = cu_conv2d_fwd,
    .conv2d_bwd_data = cu_conv2d_bwd_data,
    .conv2d_bwd_filter = cu_conv2d_bwd_filter,
    .bn_train_fwd = cu_bn_train_fwd,
    .bn_train_bwd = cu_bn_train_bwd,
    .fold_bn = cu_fold_bn,
    .channel_affine_fwd = cu_channel_affine_fwd,
    .channel_affine_bwd = cu_channel_affine_bwd,
    .channel_sums = cu_channel_sums,
    .relu_fwd = cu_relu_fwd,
    .relu_bwd = cu_relu_bwd,
    .add = cu_add,
    .axpby = cu_axpby,
    .fill = cu_fill,
    .copy = cu_copy,
    .dropout_fwd = cu_dropout_fwd,
    .dropout_bwd = cu_dropout_bwd,
    .maxpool_fwd = cu_maxpool_fwd,
    .maxpool_bwd = cu_maxpool_bwd,
    .gap_fwd = cu_gap_fwd,
    .gap_bwd = cu_gap_bwd,
    .upsample_fwd = cu_upsample_fwd,
    .upsample_bwd = cu_upsample_bwd,
    .linear_fwd = cu_linear_fwd,
    .linear_bwd_data = cu_linear_bwd_data,
    .linear_bwd_weight = cu_linear_bwd_weight,
    .xent = cu_xent,
    .sgd_step = cu_sgd_step,
    .margin_loss = cu_margin_loss,
    .dlr_loss = cu_dlr_loss,
    .linf_sign_step = cu_linf_sign_step,
    .apgd_step = cu_apgd_step,
    .linf_random_start = cu_linf_random_start,
    .move_rows = cu_move_rows,
    .linf_dist = cu_linf_dist,
    .feature_distance = cu_feature_distance,
};
