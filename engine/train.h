/* Training loops of the transfer methods and of source pretraining: natural training, free
 * adversarial training, fine-tuning on PGD examples, Learning without Forgetting, and heads on
 * cached features. Every loop is seeded (same seed, same backend: same weights), reports
 * progress, can be cancelled between steps, and checkpoints so that a resumed run ends with
 * exactly the weights of an uninterrupted one. */
#ifndef ENG_TRAIN_H
#define ENG_TRAIN_H

#include <stdbool.h>
#include <stdint.h>

#include "attack.h"
#include "model.h"

/* Where examples come from: n labelled images of one shape, fetched by index. */
typedef struct eng_source {
    int64_t n;
    int num_classes;
    int c, h, w; /* the shape of the batches produced */
    void *user;
    /* Fills x (host [count, c, h, w], pixels in [0,1]) and labels (host, count) with examples
     * idx[0..count). aug_seed != 0 asks for the source's augmentation, drawn from that seed
     * and each example's position, so that a batch is the same on every run. */
    eng_status (*batch)(void *user, const int64_t *idx, int count, uint64_t aug_seed, eng_tensor *x,
                        int32_t *labels);
} eng_source;

/* Progress: phase ("train", "features", "eval", ...), work done and total, in steps. */
typedef void (*eng_progress_fn)(void *user, const char *phase, int64_t done, int64_t total);

typedef struct eng_train_opts {
    int epochs;        /* >= 1 */
    int batch_size;    /* >= 2 (batch norm); the last incomplete batch of an epoch is dropped */
    float lr;
    int n_steps;       /* piecewise-constant schedule: from epoch step_epoch[i] on, lr = step_lr[i] */
    int step_epoch[8];
    float step_lr[8];
    float momentum, weight_decay;
    bool nesterov;
    bool augment;      /* ask the source for augmented batches */
    uint64_t seed;
    /* hooks, all optional */
    eng_progress_fn progress;
    bool (*cancelled)(void *user); /* polled between steps: true stops with ENG_ERR_CANCELLED */
    void *user;
    const char *checkpoint;        /* file to save to and resume from (safetensors), or NULL */
    double checkpoint_seconds;     /* save when this much time passed since the last save; 0: 300 */
    int64_t stop_after_steps;      /* tests: stop (ENG_ERR_CANCELLED) after this many steps; 0: never */
} eng_train_opts;

/* Defaults: 1 epoch of batch 128, lr 0.01, momentum 0.9, weight decay 5e-4, no schedule. */
void eng_train_defaults(eng_train_opts *o);

/* One row of the training curves. */
typedef struct eng_epoch_log {
    int epoch;
    double loss;      /* mean training loss over the epoch (the method's full loss) */
    double accuracy;  /* training accuracy on the batches seen (clean or adversarial) */
    double lr;
    double seconds;
} eng_epoch_log;

typedef struct eng_train_log {
    eng_epoch_log *epochs; /* owned; free with eng_train_log_cleanup */
    int n;
    int64_t steps;
    double seconds;
    bool resumed;          /* this run continued from a checkpoint */
} eng_train_log;

void eng_train_log_cleanup(eng_train_log *log);

/* ---- methods ---- */

/* Plain SGD on the cross-entropy of the trainable parameters (natural training of a source;
 * retrain_blocks after re-initialising and unfreezing the last blocks). */
eng_status eng_train_natural(eng_model *m, const eng_source *src, const eng_train_opts *o, eng_train_log *log);

/* "Free" adversarial training (Shafahi et al. 2019): each batch is replayed `replay` times,
 * one backward giving both the parameter gradients and the input gradient that moves the
 * perturbation delta (eps-ball, sign step of size eps). The epochs count passes over the data
 * as usual, so the cost is `replay` times natural training's. */
eng_status eng_train_free_at(eng_model *m, const eng_source *src, const eng_train_opts *o, float eps, int replay,
                             eng_train_log *log);

/* Fine-tuning on adversarial examples of the target data (the paper's section 4.2 baseline):
 * each batch is attacked (the spec: PGD-3 by default) in eval mode, then trained on. */
eng_status eng_train_adversarial(eng_model *m, const eng_source *src, const eng_train_opts *o,
                                 const eng_attack_spec *attack, eng_train_log *log);

/* Learning without Forgetting (the paper's section 6): loss = CE + lambda * d(z(x), z0(x)),
 * z0 [src->n, F] (host) the source model's penultimate features of un-augmented examples, d
 * the l2 (or l1) distance. For the first warm_start fraction of the steps only the parameters
 * named "fc." and "head." train; then every parameter except batch norm's. Batch norm stays
 * frozen throughout. o->augment must be false: z0 is of un-augmented images. */
eng_status eng_train_lwf(eng_model *m, const eng_source *src, const float *z0, const eng_train_opts *o, float lambda,
                         bool l1, float warm_start, eng_train_log *log);

/* Penultimate features of every example of src in eval mode (no augmentation) into feats
 * (host, [src->n, F], allocated here; the caller frees it with free()). */
eng_status eng_extract_features(eng_model *m, const eng_source *src, int batch_size, eng_progress_fn progress,
                                void *user, float **feats, int64_t *dim);

/* A source over cached features: examples are [F, 1, 1] "images" for an architecture "head"
 * model. fd, feats and labels stay owned by the caller and must outlive the source. */
typedef struct eng_feature_data {
    const float *feats;
    const int32_t *labels;
    int64_t dim;
} eng_feature_data;
void eng_feature_source(eng_source *s, eng_feature_data *fd, const float *feats, const int32_t *labels, int64_t n,
                        int64_t dim, int num_classes);

/* Marks every non-buffer parameter trainable, then freezes those outside the last k blocks
 * (eng_model_block) and re-initialises the last k from seed: the paper's section 3. */
eng_status eng_prepare_retrain_blocks(eng_model *m, int k, uint64_t seed);

#endif
