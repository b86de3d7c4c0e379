/* Jobs end to end on the CPU at a tiny size: the spec's math mode (parsed, refused when unknown,
 * resolved to what the device computes in and reported), and the report's record of the batches
 * the job ran at. The out-of-memory retry at half the batch needs a device that runs out of
 * memory: built against the CUDA emulation (make cuda-emu, tests/suites/cuda_emu.sh), this test
 * gives the emulated card too little memory for the batches asked (CUEMU_MEM_LIMIT). */
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"
#include "t.h"

static char tdir[512];
static char images[600], labels[600];

static void put_be32(FILE *f, uint32_t v)
{
    const unsigned char b[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16), (unsigned char)(v >> 8),
                                (unsigned char)v};
    fwrite(b, 1, 4, f);
}

/* 256 28x28 images in two classes a small CNN learns at once: bright on the left or the right. */
static int write_idx(void)
{
    enum { N = 256, S = 28 };
    snprintf(images, sizeof images, "%s/images.idx", tdir);
    snprintf(labels, sizeof labels, "%s/labels.idx", tdir);
    FILE *fi = fopen(images, "wb"), *fl = fopen(labels, "wb");
    if (!fi || !fl)
        return -1;
    put_be32(fi, 0x803), put_be32(fi, N), put_be32(fi, S), put_be32(fi, S);
    put_be32(fl, 0x801), put_be32(fl, N);
    for (int n = 0; n < N; n++) {
        const int k = n % 2;
        unsigned char px[S * S];
        for (int i = 0; i < S * S; i++) {
            const bool bright = (i % S < S / 2) == (k == 0);
            px[i] = (unsigned char)((bright ? 160 : 20) + (int)(eng_uniform((uint64_t)n, (uint64_t)i) * 60));
        }
        fwrite(px, 1, sizeof px, fi);
        fputc(k, fl);
    }
    return fclose(fi) | fclose(fl);
}

static char *spec_text(const char *math, int batch, int eval_batch)
{
    json_t *d = json_pack("{s:s, s:s, s:s}", "format", "idx", "path", images, "labels", labels);
    json_t *sp = json_pack("{s:s, s:i, s:s, s:o, s:O, s:{s:i, s:i, s:f}, s:{s:f, s:i, s:i, s:i, s:[{s:s, s:i}]}}",
                           "method", "natural", "seed", 3, "arch", "smallcnn", "dataset", d, "test", d, "params",
                           "epochs", 1, "batch_size", batch, "lr", 0.05, "eval", "eps", 0.1, "examples", 64,
                           "batch_size", eval_batch, "gradient_maps", 2, "attacks", "kind", "pgd", "steps", 2);
    if (math)
        json_object_set_new(sp, "math", json_string(math));
    char *text = json_dumps(sp, JSON_COMPACT);
    json_decref(sp);
    return text;
}

static eng_status parse(const char *text, eng_job **job, char *field, size_t n)
{
    return eng_job_parse(text, strlen(text), job, field, n);
}

static void job_math_parse(void)
{
    static const char *const ok[] = {"fp32", "tf32", "bf16"};
    char field[160];
    for (int i = 0; i < 3; i++) {
        char *text = spec_text(ok[i], 32, 16);
        eng_job *job = NULL;
        eng_status s = parse(text, &job, field, sizeof field);
        CHECKF(s == ENG_OK && job, "math %s: %s", ok[i], eng_last_error());
        eng_job_free(job);
        free(text);
    }
    /* an unknown mode, a number, and a misspelt field name: refused, naming the field */
    const char *bad[][2] = {{"\"fp16\"", "math"}, {"3", "math"}};
    for (int i = 0; i < 2; i++) {
        char *text = spec_text(NULL, 32, 16);
        json_t *sp = json_loads(text, 0, NULL);
        json_object_set_new(sp, "math", json_loads(bad[i][0], JSON_DECODE_ANY, NULL));
        free(text);
        text = json_dumps(sp, JSON_COMPACT);
        json_decref(sp);
        eng_job *job = NULL;
        eng_status s = parse(text, &job, field, sizeof field);
        CHECKF(s == ENG_ERR_ARG && !job, "math %s accepted", bad[i][0]);
        CHECKF(!strcmp(field, bad[i][1]), "math %s: field '%s'", bad[i][0], field);
        CHECKF(strstr(eng_last_error(), "math"), "math %s: message '%s'", bad[i][0], eng_last_error());
        free(text);
    }
    char *text = spec_text(NULL, 32, 16);
    json_t *sp = json_loads(text, 0, NULL);
    json_object_set_new(sp, "maths", json_string("bf16"));
    free(text);
    text = json_dumps(sp, JSON_COMPACT);
    json_decref(sp);
    eng_job *job = NULL;
    CHECK(parse(text, &job, field, sizeof field) == ENG_ERR_ARG && !job);
    CHECKF(!strcmp(field, "maths"), "field '%s'", field);
    free(text);
}

/* Runs a spec on a device into tdir/<name>; the report, or NULL (the failure recorded). */
static json_t *run_spec(char *text, const char *device, const char *name)
{
    char field[160], out[700];
    eng_job *job = NULL;
    eng_status s = parse(text, &job, field, sizeof field);
    free(text);
    CHECKF(s == ENG_OK, "parse: %s", eng_last_error());
    if (s != ENG_OK)
        return NULL;
    snprintf(out, sizeof out, "%s/%s", tdir, name);
    eng_job_hooks h = {.out_dir = out, .device = device};
    char *report = NULL;
    s = eng_job_run(job, &h, &report);
    eng_job_free(job);
    CHECKF(s == ENG_OK && report, "run on %s: %s: %s", device, eng_strerror(s), eng_last_error());
    json_t *rep = report ? json_loads(report, 0, NULL) : NULL;
    free(report);
    return rep;
}

static double clean_accuracy(json_t *rep)
{
    return json_real_value(json_object_get(json_object_get(json_object_get(rep, "evaluation"), "clean"), "accuracy"));
}

/* A CPU job asked for bf16 runs in FP32 and says so; its report records the batches it ran at
 * and no out-of-memory retry. */
static void job_math_on_cpu(void)
{
    json_t *rep = run_spec(spec_text("bf16", 32, 16), "cpu", "cpu");
    REQUIRE(rep);
    const char *math = json_string_value(json_object_get(json_object_get(rep, "backend"), "math"));
    CHECKF(math && !strcmp(math, "fp32"), "backend.math %s", math ? math : "(none)");
    json_t *b = json_object_get(rep, "batches");
    CHECK(json_integer_value(json_object_get(b, "batch_size")) == 32);
    CHECK(json_integer_value(json_object_get(b, "eval_batch")) == 16);
    CHECK(json_integer_value(json_object_get(b, "gradient_maps")) == 2);
    CHECK(json_is_array(json_object_get(rep, "oom_retries")) && json_array_size(json_object_get(rep, "oom_retries")) == 0);
    /* and the job did its work: the two halves are told apart */
    CHECKF(clean_accuracy(rep) > 0.9, "clean accuracy %.3f", clean_accuracy(rep));
    json_decref(rep);
}

/* A stop asked in the middle of an evaluation batch ends the job there (ENG_ERR_CANCELLED, which
 * a stopping worker answers by putting the job back in the queue), not after the batch's
 * attacks: one batch of 64 under PGD-200 here; the hook says stop at its 5th poll after the
 * training's last step (the batch's start, then a step of the attack). */
typedef struct stop_in_eval {
    bool trained, eval_done;
    int polls;
} stop_in_eval;

static void sie_progress(void *user, const char *phase, int64_t done, int64_t total)
{
    stop_in_eval *c = user;
    c->trained |= !strcmp(phase, "train") && done == total;
    c->eval_done |= !strcmp(phase, "eval");
}

static bool sie_cancelled(void *user)
{
    stop_in_eval *c = user;
    return c->trained && ++c->polls == 5;
}

static void job_stop_in_eval(void)
{
    char *text = spec_text(NULL, 32, 64);
    json_t *sp = json_loads(text, 0, NULL);
    free(text);
    json_t *atk = json_array_get(json_object_get(json_object_get(sp, "eval"), "attacks"), 0);
    json_object_set_new(atk, "steps", json_integer(200));
    text = json_dumps(sp, JSON_COMPACT);
    json_decref(sp);
    char field[160], out[700];
    eng_job *job = NULL;
    REQUIRE_OK(parse(text, &job, field, sizeof field));
    free(text);
    snprintf(out, sizeof out, "%s/stop", tdir);
    stop_in_eval c = {0};
    eng_job_hooks h = {.progress = sie_progress, .cancelled = sie_cancelled, .user = &c, .out_dir = out, .device = "cpu"};
    eng_status s = eng_job_run(job, &h, NULL);
    eng_job_free(job);
    CHECKF(s == ENG_ERR_CANCELLED && strstr(eng_last_error(), "attack: cancelled at step"), "%s: %s", eng_strerror(s),
           eng_last_error());
    CHECKF(c.trained && c.polls == 5 && !c.eval_done, "trained %d, polls %d, an evaluation batch done %d", c.trained,
           c.polls, c.eval_done);
}

/* A card too small for the batches asked: training and evaluation run out of device memory,
 * run again at half their batch until they fit, and the job succeeds and says what it did. */
static void job_oom_retry(void)
{
#ifndef RTAAS_CUDA_EMU
    t_skip("needs a device whose memory runs out: the CUDA emulation build runs it (make cuda-emu)");
#else
    /* the small CNN's weights, gradients and momentum take 39 MiB; with 48 MiB in all, a training
     * batch of 64 28x28 images does not fit, nor does an evaluation batch of 32 under PGD */
    setenv("CUEMU_MEM_LIMIT", "50331648", 1);
    REQUIRE(eng_cuda_device_count() > 0);
    /* a quarter of the data and half the evaluation: the emulation's convolutions are slow */
    char *text = spec_text(NULL, 64, 256);
    json_t *sp = json_loads(text, 0, NULL);
    free(text);
    json_object_set_new(json_object_get(sp, "dataset"), "per_class", json_integer(32));
    json_object_set_new(json_object_get(sp, "eval"), "examples", json_integer(32));
    json_t *rep = run_spec(json_dumps(sp, JSON_COMPACT), "cuda", "oom");
    json_decref(sp);
    unsetenv("CUEMU_MEM_LIMIT");
    REQUIRE(rep);
    json_t *retries = json_object_get(rep, "oom_retries"), *b = json_object_get(rep, "batches"), *v;
    size_t i;
    bool train = false, eval = false;
    json_array_foreach(retries, i, v)
    {
        const char *stage = json_string_value(json_object_get(v, "stage"));
        const json_int_t from = json_integer_value(json_object_get(v, "from")),
                         to = json_integer_value(json_object_get(v, "to"));
        CHECKF(to == from / 2, "retry %zu: %lld -> %lld", i, (long long)from, (long long)to);
        CHECKF(strstr(json_string_value(json_object_get(v, "error")), "out of memory"), "retry %zu: error '%s'", i,
               json_string_value(json_object_get(v, "error")));
        if (!strcmp(stage, "train")) {
            CHECK(!strcmp(json_string_value(json_object_get(v, "field")), "params.batch_size"));
            train = true;
        }
        if (!strcmp(stage, "eval")) {
            CHECK(!strcmp(json_string_value(json_object_get(v, "field")), "eval.batch_size"));
            eval = true;
        }
    }
    CHECKF(train && eval, "retries in training %d and evaluation %d: %s", train, eval,
           json_dumps(retries, JSON_COMPACT));
    const json_int_t bs = json_integer_value(json_object_get(b, "batch_size")),
                     eb = json_integer_value(json_object_get(b, "eval_batch"));
    CHECKF(bs >= 2 && bs < 64 && eb >= 1 && eb < 32, "batches %lld / %lld", (long long)bs, (long long)eb);
    /* a whole training at the smaller batch, one epoch logged, and a model that learnt */
    json_t *epochs = json_object_get(json_object_get(rep, "training"), "epochs");
    CHECKF(json_array_size(epochs) == 1, "%zu epochs logged", json_array_size(epochs));
    CHECKF(clean_accuracy(rep) > 0.9, "clean accuracy %.3f", clean_accuracy(rep));
    const char *math = json_string_value(json_object_get(json_object_get(rep, "backend"), "math"));
    CHECKF(math && !strcmp(math, "tf32"), "backend.math %s (the CUDA default is tf32)", math ? math : "(none)");
    json_decref(rep);
#endif
}

int main(void)
{
    const char *base = getenv("RTAAS_TEST_OUT");
    snprintf(tdir, sizeof tdir, "%s/job.XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tdir) || write_idx() != 0) {
        printf("not ok - test data in %s: %s\n", tdir, strerror(errno));
        return 1;
    }
    (void)t_skip;
    (void)t_rel_err;
    (void)t_shared_data;
    T_RUN(job_math_parse);
    T_RUN(job_math_on_cpu);
    T_RUN(job_stop_in_eval);
    T_RUN(job_oom_retry);
    if (!t_total_failed) {
        char cmd[700];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tdir);
        if (system(cmd) != 0)
            printf("# could not remove %s\n", tdir);
    }
    return t_exit();
}
