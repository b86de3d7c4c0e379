/* The rtaas side of `make bench`: the same cases as bench_torch.py, timed as a median after a
 * warm-up, plus a per-shape table of ResNet-50's convolutions on the oneDNN and GEMM paths. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"

#define CHECK(expr)                                                                                   \
    do {                                                                                              \
        eng_status s_ = (expr);                                                                       \
        if (s_ != ENG_OK) {                                                                           \
            fprintf(stderr, "bench_rtaas: %s: %s (%s) at %s:%d\n", #expr, eng_strerror(s_), eng_last_error(), \
                    __FILE__, __LINE__);                                                              \
            rc = 1;                                                                                   \
            goto out;                                                                                 \
        }                                                                                             \
    } while (0)

#define MAX_ITERS 256

typedef struct bench_opts {
    eng_conv_algo conv;
    int threads, warmup, iters;
    int verbose;     /* print every step's time to stderr */
    double budget_s; /* > 0: stop timing once this much has run and at least MIN_ITERS are done,
                        and end the warm-up after one step longer than 10 s */
} bench_opts;

#define MIN_ITERS 5

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* What the whole machine and this process have spent on the CPUs so far, in seconds, to tell
 * how much of a timed section other processes took (the machine here is shared). */
typedef struct cpu_mark {
    double busy, total, self;
} cpu_mark;

static cpu_mark cpu_mark_now(void)
{
    cpu_mark m = {0, 0, 0};
    unsigned long long v[8] = {0};
    FILE *f = fopen("/proc/stat", "r");
    if (f) {
        if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                   &v[6], &v[7]) == 8) {
            const double tick = 1.0 / (double)sysconf(_SC_CLK_TCK);
            m.busy = (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) * tick;
            m.total = m.busy + (double)(v[3] + v[4]) * tick;
        }
        fclose(f);
    }
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        m.self = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec * 1e-6;
    return m;
}

/* Percent of the machine's CPU capacity that other processes used between a and b. */
static double others_pct(cpu_mark a, cpu_mark b)
{
    double total = b.total - a.total, others = (b.busy - a.busy) - (b.self - a.self);
    if (!(total > 0))
        return 0;
    return others > 0 ? 100.0 * others / total : 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of ts[0..n) (sorts ts). */
static double median(double *ts, int n)
{
    qsort(ts, (size_t)n, sizeof *ts, cmp_double);
    return n % 2 ? ts[n / 2] : 0.5 * (ts[n / 2 - 1] + ts[n / 2]);
}

static void fill_uniform(float *p, int64_t n, uint64_t seed, float lo, float hi)
{
    for (int64_t i = 0; i < n; i++)
        p[i] = lo + (hi - lo) * eng_uniform(seed, (uint64_t)i);
}

/* Sum and sum of absolute values of a host copy of t, to compare runs and catch NaNs. */
static eng_status checksum(eng_ctx *ctx, const eng_tensor *t, double *sum, double *asum)
{
    eng_tensor h = ENG_TENSOR_INIT;
    eng_status s = eng_tensor_alloc_host(&h, t->ndim, t->dim, ENG_LAYOUT_NCHW);
    if (s == ENG_OK)
        s = eng_ctx_download(ctx, &h, t);
    *sum = *asum = 0;
    if (s == ENG_OK)
        for (int64_t i = 0; i < eng_tensor_numel(&h); i++) {
            *sum += h.data[i];
            *asum += fabs(h.data[i]);
        }
    eng_tensor_cleanup(&h);
    return s;
}

/* ---- whole-model cases ---- */

typedef enum { KIND_FWD, KIND_PGD, KIND_TRAIN } case_kind;

typedef struct model_case {
    const char *name, *arch;
    int n, c, size, classes;
    case_kind kind;
    float mean[3], std[3];
} model_case;

static const model_case CASES[] = {
    {"resnet50_fwd_b8", "resnet50", 8, 3, 224, 1000, KIND_FWD, {0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}},
    {"resnet50_pgd_step_b8", "resnet50", 8, 3, 224, 1000, KIND_PGD, {0.485f, 0.456f, 0.406f},
     {0.229f, 0.224f, 0.225f}},
    {"resnet20_train_b128", "resnet20", 128, 3, 32, 10, KIND_TRAIN, {0.4914f, 0.4822f, 0.4465f},
     {0.2470f, 0.2435f, 0.2616f}},
    {"smallcnn_train_b128", "smallcnn", 128, 1, 28, 10, KIND_TRAIN, {0.1307f}, {0.3081f}},
};

static int run_model_case(const model_case *mc, const bench_opts *o)
{
    int rc = 0;
    eng_ctx *ctx = NULL;
    eng_model *m = NULL;
    eng_tensor x = ENG_TENSOR_INIT, dlogits = ENG_TENSOR_INIT;
    int32_t *labels = NULL;
    double ts[MAX_ITERS], first_loss = NAN, last_loss = NAN, sum = 0, asum = 0;
    const eng_tensor *logits = NULL, *dx = NULL;

    CHECK(eng_ctx_new(&ctx, &(eng_ctx_opts){.device = "cpu", .threads = o->threads, .conv = o->conv}));
    eng_model_spec spec = {.arch = mc->arch, .num_classes = mc->classes};
    for (int i = 0; i < mc->c; i++) {
        spec.mean[i] = mc->mean[i];
        spec.std[i] = mc->std[i];
    }
    CHECK(eng_model_new(ctx, &spec, &m));
    CHECK(eng_model_init(m, 42));

    CHECK(eng_tensor_alloc4(&x, mc->n, mc->c, mc->size, mc->size));
    fill_uniform(x.data, eng_tensor_numel(&x), 1, 0.0f, 1.0f);
    CHECK(eng_ctx_tensor_alloc(ctx, &dlogits, 2, (int64_t[]){mc->n, mc->classes}, ENG_LAYOUT_NCHW));
    labels = malloc((size_t)mc->n * sizeof *labels);
    if (!labels) {
        fprintf(stderr, "bench_rtaas: out of memory\n");
        rc = 1;
        goto out;
    }
    for (int i = 0; i < mc->n; i++)
        labels[i] = (int32_t)(eng_hash64(2, (uint64_t)i) % (uint64_t)mc->classes);

    const eng_sgd_desc sgd = {.lr = 0.1f, .momentum = 0.9f, .weight_decay = 5e-4f};
    const float scale = 1.0f / (float)mc->n;
    int timed = 0;
    double spent = 0;
    cpu_mark mark0 = {0, 0, 0};
    for (int it = 0; it < o->warmup + o->iters; it++) {
        if (it == o->warmup)
            mark0 = cpu_mark_now();
        if (o->budget_s > 0 && timed >= MIN_ITERS && spent > o->budget_s * 1e3)
            break;
        double loss = NAN, t0 = now_ms();
        switch (mc->kind) {
        case KIND_FWD:
            CHECK(eng_model_forward(m, &x, &(eng_forward_opts){.mode = ENG_MODE_EVAL, .grads = ENG_GRAD_NONE},
                                    &logits));
            break;
        case KIND_PGD:
            CHECK(eng_model_forward(m, &x, &(eng_forward_opts){.mode = ENG_MODE_EVAL, .grads = ENG_GRAD_INPUT},
                                    &logits));
            CHECK(eng_xent(ctx, logits, labels, &loss, NULL, &dlogits, scale));
            CHECK(eng_model_backward(m, &dlogits, NULL, &dx));
            break;
        case KIND_TRAIN:
            CHECK(eng_model_forward(m, &x, &(eng_forward_opts){.mode = ENG_MODE_TRAIN, .grads = ENG_GRAD_PARAMS},
                                    &logits));
            CHECK(eng_xent(ctx, logits, labels, &loss, NULL, &dlogits, scale));
            CHECK(eng_model_backward(m, &dlogits, NULL, NULL));
            CHECK(eng_model_sgd_step(m, &sgd, it == 0));
            break;
        }
        double dt = now_ms() - t0;
        if (o->verbose)
            fprintf(stderr, "%s step %d%s: %.2f ms\n", mc->name, it, it < o->warmup ? " (warm-up)" : "", dt);
        if (it >= o->warmup) {
            ts[timed++] = dt;
            spent += dt;
        } else if (o->budget_s > 0 && dt > 10e3) {
            it = o->warmup - 1; /* a step this slow has warmed up whatever it caches */
        }
        if (it == 0)
            first_loss = loss * scale;
        last_loss = loss * scale;
    }

    /* Sanity: finite outputs, a non-zero input gradient, a training loss that moved. */
    const char *sanity = "ok";
    if (mc->kind == KIND_PGD) {
        CHECK(checksum(ctx, dx, &sum, &asum));
        if (!(asum > 0) || !isfinite(asum))
            sanity = "BAD-input-gradient";
    } else {
        CHECK(checksum(ctx, logits, &sum, &asum));
        if (!isfinite(asum) || !(asum > 0))
            sanity = "BAD-logits";
    }
    if (mc->kind == KIND_TRAIN && !(last_loss < first_loss))
        sanity = "BAD-loss-did-not-fall";
    if (mc->kind != KIND_FWD && !isfinite(last_loss))
        sanity = "BAD-loss";

    const double others = others_pct(mark0, cpu_mark_now());
    double t_min = 1e300, t_max = 0;
    for (int i = 0; i < timed; i++) {
        t_min = ts[i] < t_min ? ts[i] : t_min;
        t_max = ts[i] > t_max ? ts[i] : t_max;
    }
    double med = median(ts, timed);
    printf("rtaas %s %s median_ms=%.2f min_ms=%.2f max_ms=%.2f iters=%d threads=%d loss_first=%.4f "
           "loss_last=%.4f checksum=%.6g abssum=%.6g others_cpu_pct=%.1f sanity=%s\n",
           mc->name, eng_ctx_backend_name(ctx), med, t_min, t_max, timed, eng_ctx_threads(ctx), first_loss,
           last_loss, sum, asum, others, sanity);
    printf("rtaas_result %s %s %.2f %.1f\n", mc->name, eng_ctx_backend_name(ctx), med, others);
    if (strncmp(sanity, "BAD", 3) == 0)
        rc = 1;
out:
    free(labels);
    eng_ctx_tensor_free(ctx, &dlogits);
    eng_tensor_cleanup(&x);
    eng_model_free(m);
    eng_ctx_free(ctx);
    return rc;
}

/* ---- whole API calls: a PGD-20 attack, the linear-probe pipeline, an LwF epoch ----
 * One timed step is one call of the engine's public API (eng_attack_run, eng_extract_features
 * plus eng_train_natural on a head, eng_train_lwf), as a job would make it. */

typedef struct timing {
    double ts[MAX_ITERS];
    int timed;
    double med, t_min, t_max, others;
} timing;

/* One step of a case; `it` counts from 0, warm-up steps first. Returns 0 or 1 (error printed). */
typedef int (*step_fn)(void *state, int it);

/* The protocol of run_model_case (warm-up, median, budget, share of other processes) around
 * any step function. */
static int time_steps(const bench_opts *o, const char *name, step_fn step, void *state, timing *t)
{
    double spent = 0;
    cpu_mark mark0 = cpu_mark_now();
    t->timed = 0;
    for (int it = 0; it < o->warmup + o->iters; it++) {
        if (it == o->warmup)
            mark0 = cpu_mark_now();
        if (o->budget_s > 0 && t->timed >= MIN_ITERS && spent > o->budget_s * 1e3)
            break;
        const double t0 = now_ms();
        if (step(state, it) != 0)
            return 1;
        const double dt = now_ms() - t0;
        if (o->verbose)
            fprintf(stderr, "%s step %d%s: %.2f ms\n", name, it, it < o->warmup ? " (warm-up)" : "", dt);
        if (it >= o->warmup) {
            t->ts[t->timed++] = dt;
            spent += dt;
        } else if (o->budget_s > 0 && dt > 10e3) {
            it = o->warmup - 1; /* a step this slow has warmed up whatever it caches */
        }
    }
    t->others = others_pct(mark0, cpu_mark_now());
    t->t_min = 1e300;
    t->t_max = 0;
    for (int i = 0; i < t->timed; i++) {
        t->t_min = t->ts[i] < t->t_min ? t->ts[i] : t->t_min;
        t->t_max = t->ts[i] > t->t_max ? t->ts[i] : t->t_max;
    }
    double sorted[MAX_ITERS];
    memcpy(sorted, t->ts, (size_t)t->timed * sizeof *sorted);
    t->med = t->timed ? median(sorted, t->timed) : NAN;
    return 0;
}

static void print_result(const char *name, eng_ctx *ctx, const timing *t, const char *extra, const char *sanity)
{
    printf("rtaas %s %s median_ms=%.2f min_ms=%.2f max_ms=%.2f iters=%d threads=%d %s others_cpu_pct=%.1f "
           "sanity=%s\n",
           name, eng_ctx_backend_name(ctx), t->med, t->t_min, t->t_max, t->timed, eng_ctx_threads(ctx), extra,
           t->others, sanity);
    printf("rtaas_result %s %s %.2f %.1f\n", name, eng_ctx_backend_name(ctx), t->med, t->others);
}

/* Fraction of rows of logits (context memory, [N, K]) whose arg-max is the label. */
static eng_status accuracy(eng_ctx *ctx, const eng_tensor *logits, const int32_t *labels, double *acc)
{
    eng_tensor h = ENG_TENSOR_INIT;
    eng_status s = eng_tensor_alloc_host(&h, 2, logits->dim, ENG_LAYOUT_NCHW);
    if (s == ENG_OK)
        s = eng_ctx_download(ctx, &h, logits);
    const int64_t N = logits->dim[0], K = logits->dim[1];
    int64_t c = 0;
    for (int64_t n = 0; s == ENG_OK && n < N; n++) {
        int64_t best = 0;
        for (int64_t k = 1; k < K; k++)
            if (h.data[n * K + k] > h.data[n * K + best])
                best = k;
        c += best == labels[n];
    }
    *acc = (double)c / (double)N;
    eng_tensor_cleanup(&h);
    return s;
}

/* PGD-20 at l_inf 8/255, step 2/255, random start, cross-entropy, eval mode (Madry et al.). */
static const model_case ATTACK_CASES[] = {
    {"resnet20_pgd20_b128", "resnet20", 128, 3, 32, 10, KIND_PGD, {0.4914f, 0.4822f, 0.4465f},
     {0.2470f, 0.2435f, 0.2616f}},
    {"resnet50_pgd20_b8", "resnet50", 8, 3, 224, 1000, KIND_PGD, {0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}},
};
#define PGD_STEPS 20
#define PGD_EPS (8.0f / 255)
#define PGD_ALPHA (2.0f / 255)

typedef struct attack_state {
    eng_model *m;
    eng_attack_spec spec;
    eng_tensor x, x_adv; /* context memory */
    int32_t *labels;
    bool *fooled;
    float *loss;
} attack_state;

static int attack_step(void *p, int it)
{
    int rc = 0;
    attack_state *s = p;
    (void)it;
    CHECK(eng_attack_run(s->m, &s->spec, &s->x, s->labels, &s->x_adv, s->fooled, s->loss));
out:
    return rc;
}

static int run_attack_case(const model_case *mc, const bench_opts *o)
{
    int rc = 0;
    eng_ctx *ctx = NULL;
    eng_tensor xh = ENG_TENSOR_INIT;
    attack_state s = {.x = ENG_TENSOR_INIT, .x_adv = ENG_TENSOR_INIT};
    timing t;
    const eng_tensor *logits;

    CHECK(eng_ctx_new(&ctx, &(eng_ctx_opts){.device = "cpu", .threads = o->threads, .conv = o->conv}));
    eng_model_spec spec = {.arch = mc->arch, .num_classes = mc->classes};
    for (int i = 0; i < mc->c; i++) {
        spec.mean[i] = mc->mean[i];
        spec.std[i] = mc->std[i];
    }
    CHECK(eng_model_new(ctx, &spec, &s.m));
    CHECK(eng_model_init(s.m, 42));
    CHECK(eng_tensor_alloc4(&xh, mc->n, mc->c, mc->size, mc->size));
    fill_uniform(xh.data, eng_tensor_numel(&xh), 1, 0.0f, 1.0f);
    CHECK(eng_ctx_tensor_alloc(ctx, &s.x, 4, xh.dim, ENG_LAYOUT_NCHW));
    CHECK(eng_ctx_tensor_alloc(ctx, &s.x_adv, 4, xh.dim, ENG_LAYOUT_NCHW));
    CHECK(eng_ctx_upload(ctx, &s.x, &xh));
    s.labels = malloc((size_t)mc->n * sizeof *s.labels);
    s.fooled = malloc((size_t)mc->n * sizeof *s.fooled);
    s.loss = malloc((size_t)mc->n * sizeof *s.loss);
    if (!s.labels || !s.fooled || !s.loss) {
        fprintf(stderr, "bench_rtaas: out of memory\n");
        rc = 1;
        goto out;
    }
    for (int i = 0; i < mc->n; i++)
        s.labels[i] = (int32_t)(eng_hash64(2, (uint64_t)i) % (uint64_t)mc->classes);
    eng_attack_defaults(&s.spec, ENG_ATTACK_PGD, PGD_EPS, PGD_STEPS);
    s.spec.alpha = PGD_ALPHA;
    s.spec.random_start = true;
    s.spec.restarts = 1;
    s.spec.best = false;
    s.spec.seed = 7;

    /* clean accuracy and loss, untimed: the attack's result is judged against them */
    double clean_acc = 0, clean_loss = 0;
    CHECK(eng_model_forward(s.m, &s.x, &(eng_forward_opts){.mode = ENG_MODE_EVAL}, &logits));
    CHECK(accuracy(ctx, logits, s.labels, &clean_acc));
    CHECK(eng_xent(ctx, logits, s.labels, &clean_loss, NULL, NULL, 1.0f));
    clean_loss /= mc->n;

    if (time_steps(o, mc->name, attack_step, &s, &t) != 0) {
        rc = 1;
        goto out;
    }

    /* Sanity: the last attack's points lie in the eps-ball and in [0,1]; its loss is finite. */
    double linf = 0, mean_loss = 0;
    bool in_unit = false;
    int robust = 0;
    CHECK(eng_linf_dist(ctx, &s.x_adv, &s.x, &linf, &in_unit));
    for (int i = 0; i < mc->n; i++) {
        robust += !s.fooled[i];
        mean_loss += s.loss[i] / mc->n;
    }
    const char *sanity = "ok";
    if (!in_unit || !(linf <= PGD_EPS + 1e-6))
        sanity = "BAD-outside-the-eps-ball";
    else if (!isfinite(mean_loss) || !(mean_loss > clean_loss))
        sanity = "BAD-loss-did-not-rise";
    char extra[256];
    snprintf(extra, sizeof extra,
             "attack=pgd%d eps=8/255 alpha=2/255 clean_acc=%.4f adv_acc=%.4f clean_loss=%.4f adv_loss=%.4f "
             "linf=%.5f",
             PGD_STEPS, clean_acc, (double)robust / mc->n, clean_loss, mean_loss, linf);
    print_result(mc->name, ctx, &t, extra, sanity);
    if (strncmp(sanity, "BAD", 3) == 0)
        rc = 1;
out:
    free(s.labels);
    free(s.fooled);
    free(s.loss);
    eng_ctx_tensor_free(ctx, &s.x);
    eng_ctx_tensor_free(ctx, &s.x_adv);
    eng_tensor_cleanup(&xh);
    eng_model_free(s.m);
    eng_ctx_free(ctx);
    return rc;
}

/* The transfer cases: the small CNN on PIPE_N random 28x28 grayscale images with random labels. */
#define PIPE_N 10000
#define PIPE_CLASSES 10
#define FEATURE_BATCH 256
#define LINEAR_EPOCHS 10
#define LWF_LAMBDA 0.01f

typedef enum { PIPE_LINEAR, PIPE_LWF } pipe_kind;

static const struct pipe_case {
    const char *name;
    pipe_kind kind;
} PIPE_CASES[] = {
    {"smallcnn_linear_pipeline", PIPE_LINEAR},
    {"smallcnn_lwf_epoch", PIPE_LWF},
};

/* An eng_source over images held in host memory, [n, 1, 28, 28]. */
typedef struct host_images {
    const float *x;
    const int32_t *labels;
    int64_t per; /* floats per image */
} host_images;

static eng_status host_batch(void *user, const int64_t *idx, int count, uint64_t aug_seed, eng_tensor *x,
                             int32_t *labels)
{
    (void)aug_seed; /* no augmentation: both cases run with it off */
    const host_images *h = user;
    for (int i = 0; i < count; i++) {
        memcpy(x->data + (int64_t)i * h->per, h->x + idx[i] * h->per, (size_t)h->per * sizeof(float));
        labels[i] = h->labels[idx[i]];
    }
    return ENG_OK;
}

typedef struct pipe_state {
    const bench_opts *o;
    eng_ctx *ctx;
    eng_model *m;      /* linear: the frozen backbone; lwf: the source model */
    eng_model *target; /* lwf: the model being fine-tuned */
    eng_source src;
    const int32_t *labels;
    const float *z0;   /* lwf: the source model's features of every image */
    eng_train_opts topts;
    double feat_ms[MAX_ITERS], head_ms[MAX_ITERS];
    double loss_first, loss_last, acc_last; /* of the last step's training: first and last epoch */
} pipe_state;

static void record_log(pipe_state *s, const eng_train_log *log)
{
    s->loss_first = log->n ? log->epochs[0].loss : NAN;
    s->loss_last = log->n ? log->epochs[log->n - 1].loss : NAN;
    s->acc_last = log->n ? log->epochs[log->n - 1].accuracy : NAN;
}

/* Features of every image in batches of FEATURE_BATCH, then a fresh linear head trained on
 * them for LINEAR_EPOCHS: what engine/job.c does for method "linear". */
static int linear_step(void *p, int it)
{
    int rc = 0;
    pipe_state *s = p;
    float *feats = NULL;
    int64_t F = 0;
    eng_model *head = NULL;
    eng_train_log log = {0};
    const double t0 = now_ms();
    CHECK(eng_extract_features(s->m, &s->src, FEATURE_BATCH, NULL, NULL, &feats, &F));
    const double t1 = now_ms();
    eng_model_spec hs = {.arch = "head", .num_classes = PIPE_CLASSES, .in_channels = (int)F};
    CHECK(eng_model_new(s->ctx, &hs, &head));
    CHECK(eng_model_init(head, eng_hash64(3, (uint64_t)it)));
    eng_source fs;
    eng_feature_data fd;
    eng_feature_source(&fs, &fd, feats, s->labels, PIPE_N, F, PIPE_CLASSES);
    CHECK(eng_train_natural(head, &fs, &s->topts, &log));
    const double t2 = now_ms();
    if (it >= s->o->warmup) {
        s->feat_ms[it - s->o->warmup] = t1 - t0;
        s->head_ms[it - s->o->warmup] = t2 - t1;
    }
    record_log(s, &log);
out:
    eng_train_log_cleanup(&log);
    eng_model_free(head);
    free(feats);
    return rc;
}

/* One epoch of Learning without Forgetting; the target keeps training from step to step. */
static int lwf_step(void *p, int it)
{
    int rc = 0;
    pipe_state *s = p;
    eng_train_log log = {0};
    (void)it;
    /* warm_start 0: every step trains all weights but batch norm's (the job default, 0.5, would
     * train only the classifier for the first half of the steps) */
    CHECK(eng_train_lwf(s->target, &s->src, s->z0, &s->topts, LWF_LAMBDA, false, 0.0f, &log));
    record_log(s, &log);
out:
    eng_train_log_cleanup(&log);
    return rc;
}

static int run_pipe_case(const struct pipe_case *pc, const bench_opts *o)
{
    int rc = 0;
    pipe_state s = {.o = o};
    float *x = NULL, *z0 = NULL;
    int32_t *labels = NULL;
    int64_t F = 0;
    timing t;
    host_images hi;

    CHECK(eng_ctx_new(&s.ctx, &(eng_ctx_opts){.device = "cpu", .threads = o->threads, .conv = o->conv}));
    const eng_model_spec spec = {.arch = "smallcnn", .num_classes = PIPE_CLASSES, .mean = {0.1307f}, .std = {0.3081f}};
    CHECK(eng_model_new(s.ctx, &spec, &s.m));
    CHECK(eng_model_init(s.m, 42));
    const int64_t per = 28 * 28;
    x = malloc((size_t)PIPE_N * (size_t)per * sizeof *x);
    labels = malloc((size_t)PIPE_N * sizeof *labels);
    if (!x || !labels) {
        fprintf(stderr, "bench_rtaas: out of memory\n");
        rc = 1;
        goto out;
    }
    fill_uniform(x, PIPE_N * per, 1, 0.0f, 1.0f);
    for (int64_t i = 0; i < PIPE_N; i++)
        labels[i] = (int32_t)(eng_hash64(2, (uint64_t)i) % PIPE_CLASSES);
    hi = (host_images){.x = x, .labels = labels, .per = per};
    s.src = (eng_source){.n = PIPE_N, .num_classes = PIPE_CLASSES, .c = 1, .h = 28, .w = 28, .user = &hi,
                         .batch = host_batch};
    s.labels = labels;
    eng_train_defaults(&s.topts); /* batch 128, momentum 0.9, weight decay 5e-4, no schedule */
    s.topts.seed = 1;
    step_fn step;
    if (pc->kind == PIPE_LINEAR) {
        s.topts.epochs = LINEAR_EPOCHS;
        s.topts.lr = 0.1f;
        step = linear_step;
    } else {
        /* untimed: the source model's features, then the target: the source's weights with a
         * fresh classifier, as engine/job.c builds it */
        CHECK(eng_extract_features(s.m, &s.src, FEATURE_BATCH, NULL, NULL, &z0, &F));
        s.z0 = z0;
        CHECK(eng_model_new(s.ctx, &spec, &s.target));
        CHECK(eng_model_init(s.target, 42));
        CHECK(eng_model_init_prefix(s.target, 43, "fc."));
        s.topts.epochs = 1;
        s.topts.lr = 0.01f;
        step = lwf_step;
    }

    if (time_steps(o, pc->name, step, &s, &t) != 0) {
        rc = 1;
        goto out;
    }

    const char *sanity = "ok";
    if (!isfinite(s.loss_first) || !isfinite(s.loss_last))
        sanity = "BAD-loss";
    else if (pc->kind == PIPE_LINEAR && !(s.loss_last < s.loss_first))
        sanity = "BAD-loss-did-not-fall";
    char extra[256];
    if (pc->kind == PIPE_LINEAR) {
        const int n = t.timed;
        snprintf(extra, sizeof extra,
                 "features_ms=%.2f head_ms=%.2f epochs=%d loss_epoch1=%.4f loss_last=%.4f acc_last=%.4f",
                 n ? median(s.feat_ms, n) : NAN, n ? median(s.head_ms, n) : NAN, LINEAR_EPOCHS, s.loss_first,
                 s.loss_last, s.acc_last);
    } else {
        snprintf(extra, sizeof extra, "lambda=%g loss=%.4f acc=%.4f", (double)LWF_LAMBDA, s.loss_last, s.acc_last);
    }
    print_result(pc->name, s.ctx, &t, extra, sanity);
    if (strncmp(sanity, "BAD", 3) == 0)
        rc = 1;
out:
    free(x);
    free(z0);
    free(labels);
    eng_model_free(s.target);
    eng_model_free(s.m);
    eng_ctx_free(s.ctx);
    return rc;
}

/* ---- ResNet-50's convolutions, one at a time ---- */

typedef struct conv_shape {
    int c, k, h, r, stride, count; /* count: occurrences in one ResNet-50 forward */
    const char *where;
} conv_shape;

/* torchvision ResNet-50 (v1.5: stride on the 3x3), input 224; h is the input size. */
static const conv_shape SHAPES[] = {
    {3, 64, 224, 7, 2, 1, "conv1"},
    {64, 64, 56, 1, 1, 1, "layer1.0.conv1"},
    {64, 64, 56, 3, 1, 3, "layer1.*.conv2"},
    {64, 256, 56, 1, 1, 4, "layer1.*.conv3+ds"},
    {256, 64, 56, 1, 1, 2, "layer1.1-2.conv1"},
    {256, 128, 56, 1, 1, 1, "layer2.0.conv1"},
    {128, 128, 56, 3, 2, 1, "layer2.0.conv2"},
    {128, 512, 28, 1, 1, 4, "layer2.*.conv3"},
    {256, 512, 56, 1, 2, 1, "layer2.0.ds"},
    {512, 128, 28, 1, 1, 3, "layer2.1-3.conv1"},
    {128, 128, 28, 3, 1, 3, "layer2.1-3.conv2"},
    {512, 256, 28, 1, 1, 1, "layer3.0.conv1"},
    {256, 256, 28, 3, 2, 1, "layer3.0.conv2"},
    {256, 1024, 14, 1, 1, 6, "layer3.*.conv3"},
    {512, 1024, 28, 1, 2, 1, "layer3.0.ds"},
    {1024, 256, 14, 1, 1, 5, "layer3.1-5.conv1"},
    {256, 256, 14, 3, 1, 5, "layer3.1-5.conv2"},
    {1024, 512, 14, 1, 1, 1, "layer4.0.conv1"},
    {512, 512, 14, 3, 2, 1, "layer4.0.conv2"},
    {512, 2048, 7, 1, 1, 3, "layer4.*.conv3"},
    {1024, 2048, 14, 1, 2, 1, "layer4.0.ds"},
    {2048, 512, 7, 1, 1, 2, "layer4.1-2.conv1"},
    {512, 512, 7, 3, 1, 2, "layer4.1-2.conv2"},
};
#define NSHAPES (int)(sizeof SHAPES / sizeof SHAPES[0])
#define CONV_N 8

typedef struct conv_run {
    double ms;
    eng_tensor y_host; /* NCHW copy of the output, to compare the two paths */
} conv_run;

/* Times y = relu(conv(x, w) + b) (BN folded, as in eval) on one path; x, w, b are host NCHW. */
static int time_conv(eng_conv_algo algo, const bench_opts *o, const conv_shape *sh, const eng_tensor *xh,
                     const eng_tensor *wh, const eng_tensor *bh, conv_run *res)
{
    int rc = 0;
    eng_ctx *ctx = NULL;
    eng_tensor x = ENG_TENSOR_INIT, w = ENG_TENSOR_INIT, b = ENG_TENSOR_INIT, y = ENG_TENSOR_INIT;
    eng_op_cache cache = {0};
    double ts[MAX_ITERS];
    const int pad = sh->r / 2, p = (sh->h + 2 * pad - sh->r) / sh->stride + 1;
    const eng_conv_desc d = {.stride = sh->stride, .pad = pad, .relu = true};

    CHECK(eng_ctx_new(&ctx, &(eng_ctx_opts){.device = "cpu", .threads = o->threads, .conv = algo}));
    CHECK(eng_ctx_tensor_alloc(ctx, &x, 4, xh->dim, eng_ctx_act_layout(ctx, sh->c)));
    CHECK(eng_ctx_tensor_alloc(ctx, &w, 4, wh->dim, ENG_LAYOUT_NCHW));
    CHECK(eng_ctx_tensor_alloc(ctx, &b, 1, bh->dim, ENG_LAYOUT_NCHW));
    CHECK(eng_ctx_tensor_alloc(ctx, &y, 4, (int64_t[]){CONV_N, sh->k, p, p}, eng_ctx_act_layout(ctx, sh->k)));
    CHECK(eng_ctx_upload(ctx, &x, xh));
    CHECK(eng_ctx_upload(ctx, &w, wh));
    CHECK(eng_ctx_upload(ctx, &b, bh));
    for (int it = 0; it < o->warmup + o->iters; it++) {
        double t0 = now_ms();
        CHECK(eng_conv2d_fwd(ctx, &y, &x, &w, &b, &d, &cache));
        double dt = now_ms() - t0;
        if (it >= o->warmup)
            ts[it - o->warmup] = dt;
    }
    res->ms = median(ts, o->iters);
    CHECK(eng_tensor_alloc_host(&res->y_host, 4, y.dim, ENG_LAYOUT_NCHW));
    CHECK(eng_ctx_download(ctx, &res->y_host, &y));
out:
    eng_op_cache_cleanup(&cache);
    eng_ctx_tensor_free(ctx, &x);
    eng_ctx_tensor_free(ctx, &w);
    eng_ctx_tensor_free(ctx, &b);
    eng_ctx_tensor_free(ctx, &y);
    eng_ctx_free(ctx);
    return rc;
}

static int run_conv_table(const bench_opts *o)
{
    int rc = 0;
    double tot_flop = 0, tot_dnn = 0, tot_gemm = 0;
    int tot_count = 0;
    const cpu_mark mark0 = cpu_mark_now();
    printf("%-18s %5s %5s %4s %2s %2s %3s %8s %10s %9s %10s %9s %7s %9s\n", "conv", "C", "K", "H", "R", "s", "n",
           "GFLOP", "onednn_ms", "GFLOP/s", "gemm_ms", "GFLOP/s", "ratio", "maxdiff");
    for (int i = 0; i < NSHAPES && rc == 0; i++) {
        const conv_shape *sh = &SHAPES[i];
        eng_tensor xh = ENG_TENSOR_INIT, wh = ENG_TENSOR_INIT, bh = ENG_TENSOR_INIT;
        conv_run dnn = {0}, gemm = {0};
        const int pad = sh->r / 2, p = (sh->h + 2 * pad - sh->r) / sh->stride + 1;
        const double flop = 2.0 * CONV_N * sh->k * p * p * sh->c * sh->r * sh->r;
        CHECK(eng_tensor_alloc4(&xh, CONV_N, sh->c, sh->h, sh->h));
        CHECK(eng_tensor_alloc4(&wh, sh->k, sh->c, sh->r, sh->r));
        CHECK(eng_tensor_alloc1(&bh, sh->k));
        fill_uniform(xh.data, eng_tensor_numel(&xh), 10 + (uint64_t)i, 0.0f, 1.0f);
        const float a = sqrtf(3.0f / (float)(sh->c * sh->r * sh->r));
        fill_uniform(wh.data, eng_tensor_numel(&wh), 100 + (uint64_t)i, -a, a);
        fill_uniform(bh.data, eng_tensor_numel(&bh), 1000 + (uint64_t)i, -0.1f, 0.1f);
        if ((rc = time_conv(ENG_CONV_ONEDNN, o, sh, &xh, &wh, &bh, &dnn)) == 0)
            rc = time_conv(ENG_CONV_GEMM, o, sh, &xh, &wh, &bh, &gemm);
        if (rc == 0) {
            /* Both paths must compute the same thing before their times mean anything. */
            double maxdiff = 0, maxref = 0;
            for (int64_t j = 0; j < eng_tensor_numel(&gemm.y_host); j++) {
                double dd = fabs((double)dnn.y_host.data[j] - gemm.y_host.data[j]);
                maxdiff = dd > maxdiff ? dd : maxdiff;
                maxref = fabs(gemm.y_host.data[j]) > maxref ? fabs(gemm.y_host.data[j]) : maxref;
            }
            int bad = !(maxdiff <= 1e-4 + 1e-4 * maxref);
            printf("%-18s %5d %5d %4d %2d %2d %3d %8.3f %10.3f %9.1f %10.3f %9.1f %7.2f %9.2e%s\n", sh->where, sh->c,
                   sh->k, sh->h, sh->r, sh->stride, sh->count, flop * 1e-9, dnn.ms, flop / dnn.ms * 1e-6, gemm.ms,
                   flop / gemm.ms * 1e-6, gemm.ms / dnn.ms, maxdiff, bad ? " MISMATCH" : "");
            if (bad)
                rc = 1;
            tot_count += sh->count;
            tot_flop += sh->count * flop;
            tot_dnn += sh->count * dnn.ms;
            tot_gemm += sh->count * gemm.ms;
        }
    out:
        eng_tensor_cleanup(&dnn.y_host);
        eng_tensor_cleanup(&gemm.y_host);
        eng_tensor_cleanup(&xh);
        eng_tensor_cleanup(&wh);
        eng_tensor_cleanup(&bh);
    }
    if (rc == 0)
        printf("%-18s %5s %5s %4s %2s %2s %3d %8.3f %10.3f %9.1f %10.3f %9.1f %7.2f\n", "total(x n)", "", "", "", "",
               "", tot_count, tot_flop * 1e-9, tot_dnn, tot_flop / tot_dnn * 1e-6, tot_gemm, tot_flop / tot_gemm * 1e-6,
               tot_gemm / tot_dnn);
    printf("others_cpu_pct=%.1f (share of the machine other processes used while the table ran)\n",
           others_pct(mark0, cpu_mark_now()));
    return rc;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_rtaas [--conv auto|onednn|gemm] [--threads N] [--warmup W] [--iters I]\n"
            "                   [--budget-s S] [--verbose] CASE\n"
            "  --budget-s: stop timing after S seconds once %d iterations are done\n"
            "  --verbose:  every step's time on stderr\n"
            "CASE: resnet50_fwd_b8 resnet50_pgd_step_b8 resnet20_train_b128 smallcnn_train_b128\n"
            "      resnet20_pgd20_b128 resnet50_pgd20_b8 (a whole PGD-20 attack per step)\n"
            "      smallcnn_linear_pipeline (features of 10000 images + 10 epochs of a linear head)\n"
            "      smallcnn_lwf_epoch (one LwF epoch over 10000 images)\n"
            "      conv_table (ResNet-50 convolutions at batch 8, oneDNN against im2col+GEMM)\n",
            MIN_ITERS);
}

int main(int argc, char **argv)
{
    bench_opts o = {.conv = ENG_CONV_AUTO, .threads = 0, .warmup = 3, .iters = 7};
    const char *name = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 < argc && strcmp(a, "--conv") == 0) {
            const char *v = argv[++i];
            if (strcmp(v, "gemm") == 0)
                o.conv = ENG_CONV_GEMM;
            else if (strcmp(v, "onednn") == 0)
                o.conv = ENG_CONV_ONEDNN;
            else if (strcmp(v, "auto") == 0)
                o.conv = ENG_CONV_AUTO;
            else {
                usage();
                return 2;
            }
        } else if (i + 1 < argc && strcmp(a, "--threads") == 0) {
            o.threads = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(a, "--warmup") == 0) {
            o.warmup = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(a, "--iters") == 0) {
            o.iters = atoi(argv[++i]);
        } else if (strcmp(a, "--verbose") == 0) {
            o.verbose = 1;
        } else if (i + 1 < argc && strcmp(a, "--budget-s") == 0) {
            o.budget_s = atof(argv[++i]);
        } else if (a[0] != '-' && !name) {
            name = a;
        } else {
            usage();
            return 2;
        }
    }
    if (!name || o.threads < 0 || o.warmup < 0 || o.iters < 1 || o.iters > MAX_ITERS) {
        usage();
        return 2;
    }
    if (strcmp(name, "conv_table") == 0)
        return run_conv_table(&o);
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++)
        if (strcmp(name, CASES[i].name) == 0)
            return run_model_case(&CASES[i], &o);
    for (size_t i = 0; i < sizeof ATTACK_CASES / sizeof ATTACK_CASES[0]; i++)
        if (strcmp(name, ATTACK_CASES[i].name) == 0)
            return run_attack_case(&ATTACK_CASES[i], &o);
    for (size_t i = 0; i < sizeof PIPE_CASES / sizeof PIPE_CASES[0]; i++)
        if (strcmp(name, PIPE_CASES[i].name) == 0)
            return run_pipe_case(&PIPE_CASES[i], &o);
    usage();
    return 2;
}
