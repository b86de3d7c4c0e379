/* Accumulates the evaluation over batches: one clean pass, then each attack on the examples
 * still classified correctly, gathered into a sub-batch. */
#include "eval.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

void eng_eval_free(eng_eval *ev)
{
    if (!ev)
        return;
    free(ev->clean.per_class);
    free(ev->worst.per_class);
    for (int i = 0; ev->attack && i < ev->n_attacks; i++)
        free(ev->attack[i].per_class);
    free(ev->attack);
    free(ev->attacks);
    free(ev->total_per_class);
    free(ev);
}

eng_status eng_eval_new(eng_eval **out, int num_classes, const eng_attack_spec *attacks, int n_attacks)
{
    *out = NULL;
    if (num_classes < 2 || n_attacks < 0 || (n_attacks > 0 && !attacks))
        return eng_fail(ENG_ERR_ARG, "eval: need at least 2 classes and a list of attacks");
    for (int i = 0; i < n_attacks; i++) {
        eng_status s = eng_attack_check(&attacks[i], num_classes);
        if (s != ENG_OK)
            return s;
    }
    eng_eval *ev = calloc(1, sizeof *ev);
    if (!ev)
        return eng_fail(ENG_ERR_NOMEM, "eval: out of memory");
    ev->num_classes = num_classes;
    ev->n_attacks = n_attacks;
    size_t pc = (size_t)num_classes * sizeof(int64_t);
    ev->attacks = malloc((size_t)(n_attacks ? n_attacks : 1) * sizeof *attacks);
    ev->attack = calloc((size_t)(n_attacks ? n_attacks : 1), sizeof *ev->attack);
    ev->total_per_class = calloc(1, pc);
    ev->clean.per_class = calloc(1, pc);
    ev->worst.per_class = calloc(1, pc);
    bool ok = ev->attacks && ev->attack && ev->total_per_class && ev->clean.per_class && ev->worst.per_class;
    for (int i = 0; ok && i < n_attacks; i++)
        ok = (ev->attack[i].per_class = calloc(1, pc)) != NULL;
    if (!ok) {
        eng_eval_free(ev);
        return eng_fail(ENG_ERR_NOMEM, "eval: out of memory");
    }
    if (n_attacks)
        memcpy(ev->attacks, attacks, (size_t)n_attacks * sizeof *attacks);
    *out = ev;
    return ENG_OK;
}

eng_status eng_eval_batch(eng_eval *ev, eng_model *m, const eng_tensor *x, const int32_t *labels)
{
    eng_ctx *ctx = eng_model_ctx(m);
    const int K = ev->num_classes;
    if (eng_model_get_spec(m)->num_classes != K)
        return eng_fail(ENG_ERR_ARG, "eval: the model has %d classes, the evaluation %d",
                        eng_model_get_spec(m)->num_classes, K);
    if (!x || x->ndim != 4 || x->dim[0] < 1 || !labels)
        return eng_fail(ENG_ERR_ARG, "eval: need a non-empty batch [N, C, H, W] and its labels");
    const int64_t N = x->dim[0];
    for (int64_t n = 0; n < N; n++)
        if (labels[n] < 0 || labels[n] >= K)
            return eng_fail(ENG_ERR_ARG, "eval: label %d of example %lld is outside [0, %d)", labels[n],
                            (long long)n, K);
    eng_status st = ENG_OK;
    int64_t nk[2] = {N, K};
    eng_tensor hlg = ENG_TENSOR_INIT;
    eng_tensor xs = ENG_TENSOR_INIT, xa = ENG_TENSOR_INIT;
    bool *robust = malloc((size_t)N), *fooled = malloc((size_t)N);
    float *loss = malloc((size_t)N * sizeof(float));
    int32_t *idx = malloc((size_t)N * sizeof(int32_t)), *lsub = malloc((size_t)N * sizeof(int32_t));
    if (!robust || !fooled || !loss || !idx || !lsub) {
        st = eng_fail(ENG_ERR_NOMEM, "eval: out of memory");
        goto out;
    }
#define T(expr)                     \
    if ((st = (expr)) != ENG_OK)    \
        goto out;
    double t0 = now_s();
    const eng_tensor *logits;
    T(eng_model_forward(m, x, &(eng_forward_opts){.mode = ENG_MODE_EVAL}, &logits));
    double clean_loss = 0;
    T(eng_xent(ctx, logits, labels, &clean_loss, NULL, NULL, 1.0f));
    T(eng_tensor_alloc_host(&hlg, 2, nk, ENG_LAYOUT_NCHW));
    T(eng_ctx_download(ctx, &hlg, logits));
    int n_ok = 0;
    for (int64_t n = 0; n < N; n++) {
        const float *z = hlg.data + n * K;
        int best = 0;
        for (int k = 1; k < K; k++)
            if (z[k] > z[best])
                best = k;
        robust[n] = best == labels[n];
        ev->total_per_class[labels[n]]++;
        if (robust[n]) {
            ev->clean.per_class[labels[n]]++;
            idx[n_ok] = (int32_t)n;
            lsub[n_ok++] = labels[n];
        }
    }
    ev->total += N;
    ev->clean.correct += n_ok;
    ev->clean.attacked += N;
    ev->clean.loss_sum += clean_loss;
    ev->clean.seconds += now_s() - t0;
    /* every attack on the same sub-batch of correctly classified examples */
    bool *alive = malloc((size_t)(n_ok ? n_ok : 1));
    if (!alive) {
        st = eng_fail(ENG_ERR_NOMEM, "eval: out of memory");
        goto out;
    }
    for (int i = 0; i < n_ok; i++)
        alive[i] = true;
    if (n_ok > 0 && ev->n_attacks > 0) {
        int64_t d[4] = {n_ok, x->dim[1], x->dim[2], x->dim[3]};
        if ((st = eng_ctx_tensor_alloc(ctx, &xs, 4, d, ENG_LAYOUT_NCHW)) == ENG_OK &&
            (st = eng_ctx_tensor_alloc(ctx, &xa, 4, d, ENG_LAYOUT_NCHW)) == ENG_OK)
            st = eng_gather_rows(ctx, &xs, x, idx);
    }
    for (int a = 0; st == ENG_OK && a < ev->n_attacks; a++) {
        eng_eval_counts *c = &ev->attack[a];
        double ta = now_s();
        if (n_ok > 0) {
            eng_attack_spec spec = ev->attacks[a];
            spec.seed = eng_hash64(spec.seed, (uint64_t)ev->batches);
            if ((st = eng_attack_run(m, &spec, &xs, lsub, &xa, fooled, loss)) != ENG_OK)
                break;
            for (int i = 0; i < n_ok; i++) {
                c->loss_sum += loss[i];
                if (!fooled[i]) {
                    c->correct++;
                    c->per_class[lsub[i]]++;
                } else {
                    alive[i] = false;
                }
            }
            c->attacked += n_ok;
        }
        c->seconds += now_s() - ta;
    }
    if (st == ENG_OK && ev->n_attacks > 0) {
        for (int i = 0; i < n_ok; i++)
            if (alive[i]) {
                ev->worst.correct++;
                ev->worst.per_class[lsub[i]]++;
            }
        ev->worst.attacked += n_ok;
    }
    free(alive);
    ev->batches++;
#undef T
out:
    eng_ctx_tensor_free(ctx, &xs);
    eng_ctx_tensor_free(ctx, &xa);
    eng_tensor_cleanup(&hlg);
    free(robust), free(fooled), free(loss), free(idx), free(lsub);
    return st;
}
