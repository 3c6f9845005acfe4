/* common/log.c — the process logger (see log.h for the line format). */
#include "common/log.h"

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>
#include <unistd.h>

#include "common/clock.h"

/* The logger's state: read and written with relaxed atomics, no lock. */
int cairn__log_level = CAIRN_LOG_LEVEL_INFO;
static int log_fd = 2;

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

void cairn_log_set_level(cairn_log_level level)
{
    __atomic_store_n(&cairn__log_level, (int)level, __ATOMIC_RELAXED);
}

cairn_log_level cairn_log_get_level(void)
{
    return (cairn_log_level)__atomic_load_n(&cairn__log_level, __ATOMIC_RELAXED);
}

const char *cairn_log_level_name(cairn_log_level level)
{
    if ((int)level < 0 || (int)level > CAIRN_LOG_LEVEL_OFF) return "unknown";
    return level_names[level];
}

int cairn_log_level_parse(const char *s, cairn_log_level *out, cairn_error *err)
{
    if (s) {
        for (int i = 0; i <= CAIRN_LOG_LEVEL_OFF; i++) {
            if (strcasecmp(s, level_names[i]) == 0) {
                *out = (cairn_log_level)i;
                return 0;
            }
        }
        if (strcasecmp(s, "warning") == 0) {
            *out = CAIRN_LOG_LEVEL_WARN;
            return 0;
        }
    }
    return cairn_errorf(err, CAIRN_EINVAL,
                        "unknown log level '%.64s' (expected debug, info, warn, error or off)",
                        s ? s : "(null)");
}

void cairn_log_set_fd(int fd)
{
    __atomic_store_n(&log_fd, fd, __ATOMIC_RELAXED);
}

void cairn_log_set_file(FILE *f)
{
    fflush(f);
    cairn_log_set_fd(fileno(f));
}

/* ---- Line building ------------------------------------------------------------- */

/* A line under construction; one byte stays free for the final newline. */
typedef struct {
    char buf[CAIRN_LOG_LINE_MAX];
    size_t len;
    bool cut;
} line_buf;

static void put_bytes(line_buf *lb, const char *s, size_t n)
{
    size_t room = sizeof lb->buf - 1 - lb->len;
    if (n > room) {
        n = room;
        lb->cut = true;
    }
    memcpy(lb->buf + lb->len, s, n);
    lb->len += n;
}

static void put_str(line_buf *lb, const char *s)
{
    put_bytes(lb, s, strlen(s));
}

static void put_char(line_buf *lb, char c)
{
    put_bytes(lb, &c, 1);
}

/* Escapes control characters, quotes and backslashes (the latter two only when quoting). */
static void put_escaped(line_buf *lb, const char *s, size_t n, bool quoting)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[4] = {'\\', 0, 0, 0};
        size_t elen = 2;
        switch (c) {
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        case '"':
        case '\\':
            if (!quoting) goto plain;
            esc[1] = (char)c;
            break;
        default:
            if (c >= 0x20 && c != 0x7f) goto plain;
            esc[1] = 'x';
            esc[2] = hex[c >> 4];
            esc[3] = hex[c & 15];
            elen = 4;
        }
        put_bytes(lb, esc, elen);
        continue;
    plain:
        put_char(lb, (char)c);
    }
}

static bool needs_quotes(const char *s, size_t n)
{
    if (n == 0) return true;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c == 0x7f) return true;
    }
    return false;
}

/* ---- Field formatting ------------------------------------------------------------- */

/* Appends at most cap-1 bytes to out[*len], keeping it NUL-terminated. */
static void out_append(char *out, size_t cap, size_t *len, const char *s, size_t n)
{
    if (*len + 1 >= cap) return;
    if (n > cap - 1 - *len) n = cap - 1 - *len;
    memcpy(out + *len, s, n);
    *len += n;
    out[*len] = '\0';
}

/*
 * Formats the format text [f, end) — literal text and printf conversions — into
 * out, taking arguments from *ap. Each conversion is rebuilt with explicit numbers
 * in place of '*' and handed to snprintf with the one argument its type needs,
 * which is what lets one format string be split into independently quoted fields.
 */
static void format_span(const char *f, const char *end, va_list *ap, char *out, size_t cap,
                        size_t *len)
{
    while (f < end) {
        if (*f != '%') {
            const char *lit = f;
            while (f < end && *f != '%')
                f++;
            out_append(out, cap, len, lit, (size_t)(f - lit));
            continue;
        }
        f++;
        if (f < end && *f == '%') {
            out_append(out, cap, len, "%", 1);
            f++;
            continue;
        }
        char spec[64];
        size_t sl = 0;
        spec[sl++] = '%';
        while (f < end && strchr("-+ #0'", *f) && sl < 8)
            spec[sl++] = *f++;
        if (f < end && *f == '*') {
            sl += (size_t)snprintf(spec + sl, sizeof spec - sl, "%d", va_arg(*ap, int));
            f++;
        } else {
            while (f < end && *f >= '0' && *f <= '9' && sl < 24)
                spec[sl++] = *f++;
        }
        if (f < end && *f == '.') {
            f++;
            if (f < end && *f == '*') {
                int prec = va_arg(*ap, int);
                if (prec >= 0) sl += (size_t)snprintf(spec + sl, sizeof spec - sl, ".%d", prec);
                f++;
            } else {
                spec[sl++] = '.';
                while (f < end && *f >= '0' && *f <= '9' && sl < 40)
                    spec[sl++] = *f++;
            }
        }
        char lenmod[3] = {0};
        size_t ll = 0;
        while (f < end && strchr("hlzjtLq", *f) && ll < 2)
            lenmod[ll++] = *f++;
        if (f >= end) return; /* a dangling '%': the compiler's format check warns */
        char conv = *f++;
        memcpy(spec + sl, lenmod, ll);
        sl += ll;
        spec[sl++] = conv;
        spec[sl] = '\0';

        char tmp[512];
        int n = 0;
        bool l1 = ll == 1 && lenmod[0] == 'l', l2 = ll == 2 && lenmod[0] == 'l';
        char m = ll ? lenmod[0] : 0;
        switch (conv) {
        case 'd':
        case 'i':
        case 'u':
        case 'o':
        case 'x':
        case 'X':
            if (l2 || m == 'q')
                n = snprintf(tmp, sizeof tmp, spec, va_arg(*ap, long long));
            else if (l1)
                n = snprintf(tmp, sizeof tmp, spec, va_arg(*ap, long));
            else if (m == 'z')
                n = snprintf(tmp, sizeof tmp, spec, va_arg(*ap, size_t));
            else if (m == 'j')
                n = snprintf(tmp, sizeof tmp, spec, va_arg(*ap, intmax_t));
            else if (m == 't')
                n = snprintf(tmp, sizeof tmp, spec, va_arg(*ap, ptrdiff_t));
            else
                n = snprintf(tmp, sizeof tmp, spec, va_arg(*ap, int));
            break;
        case 'c':
            n = snprintf(tmp, sizeof tmp, spec, va_arg(*ap, int));
            break;
        case 'e':
        case 'E':
        case 'f':
        case 'F':
        case 'g':
        case 'G':
        case 'a':
        case 'A':
            if (m == 'L')
                n = snprintf(tmp, sizeof tmp, spec, va_arg(*ap, long double));
            else
                n = snprintf(tmp, sizeof tmp, spec, va_arg(*ap, double));
            break;
        case 's': {
            const char *s = va_arg(*ap, const char *);
            if (!s) s = "(null)";
            if (sl == 2) { /* plain %s: copied whole, not through the small buffer */
                out_append(out, cap, len, s, strlen(s));
                break;
            }
            n = snprintf(tmp, sizeof tmp, spec, s);
            break;
        }
        case 'p':
            n = snprintf(tmp, sizeof tmp, spec, va_arg(*ap, void *));
            break;
        case 'n':
            (void)va_arg(*ap, void *); /* never written through */
            break;
        default:
            break; /* unknown conversion: consumes nothing, writes nothing */
        }
        if (n > 0)
            out_append(out, cap, len, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
    }
}

/* Splits the fields format at spaces (in the format, not the values) and writes key=value pairs. */
static void put_fields(line_buf *lb, const char *fmt, va_list *ap)
{
    const char *p = fmt;
    for (;;) {
        while (*p == ' ')
            p++;
        if (!*p) break;
        const char *tok = p;
        while (*p && *p != ' ')
            p++;
        const char *eq = memchr(tok, '=', (size_t)(p - tok));
        char val[CAIRN_LOG_LINE_MAX];
        size_t vlen = 0;
        val[0] = '\0';
        put_char(lb, ' ');
        if (eq) {
            char key[256];
            size_t klen = 0;
            key[0] = '\0';
            format_span(tok, eq, ap, key, sizeof key, &klen);
            put_escaped(lb, key, klen, false);
            put_char(lb, '=');
            format_span(eq + 1, p, ap, val, sizeof val, &vlen);
        } else {
            format_span(tok, p, ap, val, sizeof val, &vlen);
        }
        if (needs_quotes(val, vlen) && (eq || vlen)) {
            put_char(lb, '"');
            put_escaped(lb, val, vlen, true);
            put_char(lb, '"');
        } else {
            put_escaped(lb, val, vlen, false);
        }
    }
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return; /* nowhere left to report a logging failure */
        }
        p += w;
        n -= (size_t)w;
    }
}

void cairn_log_writev(cairn_log_level level, const char *tag, const char *msg, const char *fields,
                      va_list ap)
{
    if (!cairn_log_enabled(level) || level >= CAIRN_LOG_LEVEL_OFF) return;
    int saved_errno = errno; /* logging must not disturb the caller's errno */
    line_buf lb;
    lb.len = 0;
    lb.cut = false;
    char ts[32];
    size_t tl = cairn_wall_iso8601(ts, sizeof ts);
    put_bytes(&lb, ts, tl);
    char lvl[8];
    snprintf(lvl, sizeof lvl, " %-5s", cairn_log_level_name(level));
    put_str(&lb, lvl);
    if (tag && *tag) {
        put_char(&lb, ' ');
        put_str(&lb, tag);
    }
    if (msg && *msg) {
        put_char(&lb, ' ');
        put_escaped(&lb, msg, strlen(msg), false);
    }
    if (fields) {
        va_list cp;
        va_copy(cp, ap);
        put_fields(&lb, fields, &cp);
        va_end(cp);
    }
    if (lb.cut) memcpy(lb.buf + lb.len - 3, "...", 3);
    lb.buf[lb.len++] = '\n';
    write_all(__atomic_load_n(&log_fd, __ATOMIC_RELAXED), lb.buf, lb.len);
    errno = saved_errno;
}

void cairn_log_write(cairn_log_level level, const char *tag, const char *msg, const char *fields,
                     ...)
{
    va_list ap;
    va_start(ap, fields);
    cairn_log_writev(level, tag, msg, fields, ap);
    va_end(ap);
}
