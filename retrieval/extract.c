/*
 * retrieval/extract.c — the text of uploaded files (see extract.h).
 *
 * HTML and PDF text is collected into a bounded buffer (tbuf) that collapses whitespace as it
 * goes, so a hostile file cannot make more than max_text bytes of output, and the final text
 * passes the same check as every corpus document (cairn_corpus_check).
 */
#define CAIRN_LOG_TAG "extract"
#include "retrieval/extract.h"

#include "common/log.h"
#include "retrieval/corpus.h"

#include <ctype.h>
#include <libxml/HTMLparser.h>
#include <libxml/parser.h>
#include <poppler.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- Kinds ------------------------------------------------------------------------------ */

const char *cairn_extract_kind_name(cairn_extract_kind kind)
{
    switch (kind) {
    case CAIRN_EXTRACT_TEXT: return "text";
    case CAIRN_EXTRACT_MARKDOWN: return "markdown";
    case CAIRN_EXTRACT_HTML: return "html";
    case CAIRN_EXTRACT_PDF: return "pdf";
    default: return "unknown";
    }
}

const char *cairn_extract_mime(cairn_extract_kind kind)
{
    switch (kind) {
    case CAIRN_EXTRACT_TEXT: return "text/plain";
    case CAIRN_EXTRACT_MARKDOWN: return "text/markdown";
    case CAIRN_EXTRACT_HTML: return "text/html";
    case CAIRN_EXTRACT_PDF: return "application/pdf";
    default: return "application/octet-stream";
    }
}

static const struct {
    const char *name;
    cairn_extract_kind kind;
} mimes[] = {
    {"text/plain", CAIRN_EXTRACT_TEXT},        {"text/markdown", CAIRN_EXTRACT_MARKDOWN},
    {"text/x-markdown", CAIRN_EXTRACT_MARKDOWN}, {"text/html", CAIRN_EXTRACT_HTML},
    {"application/xhtml+xml", CAIRN_EXTRACT_HTML}, {"application/pdf", CAIRN_EXTRACT_PDF},
    {"application/x-pdf", CAIRN_EXTRACT_PDF},
}, exts[] = {
    {"txt", CAIRN_EXTRACT_TEXT},  {"text", CAIRN_EXTRACT_TEXT},      {"md", CAIRN_EXTRACT_MARKDOWN},
    {"markdown", CAIRN_EXTRACT_MARKDOWN}, {"html", CAIRN_EXTRACT_HTML}, {"htm", CAIRN_EXTRACT_HTML},
    {"xhtml", CAIRN_EXTRACT_HTML}, {"pdf", CAIRN_EXTRACT_PDF},
};

/* Plain text and Markdown are both kept as they are: either name may be given for the other. */
static bool compatible(cairn_extract_kind a, cairn_extract_kind b)
{
    bool ta = a == CAIRN_EXTRACT_TEXT || a == CAIRN_EXTRACT_MARKDOWN;
    bool tb = b == CAIRN_EXTRACT_TEXT || b == CAIRN_EXTRACT_MARKDOWN;
    return a == b || (ta && tb);
}

int cairn_extract_kind_for(const char *filename, const char *content_type,
                           cairn_extract_kind *out, cairn_error *err)
{
    cairn_extract_kind by_type = 0, by_name = 0;
    char ct[96] = "";
    if (content_type) {
        const char *s = content_type;
        while (*s == ' ' || *s == '\t') s++;
        size_t n = strcspn(s, "; \t");
        if (n >= sizeof ct) n = sizeof ct - 1;
        for (size_t i = 0; i < n; i++) ct[i] = (char)tolower((unsigned char)s[i]);
        ct[n] = '\0';
    }
    /* curl -d/--data-binary sends form-urlencoded unless told otherwise: no more a statement
     * about the file than octet-stream is. */
    if (ct[0] && strcmp(ct, "application/octet-stream") != 0 &&
        strcmp(ct, "application/x-www-form-urlencoded") != 0) {
        for (size_t i = 0; i < sizeof mimes / sizeof mimes[0]; i++)
            if (!strcmp(ct, mimes[i].name)) by_type = mimes[i].kind;
        if (!by_type)
            return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                                "content type %s is not supported (text/plain, text/markdown, "
                                "text/html or application/pdf)", ct);
    }
    const char *dot = filename ? strrchr(filename, '.') : NULL;
    if (dot && !strchr(dot, '/'))
        for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++)
            if (!strcasecmp(dot + 1, exts[i].name)) by_name = exts[i].kind;
    if (by_type && by_name && !compatible(by_type, by_name))
        return cairn_errorf(err, CAIRN_EINVAL, "content type %s does not match the file name "
                                               "'%.80s' (a %s file)",
                            ct, filename, cairn_extract_kind_name(by_name));
    if (!by_type && !by_name)
        return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                            "cannot tell the kind of '%.80s': name it .txt, .md, .html or .pdf, "
                            "or send its Content-Type", filename ? filename : "");
    *out = by_name ? by_name : by_type;
    return 0;
}

/* ---- A bounded text buffer that collapses whitespace ------------------------------------ */

typedef struct tbuf {
    char *p;
    size_t len, cap, max;
    bool space; /* a space is due before the next visible byte */
    bool over;  /* more than max bytes were offered, or memory ran out: nothing more is kept */
    bool nomem;
} tbuf;

static void tb_put(tbuf *t, const char *s, size_t n)
{
    if (t->over) return;
    if (t->len + n > t->max) {
        t->over = true;
        return;
    }
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 4096;
        while (cap < t->len + n + 1) cap *= 2;
        char *q = realloc(t->p, cap);
        if (!q) {
            t->over = t->nomem = true; /* p stays valid (and is freed) */
            return;
        }
        t->p = q;
        t->cap = cap;
    }
    memcpy(t->p + t->len, s, n);
    t->len += n;
    t->p[t->len] = '\0';
}

/* Appends text, folding every run of whitespace (and control characters) into one space. */
static void tb_text(tbuf *t, const char *s)
{
    while (*s && !t->over) {
        size_t vis = 0;
        while (s[vis] && (unsigned char)s[vis] > 0x20 && s[vis] != 0x7f) vis++;
        if (vis) {
            if (t->space && t->len && t->p[t->len - 1] != '\n') tb_put(t, " ", 1);
            t->space = false;
            tb_put(t, s, vis);
            s += vis;
        } else {
            t->space = true;
            s++;
        }
    }
}

/* Ends the current line; blank 1 asks for a blank line (a paragraph break). */
static void tb_break(tbuf *t, int blank)
{
    t->space = false;
    if (!t->len) return;
    int have = 0;
    for (size_t i = t->len; i > 0 && t->p[i - 1] == '\n' && have < 2; i--) have++;
    for (int want = blank ? 2 : 1; have < want; have++) tb_put(t, "\n", 1);
}

/* Hands the buffer over as the result's text, trimmed. 0, CAIRN_ELIMIT or CAIRN_ENOMEM. */
static int tb_finish(tbuf *t, cairn_extract_result *out, cairn_error *err)
{
    if (t->over) {
        free(t->p);
        t->p = NULL;
        return t->nomem ? cairn_errorf(err, CAIRN_ENOMEM, "out of memory")
                     : cairn_errorf(err, CAIRN_ELIMIT, "the text is longer than %zu bytes",
                                    t->max);
    }
    while (t->len && isspace((unsigned char)t->p[t->len - 1])) t->p[--t->len] = '\0';
    if (!t->p) {
        t->p = calloc(1, 1);
        if (!t->p) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    }
    out->text = t->p;
    out->text_len = t->len;
    t->p = NULL;
    return 0;
}

/* A title: whitespace collapsed, the words that fit in 200 bytes (whole runs of visible bytes
 * only, so never half a character). NULL when out of memory. */
static char *make_title(const char *s)
{
    tbuf t = {.max = 200};
    if (s) tb_text(&t, s);
    if (t.nomem) {
        free(t.p);
        return NULL;
    }
    if (!t.p) t.p = calloc(1, 1);
    return t.p;
}

/* ---- HTML --------------------------------------------------------------------------------- */

static pthread_once_t xml_once = PTHREAD_ONCE_INIT;
static void xml_init(void) { xmlInitParser(); } /* libxml2 is thread-safe once initialised */

static bool name_in(const char *name, const char *const *list)
{
    for (; *list; list++)
        if (!strcmp(name, *list)) return true;
    return false;
}

/* Not text a reader sees. */
static const char *const skipped[] = {"script", "style",  "noscript", "template", "iframe",
                                      "object", "svg",    "math",     "canvas",   "select",
                                      "button", "head",   NULL};
/* Paragraph-like blocks end with a blank line, other blocks with a line break. */
static const char *const paragraphs[] = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre",
                                         "blockquote", "ul", "ol", "dl", "table", "section",
                                         "article", "header", "footer", "figure", "hr", "main",
                                         "aside", "nav", "address", "form", "fieldset", NULL};
static const char *const blocks[] = {"div", "br", "li", "tr", "dt", "dd", "caption",
                                     "figcaption", "summary", "details", "option", "label",
                                     "legend", "td", "th", "body", NULL};

static bool is_block(const xmlNode *n, int *blank)
{
    if (n->type != XML_ELEMENT_NODE) return false;
    const char *name = (const char *)n->name;
    if (name_in(name, paragraphs)) return *blank = 1, true;
    if (name_in(name, blocks)) return *blank = 0, true;
    return false;
}

/* The first <title>'s text, wherever it sits. */
static char *html_title(xmlNode *n)
{
    while (n) {
        if (n->type == XML_ELEMENT_NODE && !strcmp((const char *)n->name, "title")) {
            xmlChar *c = xmlNodeGetContent(n);
            char *t = make_title((const char *)c);
            xmlFree(c);
            return t;
        }
        if (n->type == XML_ELEMENT_NODE && n->children) {
            n = n->children;
            continue;
        }
        while (n && !n->next) {
            n = n->parent;
            if (n && n->type != XML_ELEMENT_NODE) n = NULL;
        }
        if (n) n = n->next;
    }
    return make_title(NULL);
}

/* Walks the tree without recursion (a hostile page may nest deeply). */
static void html_walk(xmlNode *n, tbuf *t)
{
    while (n && !t->over) {
        bool descend = true;
        int blank = 0;
        if (n->type == XML_ELEMENT_NODE) {
            if (name_in((const char *)n->name, skipped)) descend = false;
            else if (is_block(n, &blank)) tb_break(t, blank);
        } else if (n->type == XML_TEXT_NODE || n->type == XML_CDATA_SECTION_NODE) {
            if (n->content) tb_text(t, (const char *)n->content);
        }
        if (descend && n->type == XML_ELEMENT_NODE && n->children) {
            n = n->children;
            continue;
        }
        /* n is done: close it and every ancestor left behind, then take the next sibling */
        for (;;) {
            if (descend && is_block(n, &blank)) tb_break(t, blank);
            descend = true;
            if (n->next) {
                n = n->next;
                break;
            }
            n = n->parent;
            if (!n || n->type != XML_ELEMENT_NODE) {
                n = NULL;
                break;
            }
        }
    }
}

static int extract_html(const char *data, size_t len, size_t max_text, cairn_extract_result *out,
                        cairn_error *err)
{
    if (memchr(data, '\0', len))
        return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                            "binary file: a NUL byte at offset %zu is not HTML (UTF-16 pages "
                            "are not supported either)",
                            (size_t)((const char *)memchr(data, '\0', len) - data));
    if (len > (size_t)0x7fffffff)
        return cairn_errorf(err, CAIRN_ELIMIT, "HTML of %zu bytes is too large", len);
    pthread_once(&xml_once, xml_init);
    /* RECOVER parses broken markup as browsers do; NONET: never fetch a DTD or anything else. */
    int opts = HTML_PARSE_RECOVER | HTML_PARSE_NOERROR | HTML_PARSE_NOWARNING | HTML_PARSE_NONET |
               HTML_PARSE_NODEFDTD | HTML_PARSE_COMPACT;
    htmlDocPtr doc = htmlReadMemory(data, (int)len, NULL, NULL, opts);
    if (!doc) return cairn_errorf(err, CAIRN_EFORMAT, "the HTML could not be parsed");
    tbuf t = {.max = max_text};
    html_walk(doc->children, &t);
    char *title = html_title(doc->children);
    xmlFreeDoc(doc);
    int rc = title ? tb_finish(&t, out, err) : cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    if (rc) {
        free(t.p);
        free(title);
        return rc;
    }
    out->title = title;
    return 0;
}

/* ---- PDF ---------------------------------------------------------------------------------- */

/* Poppler keeps process-wide state (its global parameters, font caches) without documenting
 * thread safety for the glib API; one document at a time. */
static pthread_mutex_t pdf_lock = PTHREAD_MUTEX_INITIALIZER;

static bool has_eof_marker(const char *data, size_t len)
{
    /* The trailer ends with %%EOF; writers may add a few bytes (line ends, padding) after it,
     * and readers look for it in the last 1024 bytes. */
    size_t from = len > 1024 ? len - 1024 : 0;
    for (size_t i = len >= 5 ? len - 5 + 1 : 0; i-- > from;)
        if (!memcmp(data + i, "%%EOF", 5)) return true;
    return false;
}

/* Page text with form feeds and other control characters turned into line breaks or spaces,
 * then folded like HTML text, line by line. */
static void pdf_page_text(tbuf *t, char *s)
{
    char *line = s;
    for (char *p = s;; p++) {
        bool end = *p == '\0';
        if (end || *p == '\n' || *p == '\r' || *p == '\f') {
            char c = *p;
            *p = '\0';
            tb_text(t, line);
            tb_break(t, 0);
            if (end) break;
            *p = c;
            line = p + 1;
        }
    }
}

static int extract_pdf(const char *data, size_t len, size_t max_text, cairn_extract_result *out,
                       cairn_error *err)
{
    if (len < 8 || memcmp(data, "%PDF-", 5) != 0)
        return cairn_errorf(err, CAIRN_EFORMAT, "not a PDF: the file does not start with %%PDF-");
    if (!has_eof_marker(data, len))
        return cairn_errorf(err, CAIRN_EFORMAT,
                            "truncated PDF: no %%%%EOF marker at its end (%zu bytes)", len);
    pthread_mutex_lock(&pdf_lock);
    GBytes *bytes = g_bytes_new_static(data, len);
    GError *ge = NULL;
    PopplerDocument *doc = poppler_document_new_from_bytes(bytes, NULL, &ge);
    int rc = 0;
    tbuf t = {.max = max_text};
    char *title = NULL;
    if (!doc) {
        if (ge && ge->domain == POPPLER_ERROR && ge->code == POPPLER_ERROR_ENCRYPTED)
            rc = cairn_errorf(err, CAIRN_EUNSUPPORTED, "the PDF is encrypted");
        else
            rc = cairn_errorf(err, CAIRN_EFORMAT, "bad PDF: %s",
                              ge && ge->message ? ge->message : "poppler could not open it");
    } else {
        int pages = poppler_document_get_n_pages(doc);
        if (pages < 1) rc = cairn_errorf(err, CAIRN_EFORMAT, "the PDF has no pages");
        for (int i = 0; !rc && i < pages && !t.over; i++) {
            PopplerPage *pg = poppler_document_get_page(doc, i);
            char *text = pg ? poppler_page_get_text(pg) : NULL;
            if (text) pdf_page_text(&t, text);
            tb_break(&t, 1);
            g_free(text);
            if (pg) g_object_unref(pg);
        }
        char *pt = poppler_document_get_title(doc);
        title = make_title(pt);
        g_free(pt);
        g_object_unref(doc);
    }
    if (ge) g_error_free(ge);
    g_bytes_unref(bytes);
    pthread_mutex_unlock(&pdf_lock);
    if (!rc && !title) rc = cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    if (!rc) rc = tb_finish(&t, out, err);
    if (rc) {
        free(t.p);
        free(title);
        return rc;
    }
    out->title = title;
    return 0;
}

/* ---- Entry points -------------------------------------------------------------------------- */

int cairn_extract(cairn_extract_kind kind, const void *data, size_t len, size_t max_text,
                  cairn_extract_result *out, cairn_error *err)
{
    memset(out, 0, sizeof *out);
    const char *s = data;
    int rc;
    if (!s && len) return cairn_errorf(err, CAIRN_EINVAL, "no data");
    if (len == 0) return cairn_errorf(err, CAIRN_EINVAL, "the file is empty");
    /* A PDF is mostly ASCII and would pass as text or markup, yielding its source code. */
    if (kind != CAIRN_EXTRACT_PDF && len >= 5 && !memcmp(s, "%PDF-", 5))
        return cairn_errorf(err, CAIRN_EINVAL, "the file is a PDF, not %s: name it .pdf",
                            cairn_extract_kind_name(kind));
    switch (kind) {
    case CAIRN_EXTRACT_TEXT:
    case CAIRN_EXTRACT_MARKDOWN:
        if (len >= 3 && !memcmp(s, "\xEF\xBB\xBF", 3)) s += 3, len -= 3; /* UTF-8 BOM */
        rc = cairn_corpus_check(s, len, max_text, err);
        if (rc) return cairn_error_prefix(err, "%s file", cairn_extract_kind_name(kind));
        out->text = malloc(len + 1);
        out->title = calloc(1, 1);
        if (!out->text || !out->title) {
            cairn_extract_free(out);
            return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
        }
        memcpy(out->text, s, len);
        out->text[len] = '\0';
        out->text_len = len;
        return 0;
    case CAIRN_EXTRACT_HTML: rc = extract_html(s, len, max_text, out, err); break;
    case CAIRN_EXTRACT_PDF: rc = extract_pdf(s, len, max_text, out, err); break;
    default: return cairn_errorf(err, CAIRN_EINVAL, "unknown document kind %d", (int)kind);
    }
    if (rc) return rc;
    if (out->text_len == 0) {
        cairn_extract_free(out);
        return cairn_errorf(err, CAIRN_EINVAL, "no text found in the %s%s",
                            cairn_extract_kind_name(kind),
                            kind == CAIRN_EXTRACT_PDF ? " (a scanned PDF holds only images)" : "");
    }
    rc = cairn_corpus_check(out->text, out->text_len, max_text, err);
    if (rc) {
        cairn_extract_free(out);
        return cairn_error_prefix(err, "text of the %s", cairn_extract_kind_name(kind));
    }
    return 0;
}

void cairn_extract_free(cairn_extract_result *r)
{
    if (!r) return;
    free(r->text);
    free(r->title);
    memset(r, 0, sizeof *r);
}
