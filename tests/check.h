/*
 * The assertion the C test programs share: CHECK counts, and on a failure
 * prints where, the condition and the message, then lets the test go on, so
 * one run reports every failure rather than the first.
 */
#ifndef MASKD_TESTS_CHECK_H
#define MASKD_TESTS_CHECK_H

#include <stdio.h>

static int passed, failed;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (cond) {                                                        \
            passed++;                                                      \
        } else {                                                           \
            failed++;                                                      \
            printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);         \
            printf(__VA_ARGS__);                                           \
            printf("\n");                                                  \
        }                                                                  \
    } while (0)

#endif
