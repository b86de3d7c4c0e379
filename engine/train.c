/* One training loop for every method: seeded epoch permutations, per-step seeds for augmentation,
 * dropout and attacks (all derived from the step number, so a resumed run replays exactly), a
 * piecewise-constant learning rate, progress, cancellation and checkpoints. Methods differ only
 * in their step function. */
#include "train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "arch.h"
#include "safetensors.h"

#define TRY(expr)                   \
    do {                            \
        eng_status s_ = (expr);     \
        if (s_ != ENG_OK)           \
            return s_;              \
    } while (0)

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

void eng_train_defaults(eng_train_opts *o)
{
    memset(o, 0, sizeof *o);
    o->epochs = 1;
    o->batch_size = 128;
    o->lr = 0.01f;
    o->momentum = 0.9f;
    o->weight_decay = 5e-4f;
}

void eng_train_log_cleanup(eng_train_log *log)
{
    if (!log)
        return;
    free(log->epochs);
    memset(log, 0, sizeof *log);
}

static eng_status check_opts(const eng_train_opts *o, const eng_source *src)
{
    if (o->epochs < 1 || o->epochs > 100000)
        return eng_fail(ENG_ERR_ARG, "train.epochs: %d is not in [1, 100000]", o->epochs);
    if (o->batch_size < 2 || o->batch_size > 65536)
        return eng_fail(ENG_ERR_ARG, "train.batch_size: %d is not in [2, 65536]", o->batch_size);
    if (!(o->lr >= 0) || !isfinite(o->lr) || !(o->momentum >= 0 && o->momentum < 1) || !(o->weight_decay >= 0))
        return eng_fail(ENG_ERR_ARG, "train: lr and weight_decay must be >= 0 and momentum in [0, 1)");
    if (o->n_steps < 0 || o->n_steps > 8)
        return eng_fail(ENG_ERR_ARG, "train.lr_schedule: at most 8 steps");
    for (int i = 0; i < o->n_steps; i++)
        if (o->step_epoch[i] < 0 || !(o->step_lr[i] >= 0) || (i > 0 && o->step_epoch[i] <= o->step_epoch[i - 1]))
            return eng_fail(ENG_ERR_ARG, "train.lr_schedule: epochs must increase and rates be >= 0");
    if (!src || src->n < o->batch_size)
        return eng_fail(ENG_ERR_ARG, "train: %lld examples is fewer than one batch of %d",
                        (long long)(src ? src->n : 0), o->batch_size);
    if (src->num_classes < 2)
        return eng_fail(ENG_ERR_ARG, "train: a classification dataset needs at least 2 classes");
    return ENG_OK;
}

static float lr_at(const eng_train_opts *o, int epoch)
{
    float lr = o->lr;
    for (int i = 0; i < o->n_steps; i++)
        if (epoch >= o->step_epoch[i])
            lr = o->step_lr[i];
    return lr;
}

/* ---- the loop ---- */

typedef struct loop loop;
typedef eng_status (*step_fn)(loop *L, int64_t step, float lr, double *loss, int64_t *correct);

struct loop {
    eng_model *m;
    eng_ctx *ctx;
    const eng_source *src;
    const eng_train_opts *o;
    eng_train_log *log;
    int64_t per_epoch, total;
    eng_tensor hx, x, dlogits;   /* host batch, context batch, gradient of the logits */
    int32_t *labels;
    const int64_t *batch_idx;    /* the current batch's example indices */
    int64_t *perm;
    step_fn step;
    /* method state */
    const eng_attack_spec *attack;
    eng_tensor xa, delta;        /* adversarial batch; free_at's running perturbation */
    float eps;
    int replay;
    const float *z0;
    eng_tensor z0b, dz;
    float lambda, warm;
    bool l1;
    int64_t warm_steps;
    int phase;                   /* lwf: 0 before setup, 1 warm start, 2 all weights */
};

static void loop_free(loop *L)
{
    eng_tensor_cleanup(&L->hx);
    eng_ctx_tensor_free(L->ctx, &L->x);
    eng_ctx_tensor_free(L->ctx, &L->dlogits);
    eng_ctx_tensor_free(L->ctx, &L->xa);
    eng_ctx_tensor_free(L->ctx, &L->delta);
    eng_ctx_tensor_free(L->ctx, &L->z0b);
    eng_ctx_tensor_free(L->ctx, &L->dz);
    free(L->labels);
    free(L->perm);
}

static eng_status loop_init(loop *L, eng_model *m, const eng_source *src, const eng_train_opts *o,
                            eng_train_log *log)
{
    memset(L, 0, sizeof *L);
    TRY(check_opts(o, src));
    const eng_model_spec *spec = eng_model_get_spec(m);
    if (spec->num_classes < src->num_classes)
        return eng_fail(ENG_ERR_ARG, "train: the data has %d classes, the model only %d", src->num_classes,
                        spec->num_classes);
    L->m = m;
    L->ctx = eng_model_ctx(m);
    L->src = src;
    L->o = o;
    L->log = log;
    L->per_epoch = src->n / o->batch_size;
    L->total = L->per_epoch * o->epochs;
    const int B = o->batch_size;
    int64_t d[4] = {B, src->c, src->h, src->w}, dl[2] = {B, spec->num_classes};
    L->labels = malloc((size_t)B * sizeof(int32_t));
    L->perm = malloc((size_t)src->n * sizeof(int64_t));
    if (!L->labels || !L->perm)
        return eng_fail(ENG_ERR_NOMEM, "train: out of memory");
    TRY(eng_tensor_alloc_host(&L->hx, 4, d, ENG_LAYOUT_NCHW));
    TRY(eng_ctx_tensor_alloc(L->ctx, &L->x, 4, d, ENG_LAYOUT_NCHW));
    TRY(eng_ctx_tensor_alloc(L->ctx, &L->dlogits, 2, dl, ENG_LAYOUT_NCHW));
    memset(log, 0, sizeof *log);
    log->epochs = calloc((size_t)o->epochs, sizeof *log->epochs);
    if (!log->epochs)
        return eng_fail(ENG_ERR_NOMEM, "train: out of memory");
    return ENG_OK;
}

/* The epoch's order of examples: a Fisher-Yates shuffle seeded by (seed, epoch). */
static void permute(int64_t *perm, int64_t n, uint64_t seed, int epoch)
{
    eng_rng r;
    eng_rng_init(&r, eng_hash64(seed, 0xe90c0000u + (uint64_t)epoch));
    for (int64_t i = 0; i < n; i++)
        perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(eng_rng_u64(&r) % (uint64_t)(i + 1));
        int64_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

static uint64_t step_seed(const loop *L, int64_t step, uint64_t what)
{
    return eng_hash64(eng_hash64(L->o->seed, what), (uint64_t)step) | 1;
}

/* Correct predictions of the last logits (host copy). */
static eng_status count_correct(loop *L, const eng_tensor *logits, int64_t *correct)
{
    const int64_t N = logits->dim[0], K = logits->dim[1];
    eng_tensor h = ENG_TENSOR_INIT;
    TRY(eng_tensor_alloc_host(&h, 2, logits->dim, ENG_LAYOUT_NCHW));
    eng_status s = eng_ctx_download(L->ctx, &h, logits);
    int64_t c = 0;
    for (int64_t n = 0; s == ENG_OK && n < N; n++) {
        int64_t best = 0;
        for (int64_t k = 1; k < K; k++)
            if (h.data[n * K + k] > h.data[n * K + best])
                best = k;
        c += best == L->labels[n];
    }
    eng_tensor_cleanup(&h);
    *correct = c;
    return s;
}

/* Forward in training mode on x, cross-entropy, backward, SGD: the step of natural training. */
static eng_status ce_step(loop *L, const eng_tensor *x, int64_t step, float lr, int grads, double *loss,
                          int64_t *correct, const eng_tensor **dx)
{
    const int B = L->o->batch_size;
    const eng_tensor *logits;
    eng_forward_opts fo = {.mode = ENG_MODE_TRAIN, .grads = grads, .seed = step_seed(L, step, 0xd0)};
    TRY(eng_model_forward(L->m, x, &fo, &logits));
    TRY(count_correct(L, logits, correct));
    double sum = 0;
    TRY(eng_xent(L->ctx, logits, L->labels, &sum, NULL, &L->dlogits, 1.0f / (float)B));
    *loss = sum / B;
    TRY(eng_model_backward(L->m, &L->dlogits, NULL, dx));
    eng_sgd_desc d = {lr, L->o->momentum, 0, L->o->weight_decay, L->o->nesterov};
    return eng_model_sgd_step(L->m, &d, false);
}

static eng_status natural_step(loop *L, int64_t step, float lr, double *loss, int64_t *correct)
{
    return ce_step(L, &L->x, step, lr, ENG_GRAD_PARAMS, loss, correct, NULL);
}

/* ---- checkpoints ---- */

#define CKPT_VERSION "1"

static eng_status ckpt_save(loop *L, int epoch, int64_t next_batch, int64_t steps, const double acc[3])
{
    eng_model *m = L->m;
    const int np = m->n_params;
    const int extra = L->delta.data ? 1 : 0;
    eng_st_item *items = calloc((size_t)(2 * np + extra), sizeof *items);
    char **names = calloc((size_t)(2 * np + extra), sizeof *names);
    eng_tensor host = ENG_TENSOR_INIT, hmom = ENG_TENSOR_INIT, hdelta = ENG_TENSOR_INIT;
    char *logjson = NULL;
    eng_status s = ENG_OK;
    if (!items || !names) {
        s = eng_fail(ENG_ERR_NOMEM, "checkpoint: out of memory");
        goto out;
    }
    if ((s = eng_tensor_alloc_host(&host, 1, m->param_block.dim, ENG_LAYOUT_NCHW)) != ENG_OK ||
        (s = eng_ctx_download(L->ctx, &host, &m->param_block)) != ENG_OK)
        goto out;
    bool mom = m->mom_block.data != NULL;
    if (mom && ((s = eng_tensor_alloc_host(&hmom, 1, m->mom_block.dim, ENG_LAYOUT_NCHW)) != ENG_OK ||
                (s = eng_ctx_download(L->ctx, &hmom, &m->mom_block)) != ENG_OK))
        goto out;
    int n = 0;
    int64_t off = 0;
    char started[2048];
    size_t sl = 0;
    for (int i = 0; i < np; i++) {
        const eng_tensor *v = &m->params[i].value;
        names[n] = malloc(strlen(m->params[i].name) + 8);
        if (!names[n]) {
            s = eng_fail(ENG_ERR_NOMEM, "checkpoint: out of memory");
            goto out;
        }
        sprintf(names[n], "param/%s", m->params[i].name);
        items[n] = (eng_st_item){names[n], host.data + off, v->ndim, v->dim};
        n++;
        if (mom && m->pinfo[i].momentum_started) {
            names[n] = malloc(strlen(m->params[i].name) + 12);
            if (!names[n]) {
                s = eng_fail(ENG_ERR_NOMEM, "checkpoint: out of memory");
                goto out;
            }
            sprintf(names[n], "momentum/%s", m->params[i].name);
            items[n] = (eng_st_item){names[n], hmom.data + off, v->ndim, v->dim};
            n++;
        }
        if (sl + 2 < sizeof started)
            started[sl++] = (mom && m->pinfo[i].momentum_started) ? '1' : '0';
        off += eng_tensor_numel(v);
    }
    started[sl] = '\0';
    if (extra) {
        if ((s = eng_tensor_alloc_host(&hdelta, 4, L->delta.dim, ENG_LAYOUT_NCHW)) != ENG_OK ||
            (s = eng_ctx_download(L->ctx, &hdelta, &L->delta)) != ENG_OK)
            goto out;
        items[n++] = (eng_st_item){"state/delta", hdelta.data, 4, L->delta.dim};
    }
    /* the curves so far, one "epoch loss accuracy lr seconds" line per finished epoch */
    size_t cap = 64 + (size_t)L->log->n * 96;
    logjson = malloc(cap);
    if (!logjson) {
        s = eng_fail(ENG_ERR_NOMEM, "checkpoint: out of memory");
        goto out;
    }
    size_t used = 0;
    logjson[0] = '\0';
    for (int i = 0; i < L->log->n; i++) {
        const eng_epoch_log *e = &L->log->epochs[i];
        used += (size_t)snprintf(logjson + used, cap - used, "%d %.17g %.17g %.17g %.17g;", e->epoch, e->loss,
                                 e->accuracy, e->lr, e->seconds);
    }
    char s_epoch[32], s_batch[32], s_steps[32], s_seed[32], s_acc[96];
    snprintf(s_epoch, sizeof s_epoch, "%d", epoch);
    snprintf(s_batch, sizeof s_batch, "%lld", (long long)next_batch);
    snprintf(s_steps, sizeof s_steps, "%lld", (long long)steps);
    snprintf(s_seed, sizeof s_seed, "%llu", (unsigned long long)L->o->seed);
    snprintf(s_acc, sizeof s_acc, "%.17g %.17g %.17g", acc[0], acc[1], acc[2]);
    const char *keys[] = {"rtaas.checkpoint", "epoch", "next_batch", "steps", "seed", "epoch_acc", "curves",
                          "momentum_started"};
    const char *vals[] = {CKPT_VERSION, s_epoch, s_batch, s_steps, s_seed, s_acc, logjson, started};
    s = eng_st_write(L->o->checkpoint, items, n, keys, vals, 8);
out:
    for (int i = 0; names && i < 2 * np + extra; i++)
        free(names[i]);
    free(names);
    free(items);
    free(logjson);
    eng_tensor_cleanup(&host);
    eng_tensor_cleanup(&hmom);
    eng_tensor_cleanup(&hdelta);
    return s;
}

/* Restores a checkpoint written by this loop: parameters, momentum, the method's state, where
 * to go on, and the curves. ENG_ERR_NOT_FOUND when there is none. */
static eng_status ckpt_load(loop *L, int *epoch, int64_t *next_batch, int64_t *steps, double acc[3])
{
    eng_model *m = L->m;
    eng_st_file *f = NULL;
    eng_tensor host = ENG_TENSOR_INIT, hmom = ENG_TENSOR_INIT;
    TRY(eng_st_open(L->o->checkpoint, &f));
    eng_status s = ENG_OK;
    const char *ver = eng_st_meta(f, "rtaas.checkpoint"), *ep = eng_st_meta(f, "epoch"),
               *nb = eng_st_meta(f, "next_batch"), *st = eng_st_meta(f, "steps"), *sd = eng_st_meta(f, "seed"),
               *ea = eng_st_meta(f, "epoch_acc"), *cv = eng_st_meta(f, "curves"),
               *ms = eng_st_meta(f, "momentum_started");
    if (!ver || strcmp(ver, CKPT_VERSION) || !ep || !nb || !st || !sd || !ea || !cv || !ms) {
        s = eng_fail(ENG_ERR_FORMAT, "checkpoint %s: not an rtaas training checkpoint", L->o->checkpoint);
        goto out;
    }
    if (strtoull(sd, NULL, 10) != L->o->seed) {
        s = eng_fail(ENG_ERR_ARG, "checkpoint %s: made with seed %s, this run has seed %llu", L->o->checkpoint, sd,
                     (unsigned long long)L->o->seed);
        goto out;
    }
    *epoch = atoi(ep);
    *next_batch = atoll(nb);
    *steps = atoll(st);
    if (sscanf(ea, "%lf %lf %lf", &acc[0], &acc[1], &acc[2]) != 3 || *epoch < 0 || *epoch > L->o->epochs ||
        *next_batch < 0 || *next_batch > L->per_epoch || (int)strlen(ms) != m->n_params) {
        s = eng_fail(ENG_ERR_FORMAT, "checkpoint %s: inconsistent with this run", L->o->checkpoint);
        goto out;
    }
    if ((s = eng_tensor_alloc_host(&host, 1, m->param_block.dim, ENG_LAYOUT_NCHW)) != ENG_OK ||
        (s = eng_tensor_alloc_host(&hmom, 1, m->param_block.dim, ENG_LAYOUT_NCHW)) != ENG_OK)
        goto out;
    int64_t off = 0;
    bool any_mom = false;
    for (int i = 0; i < m->n_params; i++) {
        const eng_tensor *v = &m->params[i].value;
        int64_t n = eng_tensor_numel(v);
        char name[300];
        snprintf(name, sizeof name, "param/%s", m->params[i].name);
        const eng_st_entry *e = eng_st_find(f, name);
        if (!e || e->numel != n) {
            s = eng_fail(ENG_ERR_FORMAT, "checkpoint %s: %s missing or of the wrong size", L->o->checkpoint, name);
            goto out;
        }
        if ((s = eng_st_read_f32(f, e, host.data + off, n)) != ENG_OK)
            goto out;
        if (ms[i] == '1') {
            snprintf(name, sizeof name, "momentum/%s", m->params[i].name);
            e = eng_st_find(f, name);
            if (!e || e->numel != n) {
                s = eng_fail(ENG_ERR_FORMAT, "checkpoint %s: %s missing", L->o->checkpoint, name);
                goto out;
            }
            if ((s = eng_st_read_f32(f, e, hmom.data + off, n)) != ENG_OK)
                goto out;
            any_mom = true;
        }
        off += n;
    }
    if ((s = eng_ctx_upload(L->ctx, &m->param_block, &host)) != ENG_OK)
        goto out;
    if (any_mom) {
        if (!m->mom_block.data) {
            int64_t total = m->param_block.dim[0];
            if ((s = eng_ctx_tensor_alloc(L->ctx, &m->mom_block, 1, &total, ENG_LAYOUT_NCHW)) != ENG_OK)
                goto out;
            int64_t o2 = 0;
            for (int i = 0; i < m->n_params; i++) {
                eng_param *p = &m->params[i];
                eng_tensor_view(&m->pinfo[i].momentum, m->mom_block.data + o2, p->value.ndim, p->value.dim,
                                ENG_LAYOUT_NCHW, m->mom_block.dev);
                o2 += eng_tensor_numel(&p->value);
            }
        }
        if ((s = eng_ctx_upload(L->ctx, &m->mom_block, &hmom)) != ENG_OK)
            goto out;
    }
    for (int i = 0; i < m->n_params; i++)
        m->pinfo[i].momentum_started = ms[i] == '1';
    eng_model_touch(m);
    if (L->delta.data) {
        const eng_st_entry *e = eng_st_find(f, "state/delta");
        eng_tensor hd = ENG_TENSOR_INIT;
        if (!e || e->numel != eng_tensor_numel(&L->delta)) {
            s = eng_fail(ENG_ERR_FORMAT, "checkpoint %s: state/delta missing", L->o->checkpoint);
            goto out;
        }
        if ((s = eng_tensor_alloc_host(&hd, 4, L->delta.dim, ENG_LAYOUT_NCHW)) == ENG_OK &&
            (s = eng_st_read_f32(f, e, hd.data, e->numel)) == ENG_OK)
            s = eng_ctx_upload(L->ctx, &L->delta, &hd);
        eng_tensor_cleanup(&hd);
        if (s != ENG_OK)
            goto out;
    }
    /* the curves of finished epochs */
    L->log->n = 0;
    for (const char *p = cv; *p && L->log->n < L->o->epochs;) {
        eng_epoch_log *e = &L->log->epochs[L->log->n];
        int used = 0;
        if (sscanf(p, "%d %lf %lf %lf %lf;%n", &e->epoch, &e->loss, &e->accuracy, &e->lr, &e->seconds, &used) != 5 ||
            used == 0)
            break;
        L->log->n++;
        p += used;
    }
out:
    eng_tensor_cleanup(&host);
    eng_tensor_cleanup(&hmom);
    eng_st_close(f);
    return s;
}

static eng_status run_loop(loop *L)
{
    const eng_train_opts *o = L->o;
    const int B = o->batch_size;
    double t_start = now_s(), t_ckpt = t_start, ckpt_every = o->checkpoint_seconds > 0 ? o->checkpoint_seconds : 300;
    int epoch0 = 0;
    int64_t batch0 = 0, steps = 0;
    double acc[3] = {0, 0, 0}; /* this epoch so far: loss sum, correct, seen */
    if (o->checkpoint) {
        eng_status s = ckpt_load(L, &epoch0, &batch0, &steps, acc);
        if (s == ENG_OK)
            L->log->resumed = true;
        else if (s != ENG_ERR_NOT_FOUND)
            return s;
    }
    eng_clear_error();
    for (int epoch = epoch0; epoch < o->epochs; epoch++) {
        const float lr = lr_at(o, epoch);
        double t_epoch = now_s();
        permute(L->perm, L->src->n, o->seed, epoch);
        for (int64_t b = (epoch == epoch0 ? batch0 : 0); b < L->per_epoch; b++) {
            if (o->cancelled && o->cancelled(o->user))
                return eng_fail(ENG_ERR_CANCELLED, "train: cancelled at step %lld", (long long)steps);
            if (o->stop_after_steps > 0 && steps >= o->stop_after_steps)
                return eng_fail(ENG_ERR_CANCELLED, "train: stopped after %lld steps", (long long)steps);
            L->batch_idx = L->perm + b * B;
            TRY(L->src->batch(L->src->user, L->batch_idx, B, o->augment ? step_seed(L, steps, 0xa0) : 0, &L->hx,
                              L->labels));
            TRY(eng_ctx_upload(L->ctx, &L->x, &L->hx));
            double loss = 0;
            int64_t correct = 0;
            TRY(L->step(L, steps, lr, &loss, &correct));
            if (!isfinite(loss))
                return eng_fail(ENG_ERR_ARG, "train: the loss became %g at step %lld (learning rate too high?)", loss,
                                (long long)steps);
            acc[0] += loss;
            acc[1] += (double)correct;
            acc[2] += B;
            steps++;
            if (o->progress)
                o->progress(o->user, "train", steps, L->total);
            /* mid-epoch saves carry the epoch's partial sums; the epoch's end saves below */
            if (o->checkpoint && b + 1 < L->per_epoch && now_s() - t_ckpt >= ckpt_every) {
                TRY(ckpt_save(L, epoch, b + 1, steps, acc));
                t_ckpt = now_s();
            }
        }
        eng_epoch_log *e = &L->log->epochs[L->log->n++];
        e->epoch = epoch;
        e->loss = acc[2] > 0 ? acc[0] / (acc[2] / B) : 0;
        e->accuracy = acc[2] > 0 ? acc[1] / acc[2] : 0;
        e->lr = lr;
        e->seconds = now_s() - t_epoch;
        acc[0] = acc[1] = acc[2] = 0;
        if (o->checkpoint && epoch + 1 < o->epochs && now_s() - t_ckpt >= ckpt_every) {
            TRY(ckpt_save(L, epoch + 1, 0, steps, acc));
            t_ckpt = now_s();
        }
    }
    L->log->steps = steps;
    L->log->seconds = now_s() - t_start;
    if (o->checkpoint)
        remove(o->checkpoint); /* finished: the result is the model, not the checkpoint */
    return ENG_OK;
}

static eng_status run(loop *L)
{
    eng_status s = run_loop(L);
    loop_free(L);
    return s;
}

eng_status eng_train_natural(eng_model *m, const eng_source *src, const eng_train_opts *o, eng_train_log *log)
{
    loop L;
    eng_status s = loop_init(&L, m, src, o, log);
    if (s != ENG_OK) {
        loop_free(&L);
        return s;
    }
    L.step = natural_step;
    return run(&L);
}

/* ---- free adversarial training ---- */

static eng_status free_step(loop *L, int64_t step, float lr, double *loss, int64_t *correct)
{
    eng_ctx *ctx = L->ctx;
    *loss = 0;
    *correct = 0;
    for (int r = 0; r < L->replay; r++) {
        /* x_adv = P(x + delta): the running perturbation on this batch, in the ball and in [0,1] */
        TRY(eng_copy(ctx, &L->xa, &L->x));
        TRY(eng_add(ctx, &L->xa, &L->xa, &L->delta));
        TRY(eng_linf_sign_step(ctx, &L->xa, &L->delta, &L->x, 0.0f, L->eps));
        double l = 0;
        int64_t c = 0;
        const eng_tensor *dx;
        TRY(ce_step(L, &L->xa, step * L->replay + r, lr, ENG_GRAD_PARAMS | ENG_GRAD_INPUT, &l, &c, &dx));
        /* the same backward moves the perturbation: delta = P(x_adv + eps sign(g)) - x */
        TRY(eng_linf_sign_step(ctx, &L->xa, dx, &L->x, L->eps, L->eps));
        TRY(eng_copy(ctx, &L->delta, &L->xa));
        TRY(eng_axpby(ctx, &L->delta, -1.0f, &L->x, 1.0f));
        *loss += l / L->replay;
        *correct += c;
    }
    /* accuracy on the adversarial batches, averaged over the replays */
    *correct = (*correct + L->replay / 2) / L->replay;
    return ENG_OK;
}

eng_status eng_train_free_at(eng_model *m, const eng_source *src, const eng_train_opts *o, float eps, int replay,
                             eng_train_log *log)
{
    if (!(eps >= 0 && eps <= 1) || replay < 1 || replay > 64)
        return eng_fail(ENG_ERR_ARG, "free_at: eps must be in [0, 1] and replay in [1, 64]");
    loop L;
    eng_status s = loop_init(&L, m, src, o, log);
    if (s == ENG_OK)
        s = eng_ctx_tensor_alloc(L.ctx, &L.xa, 4, L.x.dim, ENG_LAYOUT_NCHW);
    if (s == ENG_OK)
        s = eng_ctx_tensor_alloc(L.ctx, &L.delta, 4, L.x.dim, ENG_LAYOUT_NCHW);
    if (s != ENG_OK) {
        loop_free(&L);
        return s;
    }
    L.eps = eps;
    L.replay = replay;
    L.step = free_step;
    return run(&L);
}

/* ---- fine-tuning on attacked batches ---- */

static eng_status adv_step(loop *L, int64_t step, float lr, double *loss, int64_t *correct)
{
    eng_attack_spec a = *L->attack;
    a.seed = step_seed(L, step, 0xa77);
    TRY(eng_attack_run(L->m, &a, &L->x, L->labels, &L->xa, NULL, NULL));
    return ce_step(L, &L->xa, step, lr, ENG_GRAD_PARAMS, loss, correct, NULL);
}

eng_status eng_train_adversarial(eng_model *m, const eng_source *src, const eng_train_opts *o,
                                 const eng_attack_spec *attack, eng_train_log *log)
{
    if (!attack)
        return eng_fail(ENG_ERR_ARG, "adv_finetune: no attack");
    TRY(eng_attack_check(attack, eng_model_get_spec(m)->num_classes));
    loop L;
    eng_status s = loop_init(&L, m, src, o, log);
    if (s == ENG_OK)
        s = eng_ctx_tensor_alloc(L.ctx, &L.xa, 4, L.x.dim, ENG_LAYOUT_NCHW);
    if (s != ENG_OK) {
        loop_free(&L);
        return s;
    }
    L.attack = attack;
    L.step = adv_step;
    return run(&L);
}

/* ---- Learning without Forgetting ---- */

static void freeze_bn(eng_model *m)
{
    for (int i = 0; i < m->n_layers; i++)
        if (m->layers[i].d.bn >= 0) {
            m->params[m->layers[i].d.bn].trainable = false;
            m->params[m->layers[i].d.bn + 1].trainable = false;
        }
}

static eng_status lwf_step(loop *L, int64_t step, float lr, double *loss, int64_t *correct)
{
    eng_ctx *ctx = L->ctx;
    eng_model *m = L->m;
    const int B = L->o->batch_size;
    int phase = step < L->warm_steps ? 1 : 2;
    if (phase != L->phase) {
        /* warm start: the classifier alone; then every weight; batch norm frozen in both */
        eng_model_set_trainable(m, "", phase == 2);
        if (phase == 1) {
            eng_model_set_trainable(m, "fc.", true);
            eng_model_set_trainable(m, "head.", true);
        }
        freeze_bn(m);
        L->phase = phase;
    }
    /* this batch's source features */
    const int64_t F = L->z0b.dim[1];
    eng_tensor hz = ENG_TENSOR_INIT;
    TRY(eng_tensor_alloc_host(&hz, 2, L->z0b.dim, ENG_LAYOUT_NCHW));
    for (int i = 0; i < B; i++)
        memcpy(hz.data + (int64_t)i * F, L->z0 + L->batch_idx[i] * F, (size_t)F * sizeof(float));
    eng_status s = eng_ctx_upload(ctx, &L->z0b, &hz);
    eng_tensor_cleanup(&hz);
    TRY(s);
    const eng_tensor *logits;
    eng_forward_opts fo = {.mode = ENG_MODE_TRAIN, .grads = ENG_GRAD_PARAMS, .seed = step_seed(L, step, 0xd0)};
    TRY(eng_model_forward(m, &L->x, &fo, &logits));
    TRY(count_correct(L, logits, correct));
    double ce = 0, dist = 0;
    TRY(eng_xent(ctx, logits, L->labels, &ce, NULL, &L->dlogits, 1.0f / (float)B));
    TRY(eng_feature_distance_loss(ctx, eng_model_features(m), &L->z0b, L->l1, &dist, &L->dz, L->lambda / (float)B));
    *loss = ce / B + L->lambda * dist / B;
    TRY(eng_model_backward(m, &L->dlogits, &L->dz, NULL));
    eng_sgd_desc d = {lr, L->o->momentum, 0, L->o->weight_decay, L->o->nesterov};
    return eng_model_sgd_step(m, &d, false);
}

eng_status eng_train_lwf(eng_model *m, const eng_source *src, const float *z0, const eng_train_opts *o, float lambda,
                         bool l1, float warm_start, eng_train_log *log)
{
    if (!z0 || !(lambda >= 0) || !isfinite(lambda) || !(warm_start >= 0 && warm_start <= 1))
        return eng_fail(ENG_ERR_ARG, "lwf: need source features, lambda_d >= 0 and warm_start in [0, 1]");
    if (o->augment)
        return eng_fail(ENG_ERR_ARG, "lwf: the source features are of un-augmented images: augmentation must be off");
    loop L;
    eng_status s = loop_init(&L, m, src, o, log);
    const int64_t F = eng_model_feature_dim(m);
    int64_t d[2] = {o->batch_size, F};
    if (s == ENG_OK)
        s = eng_ctx_tensor_alloc(L.ctx, &L.z0b, 2, d, ENG_LAYOUT_NCHW);
    if (s == ENG_OK)
        s = eng_ctx_tensor_alloc(L.ctx, &L.dz, 2, d, ENG_LAYOUT_NCHW);
    if (s != ENG_OK) {
        loop_free(&L);
        return s;
    }
    L.z0 = z0;
    L.lambda = lambda;
    L.l1 = l1;
    L.warm_steps = (int64_t)floor((double)warm_start * (double)L.total + 0.5);
    L.step = lwf_step;
    s = run(&L);
    /* leave the model as trained: everything but batch norm marked trainable */
    eng_model_set_trainable(m, "", true);
    freeze_bn(m);
    return s;
}

/* ---- features and heads ---- */

eng_status eng_extract_features(eng_model *m, const eng_source *src, int batch_size, eng_progress_fn progress,
                                void *user, float **feats, int64_t *dim)
{
    *feats = NULL;
    *dim = 0;
    if (batch_size < 1 || !src || src->n < 1)
        return eng_fail(ENG_ERR_ARG, "features: need a batch size >= 1 and examples");
    eng_ctx *ctx = eng_model_ctx(m);
    const int64_t F = eng_model_feature_dim(m), N = src->n;
    eng_status s = ENG_OK;
    float *out = malloc((size_t)N * (size_t)F * sizeof(float));
    int64_t *idx = malloc((size_t)batch_size * sizeof(int64_t));
    int32_t *labels = malloc((size_t)batch_size * sizeof(int32_t));
    eng_tensor hx = ENG_TENSOR_INIT, x = ENG_TENSOR_INIT, hf = ENG_TENSOR_INIT;
    if (!out || !idx || !labels) {
        s = eng_fail(ENG_ERR_NOMEM, "features: out of memory for %lld x %lld floats", (long long)N, (long long)F);
        goto out;
    }
    for (int64_t start = 0; start < N && s == ENG_OK; start += batch_size) {
        int cnt = (int)(N - start < batch_size ? N - start : batch_size);
        int64_t d[4] = {cnt, src->c, src->h, src->w}, df[2] = {cnt, F};
        if (hx.dim[0] != cnt) {
            eng_tensor_cleanup(&hx);
            eng_ctx_tensor_free(ctx, &x);
            eng_tensor_cleanup(&hf);
            if ((s = eng_tensor_alloc_host(&hx, 4, d, ENG_LAYOUT_NCHW)) != ENG_OK ||
                (s = eng_ctx_tensor_alloc(ctx, &x, 4, d, ENG_LAYOUT_NCHW)) != ENG_OK ||
                (s = eng_tensor_alloc_host(&hf, 2, df, ENG_LAYOUT_NCHW)) != ENG_OK)
                break;
        }
        for (int i = 0; i < cnt; i++)
            idx[i] = start + i;
        const eng_tensor *lg;
        if ((s = src->batch(src->user, idx, cnt, 0, &hx, labels)) != ENG_OK ||
            (s = eng_ctx_upload(ctx, &x, &hx)) != ENG_OK ||
            (s = eng_model_forward(m, &x, &(eng_forward_opts){.mode = ENG_MODE_EVAL}, &lg)) != ENG_OK ||
            (s = eng_ctx_download(ctx, &hf, eng_model_features(m))) != ENG_OK)
            break;
        memcpy(out + start * F, hf.data, (size_t)cnt * (size_t)F * sizeof(float));
        if (progress)
            progress(user, "features", start + cnt, N);
    }
out:
    eng_tensor_cleanup(&hx);
    eng_ctx_tensor_free(ctx, &x);
    eng_tensor_cleanup(&hf);
    free(idx);
    free(labels);
    if (s != ENG_OK) {
        free(out);
        return s;
    }
    *feats = out;
    *dim = F;
    return ENG_OK;
}

static eng_status feature_batch(void *user, const int64_t *idx, int count, uint64_t aug_seed, eng_tensor *x,
                                int32_t *labels)
{
    (void)aug_seed; /* features have no augmentation */
    const eng_feature_data *f = user;
    for (int i = 0; i < count; i++) {
        memcpy(x->data + (int64_t)i * f->dim, f->feats + idx[i] * f->dim, (size_t)f->dim * sizeof(float));
        labels[i] = f->labels[idx[i]];
    }
    return ENG_OK;
}

void eng_feature_source(eng_source *s, eng_feature_data *fd, const float *feats, const int32_t *labels, int64_t n,
                        int64_t dim, int num_classes)
{
    fd->feats = feats;
    fd->labels = labels;
    fd->dim = dim;
    memset(s, 0, sizeof *s);
    s->n = n;
    s->num_classes = num_classes;
    s->c = (int)dim;
    s->h = s->w = 1;
    s->user = fd;
    s->batch = feature_batch;
}

eng_status eng_prepare_retrain_blocks(eng_model *m, int k, uint64_t seed)
{
    const int nb = eng_model_num_blocks(m);
    if (k < 1 || k > nb)
        return eng_fail(ENG_ERR_ARG, "retrain_blocks: k = %d is not in [1, %d] (the model's blocks)", k, nb);
    eng_model_set_trainable(m, "", false);
    for (int i = 0; i < k; i++) {
        const char *a, *b;
        TRY(eng_model_block(m, i, &a, &b));
        TRY(eng_model_init_prefix(m, seed, a));
        eng_model_set_trainable(m, a, true);
        if (b) {
            TRY(eng_model_init_prefix(m, seed, b));
            eng_model_set_trainable(m, b, true);
        }
    }
    return ENG_OK;
}
