/* common/error.c — error codes and error messages. */
#include "common/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *cairn_strerror(int code)
{
    switch (code) {
    case CAIRN_OK: return "success";
    case CAIRN_EINVAL: return "invalid argument";
    case CAIRN_ENOMEM: return "out of memory";
    case CAIRN_EIO: return "input/output error";
    case CAIRN_EFORMAT: return "malformed input";
    case CAIRN_ERANGE: return "value out of range";
    case CAIRN_ENOTFOUND: return "not found";
    case CAIRN_EUNSUPPORTED: return "not supported";
    case CAIRN_EOVERFLOW: return "size overflow";
    case CAIRN_EBUSY: return "resource busy or queue full";
    case CAIRN_ETIMEDOUT: return "timed out";
    case CAIRN_ECANCELED: return "canceled";
    case CAIRN_EAUTH: return "authentication failed";
    case CAIRN_ESTATE: return "invalid state";
    case CAIRN_EDEVICE: return "device error";
    case CAIRN_ENET: return "network error";
    case CAIRN_ELIMIT: return "limit exceeded";
    default: return "unknown error";
    }
}

int cairn_errorf(cairn_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

int cairn_error_prefix(cairn_error *err, const char *fmt, ...)
{
    if (!err) return CAIRN_OK;
    char prefix[256], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    /* Bounded so that the two parts cannot exceed the buffer: a long prefix keeps its end
     * of the old message short, never the other way round. */
    int room = (int)sizeof err->msg - 3;
    int plen = (int)strnlen(prefix, sizeof prefix);
    if (plen > room) plen = room;
    snprintf(err->msg, sizeof err->msg, "%.*s: %.*s", plen, prefix, room - plen, old);
    return err->code;
}

void cairn_error_clear(cairn_error *err)
{
    if (!err) return;
    err->code = CAIRN_OK;
    err->msg[0] = '\0';
}
