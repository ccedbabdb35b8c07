/*
 * pool.h -- the kernels' thread pool (internal; quantcore.h has the public
 * thread count, qc_set_num_threads / qc_get_num_threads).
 *
 * qc_pool_run(nt, nchunks, fn, ctx) calls fn(ctx, c, slot) exactly once for
 * every chunk c in [0, nchunks) and returns when all of those calls have
 * returned.  The calling thread takes part; up to nt - 1 pool workers join it.
 * Every thread claims the next unclaimed chunk from a shared counter, so the
 * caller waits only for chunks a worker has actually claimed, never for a worker
 * that has not woken up or was descheduled before claiming: with every other
 * thread stalled, a call runs at the speed of one thread.  Workers poll for new
 * work for a short time after each call (QUANTCORE_SPIN_US microseconds, read
 * at the first parallel call; default 50, 0: sleep at once), then sleep on a
 * futex (Linux) or a condition variable (other POSIX systems).
 *
 * slot: 0 for the caller, 1..nt-1 for workers, unique among the threads of one
 * call: an index for per-thread scratch.  A chunk's result must depend on
 * neither the slot nor the order in which chunks run.
 *
 * One call at a time goes through the workers: a call made while another is in
 * flight (another Python thread, or fn calling qc_pool_run) runs all of its
 * chunks on its own thread, in order, with slot 0.  Workers are created when a
 * call first needs them (and when a larger nt asks for more); a child process
 * after fork() starts with none and creates its own.
 *
 * Without POSIX threads (e.g. Windows) the pool is serial: every call runs its
 * chunks on the calling thread.
 */
#ifndef QC_POOL_H
#define QC_POOL_H

#include <stdint.h>

typedef void (*qc_pool_fn)(void *ctx, int64_t chunk, int slot);

void qc_pool_run(int nt, int64_t nchunks, qc_pool_fn fn, void *ctx);

/* "pthreads" or "serial" */
const char *qc_pool_kind(void);
/* Workers started so far (not counting callers). */
int qc_pool_workers(void);
/* The spin before a worker sleeps, in microseconds. */
int qc_pool_spin_us(void);
/* Threads to use when none were set: OMP_NUM_THREADS if it holds a positive
 * number, else the CPUs this process may run on (1 for the serial pool). */
int qc_pool_default_threads(void);

#define QC_POOL_MAX_THREADS 1024

/* Length of the chunks that split n items for nt threads: about per_thread
 * chunks per thread, each at least min_len items, a multiple of align; never
 * more than 2^30 chunks. */
static inline int64_t qc_pool_chunk_len(int64_t n, int nt, int per_thread, int64_t min_len,
                                        int64_t align) {
    int64_t target = (int64_t)(nt > 0 ? nt : 1) * (per_thread > 0 ? per_thread : 1);
    int64_t len = (n + target - 1) / target;
    if (len < min_len)
        len = min_len;
    if (len < (n >> 30) + 1)
        len = (n >> 30) + 1;
    if (align > 1)
        len = (len + align - 1) / align * align;
    return len < 1 ? 1 : len;
}

static inline int64_t qc_pool_nchunks(int64_t n, int64_t len) { return (n + len - 1) / len; }

#endif /* QC_POOL_H */
