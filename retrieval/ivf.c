/*
 * retrieval/ivf.c — IVF index over FAISS's C API (see ivf.h).
 */
#include "retrieval/ivf.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "retrieval/faiss_c_compat.h"
#include "retrieval/faiss_ext.h"

#define IVF_MAGIC "CAIRNIVF"
#define IVF_VERSION 1u
#define IVF_HEADER 64u
/* FAISS payloads above this are refused before reading (about 8 M vectors of 384 floats). */
#define IVF_MAX_PAYLOAD (16ull << 30)

struct cairn_ivf {
    int dim;
    size_t nlist;
    size_t nprobe_param;
    FaissIndex *quantizer; /* owned by index once index exists */
    FaissIndex *index;     /* IndexIVFFlat, NULL until trained or loaded */
    uint64_t docstore_uid;
    bool borrowed;         /* lists borrowed from the caller (cairn_ivf_borrow): read-only */
};

static const char *faiss_msg(void)
{
    const char *m = faiss_get_last_error();
    return m ? m : "unknown FAISS error";
}

cairn_ivf_params cairn_ivf_default_params(void)
{
    return (cairn_ivf_params){.dim = 384, .nlist = 0, .nprobe = 0};
}

size_t cairn_ivf_nlist_for(size_t n)
{
    size_t nl = (size_t)lround(4.0 * sqrt((double)n));
    if (nl > n / 39)
        nl = n / 39;
    if (nl < 1)
        nl = 1;
    if (nl > 65536)
        nl = 65536;
    return nl;
}

int cairn_ivf_new(cairn_ivf **out, const cairn_ivf_params *p, cairn_error *err)
{
    *out = NULL;
    if (p->dim < 1 || p->dim > 65536)
        return cairn_errorf(err, CAIRN_EINVAL, "ivf: dim %d outside [1, 65536]", p->dim);
    if (p->nlist > 65536)
        return cairn_errorf(err, CAIRN_EINVAL, "ivf: nlist %zu above 65536", p->nlist);
    cairn_ivf *ivf = calloc(1, sizeof(*ivf));
    if (!ivf)
        return cairn_errorf(err, CAIRN_ENOMEM, "ivf: out of memory");
    ivf->dim = p->dim;
    ivf->nlist = p->nlist;
    ivf->nprobe_param = p->nprobe;
    *out = ivf;
    return 0;
}

int cairn_ivf_borrow(cairn_ivf **out, int dim, size_t nlist, const float *centroids,
                     const int64_t *const *ids, const float *const *vecs, const size_t *n,
                     cairn_error *err)
{
    *out = NULL;
    if (dim < 1 || dim > 65536 || nlist < 1 || nlist > 65536)
        return cairn_errorf(err, CAIRN_EINVAL, "ivf: dim %d / nlist %zu out of range", dim, nlist);
    cairn_ivf *ivf = calloc(1, sizeof(*ivf));
    if (!ivf)
        return cairn_errorf(err, CAIRN_ENOMEM, "ivf: out of memory");
    FaissIndex *index = NULL;
    if (cairn_faiss_ext_ivfflat_borrow(&index, dim, nlist, centroids, (const idx_t *const *)ids,
                                       vecs, n, 0) != 0) {
        free(ivf);
        return cairn_errorf(err, CAIRN_EIO, "ivf: borrowing %zu lists: %s", nlist,
                            cairn_faiss_ext_last_error());
    }
    ivf->dim = dim;
    ivf->nlist = nlist;
    ivf->index = index;
    ivf->quantizer = faiss_IndexIVF_quantizer(faiss_IndexIVF_cast(index));
    ivf->borrowed = true;
    *out = ivf;
    return 0;
}

int cairn_ivf_search_preassigned(const cairn_ivf *ivf, const float *q, size_t nq, size_t k,
                                 const int64_t *assign, size_t nprobe, float *scores,
                                 int64_t *ids, cairn_error *err)
{
    if (!ivf->index)
        return cairn_errorf(err, CAIRN_ESTATE, "ivf: search before training");
    if (k == 0 || k > 4096 || nprobe == 0)
        return cairn_errorf(err, CAIRN_EINVAL, "ivf: k %zu outside [1, 4096] or nprobe 0", k);
    for (size_t i = 0; i < nq * nprobe; i++)
        if (assign[i] >= (int64_t)ivf->nlist)
            return cairn_errorf(err, CAIRN_EINVAL, "ivf: list %lld of %zu", (long long)assign[i],
                                ivf->nlist);
    if (nq == 0)
        return 0;
    if (cairn_faiss_ext_ivf_search_preassigned(ivf->index, (idx_t)nq, q, (idx_t)k,
                                               (const idx_t *)assign, nprobe, scores,
                                               (idx_t *)ids) != 0)
        return cairn_errorf(err, CAIRN_EIO, "ivf: search_preassigned: %s",
                            cairn_faiss_ext_last_error());
    for (size_t i = 0; i < nq * k; i++)
        if (ids[i] < 0)
            scores[i] = -INFINITY;
    return 0;
}

int cairn_ivf_set_split_lists(cairn_ivf *ivf, bool split_lists, cairn_error *err)
{
    if (!ivf->index)
        return cairn_errorf(err, CAIRN_ESTATE, "ivf: not trained");
    if (cairn_faiss_ext_ivf_set_parallel_mode(ivf->index, split_lists ? 1 : 0) != 0)
        return cairn_errorf(err, CAIRN_EIO, "ivf: %s", cairn_faiss_ext_last_error());
    return 0;
}

int cairn_ivf_set_threads(int n) { return cairn_faiss_ext_set_threads(n); }

void cairn_ivf_close(cairn_ivf *ivf)
{
    if (!ivf)
        return;
    if (ivf->index)
        faiss_Index_free(ivf->index); /* own_fields: frees the quantizer too */
    else if (ivf->quantizer)
        faiss_Index_free(ivf->quantizer);
    free(ivf);
}

int cairn_ivf_train(cairn_ivf *ivf, const float *x, size_t n, cairn_error *err)
{
    if (ivf->index)
        return cairn_errorf(err, CAIRN_ESTATE, "ivf: already trained");
    size_t nlist = ivf->nlist ? ivf->nlist : cairn_ivf_nlist_for(n);
    if (n < nlist)
        return cairn_errorf(err, CAIRN_EINVAL, "ivf: %zu training vectors for %zu clusters", n,
                            nlist);
    FaissIndexFlatIP *q = NULL;
    if (faiss_IndexFlatIP_new_with(&q, ivf->dim) != 0)
        return cairn_errorf(err, CAIRN_EIO, "ivf: quantizer: %s", faiss_msg());
    FaissIndexIVFFlat *index = NULL;
    if (faiss_IndexIVFFlat_new_with_metric(&index, (FaissIndex *)q, (size_t)ivf->dim, nlist,
                                           METRIC_INNER_PRODUCT) != 0) {
        faiss_Index_free((FaissIndex *)q);
        return cairn_errorf(err, CAIRN_EIO, "ivf: IndexIVFFlat: %s", faiss_msg());
    }
    faiss_IndexIVF_set_own_fields(faiss_IndexIVF_cast((FaissIndex *)index), 1);
    if (faiss_Index_train((FaissIndex *)index, (idx_t)n, x) != 0) {
        int rc = cairn_errorf(err, CAIRN_EIO, "ivf: training on %zu vectors: %s", n, faiss_msg());
        faiss_Index_free((FaissIndex *)index);
        return rc;
    }
    ivf->index = (FaissIndex *)index;
    ivf->quantizer = (FaissIndex *)q;
    ivf->nlist = nlist;
    return 0;
}

int cairn_ivf_add(cairn_ivf *ivf, const float *x, const int64_t *ids, size_t n, cairn_error *err)
{
    if (!ivf->index)
        return cairn_errorf(err, CAIRN_ESTATE, "ivf: add before training");
    if (ivf->borrowed)
        return cairn_errorf(err, CAIRN_ESTATE, "ivf: the lists are borrowed (read-only)");
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0)
            return cairn_errorf(err, CAIRN_EINVAL, "ivf: id %lld at %zu is negative",
                                (long long)ids[i], i);
    if (n && faiss_Index_add_with_ids(ivf->index, (idx_t)n, x, ids) != 0)
        return cairn_errorf(err, CAIRN_EIO, "ivf: add %zu vectors: %s", n, faiss_msg());
    return 0;
}

size_t cairn_ivf_nprobe(const cairn_ivf *ivf)
{
    size_t np = ivf->nprobe_param;
    if (np == 0) {
        /* nlist / 8: recall@10 0.974 on 20,000 default-corpus passages (nlist 512); nlist / 16
         * gave 0.952, too close to the 0.95 target (docs/BENCHMARKS.md, Retrieval) */
        np = ivf->nlist / 8;
        if (np < 8)
            np = 8;
    }
    if (ivf->nlist && np > ivf->nlist)
        np = ivf->nlist;
    return np;
}

int cairn_ivf_search(const cairn_ivf *ivf, const float *q, size_t nq, size_t k, size_t nprobe,
                     float *scores, int64_t *ids, cairn_error *err)
{
    if (!ivf->index)
        return cairn_errorf(err, CAIRN_ESTATE, "ivf: search before training");
    if (k == 0 || k > 4096)
        return cairn_errorf(err, CAIRN_EINVAL, "ivf: k %zu outside [1, 4096]", k);
    if (nprobe == 0)
        nprobe = cairn_ivf_nprobe(ivf);
    if (nprobe > ivf->nlist)
        nprobe = ivf->nlist;
    if (nq == 0)
        return 0;
    if (cairn_faiss_ext_ivf_search(ivf->index, (idx_t)nq, q, (idx_t)k, nprobe, scores, ids) != 0)
        return cairn_errorf(err, CAIRN_EIO, "ivf: search: %s", cairn_faiss_ext_last_error());
    for (size_t i = 0; i < nq * k; i++)
        if (ids[i] < 0)
            scores[i] = -INFINITY;
    return 0;
}

int cairn_ivf_remove(cairn_ivf *ivf, const int64_t *ids, size_t n, size_t *n_removed,
                     cairn_error *err)
{
    if (n_removed)
        *n_removed = 0;
    if (ivf->borrowed)
        return cairn_errorf(err, CAIRN_ESTATE, "ivf: the lists are borrowed (read-only)");
    if (!ivf->index || n == 0)
        return 0;
    FaissIDSelectorBatch *sel = NULL;
    if (faiss_IDSelectorBatch_new(&sel, n, ids) != 0)
        return cairn_errorf(err, CAIRN_EIO, "ivf: id selector: %s", faiss_msg());
    size_t removed = 0;
    int frc = faiss_Index_remove_ids(ivf->index, (const FaissIDSelector *)sel, &removed);
    faiss_IDSelector_free((FaissIDSelector *)sel);
    if (frc != 0)
        return cairn_errorf(err, CAIRN_EIO, "ivf: remove: %s", faiss_msg());
    if (n_removed)
        *n_removed = removed;
    return 0;
}

/* ---- Save and load ------------------------------------------------------------------------------ */

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

int cairn_ivf_save(const cairn_ivf *ivf, const char *path, uint64_t docstore_uid,
                   cairn_error *err)
{
    if (!ivf->index)
        return cairn_errorf(err, CAIRN_ESTATE, "ivf: save before training");
    if (ivf->borrowed)
        return cairn_errorf(err, CAIRN_ESTATE, "ivf: an index of borrowed lists is not saved");
    char *payload = NULL;
    size_t plen = 0;
    FILE *mem = open_memstream(&payload, &plen);
    if (!mem)
        return cairn_errorf(err, CAIRN_ENOMEM, "ivf: memstream: %s", strerror(errno));
    int frc = faiss_write_index(ivf->index, mem);
    fclose(mem);
    if (frc != 0) {
        free(payload);
        return cairn_errorf(err, CAIRN_EIO, "ivf: serialise: %s", faiss_msg());
    }
    uint8_t h[IVF_HEADER] = {0};
    memcpy(h, IVF_MAGIC, 8);
    put64(h + 8, IVF_VERSION | (uint64_t)(uint32_t)ivf->dim << 32);
    put64(h + 16, ivf->nlist);
    put64(h + 24, cairn_ivf_count(ivf));
    put64(h + 32, docstore_uid);
    put64(h + 40, plen);
    put64(h + 48, fnv1a((const uint8_t *)payload, plen));
    put64(h + 56, fnv1a(h, 56));
    size_t tl = strlen(path) + 5;
    char *tmp = malloc(tl);
    if (!tmp) {
        free(payload);
        return cairn_errorf(err, CAIRN_ENOMEM, "ivf: out of memory");
    }
    snprintf(tmp, tl, "%s.tmp", path);
    int rc = 0;
    FILE *f = fopen(tmp, "we");
    if (!f) {
        rc = cairn_errorf(err, CAIRN_EIO, "%s: %s", tmp, strerror(errno));
    } else {
        bool ok = fwrite(h, 1, sizeof(h), f) == sizeof(h) && fwrite(payload, 1, plen, f) == plen;
        ok = (fflush(f) == 0) && ok;
        ok = (fclose(f) == 0) && ok;
        if (!ok)
            rc = cairn_errorf(err, CAIRN_EIO, "%s: write: %s", tmp, strerror(errno));
        else if (rename(tmp, path) != 0)
            rc = cairn_errorf(err, CAIRN_EIO, "rename %s -> %s: %s", tmp, path, strerror(errno));
        if (rc)
            remove(tmp);
    }
    free(tmp);
    free(payload);
    return rc;
}

int cairn_ivf_load(cairn_ivf **out, const char *path, uint64_t expect_uid, cairn_error *err)
{
    *out = NULL;
    FILE *f = fopen(path, "re");
    if (!f)
        return cairn_errorf(err, errno == ENOENT ? CAIRN_ENOTFOUND : CAIRN_EIO, "%s: %s", path,
                            strerror(errno));
    struct stat st;
    uint8_t h[IVF_HEADER];
    int rc = 0;
    uint8_t *payload = NULL;
    FaissIndex *index = NULL;
    if (fstat(fileno(f), &st) != 0) {
        rc = cairn_errorf(err, CAIRN_EIO, "%s: stat: %s", path, strerror(errno));
        goto out;
    }
    if ((uint64_t)st.st_size < IVF_HEADER || fread(h, 1, IVF_HEADER, f) != IVF_HEADER) {
        rc = cairn_errorf(err, CAIRN_EFORMAT, "%s: %lld bytes, shorter than the %u-byte header",
                          path, (long long)st.st_size, IVF_HEADER);
        goto out;
    }
    if (memcmp(h, IVF_MAGIC, 8) != 0) {
        rc = cairn_errorf(err, CAIRN_EFORMAT, "%s: not a cairn IVF index (bad magic)", path);
        goto out;
    }
    if (get64(h + 56) != fnv1a(h, 56)) {
        rc = cairn_errorf(err, CAIRN_EFORMAT, "%s: header checksum mismatch", path);
        goto out;
    }
    uint64_t vd = get64(h + 8);
    uint32_t version = (uint32_t)vd, dim = (uint32_t)(vd >> 32);
    uint64_t nlist = get64(h + 16), count = get64(h + 24), uid = get64(h + 32);
    uint64_t plen = get64(h + 40), sum = get64(h + 48);
    if (version != IVF_VERSION) {
        rc = cairn_errorf(err, CAIRN_EUNSUPPORTED, "%s: IVF file version %u (this build reads %u)",
                          path, version, IVF_VERSION);
        goto out;
    }
    if (dim < 1 || dim > 65536 || nlist < 1 || nlist > 65536) {
        rc = cairn_errorf(err, CAIRN_EFORMAT, "%s: dim %u / nlist %llu out of range", path, dim,
                          (unsigned long long)nlist);
        goto out;
    }
    if (plen > IVF_MAX_PAYLOAD || plen != (uint64_t)st.st_size - IVF_HEADER) {
        rc = cairn_errorf(err, CAIRN_EFORMAT,
                          "%s: payload of %llu bytes, but the file has %llu after the header", path,
                          (unsigned long long)plen,
                          (unsigned long long)((uint64_t)st.st_size - IVF_HEADER));
        goto out;
    }
    if (expect_uid && uid != expect_uid) {
        rc = cairn_errorf(err, CAIRN_ESTATE,
                          "%s: index belongs to docstore %016llx, not to this one (%016llx); "
                          "rebuild the index",
                          path, (unsigned long long)uid, (unsigned long long)expect_uid);
        goto out;
    }
    payload = malloc(plen ? plen : 1);
    if (!payload) {
        rc = cairn_errorf(err, CAIRN_ENOMEM, "%s: %llu bytes", path, (unsigned long long)plen);
        goto out;
    }
    if (fread(payload, 1, plen, f) != plen) {
        rc = cairn_errorf(err, CAIRN_EIO, "%s: short read", path);
        goto out;
    }
    if (fnv1a(payload, plen) != sum) {
        rc = cairn_errorf(err, CAIRN_EFORMAT, "%s: payload checksum mismatch (corrupt file)", path);
        goto out;
    }
    FILE *mem = fmemopen(payload, plen, "r");
    if (!mem) {
        rc = cairn_errorf(err, CAIRN_ENOMEM, "%s: fmemopen: %s", path, strerror(errno));
        goto out;
    }
    int frc = faiss_read_index(mem, 0, &index);
    fclose(mem);
    if (frc != 0) {
        index = NULL;
        rc = cairn_errorf(err, CAIRN_EFORMAT, "%s: FAISS payload: %s", path, faiss_msg());
        goto out;
    }
    FaissIndexIVF *iv = faiss_IndexIVF_cast(index);
    FaissIndex *q = iv ? faiss_IndexIVF_quantizer(iv) : NULL;
    const float *vecs;
    const int64_t *ids;
    size_t n0;
    if (!iv || cairn_faiss_ext_ivfflat_list(index, 0, &vecs, &ids, &n0) != 0 || !q ||
        !faiss_IndexFlat_cast(q) || faiss_Index_metric_type(index) != METRIC_INNER_PRODUCT) {
        rc = cairn_errorf(err, CAIRN_EFORMAT, "%s: payload is not an inner-product IndexIVFFlat",
                          path);
        goto out;
    }
    if ((uint64_t)faiss_Index_d(index) != dim || faiss_IndexIVF_nlist(iv) != nlist ||
        (uint64_t)faiss_Index_ntotal(index) != count) {
        rc = cairn_errorf(err, CAIRN_EFORMAT,
                          "%s: header (dim %u, nlist %llu, count %llu) disagrees with the payload",
                          path, dim, (unsigned long long)nlist, (unsigned long long)count);
        goto out;
    }
    cairn_ivf *ivf = calloc(1, sizeof(*ivf));
    if (!ivf) {
        rc = cairn_errorf(err, CAIRN_ENOMEM, "ivf: out of memory");
        goto out;
    }
    ivf->dim = (int)dim;
    ivf->nlist = nlist;
    ivf->index = index;
    ivf->quantizer = q;
    ivf->docstore_uid = uid;
    index = NULL;
    *out = ivf;
out:
    if (index)
        faiss_Index_free(index);
    free(payload);
    fclose(f);
    return rc;
}

/* ---- Accessors ---------------------------------------------------------------------------------- */

int cairn_ivf_dim(const cairn_ivf *ivf) { return ivf->dim; }
size_t cairn_ivf_nlist(const cairn_ivf *ivf) { return ivf->nlist; }
size_t cairn_ivf_count(const cairn_ivf *ivf)
{
    return ivf->index ? (size_t)faiss_Index_ntotal(ivf->index) : 0;
}
uint64_t cairn_ivf_docstore_uid(const cairn_ivf *ivf) { return ivf->docstore_uid; }

int cairn_ivf_centroids(const cairn_ivf *ivf, const float **out, cairn_error *err)
{
    FaissIndexFlat *flat = ivf->quantizer ? faiss_IndexFlat_cast(ivf->quantizer) : NULL;
    if (!ivf->index || !flat)
        return cairn_errorf(err, CAIRN_ESTATE, "ivf: no centroids before training");
    float *xb = NULL;
    size_t size = 0;
    faiss_IndexFlat_xb(flat, &xb, &size);
    if (size != ivf->nlist * (size_t)ivf->dim)
        return cairn_errorf(err, CAIRN_ESTATE, "ivf: quantizer holds %zu floats, expected %zu",
                            size, ivf->nlist * (size_t)ivf->dim);
    *out = xb;
    return 0;
}

int cairn_ivf_list(const cairn_ivf *ivf, size_t list_no, const float **vectors,
                   const int64_t **ids, size_t *n, cairn_error *err)
{
    if (!ivf->index)
        return cairn_errorf(err, CAIRN_ESTATE, "ivf: no lists before training");
    if (list_no >= ivf->nlist)
        return cairn_errorf(err, CAIRN_ERANGE, "ivf: list %zu of %zu", list_no, ivf->nlist);
    const idx_t *fids = NULL;
    if (cairn_faiss_ext_ivfflat_list(ivf->index, list_no, vectors, &fids, n) != 0)
        return cairn_errorf(err, CAIRN_EIO, "ivf: list %zu: %s", list_no,
                            cairn_faiss_ext_last_error());
    *ids = (const int64_t *)fids;
    return 0;
}
