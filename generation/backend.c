/*
 * generation/backend.c — opening a device's backend (generation/backend.h).
 */
#include "generation/backend.h"

#include "common/gpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>

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

int cairn_backend_identify(int device, char *backend, size_t blen, char *name, size_t nlen)
{
    snprintf(backend, blen, "%s", device < 0 ? "cpu" : "cuda");
    if (device >= 0) {
        int rc = cairn_gpu_describe(device, name, nlen);
        if (rc == 0) name[strcspn(name, ",")] = 0; /* "NVIDIA H100 80GB HBM3, sm_90, ..." */
        return rc;
    }
    snprintf(name, nlen, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    bool found = false;
    while (f && !found && fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10)) continue;
        const char *v = strchr(line, ':');
        if (!v) continue;
        v += 1 + strspn(v + 1, " \t");
        size_t n = strcspn(v, "\r\n");
        while (n && (v[n - 1] == ' ' || v[n - 1] == '\t')) n--;
        if (n) snprintf(name, nlen, "%.*s", (int)n, v), found = true;
    }
    if (f) fclose(f);
    struct utsname u;
    if (!found && uname(&u) == 0) snprintf(name, nlen, "%s CPU", u.machine);
    return 0;
}
