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
    /* The list of candidates: their values, then their indices. */
    double *val = (double *)scratch;
    Py_ssize_t *idx = (Py_ssize_t *)(val + n);
    for (Py_ssize_t r = first; r < last; r++) {
        if (c->is_double)
            EVS_ROW(double, f64);
        else
            EVS_ROW(float, f32);
    }
}

/* Runs `c` over `rows` rows on up to `threads` threads (see evs_run_parallel); returns
 * 0 when no thread got scratch. */
static int run_job(call_t *c, Py_ssize_t rows, int threads, uintptr_t parallel) {
    size_t scratch = c->op == OP_VJP ? 0 : (size_t)c->length * (sizeof(double) + sizeof(Py_ssize_t));
    evs_job job = {.fn = run_rows, .ctx = c, .rows = rows, .length = c->length,
                   .scratch_bytes = scratch};
    return evs_run_parallel(&job, threads, parallel);
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
    int done;
    Py_BEGIN_ALLOW_THREADS
    done = run_job(c, rows, threads, (uintptr_t)parallel);
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

/* ---- XLA FFI handlers: the kernels as typed custom calls for JAX on the CPU ----------
 *
 * _xla_ffi.h declares the parts of XLA's FFI C ABI the handlers read. Every call
 * has `arrays` row operands of one dtype (F32 or F64, row-major, rows along the last
 * axis), then a vector of parameters in that dtype, and one result of the rows'
 * shape. alpha travels as two numbers (hi + lo), so that float32 calls carry it to
 * double precision. */
#include "_xla_ffi.h"

/* Reads such a call into `c` (x, g when arrays is 2, y, length) and `params`, sets
 * *rows and returns the result buffer. For a call it cannot serve (never made by
 * evsoftmax) it writes NaN into the result and returns NULL. */
static evs_ffi_buffer *ffi_call(evs_ffi_call_frame *frame, int arrays, int nparams, call_t *c,
                    double *params, Py_ssize_t *rows) {
    evs_ffi_buffer *in[2], *y;
    int ok = ffi_rows_call(frame, arrays, nparams, in, &y, params);
    if (ok && arrays == 1) { /* the forward: op, alpha (hi, lo), n_iter, threads */
        c->op = (int)params[0];
        c->alpha = params[1] + params[2];
        c->n_iter = (int)params[3];
        ok = c->op >= OP_SPARSEMAX && c->op <= OP_BISECT &&
             (c->op != OP_BISECT || (c->alpha > 1.0 && isfinite(c->alpha) && c->n_iter >= 1));
    }
    if (!ok) {
        if (y != NULL) ffi_fill_nan(y);
        return NULL;
    }
    c->is_double = y->dtype == EVS_FFI_F64;
    c->x = (const char *)in[0]->data;
    c->g = arrays > 1 ? (const char *)in[1]->data : NULL;
    c->y = (char *)y->data;
    c->length = (Py_ssize_t)y->dims[y->rank - 1];
    *rows = c->length > 0 ? (Py_ssize_t)ffi_size(y) / c->length : 0;
    return y;
}

/* Runs a call read by ffi_call on `threads` POSIX threads (XLA's own pool is not
 * reachable from here). Returns NULL: success, in the ABI's terms; when no thread
 * got its scratch, the whole result y is NaN, as for a call that cannot be served. */
static void *ffi_run(call_t *c, Py_ssize_t rows, double threads, evs_ffi_buffer *y) {
    if (rows > 0 && c->length > 0 && !run_job(c, rows, (int)threads, 0)) ffi_fill_nan(y);
    return NULL;
}

/* A baseline of the rows. Operands: the rows and five parameters: op (as for
 * forward_rows), alpha as hi and lo, n_iter, threads. Result: the output rows. */
static void *xla_ffi_baseline_rows(evs_ffi_call_frame *frame) {
    call_t c = {0};
    double p[5];
    Py_ssize_t rows;
    evs_ffi_buffer *y;
    if (ffi_metadata(frame) || (y = ffi_call(frame, 1, 5, &c, p, &rows)) == NULL) return NULL;
    return ffi_run(&c, rows, p[4], y);
}

/* The VJP of alpha-entmax. Operands: the output rows p, the cotangent rows g and
 * three parameters: alpha as hi and lo, threads. Result: the gradient rows. */
static void *xla_ffi_baseline_vjp_rows(evs_ffi_call_frame *frame) {
    call_t c = {.op = OP_VJP};
    double p[3];
    Py_ssize_t rows;
    evs_ffi_buffer *y;
    if (ffi_metadata(frame) || (y = ffi_call(frame, 2, 3, &c, p, &rows)) == NULL) return NULL;
    c.alpha = p[0] + p[1];
    return ffi_run(&c, rows, p[2], y);
}

/* A module function returning a PyCapsule of `handler`, for jax.ffi.register_ffi_target. */
#define EVS_FFI_CAPSULE(name, handler)                              \
    static PyObject *name(PyObject *self, PyObject *noargs) {       \
        (void)self;                                                 \
        (void)noargs;                                               \
        return PyCapsule_New((void *)(handler), NULL, NULL);        \
    }

PyDoc_STRVAR(xla_ffi_handler_doc,
"xla_ffi_handler()\n--\n\n"
"A PyCapsule of the XLA FFI handler of the baselines' forward, for\n"
"jax.ffi.register_ffi_target(platform='cpu').");

EVS_FFI_CAPSULE(xla_ffi_handler, xla_ffi_baseline_rows)

PyDoc_STRVAR(xla_ffi_vjp_handler_doc,
"xla_ffi_vjp_handler()\n--\n\n"
"A PyCapsule of the XLA FFI handler of the baselines' VJP (as vjp_rows).");

EVS_FFI_CAPSULE(xla_ffi_vjp_handler, xla_ffi_baseline_vjp_rows)

#undef EVS_FFI_CAPSULE

static PyMethodDef methods[] = {
    {"forward_rows", forward_rows, METH_VARARGS, forward_rows_doc},
    {"vjp_rows", vjp_rows, METH_VARARGS, vjp_rows_doc},
    {"xla_ffi_handler", xla_ffi_handler, METH_NOARGS, xla_ffi_handler_doc},
    {"xla_ffi_vjp_handler", xla_ffi_vjp_handler, METH_NOARGS, xla_ffi_vjp_handler_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_baseline_kernels",
    "Fused CPU kernels for sparsemax and entmax (see evsoftmax._ext).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__baseline_kernels(void) { return PyModule_Create(&module); }
