/*
 * Shared machinery of evsoftmax's CPU kernels: ISA clones and the row-parallel driver.
 *
 * A kernel describes one call as an evs_job: a function that handles a range of
 * rows with a per-thread scratch buffer, and the number of rows. evs_run_parallel
 * spreads the rows over up to `threads` threads: the caller's OpenMP team (PyTorch's
 * intra-op pool, through the GOMP_parallel of its libgomp) when `parallel` is its
 * address, else POSIX threads started for the call. Each thread allocates its scratch
 * once and claims chunks of rows from an atomic counter.
 *
 * (_cpu_kernels.c has the same driver written for its own job type; it could use
 * this header instead.)
 */
#ifndef EVS_COMMON_H
#define EVS_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define EVS_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define EVS_CLONES
#endif

/* Handles rows [first, last) of the call described by ctx, with `scratch` bytes of
 * the job's scratch size (NULL when that is 0). */
typedef void (*evs_rows_fn)(const void *ctx, Py_ssize_t first, Py_ssize_t last, void *scratch);

typedef struct {
    evs_rows_fn fn;
    const void *ctx;
    Py_ssize_t rows, length, chunk;
    size_t scratch_bytes; /* per thread */
    Py_ssize_t next;      /* first unclaimed row (atomic) */
} evs_job;

/* The body every thread runs: claim chunks of rows until none is left. */
static void evs_work(void *arg) {
    evs_job *job = (evs_job *)arg;
    void *scratch = NULL;
    if (job->scratch_bytes > 0 && (scratch = malloc(job->scratch_bytes)) == NULL)
        return; /* the other threads take the rows; if none can, the call fails */
    for (;;) {
        Py_ssize_t first = __atomic_fetch_add(&job->next, job->chunk, __ATOMIC_RELAXED);
        if (first >= job->rows) break;
        job->fn(job->ctx, first, job->rows - first < job->chunk ? job->rows : first + job->chunk,
                scratch);
    }
    free(scratch);
}

static void *evs_work_pthread(void *arg) {
    evs_work(arg);
    return NULL;
}

/* GOMP_parallel(fn, data, num_threads, flags): the entry point of GNU OpenMP (libgomp)
 * that compiled `omp parallel` regions call; fn runs once on each thread of the team. */
typedef void (*evs_gomp_parallel_t)(void (*)(void *), void *, unsigned, unsigned);

#define EVS_MAX_THREADS 256
#define EVS_ENTRIES_PER_THREAD 32768

/* Runs the job on up to `threads` threads; returns 0 when some rows were left undone
 * because no thread could allocate its scratch. */
static int evs_run_parallel(evs_job *job, int threads, uintptr_t parallel) {
    /* Starting threads costs more than small jobs take: one a row, and at least
     * EVS_ENTRIES_PER_THREAD entries each. */
    Py_ssize_t by_size = job->rows * job->length / EVS_ENTRIES_PER_THREAD;
    if (threads > EVS_MAX_THREADS) threads = EVS_MAX_THREADS;
    if (threads > job->rows) threads = (int)job->rows;
    if (threads > by_size) threads = by_size > 1 ? (int)by_size : 1;
    /* Several chunks per thread balance the load; one row is the smallest chunk. */
    job->chunk = threads > 1 ? job->rows / ((Py_ssize_t)threads * 8) : job->rows;
    if (job->chunk < 1) job->chunk = 1;
    job->next = 0;
    if (threads <= 1) {
        evs_work(job);
    } else if (parallel != 0) {
        ((evs_gomp_parallel_t)parallel)(evs_work, job, (unsigned)threads, 0);
    } else {
        pthread_t handles[EVS_MAX_THREADS];
        int started[EVS_MAX_THREADS];
        for (int t = 1; t < threads; t++)
            started[t] = pthread_create(&handles[t], NULL, evs_work_pthread, job) == 0;
        evs_work(job); /* the calling thread takes part */
        for (int t = 1; t < threads; t++)
            if (started[t]) pthread_join(handles[t], NULL);
    }
    return job->next >= job->rows;
}

#endif /* EVS_COMMON_H */
