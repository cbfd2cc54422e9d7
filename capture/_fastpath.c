/*
 * The packet loop's fast path, compiled: RTP of known streams in a classic pcap buffer.
 *
 * scan_pcap() walks pcap records from an offset and, for as long as each record is an untagged
 * Ethernet/IPv4/UDP frame (20-byte header, not a fragment) whose 12 address/port bytes are a key of
 * `sinks`, appends it to that stream's spool buffer exactly as StreamSpool.add does (a "<dI" header,
 * arrival time and length, then the UDP payload). It stops at the first record that is anything
 * else, that arrives at or after `deadline` (a timer is due), that is not wholly in the buffer, or
 * after a buffer has grown past `limit` (the caller spills it). Everything it skips stays the
 * Python engine's: this is the same logic as CaptureEngine.handle_frame, without an interpreter
 * step per packet. It holds no state and does no I/O.
 *
 * A sink is a Python list [bytearray buffer, int packets, float last arrival, ...].
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_CAPLEN (256 * 1024)

static inline uint32_t read_u32(const unsigned char *p, int big_endian) {
    if (big_endian)
        return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
    return ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | (uint32_t)p[0];
}

/* Append "<dI" (arrival, length) and the payload to a bytearray. Returns 0, or -1 with an error set. */
static int append_record(PyObject *buffer, double arrival, const unsigned char *payload, Py_ssize_t length) {
    Py_ssize_t size = PyByteArray_GET_SIZE(buffer);
    Py_ssize_t needed = size + 12 + length;
    if (needed >= ((PyByteArrayObject *)buffer)->ob_alloc) {
        /* Grow by doubling (bytearray's own growth is 1/8: with thousands of spools growing side by
         * side, realloc copied each about nine times over). Growing to twice the size and then
         * setting the size back keeps the allocation: bytearray only shrinks below half of it. */
        if (PyByteArray_Resize(buffer, 2 * needed) < 0)
            return -1;
    }
    if (PyByteArray_Resize(buffer, needed) < 0)
        return -1;
    char *out = PyByteArray_AS_STRING(buffer) + size;
    uint32_t len32 = (uint32_t)length;
    /* The spool format is little-endian; x86-64 and aarch64 Linux are too, checked at import. */
    memcpy(out, &arrival, 8);
    memcpy(out + 8, &len32, 4);
    memcpy(out + 12, payload, (size_t)length);
    return 0;
}

static int bump(PyObject *sink, double arrival) {
    PyObject *old = PyList_GET_ITEM(sink, 1);
    Py_ssize_t packets = PyLong_AsSsize_t(old);
    if (packets == -1 && PyErr_Occurred())
        return -1;
    PyObject *count = PyLong_FromSsize_t(packets + 1);
    if (count == NULL)
        return -1;
    PyObject *last = PyFloat_FromDouble(arrival);
    if (last == NULL) {
        Py_DECREF(count);
        return -1;
    }
    PyList_SetItem(sink, 1, count); /* steals; releases the old value */
    PyList_SetItem(sink, 2, last);
    return 0;
}

PyDoc_STRVAR(scan_pcap_doc,
"scan_pcap(buf, pos, big_endian, scale, sinks, deadline, limit) -> (pos, packets, last, full)\n\n"
"Consume fast-path records of a classic pcap buffer from `pos` (see the module comment). Returns\n"
"where it stopped, how many records it consumed, the arrival time of the last one, and the sink\n"
"whose buffer passed `limit` (else None).");

static PyObject *scan_pcap(PyObject *module, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos, limit;
    int big_endian;
    double scale, deadline;
    PyObject *sinks;
    if (!PyArg_ParseTuple(args, "y*npdO!dn", &view, &pos, &big_endian, &scale, &PyDict_Type, &sinks,
                          &deadline, &limit))
        return NULL;
    const unsigned char *buf = (const unsigned char *)view.buf;
    Py_ssize_t n = view.len;
    Py_ssize_t consumed = 0;
    double last = 0.0;
    PyObject *full = Py_None;
    if (pos < 0)
        pos = n;
    while (pos + 16 <= n) {
        const unsigned char *rec = buf + pos;
        uint32_t sec = read_u32(rec, big_endian);
        uint32_t frac = read_u32(rec + 4, big_endian);
        uint32_t caplen = read_u32(rec + 8, big_endian);
        if (caplen > MAX_CAPLEN || caplen < 42 || pos + 16 + (Py_ssize_t)caplen > n)
            break;
        const unsigned char *frame = rec + 16;
        if (frame[12] != 8 || frame[13] != 0 || frame[14] != 0x45 || frame[23] != 17 || (frame[20] & 0x3F) ||
            frame[21])
            break;
        double arrival = (double)sec + (double)frac * scale;
        if (arrival >= deadline)
            break;
        Py_ssize_t udp_end = 34 + (((Py_ssize_t)frame[38] << 8) | frame[39]);
        if (udp_end < 42 || udp_end > (Py_ssize_t)caplen)
            break;
        PyObject *key = PyBytes_FromStringAndSize((const char *)frame + 26, 12);
        if (key == NULL)
            goto error;
        PyObject *sink = PyDict_GetItemWithError(sinks, key); /* borrowed */
        Py_DECREF(key);
        if (sink == NULL) {
            if (PyErr_Occurred())
                goto error;
            break;
        }
        if (!PyList_CheckExact(sink) || PyList_GET_SIZE(sink) < 3 || !PyByteArray_CheckExact(PyList_GET_ITEM(sink, 0))) {
            PyErr_SetString(PyExc_TypeError, "a sink is a list [bytearray, int, float, ...]");
            goto error;
        }
        PyObject *buffer = PyList_GET_ITEM(sink, 0);
        if (append_record(buffer, arrival, frame + 42, udp_end - 42) < 0 || bump(sink, arrival) < 0)
            goto error;
        pos += 16 + (Py_ssize_t)caplen;
        consumed += 1;
        last = arrival;
        if (PyByteArray_GET_SIZE(buffer) > limit) {
            full = sink;
            break;
        }
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("nndO", pos, consumed, last, full);
error:
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan_pcap", scan_pcap, METH_VARARGS, scan_pcap_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "capture._fastpath",
    "The packet loop's fast path for RTP of known streams in classic pcap files (compiled).", -1, methods,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    const uint16_t probe = 1;
    if (*(const unsigned char *)&probe != 1) {
        PyErr_SetString(PyExc_ImportError, "capture._fastpath needs a little-endian machine");
        return NULL;
    }
    return PyModule_Create(&module);
}
