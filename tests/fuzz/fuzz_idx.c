/*
 * tests/fuzz/fuzz_idx.c — libFuzzer target for the IDX parser (adapt/data.h), which reads the
 * Fashion-MNIST files and operators' own streams (`cairn adapt eval --stream`).
 *
 * Input: byte 0 picks the dimensions expected (even: 1, labels; odd: 3, images), the rest is
 * the file. Checks: no crash or sanitizer report; a failure is CAIRN_EFORMAT with a message; a
 * success points into the input, after the header, at exactly the bytes the dims imply.
 *
 * Seed corpus: tests/fuzz/corpus/idx/ (a labels file, an images file, one cut short).
 */
#include <stdint.h>
#include <stdlib.h>

#include "adapt/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const int ndim = data[0] & 1 ? 3 : 1;
    const uint8_t *buf = data + 1, *body = NULL;
    const size_t len = size - 1;
    uint32_t dims[3] = {0, 0, 0};
    cairn_error err = {0};
    int rc = cairn_idx_parse(buf, len, ndim, &body, dims, &err);
    if (rc) {
        if (rc != CAIRN_EFORMAT || !err.msg[0]) abort();
        return 0;
    }
    const size_t header = 4 + 4 * (size_t)ndim;
    uint64_t total = 1;
    for (int i = 0; i < ndim; i++)
        total *= dims[i];
    if (body != buf + header || total != len - header) abort();
    return 0;
}
