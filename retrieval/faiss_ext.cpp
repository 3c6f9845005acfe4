// retrieval/faiss_ext.cpp — cairn's extensions beside the FAISS C API (see faiss_ext.h).
#include <exception>
#include <string>

#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/invlists/InvertedLists.h>

#include "retrieval/faiss_ext.h"

namespace {

thread_local std::string ext_error;

int fail(const char *msg)
{
    ext_error = msg;
    return -1;
}

} // namespace

extern "C" {

const char *cairn_faiss_ext_last_error(void) { return ext_error.c_str(); }

int cairn_faiss_ext_ivf_search(const FaissIndex *index, idx_t n, const float *x, idx_t k,
                               size_t nprobe, float *distances, idx_t *labels)
{
    try {
        auto *p = dynamic_cast<const faiss::IndexIVF *>(
            reinterpret_cast<const faiss::Index *>(index));
        if (!p)
            return fail("not an IVF index");
        faiss::SearchParametersIVF params;
        params.nprobe = nprobe;
        p->search(n, x, k, distances, labels, &params);
        return 0;
    } catch (const std::exception &e) {
        return fail(e.what());
    } catch (...) {
        return fail("unknown C++ exception");
    }
}

int cairn_faiss_ext_ivfflat_list(const FaissIndex *index, size_t list_no, const float **vectors,
                                 const idx_t **ids, size_t *n)
{
    try {
        auto *p = dynamic_cast<const faiss::IndexIVFFlat *>(
            reinterpret_cast<const faiss::Index *>(index));
        if (!p)
            return fail("not an IndexIVFFlat");
        if (list_no >= p->nlist)
            return fail("list number out of range");
        // ArrayInvertedLists hands out pointers into its vectors; release_codes is a no-op
        // there. Other (on-disk) list types would need release, so refuse them.
        if (!dynamic_cast<const faiss::ArrayInvertedLists *>(p->invlists))
            return fail("inverted lists are not in memory (ArrayInvertedLists)");
        *n = p->invlists->list_size(list_no);
        *vectors = reinterpret_cast<const float *>(p->invlists->get_codes(list_no));
        *ids = p->invlists->get_ids(list_no);
        return 0;
    } catch (const std::exception &e) {
        return fail(e.what());
    } catch (...) {
        return fail("unknown C++ exception");
    }
}

} // extern "C"
