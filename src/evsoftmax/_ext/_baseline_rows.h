/*
 * The row kernels of _baseline_kernels.c for one dtype: included once with T = float
 * and once with T = double (N(name) gives each copy its own names). Thresholds and
 * sums are carried in double for both dtypes; each row is read from memory once or
 * twice, and the threshold searches run on a compacted list of candidates (the
 * entries that can still be in the support) kept in the thread's scratch.
 */

/* Scans a row: its maximum over the entries != -inf into *m and their count into
 * *count. Returns 1 when the row holds a NaN or +inf (its output is NaN). */
EVS_CLONES static int N(scan)(const T *restrict x, Py_ssize_t n, T *m, double *count) {
    T top = -INFINITY;
    int bad = 0;
    Py_ssize_t valid = 0;
#pragma omp simd reduction(max : top) reduction(| : bad) reduction(+ : valid)
    for (Py_ssize_t i = 0; i < n; i++) {
        T v = x[i];
        top = v > top ? v : top;
        bad |= (v != v) | (v == INFINITY);
        valid += v != -INFINITY;
    }
    *m = top;
    *count = (double)valid;
    return bad;
}

/* Fills the row with `value`. */
static void N(fill)(T *restrict y, Py_ssize_t n, T value) {
    for (Py_ssize_t i = 0; i < n; i++) y[i] = value;
}

/* Handles the rows with a NaN or +inf (NaN) or no valid entry (zeros); returns 1 for
 * them. Otherwise sets *m and *count and returns 0. */
static int N(special)(const T *restrict x, T *restrict y, Py_ssize_t n, T *m, double *count) {
    if (N(scan)(x, n, m, count)) {
        N(fill)(y, n, (T)NAN);
        return 1;
    }
    if (*count == 0.0) {
        N(fill)(y, n, (T)0);
        return 1;
    }
    return 0;
}

/* The candidates of a row: the entries with z = (x - m) * scale > -1 (with the row
 * maximum at z = 0, the support of every map here lies above -1), their z in val
 * and their index in idx. z is formed in T, as the array-library paths form it;
 * -inf entries and differences that overflow give z = -inf, never a candidate.
 * Returns their number (>= 1: the maximum is one). */
static Py_ssize_t N(candidates)(const T *restrict x, Py_ssize_t n, T m, T scale,
                                double *restrict val, Py_ssize_t *restrict idx) {
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        T z = (x[i] - m) * scale;
        val[k] = (double)z;
        idx[k] = i;
        k += z > (T)-1; /* branch-free compaction: the slot is overwritten unless kept */
    }
    return k;
}

/* Writes zeros, then value(val[j]) at idx[j] for the k final candidates. */
#define EVS_SCATTER(y, n, k, val, idx, EXPR)                 \
    do {                                                     \
        memset((y), 0, (size_t)(n) * sizeof(T));             \
        for (Py_ssize_t j_ = 0; j_ < (k); j_++) {            \
            double v = (val)[j_];                            \
            (y)[(idx)[j_]] = (T)(EXPR);                      \
        }                                                    \
    } while (0)

/* Sparsemax of one row: tau = (sum_S z - 1) / |S| for the support S, found by
 * Michelot's algorithm: tau computed on a superset of the support is a lower
 * bound of the true one, so entries at or below it leave the candidates; when none
 * leaves, the candidates are the support and tau is exact (the value of the sorted
 * formula, max over prefixes, for the same support). */
static void N(sparsemax_row)(const T *restrict x, T *restrict y, Py_ssize_t n, double *val,
                             Py_ssize_t *idx) {
    T m;
    double count;
    if (N(special)(x, y, n, &m, &count)) return;
    Py_ssize_t k = N(candidates)(x, n, m, (T)1, val, idx);
    double sum = 0.0;
    for (Py_ssize_t j = 0; j < k; j++) sum += val[j];
    double tau = (sum - 1.0) / (double)k;
    for (;;) {
        Py_ssize_t kept = 0;
        double kept_sum = 0.0;
        for (Py_ssize_t j = 0; j < k; j++) {
            double v = val[j];
            int in = v > tau;
            val[kept] = v;
            idx[kept] = idx[j];
            kept += in;
            kept_sum += in ? v : 0.0;
        }
        if (kept == k) break;
        k = kept;
        sum = kept_sum;
        tau = (sum - 1.0) / (double)k;
    }
    EVS_SCATTER(y, n, k, val, idx, v - tau);
}

/* 1.5-entmax of one row, z = (x - m) / 2: the root tau of F(tau) = sum [z - tau]_+^2 = 1.
 * F is convex and decreasing, so Newton steps from tau = -1 (where F >= 1) stay below
 * the root; entries at or below the current tau leave the candidates. At each tau the
 * quadratic of the candidates, sum (z - t)^2 = 1, is solved exactly (its smaller
 * root, as the sorted formula takes it); when every candidate lies at or above that
 * root, the candidates are the support and the root is the threshold. */
static void N(entmax15_row)(const T *restrict x, T *restrict y, Py_ssize_t n, double *val,
                            Py_ssize_t *idx) {
    T m;
    double count;
    if (N(special)(x, y, n, &m, &count)) return;
    Py_ssize_t k = N(candidates)(x, n, m, (T)0.5, val, idx);
    double tau = -1.0, root = -1.0;
    for (int it = 0; it < 200; it++) {
        Py_ssize_t kept = 0;
        double s1 = 0.0, s2 = 0.0, low = INFINITY;
        for (Py_ssize_t j = 0; j < k; j++) {
            double v = val[j], d = v - tau;
            int in = d > 0.0;
            val[kept] = v;
            idx[kept] = idx[j];
            kept += in;
            d = in ? d : 0.0;
            s1 += d;
            s2 += d * d;
            low = in && v < low ? v : low;
        }
        k = kept;
        /* The smaller root of k t^2 - 2 s1 t + (s2 - 1) = 0 in t = root - tau, in the
         * form without cancellation; a negative discriminant (rounding) counts as 0. */
        double disc = s1 * s1 - (double)k * (s2 - 1.0);
        root = tau + (s2 - 1.0) / (s1 + sqrt(disc > 0.0 ? disc : 0.0));
        if (low >= root || s2 <= 1.0) break;
        double next = tau + (s2 - 1.0) / (2.0 * s1);
        if (!(next > tau)) break;
        tau = next;
    }
    EVS_SCATTER(y, n, k, val, idx, v > root ? (v - root) * (v - root) : 0.0);
}

/* [d]_+^power for d > 0, with the common powers exact and fast. */
static inline double N(power)(double d, double power, int kind) {
    switch (kind) {
        case 0: return d;       /* alpha = 2 */
        case 1: return d * d;   /* alpha = 1.5 */
        case 2: return sqrt(d); /* alpha = 3 */
        default: return pow(d, power);
    }
}

/* sum_j [val[j] - t]_+^power over the k candidates: branch-free loops, vectorized for
 * the closed-form powers (kind as for N(power)). */
EVS_CLONES static double N(mass)(const double *restrict val, Py_ssize_t k, double t,
                                 double power, int kind) {
    double mass = 0.0;
    switch (kind) {
        case 0:
#pragma omp simd reduction(+ : mass)
            for (Py_ssize_t j = 0; j < k; j++) {
                double d = val[j] - t;
                mass += d > 0.0 ? d : 0.0;
            }
            break;
        case 1:
#pragma omp simd reduction(+ : mass)
            for (Py_ssize_t j = 0; j < k; j++) {
                double d = val[j] - t;
                mass += d > 0.0 ? d * d : 0.0;
            }
            break;
        case 2:
#pragma omp simd reduction(+ : mass)
            for (Py_ssize_t j = 0; j < k; j++) {
                double d = val[j] - t;
                mass += sqrt(d > 0.0 ? d : 0.0);
            }
            break;
        default:
            for (Py_ssize_t j = 0; j < k; j++) {
                double d = val[j] - t;
                mass += d > 0.0 ? pow(d, power) : 0.0;
            }
    }
    return mass;
}

/* Keeps the candidates above t (in order); returns their number. */
static Py_ssize_t N(above)(double *restrict val, Py_ssize_t *restrict idx, Py_ssize_t k, double t) {
    Py_ssize_t kept = 0;
    for (Py_ssize_t j = 0; j < k; j++) {
        double v = val[j];
        val[kept] = v;
        idx[kept] = idx[j];
        kept += v > t;
    }
    return kept;
}

/* alpha-entmax of one row by bisection, as evsoftmax._entmax.entmax_bisect: z = (x - m)
 * (alpha - 1) (clipped at -2, which no candidate reaches), tau in [-1, -(1/count)^(alpha
 * - 1)], n_iter halvings keeping mass(tau_lo) >= 1, then p = [z - tau_lo]_+^(1/(alpha -
 * 1)) renormalized. Each step is one branch-free pass over the candidates (a chain of
 * dependent steps: the passes, not memory, bound the time); entries at or below tau_lo
 * add nothing to any later mass, and every 8 steps they leave the candidates. */
static void N(bisect_row)(const T *restrict x, T *restrict y, Py_ssize_t n, double *val,
                          Py_ssize_t *idx, double alpha, int n_iter) {
    T m;
    double count;
    if (N(special)(x, y, n, &m, &count)) return;
    double power = 1.0 / (alpha - 1.0);
    int kind = alpha == 2.0 ? 0 : alpha == 1.5 ? 1 : alpha == 3.0 ? 2 : 3;
    Py_ssize_t k = N(candidates)(x, n, m, (T)(alpha - 1.0), val, idx);
    double tau = -1.0, width = 1.0 - pow(1.0 / count, alpha - 1.0);
    for (int it = 0; it < n_iter; it++) {
        width /= 2.0;
        double mid = tau + width;
        tau = N(mass)(val, k, mid, power, kind) >= 1.0 ? mid : tau;
        if ((it & 7) == 7) k = N(above)(val, idx, k, tau);
    }
    k = N(above)(val, idx, k, tau);
    double total = 0.0;
    for (Py_ssize_t j = 0; j < k; j++) total += N(power)(val[j] - tau, power, kind);
    double inv = 1.0 / total; /* >= 1: the maximum (z = 0) stays above tau < 0 */
    EVS_SCATTER(y, n, k, val, idx, N(power)(v - tau, power, kind) * inv);
}

/* The VJP (and JVP) of alpha-entmax from its output p, as evsoftmax._entmax.entmax_jvp:
 * s g - s <s, g> / sum(s) with s = p^(2 - alpha) on the support (p != 0), 0 elsewhere:
 * 1 for sparsemax (kind 0), sqrt(p) for 1.5-entmax (kind 1). A NaN p gives s = NaN^0 = 1
 * for alpha = 2 and s = NaN otherwise, as there. */
EVS_CLONES static void N(vjp_row)(const T *restrict p, const T *restrict g, T *restrict out,
                                  Py_ssize_t n, double alpha) {
    int kind = alpha == 2.0 ? 0 : alpha == 1.5 ? 1 : 2;
    double sg = 0.0, ss = 0.0;
    if (kind == 0) {
#pragma omp simd reduction(+ : sg, ss)
        for (Py_ssize_t i = 0; i < n; i++) {
            T s = p[i] != (T)0 ? (T)1 : (T)0;
            out[i] = s;
            sg += (double)(s * g[i]);
            ss += (double)s;
        }
    } else if (kind == 1) {
#pragma omp simd reduction(+ : sg, ss)
        for (Py_ssize_t i = 0; i < n; i++) {
            T s = (T)sqrt((double)p[i]);
            out[i] = s;
            sg += (double)(s * g[i]);
            ss += (double)s;
        }
    } else {
        for (Py_ssize_t i = 0; i < n; i++) {
            T s = p[i] == (T)0 ? (T)0 : (T)pow((double)p[i], 2.0 - alpha);
            out[i] = s;
            sg += (double)(s * g[i]);
            ss += (double)s;
        }
    }
    T mean = (T)(sg / (ss == 0.0 ? 1.0 : ss));
#pragma omp simd
    for (Py_ssize_t i = 0; i < n; i++) out[i] = out[i] * g[i] - mean * out[i];
}

#undef EVS_SCATTER
