/*
 * Fused CPU kernels for ev-softmax over contiguous rows (float32 and float64).
 *
 * One call normalizes `rows` rows of `length` entries on up to `threads`
 * threads: the caller's OpenMP team (PyTorch's intra-op pool, through the
 * GOMP_parallel of its libgomp) when given, else POSIX threads. Per row, four passes over data that stays in cache:
 *
 *   1. m = max over the row;
 *   2. mean of the shifted scores s = x - m over the valid entries (x != -inf),
 *      summed in blocks (vectorized) whose sums add up in double: the same support test as evsoftmax._core
 *      (s >= mean, so the maximum, s = 0, is always in the support);
 *   3. weights w = exp(s) inside the support and ratio * exp(s) outside it
 *      (ratio = eps / (1 + eps), 0 for ev-softmax), written out, and their sum;
 *   4. division by the sum (or, for the log form, s + log(weight) - log(sum)).
 *
 * A row whose statistics are not finite (a NaN or +inf entry, or overflow of
 * the shifted scores) is left untouched and flagged in `suspect`; the Python
 * caller recomputes such rows with the reference composition, which gives them
 * the library's exact NaN semantics. A row of -inf only (no valid entry) gets
 * probability 0 (log: -inf) everywhere.
 *
 * The exponential is evaluated in-line so that the compiler vectorizes pass 3:
 * exp(s) = 2^n exp(r) with n = round(s / ln 2), r = s - n ln 2 (ln 2 split in
 * two parts so that n * hi is exact) and exp(r), |r| <= ln(2) / 2, by its
 * Taylor polynomial (degree 7 for float32, 13 for float64; truncation error
 * below half an ulp). s <= 0 always; below the smallest normal result the
 * weight is 0.
 *
 * On x86-64 Linux with GCC, each kernel is compiled for AVX-512, AVX2 and
 * baseline x86-64 and the loader picks the best one for the CPU (target_clones).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define EVS_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define EVS_CLONES
#endif

/* OpenMP SIMD pragmas (-fopenmp-simd: no OpenMP runtime) let the reductions vectorize. */
#define EVS_SIMD _Pragma("omp simd")
#define EVS_SIMD_MAX_M _Pragma("omp simd reduction(max : m)")
#define EVS_SIMD_BLOCK _Pragma("omp simd reduction(+ : block_sum, block_count)")
#define EVS_SIMD_TOTAL _Pragma("omp simd reduction(+ : total)")

static inline float exp_nonpositive_f32(float s) {
    float z = s < -88.0f ? -88.0f : s;
    /* Adding 1.5 * 2^23 rounds to the nearest integer (round-half-even). */
    float n = (z * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = z - n * 0.693145751953125f;
    r = r - n * 1.428606765330187045e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return s < -87.33654f ? 0.0f : p * scale;
}

static inline double exp_nonpositive_f64(double s) {
    double z = s < -708.5 ? -708.5 : s;
    /* Adding 1.5 * 2^52 rounds to the nearest integer (round-half-even). */
    double n = (z * 1.4426950408889634074 + 6755399441055744.0) - 6755399441055744.0;
    double r = z - n * 0.693147180369123816490;
    r = r - n * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    int64_t bits = ((int64_t)n + 1023) << 52;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return s < -708.3964185322641 ? 0.0 : p * scale;
}

/* The mean is summed in vectorized blocks of this many entries, added up in double. */
#define EVS_BLOCK 1024

/* Defines row_<T>(x, y, length, ratio, log_ratio, log_out) -> 1 if suspect, else 0. */
#define EVS_DEFINE_ROW(T, EXP)                                                              \
    EVS_CLONES static int row_##T(const T *restrict x, T *restrict y, Py_ssize_t length,   \
                                  T ratio, T log_ratio, int log_out) {                      \
        T m = -INFINITY;                                                                    \
        EVS_SIMD_MAX_M                                                                      \
        for (Py_ssize_t i = 0; i < length; i++) m = x[i] > m ? x[i] : m;                    \
        double sum = 0.0, count = 0.0;                                                      \
        for (Py_ssize_t start = 0; start < length; start += EVS_BLOCK) {                    \
            Py_ssize_t stop = length - start < EVS_BLOCK ? length : start + EVS_BLOCK;      \
            T block_sum = 0, block_count = 0;                                               \
            EVS_SIMD_BLOCK                                                                  \
            for (Py_ssize_t i = start; i < stop; i++) {                                     \
                int valid = x[i] != -INFINITY;                                              \
                block_sum += valid ? x[i] - m : (T)0;                                       \
                block_count += valid ? (T)1 : (T)0;                                         \
            }                                                                               \
            sum += block_sum;                                                               \
            count += block_count;                                                           \
        }                                                                                   \
        if (count == 0.0) {                                                                 \
            T fill = log_out ? -INFINITY : 0;                                               \
            for (Py_ssize_t i = 0; i < length; i++) y[i] = fill;                            \
            return 0;                                                                       \
        }                                                                                   \
        if (!isfinite(sum)) return 1;                                                       \
        T mean = (T)(sum / count);                                                          \
        T total = 0;                                                                        \
        if (log_out) {                                                                      \
            EVS_SIMD_TOTAL                                                                  \
            for (Py_ssize_t i = 0; i < length; i++) {                                       \
                T s = x[i] - m;                                                             \
                T e = EXP(s);                                                               \
                total += s < mean ? ratio * e : e;                                          \
            }                                                                               \
        } else {                                                                            \
            EVS_SIMD_TOTAL                                                                  \
            for (Py_ssize_t i = 0; i < length; i++) {                                       \
                T s = x[i] - m;                                                             \
                T e = EXP(s);                                                               \
                T w = s < mean ? ratio * e : e;                                             \
                y[i] = w;                                                                   \
                total += w;                                                                 \
            }                                                                               \
        }                                                                                   \
        if (log_out) {                                                                      \
            T log_total = (T)log((double)total);                                            \
            EVS_SIMD                                                                        \
            for (Py_ssize_t i = 0; i < length; i++) {                                       \
                T s = x[i] - m;                                                             \
                y[i] = (s < mean ? s + log_ratio : s) - log_total;                          \
            }                                                                               \
        } else {                                                                            \
            T inv = (T)1 / total;                                                           \
            EVS_SIMD                                                                        \
            for (Py_ssize_t i = 0; i < length; i++) y[i] *= inv;                            \
        }                                                                                   \
        return 0;                                                                           \
    }

EVS_DEFINE_ROW(float, exp_nonpositive_f32)
EVS_DEFINE_ROW(double, exp_nonpositive_f64)

/* One call's work, shared by its threads, which claim chunks of rows from `next`. */
typedef struct {
    const char *x;
    char *y;
    unsigned char *suspect;
    Py_ssize_t rows, length, chunk;
    double ratio, log_ratio;
    int log_out, is_double;
    Py_ssize_t next;    /* first unclaimed row (atomic) */
    Py_ssize_t flagged; /* rows left to the caller (atomic) */
} job_t;

static void run_rows(job_t *job, Py_ssize_t first, Py_ssize_t last, Py_ssize_t *flagged) {
    for (Py_ssize_t r = first; r < last; r++) {
        int bad;
        if (job->is_double) {
            const double *x = (const double *)job->x + r * job->length;
            double *y = (double *)job->y + r * job->length;
            bad = row_double(x, y, job->length, job->ratio, job->log_ratio, job->log_out);
        } else {
            const float *x = (const float *)job->x + r * job->length;
            float *y = (float *)job->y + r * job->length;
            bad = row_float(x, y, job->length, (float)job->ratio, (float)job->log_ratio,
                            job->log_out);
        }
        job->suspect[r] = (unsigned char)bad;
        *flagged += bad;
    }
}

/* The body every thread runs: claim chunks of rows until none is left. */
static void work(void *arg) {
    job_t *job = (job_t *)arg;
    Py_ssize_t flagged = 0;
    for (;;) {
        Py_ssize_t first = __atomic_fetch_add(&job->next, job->chunk, __ATOMIC_RELAXED);
        if (first >= job->rows) break;
        Py_ssize_t last = job->rows - first < job->chunk ? job->rows : first + job->chunk;
        run_rows(job, first, last, &flagged);
    }
    __atomic_fetch_add(&job->flagged, flagged, __ATOMIC_RELAXED);
}

static void *work_pthread(void *arg) {
    work(arg);
    return NULL;
}

/* GOMP_parallel(fn, data, num_threads, flags): the entry point of GNU OpenMP (libgomp)
 * that compiled `omp parallel` regions call; fn runs once on each thread of the team. */
typedef void (*gomp_parallel_t)(void (*)(void *), void *, unsigned, unsigned);

#define EVS_MAX_THREADS 256

/* Runs `work` on `threads` threads: the caller's OpenMP team when `parallel` is the
 * address of a GOMP_parallel, else POSIX threads started for this call. */
static void run_parallel(job_t *job, int threads, uintptr_t parallel) {
    if (threads <= 1) {
        work(job);
    } else if (parallel != 0) {
        ((gomp_parallel_t)parallel)(work, job, (unsigned)threads, 0);
    } else {
        pthread_t handles[EVS_MAX_THREADS];
        int started[EVS_MAX_THREADS];
        for (int t = 1; t < threads; t++)
            started[t] = pthread_create(&handles[t], NULL, work_pthread, job) == 0;
        work(job); /* the calling thread takes part; threads that failed to start are not needed */
        for (int t = 1; t < threads; t++)
            if (started[t]) pthread_join(handles[t], NULL);
    }
}

PyDoc_STRVAR(ev_softmax_rows_doc,
"ev_softmax_rows(x, y, suspect, rows, length, itemsize, ratio, log_ratio, log, threads, parallel)\n"
"--\n\n"
"ev-softmax (or its log) of contiguous rows at address x into address y.\n\n"
"x, y and suspect are memory addresses (ints); itemsize is 4 (float32) or 8\n"
"(float64); ratio = eps / (1 + eps) and log_ratio its log. suspect receives one\n"
"byte per row, 1 where the row was left for the caller to recompute. parallel is\n"
"the address of a libgomp GOMP_parallel to run the threads on (0: POSIX threads).\n"
"Returns the number of rows left to the caller. The GIL is released meanwhile.");

static PyObject *ev_softmax_rows(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long x, y, suspect, parallel;
    Py_ssize_t rows, length, itemsize;
    double ratio, log_ratio;
    int log_out, threads;
    if (!PyArg_ParseTuple(args, "KKKnnnddpiK", &x, &y, &suspect, &rows, &length, &itemsize,
                          &ratio, &log_ratio, &log_out, &threads, &parallel))
        return NULL;
    if (itemsize != 4 && itemsize != 8) {
        PyErr_SetString(PyExc_ValueError, "itemsize must be 4 or 8");
        return NULL;
    }
    if (rows < 0 || length < 0) {
        PyErr_SetString(PyExc_ValueError, "rows and length must be >= 0");
        return NULL;
    }
    if (threads > EVS_MAX_THREADS) threads = EVS_MAX_THREADS;
    if (threads > rows) threads = (int)rows;

    job_t job = {
        .x = (const char *)(uintptr_t)x,
        .y = (char *)(uintptr_t)y,
        .suspect = (unsigned char *)(uintptr_t)suspect,
        .rows = rows,
        .length = length,
        .ratio = ratio,
        .log_ratio = log_ratio,
        .log_out = log_out,
        .is_double = itemsize == 8,
        .next = 0,
        .flagged = 0,
    };
    /* Several chunks per thread balance the load; one row is the smallest chunk. */
    job.chunk = threads > 1 ? rows / ((Py_ssize_t)threads * 8) : rows;
    if (job.chunk < 1) job.chunk = 1;
    Py_BEGIN_ALLOW_THREADS
    run_parallel(&job, threads, (uintptr_t)parallel);
    Py_END_ALLOW_THREADS
    return PyLong_FromSsize_t(job.flagged);
}

static PyMethodDef methods[] = {
    {"ev_softmax_rows", ev_softmax_rows, METH_VARARGS, ev_softmax_rows_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cpu_kernels",
    "Fused CPU kernels for ev-softmax (see evsoftmax._ext).", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__cpu_kernels(void) { return PyModule_Create(&module); }
