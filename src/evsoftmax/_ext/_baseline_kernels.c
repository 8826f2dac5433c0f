/*
 * Fused CPU kernels for the baselines over contiguous rows (float32 and float64):
 * sparsemax, 1.5-entmax and alpha-entmax by bisection, and their closed-form VJP.
 *
 * The maps of evsoftmax._sparsemax and evsoftmax._entmax, row by row, without a sort:
 * one pass finds the row maximum (and whether the row is special), one compacts the
 * entries that can be in the support (within 1 of the maximum in the map's scaled
 * scores), and the threshold search runs on that short list (_baseline_rows.h).
 * The library's rules for special rows (DESIGN section 4) hold: a NaN or +inf makes
 * the row NaN, a row with no valid entry (all -inf) gives zeros, -inf entries get 0.
 *
 * The rows are spread over threads as in _cpu_kernels.c (_common.h): PyTorch passes
 * the GOMP_parallel of its OpenMP runtime, NumPy runs on the calling thread.
 */
#include "_common.h"

#include <math.h>
#include <string.h>

#define N(name) name##_f32
#define T float
#include "_baseline_rows.h"
#undef T
#undef N

#define N(name) name##_f64
#define T double
#include "_baseline_rows.h"
#undef T
#undef N

enum { OP_SPARSEMAX, OP_ENTMAX15, OP_BISECT, OP_VJP };

typedef struct {
    const char *x, *g; /* the scores (or, for the VJP, the output p) and the cotangent */
    char *y;
    Py_ssize_t length;
    int op, is_double, n_iter;
    double alpha;
} call_t;

#define EVS_ROW(T, SFX)                                                                  \
    do {                                                                                 \
        const T *x = (const T *)c->x + r * n;                                            \
        T *y = (T *)c->y + r * n;                                                        \
        switch (c->op) {                                                                 \
            case OP_SPARSEMAX: sparsemax_row_##SFX(x, y, n, val, idx); break;            \
            case OP_ENTMAX15: entmax15_row_##SFX(x, y, n, val, idx); break;              \
            case OP_BISECT: bisect_row_##SFX(x, y, n, val, idx, c->alpha, c->n_iter); break; \
            default: vjp_row_##SFX(x, (const T *)c->g + r * n, y, n, c->alpha);          \
        }                                                                                \
    } while (0)

static void run_rows(const void *ctx, Py_ssize_t first, Py_ssize_t last, void *scratch) {
    const call_t *c = (const call_t *)ctx;
    Py_ssize_t n = c->length;
    /* Two lists of candidates (values, then indices): the bisection swaps them. */
    double *val = (double *)scratch;
    Py_ssize_t *idx = (Py_ssize_t *)(val + 2 * n);
    for (Py_ssize_t r = first; r < last; r++) {
        if (c->is_double)
            EVS_ROW(double, f64);
        else
            EVS_ROW(float, f32);
    }
}

/* Runs `c` over `rows` rows; returns NULL (MemoryError set) when no thread got scratch. */
static PyObject *run(call_t *c, Py_ssize_t rows, Py_ssize_t itemsize, int threads,
                     unsigned long long parallel) {
    if (itemsize != 4 && itemsize != 8) {
        PyErr_SetString(PyExc_ValueError, "itemsize must be 4 or 8");
        return NULL;
    }
    if (rows < 0 || c->length < 0) {
        PyErr_SetString(PyExc_ValueError, "rows and length must be >= 0");
        return NULL;
    }
    c->is_double = itemsize == 8;
    size_t scratch = c->op == OP_VJP ? 0 : 2 * (size_t)c->length * (sizeof(double) + sizeof(Py_ssize_t));
    evs_job job = {.fn = run_rows, .ctx = c, .rows = rows, .length = c->length,
                   .scratch_bytes = scratch};
    int done;
    Py_BEGIN_ALLOW_THREADS
    done = evs_run_parallel(&job, threads, (uintptr_t)parallel);
    Py_END_ALLOW_THREADS
    if (!done) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

PyDoc_STRVAR(forward_rows_doc,
"forward_rows(op, x, y, rows, length, itemsize, alpha, n_iter, threads, parallel)\n"
"--\n\n"
"A baseline of contiguous rows at address x into address y: op 0 sparsemax,\n"
"1 1.5-entmax, 2 alpha-entmax by n_iter bisection steps (alpha, n_iter are read\n"
"for op 2 only). itemsize is 4 (float32) or 8 (float64); parallel is the address\n"
"of a libgomp GOMP_parallel to run the threads on (0: POSIX threads). The GIL is\n"
"released while the kernel runs.");

static PyObject *forward_rows(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long x, y, parallel;
    Py_ssize_t rows, itemsize;
    call_t c = {0};
    int threads;
    if (!PyArg_ParseTuple(args, "iKKnnndiiK", &c.op, &x, &y, &rows, &c.length, &itemsize,
                          &c.alpha, &c.n_iter, &threads, &parallel))
        return NULL;
    if (c.op < OP_SPARSEMAX || c.op > OP_BISECT) {
        PyErr_SetString(PyExc_ValueError, "op must be 0, 1 or 2");
        return NULL;
    }
    if (c.op == OP_BISECT && !(c.alpha > 1.0 && isfinite(c.alpha) && c.n_iter >= 1)) {
        PyErr_SetString(PyExc_ValueError, "alpha must be finite and > 1, n_iter >= 1");
        return NULL;
    }
    c.x = (const char *)(uintptr_t)x;
    c.y = (char *)(uintptr_t)y;
    return run(&c, rows, itemsize, threads, parallel);
}

PyDoc_STRVAR(vjp_rows_doc,
"vjp_rows(p, g, out, rows, length, itemsize, alpha, threads, parallel)\n"
"--\n\n"
"The VJP s g - s <s, g> / sum(s), s = p^(2 - alpha) on the support, of alpha-entmax\n"
"at output rows p (address) for cotangent rows g, into address out.");

static PyObject *vjp_rows(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long p, g, out, parallel;
    Py_ssize_t rows, itemsize;
    call_t c = {.op = OP_VJP};
    int threads;
    if (!PyArg_ParseTuple(args, "KKKnnndiK", &p, &g, &out, &rows, &c.length, &itemsize,
                          &c.alpha, &threads, &parallel))
        return NULL;
    c.x = (const char *)(uintptr_t)p;
    c.g = (const char *)(uintptr_t)g;
    c.y = (char *)(uintptr_t)out;
    return run(&c, rows, itemsize, threads, parallel);
}

static PyMethodDef methods[] = {
    {"forward_rows", forward_rows, METH_VARARGS, forward_rows_doc},
    {"vjp_rows", vjp_rows, METH_VARARGS, vjp_rows_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_baseline_kernels",
    "Fused CPU kernels for sparsemax and entmax (see evsoftmax._ext).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__baseline_kernels(void) { return PyModule_Create(&module); }
