/* maskd: one binary, several subcommands. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#ifndef MASKD_VERSION
#define MASKD_VERSION "dev"
#endif

static const char usage[] =
    "usage: maskd <command> [options]\n"
    "commands:\n"
    "  infer     run an ONNX model on .npy inputs (maskd infer --help)\n"
    "  predict   run a model card's pipeline on an image, print the answer JSON\n"
    "  serve     run the HTTP daemon (maskd serve --help)\n"
    "  check-config  validate and print the effective configuration\n"
    "  version   print the version\n";

int cli_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("maskd: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

int cli_parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") ||
        !strcmp(argv[1], "help")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 64 : 0;
    }
    if (!strcmp(argv[1], "infer")) return maskd_cmd_infer(argc - 1, argv + 1);
    if (!strcmp(argv[1], "predict")) return maskd_cmd_predict(argc - 1, argv + 1);
    if (!strcmp(argv[1], "serve")) return maskd_cmd_serve(argc - 1, argv + 1);
    if (!strcmp(argv[1], "check-config") || !strcmp(argv[1], "--check-config"))
        return maskd_cmd_check_config(argc - 1, argv + 1);
    if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
        printf("maskd %s\n", MASKD_VERSION);
        return 0;
    }
    fputs(usage, stderr);
    return cli_fail(64, "unknown command '%s'", argv[1]);
}
