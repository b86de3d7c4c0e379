/* Models: torchvision-compatible ResNets, a CIFAR ResNet-20 and a small CNN, run by one
 * executor over a list of layers. Parameters carry torchvision's names, so a torchvision
 * state dict (as safetensors) loads as is. Inputs are pixels in [0,1]; the model applies its
 * own mean/std normalisation, so attacks work in pixel space. */
#ifndef ENG_MODEL_H
#define ENG_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "ops.h"

typedef struct eng_model eng_model;

#define ENG_MAX_CHANNELS 4
#define ENG_MAX_HIDDEN 8

/* The classifier on top of the penultimate features: `n_hidden` layers of linear, optional
 * batch norm, relu and optional dropout (the paper's MLP heads, section 4.2.1), then "fc".
 * All zero: a single linear layer, as torchvision. Hidden layer i is named "head.i.linear"
 * and "head.i.bn". */
typedef struct eng_head_spec {
    int n_hidden;
    int hidden[ENG_MAX_HIDDEN]; /* widths; the paper uses 2048 */
    bool bn;
    float dropout;              /* in [0, 1); the paper uses 0.25 */
} eng_head_spec;

typedef struct eng_model_spec {
    const char *arch;   /* "resnet18", "resnet34", "resnet50", "wide_resnet50_2", "resnet20", "smallcnn",
                         * or "head": the classifier alone, on feature vectors [N, F, 1, 1] */
    int num_classes;    /* >= 1 */
    int in_channels;    /* 0: the architecture's default (3; 1 for smallcnn); "head": F (>= 1) */
    float mean[ENG_MAX_CHANNELS], std[ENG_MAX_CHANNELS]; /* all std 0: mean 0, std 1 (identity) */
    eng_head_spec head;
} eng_model_spec;

/* Builds a model on the context's device with parameters zeroed (call eng_model_init or load
 * weights). The model keeps ctx; the caller frees the model before the context. */
eng_status eng_model_new(eng_ctx *ctx, const eng_model_spec *spec, eng_model **out);
void eng_model_free(eng_model *m);

const eng_model_spec *eng_model_get_spec(const eng_model *m);
/* The context the model was built on. */
eng_ctx *eng_model_ctx(const eng_model *m);
/* Default input height/width of the architecture (224, 32 or 28); others work too. */
int eng_model_default_size(const eng_model *m);
/* Length of the penultimate feature vector (2048 for ResNet-50). */
int64_t eng_model_feature_dim(const eng_model *m);

/* torchvision's initialisation (Kaiming-normal fan-out convolutions, BN weight 1 bias 0,
 * PyTorch's default Linear) from a seed; the same seed gives the same weights. */
eng_status eng_model_init(eng_model *m, uint64_t seed);
/* The same for the parameters (and running statistics) whose names start with `prefix` only;
 * each parameter's values depend on the seed and its name, not on what else is initialised. */
eng_status eng_model_init_prefix(eng_model *m, uint64_t seed, const char *prefix);

/* Blocks, counted from the output: block 0 is "fc", then the head's hidden layers, then the
 * backbone's residual blocks (or layers) down to the stem. Each block is one or two name
 * prefixes ("layer4.2.", or "conv1." and "bn1." for a ResNet stem). For retrain_blocks. */
int eng_model_num_blocks(const eng_model *m);
/* Prefixes of block i (from the output); *second may be NULL. ENG_ERR_ARG outside the range. */
eng_status eng_model_block(const eng_model *m, int i, const char **first, const char **second);

/* ---- parameters ---- */
typedef struct eng_param {
    const char *name;   /* torchvision name, e.g. "layer4.2.conv3.weight" */
    eng_tensor value;   /* view into the model's single parameter block */
    eng_tensor grad;    /* view into the gradient block (empty until gradients are needed) */
    bool buffer;        /* running statistics: saved and loaded, never trained */
    bool trainable;     /* set by the caller; all non-buffers are trainable by default */
} eng_param;

int eng_model_num_params(const eng_model *m);
eng_param *eng_model_param(eng_model *m, int i);
/* The parameter of that name, or NULL. */
eng_param *eng_model_find(eng_model *m, const char *name);
/* Marks every parameter whose name starts with `prefix` ("" for all) trainable or not. */
void eng_model_set_trainable(eng_model *m, const char *prefix, bool trainable);
/* Parameter count (floats) of trainable or all non-buffer parameters. */
int64_t eng_model_param_floats(const eng_model *m, bool trainable_only);

/* ---- running ---- */
typedef enum {
    ENG_MODE_EVAL = 0, /* batch norm uses running statistics (folded into the convolutions); no dropout */
    ENG_MODE_TRAIN,    /* batch norm uses batch statistics and updates the running ones; dropout on */
    ENG_MODE_TRAIN_BN_FROZEN, /* dropout on, batch norm as in eval and its parameters untrained (LwF) */
} eng_mode;

typedef enum {
    ENG_GRAD_NONE = 0,
    ENG_GRAD_INPUT = 1,  /* keep what the gradient with respect to the input needs */
    ENG_GRAD_PARAMS = 2, /* keep what gradients of the trainable parameters need */
} eng_grad_flags;

typedef struct eng_forward_opts {
    eng_mode mode;
    int grads;     /* eng_grad_flags */
    uint64_t seed; /* dropout masks */
} eng_forward_opts;

/* Runs x [N, C, H, W] (context memory, NCHW, pixels in [0,1]) through the model. *logits
 * ([N, classes], NCHW) is owned by the model and valid until the next forward. */
eng_status eng_model_forward(eng_model *m, const eng_tensor *x, const eng_forward_opts *opts,
                             const eng_tensor **logits);

/* The penultimate features [N, F] of the last forward (owned by the model). */
const eng_tensor *eng_model_features(const eng_model *m);

/* Backward from dlogits [N, classes] and, if not NULL, dfeatures [N, F] (added at the
 * penultimate layer, for feature-distance losses). Parameter gradients are written (not
 * accumulated) into each trainable param's grad when the forward asked for ENG_GRAD_PARAMS;
 * *dx (may be NULL) receives the input gradient, owned by the model, when it asked for
 * ENG_GRAD_INPUT. */
eng_status eng_model_backward(eng_model *m, const eng_tensor *dlogits, const eng_tensor *dfeatures,
                              const eng_tensor **dx);

/* One SGD step over the trainable parameters with their current gradients. Momentum buffers
 * are kept by the model; `first` starts them (PyTorch's first step). */
eng_status eng_model_sgd_step(eng_model *m, const eng_sgd_desc *d, bool first);

/* Marks every parameter changed after the caller wrote into their memory directly, so that
 * cached transformed weights are rebuilt. */
void eng_model_touch(eng_model *m);

#endif
