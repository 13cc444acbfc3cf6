/*
 * probe._lane: the pipeline's per-packet fast lane, compiled (optional accelerator).
 *
 * A Lane is the capture callback lane(ts, frame) that pypcap's dispatch calls for every frame. It
 * does exactly what the pure-Python fast lane in probe/pipeline.py (Pipeline.packet) does, on the
 * same Python objects, and hands every other frame to the Python full path unchanged:
 *
 *   - count the frame (packets, bytes) and keep the latest timestamp; a frame that makes the idle
 *     timeouts due (ts >= next_expiry) goes to the full path, which runs them;
 *   - an untagged IPv4/TCP frame (fixed offsets from `offset`, the decoder's fast_offset) without
 *     SYN/FIN/RST, of a connection in the flow table's `fast` dict (12-byte key: addresses, ports),
 *     whose reverse direction holds no out-of-order data, is either
 *       * a pure ACK: the connection's last_ts is set, nothing else; or
 *       * an in-order segment lying strictly inside a P-DATA data value (or a TLS application-data
 *         record) of its direction's framer: stream.next_seq, framer._pdv_left, framer._pdu_left,
 *         framer.data_bytes and conn.last_ts are updated, nothing else;
 *   - in an established association's data phase (a DICOM PduFramer), an in-order segment whose
 *     bytes are P-DATA-TF headers, PDV headers, data values and command values, even split across
 *     segments: framed here as PduFramer.feed would (lane_data); command values are handed to
 *     commands(conn, from_client, [(context, last, value)], ts) in Python;
 *   - anything else, or any doubt (an attribute of an unexpected type, a frame that is not bytes),
 *     calls full_seg(ts, frame, segment) with the headers parsed exactly as Decoder.decode would,
 *     or full(ts, frame) where the decoder has something to say (other link or IP layouts,
 *     truncated or malformed headers).
 *
 * There is no state here besides the counters: the flow table, streams and framers stay the
 * single source of truth, so the compiled and the pure-Python lanes are interchangeable at any
 * frame. tests/test_accel.py checks that both give identical output on every fixture capture, the
 * benchmark's mix and damaged copies; tests/test_fuzz.py compares them on mutated input.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

/* An attribute the lane reads or writes, with a one-entry cache of where it lives: for the slotted
 * classes of the flow table (__slots__), a member descriptor's offset in the object, so that the
 * per-packet accesses skip the generic attribute lookup. Anything else (another type, a property,
 * an instance dict) takes PyObject_GetAttr / PyObject_SetAttr. */
typedef struct {
    PyObject *name;
    PyTypeObject *type;  /* the type the offset is for (types here live as long as the process) */
    Py_ssize_t offset;
    PyTypeObject *plain;  /* the last type found without such a slot: straight to the generic path */
} Attr;

static Attr A_ooo, A_framers, A_state, A_pdv_left, A_pdu_left, A_data_bytes, A_next_seq, A_last_ts, A_buf, A_pdus, A_need, A_start_ts, A_pdv_context, A_pdv_last, A_closed, A_machine, A_current, A_outcome, A_pdata_bytes, A_requestor_is_client, A_machine_state, A_max_command;

/* Where obj's slot for `a` lives, or NULL when it is not a plain writable object slot of its type. */
static PyObject **
slot_of(PyObject *obj, Attr *a)
{
    PyTypeObject *tp = Py_TYPE(obj);
    if (tp != a->type) {
        if (tp == a->plain)
            return NULL;
        PyObject *descr = PyObject_GetAttr((PyObject *)tp, a->name);
        if (descr == NULL) {
            PyErr_Clear();
            a->plain = tp;
            return NULL;
        }
        int ok = Py_IS_TYPE(descr, &PyMemberDescr_Type)
                 && ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX
                 && !(((PyMemberDescrObject *)descr)->d_member->flags & READONLY);
        Py_ssize_t offset = ok ? ((PyMemberDescrObject *)descr)->d_member->offset : 0;
        Py_DECREF(descr);
        if (!ok) {
            a->plain = tp;
            return NULL;
        }
        a->type = tp;
        a->offset = offset;
    }
    return (PyObject **)((char *)obj + a->offset);
}

/* obj.<a> (a new reference), or NULL with an exception set (AttributeError when unset). */
static PyObject *
attr_get(PyObject *obj, Attr *a)
{
    PyObject **slot = slot_of(obj, a);
    if (slot == NULL)
        return PyObject_GetAttr(obj, a->name);
    PyObject *v = *slot;
    if (v == NULL) {
        PyErr_SetObject(PyExc_AttributeError, a->name);
        return NULL;
    }
    Py_INCREF(v);
    return v;
}

static int
attr_set(PyObject *obj, Attr *a, PyObject *v)
{
    PyObject **slot = slot_of(obj, a);
    if (slot == NULL)
        return PyObject_SetAttr(obj, a->name, v);
    PyObject *old = *slot;
    Py_INCREF(v);
    *slot = v;
    Py_XDECREF(old);
    return 0;
}

typedef struct {
    PyObject_HEAD
    PyObject *fast;   /* dict: 12-byte key -> (conn, d, stream, other) */
    PyObject *full;   /* callable full(ts, frame) */
    Py_ssize_t offset;
    long data_state;  /* the framers' "inside a data value" state */
    PyObject *pdu_framer;  /* probe.dicom.pdu.PduFramer, or None: no data-phase lane */
    PyObject *quiet_states;  /* association machine states in which a P-DATA-TF PDU changes nothing */
    PyObject *commands;  /* commands(conn, from_client, [(context, last, value)], ts), or None */
    PyObject *full_seg;  /* full_seg(ts, frame, segment) for plain IPv4/TCP frames, or NULL: full() */
    unsigned long long packets;
    unsigned long long bytes;
    unsigned long long fast_frames;  /* frames this lane finished itself */
    double last_ts;
    double next_expiry;
} Lane;

static int Lane_clear(Lane *self);

static void
Lane_dealloc(Lane *self)
{
    PyObject_GC_UnTrack(self);
    Lane_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Lane_traverse(Lane *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fast);
    Py_VISIT(self->full);
    Py_VISIT(self->pdu_framer);
    Py_VISIT(self->quiet_states);
    Py_VISIT(self->commands);
    Py_VISIT(self->full_seg);
    return 0;
}

static int
Lane_clear(Lane *self)
{
    Py_CLEAR(self->fast);
    Py_CLEAR(self->full);
    Py_CLEAR(self->pdu_framer);
    Py_CLEAR(self->quiet_states);
    Py_CLEAR(self->commands);
    Py_CLEAR(self->full_seg);
    return 0;
}

static int
Lane_init(Lane *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fast", "offset", "full", "data_state", "next_expiry", "pdu_framer", "quiet_states",
                             "commands", "full_seg", NULL};
    PyObject *fast, *full, *pdu_framer = Py_None, *quiet_states = NULL, *commands = NULL, *full_seg = NULL;
    Py_ssize_t offset;
    long data_state;
    double next_expiry = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!nOl|dOO!OO", kwlist, &PyDict_Type, &fast, &offset, &full,
                                     &data_state, &next_expiry, &pdu_framer, &PyFrozenSet_Type, &quiet_states,
                                     &commands, &full_seg))
        return -1;
    if (full_seg == Py_None)
        full_seg = NULL;
    if (full_seg != NULL && !PyCallable_Check(full_seg)) {
        PyErr_SetString(PyExc_TypeError, "full_seg must be callable");
        return -1;
    }
    Py_XINCREF(full_seg);
    Py_XSETREF(self->full_seg, full_seg);
    if (pdu_framer != Py_None && (!PyType_Check(pdu_framer) || quiet_states == NULL || commands == NULL
                                  || !PyCallable_Check(commands))) {
        PyErr_SetString(PyExc_TypeError, "pdu_framer must be a type, and comes with quiet_states and commands()");
        return -1;
    }
    Py_XINCREF(commands);
    Py_XSETREF(self->commands, commands);
    Py_INCREF(pdu_framer);
    Py_XSETREF(self->pdu_framer, pdu_framer);
    Py_XINCREF(quiet_states);
    Py_XSETREF(self->quiet_states, quiet_states);
    if (offset < 2) {
        PyErr_SetString(PyExc_ValueError, "offset must be >= 2 (the ethertype precedes the IPv4 header)");
        return -1;
    }
    if (!PyCallable_Check(full)) {
        PyErr_SetString(PyExc_TypeError, "full must be callable");
        return -1;
    }
    Py_INCREF(fast);
    Py_XSETREF(self->fast, fast);
    Py_INCREF(full);
    Py_XSETREF(self->full, full);
    self->offset = offset;
    self->data_state = data_state;
    self->packets = self->bytes = self->fast_frames = 0;
    self->last_ts = 0.0;
    self->next_expiry = next_expiry;
    return 0;
}

/* obj.name as a C integer; 0 on success, 1 when it is not an int (or absent: the caller goes slow),
 * -1 on a real error. */
static int
get_ll(PyObject *obj, Attr *name, long long *out)
{
    PyObject *v = attr_get(obj, name);
    if (v == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            return 1;
        }
        return -1;
    }
    if (!PyLong_CheckExact(v)) {
        Py_DECREF(v);
        return 1;
    }
    int overflow;
    *out = PyLong_AsLongLongAndOverflow(v, &overflow);
    Py_DECREF(v);
    if (overflow)
        return 1;
    if (*out == -1 && PyErr_Occurred())
        return -1;
    return 0;
}

static int
set_ll(PyObject *obj, Attr *name, long long value)
{
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL)
        return -1;
    int r = attr_set(obj, name, v);
    Py_DECREF(v);
    return r;
}

/* obj.name is truthy: 1, falsy: 0, error: -1. */
static int
attr_true(PyObject *obj, Attr *name)
{
    PyObject *v = attr_get(obj, name);
    if (v == NULL)
        return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

#define GO_FULL 1

/* States of probe.dicom.pdu.PduFramer (checked against the module by tests/test_accel.py). */
enum { F_HEADER = 0, F_PDV_HEADER = 2, F_DATA = 3, F_COMMAND = 4 };
#define UL_HEADER_LEN 6

static inline uint32_t
be32(const unsigned char *b)
{
    return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
}

/* Bytes being collected (a header or a command value split across segments). */
typedef struct {
    unsigned char *p;
    Py_ssize_t len, cap;
    unsigned char small[256];
} Collect;

static int
collect_add(Collect *c, const unsigned char *src, Py_ssize_t k)
{
    if (c->len + k > c->cap) {
        Py_ssize_t cap = (c->len + k) * 2;
        unsigned char *p = PyMem_Malloc((size_t)cap);
        if (p == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(p, c->p, (size_t)c->len);
        if (c->p != c->small)
            PyMem_Free(c->p);
        c->p = p;
        c->cap = cap;
    }
    memcpy(c->p + c->len, src, (size_t)k);
    c->len += k;
    return 0;
}

/* PduFramer.feed, for the P-DATA part of the protocol, on locals. */
typedef struct {
    long long state, pdu, pdv, need, max_command;
    long context;
    int last, need_set, read_pdv, start_ts, collected;
    long long headers, added, data;
    PyObject *framer;  /* read lazily: _max_command */
    PyObject *cmds;  /* [(context, last, value)] or NULL */
    Collect buf;
} Sim;

static int
sim_end_pdv(Sim *s)
{
    if (s->pdu >= UL_HEADER_LEN)
        s->state = F_PDV_HEADER;
    else if (s->pdu == 0)
        s->state = F_HEADER;
    else
        return GO_FULL;  /* 1-5 bytes left: a framing error, the full path reports it */
    s->need = UL_HEADER_LEN;
    s->need_set = 1;
    return 0;
}

static int
sim_command(Sim *s, const unsigned char *value, Py_ssize_t k)
{
    if (s->cmds == NULL && (s->cmds = PyList_New(0)) == NULL)
        return -1;
    PyObject *item = Py_BuildValue("(lOy#)", s->context, s->last ? Py_True : Py_False, (const char *)value, k);
    if (item == NULL)
        return -1;
    int r = PyList_Append(s->cmds, item);
    Py_DECREF(item);
    return r;
}

/* PduFramer._pdv_at: a PDV header; a command value whole in the `avail` bytes after it is taken
 * from there (*used). */
static int
sim_pdv_at(Sim *s, const unsigned char *hdr, const unsigned char *after, Py_ssize_t avail, Py_ssize_t *used)
{
    *used = 0;
    long long value_len = (long long)be32(hdr) - 2;
    s->pdu -= UL_HEADER_LEN;
    if (value_len < 0 || value_len > s->pdu)
        return GO_FULL;  /* malformed: the full path reports it */
    s->context = hdr[4];
    s->last = (hdr[5] & 0x02) != 0;
    s->read_pdv = 1;
    if (hdr[5] & 0x01) {
        if (s->max_command < 0) {
            int r = get_ll(s->framer, &A_max_command, &s->max_command);
            if (r != 0)
                return r;
        }
        if (value_len > s->max_command)
            return GO_FULL;
        if (value_len <= avail) {
            if (sim_command(s, after, (Py_ssize_t)value_len) < 0)
                return -1;
            *used = (Py_ssize_t)value_len;
            s->pdu -= value_len;
            return sim_end_pdv(s);
        }
        s->state = F_COMMAND;
        s->need = value_len;
        s->need_set = 1;
        return 0;
    }
    s->state = F_DATA;
    s->pdv = value_len;
    return value_len == 0 ? sim_end_pdv(s) : 0;
}

/* The framer over one segment's payload; 0 when all of it was consumed the ways above. */
static int
sim_feed(Sim *s, const unsigned char *pl, Py_ssize_t n)
{
    Py_ssize_t pos = 0, used;
    int r;
    while (pos < n) {
        if (s->state == F_DATA) {
            long long take = s->pdv < n - pos ? s->pdv : n - pos;
            pos += (Py_ssize_t)take;
            s->pdv -= take;
            s->pdu -= take;
            s->data += take;
            if (s->pdv == 0 && (r = sim_end_pdv(s)) != 0)
                return r;
        } else if (s->state == F_PDV_HEADER && s->buf.len == 0 && n - pos >= UL_HEADER_LEN) {
            r = sim_pdv_at(s, pl + pos, pl + pos + UL_HEADER_LEN, n - pos - UL_HEADER_LEN, &used);
            pos += UL_HEADER_LEN + used;
            if (r != 0)
                return r;
        } else if (s->state == F_HEADER && s->buf.len == 0 && n - pos >= 2 * UL_HEADER_LEN && pl[pos] == 0x04) {
            /* a P-DATA-TF header and its first PDV header whole here (the usual case) */
            long long length = be32(pl + pos + 2);
            if (length < UL_HEADER_LEN)
                return GO_FULL;
            s->start_ts = 1;
            s->headers++;
            s->added += length + UL_HEADER_LEN;
            s->pdu = length;
            pos += UL_HEADER_LEN;
            r = sim_pdv_at(s, pl + pos, pl + pos + UL_HEADER_LEN, n - pos - UL_HEADER_LEN, &used);
            pos += UL_HEADER_LEN + used;
            if (r != 0)
                return r;
        } else if (s->state == F_HEADER || s->state == F_PDV_HEADER || s->state == F_COMMAND) {
            /* collecting */
            if (s->buf.len == 0 && s->state == F_HEADER)
                s->start_ts = 1;
            Py_ssize_t take = (Py_ssize_t)(s->need - s->buf.len);
            if (take > n - pos)
                take = n - pos;
            if (take < 0)
                return GO_FULL;
            if (collect_add(&s->buf, pl + pos, take) < 0)
                return -1;
            s->collected = 1;
            pos += take;
            if (s->buf.len < s->need)
                continue;
            if (s->state == F_HEADER) {
                if (s->buf.p[0] != 0x04)
                    return GO_FULL;  /* a control PDU (or junk): the full path */
                long long length = be32(s->buf.p + 2);
                s->headers++;
                s->added += length + UL_HEADER_LEN;
                s->buf.len = 0;
                s->pdu = length;
                if (length < UL_HEADER_LEN)
                    return GO_FULL;
                s->state = F_PDV_HEADER;
                s->need = UL_HEADER_LEN;
                s->need_set = 1;
            } else if (s->state == F_PDV_HEADER) {
                unsigned char hdr[UL_HEADER_LEN];
                memcpy(hdr, s->buf.p, UL_HEADER_LEN);
                s->buf.len = 0;
                if ((r = sim_pdv_at(s, hdr, NULL, 0, &used)) != 0)
                    return r;
            } else {
                if (sim_command(s, s->buf.p, s->buf.len) < 0)
                    return -1;
                s->pdu -= s->buf.len;
                s->buf.len = 0;
                if ((r = sim_end_pdv(s)) != 0)
                    return r;
            }
        } else {
            return GO_FULL;
        }
    }
    return 0;
}

/* The data-phase lane: an in-order segment of an association in its data phase that the framer
 * (a PduFramer) would consume with no event but P-DATA-TF PDUs and command values: data values,
 * PDV headers, P-DATA-TF headers and command values (each possibly split across segments), while
 * the association machine ignores P-DATA-TF (established, releasing) and the association already
 * counts P-DATA bytes. PduFramer.feed and Connection._deliver are simulated on locals; nothing is
 * written unless the whole payload passes, so any other case (control PDUs, malformed lengths, the
 * first P-DATA-TF) goes to the full path untouched. Complete command values are then handed to
 * Python, commands(conn, from_client, [(context, last, value), ...], ts), which gives them to the
 * association machine as _deliver would. 0 = done here, GO_FULL, -1 = error. */
static int
lane_data(Lane *self, PyObject *tsobj, PyObject *conn, long d, PyObject *stream, PyObject *framer, uint32_t seq,
          const unsigned char *pl, long n)
{
    Sim s;
    memset(&s, 0, sizeof(s));
    s.buf.p = s.buf.small;
    s.buf.cap = sizeof(s.buf.small);
    s.max_command = -1;
    s.framer = framer;
    long long data_bytes, pdus = 0, pdv_context = 0;
    int r, rc = GO_FULL;
    PyObject *counts = NULL, *buf = NULL;
    if ((r = get_ll(framer, &A_state, &s.state)) != 0)
        return r;
    if (s.state != F_DATA && s.state != F_PDV_HEADER && s.state != F_HEADER && s.state != F_COMMAND)
        return GO_FULL;
    if ((r = get_ll(framer, &A_pdu_left, &s.pdu)) != 0 || (r = get_ll(framer, &A_pdv_left, &s.pdv)) != 0
        || (r = get_ll(framer, &A_need, &s.need)) != 0)
        return r;
    if ((s.state == F_HEADER || s.state == F_PDV_HEADER) && s.need != UL_HEADER_LEN)
        return GO_FULL;
    if ((r = attr_true(conn, &A_closed)) != 0)  /* the flow table ignores a closed connection's segments */
        return r < 0 ? -1 : GO_FULL;
    if (s.state == F_COMMAND) {  /* a command value being collected: its PDV header was read before */
        if ((r = get_ll(framer, &A_pdv_context, &pdv_context)) != 0)
            return r;
        s.context = (long)pdv_context;
        if ((r = attr_true(framer, &A_pdv_last)) < 0)
            return -1;
        s.last = r;
    }
    buf = attr_get(framer, &A_buf);
    if (buf == NULL)
        return -1;
    if (!PyByteArray_CheckExact(buf) || PyByteArray_GET_SIZE(buf) > s.need)
        goto out;
    if (collect_add(&s.buf, (const unsigned char *)PyByteArray_AS_STRING(buf), PyByteArray_GET_SIZE(buf)) < 0) {
        rc = -1;
        goto out;
    }

    if ((r = sim_feed(&s, pl, n)) != 0) {
        rc = r;
        goto out;
    }

    long idx = 0;
    if (s.headers || s.cmds) {
        /* The association machine must ignore P-DATA-TF (and so be past the set-up) ... */
        PyObject *machine = attr_get(conn, &A_machine);
        if (machine == NULL) {
            rc = -1;
            goto out;
        }
        PyObject *mstate = attr_get(machine, &A_machine_state);
        PyObject *a = mstate ? attr_get(machine, &A_current) : NULL;
        Py_DECREF(machine);
        if (a == NULL) {
            Py_XDECREF(mstate);
            rc = -1;
            goto out;
        }
        r = PySet_Contains(self->quiet_states, mstate);
        Py_DECREF(mstate);
        if (r != 1 || a == Py_None) {
            Py_DECREF(a);
            rc = r < 0 ? -1 : GO_FULL;
            goto out;
        }
        if (s.headers) {
            /* ... and, for P-DATA-TF headers, the association must already count its P-DATA bytes
             * (its first P-DATA-TF notification was sent), as Connection._deliver does. */
            PyObject *outcome = attr_get(a, &A_outcome);
            PyObject *by_client = outcome ? attr_get(a, &A_requestor_is_client) : NULL;
            counts = by_client ? attr_get(a, &A_pdata_bytes) : NULL;
            Py_DECREF(a);
            if (counts == NULL) {
                Py_XDECREF(outcome);
                Py_XDECREF(by_client);
                rc = -1;
                goto out;
            }
            int usable = outcome == Py_None && PyBool_Check(by_client) && PyList_CheckExact(counts)
                         && PyList_GET_SIZE(counts) == 2;
            idx = ((d == 0) == (by_client == Py_True)) ? 0 : 1;
            Py_DECREF(outcome);
            Py_DECREF(by_client);
            if (!usable)
                goto out;
            PyObject *c0 = PyList_GET_ITEM(counts, 0), *c1 = PyList_GET_ITEM(counts, 1);
            int first = PyLong_CheckExact(c0) && PyLong_CheckExact(c1) && !PyObject_IsTrue(c0) && !PyObject_IsTrue(c1);
            if (first || !PyLong_CheckExact(PyList_GET_ITEM(counts, idx)))
                goto out;
            if ((r = get_ll(framer, &A_pdus, &pdus)) != 0) {
                rc = r;
                goto out;
            }
        } else {
            Py_DECREF(a);
        }
    }

    /* Commit, as feed() and _deliver() would have left things. */
    rc = -1;
    if (set_ll(stream, &A_next_seq, (long long)((seq + (uint32_t)n) & 0xFFFFFFFFu)) < 0
        || set_ll(framer, &A_state, s.state) < 0
        || set_ll(framer, &A_pdv_left, s.pdv) < 0
        || set_ll(framer, &A_pdu_left, s.pdu) < 0
        || get_ll(framer, &A_data_bytes, &data_bytes) != 0
        || set_ll(framer, &A_data_bytes, data_bytes + s.data) < 0
        || (s.need_set && set_ll(framer, &A_need, s.need) < 0)
        || (s.read_pdv && (set_ll(framer, &A_pdv_context, s.context) < 0
                           || attr_set(framer, &A_pdv_last, s.last ? Py_True : Py_False) < 0))
        || (s.headers && set_ll(framer, &A_pdus, pdus + s.headers) < 0)
        || (s.start_ts && attr_set(framer, &A_start_ts, tsobj) < 0)
        || attr_set(conn, &A_last_ts, tsobj) < 0)
        goto failed;
    if (s.collected || PyByteArray_GET_SIZE(buf) != s.buf.len) {
        if (PyByteArray_Resize(buf, s.buf.len) < 0)
            goto out;
        if (s.buf.len)
            memcpy(PyByteArray_AS_STRING(buf), s.buf.p, (size_t)s.buf.len);
    }
    if (s.headers) {
        long long before = PyLong_AsLongLong(PyList_GET_ITEM(counts, idx));
        PyObject *v = (before == -1 && PyErr_Occurred()) ? NULL : PyLong_FromLongLong(before + s.added);
        if (v == NULL)
            goto failed;
        PyList_SetItem(counts, idx, v);  /* steals v */
    }
    if (s.cmds) {
        PyObject *res = PyObject_CallFunctionObjArgs(self->commands, conn, d == 0 ? Py_True : Py_False, s.cmds, tsobj,
                                                     NULL);
        if (res == NULL)
            goto out;  /* the exception propagates */
        Py_DECREF(res);
    }
    rc = 0;
    goto out;
failed:
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_RuntimeError, "probe._lane: a framer attribute changed type mid-commit");
out:
    Py_XDECREF(counts);
    Py_XDECREF(buf);
    Py_XDECREF(s.cmds);
    if (s.buf.p != s.buf.small)
        PyMem_Free(s.buf.p);
    return rc;
}

static int
lane_try(Lane *self, PyObject *tsobj, const unsigned char *p, Py_ssize_t len)
{
    Py_ssize_t off = self->offset;
    if (len < off + 34)
        return GO_FULL;
    const unsigned char *ip = p + off;
    if (ip[-2] != 0x08 || ip[-1] != 0x00 || ip[0] != 0x45 || ip[9] != 6)
        return GO_FULL;
    if (((ip[6] << 8) | ip[7]) & 0x3FFF)  /* a fragment */
        return GO_FULL;
    const unsigned char *tcp = ip + 20;
    if ((tcp[13] & 0x07) || tcp[12] < 0x50)  /* FIN, SYN, RST; a data offset below 20 bytes */
        return GO_FULL;
    long total = (ip[2] << 8) | ip[3];
    PyObject *key = PyBytes_FromStringAndSize((const char *)ip + 12, 12);
    if (key == NULL)
        return -1;
    PyObject *entry = PyDict_GetItemWithError(self->fast, key);  /* borrowed */
    Py_DECREF(key);
    if (entry == NULL)
        return PyErr_Occurred() ? -1 : GO_FULL;
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 4)
        return GO_FULL;
    Py_INCREF(entry);  /* keep conn, stream, framer alive while attributes are set */
    int rc = GO_FULL;
    PyObject *conn = PyTuple_GET_ITEM(entry, 0);
    PyObject *dobj = PyTuple_GET_ITEM(entry, 1);
    PyObject *stream = PyTuple_GET_ITEM(entry, 2);
    PyObject *other = PyTuple_GET_ITEM(entry, 3);
    PyObject *framers = NULL, *framer = NULL;
    int t = attr_true(other, &A_ooo);
    if (t != 0) {
        rc = t < 0 ? -1 : GO_FULL;
        goto done;
    }
    long n = total - 20 - ((tcp[12] >> 4) << 2);
    if (n <= 0) {
        rc = attr_set(conn, &A_last_ts, tsobj) < 0 ? -1 : 0;
        goto done;
    }
    if (!PyLong_CheckExact(dobj))
        goto done;
    long d = PyLong_AsLong(dobj);
    if (d != 0 && d != 1) {
        if (d == -1 && PyErr_Occurred())
            rc = -1;
        goto done;
    }
    framers = attr_get(conn, &A_framers);
    if (framers == NULL) {
        rc = -1;
        goto done;
    }
    PyObject *borrowed;
    if (PyList_CheckExact(framers) && PyList_GET_SIZE(framers) == 2)
        borrowed = PyList_GET_ITEM(framers, d);
    else if (PyTuple_CheckExact(framers) && PyTuple_GET_SIZE(framers) == 2)
        borrowed = PyTuple_GET_ITEM(framers, d);
    else
        goto done;
    if (borrowed == Py_None)
        goto done;
    framer = borrowed;
    Py_INCREF(framer);
    long long state, pdv_left, pdu_left, data_bytes, next_seq;
    int r;
    uint32_t seq = ((uint32_t)tcp[4] << 24) | ((uint32_t)tcp[5] << 16) | ((uint32_t)tcp[6] << 8) | tcp[7];
    if ((r = get_ll(stream, &A_next_seq, &next_seq)) != 0 || next_seq != (long long)seq) {
        rc = r < 0 ? -1 : GO_FULL;
        goto done;
    }
    if ((t = attr_true(stream, &A_ooo)) != 0 || off + total > len) {
        rc = t < 0 ? -1 : GO_FULL;
        goto done;
    }
    if ((r = get_ll(framer, &A_state, &state)) != 0 || (r = get_ll(framer, &A_pdv_left, &pdv_left)) != 0) {
        rc = r < 0 ? -1 : GO_FULL;
        goto done;
    }
    if (state != self->data_state || n >= pdv_left) {
        if (self->pdu_framer != Py_None && (PyObject *)Py_TYPE(framer) == self->pdu_framer)
            rc = lane_data(self, tsobj, conn, d, stream, framer, seq, tcp + ((tcp[12] >> 4) << 2), n);
        goto done;
    }
    if ((r = get_ll(framer, &A_pdu_left, &pdu_left)) != 0 || (r = get_ll(framer, &A_data_bytes, &data_bytes)) != 0) {
        rc = r < 0 ? -1 : GO_FULL;
        goto done;
    }
    if (set_ll(stream, &A_next_seq, (long long)((seq + (uint32_t)n) & 0xFFFFFFFFu)) < 0
        || set_ll(framer, &A_pdv_left, pdv_left - n) < 0
        || set_ll(framer, &A_pdu_left, pdu_left - n) < 0
        || set_ll(framer, &A_data_bytes, data_bytes + n) < 0
        || attr_set(conn, &A_last_ts, tsobj) < 0) {
        rc = -1;
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF(framer);
    Py_XDECREF(framers);
    Py_DECREF(entry);
    return rc;
}

/* The tuple probe.decode.Decoder.decode returns for an untagged IPv4 (no options) / TCP frame,
 * (src, dst, sport, dport, seq, ack, flags, payload); NULL without an exception for any other frame
 * and for any frame Decoder.decode would count as skipped (truncated, bad header lengths), so that
 * those still go through it. */
static PyObject *
plain_segment(Lane *self, const unsigned char *p, Py_ssize_t len)
{
    Py_ssize_t off = self->offset;
    if (len < off + 40)
        return NULL;
    const unsigned char *ip = p + off;
    if (ip[-2] != 0x08 || ip[-1] != 0x00 || ip[0] != 0x45 || ip[9] != 6 || (((ip[6] << 8) | ip[7]) & 0x3FFF))
        return NULL;
    Py_ssize_t total = (ip[2] << 8) | ip[3];
    const unsigned char *tcp = ip + 20;
    Py_ssize_t hlen = (tcp[12] >> 4) * 4;
    if (off + total > len || hlen < 20 || 20 + hlen > total)
        return NULL;
    return Py_BuildValue("(y#y#iiIIiy#)", (const char *)ip + 12, (Py_ssize_t)4, (const char *)ip + 16,
                         (Py_ssize_t)4, (tcp[0] << 8) | tcp[1], (tcp[2] << 8) | tcp[3],
                         (unsigned int)be32(tcp + 4), (unsigned int)be32(tcp + 8), (int)tcp[13],
                         (const char *)tcp + hlen, total - 20 - hlen);
}

static PyObject *
Lane_call(Lane *self, PyObject *args, PyObject *kwds)
{
    if (!PyTuple_Check(args) || PyTuple_GET_SIZE(args) != 2 || (kwds != NULL && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "Lane(ts, frame) takes exactly two positional arguments");
        return NULL;
    }
    if (self->fast == NULL || self->full == NULL || self->pdu_framer == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Lane.__init__ was not called");
        return NULL;
    }
    PyObject *tsobj = PyTuple_GET_ITEM(args, 0);
    PyObject *frame = PyTuple_GET_ITEM(args, 1);
    double ts = PyFloat_AsDouble(tsobj);
    if (ts == -1.0 && PyErr_Occurred())
        return NULL;
    if (!PyBytes_Check(frame)) {  /* not what libpcap hands us: count it, let the full path judge it */
        Py_ssize_t size = PyObject_Length(frame);
        if (size < 0)
            return NULL;
        self->packets++;
        self->bytes += (unsigned long long)size;
        if (ts > self->last_ts)
            self->last_ts = ts;
        return PyObject_Call(self->full, args, NULL);
    }
    Py_ssize_t len = PyBytes_GET_SIZE(frame);
    self->packets++;
    self->bytes += (unsigned long long)len;
    if (ts > self->last_ts) {
        self->last_ts = ts;
        if (ts >= self->next_expiry)  /* idle timeouts are due: the full path runs them */
            return PyObject_Call(self->full, args, NULL);
    }
    int rc = lane_try(self, tsobj, (const unsigned char *)PyBytes_AS_STRING(frame), len);
    if (rc < 0)
        return NULL;
    if (rc == GO_FULL) {
        if (self->full_seg != NULL) {  /* the headers parsed here, not again in Python */
            PyObject *seg = plain_segment(self, (const unsigned char *)PyBytes_AS_STRING(frame), len);
            if (seg != NULL) {
                PyObject *res = PyObject_CallFunctionObjArgs(self->full_seg, tsobj, frame, seg, NULL);
                Py_DECREF(seg);
                return res;
            }
            if (PyErr_Occurred())
                return NULL;
        }
        return PyObject_Call(self->full, args, NULL);
    }
    self->fast_frames++;
    Py_RETURN_NONE;
}

static PyMemberDef Lane_members[] = {
    {"packets", T_ULONGLONG, offsetof(Lane, packets), 0, "frames seen (all of them, fast or not)"},
    {"bytes", T_ULONGLONG, offsetof(Lane, bytes), 0, "bytes of the frames seen"},
    {"fast_frames", T_ULONGLONG, offsetof(Lane, fast_frames), READONLY, "frames finished without the full path"},
    {"last_ts", T_DOUBLE, offsetof(Lane, last_ts), 0, "latest frame timestamp seen"},
    {"next_expiry", T_DOUBLE, offsetof(Lane, next_expiry), 0, "a frame at or after this time goes to the full path"},
    {"offset", T_PYSSIZET, offsetof(Lane, offset), READONLY, "where the IPv4 header starts"},
    {NULL}
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "probe._lane.Lane",
    .tp_doc = PyDoc_STR("Lane(fast, offset, full, data_state, next_expiry=0.0, pdu_framer=None, quiet_states=None, "
                        "commands=None, full_seg=None): the compiled per-packet fast lane; call it as lane(ts, frame)."),
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_traverse = (traverseproc)Lane_traverse,
    .tp_clear = (inquiry)Lane_clear,
    .tp_call = (ternaryfunc)Lane_call,
    .tp_members = Lane_members,
};

static struct PyModuleDef lanemodule = {
    PyModuleDef_HEAD_INIT,
    .m_name = "probe._lane",
    .m_doc = "The pipeline's per-packet fast lane in C (optional; probe/pipeline.py has the same in Python).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__lane(void)
{
#define INTERN(var, text) if ((var.name = PyUnicode_InternFromString(text)) == NULL) return NULL
    INTERN(A_ooo, "_ooo");
    INTERN(A_framers, "framers");
    INTERN(A_state, "_state");
    INTERN(A_pdv_left, "_pdv_left");
    INTERN(A_pdu_left, "_pdu_left");
    INTERN(A_data_bytes, "data_bytes");
    INTERN(A_next_seq, "next_seq");
    INTERN(A_last_ts, "last_ts");
    INTERN(A_buf, "_buf");
    INTERN(A_pdus, "pdus");
    INTERN(A_need, "_need");
    INTERN(A_start_ts, "_start_ts");
    INTERN(A_pdv_context, "_pdv_context");
    INTERN(A_pdv_last, "_pdv_last");
    INTERN(A_closed, "closed");
    INTERN(A_machine_state, "state");
    INTERN(A_max_command, "_max_command");
    INTERN(A_machine, "machine");
    INTERN(A_current, "current");
    INTERN(A_outcome, "outcome");
    INTERN(A_pdata_bytes, "pdata_bytes");
    INTERN(A_requestor_is_client, "requestor_is_client");
#undef INTERN
    if (PyType_Ready(&LaneType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&lanemodule);
    if (m == NULL)
        return NULL;
    Py_INCREF(&LaneType);
    if (PyModule_AddObject(m, "Lane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(&LaneType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
