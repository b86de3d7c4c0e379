/* rtaas import: a PyTorch checkpoint (torch.save, zip or legacy) to an rtaas backbone file,
 * with the report of what was recognised on stdout. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmds.h"
#include "engine.h"

static int import_usage(void)
{
    fprintf(stderr, "usage: rtaas import MODEL.pt --out BACKBONE.safetensors [--mean a,b,c --std a,b,c] "
                    "[--input-size N]\n");
    return 2;
}

/* "0.485,0.456,0.406" into v; the count, or -1 when malformed or longer than max. */
static int parse_floats(const char *s, float *v, int max)
{
    int n = 0;
    for (;;) {
        char *end;
        errno = 0;
        double x = strtod(s, &end);
        if (end == s || errno || n == max)
            return -1;
        v[n++] = (float)x;
        if (*end == '\0')
            return n;
        if (*end != ',')
            return -1;
        s = end + 1;
    }
}

int cmd_import(int argc, char **argv)
{
    const char *in = NULL, *out = NULL, *mean = NULL, *std = NULL;
    eng_pt_import_opts opts = {0};
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--out") && i + 1 < argc)
            out = argv[++i];
        else if (!strcmp(argv[i], "--mean") && i + 1 < argc)
            mean = argv[++i];
        else if (!strcmp(argv[i], "--std") && i + 1 < argc)
            std = argv[++i];
        else if (!strcmp(argv[i], "--input-size") && i + 1 < argc)
            opts.input_size = atoi(argv[++i]);
        else if (argv[i][0] == '-' && argv[i][1])
            return fprintf(stderr, "rtaas import: unknown option %s\n", argv[i]), import_usage();
        else if (!in)
            in = argv[i];
        else
            return import_usage();
    }
    if (!in || !out)
        return import_usage();
    if (!mean != !std) {
        fprintf(stderr, "rtaas import: --mean and --std go together\n");
        return 2;
    }
    if (mean) {
        int nm = parse_floats(mean, opts.mean, ENG_MAX_CHANNELS), ns = parse_floats(std, opts.std, ENG_MAX_CHANNELS);
        if (nm < 1 || nm != ns) {
            fprintf(stderr, "rtaas import: --mean and --std need the same number (1 to %d) of comma-separated values\n",
                    ENG_MAX_CHANNELS);
            return 2;
        }
        opts.n_norm = nm;
    }
    if (opts.input_size < 0 || opts.input_size > 4096) {
        fprintf(stderr, "rtaas import: --input-size must be between 1 and 4096\n");
        return 2;
    }
    eng_ctx *ctx = NULL;
    eng_ctx_opts copts = {.device = "cpu"};
    if (eng_ctx_new(&ctx, &copts) != ENG_OK) {
        fprintf(stderr, "rtaas import: %s\n", eng_last_error());
        return 1;
    }
    eng_pt_report rep;
    eng_pt_report_init(&rep);
    eng_status s = eng_pt_import(ctx, in, out, &opts, &rep);
    int rc = 0;
    if (s != ENG_OK) {
        fprintf(stderr, "rtaas import: %s\n", eng_last_error());
        rc = 1;
    } else {
        char *json = eng_pt_report_json(&rep);
        for (int i = 0; i < rep.n_notes; i++)
            fprintf(stderr, "rtaas import: note: %s\n", rep.notes[i]);
        if (json) {
            printf("%s\n", json);
            free(json);
        }
    }
    eng_pt_report_cleanup(&rep);
    eng_ctx_free(ctx);
    return rc;
}
