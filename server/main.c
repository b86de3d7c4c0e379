/* The rtaas command: one binary whose subcommands run the engine and, later, the service. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "job.h"
#include "service.h"
#include "cmds.h"

static int usage(FILE *f)
{
    fprintf(f,
            "usage: rtaas <command> [args]\n"
            "  run SPEC.json [--out DIR] [--device cpu|cuda:N]\n"
            "                   run one job (a transfer or a source training) without a server:\n"
            "                   progress on stderr, the report JSON on stdout, artifacts in DIR\n"
            "                   (default: ./rtaas-out); a checkpoint left in DIR is resumed\n"
            "  import MODEL.pt --out FILE [--mean a,b,c --std a,b,c]  PyTorch checkpoint to a backbone\n"
            "  serve [--no-workers]\n"
            "                   the REST API and a worker per device (RTAAS_* variables; see README);\n"
            "                   --no-workers: the API only, for API nodes (as RTAAS_DEVICES empty)\n"
            "  worker           workers only, for GPU hosts that share the database\n"
            "  apikey create --tenant NAME\n"
            "                   make an API key for a tenant (printed once)\n"
            "  routes           list the API's routes\n"
            "  version          print the version\n"
            "  info             backends, devices and threads this build can use\n");
    return f == stderr ? 2 : 0;
}

static int cmd_info(void)
{
    eng_ctx *ctx = NULL;
    printf("rtaas %s\n%s\n", RTAAS_VERSION, eng_build_info());
    if (eng_ctx_new(&ctx, NULL) == ENG_OK) {
        printf("cpu: %s, %d threads\n", eng_ctx_backend_name(ctx), eng_ctx_threads(ctx));
        eng_ctx_free(ctx);
    } else {
        printf("cpu: unavailable: %s\n", eng_last_error());
    }
    printf("cuda devices: %d\n", eng_cuda_device_count());
    return 0;
}

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static bool run_cancelled(void *user)
{
    (void)user;
    return interrupted != 0;
}

/* One line per phase change, at the end of a phase, and at most one every 5 s in between. */
static void run_progress(void *user, const char *phase, int64_t done, int64_t total)
{
    static char last_phase[32];
    static time_t last;
    (void)user;
    time_t now = time(NULL);
    bool changed = strcmp(phase, last_phase) != 0;
    if (!changed && now - last < 5 && done != total)
        return;
    snprintf(last_phase, sizeof last_phase, "%s", phase);
    last = now;
    fprintf(stderr, "rtaas: %-9s %lld/%lld (%.0f%%)\n", phase, (long long)done, (long long)total,
            total > 0 ? 100.0 * (double)done / (double)total : 0.0);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap)
            break;
        if (cap >= (16u << 20)) { /* a spec is a few hundred bytes; refuse absurd files */
            free(buf);
            buf = NULL;
            errno = EFBIG;
            break;
        }
        char *nb = realloc(buf, cap *= 2);
        if (!nb) {
            free(buf);
            buf = NULL;
        }
        buf = nb;
    }
    fclose(f);
    *len = n;
    return buf;
}

static int cmd_run(int argc, char **argv)
{
    const char *spec_path = NULL, *out = "rtaas-out", *device = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--out") && i + 1 < argc)
            out = argv[++i];
        else if (!strcmp(argv[i], "--device") && i + 1 < argc)
            device = argv[++i];
        else if (argv[i][0] == '-' && argv[i][1])
            return fprintf(stderr, "rtaas run: unknown option %s\n", argv[i]), usage(stderr);
        else if (!spec_path)
            spec_path = argv[i];
        else
            return usage(stderr);
    }
    if (!spec_path)
        return usage(stderr);
    size_t len = 0;
    char *text = strcmp(spec_path, "-") ? read_file(spec_path, &len) : NULL;
    if (!strcmp(spec_path, "-"))
        text = read_file("/dev/stdin", &len);
    if (!text) {
        fprintf(stderr, "rtaas run: cannot read %s: %s\n", spec_path, strerror(errno));
        return 2;
    }
    eng_job *job = NULL;
    char field[160];
    eng_status s = eng_job_parse(text, len, &job, field, sizeof field);
    free(text);
    if (s != ENG_OK) {
        fprintf(stderr, "rtaas run: bad spec%s%s: %s\n", field[0] ? " at " : "", field, eng_last_error());
        return 2;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    eng_job_hooks hooks = {.progress = run_progress, .cancelled = run_cancelled, .out_dir = out, .device = device};
    char *report = NULL;
    fprintf(stderr, "rtaas: %s job, artifacts in %s\n", eng_job_method(job), out);
    s = eng_job_run(job, &hooks, &report);
    eng_job_free(job);
    if (s != ENG_OK) {
        fprintf(stderr, "rtaas run: %s: %s\n", eng_strerror(s), eng_last_error());
        return s == ENG_ERR_CANCELLED ? 130 : 1;
    }
    fputs(report, stdout);
    fputc('\n', stdout);
    free(report);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage(stderr);
    if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
        printf("rtaas %s\n", RTAAS_VERSION);
        return 0;
    }
    if (!strcmp(argv[1], "info"))
        return cmd_info();
    if (!strcmp(argv[1], "run"))
        return cmd_run(argc - 2, argv + 2);
    if (!strcmp(argv[1], "import"))
        return cmd_import(argc - 2, argv + 2);
    if (!strcmp(argv[1], "serve"))
        return cmd_serve(argc - 2, argv + 2, true, true);
    if (!strcmp(argv[1], "worker"))
        return cmd_serve(argc - 2, argv + 2, false, true);
    if (!strcmp(argv[1], "apikey"))
        return cmd_apikey(argc - 2, argv + 2);
    if (!strcmp(argv[1], "routes"))
        return cmd_routes();
    if (!strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))
        return usage(stdout);
    fprintf(stderr, "rtaas: unknown command '%s'\n", argv[1]);
    return usage(stderr);
}
