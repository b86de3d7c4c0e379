/* The training loops keep their promises: natural training learns, a checkpointed and resumed
 * run ends bit-identical to an uninterrupted one, a linear probe leaves the backbone untouched,
 * LwF's warm start trains only the classifier and a huge lambda pins the features, retrain_blocks
 * touches only the last blocks, free and PGD adversarial training run and stay in the eps-ball.
 * Data: a synthetic 28x28 task (class k = a faint bar at row 4 + 4k in strong noise), so that the
 * test needs no files and learns in seconds. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "t.h"
#include "train.h"

#define K 5
#define N_EX 640

static eng_ctx *ctx;

static eng_status synth_batch(void *user, const int64_t *idx, int count, uint64_t aug_seed, eng_tensor *x,
                              int32_t *labels)
{
    (void)user;
    for (int i = 0; i < count; i++) {
        int64_t e = idx[i];
        int y = (int)(e % K);
        /* augmentation: shift the bar by one row, from the seed and the example */
        int shift = aug_seed ? (int)(eng_hash64(aug_seed, (uint64_t)e) % 3) - 1 : 0;
        float *p = x->data + (int64_t)i * 28 * 28;
        for (int r = 0; r < 28; r++)
            for (int c = 0; c < 28; c++) {
                float v = 0.6f * eng_uniform(77, (uint64_t)(e * 784 + r * 28 + c));
                if (r == 4 + 4 * y + shift)
                    v += 0.3f;
                p[r * 28 + c] = v;
            }
        labels[i] = y;
    }
    return ENG_OK;
}

/* The same images with other labels: fine-tuning on it must move the features. */
static eng_status shifted_batch(void *user, const int64_t *idx, int count, uint64_t aug_seed, eng_tensor *x,
                                int32_t *labels)
{
    eng_status s = synth_batch(user, idx, count, aug_seed, x, labels);
    for (int i = 0; i < count; i++)
        labels[i] = (labels[i] + 1) % K;
    return s;
}

static eng_source synth(void)
{
    eng_source s = {N_EX, K, 1, 28, 28, NULL, synth_batch};
    return s;
}

static eng_model *small_model(uint64_t seed, const eng_head_spec *head)
{
    eng_model *m = NULL;
    eng_model_spec spec = {.arch = "smallcnn", .num_classes = K, .mean = {0.2f}, .std = {0.3f}};
    if (head)
        spec.head = *head;
    if (eng_model_new(ctx, &spec, &m) != ENG_OK || eng_model_init(m, seed) != ENG_OK) {
        eng_model_free(m);
        return NULL;
    }
    return m;
}

/* Copies of every parameter's values (host, CPU context). */
static float *snapshot(eng_model *m, int64_t *n)
{
    int64_t total = 0;
    for (int i = 0; i < eng_model_num_params(m); i++)
        total += eng_tensor_numel(&eng_model_param(m, i)->value);
    float *s = malloc((size_t)total * sizeof(float)), *p = s;
    for (int i = 0; i < eng_model_num_params(m); i++) {
        const eng_tensor *v = &eng_model_param(m, i)->value;
        memcpy(p, v->data, (size_t)eng_tensor_numel(v) * sizeof(float));
        p += eng_tensor_numel(v);
    }
    *n = total;
    return s;
}

/* Whether parameters whose names start with prefix are equal (same) or all changed (!same). */
static int params_equal(eng_model *m, const float *snap, const char *prefix, int want_same)
{
    const float *p = snap;
    int ok = 1;
    for (int i = 0; i < eng_model_num_params(m); i++) {
        eng_param *pa = eng_model_param(m, i);
        int64_t n = eng_tensor_numel(&pa->value);
        if (strncmp(pa->name, prefix, strlen(prefix)) == 0) {
            int same = memcmp(p, pa->value.data, (size_t)n * sizeof(float)) == 0;
            if (same != want_same && !(pa->buffer && !want_same)) {
                printf("#   %s %s\n", pa->name, want_same ? "changed" : "did not change");
                ok = 0;
            }
        }
        p += n;
    }
    return ok;
}

static double accuracy(eng_model *m, const eng_source *s)
{
    eng_tensor x = ENG_TENSOR_INIT;
    int64_t idx[128];
    int32_t lab[128];
    eng_tensor_alloc4(&x, 128, s->c, s->h, s->w);
    int correct = 0;
    for (int i = 0; i < 128; i++)
        idx[i] = i;
    s->batch(s->user, idx, 128, 0, &x, lab);
    const eng_tensor *lg;
    if (eng_model_forward(m, &x, &(eng_forward_opts){.mode = ENG_MODE_EVAL}, &lg) == ENG_OK)
        for (int i = 0; i < 128; i++) {
            int best = 0;
            for (int k = 1; k < lg->dim[1]; k++)
                if (lg->data[i * lg->dim[1] + k] > lg->data[i * lg->dim[1] + best])
                    best = k;
            correct += best == lab[i];
        }
    eng_tensor_cleanup(&x);
    return correct / 128.0;
}

static eng_train_opts opts(int epochs)
{
    eng_train_opts o;
    eng_train_defaults(&o);
    o.epochs = epochs;
    o.batch_size = 32;
    o.lr = 0.05f;
    o.seed = 11;
    return o;
}

static void test_natural_learns(void)
{
    eng_model *m = small_model(1, NULL);
    REQUIRE(m);
    eng_source s = synth();
    eng_train_opts o = opts(2);
    o.augment = true;
    eng_train_log log = {0};
    REQUIRE_OK(eng_train_natural(m, &s, &o, &log));
    CHECK(log.n == 2 && log.steps == 2 * (N_EX / 32));
    CHECKF(log.epochs[1].loss < log.epochs[0].loss, "loss %g then %g", log.epochs[0].loss, log.epochs[1].loss);
    double acc = accuracy(m, &s);
    printf("# natural: loss %.3f -> %.3f, accuracy %.3f\n", log.epochs[0].loss, log.epochs[1].loss, acc);
    CHECKF(acc > 0.9, "accuracy %.3f after two epochs", acc);
    eng_train_log_cleanup(&log);
    eng_model_free(m);
}

static void test_checkpoint_resume(void)
{
    char path[256];
    snprintf(path, sizeof path, "%s/ckpt-%d.safetensors", getenv("RTAAS_TEST_OUT") ? getenv("RTAAS_TEST_OUT") : "/tmp",
             (int)getpid());
    remove(path);
    eng_source s = synth();
    eng_train_opts o = opts(2);
    o.augment = true;
    /* uninterrupted */
    eng_model *a = small_model(3, NULL);
    REQUIRE(a);
    eng_train_log la = {0}, lb = {0}, lc = {0};
    REQUIRE_OK(eng_train_natural(a, &s, &o, &la));
    /* interrupted in the middle of the second epoch with a checkpoint at every step, resumed */
    eng_model *b = small_model(3, NULL);
    REQUIRE(b);
    eng_train_opts ob = o;
    ob.checkpoint = path;
    ob.checkpoint_seconds = 1e-9;
    ob.stop_after_steps = 27;
    CHECK(eng_train_natural(b, &s, &ob, &lb) == ENG_ERR_CANCELLED);
    CHECK(access(path, F_OK) == 0);
    eng_model_free(b);
    b = small_model(99, NULL); /* other weights: the checkpoint must restore everything */
    REQUIRE(b);
    ob.stop_after_steps = 0;
    REQUIRE_OK(eng_train_natural(b, &s, &ob, &lc));
    CHECK(lc.resumed);
    CHECK(access(path, F_OK) != 0); /* removed once finished */
    int64_t n;
    float *sa = snapshot(a, &n), *sb = snapshot(b, &n);
    long diff = 0;
    for (int64_t i = 0; i < n; i++)
        diff += sa[i] != sb[i];
    printf("# resume: %ld of %lld parameter values differ; epoch losses %.6f/%.6f vs %.6f/%.6f\n", diff,
           (long long)n, la.epochs[0].loss, la.epochs[1].loss, lc.epochs[0].loss, lc.epochs[1].loss);
    CHECKF(diff == 0, "%ld values differ after resume", diff);
    CHECK(lc.n == 2 && la.epochs[0].loss == lc.epochs[0].loss && la.epochs[1].loss == lc.epochs[1].loss);
    free(sa), free(sb);
    eng_train_log_cleanup(&la), eng_train_log_cleanup(&lb), eng_train_log_cleanup(&lc);
    eng_model_free(a);
    eng_model_free(b);
    /* a checkpoint of another seed is refused, not silently used */
    eng_model *c = small_model(3, NULL);
    eng_train_opts oc = ob;
    oc.stop_after_steps = 5;
    CHECK(eng_train_natural(c, &s, &oc, &la) == ENG_ERR_CANCELLED);
    eng_train_log_cleanup(&la);
    oc.seed = 12;
    oc.stop_after_steps = 0;
    CHECK(eng_train_natural(c, &s, &oc, &la) == ENG_ERR_ARG);
    CHECK(strstr(eng_last_error(), "seed") != NULL);
    eng_train_log_cleanup(&la);
    remove(path);
    eng_model_free(c);
}

static void test_linear_probe(void)
{
    eng_model *bb = small_model(5, NULL);
    REQUIRE(bb);
    eng_source s = synth();
    eng_train_opts o = opts(2);
    eng_train_log log = {0};
    REQUIRE_OK(eng_train_natural(bb, &s, &o, &log)); /* a source that knows the task */
    eng_train_log_cleanup(&log);
    int64_t n;
    float *before = snapshot(bb, &n);
    float *feats;
    int64_t F;
    REQUIRE_OK(eng_extract_features(bb, &s, 100, NULL, NULL, &feats, &F));
    CHECK(F == 1024);
    int32_t *labels = malloc(N_EX * sizeof(int32_t));
    for (int i = 0; i < N_EX; i++)
        labels[i] = i % K;
    eng_source fs;
    eng_feature_data fd;
    eng_feature_source(&fs, &fd, feats, labels, N_EX, F, K);
    eng_model *head = NULL;
    eng_model_spec hs = {.arch = "head", .num_classes = K, .in_channels = (int)F};
    REQUIRE_OK(eng_model_new(ctx, &hs, &head));
    REQUIRE_OK(eng_model_init(head, 6));
    eng_train_opts oh = opts(3);
    REQUIRE_OK(eng_train_natural(head, &fs, &oh, &log));
    printf("# linear head: accuracy %.3f on cached features\n", log.epochs[2].accuracy);
    CHECK(log.epochs[2].accuracy > 0.9);
    /* the backbone is bit-identical, and the head's weights drop into backbone + head as is */
    CHECK(params_equal(bb, before, "", 1));
    eng_param *fw = eng_model_find(head, "fc.weight"), *bw = eng_model_find(bb, "fc.weight");
    REQUIRE(fw && bw && eng_tensor_same_shape(&fw->value, &bw->value));
    free(feats), free(labels), free(before);
    eng_train_log_cleanup(&log);
    eng_model_free(head);
    eng_model_free(bb);
}

static void test_mlp_head(void)
{
    eng_head_spec h = {.n_hidden = 2, .hidden = {64, 32}, .bn = true, .dropout = 0.25f};
    eng_model *m = small_model(8, &h);
    REQUIRE(m);
    CHECK(eng_model_find(m, "head.0.linear.weight") && eng_model_find(m, "head.1.bn.running_var"));
    const char *a, *b;
    REQUIRE_OK(eng_model_block(m, 0, &a, &b));
    CHECK(strcmp(a, "fc.") == 0);
    REQUIRE_OK(eng_model_block(m, 1, &a, &b));
    CHECK(strcmp(a, "head.1.") == 0);
    eng_source s = synth();
    eng_train_opts o = opts(2);
    eng_train_log log = {0};
    REQUIRE_OK(eng_train_natural(m, &s, &o, &log));
    double acc = accuracy(m, &s);
    printf("# MLP head (64-32, BN, dropout 0.25): accuracy %.3f\n", acc);
    CHECK(acc > 0.8);
    eng_train_log_cleanup(&log);
    eng_model_free(m);
}

static void test_lwf(void)
{
    eng_model *src_m = small_model(9, NULL);
    REQUIRE(src_m);
    eng_source s = synth();
    eng_train_opts o = opts(1);
    eng_train_log log = {0};
    REQUIRE_OK(eng_train_natural(src_m, &s, &o, &log));
    eng_train_log_cleanup(&log);
    float *z0;
    int64_t F;
    REQUIRE_OK(eng_extract_features(src_m, &s, 128, NULL, NULL, &z0, &F));
    int64_t n;
    float *before = snapshot(src_m, &n);
    /* warm start: stop at the end of the first half; only fc may have moved */
    eng_train_opts ol = opts(2);
    ol.lr = 0.01f;
    ol.stop_after_steps = N_EX / 32; /* one epoch of two = the warm-start half */
    CHECK(eng_train_lwf(src_m, &s, z0, &ol, 0.01f, false, 0.5f, &log) == ENG_ERR_CANCELLED);
    eng_train_log_cleanup(&log);
    CHECK(params_equal(src_m, before, "conv", 1));
    CHECK(params_equal(src_m, before, "fc1.", 1));
    CHECK(params_equal(src_m, before, "fc.", 0));
    free(before);
    /* a huge lambda keeps z(x) next to z0(x) through full fine-tuning */
    eng_model *m = small_model(9, NULL);
    REQUIRE(m);
    o = opts(1);
    REQUIRE_OK(eng_train_natural(m, &s, &o, &log));
    eng_train_log_cleanup(&log);
    /* The l2 distance's gradient has unit norm per example whatever the distance, so SGD with
     * momentum settles at a distance proportional to lr * lambda: "huge lambda" pins the features
     * only with a step size to match (here lambda 10 at lr 1e-4). The shifted labels make the
     * cross-entropy pull the features away (the warm start at this rate barely fits them). */
    ol.stop_after_steps = 0;
    ol.lr = 1e-4f;
    eng_source shifted = s;
    shifted.batch = shifted_batch;
    REQUIRE_OK(eng_train_lwf(m, &shifted, z0, &ol, 10.0f, false, 0.5f, &log));
    float *z1;
    REQUIRE_OK(eng_extract_features(m, &s, 128, NULL, NULL, &z1, &F));
    double d_huge = 0, norm = 0;
    for (int64_t i = 0; i < N_EX * F; i++) {
        d_huge += (z1[i] - z0[i]) * (double)(z1[i] - z0[i]);
        norm += z0[i] * (double)z0[i];
    }
    eng_train_log_cleanup(&log);
    /* against a small lambda, which lets the features drift */
    eng_model *m2 = small_model(9, NULL);
    REQUIRE(m2);
    REQUIRE_OK(eng_train_natural(m2, &s, &o, &log));
    eng_train_log_cleanup(&log);
    REQUIRE_OK(eng_train_lwf(m2, &shifted, z0, &ol, 0.0f, false, 0.5f, &log));
    float *z2;
    REQUIRE_OK(eng_extract_features(m2, &s, 128, NULL, NULL, &z2, &F));
    double d_zero = 0;
    for (int64_t i = 0; i < N_EX * F; i++)
        d_zero += (z2[i] - z0[i]) * (double)(z2[i] - z0[i]);
    printf("# lwf: relative feature drift %.4f with lambda 10, %.4f with lambda 0 (lr 1e-4)\n", sqrt(d_huge / norm),
           sqrt(d_zero / norm));
    CHECKF(sqrt(d_huge / norm) < 0.1, "lambda 10: drift %.4f", sqrt(d_huge / norm));
    CHECKF(d_huge < d_zero / 16, "lambda 10 drift is not far below lambda 0's");
    /* batch norm frozen: LwF on a model with BN keeps the running statistics */
    CHECK(eng_train_lwf(m2, &s, z0, &(eng_train_opts){.epochs = 1, .batch_size = 32, .augment = true}, 1, false, 0.5f,
                        &log) == ENG_ERR_ARG);
    free(z0), free(z1), free(z2);
    eng_train_log_cleanup(&log);
    eng_model_free(m), eng_model_free(m2), eng_model_free(src_m);
}

/* LwF freezes batch norm: parameters and running statistics stay as the source had them. */
static void test_lwf_freezes_bn(void)
{
    eng_head_spec h = {.n_hidden = 1, .hidden = {32}, .bn = true};
    eng_model *m = small_model(15, &h);
    REQUIRE(m);
    eng_source s = synth();
    eng_train_opts o = opts(1);
    eng_train_log log = {0};
    REQUIRE_OK(eng_train_natural(m, &s, &o, &log)); /* moves the running statistics off 0 / 1 */
    eng_train_log_cleanup(&log);
    float *z0;
    int64_t F, n;
    REQUIRE_OK(eng_extract_features(m, &s, 128, NULL, NULL, &z0, &F));
    float *before = snapshot(m, &n);
    REQUIRE_OK(eng_train_lwf(m, &s, z0, &o, 0.1f, true, 0.5f, &log));
    CHECK(params_equal(m, before, "head.0.bn.", 1));
    CHECK(params_equal(m, before, "head.0.linear.", 0));
    CHECK(!eng_model_find(m, "head.0.bn.weight")->trainable);
    free(before), free(z0);
    eng_train_log_cleanup(&log);
    eng_model_free(m);
}

static void test_retrain_blocks(void)
{
    eng_model *m = small_model(12, NULL);
    REQUIRE(m);
    eng_source s = synth();
    eng_train_opts o = opts(1);
    eng_train_log log = {0};
    REQUIRE_OK(eng_train_natural(m, &s, &o, &log));
    eng_train_log_cleanup(&log);
    int64_t n;
    float *before = snapshot(m, &n);
    CHECK(eng_prepare_retrain_blocks(m, 0, 1) == ENG_ERR_ARG);
    CHECK(eng_prepare_retrain_blocks(m, 99, 1) == ENG_ERR_ARG);
    REQUIRE_OK(eng_prepare_retrain_blocks(m, 2, 13)); /* fc and fc1, re-initialised */
    CHECK(params_equal(m, before, "fc", 0));
    REQUIRE_OK(eng_train_natural(m, &s, &o, &log));
    CHECK(params_equal(m, before, "conv", 1));
    double acc = accuracy(m, &s);
    printf("# retrain_blocks k=2: accuracy %.3f\n", acc);
    CHECK(acc > 0.8);
    free(before);
    eng_train_log_cleanup(&log);
    eng_model_free(m);
}

static void test_adversarial_training(void)
{
    eng_source s = synth();
    eng_train_opts o = opts(1);
    eng_train_log log = {0};
    eng_model *m = small_model(14, NULL);
    REQUIRE(m);
    REQUIRE_OK(eng_train_free_at(m, &s, &o, 0.1f, 4, &log));
    CHECK(log.steps == N_EX / 32);
    printf("# free_at (m=4, eps 0.1): adversarial training accuracy %.3f, loss %.3f\n", log.epochs[0].accuracy,
           log.epochs[0].loss);
    CHECK(isfinite(log.epochs[0].loss));
    CHECK(eng_train_free_at(m, &s, &o, 2.0f, 4, &log) == ENG_ERR_ARG);
    eng_train_log_cleanup(&log);
    eng_attack_spec a;
    eng_attack_defaults(&a, ENG_ATTACK_PGD, 0.1f, 3);
    REQUIRE_OK(eng_train_adversarial(m, &s, &o, &a, &log));
    printf("# adv_finetune (PGD-3, eps 0.1): adversarial training accuracy %.3f\n", log.epochs[0].accuracy);
    eng_train_log_cleanup(&log);
    eng_model_free(m);
}

static void test_bad_options(void)
{
    eng_model *m = small_model(1, NULL);
    REQUIRE(m);
    eng_source s = synth();
    eng_train_log log = {0};
    eng_train_opts o = opts(1);
    o.batch_size = 1;
    CHECK(eng_train_natural(m, &s, &o, &log) == ENG_ERR_ARG);
    CHECK(strstr(eng_last_error(), "batch_size"));
    o = opts(0);
    CHECK(eng_train_natural(m, &s, &o, &log) == ENG_ERR_ARG);
    o = opts(1);
    o.batch_size = N_EX * 2;
    CHECK(eng_train_natural(m, &s, &o, &log) == ENG_ERR_ARG);
    o = opts(1);
    o.lr = 1e30f;
    eng_status st = eng_train_natural(m, &s, &o, &log);
    CHECKF(st == ENG_ERR_ARG && strstr(eng_last_error(), "loss"), "a diverging run stops with a clear error");
    eng_train_log_cleanup(&log);
    eng_model_free(m);
}

int main(void)
{
    if (eng_ctx_new(&ctx, NULL) != ENG_OK) {
        printf("not ok - context: %s\n", eng_last_error());
        return 1;
    }
    T_RUN(test_natural_learns);
    T_RUN(test_checkpoint_resume);
    T_RUN(test_linear_probe);
    T_RUN(test_mlp_head);
    T_RUN(test_lwf);
    T_RUN(test_lwf_freezes_bn);
    T_RUN(test_retrain_blocks);
    T_RUN(test_adversarial_training);
    T_RUN(test_bad_options);
    eng_ctx_free(ctx);
    return t_exit();
}
