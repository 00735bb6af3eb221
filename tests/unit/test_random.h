/* Seeded random test data for the unit tests (xorshift64: reproducible on
 * every platform).  Define TEST_RNG_SEED before including. */
#ifndef MK_TEST_RANDOM_H
#define MK_TEST_RANDOM_H

#include <stdint.h>
#include <stdlib.h>

static uint64_t rng_state = TEST_RNG_SEED;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static int64_t rnd(int64_t lo, int64_t hi) { return lo + (int64_t)(rng() % (uint64_t)(hi - lo + 1)); }
static float rndf(void) { return (float)((double)(rng() >> 11) / 9007199254740992.0 * 2.0 - 1.0); }

/* n floats uniform in [-1, 1); never NULL for n = 0. */
static float *random_floats(int64_t n)
{
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof *p);
    for (int64_t i = 0; i < n; i++) p[i] = rndf();
    return p;
}

#endif
