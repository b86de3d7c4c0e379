/* The rtaas side of `make bench` and `make bench-gpu`: the same cases as bench_torch.py, timed as
 * a median after a warm-up, plus a per-shape table of ResNet-50's convolutions on the CPU paths. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"

/* The first failure of the run: main reports ENG_ERR_UNSUPPORTED (BF16 before the backend has
 * it, say) as a row the benchmark scripts print and go past, not as a crash. */
static eng_status first_failure = ENG_OK;
static char first_message[512];

static void note_failure(eng_status s, const char *expr, const char *file, int line)
{
    if (first_failure == ENG_OK) {
        first_failure = s;
        snprintf(first_message, sizeof first_message, "%s", eng_last_error());
    }
    fprintf(stderr, "bench_rtaas: %s: %s (%s) at %s:%d\n", expr, eng_strerror(s), eng_last_error(), file, line);
}

#define CHECK(expr)                                                                                   \
    do {                                                                                              \
        eng_status s_ = (expr);                                                                       \
        if (s_ != ENG_OK) {                                                                           \
            note_failure(s_, #expr, __FILE__, __LINE__);                                              \
            rc = 1;                                                                                   \
            goto out;                                                                                 \
        }                                                                                             \
    } while (0)

#define MAX_ITERS 256

typedef struct bench_opts {
    eng_conv_algo conv;
    const char *device; /* "cpu", "cuda" or "cuda:N" */
    eng_math math;      /* CUDA math mode (the CPU computes in FP32 whatever is asked) */
    int threads, warmup, iters;
    int batch, size;    /* > 0: the case's batch and image size instead of its own (quick checks) */
    int verbose;     /* print every step's time to stderr */
    double budget_s; /* > 0: stop timing once this much has run and at least min_iters are done,
                        and end the warm-up after one step longer than 10 s */
    int min_iters;   /* MIN_ITERS unless --min-iters says otherwise */
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

static eng_status ctx_open(eng_ctx **ctx, const bench_opts *o, eng_conv_algo conv)
{
    return eng_ctx_new(ctx, &(eng_ctx_opts){.device = o->device, .threads = o->threads, .conv = conv, .math = o->math});
}

/* Waits until the device has finished the work queued on the model's context, so that a step's
 * time includes it. */
static eng_status sync_model(eng_model *m) { return eng_ctx_sync(eng_model_ctx(m)); }

/* ---- whole-model cases ---- */

typedef enum { KIND_FWD, KIND_PGD, KIND_TRAIN } case_kind;

typedef struct model_case {
    const char *name, *arch;
    int n, c, size, classes;
    case_kind kind;
    float mean[3], std[3];
    float eps, alpha; /* attack cases: l_inf radius; step size, 0 for eng_attack_defaults' */
} model_case;

/* The case with --batch and --size applied. */
static model_case resized(const model_case *mc, const bench_opts *o)
{
    model_case c = *mc;
    if (o->batch > 0)
        c.n = o->batch;
    if (o->size > 0)
        c.size = o->size;
    return c;
}

static const model_case CASES[] = {
    {"resnet50_fwd_b8", "resnet50", 8, 3, 224, 1000, KIND_FWD, {0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}, 0,
     0},
    {"resnet50_pgd_step_b8", "resnet50", 8, 3, 224, 1000, KIND_PGD, {0.485f, 0.456f, 0.406f},
     {0.229f, 0.224f, 0.225f}, 0, 0},
    {"resnet20_train_b128", "resnet20", 128, 3, 32, 10, KIND_TRAIN, {0.4914f, 0.4822f, 0.4465f},
     {0.2470f, 0.2435f, 0.2616f}, 0, 0},
    {"smallcnn_train_b128", "smallcnn", 128, 1, 28, 10, KIND_TRAIN, {0.1307f}, {0.3081f}, 0, 0},
};

static int run_model_case(const model_case *mc0, const bench_opts *o)
{
    int rc = 0;
    const model_case rmc = resized(mc0, o), *mc = &rmc;
    eng_ctx *ctx = NULL;
    eng_model *m = NULL;
    eng_tensor xh = ENG_TENSOR_INIT, x = ENG_TENSOR_INIT, dlogits = ENG_TENSOR_INIT;
    int32_t *labels = NULL;
    double ts[MAX_ITERS], first_loss = NAN, last_loss = NAN, sum = 0, asum = 0;
    const eng_tensor *logits = NULL, *dx = NULL;

    CHECK(ctx_open(&ctx, o, o->conv));
    eng_model_spec spec = {.arch = mc->arch, .num_classes = mc->classes};
    for (int i = 0; i < mc->c; i++) {
        spec.mean[i] = mc->mean[i];
        spec.std[i] = mc->std[i];
    }
    CHECK(eng_model_new(ctx, &spec, &m));
    CHECK(eng_model_init(m, 42));

    CHECK(eng_tensor_alloc4(&xh, mc->n, mc->c, mc->size, mc->size));
    fill_uniform(xh.data, eng_tensor_numel(&xh), 1, 0.0f, 1.0f);
    CHECK(eng_ctx_tensor_alloc(ctx, &x, 4, xh.dim, ENG_LAYOUT_NCHW));
    CHECK(eng_ctx_upload(ctx, &x, &xh));
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
        if (o->budget_s > 0 && timed >= o->min_iters && spent > o->budget_s * 1e3)
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
        CHECK(sync_model(m));
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
    eng_ctx_tensor_free(ctx, &x);
    eng_tensor_cleanup(&xh);
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
        if (o->budget_s > 0 && t->timed >= o->min_iters && spent > o->budget_s * 1e3)
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

/* One machine-readable line per result for bench/gpu: case, math, median ms per step, images
 * per step, sanity. */
static void print_row(const char *name, const bench_opts *o, double ms, int images, const char *sanity)
{
    printf("rtaas_row %s %s %.3f %d %s\n", name, eng_math_name(o->math), ms, images, sanity);
}

/* PGD-20, random start, summed cross-entropy, eval mode, last iterate (Madry et al.): at l_inf
 * 8/255 with step 2/255 on the CPU cases; at 4/255 with eng_attack_defaults' step (1/255 for 20
 * steps) on the GPU case. */
static const model_case ATTACK_CASES[] = {
    {"resnet20_pgd20_b128", "resnet20", 128, 3, 32, 10, KIND_PGD, {0.4914f, 0.4822f, 0.4465f},
     {0.2470f, 0.2435f, 0.2616f}, 8.0f / 255, 2.0f / 255},
    {"resnet50_pgd20_b8", "resnet50", 8, 3, 224, 1000, KIND_PGD, {0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f},
     8.0f / 255, 2.0f / 255},
    {"resnet50_pgd20_b128", "resnet50", 128, 3, 224, 1000, KIND_PGD, {0.485f, 0.456f, 0.406f},
     {0.229f, 0.224f, 0.225f}, 4.0f / 255, 0},
};
#define PGD_STEPS 20

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
    CHECK(sync_model(s->m));
out:
    return rc;
}

static int run_attack_case(const model_case *mc0, const bench_opts *o)
{
    int rc = 0;
    const model_case rmc = resized(mc0, o), *mc = &rmc;
    eng_ctx *ctx = NULL;
    eng_tensor xh = ENG_TENSOR_INIT;
    attack_state s = {.x = ENG_TENSOR_INIT, .x_adv = ENG_TENSOR_INIT};
    timing t;
    const eng_tensor *logits;

    CHECK(ctx_open(&ctx, o, o->conv));
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
    eng_attack_defaults(&s.spec, ENG_ATTACK_PGD, mc->eps, PGD_STEPS);
    if (mc->alpha > 0)
        s.spec.alpha = mc->alpha;
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
    if (!in_unit || !(linf <= s.spec.eps + 1e-6))
        sanity = "BAD-outside-the-eps-ball";
    else if (!isfinite(mean_loss) || !(mean_loss > clean_loss))
        sanity = "BAD-loss-did-not-rise";
    char extra[256];
    snprintf(extra, sizeof extra,
             "attack=pgd%d eps=%.3g/255 alpha=%.3g/255 batch=%d size=%d clean_acc=%.4f adv_acc=%.4f "
             "clean_loss=%.4f adv_loss=%.4f linf=%.5f",
             PGD_STEPS, s.spec.eps * 255.0, s.spec.alpha * 255.0, mc->n, mc->size, clean_acc, (double)robust / mc->n,
             clean_loss, mean_loss, linf);
    print_result(mc->name, ctx, &t, extra, sanity);
    print_row(mc->name, o, t.med, mc->n, sanity);
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
    CHECK(sync_model(head));
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
    CHECK(sync_model(s->target));
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

    CHECK(ctx_open(&s.ctx, o, o->conv));
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

/* ---- ResNet-50 at 224 for `make bench-gpu`: feature extraction and one LwF training step ----
 * Both read their images from host memory through an eng_source, as a job does (engine/job.c),
 * so a step includes the copies to the device. A step of resnet50_feat_b256 is one
 * eng_extract_features call over FEAT_BATCHES batches (and, reported apart as fwd_ms, the forward
 * alone of one batch already on the device); a step of resnet50_lwf_step_b128 is one training
 * step: the median eng_train_lwf call over LWF_STEPS batches, divided by LWF_STEPS. The PGD-20
 * case of bench-gpu is resnet50_pgd20_b128 in ATTACK_CASES. */
#define FEAT_BATCHES 4
#define LWF_STEPS 8
#define LWF_CLASSES 10 /* the target task's; the source model has ImageNet's 1000 */
/* Training-mode forwards that give the LwF source's batch norms running statistics of its data
 * (momentum 0.1), standing in for a pretrained source: with the initial ones (mean 0, variance
 * 1) the frozen batch norms normalise nothing, activations grow block after block, and SGD at
 * lr 0.01 reaches NaN within a few steps, in PyTorch as in rtaas. */
#define BN_CALIBRATION 10

typedef enum { R50_FEAT, R50_LWF } r50_kind;

static const struct r50_case {
    const char *name;
    r50_kind kind;
    int batch;
} R50_CASES[] = {
    {"resnet50_feat_b256", R50_FEAT, 256},
    {"resnet50_lwf_step_b128", R50_LWF, 128},
};

typedef struct r50_state {
    eng_model *m; /* feat: the backbone; lwf: the target being fine-tuned */
    eng_source src;
    int batch;
    const float *z0; /* lwf: the source model's features of every image */
    eng_train_opts topts;
    float *feats; /* feat: the last step's features [src.n, F] */
    int64_t F;
    double loss, acc; /* lwf: the last call's */
} r50_state;

static int r50_feat_step(void *p, int it)
{
    int rc = 0;
    r50_state *s = p;
    (void)it;
    free(s->feats);
    s->feats = NULL;
    CHECK(eng_extract_features(s->m, &s->src, s->batch, NULL, NULL, &s->feats, &s->F));
    CHECK(sync_model(s->m));
out:
    return rc;
}

static int r50_lwf_step(void *p, int it)
{
    int rc = 0;
    r50_state *s = p;
    eng_train_log log = {0};
    (void)it;
    /* warm_start 0: every step trains all weights but batch norm's, as in smallcnn_lwf_epoch */
    CHECK(eng_train_lwf(s->m, &s->src, s->z0, &s->topts, LWF_LAMBDA, false, 0.0f, &log));
    CHECK(sync_model(s->m));
    s->loss = log.n ? log.epochs[log.n - 1].loss : NAN;
    s->acc = log.n ? log.epochs[log.n - 1].accuracy : NAN;
out:
    eng_train_log_cleanup(&log);
    return rc;
}

/* BN_CALIBRATION training-mode forwards over the batches of x ([n, 3, size, size], host). */
static int calibrate_bn(eng_model *m, const float *x, int64_t n, int batch, int size)
{
    int rc = 0;
    eng_ctx *ctx = eng_model_ctx(m);
    eng_tensor xh = ENG_TENSOR_INIT, xd = ENG_TENSOR_INIT;
    const eng_tensor *logits;
    CHECK(eng_tensor_alloc4(&xh, batch, 3, size, size));
    CHECK(eng_ctx_tensor_alloc(ctx, &xd, 4, xh.dim, ENG_LAYOUT_NCHW));
    for (int k = 0; k < BN_CALIBRATION; k++) {
        const int64_t first = (int64_t)k * batch % (n - n % batch);
        memcpy(xh.data, x + first * eng_tensor_numel(&xh) / batch, (size_t)eng_tensor_numel(&xh) * sizeof(float));
        CHECK(eng_ctx_upload(ctx, &xd, &xh));
        CHECK(eng_model_forward(m, &xd, &(eng_forward_opts){.mode = ENG_MODE_TRAIN}, &logits));
    }
out:
    eng_ctx_tensor_free(ctx, &xd);
    eng_tensor_cleanup(&xh);
    return rc;
}

/* Median time of the forward alone on one batch already in context memory, features downloaded
 * (which waits for the device): what feature extraction costs without the host side. */
static int r50_forward_only(eng_model *m, const float *x, int batch, int size, const bench_opts *o, double *ms)
{
    int rc = 0;
    eng_ctx *ctx = eng_model_ctx(m);
    eng_tensor xh = ENG_TENSOR_INIT, xd = ENG_TENSOR_INIT, fh = ENG_TENSOR_INIT;
    double ts[MAX_ITERS];
    const eng_tensor *logits;
    CHECK(eng_tensor_alloc4(&xh, batch, 3, size, size));
    memcpy(xh.data, x, (size_t)eng_tensor_numel(&xh) * sizeof(float));
    CHECK(eng_ctx_tensor_alloc(ctx, &xd, 4, xh.dim, ENG_LAYOUT_NCHW));
    CHECK(eng_ctx_upload(ctx, &xd, &xh));
    CHECK(eng_tensor_alloc_host(&fh, 2, (int64_t[]){batch, eng_model_feature_dim(m)}, ENG_LAYOUT_NCHW));
    for (int it = 0; it < 1 + o->iters; it++) {
        const double t0 = now_ms();
        CHECK(eng_model_forward(m, &xd, &(eng_forward_opts){.mode = ENG_MODE_EVAL}, &logits));
        CHECK(eng_ctx_download(ctx, &fh, eng_model_features(m)));
        if (it >= 1)
            ts[it - 1] = now_ms() - t0;
    }
    *ms = median(ts, o->iters);
out:
    eng_tensor_cleanup(&fh);
    eng_ctx_tensor_free(ctx, &xd);
    eng_tensor_cleanup(&xh);
    return rc;
}

static int run_r50_case(const struct r50_case *rc50, const bench_opts *o)
{
    int rc = 0;
    eng_ctx *ctx = NULL;
    eng_model *source = NULL;
    r50_state s = {0};
    float *x = NULL, *z0 = NULL;
    int32_t *labels = NULL;
    timing t;
    host_images hi;
    const int batch = o->batch > 0 ? o->batch : rc50->batch, size = o->size > 0 ? o->size : 224;
    const int nbatches = rc50->kind == R50_FEAT ? FEAT_BATCHES : LWF_STEPS;
    const int64_t n = (int64_t)batch * nbatches, per = 3 * (int64_t)size * size;
    const int classes = rc50->kind == R50_FEAT ? 1000 : LWF_CLASSES;

    CHECK(ctx_open(&ctx, o, o->conv));
    eng_model_spec spec = {.arch = "resnet50", .num_classes = 1000, .mean = {0.485f, 0.456f, 0.406f},
                           .std = {0.229f, 0.224f, 0.225f}};
    CHECK(eng_model_new(ctx, &spec, &source));
    CHECK(eng_model_init(source, 42));
    x = malloc((size_t)n * (size_t)per * sizeof *x);
    labels = malloc((size_t)n * sizeof *labels);
    if (!x || !labels) {
        fprintf(stderr, "bench_rtaas: out of memory for %lld images\n", (long long)n);
        rc = 1;
        goto out;
    }
    fill_uniform(x, n * per, 1, 0.0f, 1.0f);
    for (int64_t i = 0; i < n; i++)
        labels[i] = (int32_t)(eng_hash64(2, (uint64_t)i) % (uint64_t)classes);
    hi = (host_images){.x = x, .labels = labels, .per = per};
    s.src = (eng_source){.n = n, .num_classes = classes, .c = 3, .h = size, .w = size, .user = &hi,
                         .batch = host_batch};
    s.batch = batch;
    step_fn step = r50_feat_step;
    if (rc50->kind == R50_FEAT) {
        s.m = source;
    } else {
        /* untimed: the source's batch-norm statistics and features, then the target: the
         * source's weights with a fresh classifier for the target's classes, as engine/job.c
         * builds it */
        int64_t F = 0;
        if (calibrate_bn(source, x, n, batch, size) != 0) {
            rc = 1;
            goto out;
        }
        CHECK(eng_extract_features(source, &s.src, batch, NULL, NULL, &z0, &F));
        s.z0 = z0;
        spec.num_classes = LWF_CLASSES;
        CHECK(eng_model_new(ctx, &spec, &s.m));
        for (int i = 0; i < eng_model_num_params(s.m); i++) {
            eng_param *tp = eng_model_param(s.m, i), *sp = eng_model_find(source, tp->name);
            if (sp && eng_tensor_same_shape(&tp->value, &sp->value))
                CHECK(eng_copy(ctx, &tp->value, &sp->value));
        }
        eng_model_touch(s.m);
        CHECK(eng_model_init_prefix(s.m, 43, "fc."));
        eng_model_free(source);
        source = NULL;
        eng_train_defaults(&s.topts); /* momentum 0.9, weight decay 5e-4, no schedule */
        s.topts.epochs = 1;
        s.topts.batch_size = batch;
        s.topts.lr = 0.01f;
        s.topts.seed = 1;
        step = r50_lwf_step;
    }

    if (time_steps(o, rc50->name, step, &s, &t) != 0) {
        rc = 1;
        goto out;
    }

    const char *sanity = "ok";
    char extra[320];
    if (rc50->kind == R50_FEAT) {
        /* relu then average pooling: finite, non-negative and not all zero */
        double sum = 0, asum = 0;
        bool neg = false;
        for (int64_t i = 0; i < n * s.F; i++) {
            sum += s.feats[i];
            asum += fabs(s.feats[i]);
            neg |= s.feats[i] < 0;
        }
        if (!isfinite(asum) || !(asum > 0) || neg)
            sanity = "BAD-features";
        double fwd_ms = NAN;
        if (r50_forward_only(s.m, x, batch, size, o, &fwd_ms) != 0) {
            rc = 1;
            goto out;
        }
        snprintf(extra, sizeof extra,
                 "images=%lld batch=%d size=%d images_per_s=%.1f fwd_ms=%.2f fwd_images_per_s=%.1f feature_dim=%lld "
                 "checksum=%.6g abssum=%.6g",
                 (long long)n, batch, size, (double)n / t.med * 1e3, fwd_ms, batch / fwd_ms * 1e3, (long long)s.F,
                 sum, asum);
        print_result(rc50->name, ctx, &t, extra, sanity);
        print_row(rc50->name, o, t.med, (int)n, sanity);
        printf("rtaas_row %s.fwd %s %.3f %d %s\n", rc50->name, eng_math_name(o->math), fwd_ms, batch, sanity);
    } else {
        if (!isfinite(s.loss))
            sanity = "BAD-loss";
        const double step_ms = t.med / LWF_STEPS;
        snprintf(extra, sizeof extra,
                 "step_ms=%.2f steps_per_call=%d batch=%d size=%d images_per_s=%.1f lambda=%g loss=%.4f acc=%.4f",
                 step_ms, LWF_STEPS, batch, size, batch / step_ms * 1e3, (double)LWF_LAMBDA, s.loss, s.acc);
        print_result(rc50->name, ctx, &t, extra, sanity);
        print_row(rc50->name, o, step_ms, batch, sanity);
    }
    if (strncmp(sanity, "BAD", 3) == 0)
        rc = 1;
out:
    free(s.feats);
    free(x);
    free(z0);
    free(labels);
    eng_model_free(source);
    if (s.m != source)
        eng_model_free(s.m);
    eng_ctx_free(ctx);
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
            "usage: bench_rtaas [--device cpu|cuda|cuda:N] [--math fp32|tf32|bf16] [--conv auto|onednn|gemm]\n"
            "                   [--threads N] [--warmup W] [--iters I] [--batch N] [--size S]\n"
            "                   [--budget-s S [--min-iters M]] [--verbose] CASE\n"
            "       bench_rtaas --gpu-info    (prints cuda_devices=N and the build; exit 0)\n"
            "  --math:     the CUDA math mode (default tf32 on CUDA; the CPU computes in fp32)\n"
            "  --batch, --size: the case's batch and image size instead of its own (quick checks)\n"
            "  --budget-s: stop timing after S seconds once M (default %d) iterations are done\n"
            "  --verbose:  every step's time on stderr\n"
            "CASE: resnet50_fwd_b8 resnet50_pgd_step_b8 resnet20_train_b128 smallcnn_train_b128\n"
            "      resnet20_pgd20_b128 resnet50_pgd20_b8 (a whole PGD-20 attack per step)\n"
            "      smallcnn_linear_pipeline (features of 10000 images + 10 epochs of a linear head)\n"
            "      smallcnn_lwf_epoch (one LwF epoch over 10000 images)\n"
            "      conv_table (ResNet-50 convolutions at batch 8, oneDNN against im2col+GEMM; CPU only)\n"
            "      bench-gpu, ResNet-50 at 224: resnet50_feat_b256 (features of %d batches of 256 from\n"
            "      host memory), resnet50_pgd20_b128 (PGD-20 at 4/255), resnet50_lwf_step_b128 (one LwF\n"
            "      training step, timed over %d)\n"
            "Exit status: 0 ok, 1 failure, 2 usage, 3 unsupported by this backend or build (the line\n"
            "\"rtaas_unsupported CASE MESSAGE\" says why).\n",
            MIN_ITERS, FEAT_BATCHES, LWF_STEPS);
}

/* --math: a name eng_math_name gives ("default" included) */
static int parse_math(const char *v, eng_math *m)
{
    for (eng_math i = ENG_MATH_DEFAULT; i <= ENG_MATH_BF16; i++)
        if (strcmp(v, eng_math_name(i)) == 0) {
            *m = i;
            return 0;
        }
    return -1;
}

static int run_case(const char *name, const bench_opts *o)
{
    if (strcmp(name, "conv_table") == 0) {
        if (strcmp(o->device, "cpu") != 0) {
            fprintf(stderr, "bench_rtaas: conv_table compares the CPU paths; it takes no --device\n");
            return 2;
        }
        return run_conv_table(o);
    }
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++)
        if (strcmp(name, CASES[i].name) == 0)
            return run_model_case(&CASES[i], o);
    for (size_t i = 0; i < sizeof ATTACK_CASES / sizeof ATTACK_CASES[0]; i++)
        if (strcmp(name, ATTACK_CASES[i].name) == 0)
            return run_attack_case(&ATTACK_CASES[i], o);
    for (size_t i = 0; i < sizeof PIPE_CASES / sizeof PIPE_CASES[0]; i++)
        if (strcmp(name, PIPE_CASES[i].name) == 0)
            return run_pipe_case(&PIPE_CASES[i], o);
    for (size_t i = 0; i < sizeof R50_CASES / sizeof R50_CASES[0]; i++)
        if (strcmp(name, R50_CASES[i].name) == 0)
            return run_r50_case(&R50_CASES[i], o);
    usage();
    return 2;
}

int main(int argc, char **argv)
{
    bench_opts o = {
        .conv = ENG_CONV_AUTO, .device = "cpu", .threads = 0, .warmup = 3, .iters = 7, .min_iters = MIN_ITERS};
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
        } else if (i + 1 < argc && strcmp(a, "--device") == 0) {
            o.device = argv[++i];
        } else if (i + 1 < argc && strcmp(a, "--math") == 0) {
            if (parse_math(argv[++i], &o.math) != 0) {
                usage();
                return 2;
            }
        } else if (i + 1 < argc && strcmp(a, "--threads") == 0) {
            o.threads = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(a, "--warmup") == 0) {
            o.warmup = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(a, "--iters") == 0) {
            o.iters = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(a, "--batch") == 0) {
            o.batch = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(a, "--size") == 0) {
            o.size = atoi(argv[++i]);
        } else if (strcmp(a, "--verbose") == 0) {
            o.verbose = 1;
        } else if (i + 1 < argc && strcmp(a, "--budget-s") == 0) {
            o.budget_s = atof(argv[++i]);
        } else if (i + 1 < argc && strcmp(a, "--min-iters") == 0) {
            o.min_iters = atoi(argv[++i]);
        } else if (strcmp(a, "--gpu-info") == 0) {
            printf("cuda_devices=%d build=%s\n", eng_cuda_device_count(), eng_build_info());
            return 0;
        } else if (a[0] != '-' && !name) {
            name = a;
        } else {
            usage();
            return 2;
        }
    }
    /* batch >= 2: training batch norm and the LwF loop need two examples; size >= 32: ResNet-50
     * downsamples 32 times */
    if (!name || o.threads < 0 || o.warmup < 0 || o.iters < 1 || o.iters > MAX_ITERS || o.min_iters < 1 ||
        o.batch < 0 || o.batch == 1 || o.batch > 4096 || o.size < 0 || (o.size > 0 && o.size < 32) || o.size > 1024) {
        usage();
        return 2;
    }
    int rc = run_case(name, &o);
    if (rc == 1 && first_failure == ENG_ERR_UNSUPPORTED) {
        printf("rtaas_unsupported %s %s\n", name, first_message);
        return 3;
    }
    return rc;
}
