/* The subcommands of the single maskd binary. */
#ifndef MASKD_CLI_H
#define MASKD_CLI_H

#include <stdbool.h>

int maskd_cmd_infer(int argc, char **argv);
int maskd_cmd_predict(int argc, char **argv);
int maskd_cmd_serve(int argc, char **argv);
int maskd_cmd_check_config(int argc, char **argv);

/* Prints "maskd: <message>" to stderr and returns code. */
int cli_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Parses a whole decimal int in [lo, hi]; non-zero when it is not one. */
int cli_parse_int(const char *s, int lo, int hi, int *out);

#endif
