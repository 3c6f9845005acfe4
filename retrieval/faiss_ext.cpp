// retrieval/faiss_ext.cpp — cairn's extensions beside the FAISS C API (see faiss_ext.h).
#include <exception>
#include <stdexcept>
#include <omp.h>
#include <string>
#include <vector>

#include <faiss/IndexIVF.h>
#include <faiss/IndexFlat.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/invlists/InvertedLists.h>

#include "retrieval/faiss_ext.h"

namespace {

using fidx = faiss::Index::idx_t; // FAISS 1.7's spelling (later ones have faiss::idx_t)

thread_local std::string ext_error;

int fail(const char *msg)
{
    ext_error = msg;
    return -1;
}

// Inverted lists over memory the caller owns (cairn_faiss_ext_ivfflat_borrow): the tier's slow
// tier, or a benchmark's lists, searched by FAISS without a copy. Read-only: every writer throws.
struct BorrowedLists : faiss::InvertedLists {
    std::vector<const fidx *> ids;
    std::vector<const uint8_t *> codes;
    std::vector<size_t> sizes;

    BorrowedLists(size_t nlist, size_t code_size) : faiss::InvertedLists(nlist, code_size) {}
    size_t list_size(size_t list_no) const override { return sizes.at(list_no); }
    const uint8_t *get_codes(size_t list_no) const override { return codes.at(list_no); }
    const fidx *get_ids(size_t list_no) const override { return ids.at(list_no); }
    size_t add_entries(size_t, size_t, const fidx *, const uint8_t *) override
    {
        throw std::runtime_error("borrowed inverted lists are read-only");
    }
    void update_entries(size_t, size_t, size_t, const fidx *, const uint8_t *) override
    {
        throw std::runtime_error("borrowed inverted lists are read-only");
    }
    void resize(size_t, size_t) override
    {
        throw std::runtime_error("borrowed inverted lists are read-only");
    }
};

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
        // ArrayInvertedLists hands out pointers into its vectors and BorrowedLists into the
        // caller's; release_codes is a no-op for both. Other (on-disk) list types would need
        // release, so refuse them.
        if (!dynamic_cast<const faiss::ArrayInvertedLists *>(p->invlists) &&
            !dynamic_cast<const BorrowedLists *>(p->invlists))
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

int cairn_faiss_ext_ivfflat_borrow(FaissIndex **out, int d, size_t nlist, const float *centroids,
                                   const idx_t *const *ids, const float *const *vecs,
                                   const size_t *n, int parallel_mode)
{
    faiss::IndexIVFFlat *index = nullptr;
    try {
        auto *q = new faiss::IndexFlatIP(d);
        index = new faiss::IndexIVFFlat(q, (size_t)d, nlist, faiss::METRIC_INNER_PRODUCT);
        index->own_fields = true; // from here on, deleting index deletes q
        q->add((fidx)nlist, centroids);
        auto *il = new BorrowedLists(nlist, index->code_size);
        index->replace_invlists(il, true);
        il->ids.resize(nlist);
        il->codes.resize(nlist);
        il->sizes.resize(nlist);
        fidx total = 0;
        for (size_t c = 0; c < nlist; c++) {
            il->ids[c] = reinterpret_cast<const fidx *>(ids[c]);
            il->codes[c] = reinterpret_cast<const uint8_t *>(vecs[c]);
            il->sizes[c] = n[c];
            total += (fidx)n[c];
        }
        index->ntotal = total;
        index->is_trained = true;
        index->parallel_mode = parallel_mode;
        *out = reinterpret_cast<FaissIndex *>(index);
        return 0;
    } catch (const std::exception &e) {
        delete index;
        return fail(e.what());
    } catch (...) {
        delete index;
        return fail("unknown C++ exception");
    }
}

int cairn_faiss_ext_ivf_search_preassigned(const FaissIndex *index, idx_t n, const float *x,
                                           idx_t k, const idx_t *assign, size_t nprobe,
                                           float *distances, idx_t *labels)
{
    try {
        auto *p = dynamic_cast<const faiss::IndexIVF *>(
            reinterpret_cast<const faiss::Index *>(index));
        if (!p)
            return fail("not an IVF index");
        faiss::SearchParametersIVF params;
        params.nprobe = nprobe;
        // Scores of the lists are not used by IndexIVFFlat's inner-product scanner.
        std::vector<float> coarse((size_t)n * nprobe, 0.0f);
        const fidx *as = reinterpret_cast<const fidx *>(assign);
        fidx *lab = reinterpret_cast<fidx *>(labels);
        // IndexIVF::search splits a batch over its threads itself when parallel_mode is 0
        // and search_preassigned then runs on one thread; called directly, a batch would run
        // on one thread. So split it here the way search does.
        int nt = omp_get_max_threads();
        if ((p->parallel_mode & ~1024) == 0 && n > 1 && nt > 1) {
            if (nt > n)
                nt = (int)n;
            std::string failed;
#pragma omp parallel for num_threads(nt)
            for (int s = 0; s < nt; s++) {
                idx_t i0 = n * s / nt, i1 = n * (s + 1) / nt;
                try {
                    p->search_preassigned(i1 - i0, x + i0 * p->d, k, as + i0 * nprobe,
                                          coarse.data() + i0 * nprobe, distances + i0 * k,
                                          lab + i0 * k, false, &params);
                } catch (const std::exception &e) {
#pragma omp critical
                    failed = e.what();
                }
            }
            if (!failed.empty())
                return fail(failed.c_str());
            return 0;
        }
        p->search_preassigned(n, x, k, as, coarse.data(), distances, lab, false, &params);
        return 0;
    } catch (const std::exception &e) {
        return fail(e.what());
    } catch (...) {
        return fail("unknown C++ exception");
    }
}

int cairn_faiss_ext_set_threads(int n)
{
    int was = omp_get_max_threads();
    if (n > 0)
        omp_set_num_threads(n);
    return was;
}

int cairn_faiss_ext_ivf_set_parallel_mode(FaissIndex *index, int mode)
{
    auto *p = dynamic_cast<faiss::IndexIVF *>(reinterpret_cast<faiss::Index *>(index));
    if (!p)
        return fail("not an IVF index");
    p->parallel_mode = mode;
    return 0;
}

} // extern "C"
