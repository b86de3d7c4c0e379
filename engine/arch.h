/* Internal to the engine: the model structure shared by the executor (model.c) and the
 * architecture builders (arch.c). */
#ifndef ENG_ARCH_H
#define ENG_ARCH_H

#include "model.h"

typedef enum {
    LAYER_INPUT = 0, /* the caller's x; always layer 0 */
    LAYER_NORMALIZE, /* (x - mean) / std per channel */
    LAYER_CONV,      /* relu?(bn?(conv(x) + b?) + residual?) */
    LAYER_MAXPOOL,
    LAYER_GAP,       /* global average pool to [N, C] */
    LAYER_FLATTEN,   /* to [N, C*H*W] in NCHW order */
    LAYER_LINEAR,    /* relu?(bn?(x w^T + b)) */
    LAYER_DROPOUT,
} layer_kind;

typedef struct arch_layer_desc {
    layer_kind kind;
    int in, res;         /* producer layers; res: residual added before the relu (conv), -1 none */
    int w, b, bn;        /* parameter indices (-1 none); bn: gamma, then beta, running mean, running var */
    int k, stride, pad;  /* conv (k from the weights) and pooling */
    bool relu;
    float drop_p;
    float bn_eps, bn_momentum;
    int64_t in_c, out_c; /* channels or features in and out (out_c of pools is set by planning) */
} arch_layer_desc;

typedef struct layer {
    arch_layer_desc d;
    eng_tensor out, grad;               /* activation and the gradient with respect to it */
    eng_tensor pre;                     /* training: conv output, the batch norm's input */
    eng_tensor save_mean, save_invstd;  /* training: batch statistics */
    eng_tensor wf, bf, fscale;          /* running statistics: folded weights, bias, BN scale */
    uint64_t fold_key[6];               /* versions the folded weights were made from */
    eng_op_cache cache;
    int grad_set;
    bool up;
    bool batch_stats; /* the last forward normalised with batch statistics (not folded) */
    double prof_fwd, prof_bwd; /* seconds spent, when RTAAS_PROFILE is set */
} layer;

typedef enum { INIT_KAIMING_OUT = 0, INIT_TORCH_DEFAULT, INIT_ONE, INIT_ZERO } arch_init;

typedef struct param_info {
    arch_init init;
    int64_t fan_in;      /* for biases: the fan-in of their weight */
    eng_tensor momentum; /* view into the momentum block */
    bool momentum_started;
} param_info;

typedef struct eng_model eng_model;

typedef struct arch_def {
    const char *name;
    int in_channels, default_size; /* in_channels 0: given by the spec (the "head" arch) */
    eng_status (*build)(eng_model *m);
} arch_def;

struct eng_model {
    eng_ctx *ctx;
    const arch_def *arch;
    eng_model_spec spec;
    layer *layers;
    int n_layers, cap_layers;
    eng_param *params;
    param_info *pinfo;
    int n_params, cap_params, cap_pinfo;
    eng_status build_error;
    bool has_bn;
    int feature_layer;
    char blocks[256][2][48]; /* name prefixes of each block, input side first */
    int n_blocks;
    eng_tensor param_block, grad_block, mom_block;
    eng_tensor norm_scale, norm_shift;
    eng_tensor tmp_a, tmp_b; /* backward workspaces, each as big as the largest activation */
    int64_t planned_n, planned_h, planned_w;
    eng_forward_opts last;
    int have_forward;
    bool profile; /* RTAAS_PROFILE: time every layer, print a table when the model is freed */
};

/* Builder helpers (model.c): add a parameter or a layer; return its index, or -1 after
 * recording m->build_error. */
int arch_param(eng_model *m, const char *name, int ndim, const int64_t *dims, bool buffer, arch_init init);
int arch_layer(eng_model *m, const arch_layer_desc *d);
/* Records a block (one or two name prefixes; b may be NULL), input side first. */
void arch_block(eng_model *m, const char *a, const char *b);

const arch_def *arch_lookup(const char *name);

#endif
