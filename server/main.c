/* The rtaas command: one binary whose subcommands run the engine and, later, the service. */
#include <stdio.h>
#include <string.h>

#include "engine.h"

static int usage(FILE *f)
{
    fprintf(f,
            "usage: rtaas <command> [args]\n"
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
    if (!strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))
        return usage(stdout);
    fprintf(stderr, "rtaas: unknown command '%s'\n", argv[1]);
    return usage(stderr);
}
