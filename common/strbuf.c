/* common/strbuf.c — a growable, NUL-terminated byte buffer for building text. */
#include "common/strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Makes room for extra more bytes plus the NUL; false (and failed set) when it cannot. */
static bool reserve(cairn_strbuf *sb, size_t extra)
{
    if (sb->failed) return false;
    if (extra > (size_t)-1 / 2 - sb->len) {
        sb->failed = true;
        return false;
    }
    size_t need = sb->len + extra + 1;
    if (need <= sb->cap) return true;
    size_t cap = sb->cap ? sb->cap : 256;
    while (cap < need)
        cap *= 2;
    char *p = realloc(sb->data, cap);
    if (!p) {
        sb->failed = true;
        return false;
    }
    sb->data = p;
    sb->cap = cap;
    return true;
}

void cairn_strbuf_append(cairn_strbuf *sb, const char *s, size_t n)
{
    if (!reserve(sb, n)) return;
    memcpy(sb->data + sb->len, s, n);
    sb->len += n;
    sb->data[sb->len] = '\0';
}

void cairn_strbuf_puts(cairn_strbuf *sb, const char *s)
{
    cairn_strbuf_append(sb, s, strlen(s));
}

void cairn_strbuf_putc(cairn_strbuf *sb, char c)
{
    cairn_strbuf_append(sb, &c, 1);
}

void cairn_strbuf_printf(cairn_strbuf *sb, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !reserve(sb, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(sb->data + sb->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb->len += (size_t)n;
}

char *cairn_strbuf_take(cairn_strbuf *sb, size_t *len)
{
    if (!sb->failed) reserve(sb, 0);
    if (sb->failed) {
        cairn_strbuf_free(sb);
        if (len) *len = 0;
        return NULL;
    }
    sb->data[sb->len] = '\0';
    char *out = sb->data;
    if (len) *len = sb->len;
    *sb = (cairn_strbuf)CAIRN_STRBUF_INIT;
    return out;
}

void cairn_strbuf_free(cairn_strbuf *sb)
{
    free(sb->data);
    *sb = (cairn_strbuf)CAIRN_STRBUF_INIT;
}
