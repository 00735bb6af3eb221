/*
 * The thread pool: fixed workers and a parallel-for.
 *
 * Several sessions may share one pool, so parallel_for posts a job on a
 * queue instead of assuming it owns the workers; the caller always works on
 * its own job too, so a job finishes even when every worker is busy
 * elsewhere.  A job lives on the caller's stack and the caller leaves only
 * when no worker still holds it.
 *
 * Each slot (the caller is 0, worker i is always i + 1) owns a contiguous
 * home range of the chunks and claims from it first, then takes what is left
 * of the others'.  Where consecutive ops split alike (the output channels of
 * a 1x1 conv, then the same channels of the depthwise conv after it), a
 * thread then reads what it wrote itself.  That matters most when a host
 * puts two vCPUs on different core complexes: a cache line then takes ~330
 * ns to go from one core to the other and back, against ~70 within one
 * complex (both measured on our 2-vCPU machine, whose placement changes
 * from minute to minute).  There, mobilenet_v2 at 2 threads ran 8.1 ms with
 * home ranges against 8.9 with chunks claimed in turn from one counter
 * (4.8 either way within one complex).
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
    int n_ranges;                /* home ranges: one per slot */
    atomic_int_fast64_t *claim;  /* next unclaimed chunk of each home range */
    atomic_int_fast64_t done_chunks;
    atomic_int users; /* workers holding a pointer to this job (changed under pool->lock;
                         read without it by the spinning caller) */
    struct job *next;
} job;

typedef struct worker {
    maskd_pool *pool;
    int slot; /* the same in every job, so its home ranges are too */
} worker;

struct maskd_pool {
    int threads; /* slots: the caller plus the workers */
    pthread_t *workers;
    worker *selves; /* worker_main's arguments */
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

/* Home range r is chunks [range_start(r), range_start(r + 1)). */
static int64_t range_start(const job *j, int r)
{
    return j->n_chunks * r / j->n_ranges;
}

static bool all_claimed(const job *j)
{
    for (int r = 0; r < j->n_ranges; r++)
        if (atomic_load_explicit(&j->claim[r], memory_order_relaxed) < range_start(j, r + 1))
            return false;
    return true;
}

static void work_on(job *j, int slot)
{
    /* The slot's own range, then the others' in turn from the next one. */
    for (int i = 0; i < j->n_ranges; i++) {
        const int r = (slot + i) % j->n_ranges;
        const int64_t end_chunk = range_start(j, r + 1);
        for (;;) {
            if (atomic_load_explicit(&j->claim[r], memory_order_relaxed) >= end_chunk) break;
            const int64_t c = atomic_fetch_add(&j->claim[r], 1);
            if (c >= end_chunk) break;
            const int64_t begin = c * j->chunk;
            const int64_t end = begin + j->chunk < j->n ? begin + j->chunk : j->n;
            j->fn(j->arg, begin, end, slot);
            atomic_fetch_add(&j->done_chunks, 1);
        }
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
    const worker *self = arg;
    maskd_pool *p = self->pool;
    const int slot = self->slot;
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
        if (all_claimed(j)) {
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
    p->selves = calloc((size_t)threads, sizeof *p->selves);
    if (!p->workers || !p->selves) {
        maskd_pool_free(p);
        return mk_fail(err, MASKD_ERR_NOMEM, "out of memory creating the thread pool");
    }
    for (int i = 0; i < threads - 1; i++) {
        p->selves[i] = (worker){p, i + 1};
        if (pthread_create(&p->workers[i], NULL, worker_main, &p->selves[i])) {
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
    free(p->selves);
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
    j.n_ranges = threads;
    atomic_int_fast64_t claim[threads];
    j.claim = claim;
    for (int r = 0; r < threads; r++) atomic_init(&claim[r], range_start(&j, r));
    atomic_init(&j.done_chunks, 0);
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
