/* A CPU emulation of the CUDA runtime, cuDNN's convolutions and cuBLAS's GEMMs, just enough to
 * run engine/cuda against the CPU backend on a machine without a GPU (make cuda-emu).
 *
 * Kernels run one block at a time. Kernels that synchronise (listed in cuda.mk as EMU_SYNC)
 * run their threads as coroutines that meet at __syncthreads and warp shuffles; the others
 * run their threads one after the other. "Device" memory is host memory filled with NaN
 * bytes, registered so that every pointer handed to a kernel, a copy, cuDNN or cuBLAS is
 * checked to be device memory of the right extent. The cuDNN stand-in checks shapes, formats
 * (NCHW, or NHWC with KRSC filters), data types (FP32, or bfloat16 with FP32 compute: a mix is
 * refused as cuDNN refuses it), 16-byte alignment and workspace sizes; it computes FP32 data in
 * double and bfloat16 data as the GPU does: stored as 16 bits, products summed in float, the
 * result rounded to nearest even. Its heuristics list a Winograd algorithm first (FP32
 * contexts must skip it; refused for bfloat16), a non-deterministic one second and a GEMM one
 * last. Knobs (environment): CUEMU_NO_DEVICE, CUEMU_MEM_LIMIT (bytes), CUEMU_CC (compute
 * capability, default 9.0), CUEMU_NHWC_UNSUPPORTED, CUEMU_FUSE_UNSUPPORTED,
 * CUEMU_BF16_UNSUPPORTED (no bfloat16 convolutions), CUEMU_TF32=1 (round TF32 operands, see
 * tf32_on; off, TF32 computes as FP32). Test-only code. */
#include "cublas_v2.h"
#include "cuda_bf16.h"
#include "cuda_runtime.h"
#include "cudnn.h"

#include <map>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <functional>
#include <math.h>
#include <vector>

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

/* Compute capability of the emulated device: 9.0, or CUEMU_CC="major.minor". */
static int emu_cc(void)
{
    const char *s = getenv("CUEMU_CC");
    int major = 9, minor = 0;
    if (s && sscanf(s, "%d.%d", &major, &minor) < 1)
        die("CUEMU_CC=%s: expected major.minor", s);
    return major * 10 + minor;
}

/* With CUEMU_TF32=1, FP32 operands of the GEMMs and convolutions whose math mode lets tensor
 * cores in (cuBLAS TF32 math, cuDNN math other than FMA) are rounded to TF32's 10-bit
 * mantissa, to nearest even, as the GPU's TF32 path does; otherwise TF32 computes as FP32. */
static bool tf32_on(void)
{
    const char *s = getenv("CUEMU_TF32");
    return s && strcmp(s, "0") != 0;
}
static float to_tf32(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u)
        return f;
    u += 0xfffu + ((u >> 13) & 1u);
    u &= ~0x1fffu;
    memcpy(&f, &u, sizeof f);
    return f;
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
    const int cc = emu_cc();
    p->major = cc / 10;
    p->minor = cc % 10;
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
struct cublasContext {
    cublasMath_t math;
};
const char *cublasGetStatusString(cublasStatus_t s) { return s ? "CUBLAS_STATUS_ERROR" : "CUBLAS_STATUS_SUCCESS"; }
cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    *h = (cublasHandle_t)calloc(1, sizeof **h);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    free(h);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m)
{
    h->math = m;
    return CUBLAS_STATUS_SUCCESS;
}

static size_t blas_size(cudaDataType t) { return t == CUDA_R_32F ? 4 : 2; }
static float blas_ld(const void *p, size_t i, cudaDataType t)
{
    return t == CUDA_R_32F ? ((const float *)p)[i] : __bfloat162float(((const __nv_bfloat16 *)p)[i]);
}

/* The common part of sgemm and gemmEx: checks the leading dimensions and the extents, then
 * C = alpha op(A) op(B) + beta C with the products summed in Acc (double for FP32 operands, as
 * exact as the emulation can be; float for bfloat16 ones, the FP32 accumulation of tensor
 * cores). A bfloat16 C is rounded to nearest even; tf32: the operands are rounded to TF32. */
template <typename Acc>
static cublasStatus_t gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha, const void *A,
                           cudaDataType at, int lda, const void *B, cudaDataType bt, int ldb, float beta, void *C,
                           cudaDataType ct, int ldc, bool tf32)
{
    if (m < 0 || n < 0 || k < 0 || lda < (ta == CUBLAS_OP_N ? m : k) || ldb < (tb == CUBLAS_OP_N ? k : n) || ldc < m)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0)
        return CUBLAS_STATUS_SUCCESS;
    if (k > 0) {
        need_dev(A, (ta == CUBLAS_OP_N ? (size_t)lda * (k - 1) + m : (size_t)lda * (m - 1) + k) * blas_size(at),
                 "gemm A");
        need_dev(B, (tb == CUBLAS_OP_N ? (size_t)ldb * (n - 1) + k : (size_t)ldb * (k - 1) + n) * blas_size(bt),
                 "gemm B");
    }
    need_dev(C, ((size_t)ldc * (n - 1) + m) * blas_size(ct), "gemm C");
    /* op(A) as m rows of k, op(B)^T as n rows of k: the sums below run over contiguous floats */
    std::vector<float> a((size_t)m * k), b((size_t)n * k);
    for (int i = 0; i < m; i++)
        for (int l = 0; l < k; l++) {
            float v = blas_ld(A, ta == CUBLAS_OP_N ? i + (size_t)l * lda : l + (size_t)i * lda, at);
            a[(size_t)i * k + l] = tf32 ? to_tf32(v) : v;
        }
    for (int j = 0; j < n; j++)
        for (int l = 0; l < k; l++) {
            float v = blas_ld(B, tb == CUBLAS_OP_N ? l + (size_t)j * ldb : j + (size_t)l * ldb, bt);
            b[(size_t)j * k + l] = tf32 ? to_tf32(v) : v;
        }
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            const float *ar = &a[(size_t)i * k], *br = &b[(size_t)j * k];
            Acc s = 0;
            for (int l = 0; l < k; l++)
                s += (Acc)ar[l] * br[l];
            const size_t o = i + (size_t)j * ldc;
            double v = alpha * (double)s + (beta != 0 ? beta * (double)blas_ld(C, o, ct) : 0.0);
            if (ct == CUDA_R_32F)
                ((float *)C)[o] = (float)v;
            else
                ((__nv_bfloat16 *)C)[o] = __float2bfloat16((float)v);
        }
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                           float *C, int ldc)
{
    return gemm<double>(ta, tb, m, n, k, *alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, *beta, C, CUDA_R_32F, ldc,
                        h->math == CUBLAS_TF32_TENSOR_OP_MATH && tf32_on());
}

long cuemu_bf16_gemms;

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType at, int lda, const void *B, cudaDataType bt,
                            int ldb, const void *beta, void *C, cudaDataType ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t)
{
    const float al = *(const float *)alpha, be = *(const float *)beta;
    if (compute != CUBLAS_COMPUTE_32F)
        return CUBLAS_STATUS_NOT_SUPPORTED; /* not emulated */
    if (at == CUDA_R_32F && bt == CUDA_R_32F && ct == CUDA_R_32F)
        return gemm<double>(ta, tb, m, n, k, al, A, at, lda, B, bt, ldb, be, C, ct, ldc,
                            h->math == CUBLAS_TF32_TENSOR_OP_MATH && tf32_on());
    if (at != CUDA_R_16BF || bt != CUDA_R_16BF || (ct != CUDA_R_16BF && ct != CUDA_R_32F))
        return CUBLAS_STATUS_NOT_SUPPORTED; /* mixed inputs, or half precision (not emulated) */
    if (emu_cc() < 80)
        return CUBLAS_STATUS_ARCH_MISMATCH;
    cuemu_bf16_gemms++;
    return gemm<float>(ta, tb, m, n, k, al, A, at, lda, B, bt, ldb, be, C, ct, ldc, false);
}

/* ---- cuDNN ---- */
struct cudnnTensorStruct {
    cudnnTensorFormat_t f;
    cudnnDataType_t t;
    int n, c, h, w;
};
struct cudnnFilterStruct {
    cudnnTensorFormat_t f;
    cudnnDataType_t t;
    int k, c, r, s;
};
struct cudnnConvolutionStruct {
    int ph, pw, u, v;
    cudnnMathType_t math;
    cudnnDataType_t compute;
};
struct cudnnActivationStruct {
    int mode;
};
static char g_dnn_err[256];
long cuemu_fused, cuemu_conv_calls, cuemu_nhwc_calls, cuemu_bf16_convs;

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

static bool known_type(cudnnDataType_t t)
{
    return t == CUDNN_DATA_FLOAT || t == CUDNN_DATA_DOUBLE || t == CUDNN_DATA_HALF || t == CUDNN_DATA_BFLOAT16;
}
cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t f, cudnnDataType_t t, int n,
                                         int c, int h, int w)
{
    if (n < 1 || c < 1 || h < 1 || w < 1 || !known_type(t))
        return CUDNN_STATUS_BAD_PARAM;
    *d = {f, t, n, c, h, w};
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t t, cudnnTensorFormat_t f, int k,
                                         int c, int h, int w)
{
    if (k < 1 || c < 1 || h < 1 || w < 1 || !known_type(t))
        return CUDNN_STATUS_BAD_PARAM;
    *d = {f, t, k, c, h, w};
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int ph, int pw, int u, int v, int dh,
                                              int dw, cudnnConvolutionMode_t m, cudnnDataType_t t)
{
    if (!known_type(t))
        return CUDNN_STATUS_BAD_PARAM;
    if (dh != 1 || dw != 1 || m != CUDNN_CROSS_CORRELATION)
        return CUDNN_STATUS_NOT_SUPPORTED;
    d->ph = ph, d->pw = pw, d->u = u, d->v = v;
    d->compute = t;
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

/* What the knobs take away: NHWC (CUEMU_NHWC_UNSUPPORTED) and bfloat16 data
 * (CUEMU_BF16_UNSUPPORTED): the heuristics list nothing usable and a run is refused. */
static bool refused(cudnnTensorDescriptor_t a, cudnnTensorDescriptor_t b)
{
    if (getenv("CUEMU_NHWC_UNSUPPORTED") && (a->f == CUDNN_TENSOR_NHWC || b->f == CUDNN_TENSOR_NHWC))
        return true;
    return getenv("CUEMU_BF16_UNSUPPORTED") && a->t == CUDNN_DATA_BFLOAT16;
}

/* Shapes consistent, formats matching and data types as cuDNN's tables of the legacy
 * convolutions allow: x, w and y of one type (a mix is BAD_PARAM), FLOAT data with FLOAT
 * compute (FLOAT_CONFIG) or BFLOAT16 data with FLOAT compute (PSEUDO_BFLOAT16_CONFIG, from
 * compute capability 8.0). The other configurations (half, double, TRUE_HALF) are not emulated
 * and answer NOT_SUPPORTED. */
static cudnnStatus_t check(cudnnTensorDescriptor_t x, cudnnFilterDescriptor_t w, cudnnConvolutionDescriptor_t c,
                           cudnnTensorDescriptor_t y)
{
    int P = (x->h + 2 * c->ph - w->r) / c->u + 1, Q = (x->w + 2 * c->pw - w->s) / c->v + 1;
    if (x->c != w->c || y->c != w->k || y->n != x->n || y->h != P || y->w != Q) {
        snprintf(g_dnn_err, sizeof g_dnn_err, "shape mismatch");
        return CUDNN_STATUS_BAD_PARAM;
    }
    if (x->t != w->t || x->t != y->t) {
        snprintf(g_dnn_err, sizeof g_dnn_err, "mixed data types: x %d, w %d, y %d", x->t, w->t, y->t);
        return CUDNN_STATUS_BAD_PARAM;
    }
    if (c->compute != CUDNN_DATA_FLOAT || (x->t != CUDNN_DATA_FLOAT && x->t != CUDNN_DATA_BFLOAT16)) {
        snprintf(g_dnn_err, sizeof g_dnn_err, "data type %d with compute type %d", x->t, c->compute);
        return CUDNN_STATUS_NOT_SUPPORTED;
    }
    if (x->t == CUDNN_DATA_BFLOAT16 && emu_cc() < 80) {
        snprintf(g_dnn_err, sizeof g_dnn_err, "bfloat16 needs compute capability 8.0");
        return CUDNN_STATUS_NOT_SUPPORTED_ARCH_MISMATCH;
    }
    if (x->f != y->f || w->f != x->f) {
        snprintf(g_dnn_err, sizeof g_dnn_err, "mixed formats");
        return CUDNN_STATUS_NOT_SUPPORTED_LAYOUT;
    }
    return CUDNN_STATUS_SUCCESS;
}

#define WS_NEED 1000
/* The heuristics rank a transform algorithm first (FP32 contexts must skip it; it has no
 * bfloat16 kernels), then a non-deterministic one (skipped in the first pass), then a
 * GEMM-like one. */
template <typename Perf>
static void fill_perf(Perf *p, int *got, int a_bad, int a_good, int a_nondet, cudnnMathType_t m, bool refuse,
                      bool bf16)
{
    p[0].algo = (decltype(p[0].algo))a_bad;
    p[0].status = refuse || bf16 ? CUDNN_STATUS_NOT_SUPPORTED : CUDNN_STATUS_SUCCESS;
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
              CUDNN_CONVOLUTION_FWD_ALGO_GEMM, c->math, refused(x, y), x->t == CUDNN_DATA_BFLOAT16);
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
              CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, c->math, refused(dx, dy), dx->t == CUDNN_DATA_BFLOAT16);
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
              CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, c->math, refused(x, dy), x->t == CUDNN_DATA_BFLOAT16);
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
static size_t esize(cudnnDataType_t t) { return t == CUDNN_DATA_BFLOAT16 ? 2 : 4; }
static size_t tcount(cudnnTensorDescriptor_t d) { return (size_t)d->n * d->c * d->h * d->w; }
static size_t fcount(cudnnFilterDescriptor_t d) { return (size_t)d->k * d->c * d->r * d->s; }

/* A convolution operand's elements as floats in NCHW order (filters KCRS), whatever the
 * descriptor's format: FLOAT data as it is (rounded to TF32 under CUEMU_TF32 when the math
 * type lets tensor cores in), BFLOAT16 data widened. */
static float operand_at(const void *p, size_t i, cudnnDataType_t t, bool tf32)
{
    if (t == CUDNN_DATA_BFLOAT16)
        return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    return tf32 ? to_tf32(((const float *)p)[i]) : ((const float *)p)[i];
}
static std::vector<float> tensor_nchw(const void *p, cudnnTensorDescriptor_t d, cudnnConvolutionDescriptor_t c)
{
    std::vector<float> v(tcount(d));
    const bool tf32 = d->t == CUDNN_DATA_FLOAT && c->math != CUDNN_FMA_MATH && tf32_on();
    size_t i = 0;
    for (int n = 0; n < d->n; n++)
        for (int ch = 0; ch < d->c; ch++)
            for (int h = 0; h < d->h; h++)
                for (int w = 0; w < d->w; w++)
                    v[i++] = operand_at(p, tix(d, n, ch, h, w), d->t, tf32);
    return v;
}
static std::vector<float> filter_kcrs(const void *p, cudnnFilterDescriptor_t d, cudnnConvolutionDescriptor_t c)
{
    std::vector<float> v(fcount(d));
    const bool tf32 = d->t == CUDNN_DATA_FLOAT && c->math != CUDNN_FMA_MATH && tf32_on();
    size_t i = 0;
    for (int k = 0; k < d->k; k++)
        for (int ch = 0; ch < d->c; ch++)
            for (int r = 0; r < d->r; r++)
                for (int u = 0; u < d->s; u++)
                    v[i++] = operand_at(p, fix(d, k, ch, r, u), d->t, tf32);
    return v;
}

/* Results (NCHW or KCRS order) into the output's storage: out = alpha * acc + beta * out
 * (beta 0: out not read, as cuDNN does), narrowed to the output's type; BFLOAT16 rounds to
 * nearest even, as the pseudo-bfloat16 configuration does. */
template <typename Acc> static void store(void *out, cudnnDataType_t t, size_t o, Acc acc, float a, float b)
{
    double v = a * (double)acc;
    if (t == CUDNN_DATA_BFLOAT16) {
        __nv_bfloat16 *q = (__nv_bfloat16 *)out;
        q[o] = __float2bfloat16((float)(v + (b != 0 ? b * (double)__bfloat162float(q[o]) : 0.0)));
    } else {
        float *q = (float *)out;
        q[o] = (float)(v + (b != 0 ? b * (double)q[o] : 0.0));
    }
}
template <typename Acc>
static void store_tensor(void *out, cudnnTensorDescriptor_t d, const std::vector<Acc> &acc, const void *alpha,
                         const void *beta)
{
    const float a = *(const float *)alpha, b = *(const float *)beta;
    size_t i = 0;
    for (int n = 0; n < d->n; n++)
        for (int ch = 0; ch < d->c; ch++)
            for (int h = 0; h < d->h; h++)
                for (int w = 0; w < d->w; w++)
                    store(out, d->t, tix(d, n, ch, h, w), acc[i++], a, b);
}
template <typename Acc>
static void store_filter(void *out, cudnnFilterDescriptor_t d, const std::vector<Acc> &acc, const void *alpha,
                         const void *beta)
{
    const float a = *(const float *)alpha, b = *(const float *)beta;
    size_t i = 0;
    for (int k = 0; k < d->k; k++)
        for (int ch = 0; ch < d->c; ch++)
            for (int r = 0; r < d->r; r++)
                for (int u = 0; u < d->s; u++)
                    store(out, d->t, fix(d, k, ch, r, u), acc[i++], a, b);
}

static cudnnStatus_t common(cudnnTensorDescriptor_t x, const void *xp, cudnnFilterDescriptor_t w, const void *wp,
                            cudnnConvolutionDescriptor_t c, cudnnTensorDescriptor_t y, const void *yp, void *ws,
                            size_t wsb, size_t need, int transform, int refused_algo)
{
    cudnnStatus_t s = check(x, w, c, y);
    if (s)
        return s;
    if (refused(x, y))
        return CUDNN_STATUS_NOT_SUPPORTED;
    if (refused_algo || (transform && x->t == CUDNN_DATA_BFLOAT16))
        die("ran an algorithm the heuristics refused");
    if (transform && c->math == CUDNN_FMA_MATH)
        die("an FP32 (FMA) convolution ran a Winograd/FFT algorithm");
    if (((uintptr_t)xp | (uintptr_t)wp | (uintptr_t)yp) & 15)
        return CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER;
    if (wsb < need)
        return CUDNN_STATUS_BAD_PARAM;
    need_dev(ws, need, "workspace");
    need_dev(xp, tcount(x) * esize(x->t), "conv x");
    need_dev(wp, fcount(w) * esize(w->t), "conv w");
    need_dev(yp, tcount(y) * esize(y->t), "conv y");
    cuemu_conv_calls++;
    cuemu_nhwc_calls += x->f == CUDNN_TENSOR_NHWC;
    cuemu_bf16_convs += x->t == CUDNN_DATA_BFLOAT16;
    return CUDNN_STATUS_SUCCESS;
}

/* The output columns q whose input column q * stride - pad + s lies in [0, W): [*q0, *q1). */
static void cols(int Q, int stride, int pad, int s, int W, int *q0, int *q1)
{
    const int lo = pad - s, hi = W - 1 + pad - s;
    *q0 = lo <= 0 ? 0 : (lo + stride - 1) / stride;
    *q1 = hi < 0 ? 0 : hi / stride + 1;
    if (*q1 > Q)
        *q1 = Q;
}

/* Every tap of a convolution with input x [N,C,H,W], filter w [K,C,R,S] and output y [N,K,P,Q]:
 * for output row p of image n and channel k, input channel ch and filter tap (r, u) reading
 * input row h inside the image, f(n, k, ch, r, u, p, h, q0, q1) with the output columns
 * [q0, q1) whose input column q * v - pw + u is inside too. Loops n, k, ch, r, u, p: every
 * element of x, y or w then receives its terms in the same order as the direct loop of its
 * own convolution would give them. */
template <typename F>
static void conv_taps(cudnnTensorDescriptor_t x, cudnnFilterDescriptor_t w, cudnnConvolutionDescriptor_t c,
                      cudnnTensorDescriptor_t y, F f)
{
    for (int n = 0; n < x->n; n++)
        for (int k = 0; k < y->c; k++)
            for (int ch = 0; ch < x->c; ch++)
                for (int r = 0; r < w->r; r++)
                    for (int u = 0; u < w->s; u++) {
                        int q0, q1;
                        cols(y->w, c->v, c->pw, u, x->w, &q0, &q1);
                        for (int p = 0; p < y->h; p++) {
                            const int h = p * c->u - c->ph + r;
                            if (h >= 0 && h < x->h)
                                f(n, k, ch, r, u, p, h, q0, q1);
                        }
                    }
}

/* The three convolutions on NCHW/KCRS floats, summed in Acc: double for FLOAT data (as exact as
 * the emulation can be), float for BFLOAT16 data (the pseudo-bfloat16 configuration's FP32
 * accumulation; a product of two bfloat16 values is exact in float). Results in NCHW (KCRS). */
template <typename Acc>
static std::vector<Acc> conv_fwd(cudnnTensorDescriptor_t x, const float *X, cudnnFilterDescriptor_t w,
                                 const float *Wt, cudnnConvolutionDescriptor_t c, cudnnTensorDescriptor_t y)
{
    const int C = x->c, H = x->h, Wd = x->w, K = y->c, P = y->h, Q = y->w, R = w->r, S = w->s;
    std::vector<Acc> out(tcount(y), (Acc)0);
    conv_taps(x, w, c, y, [&](int n, int k, int ch, int r, int u, int p, int h, int q0, int q1) {
        const Acc wv = Wt[(((size_t)k * C + ch) * R + r) * S + u];
        const float *xr = &X[(((size_t)n * C + ch) * H + h) * Wd];
        Acc *orow = &out[(((size_t)n * K + k) * P + p) * Q];
        for (int q = q0; q < q1; q++)
            orow[q] += wv * xr[q * c->v - c->pw + u];
    });
    return out;
}

template <typename Acc>
static std::vector<Acc> conv_bwd_data(cudnnFilterDescriptor_t w, const float *Wt, cudnnTensorDescriptor_t dy,
                                      const float *G, cudnnConvolutionDescriptor_t c, cudnnTensorDescriptor_t dx)
{
    const int C = dx->c, H = dx->h, Wd = dx->w, K = dy->c, P = dy->h, Q = dy->w, R = w->r, S = w->s;
    std::vector<Acc> out(tcount(dx), (Acc)0);
    conv_taps(dx, w, c, dy, [&](int n, int k, int ch, int r, int u, int p, int h, int q0, int q1) {
        const Acc wv = Wt[(((size_t)k * C + ch) * R + r) * S + u];
        const float *g = &G[(((size_t)n * K + k) * P + p) * Q];
        Acc *orow = &out[(((size_t)n * C + ch) * H + h) * Wd];
        for (int q = q0; q < q1; q++)
            orow[q * c->v - c->pw + u] += wv * g[q];
    });
    return out;
}

template <typename Acc>
static std::vector<Acc> conv_bwd_filter(cudnnTensorDescriptor_t x, const float *X, cudnnTensorDescriptor_t dy,
                                        const float *G, cudnnConvolutionDescriptor_t c, cudnnFilterDescriptor_t w)
{
    const int C = x->c, H = x->h, Wd = x->w, K = dy->c, P = dy->h, Q = dy->w, R = w->r, S = w->s;
    std::vector<Acc> out(fcount(w), (Acc)0);
    conv_taps(x, w, c, dy, [&](int n, int k, int ch, int r, int u, int p, int h, int q0, int q1) {
        const float *xr = &X[(((size_t)n * C + ch) * H + h) * Wd];
        const float *g = &G[(((size_t)n * K + k) * P + p) * Q];
        Acc &acc = out[(((size_t)k * C + ch) * R + r) * S + u];
        for (int q = q0; q < q1; q++)
            acc += (Acc)xr[q * c->v - c->pw + u] * g[q];
    });
    return out;
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
    const std::vector<float> xf = tensor_nchw(xv, x, c), wf = filter_kcrs(wv, w, c);
    if (x->t == CUDNN_DATA_BFLOAT16)
        store_tensor(yv, y, conv_fwd<float>(x, xf.data(), w, wf.data(), c, y), alpha, beta);
    else
        store_tensor(yv, y, conv_fwd<double>(x, xf.data(), w, wf.data(), c, y), alpha, beta);
    return CUDNN_STATUS_SUCCESS;
}

/* FP32 only: whether cuDNN fuses bias and activation for bfloat16 data is not modelled (the
 * backend does not ask), so other types answer NOT_SUPPORTED. */
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
    if (x->t != CUDNN_DATA_FLOAT || z->t != CUDNN_DATA_FLOAT || bd->t != CUDNN_DATA_FLOAT)
        return CUDNN_STATUS_NOT_SUPPORTED;
    if (z->n != y->n || z->c != y->c || z->h != y->h || z->w != y->w || bd->n != 1 || bd->c != y->c || bd->h != 1 ||
        bd->w != 1 || act->mode != CUDNN_ACTIVATION_RELU)
        return CUDNN_STATUS_BAD_PARAM;
    if ((uintptr_t)bias & 15)
        return CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER;
    need_dev(bias, (size_t)y->c * 4, "bias");
    const float a1 = *(const float *)alpha1, a2 = *(const float *)alpha2;
    float *yp = (float *)yv;
    const float *zp = (const float *)zv, *bp = (const float *)bias;
    const std::vector<float> xf = tensor_nchw(xv, x, c), wf = filter_kcrs(wv, w, c);
    const std::vector<double> acc = conv_fwd<double>(x, xf.data(), w, wf.data(), c, y);
    for (int n = 0; n < y->n; n++)
        for (int k = 0; k < y->c; k++)
            for (int p = 0; p < y->h; p++)
                for (int q = 0; q < y->w; q++) {
                    size_t i = tix(y, n, k, p, q);
                    double v = a1 * acc[(((size_t)n * y->c + k) * y->h + p) * y->w + q] + bp[k];
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
    const std::vector<float> wf = filter_kcrs(wv, w, c), gf = tensor_nchw(dyv, dy, c);
    if (dx->t == CUDNN_DATA_BFLOAT16)
        store_tensor(dxv, dx, conv_bwd_data<float>(w, wf.data(), dy, gf.data(), c, dx), alpha, beta);
    else
        store_tensor(dxv, dx, conv_bwd_data<double>(w, wf.data(), dy, gf.data(), c, dx), alpha, beta);
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
    const std::vector<float> xf = tensor_nchw(xv, x, c), gf = tensor_nchw(dyv, dy, c);
    if (x->t == CUDNN_DATA_BFLOAT16)
        store_filter(dwv, w, conv_bwd_filter<float>(x, xf.data(), dy, gf.data(), c, w), alpha, beta);
    else
        store_filter(dwv, w, conv_bwd_filter<double>(x, xf.data(), dy, gf.data(), c, w), alpha, beta);
    return CUDNN_STATUS_SUCCESS;
}

/* leak report at exit */
__attribute__((destructor)) static void report(void)
{
    fprintf(stderr,
            "cuemu: %ld mallocs, %ld frees, %zu bytes still allocated in %zu blocks; %ld conv calls (%ld NHWC, %ld "
            "bfloat16), %ld fused; %ld bfloat16 GEMMs\n",
            cuemu_mallocs, cuemu_frees, g_used, g_dev.size(), cuemu_conv_calls, cuemu_nhwc_calls, cuemu_bf16_convs,
            cuemu_fused, cuemu_bf16_gemms);
}
