/* A CPU emulation of the CUDA runtime, cuDNN's convolutions and cuBLAS's sgemm, just enough to
 * run engine/cuda against the CPU backend on a machine without a GPU (make cuda-emu).
 *
 * Kernels run one block at a time. Kernels that synchronise (listed in cuda.mk as EMU_SYNC)
 * run their threads as coroutines that meet at __syncthreads and warp shuffles; the others
 * run their threads one after the other. "Device" memory is host memory filled with NaN
 * bytes, registered so that every pointer handed to a kernel, a copy, cuDNN or cuBLAS is
 * checked to be device memory of the right extent. The cuDNN stand-in checks shapes, formats
 * (NCHW, or NHWC with KRSC filters), 16-byte alignment and workspace sizes, and computes in
 * double. Its heuristics list a Winograd algorithm first (FP32 contexts must skip it), a
 * non-deterministic one second and a GEMM one last. Knobs (environment): CUEMU_NO_DEVICE,
 * CUEMU_MEM_LIMIT (bytes), CUEMU_NHWC_UNSUPPORTED, CUEMU_FUSE_UNSUPPORTED. Test-only code. */
#include "cublas_v2.h"
#include "cudnn.h"
#include "cuda_runtime.h"

#include <map>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <functional>
#include <math.h>

__attribute__((format(printf, 1, 2), noreturn)) static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cuemu: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

/* ---- memory ---- */
static std::map<uintptr_t, size_t> g_dev;
static size_t g_used, g_limit = (size_t)-1;
static cudaError_t g_last = cudaSuccess;
long cuemu_mallocs, cuemu_frees;

static bool is_dev(const void *p, size_t n)
{
    uintptr_t a = (uintptr_t)p;
    auto it = g_dev.upper_bound(a);
    if (it == g_dev.begin())
        return false;
    --it;
    return a >= it->first && a + n <= it->first + it->second;
}

void cuemu_check_ptr(const void *p, const char *what)
{
    if (p && !is_dev(p, 1))
        die("%s %p is not device memory", what, p);
}

static void need_dev(const void *p, size_t n, const char *what)
{
    if (n && !is_dev(p, n))
        die("%s %p: range not inside one device allocation", what, p);
}

const char *cudaGetErrorString(cudaError_t e)
{
    return e == cudaSuccess ? "no error" : e == cudaErrorMemoryAllocation ? "out of memory" : "emulated error";
}
cudaError_t cudaGetLastError(void)
{
    cudaError_t e = g_last;
    g_last = cudaSuccess;
    return e;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidValue; }
cudaError_t cudaGetDeviceCount(int *n)
{
    *n = getenv("CUEMU_NO_DEVICE") ? 0 : 1;
    if (getenv("CUEMU_NO_DEVICE"))
        return g_last = cudaErrorNoDevice;
    const char *lim = getenv("CUEMU_MEM_LIMIT");
    if (lim)
        g_limit = strtoull(lim, nullptr, 10);
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d)
{
    (void)d;
    snprintf(p->name, sizeof p->name, "Emulated GPU");
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags)
{
    (void)flags;
    *s = (cudaStream_t)malloc(16);
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    free(s);
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    (void)s;
    return cudaSuccess;
}
cudaError_t cudaMalloc(void **p, size_t bytes)
{
    if (g_used + bytes > g_limit)
        return g_last = cudaErrorMemoryAllocation;
    size_t r = (bytes + 255) / 256 * 256;
    void *q = aligned_alloc(256, r ? r : 256);
    if (!q)
        return g_last = cudaErrorMemoryAllocation;
    memset(q, 0xff, r ? r : 256); /* NaN: reading memory nobody wrote shows up in the results */
    g_dev[(uintptr_t)q] = bytes;
    g_used += bytes;
    cuemu_mallocs++;
    *p = q;
    return cudaSuccess;
}
cudaError_t cudaFree(void *p)
{
    if (!p)
        return cudaSuccess;
    auto it = g_dev.find((uintptr_t)p);
    if (it == g_dev.end())
        die("cudaFree of %p, not an allocation", p);
    g_used -= it->second;
    g_dev.erase(it);
    free(p);
    cuemu_frees++;
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *p, int v, size_t bytes, cudaStream_t s)
{
    (void)s;
    need_dev(p, bytes, "cudaMemsetAsync");
    memset(p, v, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s)
{
    (void)s;
    if (kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice)
        need_dev(dst, bytes, "cudaMemcpyAsync dst");
    if (kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice)
        need_dev(src, bytes, "cudaMemcpyAsync src");
    if (kind == cudaMemcpyHostToDevice && is_dev(src, 1))
        die("host-to-device copy from device memory %p", src);
    if (kind == cudaMemcpyDeviceToHost && is_dev(dst, 1))
        die("device-to-host copy into device memory %p", dst);
    memmove(dst, src, bytes);
    return cudaSuccess;
}

/* ---- kernels: threads as coroutines for the kernels that synchronise ---- */
dim3 threadIdx, blockIdx, blockDim, gridDim;

enum { RUN = 0, BAR_BLOCK = 1, BAR_WARP = 2, DONE = 3 };
struct emu_thread {
    jmp_buf jb;
    ucontext_t uc;
    char *stack;
    int state, started;
    dim3 tid;
};
#define STACK (256 * 1024)
static emu_thread g_th[1024];
static int g_n, g_cur;
static bool g_coop;
static jmp_buf g_sched;
static const std::function<void()> *g_body;
static double g_slot[32][32];

static void entry()
{
    (*g_body)();
    g_th[g_cur].state = DONE;
    _longjmp(g_sched, 1);
}

static void yield_as(int state)
{
    if (!g_coop)
        die("a kernel synchronises but is not in EMU_SYNC (engine/cuda/cuda.mk)");
    g_th[g_cur].state = state;
    if (!_setjmp(g_th[g_cur].jb))
        _longjmp(g_sched, 1);
}

void __syncthreads(void) { yield_as(BAR_BLOCK); }

static int lin(const dim3 &t) { return (int)(t.x + t.y * blockDim.x + t.z * blockDim.x * blockDim.y); }

double cuemu_shfl(double v, int o)
{
    int l = lin(threadIdx), lane = l & 31, w = l >> 5;
    g_slot[w][lane] = v;
    yield_as(BAR_WARP);
    double r = lane + o < 32 ? g_slot[w][lane + o] : v;
    yield_as(BAR_WARP);
    return r;
}
float cuemu_shfl(float v, int o) { return (float)cuemu_shfl((double)v, o); }

void cuemu_run(const dim3 &grid, const dim3 &block, bool coop, const std::function<void()> &body)
{
    blockDim = block;
    gridDim = grid;
    const int n = (int)(block.x * block.y * block.z);
    if (n > 1024 || n < 1)
        die("bad block size %d", n);
    if (grid.x == 0 || grid.y == 0 || grid.z == 0)
        die("empty grid");
    g_body = &body;
    g_coop = coop;
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                blockIdx = dim3(bx, by, bz);
                if (!coop) {
                    for (int t = 0; t < n; t++) {
                        threadIdx = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
                        body();
                    }
                    continue;
                }
                g_n = n;
                for (int t = 0; t < n; t++) {
                    emu_thread *th = &g_th[t];
                    if (!th->stack)
                        th->stack = (char *)malloc(STACK);
                    th->tid = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
                    th->state = RUN;
                    th->started = 0;
                    getcontext(&th->uc);
                    th->uc.uc_stack.ss_sp = th->stack;
                    th->uc.uc_stack.ss_size = STACK;
                    th->uc.uc_link = nullptr;
                    makecontext(&th->uc, entry, 0);
                }
                for (;;) {
                    for (volatile int t = 0; t < n; t++) {
                        if (g_th[t].state != RUN)
                            continue;
                        g_cur = t;
                        threadIdx = g_th[t].tid;
                        if (!_setjmp(g_sched)) {
                            if (!g_th[t].started) {
                                g_th[t].started = 1;
                                setcontext(&g_th[t].uc);
                            } else {
                                _longjmp(g_th[t].jb, 1);
                            }
                        }
                    }
                    int done = 0, block_bar = 0;
                    for (int t = 0; t < n; t++)
                        done += g_th[t].state == DONE, block_bar += g_th[t].state == BAR_BLOCK;
                    if (done == n)
                        break;
                    bool released = false;
                    if (block_bar == n) {
                        for (int t = 0; t < n; t++)
                            g_th[t].state = RUN;
                        released = true;
                    } else if (block_bar && block_bar + done == n) {
                        die("__syncthreads after some threads exited");
                    }
                    for (int w = 0; w * 32 < n; w++) {
                        int at = 0, lanes = n - w * 32 < 32 ? n - w * 32 : 32;
                        for (int l = 0; l < lanes; l++)
                            at += g_th[w * 32 + l].state == BAR_WARP;
                        if (at == lanes) {
                            for (int l = 0; l < lanes; l++)
                                g_th[w * 32 + l].state = RUN;
                            released = true;
                        }
                    }
                    if (!released)
                        die("deadlock: threads wait at different barriers");
                }
            }
}

/* ---- cuBLAS ---- */
const char *cublasGetStatusString(cublasStatus_t s) { return s ? "CUBLAS_STATUS_ERROR" : "CUBLAS_STATUS_SUCCESS"; }
cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    *h = (cublasHandle_t)malloc(16);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    free(h);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSgemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                           float *C, int ldc)
{
    if (lda < (ta == CUBLAS_OP_N ? m : k) || ldb < (tb == CUBLAS_OP_N ? k : n) || ldc < m)
        return CUBLAS_STATUS_INVALID_VALUE;
    need_dev(A, (size_t)((ta == CUBLAS_OP_N ? (size_t)lda * (k - 1) + m : (size_t)lda * (m - 1) + k)) * 4, "sgemm A");
    need_dev(B, (size_t)((tb == CUBLAS_OP_N ? (size_t)ldb * (n - 1) + k : (size_t)ldb * (k - 1) + n)) * 4, "sgemm B");
    need_dev(C, ((size_t)ldc * (n - 1) + m) * 4, "sgemm C");
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0;
            for (int l = 0; l < k; l++) {
                float a = ta == CUBLAS_OP_N ? A[i + (size_t)l * lda] : A[l + (size_t)i * lda];
                float b = tb == CUBLAS_OP_N ? B[l + (size_t)j * ldb] : B[j + (size_t)l * ldb];
                s += (double)a * b;
            }
            float *c = &C[i + (size_t)j * ldc];
            *c = (float)(*alpha * s + (*beta != 0 ? *beta * (double)*c : 0.0));
        }
    return CUBLAS_STATUS_SUCCESS;
}

/* ---- cuDNN ---- */
struct cudnnTensorStruct {
    cudnnTensorFormat_t f;
    int n, c, h, w;
};
struct cudnnFilterStruct {
    cudnnTensorFormat_t f;
    int k, c, r, s;
};
struct cudnnConvolutionStruct {
    int ph, pw, u, v;
    cudnnMathType_t math;
};
struct cudnnActivationStruct {
    int mode;
};
static char g_dnn_err[256];
long cuemu_fused, cuemu_conv_calls, cuemu_nhwc_calls;

const char *cudnnGetErrorString(cudnnStatus_t s)
{
    switch ((int)s / 1000) {
    case 0:
        return "CUDNN_STATUS_SUCCESS";
    case 2:
        return "CUDNN_STATUS_BAD_PARAM";
    case 3:
        return "CUDNN_STATUS_NOT_SUPPORTED";
    default:
        return "CUDNN_STATUS_OTHER";
    }
}
void cudnnGetLastErrorString(char *msg, size_t n) { snprintf(msg, n, "%s", g_dnn_err); }
cudnnStatus_t cudnnCreate(cudnnHandle_t *h)
{
    *h = (cudnnHandle_t)malloc(16);
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroy(cudnnHandle_t h)
{
    free(h);
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetStream(cudnnHandle_t, cudaStream_t) { return CUDNN_STATUS_SUCCESS; }
#define MAKE(T, S)                                                                                                     \
    cudnnStatus_t cudnnCreate##T(S *d)                                                                                 \
    {                                                                                                                  \
        *d = (S)calloc(1, 64);                                                                                         \
        return CUDNN_STATUS_SUCCESS;                                                                                   \
    }                                                                                                                  \
    cudnnStatus_t cudnnDestroy##T(S d)                                                                                 \
    {                                                                                                                  \
        free(d);                                                                                                       \
        return CUDNN_STATUS_SUCCESS;                                                                                   \
    }
MAKE(TensorDescriptor, cudnnTensorDescriptor_t)
MAKE(FilterDescriptor, cudnnFilterDescriptor_t)
MAKE(ConvolutionDescriptor, cudnnConvolutionDescriptor_t)
MAKE(ActivationDescriptor, cudnnActivationDescriptor_t)
cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t f, cudnnDataType_t, int n,
                                         int c, int h, int w)
{
    if (n < 1 || c < 1 || h < 1 || w < 1)
        return CUDNN_STATUS_BAD_PARAM;
    *d = {f, n, c, h, w};
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t, cudnnTensorFormat_t f, int k,
                                         int c, int h, int w)
{
    *d = {f, k, c, h, w};
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int ph, int pw, int u, int v, int dh,
                                              int dw, cudnnConvolutionMode_t m, cudnnDataType_t)
{
    if (dh != 1 || dw != 1 || m != CUDNN_CROSS_CORRELATION)
        return CUDNN_STATUS_NOT_SUPPORTED;
    d->ph = ph, d->pw = pw, d->u = u, d->v = v;
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t m)
{
    d->math = m;
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetActivationDescriptor(cudnnActivationDescriptor_t d, cudnnActivationMode_t m,
                                           cudnnNanPropagation_t, double)
{
    d->mode = m;
    return CUDNN_STATUS_SUCCESS;
}

static bool nhwc_refused(cudnnTensorDescriptor_t a, cudnnTensorDescriptor_t b)
{
    return getenv("CUEMU_NHWC_UNSUPPORTED") && (a->f == CUDNN_TENSOR_NHWC || b->f == CUDNN_TENSOR_NHWC);
}

/* shapes consistent and formats matching, as cuDNN wants */
static cudnnStatus_t check(cudnnTensorDescriptor_t x, cudnnFilterDescriptor_t w, cudnnConvolutionDescriptor_t c,
                           cudnnTensorDescriptor_t y)
{
    int P = (x->h + 2 * c->ph - w->r) / c->u + 1, Q = (x->w + 2 * c->pw - w->s) / c->v + 1;
    if (x->c != w->c || y->c != w->k || y->n != x->n || y->h != P || y->w != Q) {
        snprintf(g_dnn_err, sizeof g_dnn_err, "shape mismatch");
        return CUDNN_STATUS_BAD_PARAM;
    }
    if (x->f != y->f || w->f != x->f) {
        snprintf(g_dnn_err, sizeof g_dnn_err, "mixed formats");
        return CUDNN_STATUS_NOT_SUPPORTED_LAYOUT;
    }
    return CUDNN_STATUS_SUCCESS;
}

#define WS_NEED 1000
template <typename Perf>
static void fill_perf(Perf *p, int *got, int a_bad, int a_good, int a_nondet, cudnnMathType_t m, bool refuse)
{
    p[0].algo = (decltype(p[0].algo))a_bad;
    p[0].status = refuse ? CUDNN_STATUS_NOT_SUPPORTED : CUDNN_STATUS_SUCCESS;
    p[0].determinism = CUDNN_DETERMINISTIC;
    p[0].mathType = m;
    p[1].algo = (decltype(p[1].algo))a_nondet;
    p[1].status = refuse ? CUDNN_STATUS_NOT_SUPPORTED : CUDNN_STATUS_SUCCESS;
    p[1].determinism = CUDNN_NON_DETERMINISTIC;
    p[1].mathType = m;
    p[2].algo = (decltype(p[2].algo))a_good;
    p[2].status = refuse ? CUDNN_STATUS_NOT_SUPPORTED : CUDNN_STATUS_SUCCESS;
    p[2].determinism = CUDNN_DETERMINISTIC;
    p[2].mathType = m;
    *got = 3;
}
/* The heuristics rank a transform algorithm first (FP32 contexts must skip it), then a
 * non-deterministic one (skipped in the first pass), then a GEMM-like one. */
cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(cudnnHandle_t, cudnnTensorDescriptor_t x,
                                                     cudnnFilterDescriptor_t w, cudnnConvolutionDescriptor_t c,
                                                     cudnnTensorDescriptor_t y, int req, int *got,
                                                     cudnnConvolutionFwdAlgoPerf_t *p)
{
    cudnnStatus_t s = check(x, w, c, y);
    if (s)
        return s;
    if (req < 3)
        return CUDNN_STATUS_BAD_PARAM;
    fill_perf(p, got, CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
              CUDNN_CONVOLUTION_FWD_ALGO_GEMM, c->math, nhwc_refused(x, y));
    p[1].determinism = CUDNN_DETERMINISTIC; /* forward algorithms are deterministic */
    p[1].status = CUDNN_STATUS_NOT_SUPPORTED;
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(cudnnHandle_t, cudnnFilterDescriptor_t w,
                                                          cudnnTensorDescriptor_t dy, cudnnConvolutionDescriptor_t c,
                                                          cudnnTensorDescriptor_t dx, int req, int *got,
                                                          cudnnConvolutionBwdDataAlgoPerf_t *p)
{
    cudnnStatus_t s = check(dx, w, c, dy);
    if (s)
        return s;
    if (req < 3)
        return CUDNN_STATUS_BAD_PARAM;
    fill_perf(p, got, CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING, CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
              CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, c->math, nhwc_refused(dx, dy));
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(cudnnHandle_t, cudnnTensorDescriptor_t x,
                                                            cudnnTensorDescriptor_t dy, cudnnConvolutionDescriptor_t c,
                                                            cudnnFilterDescriptor_t w, int req, int *got,
                                                            cudnnConvolutionBwdFilterAlgoPerf_t *p)
{
    cudnnStatus_t s = check(x, w, c, dy);
    if (s)
        return s;
    if (req < 3)
        return CUDNN_STATUS_BAD_PARAM;
    fill_perf(p, got, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
              CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, c->math, nhwc_refused(x, dy));
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(cudnnHandle_t, cudnnTensorDescriptor_t, cudnnFilterDescriptor_t,
                                                      cudnnConvolutionDescriptor_t, cudnnTensorDescriptor_t,
                                                      cudnnConvolutionFwdAlgo_t, size_t *b)
{
    *b = WS_NEED;
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(cudnnHandle_t, cudnnFilterDescriptor_t,
                                                           cudnnTensorDescriptor_t, cudnnConvolutionDescriptor_t,
                                                           cudnnTensorDescriptor_t, cudnnConvolutionBwdDataAlgo_t,
                                                           size_t *b)
{
    *b = WS_NEED * 3;
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(cudnnHandle_t, cudnnTensorDescriptor_t,
                                                             cudnnTensorDescriptor_t, cudnnConvolutionDescriptor_t,
                                                             cudnnFilterDescriptor_t, cudnnConvolutionBwdFilterAlgo_t,
                                                             size_t *b)
{
    *b = WS_NEED * 7;
    return CUDNN_STATUS_SUCCESS;
}

static size_t tix(cudnnTensorDescriptor_t d, int n, int c, int h, int w)
{
    return d->f == CUDNN_TENSOR_NHWC ? (((size_t)n * d->h + h) * d->w + w) * d->c + c
                                     : (((size_t)n * d->c + c) * d->h + h) * d->w + w;
}
static size_t fix(cudnnFilterDescriptor_t d, int k, int c, int r, int s)
{
    return d->f == CUDNN_TENSOR_NHWC ? (((size_t)k * d->r + r) * d->s + s) * d->c + c
                                     : (((size_t)k * d->c + c) * d->r + r) * d->s + s;
}
static size_t tsz(cudnnTensorDescriptor_t d) { return (size_t)d->n * d->c * d->h * d->w * 4; }
static size_t fsz(cudnnFilterDescriptor_t d) { return (size_t)d->k * d->c * d->r * d->s * 4; }

static cudnnStatus_t common(cudnnTensorDescriptor_t x, const void *xp, cudnnFilterDescriptor_t w, const void *wp,
                            cudnnConvolutionDescriptor_t c, cudnnTensorDescriptor_t y, const void *yp, void *ws,
                            size_t wsb, size_t need, int transform, int refused)
{
    cudnnStatus_t s = check(x, w, c, y);
    if (s)
        return s;
    if (nhwc_refused(x, y))
        return CUDNN_STATUS_NOT_SUPPORTED;
    if (refused)
        die("ran an algorithm the heuristics refused");
    if (transform && c->math == CUDNN_FMA_MATH)
        die("an FP32 (FMA) convolution ran a Winograd/FFT algorithm");
    if (((uintptr_t)xp | (uintptr_t)wp | (uintptr_t)yp) & 15)
        return CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER;
    if (wsb < need)
        return CUDNN_STATUS_BAD_PARAM;
    need_dev(ws, need, "workspace");
    need_dev(xp, tsz(x), "conv x");
    need_dev(wp, fsz(w), "conv w");
    need_dev(yp, tsz(y), "conv y");
    cuemu_conv_calls++;
    cuemu_nhwc_calls += x->f == CUDNN_TENSOR_NHWC;
    return CUDNN_STATUS_SUCCESS;
}

static double conv_at(cudnnTensorDescriptor_t x, const float *xp, cudnnFilterDescriptor_t w, const float *wp,
                      cudnnConvolutionDescriptor_t c, int n, int k, int p, int q)
{
    double s = 0;
    for (int ch = 0; ch < x->c; ch++)
        for (int r = 0; r < w->r; r++) {
            int h = p * c->u - c->ph + r;
            if (h < 0 || h >= x->h)
                continue;
            for (int u = 0; u < w->s; u++) {
                int ww = q * c->v - c->pw + u;
                if (ww < 0 || ww >= x->w)
                    continue;
                s += (double)xp[tix(x, n, ch, h, ww)] * wp[fix(w, k, ch, r, u)];
            }
        }
    return s;
}

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t, const void *alpha, cudnnTensorDescriptor_t x, const void *xv,
                                      cudnnFilterDescriptor_t w, const void *wv, cudnnConvolutionDescriptor_t c,
                                      cudnnConvolutionFwdAlgo_t algo, void *ws, size_t wsb, const void *beta,
                                      cudnnTensorDescriptor_t y, void *yv)
{
    cudnnStatus_t s =
        common(x, xv, w, wv, c, y, yv, ws, wsb, WS_NEED, algo == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
               algo == CUDNN_CONVOLUTION_FWD_ALGO_GEMM);
    if (s)
        return s;
    const float a = *(const float *)alpha, b = *(const float *)beta;
    float *yp = (float *)yv;
    for (int n = 0; n < y->n; n++)
        for (int k = 0; k < y->c; k++)
            for (int p = 0; p < y->h; p++)
                for (int q = 0; q < y->w; q++) {
                    size_t i = tix(y, n, k, p, q);
                    double v = a * conv_at(x, (const float *)xv, w, (const float *)wv, c, n, k, p, q);
                    yp[i] = (float)(v + (b != 0 ? b * (double)yp[i] : 0.0));
                }
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnConvolutionBiasActivationForward(cudnnHandle_t, const void *alpha1, cudnnTensorDescriptor_t x,
                                                    const void *xv, cudnnFilterDescriptor_t w, const void *wv,
                                                    cudnnConvolutionDescriptor_t c, cudnnConvolutionFwdAlgo_t algo,
                                                    void *ws, size_t wsb, const void *alpha2, cudnnTensorDescriptor_t z,
                                                    const void *zv, cudnnTensorDescriptor_t bd, const void *bias,
                                                    cudnnActivationDescriptor_t act, cudnnTensorDescriptor_t y,
                                                    void *yv)
{
    if (getenv("CUEMU_FUSE_UNSUPPORTED"))
        return CUDNN_STATUS_NOT_SUPPORTED;
    cudnnStatus_t s =
        common(x, xv, w, wv, c, y, yv, ws, wsb, WS_NEED, algo == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
               algo == CUDNN_CONVOLUTION_FWD_ALGO_GEMM);
    if (s)
        return s;
    if (z->n != y->n || z->c != y->c || z->h != y->h || z->w != y->w || bd->n != 1 || bd->c != y->c || bd->h != 1 ||
        bd->w != 1 || act->mode != CUDNN_ACTIVATION_RELU)
        return CUDNN_STATUS_BAD_PARAM;
    if ((uintptr_t)bias & 15)
        return CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER;
    need_dev(bias, (size_t)y->c * 4, "bias");
    const float a1 = *(const float *)alpha1, a2 = *(const float *)alpha2;
    float *yp = (float *)yv;
    const float *zp = (const float *)zv, *bp = (const float *)bias;
    for (int n = 0; n < y->n; n++)
        for (int k = 0; k < y->c; k++)
            for (int p = 0; p < y->h; p++)
                for (int q = 0; q < y->w; q++) {
                    size_t i = tix(y, n, k, p, q);
                    double v = a1 * conv_at(x, (const float *)xv, w, (const float *)wv, c, n, k, p, q) + bp[k];
                    if (a2 != 0)
                        v += a2 * (double)zp[tix(z, n, k, p, q)];
                    yp[i] = v > 0 ? (float)v : 0.0f;
                }
    cuemu_fused++;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t, const void *alpha, cudnnFilterDescriptor_t w, const void *wv,
                                           cudnnTensorDescriptor_t dy, const void *dyv, cudnnConvolutionDescriptor_t c,
                                           cudnnConvolutionBwdDataAlgo_t algo, void *ws, size_t wsb, const void *beta,
                                           cudnnTensorDescriptor_t dx, void *dxv)
{
    cudnnStatus_t s =
        common(dx, dxv, w, wv, c, dy, dyv, ws, wsb, WS_NEED * 3, algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING, 0);
    if (s)
        return s;
    const float a = *(const float *)alpha, b = *(const float *)beta;
    const float *wp = (const float *)wv, *g = (const float *)dyv;
    float *o = (float *)dxv;
    for (int n = 0; n < dx->n; n++)
        for (int ch = 0; ch < dx->c; ch++)
            for (int h = 0; h < dx->h; h++)
                for (int ww = 0; ww < dx->w; ww++) {
                    double acc = 0;
                    for (int k = 0; k < dy->c; k++)
                        for (int r = 0; r < w->r; r++) {
                            int t = h + c->ph - r;
                            if (t < 0 || t % c->u)
                                continue;
                            int p = t / c->u;
                            if (p >= dy->h)
                                continue;
                            for (int u = 0; u < w->s; u++) {
                                int t2 = ww + c->pw - u;
                                if (t2 < 0 || t2 % c->v)
                                    continue;
                                int q = t2 / c->v;
                                if (q >= dy->w)
                                    continue;
                                acc += (double)g[tix(dy, n, k, p, q)] * wp[fix(w, k, ch, r, u)];
                            }
                        }
                    size_t i = tix(dx, n, ch, h, ww);
                    o[i] = (float)(a * acc + (b != 0 ? b * (double)o[i] : 0.0));
                }
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t, const void *alpha, cudnnTensorDescriptor_t x,
                                             const void *xv, cudnnTensorDescriptor_t dy, const void *dyv,
                                             cudnnConvolutionDescriptor_t c, cudnnConvolutionBwdFilterAlgo_t algo,
                                             void *ws, size_t wsb, const void *beta, cudnnFilterDescriptor_t w,
                                             void *dwv)
{
    cudnnStatus_t s = common(x, xv, w, dwv, c, dy, dyv, ws, wsb, WS_NEED * 7,
                             algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED, 0);
    if (s)
        return s;
    const float a = *(const float *)alpha, b = *(const float *)beta;
    const float *xp = (const float *)xv, *g = (const float *)dyv;
    float *o = (float *)dwv;
    for (int k = 0; k < w->k; k++)
        for (int ch = 0; ch < w->c; ch++)
            for (int r = 0; r < w->r; r++)
                for (int u = 0; u < w->s; u++) {
                    double acc = 0;
                    for (int n = 0; n < x->n; n++)
                        for (int p = 0; p < dy->h; p++) {
                            int h = p * c->u - c->ph + r;
                            if (h < 0 || h >= x->h)
                                continue;
                            for (int q = 0; q < dy->w; q++) {
                                int ww = q * c->v - c->pw + u;
                                if (ww < 0 || ww >= x->w)
                                    continue;
                                acc += (double)xp[tix(x, n, ch, h, ww)] * g[tix(dy, n, k, p, q)];
                            }
                        }
                    size_t i = fix(w, k, ch, r, u);
                    o[i] = (float)(a * acc + (b != 0 ? b * (double)o[i] : 0.0));
                }
    return CUDNN_STATUS_SUCCESS;
}

/* leak report at exit */
__attribute__((destructor)) static void report(void)
{
    fprintf(stderr,
            "cuemu: %ld mallocs, %ld frees, %zu bytes still allocated in %zu blocks; %ld conv calls (%ld NHWC), %ld "
            "fused\n",
            cuemu_mallocs, cuemu_frees, g_used, g_dev.size(), cuemu_conv_calls, cuemu_nhwc_calls, cuemu_fused);
}
