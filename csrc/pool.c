/*
 * pool.c -- the kernels' thread pool (see pool.h for the contract).
 *
 * One job at a time: the caller that wins `busy` publishes its job (function,
 * context, chunk count, thread count) under a sequence lock, `seq`: odd while
 * the fields are written, then even and new.  A worker reads the fields and
 * checks that `seq` did not move, so it holds a consistent copy of one job.
 * Chunks are claimed from `claim` = (the job's seq << 32) | next chunk: a
 * worker claims with a compare-and-swap that also checks the tag, so a worker
 * that read an old job (it was descheduled meanwhile) can never claim, or
 * skip, a chunk of a newer one.  `done` counts finished chunks; the caller
 * returns when it reaches the chunk count.  A worker only reads the caller's
 * context after a successful claim, and the caller cannot return before that
 * chunk is done, so no worker touches a context that is gone.
 *
 * Sleeping: a worker that found nothing new for QUANTCORE_SPIN_US registers in
 * `sleepers` and waits on `seq`; the caller wakes the sleepers after publishing
 * only when there are any.  The caller, once the unclaimed chunks are gone,
 * polls `done` for the same time, then sets `caller_waiting` and waits on
 * `done`; the worker finishing the last chunk wakes it.  Both handshakes are
 * store, then load of the other side's flag, all sequentially consistent, so
 * one side always sees the other.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#endif
#include "pool.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if !defined(QC_POOL_SERIAL) && (defined(__unix__) || defined(__APPLE__))
#define QC_POOL_THREADS 1
#endif

#ifdef QC_POOL_THREADS
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#if defined(__linux__)
#include <sched.h>
#ifndef QC_POOL_NO_FUTEX /* (tests build the condition-variable version this way) */
#include <linux/futex.h>
#include <sys/syscall.h>
#define QC_POOL_FUTEX 1
#endif
#endif
#endif

/* ---- environment ---- */

static int parse_positive(const char *s) {
    if (!s)
        return 0;
    while (*s == ' ' || *s == '\t')
        s++;
    long v = 0;
    int digits = 0;
    for (; *s >= '0' && *s <= '9' && v <= 1000000; s++, digits++)
        v = v * 10 + (*s - '0');
    if (!digits)
        return 0;
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s && *s != ',') /* OMP_NUM_THREADS may list one count per nesting level */
        return 0;
    return v > 0 ? (int)(v > 1000000 ? 1000000 : v) : 0;
}

static int cpus_available(void) {
#if defined(QC_POOL_THREADS) && defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return n;
    }
#endif
#if defined(QC_POOL_THREADS) && defined(_SC_NPROCESSORS_ONLN)
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n > 0)
        return (int)n;
#endif
    return 1;
}

int qc_pool_default_threads(void) {
#ifdef QC_POOL_THREADS
    static _Atomic int cached = 0;
    int n = atomic_load_explicit(&cached, memory_order_relaxed);
    if (n > 0)
        return n;
    n = parse_positive(getenv("OMP_NUM_THREADS"));
    if (n <= 0)
        n = cpus_available();
    if (n > QC_POOL_MAX_THREADS)
        n = QC_POOL_MAX_THREADS;
    atomic_store_explicit(&cached, n, memory_order_relaxed);
    return n;
#else
    return 1;
#endif
}

#ifndef QC_POOL_THREADS
/* ---- serial pool: every call runs on the calling thread ---- */

void qc_pool_run(int nt, int64_t nchunks, qc_pool_fn fn, void *ctx) {
    (void)nt;
    for (int64_t c = 0; c < nchunks; c++)
        fn(ctx, c, 0);
}

const char *qc_pool_kind(void) { return "serial"; }
int qc_pool_workers(void) { return 0; }
int qc_pool_spin_us(void) { return 0; }

#else
/* ---- the POSIX pool ---- */

#define QC_POOL_DEFAULT_SPIN_US 50
#define QC_POOL_MAX_SPIN_US 100000

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* Block until *a may differ from v (spurious returns allowed), and wake all
 * threads blocked on a. */
#ifdef QC_POOL_FUTEX
static void os_wait(_Atomic uint32_t *a, uint32_t v) {
    syscall(SYS_futex, (uint32_t *)a, FUTEX_WAIT_PRIVATE, v, NULL, NULL, 0);
}
static void os_wake_all(_Atomic uint32_t *a) {
    syscall(SYS_futex, (uint32_t *)a, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}
#else
static pthread_mutex_t wait_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wait_cond = PTHREAD_COND_INITIALIZER;
static void os_wait(_Atomic uint32_t *a, uint32_t v) {
    pthread_mutex_lock(&wait_mutex);
    if (atomic_load(a) == v)
        pthread_cond_wait(&wait_cond, &wait_mutex);
    pthread_mutex_unlock(&wait_mutex);
}
static void os_wake_all(_Atomic uint32_t *a) {
    (void)a;
    pthread_mutex_lock(&wait_mutex);
    pthread_cond_broadcast(&wait_cond);
    pthread_mutex_unlock(&wait_mutex);
}
#endif

#define QC_LINE 64

static struct {
    /* the published job, under the sequence lock seq */
    _Alignas(QC_LINE) _Atomic uint32_t seq;
    _Atomic(qc_pool_fn) fn;
    _Atomic(void *) ctx;
    _Atomic uint32_t nchunks;
    _Atomic int nt;
    /* written by every participant */
    _Alignas(QC_LINE) _Atomic uint64_t claim;
    _Alignas(QC_LINE) _Atomic uint32_t done;
    _Atomic uint32_t caller_waiting;
    _Alignas(QC_LINE) _Atomic int sleepers;
    _Atomic int busy;       /* a caller owns the workers */
    _Atomic int nworkers;   /* changed only by the owner of busy (or a fork child) */
    _Atomic int spin_us;    /* -1 until read from the environment */
} P = {.spin_us = -1};

typedef struct {
    qc_pool_fn fn;
    void *ctx;
    uint32_t nchunks;
    int nt;
    uint32_t seq;
} job_view;

static uint64_t spin_ns(void) {
    int us = atomic_load_explicit(&P.spin_us, memory_order_relaxed);
    return us > 0 ? (uint64_t)us * 1000u : 0;
}

/* A consistent copy of job s (even), or 0 when a newer one is being written. */
static int read_job(uint32_t s, job_view *j) {
    j->fn = atomic_load_explicit(&P.fn, memory_order_acquire);
    j->ctx = atomic_load_explicit(&P.ctx, memory_order_acquire);
    j->nchunks = atomic_load_explicit(&P.nchunks, memory_order_acquire);
    j->nt = atomic_load_explicit(&P.nt, memory_order_acquire);
    j->seq = s;
    return atomic_load_explicit(&P.seq, memory_order_relaxed) == s;
}

/* Run the chunks of job j that are still unclaimed. */
static void work(const job_view *j, int slot) {
    const uint64_t tag = (uint64_t)j->seq << 32;
    uint64_t c = atomic_load_explicit(&P.claim, memory_order_relaxed);
    for (;;) {
        if ((c & ~(uint64_t)0xffffffffu) != tag || (uint32_t)c >= j->nchunks)
            return;
        if (!atomic_compare_exchange_weak_explicit(&P.claim, &c, c + 1, memory_order_relaxed,
                                                   memory_order_relaxed))
            continue;
        j->fn(j->ctx, (int64_t)(uint32_t)c, slot);
        uint32_t d = atomic_fetch_add(&P.done, 1) + 1; /* seq_cst: pairs with caller_waiting */
        if (d == j->nchunks && atomic_load(&P.caller_waiting))
            os_wake_all(&P.done);
        c = atomic_load_explicit(&P.claim, memory_order_relaxed);
    }
}

typedef struct {
    int id;
    uint32_t seen;
} worker_start;

static void *worker_main(void *arg) {
    worker_start st = *(worker_start *)arg;
    free(arg);
    const int id = st.id;
    uint32_t seen = st.seen;
    int spin = 1;
    for (;;) {
        job_view j;
        uint64_t deadline = spin ? now_ns() + spin_ns() : 0;
        unsigned k = 0;
        for (;;) {
            uint32_t s = atomic_load_explicit(&P.seq, memory_order_acquire);
            if (s != seen) {
                if (!(s & 1) && read_job(s, &j))
                    break;
                cpu_relax(); /* a job is being published */
                continue;
            }
            if (spin && ((++k & 15) || now_ns() < deadline)) {
                cpu_relax();
                continue;
            }
            atomic_fetch_add(&P.sleepers, 1);
            if (atomic_load(&P.seq) == seen)
                os_wait(&P.seq, seen);
            atomic_fetch_sub(&P.sleepers, 1);
            spin = 0;
        }
        seen = j.seq;
        if (id >= j.nt) { /* not wanted this time: back to sleep without polling */
            spin = 0;
            continue;
        }
        work(&j, id);
        spin = spin_ns() > 0;
    }
    return NULL;
}

/* ---- fork: the child has none of the parent's workers ---- */

static void after_fork_child(void) {
    atomic_store(&P.nworkers, 0);
    atomic_store(&P.sleepers, 0);
    atomic_store(&P.caller_waiting, 0);
    atomic_store(&P.busy, 0); /* a call of another parent thread does not exist here */
    uint32_t s = atomic_load(&P.seq);
    atomic_store(&P.seq, (s + 1) & ~1u);
#ifndef QC_POOL_FUTEX
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    memcpy(&wait_mutex, &m, sizeof m);
    memcpy(&wait_cond, &c, sizeof c);
#endif
}

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void init(void) {
    int us = QC_POOL_DEFAULT_SPIN_US;
    const char *e = getenv("QUANTCORE_SPIN_US");
    if (e) {
        int v = parse_positive(e);
        const char *p = e;
        while (*p == ' ' || *p == '\t')
            p++;
        if (v > 0)
            us = v > QC_POOL_MAX_SPIN_US ? QC_POOL_MAX_SPIN_US : v;
        else if (*p == '0')
            us = 0;
    }
    atomic_store(&P.spin_us, us);
    pthread_atfork(NULL, NULL, after_fork_child);
}

/* Start workers until there are `want` (the caller owns busy); returns how many
 * there are. */
static int grow(int want) {
    int have = atomic_load_explicit(&P.nworkers, memory_order_relaxed);
    if (have >= want)
        return have;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* workers inherit: signals go to callers */
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    while (have < want) {
        worker_start *st = (worker_start *)malloc(sizeof *st);
        if (!st)
            break;
        st->id = have + 1;
        st->seen = atomic_load_explicit(&P.seq, memory_order_relaxed);
        pthread_t t;
        if (pthread_create(&t, &attr, worker_main, st) != 0) {
            free(st);
            break;
        }
        have++;
    }
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    atomic_store_explicit(&P.nworkers, have, memory_order_relaxed);
    return have;
}

static void wait_done(uint32_t n) {
    if (atomic_load_explicit(&P.done, memory_order_acquire) == n)
        return;
    const uint64_t deadline = now_ns() + spin_ns();
    unsigned k = 0;
    while ((++k & 15) || now_ns() < deadline) {
        if (atomic_load_explicit(&P.done, memory_order_acquire) == n)
            return;
        cpu_relax();
    }
    for (;;) {
        atomic_store(&P.caller_waiting, 1);
        uint32_t d = atomic_load(&P.done);
        if (d == n)
            return;
        os_wait(&P.done, d);
    }
}

static void run_serial(int64_t nchunks, qc_pool_fn fn, void *ctx) {
    for (int64_t c = 0; c < nchunks; c++)
        fn(ctx, c, 0);
}

void qc_pool_run(int nt, int64_t nchunks, qc_pool_fn fn, void *ctx) {
    if (nchunks <= 0)
        return;
    if (nt > QC_POOL_MAX_THREADS)
        nt = QC_POOL_MAX_THREADS;
    if (nt > nchunks)
        nt = (int)nchunks;
    int expected = 0;
    if (nt <= 1 || nchunks > 0x7fffffff ||
        !atomic_compare_exchange_strong_explicit(&P.busy, &expected, 1, memory_order_acquire,
                                                 memory_order_relaxed)) {
        run_serial(nchunks, fn, ctx);
        return;
    }
    pthread_once(&init_once, init);
    int have = grow(nt - 1);
    if (nt > have + 1)
        nt = have + 1;
    if (nt <= 1) {
        atomic_store_explicit(&P.busy, 0, memory_order_release);
        run_serial(nchunks, fn, ctx);
        return;
    }
    const uint32_t n = (uint32_t)nchunks;

    /* publish: seq odd, the fields, then seq even and new */
    const uint32_t s = atomic_load_explicit(&P.seq, memory_order_relaxed);
    atomic_store_explicit(&P.seq, s + 1, memory_order_relaxed);
    atomic_store_explicit(&P.fn, fn, memory_order_release);
    atomic_store_explicit(&P.ctx, ctx, memory_order_release);
    atomic_store_explicit(&P.nchunks, n, memory_order_release);
    atomic_store_explicit(&P.nt, nt, memory_order_release);
    atomic_store_explicit(&P.done, 0, memory_order_relaxed);
    atomic_store_explicit(&P.caller_waiting, 0, memory_order_relaxed);
    atomic_store_explicit(&P.claim, (uint64_t)(s + 2) << 32, memory_order_relaxed);
    atomic_store(&P.seq, s + 2); /* seq_cst: pairs with the sleepers' registration */
    if (atomic_load(&P.sleepers) > 0)
        os_wake_all(&P.seq);

    /* take part: the claim word's tag is ours until the job is done */
    uint32_t mine = 0;
    for (;;) {
        uint32_t c = (uint32_t)atomic_fetch_add_explicit(&P.claim, 1, memory_order_relaxed);
        if (c >= n)
            break;
        fn(ctx, (int64_t)c, 0);
        mine++;
    }
    if (mine)
        atomic_fetch_add(&P.done, mine);
    wait_done(n);
    atomic_store_explicit(&P.busy, 0, memory_order_release);
}

const char *qc_pool_kind(void) { return "pthreads"; }

int qc_pool_workers(void) { return atomic_load_explicit(&P.nworkers, memory_order_relaxed); }

int qc_pool_spin_us(void) {
    pthread_once(&init_once, init);
    return atomic_load_explicit(&P.spin_us, memory_order_relaxed);
}

#endif /* QC_POOL_THREADS */
