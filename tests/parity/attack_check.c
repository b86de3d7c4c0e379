/* Attack parity with PyTorch: runs PGD-20 and CW-20, without and with a random start, on the
 * model and images of tests/parity/gen_attack_ref.py and compares with its results.
 *
 * Usage: attack_check DIR   (DIR holds smallcnn_fmnist.weights.safetensors and attack.ref.safetensors)
 * Without a random start both sides compute the same thing in float32: the robust accuracy must
 * agree within 0.5 points and sign(x_adv - x) on at least 99% of the pixels (a pixel differs only
 * where rounding flips the sign of a near-zero gradient). With a random start the noise differs
 * (torch's generator, the engine's counter-based one), so only the accuracy is compared, within
 * 2 points. Each case prints its numbers on a "#" line. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "t.h"

#define CHUNK 250            /* examples per attack call */
#define TOL_ACC_PT 0.5       /* no random start: robust accuracy, percentage points */
#define TOL_ACC_RS_PT 2.0    /* random start */
#define MIN_SIGN_AGREE 0.99  /* no random start: fraction of pixels with the same sign(x_adv - x) */
#define TOL_LOGITS 1e-4      /* relative L2 error of the clean logits (the model loaded right) */

static struct {
    const char *dir;
    eng_ctx *ctx;
    eng_model *m;
    eng_st_file *rf;
    int n;              /* examples */
    int64_t per;        /* pixels per example */
    float *x;           /* [n, 1, 28, 28] */
    int32_t *labels;
    float eps, alpha, kappa;
    int steps;
    double total_s;
} S;

/* The run the current case checks. */
static struct {
    const char *key; /* "pgd20", "cw20_rs", ... */
    eng_attack_kind kind;
    bool random_start;
} R;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* A reference tensor as a malloc'd float array of `want` values (NULL and a failure otherwise). */
static float *ref_tensor(const char *name, int64_t want)
{
    const eng_st_entry *e = eng_st_find(S.rf, name);
    if (!e || e->numel != want) {
        t_failf(__FILE__, __LINE__, "reference tensor '%s' %s", name, e ? "has the wrong size" : "is missing");
        return NULL;
    }
    float *p = malloc((size_t)want * sizeof *p);
    if (!p || eng_st_read_f32(S.rf, e, p, want) != ENG_OK) {
        t_failf(__FILE__, __LINE__, "reading '%s': %s", name, eng_last_error());
        free(p);
        return NULL;
    }
    return p;
}

static bool meta_float(const eng_st_file *f, const char *key, float *v)
{
    const char *s = eng_st_meta(f, key);
    char *end;
    if (!s)
        return false;
    *v = strtof(s, &end);
    return end != s && *end == '\0';
}

static void attack_load(void)
{
    char path[1024];
    eng_st_file *wf = NULL;
    snprintf(path, sizeof path, "%s/smallcnn_fmnist.weights.safetensors", S.dir);
    REQUIRE_OK(eng_st_open(path, &wf));
    const char *arch = eng_st_meta(wf, "arch");
    eng_model_spec spec = {.arch = "smallcnn", .num_classes = 10, .in_channels = 1};
    bool ok = arch && strcmp(arch, "smallcnn") == 0 && meta_float(wf, "mean", &spec.mean[0]) &&
              meta_float(wf, "std", &spec.std[0]);
    eng_st_close(wf);
    REQUIRE(ok);
    REQUIRE_OK(eng_model_new(S.ctx, &spec, &S.m));
    eng_load_report rep;
    REQUIRE_OK(eng_model_load_safetensors(S.m, path, true, &rep));
    CHECKF(rep.loaded == eng_model_num_params(S.m) && rep.ignored == 0, "load: %d of %d, %d ignored ('%s')",
           rep.loaded, eng_model_num_params(S.m), rep.ignored, rep.first_ignored);

    snprintf(path, sizeof path, "%s/attack.ref.safetensors", S.dir);
    REQUIRE_OK(eng_st_open(path, &S.rf));
    const eng_st_entry *ex = eng_st_find(S.rf, "x");
    float steps = 0;
    REQUIRE(ex && ex->ndim == 4 && ex->dim[1] == 1 && ex->dim[2] == 28 && ex->dim[3] == 28);
    REQUIRE(meta_float(S.rf, "eps", &S.eps) && meta_float(S.rf, "alpha", &S.alpha) &&
            meta_float(S.rf, "kappa", &S.kappa) && meta_float(S.rf, "steps", &steps));
    S.steps = (int)steps;
    S.n = (int)ex->dim[0];
    S.per = 28 * 28;
    S.x = ref_tensor("x", S.n * S.per);
    float *lf = ref_tensor("labels", S.n), *lg = ref_tensor("logits", (int64_t)S.n * 10);
    REQUIRE(S.x && lf && lg);
    S.labels = malloc((size_t)S.n * sizeof *S.labels);
    for (int i = 0; i < S.n; i++)
        S.labels[i] = (int32_t)lf[i];

    /* the clean logits say whether model and images arrived intact */
    eng_tensor x = ENG_TENSOR_INIT, h = ENG_TENSOR_INIT;
    const eng_tensor *out;
    int64_t d[4] = {S.n, 1, 28, 28};
    REQUIRE_OK(eng_tensor_alloc_host(&x, 4, d, ENG_LAYOUT_NCHW));
    memcpy(x.data, S.x, (size_t)(S.n * S.per) * sizeof(float));
    REQUIRE_OK(eng_model_forward(S.m, &x, &(eng_forward_opts){.mode = ENG_MODE_EVAL}, &out));
    REQUIRE_OK(eng_tensor_alloc_host(&h, 2, out->dim, ENG_LAYOUT_NCHW));
    REQUIRE_OK(eng_ctx_download(S.ctx, &h, out));
    double e = t_rel_err(h.data, lg, (long)S.n * 10);
    int right = 0, right_ref = 0;
    for (int n = 0; n < S.n; n++) {
        int b = 0, br = 0;
        for (int k = 1; k < 10; k++) {
            b = h.data[n * 10 + k] > h.data[n * 10 + b] ? k : b;
            br = lg[n * 10 + k] > lg[n * 10 + br] ? k : br;
        }
        right += b == S.labels[n];
        right_ref += br == S.labels[n];
    }
    printf("# %d Fashion-MNIST test images, eps %g alpha %g kappa %g, %d steps; clean accuracy rtaas %.1f%% torch "
           "%.1f%%, logits rel err %.1e (torch %s, on %s with %d threads)\n",
           S.n, S.eps, S.alpha, S.kappa, S.steps, 100.0 * right / S.n, 100.0 * right_ref / S.n, e,
           eng_st_meta(S.rf, "torch") ? eng_st_meta(S.rf, "torch") : "?", eng_ctx_backend_name(S.ctx),
           eng_ctx_threads(S.ctx));
    CHECKF(e <= TOL_LOGITS, "clean logits: relative error %.2e > %.0e", e, TOL_LOGITS);
    eng_tensor_cleanup(&x);
    eng_tensor_cleanup(&h);
    free(lf);
    free(lg);
}

static int sgn(float v) { return (v > 0) - (v < 0); }

static void attack_run(void)
{
    REQUIRE(S.m && S.x);
    char key[128];
    snprintf(key, sizeof key, "%s.robust", R.key);
    float *ref_robust = ref_tensor(key, S.n), *ref_adv = NULL;
    REQUIRE(ref_robust);
    if (!R.random_start) {
        snprintf(key, sizeof key, "%s.x_adv", R.key);
        ref_adv = ref_tensor(key, S.n * S.per);
        REQUIRE(ref_adv);
    }
    eng_attack_spec a;
    eng_attack_defaults(&a, R.kind, S.eps, S.steps);
    a.random_start = R.random_start;
    a.alpha = S.alpha;
    a.kappa = S.kappa;
    a.restarts = 1;
    a.best = false;
    int robust = 0, robust_ref = 0, same_flag = 0, over = 0;
    int64_t same_sign = 0;
    bool fooled[CHUNK];
    double t0 = now_s();
    for (int c = 0; c * CHUNK < S.n; c++) {
        const int k = S.n - c * CHUNK < CHUNK ? S.n - c * CHUNK : CHUNK;
        const float *x0 = S.x + (int64_t)c * CHUNK * S.per;
        eng_tensor x = ENG_TENSOR_INIT, xa = ENG_TENSOR_INIT;
        int64_t d[4] = {k, 1, 28, 28};
        REQUIRE_OK(eng_tensor_alloc_host(&x, 4, d, ENG_LAYOUT_NCHW));
        REQUIRE_OK(eng_tensor_alloc_host(&xa, 4, d, ENG_LAYOUT_NCHW));
        memcpy(x.data, x0, (size_t)(k * S.per) * sizeof(float));
        a.seed = eng_hash64(2024, (uint64_t)c);
        REQUIRE_OK(eng_attack_run(S.m, &a, &x, S.labels + c * CHUNK, &xa, fooled, NULL));
        for (int i = 0; i < k; i++) {
            int n = c * CHUNK + i;
            bool rr = ref_robust[n] != 0.0f;
            robust += !fooled[i];
            robust_ref += rr;
            same_flag += !fooled[i] == rr;
            float worst = 0;
            for (int64_t j = 0; j < S.per; j++) {
                float v = xa.data[i * S.per + j], u = x0[i * S.per + j];
                worst = fmaxf(worst, fabsf(v - u));
                if (ref_adv)
                    same_sign += sgn(v - u) == sgn(ref_adv[(int64_t)n * S.per + j] - u);
            }
            over += worst > S.eps + 1e-6f;
        }
        eng_tensor_cleanup(&x);
        eng_tensor_cleanup(&xa);
    }
    double secs = now_s() - t0, acc = 100.0 * robust / S.n, acc_ref = 100.0 * robust_ref / S.n;
    double diff = fabs(acc - acc_ref), tol = R.random_start ? TOL_ACC_RS_PT : TOL_ACC_PT;
    S.total_s += secs;
    double agree = ref_adv ? (double)same_sign / ((double)S.n * S.per) : 0;
    char sign_note[64] = "";
    if (ref_adv)
        snprintf(sign_note, sizeof sign_note, ", sign agreement %.2f%%", 100 * agree);
    printf("# %s %s: rtaas %.1f%% torch %.1f%% (diff %.1f pt, tol %.1f)%s, same verdict on %d/%d examples, %.1f s\n",
           R.key, R.random_start ? "random start" : "no-rs", acc, acc_ref, diff, tol, sign_note, same_flag, S.n, secs);
    if (ref_adv)
        CHECKF(agree >= MIN_SIGN_AGREE, "%s: sign(x_adv - x) agrees on %.3f%% of the pixels (< %.0f%%)", R.key,
               100 * agree, 100 * MIN_SIGN_AGREE);
    CHECKF(diff <= tol + 1e-9, "%s: robust accuracy %.2f%% vs torch %.2f%%", R.key, acc, acc_ref);
    CHECKF(over == 0, "%s: %d examples perturbed beyond eps", R.key, over);
    free(ref_robust);
    free(ref_adv);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: attack_check DIR\n");
        return 2;
    }
    S.dir = argv[1];
    if (eng_ctx_new(&S.ctx, NULL) != ENG_OK) {
        printf("not ok - attack context: %s\n", eng_last_error());
        return 1;
    }
    T_RUN(attack_load);
    static const struct {
        const char *key, *name;
        eng_attack_kind kind;
        bool rs;
    } runs[] = {
        {"pgd20", "attack_pgd20_no_rs", ENG_ATTACK_PGD, false},
        {"cw20", "attack_cw20_no_rs", ENG_ATTACK_CW, false},
        {"pgd20_rs", "attack_pgd20_random_start", ENG_ATTACK_PGD, true},
        {"cw20_rs", "attack_cw20_random_start", ENG_ATTACK_CW, true},
    };
    for (size_t i = 0; i < sizeof runs / sizeof *runs; i++) {
        R.key = runs[i].key;
        R.kind = runs[i].kind;
        R.random_start = runs[i].rs;
        t_run(runs[i].name, attack_run);
    }
    printf("# attacks: %.1f s in all\n", S.total_s);
    eng_model_free(S.m);
    eng_st_close(S.rf);
    free(S.x);
    free(S.labels);
    eng_ctx_free(S.ctx);
    return t_exit();
}
