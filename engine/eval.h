/* Robustness evaluation: clean accuracy and, per attack, robust accuracy overall and per class,
 * the per-example worst case over all attacks, mean losses and time, accumulated over batches. */
#ifndef ENG_EVAL_H
#define ENG_EVAL_H

#include "attack.h"

typedef struct eng_eval_counts {
    int64_t correct;    /* examples classified correctly after this attack (clean: before any) */
    int64_t *per_class; /* [num_classes]: the same, per true class */
    int64_t attacked;   /* examples the attack ran on: those correct on clean inputs */
    double loss_sum;    /* clean: CE over all examples; attacks: their loss over the attacked ones */
    double seconds;
} eng_eval_counts;

typedef struct eng_eval {
    int num_classes, n_attacks;
    eng_attack_spec *attacks;  /* [n_attacks], copied */
    int64_t total, *total_per_class, batches;
    eng_eval_counts clean;
    eng_eval_counts worst;     /* correct under every attack asked for ("any attack succeeds" fails) */
    eng_eval_counts *attack;   /* [n_attacks] */
} eng_eval;

/* An empty accumulator. Attacks are checked (eng_attack_check) here, so that a bad request
 * fails before any work. Free with eng_eval_free. */
eng_status eng_eval_new(eng_eval **out, int num_classes, const eng_attack_spec *attacks, int n_attacks);
void eng_eval_free(eng_eval *ev);

/* Adds a batch: x [N, C, H, W] in the model's context (pixels in [0,1]), labels on the host.
 * Attacks run only on the examples the model gets right; each batch draws fresh random starts. */
eng_status eng_eval_batch(eng_eval *ev, eng_model *m, const eng_tensor *x, const int32_t *labels);

#endif
