/*
 * The renderer's fast path, compiled: a plain G.711 spool in one pass, chunk by chunk.
 *
 * render_g711() reads a spool's records ("<dI" arrival and length, then the datagram) and, while the
 * spool is *plain*, does in one pass what capture/render.py's scan and fast placer do with arrays:
 * the RFC 3550 statistics of each SSRC (A.1/A.3/A.8, as StatsTracker.update does them, packet by
 * packet) and the placement of the G.711 payloads on the output timeline, table-decoded into runs of
 * samples the caller writes to the channel (memory or file). Plain means:
 *   - every record is RTCP or an RTP packet with a bare 12-byte header (0x80: no padding, extension
 *     or CSRCs);
 *   - at most MAX_SSRCS SSRCs; each carries one G.711 payload type at most, and perhaps comfort
 *     noise (8 kHz) and telephone-events, as told by `kinds`;
 *   - per SSRC, sequence numbers rise by 1..MAX_DROPOUT from packet to packet (or repeat the last
 *     one on a telephone-event: a duplicate), and the timestamps of its timed packets (audio,
 *     comfort noise) by 1..2^31-1: no other duplicate, no reordering or restart;
 *   - the placed payloads never overlap in the output (each starts at or after the previous end).
 * On anything else it returns None and the caller renders the call the general way, discarding what
 * it wrote. The spool's state between chunks lives in a buffer the caller owns; no I/O here.
 *
 * jitter() is RFC 3550 A.8's J += (|D| - J)/16 over an array of |D|, the same sequential arithmetic.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_DROPOUT 3000
#define REANCHOR_SECONDS 1.0
#define CLOCK 8000
#define MAX_SSRCS 8
#define MAX_BRIDGE 8000 /* frames of silence written to join two runs (fewer, longer writes) */

/* Payload-type kinds (the `kinds` table). */
enum { NOT_PLAIN = 0, ULAW = 1, ALAW = 2, COMFORT_NOISE = 3, TELEPHONE_EVENT = 4 };

static inline uint16_t be16(const unsigned char *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* One SSRC: StatsTracker's fields and _SsrcPlacer's anchor. */
typedef struct {
    uint32_t ssrc;
    int audio_pt; /* -1 until its first audio packet */
    uint64_t pts[2]; /* payload types seen, as a 128-bit set */
    long long packets, audio, duplicates;
    double first_arrival, last_arrival, max_delta;
    int64_t seq, lowest; /* extended sequence numbers: last (the highest) and first */
    uint16_t raw_seq;
    int timed;   /* a timed packet was seen: ts, raw_ts, transit are set */
    int64_t ts;  /* extended timestamp of the last timed packet */
    uint32_t raw_ts;
    double transit, jitter, max_jitter, frame_seconds;
    int64_t audio_seq, audio_ts; /* the last audio packet's (for the packetization), audio > 0 */
    int anchored;
    double anchor_arrival;
    int64_t anchor_ts, anchor_offset;
} Ssrc;

/* Append a new reference (NULL: an error is set) to a list, releasing it. Returns 0, or -1 on error. */
static int append_new(PyObject *list, PyObject *item) {
    if (item == NULL)
        return -1;
    int status = PyList_Append(list, item);
    Py_DECREF(item);
    return status;
}

/* A spool's state between chunks: lives in a bytearray the caller keeps (state_size() bytes, zeroed). */
typedef struct {
    long long datagrams, rtcp, early, late, placed, comfort_noise;
    int64_t written_to; /* output frames before this are written: payloads must not overlap */
    int count;          /* SSRCs seen */
    Ssrc ssrcs[MAX_SSRCS];
} State;

PyDoc_STRVAR(render_g711_doc,
"render_g711(state, chunk, kinds, ulaw, alaw, start, stop, frames, scratch, bridge) -> (consumed, runs, events) | None\n\n"
"Take the complete records at the front of `chunk` (a spool's records, in order, from where the last\n"
"call stopped) into `state` (a zeroed bytearray of state_size() bytes, one per spool). `kinds` has\n"
"128 bytes, one per payload type: 0 not plain, 1 µ-law, 2 A-law, 3 comfort noise (8 kHz),\n"
"4 telephone-event; `ulaw` and `alaw` are the 256-entry int16 decode tables. Audio arriving in\n"
"[start, stop] is decoded into `scratch` (a writable int16 buffer of at least len(chunk) samples)\n"
"and placed on the output timeline, clipped to [0, frames). Returns None when the spool is not plain\n"
"(see the module comment), else how many bytes of `chunk` it consumed (the rest is a torn record:\n"
"pass it again with the next chunk), the runs to write as (output frame, scratch index, samples),\n"
"contiguous runs joined, and the telephone-event packets as (arrival, ssrc, timestamp, payload type,\n"
"payload). With `bridge` (nothing else writes the channel's timeline: its first spool), runs less\n"
"than a second apart are joined too, the gap filled with silence.");

static PyObject *render_g711(PyObject *module, PyObject *args) {
    (void)module;
    Py_buffer state_buf, chunk, kinds, ulaw, alaw, scratch;
    double start, stop;
    Py_ssize_t frames;
    int bridge;
    if (!PyArg_ParseTuple(args, "w*y*y*y*y*ddnw*p", &state_buf, &chunk, &kinds, &ulaw, &alaw, &start, &stop,
                          &frames, &scratch, &bridge))
        return NULL;
    PyObject *result = NULL, *events = NULL, *runs = NULL;
    if (state_buf.len != (Py_ssize_t)sizeof(State) || kinds.len != 128 || ulaw.len != 512 || alaw.len != 512 ||
        frames < 0 || scratch.len < 2 * chunk.len) {
        PyErr_SetString(PyExc_ValueError, "render_g711: bad state, table or scratch size");
        goto done;
    }
    events = PyList_New(0);
    runs = PyList_New(0);
    if (events == NULL || runs == NULL)
        goto done;
    State *st = state_buf.buf;
    if (st->count < 0 || st->count > MAX_SSRCS) {
        PyErr_SetString(PyExc_ValueError, "render_g711: corrupt state");
        goto done;
    }
    const unsigned char *data = chunk.buf, *kind_of = kinds.buf;
    const int16_t *tables[3] = {NULL, ulaw.buf, alaw.buf};
    int16_t *out = scratch.buf;
    Py_ssize_t size = chunk.len, position = 0, used = 0, capacity = scratch.len / (Py_ssize_t)sizeof *out;
    int64_t run_frame = 0, run_start = 0, run_length = 0; /* the run being gathered */
    int plain = 1;

    while (position + 12 <= size) {
        double arrival;
        uint32_t length;
        memcpy(&arrival, data + position, 8);
        memcpy(&length, data + position + 8, 4);
        if ((Py_ssize_t)length > size - position - 12)
            break; /* torn: the caller passes it again with the next chunk, or drops it at the end */
        if (!isfinite(arrival)) {
            plain = 0; /* not from a capture clock: left to the general path */
            break;
        }
        const unsigned char *d = data + position + 12;
        position += 12 + (Py_ssize_t)length;
        st->datagrams++;
        /* RFC 5761 §4: a second octet of 192-223 after version 2 is RTCP. */
        if (length >= 8 && (d[0] >> 6) == 2 && d[1] >= 192 && d[1] <= 223) {
            st->rtcp++;
            continue;
        }
        if (length < 12 || d[0] != 0x80) {
            plain = 0; /* padding, extension, CSRCs or not RTP: the general path */
            break;
        }
        int pt = d[1] & 0x7F, kind = kind_of[pt];
        uint16_t raw_seq = be16(d + 2);
        uint32_t raw_ts = be32(d + 4), source = be32(d + 8);
        if (kind == NOT_PLAIN) {
            plain = 0;
            break;
        }
        Ssrc *s = NULL;
        for (int i = 0; i < st->count; i++)
            if (st->ssrcs[i].ssrc == source) {
                s = &st->ssrcs[i];
                break;
            }
        if (s == NULL) {
            if (st->count == MAX_SSRCS) {
                plain = 0;
                break;
            }
            s = &st->ssrcs[st->count++];
            memset(s, 0, sizeof *s);
            s->ssrc = source;
            s->audio_pt = -1;
            s->first_arrival = arrival;
            s->seq = s->lowest = raw_seq;
            s->frame_seconds = 0.02;
        } else {
            uint16_t step = (uint16_t)(raw_seq - s->raw_seq);
            /* RFC 4733 senders may repeat an event's final packet under one sequence number. */
            if ((step == 0 && kind != TELEPHONE_EVENT) || step > MAX_DROPOUT) {
                plain = 0;
                break;
            }
            s->seq += step;
            if (step == 0)
                s->duplicates++;
            if (arrival - s->last_arrival > s->max_delta)
                s->max_delta = arrival - s->last_arrival;
        }
        s->raw_seq = raw_seq;
        s->last_arrival = arrival;
        s->packets++;
        s->pts[pt >> 6] |= (uint64_t)1 << (pt & 63);
        if (kind == TELEPHONE_EVENT) {
            if (append_new(events, Py_BuildValue("dkkiy#", arrival, (unsigned long)source, (unsigned long)raw_ts, pt,
                                                 (const char *)d + 12, (Py_ssize_t)length - 12)) < 0)
                goto done;
            continue;
        }
        /* Timed: audio or comfort noise, both on the 8 kHz clock. */
        if (!s->timed) {
            s->timed = 1;
            s->ts = raw_ts;
            s->transit = arrival - (double)s->ts / CLOCK;
        } else {
            uint32_t step = raw_ts - s->raw_ts;
            if (step < 1 || step >= 0x80000000u) {
                plain = 0;
                break;
            }
            s->ts += step;
            double transit = arrival - (double)s->ts / CLOCK;
            s->jitter += (fabs(transit - s->transit) - s->jitter) / 16;
            if (s->jitter > s->max_jitter)
                s->max_jitter = s->jitter;
            s->transit = transit;
        }
        s->raw_ts = raw_ts;
        if (kind == COMFORT_NOISE) {
            st->comfort_noise++;
            continue;
        }
        if (s->audio_pt < 0)
            s->audio_pt = pt;
        else if (s->audio_pt != pt) {
            plain = 0; /* two audio codecs on one SSRC */
            break;
        }
        if (s->audio && s->seq == s->audio_seq + 1 && s->ts - s->audio_ts <= CLOCK)
            s->frame_seconds = (double)(s->ts - s->audio_ts) / CLOCK;
        s->audio++;
        s->audio_seq = s->seq;
        s->audio_ts = s->ts;
        if (arrival < start) {
            st->early++;
            continue;
        }
        if (arrival > stop) {
            st->late++;
            continue;
        }
        st->placed++;
        /* The timeline anchor of render._SsrcPlacer.place (rate == clock: offsets are timestamps). */
        if (s->anchored && fabs(arrival - (s->anchor_arrival + (double)(s->ts - s->anchor_ts) / CLOCK)) >
                               REANCHOR_SECONDS)
            s->anchored = 0;
        if (!s->anchored) {
            double position = (arrival - start) * CLOCK;
            if (!(fabs(position) < 0x1p62)) {
                plain = 0; /* absurd time stamps: the general path's arbitrary-precision arithmetic */
                break;
            }
            s->anchored = 1;
            s->anchor_arrival = arrival;
            s->anchor_ts = s->ts;
            s->anchor_offset = (int64_t)nearbyint(position); /* round half to even, as Python's round */
        }
        int64_t offset = s->anchor_offset + (s->ts - s->anchor_ts); /* (ts - anchor) * rate // clock */
        int64_t first = offset > 0 ? offset : 0;
        int64_t last = offset + (int64_t)(length - 12);
        if (last > frames)
            last = frames;
        if (last <= first)
            continue;
        if (first < st->written_to) {
            plain = 0; /* overlapping payloads: the order of writes matters */
            break;
        }
        st->written_to = last;
        int64_t gap = first - (run_frame + run_length);
        /* Room for the silence, this payload, and every payload still in the chunk (at most its bytes). */
        int room = used + gap + (last - first) + (size - position) <= capacity;
        if (run_length && (gap == 0 || (bridge && gap <= MAX_BRIDGE && room))) {
            /* Join the run: a gap the channel has not been written in is silence either way. */
            memset(out + used, 0, (size_t)gap * sizeof *out);
            used += gap;
            run_length += gap + (last - first);
        } else {
            if (run_length && append_new(runs, Py_BuildValue("LLL", (long long)run_frame, (long long)run_start,
                                                             (long long)run_length)) < 0)
                goto done;
            run_frame = first;
            run_start = used;
            run_length = last - first;
        }
        const unsigned char *payload = d + 12 + (first - offset);
        const int16_t *table = tables[kind];
        for (int64_t i = 0; i < last - first; i++)
            out[used + i] = table[payload[i]];
        used += last - first;
    }
    if (!plain) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (run_length && append_new(runs, Py_BuildValue("LLL", (long long)run_frame, (long long)run_start,
                                                     (long long)run_length)) < 0)
        goto done;
    result = Py_BuildValue("nOO", position, runs, events);
done:
    Py_XDECREF(events);
    Py_XDECREF(runs);
    PyBuffer_Release(&state_buf);
    PyBuffer_Release(&chunk);
    PyBuffer_Release(&kinds);
    PyBuffer_Release(&ulaw);
    PyBuffer_Release(&alaw);
    PyBuffer_Release(&scratch);
    return result;
}

static PyObject *ssrc_tuple(const Ssrc *s) {
    PyObject *types = PyList_New(0);
    if (types == NULL)
        return NULL;
    for (int pt = 0; pt < 128; pt++) {
        if (!(s->pts[pt >> 6] >> (pt & 63) & 1))
            continue;
        PyObject *value = PyLong_FromLong(pt);
        if (value == NULL || PyList_Append(types, value) < 0) {
            Py_XDECREF(value);
            Py_DECREF(types);
            return NULL;
        }
        Py_DECREF(value);
    }
    return Py_BuildValue("kNiLLLdddLLddd", (unsigned long)s->ssrc, types, s->audio_pt, s->packets, s->duplicates,
                         s->audio, s->first_arrival, s->last_arrival, s->max_delta, (long long)s->lowest,
                         (long long)s->seq, s->jitter, s->max_jitter, s->frame_seconds);
}

PyDoc_STRVAR(plain_result_doc,
"plain_result(state) -> (datagrams, rtcp, early, late, placed, comfort_noise, ssrcs)\n\n"
"What a spool's state holds after its last chunk: early/late/placed count audio packets; ssrcs has\n"
"per SSRC in order of appearance (ssrc, payload types (a list), audio payload type or -1, packets,\n"
"duplicates, audio packets, first_arrival, last_arrival, max_delta, lowest, highest, jitter,\n"
"max_jitter, frame_seconds).");

static PyObject *plain_result(PyObject *module, PyObject *args) {
    (void)module;
    Py_buffer state_buf;
    if (!PyArg_ParseTuple(args, "y*", &state_buf))
        return NULL;
    PyObject *result = NULL;
    if (state_buf.len != (Py_ssize_t)sizeof(State)) {
        PyErr_SetString(PyExc_ValueError, "plain_result: bad state size");
        goto done;
    }
    const State *st = state_buf.buf;
    if (st->count < 0 || st->count > MAX_SSRCS) {
        PyErr_SetString(PyExc_ValueError, "plain_result: corrupt state");
        goto done;
    }
    PyObject *per_ssrc = PyList_New(st->count);
    if (per_ssrc == NULL)
        goto done;
    for (int i = 0; i < st->count; i++) {
        PyObject *item = ssrc_tuple(&st->ssrcs[i]);
        if (item == NULL) {
            Py_DECREF(per_ssrc);
            goto done;
        }
        PyList_SET_ITEM(per_ssrc, i, item);
    }
    result = Py_BuildValue("LLLLLLN", st->datagrams, st->rtcp, st->early, st->late, st->placed, st->comfort_noise,
                           per_ssrc);
done:
    PyBuffer_Release(&state_buf);
    return result;
}

PyDoc_STRVAR(jitter_doc,
"jitter(changes, jitter) -> (jitter, highest)\n\n"
"RFC 3550 A.8 over `changes` (a float64 buffer of |D| values) from `jitter`: the final estimate and\n"
"the largest one along the way (at least `jitter`).");

static PyObject *jitter_run(PyObject *module, PyObject *args) {
    (void)module;
    Py_buffer changes;
    double jitter;
    if (!PyArg_ParseTuple(args, "y*d", &changes, &jitter))
        return NULL;
    if (changes.len % sizeof(double)) {
        PyBuffer_Release(&changes);
        PyErr_SetString(PyExc_ValueError, "jitter: changes must be float64");
        return NULL;
    }
    const double *d = changes.buf;
    Py_ssize_t count = changes.len / (Py_ssize_t)sizeof(double);
    double top = jitter;
    for (Py_ssize_t i = 0; i < count; i++) {
        jitter += (d[i] - jitter) / 16;
        if (jitter > top)
            top = jitter;
    }
    PyBuffer_Release(&changes);
    return Py_BuildValue("dd", jitter, top);
}

static PyMethodDef methods[] = {
    {"render_g711", render_g711, METH_VARARGS, render_g711_doc},
    {"plain_result", plain_result, METH_VARARGS, plain_result_doc},
    {"jitter", jitter_run, METH_VARARGS, jitter_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "capture._spoolrender", "The renderer's compiled fast path.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__spoolrender(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "STATE_SIZE", (long)sizeof(State)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
