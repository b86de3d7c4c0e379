/* White-box l_inf attacks in pixel space: FGSM, PGD-k with random start and restarts, CW-k
 * (PGD on the margin loss), and APGD-CE / APGD-DLR with AutoAttack's step-size schedule.
 * The model runs in eval mode; inputs are pixels in [0,1]; eps is in the same units. */
#ifndef ENG_ATTACK_H
#define ENG_ATTACK_H

#include <stdbool.h>
#include <stdint.h>

#include "model.h"

typedef enum {
    ENG_ATTACK_FGSM = 0,
    ENG_ATTACK_PGD,
    ENG_ATTACK_CW,
    ENG_ATTACK_APGD_CE,
    ENG_ATTACK_APGD_DLR,
} eng_attack_kind;

typedef struct eng_attack_spec {
    eng_attack_kind kind;
    float eps;         /* l_inf radius in pixel units: 8/255 = 0.0314 */
    int steps;         /* iterations, >= 1 (FGSM: 1) */
    float alpha;       /* PGD/CW/FGSM step size; APGD starts at 2 eps and adapts */
    bool random_start; /* start uniformly in the eps-ball (APGD always does) */
    int restarts;      /* >= 1; an example counts as broken if any restart breaks it */
    bool best;         /* PGD/CW: return the highest-loss iterate instead of the last */
    float kappa;       /* CW confidence margin */
    uint64_t seed;
    /* Polled before each step (NULL: never). When it returns true, the attack stops and returns
     * ENG_ERR_CANCELLED: a worker told to stop need not wait for a whole attack of a batch. */
    bool (*cancelled)(void *user);
    void *cancel_user;
} eng_attack_spec;

/* Sensible defaults for a kind: PGD/CW with a random start and alpha = max(2.5 eps / steps,
 * eps / 4) (PGD-20 at 8/255 steps 2/255, as in Madry et al.'s evaluation), CW with kappa 50,
 * FGSM with alpha = eps and no random start, one restart, last iterate. */
void eng_attack_defaults(eng_attack_spec *a, eng_attack_kind kind, float eps, int steps);

/* "fgsm", "pgd", "cw", "apgd-ce", "apgd-dlr". */
const char *eng_attack_name(eng_attack_kind kind);
eng_status eng_attack_parse_kind(const char *s, eng_attack_kind *kind);

/* eps from "8/255", "0.0314" or "2e-2"; must lie in [0, 1]. */
eng_status eng_parse_eps(const char *s, float *eps);

/* Refuses what cannot run: eps outside [0,1], steps < 1, restarts < 1, a negative step size
 * or kappa, DLR with fewer than 3 classes. The message names the field. */
eng_status eng_attack_check(const eng_attack_spec *a, int num_classes);

/* Attacks a batch. x: [N, C, H, W] in the model's context, NCHW, pixels in [0,1]; labels: host
 * array of N class ids. Writes the adversarial batch into x_adv (same shape, context memory,
 * may not alias x). fooled (host, may be NULL) gets whether each example is misclassified at
 * the point returned; loss (host, may be NULL) the attack's loss there. For APGD an example
 * fooled at any iterate returns that iterate. The model's last forward is overwritten. */
eng_status eng_attack_run(eng_model *m, const eng_attack_spec *a, const eng_tensor *x, const int32_t *labels,
                          eng_tensor *x_adv, bool *fooled, float *loss);

#endif
