/*
 * common/strbuf.h — a growable, NUL-terminated byte buffer for building text.
 *
 * Appends never fail loudly: when memory runs out the buffer marks itself failed,
 * later appends are ignored and cairn_strbuf_take returns NULL, so builders check
 * once at the end. Not thread-safe; one owner at a time.
 */
#ifndef CAIRN_COMMON_STRBUF_H
#define CAIRN_COMMON_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    char *data; /* NUL-terminated when len > 0 or after any append; may be NULL when empty */
    size_t len;
    size_t cap;
    bool failed; /* an allocation failed: the content is incomplete */
} cairn_strbuf;

#define CAIRN_STRBUF_INIT                                                                          \
    {                                                                                              \
        NULL, 0, 0, false                                                                          \
    }

void cairn_strbuf_append(cairn_strbuf *sb, const char *s, size_t n);
void cairn_strbuf_puts(cairn_strbuf *sb, const char *s);
void cairn_strbuf_putc(cairn_strbuf *sb, char c);
void cairn_strbuf_printf(cairn_strbuf *sb, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * Hands the text to the caller (free() it) and resets sb; "" when nothing was
 * appended. Returns NULL (and frees the partial text) if an allocation failed.
 */
char *cairn_strbuf_take(cairn_strbuf *sb, size_t *len);

/* Frees the text and resets sb. */
void cairn_strbuf_free(cairn_strbuf *sb);

#endif
