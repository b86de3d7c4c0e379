/* The attack loops over the model: PGD/CW/FGSM iterate sign steps with projection; APGD follows
 * AutoAttack (Croce & Hein 2020) step for step, including its checkpoint schedule. */
#include "attack.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define TRY(expr)                   \
    do {                            \
        eng_status s_ = (expr);     \
        if (s_ != ENG_OK)           \
            return s_;              \
    } while (0)

static const char *const names[] = {"fgsm", "pgd", "cw", "apgd-ce", "apgd-dlr"};

const char *eng_attack_name(eng_attack_kind kind)
{
    return (unsigned)kind < sizeof names / sizeof *names ? names[kind] : "unknown";
}

eng_status eng_attack_parse_kind(const char *s, eng_attack_kind *kind)
{
    for (size_t i = 0; s && i < sizeof names / sizeof *names; i++)
        if (strcasecmp(s, names[i]) == 0) {
            *kind = (eng_attack_kind)i;
            return ENG_OK;
        }
    return eng_fail(ENG_ERR_ARG, "attack: unknown kind '%s' (fgsm, pgd, cw, apgd-ce, apgd-dlr)", s ? s : "");
}

eng_status eng_parse_eps(const char *s, float *eps)
{
    char *end;
    if (!s || !*s)
        return eng_fail(ENG_ERR_ARG, "eps: empty");
    double v = strtod(s, &end);
    if (end == s)
        return eng_fail(ENG_ERR_ARG, "eps: '%s' is not a number or a fraction like 8/255", s);
    if (*end == '/') {
        const char *d = end + 1;
        double den = strtod(d, &end);
        if (end == d || !(den > 0))
            return eng_fail(ENG_ERR_ARG, "eps: bad denominator in '%s'", s);
        v /= den;
    }
    if (*end != '\0')
        return eng_fail(ENG_ERR_ARG, "eps: trailing characters in '%s'", s);
    if (!isfinite(v) || v < 0 || v > 1)
        return eng_fail(ENG_ERR_ARG, "eps: %s is outside [0, 1] (pixel units: 8/255, not 8)", s);
    *eps = (float)v;
    return ENG_OK;
}

void eng_attack_defaults(eng_attack_spec *a, eng_attack_kind kind, float eps, int steps)
{
    memset(a, 0, sizeof *a);
    a->kind = kind;
    a->eps = eps;
    a->steps = kind == ENG_ATTACK_FGSM ? 1 : steps;
    a->restarts = 1;
    a->kappa = 50.0f;
    a->random_start = kind != ENG_ATTACK_FGSM;
    if (kind == ENG_ATTACK_FGSM) {
        a->alpha = eps;
    } else {
        float k = a->steps > 0 ? (float)a->steps : 1.0f;
        a->alpha = fmaxf(2.5f * eps / k, eps / 4.0f);
    }
}

eng_status eng_attack_check(const eng_attack_spec *a, int num_classes)
{
    if ((unsigned)a->kind > ENG_ATTACK_APGD_DLR)
        return eng_fail(ENG_ERR_ARG, "attack: unknown kind %d", (int)a->kind);
    if (!isfinite(a->eps) || a->eps < 0 || a->eps > 1)
        return eng_fail(ENG_ERR_ARG, "attack.eps: %g is outside [0, 1] (pixel units)", a->eps);
    if (a->steps < 1 || a->steps > 100000)
        return eng_fail(ENG_ERR_ARG, "attack.steps: %d is not in [1, 100000]", a->steps);
    if (a->restarts < 1 || a->restarts > 1000)
        return eng_fail(ENG_ERR_ARG, "attack.restarts: %d is not in [1, 1000]", a->restarts);
    if (!isfinite(a->alpha) || a->alpha < 0)
        return eng_fail(ENG_ERR_ARG, "attack.alpha: the step size must be >= 0");
    if (!isfinite(a->kappa) || a->kappa < 0)
        return eng_fail(ENG_ERR_ARG, "attack.kappa: must be >= 0");
    if (a->kind == ENG_ATTACK_APGD_DLR && num_classes < 3)
        return eng_fail(ENG_ERR_ARG, "attack: APGD-DLR needs at least 3 classes, the model has %d", num_classes);
    if (num_classes < 2)
        return eng_fail(ENG_ERR_ARG, "attack: the model has fewer than 2 classes");
    return ENG_OK;
}

/* ---- one evaluation of the attack loss (and its input gradient) ---- */

typedef struct ws {
    eng_ctx *ctx;
    int64_t N, K;
    eng_tensor per, dlogits;       /* context memory */
    eng_tensor host_per, host_lg;  /* host copies */
} ws;

static void ws_free(ws *w)
{
    eng_ctx_tensor_free(w->ctx, &w->per);
    eng_ctx_tensor_free(w->ctx, &w->dlogits);
    eng_tensor_cleanup(&w->host_per);
    eng_tensor_cleanup(&w->host_lg);
}

static eng_status ws_init(ws *w, eng_ctx *ctx, int64_t N, int64_t K)
{
    memset(w, 0, sizeof *w);
    w->ctx = ctx;
    w->N = N;
    w->K = K;
    int64_t nk[2] = {N, K};
    TRY(eng_ctx_tensor_alloc(ctx, &w->per, 1, &N, ENG_LAYOUT_NCHW));
    TRY(eng_ctx_tensor_alloc(ctx, &w->dlogits, 2, nk, ENG_LAYOUT_NCHW));
    TRY(eng_tensor_alloc_host(&w->host_per, 1, &N, ENG_LAYOUT_NCHW));
    return eng_tensor_alloc_host(&w->host_lg, 2, nk, ENG_LAYOUT_NCHW);
}

/* Loss per example (host) and misclassification at x; the input gradient of the summed loss
 * goes to grad when it is not NULL. */
static eng_status probe(eng_model *m, ws *w, const eng_attack_spec *a, const eng_tensor *x, const int32_t *labels,
                        double *loss, bool *wrong, eng_tensor *grad)
{
    const eng_tensor *logits, *dx;
    eng_forward_opts o = {.mode = ENG_MODE_EVAL, .grads = grad ? ENG_GRAD_INPUT : ENG_GRAD_NONE};
    TRY(eng_model_forward(m, x, &o, &logits));
    eng_tensor *dl = grad ? &w->dlogits : NULL;
    switch (a->kind) {
    case ENG_ATTACK_CW:
        TRY(eng_margin_loss(w->ctx, logits, labels, a->kappa, NULL, &w->per, dl, 1.0f));
        break;
    case ENG_ATTACK_APGD_DLR:
        TRY(eng_dlr_loss(w->ctx, logits, labels, NULL, &w->per, dl, 1.0f));
        break;
    default:
        TRY(eng_xent(w->ctx, logits, labels, NULL, &w->per, dl, 1.0f));
    }
    if (grad) {
        TRY(eng_model_backward(m, dl, NULL, &dx));
        TRY(eng_copy(w->ctx, grad, dx));
    }
    TRY(eng_ctx_download(w->ctx, &w->host_per, &w->per));
    TRY(eng_ctx_download(w->ctx, &w->host_lg, logits));
    for (int64_t n = 0; n < w->N; n++) {
        const float *z = w->host_lg.data + n * w->K;
        int64_t best = 0;
        for (int64_t k = 1; k < w->K; k++)
            if (z[k] > z[best])
                best = k;
        wrong[n] = best != labels[n];
        loss[n] = w->host_per.data[n];
    }
    return ENG_OK;
}

/* Rows of `which` set, as an index list; returns the count. */
static int rows_where(const bool *which, int64_t N, int32_t *idx)
{
    int n = 0;
    for (int64_t i = 0; i < N; i++)
        if (which[i])
            idx[n++] = (int32_t)i;
    return n;
}

/* ---- PGD, CW and FGSM: sign steps with projection ---- */

typedef struct result {
    eng_tensor x;   /* the returned point of one restart */
    double *loss;
    bool *wrong;
} result;

static bool stop_asked(const eng_attack_spec *a) { return a->cancelled && a->cancelled(a->cancel_user); }

static eng_status run_pgd(eng_model *m, ws *w, const eng_attack_spec *a, const eng_tensor *x, const int32_t *labels,
                          uint64_t seed, eng_tensor *cur, eng_tensor *grad, eng_tensor *best, result *r,
                          double *lt, bool *wt, bool *take, int32_t *idx)
{
    eng_ctx *ctx = w->ctx;
    const int64_t N = w->N;
    if (a->random_start && a->eps > 0)
        TRY(eng_linf_random_start(ctx, cur, x, a->eps, seed, false));
    else
        TRY(eng_copy(ctx, cur, x));
    for (int64_t n = 0; n < N; n++)
        r->loss[n] = -INFINITY, r->wrong[n] = false;
    for (int t = 0; t <= a->steps; t++) {
        if (stop_asked(a))
            return eng_fail(ENG_ERR_CANCELLED, "attack: cancelled at step %d of %d", t, a->steps);
        bool last = t == a->steps;
        TRY(probe(m, w, a, cur, labels, lt, wt, last ? NULL : grad));
        if (a->best) {
            for (int64_t n = 0; n < N; n++)
                take[n] = lt[n] > r->loss[n];
            int k = rows_where(take, N, idx);
            TRY(eng_copy_rows(ctx, best, cur, idx, k));
            for (int i = 0; i < k; i++)
                r->loss[idx[i]] = lt[idx[i]], r->wrong[idx[i]] = wt[idx[i]];
        } else if (last) {
            memcpy(r->loss, lt, (size_t)N * sizeof *lt);
            memcpy(r->wrong, wt, (size_t)N * sizeof *wt);
        }
        if (!last)
            TRY(eng_linf_sign_step(ctx, cur, grad, x, a->alpha, a->eps));
    }
    return eng_copy(ctx, &r->x, a->best ? best : cur);
}

/* ---- APGD (AutoAttack's apgd, l_inf) ---- */

typedef struct apgd_bufs {
    eng_tensor cur, old, next, xbest, xbest_adv, grad, grad_best;
} apgd_bufs;

static eng_status run_apgd(eng_model *m, ws *w, const eng_attack_spec *a, const eng_tensor *x, const int32_t *labels,
                           uint64_t seed, apgd_bufs *b, result *r, double *lt, bool *wt, bool *take, int32_t *idx)
{
    eng_ctx *ctx = w->ctx;
    const int64_t N = w->N;
    const int n_iter = a->steps;
    const int n_iter_2 = (int)fmax(floor(0.22 * n_iter), 1), n_iter_min = (int)fmax(floor(0.06 * n_iter), 1);
    const int size_decr = (int)fmax(floor(0.03 * n_iter), 1);
    eng_status st = ENG_OK;
    double *loss_steps = calloc((size_t)n_iter * (size_t)N, sizeof(double));
    double *loss_best = malloc((size_t)N * sizeof(double)), *best_last_check = malloc((size_t)N * sizeof(double));
    float *step = malloc((size_t)N * sizeof(float));
    bool *acc = malloc((size_t)N), *reduced_last = malloc((size_t)N), *fl = malloc((size_t)N);
    if (!loss_steps || !loss_best || !best_last_check || !step || !acc || !reduced_last || !fl) {
        st = eng_fail(ENG_ERR_NOMEM, "apgd: out of memory");
        goto out;
    }
#define T(expr)                     \
    if ((st = (expr)) != ENG_OK)    \
        goto out;
    /* start on the sphere of the eps-ball, as AutoAttack's x + eps * t / max|t| */
    T(eng_linf_random_start(ctx, &b->cur, x, a->eps, seed, true));
    T(eng_copy(ctx, &b->xbest, &b->cur));
    T(eng_copy(ctx, &b->xbest_adv, &b->cur));
    T(probe(m, w, a, &b->cur, labels, lt, wt, &b->grad));
    T(eng_copy(ctx, &b->grad_best, &b->grad));
    for (int64_t n = 0; n < N; n++) {
        acc[n] = !wt[n];
        loss_best[n] = lt[n];
        best_last_check[n] = lt[n];
        reduced_last[n] = true; /* AutoAttack: reduced_last_check = ones */
        step[n] = 2.0f * a->eps;
    }
    T(eng_copy(ctx, &b->old, &b->cur));
    int k = n_iter_2, counter3 = 0;
    for (int i = 0; i < n_iter; i++) {
        if (stop_asked(a)) {
            st = eng_fail(ENG_ERR_CANCELLED, "attack: cancelled at step %d of %d", i, n_iter);
            goto out;
        }
        /* x_next = P(x + a (z - x) + (1 - a)(x - x_old)), a = 1 on the first step */
        T(eng_apgd_step(ctx, &b->next, &b->cur, &b->old, &b->grad, x, step, a->eps, i > 0 ? 0.75f : 1.0f));
        T(eng_copy(ctx, &b->old, &b->cur));
        T(eng_copy(ctx, &b->cur, &b->next));
        T(probe(m, w, a, &b->cur, labels, lt, wt, &b->grad));
        for (int64_t n = 0; n < N; n++)
            take[n] = wt[n];
        int nk = rows_where(take, N, idx);
        T(eng_copy_rows(ctx, &b->xbest_adv, &b->cur, idx, nk));
        for (int64_t n = 0; n < N; n++) {
            acc[n] = acc[n] && !wt[n];
            loss_steps[(size_t)i * N + n] = lt[n];
            take[n] = lt[n] > loss_best[n];
        }
        nk = rows_where(take, N, idx);
        T(eng_copy_rows(ctx, &b->xbest, &b->cur, idx, nk));
        T(eng_copy_rows(ctx, &b->grad_best, &b->grad, idx, nk));
        for (int j = 0; j < nk; j++)
            loss_best[idx[j]] = lt[idx[j]];
        if (++counter3 == k) {
            for (int64_t n = 0; n < N; n++) {
                /* too few of the last k steps increased the loss ... */
                int up = 0;
                for (int c = 0; c < k; c++) {
                    int j = i - c, jm = j - 1;
                    double prev = jm >= 0 ? loss_steps[(size_t)jm * N + n] : 0.0; /* torch's [-1]: an unwritten row */
                    up += loss_steps[(size_t)j * N + n] > prev;
                }
                bool osc = up <= k * 0.75;
                /* ... or no step-size cut last time and no improvement since */
                bool no_impr = !reduced_last[n] && best_last_check[n] >= loss_best[n];
                fl[n] = osc || no_impr;
                reduced_last[n] = fl[n];
                best_last_check[n] = loss_best[n];
                if (fl[n])
                    step[n] /= 2.0f;
            }
            nk = rows_where(fl, N, idx);
            T(eng_copy_rows(ctx, &b->cur, &b->xbest, idx, nk));
            T(eng_copy_rows(ctx, &b->grad, &b->grad_best, idx, nk));
            k = k - size_decr > n_iter_min ? k - size_decr : n_iter_min;
            counter3 = 0;
        }
    }
#undef T
    /* broken at some iterate: that iterate; otherwise the highest-loss one */
    for (int64_t n = 0; n < N; n++)
        take[n] = !acc[n];
    int nk = rows_where(take, N, idx);
    if ((st = eng_copy(ctx, &r->x, &b->xbest)) == ENG_OK)
        st = eng_copy_rows(ctx, &r->x, &b->xbest_adv, idx, nk);
    for (int64_t n = 0; n < N; n++) {
        r->wrong[n] = !acc[n];
        r->loss[n] = loss_best[n];
    }
out:
    free(loss_steps);
    free(loss_best);
    free(best_last_check);
    free(step);
    free(acc);
    free(reduced_last);
    free(fl);
    return st;
}

/* ---- driver ---- */

eng_status eng_attack_run(eng_model *m, const eng_attack_spec *a, const eng_tensor *x, const int32_t *labels,
                          eng_tensor *x_adv, bool *fooled, float *loss)
{
    eng_ctx *ctx = eng_model_ctx(m);
    const int K = eng_model_get_spec(m)->num_classes;
    TRY(eng_attack_check(a, K));
    if (!x || !x_adv || !labels || x->ndim != 4 || !eng_tensor_same_shape(x, x_adv))
        return eng_fail(ENG_ERR_ARG, "attack: x and x_adv must be 4-D tensors of the same shape, with labels");
    if (x->data == x_adv->data)
        return eng_fail(ENG_ERR_ARG, "attack: x_adv must not alias x");
    const int64_t N = x->dim[0];
    if (N < 1)
        return eng_fail(ENG_ERR_ARG, "attack: empty batch");
    for (int64_t n = 0; n < N; n++)
        if (labels[n] < 0 || labels[n] >= K)
            return eng_fail(ENG_ERR_ARG, "attack: label %d of example %lld is outside [0, %d)", labels[n],
                            (long long)n, K);
    bool in_unit = false;
    double d0;
    TRY(eng_linf_dist(ctx, x, x, &d0, &in_unit));
    if (!in_unit)
        return eng_fail(ENG_ERR_ARG, "attack: inputs must be pixels in [0, 1]");

    eng_status st = ENG_OK;
    ws w = {0};
    result r = {0}, sel = {0};
    eng_tensor bufs[9];
    memset(bufs, 0, sizeof bufs);
    double *lt = malloc((size_t)N * sizeof(double));
    bool *wt = malloc((size_t)N), *take = malloc((size_t)N), *have = calloc((size_t)N, 1);
    int32_t *idx = malloc((size_t)N * sizeof(int32_t));
    r.loss = malloc((size_t)N * sizeof(double));
    r.wrong = malloc((size_t)N);
    sel.loss = malloc((size_t)N * sizeof(double));
    sel.wrong = malloc((size_t)N);
    if (!lt || !wt || !take || !have || !idx || !r.loss || !r.wrong || !sel.loss || !sel.wrong) {
        st = eng_fail(ENG_ERR_NOMEM, "attack: out of memory");
        goto done;
    }
    if ((st = ws_init(&w, ctx, N, K)) != ENG_OK)
        goto done;
    for (int i = 0; i < 9 && st == ENG_OK; i++)
        st = eng_ctx_tensor_alloc(ctx, &bufs[i], 4, x->dim, ENG_LAYOUT_NCHW);
    if (st != ENG_OK)
        goto done;
    r.x = bufs[0];
    for (int rs = 0; rs < a->restarts && st == ENG_OK; rs++) {
        uint64_t seed = eng_hash64(a->seed, 0xa77ac4u + (uint64_t)rs);
        if (a->kind == ENG_ATTACK_APGD_CE || a->kind == ENG_ATTACK_APGD_DLR) {
            apgd_bufs b = {bufs[1], bufs[2], bufs[3], bufs[4], bufs[5], bufs[6], bufs[7]};
            st = run_apgd(m, &w, a, x, labels, seed, &b, &r, lt, wt, take, idx);
        } else {
            st = run_pgd(m, &w, a, x, labels, seed, &bufs[1], &bufs[2], &bufs[3], &r, lt, wt, take, idx);
        }
        if (st != ENG_OK)
            break;
        /* keep, per example, a restart that fools the model, else the highest loss */
        for (int64_t n = 0; n < N; n++) {
            take[n] = !have[n] || (!sel.wrong[n] && (r.wrong[n] || r.loss[n] > sel.loss[n]));
            if (take[n]) {
                have[n] = true;
                sel.wrong[n] = r.wrong[n];
                sel.loss[n] = r.loss[n];
            }
        }
        int k = rows_where(take, N, idx);
        st = eng_copy_rows(ctx, x_adv, &r.x, idx, k);
    }
    if (st == ENG_OK)
        for (int64_t n = 0; n < N; n++) {
            if (fooled)
                fooled[n] = sel.wrong[n];
            if (loss)
                loss[n] = (float)sel.loss[n];
        }
done:
    if (w.ctx)
        ws_free(&w);
    for (int i = 0; i < 9; i++)
        eng_ctx_tensor_free(ctx, &bufs[i]);
    free(lt), free(wt), free(take), free(have), free(idx);
    free(r.loss), free(r.wrong), free(sel.loss), free(sel.wrong);
    return st;
}
