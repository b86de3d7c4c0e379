/* The table of operations a backend implements, and the context that carries it.
 * Internal to the engine: ops.c checks arguments, then calls through ctx->be. */
#ifndef ENG_BACKEND_H
#define ENG_BACKEND_H

#include "ops.h"

typedef struct eng_backend {
    const char *name;
    eng_device dev;
    eng_status (*init)(eng_ctx *ctx); /* sets ctx->impl */
    void (*fini)(eng_ctx *ctx);
    eng_layout (*act_layout)(const eng_ctx *ctx, int64_t channels);
    eng_status (*tensor_alloc)(eng_ctx *ctx, eng_tensor *t, int ndim, const int64_t *dims, eng_layout layout);
    void (*tensor_free)(eng_ctx *ctx, eng_tensor *t);
    eng_status (*upload)(eng_ctx *ctx, eng_tensor *dst, const eng_tensor *host_src);
    eng_status (*download)(eng_ctx *ctx, eng_tensor *host_dst, const eng_tensor *src);
    eng_status (*sync)(eng_ctx *ctx); /* NULL: the backend works synchronously */

    eng_status (*conv2d_fwd)(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, const eng_tensor *,
                             const eng_conv_desc *, eng_op_cache *);
    eng_status (*conv2d_bwd_data)(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *,
                                  const eng_conv_desc *, bool, eng_op_cache *);
    eng_status (*conv2d_bwd_filter)(eng_ctx *, eng_tensor *, eng_tensor *, const eng_tensor *, const eng_tensor *,
                                    const eng_conv_desc *, bool, eng_op_cache *);
    eng_status (*bn_train_fwd)(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, const eng_tensor *,
                               eng_tensor *, eng_tensor *, eng_tensor *, eng_tensor *, float, float,
                               const eng_tensor *residual, bool relu);
    eng_status (*bn_train_bwd)(eng_ctx *, eng_tensor *, eng_tensor *, eng_tensor *, const eng_tensor *,
                               const eng_tensor *, const eng_tensor *, const eng_tensor *, const eng_tensor *, bool);
    eng_status (*fold_bn)(eng_ctx *, eng_tensor *, eng_tensor *, eng_tensor *, const eng_tensor *, const eng_tensor *,
                          const eng_tensor *, const eng_tensor *, const eng_tensor *, const eng_tensor *, float);
    eng_status (*channel_affine_fwd)(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *,
                                     const eng_tensor *, bool);
    eng_status (*channel_affine_bwd)(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, bool);
    eng_status (*channel_sums)(eng_ctx *, eng_tensor *, eng_tensor *, const eng_tensor *, const eng_tensor *);
    eng_status (*relu_fwd)(eng_ctx *, eng_tensor *, const eng_tensor *);
    eng_status (*relu_bwd)(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, bool);
    eng_status (*add)(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *);
    eng_status (*axpby)(eng_ctx *, eng_tensor *, float, const eng_tensor *, float);
    eng_status (*fill)(eng_ctx *, eng_tensor *, float);
    eng_status (*copy)(eng_ctx *, eng_tensor *, const eng_tensor *);
    eng_status (*dropout_fwd)(eng_ctx *, eng_tensor *, const eng_tensor *, float, uint64_t);
    eng_status (*dropout_bwd)(eng_ctx *, eng_tensor *, const eng_tensor *, float, uint64_t, bool);
    eng_status (*maxpool_fwd)(eng_ctx *, eng_tensor *, const eng_tensor *, int, int, int, eng_op_cache *);
    eng_status (*maxpool_bwd)(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, int, int, int, bool,
                              eng_op_cache *);
    eng_status (*gap_fwd)(eng_ctx *, eng_tensor *, const eng_tensor *);
    eng_status (*gap_bwd)(eng_ctx *, eng_tensor *, const eng_tensor *, bool);
    eng_status (*upsample_fwd)(eng_ctx *, eng_tensor *, const eng_tensor *);
    eng_status (*upsample_bwd)(eng_ctx *, eng_tensor *, const eng_tensor *, bool);
    eng_status (*linear_fwd)(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, const eng_tensor *);
    eng_status (*linear_bwd_data)(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, bool);
    eng_status (*linear_bwd_weight)(eng_ctx *, eng_tensor *, eng_tensor *, const eng_tensor *, const eng_tensor *,
                                    bool);
    eng_status (*xent)(eng_ctx *, const eng_tensor *, const int32_t *, double *, eng_tensor *, eng_tensor *, float);
    eng_status (*sgd_step)(eng_ctx *, eng_tensor *, const eng_tensor *, eng_tensor *, const eng_sgd_desc *, bool);
    /* attacks (engine/attack.c); a backend without them answers ENG_ERR_UNSUPPORTED */
    eng_status (*margin_loss)(eng_ctx *, const eng_tensor *, const int32_t *, float, double *, eng_tensor *,
                              eng_tensor *, float);
    eng_status (*dlr_loss)(eng_ctx *, const eng_tensor *, const int32_t *, double *, eng_tensor *, eng_tensor *,
                           float);
    eng_status (*linf_sign_step)(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, float, float);
    eng_status (*apgd_step)(eng_ctx *, eng_tensor *, const eng_tensor *, const eng_tensor *, const eng_tensor *,
                            const eng_tensor *, const float *, float, float);
    eng_status (*linf_random_start)(eng_ctx *, eng_tensor *, const eng_tensor *, float, uint64_t, bool);
    /* rows: dst row dst_idx[k] = src row src_idx[k] for k < n (NULL index: identity) */
    eng_status (*move_rows)(eng_ctx *, eng_tensor *, const eng_tensor *, const int32_t *, const int32_t *, int);
    eng_status (*linf_dist)(eng_ctx *, const eng_tensor *, const eng_tensor *, double *, bool *);
    eng_status (*feature_distance)(eng_ctx *, const eng_tensor *, const eng_tensor *, bool, double *, eng_tensor *,
                                   float);
} eng_backend;

struct eng_ctx {
    const eng_backend *be;
    eng_ctx_opts opts;
    int threads;
    int device_index;
    eng_conv_algo conv; /* resolved CPU convolution path */
    char name[64];
    void *impl; /* backend state */
};

extern const eng_backend eng_cpu_backend;
#ifdef RTAAS_HAVE_CUDA
extern const eng_backend eng_cuda_backend;
#endif

/* Applies the context's thread count to the calling thread's OpenMP pool. */
void eng_ctx_bind_threads(const eng_ctx *ctx);

#endif
