/* The probe's per-packet RTP work in native code (fleet.leanrtp): a frame's packets built, SRTP-protected and
 * sent in one call (sendmmsg), and a received datagram SRTP-unprotected and parsed in one call.
 *
 * libsrtp is the one pylibsrtp bundles and aiortc keys: its srtp_protect / srtp_unprotect are passed in as
 * addresses (cffi's ffi.addressof on pylibsrtp's compiled binding) with the session's srtp_t, so the packets
 * go through the very session state aiortc uses for its RTCP; nothing here links libsrtp. What is sent and
 * what a parse hands back is judged against aiortc's and pylibsrtp's own in tests/test_lean_rtp.py.
 *
 * Built by setuptools as an optional extension: without a C compiler the install still succeeds and
 * fleet.leanrtp keeps its Python path (fleet.leanrtp.NATIVE says which one runs).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*srtp_call)(void *ctx, void *header, int *length);

#define BUFFER 1500      /* pylibsrtp's buffer: the longest SRTP packet, as aiortc's path takes them */
#define TRAILER_MAX 144  /* libsrtp 2's SRTP_MAX_TRAILER_LEN: authentication tag and MKI */
#define PACKET_MAX (BUFFER - TRAILER_MAX)  /* the longest RTP packet protected, as pylibsrtp's */
#define BATCH 32         /* packets per sendmmsg */

static PyTypeObject *RtpView;  /* a struct sequence with aiortc RtpPacket's field names */

static PyStructSequence_Field view_fields[] = {
    {"payload_type", NULL}, {"marker", NULL}, {"sequence_number", NULL},
    {"timestamp", NULL},    {"ssrc", NULL},   {"payload", NULL},      {NULL, NULL}};

static PyStructSequence_Desc view_desc = {
    "fleet._rtpnative.RtpView", "The fields of an RTP packet the probe reads, its payload a copy.", view_fields, 6};

static int address_of(PyObject *host, int port, struct sockaddr_storage *to, socklen_t *length) {
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
    return 0;  /* a scoped or unusual address: the caller sends through its transport */
}

static void put32(unsigned char *at, uint32_t value) {
    at[0] = value >> 24; at[1] = value >> 16; at[2] = value >> 8; at[3] = value;
}

PyDoc_STRVAR(send_frame_doc,
"send_frame(fd, host, port, protect, srtp, head0, payload_type, seq, timestamp, ssrc, ext, payloads, history, history_size)\n"
"--\n\n"
"One frame's RTP packets: each built (the header's first byte head0, the marker on the last packet, sequence\n"
"numbers from seq, the extension block ext, then its payload), kept unprotected in history[seq % history_size],\n"
"protected by protect(srtp, ...) and sent to (host, port) on the datagram socket fd with sendmmsg.\n"
"Returns (protected, octets, status, unsent): how many packets were protected (the first ones; a failed protection\n"
"stops there with libsrtp's status, else status is 0), their payloads' bytes, and the protected packets the socket\n"
"did not take (it would block, or failed, or the address is not one inet_pton reads): the caller's transport sends\n"
"those. A packet too long for SRTP's buffer (PACKET_MAX) raises ValueError before anything is kept or sent.");

static PyObject *send_frame(PyObject *self, PyObject *args) {
    int fd, port, head0, payload_type, history_size;
    unsigned int seq, timestamp, ssrc;
    unsigned long long protect_address, srtp;
    PyObject *host, *payloads, *history;
    Py_buffer ext;
    if (!PyArg_ParseTuple(args, "iUiKKiiIIIy*OO!i", &fd, &host, &port, &protect_address, &srtp, &head0,
                          &payload_type, &seq, &timestamp, &ssrc, &ext, &payloads, &PyDict_Type, &history,
                          &history_size))
        return NULL;
    PyObject *result = NULL, *unsent = NULL, *items = PySequence_Fast(payloads, "payloads must be a sequence");
    unsigned char (*buffers)[BUFFER] = NULL;
    int *lengths = NULL;
    if (items == NULL)
        goto done;
    if (history_size <= 0) {
        PyErr_SetString(PyExc_ValueError, "history_size must be positive");
        goto done;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(items);
    buffers = PyMem_Malloc((count ? count : 1) * sizeof(*buffers));
    lengths = PyMem_Malloc((count ? count : 1) * sizeof(int));
    if (buffers == NULL || lengths == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {  /* every payload checked before any packet is kept or sent */
        PyObject *payload = PySequence_Fast_GET_ITEM(items, i);
        if (!PyBytes_Check(payload)) {
            PyErr_SetString(PyExc_TypeError, "payloads must be bytes");
            goto done;
        }
        if (12 + ext.len + PyBytes_GET_SIZE(payload) > PACKET_MAX) {
            PyErr_SetString(PyExc_ValueError, "an RTP packet too long for SRTP's 1500-byte buffer");
            goto done;
        }
    }
    srtp_call protect = (srtp_call)(uintptr_t)protect_address;
    Py_ssize_t protected = 0;
    long long octets = 0;
    int status = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *payload = PySequence_Fast_GET_ITEM(items, i);
        Py_ssize_t size = PyBytes_GET_SIZE(payload), length = 12 + ext.len + size;
        unsigned char *packet = buffers[i];
        uint16_t number = (uint16_t)(seq + i);
        packet[0] = (unsigned char)head0;
        packet[1] = (unsigned char)((payload_type & 0x7F) | (i == count - 1 ? 0x80 : 0));
        packet[2] = number >> 8;
        packet[3] = number & 0xFF;
        put32(packet + 4, timestamp);
        put32(packet + 8, ssrc);
        memcpy(packet + 12, ext.buf, ext.len);
        memcpy(packet + 12 + ext.len, PyBytes_AS_STRING(payload), size);
        PyObject *plain = PyBytes_FromStringAndSize((const char *)packet, length);
        PyObject *key = plain ? PyLong_FromLong(number % history_size) : NULL;
        int kept = key ? PyDict_SetItem(history, key, plain) : -1;
        Py_XDECREF(key);
        Py_XDECREF(plain);
        if (kept < 0)
            goto done;
        lengths[i] = (int)length;
        status = protect((void *)(uintptr_t)srtp, packet, &lengths[i]);
        if (status != 0)
            break;
        protected++;
        octets += size;
    }
    struct sockaddr_storage to;
    socklen_t to_length = 0;
    Py_ssize_t sent = 0;
    if (protected && address_of(host, port, &to, &to_length)) {
        struct mmsghdr messages[BATCH];
        struct iovec vectors[BATCH];
        while (sent < protected) {
            int batch = (int)(protected - sent < BATCH ? protected - sent : BATCH);
            memset(messages, 0, batch * sizeof(messages[0]));
            for (int k = 0; k < batch; k++) {
                vectors[k].iov_base = buffers[sent + k];
                vectors[k].iov_len = lengths[sent + k];
                messages[k].msg_hdr.msg_name = &to;
                messages[k].msg_hdr.msg_namelen = to_length;
                messages[k].msg_hdr.msg_iov = &vectors[k];
                messages[k].msg_hdr.msg_iovlen = 1;
            }
            int n = sendmmsg(fd, messages, batch, MSG_DONTWAIT);
            if (n <= 0)
                break;  /* would block or failed: the rest go through the caller's transport, which handles both */
            sent += n;
        }
    }
    unsent = PyList_New(protected - sent);
    for (Py_ssize_t i = sent; unsent != NULL && i < protected; i++) {
        PyObject *data = PyBytes_FromStringAndSize((const char *)buffers[i], lengths[i]);
        if (data == NULL) {
            Py_CLEAR(unsent);
            break;
        }
        PyList_SET_ITEM(unsent, i - sent, data);
    }
    if (unsent != NULL)
        result = Py_BuildValue("nLiN", protected, octets, status, unsent);
done:
    PyMem_Free(lengths);
    PyMem_Free(buffers);
    Py_XDECREF(items);
    PyBuffer_Release(&ext);
    return result;
}

PyDoc_STRVAR(unprotect_parse_doc,
"unprotect_parse(unprotect, srtp, data)\n"
"--\n\n"
"An SRTP packet unprotected by unprotect(srtp, ...) and its RTP header read (RFC 3550 5.1; CSRCs, a header\n"
"extension and padding skipped): an RtpView, or None when libsrtp refuses it, it is longer than SRTP's buffer, or\n"
"what it holds is not an RTP packet (all dropped, as aiortc drops them).");

static PyObject *unprotect_parse(PyObject *self, PyObject *args) {
    unsigned long long unprotect_address, srtp;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "KKy*", &unprotect_address, &srtp, &data))
        return NULL;
    unsigned char packet[BUFFER];
    int length = (int)data.len;
    if (data.len > BUFFER) {
        PyBuffer_Release(&data);
        Py_RETURN_NONE;
    }
    memcpy(packet, data.buf, data.len);
    PyBuffer_Release(&data);
    srtp_call unprotect = (srtp_call)(uintptr_t)unprotect_address;
    if (unprotect((void *)(uintptr_t)srtp, packet, &length) != 0 || length < 12 || packet[0] >> 6 != 2)
        Py_RETURN_NONE;
    int at = 12 + 4 * (packet[0] & 0x0F), end = length;
    if (packet[0] & 0x10) {
        if (end < at + 4)
            Py_RETURN_NONE;
        at += 4 + 4 * ((packet[at + 2] << 8) | packet[at + 3]);
    }
    if (packet[0] & 0x20)
        end -= packet[length - 1];
    if (at > end)
        Py_RETURN_NONE;
    PyObject *view = PyStructSequence_New(RtpView);
    if (view == NULL)
        return NULL;
    PyObject *fields[6] = {
        PyLong_FromLong(packet[1] & 0x7F),
        PyLong_FromLong(packet[1] >> 7),
        PyLong_FromLong((packet[2] << 8) | packet[3]),
        PyLong_FromUnsignedLong(((uint32_t)packet[4] << 24) | (packet[5] << 16) | (packet[6] << 8) | packet[7]),
        PyLong_FromUnsignedLong(((uint32_t)packet[8] << 24) | (packet[9] << 16) | (packet[10] << 8) | packet[11]),
        PyBytes_FromStringAndSize((const char *)packet + at, end - at)};
    for (int k = 0; k < 6; k++) {
        if (fields[k] == NULL) {
            for (int j = 0; j < 6; j++)
                Py_XDECREF(fields[j]);
            Py_DECREF(view);
            return NULL;
        }
    }
    for (int k = 0; k < 6; k++)
        PyStructSequence_SET_ITEM(view, k, fields[k]);
    return view;
}

static PyMethodDef methods[] = {
    {"send_frame", send_frame, METH_VARARGS, send_frame_doc},
    {"unprotect_parse", unprotect_parse, METH_VARARGS, unprotect_parse_doc},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "fleet._rtpnative",
                                    "The probe's per-packet RTP work in native code (see fleet.leanrtp).", -1, methods};

PyMODINIT_FUNC PyInit__rtpnative(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    RtpView = PyStructSequence_NewType(&view_desc);
    if (RtpView == NULL || PyModule_AddObjectRef(m, "RtpView", (PyObject *)RtpView) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "PACKET_MAX", PACKET_MAX);
    return m;
}
