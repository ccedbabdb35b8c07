/*
 * test_pool.c -- stress test of the kernels' thread pool (csrc/pool.c) on its own.
 *
 * Every chunk of every job must run exactly once, with a slot below the job's
 * thread count and unique among the threads running at the same time; a job
 * must see the writes made before it and its caller every write of its chunks.
 * Cases: many jobs of random sizes and thread counts from one caller and from
 * several callers at once; workers held up inside chunks (so that late workers
 * meet newer jobs); jobs started from inside a chunk (run serially); calls after
 * the workers went to sleep; a child process after fork() using the pool while
 * the parent's callers keep running.  Run it under ThreadSanitizer too
 * (tests/c/run_pool.sh does both builds).  Prints "N passed, 0 failed".
 *
 * Build: cc -std=gnu11 -O2 -pthread -Icsrc tests/c/test_pool.c csrc/pool.c
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pool.h"

static _Atomic long n_failed = 0;
static _Atomic long n_passed = 0;

#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        if (cond) {                                                                           \
            atomic_fetch_add(&n_passed, 1);                                                   \
        } else {                                                                              \
            if (atomic_fetch_add(&n_failed, 1) < 20) {                                        \
                fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                          \
                fprintf(stderr, __VA_ARGS__);                                                 \
                fprintf(stderr, "\n");                                                        \
            }                                                                                 \
        }                                                                                     \
    } while (0)

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* One job: each chunk writes its own entries (plain stores: a chunk run twice, or
 * concurrently, is a data race ThreadSanitizer reports, and a count != 1). */
typedef struct {
    int nt;
    int64_t nchunks;
    const int32_t *input; /* written by the caller before the job */
    int32_t *out;         /* out[c] = input[c] * 3 + 1 */
    int32_t *runs;        /* runs[c]: how many times chunk c ran */
    _Atomic int slot_busy[QC_POOL_MAX_THREADS];
    _Atomic int bad_slot;
    _Atomic int64_t in_flight, finished; /* chunks running now, chunks returned */
    int delay_us;         /* workers sleep this long in some chunks */
    int nested;           /* chunks start a job of their own */
} job;

static void inner_fn(void *ctx, int64_t c, int slot) {
    int32_t *v = (int32_t *)ctx;
    v[c] += 1;
    (void)slot;
}

static void chunk_fn(void *ctx, int64_t c, int slot) {
    job *j = (job *)ctx;
    if (slot < 0 || slot >= j->nt || atomic_exchange(&j->slot_busy[slot], 1) != 0) {
        atomic_store(&j->bad_slot, 1);
        if (slot < 0 || slot >= j->nt)
            return;
    }
    atomic_fetch_add(&j->in_flight, 1);
    j->runs[c] += 1;
    if (j->delay_us && slot != 0 && (c % 7) == 3)
        usleep((useconds_t)j->delay_us);
    j->out[c] = j->input[c] * 3 + 1;
    if (j->nested) {
        int32_t v[5] = {0, 0, 0, 0, 0};
        qc_pool_run(4, 5, inner_fn, v); /* serial: the pool is busy with this job */
        for (int i = 0; i < 5; i++)
            if (v[i] != 1)
                atomic_store(&j->bad_slot, 1);
    }
    atomic_store(&j->slot_busy[slot], 0);
    atomic_fetch_sub(&j->in_flight, 1);
    atomic_fetch_add(&j->finished, 1);
}

static void run_one(uint64_t *rng, int max_chunks, int delay_us, int nested) {
    job *j = (job *)calloc(1, sizeof(job));
    j->nt = 1 + (int)(rng_next(rng) % 6);
    j->nchunks = (int64_t)(rng_next(rng) % (uint64_t)(max_chunks + 1));
    j->delay_us = delay_us;
    j->nested = nested;
    int64_t n = j->nchunks ? j->nchunks : 1;
    int32_t *input = (int32_t *)malloc((size_t)n * sizeof(int32_t));
    j->out = (int32_t *)calloc((size_t)n, sizeof(int32_t));
    j->runs = (int32_t *)calloc((size_t)n, sizeof(int32_t));
    for (int64_t c = 0; c < n; c++)
        input[c] = (int32_t)(rng_next(rng) & 0xffff);
    j->input = input;
    qc_pool_run(j->nt, j->nchunks, chunk_fn, j);
    const int64_t in_flight = atomic_load(&j->in_flight), finished = atomic_load(&j->finished);
    CHECK(in_flight == 0 && finished == j->nchunks, "returned with %ld chunks running, %ld of %ld done",
          (long)in_flight, (long)finished, (long)j->nchunks);
    int64_t bad = -1;
    for (int64_t c = 0; c < j->nchunks && bad < 0; c++)
        if (j->runs[c] != 1 || j->out[c] != input[c] * 3 + 1)
            bad = c;
    CHECK(bad < 0, "nt %d, %ld chunks: chunk %ld ran %d times, out %d", j->nt, (long)j->nchunks,
          (long)bad, bad >= 0 ? j->runs[bad] : 0, bad >= 0 ? j->out[bad] : 0);
    CHECK(!atomic_load(&j->bad_slot), "nt %d: a slot out of range or shared", j->nt);
    free(input);
    free(j->out);
    free(j->runs);
    free(j);
}

typedef struct {
    uint64_t seed;
    int jobs, max_chunks, delay_us, nested;
} caller_args;

static void *caller(void *p) {
    caller_args *a = (caller_args *)p;
    uint64_t rng = a->seed;
    for (int i = 0; i < a->jobs; i++)
        run_one(&rng, a->max_chunks, a->delay_us, a->nested);
    return NULL;
}

static void callers(int n, int jobs, int max_chunks, int delay_us, int nested) {
    pthread_t t[8];
    caller_args a[8];
    for (int i = 0; i < n; i++) {
        a[i] = (caller_args){0x9e3779b97f4a7c15ull * (uint64_t)(i + 1), jobs, max_chunks, delay_us,
                             nested};
        pthread_create(&t[i], NULL, caller, &a[i]);
    }
    for (int i = 0; i < n; i++)
        pthread_join(t[i], NULL);
}

/* A child after fork(), while other threads of the parent keep calling. */
static void fork_case(void) {
    pthread_t t;
    caller_args a = {12345, 3000, 64, 0, 0};
    pthread_create(&t, NULL, caller, &a);
    for (int k = 0; k < 5; k++) {
        usleep(2000);
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            alarm(60); /* a deadlock ends as a failure, not a hang */
            uint64_t rng = 777 + (uint64_t)k;
            for (int i = 0; i < 300; i++)
                run_one(&rng, 200, 0, 0);
            _exit(atomic_load(&n_failed) ? 1 : 0);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "fork child %d: status %d", k, st);
    }
    pthread_join(t, NULL);
}

int main(void) {
    uint64_t rng = 42;
    printf("pool: %s, spin %d us\n", qc_pool_kind(), qc_pool_spin_us());
    /* one caller: many small and large jobs */
    for (int i = 0; i < 4000; i++)
        run_one(&rng, i % 2 ? 8 : 400, 0, 0);
    printf("one caller: done, %d workers\n", qc_pool_workers());
    /* several callers at once (one gets the workers, the others run serially) */
    callers(4, 1500, 100, 0, 0);
    printf("four callers: done\n");
    /* workers held up inside chunks: late workers meet newer jobs */
    callers(3, 150, 60, 300, 0);
    for (int i = 0; i < 200; i++)
        run_one(&rng, 30, 100, 0);
    printf("delayed workers: done\n");
    /* jobs from inside chunks */
    callers(2, 300, 40, 0, 1);
    printf("nested jobs: done\n");
    /* calls after the workers slept */
    for (int i = 0; i < 20; i++) {
        usleep(i % 2 ? 3000 : 200);
        run_one(&rng, 50, 0, 0);
    }
    printf("after sleeps: done\n");
    if (!getenv("QC_POOL_TEST_NO_FORK")) { /* set under ThreadSanitizer and qemu-user, which do
                                            * not follow fork() from a threaded process */
        fork_case();
        printf("fork: done\n");
    }
    printf("%ld passed, %ld failed\n", (long)atomic_load(&n_passed), (long)atomic_load(&n_failed));
    return atomic_load(&n_failed) ? 1 : 0;
}
