/* An engine context: one backend (CPU, or one CUDA device), its threads and caches.
 * A context is used by one thread at a time; a worker owns one. */
#ifndef ENG_CTX_H
#define ENG_CTX_H

#include <stdbool.h>

#include "tensor.h"

typedef struct eng_ctx eng_ctx;

typedef enum {
    ENG_CONV_AUTO = 0, /* the faster path for this machine (oneDNN; see bench/) */
    ENG_CONV_ONEDNN,   /* oneDNN primitives, activations in its blocked layout */
    ENG_CONV_GEMM,     /* im2col + OpenBLAS sgemm, activations NCHW */
} eng_conv_algo;

typedef enum {
    ENG_MATH_DEFAULT = 0, /* TF32 on CUDA, FP32 on the CPU */
    ENG_MATH_FP32,
    ENG_MATH_TF32,
    ENG_MATH_BF16,        /* CUDA: convolutions and GEMMs on bfloat16-rounded inputs, FP32 accumulation;
                             everything else FP32; needs compute capability 8.0 or newer */
} eng_math;

typedef struct eng_ctx_opts {
    const char *device;   /* "cpu" (default), "cuda", "cuda:N" */
    int threads;          /* CPU threads; 0: RTAAS_CPU_THREADS, else all cores */
    eng_conv_algo conv;   /* CPU convolution path; ENG_CONV_AUTO also reads RTAAS_CONV */
    eng_math math;        /* CUDA math mode; the CPU computes in FP32 whatever is asked (resolved at
                             creation, never DEFAULT afterwards: see eng_ctx_math) */
} eng_ctx_opts;

/* Creates a context. On failure *out is NULL and eng_last_error() says why
 * (for instance "cuda: no device"). The caller frees it with eng_ctx_free. */
eng_status eng_ctx_new(eng_ctx **out, const eng_ctx_opts *opts);
void eng_ctx_free(eng_ctx *ctx);

eng_device eng_ctx_device(const eng_ctx *ctx);
const char *eng_ctx_backend_name(const eng_ctx *ctx); /* "cpu/onednn", "cpu/gemm", "cuda:0" */
int eng_ctx_threads(const eng_ctx *ctx);
/* The math mode the context computes in (FP32 on the CPU; TF32 on CUDA unless asked otherwise). */
eng_math eng_ctx_math(const eng_ctx *ctx);
/* "fp32", "tf32", "bf16" ("default" for ENG_MATH_DEFAULT). */
const char *eng_math_name(eng_math m);

/* Layout this context's backend wants for activations with C channels. */
eng_layout eng_ctx_act_layout(const eng_ctx *ctx, int64_t channels);

/* Allocates a zeroed tensor in the context's memory (host for the CPU backend). */
eng_status eng_ctx_tensor_alloc(eng_ctx *ctx, eng_tensor *t, int ndim, const int64_t *dims,
                                eng_layout layout);
/* Releases a tensor allocated by eng_ctx_tensor_alloc or eng_tensor_alloc_host. NULL-safe. */
void eng_ctx_tensor_free(eng_ctx *ctx, eng_tensor *t);

/* Copies between a host tensor and a context tensor of the same shape, converting layouts. */
eng_status eng_ctx_upload(eng_ctx *ctx, eng_tensor *dst, const eng_tensor *host_src);
eng_status eng_ctx_download(eng_ctx *ctx, eng_tensor *host_dst, const eng_tensor *src);

/* Waits until the device has finished the work queued on the context (a timing's end, say).
 * Returns the error of any of that work which failed; on the CPU, which works synchronously, it
 * returns at once. */
eng_status eng_ctx_sync(eng_ctx *ctx);

/* Number of CUDA devices usable by this build (0 without CUDA or without a GPU). */
int eng_cuda_device_count(void);

/* One line describing the build: backends compiled in, oneDNN ISA, BLAS. Static storage. */
const char *eng_build_info(void);

#endif
