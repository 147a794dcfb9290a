/* The probe's per-packet RTP work in native code (fleet.leanrtp): a frame's packets built, SRTP-protected and
 * sent in one call (sendmmsg); a received datagram SRTP-unprotected and parsed in one call, or (Tap.take)
 * unprotected, parsed, counted for the receiver's reports and NACKs and reassembled into frames in one call, the
 * frame tap's reassembly (fleet.rtp.TapCore's twin) and the receiver's duties (fleet.duties) kept here.
 *
 * libsrtp is the one pylibsrtp bundles and aiortc keys: its srtp_protect / srtp_unprotect are passed in as
 * addresses (cffi's ffi.addressof on pylibsrtp's compiled binding; fleet.srtpcalls checks their C signature is
 * libsrtp 2's before using them) with the session's srtp_t, so the packets go through the very session state
 * aiortc uses for its RTCP; nothing here links libsrtp. What is sent and what a parse hands back is judged
 * against aiortc's and pylibsrtp's own in tests/test_rtp_native.py, the tap against TapCore and aiortc's statistics
 * and NACK generator in tests/test_tap_native.py, and all of it over real peer connections in tests/test_lean_rtp.py.
 * One more call, for a decoded frame rather than a packet: a plane's mean on a subsampled grid (plane_mean, what
 * the probe's decode windows read of every frame they decode: fleet.probe.planes, judged against numpy there).
 *
 * Built by setuptools as an optional extension: without a C compiler the install still succeeds and
 * fleet.srtpcalls keeps the Python path (fleet.srtpcalls.native_enabled() says which one runs). API names this
 * file's interface: fleet.srtpcalls uses a build only when it matches, so a stale build is never called.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdalign.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>

#define API 4

typedef int (*srtp_call)(void *ctx, void *header, int *length);  /* libsrtp 2: srtp_err_status_t (srtp_t, void *, int *) */

#define BUFFER 1500      /* pylibsrtp's buffer: the longest SRTP packet, as aiortc's path takes them */
#define TRAILER_MAX 144  /* libsrtp 2's SRTP_MAX_TRAILER_LEN: authentication tag and MKI */
#define PACKET_MAX (BUFFER - TRAILER_MAX)  /* the longest RTP packet protected, as pylibsrtp's */
#define BATCH 32         /* packets per sendmmsg */

typedef struct {
    alignas(16) unsigned char data[BUFFER];  /* libsrtp reads the packet in 32-bit words */
    int length;
} Packet;

static PyTypeObject *RtpView;  /* a struct sequence with aiortc RtpPacket's field names */

static PyStructSequence_Field view_fields[] = {
    {"payload_type", NULL}, {"marker", NULL}, {"sequence_number", NULL},
    {"timestamp", NULL},    {"ssrc", NULL},   {"payload", NULL},      {NULL, NULL}};

static PyStructSequence_Desc view_desc = {
    "fleet._rtpnative.RtpView", "The fields of an RTP packet the probe reads, its payload a copy.", view_fields, 6};

/* (host, port) as a socket address; 0 for what inet_pton does not read (a scoped IPv6 address, a name) or a port
 * out of range */
static int address_of(PyObject *host, int port, struct sockaddr_storage *to, socklen_t *length) {
    if (port < 0 || port > 65535)
        return 0;
    const char *text = PyUnicode_AsUTF8(host);
    if (text == NULL) {
        PyErr_Clear();
        return 0;
    }
    memset(to, 0, sizeof(*to));
    struct sockaddr_in *v4 = (struct sockaddr_in *)to;
    if (inet_pton(AF_INET, text, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *length = sizeof(*v4);
        return 1;
    }
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)to;
    if (inet_pton(AF_INET6, text, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *length = sizeof(*v6);
        return 1;
    }
    return 0;
}

static void put32(unsigned char *at, uint32_t value) {
    at[0] = value >> 24; at[1] = value >> 16; at[2] = value >> 8; at[3] = value;
}

static uint32_t get32(const unsigned char *at) {
    return ((uint32_t)at[0] << 24) | ((uint32_t)at[1] << 16) | ((uint32_t)at[2] << 8) | at[3];
}

typedef struct {
    int head0, payload_type;
    unsigned int seq, timestamp, ssrc;
    Py_buffer ext;
    srtp_call protect;
    void *srtp;
    PyObject *history;
    int history_size;
} Frame;

/* Packets built, kept unprotected in the history and protected, up to the first one libsrtp refuses; -1 with an
 * exception set if keeping one failed. *status is libsrtp's status for the refused one (0: none was), *octets the
 * protected packets' payload bytes. */
static Py_ssize_t build_and_protect(const Frame *f, PyObject *payloads, Packet *packets, int *status, long long *octets) {
    Py_ssize_t count = PyTuple_GET_SIZE(payloads), protected = 0;
    *status = 0;
    *octets = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *payload = PyTuple_GET_ITEM(payloads, i);
        Py_ssize_t size = PyBytes_GET_SIZE(payload), length = 12 + f->ext.len + size;
        unsigned char *packet = packets[i].data;
        uint16_t number = (uint16_t)(f->seq + i);
        packet[0] = (unsigned char)f->head0;
        packet[1] = (unsigned char)((f->payload_type & 0x7F) | (i == count - 1 ? 0x80 : 0));
        packet[2] = number >> 8;
        packet[3] = number & 0xFF;
        put32(packet + 4, f->timestamp);
        put32(packet + 8, f->ssrc);
        memcpy(packet + 12, f->ext.buf, f->ext.len);
        memcpy(packet + 12 + f->ext.len, PyBytes_AS_STRING(payload), size);
        PyObject *plain = PyBytes_FromStringAndSize((const char *)packet, length);
        PyObject *key = plain ? PyLong_FromLong(number % f->history_size) : NULL;
        int kept = key ? PyDict_SetItem(f->history, key, plain) : -1;
        Py_XDECREF(key);
        Py_XDECREF(plain);
        if (kept < 0)
            return -1;
        packets[i].length = (int)length;
        *status = f->protect(f->srtp, packet, &packets[i].length);
        if (*status != 0)
            break;
        protected++;
        *octets += size;
    }
    return protected;
}

/* How many of the first count packets the socket took, in batches of BATCH, stopping at the first refusal */
static Py_ssize_t send_batches(int fd, const struct sockaddr_storage *to, socklen_t to_length, Packet *packets, Py_ssize_t count) {
    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    Py_ssize_t sent = 0;
    while (sent < count) {
        int batch = (int)(count - sent < BATCH ? count - sent : BATCH);
        memset(messages, 0, batch * sizeof(messages[0]));
        for (int k = 0; k < batch; k++) {
            vectors[k].iov_base = packets[sent + k].data;
            vectors[k].iov_len = packets[sent + k].length;
            messages[k].msg_hdr.msg_name = (void *)to;
            messages[k].msg_hdr.msg_namelen = to_length;
            messages[k].msg_hdr.msg_iov = &vectors[k];
            messages[k].msg_hdr.msg_iovlen = 1;
        }
        int n = sendmmsg(fd, messages, batch, MSG_DONTWAIT);
        if (n <= 0)
            break;  /* would block, or failed: the rest go through the caller's transport, which handles both */
        sent += n;
    }
    return sent;
}

/* The packets from first to count as a list of bytes */
static PyObject *packet_list(const Packet *packets, Py_ssize_t first, Py_ssize_t count) {
    PyObject *list = PyList_New(count - first);
    for (Py_ssize_t i = first; list != NULL && i < count; i++) {
        PyObject *data = PyBytes_FromStringAndSize((const char *)packets[i].data, packets[i].length);
        if (data == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i - first, data);
    }
    return list;
}

/* NULL with TypeError or ValueError set unless every payload is bytes and fits a packet with this extension block */
static PyObject *checked_payloads(PyObject *payloads, Py_ssize_t ext_length) {
    PyObject *items = PySequence_Tuple(payloads);
    for (Py_ssize_t i = 0; items != NULL && i < PyTuple_GET_SIZE(items); i++) {
        PyObject *payload = PyTuple_GET_ITEM(items, i);
        if (!PyBytes_Check(payload)) {
            PyErr_SetString(PyExc_TypeError, "payloads must be bytes");
            Py_CLEAR(items);
        } else if (12 + ext_length + PyBytes_GET_SIZE(payload) > PACKET_MAX) {
            PyErr_SetString(PyExc_ValueError, "an RTP packet too long for SRTP's 1500-byte buffer");
            Py_CLEAR(items);
        }
    }
    return items;
}

PyDoc_STRVAR(send_frame_doc,
"send_frame(fd, host, port, protect, srtp, head0, payload_type, seq, timestamp, ssrc, ext, payloads, history, history_size)\n"
"--\n\n"
"One frame's RTP packets: each built (the header's first byte head0, the marker on the last packet, sequence\n"
"numbers from seq, the extension block ext, then its payload), kept unprotected in history[seq % history_size],\n"
"protected by protect(srtp, ...) and sent to (host, port) on the datagram socket fd with sendmmsg (BATCH packets\n"
"a call). Returns (protected, octets, status, unsent): how many packets were protected (the first ones; a failed\n"
"protection stops there with libsrtp's status, else status is 0), their payloads' bytes, and the protected packets\n"
"the socket did not take (it would block, or failed, or the address is not one inet_pton reads): the caller's\n"
"transport sends those. A payload that is not bytes, or a packet too long for SRTP's buffer (PACKET_MAX), raises\n"
"TypeError or ValueError before anything is kept or sent.");

static PyObject *send_frame(PyObject *module, PyObject *args) {
    (void)module;
    Frame f;
    int fd, port;
    unsigned long long protect_address, srtp;
    PyObject *host, *payloads, *result = NULL;
    if (!PyArg_ParseTuple(args, "iUiKKiiIIIy*OO!i", &fd, &host, &port, &protect_address, &srtp, &f.head0,
                          &f.payload_type, &f.seq, &f.timestamp, &f.ssrc, &f.ext, &payloads, &PyDict_Type, &f.history,
                          &f.history_size))
        return NULL;
    f.protect = (srtp_call)(uintptr_t)protect_address;
    f.srtp = (void *)(uintptr_t)srtp;
    PyObject *items = checked_payloads(payloads, f.ext.len);
    Packet *packets = NULL;
    if (items == NULL)
        goto done;
    if (f.history_size <= 0) {
        PyErr_SetString(PyExc_ValueError, "history_size must be positive");
        goto done;
    }
    packets = PyMem_New(Packet, PyTuple_GET_SIZE(items) ? PyTuple_GET_SIZE(items) : 1);
    if (packets == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int status;
    long long octets;
    Py_ssize_t protected = build_and_protect(&f, items, packets, &status, &octets), sent = 0;
    if (protected < 0)
        goto done;
    struct sockaddr_storage to;
    socklen_t to_length = 0;
    if (protected && address_of(host, port, &to, &to_length))
        sent = send_batches(fd, &to, to_length, packets, protected);
    PyObject *unsent = packet_list(packets, sent, protected);
    if (unsent != NULL)
        result = Py_BuildValue("nLiN", protected, octets, status, unsent);
done:
    PyMem_Free(packets);
    Py_XDECREF(items);
    PyBuffer_Release(&f.ext);
    return result;
}

PyDoc_STRVAR(unprotect_parse_doc,
"unprotect_parse(unprotect, srtp, data)\n"
"--\n\n"
"An SRTP packet unprotected by unprotect(srtp, ...) and its RTP header read (RFC 3550 5.1; CSRCs, a header\n"
"extension and padding skipped): an RtpView, or None when libsrtp refuses it, it is longer than SRTP's buffer, or\n"
"what it holds is not an RTP packet (all dropped, as aiortc drops them).");

typedef struct {
    Packet in;
    int payload_type, marker, at, end;  /* the payload is in.data[at:end] */
    unsigned int seq;
    uint32_t timestamp, ssrc;
} Received;

/* The datagram unprotected into r and its RTP header read (RFC 3550 5.1; CSRCs, a header extension and padding
 * skipped); 0 when libsrtp refuses it, it is longer than SRTP's buffer or it holds no RTP packet */
static int unprotect_into(Received *r, unsigned long long unprotect_address, unsigned long long srtp, const Py_buffer *data) {
    if (data->len > BUFFER)
        return 0;
    r->in.length = (int)data->len;
    memcpy(r->in.data, data->buf, data->len);
    const unsigned char *packet = r->in.data;
    srtp_call unprotect = (srtp_call)(uintptr_t)unprotect_address;
    if (unprotect((void *)(uintptr_t)srtp, r->in.data, &r->in.length) != 0 || r->in.length < 12 || packet[0] >> 6 != 2)
        return 0;
    r->at = 12 + 4 * (packet[0] & 0x0F);
    r->end = r->in.length;
    if (packet[0] & 0x10) {
        if (r->end < r->at + 4)
            return 0;
        r->at += 4 + 4 * ((packet[r->at + 2] << 8) | packet[r->at + 3]);
    }
    if (packet[0] & 0x20)
        r->end -= packet[r->in.length - 1];
    if (r->at > r->end)
        return 0;
    r->payload_type = packet[1] & 0x7F;
    r->marker = packet[1] >> 7;
    r->seq = (packet[2] << 8) | packet[3];
    r->timestamp = get32(packet + 4);
    r->ssrc = get32(packet + 8);
    return 1;
}

/* An RtpView of r, with its payload (or an empty one: with_payload 0) */
static PyObject *view_of(const Received *r, int with_payload) {
    PyObject *view = PyStructSequence_New(RtpView);
    if (view == NULL)
        return NULL;
    PyObject *fields[6] = {NULL};
    int k = 0;
    fields[k] = PyLong_FromLong(r->payload_type);
    if (fields[k] != NULL && (fields[++k] = PyLong_FromLong(r->marker)) != NULL
        && (fields[++k] = PyLong_FromLong(r->seq)) != NULL
        && (fields[++k] = PyLong_FromUnsignedLong(r->timestamp)) != NULL
        && (fields[++k] = PyLong_FromUnsignedLong(r->ssrc)) != NULL
        && (fields[++k] = PyBytes_FromStringAndSize((const char *)r->in.data + r->at, with_payload ? r->end - r->at : 0)) != NULL) {
        for (k = 0; k < 6; k++)
            PyStructSequence_SET_ITEM(view, k, fields[k]);
        return view;
    }
    for (k = 0; k < 6; k++)
        Py_XDECREF(fields[k]);
    Py_DECREF(view);
    return NULL;
}

static PyObject *unprotect_parse(PyObject *module, PyObject *args) {
    (void)module;
    unsigned long long unprotect_address, srtp;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "KKy*", &unprotect_address, &srtp, &data))
        return NULL;
    Received r;
    int ok = unprotect_into(&r, unprotect_address, srtp, &data);
    PyBuffer_Release(&data);
    if (!ok)
        Py_RETURN_NONE;
    return view_of(&r, 1);
}

/* The frame tap's reassembly (fleet.rtp.TapCore's twin, judged against it in tests/test_tap_native.py): the RTP
 * packets of one source in, VP8 (RFC 7741) and H.264 (RFC 6184, packetization-mode 1) frames out on the marker
 * bit, handed to finish(timestamp, first_arrival, arrival, data, packets, keyframe, complete, exact). */

enum { CODEC_VP8 = 1, CODEC_H264 = 2 };
static const unsigned char START_CODE[4] = {0, 0, 0, 1};

typedef struct {
    PyObject_HEAD
    PyObject *finish;
    long long packets, bytes;
    int codec;                          /* the codec of the last packet taken (0: none yet) */
    int has_ssrc, has_seq, has_ts;
    uint32_t ssrc;
    long long first_seq, seq_unwrapped, last_ts;
    int in_frame, cur_exact, cur_ok, has_next, has_expect, ended_on_marker, in_fu, idr;
    long long cur_ts, cur_count;
    double cur_first, cur_last;
    unsigned int next_seq, expect;
    unsigned char *data;                /* the frame's bytes so far */
    Py_ssize_t length, capacity;
    /* the receiver's duties (take): aiortc's StreamStatistics and NackGenerator state for the SSRC taken, which
     * fleet.duties' NativeStreamStatistics and NativeNack read and write as their attributes */
    int has_base, has_max, has_last, clockrate, nack_has;
    long long base_seq, max_seq, cycles, received, jitter_q4, last_arrival, last_timestamp, nack_max;
    PyObject *missing;                  /* the NackGenerator's set of missing sequence numbers */
} Tap;

enum { TAKEN = 1, MARKER = 2, NACK_DUE = 4 };

static int uint16_gt(long long a, long long b) {
    return (a < b && b - a > 0x8000) || (a > b && a - b < 0x8000);
}

/* aiortc's StreamStatistics.add for a packet arrived at wall (time.time()) */
static void stats_add(Tap *t, long long seq, long long timestamp, double wall) {
    int in_order = !t->has_max || uint16_gt(seq, t->max_seq);
    t->received++;
    if (!t->has_base) {
        t->has_base = 1;
        t->base_seq = seq;
    }
    if (!in_order)
        return;
    long long arrival = (long long)(wall * t->clockrate);
    if (t->has_max && seq < t->max_seq)
        t->cycles += 1 << 16;
    t->has_max = 1;
    t->max_seq = seq;
    if (t->has_last && timestamp != t->last_timestamp && t->received > 1) {
        long long diff = llabs((arrival - t->last_arrival) - (timestamp - t->last_timestamp));
        t->jitter_q4 += diff - ((t->jitter_q4 + 8) >> 4);
    }
    t->has_last = 1;
    t->last_arrival = arrival;
    t->last_timestamp = timestamp;
}

static double wall_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);  /* time.time()'s clock */
    return now.tv_sec + now.tv_nsec * 1e-9;
}

static int reserve(Tap *t, Py_ssize_t more) {
    if (t->length + more <= t->capacity)
        return 0;
    Py_ssize_t capacity = t->capacity ? t->capacity : 65536;
    while (capacity < t->length + more)
        capacity *= 2;
    unsigned char *data = PyMem_Realloc(t->data, capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    t->data = data;
    t->capacity = capacity;
    return 0;
}

static int append(Tap *t, const unsigned char *head, Py_ssize_t head_length, const unsigned char *body, Py_ssize_t length) {
    if (head_length + length == 0)
        return 0;
    if (reserve(t, head_length + length) < 0)
        return -1;
    if (head_length)
        memcpy(t->data + t->length, head, head_length);
    if (length)
        memcpy(t->data + t->length + head_length, body, length);
    t->length += head_length + length;
    return 0;
}

/* One H.264 payload's Annex B bytes appended; 1 if it could start a frame, 0 if not, 2 if it is unreadable (what
 * it appended taken back), -1 on an error with an exception set */
static int push_h264(Tap *t, const unsigned char *p, Py_ssize_t size) {
    if (size < 1)
        return 2;
    int kind = p[0] & 0x1F;
    if (kind >= 1 && kind <= 23) {
        t->in_fu = 0;
        t->idr |= kind == 5;
        return append(t, START_CODE, 4, p, size) < 0 ? -1 : 1;
    }
    if (kind == 24) {  /* STAP-A */
        t->in_fu = 0;
        Py_ssize_t at = 1, before = t->length;
        while (at + 2 <= size) {
            Py_ssize_t unit = (p[at] << 8) | p[at + 1];
            at += 2;
            if (unit == 0 || at + unit > size) {
                t->length = before;
                return 2;
            }
            t->idr |= (p[at] & 0x1F) == 5;
            if (append(t, START_CODE, 4, p + at, unit) < 0)
                return -1;
            at += unit;
        }
        return 1;
    }
    if (kind == 28) {  /* FU-A */
        if (size < 3)
            return 2;
        int start = p[1] & 0x80, end = p[1] & 0x40;
        if (start) {
            t->in_fu = !end;
            t->idr |= (p[1] & 0x1F) == 5;
            unsigned char head[5] = {0, 0, 0, 1, (unsigned char)((p[0] & 0xE0) | (p[1] & 0x1F))};
            return append(t, head, 5, p + 2, size - 2) < 0 ? -1 : 1;
        }
        if (!t->in_fu)
            return 2;
        if (end)
            t->in_fu = 0;
        return append(t, NULL, 0, p + 2, size - 2) < 0 ? -1 : 0;
    }
    return 2;
}

/* One VP8 payload's frame bytes (its descriptor skipped) appended; as push_h264 */
static int push_vp8(Tap *t, const unsigned char *p, Py_ssize_t size) {
    if (size < 1)
        return 2;
    int starts = (p[0] & 0x10) && (p[0] & 0x0F) == 0;
    Py_ssize_t at = 1;
    if (p[0] & 0x80) {
        if (size < at + 1)
            return 2;
        int ext = p[at++];
        if (ext & 0x80) {
            if (size < at + 1 || ((p[at] & 0x80) && size < at + 2))
                return 2;
            at += p[at] & 0x80 ? 2 : 1;
        }
        if ((ext & 0x40) && size < ++at)
            return 2;
        if ((ext & 0x30) && size < ++at)
            return 2;
    }
    return append(t, NULL, 0, p + at, size - at) < 0 ? -1 : starts;
}

/* The frame so far handed to finish, the state reset first; -1 if finish raised */
static int finish_frame(Tap *t, int complete, double now) {
    int key = complete && (t->codec == CODEC_H264 ? t->idr : t->length > 0 && !(t->data[0] & 0x01));
    PyObject *data = PyBytes_FromStringAndSize((const char *)t->data, t->length);
    long long timestamp = t->cur_ts, count = t->cur_count;
    double first = t->cur_first;
    int exact = t->cur_exact;
    t->in_fu = t->idr = 0;
    t->in_frame = t->has_next = 0;
    t->length = 0;
    if (data == NULL)
        return -1;
    PyObject *result = PyObject_CallFunction(t->finish, "LddNLOOO", timestamp, first, now, data, count,
                                             key ? Py_True : Py_False, complete ? Py_True : Py_False,
                                             exact ? Py_True : Py_False);
    Py_XDECREF(result);
    return result == NULL ? -1 : 0;
}

static long long unwrap(long long previous, long long value, int bits) {
    long long span = 1LL << bits, delta = (value - previous) & (span - 1);
    return previous + (delta >= span / 2 ? delta - span : delta);
}

/* One packet taken (TapCore.packet's work); -1 if finish raised */
static int tap_packet(Tap *t, int codec, uint32_t ssrc, unsigned int seq, uint32_t timestamp, int marker,
                      const unsigned char *payload, Py_ssize_t size, double now, int exact) {
    t->codec = codec;
    if (!t->has_ssrc) {
        t->has_ssrc = 1;
        t->ssrc = ssrc;
    } else if (ssrc != t->ssrc)
        return 0;
    t->packets++;
    t->bytes += size;
    if (!t->has_seq) {
        t->has_seq = 1;
        t->seq_unwrapped = t->first_seq = seq;
    } else {
        long long delta = (seq - t->seq_unwrapped) & 0xFFFF;
        if (delta >= 0x8000)
            return 0;  /* late or duplicate: counted as received, not reassembled */
        t->seq_unwrapped += delta;
    }
    long long ts = t->has_ts ? unwrap(t->last_ts, timestamp, 32) : timestamp;
    t->has_ts = 1;
    t->last_ts = ts;
    if (t->in_frame && ts != t->cur_ts) {
        if (finish_frame(t, 0, t->cur_last) < 0)
            return -1;
        t->ended_on_marker = 0;
    }
    if (!t->in_frame)
        t->length = 0;
    Py_ssize_t before = t->length;
    int pushed = codec == CODEC_VP8 ? push_vp8(t, payload, size) : push_h264(t, payload, size);
    if (pushed < 0)
        return -1;
    int unreadable = pushed == 2, starts = pushed == 1;
    if (unreadable)
        t->length = before;
    if (!t->in_frame) {
        t->in_frame = 1;
        t->cur_ts = ts;
        t->cur_first = now;
        t->cur_count = 0;
        unsigned int gap = !t->has_expect || codec == CODEC_VP8 ? 0 : (seq - t->expect) & 0xFFFF;
        t->cur_ok = starts && (gap == 0 || (gap == 1 && !t->ended_on_marker));
        t->has_next = 1;
        t->next_seq = seq;
    }
    if (unreadable || (t->has_next && seq != t->next_seq))
        t->cur_ok = 0;
    t->has_next = t->has_expect = 1;
    t->next_seq = t->expect = (seq + 1) & 0xFFFF;
    t->cur_count++;
    t->cur_last = now;
    t->cur_exact = exact;
    if (marker) {
        if (finish_frame(t, t->cur_ok, now) < 0)
            return -1;
        t->ended_on_marker = 1;
    }
    return 0;
}

static PyObject *tap_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *finish;
    static char *names[] = {"finish", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:Tap", names, &finish))
        return NULL;
    if (!PyCallable_Check(finish)) {
        PyErr_SetString(PyExc_TypeError, "finish must be callable");
        return NULL;
    }
    Tap *t = (Tap *)type->tp_alloc(type, 0);
    if (t != NULL) {
        t->finish = Py_NewRef(finish);
        t->ended_on_marker = 1;  /* as TapCore: no frame before was cut */
    }
    return (PyObject *)t;
}

static int tap_traverse(Tap *t, visitproc visit, void *arg) {
    Py_VISIT(t->finish);
    Py_VISIT(t->missing);
    return 0;
}

static int tap_clear(Tap *t) {
    Py_CLEAR(t->finish);
    Py_CLEAR(t->missing);
    return 0;
}

static void tap_dealloc(Tap *t) {
    PyObject_GC_UnTrack(t);
    tap_clear(t);
    PyMem_Free(t->data);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static int known_codec(int codec) {
    if (codec == CODEC_VP8 || codec == CODEC_H264)
        return 1;
    PyErr_Format(PyExc_ValueError, "codec must be %d (VP8) or %d (H.264), not %d", CODEC_VP8, CODEC_H264, codec);
    return 0;
}

static int checked_finish(Tap *t) {
    if (t->finish != NULL)
        return 1;
    PyErr_SetString(PyExc_ValueError, "the tap was cleared");
    return 0;
}

static double monotonic(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);  /* time.monotonic()'s clock on Linux */
    return now.tv_sec + now.tv_nsec * 1e-9;
}

PyDoc_STRVAR(tap_packet_doc,
"packet(codec, ssrc, sequence_number, timestamp, marker, payload, now, exact)\n"
"--\n\n"
"One RTP packet of codec (CODEC_VP8 or CODEC_H264) taken, arrived at now (time.monotonic(); exact: stamped at the\n"
"socket); a frame it ends (on its marker, or cut by its new timestamp) is handed to finish.");

static PyObject *tap_packet_method(Tap *t, PyObject *args) {
    int codec, marker, exact;
    unsigned int seq;
    unsigned long ssrc, timestamp;
    double now;
    Py_buffer payload;
    if (!PyArg_ParseTuple(args, "ikIkpy*dp", &codec, &ssrc, &seq, &timestamp, &marker, &payload, &now, &exact))
        return NULL;
    int failed = !known_codec(codec) || !checked_finish(t)
        || tap_packet(t, codec, (uint32_t)ssrc, seq & 0xFFFF, (uint32_t)timestamp, marker, payload.buf, payload.len, now, exact) < 0;
    PyBuffer_Release(&payload);
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(tap_take_doc,
"take(unprotect, srtp, data, codec, arrival, wall=None)\n"
"--\n\n"
"An SRTP datagram of codec unprotected by unprotect(srtp, ...), parsed and taken as packet() takes it, arrived at\n"
"arrival (a socket's stamp on time.monotonic()'s clock, exact) or, when None, now; then the receiver's duties: the\n"
"packet counted for its reports as aiortc's StreamStatistics.add counts it (on this tap's state, at wall on\n"
"time.time()'s clock, or now when None), and the NACK\n"
"generator moved on for the next packet in order with none missing. Returns 0 when the datagram is dropped as\n"
"unprotect_parse drops it, else TAKEN, with MARKER for a frame's last packet and NACK_DUE when the packet must\n"
"still go through the NACK generator's add (out of order, or packets missing).");

static PyObject *tap_take(Tap *t, PyObject *args) {
    unsigned long long unprotect_address, srtp;
    Py_buffer data;
    int codec;
    PyObject *arrival, *wall_arg = Py_None;
    if (!PyArg_ParseTuple(args, "KKy*iO|O", &unprotect_address, &srtp, &data, &codec, &arrival, &wall_arg))
        return NULL;
    double now = arrival == Py_None ? monotonic() : PyFloat_AsDouble(arrival);
    double wall = wall_arg == Py_None ? 0.0 : PyFloat_AsDouble(wall_arg);
    if (PyErr_Occurred() || !known_codec(codec) || !checked_finish(t)) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (t->missing == NULL || t->clockrate <= 0) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "take needs the tap's clockrate and missing set");
        return NULL;
    }
    Received r;
    int ok = unprotect_into(&r, unprotect_address, srtp, &data);
    PyBuffer_Release(&data);
    if (!ok)
        return PyLong_FromLong(0);
    /* the duties first, as aiortc's receiver orders them: a frame's consumer that raises leaves the packet counted */
    stats_add(t, r.seq, r.timestamp, wall_arg == Py_None ? wall_now() : wall);
    int result = TAKEN | (r.marker ? MARKER : 0);
    if (PySet_GET_SIZE(t->missing) == 0 && t->nack_has && r.seq == ((t->nack_max + 1) & 0xFFFF))
        t->nack_max = r.seq;
    else
        result |= NACK_DUE;
    if (tap_packet(t, codec, r.ssrc, r.seq, r.timestamp, r.marker, r.in.data + r.at, r.end - r.at, now, arrival != Py_None) < 0)
        return NULL;
    return PyLong_FromLong(result);
}

PyDoc_STRVAR(tap_stats_add_doc,
"stats_add(sequence_number, timestamp, wall)\n"
"--\n\n"
"aiortc's StreamStatistics.add on this tap's state, for a packet arrived at wall (time.time()).");

static PyObject *tap_stats_add_method(Tap *t, PyObject *args) {
    unsigned int seq;
    unsigned long timestamp;
    double wall;
    if (!PyArg_ParseTuple(args, "Ikd", &seq, &timestamp, &wall))
        return NULL;
    if (t->clockrate <= 0) {
        PyErr_SetString(PyExc_ValueError, "the tap's clockrate is not set");
        return NULL;
    }
    stats_add(t, seq & 0xFFFF, (uint32_t)timestamp, wall);
    Py_RETURN_NONE;
}

static PyObject *tap_get_missing(Tap *t, void *closure) {
    (void)closure;
    if (t->missing == NULL)
        Py_RETURN_NONE;
    return Py_NewRef(t->missing);
}

static int tap_set_missing(Tap *t, PyObject *value, void *closure) {
    (void)closure;
    if (value == NULL || !PySet_CheckExact(value)) {
        PyErr_SetString(PyExc_TypeError, "missing must be a set");
        return -1;
    }
    Py_XSETREF(t->missing, Py_NewRef(value));
    return 0;
}

static PyObject *optional(int has, long long value) {
    if (!has)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(value);
}

static PyObject *tap_ssrc(Tap *t, void *closure) { (void)closure; return optional(t->has_ssrc, t->ssrc); }
static PyObject *tap_first_seq(Tap *t, void *closure) { (void)closure; return optional(t->has_seq, t->first_seq); }
static PyObject *tap_seq_unwrapped(Tap *t, void *closure) { (void)closure; return optional(t->has_seq, t->seq_unwrapped); }

static PyGetSetDef tap_getset[] = {
    {"ssrc", (getter)tap_ssrc, NULL, "the SSRC taken (the first packet's), or None", NULL},
    {"first_seq", (getter)tap_first_seq, NULL, "the first packet's sequence number, or None", NULL},
    {"seq_unwrapped", (getter)tap_seq_unwrapped, NULL, "the highest sequence number taken, unwrapped, or None", NULL},
    {"missing", (getter)tap_get_missing, (setter)tap_set_missing, "the NACK generator's set of missing packets", NULL},
    {NULL}};

static PyMemberDef tap_members[] = {
    {"packets", T_LONGLONG, offsetof(Tap, packets), READONLY, "packets of the SSRC taken"},
    {"bytes", T_LONGLONG, offsetof(Tap, bytes), READONLY, "their payloads' bytes"},
    {"codec", T_INT, offsetof(Tap, codec), READONLY, "the last packet's codec (0: none yet)"},
#define DUTY(name, type, help) {#name, type, offsetof(Tap, name), 0, help}
    DUTY(has_base, T_INT, "whether base_seq is set"), DUTY(base_seq, T_LONGLONG, "StreamStatistics.base_seq"),
    DUTY(has_max, T_INT, "whether max_seq is set"), DUTY(max_seq, T_LONGLONG, "StreamStatistics.max_seq"),
    DUTY(cycles, T_LONGLONG, "StreamStatistics.cycles"), DUTY(received, T_LONGLONG, "StreamStatistics.packets_received"),
    DUTY(jitter_q4, T_LONGLONG, "StreamStatistics._jitter_q4"),
    DUTY(has_last, T_INT, "whether last_arrival and last_timestamp are set"),
    DUTY(last_arrival, T_LONGLONG, "StreamStatistics._last_arrival"),
    DUTY(last_timestamp, T_LONGLONG, "StreamStatistics._last_timestamp"),
    DUTY(clockrate, T_INT, "StreamStatistics._clockrate"),
    DUTY(nack_has, T_INT, "whether nack_max is set"), DUTY(nack_max, T_LONGLONG, "NackGenerator.max_seq"),
#undef DUTY
    {NULL}};

static PyMethodDef tap_methods[] = {
    {"packet", (PyCFunction)tap_packet_method, METH_VARARGS, tap_packet_doc},
    {"take", (PyCFunction)tap_take, METH_VARARGS, tap_take_doc},
    {"stats_add", (PyCFunction)tap_stats_add_method, METH_VARARGS, tap_stats_add_doc},
    {NULL}};

static PyTypeObject TapType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fleet._rtpnative.Tap",
    .tp_doc = PyDoc_STR("Tap(finish): fleet.rtp.TapCore's reassembly in native code."),
    .tp_basicsize = sizeof(Tap),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = tap_new,
    .tp_traverse = (traverseproc)tap_traverse,
    .tp_clear = (inquiry)tap_clear,
    .tp_dealloc = (destructor)tap_dealloc,
    .tp_methods = tap_methods,
    .tp_members = tap_members,
    .tp_getset = tap_getset,
};

/* The mean of a plane's samples on the grid of every step-th row and column (numpy's
 * plane[:height:step, :width:step].mean() on the plane's rows of line_size bytes), summed exactly. */
static PyObject *plane_mean(PyObject *module, PyObject *args) {
    (void)module;
    Py_buffer plane;
    Py_ssize_t width, height, line_size, step;
    if (!PyArg_ParseTuple(args, "y*nnnn", &plane, &width, &height, &line_size, &step))
        return NULL;
    if (width < 1 || height < 1 || step < 1 || line_size < width || plane.len / line_size < height - 1
        || plane.len - (height - 1) * line_size < width) {
        PyBuffer_Release(&plane);
        PyErr_SetString(PyExc_ValueError, "plane_mean: the plane is smaller than width x height of line_size rows");
        return NULL;
    }
    const unsigned char *rows = plane.buf;
    unsigned long long sum = 0, count = 0;
    for (Py_ssize_t r = 0; r < height; r += step) {
        const unsigned char *row = rows + r * line_size;
        for (Py_ssize_t c = 0; c < width; c += step)
            sum += row[c];
        count += (unsigned long long)(1 + (width - 1) / step);
    }
    PyBuffer_Release(&plane);
    return PyFloat_FromDouble((double)sum / (double)count);
}

PyDoc_STRVAR(plane_mean_doc, "plane_mean(plane, width, height, line_size, step) -> the mean of every step-th sample of every step-th row.");

static PyMethodDef methods[] = {
    {"send_frame", send_frame, METH_VARARGS, send_frame_doc},
    {"unprotect_parse", unprotect_parse, METH_VARARGS, unprotect_parse_doc},
    {"plane_mean", plane_mean, METH_VARARGS, plane_mean_doc},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fleet._rtpnative", "The probe's per-packet RTP work in native code (see fleet.srtpcalls).",
    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__rtpnative(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    RtpView = PyStructSequence_NewType(&view_desc);
    if (RtpView == NULL || PyModule_AddObjectRef(m, "RtpView", (PyObject *)RtpView) < 0
        || PyModule_AddIntConstant(m, "PACKET_MAX", PACKET_MAX) < 0 || PyModule_AddIntConstant(m, "BUFFER", BUFFER) < 0
        || PyModule_AddIntConstant(m, "TRAILER_MAX", TRAILER_MAX) < 0 || PyModule_AddIntConstant(m, "BATCH", BATCH) < 0
        || PyModule_AddIntConstant(m, "API", API) < 0 || PyType_Ready(&TapType) < 0
        || PyModule_AddObjectRef(m, "Tap", (PyObject *)&TapType) < 0
        || PyModule_AddIntConstant(m, "CODEC_VP8", CODEC_VP8) < 0 || PyModule_AddIntConstant(m, "CODEC_H264", CODEC_H264) < 0
        || PyModule_AddIntConstant(m, "TAKEN", TAKEN) < 0 || PyModule_AddIntConstant(m, "MARKER", MARKER) < 0
        || PyModule_AddIntConstant(m, "NACK_DUE", NACK_DUE) < 0) {
        Py_CLEAR(RtpView);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
