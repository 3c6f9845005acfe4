/*
 * generation/backend.c — opening a device's backend (generation/backend.h).
 */
#include "generation/backend.h"

#include <stdlib.h>

int cairn_backend_open(cairn_backend **out, int device, cairn_pool *pool, cairn_error *err)
{
    *out = NULL;
    if (device < -1)
        return cairn_errorf(err, CAIRN_EINVAL, "backend: device %d (-1 is the CPU, 0.. a GPU)",
                            device);
    if (device == -1)
        return cairn_backend_cpu_open(out, pool, err);
    return cairn_backend_cuda_open(out, device, err); /* the stub says so on CPU-only builds */
}

void cairn_backend_close(cairn_backend *be)
{
    if (be)
        be->i->close(be);
}

int cairn_backend_alloc_upload(cairn_backend *be, const void *src, size_t bytes, void **out,
                               cairn_error *err)
{
    int rc = be->i->alloc(be, bytes, out, err);
    if (rc)
        return rc;
    if ((rc = be->i->upload(be, *out, src, bytes, err))) {
        be->i->free(be, *out);
        *out = NULL;
    }
    return rc;
}
