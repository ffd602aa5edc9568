/* The compiled half of common/cloudevents.py and ingest/sink/decode.py (pure: no I/O, no clock).
 *
 * `event_from_document` is `cloudevents._event_from_document` in C, and `decode_records` is the sink's
 * per-message loop (`Decoder.decode` over a batch of aiokafka records) in C. Both decide only what is
 * plain to decide: the producers' usual forms (an RFC 3339 UTC time as `...T...Z` or `+00:00`, a
 * structured-mode message whose header set the decoder has planned). Everything else is handed to the
 * Python functions they were configured with, which stay the reference: the two must agree on every
 * input (tests/unit/test_native_events.py holds them together on generated and hostile input).
 *
 * The module holds no state of its own beyond what `configure` gives it once at import.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>

static PyObject *CloudEventType;  /* common.cloudevents.CloudEvent (a NamedTuple) */
static PyObject *parse_time;      /* cloudevents.parse_time: any time the fast reader leaves */
static PyObject *default_time_of; /* default_time -> the event's time (truncated, UTC) */
static PyObject *dumps;           /* orjson.dumps */
static PyObject *exact_float;     /* its `default` */
static PyObject *sort_keys;       /* its `option` */
static PyObject *dumps_kwnames;   /* ("default", "option") */
static PyObject *refusals;        /* exceptions that mean "refused": (EventValidationError, JSONEncodeError) */
static PyObject *null_text;       /* "null" */

static PyObject *s_id, *s_source, *s_type, *s_subject, *s_time, *s_data;
static PyObject *s_value, *s_headers, *s_timestamp, *s_offset;

static int configured(void) {
    if (CloudEventType == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "common._cevents is not configured");
        return 0;
    }
    return 1;
}

/* 1 when `t` is a subclass of tuple (a NamedTuple), else 0 with a TypeError. */
static int tuple_type(PyObject *t) {
    if (PyType_Check(t) && PyType_IsSubtype((PyTypeObject *)t, &PyTuple_Type)) return 1;
    PyErr_SetString(PyExc_TypeError, "expected a tuple type (a NamedTuple)");
    return 0;
}

/* A NamedTuple of `type` holding `n` new references (stolen, also on failure). */
static PyObject *named_tuple(PyObject *type, Py_ssize_t n, PyObject **items) {
    PyTypeObject *tp = (PyTypeObject *)type;
    PyObject *obj = tp->tp_alloc(tp, n);
    if (obj == NULL) {
        for (Py_ssize_t i = 0; i < n; i++) Py_DECREF(items[i]);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) PyTuple_SET_ITEM(obj, i, items[i]);
    return obj;
}

/* str.isspace: every character is whitespace (and there is at least one). */
static int is_space(PyObject *s) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (n == 0) return 0;
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, i))) return 0;
    }
    return 1;
}

static int digits(const char *p, int n, int *out) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return 0;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return 1;
}

static int days_in_month(int year, int month) {
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (month == 2 && (year % 4 == 0 && (year % 100 != 0 || year % 400 == 0))) return 29;
    return days[month - 1];
}

/* `YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|+00:00)` between 1970 and 2200 as a UTC datetime truncated to the
 * millisecond; NULL without an error for anything else (parse_time then decides, and says why). */
static PyObject *fast_time(PyObject *text) {
    if (!PyUnicode_IS_ASCII(text)) return NULL;
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    if (n < 20 || n > 35) return NULL;
    const char *p = (const char *)PyUnicode_DATA(text);
    int year, month, day, hour, minute, second, millis = 0;
    if (!digits(p, 4, &year) || p[4] != '-' || !digits(p + 5, 2, &month) || p[7] != '-' ||
        !digits(p + 8, 2, &day) || p[10] != 'T' || !digits(p + 11, 2, &hour) || p[13] != ':' ||
        !digits(p + 14, 2, &minute) || p[16] != ':' || !digits(p + 17, 2, &second))
        return NULL;
    Py_ssize_t i = 19;
    if (p[i] == '.') {
        Py_ssize_t start = ++i;
        while (i < n && p[i] >= '0' && p[i] <= '9') i++;
        Py_ssize_t count = i - start;
        if (count < 1 || count > 9) return NULL;
        for (Py_ssize_t k = 0; k < 3; k++) millis = millis * 10 + (k < count ? p[start + k] - '0' : 0);
    }
    Py_ssize_t rest = n - i;
    if (!((rest == 1 && p[i] == 'Z') || (rest == 6 && memcmp(p + i, "+00:00", 6) == 0))) return NULL;
    if (year < 1970 || year >= 2200 || month < 1 || month > 12 || day < 1 || day > days_in_month(year, month) ||
        hour > 23 || minute > 59 || second > 59)
        return NULL;
    return PyDateTimeAPI->DateTime_FromDateAndTime(year, month, day, hour, minute, second, millis * 1000,
                                                   PyDateTime_TimeZone_UTC, PyDateTimeAPI->DateTimeType);
}

/* Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar (H. Hinnant's
 * civil_from_days, for days >= 0). */
static void civil_from_days(long long z, int *year, int *month, int *day) {
    z += 719468;
    long long era = z / 146097;
    long long doe = z - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long long mp = (5 * doy + 2) / 153;
    *day = (int)(doy - (153 * mp + 2) / 5 + 1);
    *month = (int)(mp < 10 ? mp + 3 : mp - 9);
    *year = (int)(yoe + era * 400 + (*month <= 2));
}

#define MILLIS_TO_2200 7258118400000LL /* 2200-01-01T00:00:00Z */

/* A Kafka timestamp (ms since the epoch) between 1970 and 2200 as a UTC datetime; NULL without an error
 * for anything else (`timestamp_to_datetime` decides those). */
static PyObject *kafka_time_of(PyObject *timestamp) {
    if (!PyLong_CheckExact(timestamp)) return NULL;
    int overflow = 0;
    long long ms = PyLong_AsLongLongAndOverflow(timestamp, &overflow);
    if (overflow || ms < 0 || ms >= MILLIS_TO_2200) {
        if (PyErr_Occurred()) PyErr_Clear();
        return NULL;
    }
    long long days = ms / 86400000LL, rest = ms % 86400000LL;
    int year, month, day;
    civil_from_days(days, &year, &month, &day);
    int hour = (int)(rest / 3600000), minute = (int)(rest / 60000 % 60), second = (int)(rest / 1000 % 60);
    return PyDateTimeAPI->DateTime_FromDateAndTime(year, month, day, hour, minute, second, (int)(rest % 1000) * 1000,
                                                   PyDateTime_TimeZone_UTC, PyDateTimeAPI->DateTimeType);
}

static PyObject *kafka_time_py(PyObject *self, PyObject *timestamp) {
    PyObject *at = kafka_time_of(timestamp);
    if (at == NULL && !PyErr_Occurred()) Py_RETURN_NONE;
    return at;
}

/* 1 when the pending exception is one of `refusals` (cleared), 0 otherwise (left pending). */
static int refused(void) {
    if (PyErr_ExceptionMatches(refusals)) {
        PyErr_Clear();
        return 1;
    }
    return 0;
}

/* The event of a decoded EventDocument: a new CloudEvent, Py_None when a rule refuses it (or it has no time
 * and no default), NULL with an exception where the Python function would raise. */
static PyObject *event_of(PyObject *doc, PyObject *default_time) {
    PyObject *items[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
    PyObject *names[4] = {s_id, s_source, s_type, s_subject};
    PyObject *raw = NULL;
    for (int k = 0; k < 4; k++) {
        items[k] = PyObject_GetAttr(doc, names[k]);
        if (items[k] == NULL) goto error;
        if (!PyUnicode_Check(items[k])) {
            PyErr_SetString(PyExc_TypeError, "an attribute of the document is not text");
            goto error;
        }
    }
    for (int k = 0; k < 4; k++) {
        if (is_space(items[k])) goto refuse;
    }
    raw = PyObject_GetAttr(doc, s_time);
    if (raw == NULL) goto error;
    if (raw != Py_None) {
        items[4] = PyUnicode_Check(raw) ? fast_time(raw) : NULL;
        if (items[4] == NULL) {
            if (PyErr_Occurred()) goto error;
            items[4] = PyObject_CallOneArg(parse_time, raw);
        }
    } else if (default_time != Py_None) {
        items[4] = PyObject_CallOneArg(default_time_of, default_time);
        if (items[4] == NULL) goto error; /* as in Python: outside the refusals' try */
    } else {
        goto refuse;
    }
    Py_CLEAR(raw);
    if (items[4] == NULL) goto check;
    raw = PyObject_GetAttr(doc, s_data);
    if (raw == NULL) goto error;
    if (raw == Py_None) {
        items[5] = Py_NewRef(null_text);
    } else {
        PyObject *args[3] = {raw, exact_float, sort_keys};
        PyObject *text = PyObject_Vectorcall(dumps, args, 1, dumps_kwnames);
        if (text == NULL) goto check;
        if (!PyBytes_Check(text)) {
            Py_DECREF(text);
            PyErr_SetString(PyExc_TypeError, "dumps did not return bytes");
            goto error;
        }
        items[5] = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text), NULL);
        Py_DECREF(text);
        if (items[5] == NULL) goto error;
    }
    Py_CLEAR(raw);
    return named_tuple(CloudEventType, 6, items);
check:
    if (!refused()) goto error;
refuse:
    for (int k = 0; k < 6; k++) Py_XDECREF(items[k]);
    Py_XDECREF(raw);
    Py_RETURN_NONE;
error:
    for (int k = 0; k < 6; k++) Py_XDECREF(items[k]);
    Py_XDECREF(raw);
    return NULL;
}

static PyObject *event_from_document(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "event_from_document(doc, default_time)");
        return NULL;
    }
    if (!configured()) return NULL;
    return event_of(args[0], args[1]);
}

static PyObject *fast_time_py(PyObject *self, PyObject *text) {
    if (!PyUnicode_Check(text)) Py_RETURN_NONE;
    PyObject *at = fast_time(text);
    if (at == NULL && !PyErr_Occurred()) Py_RETURN_NONE;
    return at;
}

/* A value from a memo dict, or from its filler (which memoises) on a miss. New reference; NULL with an
 * exception when the key cannot be hashed or the filler raised. */
static PyObject *memo(PyObject *dict, PyObject *key, PyObject *fill) {
    PyObject *found = PyDict_GetItemWithError(dict, key);
    if (found != NULL) return Py_NewRef(found);
    if (PyErr_Occurred()) return NULL;
    return PyObject_CallOneArg(fill, key);
}

/* The structured-mode fast path of `Decoder.decode` for one record: a new Decoded, or NULL (no exception
 * left pending) when the record needs the Python decoder. Raises only what is not an Exception. */
typedef struct {
    PyObject *timestamp; /* the last Kafka timestamp converted (messages produced together share theirs) */
    PyObject *at;        /* its datetime */
} TimeCache;

static PyObject *cached_kafka_time(TimeCache *cache, PyObject *timestamp) {
    if (cache->timestamp != NULL && PyLong_CheckExact(timestamp) &&
        PyObject_RichCompareBool(cache->timestamp, timestamp, Py_EQ) == 1)
        return Py_NewRef(cache->at);
    PyObject *at = kafka_time_of(timestamp);
    if (at != NULL) {
        Py_XSETREF(cache->timestamp, Py_NewRef(timestamp));
        Py_XSETREF(cache->at, Py_NewRef(at));
    }
    return at;
}

static PyObject *fast_decoded(PyObject *value, PyObject *headers, PyObject *timestamp, PyObject *plans,
                              PyObject *plan_of, TimeCache *times, PyObject *document, PyObject *decoded_type,
                              Py_ssize_t max_value, Py_ssize_t max_headers) {
    PyObject *plan = NULL, *doc = NULL, *kafka_time = NULL, *event = NULL;
    if (!PyTuple_CheckExact(headers) || PyTuple_GET_SIZE(headers) > max_headers || !PyBytes_CheckExact(value) ||
        PyBytes_GET_SIZE(value) == 0 || PyBytes_GET_SIZE(value) > max_value)
        return NULL;
    plan = memo(plans, headers, plan_of);
    if (plan == NULL) goto fail;
    if (!PyTuple_CheckExact(plan) || PyTuple_GET_SIZE(plan) != 2) goto fail;
    doc = PyObject_CallOneArg(document, value);
    if (doc == NULL || doc == Py_None) goto fail;
    kafka_time = cached_kafka_time(times, timestamp);
    if (kafka_time == NULL) goto fail; /* outside 1970-2200 or not an int: the Python decoder decides */
    PyObject *ingested_at = PyTuple_GET_ITEM(plan, 1);
    if (ingested_at == Py_None) ingested_at = kafka_time;
    if (ingested_at == Py_None) goto fail;
    event = event_of(doc, kafka_time);
    if (event == NULL || event == Py_None) goto fail;
    PyObject *items[3] = {Py_NewRef(PyTuple_GET_ITEM(plan, 0)), event, Py_NewRef(ingested_at)};
    PyObject *decoded = named_tuple(decoded_type, 3, items);
    Py_DECREF(plan);
    Py_DECREF(doc);
    Py_DECREF(kafka_time);
    return decoded;
fail:
    Py_XDECREF(plan);
    Py_XDECREF(doc);
    Py_XDECREF(kafka_time);
    Py_XDECREF(event);
    if (PyErr_Occurred() && PyErr_ExceptionMatches(PyExc_Exception)) PyErr_Clear();
    return NULL;
}

/* decode_records(records, plans, plan_of, document, decode, decoded_type, item_type, max_value,
 *                max_headers) -> (items, rejected, offsets, timestamps, values)
 *
 * The Decoder's memo of header sets and its filler (plans, plan_of: header set -> (namespace,
 * ingested_at or None)), the compiled schema's `decode` (document) and
 * `Decoder.decode` for any record the fast path leaves. items: an Item(offset, Decoded) per decoded record,
 * in order; rejected: (index, Malformed) per record the decoder refused; offsets, timestamps, values: the
 * records' columns (for the batch digest). */
static PyObject *decode_records(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError,
                        "decode_records(records, plans, plan_of, document, decode, decoded_type, item_type, "
                        "max_value, max_headers)");
        return NULL;
    }
    if (!configured()) return NULL;
    PyObject *records = args[0], *plans = args[1], *plan_of = args[2], *document = args[3], *decode = args[4];
    PyObject *decoded_type = args[5], *item_type = args[6];
    if (!PyList_CheckExact(records) || !PyDict_CheckExact(plans)) {
        PyErr_SetString(PyExc_TypeError, "records must be a list, plans a dict");
        return NULL;
    }
    if (!tuple_type(decoded_type) || !tuple_type(item_type)) return NULL;
    Py_ssize_t max_value = PyLong_AsSsize_t(args[7]), max_headers = PyLong_AsSsize_t(args[8]);
    if (PyErr_Occurred()) return NULL;
    TimeCache times = {NULL, NULL};
    Py_ssize_t n = PyList_GET_SIZE(records);
    PyObject *items = PyList_New(0), *rejected = PyList_New(0);
    PyObject *offsets = PyList_New(n), *timestamps = PyList_New(n), *values = PyList_New(n);
    if (items == NULL || rejected == NULL || offsets == NULL || timestamps == NULL || values == NULL) goto error;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *rec = PyList_GET_ITEM(records, i);
        PyObject *value = PyObject_GetAttr(rec, s_value);
        if (value == NULL) goto error;
        PyList_SET_ITEM(values, i, value);
        PyObject *timestamp = PyObject_GetAttr(rec, s_timestamp);
        if (timestamp == NULL) goto error;
        PyList_SET_ITEM(timestamps, i, timestamp);
        PyObject *offset = PyObject_GetAttr(rec, s_offset);
        if (offset == NULL) goto error;
        PyList_SET_ITEM(offsets, i, offset);
        PyObject *headers = PyObject_GetAttr(rec, s_headers);
        if (headers == NULL) goto error;
        PyObject *decoded = fast_decoded(value, headers, timestamp, plans, plan_of, &times, document,
                                         decoded_type, max_value, max_headers);
        if (decoded == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(headers);
                goto error;
            }
            PyObject *call[3] = {value, headers, timestamp};
            decoded = PyObject_Vectorcall(decode, call, 3, NULL);
        }
        Py_DECREF(headers);
        if (decoded == NULL) goto error;
        PyObject *kept;
        if (Py_TYPE(decoded) == (PyTypeObject *)decoded_type) {
            PyObject *pair[2] = {Py_NewRef(offset), decoded};
            kept = named_tuple(item_type, 2, pair);
            if (kept == NULL) goto error;
            if (PyList_Append(items, kept) < 0) {
                Py_DECREF(kept);
                goto error;
            }
        } else {
            kept = Py_BuildValue("(nN)", i, decoded);
            if (kept == NULL) goto error;
            if (PyList_Append(rejected, kept) < 0) {
                Py_DECREF(kept);
                goto error;
            }
        }
        Py_DECREF(kept);
    }
    Py_XDECREF(times.timestamp);
    Py_XDECREF(times.at);
    return Py_BuildValue("(NNNNN)", items, rejected, offsets, timestamps, values);
error:
    Py_XDECREF(times.timestamp);
    Py_XDECREF(times.at);
    Py_XDECREF(items);
    Py_XDECREF(rejected);
    Py_XDECREF(offsets);
    Py_XDECREF(timestamps);
    Py_XDECREF(values);
    return NULL;
}

static PyObject *configure(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"cloud_event", "parse_time", "default_time", "dumps",
                               "exact_float", "sort_keys", "refusals", NULL};
    PyObject *objs[7];
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOO:configure", keywords, &objs[0], &objs[1], &objs[2],
                                     &objs[3], &objs[4], &objs[5], &objs[6]))
        return NULL;
    if (!tuple_type(objs[0])) return NULL;
    if (!PyTuple_Check(objs[6])) {
        PyErr_SetString(PyExc_TypeError, "refusals must be a tuple of exception types");
        return NULL;
    }
    PyObject **slots[7] = {&CloudEventType, &parse_time, &default_time_of, &dumps,
                           &exact_float, &sort_keys, &refusals};
    for (int k = 0; k < 7; k++) Py_XSETREF(*slots[k], Py_NewRef(objs[k]));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_VARARGS | METH_KEYWORDS,
     "Give the module the Python objects it builds and falls back on (once, at import)."},
    {"event_from_document", (PyCFunction)(void (*)(void))event_from_document, METH_FASTCALL,
     "event_from_document(doc, default_time) -> CloudEvent | None"},
    {"decode_records", (PyCFunction)(void (*)(void))decode_records, METH_FASTCALL,
     "decode_records(records, plans, plan_of, document, decode, decoded_type, item_type, max_value, "
     "max_headers)"},
    {"kafka_time", (PyCFunction)kafka_time_py, METH_O,
     "A Kafka timestamp (ms) as a UTC datetime, or None where timestamp_to_datetime decides."},
    {"fast_time", (PyCFunction)fast_time_py, METH_O,
     "The fast reader of RFC 3339 UTC times: a datetime, or None where parse_time decides."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cevents", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__cevents(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) return NULL;
    PyObject **names[] = {&s_id, &s_source, &s_type, &s_subject, &s_time, &s_data,
                          &s_value, &s_headers, &s_timestamp, &s_offset, &null_text};
    const char *texts[] = {"id", "source", "type", "subject", "time", "data",
                           "value", "headers", "timestamp", "offset", "null"};
    for (int k = 0; k < 11; k++) {
        *names[k] = PyUnicode_InternFromString(texts[k]);
        if (*names[k] == NULL) return NULL;
    }
    /* interned: orjson tells its keywords apart by identity */
    PyObject *s_default = PyUnicode_InternFromString("default"), *s_option = PyUnicode_InternFromString("option");
    if (s_default == NULL || s_option == NULL) return NULL;
    dumps_kwnames = PyTuple_Pack(2, s_default, s_option);
    Py_DECREF(s_default);
    Py_DECREF(s_option);
    if (dumps_kwnames == NULL) return NULL;
    return PyModule_Create(&module);
}
