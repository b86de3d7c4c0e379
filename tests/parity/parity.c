/* PyTorch parity: runs each model of tests/parity/gen_ref.py through the engine (eval logits,
 * loss and gradients, one SGD training step) and compares with the saved reference outputs.
 *
 * Usage: parity_check OUTDIR   (OUTDIR holds <model>.weights.safetensors and <model>.ref.safetensors)
 * Every check is one TAP case named <model>_<what>[_gemm|_cuda]; a "#" line gives the error. */
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "engine.h"
#include "safetensors.h"
#include "weights.h"


#include "t.h"

#define TOL_FWD 1e-4   /* logits, loss, parameters after the step, running statistics */
#define TOL_GRAD 1e-3  /* input and parameter gradients, parameter changes */
/* The reference is float64. Where a float32 ReLU input lies within rounding of 0 the ReLU can
 * flip, and a gradient summed over M positions then moves by about 1/sqrt(M): gen_ref.py
 * measures PyTorch's own float32 error ("noise.<tensor>" metadata, the worst of a few runs)
 * and a check passes within NOISE_MULT times that when it is above the fixed tolerance. */
#define NOISE_MULT 3.0
#define MAX_NAMES 32

static const char *const MODELS[] = {"resnet18", "resnet50", "resnet20", "smallcnn"};

/* One model on one context: the state shared by the cases below (they take no arguments). */
static struct {
    const char *dir, *arch, *sfx; /* sfx: "", "_gemm" or "_cuda" */
    eng_ctx *ctx;
    eng_model *m;
    eng_st_file *wf, *rf; /* weights, reference */
    /* eval results (host copies) */
    float *logits, *dx, *grads[MAX_NAMES];
    double loss;
    int64_t n_logits, n_dx, n_grads[MAX_NAMES];
} S;

/* The comparison the current generic case makes. */
static struct {
    const char *what;
    const float *a, *b;
    int64_t na, nb;
    double tol, noise;
} C;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Reads a float tensor of a safetensors file into a malloc'd buffer (NULL and a failure if absent). */
static float *st_load(eng_st_file *f, const char *name, int64_t *n)
{
    const eng_st_entry *e = eng_st_find(f, name);
    if (!e) {
        t_failf(__FILE__, __LINE__, "reference has no tensor '%s'", name);
        return NULL;
    }
    float *buf = malloc((size_t)(e->numel ? e->numel : 1) * sizeof *buf);
    if (!buf || eng_st_read_f32(f, e, buf, e->numel) != ENG_OK) {
        t_failf(__FILE__, __LINE__, "reading '%s': %s", name, eng_last_error());
        free(buf);
        return NULL;
    }
    if (n)
        *n = e->numel;
    return buf;
}

/* Splits a comma-separated metadata value into at most MAX_NAMES names (into buf). */
static int split_names(const char *list, char *buf, size_t len, const char **out)
{
    int n = 0;
    if (!list || !*list)
        return 0;
    snprintf(buf, len, "%s", list);
    for (char *p = buf; p && *p && n < MAX_NAMES;) {
        out[n++] = p;
        p = strchr(p, ',');
        if (p)
            *p++ = '\0';
    }
    return n;
}

static int parse_floats(const char *s, float *out, int max)
{
    int n = 0;
    while (s && *s && n < max) {
        char *end;
        out[n++] = strtof(s, &end);
        if (end == s)
            return -1;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

/* Copies a context tensor into a malloc'd NCHW host buffer. */
static float *download(const eng_tensor *t, int64_t *n)
{
    eng_tensor h = ENG_TENSOR_INIT;
    if (eng_tensor_alloc_host(&h, t->ndim, t->dim, ENG_LAYOUT_NCHW) != ENG_OK ||
        eng_ctx_download(S.ctx, &h, t) != ENG_OK) {
        t_failf(__FILE__, __LINE__, "download: %s", eng_last_error());
        eng_tensor_cleanup(&h);
        return NULL;
    }
    int64_t k = eng_tensor_numel(t);
    float *out = malloc((size_t)(k ? k : 1) * sizeof *out);
    if (out)
        memcpy(out, h.data, (size_t)k * sizeof *out);
    eng_tensor_cleanup(&h);
    *n = k;
    return out;
}

/* Uploads reference input `name` ([N,C,H,W]) into a context tensor. */
static eng_status upload_input(const char *name, eng_tensor *dst)
{
    const eng_st_entry *e = eng_st_find(S.rf, name);
    if (!e || e->ndim != 4)
        return eng_fail(ENG_ERR_FORMAT, "reference input '%s' missing or not 4-D", name);
    eng_tensor h = ENG_TENSOR_INIT;
    eng_status st = eng_tensor_alloc_host(&h, 4, e->dim, ENG_LAYOUT_NCHW);
    if (st == ENG_OK)
        st = eng_st_read_f32(S.rf, e, h.data, e->numel);
    if (st == ENG_OK)
        st = eng_ctx_tensor_alloc(S.ctx, dst, 4, e->dim, ENG_LAYOUT_NCHW);
    if (st == ENG_OK)
        st = eng_ctx_upload(S.ctx, dst, &h);
    eng_tensor_cleanup(&h);
    return st;
}

/* Reference labels (stored as F32) as int32; malloc'd, count in *n. */
static int32_t *load_labels(const char *name, int *n)
{
    int64_t k = 0;
    float *f = st_load(S.rf, name, &k);
    int32_t *l = f ? malloc((size_t)k * sizeof *l) : NULL;
    for (int64_t i = 0; l && i < k; i++)
        l[i] = (int32_t)f[i];
    free(f);
    *n = (int)k;
    return l;
}

/* ---- cases ---- */

/* Generic comparison of C.a against C.b. */
static void case_cmp(void)
{
    REQUIRE(C.a && C.b);
    if (C.na != C.nb || C.na <= 0) {
        t_failf(__FILE__, __LINE__, "%s %s: engine has %lld values, reference %lld", S.arch, C.what,
                (long long)C.na, (long long)C.nb);
        return;
    }
    double e = t_rel_err(C.a, C.b, C.na);
    double tol = fmax(C.tol, NOISE_MULT * C.noise);
    printf("# %s%s %s rel err %.2e (float32 noise %.1e, tol %.1e)\n", S.arch, S.sfx, C.what, e, C.noise, tol);
    CHECKF(e <= tol, "%s %s: relative error %.3e > %.1e", S.arch, C.what, e, tol);
}

/* Compares a (engine) with b (reference); key names the reference tensor whose noise applies. */
static void check(const char *what, const char *key, const float *a, int64_t na, const float *b, int64_t nb,
                  double tol)
{
    char name[256], label[200], nkey[256];
    snprintf(label, sizeof label, "%s", what);
    snprintf(nkey, sizeof nkey, "noise.%s", key);
    const char *nv = eng_st_meta(S.rf, nkey);
    C = (typeof(C)){label, a, b, na, nb, tol, nv ? strtod(nv, NULL) : 0.0};
    snprintf(name, sizeof name, "%s_%s%s", S.arch, what, S.sfx);
    for (char *p = name; *p; p++)
        if (*p == ' ')
            *p = '_';
    t_run(name, case_cmp);
}

/* Builds the model from the weights file's metadata, checks parameter names and shapes against
 * the file both ways, then loads it. */
static void case_load(void)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.weights.safetensors", S.dir, S.arch);
    REQUIRE_OK(eng_st_open(path, &S.wf));
    snprintf(path, sizeof path, "%s/%s.ref.safetensors", S.dir, S.arch);
    REQUIRE_OK(eng_st_open(path, &S.rf));

    const char *arch = eng_st_meta(S.wf, "arch"), *nc = eng_st_meta(S.wf, "num_classes");
    const char *ic = eng_st_meta(S.wf, "in_channels");
    REQUIRE(arch && nc && ic && strcmp(arch, S.arch) == 0);
    eng_model_spec spec = {.arch = arch, .num_classes = atoi(nc), .in_channels = atoi(ic)};
    REQUIRE(parse_floats(eng_st_meta(S.wf, "mean"), spec.mean, ENG_MAX_CHANNELS) == spec.in_channels);
    REQUIRE(parse_floats(eng_st_meta(S.wf, "std"), spec.std, ENG_MAX_CHANNELS) == spec.in_channels);
    REQUIRE_OK(eng_model_new(S.ctx, &spec, &S.m));

    /* file -> model */
    for (int i = 0; i < eng_st_count(S.wf); i++) {
        const eng_st_entry *e = eng_st_get(S.wf, i);
        if (e->dtype != ENG_ST_F32 && e->dtype != ENG_ST_F16 && e->dtype != ENG_ST_BF16 && e->dtype != ENG_ST_F64)
            continue;
        eng_param *p = eng_model_find(S.m, e->name);
        if (!p) {
            t_failf(__FILE__, __LINE__, "%s: file tensor '%s' is not a model parameter", S.arch, e->name);
            continue;
        }
        bool same = p->value.ndim == e->ndim;
        for (int d = 0; same && d < e->ndim; d++)
            same = p->value.dim[d] == e->dim[d];
        char mbuf[64], fbuf[128] = "[";
        for (int d = 0; d < e->ndim; d++)
            snprintf(fbuf + strlen(fbuf), sizeof fbuf - strlen(fbuf), "%s%lld", d ? ", " : "", (long long)e->dim[d]);
        strncat(fbuf, "]", sizeof fbuf - strlen(fbuf) - 1);
        CHECKF(same, "%s: '%s' has shape %s in the model, %s in the file", S.arch, e->name,
               eng_tensor_shape_str(&p->value, mbuf, sizeof mbuf), fbuf);
    }
    /* model -> file */
    for (int i = 0; i < eng_model_num_params(S.m); i++) {
        const eng_param *p = eng_model_param(S.m, i);
        CHECKF(eng_st_find(S.wf, p->name), "%s: model parameter '%s' missing from the file", S.arch, p->name);
    }
    if (t_case_failed)
        return;

    snprintf(path, sizeof path, "%s/%s.weights.safetensors", S.dir, S.arch);
    eng_load_report rep;
    memset(&rep, 0, sizeof rep);
    REQUIRE_OK(eng_model_load_safetensors(S.m, path, true, &rep));
    CHECKF(rep.loaded == eng_model_num_params(S.m) && rep.ignored == 0 && rep.missing == 0,
           "%s: load report: %d loaded of %d, %d ignored (first '%s'), %d missing (first '%s')", S.arch, rep.loaded,
           eng_model_num_params(S.m), rep.ignored, rep.first_ignored, rep.missing, rep.first_missing);
    printf("# %s%s on %s (%d threads): %d parameters, %lld floats\n", S.arch, S.sfx, eng_ctx_backend_name(S.ctx),
           eng_ctx_threads(S.ctx), eng_model_num_params(S.m), (long long)eng_model_param_floats(S.m, false));
}

static void case_eval_run(void)
{
    eng_tensor x = ENG_TENSOR_INIT, dl = ENG_TENSOR_INIT;
    const eng_tensor *logits = NULL, *dx = NULL;
    int n = 0;
    int32_t *labels = load_labels("labels", &n);
    char nbuf[1024];
    const char *names[MAX_NAMES];
    int np = split_names(eng_st_meta(S.rf, "eval.params"), nbuf, sizeof nbuf, names);
    double t0 = now_s();
    REQUIRE(labels);
    eng_status st = upload_input("x", &x);
    if (st == ENG_OK)
        st = eng_model_forward(S.m, &x, &(eng_forward_opts){.mode = ENG_MODE_EVAL, .grads = ENG_GRAD_INPUT | ENG_GRAD_PARAMS},
                               &logits);
    if (st == ENG_OK)
        st = eng_ctx_tensor_alloc(S.ctx, &dl, 2, logits->dim, ENG_LAYOUT_NCHW);
    if (st == ENG_OK)
        st = eng_xent(S.ctx, logits, labels, &S.loss, NULL, &dl, 1.0f / (float)n);
    if (st == ENG_OK)
        st = eng_model_backward(S.m, &dl, NULL, &dx);
    if (st != ENG_OK) {
        t_failf(__FILE__, __LINE__, "%s eval: %s: %s", S.arch, eng_strerror(st), eng_last_error());
        goto out;
    }
    double t1 = now_s();
    S.loss /= n;
    S.logits = download(logits, &S.n_logits);
    S.dx = download(dx, &S.n_dx);
    for (int i = 0; i < np; i++) {
        eng_param *p = eng_model_find(S.m, names[i]);
        if (!p || !p->grad.data) {
            t_failf(__FILE__, __LINE__, "%s: no gradient for '%s'", S.arch, names[i]);
            continue;
        }
        S.grads[i] = download(&p->grad, &S.n_grads[i]);
    }
    printf("# %s%s eval forward+backward, batch %d: %.0f ms\n", S.arch, S.sfx, n, (t1 - t0) * 1e3);
out:
    free(labels);
    eng_ctx_tensor_free(S.ctx, &x);
    eng_ctx_tensor_free(S.ctx, &dl);
}

static void run_eval(void)
{
    char name[128];
    snprintf(name, sizeof name, "%s_eval_run%s", S.arch, S.sfx);
    t_run(name, case_eval_run);
    if (!S.logits)
        return;
    int64_t n;
    float *ref = st_load(S.rf, "eval.logits", &n);
    check("eval logits", "eval.logits", S.logits, S.n_logits, ref, n, TOL_FWD);
    free(ref);
    ref = st_load(S.rf, "eval.loss", &n);
    float loss = (float)S.loss;
    check("eval loss", "eval.loss", &loss, 1, ref, n, TOL_FWD);
    free(ref);
    ref = st_load(S.rf, "eval.grad_x", &n);
    check("eval grad_x", "eval.grad_x", S.dx, S.n_dx, ref, n, TOL_GRAD);
    free(ref);

    char nbuf[1024], key[256], what[256];
    const char *names[MAX_NAMES];
    int np = split_names(eng_st_meta(S.rf, "eval.params"), nbuf, sizeof nbuf, names);
    for (int i = 0; i < np; i++) {
        snprintf(key, sizeof key, "eval.grad.%s", names[i]);
        snprintf(what, sizeof what, "eval grad %s", names[i]);
        ref = st_load(S.rf, key, &n);
        check(what, key, S.grads[i], S.n_grads[i], ref, n, TOL_GRAD);
        free(ref);
    }
}

/* Train-step results kept between the run case and the checks. */
static struct {
    bool ok;
    float *logits, *grads[MAX_NAMES], *after[MAX_NAMES];
    int64_t n_logits, n_grads[MAX_NAMES], n_after[MAX_NAMES];
    double loss;
} TR;

static void case_train_run(void)
{
    eng_tensor x = ENG_TENSOR_INIT, dl = ENG_TENSOR_INIT;
    const eng_tensor *logits = NULL;
    int n = 0;
    int32_t *labels = load_labels("train.labels", &n);
    char gbuf[1024], abuf[1024];
    const char *gnames[MAX_NAMES], *anames[MAX_NAMES];
    const char *gl = eng_st_meta(S.rf, "train.params");
    int ng = split_names(gl ? gl : eng_st_meta(S.rf, "eval.params"), gbuf, sizeof gbuf, gnames);
    int na = split_names(eng_st_meta(S.rf, "train.after"), abuf, sizeof abuf, anames);
    double t0 = now_s(), t1 = 0;
    REQUIRE(labels);
    eng_status st = upload_input("train.x", &x);
    if (st == ENG_OK)
        st = eng_model_forward(S.m, &x, &(eng_forward_opts){.mode = ENG_MODE_TRAIN, .grads = ENG_GRAD_PARAMS}, &logits);
    if (st == ENG_OK)
        st = eng_ctx_tensor_alloc(S.ctx, &dl, 2, logits->dim, ENG_LAYOUT_NCHW);
    if (st == ENG_OK)
        st = eng_xent(S.ctx, logits, labels, &TR.loss, NULL, &dl, 1.0f / (float)n);
    if (st == ENG_OK)
        st = eng_model_backward(S.m, &dl, NULL, NULL);
    if (st == ENG_OK) {
        t1 = now_s();
        TR.loss /= n;
        TR.logits = download(logits, &TR.n_logits);
        for (int i = 0; i < ng; i++) {
            eng_param *p = eng_model_find(S.m, gnames[i]);
            if (!p || !p->grad.data)
                t_failf(__FILE__, __LINE__, "%s: no gradient for '%s'", S.arch, gnames[i]);
            else
                TR.grads[i] = download(&p->grad, &TR.n_grads[i]);
        }
        st = eng_model_sgd_step(S.m,
                                &(eng_sgd_desc){.lr = 0.1f, .momentum = 0.9f, .weight_decay = 5e-4f, .nesterov = true},
                                true);
    }
    if (st != ENG_OK) {
        t_failf(__FILE__, __LINE__, "%s train: %s: %s", S.arch, eng_strerror(st), eng_last_error());
        goto out;
    }
    for (int i = 0; i < na; i++) {
        eng_param *p = eng_model_find(S.m, anames[i]);
        if (!p)
            t_failf(__FILE__, __LINE__, "%s: no parameter '%s'", S.arch, anames[i]);
        else
            TR.after[i] = download(&p->value, &TR.n_after[i]);
    }
    printf("# %s%s train forward+backward, batch %d: %.0f ms; SGD step %.0f ms\n", S.arch, S.sfx, n,
           (t1 - t0) * 1e3, (now_s() - t1) * 1e3);
    TR.ok = true;
out:
    free(labels);
    eng_ctx_tensor_free(S.ctx, &x);
    eng_ctx_tensor_free(S.ctx, &dl);
}

static void run_train(void)
{
    char name[128];
    snprintf(name, sizeof name, "%s_train_run%s", S.arch, S.sfx);
    t_run(name, case_train_run);
    if (TR.ok) {
        int64_t n;
        float *ref = st_load(S.rf, "train.logits", &n);
        check("train logits", "train.logits", TR.logits, TR.n_logits, ref, n, TOL_FWD);
        free(ref);
        ref = st_load(S.rf, "train.loss", &n);
        float loss = (float)TR.loss;
        check("train loss", "train.loss", &loss, 1, ref, n, TOL_FWD);
        free(ref);

        char buf[1024], key[256], what[256];
        const char *names[MAX_NAMES];
        const char *gl = eng_st_meta(S.rf, "train.params");
        int np = split_names(gl ? gl : eng_st_meta(S.rf, "eval.params"), buf, sizeof buf, names);
        for (int i = 0; i < np; i++) {
            snprintf(key, sizeof key, "train.grad.%s", names[i]);
            snprintf(what, sizeof what, "train grad %s", names[i]);
            ref = st_load(S.rf, key, &n);
            check(what, key, TR.grads[i], TR.n_grads[i], ref, n, TOL_GRAD);
            free(ref);
        }
        np = split_names(eng_st_meta(S.rf, "train.after"), buf, sizeof buf, names);
        for (int i = 0; i < np; i++) {
            snprintf(key, sizeof key, "train.after.%s", names[i]);
            snprintf(what, sizeof what, "train after %s", names[i]);
            ref = st_load(S.rf, key, &n);
            check(what, key, TR.after[i], TR.n_after[i], ref, n, TOL_FWD);
            /* the step itself, which the old value would otherwise hide */
            int64_t nb;
            float *before = st_load(S.wf, names[i], &nb);
            if (ref && before && TR.after[i] && nb == n && TR.n_after[i] == n) {
                for (int64_t j = 0; j < n; j++) {
                    ref[j] -= before[j];
                    TR.after[i][j] -= before[j];
                }
                snprintf(what, sizeof what, "train change %s", names[i]);
                snprintf(key, sizeof key, "train.change.%s", names[i]);
                check(what, key, TR.after[i], n, ref, n, TOL_GRAD);
            }
            free(before);
            free(ref);
        }
    }
    free(TR.logits);
    for (int i = 0; i < MAX_NAMES; i++) {
        free(TR.grads[i]);
        free(TR.after[i]);
    }
    memset(&TR, 0, sizeof TR);
}

/* All checks of one model on a fresh context made with opts (NULL: the default CPU path). */
static void run_model(const char *dir, const char *arch, const char *sfx, const eng_ctx_opts *opts)
{
    memset(&S, 0, sizeof S);
    S.dir = dir;
    S.arch = arch;
    S.sfx = sfx;
    if (eng_ctx_new(&S.ctx, opts) != ENG_OK) {
        printf("not ok - %s_context%s\n#   %s\n", arch, sfx, eng_last_error());
        t_total_failed++;
        return;
    }
    char name[128];
    snprintf(name, sizeof name, "%s_load%s", arch, sfx);
    t_run(name, case_load);
    if (S.m && !t_case_failed) {
        run_eval();
        run_train();
    }
    free(S.logits);
    free(S.dx);
    for (int i = 0; i < MAX_NAMES; i++)
        free(S.grads[i]);
    eng_model_free(S.m);
    eng_st_close(S.wf);
    eng_st_close(S.rf);
    eng_ctx_free(S.ctx);
}

static void case_no_gpu(void) { t_skip("no GPU"); }

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUTDIR  (reference files from tests/parity/gen_ref.py)\n", argv[0]);
        return 2;
    }
    double t0 = now_s();
    for (size_t i = 0; i < sizeof MODELS / sizeof *MODELS; i++) {
        run_model(argv[1], MODELS[i], "", NULL);
        run_model(argv[1], MODELS[i], "_gemm", &(eng_ctx_opts){.conv = ENG_CONV_GEMM});
        if (eng_cuda_device_count() > 0)
            run_model(argv[1], MODELS[i], "_cuda", &(eng_ctx_opts){.device = "cuda", .math = ENG_MATH_FP32});
    }
    if (eng_cuda_device_count() == 0)
        t_run("parity_cuda", case_no_gpu);
    printf("# parity_check: %.1f s\n", now_s() - t0);
    return t_exit();
}
