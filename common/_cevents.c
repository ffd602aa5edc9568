/* The compiled half of common/cloudevents.py and of the sink's decode and prepare passes (pure: no I/O,
 * no clock).
 *
 * `event_from_document` is `cloudevents._event_from_document` in C; `decode_records` is the sink's
 * per-message loop (`Decoder.decode` over a batch of aiokafka records); `prepare_items` is the writer's
 * prepare pass (`Preparer._prepare`). They decide only what is plain to decide: the producers' usual forms
 * (a structured-mode document of the schema's attributes without escapes, binary-mode `ce_` headers, an
 * RFC 3339 UTC time as `...T...Z` or `+00:00`, `data` already canonical or canonical but for the order of
 * its own keys). Everything else is handed to the Python functions they were configured with, which stay
 * the reference: the two must agree on every input (tests/unit/test_native_events.py holds them together
 * on generated and hostile input).
 *
 * The module holds no state of its own beyond what `configure` and `configure_sink` give it once at import.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <math.h>
#include <stdint.h>

static PyObject *CloudEventType;  /* common.cloudevents.CloudEvent (a NamedTuple) */
static PyObject *parse_time;      /* cloudevents.parse_time: any time the fast reader leaves */
static PyObject *default_time_of; /* default_time -> the event's time (truncated, UTC) */
static PyObject *dumps;           /* orjson.dumps */
static PyObject *exact_float;     /* its `default` */
static PyObject *sort_keys;       /* its `option` */
static PyObject *dumps_kwnames;   /* ("default", "option") */
static PyObject *refusals;        /* exceptions that mean "refused": (EventValidationError, JSONEncodeError) */
static PyObject *null_text;       /* "null" */
static long long min_time_ms, max_time_ms; /* MIN_EVENT_TIME <= an event's time < MAX_EVENT_TIME, in ms */

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

/* Days from 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static long long days_from_civil(long long y, long long m, long long d) {
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    long long yoe = y - era * 400;
    long long doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    long long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in_month(int year, int month) {
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (month == 2 && (year % 4 == 0 && (year % 100 != 0 || year % 400 == 0))) return 29;
    return days[month - 1];
}

/* `YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|+00:00)` within the event time bounds as a UTC datetime truncated to the
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
    if (year < 1 || month < 1 || month > 12 || day < 1 || day > days_in_month(year, month) || hour > 23 ||
        minute > 59 || second > 59)
        return NULL;
    long long ms = ((days_from_civil(year, month, day) * 24 + hour) * 60 + minute) * 60000LL + second * 1000LL + millis;
    if (ms < min_time_ms || ms >= max_time_ms) return NULL;
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

/* A Kafka timestamp (ms since the epoch) within the event time bounds as a UTC datetime; NULL without an
 * error for anything else (`timestamp_to_datetime` decides those). */
static PyObject *kafka_time_of(PyObject *timestamp) {
    if (!PyLong_CheckExact(timestamp)) return NULL;
    int overflow = 0;
    long long ms = PyLong_AsLongLongAndOverflow(timestamp, &overflow);
    if (overflow || ms < 0 || ms < min_time_ms || ms >= max_time_ms) {
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
    if (!configured()) return NULL;
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

/* The event of its parts: the four text attributes (new references, stolen), the raw time (a str, or
 * Py_None) and the data (borrowed): decoded (a dict or Py_None), or a str that is its canonical text.
 * A new CloudEvent, Py_None when a rule refuses it (or it has no time and no default), NULL with an
 * exception where `_event_from_document` would raise. */
static PyObject *event_of_parts(PyObject **attributes, PyObject *raw_time, PyObject *data, PyObject *default_time) {
    PyObject *items[6] = {attributes[0], attributes[1], attributes[2], attributes[3], NULL, NULL};
    for (int k = 0; k < 4; k++) {
        if (!PyUnicode_Check(items[k])) {
            PyErr_SetString(PyExc_TypeError, "an attribute of the document is not text");
            goto error;
        }
    }
    for (int k = 0; k < 4; k++) {
        if (is_space(items[k])) goto refuse;
    }
    if (raw_time != Py_None) {
        items[4] = PyUnicode_Check(raw_time) ? fast_time(raw_time) : NULL;
        if (items[4] == NULL) {
            if (PyErr_Occurred()) goto error;
            items[4] = PyObject_CallOneArg(parse_time, raw_time);
            if (items[4] == NULL) goto check;
        }
    } else if (default_time != Py_None) {
        items[4] = PyObject_CallOneArg(default_time_of, default_time);
        if (items[4] == NULL) goto error; /* as in Python: outside the refusals' try */
    } else {
        goto refuse;
    }
    if (data == Py_None) {
        items[5] = Py_NewRef(null_text);
    } else if (PyUnicode_CheckExact(data)) { /* already the canonical text (`canonical_data`) */
        items[5] = Py_NewRef(data);
    } else {
        PyObject *args[3] = {data, exact_float, sort_keys};
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
    return named_tuple(CloudEventType, 6, items);
check:
    if (!refused()) goto error;
refuse:
    for (int k = 0; k < 6; k++) Py_XDECREF(items[k]);
    Py_RETURN_NONE;
error:
    for (int k = 0; k < 6; k++) Py_XDECREF(items[k]);
    return NULL;
}

/* The event of a decoded EventDocument (as `event_of_parts`). */
static PyObject *event_of(PyObject *doc, PyObject *default_time) {
    PyObject *attributes[4] = {NULL, NULL, NULL, NULL};
    PyObject *names[4] = {s_id, s_source, s_type, s_subject};
    PyObject *raw_time = NULL, *data = NULL, *event = NULL;
    for (int k = 0; k < 4; k++) {
        attributes[k] = PyObject_GetAttr(doc, names[k]);
        if (attributes[k] == NULL) goto error;
    }
    raw_time = PyObject_GetAttr(doc, s_time);
    if (raw_time == NULL) goto error;
    data = PyObject_GetAttr(doc, s_data);
    if (data == NULL) goto error;
    event = event_of_parts(attributes, raw_time, data, default_time);
    Py_DECREF(raw_time);
    Py_DECREF(data);
    return event;
error:
    for (int k = 0; k < 4; k++) Py_XDECREF(attributes[k]);
    Py_XDECREF(raw_time);
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
    if (!configured()) return NULL;
    if (!PyUnicode_Check(text)) Py_RETURN_NONE;
    PyObject *at = fast_time(text);
    if (at == NULL && !PyErr_Occurred()) Py_RETURN_NONE;
    return at;
}

/* --- the sink's loop ---------------------------------------------------------------------------------- */

static PyObject *document_decode;   /* the compiled schema: EventDocument from a structured-mode value */
static PyObject *data_decode;       /* the data of binary mode: a JSON object or null */
static Py_ssize_t max_value_bytes;  /* a larger value is refused (by the Python decoder) */
static Py_ssize_t max_plan_headers; /* header sets up to this size go through the structured-mode memo */
static Py_ssize_t max_header_bytes; /* a longer header value is refused (by the Python decoder) */
static Py_ssize_t max_attribute_length;
static PyObject *to_millis_of; /* common.clock.to_millis, for a datetime that is not UTC */
static PyObject *s_plans, *s_plan_of, *s_namespaces, *s_namespace_of, *s_ingested, *s_ingested_of, *s_decode,
    *s_default_namespace;

/* The headers binary mode reads, by their index in `header_names`: the seven `ce_` attributes, then the
 * three header names `configure_sink` fills in (content type, namespace, ingested_at). */
enum { H_ID, H_SOURCE, H_SPECVERSION, H_TYPE, H_SUBJECT, H_TIME, H_DATACONTENTTYPE, H_CONTENT_TYPE, H_NAMESPACE,
       H_INGESTED_AT, H_COUNT };
static char header_names[H_COUNT][32] = {"ce_id",   "ce_source", "ce_specversion", "ce_type", "ce_subject",
                                         "ce_time", "ce_datacontenttype"};
static Py_ssize_t header_lengths[H_COUNT];

/* A value from a memo dict, or from its filler (which memoises) on a miss. New reference; NULL with an
 * exception when the key cannot be hashed or the filler raised. */
static PyObject *memo(PyObject *dict, PyObject *key, PyObject *fill) {
    PyObject *found = PyDict_GetItemWithError(dict, key);
    if (found != NULL) return Py_NewRef(found);
    if (PyErr_Occurred()) return NULL;
    return PyObject_CallOneArg(fill, key);
}

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

/* What one batch decodes with: the Decoder's memos and their fillers (read once per batch). */
typedef struct {
    PyObject *plans, *plan_of;           /* header set -> (namespace, ingested_at or None) | None */
    PyObject *namespaces, *namespace_of; /* namespace header value -> namespace */
    PyObject *ingested, *ingested_of;    /* ingested_at header value -> datetime */
    PyObject *decode;                    /* Decoder.decode: the reference, for any record the fast paths leave */
    PyObject *default_namespace;
    PyObject *decoded_type;
    TimeCache times;
    PyObject *last_headers, *last_plan; /* the last header set planned (a producer sends the same few) */
} Sink;

static void sink_clear(Sink *sink) {
    PyObject **refs[] = {&sink->plans,    &sink->plan_of,     &sink->namespaces,        &sink->namespace_of,
                         &sink->ingested, &sink->ingested_of, &sink->decode,            &sink->default_namespace,
                         &sink->times.timestamp, &sink->times.at, &sink->last_headers, &sink->last_plan};
    for (size_t k = 0; k < sizeof(refs) / sizeof(refs[0]); k++) Py_CLEAR(*refs[k]);
}

static int sink_open(Sink *sink, PyObject *decoder, PyObject *decoded_type) {
    memset(sink, 0, sizeof(*sink));
    sink->decoded_type = decoded_type;
    PyObject **refs[] = {&sink->plans,    &sink->plan_of,     &sink->namespaces, &sink->namespace_of,
                         &sink->ingested, &sink->ingested_of, &sink->decode,     &sink->default_namespace};
    PyObject *names[] = {s_plans,    s_plan_of,     s_namespaces, s_namespace_of,
                         s_ingested, s_ingested_of, s_decode,     s_default_namespace};
    for (size_t k = 0; k < sizeof(refs) / sizeof(refs[0]); k++) {
        *refs[k] = PyObject_GetAttr(decoder, names[k]);
        if (*refs[k] == NULL) goto error;
    }
    if (!PyDict_CheckExact(sink->plans) || !PyDict_CheckExact(sink->namespaces) ||
        !PyDict_CheckExact(sink->ingested) || !PyUnicode_Check(sink->default_namespace)) {
        PyErr_SetString(PyExc_TypeError, "the decoder's memos must be dicts, its default namespace text");
        goto error;
    }
    return 1;
error:
    sink_clear(sink);
    return 0;
}

/* Leave the record to the Python decoder: clear what went wrong (an Exception: the decoder meets it again
 * and decides), keep anything else (MemoryError is an Exception too, and meets it again as well). */
static PyObject *leave(void) {
    if (PyErr_Occurred() && PyErr_ExceptionMatches(PyExc_Exception)) PyErr_Clear();
    return NULL;
}

/* --- plain JSON: the forms producers send, read without building what is thrown away -------------------- */

#define CANONICAL_MAX_DEPTH 32

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* A JSON string at p (at its opening quote) with no escape and no control character: its contents in
 * [*start, *start + *len), the pointer past its closing quote; NULL otherwise. (UTF-8 is checked where the
 * text is made.) */
static const char *plain_string(const char *p, const char *end, const char **start, Py_ssize_t *len) {
    if (p >= end || *p != '"') return NULL;
    const char *s = ++p;
    while (p < end && *p != '"') {
        if (*p == '\\' || (unsigned char)*p < 0x20) return NULL;
        p++;
    }
    if (p >= end) return NULL;
    *start = s;
    *len = p - s;
    return p + 1;
}

static const char *canonical_value(const char *p, const char *end, int depth);

/* An integer as orjson writes it: -?(0|[1-9][0-9]*), not "-0", at most 18 digits (within 64 bits), and not
 * the start of a float. */
static const char *canonical_number(const char *p, const char *end) {
    const char *q = p;
    if (q < end && *q == '-') q++;
    const char *digits_start = q;
    if (q >= end || *q < '0' || *q > '9') return NULL;
    if (*q == '0') {
        q++;
        if (q - p == 2) return NULL; /* "-0" */
    } else {
        while (q < end && *q >= '0' && *q <= '9') q++;
    }
    if (q - digits_start > 18) return NULL;
    if (q < end && (*q == '.' || *q == 'e' || *q == 'E' || (*q >= '0' && *q <= '9'))) return NULL;
    return q;
}

static int key_before(const char *a, Py_ssize_t na, const char *b, Py_ssize_t nb) {
    int c = memcmp(a, b, (size_t)(na < nb ? na : nb));
    return c < 0 || (c == 0 && na < nb);
}

/* An object as orjson writes it with sorted keys: no whitespace, keys in strictly increasing byte order
 * (UTF-8's order is the code points'), canonical values. */
static const char *canonical_object(const char *p, const char *end, int depth) {
    p++; /* '{' */
    if (p < end && *p == '}') return p + 1;
    const char *last = NULL;
    Py_ssize_t last_len = 0;
    for (;;) {
        const char *key;
        Py_ssize_t key_len;
        p = plain_string(p, end, &key, &key_len);
        if (p == NULL) return NULL;
        if (last != NULL && !key_before(last, last_len, key, key_len)) return NULL;
        last = key;
        last_len = key_len;
        if (p >= end || *p != ':') return NULL;
        p = canonical_value(p + 1, end, depth);
        if (p == NULL || p >= end) return NULL;
        if (*p == '}') return p + 1;
        if (*p != ',') return NULL;
        p++;
    }
}

static const char *canonical_array(const char *p, const char *end, int depth) {
    p++; /* '[' */
    if (p < end && *p == ']') return p + 1;
    for (;;) {
        p = canonical_value(p, end, depth);
        if (p == NULL || p >= end) return NULL;
        if (*p == ']') return p + 1;
        if (*p != ',') return NULL;
        p++;
    }
}

/* A value exactly as `orjson.dumps(..., option=OPT_SORT_KEYS)` writes what it decodes to; NULL for anything
 * else (floats, escapes, whitespace, unsorted or repeated keys, deep nesting: they are decoded and written
 * again by the Python path's rules). */
static const char *canonical_value(const char *p, const char *end, int depth) {
    if (p >= end) return NULL;
    switch (*p) {
    case '{':
        return depth >= CANONICAL_MAX_DEPTH ? NULL : canonical_object(p, end, depth + 1);
    case '[':
        return depth >= CANONICAL_MAX_DEPTH ? NULL : canonical_array(p, end, depth + 1);
    case '"': {
        const char *s;
        Py_ssize_t n;
        return plain_string(p, end, &s, &n);
    }
    case 't':
        return end - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
    case 'f':
        return end - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
    case 'n':
        return end - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
    default:
        return canonical_number(p, end);
    }
}

#define DATA_MAX_MEMBERS 64

typedef struct {
    const char *key, *member; /* the key's text; the member from its opening quote to the end of its value */
    Py_ssize_t key_len, member_len;
} Member;

/* The data object at p as its canonical text (a new str), when its values are already canonical and only
 * the order of its own keys differs from sorted (as a producer's map gives them): its members sorted by key
 * and joined. NULL without an exception otherwise (repeated keys, more than DATA_MAX_MEMBERS members, a
 * value not canonical, not UTF-8), with *after set past the object when the text is made. */
static PyObject *data_text(const char *p, const char *end, const char **after) {
    const char *start = p;
    Member members[DATA_MAX_MEMBERS];
    int n = 0, sorted = 1;
    p++; /* '{' */
    if (p < end && *p == '}') {
        *after = p + 1;
        return PyUnicode_FromStringAndSize("{}", 2);
    }
    for (;;) {
        if (n == DATA_MAX_MEMBERS) return NULL;
        Member *m = &members[n];
        m->member = p;
        p = plain_string(p, end, &m->key, &m->key_len);
        if (p == NULL || p >= end || *p != ':') return NULL;
        p = canonical_value(p + 1, end, 1);
        if (p == NULL || p >= end) return NULL;
        m->member_len = p - m->member;
        if (n > 0 && !key_before(members[n - 1].key, members[n - 1].key_len, m->key, m->key_len)) sorted = 0;
        n++;
        if (*p == '}') break;
        if (*p != ',') return NULL;
        p++;
    }
    *after = p + 1;
    if (sorted) {
        PyObject *text = PyUnicode_DecodeUTF8(start, *after - start, NULL);
        if (text == NULL) PyErr_Clear();
        return text;
    }
    for (int i = 1; i < n; i++) { /* insertion sort: a handful of members */
        Member m = members[i];
        int j = i - 1;
        while (j >= 0 && key_before(m.key, m.key_len, members[j].key, members[j].key_len)) {
            members[j + 1] = members[j];
            j--;
        }
        members[j + 1] = m;
    }
    for (int i = 1; i < n; i++) { /* a repeated key: the schema's decoder keeps the last one */
        if (!key_before(members[i - 1].key, members[i - 1].key_len, members[i].key, members[i].key_len)) return NULL;
    }
    Py_ssize_t size = *after - start; /* the same members and separators, reordered */
    char stack[1024];
    char *out = size <= (Py_ssize_t)sizeof(stack) ? stack : PyMem_Malloc((size_t)size);
    if (out == NULL) {
        PyErr_Clear();
        return NULL;
    }
    char *q = out;
    *q++ = '{';
    for (int i = 0; i < n; i++) {
        if (i > 0) *q++ = ',';
        memcpy(q, members[i].member, (size_t)members[i].member_len);
        q += members[i].member_len;
    }
    *q++ = '}';
    PyObject *text = PyUnicode_DecodeUTF8(out, q - out, NULL);
    if (out != stack) PyMem_Free(out);
    if (text == NULL) PyErr_Clear();
    return text;
}

/* The end of the JSON object or array at p (matching brackets, strings and their escapes skipped), NULL when
 * the text ends first. Not a validator: the schema's decoder reads what it delimits. */
static const char *skip_composite(const char *p, const char *end) {
    int depth = 0;
    while (p < end) {
        char c = *p++;
        if (c == '"') {
            while (p < end && *p != '"') p += *p == '\\' ? 2 : 1;
            if (p >= end) return NULL;
            p++;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (--depth == 0) return p;
        }
    }
    return NULL;
}

/* `data` as stored (the canonical JSON text) straight from its bytes when they already are that text: a new
 * str, Py_None (new reference) for `null`; NULL without an exception when they are not (decode them). */
static PyObject *canonical_data(const char *p, Py_ssize_t n) {
    const char *end = p + n;
    if (n == 4 && memcmp(p, "null", 4) == 0) return Py_NewRef(Py_None);
    const char *after = NULL;
    if (n < 2 || *p != '{') return NULL;
    PyObject *text = data_text(p, end, &after); /* not UTF-8: the schema refuses it, and says why */
    if (text != NULL && after != end) Py_CLEAR(text);
    return text;
}

/* The event attributes the plain reader fills, by their index in `attribute_keys`. */
enum { A_ID, A_SOURCE, A_SPECVERSION, A_TYPE, A_SUBJECT, A_TIME, A_DATACONTENTTYPE, A_DATA, A_COUNT };
static const char *attribute_keys[A_COUNT] = {"id",   "source",          "specversion", "type",
                                              "subject", "time", "datacontenttype", "data"};

static int attribute_key(const char *key, Py_ssize_t n) {
    for (int k = 0; k < A_COUNT; k++) {
        if ((Py_ssize_t)strlen(attribute_keys[k]) == n && memcmp(attribute_keys[k], key, (size_t)n) == 0) return k;
    }
    return -1;
}

/* An attribute's text as the schema would give it, NULL (no exception pending) for anything it would
 * refuse or its reader leaves: empty, more than `max_bytes`, not UTF-8, past the attribute length. */
static PyObject *attribute_of(const char *s, Py_ssize_t n, Py_ssize_t max_bytes) {
    if (n == 0 || n > max_bytes) return NULL;
    PyObject *text = PyUnicode_DecodeUTF8(s, n, NULL);
    if (text == NULL) return leave();
    if (PyUnicode_GET_LENGTH(text) > max_attribute_length) {
        Py_DECREF(text);
        return NULL;
    }
    return text;
}

/* An attribute of a plain document (its UTF-8 bytes: at most four per character). */
static PyObject *plain_attribute(const char *s, Py_ssize_t n) { return attribute_of(s, n, 4 * max_attribute_length); }

/* A structured-mode event in the plain form, read without the schema's objects: an object of the schema's
 * attributes (each at most once, no other), their values strings without escapes (time and
 * datacontenttype may be null), specversion "1.0", datacontenttype application/json, data null or an
 * object (kept as its text when already canonical, else read by the schema's data decoder). 1 with
 * attributes[4] (new references), *raw_time and *data (new references: a str, a dict or None) set; 0
 * (nothing set, no exception) for any other document, which the compiled schema then reads; -1 with an
 * exception that is not an Exception. */
static int plain_document(PyObject *value, PyObject **attributes, PyObject **raw_time, PyObject **data) {
    const char *p = PyBytes_AS_STRING(value), *end = p + PyBytes_GET_SIZE(value);
    const char *starts[A_COUNT] = {NULL};
    Py_ssize_t lengths[A_COUNT] = {0};
    int seen[A_COUNT] = {0}, nulls[A_COUNT] = {0}, decode_data = 0;
    PyObject *data_made = NULL; /* the data's canonical text, made while reading (data_text) */
    p = skip_ws(p, end);
    if (p >= end || *p != '{') goto reject;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') goto reject; /* no attributes: refused, and named, by the schema */
    for (;;) {
        const char *key;
        Py_ssize_t key_len;
        p = plain_string(p, end, &key, &key_len);
        if (p == NULL) goto reject;
        int k = attribute_key(key, key_len);
        if (k < 0 || seen[k]) goto reject;
        seen[k] = 1;
        p = skip_ws(p, end);
        if (p >= end || *p != ':') goto reject;
        p = skip_ws(p + 1, end);
        if (p >= end) goto reject;
        if (*p == 'n') {
            if (end - p < 4 || memcmp(p, "null", 4) != 0) goto reject;
            if (k != A_TIME && k != A_DATACONTENTTYPE && k != A_DATA) goto reject;
            nulls[k] = 1;
            p += 4;
        } else if (k == A_DATA) {
            if (*p != '{') goto reject;
            const char *after = NULL;
            Py_XSETREF(data_made, data_text(p, end, &after));
            if (data_made == NULL) { /* not as stored: the schema's data decoder reads it (data_decode) */
                after = skip_composite(p, end);
                if (after == NULL) goto reject;
                decode_data = 1;
            }
            starts[k] = p;
            lengths[k] = after - p;
            p = after;
        } else {
            p = plain_string(p, end, &starts[k], &lengths[k]);
            if (p == NULL) goto reject;
        }
        p = skip_ws(p, end);
        if (p >= end) goto reject;
        if (*p == '}') break;
        if (*p != ',') goto reject;
        p = skip_ws(p + 1, end);
    }
    if (skip_ws(p + 1, end) != end) goto reject;
    for (int k = A_ID; k <= A_SUBJECT; k++) {
        if (!seen[k]) goto reject;
    }
    if (lengths[A_SPECVERSION] != 3 || memcmp(starts[A_SPECVERSION], "1.0", 3) != 0) goto reject;
    if (seen[A_DATACONTENTTYPE] && !nulls[A_DATACONTENTTYPE] &&
        (lengths[A_DATACONTENTTYPE] != 16 || memcmp(starts[A_DATACONTENTTYPE], "application/json", 16) != 0))
        goto reject;
    int which[4] = {A_ID, A_SOURCE, A_TYPE, A_SUBJECT};
    PyObject *parts[4] = {NULL, NULL, NULL, NULL}, *time = NULL, *text = NULL;
    for (int k = 0; k < 4; k++) {
        parts[k] = plain_attribute(starts[which[k]], lengths[which[k]]);
        if (parts[k] == NULL) goto not_plain;
    }
    if (seen[A_TIME] && !nulls[A_TIME]) {
        time = plain_attribute(starts[A_TIME], lengths[A_TIME]);
        if (time == NULL) goto not_plain;
    } else {
        time = Py_NewRef(Py_None);
    }
    if (seen[A_DATA] && !nulls[A_DATA] && decode_data) {
        PyObject *slice = PyBytes_FromStringAndSize(starts[A_DATA], lengths[A_DATA]);
        text = slice == NULL ? NULL : PyObject_CallOneArg(data_decode, slice);
        Py_XDECREF(slice);
        if (text == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_Exception)) goto error;
            PyErr_Clear();
            goto not_plain;
        }
    } else if (seen[A_DATA] && !nulls[A_DATA]) {
        text = Py_NewRef(data_made);
    } else {
        text = Py_NewRef(Py_None);
    }
    for (int k = 0; k < 4; k++) attributes[k] = parts[k];
    *raw_time = time;
    *data = text;
    Py_XDECREF(data_made);
    return 1;
not_plain:
    for (int k = 0; k < 4; k++) Py_XDECREF(parts[k]);
    Py_XDECREF(time);
reject:
    Py_XDECREF(data_made);
    return 0;
error:
    for (int k = 0; k < 4; k++) Py_XDECREF(parts[k]);
    Py_XDECREF(time);
    Py_XDECREF(data_made);
    return -1;
}

/* The structured-mode fast path of `Decoder.decode`: a new Decoded, or NULL (no exception pending) when
 * the record needs the Python decoder. */
static PyObject *structured(Sink *sink, PyObject *value, PyObject *headers, PyObject *timestamp) {
    PyObject *plan = NULL, *doc = NULL, *kafka_time = NULL, *event = NULL;
    /* the previous record's header set when equal (compared as the memo's dict would, without hashing) */
    int same = sink->last_headers == NULL ? 0 : PyObject_RichCompareBool(sink->last_headers, headers, Py_EQ);
    if (same < 0) goto fail;
    if (same) {
        plan = Py_NewRef(sink->last_plan);
    } else {
        plan = memo(sink->plans, headers, sink->plan_of);
        if (plan != NULL) {
            Py_XSETREF(sink->last_headers, Py_NewRef(headers));
            Py_XSETREF(sink->last_plan, Py_NewRef(plan));
        }
    }
    if (plan == NULL || !PyTuple_CheckExact(plan) || PyTuple_GET_SIZE(plan) != 2) goto fail;
    kafka_time = cached_kafka_time(&sink->times, timestamp);
    if (kafka_time == NULL) goto fail; /* outside 1970-2200 or not an int: the Python decoder decides */
    PyObject *ingested_at = PyTuple_GET_ITEM(plan, 1);
    if (ingested_at == Py_None) ingested_at = kafka_time;
    PyObject *attributes[4], *raw_time, *data;
    int plain = plain_document(value, attributes, &raw_time, &data);
    if (plain < 0) goto fail;
    if (plain) {
        event = event_of_parts(attributes, raw_time, data, kafka_time);
        Py_DECREF(raw_time);
        Py_DECREF(data);
    } else {
        doc = PyObject_CallOneArg(document_decode, value);
        if (doc == NULL) goto fail;
        event = event_of(doc, kafka_time);
    }
    if (event == NULL || event == Py_None) goto fail;
    PyObject *items[3] = {Py_NewRef(PyTuple_GET_ITEM(plan, 0)), event, Py_NewRef(ingested_at)};
    Py_DECREF(plan);
    Py_XDECREF(doc);
    Py_DECREF(kafka_time);
    return named_tuple(sink->decoded_type, 3, items);
fail:
    Py_XDECREF(plan);
    Py_XDECREF(doc);
    Py_XDECREF(kafka_time);
    Py_XDECREF(event);
    return leave();
}

/* Which header binary mode reads a name is (-1: none, or not plain text). */
static int header_index(PyObject *name) {
    if (!PyUnicode_CheckExact(name) || !PyUnicode_IS_COMPACT_ASCII(name)) return -1;
    Py_ssize_t n = PyUnicode_GET_LENGTH(name);
    const char *text = (const char *)PyUnicode_DATA(name);
    for (int k = 0; k < H_COUNT; k++) {
        if (header_lengths[k] == n && memcmp(header_names[k], text, (size_t)n) == 0) return k;
    }
    return -1;
}

/* An attribute's header value (`attribute_of`, at most max_header_bytes). Quotes, backslashes and control
 * characters are text like any other: the Python fast path leaves them to its general path only because it
 * builds JSON of the headers, and that path takes them as they are. */
static PyObject *attribute_text(PyObject *raw) {
    return attribute_of(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), max_header_bytes);
}

static int bytes_equal(PyObject *raw, const char *text) {
    size_t n = strlen(text);
    return PyBytes_GET_SIZE(raw) == (Py_ssize_t)n && memcmp(PyBytes_AS_STRING(raw), text, n) == 0;
}

/* The binary-mode fast path of `Decoder.decode` (the attributes in ce_ headers, the value the data): a new
 * Decoded, or NULL (no exception pending) when the record needs the Python decoder: a header it does not
 * read (an extension attribute, upper case, a repeated name), a value the schema would not pass as is. */
static PyObject *binary(Sink *sink, PyObject *value, PyObject *headers, PyObject *timestamp) {
    PyObject *found[H_COUNT] = {NULL};
    Py_ssize_t n = PyTuple_GET_SIZE(headers);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *header = PyTuple_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(header) || PyTuple_GET_SIZE(header) != 2) return NULL;
        int k = header_index(PyTuple_GET_ITEM(header, 0));
        PyObject *raw = PyTuple_GET_ITEM(header, 1);
        if (k < 0 || found[k] != NULL || !PyBytes_CheckExact(raw)) return NULL;
        found[k] = raw;
    }
    for (int k = H_ID; k <= H_SUBJECT; k++) {
        if (found[k] == NULL) return NULL;
    }
    if (!bytes_equal(found[H_SPECVERSION], "1.0")) return NULL;
    if (found[H_DATACONTENTTYPE] != NULL && !bytes_equal(found[H_DATACONTENTTYPE], "application/json")) return NULL;
    if (found[H_CONTENT_TYPE] != NULL && !bytes_equal(found[H_CONTENT_TYPE], "application/json")) return NULL;
    if (value != Py_None && (!PyBytes_CheckExact(value) || PyBytes_GET_SIZE(value) > max_value_bytes)) return NULL;

    PyObject *namespace = NULL, *kafka_time = NULL, *ingested_at = NULL, *raw_time = NULL, *data = NULL;
    PyObject *attributes[4] = {NULL, NULL, NULL, NULL};
    namespace = found[H_NAMESPACE] == NULL ? Py_NewRef(sink->default_namespace)
                                           : memo(sink->namespaces, found[H_NAMESPACE], sink->namespace_of);
    if (namespace == NULL) goto fail;
    kafka_time = cached_kafka_time(&sink->times, timestamp);
    if (kafka_time == NULL) goto fail;
    ingested_at = found[H_INGESTED_AT] == NULL ? Py_NewRef(kafka_time)
                                               : memo(sink->ingested, found[H_INGESTED_AT], sink->ingested_of);
    if (ingested_at == NULL) goto fail;
    int which[4] = {H_ID, H_SOURCE, H_TYPE, H_SUBJECT};
    for (int k = 0; k < 4; k++) {
        attributes[k] = attribute_text(found[which[k]]);
        if (attributes[k] == NULL) goto fail;
    }
    if (found[H_TIME] == NULL) {
        raw_time = Py_NewRef(Py_None);
    } else {
        raw_time = attribute_text(found[H_TIME]);
        if (raw_time == NULL) goto fail;
    }
    if (value == Py_None || PyBytes_GET_SIZE(value) == 0) {
        data = Py_NewRef(Py_None);
    } else {
        data = canonical_data(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
        if (data == NULL) data = PyObject_CallOneArg(data_decode, value);
        if (data == NULL) goto fail;
    }
    PyObject *event = event_of_parts(attributes, raw_time, data, kafka_time);
    for (int k = 0; k < 4; k++) attributes[k] = NULL; /* stolen */
    Py_CLEAR(raw_time);
    Py_CLEAR(data);
    Py_CLEAR(kafka_time);
    if (event == NULL || event == Py_None) {
        Py_XDECREF(event);
        goto fail;
    }
    PyObject *items[3] = {namespace, event, ingested_at};
    return named_tuple(sink->decoded_type, 3, items);
fail:
    for (int k = 0; k < 4; k++) Py_XDECREF(attributes[k]);
    Py_XDECREF(namespace);
    Py_XDECREF(kafka_time);
    Py_XDECREF(ingested_at);
    Py_XDECREF(raw_time);
    Py_XDECREF(data);
    return leave();
}

/* One record by a fast path: a new Decoded, or NULL (an exception pending only if it is not an Exception)
 * when the Python decoder decides it. */
static PyObject *fast_decoded(Sink *sink, PyObject *value, PyObject *headers, PyObject *timestamp) {
    if (!PyTuple_CheckExact(headers)) return NULL;
    if (PyTuple_GET_SIZE(headers) <= max_plan_headers) {
        if (!PyBytes_CheckExact(value) || PyBytes_GET_SIZE(value) == 0 || PyBytes_GET_SIZE(value) > max_value_bytes)
            return NULL;
        return structured(sink, value, headers, timestamp);
    }
    return binary(sink, value, headers, timestamp);
}

/* decode_records(records, decoder, decoded_type, item_type) -> (items, rejected, numbers, values)
 *
 * `Decoder.decode` over a batch of aiokafka records, with the decoder's memos: items, an Item(offset,
 * Decoded) per decoded record in order; rejected, (index, Malformed) per refused record; numbers, the
 * batch digest's (offset, timestamp, value length or -1) triples as native int64 bytes, as
 * `digest_numbers` writes them (None when one does not fit); values, the records' values. */
static PyObject *decode_records(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "decode_records(records, decoder, decoded_type, item_type)");
        return NULL;
    }
    if (!configured()) return NULL;
    if (document_decode == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "common._cevents: configure_sink was not called");
        return NULL;
    }
    PyObject *records = args[0], *decoded_type = args[2], *item_type = args[3];
    if (!PyList_CheckExact(records)) {
        PyErr_SetString(PyExc_TypeError, "records must be a list");
        return NULL;
    }
    if (!tuple_type(decoded_type) || !tuple_type(item_type)) return NULL;
    Sink sink;
    if (!sink_open(&sink, args[1], decoded_type)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(records);
    PyObject *items = PyList_New(0), *rejected = PyList_New(0), *values = PyList_New(n);
    PyObject *numbers = PyBytes_FromStringAndSize(NULL, n * 3 * (Py_ssize_t)sizeof(long long));
    PyObject *timestamp = NULL, *offset = NULL;
    if (items == NULL || rejected == NULL || values == NULL || numbers == NULL) goto error;
    long long *triples = (long long *)PyBytes_AS_STRING(numbers);
    int numbered = 1; /* every offset and timestamp fits int64 (else numbers is None: digest_numbers says why) */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *rec = PyList_GET_ITEM(records, i);
        PyObject *value = PyObject_GetAttr(rec, s_value);
        if (value == NULL) goto error;
        PyList_SET_ITEM(values, i, value);
        timestamp = PyObject_GetAttr(rec, s_timestamp);
        if (timestamp == NULL) goto error;
        offset = PyObject_GetAttr(rec, s_offset);
        if (offset == NULL) goto error;
        if (numbered) {
            long long triple[3] = {PyLong_Check(offset) ? PyLong_AsLongLong(offset) : -1,
                                   PyLong_Check(timestamp) ? PyLong_AsLongLong(timestamp) : -1,
                                   value == Py_None ? -1 : (long long)PyObject_Length(value)};
            if (PyErr_Occurred() || !PyLong_Check(offset) || !PyLong_Check(timestamp)) {
                if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception)) goto error;
                PyErr_Clear();
                numbered = 0;
            }
            memcpy(triples + 3 * i, triple, sizeof(triple));
        }
        PyObject *headers = PyObject_GetAttr(rec, s_headers);
        if (headers == NULL) goto error;
        PyObject *decoded = fast_decoded(&sink, value, headers, timestamp);
        if (decoded == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(headers);
                goto error;
            }
            PyObject *call[3] = {value, headers, timestamp};
            decoded = PyObject_Vectorcall(sink.decode, call, 3, NULL);
        }
        Py_DECREF(headers);
        if (decoded == NULL) goto error;
        PyObject *kept, *into;
        if (Py_TYPE(decoded) == (PyTypeObject *)decoded_type) {
            PyObject *pair[2] = {Py_NewRef(offset), decoded};
            kept = named_tuple(item_type, 2, pair);
            into = items;
        } else {
            kept = Py_BuildValue("(nN)", i, decoded);
            into = rejected;
        }
        if (kept == NULL) goto error;
        int appended = PyList_Append(into, kept);
        Py_DECREF(kept);
        if (appended < 0) goto error;
        Py_CLEAR(timestamp);
        Py_CLEAR(offset);
    }
    sink_clear(&sink);
    if (!numbered) Py_SETREF(numbers, Py_NewRef(Py_None));
    return Py_BuildValue("(NNNN)", items, rejected, numbers, values);
error:
    sink_clear(&sink);
    Py_XDECREF(timestamp);
    Py_XDECREF(offset);
    Py_XDECREF(items);
    Py_XDECREF(rejected);
    Py_XDECREF(numbers);
    Py_XDECREF(values);
    return NULL;
}

/* --- the writer's precomputed values of a batch (ingest/sink/prepare.py) --------------------------------- */

static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}

/* zlib.crc32(data, crc): CRC-32 (IEEE 802.3), continuing from `crc`. */
static uint32_t crc32_of(const char *data, Py_ssize_t n, uint32_t crc) {
    const unsigned char *p = (const unsigned char *)data;
    crc = ~crc;
    for (Py_ssize_t i = 0; i < n; i++) crc = crc_table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

/* Microseconds since the epoch of a UTC datetime; 0 (and *ok = 0) when it is not one (the caller then asks
 * Python). */
static long long utc_micros(PyObject *t, int *ok) {
    *ok = PyDateTime_CheckExact(t) && PyDateTime_DATE_GET_TZINFO(t) == PyDateTime_TimeZone_UTC;
    if (!*ok) return 0;
    long long days = days_from_civil(PyDateTime_GET_YEAR(t), PyDateTime_GET_MONTH(t), PyDateTime_GET_DAY(t));
    long long secs = days * 86400 + PyDateTime_DATE_GET_HOUR(t) * 3600 + PyDateTime_DATE_GET_MINUTE(t) * 60 +
                     PyDateTime_DATE_GET_SECOND(t);
    return secs * 1000000 + PyDateTime_DATE_GET_MICROSECOND(t);
}

static long long floor_div(long long a, long long b) {
    long long q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* datetime.timestamp() of a UTC datetime (the exact quotient of its microseconds, correctly rounded: both
 * operands are exact doubles below 2**53), and `seconds` (rows.py): the same on a millisecond, else the
 * floor millisecond / 1000. Python's own for any other datetime. 0 on success, -1 with an exception. */
static int instant_seconds(PyObject *t, double *timestamp, double *column) {
    int ok;
    long long micros = utc_micros(t, &ok);
    if (ok) {
        *timestamp = (double)micros / 1e6;
        *column = micros % 1000 == 0 ? *timestamp : (double)floor_div(micros, 1000) / 1000.0;
        return 0;
    }
    PyObject *value = PyObject_CallMethod(t, "timestamp", NULL);
    if (value == NULL) return -1;
    *timestamp = PyFloat_AsDouble(value);
    Py_DECREF(value);
    if (*timestamp == -1.0 && PyErr_Occurred()) return -1;
    PyObject *ms = PyObject_CallOneArg(to_millis_of, t);
    if (ms == NULL) return -1;
    long long m = PyLong_AsLongLong(ms);
    Py_DECREF(ms);
    if (m == -1 && PyErr_Occurred()) return -1;
    *column = PyDateTime_DATE_GET_MICROSECOND(t) % 1000 == 0 ? *timestamp : (double)m / 1000.0;
    return 0;
}

/* UTF-8 of a str (cached in the object by CPython), as `str.encode()` gives it. */
static const char *utf8(PyObject *text, Py_ssize_t *n) {
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "expected text");
        return NULL;
    }
    return PyUnicode_AsUTF8AndSize(text, n);
}

/* prepare_items(items) -> (key_hashes, payload_hashes, offsets, columns, spans)
 *
 * `Preparer._prepare` (ingest/sink/prepare.py) in C: the key and payload hashes (uint64) and offsets (int64)
 * as native bytearrays, the eight insert columns (namespace, id, source, type, subject, time in seconds,
 * data, ingested_at in seconds) and the notification spans {(namespace, subject, type): [first, last]}. */
static PyObject *prepare_items(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 1 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "prepare_items(items: list)");
        return NULL;
    }
    if (to_millis_of == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "common._cevents: configure_sink was not called");
        return NULL;
    }
    PyObject *items = args[0];
    Py_ssize_t n = PyList_GET_SIZE(items);
    PyObject *keys = PyByteArray_FromStringAndSize(NULL, n * 8);
    PyObject *payloads = PyByteArray_FromStringAndSize(NULL, n * 8);
    PyObject *offsets = PyByteArray_FromStringAndSize(NULL, n * 8);
    PyObject *columns[8] = {NULL};
    PyObject *spans = PyDict_New();
    PyObject *last_ingested = NULL, *last_ingested_seconds = NULL;
    int failed = keys == NULL || payloads == NULL || offsets == NULL || spans == NULL;
    for (int c = 0; c < 8 && !failed; c++) failed = (columns[c] = PyList_New(n)) == NULL;
    if (failed) goto error;
    uint64_t *key_out = (uint64_t *)PyByteArray_AS_STRING(keys);
    uint64_t *payload_out = (uint64_t *)PyByteArray_AS_STRING(payloads);
    int64_t *offset_out = (int64_t *)PyByteArray_AS_STRING(offsets);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) goto not_an_item;
        PyObject *decoded = PyTuple_GET_ITEM(item, 1);
        if (!PyTuple_Check(decoded) || PyTuple_GET_SIZE(decoded) != 3) goto not_an_item;
        PyObject *event = PyTuple_GET_ITEM(decoded, 1);
        if (!PyTuple_Check(event) || PyTuple_GET_SIZE(event) != 6) goto not_an_item;
        PyObject *namespace = PyTuple_GET_ITEM(decoded, 0), *ingested_at = PyTuple_GET_ITEM(decoded, 2);
        PyObject *event_id = PyTuple_GET_ITEM(event, 0), *source = PyTuple_GET_ITEM(event, 1);
        PyObject *event_type = PyTuple_GET_ITEM(event, 2), *subject = PyTuple_GET_ITEM(event, 3);
        PyObject *time = PyTuple_GET_ITEM(event, 4), *data = PyTuple_GET_ITEM(event, 5);
        long long offset = PyLong_AsLongLong(PyTuple_GET_ITEM(item, 0));
        if (offset == -1 && PyErr_Occurred()) goto error;
        offset_out[i] = offset;

        /* the key hash (keyindex.KeyHasher): crc32 of the id, then on over "\0namespace\0source" (a CRC
         * runs on over parts as over their concatenation: no joined text to build, no memo to look up) */
        Py_ssize_t len, namespace_len, source_len, type_len, subject_len;
        const char *id_text = utf8(event_id, &len);
        const char *namespace_text = id_text == NULL ? NULL : utf8(namespace, &namespace_len);
        const char *source_text = namespace_text == NULL ? NULL : utf8(source, &source_len);
        const char *type_text = source_text == NULL ? NULL : utf8(event_type, &type_len);
        const char *subject_text = type_text == NULL ? NULL : utf8(subject, &subject_len);
        if (subject_text == NULL) goto error;
        uint32_t high = crc32_of(id_text, len, 0);
        uint32_t low = crc32_of("\0", 1, high);
        low = crc32_of(namespace_text, namespace_len, low);
        low = crc32_of("\0", 1, low);
        low = crc32_of(source_text, source_len, low);
        key_out[i] = ((uint64_t)high << 32) | low;

        /* the payload hash (keyindex.PayloadHasher): crc32 of "type\0subject\0", on over the time in ms */
        uint32_t start = crc32_of(type_text, type_len, 0);
        start = crc32_of("\0", 1, start);
        start = crc32_of(subject_text, subject_len, start);
        start = crc32_of("\0", 1, start);
        double time_s, time_column;
        if (instant_seconds(time, &time_s, &time_column) < 0) goto error;
        double ms = nearbyint(time_s * 1000); /* round(): half to even, as the default rounding mode */
        char digits_buf[32];
        int digits_len = snprintf(digits_buf, sizeof(digits_buf), "%lld", (long long)ms);
        Py_ssize_t data_len;
        const char *data_text = utf8(data, &data_len);
        if (data_text == NULL) goto error;
        payload_out[i] = ((uint64_t)crc32_of(data_text, data_len, 0) << 32) | crc32_of(digits_buf, digits_len, start);

        /* the insert columns (rows.build_columns; times as rows.seconds) */
        PyObject *texts[5] = {namespace, event_id, source, event_type, subject};
        for (int c = 0; c < 5; c++) PyList_SET_ITEM(columns[c], i, Py_NewRef(texts[c]));
        PyObject *time_value = PyFloat_FromDouble(time_column);
        if (time_value == NULL) goto error;
        PyList_SET_ITEM(columns[5], i, time_value);
        PyList_SET_ITEM(columns[6], i, Py_NewRef(data));
        if (ingested_at != last_ingested) {
            double ignored, ingested_column;
            if (instant_seconds(ingested_at, &ignored, &ingested_column) < 0) goto error;
            PyObject *value = PyFloat_FromDouble(ingested_column);
            if (value == NULL) goto error;
            Py_XSETREF(last_ingested_seconds, value);
            last_ingested = ingested_at;
        }
        PyList_SET_ITEM(columns[7], i, Py_NewRef(last_ingested_seconds));

        /* the notification spans (common.ingest_notifications.group_events) */
        PyObject *group = PyTuple_Pack(3, namespace, subject, event_type);
        if (group == NULL) goto error;
        PyObject *span = PyDict_GetItemWithError(spans, group);
        if (span == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(group);
                goto error;
            }
            span = PyList_New(2);
            if (span == NULL) {
                Py_DECREF(group);
                goto error;
            }
            PyList_SET_ITEM(span, 0, Py_NewRef(time));
            PyList_SET_ITEM(span, 1, Py_NewRef(time));
            int rc = PyDict_SetItem(spans, group, span);
            Py_DECREF(span);
            Py_DECREF(group);
            if (rc < 0) goto error;
        } else {
            Py_DECREF(group);
            int below = PyObject_RichCompareBool(time, PyList_GET_ITEM(span, 0), Py_LT);
            if (below < 0) goto error;
            if (below) {
                Py_INCREF(time);
                PyList_SetItem(span, 0, time);
            } else {
                int above = PyObject_RichCompareBool(time, PyList_GET_ITEM(span, 1), Py_GT);
                if (above < 0) goto error;
                if (above) {
                    Py_INCREF(time);
                    PyList_SetItem(span, 1, time);
                }
            }
        }
    }
    Py_XDECREF(last_ingested_seconds);
    PyObject *column_tuple = PyTuple_New(8);
    if (column_tuple == NULL) goto error;
    for (int c = 0; c < 8; c++) PyTuple_SET_ITEM(column_tuple, c, columns[c]);
    return Py_BuildValue("(NNNNN)", keys, payloads, offsets, column_tuple, spans);
not_an_item:
    PyErr_SetString(PyExc_TypeError, "an item is not Item(offset, Decoded(namespace, CloudEvent, ingested_at))");
error:
    Py_XDECREF(last_ingested_seconds);
    Py_XDECREF(keys);
    Py_XDECREF(payloads);
    Py_XDECREF(offsets);
    Py_XDECREF(spans);
    for (int c = 0; c < 8; c++) Py_XDECREF(columns[c]);
    return NULL;
}

static PyObject *configure_sink(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"document", "data", "max_value_bytes", "max_plan_headers", "max_header_bytes",
                               "max_attribute_length", "content_type_header", "namespace_header",
                               "ingested_at_header", "to_millis", NULL};
    PyObject *document, *data, *to_millis;
    Py_ssize_t sizes[4];
    const char *names[3];
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOnnnnsssO:configure_sink", keywords, &document, &data, &sizes[0],
                                     &sizes[1], &sizes[2], &sizes[3], &names[0], &names[1], &names[2], &to_millis))
        return NULL;
    for (int k = 0; k < 3; k++) {
        if (strlen(names[k]) >= sizeof(header_names[0])) {
            PyErr_SetString(PyExc_ValueError, "header name too long");
            return NULL;
        }
        strcpy(header_names[H_CONTENT_TYPE + k], names[k]);
    }
    for (int k = 0; k < H_COUNT; k++) header_lengths[k] = (Py_ssize_t)strlen(header_names[k]);
    Py_XSETREF(document_decode, Py_NewRef(document));
    Py_XSETREF(data_decode, Py_NewRef(data));
    Py_XSETREF(to_millis_of, Py_NewRef(to_millis));
    max_value_bytes = sizes[0];
    max_plan_headers = sizes[1];
    max_header_bytes = sizes[2];
    max_attribute_length = sizes[3];
    Py_RETURN_NONE;
}

static PyObject *configure(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"cloud_event", "parse_time", "default_time", "dumps",       "exact_float",
                               "sort_keys",   "refusals",   "min_time_ms",  "max_time_ms", NULL};
    PyObject *objs[7];
    long long bounds[2];
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOLL:configure", keywords, &objs[0], &objs[1], &objs[2],
                                     &objs[3], &objs[4], &objs[5], &objs[6], &bounds[0], &bounds[1]))
        return NULL;
    if (!tuple_type(objs[0])) return NULL;
    if (!PyTuple_Check(objs[6])) {
        PyErr_SetString(PyExc_TypeError, "refusals must be a tuple of exception types");
        return NULL;
    }
    if (bounds[0] < 0 || bounds[1] <= bounds[0]) {
        PyErr_SetString(PyExc_ValueError, "the event time bounds must be 0 <= min_time_ms < max_time_ms");
        return NULL;
    }
    PyObject **slots[7] = {&CloudEventType, &parse_time, &default_time_of, &dumps,
                           &exact_float, &sort_keys, &refusals};
    for (int k = 0; k < 7; k++) Py_XSETREF(*slots[k], Py_NewRef(objs[k]));
    min_time_ms = bounds[0];
    max_time_ms = bounds[1];
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_VARARGS | METH_KEYWORDS,
     "Give the module the Python objects it builds and falls back on (once, at import)."},
    {"event_from_document", (PyCFunction)(void (*)(void))event_from_document, METH_FASTCALL,
     "event_from_document(doc, default_time) -> CloudEvent | None"},
    {"decode_records", (PyCFunction)(void (*)(void))decode_records, METH_FASTCALL,
     "decode_records(records, decoder, decoded_type, item_type)"},
    {"configure_sink", (PyCFunction)(void (*)(void))configure_sink, METH_VARARGS | METH_KEYWORDS,
     "Give the sink's loop its schema decoders, bounds and header names (once, at import)."},
    {"prepare_items", (PyCFunction)(void (*)(void))prepare_items, METH_FASTCALL,
     "prepare_items(items) -> (key_hashes, payload_hashes, offsets, columns, spans)"},
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
    crc_init();
    PyObject **names[] = {&s_id,         &s_source,       &s_type,       &s_subject,    &s_time,
                          &s_data,       &s_value,        &s_headers,    &s_timestamp,  &s_offset,
                          &null_text,    &s_plans,        &s_plan_of,    &s_namespaces, &s_namespace_of,
                          &s_ingested,   &s_ingested_of,  &s_decode,     &s_default_namespace};
    const char *texts[] = {"id",         "source",        "type",     "subject",     "time",
                           "data",       "value",         "headers",  "timestamp",   "offset",
                           "null",       "_plans",        "_structured_plan", "_namespaces", "_namespace",
                           "_times",     "_ingested_at",  "decode",   "default_namespace"};
    for (size_t k = 0; k < sizeof(texts) / sizeof(texts[0]); k++) {
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
