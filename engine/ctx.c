/* Context creation: picks the backend named by the options and sizes the CPU thread pool. */
#include "backend.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int env_threads(void)
{
    const char *s = getenv("RTAAS_CPU_THREADS");
    if (s && *s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (*end == '\0' && v > 0 && v <= 1024)
            return (int)v;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static eng_conv_algo env_conv(eng_conv_algo asked)
{
    if (asked != ENG_CONV_AUTO)
        return asked;
    const char *s = getenv("RTAAS_CONV");
    if (s && strcmp(s, "gemm") == 0)
        return ENG_CONV_GEMM;
    return ENG_CONV_ONEDNN;
}

void eng_ctx_bind_threads(const eng_ctx *ctx)
{
    if (ctx->be->dev == ENG_DEV_CPU && omp_get_max_threads() != ctx->threads)
        omp_set_num_threads(ctx->threads);
}

eng_status eng_ctx_new(eng_ctx **out, const eng_ctx_opts *opts)
{
    *out = NULL;
    eng_ctx_opts o = {0};
    if (opts)
        o = *opts;
    const char *dev = o.device && *o.device ? o.device : "cpu";
    eng_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return eng_fail(ENG_ERR_NOMEM, "context: out of memory");
    ctx->opts = o;
    ctx->threads = o.threads > 0 ? o.threads : env_threads();
    ctx->conv = env_conv(o.conv);
    if (strcmp(dev, "cpu") == 0) {
        ctx->be = &eng_cpu_backend;
    } else if (strncmp(dev, "cuda", 4) == 0) {
        int idx = 0;
        if (dev[4] == ':') {
            char *end;
            idx = (int)strtol(dev + 5, &end, 10);
            if (*end || idx < 0) {
                free(ctx);
                return eng_fail(ENG_ERR_ARG, "context: bad device '%s'", dev);
            }
        } else if (dev[4]) {
            free(ctx);
            return eng_fail(ENG_ERR_ARG, "context: bad device '%s'", dev);
        }
#ifdef RTAAS_HAVE_CUDA
        ctx->be = &eng_cuda_backend;
        ctx->device_index = idx;
#else
        free(ctx);
        return eng_fail(ENG_ERR_UNSUPPORTED, "context: this build has no CUDA backend (device '%s')", dev);
#endif
    } else {
        free(ctx);
        return eng_fail(ENG_ERR_ARG, "context: unknown device '%s' (cpu, cuda, cuda:N)", dev);
    }
    if (ctx->be->dev == ENG_DEV_CPU)
        ctx->opts.math = ENG_MATH_FP32; /* the CPU backend has one mode, whatever was asked */
    else if (ctx->opts.math == ENG_MATH_DEFAULT)
        ctx->opts.math = ENG_MATH_TF32;
    eng_status s = ctx->be->init(ctx);
    if (s != ENG_OK) {
        free(ctx);
        return s;
    }
    eng_ctx_bind_threads(ctx);
    *out = ctx;
    return ENG_OK;
}

void eng_ctx_free(eng_ctx *ctx)
{
    if (!ctx)
        return;
    ctx->be->fini(ctx);
    free(ctx);
}

eng_device eng_ctx_device(const eng_ctx *ctx) { return ctx->be->dev; }
const char *eng_ctx_backend_name(const eng_ctx *ctx) { return ctx->name; }
int eng_ctx_threads(const eng_ctx *ctx) { return ctx->threads; }
eng_math eng_ctx_math(const eng_ctx *ctx) { return ctx->opts.math; }

const char *eng_math_name(eng_math m)
{
    static const char *const names[] = {"default", "fp32", "tf32", "bf16"};
    return (unsigned)m < sizeof names / sizeof *names ? names[m] : "?";
}

eng_layout eng_ctx_act_layout(const eng_ctx *ctx, int64_t channels) { return ctx->be->act_layout(ctx, channels); }

eng_status eng_ctx_tensor_alloc(eng_ctx *ctx, eng_tensor *t, int ndim, const int64_t *dims, eng_layout layout)
{
    return ctx->be->tensor_alloc(ctx, t, ndim, dims, layout);
}

void eng_ctx_tensor_free(eng_ctx *ctx, eng_tensor *t)
{
    if (!t)
        return;
    if (t->dev == ENG_DEV_CPU || !ctx)
        eng_tensor_cleanup(t);
    else
        ctx->be->tensor_free(ctx, t);
}

eng_status eng_ctx_upload(eng_ctx *ctx, eng_tensor *dst, const eng_tensor *src)
{
    if (!eng_tensor_same_shape(dst, src))
        return eng_fail(ENG_ERR_SHAPE, "upload: shapes differ");
    if (src->dev != ENG_DEV_CPU)
        return eng_fail(ENG_ERR_ARG, "upload: source must be a host tensor");
    return ctx->be->upload(ctx, dst, src);
}

eng_status eng_ctx_download(eng_ctx *ctx, eng_tensor *dst, const eng_tensor *src)
{
    if (!eng_tensor_same_shape(dst, src))
        return eng_fail(ENG_ERR_SHAPE, "download: shapes differ");
    if (dst->dev != ENG_DEV_CPU)
        return eng_fail(ENG_ERR_ARG, "download: destination must be a host tensor");
    return ctx->be->download(ctx, dst, src);
}

eng_status eng_ctx_sync(eng_ctx *ctx)
{
    return ctx->be->sync ? ctx->be->sync(ctx) : ENG_OK;
}
