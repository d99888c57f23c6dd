/* The share check's hashing in one call each, with OpenSSL's SHA-256 (SHA-NI or AVX2 where the CPU has
 * them). protocol/work.py uses this module when it was built and its own Python otherwise; both give
 * the same bytes (tests/test_protocol_hashing.py checks both against hashlib and a mainnet share).
 *
 * Why in C: a share with a fresh extranonce2 costs 14 sha256d (the coinbase, 12 merkle branches at
 * today's block sizes, the header). In Python each is two hash objects and two calls, ~1 µs; here the
 * whole fold is one call of ~2 µs. Also here: reading a share's hex fields (extranonce2, ntime, nonce,
 * version bits), ~0.5 µs each as Python's checks and bytes.fromhex, ~0.05 µs here. Nothing else of
 * the share path is here: it stays readable Python (protocol.work has the Python each equals).
 */
#define PY_SSIZE_T_CLEAN
#define OPENSSL_SUPPRESS_DEPRECATED /* SHA256_Init & co: deprecated in OpenSSL 3, and the fast path */
#include <Python.h>
#include <openssl/sha.h>

#define HASH_SIZE SHA256_DIGEST_LENGTH

/* SHA256_Init/Update/Final, not OpenSSL 3's one-shot SHA256(), which fetches the algorithm on every
 * call (670 against 143 ns per sha256d of 64 bytes here). */
static void sha256_raw(const unsigned char *data, size_t size, unsigned char out[HASH_SIZE]) {
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, data, size);
    SHA256_Final(out, &ctx);
}

static void sha256d_raw(const unsigned char *data, size_t size, unsigned char out[HASH_SIZE]) {
    unsigned char once[HASH_SIZE];
    sha256_raw(data, size, once);
    sha256_raw(once, HASH_SIZE, out);
}

PyDoc_STRVAR(sha256d_doc, "sha256d(data, /) -> bytes\n\nSHA-256 of the SHA-256 of data.");

static PyObject *py_sha256d(PyObject *Py_UNUSED(module), PyObject *arg) {
    Py_buffer data;
    unsigned char out[HASH_SIZE];
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0)
        return NULL;
    sha256d_raw(data.buf, (size_t)data.len, out);
    PyBuffer_Release(&data);
    return PyBytes_FromStringAndSize((const char *)out, HASH_SIZE);
}

PyDoc_STRVAR(coinbase_merkle_root_doc,
             "coinbase_merkle_root(coinbase_prefix, extranonce2, coinb2, branches, /) -> bytes\n\n"
             "The merkle root of a coinbase: the fold of sha256d(root + branch), starting at\n"
             "sha256d(coinbase_prefix + extranonce2 + coinb2), over `branches`, the 32-byte branches\n"
             "joined in order (internal byte order throughout).");

static PyObject *py_coinbase_merkle_root(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer parts[4];
    Py_ssize_t held = 0;
    unsigned char pair[2 * HASH_SIZE], once[HASH_SIZE];
    SHA256_CTX ctx;

    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "coinbase_merkle_root() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    for (; held < 4; held++) {
        if (PyObject_GetBuffer(args[held], &parts[held], PyBUF_SIMPLE) < 0)
            goto fail;
    }
    if (parts[3].len % HASH_SIZE != 0) {
        PyErr_SetString(PyExc_ValueError, "branches must be whole 32-byte hashes");
        goto fail;
    }
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, parts[0].buf, (size_t)parts[0].len);
    SHA256_Update(&ctx, parts[1].buf, (size_t)parts[1].len);
    SHA256_Update(&ctx, parts[2].buf, (size_t)parts[2].len);
    SHA256_Final(once, &ctx);
    sha256_raw(once, HASH_SIZE, pair); /* the root so far, in pair's first half */
    for (Py_ssize_t at = 0; at < parts[3].len; at += HASH_SIZE) {
        memcpy(pair + HASH_SIZE, (const unsigned char *)parts[3].buf + at, HASH_SIZE);
        sha256d_raw(pair, sizeof pair, pair);
    }
    while (held > 0)
        PyBuffer_Release(&parts[--held]);
    return PyBytes_FromStringAndSize((const char *)pair, HASH_SIZE);

fail:
    while (held > 0)
        PyBuffer_Release(&parts[--held]);
    return NULL;
}

/* The value of one hex digit, or -1. */
static int hex_digit(unsigned char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20; /* ASCII upper to lower case; no other byte lands in a..f */
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* The ASCII text of `value` when it is a str of exactly `digits` characters, else NULL: with
 * TypeError set when it is not a str at all, with no error (the caller answers None) otherwise. */
static const unsigned char *exact_ascii(PyObject *value, Py_ssize_t digits) {
    if (!PyUnicode_Check(value)) {
        PyErr_Format(PyExc_TypeError, "expected str, not %.100s", Py_TYPE(value)->tp_name);
        return NULL;
    }
    if (!PyUnicode_IS_ASCII(value) || PyUnicode_GET_LENGTH(value) != digits)
        return NULL;
    return (const unsigned char *)PyUnicode_DATA(value);
}

/* What a caller of exact_ascii returns when it gave NULL: the error, or None. */
static PyObject *not_a_field(void) {
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(hex_bytes_doc,
             "hex_bytes(value, digits, /) -> bytes | None\n\n"
             "value decoded when it is exactly `digits` (even) hex digits in either case, else None.");

static PyObject *py_hex_bytes(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "hex_bytes() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_ssize_t digits = PyLong_AsSsize_t(args[1]);
    if (digits == -1 && PyErr_Occurred())
        return NULL;
    const unsigned char *text = exact_ascii(args[0], digits);
    if (text == NULL)
        return not_a_field();
    if (digits <= 0 || digits % 2 != 0) /* no digits is no field (as the Python: "".isalnum() is false) */
        Py_RETURN_NONE;
    PyObject *out = PyBytes_FromStringAndSize(NULL, digits / 2);
    if (out == NULL)
        return NULL;
    unsigned char *bytes = (unsigned char *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < digits; i += 2) {
        int high = hex_digit(text[i]), low = hex_digit(text[i + 1]);
        if (high < 0 || low < 0) {
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        bytes[i / 2] = (unsigned char)(high << 4 | low);
    }
    return out;
}

PyDoc_STRVAR(hex_uint32_doc,
             "hex_uint32(value, /) -> int | None\n\n"
             "value read as a big-endian number when it is exactly 8 hex digits in either case, else None.");

static PyObject *py_hex_uint32(PyObject *Py_UNUSED(module), PyObject *arg) {
    const unsigned char *text = exact_ascii(arg, 8);
    if (text == NULL)
        return not_a_field();
    unsigned long number = 0;
    for (int i = 0; i < 8; i++) {
        int digit = hex_digit(text[i]);
        if (digit < 0)
            Py_RETURN_NONE;
        number = number << 4 | (unsigned long)digit;
    }
    return PyLong_FromUnsignedLong(number);
}

static PyMethodDef methods[] = {
    {"sha256d", py_sha256d, METH_O, sha256d_doc},
    {"coinbase_merkle_root", (PyCFunction)(void (*)(void))py_coinbase_merkle_root, METH_FASTCALL,
     coinbase_merkle_root_doc},
    {"hex_bytes", (PyCFunction)(void (*)(void))py_hex_bytes, METH_FASTCALL, hex_bytes_doc},
    {"hex_uint32", py_hex_uint32, METH_O, hex_uint32_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "protocol._sha256d",
    .m_doc = "sha256d, the coinbase's merkle fold (OpenSSL's SHA-256) and a share's hex fields, for protocol.work.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__sha256d(void) { return PyModuleDef_Init(&module_def); }
