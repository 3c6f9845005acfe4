/*
 * common/error.h — error codes and error messages.
 *
 * Functions that can fail on outside input return int: 0 on success, a negative
 * CAIRN_E* code otherwise. The detail (which field, which offset, what limit)
 * goes to a caller-supplied cairn_error, which may be NULL when the caller only
 * wants the code.
 */
#ifndef CAIRN_COMMON_ERROR_H
#define CAIRN_COMMON_ERROR_H

#include <stddef.h>

enum {
    CAIRN_OK = 0,
    CAIRN_EINVAL = -1,       /* invalid argument or value */
    CAIRN_ENOMEM = -2,       /* out of memory */
    CAIRN_EIO = -3,          /* read/write/open failed (errno in the message) */
    CAIRN_EFORMAT = -4,      /* malformed input: file, message or request */
    CAIRN_ERANGE = -5,       /* a value is outside its allowed range */
    CAIRN_ENOTFOUND = -6,    /* no such key, file, tensor or id */
    CAIRN_EUNSUPPORTED = -7, /* valid but not supported (type, version, arch) */
    CAIRN_EOVERFLOW = -8,    /* a size computation would overflow */
    CAIRN_EBUSY = -9,        /* a bounded queue or pool is full */
    CAIRN_ETIMEDOUT = -10,   /* a deadline passed */
    CAIRN_ECANCELED = -11,   /* the operation was cancelled */
    CAIRN_EAUTH = -12,       /* authentication or signature check failed */
    CAIRN_ESTATE = -13,      /* the object is not in a state that allows this */
    CAIRN_EDEVICE = -14,     /* a GPU / CUDA call failed */
    CAIRN_ENET = -15,        /* network or remote server error */
    CAIRN_ELIMIT = -16,      /* a configured limit was exceeded */
};

/* The name-and-meaning of a code, e.g. "invalid argument". Static; thread-safe. */
const char *cairn_strerror(int code);

/* The detail of the last error an operation met. Callers own it (usually on the stack). */
typedef struct cairn_error {
    int code;
    char msg[512];
} cairn_error;

/*
 * Records code and a printf-style message in err (when err is not NULL) and
 * returns code, so that a failing path reads `return cairn_errorf(err, CAIRN_EFORMAT, ...)`.
 * An existing message is replaced. Thread-safe as long as err is not shared.
 */
int cairn_errorf(cairn_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes the message already in err with "prefix: " (context as an error travels up). */
int cairn_error_prefix(cairn_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Clears err to CAIRN_OK and an empty message. NULL is a no-op. */
void cairn_error_clear(cairn_error *err);

#endif
