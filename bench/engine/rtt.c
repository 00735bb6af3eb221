/*
 * How far apart two CPUs are, as the cache-line round trip between them.
 *
 *   rtt [CPU_A CPU_B]      (default 0 1; built and run by bench/engine/run.sh)
 *
 * Two threads, pinned one to each CPU, hand one cache line back and forth
 * 200000 times; the time per round trip is printed in nanoseconds.  Cores
 * sharing an L3 (one AMD core complex, one Intel ring) answer in well under
 * 100 ns; cores on different complexes or sockets take several times that.
 * A VM's vCPUs land wherever the host puts them, and that changes while it
 * runs: on our 2-vCPU machine the same pair measured ~70 ns most of the time
 * and ~330 ns for stretches of seconds to minutes.  Multithreaded inference
 * hands every activation from one core to the other, so 2-thread timings
 * differ between the two states; run.sh prints this before each pass so a
 * table can be read against it.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { ROUNDS = 200000 };

static _Alignas(64) atomic_long ball;
static atomic_int ready; /* the returner's: 1 pinned, -1 could not pin */

static int pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

/* Odd values are the first CPU's serves, even ones the second's returns. */
static void *returner(void *arg)
{
    if (pin(*(const int *)arg)) {
        atomic_store(&ready, -1);
        return NULL;
    }
    atomic_store(&ready, 1);
    for (long i = 0; i < ROUNDS; i++) {
        while (atomic_load_explicit(&ball, memory_order_acquire) != 2 * i + 1) {
        }
        atomic_store_explicit(&ball, 2 * i + 2, memory_order_release);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int a = 0, b = 1;
    if (argc == 3) {
        a = atoi(argv[1]);
        b = atoi(argv[2]);
    } else if (argc != 1) {
        fprintf(stderr, "usage: rtt [CPU_A CPU_B]\n");
        return 64;
    }
    if (pin(a)) {
        fprintf(stderr, "rtt: cannot run on CPU %d\n", a);
        return 1;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, returner, &b)) {
        fprintf(stderr, "rtt: cannot start a thread\n");
        return 1;
    }
    while (atomic_load(&ready) == 0) {
    }
    if (atomic_load(&ready) < 0) {
        pthread_join(t, NULL);
        fprintf(stderr, "rtt: cannot run on CPU %d\n", b);
        return 1;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < ROUNDS; i++) {
        atomic_store_explicit(&ball, 2 * i + 1, memory_order_release);
        while (atomic_load_explicit(&ball, memory_order_acquire) != 2 * i + 2) {
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    pthread_join(t, NULL);
    double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
    printf("%.0f\n", ns / ROUNDS);
    return 0;
}
