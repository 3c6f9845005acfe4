/*
 * common/utf8.h — UTF-8 decoding and encoding (RFC 3629).
 *
 * One strict decoder for the whole project: shortest forms only, no surrogates, nothing above
 * U+10FFFF. Every function is pure and thread-safe.
 */
#ifndef CAIRN_COMMON_UTF8_H
#define CAIRN_COMMON_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CAIRN_UTF8_REPLACEMENT 0xFFFDu

/*
 * Decodes the code point at s[*i] (s holds n bytes, *i < n) and advances *i past it. An
 * invalid or truncated sequence (overlong, surrogate, > U+10FFFF, stray continuation byte)
 * gives U+FFFD and consumes one byte, so every byte is looked at and decoding never runs past
 * the end. *valid (may be NULL) says whether the sequence was well formed.
 */
uint32_t cairn_utf8_decode(const unsigned char *s, size_t n, size_t *i, bool *valid);

/* Writes cp (<= U+10FFFF) as 1-4 bytes into out (room for 4) and returns the count. */
size_t cairn_utf8_encode(uint32_t cp, unsigned char *out);

/* Whether s[0..n) is well-formed UTF-8. */
bool cairn_utf8_valid(const char *s, size_t n);

#endif
