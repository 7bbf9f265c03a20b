/*
 * The per-event aggregates of the features service, in C.
 *
 * `aggregates()` computes, for one event, the same numbers as the pure-Python
 * aggregates in services/features/feature_set.py (WindowStats, SecondsSincePrevious,
 * RatioToRunningMean, HistoryCount) from an entity's history, bit for bit:
 *
 * - sums are exactly rounded: the partials algorithm of Shewchuk with the final
 *   round-half-even step, which is what `math.fsum` computes (the result is the exact
 *   sum correctly rounded, so it does not depend on the order of the terms);
 * - the rest is the same IEEE 754 double arithmetic in the same order (this file must be
 *   compiled without FMA contraction or fast-math, see setup.py), and the same libm
 *   `log1p` and `sqrt` that Python's `math` module calls.
 *
 * Whatever it does not handle the way Python would (a non-finite value, an overflowing
 * sum, an integer out of range, an unknown plan step) makes it return None, and the
 * caller computes the event in Python, which raises or answers as it always did.
 * tests/unit/features/test_native.py holds the two to the same bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define NO_TIME INT64_MIN
#define MAX_PARTIALS 64 /* enough for any sum of doubles (at most ~40 are ever needed) */

/* Exact sum of values[0:n] after the extra terms pre[0:m] (both may be empty).
 * Returns 0 and sets *out on success; -1 when the inputs or the sum are not finite
 * (Python raises or returns a special value there: the caller falls back). */
typedef struct {
    double p[MAX_PARTIALS];
    Py_ssize_t n;
} partials_t;

static int
add_term(partials_t *acc, double x)
{
    Py_ssize_t i = 0, j;
    if (!isfinite(x)) {
        return -1;
    }
    for (j = 0; j < acc->n; j++) {
        double y = acc->p[j];
        double hi, lo;
        if (fabs(x) < fabs(y)) {
            double t = x;
            x = y;
            y = t;
        }
        hi = x + y;
        lo = y - (hi - x);
        if (lo != 0.0) {
            acc->p[i++] = lo;
        }
        x = hi;
    }
    acc->n = i;
    if (x != 0.0) { /* like math.fsum, a zero (of either sign) is not kept */
        if (!isfinite(x)) {
            return -1; /* intermediate overflow: Python raises OverflowError */
        }
        if (i >= MAX_PARTIALS) {
            return -1;
        }
        acc->p[acc->n++] = x;
    }
    return 0;
}

static double
round_partials(const partials_t *acc)
{
    Py_ssize_t n = acc->n;
    double hi = 0.0, lo = 0.0, x, y, yr;
    if (n > 0) {
        hi = acc->p[--n];
        /* Sum from the top while the sum is exact. */
        while (n > 0) {
            x = hi;
            y = acc->p[--n];
            hi = x + y;
            yr = hi - x;
            lo = y - yr;
            if (lo != 0.0) {
                break;
            }
        }
        /* Round half to even: if the rest of the partials has the same sign as lo, the
         * exact sum lies beyond the halfway point that hi + lo rounded to hi. */
        if (n > 0 && ((lo < 0.0 && acc->p[n - 1] < 0.0) || (lo > 0.0 && acc->p[n - 1] > 0.0))) {
            y = lo * 2.0;
            x = hi + y;
            yr = x - hi;
            if (y == yr) {
                hi = x;
            }
        }
    }
    return hi;
}

static int
exact_sum(const double *pre, Py_ssize_t m, const double *values, Py_ssize_t n, double *out)
{
    partials_t acc;
    Py_ssize_t k;
    acc.n = 0;
    for (k = 0; k < m; k++) {
        if (add_term(&acc, pre[k]) < 0) {
            return -1;
        }
    }
    for (k = 0; k < n; k++) {
        if (add_term(&acc, values[k]) < 0) {
            return -1;
        }
    }
    *out = round_partials(&acc);
    return 0;
}

/* First index i in [lo, hi) with a[i] >= x (bisect.bisect_left). */
static Py_ssize_t
bisect_left_q(const int64_t *a, int64_t x, Py_ssize_t lo, Py_ssize_t hi)
{
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (a[mid] < x) {
            lo = mid + 1;
        }
        else {
            hi = mid;
        }
    }
    return lo;
}

/* math.log1p's domain without an error: anything else goes back to Python. */
static int
checked_log1p(double x, double *out)
{
    if (!isfinite(x) || x <= -1.0) {
        return -1;
    }
    *out = log1p(x);
    return 0;
}

/* (count, sum, mean, std, min, max) of values[0:n], as feature_set.window_stats. */
static int
window_stats(const double *v, Py_ssize_t n, double *out)
{
    double total, mean, sq, lowest, highest;
    Py_ssize_t k;
    partials_t acc;
    if (n == 0) {
        for (k = 0; k < 6; k++) {
            out[k] = 0.0;
        }
        return 0;
    }
    if (n == 1) {
        if (!isfinite(v[0])) {
            return -1;
        }
        total = v[0] + 0.0;
        out[0] = 1.0;
        out[1] = total;
        out[2] = total;
        out[3] = 0.0;
        out[4] = v[0];
        out[5] = v[0];
        return 0;
    }
    if (exact_sum(NULL, 0, v, n, &total) < 0) {
        return -1;
    }
    mean = total / (double)n;
    acc.n = 0;
    for (k = 0; k < n; k++) {
        double d = v[k] - mean;
        double d2 = d * d;
        if (add_term(&acc, d2) < 0) {
            return -1;
        }
    }
    sq = round_partials(&acc) / (double)n;
    /* min()/max() keep the first of equal values: replace only on strict order. */
    lowest = highest = v[0];
    for (k = 1; k < n; k++) {
        if (v[k] < lowest) {
            lowest = v[k];
        }
        if (v[k] > highest) {
            highest = v[k];
        }
    }
    out[0] = (double)n;
    out[1] = total;
    out[2] = mean;
    out[3] = sqrt(sq);
    out[4] = lowest;
    out[5] = highest;
    return 0;
}

enum { STEP_WINDOWS = 0, STEP_SINCE_PREVIOUS = 1, STEP_RATIO_TO_MEAN = 2, STEP_HISTORY_COUNT = 3 };

/* Width of the output of one plan step; -1 when the step is not understood. */
static Py_ssize_t
step_width(PyObject *step)
{
    long kind;
    if (!PyTuple_Check(step) || PyTuple_GET_SIZE(step) < 1) {
        return -1;
    }
    kind = PyLong_AsLong(PyTuple_GET_ITEM(step, 0));
    if (kind == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    switch (kind) {
    case STEP_WINDOWS:
        if (PyTuple_GET_SIZE(step) != 2 || !PyTuple_Check(PyTuple_GET_ITEM(step, 1))) {
            return -1;
        }
        return 6 * PyTuple_GET_SIZE(PyTuple_GET_ITEM(step, 1));
    case STEP_SINCE_PREVIOUS:
        return PyTuple_GET_SIZE(step) == 2 ? 1 : -1;
    case STEP_RATIO_TO_MEAN:
    case STEP_HISTORY_COUNT:
        return 1;
    default:
        return -1;
    }
}

static int
get_i64(PyObject *obj, int64_t *out)
{
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return -1;
    }
    *out = (int64_t)v;
    return 0;
}

/*
 * aggregates(times, values, partials, count_evicted, last_evicted, event_time, value,
 *            lateness, plan) -> bytes | None
 *
 * times: buffer of int64 ('q'), values: buffer of float64 ('d'), same length, sorted as
 * EntityHistory keeps them; partials: list of float (the evicted summary's exact sum);
 * plan: tuple of steps, (0, (window_ms, ...)), (1, cap_s), (2,), (3,).
 * Returns the little-endian float64 values of the steps, in order, or None.
 */
static PyObject *
aggregates(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer tb, vb;
    PyObject *partials, *plan, *result = NULL;
    int64_t count_evicted, last_evicted, event_time, lateness, settled_end, last;
    double value, settled_sum, *out = NULL, pre[MAX_PARTIALS];
    Py_ssize_t n, index, width = 0, at = 0, k, n_pre;
    const int64_t *times;
    const double *values;
    int ok = 0;

    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "aggregates() takes 9 arguments");
        return NULL;
    }
    partials = args[2];
    plan = args[8];
    if (!PyList_Check(partials) || !PyTuple_Check(plan) || !PyFloat_CheckExact(args[6])) {
        Py_RETURN_NONE;
    }
    if (get_i64(args[3], &count_evicted) < 0 || get_i64(args[4], &last_evicted) < 0
        || get_i64(args[5], &event_time) < 0 || get_i64(args[7], &lateness) < 0) {
        Py_RETURN_NONE;
    }
    value = PyFloat_AS_DOUBLE(args[6]);
    n_pre = PyList_GET_SIZE(partials);
    if (n_pre > MAX_PARTIALS) {
        Py_RETURN_NONE;
    }
    for (k = 0; k < n_pre; k++) {
        PyObject *item = PyList_GET_ITEM(partials, k);
        if (!PyFloat_CheckExact(item)) {
            Py_RETURN_NONE;
        }
        pre[k] = PyFloat_AS_DOUBLE(item);
    }
    for (k = 0; k < PyTuple_GET_SIZE(plan); k++) {
        Py_ssize_t w = step_width(PyTuple_GET_ITEM(plan, k));
        if (w < 0) {
            Py_RETURN_NONE;
        }
        width += w;
    }
    if (PyObject_GetBuffer(args[0], &tb, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &vb, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&tb);
        return NULL;
    }
    if (tb.itemsize != 8 || vb.itemsize != 8 || tb.format == NULL || vb.format == NULL
        || strcmp(tb.format, "q") != 0 || strcmp(vb.format, "d") != 0 || tb.len != vb.len) {
        goto fallback;
    }
    times = (const int64_t *)tb.buf;
    values = (const double *)vb.buf;
    n = tb.len / 8;
    if (__builtin_sub_overflow(event_time, lateness, &settled_end)) {
        goto fallback;
    }
    index = bisect_left_q(times, settled_end, 0, n);
    /* settled_up_to(index): the evicted summary plus times[:index]. */
    if (exact_sum(pre, n_pre, values, index, &settled_sum) < 0) {
        goto fallback;
    }
    last = index ? times[index - 1] : last_evicted;
    result = PyBytes_FromStringAndSize(NULL, width * (Py_ssize_t)sizeof(double));
    if (result == NULL) {
        goto done;
    }
    out = (double *)PyBytes_AS_STRING(result);
    for (k = 0; k < PyTuple_GET_SIZE(plan); k++) {
        PyObject *step = PyTuple_GET_ITEM(plan, k);
        long kind = PyLong_AsLong(PyTuple_GET_ITEM(step, 0));
        if (kind == STEP_WINDOWS) {
            PyObject *lengths = PyTuple_GET_ITEM(step, 1);
            Py_ssize_t w, first = -1;
            double stats[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
            for (w = 0; w < PyTuple_GET_SIZE(lengths); w++) {
                int64_t length, from;
                Py_ssize_t start;
                if (get_i64(PyTuple_GET_ITEM(lengths, w), &length) < 0
                    || __builtin_sub_overflow(event_time, length, &from)) {
                    goto fallback;
                }
                start = bisect_left_q(times, from, 0, index);
                if (start != first) {
                    if (window_stats(values + start, index - start, stats) < 0) {
                        goto fallback;
                    }
                    first = start;
                }
                memcpy(out + at, stats, sizeof(stats));
                at += 6;
            }
        }
        else if (kind == STEP_SINCE_PREVIOUS) {
            double cap = PyFloat_AsDouble(PyTuple_GET_ITEM(step, 1));
            double seconds;
            int64_t gap;
            if (cap == -1.0 && PyErr_Occurred()) {
                PyErr_Clear();
                goto fallback;
            }
            if (last == NO_TIME) {
                seconds = cap;
            }
            else {
                if (__builtin_sub_overflow(event_time, last, &gap)) {
                    goto fallback;
                }
                seconds = (double)gap / 1000.0;
                if (cap < seconds) { /* min(seconds, cap): the first unless the second is less */
                    seconds = cap;
                }
            }
            if (checked_log1p(seconds, out + at) < 0) {
                goto fallback;
            }
            at += 1;
        }
        else if (kind == STEP_RATIO_TO_MEAN) {
            int64_t count = count_evicted + (int64_t)index;
            if (!count || settled_sum <= 0.0) {
                out[at] = 1.0;
            }
            else {
                double mean = settled_sum / (double)count;
                if (mean == 0.0) { /* Python raises ZeroDivisionError */
                    goto fallback;
                }
                out[at] = value / mean;
            }
            at += 1;
        }
        else { /* STEP_HISTORY_COUNT */
            int64_t count = count_evicted + (int64_t)index;
            if (count < 0 || count > ((int64_t)1 << 53)
                || checked_log1p((double)count, out + at) < 0) {
                goto fallback;
            }
            at += 1;
        }
    }
    ok = 1;
    goto done;

fallback:
    Py_CLEAR(result);
    ok = 1;
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&tb);
    PyBuffer_Release(&vb);
    if (!ok) {
        Py_XDECREF(result);
        return NULL;
    }
    return result;
}


/* -- FeatureVector records ------------------------------------------------------------ */

/* Avro long: zig-zag, then 7 bits a byte, low first. Returns the bytes written (<= 10). */
static Py_ssize_t
put_long(unsigned char *at, int64_t n)
{
    uint64_t z = ((uint64_t)n << 1) ^ (uint64_t)(n >> 63);
    Py_ssize_t k = 0;
    while (z > 0x7F) {
        at[k++] = (unsigned char)((z & 0x7F) | 0x80);
        z >>= 7;
    }
    at[k++] = (unsigned char)z;
    return k;
}

/*
 * encode_vectors(header, event_ids, entity_ids, event_times, computed_at, middle, matrix,
 *                tails) -> list[bytes] | None
 *
 * One record per row: header, then the Avro binary of the FeatureVector fields in schema
 * order: event_id and entity_id (strings), event_time and computed_at (longs), `middle`
 * (the fields that are the same in every vector, already encoded), the row of `matrix`
 * as an array of doubles, then tails[i] (the fields after `values`, already encoded).
 * None when an argument is not what this writes (the caller uses the codec instead).
 */
static PyObject *
encode_vectors(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *header, *ids, *entities, *times, *middle, *tails, *out = NULL;
    Py_buffer mb;
    Py_ssize_t n, k, i, fixed;
    int64_t computed_at;
    unsigned char computed[10];
    Py_ssize_t computed_len;

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    Py_RETURN_NONE; /* Avro doubles are little-endian: copy rows only where memory is too */
#endif
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "encode_vectors() takes 8 arguments");
        return NULL;
    }
    header = args[0];
    ids = args[1];
    entities = args[2];
    times = args[3];
    middle = args[5];
    tails = args[7];
    if (!PyBytes_CheckExact(header) || !PyBytes_CheckExact(middle) || !PyList_CheckExact(ids)
        || !PyList_CheckExact(entities) || !PyList_CheckExact(times)
        || !PyList_CheckExact(tails)) {
        Py_RETURN_NONE;
    }
    n = PyList_GET_SIZE(ids);
    if (PyList_GET_SIZE(entities) != n || PyList_GET_SIZE(times) != n
        || PyList_GET_SIZE(tails) != n || get_i64(args[4], &computed_at) < 0) {
        Py_RETURN_NONE;
    }
    if (PyObject_GetBuffer(args[6], &mb, PyBUF_FORMAT | PyBUF_ND | PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    if (mb.ndim != 2 || mb.itemsize != 8 || mb.format == NULL
        || (strcmp(mb.format, "d") != 0 && strcmp(mb.format, "<d") != 0) || mb.shape[0] != n) {
        PyBuffer_Release(&mb);
        Py_RETURN_NONE;
    }
    k = mb.shape[1];
    computed_len = put_long(computed, computed_at);
    fixed = PyBytes_GET_SIZE(header) + computed_len + PyBytes_GET_SIZE(middle) + 10 + 8 * k + 1;
    out = PyList_New(n);
    if (out == NULL) {
        goto error;
    }
    for (i = 0; i < n; i++) {
        PyObject *id = PyList_GET_ITEM(ids, i), *entity = PyList_GET_ITEM(entities, i);
        PyObject *tail = PyList_GET_ITEM(tails, i), *record;
        const char *id_s, *entity_s;
        Py_ssize_t id_n, entity_n, size;
        int64_t event_time;
        unsigned char *at;
        if (!PyUnicode_CheckExact(id) || !PyUnicode_CheckExact(entity)
            || !PyBytes_CheckExact(tail)
            || get_i64(PyList_GET_ITEM(times, i), &event_time) < 0) {
            goto fallback;
        }
        id_s = PyUnicode_AsUTF8AndSize(id, &id_n);
        entity_s = id_s == NULL ? NULL : PyUnicode_AsUTF8AndSize(entity, &entity_n);
        if (entity_s == NULL) { /* e.g. a lone surrogate: the codec words the error */
            PyErr_Clear();
            goto fallback;
        }
        size = fixed + 10 + id_n + 10 + entity_n + 10 + PyBytes_GET_SIZE(tail);
        record = PyBytes_FromStringAndSize(NULL, size);
        if (record == NULL) {
            goto error;
        }
        at = (unsigned char *)PyBytes_AS_STRING(record);
        memcpy(at, PyBytes_AS_STRING(header), PyBytes_GET_SIZE(header));
        at += PyBytes_GET_SIZE(header);
        at += put_long(at, id_n);
        memcpy(at, id_s, id_n);
        at += id_n;
        at += put_long(at, entity_n);
        memcpy(at, entity_s, entity_n);
        at += entity_n;
        at += put_long(at, event_time);
        memcpy(at, computed, computed_len);
        at += computed_len;
        memcpy(at, PyBytes_AS_STRING(middle), PyBytes_GET_SIZE(middle));
        at += PyBytes_GET_SIZE(middle);
        if (k) {
            at += put_long(at, k);
            memcpy(at, (const char *)mb.buf + i * k * 8, k * 8);
            at += k * 8;
        }
        *at++ = 0; /* end of the array's blocks */
        memcpy(at, PyBytes_AS_STRING(tail), PyBytes_GET_SIZE(tail));
        at += PyBytes_GET_SIZE(tail);
        if (_PyBytes_Resize(&record, (Py_ssize_t)(at - (unsigned char *)PyBytes_AS_STRING(record))) < 0) {
            goto error;
        }
        PyList_SET_ITEM(out, i, record);
    }
    PyBuffer_Release(&mb);
    return out;

fallback:
    Py_DECREF(out);
    PyBuffer_Release(&mb);
    Py_RETURN_NONE;
error:
    Py_XDECREF(out);
    PyBuffer_Release(&mb);
    return NULL;
}

/* fsum(buffer of float64) -> float | None: exposed for the tests. */
static PyObject *
fsum(PyObject *self, PyObject *arg)
{
    Py_buffer b;
    double total;
    int rc;
    if (PyObject_GetBuffer(arg, &b, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    if (b.itemsize != 8 || b.format == NULL || strcmp(b.format, "d") != 0) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_TypeError, "fsum() needs a buffer of float64 ('d')");
        return NULL;
    }
    rc = exact_sum(NULL, 0, (const double *)b.buf, b.len / 8, &total);
    PyBuffer_Release(&b);
    if (rc < 0) {
        Py_RETURN_NONE;
    }
    return PyFloat_FromDouble(total);
}

static PyMethodDef methods[] = {
    {"aggregates", (PyCFunction)(void (*)(void))aggregates, METH_FASTCALL,
     "aggregates(times, values, partials, count_evicted, last_evicted, event_time, value, "
     "lateness, plan) -> bytes | None"},
    {"encode_vectors", (PyCFunction)(void (*)(void))encode_vectors, METH_FASTCALL,
     "encode_vectors(header, event_ids, entity_ids, event_times, computed_at, middle, matrix, "
     "tails) -> list[bytes] | None"},
    {"fsum", fsum, METH_O, "fsum(buffer of float64) -> float | None (None: not finite)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native", "The features service's per-event aggregates and FeatureVector records in C.", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    return PyModule_Create(&module);
}
