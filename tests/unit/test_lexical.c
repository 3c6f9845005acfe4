/* tests/unit/test_lexical.c — the FTS5 lexical index (retrieval/lexical.h) and hybrid fusion
 * (retrieval/fuse.h): query text is only ever text, BM25 with title weighting, metadata
 * filters inside the query, deletes, persistence and the docstore uid, rank fusion. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "retrieval/fuse.h"
#include "retrieval/lexical.h"

static char tmpdir[64];
static char dbpath[128];

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/cairn-test-lexical-XXXXXX");
    if (!mkdtemp(tmpdir)) return -1;
    snprintf(dbpath, sizeof dbpath, "%s/lexical.db", tmpdir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A fresh index at dbpath for uid. */
static cairn_lex *fresh(uint64_t uid)
{
    char p[160];
    unlink(dbpath);
    snprintf(p, sizeof p, "%s-wal", dbpath);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", dbpath);
    unlink(p);
    cairn_lex *lx = NULL;
    cairn_error err = {0};
    if (cairn_lex_open(&lx, dbpath, uid, NULL, &err)) fail_msg("cairn_lex_open: %s", err.msg);
    return lx;
}

static const cairn_lex_doc docs[] = {
    {1, "tmux: terminal multiplexer",
     "tmux lets you switch between programs in one terminal, detach them and reattach them.",
     "{\"package\":\"tmux\",\"section\":\"admin\"}"},
    {2, "screen: terminal multiplexer with VT100/ANSI terminal emulation",
     "GNU Screen multiplexes a physical terminal between several processes.",
     "{\"package\":\"screen\",\"section\":\"misc\"}"},
    {3, "ripgrep: recursively searches directories for a regex pattern",
     "ripgrep is a line-oriented search tool; it respects gitignore rules and skips hidden "
     "files. Works near the speed of light.",
     "{\"package\":\"ripgrep\",\"section\":\"utils\",\"stars\":5,\"fast\":true}"},
    {4, "nginx: small, powerful, scalable web/proxy server",
     "Nginx is a web server with a strong focus on high concurrency. A terminal is not needed.",
     "{\"package\":\"nginx\",\"section\":\"httpd\"}"},
};

static int search(cairn_lex *lx, const char *q, uint64_t *ids, int k)
{
    float sc[16];
    int n = -1;
    cairn_error err = {0};
    int rc = cairn_lex_search(lx, q, strlen(q), NULL, 0, k, ids, sc, &n, &err);
    if (rc) fail_msg("search '%s': %s", q, err.msg);
    for (int i = 1; i < n; i++) assert_true(sc[i - 1] >= sc[i]); /* best first */
    return n;
}

static void test_query_quotes_every_word(void **state)
{
    (void)state;
    char out[512];
    assert_int_equal(cairn_lex_query("Which terminal multiplexer?", 27, out, sizeof out), 2);
    assert_string_equal(out, "\"terminal\" OR \"multiplexer\"");
    /* FTS5 operators and syntax characters are words or separators, never syntax */
    const char *q = "\"unbalanced (NEAR(a b, 2) foo* -bar ^baz col:x AND OR NOT {x} +y";
    int n = cairn_lex_query(q, strlen(q), out, sizeof out);
    assert_true(n > 0);
    assert_string_equal(out, "\"unbalanced\" OR \"near\" OR \"b\" OR \"2\" OR \"foo\" OR "
                             "\"bar\" OR "
                             "\"baz\" OR \"col\" OR \"x\" OR \"y\"");
    /* only stop words: they are searched for after all */
    assert_int_equal(cairn_lex_query("what is it", 10, out, sizeof out), 3);
    assert_string_equal(out, "\"what\" OR \"is\" OR \"it\"");
    /* nothing searchable */
    assert_int_equal(cairn_lex_query("((( ))) \"\" *", 12, out, sizeof out), 0);
    assert_string_equal(out, "");
    assert_int_equal(cairn_lex_query("", 0, out, sizeof out), 0);
    /* repeats dropped, case folded, non-ASCII kept whole, invalid UTF-8 separates */
    const char *mixed = "Vim VIM vim café\xff\xfeok";
    assert_int_equal(cairn_lex_query(mixed, strlen(mixed), out, sizeof out), 3);
    assert_string_equal(out, "\"vim\" OR \"café\" OR \"ok\"");
    /* a buffer too small: the size needed, negated */
    int need = cairn_lex_query("terminal multiplexer", 20, out, 4);
    assert_int_equal(need, -(int)strlen("\"terminal\" OR \"multiplexer\"") - 1);
    /* at most CAIRN_LEX_MAX_TERMS words of at most 64 bytes */
    char many[4096] = "";
    for (int i = 0; i < 100; i++) snprintf(many + strlen(many), 16, "w%d ", i);
    assert_int_equal(cairn_lex_query(many, strlen(many), out, sizeof out), CAIRN_LEX_MAX_TERMS);
    char longw[200];
    memset(longw, 'a', 150);
    longw[150] = '\0';
    assert_int_equal(cairn_lex_query(longw, 150, out, sizeof out), 1);
    assert_int_equal(strlen(out), 64 + 2);
}

static void test_search_ranks_and_weights_titles(void **state)
{
    (void)state;
    cairn_lex *lx = fresh(7);
    cairn_error err = {0};
    assert_int_equal(cairn_lex_add(lx, docs, 4, &err), 0);
    assert_int_equal(cairn_lex_count(lx), 4);
    uint64_t ids[8];
    /* "terminal" is in tmux's and screen's titles and nginx's body: titles win */
    int n = search(lx, "terminal", ids, 8);
    assert_int_equal(n, 3);
    assert_true(ids[0] == 1 || ids[0] == 2);
    assert_true(ids[1] == 1 || ids[1] == 2);
    assert_int_equal(ids[2], 4);
    /* Porter stemming on both sides: "searching" finds "searches" */
    n = search(lx, "searching directories", ids, 8);
    assert_true(n >= 1);
    assert_int_equal(ids[0], 3);
    /* words absent from every passage: nothing, no error */
    assert_int_equal(search(lx, "zzzqqq", ids, 8), 0);
    /* k bounds the answer */
    assert_int_equal(search(lx, "terminal", ids, 1), 1);
    float sc[4];
    assert_int_equal(cairn_lex_search(lx, "x", 1, NULL, 0, 0, ids, sc, &n, &err), CAIRN_ERANGE);
    cairn_lex_close(lx);
}

/* A word most passages hold is looked for in titles only; the rarest word always everywhere. */
static void test_common_words_match_titles(void **state)
{
    (void)state;
    cairn_lex_close(fresh(7)); /* an empty database, reopened below with other params */
    cairn_lex *lx = NULL;
    cairn_error err = {0};
    cairn_lex_params p = cairn_lex_default_params();
    p.common_df = 0.5; /* of 4 passages: "terminal" (3) is common, "ripgrep" (1) is not */
    assert_int_equal(cairn_lex_open(&lx, dbpath, 7, &p, &err), 0);
    assert_int_equal(cairn_lex_add(lx, docs, 4, &err), 0);
    uint64_t ids[8];
    int n = search(lx, "terminal ripgrep", ids, 8);
    assert_int_equal(n, 3);
    for (int i = 0; i < n; i++) assert_true(ids[i] != 4); /* nginx: "terminal" in its body only */
    /* all words common: the rarest still matches bodies */
    n = search(lx, "terminal", ids, 8);
    assert_int_equal(n, 3);
    cairn_lex_close(lx);
    p.common_df = 0;
    assert_int_equal(cairn_lex_open(&lx, dbpath, 7, &p, &err), CAIRN_EINVAL);
}

/* Every FTS5 syntax character and keyword in a query is text: no error, no other meaning. */
static void test_fts5_syntax_is_text(void **state)
{
    (void)state;
    cairn_lex *lx = fresh(7);
    cairn_error err = {0};
    assert_int_equal(cairn_lex_add(lx, docs, 4, &err), 0);
    static const char *const hostile[] = {
        "\"tmux",          "tmux\"",          "NEAR(tmux screen",  "NEAR(tmux screen, 1)",
        "tmux*",           "-tmux",           "tmux -screen",      "(tmux",
        "tmux)",           "((tmux) OR",      "tmux AND",          "OR tmux",
        "NOT tmux",        "tmux NOT screen", "title:tmux",        "{title body}: tmux",
        "^tmux",           "tmux + screen",   "'; DROP TABLE lex; --", "tmux\" OR \"nginx",
        "*",               "\"",              "(",                 "AND OR NOT NEAR",
    };
    uint64_t ids[8];
    for (size_t i = 0; i < sizeof hostile / sizeof hostile[0]; i++) {
        float sc[8];
        int n = -1;
        int rc = cairn_lex_search(lx, hostile[i], strlen(hostile[i]), NULL, 0, 8, ids, sc, &n,
                                  &err);
        if (rc) fail_msg("'%s' failed: %s", hostile[i], err.msg);
        if (strstr(hostile[i], "tmux")) {
            /* the word tmux is searched for: its passage comes back */
            bool found = false;
            for (int j = 0; j < n; j++) found |= ids[j] == 1;
            if (!found) fail_msg("'%s' did not find the tmux passage", hostile[i]);
        }
    }
    /* "-screen" does not exclude screen, and "NOT" does not negate: both are found */
    int n = search(lx, "tmux NOT screen", ids, 8);
    bool screen = false;
    for (int j = 0; j < n; j++) screen |= ids[j] == 2;
    assert_true(screen);
    /* "near" is a word that passage 3 contains, not an operator */
    n = search(lx, "NEAR", ids, 8);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 3);
    /* the table survived the would-be injection */
    assert_int_equal(cairn_lex_count(lx), 4);
    cairn_lex_close(lx);
}

static void test_filters_in_the_query(void **state)
{
    (void)state;
    cairn_lex *lx = fresh(7);
    cairn_error err = {0};
    assert_int_equal(cairn_lex_add(lx, docs, 4, &err), 0);
    uint64_t ids[8];
    float sc[8];
    int n = 0;
    cairn_lex_filter f1[] = {{"section", "misc"}};
    assert_int_equal(cairn_lex_search(lx, "terminal", 8, f1, 1, 8, ids, sc, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 2);
    /* numbers and booleans compare as JSON writes them; every filter must hold */
    cairn_lex_filter f2[] = {{"stars", "5"}, {"fast", "true"}};
    assert_int_equal(cairn_lex_search(lx, "search", 6, f2, 2, 8, ids, sc, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 3);
    cairn_lex_filter f3[] = {{"stars", "5"}, {"fast", "false"}};
    assert_int_equal(cairn_lex_search(lx, "search", 6, f3, 2, 8, ids, sc, &n, &err), 0);
    assert_int_equal(n, 0);
    /* filter values are bound, not spliced */
    cairn_lex_filter f4[] = {{"section' OR '1'='1", "x' OR '1'='1"}};
    assert_int_equal(cairn_lex_search(lx, "terminal", 8, f4, 1, 8, ids, sc, &n, &err), 0);
    assert_int_equal(n, 0);
    cairn_lex_filter many[CAIRN_LEX_MAX_FILTERS + 1];
    for (int i = 0; i <= CAIRN_LEX_MAX_FILTERS; i++) many[i] = (cairn_lex_filter){"a", "b"};
    assert_int_equal(cairn_lex_search(lx, "terminal", 8, many, CAIRN_LEX_MAX_FILTERS + 1, 8, ids,
                                      sc, &n, &err),
                     CAIRN_ERANGE);
    /* metadata that is not JSON is refused and nothing of the batch is added */
    cairn_lex_doc bad[] = {{10, "t", "good body", "{}"}, {11, "t", "body", "not json"}};
    assert_int_equal(cairn_lex_add(lx, bad, 2, &err), CAIRN_EFORMAT);
    assert_non_null(strstr(err.msg, "passage 11"));
    assert_int_equal(cairn_lex_count(lx), 4);
    cairn_lex_close(lx);
}

static void test_delete_persist_and_uid(void **state)
{
    (void)state;
    cairn_lex *lx = fresh(7);
    cairn_error err = {0};
    assert_int_equal(cairn_lex_add(lx, docs, 4, &err), 0);
    uint64_t del[] = {2, 99};
    assert_int_equal(cairn_lex_delete(lx, del, 2, &err), 0);
    uint64_t ids[8];
    int n = search(lx, "terminal multiplexer", ids, 8);
    for (int i = 0; i < n; i++) assert_true(ids[i] != 2);
    /* a deleted passage's metadata goes too */
    float sc[8];
    cairn_lex_filter f[] = {{"section", "misc"}};
    assert_int_equal(cairn_lex_search(lx, "terminal", 8, f, 1, 8, ids, sc, &n, &err), 0);
    assert_int_equal(n, 0);
    /* re-adding an id replaces it */
    cairn_lex_doc again = {1, "htop: interactive process viewer", "Shows processes.", "{}"};
    assert_int_equal(cairn_lex_add(lx, &again, 1, &err), 0);
    assert_int_equal(search(lx, "tmux", ids, 8), 0);
    assert_int_equal(search(lx, "htop", ids, 8), 1);
    cairn_lex_close(lx);

    /* reopened for the same store: all there */
    assert_int_equal(cairn_lex_open(&lx, dbpath, 7, NULL, &err), 0);
    assert_int_equal(cairn_lex_count(lx), 3);
    uint64_t *all = NULL;
    size_t na = 0;
    assert_int_equal(cairn_lex_ids(lx, &all, &na, &err), 0);
    assert_int_equal(na, 3);
    assert_int_equal(all[0], 1);
    assert_int_equal(all[1], 3);
    assert_int_equal(all[2], 4);
    free(all);
    cairn_lex_close(lx);
    /* opened for another store: emptied */
    assert_int_equal(cairn_lex_open(&lx, dbpath, 8, NULL, &err), 0);
    assert_int_equal(cairn_lex_count(lx), 0);
    cairn_lex_close(lx);
    /* bad weights and unusable paths are clear errors */
    cairn_lex_params p = cairn_lex_default_params();
    p.w_title = 0;
    assert_int_equal(cairn_lex_open(&lx, dbpath, 8, &p, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_lex_open(&lx, "/nonexistent-dir/x/lexical.db", 8, NULL, &err),
                     CAIRN_EIO);
    assert_null(lx);
}

static void test_fuse(void **state)
{
    (void)state;
    cairn_fuse_params p = {.w_dense = 1, .w_lex = 1, .k_rank = 10, .depth = 10};
    const uint64_t dense[] = {10, 11, 12};
    const uint64_t lex[] = {12, 13, 10};
    cairn_fused out[8];
    int n = cairn_fuse(dense, NULL, 3, lex, NULL, NULL, 3, &p, out, 8);
    assert_int_equal(n, 4);
    /* 10: 1/11 + 1/13; 12: 1/13 + 1/11 -> tie, broken by the better single rank, then id */
    assert_int_equal(out[0].id, 10);
    assert_int_equal(out[1].id, 12);
    assert_int_equal(out[0].from, CAIRN_FUSE_DENSE | CAIRN_FUSE_LEXICAL);
    assert_int_equal(out[0].dense_rank, 1);
    assert_int_equal(out[0].lex_rank, 3);
    assert_int_equal(out[2].id, 11);
    assert_int_equal(out[2].from, CAIRN_FUSE_DENSE);
    assert_int_equal(out[3].id, 13);
    assert_int_equal(out[3].from, CAIRN_FUSE_LEXICAL);
    assert_string_equal(cairn_fuse_from_name(out[3].from), "lexical");
    assert_string_equal(cairn_fuse_from_name(out[0].from), "both");
    /* the weights decide between single-list passages */
    p.w_lex = 2;
    n = cairn_fuse(dense, NULL, 3, lex, NULL, NULL, 3, &p, out, 2);
    assert_int_equal(n, 2);
    assert_int_equal(out[0].id, 12);
    /* depth cuts each list */
    p.depth = 1;
    n = cairn_fuse(dense, NULL, 3, lex, NULL, NULL, 3, &p, out, 8);
    assert_int_equal(n, 2);
    /* empty lists */
    assert_int_equal(cairn_fuse(NULL, NULL, 0, NULL, NULL, NULL, 0, &p, out, 8), 0);
    /* convex: min-max normalised scores; a list's best counts 1, its worst 0 */
    const float dsc[] = {0.9f, 0.5f, 0.1f}, lsc[] = {20.0f, 15.0f, 10.0f};
    p = (cairn_fuse_params){.method = CAIRN_FUSE_CONVEX, .w_dense = 1, .w_lex = 1, .depth = 10};
    n = cairn_fuse(dense, dsc, 3, lex, lsc, NULL, 3, &p, out, 8);
    assert_int_equal(n, 4);
    /* 10: 1 + 0; 12: 0 + 1; 11: 0.5; 13: 0.5 -> 10 and 12 tie (rank 1 each, smaller id first) */
    assert_int_equal(out[0].id, 10);
    assert_int_equal(out[1].id, 12);
    assert_true(out[0].score > 0.99f && out[0].score < 1.01f);
    assert_true(out[2].score > 0.49f && out[2].score < 0.51f);
    /* a far better dense first passage outweighs lexical ranks, which rrf cannot see */
    const float dsc2[] = {0.9f, 0.2f, 0.1f};
    p.w_lex = 1.5;
    n = cairn_fuse(dense, dsc2, 3, lex, lsc, NULL, 3, &p, out, 8);
    assert_int_equal(out[0].id, 12); /* 0 + 1.5 */
    p.w_dense = 2;
    n = cairn_fuse(dense, dsc2, 3, lex, lsc, NULL, 3, &p, out, 8);
    assert_int_equal(out[0].id, 10); /* 2 + 0 */
    assert_string_equal(cairn_fuse_method_name(CAIRN_FUSE_CONVEX), "convex");

    /* fill: a passage only the lexical list found scores its own dense similarity, and the
     * dense range takes it in; lexical scores scaled by their maximum */
    const uint64_t ld[] = {13, 10};
    const float lsc3[] = {20.0f, 10.0f}, ldense[] = {0.95f, 0.0f /* 10: the dense list's */};
    p = (cairn_fuse_params){.method = CAIRN_FUSE_CONVEX, .w_dense = 1, .w_lex = 1, .depth = 10,
                            .lex_norm = CAIRN_FUSE_NORM_MAX, .fill = true};
    n = cairn_fuse(dense, dsc, 3, ld, lsc3, ldense, 2, &p, out, 8);
    assert_int_equal(n, 4);
    /* 13: (0.95-0.1)/0.85 + 20/20 = 2; 10: 0.8/0.85 + 10/20; 11: 0.4/0.85 + 0 (the lexical
     * list held every match: no floor); 12: 0 */
    assert_int_equal(out[0].id, 13);
    assert_true(out[0].score > 1.99f && out[0].score < 2.01f);
    assert_int_equal(out[0].from, CAIRN_FUSE_LEXICAL); /* still found by the lexical list only */
    assert_int_equal(out[0].dense_rank, 0);
    assert_int_equal(out[1].id, 10);
    assert_true(out[1].score > 1.43f && out[1].score < 1.45f);
    assert_int_equal(out[2].id, 11);
    assert_true(out[2].score > 0.46f && out[2].score < 0.48f);
    assert_int_equal(out[3].id, 12);
    /* without fill 13 counts 0 on the dense side: 10 (1 + 0.5) leads it (1) */
    p.fill = false;
    n = cairn_fuse(dense, dsc, 3, ld, lsc3, ldense, 2, &p, out, 8);
    assert_int_equal(out[0].id, 10);
    assert_int_equal(out[1].id, 13);
    /* an unknown similarity (NaN: no stored vector) counts 0, as without fill */
    const float lnan[] = {NAN, 0.0f};
    p.fill = true;
    n = cairn_fuse(dense, dsc, 3, ld, lsc3, lnan, 2, &p, out, 8);
    assert_int_equal(out[0].id, 10);
    assert_true(out[1].id == 13 && out[1].score > 0.99f && out[1].score < 1.01f);
    /* a lexical list cut at depth: a passage it lacks scores its floor, 10/20 here */
    p.depth = 2;
    n = cairn_fuse(dense, dsc, 3, ld, lsc3, ldense, 2, &p, out, 8);
    assert_int_equal(n, 3); /* 13, 10, 11 */
    assert_int_equal(out[2].id, 11);
    /* dense range 0.5..0.95: 11 at 0, plus the floor 0.5 */
    assert_true(out[2].score > 0.49f && out[2].score < 0.51f);
    assert_string_equal(cairn_fuse_norm_name(CAIRN_FUSE_NORM_MAX), "max");
    assert_string_equal(cairn_fuse_norm_name(CAIRN_FUSE_NORM_MINMAX), "minmax");
    /* a NaN dense score (a bad query embedding) counts 0 on the dense side: no NaN comes out,
     * and the others' range is taken without it */
    const float dnan[] = {NAN, 0.5f, 0.1f};
    p.depth = 10;
    n = cairn_fuse(dense, dnan, 3, ld, lsc3, ldense, 2, &p, out, 8);
    assert_int_equal(n, 4);
    for (int i = 0; i < n; i++) assert_false(isnan(out[i].score));
    /* 13: 1 + 1; 10: 0 + 10/20; 11: 0.4/0.85; 12: 0 */
    assert_int_equal(out[0].id, 13);
    assert_int_equal(out[1].id, 10);
    assert_true(out[1].score > 0.49f && out[1].score < 0.51f);
    assert_int_equal(out[1].dense_rank, 1); /* still the dense list's first */
    assert_int_equal(out[2].id, 11);
    assert_int_equal(out[3].id, 12);
    const float dall[] = {NAN, NAN, NAN}, lall[] = {NAN, NAN};
    n = cairn_fuse(dense, dall, 3, ld, lsc3, lall, 2, &p, out, 8);
    assert_int_equal(n, 4);
    for (int i = 0; i < n; i++) assert_false(isnan(out[i].score));
    assert_int_equal(out[0].id, 13); /* the lexical list alone decides */
    assert_int_equal(out[1].id, 10);
    cairn_search_mode m;
    cairn_error err = {0};
    assert_int_equal(cairn_search_mode_parse("lexical", &m, &err), 0);
    assert_int_equal(m, CAIRN_SEARCH_LEXICAL);
    assert_int_equal(cairn_search_mode_parse("bm25", &m, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "hybrid, dense, lexical"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_quotes_every_word),
        cmocka_unit_test(test_search_ranks_and_weights_titles),
        cmocka_unit_test(test_common_words_match_titles),
        cmocka_unit_test(test_fts5_syntax_is_text),
        cmocka_unit_test(test_filters_in_the_query),
        cmocka_unit_test(test_delete_persist_and_uid),
        cmocka_unit_test(test_fuse),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
