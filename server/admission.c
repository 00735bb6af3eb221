/* The admission queue: a bounded FIFO in front of a fixed set of inference
 * workers.  Refusing at once when full (503) keeps latency bounded for the
 * requests that are accepted; a reaper answers 504 for jobs whose deadline
 * passes while every worker is busy, so a long job ahead of them does not
 * hold their answer back.
 *
 * A preparer thread runs the jobs' prepare step (decoding the image) for the
 * jobs next in line while the workers are busy.  On a 4000x3000 JPEG that is
 * 5 ms of one core per request, which `maskd predict --repeat` never pays
 * (it decodes once); done ahead, it overlaps the running job's single-
 * threaded stretches instead of delaying the next job by that much. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon.h"

static struct {
    pthread_mutex_t lock;
    pthread_cond_t work;  /* a job arrived, or stop */
    pthread_cond_t idle;  /* a job finished */
    pthread_cond_t prep_wake; /* the preparer may find work: a job came or left, or stop */
    pthread_cond_t prepared;  /* a prepare step finished */
    mk_job *head, *tail;
    int queued, running;
    int n_workers;
    pthread_t *threads;
    pthread_t reaper, preparer;
    bool stop;
    bool reaper_started, preparer_started;
} q = {.lock = PTHREAD_MUTEX_INITIALIZER};

enum { PREP_NOT_BEGUN = 0, PREP_UNDERWAY, PREP_DONE };

static void abs_in_ms(struct timespec *ts, double ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    long long ns = ts->tv_nsec + (long long)(ms * 1e6);
    ts->tv_sec += ns / 1000000000LL;
    ts->tv_nsec = ns % 1000000000LL;
}

static void *worker_main(void *arg)
{
    int worker = (int)(intptr_t)arg;
    pthread_mutex_lock(&q.lock);
    for (;;) {
        while (!q.head && !q.stop) pthread_cond_wait(&q.work, &q.lock);
        if (!q.head) break; /* stop, and nothing left */
        mk_job *job = q.head;
        q.head = job->next;
        if (!q.head) q.tail = NULL;
        q.queued--;
        q.running++;
        pthread_cond_broadcast(&q.prep_wake); /* the preparer may look further ahead */
        /* The preparer finishes what it began (the job must not be freed
         * under it); one it has not reached is ours. */
        bool prepare_here = false;
        if (job->prepare) {
            while (job->prep == PREP_UNDERWAY) pthread_cond_wait(&q.prepared, &q.lock);
            if (job->prep == PREP_NOT_BEGUN) {
                job->prep = PREP_UNDERWAY;
                prepare_here = true;
            }
        }
        pthread_mutex_unlock(&q.lock);

        job->t_started = srv_now_ms();
        if (job->t_started > job->t_deadline) {
            job->finish(job, MK_JOB_EXPIRED);
        } else {
            if (prepare_here) job->prepare(job);
            job->run(job, worker);
            job->finish(job, MK_JOB_RAN);
        }

        pthread_mutex_lock(&q.lock);
        q.running--;
        pthread_cond_broadcast(&q.idle);
    }
    pthread_mutex_unlock(&q.lock);
    return NULL;
}

/* Takes expired jobs out of the queue.  Polling every few milliseconds is
 * plenty for deadlines that are seconds long. */
static void *reaper_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&q.lock);
    while (!q.stop) {
        struct timespec ts;
        abs_in_ms(&ts, 20);
        pthread_cond_timedwait(&q.idle, &q.lock, &ts);
        double now = srv_now_ms();
        mk_job *expired = NULL, **link = &q.head, *prev = NULL;
        while (*link) {
            mk_job *j = *link;
            /* One being prepared is left to the worker that takes it. */
            if (now > j->t_deadline && j->prep != PREP_UNDERWAY) {
                *link = j->next;
                if (q.tail == j) q.tail = prev;
                q.queued--;
                j->next = expired;
                expired = j;
            } else {
                prev = j;
                link = &j->next;
            }
        }
        if (!expired) continue;
        pthread_mutex_unlock(&q.lock);
        while (expired) {
            mk_job *j = expired;
            expired = j->next;
            j->t_started = now;
            j->finish(j, MK_JOB_EXPIRED);
        }
        pthread_mutex_lock(&q.lock);
        pthread_cond_broadcast(&q.idle);
    }
    pthread_mutex_unlock(&q.lock);
    return NULL;
}

/* The next job to prepare, or NULL.  The first jobs in line go to idle
 * workers, which prepare them themselves; beyond those, at most one prepared
 * job per worker waits: enough to keep every worker fed, and a bound on the
 * decoded images held in memory. */
static mk_job *next_to_prepare(void)
{
    int ahead = 0;
    for (mk_job *j = q.head; j; j = j->next) ahead += j->prepare && j->prep != PREP_NOT_BEGUN;
    if (ahead >= q.n_workers) return NULL;
    int skip = q.n_workers - q.running, pos = 0;
    for (mk_job *j = q.head; j; j = j->next, pos++)
        /* (one past its deadline gets a 504, not a decode) */
        if (pos >= skip && j->prepare && j->prep == PREP_NOT_BEGUN && srv_now_ms() <= j->t_deadline)
            return j;
    return NULL;
}

static void *preparer_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&q.lock);
    while (!q.stop) {
        mk_job *j = next_to_prepare();
        if (!j) {
            pthread_cond_wait(&q.prep_wake, &q.lock);
            continue;
        }
        j->prep = PREP_UNDERWAY;
        pthread_mutex_unlock(&q.lock);
        j->prepare(j);
        pthread_mutex_lock(&q.lock);
        j->prep = PREP_DONE;
        pthread_cond_broadcast(&q.prepared);
    }
    pthread_mutex_unlock(&q.lock);
    return NULL;
}

int mk_admission_start(int workers, char *err, size_t err_size)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&q.work, &ca);
    pthread_cond_init(&q.idle, &ca);
    pthread_cond_init(&q.prep_wake, &ca);
    pthread_cond_init(&q.prepared, &ca);
    pthread_condattr_destroy(&ca);
    q.threads = calloc((size_t)workers, sizeof *q.threads);
    if (!q.threads) {
        snprintf(err, err_size, "out of memory");
        return -1;
    }
    q.stop = false;
    for (int i = 0; i < workers; i++) {
        if (pthread_create(&q.threads[i], NULL, worker_main, (void *)(intptr_t)i)) {
            snprintf(err, err_size, "cannot start inference worker %d: %s", i, strerror(errno));
            q.n_workers = i;
            mk_admission_stop();
            return -1;
        }
        q.n_workers = i + 1;
    }
    if (pthread_create(&q.reaper, NULL, reaper_main, NULL)) {
        snprintf(err, err_size, "cannot start the queue reaper");
        mk_admission_stop();
        return -1;
    }
    q.reaper_started = true;
    if (pthread_create(&q.preparer, NULL, preparer_main, NULL)) {
        snprintf(err, err_size, "cannot start the queue's preparer");
        mk_admission_stop();
        return -1;
    }
    q.preparer_started = true;
    return 0;
}

int mk_admission_submit(mk_job *job, int queue_depth, int deadline_ms)
{
    pthread_mutex_lock(&q.lock);
    /* Free workers take jobs straight away; only the waiting ones count
     * against the depth. */
    int free_workers = q.n_workers - q.running;
    if (q.stop || q.queued - free_workers >= queue_depth) {
        pthread_mutex_unlock(&q.lock);
        return -1;
    }
    job->t_enqueued = srv_now_ms();
    job->t_deadline = job->t_enqueued + deadline_ms;
    job->next = NULL;
    if (q.tail)
        q.tail->next = job;
    else
        q.head = job;
    q.tail = job;
    q.queued++;
    job->prep = PREP_NOT_BEGUN;
    pthread_cond_signal(&q.work);
    if (job->prepare) pthread_cond_signal(&q.prep_wake);
    pthread_mutex_unlock(&q.lock);
    return 0;
}

void mk_admission_stop(void)
{
    pthread_mutex_lock(&q.lock);
    while (q.queued || q.running) pthread_cond_wait(&q.idle, &q.lock);
    q.stop = true;
    pthread_cond_broadcast(&q.work);
    pthread_cond_broadcast(&q.idle);
    pthread_cond_broadcast(&q.prep_wake);
    pthread_mutex_unlock(&q.lock);
    for (int i = 0; i < q.n_workers; i++) pthread_join(q.threads[i], NULL);
    if (q.reaper_started) pthread_join(q.reaper, NULL);
    if (q.preparer_started) pthread_join(q.preparer, NULL);
    free(q.threads);
    q.threads = NULL;
    q.n_workers = 0;
    q.reaper_started = q.preparer_started = false;
}

int mk_admission_queued(void)
{
    pthread_mutex_lock(&q.lock);
    int n = q.queued;
    pthread_mutex_unlock(&q.lock);
    return n;
}

int mk_admission_running(void)
{
    pthread_mutex_lock(&q.lock);
    int n = q.running;
    pthread_mutex_unlock(&q.lock);
    return n;
}

int mk_admission_workers(void)
{
    return q.n_workers;
}
