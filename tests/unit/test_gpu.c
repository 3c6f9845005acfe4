/* tests/unit/test_gpu.c — GPU discovery: the answer a build gives on the machine it runs on. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/error.h"
#include "common/gpu.h"

#include <stdio.h>
#include <string.h>

static void test_count_and_describe(void **state)
{
    char why[256] = "";
    int n = cairn_gpu_count(why, sizeof why);
    assert_true(n >= 0);
    if (n == 0) {
        /* A machine without a GPU must say why, and describing a device must fail cleanly. */
        assert_true(strlen(why) > 0);
        char desc[256];
        assert_int_not_equal(cairn_gpu_describe(0, desc, sizeof desc), 0);
        assert_true(strlen(desc) > 0);
        print_message("no GPU here (%s): GPU checks skipped\n", why);
        skip();
    }
    for (int i = 0; i < n; i++) {
        char desc[256];
        assert_int_equal(cairn_gpu_describe(i, desc, sizeof desc), 0);
        assert_non_null(strstr(desc, "sm_"));
        print_message("gpu %d: %s\n", i, desc);
    }
    char desc[256];
    assert_int_not_equal(cairn_gpu_describe(n, desc, sizeof desc), 0); /* one past the last */
}

static void test_built_flag_matches_build(void **state)
{
#ifdef CAIRN_HAVE_CUDA
    assert_int_equal(cairn_gpu_built(), 1);
#else
    assert_int_equal(cairn_gpu_built(), 0);
    char why[256];
    assert_int_equal(cairn_gpu_count(why, sizeof why), 0);
    assert_non_null(strstr(why, "CAIRN_CUDA=OFF"));
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_built_flag_matches_build),
        cmocka_unit_test(test_count_and_describe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
