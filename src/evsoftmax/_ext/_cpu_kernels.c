/*
 * Fused CPU kernels for ev-softmax over rows: contiguous float32/float64 rows
 * (ev_softmax_rows), and any strided array of float32, float64, float16 or
 * bfloat16 along any axis with an optional broadcast boolean mask
 * (ev_softmax_strided, and the XLA FFI handlers with their VJP at the bottom). Strided rows that are not plain contiguous native
 * data are gathered into per-thread scratch (mask applied as -inf, half precision
 * widened to float32; many short rows to a tile) and written back converted; rows
 * along a non-last axis whose starts are adjacent run up to 64 side by side in
 * column tiles (col_tile), rows of up to 15 entries 16 side by side (lanes_<T>),
 * vectorized across rows, and rows of 16 to 64 entries one vector pass per row at a
 * width fixed when compiled (short_row_<T>; the VJP likewise). No full-size
 * temporary is allocated.
 *
 * One call normalizes `rows` rows of `length` entries on up to `threads`
 * threads: the caller's OpenMP team (PyTorch's intra-op pool, through the
 * GOMP_parallel of its libgomp) when given, else POSIX threads. Per row, four
 * passes over data that stays in cache:
 *
 *   1. m = max over the row;
 *   2. mean of the shifted scores s = x - m over the valid entries (x != -inf),
 *      summed in blocks (vectorized) whose sums add up in double: the same
 *      support test as evsoftmax._core (s >= mean, so the maximum, s = 0, is
 *      always in the support);
 *   3. weights w = exp(s) inside the support and ratio * exp(s) outside it
 *      (ratio = eps / (1 + eps), 0 for ev-softmax), written out, and their sum;
 *   4. division by the sum (or, for the log form, s + log(weight) - log(sum)).
 *
 * The library's rules for special rows (DESIGN section 4) hold as in the core:
 * a valid NaN or +inf makes the mean NaN and the whole row NaN; a row whose
 * shifted scores or their sum overflow (its range exceeds the dtype's maximum)
 * gets the exact mean's support from power-of-two scaled scores (wide_row); a
 * row of -inf only (no valid entry) gets probability 0 (log: -inf) everywhere.
 *
 * The exponential is evaluated in-line so that the compiler vectorizes pass 3:
 * exp(s) = 2^n exp(r) with n = round(s / ln 2), r = s - n ln 2 (ln 2 split in
 * two parts so that n * hi is exact) and exp(r), |r| <= ln(2) / 2, by its
 * Taylor polynomial (degree 7 for float32, 13 for float64; truncation error
 * below half an ulp). s <= 0 always; below the smallest normal result the
 * weight is 0.
 *
 * On x86-64 Linux with GCC, each kernel is compiled for AVX-512, AVX2 and
 * baseline x86-64 and the loader picks the best one for the CPU (target_clones);
 * contiguous float16 runs are converted by F16C where the CPU has it, chosen when
 * the module loads (f16_to_float_n).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
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

/* Defines wide_row_<T>(x, y, length, m, count, ratio, log_ratio, log_out): the row
 * (of maximum m and count valid entries) whose shifted scores or their sum overflow,
 * which only happens when its valid range exceeds the dtype's maximum. The support is
 * that of the exact mean (DESIGN section 4, the same mechanism on every path):
 * t = x 2^-k - m 2^-k with 2^k >= 2 count, so that neither a difference nor the sum
 * can overflow, and scaling by a power of two is exact; entries with
 * t >= sum(t) / count are in. t is formed in double and summed in long double (64
 * significant bits on x86-64), so that a float64 row's mean is exact for moderate
 * lengths and a tie with it stays in. Weights stay exp(x - m) (0 where the shift
 * overflows). A rare row: plain scalar code. */
#define EVS_DEFINE_WIDE_ROW(T, EXP)                                                         \
    static void wide_row_##T(const T *restrict x, T *restrict y, Py_ssize_t length, T m,    \
                             double count, T ratio, T log_ratio, int log_out) {             \
        int k = 1;                                                                          \
        while (ldexp(1.0, k) < 2.0 * count) k++;                                            \
        double h = ldexp(1.0, -k), mh = (double)m * h;                                      \
        long double sum = 0.0L;                                                             \
        for (Py_ssize_t i = 0; i < length; i++)                                             \
            if (x[i] != -INFINITY) sum += (long double)((double)x[i] * h - mh);             \
        long double mean = sum / (long double)count;                                        \
        T total = 0;                                                                        \
        for (Py_ssize_t i = 0; i < length; i++) {                                           \
            int in = x[i] != -INFINITY && (long double)((double)x[i] * h - mh) >= mean;     \
            T e = EXP(x[i] - m);                                                            \
            T w = in ? e : ratio * e;                                                       \
            if (!log_out) y[i] = w;                                                         \
            total += w;                                                                     \
        }                                                                                   \
        if (log_out) {                                                                      \
            T log_total = (T)log((double)total);                                            \
            for (Py_ssize_t i = 0; i < length; i++) {                                       \
                int in = x[i] != -INFINITY && (long double)((double)x[i] * h - mh) >= mean; \
                T s = x[i] - m;                                                             \
                y[i] = (in ? s : s + log_ratio) - log_total;                                \
            }                                                                               \
        } else {                                                                            \
            T inv = (T)1 / total;                                                           \
            for (Py_ssize_t i = 0; i < length; i++) y[i] *= inv;                            \
        }                                                                                   \
    }

EVS_DEFINE_WIDE_ROW(float, exp_nonpositive_f32)
EVS_DEFINE_WIDE_ROW(double, exp_nonpositive_f64)

/* The mean is summed in vectorized blocks of this many entries, added up in double. */
#define EVS_BLOCK 1024

/* Inside row_<T> and long_row_<T>: pass 4 of the log form, from the row's maximum m,
 * mean and total weight: s + log(weight) - log(total). */
#define EVS_LOG_PASS(T)                                                                     \
    do {                                                                                    \
        T log_total = (T)log((double)total);                                                \
        EVS_SIMD                                                                            \
        for (Py_ssize_t i = 0; i < length; i++) {                                           \
            T s = x[i] - m;                                                                 \
            y[i] = (s < mean ? s + log_ratio : s) - log_total;                              \
        }                                                                                   \
    } while (0)

/* Inside row_<T> and long_row_<T>: the rows that take the special rules (DESIGN
 * section 4), from the valid count and the sum of the shifted scores. */
#define EVS_SPECIAL_ROW(T)                                                                  \
    if (count == 0.0) {                                                                     \
        T fill = log_out ? -INFINITY : 0;                                                   \
        for (Py_ssize_t i = 0; i < length; i++) y[i] = fill;                                \
        return;                                                                             \
    }                                                                                       \
    if (isnan(sum)) {                                                                       \
        for (Py_ssize_t i = 0; i < length; i++) y[i] = NAN;                                 \
        return;                                                                             \
    }                                                                                       \
    if (isinf(sum)) {                                                                       \
        wide_row_##T(x, y, length, m, count, ratio, log_ratio, log_out);                    \
        return;                                                                             \
    }

/* Defines long_row_<T>(x, y, length, ratio, log_ratio, log_out, scale), inlined into
 * rows_<T>: row_<T> for rows of EVS_LONG entries or more, each pass one vectorized loop
 * (faster than chunks there). With scale set (and not log_out), pass 4 is left to the
 * caller: y holds the weights and *scale = 1 / their sum (a row that takes the special
 * rules is written whole and leaves *scale alone). */
#define EVS_DEFINE_LONG_ROW(T, EXP)                                                           \
    static inline __attribute__((always_inline)) void long_row_##T(                            \
        const T *restrict x, T *restrict y, Py_ssize_t length, T ratio, T log_ratio,        \
        int log_out, T *restrict scale) {                                                   \
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
        EVS_SPECIAL_ROW(T);                                                                 \
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
            EVS_LOG_PASS(T);                                                                \
        } else if (scale != NULL) {                                                         \
            *scale = (T)1 / total;                                                          \
        } else {                                                                            \
            T inv = (T)1 / total;                                                           \
            EVS_SIMD                                                                        \
            for (Py_ssize_t i = 0; i < length; i++) y[i] *= inv;                            \
        }                                                                                   \
    }

EVS_DEFINE_LONG_ROW(float, exp_nonpositive_f32)
EVS_DEFINE_LONG_ROW(double, exp_nonpositive_f64)

/* Rows are read in chunks of this many entries, each with its own accumulators. */
#define EVS_CHUNK 16
/* Rows at least this long take long_row_<T>. */
#define EVS_LONG 256
#define EVS_MAX(a, b) ((b) > (a) ? (b) : (a))
#define EVS_ADD(a, b) ((a) + (b))
/* acc[0] = OP over acc[0..EVS_CHUNK-1], pairwise (a chain of 4, not of 15). */
#define EVS_TREE(acc, OP)                                                                   \
    for (int w = EVS_CHUNK / 2; w > 0; w /= 2) {                                            \
        EVS_SIMD                                                                            \
        for (int j = 0; j < w; j++) acc[j] = OP(acc[j], acc[j + w]);                        \
    }

/* Defines row_<T>(x, y, length, ratio, log_ratio, log_out), inlined into rows_<T>.
 * Every pass runs over the row's whole chunks with EVS_CHUNK accumulators (loops of a
 * fixed length, which the compiler turns into whole vectors), then over the last
 * partial chunk copied into a chunk padded with -inf, which no pass counts (not a
 * maximum, not valid, weight 0): short and odd-length rows run no scalar loop. */
#define EVS_DEFINE_ROW(T, EXP)                                                              \
    static inline __attribute__((always_inline)) void row_##T(                              \
        const T *restrict x, T *restrict y, Py_ssize_t length, T ratio, T log_ratio,        \
        int log_out) {                                                                      \
        Py_ssize_t full = length - length % EVS_CHUNK, rest = length - full;                \
        T tail[EVS_CHUNK], tail_w[EVS_CHUNK], acc[EVS_CHUNK], acc2[EVS_CHUNK];              \
        EVS_SIMD                                                                            \
        for (int j = 0; j < EVS_CHUNK; j++) tail[j] = j < rest ? x[full + j] : -INFINITY;   \
        EVS_SIMD                                                                            \
        for (int j = 0; j < EVS_CHUNK; j++) acc[j] = tail[j];                               \
        for (Py_ssize_t c = 0; c < full; c += EVS_CHUNK)                                    \
            EVS_SIMD                                                                        \
            for (int j = 0; j < EVS_CHUNK; j++) acc[j] = x[c + j] > acc[j] ? x[c + j] : acc[j]; \
        EVS_TREE(acc, EVS_MAX);                                                             \
        T m = acc[0];                                                                       \
        double sum = 0.0, count = 0.0;                                                      \
        Py_ssize_t padded = full + (rest > 0 ? EVS_CHUNK : 0); /* the tail chunk last */    \
        for (Py_ssize_t start = 0; start < padded; start += EVS_BLOCK) {                    \
            Py_ssize_t stop = padded - start < EVS_BLOCK ? padded : start + EVS_BLOCK;      \
            EVS_SIMD                                                                        \
            for (int j = 0; j < EVS_CHUNK; j++) acc[j] = acc2[j] = 0;                       \
            for (Py_ssize_t c = start; c < stop; c += EVS_CHUNK) {                          \
                const T *xc = c < full ? x + c : tail;                                      \
                EVS_SIMD                                                                    \
                for (int j = 0; j < EVS_CHUNK; j++) {                                       \
                    int valid = xc[j] != -INFINITY;                                         \
                    acc[j] += valid ? xc[j] - m : (T)0;                                     \
                    acc2[j] += valid ? (T)1 : (T)0;                                         \
                }                                                                           \
            }                                                                               \
            EVS_TREE(acc, EVS_ADD);                                                         \
            EVS_TREE(acc2, EVS_ADD);                                                        \
            sum += acc[0];                                                                  \
            count += acc2[0];                                                               \
        }                                                                                   \
        EVS_SPECIAL_ROW(T);                                                                 \
        T mean = (T)(sum / count);                                                          \
        if (rest > 0) {                                                                     \
            EVS_SIMD                                                                        \
            for (int j = 0; j < EVS_CHUNK; j++) {                                           \
                T s = tail[j] - m;                                                          \
                T e = EXP(s);                                                               \
                tail_w[j] = s < mean ? ratio * e : e;                                       \
                acc[j] = tail_w[j];                                                         \
            }                                                                               \
        } else {                                                                            \
            EVS_SIMD                                                                        \
            for (int j = 0; j < EVS_CHUNK; j++) acc[j] = 0;                                 \
        }                                                                                   \
        if (log_out) {                                                                      \
            for (Py_ssize_t c = 0; c < full; c += EVS_CHUNK)                                \
                EVS_SIMD                                                                    \
                for (int j = 0; j < EVS_CHUNK; j++) {                                       \
                    T s = x[c + j] - m;                                                     \
                    T e = EXP(s);                                                           \
                    acc[j] += s < mean ? ratio * e : e;                                     \
                }                                                                           \
        } else {                                                                            \
            for (Py_ssize_t c = 0; c < full; c += EVS_CHUNK)                                \
                EVS_SIMD                                                                    \
                for (int j = 0; j < EVS_CHUNK; j++) {                                       \
                    T s = x[c + j] - m;                                                     \
                    T e = EXP(s);                                                           \
                    T w = s < mean ? ratio * e : e;                                         \
                    y[c + j] = w;                                                           \
                    acc[j] += w;                                                            \
                }                                                                           \
        }                                                                                   \
        EVS_TREE(acc, EVS_ADD);                                                             \
        T total = acc[0];                                                                   \
        if (log_out) {                                                                      \
            EVS_LOG_PASS(T);                                                                \
        } else {                                                                            \
            T inv = (T)1 / total;                                                           \
            for (Py_ssize_t c = 0; c < full; c += EVS_CHUNK)                                \
                EVS_SIMD                                                                    \
                for (int j = 0; j < EVS_CHUNK; j++) y[c + j] *= inv;                        \
            EVS_SIMD                                                                        \
            for (int j = 0; j < rest; j++) y[full + j] = tail_w[j] * inv;                   \
        }                                                                                   \
    }

EVS_DEFINE_ROW(float, exp_nonpositive_f32)
EVS_DEFINE_ROW(double, exp_nonpositive_f64)

/* Rows of EVS_CHUNK to EVS_SHORT_MAX entries take short_row_<T>: the recipe of row_<T>
 * with the row's length rounded up to `width`, a multiple of EVS_CHUNK known when it
 * is compiled (rows_<T> has one loop per width), so that each pass is a few whole
 * vectors and each reduction one vector reduction, with no per-row loop control;
 * rows of any other length there are read into a copy padded with -inf (which no
 * pass counts). At 16 entries that takes half the time of row_<T> (whose chunk
 * accumulators and their trees cost more than the row's arithmetic); rows of up to
 * 15 entries are faster still in lane tiles (lanes_<T>), measured on AVX-512. */
#define EVS_SHORT_MAX 64

/* A row that needs the special rules (or any row, slowly): row_<T>, not inlined. */
#define EVS_DEFINE_SPECIAL_ROW(T)                                                           \
    static __attribute__((noinline)) void special_row_##T(                                  \
        const T *restrict x, T *restrict y, Py_ssize_t length, T ratio, T log_ratio,        \
        int log_out) {                                                                      \
        row_##T(x, y, length, ratio, log_ratio, log_out);                                   \
    }

EVS_DEFINE_SPECIAL_ROW(float)
EVS_DEFINE_SPECIAL_ROW(double)

/* a[0] = the sum of a[0..width-1] (width a multiple of EVS_CHUNK), folded to one chunk
 * and then halved: a tree of whole-vector additions (an `omp simd` reduction over a
 * loop of constant length is unrolled into one addition after the other). */
#define EVS_FOLD_SUM(a, width)                                                              \
    do {                                                                                    \
        for (int c_ = EVS_CHUNK; c_ < (width); c_ += EVS_CHUNK)                             \
            EVS_SIMD                                                                        \
            for (int j = 0; j < EVS_CHUNK; j++) a[j] += a[c_ + j];                          \
        EVS_TREE(a, EVS_ADD);                                                               \
    } while (0)

#define EVS_DEFINE_SHORT_ROW(T, EXP)                                                        \
    static inline __attribute__((always_inline)) void short_row_##T(                        \
        const T *restrict x, T *restrict y, Py_ssize_t length, const int width, T ratio,    \
        T log_ratio, int log_out) {                                                         \
        T padded[EVS_SHORT_MAX], w[EVS_SHORT_MAX], a[EVS_SHORT_MAX], c[EVS_SHORT_MAX];      \
        const T *restrict v = x;                                                            \
        if (length != width) {                                                              \
            EVS_SIMD                                                                        \
            for (int i = 0; i < width; i++) padded[i] = i < length ? x[i] : -INFINITY;      \
            v = padded;                                                                     \
        }                                                                                   \
        T m = -INFINITY;                                                                    \
        EVS_SIMD_MAX_M                                                                      \
        for (int i = 0; i < width; i++) m = v[i] > m ? v[i] : m;                            \
        EVS_SIMD                                                                            \
        for (int i = 0; i < width; i++) {                                                   \
            int valid = v[i] != -INFINITY;                                                  \
            a[i] = valid ? v[i] - m : (T)0;                                                 \
            c[i] = valid ? (T)1 : (T)0;                                                     \
        }                                                                                   \
        EVS_FOLD_SUM(a, width);                                                             \
        EVS_FOLD_SUM(c, width);                                                             \
        T sum = a[0], valid_count = c[0];                                                   \
        if (valid_count == 0 || !isfinite(sum)) {                                           \
            special_row_##T(x, y, length, ratio, log_ratio, log_out);                       \
            return;                                                                         \
        }                                                                                   \
        /* Divided once, in double as in row_<T> (the same float: double rounding of a      \
         * quotient of floats is innocuous). */                                             \
        T mean = (T)((double)sum / (double)valid_count);                                    \
        EVS_SIMD                                                                            \
        for (int i = 0; i < width; i++) {                                                   \
            T s = v[i] - m;                                                                 \
            T e = EXP(s);                                                                   \
            w[i] = s < mean ? ratio * e : e;                                                \
            a[i] = w[i];                                                                    \
        }                                                                                   \
        EVS_FOLD_SUM(a, width);                                                             \
        T total = a[0];                                                                     \
        if (log_out) {                                                                      \
            T log_total = (T)log((double)total);                                            \
            EVS_SIMD                                                                        \
            for (int i = 0; i < width; i++) {                                               \
                T s = v[i] - m;                                                             \
                w[i] = (s < mean ? s + log_ratio : s) - log_total;                          \
            }                                                                               \
        } else {                                                                            \
            T inv = (T)1 / total;                                                           \
            EVS_SIMD                                                                        \
            for (int i = 0; i < width; i++) w[i] *= inv;                                    \
        }                                                                                   \
        if (length == width)                                                                \
            EVS_SIMD                                                                        \
            for (int i = 0; i < width; i++) y[i] = w[i];                                    \
        else                                                                                \
            EVS_SIMD /* a masked store, not a call of memcpy */                             \
            for (int i = 0; i < width; i++)                                                 \
                if (i < length) y[i] = w[i];                                                \
    }

EVS_DEFINE_SHORT_ROW(float, exp_nonpositive_f32)
EVS_DEFINE_SHORT_ROW(double, exp_nonpositive_f64)

/* `count` short rows of one width (a constant in each instance). */
#define EVS_SHORT_ROWS(T, WIDTH)                                                            \
    for (Py_ssize_t r = 0; r < count; r++)                                                  \
        short_row_##T(x + r * x_step, y + r * y_step, length, WIDTH, ratio, log_ratio, log_out)

/* Defines rows_<T>(x, y, count, x_step, y_step, length, ...): `count` rows whose starts
 * are x_step (y_step) entries apart, in one call, so that short rows cost no call and
 * no dispatch each (the row body is inlined into each target clone). */
#define EVS_DEFINE_ROWS(T)                                                                  \
    EVS_CLONES static void rows_##T(const T *x, T *y, Py_ssize_t count, Py_ssize_t x_step,  \
                                   Py_ssize_t y_step, Py_ssize_t length, T ratio,           \
                                   T log_ratio, int log_out) {                              \
        if (length >= EVS_CHUNK && length <= EVS_SHORT_MAX) {                               \
            switch ((length + EVS_CHUNK - 1) / EVS_CHUNK) {                                 \
                case 1: EVS_SHORT_ROWS(T, EVS_CHUNK); return;                               \
                case 2: EVS_SHORT_ROWS(T, 2 * EVS_CHUNK); return;                           \
                case 3: EVS_SHORT_ROWS(T, 3 * EVS_CHUNK); return;                           \
                default: EVS_SHORT_ROWS(T, 4 * EVS_CHUNK); return;                          \
            }                                                                               \
        }                                                                                   \
        for (Py_ssize_t r = 0; r < count; r++)                                              \
            if (length >= EVS_LONG)                                                         \
                long_row_##T(x + r * x_step, y + r * y_step, length, ratio, log_ratio, log_out, \
                             NULL);                                                         \
            else                                                                            \
                row_##T(x + r * x_step, y + r * y_step, length, ratio, log_ratio, log_out); \
    }

EVS_DEFINE_ROWS(float)
EVS_DEFINE_ROWS(double)

/* ev-softmax (not its log) of `count` contiguous rows of length >= EVS_LONG into y,
 * each row's division left to the caller: y's row r holds its weights and is to be
 * multiplied by scale[r] (1 for a row that took the special rules and is written
 * whole). A caller that converts the rows anyway (half precision, scatter_float)
 * divides on the way: one pass over them fewer. Apart from rows_float, whose code
 * the other rows keep. */
EVS_CLONES static void long_rows_scaled(const float *x, float *y, Py_ssize_t count,
                                        Py_ssize_t length, float ratio,
                                        float *restrict scale) {
    for (Py_ssize_t r = 0; r < count; r++) {
        scale[r] = 1.0f;
        long_row_float(x + r * length, y + r * length, length, ratio, 0.0f, 0, scale + r);
    }
}

/* Element types of the strided entry point (half precision is computed in float). */
#define EVS_F32 0
#define EVS_F64 1
#define EVS_F16 2
#define EVS_BF16 3
#define EVS_MAX_DIMS 32

/* float16 is read and written as its bits (f16_to_float, float_to_f16), which every
 * compiler vectorizes (GCC 12 converts _Float16 one entry at a time); contiguous runs
 * go through F16C where the CPU has it (f16_to_float_n, float_to_f16_n). */
#define EVS_HAVE_F16 1
typedef uint16_t evs_f16;

/* One call's work, shared by its threads, which claim chunks of rows from `next`:
 * ev-softmax of x into y, or, when g is set, the VJP from output x and cotangent g
 * (log_out: the log form's, from log-probabilities x, with the validity of v and the
 * mask). A row is a line along the normalized axis; the other axes
 * (`outer` of them after merging, the last varying fastest) enumerate the rows. x,
 * y and the mask (bytes, 0: masked out; NULL: none) are addressed through strides,
 * in elements (bytes for the mask), so that any axis, layout and broadcast mask is
 * read in place. */
typedef struct {
    const char *x;
    const char *g;
    const char *v; /* the log VJP's input x (validity), laid out as x; or NULL */
    char *y;
    const unsigned char *mask;
    Py_ssize_t rows, length, chunk;
    double ratio, log_ratio;
    int log_out, dtype, outer;
    Py_ssize_t extent[EVS_MAX_DIMS], xs[EVS_MAX_DIMS], ms[EVS_MAX_DIMS], ys[EVS_MAX_DIMS];
    Py_ssize_t axs, ams, ays; /* strides along the axis */
    Py_ssize_t next;          /* first unclaimed row (atomic) */
    int failed;               /* a thread could not allocate its scratch rows (atomic) */
    int fused;                /* the log form's gradient from x and g (run_fused_rows) */
    int scan;                 /* forward: look for -inf in the rows just written (scan_rows) */
    int found;                /* a -inf was written (atomic) */
} job_t;

/* A job over `rows` contiguous rows of `length` entries. */
static void contiguous_rows(job_t *job, Py_ssize_t rows, Py_ssize_t length) {
    job->rows = rows;
    job->length = length;
    job->outer = 1;
    job->extent[0] = rows;
    job->xs[0] = job->ys[0] = length;
    job->ms[0] = 0;
    job->axs = job->ays = 1;
    job->ams = 0;
    job->mask = NULL;
}

static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* float16 bits to float: exponent and mantissa moved into place and rebiased by an
 * exact multiplication by 2^112 (subnormals included); infinities kept, NaN made
 * quiet with its payload kept (bit for bit as F16C's vcvtph2ps, f16_to_float_n). */
static inline float f16_to_float(uint16_t h) {
    uint32_t em = (uint32_t)(h & 0x7fffu) << 13, sign = (uint32_t)(h & 0x8000u) << 16;
    float f;
    memcpy(&f, &em, sizeof f);
    f *= 0x1p112f;
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    uint32_t quiet = em > (0x7c00u << 13) ? 0x00400000u : 0u;
    bits = em >= (0x7c00u << 13) ? em | 0x7f800000u | quiet : bits;
    bits |= sign;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* float to float16 bits, rounded to nearest even (bit for bit as F16C's vcvtps2ph,
 * float_to_f16_n): beyond the largest half (to 65520) infinity; NaN a quiet NaN with
 * the top of its payload; below the smallest normal
 * half the rounding of an addition that aligns the mantissa. Branch free, so that it
 * vectorizes. */
static inline uint16_t float_to_f16(float f) {
    uint32_t u, sign;
    memcpy(&u, &f, sizeof u);
    sign = (u >> 16) & 0x8000u;
    u &= 0x7fffffffu;
    const uint32_t magic_bits = (uint32_t)(127 - 15 + 23 - 10 + 1) << 23;
    float magic, small;
    memcpy(&magic, &magic_bits, sizeof magic);
    memcpy(&small, &u, sizeof small);
    small += magic;
    uint32_t small_bits;
    memcpy(&small_bits, &small, sizeof small_bits);
    uint32_t sub = small_bits - magic_bits;
    uint32_t normal = (u + ((uint32_t)(15 - 127) << 23) + 0xfffu + ((u >> 13) & 1u)) >> 13;
    uint32_t big = u > 0x7f800000u ? 0x7e00u | ((u >> 13) & 0x3ffu) : 0x7c00u;
    uint32_t o = u >= (uint32_t)(127 + 16) << 23 ? big : u < (uint32_t)113 << 23 ? sub : normal;
    return (uint16_t)(o | sign);
}

/* Round to nearest even, as torch and ml_dtypes convert; NaN stays a (quiet) NaN. */
static inline uint16_t float_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

/* ---- Runs of float16 converted by the hardware where the CPU can ------------------
 *
 * f16_to_float_n and float_to_f16_n convert n contiguous entries: with F16C's
 * vcvtph2ps and vcvtps2ph (8 entries an instruction, rounding to nearest even) when
 * the CPU has it (evs_f16c, read when the module loads), else with f16_to_float and
 * float_to_f16, which give the same bits for every input (NaN payloads included).
 * x86-64-v3 and v4 include F16C, but GCC 12 does not vectorize conversions of
 * _Float16 and the target clones cannot tell which of them runs, so the intrinsics
 * live in functions compiled for F16C and chosen at run time; a run is long enough
 * (a tile, a block of a row) that the choice costs nothing. */
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define EVS_F16C 1
#else
#define EVS_F16C 0
#endif

static int evs_f16c; /* the CPU has F16C (set in PyInit__cpu_kernels) */

#if EVS_F16C
__attribute__((target("avx,f16c"))) static void f16_to_float_f16c(const evs_f16 *restrict h,
                                                                   float *restrict f,
                                                                   Py_ssize_t n) {
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(f + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; i++) f[i] = _cvtsh_ss(h[i]);
}

__attribute__((target("avx,f16c"))) static void float_to_f16_f16c(const float *restrict f,
                                                                   evs_f16 *restrict h,
                                                                   Py_ssize_t n, float scale) {
    Py_ssize_t i = 0;
    __m256 s = _mm256_set1_ps(scale);
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(h + i),
                         _mm256_cvtps_ph(_mm256_mul_ps(_mm256_loadu_ps(f + i), s),
                                         _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) h[i] = _cvtss_sh(f[i] * scale, _MM_FROUND_TO_NEAREST_INT);
}
#endif

EVS_CLONES static void f16_to_float_soft(const evs_f16 *restrict h, float *restrict f,
                                         Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) f[i] = f16_to_float(h[i]);
}

EVS_CLONES static void float_to_f16_soft(const float *restrict f, evs_f16 *restrict h,
                                         Py_ssize_t n, float scale) {
    for (Py_ssize_t i = 0; i < n; i++) h[i] = float_to_f16(f[i] * scale);
}

static void f16_to_float_n(const evs_f16 *restrict h, float *restrict f, Py_ssize_t n) {
#if EVS_F16C
    if (evs_f16c) {
        f16_to_float_f16c(h, f, n);
        return;
    }
#endif
    f16_to_float_soft(h, f, n);
}

/* f * scale rounded once (the product in float, as if stored first). */
static void float_to_f16_n(const float *restrict f, evs_f16 *restrict h, Py_ssize_t n,
                           float scale) {
#if EVS_F16C
    if (evs_f16c) {
        float_to_f16_f16c(f, h, n, scale);
        return;
    }
#endif
    float_to_f16_soft(f, h, n, scale);
}

/* bfloat16's: f * scale rounded once (no hardware path: AVX512-BF16's vcvtneps2bf16
 * flushes subnormals to zero). */
EVS_CLONES static void float_to_bf16_n(const float *restrict f, uint16_t *restrict h,
                                       Py_ssize_t n, float scale) {
    for (Py_ssize_t i = 0; i < n; i++) h[i] = float_to_bf16(f[i] * scale);
}

/* A tile: `count` rows (starts `row_step` entries apart, entries `step` apart) gathered
 * into count contiguous rows of the accumulation type, masked entries -inf. Reading
 * the rows side by side means that rows along a non-last axis of a contiguous array
 * (adjacent in memory: row_step 1) are read a cache line at a time. */
#define EVS_GATHER(T, SRC, LOAD)                                                            \
    do {                                                                                    \
        const SRC *p = (const SRC *)x;                                                      \
        if (step == 1 && (count == 1 || row_step == length)) /* contiguous: one loop */     \
            for (Py_ssize_t i = 0; i < count * length; i++) buf[i] = LOAD(p[i]);            \
        else if (count == 1)                                                                \
            for (Py_ssize_t i = 0; i < length; i++) buf[i] = LOAD(p[i * step]);             \
        else                                                                                \
            for (Py_ssize_t i = 0; i < length; i++)                                         \
                for (Py_ssize_t t = 0; t < count; t++)                                      \
                    buf[t * length + i] = LOAD(p[i * step + t * row_step]);                \
    } while (0)
#define EVS_SCATTER(DST, STORE)                                                             \
    do {                                                                                    \
        DST *p = (DST *)y;                                                                  \
        if (step == 1 && (count == 1 || row_step == length))                                \
            for (Py_ssize_t i = 0; i < count * length; i++) p[i] = STORE(buf[i]);           \
        else if (count == 1)                                                                \
            for (Py_ssize_t i = 0; i < length; i++) p[i * step] = STORE(buf[i]);            \
        else                                                                                \
            for (Py_ssize_t i = 0; i < length; i++)                                         \
                for (Py_ssize_t t = 0; t < count; t++)                                      \
                    p[i * step + t * row_step] = STORE(buf[t * length + i]);               \
    } while (0)
#define EVS_AS_FLOAT(v) ((float)(v))
#define EVS_AS_DOUBLE(v) (v)

EVS_CLONES static void gather_float(const char *x, int dtype, Py_ssize_t step,
                                    Py_ssize_t row_step, Py_ssize_t count, float *restrict buf,
                                    Py_ssize_t length) {
    if (dtype == EVS_F32)
        EVS_GATHER(float, float, EVS_AS_FLOAT);
    else if (dtype == EVS_F16 && step == 1 && (count == 1 || row_step == length))
        f16_to_float_n((const evs_f16 *)x, buf, count * length);
    else if (dtype == EVS_F16)
        EVS_GATHER(float, evs_f16, f16_to_float);
    else
        EVS_GATHER(float, uint16_t, bf16_to_float);
}

/* Writes the tile; with scale set (half precision into contiguous rows only, see
 * strided_tile), row t multiplied by scale[t] on the way. */
EVS_CLONES static void scatter_float(const float *restrict buf, char *y, int dtype,
                                     Py_ssize_t step, Py_ssize_t row_step, Py_ssize_t count,
                                     Py_ssize_t length, const float *restrict scale) {
    if (dtype != EVS_F32 && step == 1 && (count == 1 || row_step == length)) {
        for (Py_ssize_t t = 0; t < count; t++) {
            float s = scale == NULL ? 1.0f : scale[t];
            uint16_t *row = (uint16_t *)y + t * length;
            if (dtype == EVS_F16) float_to_f16_n(buf + t * length, row, length, s);
            else float_to_bf16_n(buf + t * length, row, length, s);
        }
    } else if (dtype == EVS_F32)
        EVS_SCATTER(float, EVS_AS_FLOAT);
    else if (dtype == EVS_F16)
        EVS_SCATTER(evs_f16, float_to_f16);
    else
        EVS_SCATTER(uint16_t, float_to_bf16);
}

static void gather_double(const char *x, Py_ssize_t step, Py_ssize_t row_step, Py_ssize_t count,
                          double *restrict buf, Py_ssize_t length) {
    EVS_GATHER(double, double, EVS_AS_DOUBLE);
}

static void scatter_double(const double *restrict buf, char *y, Py_ssize_t step,
                           Py_ssize_t row_step, Py_ssize_t count, Py_ssize_t length) {
    EVS_SCATTER(double, EVS_AS_DOUBLE);
}

/* Defines lanes_<T>(b, o, length, ratio, log_ratio, log_out): the recipe of row_<T> on
 * EVS_LANES rows stored side by side (entry i of row t at b[i * EVS_LANES + t]), as
 * rows along a non-last axis of a contiguous array lie, vectorized across the rows.
 * Returns 0, writing nothing, when a row needs the special rules (no valid entry, a
 * NaN or +inf, an overflowing sum): the caller then takes the rows one by one. */
#define EVS_LANES 16
#define EVS_DEFINE_LANES(T, EXP)                                                            \
    EVS_CLONES static int lanes_##T(const T *restrict b, T *restrict o, Py_ssize_t length,  \
                                   T ratio, T log_ratio, int log_out) {                     \
        T m[EVS_LANES], mean[EVS_LANES], total[EVS_LANES], bs[EVS_LANES], bc[EVS_LANES];    \
        double sum[EVS_LANES] = {0}, count[EVS_LANES] = {0};                                \
        for (int t = 0; t < EVS_LANES; t++) m[t] = -INFINITY;                               \
        for (Py_ssize_t i = 0; i < length; i++)                                             \
            for (int t = 0; t < EVS_LANES; t++) {                                           \
                T v = b[i * EVS_LANES + t];                                                 \
                m[t] = v > m[t] ? v : m[t];                                                 \
            }                                                                               \
        for (Py_ssize_t start = 0; start < length; start += EVS_BLOCK) {                    \
            Py_ssize_t stop = length - start < EVS_BLOCK ? length : start + EVS_BLOCK;      \
            for (int t = 0; t < EVS_LANES; t++) bs[t] = bc[t] = 0;                          \
            for (Py_ssize_t i = start; i < stop; i++)                                       \
                for (int t = 0; t < EVS_LANES; t++) {                                       \
                    T v = b[i * EVS_LANES + t];                                             \
                    int valid = v != -INFINITY;                                             \
                    bs[t] += valid ? v - m[t] : (T)0;                                       \
                    bc[t] += valid ? (T)1 : (T)0;                                           \
                }                                                                           \
            for (int t = 0; t < EVS_LANES; t++) {                                           \
                sum[t] += bs[t];                                                            \
                count[t] += bc[t];                                                          \
            }                                                                               \
        }                                                                                   \
        for (int t = 0; t < EVS_LANES; t++) {                                               \
            if (count[t] == 0.0 || !isfinite(sum[t])) return 0;                             \
            mean[t] = (T)(sum[t] / count[t]);                                               \
            total[t] = 0;                                                                   \
        }                                                                                   \
        for (Py_ssize_t i = 0; i < length; i++)                                             \
            for (int t = 0; t < EVS_LANES; t++) {                                           \
                T s = b[i * EVS_LANES + t] - m[t];                                          \
                T e = EXP(s);                                                               \
                T w = s < mean[t] ? ratio * e : e;                                          \
                if (!log_out) o[i * EVS_LANES + t] = w;                                     \
                total[t] += w;                                                              \
            }                                                                               \
        if (log_out) {                                                                      \
            for (int t = 0; t < EVS_LANES; t++) total[t] = (T)log((double)total[t]);        \
            for (Py_ssize_t i = 0; i < length; i++)                                         \
                for (int t = 0; t < EVS_LANES; t++) {                                       \
                    T s = b[i * EVS_LANES + t] - m[t];                                      \
                    o[i * EVS_LANES + t] = (s < mean[t] ? s + log_ratio : s) - total[t];    \
                }                                                                           \
        } else {                                                                            \
            for (int t = 0; t < EVS_LANES; t++) total[t] = (T)1 / total[t];                 \
            for (Py_ssize_t i = 0; i < length; i++)                                         \
                for (int t = 0; t < EVS_LANES; t++) o[i * EVS_LANES + t] *= total[t];       \
        }                                                                                   \
        return 1;                                                                           \
    }

EVS_DEFINE_LANES(float, exp_nonpositive_f32)
EVS_DEFINE_LANES(double, exp_nonpositive_f64)

/* Copies between a lane tile (entry i of row t at b[i * EVS_LANES + t]) and rows of the
 * array whose entries are `step` apart and whose starts are adjacent (row_step 1). */
#define EVS_DEFINE_LANE_COPY(T, SRC, LOAD, STORE)                                          \
    EVS_CLONES static void lanes_in_##SRC(const char *x, Py_ssize_t step, Py_ssize_t row_step, \
                                          T *restrict b, Py_ssize_t length) {               \
        const SRC *p = (const SRC *)x;                                                      \
        if (row_step == 1)                                                                  \
            for (Py_ssize_t i = 0; i < length; i++)                                         \
                for (int t = 0; t < EVS_LANES; t++) b[i * EVS_LANES + t] = LOAD(p[i * step + t]); \
        else                                                                                \
            for (int t = 0; t < EVS_LANES; t++)                                             \
                for (Py_ssize_t i = 0; i < length; i++)                                     \
                    b[i * EVS_LANES + t] = LOAD(p[i * step + t * row_step]);                \
    }                                                                                       \
    EVS_CLONES static void lanes_out_##SRC(const T *restrict b, char *y, Py_ssize_t step,   \
                                           Py_ssize_t row_step, Py_ssize_t length) {        \
        SRC *p = (SRC *)y;                                                                  \
        if (row_step == 1)                                                                  \
            for (Py_ssize_t i = 0; i < length; i++)                                         \
                for (int t = 0; t < EVS_LANES; t++) p[i * step + t] = STORE(b[i * EVS_LANES + t]); \
        else                                                                                \
            for (int t = 0; t < EVS_LANES; t++)                                             \
                for (Py_ssize_t i = 0; i < length; i++)                                     \
                    p[i * step + t * row_step] = STORE(b[i * EVS_LANES + t]);               \
    }

EVS_DEFINE_LANE_COPY(float, float, EVS_AS_FLOAT, EVS_AS_FLOAT)
EVS_DEFINE_LANE_COPY(float, evs_f16, f16_to_float, float_to_f16)
EVS_DEFINE_LANE_COPY(double, double, EVS_AS_DOUBLE, EVS_AS_DOUBLE)
EVS_DEFINE_LANE_COPY(float, uint16_t, bf16_to_float, float_to_bf16)

/* A full tile of unmasked rows with adjacent starts, side by side, copied through
 * scratch (reading the array in place, 16 entries a cache line apart per row, makes
 * the cache ways conflict); 0 if it needs the row-by-row path (see lanes_<T>). */
#define EVS_DEFINE_LANE_MASK(T)                                                             \
    static void lanes_mask_##T(const unsigned char *mask, Py_ssize_t step, Py_ssize_t row_step, \
                               T *restrict b, Py_ssize_t length) {                          \
        for (Py_ssize_t i = 0; i < length; i++)                                             \
            for (int t = 0; t < EVS_LANES; t++)                                             \
                if (!mask[i * step + t * row_step]) b[i * EVS_LANES + t] = -INFINITY;       \
    }

EVS_DEFINE_LANE_MASK(float)
EVS_DEFINE_LANE_MASK(double)

static int lane_tile(const job_t *job, const char *x, const unsigned char *mask, char *y,
                     Py_ssize_t x_row, Py_ssize_t m_row, Py_ssize_t y_row, void *buf_in,
                     void *buf_out) {
    Py_ssize_t n = job->length, xs = job->axs, ys = job->ays;
    int log_out = job->log_out;
    if (job->dtype == EVS_F64) {
        double *in = (double *)buf_in, *out = (double *)buf_out;
        lanes_in_double(x, xs, x_row, in, n);
        if (mask != NULL) lanes_mask_double(mask, job->ams, m_row, in, n);
        if (!lanes_double(in, out, n, job->ratio, job->log_ratio, log_out)) return 0;
        lanes_out_double(out, y, ys, y_row, n);
        return 1;
    }
    float *in = (float *)buf_in, *out = (float *)buf_out;
    if (job->dtype == EVS_F32) lanes_in_float(x, xs, x_row, in, n);
    else if (job->dtype == EVS_F16) lanes_in_evs_f16(x, xs, x_row, in, n);
    else lanes_in_uint16_t(x, xs, x_row, in, n);
    if (mask != NULL) lanes_mask_float(mask, job->ams, m_row, in, n);
    if (!lanes_float(in, out, n, (float)job->ratio, (float)job->log_ratio, log_out)) return 0;
    if (job->dtype == EVS_F32) lanes_out_float(out, y, ys, y_row, n);
    else if (job->dtype == EVS_F16) lanes_out_evs_f16(out, y, ys, y_row, n);
    else lanes_out_uint16_t(out, y, ys, y_row, n);
    return 1;
}

/* Masked entries of a gathered tile set to -inf (a masked NaN is thus never used). */
#define EVS_DEFINE_APPLY_MASK(T)                                                            \
    static void apply_mask_##T(const unsigned char *mask, Py_ssize_t step,                  \
                               Py_ssize_t row_step, Py_ssize_t count, T *restrict buf,      \
                               Py_ssize_t length) {                                         \
        for (Py_ssize_t i = 0; i < length; i++) /* in the mask's order along the axis */  \
            for (Py_ssize_t t = 0; t < count; t++)                                          \
                if (!mask[i * step + t * row_step]) buf[t * length + i] = -INFINITY;        \
    }

EVS_DEFINE_APPLY_MASK(float)
EVS_DEFINE_APPLY_MASK(double)

/* Rows per tile: up to 16 side by side when rows are not contiguous (their entries are
 * `axs` apart), within 64k entries of scratch. */
#define EVS_SHORT 15 /* rows up to this long are taken 16 at a time, side by side */

/* Rows along the last axis that are gathered (half precision, masked) go EVS_TILE
 * entries (at most EVS_TILE_ROWS rows) to a tile: one call of each step per tile, not
 * per row, which short rows would spend more time on than on their entries. */
#define EVS_TILE 1024
#define EVS_TILE_ROWS 256

static Py_ssize_t tile_rows(const job_t *job) {
    if (job->axs == 1 && job->length <= EVS_SHORT) return EVS_LANES;
    if (job->axs == 1) {
        Py_ssize_t rows = EVS_TILE / job->length;
        return rows < 1 ? 1 : rows > EVS_TILE_ROWS ? EVS_TILE_ROWS : rows;
    }
    Py_ssize_t rows = 65536 / (job->length > 0 ? job->length : 1);
    return rows < 1 ? 1 : rows > 16 ? 16 : rows;
}

/* `count` rows (one tile) that are not plain contiguous native data: gathered into
 * scratch of the accumulation type (mask applied, half precision widened),
 * normalized, and written back (straight into y when y's rows are contiguous and
 * of that type). Rows are `row_step` entries apart in x and y (`mask_row_step`
 * bytes in the mask). */
static void strided_tile(const job_t *job, const char *x, const unsigned char *mask, char *y,
                         Py_ssize_t count, Py_ssize_t x_row, Py_ssize_t m_row, Py_ssize_t y_row,
                         void *buf_in, void *buf_out) {
    Py_ssize_t n = job->length;
    int log_out = job->log_out;
    if (job->dtype == EVS_F64) {
        double *in = (double *)buf_in;
        int direct = job->ays == 1;
        gather_double(x, job->axs, x_row, count, in, n);
        if (mask != NULL) apply_mask_double(mask, job->ams, m_row, count, in, n);
        double *out = direct ? (double *)y : (double *)buf_out;
        rows_double(in, out, count, n, direct ? y_row : n, n, job->ratio, job->log_ratio,
                    log_out);
        if (!direct) scatter_double(out, y, job->ays, y_row, count, n);
    } else {
        float *in = (float *)buf_in;
        int direct = job->ays == 1 && job->dtype == EVS_F32;
        gather_float(x, job->dtype, job->axs, x_row, count, in, n);
        if (mask != NULL) apply_mask_float(mask, job->ams, m_row, count, in, n);
        float *out = direct ? (float *)y : (float *)buf_out;
        /* Half precision into contiguous rows: the division of long rows done as they
         * are converted (scatter_float). */
        float scale[EVS_TILE_ROWS];
        int scaled = job->dtype != EVS_F32 && job->ays == 1 && (count == 1 || y_row == n) &&
                     !log_out && n >= EVS_LONG && count <= EVS_TILE_ROWS;
        if (scaled)
            long_rows_scaled(in, out, count, n, (float)job->ratio, scale);
        else
            rows_float(in, out, count, n, direct ? y_row : n, n, (float)job->ratio,
                       (float)job->log_ratio, log_out);
        if (!direct)
            scatter_float(out, y, job->dtype, job->ays, y_row, count, n, scaled ? scale : NULL);
    }
}

/* The VJP of N rows (N <= EVS_LANES) side by side: entry i of row t at
 * p[i * step + t * RS], g likewise, out at o[i * out_step + t * ORS]. */
#define EVS_VJP_SIDE_BY_SIDE(T, LOAD, STORE, N, RS, ORS)                                    \
    do {                                                                                    \
        double inner[EVS_LANES] = {0};                                                      \
        T s[EVS_LANES], bi[EVS_LANES];                                                      \
        for (Py_ssize_t start = 0; start < length; start += EVS_BLOCK) {                    \
            Py_ssize_t stop = length - start < EVS_BLOCK ? length : start + EVS_BLOCK;      \
            for (Py_ssize_t t = 0; t < (N); t++) bi[t] = 0;                                 \
            for (Py_ssize_t i = start; i < stop; i++)                                       \
                for (Py_ssize_t t = 0; t < (N); t++) {                                      \
                    Py_ssize_t k = i * step + t * (RS);                                     \
                    bi[t] += LOAD(p[k]) * LOAD(g[k]);                                       \
                }                                                                           \
            for (Py_ssize_t t = 0; t < (N); t++) inner[t] += bi[t];                         \
        }                                                                                   \
        for (Py_ssize_t t = 0; t < (N); t++) s[t] = (T)inner[t];                            \
        for (Py_ssize_t i = 0; i < length; i++)                                             \
            for (Py_ssize_t t = 0; t < (N); t++) {                                          \
                Py_ssize_t k = i * step + t * (RS);                                         \
                o[i * out_step + t * (ORS)] = STORE(LOAD(p[k]) * (LOAD(g[k]) - s[t]));      \
            }                                                                               \
    } while (0)

/* The VJP of `count` contiguous rows of up to WIDTH entries (WIDTH a multiple of
 * EVS_CHUNK, a constant in each instance), as short_row_<T> computes the forward: the
 * products p * g of the whole width (masked loads, 0 past the row's end) summed by a
 * tree of vector additions, no per-row loop control. */
#define EVS_VJP_SHORT_ROW(T, LOAD, STORE, WIDTH, N)                                         \
    do {                                                                                    \
        T a[EVS_SHORT_MAX];                                                                 \
        EVS_SIMD                                                                            \
        for (int i = 0; i < (WIDTH); i++) a[i] = i < (N) ? LOAD(p[i]) * LOAD(g[i]) : (T)0;  \
        EVS_FOLD_SUM(a, (WIDTH));                                                           \
        T s = a[0];                                                                         \
        EVS_SIMD                                                                            \
        for (int i = 0; i < (WIDTH); i++)                                                   \
            if (i < (N)) o[i] = STORE(LOAD(p[i]) * (LOAD(g[i]) - s));                       \
    } while (0)
/* The short VJP takes rows of up to EVS_CHUNK entries and of a multiple of it up to
 * EVS_SHORT_MAX (masked, the other lengths were slower than the loop of any length). */
#define EVS_VJP_SHORT(n) ((n) <= EVS_CHUNK || ((n) <= EVS_SHORT_MAX && (n) % EVS_CHUNK == 0))
#define EVS_VJP_SHORT_ROWS(T, LOAD, STORE, WIDTH)                                           \
    for (Py_ssize_t r = 0; r < count; r++, p += row_step, g += row_step, o += out_row_step) \
        if (length == (WIDTH)) /* no masks */                                               \
            EVS_VJP_SHORT_ROW(T, LOAD, STORE, WIDTH, WIDTH);                                \
        else                                                                                \
            EVS_VJP_SHORT_ROW(T, LOAD, STORE, WIDTH, length)

/* Defines vjp_<NAME>(p, g, out, length, count, step, row_step, out_step, out_row_step):
 * out = p * (g - <p, g>), the closed-form VJP (and JVP) of ev-softmax from its output
 * p, on `count` rows of SRC entries: p and g share their layout (entries `step` apart,
 * row starts `row_step` apart), out has its own. Computed in T (float for half
 * precision); <p, g> summed as the mean is, in blocks added in double. Contiguous rows
 * (step 1) are taken one after another, any number in one call (short rows cost no
 * call each); other rows at most EVS_LANES at a time, side by side, so that rows with
 * adjacent starts (row_step 1, as along a non-last axis) are read whole cache lines
 * at a time. */
#define EVS_DEFINE_VJP(NAME, T, SRC, LOAD, STORE)                                           \
    EVS_CLONES static void vjp_##NAME(const char *pp, const char *gp, char *op,              \
                                      Py_ssize_t length, Py_ssize_t count, Py_ssize_t step,   \
                                      Py_ssize_t row_step, Py_ssize_t out_step,               \
                                      Py_ssize_t out_row_step) {                              \
        const SRC *restrict p = (const SRC *)pp, *restrict g = (const SRC *)gp;             \
        SRC *restrict o = (SRC *)op;                                                        \
        if (step == 1 && out_step == 1 && EVS_VJP_SHORT(length)) {                          \
            switch ((length + EVS_CHUNK - 1) / EVS_CHUNK) {                                 \
                case 1: EVS_VJP_SHORT_ROWS(T, LOAD, STORE, EVS_CHUNK); return;              \
                case 2: EVS_VJP_SHORT_ROWS(T, LOAD, STORE, 2 * EVS_CHUNK); return;          \
                case 3: EVS_VJP_SHORT_ROWS(T, LOAD, STORE, 3 * EVS_CHUNK); return;          \
                default: EVS_VJP_SHORT_ROWS(T, LOAD, STORE, 4 * EVS_CHUNK); return;         \
            }                                                                               \
        }                                                                                   \
        if (step == 1 && out_step == 1) {                                                   \
            for (Py_ssize_t r = 0; r < count; r++, p += row_step, g += row_step,             \
                            o += out_row_step) {                                            \
                double inner = 0.0;                                                         \
                for (Py_ssize_t start = 0; start < length; start += EVS_BLOCK) {            \
                    Py_ssize_t stop = length - start < EVS_BLOCK ? length : start + EVS_BLOCK; \
                    T block_inner = 0;                                                      \
                    EVS_SIMD_INNER                                                          \
                    for (Py_ssize_t i = start; i < stop; i++)                               \
                        block_inner += LOAD(p[i]) * LOAD(g[i]);                             \
                    inner += block_inner;                                                   \
                }                                                                           \
                T s = (T)inner;                                                             \
                EVS_SIMD                                                                    \
                for (Py_ssize_t i = 0; i < length; i++)                                     \
                    o[i] = STORE(LOAD(p[i]) * (LOAD(g[i]) - s));                            \
            }                                                                               \
            return;                                                                         \
        }                                                                                   \
        /* Adjacent full tiles with a constant width: the loops over t vectorize. */      \
        if (count == EVS_LANES && row_step == 1 && out_row_step == 1)                       \
            EVS_VJP_SIDE_BY_SIDE(T, LOAD, STORE, EVS_LANES, 1, 1);                          \
        else                                                                                \
            EVS_VJP_SIDE_BY_SIDE(T, LOAD, STORE, count, row_step, out_row_step);            \
    }

#define EVS_SIMD_INNER _Pragma("omp simd reduction(+ : block_inner)")

EVS_DEFINE_VJP(float, float, float, EVS_AS_FLOAT, EVS_AS_FLOAT)
EVS_DEFINE_VJP(double, double, double, EVS_AS_DOUBLE, EVS_AS_DOUBLE)
EVS_DEFINE_VJP(f16, float, evs_f16, f16_to_float, float_to_f16)
EVS_DEFINE_VJP(bf16, float, uint16_t, bf16_to_float, float_to_bf16)

/* ---- The VJP of the log form: g - p * sum(g) on valid entries, exactly 0 elsewhere ----
 *
 * From the log-probabilities lp (p = exp(lp)) and the cotangent g, one read of each
 * per row (the second pass finds the row in cache). Which entries are valid is known
 * without a mask wherever lp holds no -inf: every invalid entry (masked or -inf in x)
 * has lp = -inf (or NaN, in a row that a valid NaN or +inf poisoned), so a row whose
 * lp is all > -inf is all valid. Only rows holding -inf or NaN, noticed in the first
 * pass at no cost, read the validity: the mask (bytes, 0: masked out; NULL: none) and,
 * when given, the input x (v, laid out as lp: x = -inf is invalid); with neither,
 * lp = -inf is taken as invalid. The mask and x cannot be left to lp: lp is -inf on
 * valid entries too (off the support for epsilon = 0; where the shift of a row whose
 * range exceeds the dtype's maximum overflows), whose gradient is g, not 0. */
#define EVS_LOG_VALID(LOAD, LPV, K, MK)                                                     \
    ((mask == NULL || mask[MK] != 0) &&                                                     \
     (v != NULL ? LOAD(v[K]) != -INFINITY : (mask != NULL || (LPV) != -INFINITY)))

/* The log VJP of N rows (N <= EVS_LANES) side by side: entry i of row t at
 * lp[i * step + t * RS] (g and v likewise), its mask byte at mask[i * mstep + t * MRS],
 * out at o[i * out_step + t * ORS]. */
#define EVS_LOG_VJP_SIDE_BY_SIDE(T, LOAD, STORE, EXP, N, RS, MRS, ORS)                      \
    do {                                                                                    \
        double total[EVS_LANES] = {0};                                                      \
        T s[EVS_LANES], bs[EVS_LANES], bad[EVS_LANES] = {0};                                \
        for (Py_ssize_t start = 0; start < length; start += EVS_BLOCK) {                    \
            Py_ssize_t stop = length - start < EVS_BLOCK ? length : start + EVS_BLOCK;      \
            for (Py_ssize_t t = 0; t < (N); t++) bs[t] = 0;                                 \
            for (Py_ssize_t i = start; i < stop; i++)                                       \
                for (Py_ssize_t t = 0; t < (N); t++) {                                      \
                    Py_ssize_t k = i * step + t * (RS);                                     \
                    bs[t] += LOAD(g[k]);                                                    \
                    bad[t] += LOAD(lp[k]) > -INFINITY ? (T)0 : (T)1;                        \
                }                                                                           \
            for (Py_ssize_t t = 0; t < (N); t++) total[t] += bs[t];                         \
        }                                                                                   \
        for (Py_ssize_t t = 0; t < (N); t++) {                                              \
            if (bad[t] != 0) {                                                              \
                total[t] = 0.0;                                                             \
                for (Py_ssize_t i = 0; i < length; i++) {                                   \
                    Py_ssize_t k = i * step + t * (RS);                                     \
                    if (EVS_LOG_VALID(LOAD, LOAD(lp[k]), k, i * mstep + t * (MRS)))         \
                        total[t] += LOAD(g[k]);                                             \
                }                                                                           \
            }                                                                               \
            s[t] = (T)total[t];                                                             \
        }                                                                                   \
        for (Py_ssize_t i = 0; i < length; i++)                                             \
            for (Py_ssize_t t = 0; t < (N); t++) {                                          \
                Py_ssize_t k = i * step + t * (RS);                                         \
                T l = LOAD(lp[k]), d = LOAD(g[k]) - EXP(l) * s[t];                          \
                int in = bad[t] == 0 || EVS_LOG_VALID(LOAD, l, k, i * mstep + t * (MRS));   \
                o[i * out_step + t * (ORS)] = STORE(in ? d : (T)0);                         \
            }                                                                               \
    } while (0)

/* Defines log_vjp_<NAME>(lp, g, v, mask, out, length, count, step, row_step, mstep,
 * mrow_step, out_step, out_row_step): the log VJP on `count` rows of SRC entries (lp,
 * g and v share their layout: entries `step` apart, row starts `row_step` apart; the
 * mask's steps are in bytes; out has its own). Computed in T (float for half
 * precision); sum(g) summed in blocks added in double. Contiguous rows one after
 * another, other rows at most EVS_LANES at a time side by side, as vjp_<NAME>. */
#define EVS_DEFINE_LOG_VJP(NAME, T, SRC, LOAD, STORE, EXP)                                  \
    EVS_CLONES static void log_vjp_##NAME(                                                  \
        const char *lpp, const char *gp, const char *vp, const unsigned char *mask,         \
        char *op, Py_ssize_t length, Py_ssize_t count, Py_ssize_t step, Py_ssize_t row_step, \
        Py_ssize_t mstep, Py_ssize_t mrow_step, Py_ssize_t out_step,                        \
        Py_ssize_t out_row_step) {                                                          \
        /* out may be lp itself (run_fused_rows): no restrict on them; each loop that  \
         * writes out reads lp at the entry it writes only (EVS_SIMD vectorizes it). */   \
        const SRC *lp = (const SRC *)lpp, *restrict g = (const SRC *)gp;                    \
        const SRC *restrict v = (const SRC *)vp;                                            \
        SRC *o = (SRC *)op;                                                                 \
        if (step != 1 || out_step != 1) {                                                   \
            /* Adjacent full tiles with a constant width: the loops over t vectorize. */   \
            if (count == EVS_LANES && row_step == 1 && out_row_step == 1 && mask == NULL)   \
                EVS_LOG_VJP_SIDE_BY_SIDE(T, LOAD, STORE, EXP, EVS_LANES, 1, 0, 1);          \
            else                                                                            \
                EVS_LOG_VJP_SIDE_BY_SIDE(T, LOAD, STORE, EXP, count, row_step, mrow_step,   \
                                         out_row_step);                                     \
            return;                                                                         \
        }                                                                                   \
        for (Py_ssize_t r = 0; r < count; r++) {                                            \
            double total = 0.0;                                                             \
            T bad = 0;                                                                      \
            for (Py_ssize_t start = 0; start < length; start += EVS_BLOCK) {                \
                Py_ssize_t stop = length - start < EVS_BLOCK ? length : start + EVS_BLOCK;  \
                T block_sum = 0;                                                            \
                EVS_SIMD_LOG_VJP                                                            \
                for (Py_ssize_t i = start; i < stop; i++) {                                 \
                    block_sum += LOAD(g[i]);                                                \
                    bad += LOAD(lp[i]) > -INFINITY ? (T)0 : (T)1;                           \
                }                                                                           \
                total += block_sum;                                                         \
            }                                                                               \
            if (bad == 0) {                                                                 \
                T s = (T)total;                                                             \
                EVS_SIMD                                                                    \
                for (Py_ssize_t i = 0; i < length; i++)                                     \
                    o[i] = STORE(LOAD(g[i]) - EXP(LOAD(lp[i])) * s);                        \
            } else {                                                                        \
                total = 0.0;                                                                \
                for (Py_ssize_t i = 0; i < length; i++)                                     \
                    if (EVS_LOG_VALID(LOAD, LOAD(lp[i]), i, i * mstep)) total += LOAD(g[i]); \
                T s = (T)total;                                                             \
                for (Py_ssize_t i = 0; i < length; i++) {                                   \
                    T l = LOAD(lp[i]), d = LOAD(g[i]) - EXP(l) * s;                         \
                    o[i] = STORE(EVS_LOG_VALID(LOAD, l, i, i * mstep) ? d : (T)0);          \
                }                                                                           \
            }                                                                               \
            lp += row_step;                                                                 \
            g += row_step;                                                                  \
            if (v != NULL) v += row_step;                                                   \
            if (mask != NULL) mask += mrow_step;                                            \
            o += out_row_step;                                                              \
        }                                                                                   \
    }

#define EVS_SIMD_LOG_VJP _Pragma("omp simd reduction(+ : block_sum, bad)")

/* exp(lp) for lp <= 0; lp = -inf gives 0, and NaN stays NaN. */
static inline float exp_log_f32(float l) { return l != l ? l : exp_nonpositive_f32(l); }
static inline double exp_log_f64(double l) { return l != l ? l : exp_nonpositive_f64(l); }

EVS_DEFINE_LOG_VJP(float, float, float, EVS_AS_FLOAT, EVS_AS_FLOAT, exp_log_f32)
EVS_DEFINE_LOG_VJP(double, double, double, EVS_AS_DOUBLE, EVS_AS_DOUBLE, exp_log_f64)
EVS_DEFINE_LOG_VJP(f16, float, evs_f16, f16_to_float, float_to_f16, exp_log_f32)
EVS_DEFINE_LOG_VJP(bf16, float, uint16_t, bf16_to_float, float_to_bf16, exp_log_f32)

/* ---- Column tiles: rows whose starts are adjacent, up to EVS_COLS side by side -------
 *
 * Rows along a non-last axis of a contiguous array (axis 0 of a matrix, axis 1 of
 * (B, L, C)) start next to each other: entry i of row t is at x[i * step + t]. A
 * column tile takes `width` such rows at once and runs the four passes vectorized
 * across them, with the copy fused into the first and last pass: pass 1 reads the
 * array a contiguous run of `width` entries per position (whole cache lines, the
 * mask alongside, half precision widened) into scratch b[i * width + t] and takes
 * the maxima; passes 2 and 3 (mean, weights and their sum) stay in the scratch,
 * which is contiguous (the array's rows, `step` entries apart, would make the cache
 * ways conflict); pass 4 writes the normalized weights (or log-probabilities) to y
 * in its dtype. Each row's arithmetic is the same whatever the width or its place
 * in the tile. A row that needs the special rules (no valid entry, a valid NaN or
 * +inf, an overflowing sum) is marked and redone by the row path afterwards. */
#define EVS_COLS 64

#define EVS_DEFINE_COLS_IN(T, SRC, LOAD)                                                    \
    EVS_CLONES static void cols_in_##SRC(const char *x, Py_ssize_t step,                    \
                                         const unsigned char *mask, Py_ssize_t mstep,       \
                                         Py_ssize_t mrow, Py_ssize_t width, T *restrict b,  \
                                         T *restrict m, Py_ssize_t length) {                \
        const SRC *p = (const SRC *)x;                                                      \
        for (Py_ssize_t t = 0; t < width; t++) m[t] = -INFINITY;                            \
        if (mask == NULL) {                                                                 \
            for (Py_ssize_t i = 0; i < length; i++) {                                       \
                const SRC *pi = p + i * step;                                               \
                T *restrict bi = b + i * width;                                             \
                EVS_SIMD                                                                    \
                for (Py_ssize_t t = 0; t < width; t++) {                                    \
                    T v = LOAD(pi[t]);                                                      \
                    bi[t] = v;                                                              \
                    m[t] = v > m[t] ? v : m[t];                                             \
                }                                                                           \
            }                                                                               \
        } else {                                                                            \
            for (Py_ssize_t i = 0; i < length; i++) {                                       \
                const SRC *pi = p + i * step;                                               \
                const unsigned char *mi = mask + i * mstep;                                 \
                T *restrict bi = b + i * width;                                             \
                EVS_SIMD                                                                    \
                for (Py_ssize_t t = 0; t < width; t++) {                                    \
                    T v = mi[t * mrow] ? LOAD(pi[t]) : (T)-INFINITY;                        \
                    bi[t] = v;                                                              \
                    m[t] = v > m[t] ? v : m[t];                                             \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
    }

#define EVS_DEFINE_COLS_OUT(T, SRC, STORE)                                                  \
    EVS_CLONES static void cols_out_##SRC(const T *restrict b, const T *restrict m,         \
                                          const T *restrict mean, const T *restrict scale,  \
                                          T log_ratio, int log_out, char *y, Py_ssize_t step, \
                                          Py_ssize_t width, Py_ssize_t length) {            \
        SRC *p = (SRC *)y;                                                                  \
        for (Py_ssize_t i = 0; i < length; i++) {                                           \
            const T *restrict bi = b + i * width;                                           \
            SRC *pi = p + i * step;                                                         \
            if (log_out) {                                                                  \
                EVS_SIMD                                                                    \
                for (Py_ssize_t t = 0; t < width; t++) {                                    \
                    T s = bi[t] - m[t];                                                     \
                    pi[t] = STORE((s < mean[t] ? s + log_ratio : s) - scale[t]);            \
                }                                                                           \
            } else {                                                                        \
                EVS_SIMD                                                                    \
                for (Py_ssize_t t = 0; t < width; t++) pi[t] = STORE(bi[t] * scale[t]);     \
            }                                                                               \
        }                                                                                   \
    }

EVS_DEFINE_COLS_IN(float, float, EVS_AS_FLOAT)
EVS_DEFINE_COLS_IN(float, evs_f16, f16_to_float)
EVS_DEFINE_COLS_IN(float, uint16_t, bf16_to_float)
EVS_DEFINE_COLS_IN(double, double, EVS_AS_DOUBLE)
EVS_DEFINE_COLS_OUT(float, float, EVS_AS_FLOAT)
EVS_DEFINE_COLS_OUT(float, evs_f16, float_to_f16)
EVS_DEFINE_COLS_OUT(float, uint16_t, float_to_bf16)
EVS_DEFINE_COLS_OUT(double, double, EVS_AS_DOUBLE)

/* Defines cols_<T>: passes 2 and 3 of a column tile in scratch b (maxima m): each row's
 * mean, its weights (kept in b unless log_out) and scale (1 / sum, or log(sum));
 * bad[t] set for a row that needs the special rules. */
#define EVS_DEFINE_COLS(T, EXP)                                                             \
    EVS_CLONES static void cols_##T(T *restrict b, const T *restrict m, Py_ssize_t width,   \
                                    Py_ssize_t length, T ratio, int log_out,                \
                                    T *restrict mean, T *restrict scale,                    \
                                    unsigned char *restrict bad) {                          \
        double sum[EVS_COLS] = {0}, count[EVS_COLS] = {0};                                  \
        T bs[EVS_COLS], bc[EVS_COLS];                                                       \
        for (Py_ssize_t start = 0; start < length; start += EVS_BLOCK) {                    \
            Py_ssize_t stop = length - start < EVS_BLOCK ? length : start + EVS_BLOCK;      \
            for (Py_ssize_t t = 0; t < width; t++) bs[t] = bc[t] = 0;                       \
            for (Py_ssize_t i = start; i < stop; i++) {                                     \
                const T *restrict bi = b + i * width;                                       \
                EVS_SIMD                                                                    \
                for (Py_ssize_t t = 0; t < width; t++) {                                    \
                    int valid = bi[t] != -INFINITY;                                         \
                    bs[t] += valid ? bi[t] - m[t] : (T)0;                                   \
                    bc[t] += valid ? (T)1 : (T)0;                                           \
                }                                                                           \
            }                                                                               \
            for (Py_ssize_t t = 0; t < width; t++) {                                        \
                sum[t] += bs[t];                                                            \
                count[t] += bc[t];                                                          \
            }                                                                               \
        }                                                                                   \
        for (Py_ssize_t t = 0; t < width; t++) {                                            \
            bad[t] = count[t] == 0.0 || !isfinite(sum[t]);                                  \
            mean[t] = bad[t] ? (T)0 : (T)(sum[t] / count[t]);                               \
            scale[t] = 0;                                                                   \
        }                                                                                   \
        for (Py_ssize_t i = 0; i < length; i++) {                                           \
            T *restrict bi = b + i * width;                                                 \
            EVS_SIMD                                                                        \
            for (Py_ssize_t t = 0; t < width; t++) {                                        \
                T s = bi[t] - m[t];                                                         \
                T e = EXP(s);                                                               \
                T w = s < mean[t] ? ratio * e : e;                                          \
                if (!log_out) bi[t] = w;                                                    \
                scale[t] += w;                                                              \
            }                                                                               \
        }                                                                                   \
        for (Py_ssize_t t = 0; t < width; t++)                                              \
            scale[t] = log_out ? (T)log((double)scale[t]) : (T)1 / scale[t];                \
    }

EVS_DEFINE_COLS(float, exp_nonpositive_f32)
EVS_DEFINE_COLS(double, exp_nonpositive_f64)

/* Columns per column tile: up to EVS_COLS within 64k entries of scratch; 0 when the
 * job's rows do not start next to each other (or the tile would be too narrow). */
static Py_ssize_t tile_cols(const job_t *job) {
    int inner = job->outer - 1;
    if (job->axs == 1 || job->xs[inner] != 1 || job->ys[inner] != 1) return 0;
    Py_ssize_t cols = 65536 / (job->length > 0 ? job->length : 1);
    return cols < 8 ? 0 : cols > EVS_COLS ? EVS_COLS : cols;
}

/* One column tile of `width` rows (see above); mask entries of row t are m_row bytes
 * after those of row t - 1. */
static void col_tile(const job_t *job, const char *x, const unsigned char *mask, char *y,
                     Py_ssize_t width, Py_ssize_t m_row, void *buf_in, void *buf_out) {
    Py_ssize_t n = job->length, xs = job->axs, ys = job->ays, ms = job->ams;
    size_t size = job->dtype == EVS_F64 ? 8 : job->dtype == EVS_F32 ? 4 : 2;
    unsigned char bad[EVS_COLS];
    int log_out = job->log_out;
    if (job->dtype == EVS_F64) {
        double *b = (double *)buf_in, m[EVS_COLS], mean[EVS_COLS], scale[EVS_COLS];
        cols_in_double(x, xs, mask, ms, m_row, width, b, m, n);
        cols_double(b, m, width, n, job->ratio, log_out, mean, scale, bad);
        cols_out_double(b, m, mean, scale, job->log_ratio, log_out, y, ys, width, n);
    } else {
        float *b = (float *)buf_in, m[EVS_COLS], mean[EVS_COLS], scale[EVS_COLS];
        float ratio = (float)job->ratio, log_ratio = (float)job->log_ratio;
        if (job->dtype == EVS_F32) cols_in_float(x, xs, mask, ms, m_row, width, b, m, n);
        else if (job->dtype == EVS_F16) cols_in_evs_f16(x, xs, mask, ms, m_row, width, b, m, n);
        else cols_in_uint16_t(x, xs, mask, ms, m_row, width, b, m, n);
        cols_float(b, m, width, n, ratio, log_out, mean, scale, bad);
        if (job->dtype == EVS_F32)
            cols_out_float(b, m, mean, scale, log_ratio, log_out, y, ys, width, n);
        else if (job->dtype == EVS_F16)
            cols_out_evs_f16(b, m, mean, scale, log_ratio, log_out, y, ys, width, n);
        else
            cols_out_uint16_t(b, m, mean, scale, log_ratio, log_out, y, ys, width, n);
    }
    for (Py_ssize_t t = 0; t < width; t++)
        if (bad[t])
            strided_tile(job, x + t * (Py_ssize_t)size, mask == NULL ? NULL : mask + t * m_row,
                         y + t * (Py_ssize_t)size, 1, 0, 0, 0, buf_in, buf_out);
}

/* The log VJP of one contiguous float16 row through F16C: lp, g and v widened into
 * scratch (buf_in and buf_out, two rows of floats each), log_vjp_float's arithmetic
 * (the same as log_vjp_f16's, entry for entry), the result narrowed into o: the
 * portable conversions in log_vjp_f16's loops cost more than its arithmetic. */
static void log_vjp_f16_rows(const char *lp, const char *g, const char *v,
                             const unsigned char *mask, char *o, Py_ssize_t n, Py_ssize_t ms,
                             float *buf_in, float *buf_out) {
    float *flp = buf_in, *fg = buf_in + n, *fo = buf_out, *fv = buf_out + n;
    f16_to_float_n((const evs_f16 *)lp, flp, n);
    f16_to_float_n((const evs_f16 *)g, fg, n);
    if (v != NULL) f16_to_float_n((const evs_f16 *)v, fv, n);
    log_vjp_float((const char *)flp, (const char *)fg, v == NULL ? NULL : (const char *)fv,
                  mask, (char *)fo, n, 1, 1, n, ms, 0, 1, n);
    float_to_f16_n(fo, (evs_f16 *)o, n, 1.0f);
}

/* The log VJP job's rows first..last-1 (lp at x, g at g and the input at v, all
 * through x's strides; the mask through its own; the result through y's), in tiles of
 * up to EVS_LANES rows when rows are not contiguous; buf_in and buf_out are work()'s
 * scratch (contiguous float16 rows, log_vjp_f16_rows). */
static void run_log_vjp_rows(job_t *job, Py_ssize_t first, Py_ssize_t last, void *buf_in,
                             void *buf_out) {
    int d, inner = job->outer - 1;
    Py_ssize_t index[EVS_MAX_DIMS], rest = first;
    for (d = inner; d >= 0; d--) {
        index[d] = rest % job->extent[d];
        rest /= job->extent[d];
    }
    Py_ssize_t size = job->dtype == EVS_F64 ? 8 : job->dtype == EVS_F32 ? 4 : 2;
    int contiguous = job->axs == 1 && job->ays == 1;
    Py_ssize_t xr = job->xs[inner], yr = job->ys[inner], mr = job->ms[inner], r = first;
    while (r < last) {
        Py_ssize_t ox = 0, om = 0, oy = 0;
        for (d = 0; d <= inner; d++) {
            ox += index[d] * job->xs[d];
            om += index[d] * job->ms[d];
            oy += index[d] * job->ys[d];
        }
        Py_ssize_t run = job->extent[inner] - index[inner];
        if (run > last - r) run = last - r;
        Py_ssize_t tile = contiguous ? run : EVS_LANES;
        for (Py_ssize_t i = 0; i < run; i += tile) {
            Py_ssize_t count = run - i < tile ? run - i : tile, at = (ox + i * xr) * size;
            const char *lp = job->x + at, *g = job->g + at;
            const char *v = job->v == NULL ? NULL : job->v + at;
            const unsigned char *m = job->mask == NULL ? NULL : job->mask + om + i * mr;
            char *o = job->y + (oy + i * yr) * size;
            Py_ssize_t n = job->length, s = job->axs, ms = job->ams, os = job->ays;
            if (job->dtype == EVS_F16 && evs_f16c && contiguous)
                for (Py_ssize_t t = 0; t < count; t++)
                    log_vjp_f16_rows(lp + t * xr * size, g + t * xr * size,
                                     v == NULL ? NULL : v + t * xr * size,
                                     m == NULL ? NULL : m + t * mr, o + t * yr * size, n, ms,
                                     (float *)buf_in, (float *)buf_out);
            else if (job->dtype == EVS_F64)
                log_vjp_double(lp, g, v, m, o, n, count, s, xr, ms, mr, os, yr);
            else if (job->dtype == EVS_F32)
                log_vjp_float(lp, g, v, m, o, n, count, s, xr, ms, mr, os, yr);
            else if (job->dtype == EVS_F16)
                log_vjp_f16(lp, g, v, m, o, n, count, s, xr, ms, mr, os, yr);
            else
                log_vjp_bf16(lp, g, v, m, o, n, count, s, xr, ms, mr, os, yr);
        }
        r += run;
        index[inner] += run;
        for (d = inner; d > 0 && index[d] == job->extent[d]; d--) {
            index[d] = 0;
            index[d - 1]++;
        }
    }
}

/* The VJP job's rows first..last-1 (p at x, g at g: both through x's strides; the
 * result through y's), in tiles of up to EVS_LANES rows when rows are not contiguous. */
static void run_vjp_rows(job_t *job, Py_ssize_t first, Py_ssize_t last, void *buf_in,
                         void *buf_out) {
    if (job->log_out) { /* the log form's VJP */
        run_log_vjp_rows(job, first, last, buf_in, buf_out);
        return;
    }
    int d, inner = job->outer - 1;
    Py_ssize_t index[EVS_MAX_DIMS], rest = first;
    for (d = inner; d >= 0; d--) {
        index[d] = rest % job->extent[d];
        rest /= job->extent[d];
    }
    Py_ssize_t size = job->dtype == EVS_F64 ? 8 : job->dtype == EVS_F32 ? 4 : 2;
    int contiguous = job->axs == 1 && job->ays == 1;
    Py_ssize_t xr = job->xs[inner], yr = job->ys[inner], r = first;
    while (r < last) {
        Py_ssize_t ox = 0, oy = 0;
        for (d = 0; d <= inner; d++) {
            ox += index[d] * job->xs[d];
            oy += index[d] * job->ys[d];
        }
        Py_ssize_t run = job->extent[inner] - index[inner];
        if (run > last - r) run = last - r;
        Py_ssize_t tile = contiguous ? run : EVS_LANES;
        for (Py_ssize_t i = 0; i < run; i += tile) {
            Py_ssize_t count = run - i < tile ? run - i : tile;
            const char *p = job->x + (ox + i * xr) * size, *g = job->g + (ox + i * xr) * size;
            char *o = job->y + (oy + i * yr) * size;
            Py_ssize_t n = job->length, s = job->axs, os = job->ays;
            if (job->dtype == EVS_F64) vjp_double(p, g, o, n, count, s, xr, os, yr);
            else if (job->dtype == EVS_F32) vjp_float(p, g, o, n, count, s, xr, os, yr);
            else if (job->dtype == EVS_F16) vjp_f16(p, g, o, n, count, s, xr, os, yr);
            else vjp_bf16(p, g, o, n, count, s, xr, os, yr);
        }
        r += run;
        index[inner] += run;
        for (d = inner; d > 0 && index[d] == job->extent[d]; d--) {
            index[d] = 0;
            index[d - 1]++;
        }
    }
}

/* Rows first..last-1: runs of rows along the fastest outer axis at a time. */
static void run_rows(job_t *job, Py_ssize_t first, Py_ssize_t last, void *buf_in,
                     void *buf_out) {
    if (job->g != NULL) {
        run_vjp_rows(job, first, last, buf_in, buf_out);
        return;
    }
    int d, inner = job->outer - 1;
    Py_ssize_t index[EVS_MAX_DIMS], rest = first;
    for (d = inner; d >= 0; d--) {
        index[d] = rest % job->extent[d];
        rest /= job->extent[d];
    }
    size_t size = job->dtype == EVS_F64 ? 8 : job->dtype == EVS_F32 ? 4 : 2;
    int direct = job->mask == NULL && job->axs == 1 && job->ays == 1 &&
                 (job->dtype == EVS_F32 || job->dtype == EVS_F64);
    Py_ssize_t r = first;
    while (r < last) {
        Py_ssize_t ox = 0, om = 0, oy = 0;
        for (d = 0; d <= inner; d++) {
            ox += index[d] * job->xs[d];
            om += index[d] * job->ms[d];
            oy += index[d] * job->ys[d];
        }
        Py_ssize_t run = job->extent[inner] - index[inner];
        if (run > last - r) run = last - r;
        const char *x = job->x + ox * (Py_ssize_t)size;
        char *y = job->y + oy * (Py_ssize_t)size;
        Py_ssize_t done = 0;
        if (direct && job->length <= EVS_SHORT) {
            /* Short rows: 16 at a time side by side, no per-row reductions. */
            Py_ssize_t xr = job->xs[inner], yr = job->ys[inner];
            for (; done + EVS_LANES <= run; done += EVS_LANES)
                if (!lane_tile(job, x + done * xr * (Py_ssize_t)size, NULL,
                               y + done * yr * (Py_ssize_t)size, xr, 0, yr, buf_in, buf_out))
                    break;
            x += done * xr * (Py_ssize_t)size;
            y += done * yr * (Py_ssize_t)size;
        }
        if (done == run) {
        } else if (direct && job->dtype == EVS_F64) {
            rows_double((const double *)x, (double *)y, run - done, job->xs[inner], job->ys[inner],
                        job->length, job->ratio, job->log_ratio, job->log_out);
        } else if (direct) {
            rows_float((const float *)x, (float *)y, run - done, job->xs[inner], job->ys[inner],
                       job->length, (float)job->ratio, (float)job->log_ratio, job->log_out);
        } else {
            const unsigned char *m = job->mask == NULL ? NULL : job->mask + om;
            Py_ssize_t cols = tile_cols(job);
            for (Py_ssize_t i = 0; cols > 0 && i < run; i += cols)
                col_tile(job, x + i * (Py_ssize_t)size, m == NULL ? NULL : m + i * job->ms[inner],
                         y + i * (Py_ssize_t)size, run - i < cols ? run - i : cols,
                         job->ms[inner], buf_in, buf_out);
            Py_ssize_t tile = tile_rows(job);
            int lanes = tile == EVS_LANES && job->xs[inner] == 1 && job->ys[inner] == 1;
            for (Py_ssize_t i = 0; cols == 0 && i < run; i += tile) {
                Py_ssize_t count = run - i < tile ? run - i : tile;
                if (lanes && count == EVS_LANES &&
                    lane_tile(job, x + i * (Py_ssize_t)size,
                              m == NULL ? NULL : m + i * job->ms[inner],
                              y + i * (Py_ssize_t)size, 1, job->ms[inner], 1, buf_in, buf_out))
                    continue;
                strided_tile(job, x + i * job->xs[inner] * (Py_ssize_t)size,
                             m == NULL ? NULL : m + i * job->ms[inner],
                             y + i * job->ys[inner] * (Py_ssize_t)size, count, job->xs[inner],
                             job->ms[inner], job->ys[inner], buf_in, buf_out);
            }
        }
        r += run;
        index[inner] += run;
        for (d = inner; d > 0 && index[d] == job->extent[d]; d--) {
            index[d] = 0;
            index[d - 1]++;
        }
    }
}

/* Rows of this many bytes at a time (at least one row): the VJP then reads the
 * log-probabilities the forward pass just wrote from the level-1 cache. With 32 KiB
 * (8 rows of 1024 float32) the forward pass's input and output (64 KiB) had pushed
 * them out to level 2, and the VJP took about as long as the forward pass: 4096x1024
 * float32 on one thread, 4.0 ms for the gradient against 3.5-3.6 ms with 4 KiB. */
#define EVS_FUSED_BYTES 4096
/* The fused job's rows first..last-1: the log form's forward pass from x (and the
 * mask) into y, then its VJP from those log-probabilities (in cache) and g, written
 * over them; x, g and y share one layout. When only the gradient is wanted (JAX's
 * reverse mode discards the forward output), this replaces a write and a read of a
 * full-size array by cache traffic. */
static void run_fused_rows(const job_t *job, Py_ssize_t first, Py_ssize_t last, void *buf_in,
                           void *buf_out) {
    job_t forward = *job, backward = *job;
    forward.g = NULL;
    forward.fused = forward.scan = backward.fused = 0;
    forward.log_out = backward.log_out = 1;
    backward.x = job->y; /* the log-probabilities, */
    backward.v = job->x; /* read with the input's validity */
    /* A few rows at a time, so that the VJP finds them in the level-1 cache. */
    Py_ssize_t size = job->dtype == EVS_F64 ? 8 : 4, bytes = job->length * size;
    Py_ssize_t step = bytes > 0 && bytes < EVS_FUSED_BYTES ? EVS_FUSED_BYTES / bytes : 1;
    for (Py_ssize_t r = first; r < last; r += step) {
        Py_ssize_t stop = last - r < step ? last : r + step;
        run_rows(&forward, r, stop, buf_in, buf_out);
        run_log_vjp_rows(&backward, r, stop, buf_in, buf_out);
    }
}

/* Whether y holds a -inf in the forward job's rows first..last-1, read right after they
 * were written (in cache): the log form's backward needs the validity of its entries
 * only when its output holds one. float16 and bfloat16 -inf compared as bits. */
#define EVS_SIMD_HIT _Pragma("omp simd reduction(| : hit)")
/* Sets hit when y (n entries s apart) holds `value`; contiguous rows vectorize. */
#define EVS_SCAN(value)                                                                     \
    do {                                                                                    \
        if (s == 1) {                                                                       \
            EVS_SIMD_HIT                                                                    \
            for (Py_ssize_t i = 0; i < n; i++) hit |= y[i] == (value);                      \
        } else {                                                                            \
            for (Py_ssize_t i = 0; i < n; i++) hit |= y[i * s] == (value);                  \
        }                                                                                   \
    } while (0)
EVS_CLONES static int scan_rows(const job_t *job, Py_ssize_t first, Py_ssize_t last) {
    int d, inner = job->outer - 1;
    Py_ssize_t index[EVS_MAX_DIMS], rest = first;
    for (d = inner; d >= 0; d--) {
        index[d] = rest % job->extent[d];
        rest /= job->extent[d];
    }
    Py_ssize_t n = job->length, s = job->ays, yr = job->ys[inner];
    for (Py_ssize_t r = first; r < last;) {
        Py_ssize_t oy = 0;
        for (d = 0; d <= inner; d++) oy += index[d] * job->ys[d];
        Py_ssize_t run = job->extent[inner] - index[inner];
        if (run > last - r) run = last - r;
        for (Py_ssize_t t = 0; t < run; t++) {
            Py_ssize_t at = oy + t * yr;
            int hit = 0;
            if (job->dtype == EVS_F32) {
                const float *y = (const float *)job->y + at;
                EVS_SCAN(-INFINITY);
            } else if (job->dtype == EVS_F64) {
                const double *y = (const double *)job->y + at;
                EVS_SCAN(-INFINITY);
            } else {
                const uint16_t *y = (const uint16_t *)job->y + at;
                uint16_t minus_inf = job->dtype == EVS_F16 ? 0xfc00u : 0xff80u;
                EVS_SCAN(minus_inf);
            }
            if (hit) return 1;
        }
        r += run;
        index[inner] += run;
        for (d = inner; d > 0 && index[d] == job->extent[d]; d--) {
            index[d] = 0;
            index[d - 1]++;
        }
    }
    return 0;
}

/* The body every thread runs: claim chunks of rows until none is left. */
static void work(void *arg) {
    job_t *job = (job_t *)arg;
    /* Two tiles of scratch in the accumulation type, for the rows that are gathered
     * (a column tile uses the first; the float16 log VJP two rows of floats in each). */
    Py_ssize_t tile = tile_rows(job), cols = tile_cols(job);
    size_t bytes = (size_t)(job->length > 0 ? job->length : 1) *
                   (size_t)(cols > tile ? cols : tile) * sizeof(double);
    void *buf_in = malloc(bytes), *buf_out = malloc(bytes);
    if (buf_in == NULL || buf_out == NULL) {
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
    } else {
        for (;;) {
            Py_ssize_t first = __atomic_fetch_add(&job->next, job->chunk, __ATOMIC_RELAXED);
            if (first >= job->rows) break;
            Py_ssize_t last = job->rows - first < job->chunk ? job->rows : first + job->chunk;
            if (job->fused)
                run_fused_rows(job, first, last, buf_in, buf_out);
            else
                run_rows(job, first, last, buf_in, buf_out);
            if (job->scan && !__atomic_load_n(&job->found, __ATOMIC_RELAXED) &&
                scan_rows(job, first, last))
                __atomic_store_n(&job->found, 1, __ATOMIC_RELAXED);
        }
    }
    free(buf_in);
    free(buf_out);
}

static void *work_pthread(void *arg) {
    work(arg);
    return NULL;
}

/* GOMP_parallel(fn, data, num_threads, flags): the entry point of GNU OpenMP (libgomp)
 * that compiled `omp parallel` regions call; fn runs once on each thread of the team. */
typedef void (*gomp_parallel_t)(void (*)(void *), void *, unsigned, unsigned);

#define EVS_MAX_THREADS 256
#define EVS_ENTRIES_PER_THREAD 32768

/* Runs `work` on up to `threads` threads: the caller's OpenMP
 * team when `parallel` is the address of a GOMP_parallel, else POSIX threads
 * started for this call. */
static void run_parallel(job_t *job, int threads, uintptr_t parallel) {
    /* Starting threads costs more than small jobs take: one a row, and at least
     * EVS_ENTRIES_PER_THREAD entries each. */
    Py_ssize_t by_size = job->rows * job->length / EVS_ENTRIES_PER_THREAD;
    if (threads > EVS_MAX_THREADS) threads = EVS_MAX_THREADS;
    if (threads > job->rows) threads = (int)job->rows;
    if (threads > by_size) threads = by_size > 1 ? (int)by_size : 1;
    /* Several chunks per thread balance the load; one row is the smallest chunk. */
    job->chunk = threads > 1 ? job->rows / ((Py_ssize_t)threads * 8) : job->rows;
    if (job->chunk < 1) job->chunk = 1;
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

static PyObject *finish(job_t *job, int threads, unsigned long long parallel);

PyDoc_STRVAR(ev_softmax_rows_doc,
"ev_softmax_rows(x, y, rows, length, itemsize, ratio, log_ratio, log, threads, parallel)\n"
"--\n\n"
"ev-softmax (or its log) of contiguous rows at address x into address y.\n\n"
"x and y are memory addresses (ints); itemsize is 4 (float32) or 8 (float64);\n"
"ratio = eps / (1 + eps) and log_ratio its log. parallel is\n"
"the address of a libgomp GOMP_parallel to run the threads on (0: POSIX threads).\n"
"The GIL is released while the kernel runs.");

static PyObject *ev_softmax_rows(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long x, y, parallel;
    Py_ssize_t rows, length, itemsize;
    double ratio, log_ratio;
    int log_out, threads;
    if (!PyArg_ParseTuple(args, "KKnnnddpiK", &x, &y, &rows, &length, &itemsize,
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
    job_t job = {
        .x = (const char *)(uintptr_t)x,
        .y = (char *)(uintptr_t)y,
        .ratio = ratio,
        .log_ratio = log_ratio,
        .log_out = log_out,
        .dtype = itemsize == 8 ? EVS_F64 : EVS_F32,
    };
    contiguous_rows(&job, rows, length);
    return finish(&job, threads, parallel);
}

/* Runs a job without the GIL; None, or MemoryError when scratch rows were refused. */
static PyObject *finish(job_t *job, int threads, unsigned long long parallel) {
    if (job->rows > 0 && job->length > 0) {
        Py_BEGIN_ALLOW_THREADS
        run_parallel(job, threads, (uintptr_t)parallel);
        Py_END_ALLOW_THREADS
    }
    if (job->failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* Reads a tuple of `ndim` ints into out; -1 with an exception set if it is not one. */
static int read_sizes(PyObject *seq, Py_ssize_t ndim, Py_ssize_t *out, const char *name) {
    PyObject *fast = PySequence_Fast(seq, name);
    if (fast == NULL) return -1;
    int ok = PySequence_Fast_GET_SIZE(fast) == ndim;
    for (Py_ssize_t i = 0; ok && i < ndim; i++) {
        out[i] = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(fast, i));
        ok = !(out[i] == -1 && PyErr_Occurred());
    }
    Py_DECREF(fast);
    if (!ok && !PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "%s must hold one int per dimension", name);
    return ok ? 0 : -1;
}

/* Reads a strided entry point's layout: the shape and the strides of x, mask and y
 * (`x_name` names x's in errors), checking ndim, axis and dtype; -1 with an exception
 * set on bad arguments. */
static int read_layout(PyObject *shape_arg, PyObject *xs_arg, PyObject *ms_arg, PyObject *ys_arg,
                       int axis, int dtype, const char *x_name, Py_ssize_t *ndim,
                       Py_ssize_t *shape, Py_ssize_t *xs, Py_ssize_t *ms, Py_ssize_t *ys) {
    *ndim = PyObject_Length(shape_arg);
    if (*ndim < 0) return -1;
    if (*ndim < 1 || *ndim > EVS_MAX_DIMS || axis < 0 || axis >= *ndim) {
        PyErr_Format(PyExc_ValueError, "need 1 to %d dimensions and 0 <= axis < ndim",
                     EVS_MAX_DIMS);
        return -1;
    }
    if (dtype < EVS_F32 || dtype > EVS_BF16) {
        PyErr_SetString(PyExc_ValueError, "dtype must be 0 to 3");
        return -1;
    }
    if (read_sizes(shape_arg, *ndim, shape, "shape") || read_sizes(xs_arg, *ndim, xs, x_name) ||
        read_sizes(ms_arg, *ndim, ms, "mask_strides") || read_sizes(ys_arg, *ndim, ys, "y_strides"))
        return -1;
    return 0;
}

/* Fills the rows of `job` (whose x, y, mask and dtype are set) along `axis` of an
 * array of `shape`: x and y strides in elements, the mask's in bytes (read only when
 * job->mask is set). Returns -1 for a negative size. */
static int strided_job(job_t *job, int ndim, const Py_ssize_t *shape, const Py_ssize_t *xs,
                       const Py_ssize_t *ms, const Py_ssize_t *ys, int axis) {
    job->length = shape[axis];
    job->axs = xs[axis];
    job->ams = job->mask ? ms[axis] : 0;
    job->ays = ys[axis];
    job->rows = 1;
    /* The other axes, size-1 ones dropped and neighbours that step like one merged. */
    int outer = 0;
    for (int d = 0; d < ndim; d++) {
        if (d == axis || shape[d] == 1) continue;
        if (shape[d] < 0) {
            return -1;
        }
        Py_ssize_t m = job->mask ? ms[d] : 0;
        int k = outer - 1;
        if (outer > 0 && job->xs[k] == xs[d] * shape[d] && job->ys[k] == ys[d] * shape[d] &&
            job->ms[k] == m * shape[d]) {
            job->extent[k] *= shape[d];
            job->xs[k] = xs[d];
            job->ys[k] = ys[d];
            job->ms[k] = m;
        } else {
            job->extent[outer] = shape[d];
            job->xs[outer] = xs[d];
            job->ys[outer] = ys[d];
            job->ms[outer] = m;
            outer++;
        }
        job->rows *= shape[d];
    }
    if (outer == 0) {
        job->extent[0] = 1;
        job->xs[0] = job->ys[0] = job->ms[0] = 0;
        outer = 1;
    }
    job->outer = outer;
    return 0;
}

PyDoc_STRVAR(ev_softmax_strided_doc,
"ev_softmax_strided(x, mask, y, shape, x_strides, mask_strides, y_strides, axis, dtype,\n"
"                   ratio, log_ratio, log, threads, parallel, scan=False)\n"
"--\n\n"
"ev-softmax (or its log) along `axis` of the array at address x into address y.\n\n"
"x and y share `shape` and the element type `dtype` (0: float32, 1: float64,\n"
"2: float16, 3: bfloat16; half precision is computed in float32); their strides are\n"
"in elements, any sign. mask is the address of a boolean array of that shape\n"
"(strides in bytes; 0 for a broadcast axis) whose false entries count as -inf, or 0\n"
"for none. Other arguments as for ev_softmax_rows. With scan true, returns whether y\n"
"holds a -inf (each thread looks at the rows it wrote while they are in cache).");

static PyObject *ev_softmax_strided(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long x, mask, y, parallel;
    PyObject *shape_arg, *xs_arg, *ms_arg, *ys_arg;
    int axis, dtype, log_out, threads;
    double ratio, log_ratio;
    int scan = 0;
    if (!PyArg_ParseTuple(args, "KKKOOOOiiddpiK|p", &x, &mask, &y, &shape_arg, &xs_arg, &ms_arg,
                          &ys_arg, &axis, &dtype, &ratio, &log_ratio, &log_out, &threads,
                          &parallel, &scan))
        return NULL;
    Py_ssize_t ndim, shape[EVS_MAX_DIMS], xs[EVS_MAX_DIMS], ms[EVS_MAX_DIMS], ys[EVS_MAX_DIMS];
    if (read_layout(shape_arg, xs_arg, ms_arg, ys_arg, axis, dtype, "x_strides", &ndim, shape, xs, ms,
                    ys))
        return NULL;
    job_t job = {
        .x = (const char *)(uintptr_t)x,
        .y = (char *)(uintptr_t)y,
        .mask = (const unsigned char *)(uintptr_t)mask,
        .ratio = ratio,
        .log_ratio = log_ratio,
        .log_out = log_out,
        .dtype = dtype,
        .scan = scan,
    };
    if (strided_job(&job, (int)ndim, shape, xs, ms, ys, axis) < 0) {
        PyErr_SetString(PyExc_ValueError, "shape must be >= 0");
        return NULL;
    }
    PyObject *done = finish(&job, threads, parallel);
    if (done == NULL || !scan) return done;
    Py_DECREF(done);
    return PyBool_FromLong(job.found);
}

PyDoc_STRVAR(log_ev_softmax_vjp_strided_doc,
"log_ev_softmax_vjp_strided(lp, g, x, mask, y, shape, strides, mask_strides, y_strides,\n"
"                           axis, dtype, threads, parallel)\n"
"--\n\n"
"The VJP of log ev-softmax along `axis`: g - exp(lp) * sum(g) over the valid entries of\n"
"each row, exactly 0 on the others, into address y.\n\n"
"lp (the log-probabilities), g (the cotangent) and x (the input, or 0 for none) are\n"
"addresses of arrays of `shape`, element type `dtype` and the same `strides`; mask (or\n"
"0) is as for ev_softmax_strided. An entry is valid where the mask is true and x is\n"
"not -inf (without x: where the mask is true; with neither: where lp is not -inf); the\n"
"validity is read only in rows where lp holds -inf or NaN (every other row is all\n"
"valid). Other arguments as for ev_softmax_strided.");

static PyObject *log_ev_softmax_vjp_strided(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long lp, g, x, mask, y, parallel;
    PyObject *shape_arg, *xs_arg, *ms_arg, *ys_arg;
    int axis, dtype, threads;
    if (!PyArg_ParseTuple(args, "KKKKKOOOOiiiK", &lp, &g, &x, &mask, &y, &shape_arg, &xs_arg,
                          &ms_arg, &ys_arg, &axis, &dtype, &threads, &parallel))
        return NULL;
    Py_ssize_t ndim, shape[EVS_MAX_DIMS], xs[EVS_MAX_DIMS], ms[EVS_MAX_DIMS], ys[EVS_MAX_DIMS];
    if (read_layout(shape_arg, xs_arg, ms_arg, ys_arg, axis, dtype, "strides", &ndim, shape, xs, ms,
                    ys))
        return NULL;
    job_t job = {
        .x = (const char *)(uintptr_t)lp,
        .g = (const char *)(uintptr_t)g,
        .v = (const char *)(uintptr_t)x,
        .y = (char *)(uintptr_t)y,
        .mask = (const unsigned char *)(uintptr_t)mask,
        .log_out = 1,
        .dtype = dtype,
    };
    if (strided_job(&job, (int)ndim, shape, xs, ms, ys, axis) < 0) {
        PyErr_SetString(PyExc_ValueError, "shape must be >= 0");
        return NULL;
    }
    return finish(&job, threads, parallel);
}

/* ---- XLA FFI handler: the kernel as a typed custom call for JAX on the CPU ----------
 *
 * XLA calls FFI handlers through a versioned C ABI; _xla_ffi.h declares the
 * parts of it the handlers read. */
#include "_xla_ffi.h"

/* The kernel's element type of an FFI dtype, or -1 for one it does not take. */
static int ffi_kernel_dtype(int dtype) {
    switch (dtype) {
        case EVS_FFI_F32: return EVS_F32;
        case EVS_FFI_F64: return EVS_F64;
        case EVS_FFI_F16: return EVS_HAVE_F16 ? EVS_F16 : -1;
        case EVS_FFI_BF16: return EVS_BF16;
        default: return -1;
    }
}

/* Row-major strides (in elements) of a buffer's dims; 0 along size-1 dims, so that a
 * mask with size-1 dims broadcasts over x without being materialized. */
static void ffi_strides(const evs_ffi_buffer *b, Py_ssize_t *strides) {
    Py_ssize_t step = 1;
    for (int64_t d = b->rank - 1; d >= 0; d--) {
        strides[d] = b->dims[d] == 1 ? 0 : step;
        step *= (Py_ssize_t)b->dims[d];
    }
}

/* Reads an execute call whose operands are `arrays` arrays of the result's dtype and
 * dims (x, then g for the VJPs), optionally a PRED mask of the same rank whose dims
 * each match or are 1 (when there is one more operand), and last a vector of
 * `nparams` F32 or F64 parameters, of which the last is the normalized axis and the
 * one before it the thread count. Fills `job` (x, g, mask, y, dtype and the strided
 * rows along the axis, through strided_job) and `params`, and returns the thread
 * count, or 0 for a call it cannot serve (the result then holds NaN). */
static int ffi_job(evs_ffi_call_frame *frame, int arrays, int nparams, job_t *job,
                   double *params) {
    evs_ffi_buffer *in[2], *mask = NULL, *y, *p;
    if (frame->stage != EVS_FFI_EXECUTE || !ffi_buffer(&frame->rets, 0, &y)) return 0;
    int64_t last = frame->args.size - 1;
    int dtype = ffi_kernel_dtype(y->dtype);
    int ok = dtype >= 0 && y->rank >= 1 && y->rank <= EVS_MAX_DIMS &&
             (last == arrays || last == arrays + 1) && ffi_buffer(&frame->args, last, &p) &&
             (p->dtype == EVS_FFI_F32 || p->dtype == EVS_FFI_F64) && p->rank == 1 &&
             p->dims[0] == nparams;
    for (int a = 0; ok && a < arrays; a++) {
        ok = ffi_buffer(&frame->args, a, &in[a]) && in[a]->dtype == y->dtype &&
             in[a]->rank == y->rank;
        for (int64_t d = 0; ok && d < y->rank; d++) ok = in[a]->dims[d] == y->dims[d];
    }
    if (ok && last == arrays + 1) {
        ok = ffi_buffer(&frame->args, arrays, &mask) && mask->dtype == EVS_FFI_PRED &&
             mask->rank == y->rank;
        for (int64_t d = 0; ok && d < y->rank; d++)
            ok = mask->dims[d] == y->dims[d] || mask->dims[d] == 1;
    }
    for (int i = 0; ok && i < nparams; i++)
        params[i] = p->dtype == EVS_FFI_F64 ? ((const double *)p->data)[i]
                                            : (double)((const float *)p->data)[i];
    int axis = ok ? (int)params[nparams - 1] : -1;
    if (!ok || axis < 0 || axis >= y->rank) {
        ffi_fill_nan(y);
        return 0;
    }
    Py_ssize_t shape[EVS_MAX_DIMS], xs[EVS_MAX_DIMS], ms[EVS_MAX_DIMS], ys[EVS_MAX_DIMS];
    for (int64_t d = 0; d < y->rank; d++) shape[d] = (Py_ssize_t)y->dims[d];
    ffi_strides(y, xs);
    memcpy(ys, xs, sizeof ys);
    if (mask != NULL) ffi_strides(mask, ms);
    else memset(ms, 0, sizeof ms);
    job->x = (const char *)in[0]->data;
    job->g = arrays > 1 ? (const char *)in[1]->data : NULL;
    job->y = (char *)y->data;
    job->mask = mask == NULL ? NULL : (const unsigned char *)mask->data;
    job->dtype = dtype;
    strided_job(job, (int)y->rank, shape, xs, ms, ys, axis);
    int threads = (int)params[nparams - 2];
    return threads > 0 ? threads : 1;
}

/* ev-softmax along any axis. Operands: x (F32, F64, F16 or BF16, half precision
 * computed in float32), optionally a PRED mask (false: excluded, as -inf; size-1 dims
 * broadcast) and five parameters: ratio, log_ratio, log (0 or 1), threads, axis.
 * Result: y, of x's dtype and dims. Returns NULL: success, in the ABI's terms (a call
 * it cannot serve gets NaN, see ffi_job). */
static void *xla_ffi_ev_softmax(evs_ffi_call_frame *frame) {
    job_t job = {0};
    double p[5];
    if (ffi_metadata(frame)) return NULL;
    int threads = ffi_job(frame, 1, 5, &job, p);
    if (threads == 0) return NULL;
    job.ratio = p[0];
    job.log_ratio = p[1];
    job.log_out = p[2] != 0.0;
    if (job.rows > 0 && job.length > 0) run_parallel(&job, threads, 0);
    return NULL;
}

/* The VJP p * (g - <p, g>) along any axis (masked entries have p = 0: no mask).
 * Operands: the output p, the cotangent g (both of the result's dtype and dims) and
 * two parameters: threads, axis. Result: the gradient. */
static void *xla_ffi_ev_softmax_vjp(evs_ffi_call_frame *frame) {
    job_t job = {0};
    double p[2];
    if (ffi_metadata(frame)) return NULL;
    int threads = ffi_job(frame, 2, 2, &job, p);
    if (threads > 0 && job.rows > 0 && job.length > 0) run_parallel(&job, threads, 0);
    return NULL;
}

/* The gradient of the log form from its input: g - exp(lp) * sum(g) on valid entries
 * and 0 on the others, with lp = log ev-softmax(x) computed on the way
 * (run_fused_rows). Operands: x, the cotangent g (both of the result's dtype and
 * dims), optionally a PRED mask (as for xla_ffi_ev_softmax) and four parameters:
 * ratio, log_ratio, threads, axis. Result: the gradient. */
static void *xla_ffi_log_ev_softmax_grad(evs_ffi_call_frame *frame) {
    job_t job = {0};
    double p[4];
    if (ffi_metadata(frame)) return NULL;
    int threads = ffi_job(frame, 2, 4, &job, p);
    if (threads == 0) return NULL;
    job.ratio = p[0];
    job.log_ratio = p[1];
    job.log_out = job.fused = 1;
    if (job.rows > 0 && job.length > 0) run_parallel(&job, threads, 0);
    return NULL;
}

PyDoc_STRVAR(xla_ffi_handler_doc,
"xla_ffi_handler()\n--\n\n"
"A PyCapsule of the XLA FFI handler of ev-softmax, for\n"
"jax.ffi.register_ffi_target(platform='cpu').");

static PyObject *xla_ffi_handler(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyCapsule_New((void *)xla_ffi_ev_softmax, NULL, NULL);
}

PyDoc_STRVAR(xla_ffi_vjp_handler_doc,
"xla_ffi_vjp_handler()\n--\n\n"
"A PyCapsule of the XLA FFI handler of the VJP p * (g - <p, g>).");

static PyObject *xla_ffi_vjp_handler(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyCapsule_New((void *)xla_ffi_ev_softmax_vjp, NULL, NULL);
}

PyDoc_STRVAR(xla_ffi_log_grad_handler_doc,
"xla_ffi_log_grad_handler()\n--\n\n"
"A PyCapsule of the XLA FFI handler of the log form's gradient from its input x and\n"
"the cotangent g (the forward pass and the VJP in one pass over each row).");

static PyObject *xla_ffi_log_grad_handler(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyCapsule_New((void *)xla_ffi_log_ev_softmax_grad, NULL, NULL);
}

PyDoc_STRVAR(convert_half_doc,
"convert_half(src, dst, n, dtype, widen, hardware)\n--\n\n"
"For tests: the kernels' conversion of n contiguous entries at address src into\n"
"address dst: half precision (dtype 2: float16 bits, 3: bfloat16 bits) to float32\n"
"when widen is true, else float32 to half precision. hardware false takes the\n"
"portable float16 conversion even where the CPU has F16C. Returns whether F16C\n"
"converted.");

static PyObject *convert_half(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long src, dst;
    Py_ssize_t n;
    int dtype, widen, hardware;
    if (!PyArg_ParseTuple(args, "KKnipp", &src, &dst, &n, &dtype, &widen, &hardware))
        return NULL;
    if ((dtype != EVS_F16 && dtype != EVS_BF16) || n < 0) {
        PyErr_SetString(PyExc_ValueError, "dtype must be 2 or 3, and n >= 0");
        return NULL;
    }
    const uint16_t *h = (const uint16_t *)(uintptr_t)src;
    const float *f = (const float *)(uintptr_t)src;
    /* The _n conversions take F16C where the CPU has it, else the portable ones. */
    if (dtype == EVS_BF16 && widen)
        for (Py_ssize_t i = 0; i < n; i++) ((float *)(uintptr_t)dst)[i] = bf16_to_float(h[i]);
    else if (dtype == EVS_BF16)
        float_to_bf16_n(f, (uint16_t *)(uintptr_t)dst, n, 1.0f);
    else if (widen)
        (hardware ? f16_to_float_n : f16_to_float_soft)(h, (float *)(uintptr_t)dst, n);
    else
        (hardware ? float_to_f16_n : float_to_f16_soft)(f, (evs_f16 *)(uintptr_t)dst, n, 1.0f);
    return PyBool_FromLong(dtype == EVS_F16 && hardware && evs_f16c);
}

static PyMethodDef methods[] = {
    {"ev_softmax_rows", ev_softmax_rows, METH_VARARGS, ev_softmax_rows_doc},
    {"ev_softmax_strided", ev_softmax_strided, METH_VARARGS, ev_softmax_strided_doc},
    {"xla_ffi_handler", xla_ffi_handler, METH_NOARGS, xla_ffi_handler_doc},
    {"xla_ffi_vjp_handler", xla_ffi_vjp_handler, METH_NOARGS, xla_ffi_vjp_handler_doc},
    {"log_ev_softmax_vjp_strided", log_ev_softmax_vjp_strided, METH_VARARGS,
     log_ev_softmax_vjp_strided_doc},
    {"xla_ffi_log_grad_handler", xla_ffi_log_grad_handler, METH_NOARGS,
     xla_ffi_log_grad_handler_doc},
    {"convert_half", convert_half, METH_VARARGS, convert_half_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cpu_kernels",
    "Fused CPU kernels for ev-softmax (see evsoftmax._ext).", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__cpu_kernels(void) {
#if EVS_F16C
    __builtin_cpu_init();
    evs_f16c = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
#endif
    PyObject *m = PyModule_Create(&module);
    /* Whether ev_softmax_strided takes float16 (always, now that it converts bits). */
    if (m != NULL && PyModule_AddIntConstant(m, "FLOAT16", EVS_HAVE_F16) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
