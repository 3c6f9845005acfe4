/* tests/unit/test_rag.c — the served passage index (services/rag.h) with both of its indexes:
 * the lexical index holds exactly the IVF's passage ids after adds, deletes and reopening (and
 * is rebuilt when its file is lost); the three search modes and their metadata filters; the
 * answer's prompt (chat template, plain fallback, truncation to the context). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "generation/tokenizer.h"
#include "proto/gguf.h"
#include "retrieval/index.h"
#include "retrieval/tier.h"
#include "services/rag.h"

static char tmpdir[64];
static cairn_embed *embedder;

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/cairn-test-rag-XXXXXX");
    if (!mkdtemp(tmpdir)) return -1;
    const char *dir = getenv("CAIRN_TEST_MODELS");
    char path[512];
    snprintf(path, sizeof path, "%s/all-minilm-l6-v2.gguf", dir ? dir : "data/models");
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "the embedding model is missing: %s (scripts/setup)\n", path);
        return -1;
    }
    cairn_embed_params p = cairn_embed_default_params();
    p.n_threads = 2;
    cairn_error err = {0};
    if (cairn_embed_open(&embedder, path, &p, &err)) {
        fprintf(stderr, "cairn_embed_open: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    cairn_embed_close(embedder);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static cairn_rag *open_rag(void)
{
    cairn_rag_params p = cairn_rag_default_params();
    p.dir = tmpdir;
    p.embed = embedder;
    p.fast_bytes = 1u << 20;
    cairn_rag *r = NULL;
    cairn_error err = {0};
    if (cairn_rag_open(&r, &p, NULL, &err)) fail_msg("cairn_rag_open: %s", err.msg);
    return r;
}

/* The IVF and the lexical index hold the same ids, and as many as the store has live. */
static void assert_indexes_agree(cairn_rag *r, size_t want)
{
    uint64_t *d = NULL, *l = NULL;
    size_t nd = 0, nl = 0;
    cairn_error err = {0};
    assert_int_equal(cairn_rag_index_ids(r, &d, &nd, &l, &nl, &err), 0);
    assert_int_equal(nd, want);
    assert_int_equal(nl, want);
    assert_int_equal(cairn_rag_count(r), want);
    for (size_t i = 0; i < nd; i++)
        if (d[i] != l[i]) fail_msg("id %zu: IVF %llu, lexical %llu", i, (unsigned long long)d[i],
                                   (unsigned long long)l[i]);
    free(d);
    free(l);
}

static const char *const texts[] = {
    "tmux is a terminal multiplexer: detach a session and reattach it later.",
    "ripgrep searches directories recursively for a regular expression.",
    "nginx is a small, fast web server and reverse proxy.",
    "PostgreSQL is an object-relational SQL database server.",
    "ffmpeg converts audio and video between formats.",
    "git is a distributed version control system.",
    "htop shows running processes interactively.",
    "rsync copies files quickly over the network, sending only differences.",
};

static int run(cairn_rag *r, cairn_search_mode mode, const char *text, const char *fk,
               const char *fv, cairn_rag_hit *hits)
{
    float q[512];
    cairn_error err = {0};
    assert_true(cairn_rag_dim(r) <= 512);
    assert_int_equal(cairn_rag_embed(r, text, q, &err), 0);
    cairn_lex_filter f = {fk, fv};
    cairn_rag_query rq = {.mode = mode, .text = text, .q = q, .k = 4, .filters = &f,
                          .n_filters = fk ? 1 : 0};
    int n = -1;
    if (cairn_rag_query_run(r, &rq, hits, &n, NULL, &err)) fail_msg("search: %s", err.msg);
    return n;
}

static void test_indexes_agree_after_adds_and_deletes(void **state)
{
    (void)state;
    cairn_rag *r = open_rag();
    assert_indexes_agree(r, 0);
    cairn_api_doc docs[8];
    char meta[8][64];
    for (int i = 0; i < 8; i++) {
        snprintf(meta[i], sizeof meta[i], "{\"n\":%d,\"half\":\"%s\"}", i, i < 4 ? "a" : "b");
        docs[i] = (cairn_api_doc){.text = texts[i], .text_len = strlen(texts[i]),
                                  .metadata_json = meta[i]};
    }
    uint64_t first = 0;
    cairn_error err = {0};
    assert_int_equal(cairn_rag_add(r, docs, 5, &first, &err), 0);
    assert_indexes_agree(r, 5);
    assert_int_equal(cairn_rag_add(r, docs + 5, 3, NULL, &err), 0);
    assert_indexes_agree(r, 8);
    assert_int_equal(cairn_rag_delete(r, first + 1, &err), 0);
    assert_int_equal(cairn_rag_delete(r, first + 6, &err), 0);
    assert_indexes_agree(r, 6);
    assert_int_equal(cairn_rag_delete(r, first + 6, &err), CAIRN_ENOTFOUND);
    assert_indexes_agree(r, 6);
    /* a deleted passage is found by neither list */
    cairn_rag_hit hits[4];
    for (int m = 0; m < 3; m++) {
        int n = run(r, (cairn_search_mode)m, "ripgrep regular expression search", NULL, NULL,
                    hits);
        for (int i = 0; i < n; i++) assert_true(hits[i].id != first + 1);
        cairn_rag_hits_free(hits, n);
    }
    cairn_rag_close(r);

    /* reopened: both indexes as they were */
    r = open_rag();
    assert_indexes_agree(r, 6);
    cairn_rag_close(r);
    /* the lexical file lost: rebuilt from the store at open */
    char p[160];
    snprintf(p, sizeof p, "%s/lexical.db", tmpdir);
    assert_int_equal(unlink(p), 0);
    snprintf(p, sizeof p, "%s/lexical.db-wal", tmpdir);
    unlink(p);
    snprintf(p, sizeof p, "%s/lexical.db-shm", tmpdir);
    unlink(p);
    r = open_rag();
    assert_indexes_agree(r, 6);
    cairn_rag_close(r);
}

static void test_modes_and_filters(void **state)
{
    (void)state;
    cairn_rag *r = open_rag(); /* the 6 passages of the test before */
    cairn_rag_hit hits[4];
    /* lexical: the passage naming the program first, found by the lexical list */
    int n = run(r, CAIRN_SEARCH_LEXICAL, "tmux", NULL, NULL, hits);
    assert_int_equal(n, 1);
    assert_non_null(strstr(hits[0].text, "tmux"));
    assert_int_equal(hits[0].from, CAIRN_FUSE_LEXICAL);
    assert_int_equal(hits[0].lex_rank, 1);
    assert_int_equal(hits[0].dense_rank, 0);
    cairn_rag_hits_free(hits, n);
    /* dense: k passages, all from the dense list */
    n = run(r, CAIRN_SEARCH_DENSE, "tmux", NULL, NULL, hits);
    assert_int_equal(n, 4);
    for (int i = 0; i < n; i++) assert_int_equal(hits[i].from, CAIRN_FUSE_DENSE);
    cairn_rag_hits_free(hits, n);
    /* hybrid: the passage both lists found is first and says so */
    n = run(r, CAIRN_SEARCH_HYBRID, "tmux terminal multiplexer", NULL, NULL, hits);
    assert_int_equal(n, 4);
    assert_non_null(strstr(hits[0].text, "tmux"));
    assert_int_equal(hits[0].from, CAIRN_FUSE_DENSE | CAIRN_FUSE_LEXICAL);
    cairn_rag_hits_free(hits, n);
    /* a filter holds in every mode */
    for (int m = 0; m < 3; m++) {
        n = run(r, (cairn_search_mode)m, "files network version control", "half", "b", hits);
        assert_true(n >= 1);
        for (int i = 0; i < n; i++) assert_non_null(strstr(hits[i].meta, "\"half\":\"b\""));
        cairn_rag_hits_free(hits, n);
        n = run(r, (cairn_search_mode)m, "web server", "n", "2", hits);
        assert_int_equal(n, 1);
        assert_non_null(strstr(hits[0].text, "nginx"));
        cairn_rag_hits_free(hits, n);
    }
    /* a passage's dense similarity from its stored vector: the dense list's own score for
     * the passages it returns; NaN for an id without a vector (deleted, or never stored) */
    float q[512], sims[4];
    cairn_error e2 = {0};
    assert_int_equal(cairn_rag_embed(r, "tmux", q, &e2), 0);
    n = run(r, CAIRN_SEARCH_DENSE, "tmux", NULL, NULL, hits);
    assert_true(n >= 2);
    uint64_t ids[4] = {hits[1].id, hits[0].id, 1u << 30, hits[1].id /* again */};
    assert_int_equal(cairn_rag_dense_scores(r, q, ids, 4, sims, &e2), 0);
    assert_true(fabsf(sims[0] - hits[1].score) < 1e-5f);
    assert_true(fabsf(sims[1] - hits[0].score) < 1e-5f);
    assert_true(isnan(sims[2]));
    assert_true(sims[3] == sims[0]); /* a repeated id has its vector too */
    cairn_rag_hits_free(hits, n);
    assert_int_equal(cairn_rag_dense_scores(r, q, ids, CAIRN_TIER_MAX_K + 1, sims, &e2),
                     CAIRN_ERANGE);
    /* a mode without what it needs is refused */
    cairn_rag_query rq = {.mode = CAIRN_SEARCH_HYBRID, .text = "x", .q = NULL, .k = 4};
    cairn_error err = {0};
    assert_int_equal(cairn_rag_query_run(r, &rq, hits, &n, NULL, &err), CAIRN_EINVAL);
    rq.k = 0;
    assert_int_equal(cairn_rag_query_run(r, &rq, hits, &n, NULL, &err), CAIRN_ERANGE);
    cairn_rag_close(r);
}

/* A passage is embedded with its title: a dense search for what only the title says finds it.
 * An index whose embed.format is missing or stale (embedded another way) is embedded again at
 * open, and its searches then agree with the ones before. */
static void test_title_is_embedded_and_format_checked(void **state)
{
    (void)state;
    cairn_rag *r = open_rag();
    cairn_api_doc doc = {.text = "Detach a session and reattach it later from another login.",
                         .title = "tmux: terminal multiplexer", .key = "title-test"};
    uint64_t id = 0;
    cairn_error err = {0};
    assert_int_equal(cairn_rag_add(r, &doc, 1, &id, &err), 0);
    cairn_rag_hit hits[4], again[4];
    int n = run(r, CAIRN_SEARCH_DENSE, "terminal multiplexer", NULL, NULL, hits);
    assert_true(n >= 1);
    assert_int_equal(hits[0].id, id); /* only its title says "terminal multiplexer" */
    cairn_rag_close(r);
    char path[128];
    snprintf(path, sizeof path, "%s/embed.format", tmpdir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("passage text: text\n", f); /* as an older build would have embedded it */
    fclose(f);
    r = open_rag();
    f = fopen(path, "r");
    char line[128] = {0};
    assert_non_null(fgets(line, sizeof line, f));
    fclose(f);
    assert_string_equal(line, CAIRN_INDEX_EMBED_FORMAT "\n");
    int m = run(r, CAIRN_SEARCH_DENSE, "terminal multiplexer", NULL, NULL, again);
    assert_int_equal(m, n);
    for (int i = 0; i < n; i++) assert_int_equal(again[i].id, hits[i].id);
    cairn_rag_hits_free(hits, n);
    cairn_rag_hits_free(again, m);
    assert_int_equal(cairn_rag_delete(r, id, &err), 0);
    cairn_rag_close(r);
}

/* ---- The answer's prompt ---------------------------------------------------------------- */

static cairn_rag_hit prompt_hit(const char *title, const char *key, const char *text)
{
    return (cairn_rag_hit){.title = (char *)title, .key = (char *)key, .text = (char *)text};
}

static int count_substr(const char *s, const char *sub)
{
    int n = 0;
    for (const char *p = strstr(s, sub); p; p = strstr(p + 1, sub)) n++;
    return n;
}

/* With a chat template: the system prompt in the system turn (the template's own default
 * system turn is replaced), the passages numbered with their titles (the key where there is
 * none) in the user's turn, then the question; a chat's own system message follows ours and
 * its earlier turns are kept. Without a template: the same as plain text ending in Answer:. */
static void test_answer_prompt_template_and_plain(void **state)
{
    (void)state;
    cairn_rag_hit hits[2] = {
        prompt_hit("tmux: terminal multiplexer", "tmux", "tmux lets you detach sessions."),
        prompt_hit("", "notes.md#0", "Screen is older."),
    };
    cairn_chat_template chatml = {.family = CAIRN_CHAT_CHATML};
    snprintf(chatml.default_system, sizeof chatml.default_system, "You are SmolLM.");
    cairn_rag_prompt_params pp = {.tmpl = &chatml};
    cairn_rag_prompt pr;
    cairn_error err = {0};
    assert_int_equal(cairn_rag_prompt_build("Which multiplexer detaches?", NULL, 0, hits, 2, &pp,
                                            &pr, &err), 0);
    char want[2048];
    snprintf(want, sizeof want, "<|im_start|>system\n%s<|im_end|>\n<|im_start|>user\nPassages:",
             cairn_rag_default_system);
    assert_true(!strncmp(pr.text, want, strlen(want)));
    assert_non_null(strstr(pr.text, "[1] tmux: terminal multiplexer\ntmux lets you detach"));
    assert_non_null(strstr(pr.text, "[2] notes.md#0\nScreen is older."));
    assert_non_null(strstr(pr.text, "Question: Which multiplexer detaches?<|im_end|>\n"
                                    "<|im_start|>assistant\n"));
    assert_null(strstr(pr.text, "SmolLM"));
    assert_non_null(strstr(cairn_rag_default_system, "package"));
    assert_int_equal(pr.tok_flags, CAIRN_TOK_ADD_SPECIAL | CAIRN_TOK_PARSE_SPECIAL);
    assert_int_equal(pr.n_passages, 2);
    assert_int_equal(pr.n_truncated, 0);
    assert_int_equal(pr.n_msgs, 2);
    assert_null(pr.answer_prefix);
    assert_string_equal(pr.msgs[0].role, "system");
    assert_string_equal(pr.msgs[1].role, "user");
    assert_int_equal(strlen(pr.text), pr.len);
    cairn_rag_prompt_free(&pr);

    /* a chat: its system message after ours, the earlier turns kept, the last user turn asks */
    cairn_chat_msg chat[] = {{"system", "Be terse."},
                             {"user", "Hi"},
                             {"assistant", "Hello."},
                             {"user", "Which multiplexer detaches?"}};
    assert_int_equal(cairn_rag_prompt_build(NULL, chat, 4, hits, 1, &pp, &pr, &err), 0);
    assert_int_equal(pr.n_msgs, 4);
    snprintf(want, sizeof want, "%s\n\nBe terse.", cairn_rag_default_system);
    assert_string_equal(pr.msgs[0].content, want);
    assert_string_equal(pr.msgs[1].content, "Hi");
    assert_non_null(strstr(pr.msgs[3].content, "[1] tmux"));
    assert_null(strstr(pr.msgs[3].content, "[2]"));
    assert_int_equal(count_substr(pr.text, "<|im_start|>user"), 2);
    cairn_rag_prompt_free(&pr);

    /* an answer prefix: the assistant's turn opens with it, for the model to go on from */
    pp.answer_prefix = "The package is";
    assert_int_equal(cairn_rag_prompt_build("Which multiplexer detaches?", NULL, 0, hits, 2, &pp,
                                            &pr, &err), 0);
    const char *tail = "<|im_start|>assistant\nThe package is";
    assert_int_equal(pr.len, strlen(pr.text));
    assert_string_equal(pr.text + pr.len - strlen(tail), tail);
    assert_string_equal(pr.answer_prefix, "The package is"); /* the answer begins with it */
    cairn_rag_prompt_free(&pr);
    pp.answer_prefix = NULL;

    /* what cairnd sends: a worked example as two earlier turns (its made-up answer in the form
     * the system prompt asks for), and the passages best last, next to the question, still
     * numbered by rank */
    pp.example = true;
    pp.best_last = true;
    assert_int_equal(cairn_rag_prompt_build("Which multiplexer detaches?", NULL, 0, hits, 2, &pp,
                                            &pr, &err), 0);
    assert_int_equal(pr.n_msgs, 4);
    assert_string_equal(pr.msgs[1].role, "user");
    assert_string_equal(pr.msgs[2].role, "assistant");
    assert_string_equal(pr.msgs[3].role, "user");
    assert_non_null(strstr(pr.msgs[1].content, "Passages:\n\n[2] "));
    assert_true(!strncmp(pr.msgs[2].content, "Use ", 4));
    assert_non_null(strstr(pr.msgs[2].content, "[1]"));
    const char *p2 = strstr(pr.msgs[3].content, "[2] notes.md#0"),
               *p1 = strstr(pr.msgs[3].content, "[1] tmux: terminal multiplexer"),
               *pq = strstr(pr.msgs[3].content, "Question: Which multiplexer detaches?");
    assert_true(p2 && p1 && pq && p2 < p1 && p1 < pq);
    assert_int_equal(count_substr(pr.text, "<|im_start|>user"), 2);
    assert_int_equal(count_substr(pr.text, "<|im_start|>assistant"), 2); /* the example's, ours */
    assert_int_equal(pr.n_passages, 2);
    cairn_rag_prompt_free(&pr);

    /* the opening "Use", only with a passage when asked so: with none it would push the model
     * to name a package it was not shown; an opening the caller asked for stays */
    pp.answer_prefix = "Use";
    for (int only_with = 0; only_with < 2; only_with++) {
        pp.prefix_with_passages = only_with;
        assert_int_equal(cairn_rag_prompt_build("Which multiplexer detaches?", NULL, 0, hits, 0,
                                                &pp, &pr, &err), 0);
        size_t len = strlen(pr.text);
        bool ends_use = len >= 3 && !strcmp(pr.text + len - 3, "Use");
        assert_int_equal(ends_use, !only_with);
        assert_int_equal(pr.answer_prefix != NULL, !only_with);
        cairn_rag_prompt_free(&pr);
        assert_int_equal(cairn_rag_prompt_build("Which multiplexer detaches?", NULL, 0, hits, 2,
                                                &pp, &pr, &err), 0);
        assert_string_equal(pr.answer_prefix, "Use");
        cairn_rag_prompt_free(&pr);
    }
    pp.answer_prefix = NULL;
    pp.prefix_with_passages = false;
    /* a chat keeps its turns after the example */
    assert_int_equal(cairn_rag_prompt_build(NULL, chat, 4, hits, 1, &pp, &pr, &err), 0);
    assert_int_equal(pr.n_msgs, 6);
    assert_string_equal(pr.msgs[3].content, "Hi");
    assert_non_null(strstr(pr.msgs[5].content, "[1] tmux"));
    cairn_rag_prompt_free(&pr);
    /* plain: the example's text before the passages */
    pp.tmpl = NULL;
    assert_int_equal(cairn_rag_prompt_build("Which multiplexer detaches?", NULL, 0, hits, 2, &pp,
                                            &pr, &err), 0);
    const char *ex = strstr(pr.text, "\nAnswer: Use "), *real = strstr(pr.text, "[2] notes.md#0");
    assert_true(ex && real && ex < real);
    assert_non_null(strstr(pr.text, "Question: Which multiplexer detaches?\nAnswer:"));
    cairn_rag_prompt_free(&pr);
    pp.example = pp.best_last = false;
    pp.tmpl = &chatml;

    /* no template: plain text, the system prompt first, no turn markers */
    pp.tmpl = NULL;
    pp.system = "Answer from the passages.";
    assert_int_equal(cairn_rag_prompt_build("Which multiplexer detaches?", NULL, 0, hits, 2, &pp,
                                            &pr, &err), 0);
    assert_true(!strncmp(pr.text, "Answer from the passages.\n\nPassages:\n\n[1] tmux: ", 48));
    assert_non_null(strstr(pr.text, "\n\nQuestion: Which multiplexer detaches?\nAnswer:"));
    assert_int_equal(pr.len, strlen(pr.text));
    assert_null(strstr(pr.text, "<|im_start|>"));
    assert_int_equal(pr.tok_flags, CAIRN_TOK_ADD_SPECIAL);
    assert_null(pr.msgs);
    cairn_rag_prompt_free(&pr);

    /* no question at all */
    cairn_chat_msg sys_only[] = {{"system", "x"}};
    assert_int_equal(cairn_rag_prompt_build(NULL, sys_only, 1, hits, 1, &pp, &pr, &err),
                     CAIRN_EINVAL);
}

/* With a tokenizer and a budget (SmolLM2's): passages are cut to fit, the prompt stays within
 * the budget and says how many were cut; with less room passages at the end are left out; a
 * question over the budget is refused. */
static void test_answer_prompt_fits_the_budget(void **state)
{
    (void)state;
    const char *dir = getenv("CAIRN_TEST_MODELS");
    char path[512];
    snprintf(path, sizeof path, "%s/smollm2-135m-instruct-q4_1.gguf", dir ? dir : "data/models");
    cairn_gguf *g = NULL;
    cairn_tok *tok = NULL;
    cairn_chat_template t;
    cairn_error err = {0};
    if (cairn_gguf_open(&g, path, &err)) fail_msg("%s (scripts/setup installs the model)", err.msg);
    assert_int_equal(cairn_tok_open(&tok, g, &err), 0);
    assert_int_equal(cairn_chat_template_of(g, NULL, &t, &err), 0);
    char text[3][4000];
    cairn_rag_hit hits[3];
    for (int i = 0; i < 3; i++) {
        text[i][0] = 0;
        for (int w = 0; w < (i == 1 ? 5 : 300); w++) /* the second passage is short */
            strcat(text[i], w % 2 ? "passage " : "words ");
        hits[i] = prompt_hit("pkg: a package", "k", text[i]);
    }
    cairn_rag_prompt_params pp = {.tmpl = &t, .tok = tok, .budget = 10000};
    cairn_rag_prompt pr;
    assert_int_equal(cairn_rag_prompt_build("What?", NULL, 0, hits, 3, &pp, &pr, &err), 0);
    int whole = pr.tokens;
    assert_true(whole > 600);
    assert_int_equal(pr.n_truncated, 0);
    assert_int_equal(count_substr(pr.text, "[...]"), 0);
    cairn_rag_prompt_free(&pr);

    /* each passage capped at 40 tokens first: the two long ones are cut, the short one kept */
    pp.passage_tokens = 40;
    assert_int_equal(cairn_rag_prompt_build("What?", NULL, 0, hits, 3, &pp, &pr, &err), 0);
    assert_int_equal(pr.n_truncated, 2);
    assert_true(pr.tokens < 300);
    assert_int_equal(count_substr(pr.text, "[...]"), 2);
    cairn_rag_prompt_free(&pr);
    pp.passage_tokens = 0;

    pp.budget = 400;
    assert_int_equal(cairn_rag_prompt_build("What?", NULL, 0, hits, 3, &pp, &pr, &err), 0);
    assert_true(pr.tokens <= 400 && pr.tokens > 300);
    assert_int_equal(pr.n_passages, 3);
    assert_int_equal(pr.n_truncated, 2); /* the short one is kept whole */
    assert_int_equal(count_substr(pr.text, "[...]"), 2);
    assert_non_null(
        strstr(pr.text, "[2] pkg: a package\nwords passage words passage words \n\n[3]"));
    int n = cairn_tok_encode(tok, pr.text, pr.len, NULL, 0, pr.tok_flags, &err);
    assert_int_equal(-n, pr.tokens);
    cairn_rag_prompt_free(&pr);

    pp.budget = 0;
    assert_int_equal(cairn_rag_prompt_build("What?", NULL, 0, hits, 0, &pp, &pr, &err),
                     CAIRN_ELIMIT); /* instructions alone exceed a zero budget */
    assert_non_null(strstr(err.msg, "tokens"));
    pp.budget = 10000;
    assert_int_equal(cairn_rag_prompt_build("What?", NULL, 0, hits, 0, &pp, &pr, &err), 0);
    int fixed = pr.tokens;
    cairn_rag_prompt_free(&pr);
    /* room for two passages of 32+ tokens besides their headers (about 10 tokens each), not
     * for three: the third is left out */
    pp.budget = fixed + 110;
    assert_int_equal(cairn_rag_prompt_build("What?", NULL, 0, hits, 3, &pp, &pr, &err), 0);
    assert_int_equal(pr.n_passages, 2);
    assert_true(pr.tokens <= pp.budget);
    assert_null(strstr(pr.text, "[3]"));
    cairn_rag_prompt_free(&pr);
    cairn_tok_close(tok);
    cairn_gguf_close(g);
}

/* Whether s ends with tail. */
static bool ends_with(const char *s, const char *tail)
{
    size_t n = strlen(s), m = strlen(tail);
    return n >= m && !strcmp(s + n - m, tail);
}

/* The pipeline's answer opening: "Use" when the best passage describes a package (the default
 * corpus's metadata), none from other passages, and none when the request (opts) or the server
 * (the ask) turns it off. */
static void test_pipeline_answer_prefix(void **state)
{
    (void)state;
    cairn_rag *r = open_rag();
    const char *text = "zorkview shows zork maps in a window, with zoom and a slideshow.";
    cairn_api_doc doc = {.text = text, .text_len = strlen(text),
                         .title = "zorkview: viewer for zork maps",
                         .metadata_json = "{\"package\":\"zorkview\"}"};
    uint64_t id = 0;
    cairn_error err = {0};
    assert_int_equal(cairn_rag_add(r, &doc, 1, &id, &err), 0);
    cairn_api_rag o = {.enabled = true, .k = 1, .search = CAIRN_SEARCH_HYBRID, .n_filters = 1,
                       .fkey = {"package"}, .fval = {"zorkview"}};
    cairn_rag_ask ask = {.question = "How can I look at zork maps?", .opts = &o, .max_tokens = 16};
    cairn_rag_result res;
    assert_int_equal(cairn_rag_pipeline(r, &ask, &res, &err), 0);
    assert_int_equal(res.n_hits, 1);
    assert_int_equal(res.hits[0].id, id);
    assert_string_equal(res.prompt.answer_prefix, "Use");
    assert_true(ends_with(res.prompt.text, "\nAnswer: Use")); /* no template: plain */
    cairn_rag_result_free(&res);
    o.no_prefix = true; /* the request's answer_prefix: false */
    assert_int_equal(cairn_rag_pipeline(r, &ask, &res, &err), 0);
    assert_null(res.prompt.answer_prefix);
    assert_true(ends_with(res.prompt.text, "\nAnswer:"));
    cairn_rag_result_free(&res);
    o.no_prefix = false;
    ask.no_prefix = true; /* the server's rag.answer_prefix = false */
    assert_int_equal(cairn_rag_pipeline(r, &ask, &res, &err), 0);
    assert_null(res.prompt.answer_prefix);
    cairn_rag_result_free(&res);
    ask.no_prefix = false;
    o.fkey[0] = "n", o.fval[0] = "2"; /* the nginx passage: no package in its metadata */
    assert_int_equal(cairn_rag_pipeline(r, &ask, &res, &err), 0);
    assert_int_equal(res.n_hits, 1);
    assert_null(res.prompt.answer_prefix);
    cairn_rag_result_free(&res);
    assert_int_equal(cairn_rag_delete(r, id, &err), 0);
    cairn_rag_close(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_indexes_agree_after_adds_and_deletes),
        cmocka_unit_test(test_modes_and_filters),
        cmocka_unit_test(test_title_is_embedded_and_format_checked),
        cmocka_unit_test(test_answer_prompt_template_and_plain),
        cmocka_unit_test(test_answer_prompt_fits_the_budget),
        cmocka_unit_test(test_pipeline_answer_prefix),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
