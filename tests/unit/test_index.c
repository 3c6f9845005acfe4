/* tests/unit/test_index.c — index directories: paths, corpus stamps, ingest by corpus kind with
 * WordPiece-sized passages, embedding a store with progress, building the IVF index. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "retrieval/index.h"
#include "synth_vectors.h"

static char tmpdir[64];

static void tmp_path(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", tmpdir, name);
}

static void put_file(const char *name, const char *content)
{
    char p[256];
    tmp_path(p, sizeof p, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fputs(content, f);
    fclose(f);
}

static cairn_docstore *new_store(const char *name)
{
    char p[256];
    tmp_path(p, sizeof p, name);
    unlink(p);
    cairn_docstore *ds = NULL;
    cairn_error err;
    assert_int_equal(cairn_docstore_open(&ds, p, CAIRN_DOCSTORE_CREATE | CAIRN_DOCSTORE_WRITE,
                                         &err), 0);
    return ds;
}

static cairn_embed *open_embedder(void)
{
    const char *dir = getenv("CAIRN_TEST_MODELS");
    char path[512];
    snprintf(path, sizeof path, "%s/all-minilm-l6-v2.gguf", dir ? dir : "data/models");
    if (access(path, R_OK) != 0)
        fail_msg("the embedding model is missing: %s (scripts/setup)", path);
    cairn_embed_params p = cairn_embed_default_params();
    p.n_threads = 2;
    cairn_embed *e = NULL;
    cairn_error err;
    if (cairn_embed_open(&e, path, &p, &err)) fail_msg("cairn_embed_open: %s", err.msg);
    return e;
}

static void test_paths(void **state)
{
    (void)state;
    cairn_index_paths ip;
    cairn_error err;
    assert_int_equal(cairn_index_paths_for(&ip, "/x/idx", &err), 0);
    assert_string_equal(ip.docs, "/x/idx/docs.cds");
    assert_string_equal(ip.ivf, "/x/idx/index.ivf");
    assert_string_equal(ip.tier, "/x/idx/index.tier");
    assert_string_equal(ip.stamp, "/x/idx/corpus.stamp");
    assert_int_equal(cairn_index_paths_for(&ip, NULL, &err), CAIRN_EINVAL);
    assert_int_equal(cairn_index_paths_for(&ip, "", &err), CAIRN_EINVAL);
    char *long_dir = malloc(CAIRN_INDEX_PATH_MAX);
    memset(long_dir, 'a', CAIRN_INDEX_PATH_MAX - 10);
    long_dir[CAIRN_INDEX_PATH_MAX - 10] = '\0';
    assert_int_equal(cairn_index_paths_for(&ip, long_dir, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "too long"));
    free(long_dir);
}

/* Ingesting writes a stamp that says what was ingested; covers() follows from it. */
static void test_ingest_stamp_and_covers(void **state)
{
    (void)state;
    put_file("c.jsonl", "{\"id\": \"a\", \"text\": \"one\"}\n"
                        "{\"id\": \"b\", \"text\": \"two\"}\n"
                        "{\"id\": \"c\", \"text\": \"three\"}\n"
                        "{\"id\": \"d\", \"text\": \"four\"}\n");
    char corpus[256], stamp[256], abs[PATH_MAX], other[256];
    tmp_path(corpus, sizeof corpus, "c.jsonl");
    tmp_path(stamp, sizeof stamp, "c.stamp");
    tmp_path(other, sizeof other, "d.jsonl");
    put_file("d.jsonl", "{\"id\": 1, \"text\": \"x\"}\n");
    assert_non_null(realpath(corpus, abs));
    cairn_error err;
    cairn_index_stamp st;
    assert_int_equal(cairn_index_stamp_read(stamp, &st, &err), CAIRN_ENOTFOUND);

    /* limited to 3 of 4: covers up to 3, not more */
    cairn_docstore *ds = new_store("s1.cds");
    cairn_corpus_stats cs = {0};
    assert_int_equal(cairn_index_ingest(ds, corpus, 3, NULL, stamp, &cs, &err), 0);
    assert_int_equal(cs.passages, 3);
    assert_int_equal(cairn_docstore_live(ds), 3);
    assert_int_equal(cairn_index_stamp_read(stamp, &st, &err), 0);
    assert_string_equal(st.corpus, abs);
    assert_int_equal(st.max_passages, 3);
    assert_int_equal(st.passages, 3);
    assert_true(cairn_index_stamp_covers(&st, corpus, 2));
    assert_true(cairn_index_stamp_covers(&st, corpus, 3));
    assert_false(cairn_index_stamp_covers(&st, corpus, 4));
    assert_false(cairn_index_stamp_covers(&st, corpus, 0));
    assert_false(cairn_index_stamp_covers(&st, other, 1));
    assert_false(cairn_index_stamp_covers(&st, "/no/such/corpus.jsonl", 1));
    cairn_docstore_close(ds);

    /* limit 10 but only 4 passages: the corpus ran out, so any limit is covered */
    ds = new_store("s2.cds");
    assert_int_equal(cairn_index_ingest(ds, corpus, 10, NULL, stamp, NULL, &err), 0);
    assert_int_equal(cairn_index_stamp_read(stamp, &st, &err), 0);
    assert_int_equal(st.passages, 4);
    assert_true(cairn_index_stamp_covers(&st, corpus, 0));
    assert_true(cairn_index_stamp_covers(&st, corpus, 1000));
    cairn_docstore_close(ds);

    /* unlimited covers everything from that corpus */
    ds = new_store("s3.cds");
    assert_int_equal(cairn_index_ingest(ds, corpus, 0, NULL, stamp, NULL, &err), 0);
    assert_int_equal(cairn_index_stamp_read(stamp, &st, &err), 0);
    assert_int_equal(st.max_passages, 0);
    assert_true(cairn_index_stamp_covers(&st, corpus, 0));
    cairn_docstore_close(ds);
}

static void test_stamp_rejects_garbage(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "hello\n",
        "cairn-corpus-stamp 1\nmax_passages x\npassages 1\ncorpus /a\n",
        "cairn-corpus-stamp 1\nmax_passages 1\npassages -1\ncorpus /a\n",
        "cairn-corpus-stamp 1\nmax_passages 1\npassages 1\ncorpus relative\n",
        "cairn-corpus-stamp 1\nmax_passages 1\npassages 1\n",
        "cairn-corpus-stamp 1\nmax_passages 1\npassages 1\ncorpus /a\nextra\n",
        "cairn-corpus-stamp 2\nmax_passages 1\npassages 1\ncorpus /a\n",
        "",
    };
    char p[256];
    tmp_path(p, sizeof p, "bad.stamp");
    cairn_index_stamp st;
    cairn_error err;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        put_file("bad.stamp", bad[i]);
        assert_int_equal(cairn_index_stamp_read(p, &st, &err), CAIRN_EFORMAT);
        assert_non_null(strstr(err.msg, "line"));
    }
    put_file("bad.stamp", "cairn-corpus-stamp 1\nmax_passages 7\npassages 5\ncorpus /a b\n");
    assert_int_equal(cairn_index_stamp_read(p, &st, &err), 0);
    assert_string_equal(st.corpus, "/a b");
    assert_int_equal(st.max_passages, 7);
    assert_int_equal(st.passages, 5);
}

static void test_ingest_rejects_unknown_kinds(void **state)
{
    (void)state;
    cairn_docstore *ds = new_store("k.cds");
    cairn_error err;
    char p[256], stamp[256];
    tmp_path(p, sizeof p, "notes.txt");
    tmp_path(stamp, sizeof stamp, "k.stamp");
    put_file("notes.txt", "plain text");
    assert_int_equal(cairn_index_ingest(ds, p, 0, NULL, stamp, NULL, &err), CAIRN_EINVAL);
    assert_non_null(strstr(err.msg, "not a directory"));
    tmp_path(p, sizeof p, "missing.jsonl");
    assert_int_equal(cairn_index_ingest(ds, p, 0, NULL, stamp, NULL, &err), CAIRN_ENOTFOUND);
    assert_non_null(strstr(err.msg, "missing.jsonl"));
    assert_int_equal(cairn_index_ingest(ds, NULL, 0, NULL, stamp, NULL, &err), CAIRN_ENOTFOUND);
    assert_int_equal(access(stamp, F_OK), -1); /* no stamp for a failed ingest */
    assert_int_equal(cairn_docstore_live(ds), 0);
    cairn_docstore_close(ds);
}

/* With the embedder's WordPiece counting, no passage is truncated by the embedder: a text of
 * long words that each make several pieces is cut into more, shorter passages. */
static void test_wordpiece_sized_passages(void **state)
{
    (void)state;
    cairn_embed *e = open_embedder();
    const cairn_wordpiece *wp = cairn_embed_tokenizer(e);
    /* 150 words of many pieces each: one passage by word count, several by WordPiece */
    size_t cap = 150 * 40 + 64;
    char *line = malloc(cap);
    strcpy(line, "{\"id\": \"w\", \"text\": \"");
    for (int i = 0; i < 150; i++) strcat(line, "xqzvbrtlkjhg ");
    strcat(line, "\"}\n");
    put_file("w.jsonl", line);
    free(line);
    char corpus[256];
    tmp_path(corpus, sizeof corpus, "w.jsonl");
    cairn_error err;
    assert_true(cairn_index_count_wordpiece((void *)wp, "xqzvbrtlkjhg", 12) > 2);
    assert_int_equal(cairn_index_count_wordpiece((void *)wp, "the", 3), 1);

    cairn_docstore *plain = new_store("wp0.cds"), *sized = new_store("wp1.cds");
    assert_int_equal(cairn_index_ingest(plain, corpus, 0, NULL, NULL, NULL, &err), 0);
    assert_int_equal(cairn_index_ingest(sized, corpus, 0, wp, NULL, NULL, &err), 0);
    assert_int_equal(cairn_docstore_live(plain), 1);
    assert_true(cairn_docstore_live(sized) > 1);
    int32_t ids[1024];
    for (size_t i = 0; i < cairn_docstore_records(sized); i++) {
        cairn_doc d;
        cairn_docstore_at(sized, i, &d);
        int n = cairn_wordpiece_encode(wp, d.text, d.text_len, ids, 1024);
        assert_true(n - 2 <= 200); /* corpus default max_tokens */
        assert_true(n <= cairn_embed_max_seq(e));
    }
    cairn_docstore_close(plain);
    cairn_docstore_close(sized);
    cairn_embed_close(e);
}

typedef struct {
    size_t calls, last_done, last_total;
    int monotonic;
} prog;

static void on_prog(void *ctx, size_t done, size_t total)
{
    prog *p = ctx;
    if (done <= p->last_done) p->monotonic = 0;
    p->calls++;
    p->last_done = done;
    p->last_total = total;
}

/* embed_store embeds live passages only, in id order, exactly as embed_batch does. */
static void test_embed_store(void **state)
{
    (void)state;
    cairn_embed *e = open_embedder();
    cairn_docstore *ds = new_store("e.cds");
    static const char *const texts[] = {"red apples", "a fast car",    "x",        "green pears",
                                        "sailing boats", "rainy weather", "tax forms"};
    cairn_doc_input in[7];
    for (int i = 0; i < 7; i++) in[i] = (cairn_doc_input){.key = "k", .text = texts[i]};
    cairn_error err;
    uint64_t first;
    assert_int_equal(cairn_docstore_append(ds, in, 7, &first, &err), 0);
    assert_int_equal(cairn_docstore_delete(ds, first + 1, &err), 0);

    float *x;
    int64_t *ids;
    size_t n;
    prog p = {.monotonic = 1};
    assert_int_equal(cairn_index_embed_store(e, ds, 2, on_prog, &p, &x, &ids, &n, &err), 0);
    assert_int_equal(n, 6);
    assert_int_equal(p.calls, 3); /* chunks of 2 */
    assert_true(p.monotonic);
    assert_int_equal(p.last_done, 6);
    assert_int_equal(p.last_total, 6);
    int dim = cairn_embed_dim(e);
    float ref[384];
    size_t k = 0;
    for (int i = 0; i < 7; i++) {
        if (i == 1) continue;
        assert_int_equal(ids[k], (int64_t)(first + (uint64_t)i));
        const char *t = in[i].text;
        assert_int_equal(cairn_embed_batch(e, &t, 1, ref, &err), 0);
        for (int j = 0; j < dim; j++) assert_true(fabsf(ref[j] - x[k * dim + j]) < 1e-5f);
        k++;
    }
    free(x);
    free(ids);
    cairn_docstore_close(ds);

    ds = new_store("empty.cds");
    assert_int_equal(cairn_index_embed_store(e, ds, 0, NULL, NULL, &x, &ids, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_null(x);
    assert_null(ids);
    cairn_docstore_close(ds);
    cairn_embed_close(e);
}

/* build_ivf sizes nlist to n, trains, and holds every vector under its id. */
static void test_build_ivf(void **state)
{
    (void)state;
    cairn_error err;
    cairn_ivf *ivf = NULL;
    assert_int_equal(cairn_index_build_ivf(&ivf, 32, NULL, NULL, 0, &err), CAIRN_EINVAL);
    assert_null(ivf);
    size_t n = 2000;
    float *x = clustered(n, 32, 20, 0.2f, 7);
    int64_t *ids = malloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++) ids[i] = (int64_t)(1000 + i);
    assert_int_equal(cairn_index_build_ivf(&ivf, 32, x, ids, n, &err), 0);
    assert_int_equal(cairn_ivf_count(ivf), n);
    assert_int_equal(cairn_ivf_nlist(ivf), cairn_ivf_nlist_for(n));
    /* each vector finds itself with all lists probed */
    for (size_t i = 0; i < n; i += 97) {
        float s;
        int64_t id;
        assert_int_equal(cairn_ivf_search(ivf, x + i * 32, 1, 1, cairn_ivf_nlist(ivf), &s, &id,
                                          &err), 0);
        assert_int_equal(id, ids[i]);
    }
    cairn_ivf_close(ivf);
    free(x);
    free(ids);
}

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/cairn-test-index-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paths),
        cmocka_unit_test(test_ingest_stamp_and_covers),
        cmocka_unit_test(test_stamp_rejects_garbage),
        cmocka_unit_test(test_ingest_rejects_unknown_kinds),
        cmocka_unit_test(test_wordpiece_sized_passages),
        cmocka_unit_test(test_embed_store),
        cmocka_unit_test(test_build_ivf),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
