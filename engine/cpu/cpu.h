/* Internal interface of the CPU backend: its per-context state and the convolution paths
 * (oneDNN primitives, or im2col + OpenBLAS) that ops_cpu.c dispatches to. */
#ifndef ENG_CPU_H
#define ENG_CPU_H

#include <dnnl.h>

#include "../backend.h"

typedef struct cpu_impl {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    int block;       /* channel block of the activation layout: 8 (AVX2) or 16 (AVX-512) */
    float *scratch;  /* grows to the largest im2col / temporary buffer asked for */
    size_t scratch_cap;
} cpu_impl;

/* Scratch space of at least `floats` floats, owned by the context, valid until the next call. */
float *cpu_scratch(eng_ctx *ctx, size_t floats);

/* A view of an activation as [N, CB, S, X]: channel c = cb * X + x, spatial s = h * W + w,
 * element ((n * CB + cb) * S + s) * X + x. Covers NCHW (X = 1), NHWC (CB = 1) and blocked. */
typedef struct cpu_view {
    int64_t N, C, CB, S, X, H, W;
} cpu_view;
cpu_view cpu_view_of(const eng_tensor *t);

eng_status cpu_dnnl_status(dnnl_status_t s, const char *what);

/* dst = src between any two layouts of the same shape. */
eng_status cpu_relayout(eng_ctx *ctx, eng_tensor *dst, const eng_tensor *src);

eng_status cpu_conv_onednn_fwd(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, const eng_tensor *,
                               const eng_conv_desc *, eng_op_cache *);
eng_status cpu_conv_onednn_bwd_data(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *,
                                    const eng_conv_desc *, bool, eng_op_cache *);
eng_status cpu_conv_onednn_bwd_filter(eng_ctx *, eng_tensor *, eng_tensor *, const eng_tensor *, const eng_tensor *,
                                      const eng_conv_desc *, bool, eng_op_cache *);

eng_status cpu_conv_gemm_fwd(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, const eng_tensor *,
                             const eng_conv_desc *);
eng_status cpu_conv_gemm_bwd_data(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *,
                                  const eng_conv_desc *, bool);
eng_status cpu_conv_gemm_bwd_filter(eng_ctx *, eng_tensor *, eng_tensor *, const eng_tensor *, const eng_tensor *,
                                    const eng_conv_desc *, bool);

/* The GEMM path for tensors in any layout: blocked operands are converted to NCHW around it,
 * in staging buffers kept in the call site's cache (or allocated per call without one). */
eng_status cpu_conv_gemm_any_fwd(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, const eng_tensor *,
                                 const eng_conv_desc *, eng_op_cache *);
eng_status cpu_conv_gemm_any_bwd_data(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *,
                                      const eng_conv_desc *, bool, eng_op_cache *);
eng_status cpu_conv_gemm_any_bwd_filter(eng_ctx *, eng_tensor *, eng_tensor *, const eng_tensor *,
                                        const eng_tensor *, const eng_conv_desc *, bool, eng_op_cache *);
/* Staging buffer i (0 or 1) of at least `floats` floats owned by a convolution cache; NULL when
 * the cache is absent or not a convolution's. */
float *cpu_conv_stage(eng_op_cache *cache, int i, size_t floats);

/* attack_cpu.c */
eng_status cpu_margin_loss(eng_ctx *, const eng_tensor *, const int32_t *, float, double *, eng_tensor *, eng_tensor *,
                           float);
eng_status cpu_dlr_loss(eng_ctx *, const eng_tensor *, const int32_t *, double *, eng_tensor *, eng_tensor *, float);
eng_status cpu_linf_sign_step(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, float, float);
eng_status cpu_apgd_step(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, const eng_tensor *,
                         const eng_tensor *, const float *, float, float);
eng_status cpu_linf_random_start(eng_ctx *, eng_tensor *, const eng_tensor *, float, uint64_t, bool);
eng_status cpu_move_rows(eng_ctx *, eng_tensor *, const eng_tensor *, const int32_t *, const int32_t *, int);
eng_status cpu_linf_dist(eng_ctx *, const eng_tensor *, const eng_tensor *, double *, bool *);
eng_status cpu_feature_distance(eng_ctx *, const eng_tensor *, const eng_tensor *, bool, double *, eng_tensor *, float);

#endif
