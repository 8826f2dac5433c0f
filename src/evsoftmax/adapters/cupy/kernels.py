r"""CUDA source of the CuPy adapter's fused kernels, kept as readable templates.

Nothing here imports CuPy: the sources render (and compile with NVRTC, where it
is installed) on a machine without a GPU, which is how the test-suite checks
them there. ``_cupy.py`` turns them into ``cupy.RawKernel`` objects.

The forward kernel gives one thread block to each row (the entries along the
normalized axis) and makes three passes over it. Thread ``t`` of a block of
``n`` visits the entries ``t, t + n, t + 2n, ...`` in that order; it keeps the
first ``CACHE_ITEMS`` in registers, so rows of up to ``CACHE_ITEMS *
MAX_THREADS`` entries are read from global memory once, and reads the rest
again in each pass, ``TILE_ITEMS`` loads at a time:

1. **statistics**: each thread folds its valid entries (``where`` true, not
   ``-inf``) into ``(max, count, shifted_sum)``, where ``shifted_sum`` is the
   sum of ``entry - max`` kept relative to the running maximum (when the
   maximum grows from ``m`` to ``v`` the sum gains ``count * (m - v)``). Every
   term is ``<= 0``, so the mean of the shifted scores is ``<= 0`` under any
   rounding and the row maximum (shifted score exactly 0) is always in the
   support, as ``_core.row_statistics`` guarantees. A valid NaN or ``+inf``
   flags the row. The per-thread states are combined by a warp butterfly and
   then across warps. If the shifted sum overflows (the row's range exceeds
   the dtype's maximum), one more pass sums the scaled scores
   ``x 2^-k - max 2^-k`` (``2^k >= 2 count``), whose mean gives the exact
   mean's support (DESIGN §4).
2. **normalizer**: ``Z = sum over valid k of w_k * exp(s_k)`` with ``s = x - max``
   and ``w = 1`` in the support, ``eps / (1 + eps)`` outside it (DESIGN section 4),
   reduced the same way.
3. **output**: probabilities ``weight / Z``, log-probabilities
   ``s + log(w) - log Z`` or the support mask, with the DESIGN
   §4 values for flagged rows (NaN) and rows without a valid entry (0, -inf,
   False).

Half precision is loaded into and computed in float32 and rounded once on the
store; float16 converts with the PTX ``cvt`` instructions and bfloat16 with
bit operations, so no CUDA header is needed. The row ``r`` of a C-contiguous
array of shape ``(outer, length, inner)`` starts at ``(r // inner) * length *
inner + r % inner`` and steps by ``inner``, which covers any axis without a copy.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = [
    "CACHE_ITEMS",
    "DTYPES",
    "FORWARD_KERNEL",
    "JVP_KERNEL",
    "MAX_THREADS",
    "MODES",
    "TILE_ITEMS",
    "WARP",
    "accumulation_dtype_name",
    "block_threads",
    "common_source",
    "forward_source",
    "jvp_source",
]

CACHE_ITEMS: Final = 8
"""Row entries each thread keeps in registers between the passes."""

TILE_ITEMS: Final = 4
"""Loads each thread issues at once when it streams entries past its register cache."""

MAX_THREADS: Final = 1024
"""Threads in the block of a long row (the CUDA maximum)."""

WARP: Final = 32

DTYPES: Final = ("float16", "bfloat16", "float32", "float64")
"""Storage dtypes the kernels are rendered for (by NumPy/CuPy dtype name)."""

MODES: Final = ("probs", "log_probs", "support")
"""What the forward kernel writes: ev-softmax, its logarithm, or the support mask."""

FORWARD_KERNEL: Final = "ev_softmax_forward"
JVP_KERNEL: Final = "ev_softmax_jvp"

# Per storage dtype: the C type it is stored as, the type it is computed in, and
# the bodies of the load (stored -> computed) and store (computed -> stored)
# conversions, whose argument is called ``v``.
_CONVERSIONS: Final = {
    "float16": (
        "unsigned short",
        "float",
        'float r; asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(v)); return r;',
        'unsigned short r; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(v)); return r;',
    ),
    "bfloat16": (
        "unsigned short",
        "float",
        "return __uint_as_float(((unsigned int)v) << 16);",
        # Round to nearest even; NaN stays a (quiet) NaN instead of rounding to inf.
        "unsigned int b = __float_as_uint(v);\n"
        "    if ((b & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((b >> 16) | 0x40u);\n"
        "    b += 0x7fffu + ((b >> 16) & 1u);\n"
        "    return (unsigned short)(b >> 16);",
    ),
    "float32": ("float", "float", "return v;", "return v;"),
    "float64": ("double", "double", "return v;", "return v;"),
}

_MATH: Final = {
    "float": ("__int_as_float(0x7f800000)", "__int_as_float(0x7fc00000)", "expf", "logf"),
    "double": (
        "__longlong_as_double(0x7ff0000000000000LL)",
        "__longlong_as_double(0x7ff8000000000000LL)",
        "exp",
        "log",
    ),
}

_PRELUDE: Final = """\
// Rendered for storage dtype {dtype}.
typedef {storage} ev_store_t;  // how the array's entries are stored
typedef {acc} ev_acc_t;        // what they are computed in
#define EV_INF ({inf})
#define EV_NAN ({nan})
#define EV_EXP {exp}
#define EV_LOG {log}
#define EV_CACHE {cache}
#define EV_TILE {tile}
#define EV_WARP {warp}
#define EV_MAX_THREADS {max_threads}

__device__ __forceinline__ ev_acc_t ev_load(ev_store_t v) {{
    {load}
}}

__device__ __forceinline__ ev_store_t ev_store(ev_acc_t v) {{
    {store}
}}

// Sum over the block; every thread gets the result. Call once per kernel and type T, or
// synchronize the block before calling again (the shared partial sums are reused).
template <typename T>
__device__ T ev_block_sum(T value) {{
    __shared__ T partial[EV_WARP];
    const int lane = threadIdx.x % EV_WARP, warp = threadIdx.x / EV_WARP;
    for (int offset = EV_WARP / 2; offset > 0; offset /= 2)
        value += __shfl_xor_sync(0xffffffffu, value, offset);
    if (lane == 0) partial[warp] = value;
    __syncthreads();
    if (warp == 0) {{
        value = lane < (int)(blockDim.x / EV_WARP) ? partial[lane] : (T)0;
        for (int offset = EV_WARP / 2; offset > 0; offset /= 2)
            value += __shfl_xor_sync(0xffffffffu, value, offset);
        if (lane == 0) partial[0] = value;
    }}
    __syncthreads();
    return partial[0];
}}
"""

_FORWARD_BODY: Final = """\
#define EV_MODE_PROBS 0
#define EV_MODE_LOG_PROBS 1
#define EV_MODE_SUPPORT 2
#define EV_MODE {mode}
#define EV_MASKED {masked}

#if EV_MODE == EV_MODE_SUPPORT
typedef unsigned char ev_out_t;  // a CuPy bool array
#else
typedef ev_store_t ev_out_t;
#endif

// Running statistics of the valid entries of (part of) a row.
struct ev_stats {
    ev_acc_t max;          // largest valid entry (-inf while there is none)
    ev_acc_t shifted_sum;  // sum of (entry - max) over the valid entries: always <= 0
    int count;             // number of valid entries
    int bad;               // 1 once a valid entry is NaN or +inf
};

__device__ __forceinline__ ev_stats ev_stats_empty() {
    ev_stats st;
    st.max = -EV_INF;
    st.shifted_sum = (ev_acc_t)0;
    st.count = 0;
    st.bad = 0;
    return st;
}

// The shifted sum of st relative to a maximum new_max >= st.max (each added term is <= 0).
__device__ __forceinline__ ev_acc_t ev_rebase(const ev_stats& st, ev_acc_t new_max) {
    return st.count > 0 ? st.shifted_sum + (ev_acc_t)st.count * (st.max - new_max)
                        : (ev_acc_t)0;
}

__device__ __forceinline__ void ev_stats_push(ev_stats& st, ev_acc_t v) {
    if (v != v || v == EV_INF) {
        st.bad = 1;
        return;
    }
    if (v > st.max) {
        st.shifted_sum = ev_rebase(st, v);
        st.max = v;
    }
    st.shifted_sum += v - st.max;
    st.count += 1;
}

__device__ __forceinline__ ev_stats ev_stats_combine(const ev_stats& a, const ev_stats& b) {
    ev_stats r;
    r.max = a.max > b.max ? a.max : b.max;
    r.shifted_sum = ev_rebase(a, r.max) + ev_rebase(b, r.max);
    r.count = a.count + b.count;
    r.bad = a.bad | b.bad;
    return r;
}

__device__ __forceinline__ ev_stats ev_warp_stats(ev_stats st) {
    for (int offset = EV_WARP / 2; offset > 0; offset /= 2) {
        ev_stats other;
        other.max = __shfl_xor_sync(0xffffffffu, st.max, offset);
        other.shifted_sum = __shfl_xor_sync(0xffffffffu, st.shifted_sum, offset);
        other.count = __shfl_xor_sync(0xffffffffu, st.count, offset);
        other.bad = __shfl_xor_sync(0xffffffffu, st.bad, offset);
        st = ev_stats_combine(st, other);
    }
    return st;
}

// Statistics of the whole row; every thread gets the result. Call once per kernel.
__device__ ev_stats ev_block_stats(ev_stats st) {
    __shared__ ev_stats partial[EV_WARP];
    const int lane = threadIdx.x % EV_WARP, warp = threadIdx.x / EV_WARP;
    st = ev_warp_stats(st);
    if (lane == 0) partial[warp] = st;
    __syncthreads();
    if (warp == 0) {
        st = lane < (int)(blockDim.x / EV_WARP) ? partial[lane] : ev_stats_empty();
        st = ev_warp_stats(st);
        if (lane == 0) partial[0] = st;
    }
    __syncthreads();
    return partial[0];
}

__device__ __forceinline__ bool ev_is_valid(ev_acc_t v, const unsigned char* mask, long long i) {
#if EV_MASKED
    return v != -EV_INF && mask[i] != 0;
#else
    return v != -EV_INF;
#endif
}

// The support test of DESIGN section 4: v * h - mh >= mean. For an ordinary row h = 1 and
// mh is the row maximum (so this is s >= mean, with s = v - max); for a row whose shifted
// sum overflows (its range exceeds the dtype's maximum) h = 2^-k with 2^k >= 2 count and
// mh = max * h: no scaled difference or sum can overflow and the scaling is exact, so the
// support is the exact mean's.
struct ev_threshold {
    ev_acc_t h, mh, mean;
};

__device__ __forceinline__ bool ev_in(const ev_threshold& th, ev_acc_t v) {
    return v * th.h - th.mh >= th.mean;
}

// exp(s) in the support, ratio * exp(s) outside it (ratio = eps / (1 + eps), the weights
// relative to the support of DESIGN section 4: finite for every finite eps).
__device__ __forceinline__ ev_acc_t ev_weight(ev_acc_t s, bool in, ev_acc_t ratio) {
    return (in ? (ev_acc_t)1 : ratio) * EV_EXP(s);
}

__device__ __forceinline__ ev_out_t ev_output(
    bool valid, ev_acc_t s, bool in, ev_acc_t scale, ev_acc_t ratio, ev_acc_t log_ratio) {
#if EV_MODE == EV_MODE_PROBS
    // scale = 1 / Z
    return ev_store(valid ? ev_weight(s, in, ratio) * scale : (ev_acc_t)0);
#elif EV_MODE == EV_MODE_LOG_PROBS
    // scale = log Z
    return ev_store(valid ? (in ? s : s + log_ratio) - scale : -EV_INF);
#else
    return (ev_out_t)(valid && in);
#endif
}

// The value of every entry of a row that has no valid entry (bad == 0) or is NaN (bad == 1).
__device__ __forceinline__ ev_out_t ev_fill(int bad) {
#if EV_MODE == EV_MODE_SUPPORT
    return (ev_out_t)0;
#elif EV_MODE == EV_MODE_LOG_PROBS
    return ev_store(bad ? EV_NAN : -EV_INF);
#else
    return ev_store(bad ? EV_NAN : (ev_acc_t)0);
#endif
}

// Loads the entries first + threadIdx.x + j * blockDim.x (j < N) of a row into v
// (-inf past its end) and returns their validity bits. All the loads are issued together.
template <int N>
__device__ __forceinline__ unsigned int ev_load_tile(
    const ev_store_t* __restrict__ x, const unsigned char* __restrict__ mask, long long start,
    long long inner, long long length, long long first, ev_acc_t (&v)[N]) {
    unsigned int valid = 0u;
#pragma unroll
    for (int j = 0; j < N; ++j) {
        const long long k = first + threadIdx.x + (long long)j * blockDim.x;
        v[j] = -EV_INF;
        if (k < length) {
            const long long i = start + k * inner;
            v[j] = ev_load(x[i]);
            if (ev_is_valid(v[j], mask, i)) valid |= 1u << j;
        }
    }
    return valid;
}

template <int N>
__device__ __forceinline__ void ev_stats_push_tile(
    ev_stats& st, const ev_acc_t (&v)[N], unsigned int valid) {
#pragma unroll
    for (int j = 0; j < N; ++j)
        if (valid & (1u << j)) ev_stats_push(st, v[j]);
}

template <int N>
__device__ __forceinline__ ev_acc_t ev_weight_tile(
    const ev_acc_t (&v)[N], unsigned int valid, ev_acc_t row_max, const ev_threshold& th,
    ev_acc_t ratio, ev_acc_t total) {
#pragma unroll
    for (int j = 0; j < N; ++j)
        if (valid & (1u << j)) total += ev_weight(v[j] - row_max, ev_in(th, v[j]), ratio);
    return total;
}

// The sum, in double, of the scaled shifted scores v * h - mh of the valid entries (see
// ev_threshold): as the core does, so that an exactly representable mean is found.
template <int N>
__device__ __forceinline__ double ev_scaled_sum_tile(
    const ev_acc_t (&v)[N], unsigned int valid, const ev_threshold& th, double sum) {
#pragma unroll
    for (int j = 0; j < N; ++j)
        if (valid & (1u << j)) sum += (double)(v[j] * th.h - th.mh);
    return sum;
}

template <int N>
__device__ __forceinline__ void ev_write_tile(
    ev_out_t* __restrict__ out, long long start, long long inner, long long length,
    long long first, const ev_acc_t (&v)[N], unsigned int valid, ev_acc_t row_max,
    const ev_threshold& th, ev_acc_t scale, ev_acc_t ratio, ev_acc_t log_ratio) {
#pragma unroll
    for (int j = 0; j < N; ++j) {
        const long long k = first + threadIdx.x + (long long)j * blockDim.x;
        if (k < length)
            out[start + k * inner] = ev_output((valid >> j) & 1u, v[j] - row_max,
                                               ev_in(th, v[j]), scale, ratio, log_ratio);
    }
}

// A row whose shifted sum overflowed (its range exceeds the dtype's maximum): the support
// of the exact mean (see ev_threshold), in three passes that read the row from memory. A
// rare row, kept out of line so that it costs the main path no registers. Each thread
// visits its entries in the same order as the main path does.
__device__ __noinline__ void ev_wide_row(
    const ev_store_t* __restrict__ x, const unsigned char* __restrict__ mask,
    ev_out_t* __restrict__ out, const long long start, const long long inner,
    const long long length, const ev_acc_t row_max, const int count, const ev_acc_t ratio,
    const ev_acc_t log_ratio) {
    const long long tile = (long long)EV_TILE * blockDim.x;
    int k = 1;
    while ((1LL << k) < 2LL * count) ++k;
    ev_threshold th;
    th.h = (ev_acc_t)ldexp(1.0, -k);
    th.mh = row_max * th.h;
    double sum = 0.0;
    for (long long first = 0; first < length; first += tile) {
        ev_acc_t v[EV_TILE];
        const unsigned int valid = ev_load_tile(x, mask, start, inner, length, first, v);
        sum = ev_scaled_sum_tile(v, valid, th, sum);
    }
    th.mean = (ev_acc_t)(ev_block_sum(sum) / (double)count);
    __syncthreads();  // ev_block_sum's shared memory is used again for Z
    ev_acc_t scale = (ev_acc_t)0;
#if EV_MODE != EV_MODE_SUPPORT
    ev_acc_t total = (ev_acc_t)0;
    for (long long first = 0; first < length; first += tile) {
        ev_acc_t v[EV_TILE];
        const unsigned int valid = ev_load_tile(x, mask, start, inner, length, first, v);
        total = ev_weight_tile(v, valid, row_max, th, ratio, total);
    }
    total = ev_block_sum(total);
#if EV_MODE == EV_MODE_PROBS
    scale = (ev_acc_t)1 / total;
#else
    scale = EV_LOG(total);
#endif
#endif
    for (long long first = 0; first < length; first += tile) {
        ev_acc_t v[EV_TILE];
        const unsigned int valid = ev_load_tile(x, mask, start, inner, length, first, v);
        ev_write_tile(out, start, inner, length, first, v, valid, row_max, th, scale, ratio,
                      log_ratio);
    }
}

// One block per row. Each thread visits the entries threadIdx.x + j * blockDim.x for
// j = 0, 1, ... in that order: the first EV_CACHE stay in registers across the three
// passes, the rest are read again in each pass, EV_TILE loads at a time.
extern "C" __global__ void __launch_bounds__(EV_MAX_THREADS, 1) ev_softmax_forward(
    const ev_store_t* __restrict__ x, const unsigned char* __restrict__ mask,
    ev_out_t* __restrict__ out, const long long length, const long long inner,
    const ev_acc_t ratio, const ev_acc_t log_ratio) {
    const long long row = blockIdx.x;
    const long long start = (row / inner) * length * inner + row % inner;
    const long long cached_span = (long long)EV_CACHE * blockDim.x;
    const long long tile = (long long)EV_TILE * blockDim.x;

    // Pass 1: statistics.
    ev_acc_t cached[EV_CACHE];
    const unsigned int cached_valid = ev_load_tile(x, mask, start, inner, length, 0, cached);
    ev_stats st = ev_stats_empty();
    ev_stats_push_tile(st, cached, cached_valid);
    for (long long first = cached_span; first < length; first += tile) {
        ev_acc_t v[EV_TILE];
        const unsigned int valid = ev_load_tile(x, mask, start, inner, length, first, v);
        ev_stats_push_tile(st, v, valid);
    }
    st = ev_block_stats(st);

    if (st.bad || st.count == 0) {  // the same branch in every thread of the block
        const ev_out_t fill = ev_fill(st.bad);
        for (long long k = threadIdx.x; k < length; k += blockDim.x) out[start + k * inner] = fill;
        return;
    }
    const ev_acc_t row_max = st.max;
    if (st.shifted_sum == -EV_INF) {  // the same branch in every thread of the block
        ev_wide_row(x, mask, out, start, inner, length, row_max, st.count, ratio, log_ratio);
        return;
    }
    ev_threshold th;  // an ordinary row: the test is s >= mean
    th.h = (ev_acc_t)1;
    th.mh = row_max;
    th.mean = st.shifted_sum / (ev_acc_t)st.count;

    // Pass 2: the normalizer Z (not needed for the support).
    ev_acc_t scale = (ev_acc_t)0;
#if EV_MODE != EV_MODE_SUPPORT
    ev_acc_t total = ev_weight_tile(cached, cached_valid, row_max, th, ratio, (ev_acc_t)0);
    for (long long first = cached_span; first < length; first += tile) {
        ev_acc_t v[EV_TILE];
        const unsigned int valid = ev_load_tile(x, mask, start, inner, length, first, v);
        total = ev_weight_tile(v, valid, row_max, th, ratio, total);
    }
    total = ev_block_sum(total);
#if EV_MODE == EV_MODE_PROBS
    scale = (ev_acc_t)1 / total;
#else
    scale = EV_LOG(total);
#endif
#endif

    // Pass 3: the output.
    ev_write_tile(out, start, inner, length, 0, cached, cached_valid, row_max, th, scale,
                  ratio, log_ratio);
    for (long long first = cached_span; first < length; first += tile) {
        ev_acc_t v[EV_TILE];
        const unsigned int valid = ev_load_tile(x, mask, start, inner, length, first, v);
        ev_write_tile(out, start, inner, length, first, v, valid, row_max, th, scale, ratio,
                      log_ratio);
    }
}
"""

_JVP_BODY: Final = """\
// Loads entries first + threadIdx.x + j * blockDim.x (j < N) of a row of probs and tangent
// (0 past its end), all loads issued together.
template <int N>
__device__ __forceinline__ void ev_load_pair_tile(
    const ev_store_t* __restrict__ probs, const ev_store_t* __restrict__ tangent,
    long long start, long long inner, long long length, long long first, ev_acc_t (&p)[N],
    ev_acc_t (&t)[N]) {
#pragma unroll
    for (int j = 0; j < N; ++j) {
        const long long k = first + threadIdx.x + (long long)j * blockDim.x;
        p[j] = (ev_acc_t)0;
        t[j] = (ev_acc_t)0;
        if (k < length) {
            p[j] = ev_load(probs[start + k * inner]);
            t[j] = ev_load(tangent[start + k * inner]);
        }
    }
}

template <int N>
__device__ __forceinline__ ev_acc_t ev_dot_tile(
    const ev_acc_t (&p)[N], const ev_acc_t (&t)[N], ev_acc_t dot) {
#pragma unroll
    for (int j = 0; j < N; ++j) dot += p[j] * t[j];
    return dot;
}

template <int N>
__device__ __forceinline__ void ev_write_jvp_tile(
    ev_store_t* __restrict__ out, long long start, long long inner, long long length,
    long long first, const ev_acc_t (&p)[N], const ev_acc_t (&t)[N], ev_acc_t dot) {
#pragma unroll
    for (int j = 0; j < N; ++j) {
        const long long k = first + threadIdx.x + (long long)j * blockDim.x;
        if (k < length) out[start + k * inner] = ev_store(p[j] * (t[j] - dot));
    }
}

// p * (t - <p, t>) along each row: one pass for the inner product, one to write. As in
// the forward kernel, each thread's first EV_CACHE entries stay in registers.
extern "C" __global__ void __launch_bounds__(EV_MAX_THREADS, 1) ev_softmax_jvp(
    const ev_store_t* __restrict__ probs, const ev_store_t* __restrict__ tangent,
    ev_store_t* __restrict__ out, const long long length, const long long inner) {
    const long long row = blockIdx.x;
    const long long start = (row / inner) * length * inner + row % inner;
    const long long cached_span = (long long)EV_CACHE * blockDim.x;
    const long long tile = (long long)EV_TILE * blockDim.x;

    ev_acc_t cached_p[EV_CACHE], cached_t[EV_CACHE];
    ev_load_pair_tile(probs, tangent, start, inner, length, 0, cached_p, cached_t);
    ev_acc_t dot = ev_dot_tile(cached_p, cached_t, (ev_acc_t)0);
    for (long long first = cached_span; first < length; first += tile) {
        ev_acc_t p[EV_TILE], t[EV_TILE];
        ev_load_pair_tile(probs, tangent, start, inner, length, first, p, t);
        dot = ev_dot_tile(p, t, dot);
    }
    dot = ev_block_sum(dot);

    ev_write_jvp_tile(out, start, inner, length, 0, cached_p, cached_t, dot);
    for (long long first = cached_span; first < length; first += tile) {
        ev_acc_t p[EV_TILE], t[EV_TILE];
        ev_load_pair_tile(probs, tangent, start, inner, length, first, p, t);
        ev_write_jvp_tile(out, start, inner, length, first, p, t, dot);
    }
}
"""


def accumulation_dtype_name(dtype: str) -> str:
    """The dtype a storage dtype is computed in: float32 for half precision."""
    return "float64" if dtype == "float64" else "float32"


def common_source(dtype: str) -> str:
    """The CUDA code every kernel for ``dtype`` starts with: types, load/store, block sum.

    Examples
    --------
    >>> "typedef float ev_acc_t;" in common_source("bfloat16")
    True
    """
    if dtype not in _CONVERSIONS:
        raise ValueError(f"no CUDA kernel for dtype {dtype!r}; expected one of {DTYPES}")
    storage, acc, load, store = _CONVERSIONS[dtype]
    inf, nan, exp, log = _MATH[acc]
    return _PRELUDE.format(
        dtype=dtype,
        storage=storage,
        acc=acc,
        inf=inf,
        nan=nan,
        exp=exp,
        log=log,
        cache=CACHE_ITEMS,
        tile=TILE_ITEMS,
        warp=WARP,
        max_threads=MAX_THREADS,
        load=load,
        store=store,
    )


def forward_source(dtype: str, mode: str, masked: bool) -> str:
    """CUDA source of the forward kernel ``ev_softmax_forward`` for one variant.

    Parameters
    ----------
    dtype : str
        Storage dtype name, one of :data:`DTYPES`.
    mode : str
        One of :data:`MODES`: what the kernel writes.
    masked : bool
        Whether the kernel reads a ``where`` mask (a C-contiguous bool array of
        the input's shape).

    Returns
    -------
    str
        Source for ``cupy.RawKernel(source, FORWARD_KERNEL)``.

    Examples
    --------
    >>> src = forward_source("float16", "probs", masked=False)
    >>> "ev_softmax_forward" in src and "cvt.f32.f16" in src
    True
    """
    if mode not in MODES:
        raise ValueError(f"unknown kernel mode {mode!r}; expected one of {MODES}")
    body = _FORWARD_BODY.replace("{mode}", str(MODES.index(mode)))
    return common_source(dtype) + "\n" + body.replace("{masked}", str(int(masked)))


def jvp_source(dtype: str) -> str:
    """CUDA source of the kernel ``ev_softmax_jvp`` (``p * (t - <p, t>)``) for ``dtype``.

    Examples
    --------
    >>> "ev_softmax_jvp" in jvp_source("float64")
    True
    """
    return common_source(dtype) + "\n" + _JVP_BODY


def block_threads(length: int) -> int:
    """Threads per block for rows of ``length`` entries: a power of two in [32, 1024].

    As few as cover the row with ``CACHE_ITEMS`` entries each, so short rows do
    not leave most of a block idle.

    Examples
    --------
    >>> block_threads(10), block_threads(8192), block_threads(128000)
    (32, 1024, 1024)
    """
    needed = max(1, math.ceil(length / CACHE_ITEMS))
    return min(MAX_THREADS, max(WARP, 1 << (needed - 1).bit_length()))
