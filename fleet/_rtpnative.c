/* The probe's per-packet RTP work in native code (fleet.leanrtp): a frame's packets built, SRTP-protected and
 * sent in one call (sendmmsg), and a received datagram SRTP-unprotected and parsed in one call.
 *
 * libsrtp is the one pylibsrtp bundles and aiortc keys: its srtp_protect / srtp_unprotect are passed in as
 * addresses (cffi's ffi.addressof on pylibsrtp's compiled binding; fleet.srtpcalls checks their C signature is
 * libsrtp 2's before using them) with the session's srtp_t, so the packets go through the very session state
 * aiortc uses for its RTCP; nothing here links libsrtp. What is sent and what a parse hands back is judged
 * against aiortc's and pylibsrtp's own in tests/test_rtp_native.py, and over real peer connections in
 * tests/test_lean_rtp.py.
 *
 * Built by setuptools as an optional extension: without a C compiler the install still succeeds and
 * fleet.srtpcalls keeps the Python path (fleet.srtpcalls.native_enabled() says which one runs). API names this
 * file's interface: fleet.srtpcalls uses a build only when it matches, so a stale build is never called.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdalign.h>
#include <string.h>
#include <sys/socket.h>

#define API 1

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

static PyObject *unprotect_parse(PyObject *module, PyObject *args) {
    (void)module;
    unsigned long long unprotect_address, srtp;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "KKy*", &unprotect_address, &srtp, &data))
        return NULL;
    Packet in;
    in.length = (int)data.len;
    if (data.len > BUFFER) {
        PyBuffer_Release(&data);
        Py_RETURN_NONE;
    }
    memcpy(in.data, data.buf, data.len);
    PyBuffer_Release(&data);
    const unsigned char *packet = in.data;
    srtp_call unprotect = (srtp_call)(uintptr_t)unprotect_address;
    if (unprotect((void *)(uintptr_t)srtp, in.data, &in.length) != 0 || in.length < 12 || packet[0] >> 6 != 2)
        Py_RETURN_NONE;
    int at = 12 + 4 * (packet[0] & 0x0F), end = in.length;
    if (packet[0] & 0x10) {
        if (end < at + 4)
            Py_RETURN_NONE;
        at += 4 + 4 * ((packet[at + 2] << 8) | packet[at + 3]);
    }
    if (packet[0] & 0x20)
        end -= packet[in.length - 1];
    if (at > end)
        Py_RETURN_NONE;
    PyObject *view = PyStructSequence_New(RtpView);
    if (view == NULL)
        return NULL;
    PyObject *fields[6] = {NULL};
    int k = 0;
    fields[k] = PyLong_FromLong(packet[1] & 0x7F);
    if (fields[k] != NULL && (fields[++k] = PyLong_FromLong(packet[1] >> 7)) != NULL
        && (fields[++k] = PyLong_FromLong((packet[2] << 8) | packet[3])) != NULL
        && (fields[++k] = PyLong_FromUnsignedLong(get32(packet + 4))) != NULL
        && (fields[++k] = PyLong_FromUnsignedLong(get32(packet + 8))) != NULL
        && (fields[++k] = PyBytes_FromStringAndSize((const char *)packet + at, end - at)) != NULL) {
        for (k = 0; k < 6; k++)
            PyStructSequence_SET_ITEM(view, k, fields[k]);
        return view;
    }
    for (k = 0; k < 6; k++)
        Py_XDECREF(fields[k]);
    Py_DECREF(view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"send_frame", send_frame, METH_VARARGS, send_frame_doc},
    {"unprotect_parse", unprotect_parse, METH_VARARGS, unprotect_parse_doc},
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
        || PyModule_AddIntConstant(m, "API", API) < 0) {
        Py_CLEAR(RtpView);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
