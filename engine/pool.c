/*
 * The thread pool: fixed workers and a parallel-for.
 *
 * Several sessions may share one pool, so parallel_for posts a job on a
 * queue instead of assuming it owns the workers; the caller always works on
 * its own job too, so a job finishes even when every worker is busy
 * elsewhere.  Chunks are claimed with an atomic counter; a job lives on the
 * caller's stack and the caller leaves only when no worker still holds it.
 *
 * Between jobs a worker spins for a short while before it sleeps, and so
 * does a caller waiting for its job's last chunks: an op on a small map
 * takes tens of microseconds, about what a futex wake-up costs, so a pool
 * that always slept ran such ops on one thread in practice (mobilenet_v2 was
 * slower on 2 threads than on 1).  The spin is bounded (50 us by default;
 * MASKD_SPIN_US sets it, 0 = always sleep at once, for machines whose cores
 * are oversubscribed) so an idle pool costs nothing much.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#include <cblas.h>

#include "mk.h"

typedef struct job {
    mk_range_fn fn;
    void *arg;
    int64_t n, chunk, n_chunks;
    atomic_int_fast64_t next_chunk;
    atomic_int_fast64_t done_chunks;
    atomic_int next_slot;
    atomic_int users; /* workers holding a pointer to this job (changed under pool->lock;
                         read without it by the spinning caller) */
    struct job *next;
} job;

struct maskd_pool {
    int threads; /* slots: the caller plus the workers */
    pthread_t *workers;
    int n_workers;
    pthread_mutex_t lock;
    pthread_cond_t work_ready; /* a job was queued, or stop */
    pthread_cond_t job_done;   /* a worker released a job */
    job *queue;
    atomic_int queued; /* jobs on the queue, read without the lock by spinners */
    int64_t spin_ns;   /* how long a thread spins for work or its job's end */
    bool stop;
};

enum { DEFAULT_SPIN_US = 50, MAX_SPIN_US = 100000 };

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spins until done(arg) or spin_ns pass; true when done. */
static bool spin_until(int64_t spin_ns, bool (*done)(const void *), const void *arg)
{
    if (spin_ns <= 0) return done(arg);
    const int64_t give_up = now_ns() + spin_ns;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if (done(arg)) return true;
            cpu_relax();
        }
        if (now_ns() > give_up) return done(arg);
    }
}

static bool work_queued(const void *pool)
{
    const maskd_pool *p = pool;
    return atomic_load_explicit(&p->queued, memory_order_acquire) > 0; /* stop: the lock's */
}

/* Every chunk done and every worker gone from the job: the caller then
 * finds nothing to wait for under the lock (a worker let go of the job last
 * otherwise makes the caller sleep for its wake-up). */
static bool job_released(const void *arg)
{
    const job *j = arg;
    return atomic_load_explicit(&j->done_chunks, memory_order_acquire) >= j->n_chunks &&
           atomic_load_explicit(&j->users, memory_order_acquire) == 0;
}

static void work_on(job *j, int slot)
{
    for (;;) {
        int64_t c = atomic_fetch_add(&j->next_chunk, 1);
        if (c >= j->n_chunks) return;
        int64_t begin = c * j->chunk;
        int64_t end = begin + j->chunk < j->n ? begin + j->chunk : j->n;
        j->fn(j->arg, begin, end, slot);
        atomic_fetch_add(&j->done_chunks, 1);
    }
}

static void unlink_job(maskd_pool *p, job *j)
{
    for (job **q = &p->queue; *q; q = &(*q)->next)
        if (*q == j) {
            *q = j->next;
            atomic_fetch_sub(&p->queued, 1);
            return;
        }
}

static void *worker_main(void *arg)
{
    maskd_pool *p = arg;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        if (!p->stop && !p->queue) {
            pthread_mutex_unlock(&p->lock);
            spin_until(p->spin_ns, work_queued, p);
            pthread_mutex_lock(&p->lock);
        }
        while (!p->stop && !p->queue) pthread_cond_wait(&p->work_ready, &p->lock);
        if (p->stop) break;
        job *j = p->queue;
        int slot = atomic_fetch_add(&j->next_slot, 1);
        if (slot >= p->threads ||
            atomic_load(&j->next_chunk) >= j->n_chunks) {
            /* Nothing left to claim: take it off the queue so we don't spin. */
            unlink_job(p, j);
            continue;
        }
        atomic_fetch_add(&j->users, 1);
        pthread_mutex_unlock(&p->lock);
        work_on(j, slot);
        pthread_mutex_lock(&p->lock);
        unlink_job(p, j);
        atomic_fetch_sub(&j->users, 1);
        pthread_cond_broadcast(&p->job_done);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static void blas_single_thread(void)
{
    /* OpenBLAS's own threads would fight ours: the pool parallelizes around
     * single-threaded BLAS calls instead. */
    openblas_set_num_threads(1);
}

int maskd_pool_create(int threads, maskd_pool **out, maskd_error *err)
{
    *out = NULL;
    pthread_once(&blas_once, blas_single_thread);
    if (threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int)n : 1;
    }
    if (threads > 256)
        return mk_fail(err, MASKD_ERR_INVALID, "thread count %d is too large (max 256)", threads);
    maskd_pool *p = calloc(1, sizeof *p);
    if (!p) return mk_fail(err, MASKD_ERR_NOMEM, "out of memory creating the thread pool");
    p->threads = threads;
    atomic_init(&p->queued, 0);
    const char *spin_us = getenv("MASKD_SPIN_US");
    char *end = NULL;
    long us = spin_us ? strtol(spin_us, &end, 10) : DEFAULT_SPIN_US;
    if (spin_us && (end == spin_us || *end || us < 0 || us > MAX_SPIN_US)) us = DEFAULT_SPIN_US;
    p->spin_ns = (int64_t)us * 1000;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->work_ready, NULL);
    pthread_cond_init(&p->job_done, NULL);
    p->workers = calloc((size_t)threads, sizeof *p->workers);
    if (!p->workers) {
        maskd_pool_free(p);
        return mk_fail(err, MASKD_ERR_NOMEM, "out of memory creating the thread pool");
    }
    for (int i = 0; i < threads - 1; i++) {
        if (pthread_create(&p->workers[i], NULL, worker_main, p)) {
            maskd_pool_free(p);
            return mk_fail(err, MASKD_ERR_RUNTIME, "could not start worker thread %d", i);
        }
        p->n_workers++;
    }
    *out = p;
    return MASKD_OK;
}

void maskd_pool_free(maskd_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    pthread_cond_broadcast(&p->work_ready);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->n_workers; i++) pthread_join(p->workers[i], NULL);
    pthread_cond_destroy(&p->job_done);
    pthread_cond_destroy(&p->work_ready);
    pthread_mutex_destroy(&p->lock);
    free(p->workers);
    free(p);
}

int maskd_pool_threads(const maskd_pool *p) { return p ? p->threads : 1; }
int mk_pool_slots(const mk_pool *p) { return p ? p->threads : 1; }

void mk_parallel_for(mk_pool *p, int64_t n, int64_t grain, mk_range_fn fn, void *arg)
{
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int threads = p ? p->threads : 1;
    if (threads == 1 || n <= grain) {
        fn(arg, 0, n, 0);
        return;
    }
    /* A few chunks per thread evens out uneven chunk costs. */
    int64_t chunk = (n + (int64_t)threads * 4 - 1) / ((int64_t)threads * 4);
    if (chunk < grain) chunk = grain;
    job j = {.fn = fn, .arg = arg, .n = n, .chunk = chunk};
    j.n_chunks = (n + chunk - 1) / chunk;
    atomic_init(&j.next_chunk, 0);
    atomic_init(&j.done_chunks, 0);
    atomic_init(&j.next_slot, 1); /* slot 0 is the caller's */
    atomic_init(&j.users, 0);

    pthread_mutex_lock(&p->lock);
    j.next = NULL;
    job **tail = &p->queue;
    while (*tail) tail = &(*tail)->next;
    *tail = &j;
    atomic_fetch_add(&p->queued, 1);
    pthread_cond_broadcast(&p->work_ready);
    pthread_mutex_unlock(&p->lock);

    work_on(&j, 0);

    spin_until(p->spin_ns, job_released, &j);
    pthread_mutex_lock(&p->lock);
    unlink_job(p, &j);
    while (atomic_load(&j.users) > 0 || atomic_load(&j.done_chunks) < j.n_chunks)
        pthread_cond_wait(&p->job_done, &p->lock);
    pthread_mutex_unlock(&p->lock);
}
