/* A small test harness: each test binary runs named cases and prints one TAP-style line per
 * case ("ok - name", "not ok - name", "ok - name # SKIP why"); tests/run counts them. */
#ifndef T_H
#define T_H

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_case_failed, t_case_skipped, t_total_failed;
static char t_skip_reason[256];

#define T_UNUSED __attribute__((unused))
static void t_failf(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void t_failf(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stdout, "#   %s:%d: ", file, line);
    vfprintf(stdout, fmt, ap);
    fprintf(stdout, "\n");
    va_end(ap);
    t_case_failed++;
}

/* CHECK(cond) and CHECKF(cond, "why %d", x): record a failure and go on. */
#define CHECK(cond)                                                  \
    do {                                                             \
        if (!(cond))                                                 \
            t_failf(__FILE__, __LINE__, "check failed: %s", #cond);  \
    } while (0)
#define CHECKF(cond, ...)                                            \
    do {                                                             \
        if (!(cond))                                                 \
            t_failf(__FILE__, __LINE__, __VA_ARGS__);                \
    } while (0)
/* REQUIRE: as CHECK, but leaves the case at once. */
#define REQUIRE(cond)                                                \
    do {                                                             \
        if (!(cond)) {                                               \
            t_failf(__FILE__, __LINE__, "required: %s", #cond);      \
            return;                                                  \
        }                                                            \
    } while (0)
/* Engine calls that must succeed; prints eng_last_error() otherwise. */
#define REQUIRE_OK(expr)                                                                              \
    do {                                                                                              \
        eng_status s_ = (expr);                                                                       \
        if (s_ != ENG_OK) {                                                                           \
            t_failf(__FILE__, __LINE__, "%s -> %s: %s", #expr, eng_strerror(s_), eng_last_error());  \
            return;                                                                                   \
        }                                                                                             \
    } while (0)

/* Marks the running case skipped (it must not also fail). */
T_UNUSED static void t_skip(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t_skip_reason, sizeof t_skip_reason, fmt, ap);
    va_end(ap);
    t_case_skipped = 1;
}

static void t_run(const char *name, void (*fn)(void))
{
    t_case_failed = 0;
    t_case_skipped = 0;
    fflush(stdout);
    fn();
    if (t_case_failed) {
        printf("not ok - %s\n", name);
        t_total_failed++;
    } else if (t_case_skipped) {
        printf("ok - %s # SKIP %s\n", name, t_skip_reason);
    } else {
        printf("ok - %s\n", name);
    }
    fflush(stdout);
}

#define T_RUN(fn) t_run(#fn, fn)

T_UNUSED static int t_exit(void) { return t_total_failed ? 1 : 0; }

/* Relative error ||a - b||_2 / max(||b||_2, tiny), in double. */
T_UNUSED static double t_rel_err(const float *a, const float *b, long n)
{
    double num = 0, den = 0;
    for (long i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return sqrt(num) / (den > 0 ? sqrt(den) : 1e-30);
}

/* Directory of real datasets shared with the workplace (../shared/data), or NULL if absent. */
T_UNUSED static const char *t_shared_data(void)
{
    const char *env = getenv("RTAAS_SHARED_DATA");
    static const char *cands[] = {"../shared/data", "../../shared/data", "/work/shared/data"};
    if (env && *env)
        return env;
    for (size_t i = 0; i < sizeof cands / sizeof *cands; i++) {
        FILE *f;
        char p[512];
        snprintf(p, sizeof p, "%s/README.md", cands[i]);
        if ((f = fopen(p, "r"))) {
            fclose(f);
            return cands[i];
        }
    }
    return NULL;
}

#endif
