/*
 * The machine's single-precision FMA peak, measured rather than looked up.
 *
 *   peak [THREADS]        (built and run by bench/engine/run.sh)
 *
 * Two numbers per core, each a throughput loop long enough that timer noise
 * does not matter:
 *   clock    a chain of dependent integer adds: each takes one cycle on every
 *            x86 core since the Pentium Pro, so adds per second = the clock
 *            the core actually runs at (turbo included), which /proc/cpuinfo
 *            cannot say inside a VM;
 *   FMA      24 independent accumulators (enough to cover FMA latency x
 *            pipes on current cores) of 512-bit (AVX-512) or 256-bit (AVX2)
 *            FMAs.
 * FLOP per cycle = FMA FLOP/s / clock; it shows the vector datapath (32 for
 * two 256-bit FMA pipes, 64 for two 512-bit ones).  The peak printed is the
 * measured AVX-512 FMA rate; bench/engine/run.sh relates conv GFLOP/s to it.
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

enum { ADD_ROUNDS = 20 * 1000 * 1000, FMA_ROUNDS = 4 * 1000 * 1000 };

/* Cycles per second from 100 dependent adds per round. */
static double measure_clock(void)
{
    unsigned long x = 0;
    const double t0 = now();
    for (long r = 0; r < ADD_ROUNDS; r++) {
#define ADD10 "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t" \
              "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
        __asm__ volatile(ADD10 ADD10 ADD10 ADD10 ADD10 ADD10 ADD10 ADD10 ADD10 ADD10 : "+r"(x));
#undef ADD10
    }
    const double dt = now() - t0;
    if (x != 100UL * ADD_ROUNDS) return 0.0;
    return 100.0 * ADD_ROUNDS / dt;
}

#define FMA_CHAINS(T, SET1, FMA, ADD, REDUCE, LANES)                              \
    T acc[24], a = SET1(0.999999f), b = SET1(1e-7f);                           \
    for (int i = 0; i < 24; i++) acc[i] = SET1((float)i);                        \
    const double t0 = now();                                                     \
    for (long r = 0; r < FMA_ROUNDS; r++) {                                      \
        _Pragma("GCC unroll 24")                                                 \
        for (int i = 0; i < 24; i++) acc[i] = FMA(acc[i], a, b);                 \
    }                                                                            \
    const double dt = now() - t0;                                                \
    T sum = acc[0];                                                              \
    for (int i = 1; i < 24; i++) sum = ADD(sum, acc[i]);                         \
    sink += REDUCE(sum);                                                         \
    return 2.0 * LANES * 24.0 * FMA_ROUNDS / dt;

static volatile float sink;

__attribute__((target("avx512f"))) static double fma512(void)
{
    FMA_CHAINS(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, _mm512_reduce_add_ps, 16)
}

__attribute__((target("avx2"))) static float reduce256(__m256 v)
{
    float f[8];
    _mm256_storeu_ps(f, v);
    return f[0] + f[1] + f[2] + f[3] + f[4] + f[5] + f[6] + f[7];
}

__attribute__((target("avx2,fma"))) static double fma256(void)
{
    FMA_CHAINS(__m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, reduce256, 8)
}

typedef struct result {
    double clock, avx512, avx2;
} result;

static void *measure(void *arg)
{
    result *r = arg;
    r->clock = measure_clock();
    r->avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? fma256() : 0.0;
    r->avx512 = __builtin_cpu_supports("avx512f") ? fma512() : 0.0;
    return NULL;
}

int main(int argc, char **argv)
{
    const int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1 || threads > 256) {
        fprintf(stderr, "usage: peak [THREADS 1..256]\n");
        return 2;
    }
    pthread_t tid[256];
    result res[256];
    for (int t = 0; t < threads; t++)
        if (pthread_create(&tid[t], NULL, measure, &res[t])) {
            perror("pthread_create");
            return 1;
        }
    double clock = 0, avx512 = 0, avx2 = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(tid[t], NULL);
        clock += res[t].clock / threads;
        avx512 += res[t].avx512;
        avx2 += res[t].avx2;
    }
    printf("threads %d: clock %.2f GHz; FMA peak AVX-512 %.1f GFLOP/s (%.1f FLOP/cycle/core), "
           "AVX2 %.1f GFLOP/s (%.1f FLOP/cycle/core)\n",
           threads, clock / 1e9, avx512 / 1e9, avx512 / threads / clock, avx2 / 1e9,
           avx2 / threads / clock);
    return 0;
}
