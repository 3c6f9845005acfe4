/* common/utf8.c — UTF-8 decoding and encoding (RFC 3629). */
#include "common/utf8.h"

uint32_t cairn_utf8_decode(const unsigned char *s, size_t n, size_t *i, bool *valid)
{
    unsigned char c = s[*i];
    if (valid) *valid = true;
    if (c < 0x80) {
        (*i)++;
        return c;
    }
    size_t need;
    uint32_t cp, min;
    if ((c & 0xE0) == 0xC0)
        need = 1, cp = c & 0x1F, min = 0x80;
    else if ((c & 0xF0) == 0xE0)
        need = 2, cp = c & 0x0F, min = 0x800;
    else if ((c & 0xF8) == 0xF0)
        need = 3, cp = c & 0x07, min = 0x10000;
    else
        goto bad;
    if (n - *i <= need) goto bad;
    for (size_t k = 1; k <= need; k++) {
        unsigned char cc = s[*i + k];
        if ((cc & 0xC0) != 0x80) goto bad;
        cp = (cp << 6) | (cc & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) goto bad;
    *i += need + 1;
    return cp;
bad:
    if (valid) *valid = false;
    (*i)++;
    return CAIRN_UTF8_REPLACEMENT;
}

size_t cairn_utf8_encode(uint32_t cp, unsigned char *o)
{
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

bool cairn_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    bool ok = true;
    while (i < n && ok) cairn_utf8_decode(s, n, &i, &ok);
    return ok;
}
