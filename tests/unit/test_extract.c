/* tests/unit/test_extract.c — text of uploaded files (retrieval/extract.h): kinds from names and
 * content types, HTML through libxml2, PDF through poppler, and the refusals of bad files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "retrieval/extract.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A one-page PDF showing line (ASCII without parentheses), with a correct xref table. */
static char *make_pdf(const char *line, const char *title, size_t *len)
{
    char stream[512];
    int sl = snprintf(stream, sizeof stream, "BT /F1 12 Tf 72 720 Td (%s) Tj ET", line);
    char objs[6][640];
    snprintf(objs[0], sizeof objs[0], "<< /Type /Catalog /Pages 2 0 R >>");
    snprintf(objs[1], sizeof objs[1], "<< /Type /Pages /Kids [3 0 R] /Count 1 >>");
    snprintf(objs[2], sizeof objs[2],
             "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 "
             "4 0 R >> >> /Contents 5 0 R >>");
    snprintf(objs[3], sizeof objs[3], "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>");
    snprintf(objs[4], sizeof objs[4], "<< /Length %d >>\nstream\n%s\nendstream", sl, stream);
    snprintf(objs[5], sizeof objs[5], "<< /Title (%s) >>", title);
    char *out = malloc(8192);
    size_t n = (size_t)sprintf(out, "%%PDF-1.4\n");
    size_t off[6];
    for (int i = 0; i < 6; i++) {
        off[i] = n;
        n += (size_t)sprintf(out + n, "%d 0 obj\n%s\nendobj\n", i + 1, objs[i]);
    }
    size_t xref = n;
    n += (size_t)sprintf(out + n, "xref\n0 7\n0000000000 65535 f \n");
    for (int i = 0; i < 6; i++) n += (size_t)sprintf(out + n, "%010zu 00000 n \n", off[i]);
    n += (size_t)sprintf(out + n, "trailer\n<< /Size 7 /Root 1 0 R /Info 6 0 R >>\nstartxref\n"
                                  "%zu\n%%%%EOF\n", xref);
    *len = n;
    return out;
}

static void test_kind_for(void **state)
{
    cairn_extract_kind k = 0;
    cairn_error err = {0};
    assert_int_equal(cairn_extract_kind_for("a.PDF", NULL, &k, &err), 0);
    assert_int_equal(k, CAIRN_EXTRACT_PDF);
    assert_int_equal(cairn_extract_kind_for("notes", "text/markdown; charset=utf-8", &k, &err), 0);
    assert_int_equal(k, CAIRN_EXTRACT_MARKDOWN);
    assert_int_equal(cairn_extract_kind_for("r.md", "text/plain", &k, &err), 0); /* both text */
    assert_int_equal(k, CAIRN_EXTRACT_MARKDOWN);
    assert_int_equal(cairn_extract_kind_for("p.htm", "application/octet-stream", &k, &err), 0);
    assert_int_equal(k, CAIRN_EXTRACT_HTML);
    assert_int_equal(cairn_extract_kind_for("a.pdf", "text/html", &k, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "does not match"));
    assert_int_equal(cairn_extract_kind_for("a.png", "image/png", &k, &err), CAIRN_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "image/png"));
    assert_int_equal(cairn_extract_kind_for("archive.zip", NULL, &k, &err), CAIRN_EUNSUPPORTED);
    assert_int_equal(cairn_extract_kind_for(NULL, NULL, &k, &err), CAIRN_EUNSUPPORTED);
}

static void test_html(void **state)
{
    const char *page =
        "<!DOCTYPE html><html><head><title> Sea   otters </title><style>p{}</style>"
        "<script>var s = '<p>hidden</p>';</script></head><body><h1>Otters</h1>"
        "<p>Sea otters hold   hands\nwhile they sleep.</p><ul><li>kelp</li><li>fish &amp; "
        "crabs</li></ul><div>caf&eacute;<p>unclosed<div>";
    cairn_extract_result r;
    cairn_error err = {0};
    assert_int_equal(cairn_extract(CAIRN_EXTRACT_HTML, page, strlen(page), 4096, &r, &err), 0);
    assert_string_equal(r.title, "Sea otters");
    assert_string_equal(r.text, "Otters\n\nSea otters hold hands while they sleep.\n\nkelp\n"
                                "fish & crabs\n\ncafé\n\nunclosed");
    assert_int_equal(r.text_len, strlen(r.text));
    assert_null(strstr(r.text, "hidden"));
    cairn_extract_free(&r);
    /* Only markup, no text; and a NUL byte: binary, not HTML. */
    const char *empty = "<html><body><script>x()</script></body></html>";
    assert_int_equal(cairn_extract(CAIRN_EXTRACT_HTML, empty, strlen(empty), 4096, &r, &err),
                     CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "no text"));
    assert_null(r.text);
    assert_int_equal(cairn_extract(CAIRN_EXTRACT_HTML, "<p>a\0b</p>", 10, 4096, &r, &err),
                     CAIRN_EUNSUPPORTED);
    /* Nesting as deep as libxml2 builds (its limit is 256 levels) is walked; deeper pages lose
     * what lies below the limit, with a clean error rather than a crash. */
    char *deep = malloc(20000 * 5 + 16);
    for (size_t depth = 200; depth <= 20000; depth *= 100) {
        size_t n = 0;
        for (size_t i = 0; i < depth; i++) n += (size_t)sprintf(deep + n, "<div>");
        n += (size_t)sprintf(deep + n, "deep");
        int rc = cairn_extract(CAIRN_EXTRACT_HTML, deep, n, 4096, &r, &err);
        if (depth == 200) {
            assert_int_equal(rc, 0);
            assert_string_equal(r.text, "deep");
            cairn_extract_free(&r);
        } else {
            assert_int_equal(rc, CAIRN_EINVAL);
        }
    }
    free(deep);
}

static void test_pdf(void **state)
{
    size_t len = 0;
    char *pdf = make_pdf("Cairns mark the trail above the tree line.", "Trail notes", &len);
    cairn_extract_result r;
    cairn_error err = {0};
    assert_int_equal(cairn_extract(CAIRN_EXTRACT_PDF, pdf, len, 4096, &r, &err), 0);
    assert_string_equal(r.text, "Cairns mark the trail above the tree line.");
    assert_string_equal(r.title, "Trail notes");
    cairn_extract_free(&r);
    /* Cut short: refused before poppler could rebuild half a document. */
    assert_int_equal(cairn_extract(CAIRN_EXTRACT_PDF, pdf, len / 2, 4096, &r, &err),
                     CAIRN_EFORMAT);
    assert_non_null(strstr(err.msg, "truncated"));
    /* Not a PDF at all. */
    assert_int_equal(cairn_extract(CAIRN_EXTRACT_PDF, "hello world, no pdf", 19, 4096, &r, &err),
                     CAIRN_EFORMAT);
    assert_non_null(strstr(err.msg, "%PDF-"));
    /* A header and a trailer around garbage. */
    char junk[600] = "%PDF-1.7\n";
    for (int i = 9; i < 590; i++) junk[i] = (char)(i * 7);
    memcpy(junk + 590, "\n%%EOF\n", 7);
    assert_int_equal(cairn_extract(CAIRN_EXTRACT_PDF, junk, 597, 4096, &r, &err), CAIRN_EFORMAT);
    assert_null(r.text);
    /* A PDF named .html or .txt is refused, not indexed as its source code. */
    assert_int_equal(cairn_extract(CAIRN_EXTRACT_HTML, pdf, len, 4096, &r, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "is a PDF"));
    assert_int_equal(cairn_extract(CAIRN_EXTRACT_TEXT, pdf, len, 4096, &r, &err), CAIRN_EINVAL);
    /* More text than allowed. */
    assert_int_equal(cairn_extract(CAIRN_EXTRACT_PDF, pdf, len, 10, &r, &err), CAIRN_ELIMIT);
    free(pdf);
}

static void test_text(void **state)
{
    cairn_extract_result r;
    cairn_error err = {0};
    const char *t = "\xEF\xBB\xBFPlain notes.\n";
    assert_int_equal(cairn_extract(CAIRN_EXTRACT_TEXT, t, strlen(t), 100, &r, &err), 0);
    assert_string_equal(r.text, "Plain notes.\n"); /* the BOM dropped */
    assert_string_equal(r.title, "");
    cairn_extract_free(&r);
    const char png[] = "\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    assert_int_equal(cairn_extract(CAIRN_EXTRACT_TEXT, png, sizeof png - 1, 100, &r, &err),
                     CAIRN_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "binary"));
    assert_int_equal(cairn_extract(CAIRN_EXTRACT_MARKDOWN, "ab\xff", 3, 100, &r, &err),
                     CAIRN_EFORMAT);
    assert_int_equal(cairn_extract(CAIRN_EXTRACT_TEXT, "", 0, 100, &r, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_extract(CAIRN_EXTRACT_TEXT, "abcdef", 6, 5, &r, &err), CAIRN_ELIMIT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kind_for),
        cmocka_unit_test(test_html),
        cmocka_unit_test(test_pdf),
        cmocka_unit_test(test_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
