/* tests/unit/test_kv.c — paged KV cache: allocation, exhaustion, windows, sharing, refcounts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "generation/kv.h"

static cairn_kv *open_kv(int n_blocks, int n_blocks_window, const int *windows, int n_layers)
{
    cairn_kv_params p = cairn_kv_default_params();
    p.n_layers = n_layers;
    p.layer_window = windows;
    p.kv_dim = 8;
    p.block_tokens = 4;
    p.n_blocks = n_blocks;
    p.n_blocks_window = n_blocks_window;
    p.max_seqs = 4;
    p.max_seq_tokens = 64;
    cairn_kv *kv;
    cairn_error err;
    assert_int_equal(cairn_kv_open(&kv, &p, &err), 0);
    return kv;
}

static void test_alloc_and_free(void **state)
{
    cairn_kv *kv = open_kv(8, 0, NULL, 2);
    assert_int_equal(cairn_kv_n_groups(kv), 1);
    int s;
    assert_int_equal(cairn_kv_seq_new(kv, &s, NULL), 0);
    assert_int_equal(cairn_kv_append(kv, s, 5, NULL), 0); /* 2 blocks */
    assert_int_equal(cairn_kv_seq_len(kv, s), 5);
    assert_int_equal(cairn_kv_free_blocks(kv, 0), 6);
    assert_int_equal(cairn_kv_append(kv, s, 3, NULL), 0); /* fills block 2 exactly */
    assert_int_equal(cairn_kv_free_blocks(kv, 0), 6);
    assert_int_equal(cairn_kv_append(kv, s, 1, NULL), 0);
    assert_int_equal(cairn_kv_free_blocks(kv, 0), 5);
    /* Rows of different positions are distinct memory; what is written stays. */
    for (int p = 0; p < 9; p++)
        for (int l = 0; l < 2; l++)
            cairn_kv_k_row(kv, l, s, p)[0] = (uint16_t)(p * 10 + l);
    for (int p = 0; p < 9; p++)
        for (int l = 0; l < 2; l++)
            assert_int_equal(cairn_kv_k_row(kv, l, s, p)[0], p * 10 + l);
    assert_int_equal(cairn_kv_truncate(kv, s, 4, NULL), 0);
    assert_int_equal(cairn_kv_free_blocks(kv, 0), 7);
    cairn_kv_seq_free(kv, s);
    assert_int_equal(cairn_kv_free_blocks(kv, 0), 8);
    assert_int_equal(cairn_kv_seq_len(kv, s), -1);
    cairn_kv_close(kv);
}

static void test_exhaustion(void **state)
{
    cairn_kv *kv = open_kv(3, 0, NULL, 1);
    int a, b;
    cairn_error err;
    assert_int_equal(cairn_kv_seq_new(kv, &a, NULL), 0);
    assert_int_equal(cairn_kv_seq_new(kv, &b, NULL), 0);
    assert_int_equal(cairn_kv_append(kv, a, 8, NULL), 0);
    assert_int_equal(cairn_kv_append(kv, b, 5, &err), CAIRN_EBUSY); /* needs 2, 1 free */
    assert_non_null(strstr(err.msg, "exhausted"));
    assert_int_equal(cairn_kv_seq_len(kv, b), 0); /* nothing changed */
    assert_int_equal(cairn_kv_free_blocks(kv, 0), 1);
    assert_int_equal(cairn_kv_append(kv, b, 4, NULL), 0);
    /* Context limit. */
    assert_int_equal(cairn_kv_append(kv, a, 100, &err), CAIRN_ELIMIT);
    /* Sequence slots. */
    int c, d, e;
    assert_int_equal(cairn_kv_seq_new(kv, &c, NULL), 0);
    assert_int_equal(cairn_kv_seq_new(kv, &d, NULL), 0);
    assert_int_equal(cairn_kv_seq_new(kv, &e, &err), CAIRN_EBUSY);
    assert_int_equal(cairn_kv_append(kv, 99, 1, &err), CAIRN_EINVAL);
    cairn_kv_close(kv);
}

static void test_window_frees(void **state)
{
    const int windows[3] = {6, 6, 0}; /* two window layers, one global */
    cairn_kv *kv = open_kv(16, 4, windows, 3);
    assert_int_equal(cairn_kv_n_groups(kv), 2);
    int wg = cairn_kv_layer_group(kv, 0), gg = cairn_kv_layer_group(kv, 2);
    assert_int_equal(cairn_kv_group_window(kv, wg), 6);
    assert_int_equal(cairn_kv_group_window(kv, gg), 0);
    assert_int_equal(cairn_kv_free_blocks(kv, wg), 4);
    int s;
    assert_int_equal(cairn_kv_seq_new(kv, &s, NULL), 0);
    /* Decode one token at a time far past the window: the window pool (4 blocks) never runs
     * out because blocks that fall out of the window are freed. */
    for (int i = 0; i < 40; i++) {
        assert_int_equal(cairn_kv_append(kv, s, 1, NULL), 0);
        const int32_t *tab;
        int nb = cairn_kv_seq_table(kv, s, wg, &tab);
        int pos = i;                              /* the query just appended */
        int lo = pos - 6 + 1 < 0 ? 0 : pos - 6 + 1; /* first key it sees */
        for (int b = lo / 4; b < nb; b++)
            assert_true(tab[b] >= 0);             /* visible rows are live */
        for (int b = 0; b < (pos - 6 + 1 < 0 ? 0 : pos - 6 + 1) / 4 - 1; b++)
            assert_int_equal(tab[b], -1);         /* rows long out of the window are freed */
    }
    assert_int_equal(cairn_kv_free_blocks(kv, gg), 6); /* the global group keeps all 10 */
    assert_true(cairn_kv_free_blocks(kv, wg) >= 1);
    cairn_kv_seq_free(kv, s);
    assert_int_equal(cairn_kv_free_blocks(kv, wg), 4);
    assert_int_equal(cairn_kv_free_blocks(kv, gg), 16);
    cairn_kv_close(kv);
}

static void test_prefix_sharing(void **state)
{
    cairn_kv *kv = open_kv(8, 0, NULL, 1);
    int a, b;
    assert_int_equal(cairn_kv_seq_new(kv, &a, NULL), 0);
    assert_int_equal(cairn_kv_append(kv, a, 10, NULL), 0); /* blocks 0,1,2 (2 partial) */
    for (int p = 0; p < 10; p++)
        cairn_kv_v_row(kv, 0, a, p)[3] = (uint16_t)(100 + p);
    assert_int_equal(cairn_kv_free_blocks(kv, 0), 5);
    assert_int_equal(cairn_kv_seq_fork(kv, a, 6, &b, NULL), 0); /* shares blocks 0, 1 */
    assert_int_equal(cairn_kv_seq_len(kv, b), 6);
    assert_int_equal(cairn_kv_free_blocks(kv, 0), 5); /* nothing copied */
    const int32_t *ta, *tb;
    cairn_kv_seq_table(kv, a, 0, &ta);
    cairn_kv_seq_table(kv, b, 0, &tb);
    assert_int_equal(ta[0], tb[0]);
    assert_int_equal(ta[1], tb[1]);
    assert_int_equal(cairn_kv_block_refs(kv, 0, ta[0]), 2);
    assert_int_equal(cairn_kv_block_refs(kv, 0, ta[1]), 2);
    /* b appends into the shared, partly filled block 1: copy-on-write. */
    assert_int_equal(cairn_kv_append(kv, b, 1, NULL), 0);
    cairn_kv_seq_table(kv, b, 0, &tb);
    assert_int_not_equal(ta[1], tb[1]);
    assert_int_equal(cairn_kv_block_refs(kv, 0, ta[1]), 1);
    assert_int_equal(cairn_kv_block_refs(kv, 0, tb[1]), 1);
    assert_int_equal(cairn_kv_block_refs(kv, 0, ta[0]), 2);
    assert_int_equal(cairn_kv_free_blocks(kv, 0), 4);
    /* The copy carries the shared prefix rows; writes to b don't touch a. */
    assert_int_equal(cairn_kv_v_row(kv, 0, b, 5)[3], 105);
    cairn_kv_v_row(kv, 0, b, 6)[3] = 7;
    assert_int_equal(cairn_kv_v_row(kv, 0, a, 6)[3], 106);
    cairn_kv_seq_free(kv, a);
    assert_int_equal(cairn_kv_block_refs(kv, 0, tb[0]), 1);
    assert_int_equal(cairn_kv_v_row(kv, 0, b, 0)[3], 100);
    cairn_kv_seq_free(kv, b);
    assert_int_equal(cairn_kv_free_blocks(kv, 0), 8);
    cairn_kv_close(kv);
}

static void test_fork_after_window_freed(void **state)
{
    const int windows[1] = {4};
    cairn_kv *kv = open_kv(8, 8, windows, 1);
    int a, b;
    cairn_error err;
    assert_int_equal(cairn_kv_seq_new(kv, &a, NULL), 0);
    assert_int_equal(cairn_kv_append(kv, a, 12, NULL), 0);
    assert_int_equal(cairn_kv_append(kv, a, 1, NULL), 0); /* frees block 0 */
    assert_int_equal(cairn_kv_seq_fork(kv, a, 3, &b, &err), CAIRN_ESTATE);
    assert_int_equal(cairn_kv_seq_fork(kv, a, 13, &b, NULL), 0);
    cairn_kv_close(kv);
}

static void test_bad_params(void **state)
{
    cairn_kv_params p = cairn_kv_default_params();
    cairn_kv *kv;
    cairn_error err;
    assert_int_equal(cairn_kv_open(&kv, &p, &err), CAIRN_EINVAL); /* no layers */
    assert_null(kv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_and_free),   cmocka_unit_test(test_exhaustion),
        cmocka_unit_test(test_window_frees),     cmocka_unit_test(test_prefix_sharing),
        cmocka_unit_test(test_fork_after_window_freed), cmocka_unit_test(test_bad_params),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
