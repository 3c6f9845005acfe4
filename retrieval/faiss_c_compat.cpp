// retrieval/faiss_c_compat.cpp — the subset of the FAISS C API that cairn calls, on the C++
// library (Debian ships the C API headers but not libfaiss_c; see faiss_c_compat.h).
//
// Names and signatures come from the shipped headers, which this file includes so that the
// compiler checks every definition against its declaration. Each entry point runs its body
// inside guard(): a C++ exception becomes a negative FaissErrorCode, and its message is kept
// per thread for faiss_get_last_error(). Handles are the C++ objects themselves, cast.
#include <exception>
#include <new>
#include <stdexcept>
#include <string>

#include <faiss/Index.h>
#include <faiss/IndexFlat.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/index_io.h>

extern "C" {
#include "retrieval/faiss_c_compat.h"
}

namespace {

thread_local std::string last_error;

template <typename F>
int guard(F &&body)
{
    try {
        body();
        return OK;
    } catch (const faiss::FaissException &e) {
        last_error = e.what();
        return FAISS_EXCEPT;
    } catch (const std::bad_alloc &e) {
        last_error = "out of memory";
        return STD_EXCEPT;
    } catch (const std::exception &e) {
        last_error = e.what();
        return STD_EXCEPT;
    } catch (...) {
        last_error = "unknown C++ exception";
        return UNKNOWN_EXCEPT;
    }
}

faiss::Index *ix(FaissIndex *p) { return reinterpret_cast<faiss::Index *>(p); }
const faiss::Index *ix(const FaissIndex *p) { return reinterpret_cast<const faiss::Index *>(p); }
const faiss::IndexIVF *ivf(const FaissIndexIVF *p)
{
    return reinterpret_cast<const faiss::IndexIVF *>(p);
}
faiss::IndexIVF *ivf(FaissIndexIVF *p) { return reinterpret_cast<faiss::IndexIVF *>(p); }

} // namespace

extern "C" {

const char *faiss_get_last_error() { return last_error.empty() ? nullptr : last_error.c_str(); }

// ---- Index ------------------------------------------------------------------------------------

void faiss_Index_free(FaissIndex *obj) { delete ix(obj); }
int faiss_Index_d(const FaissIndex *obj) { return static_cast<int>(ix(obj)->d); }
idx_t faiss_Index_ntotal(const FaissIndex *obj) { return ix(obj)->ntotal; }
int faiss_Index_is_trained(const FaissIndex *obj) { return ix(obj)->is_trained ? 1 : 0; }
FaissMetricType faiss_Index_metric_type(const FaissIndex *obj)
{
    return static_cast<FaissMetricType>(ix(obj)->metric_type);
}

int faiss_Index_train(FaissIndex *index, idx_t n, const float *x)
{
    return guard([&] { ix(index)->train(n, x); });
}

int faiss_Index_add_with_ids(FaissIndex *index, idx_t n, const float *x, const idx_t *xids)
{
    return guard([&] { ix(index)->add_with_ids(n, x, xids); });
}

int faiss_Index_search(const FaissIndex *index, idx_t n, const float *x, idx_t k,
                       float *distances, idx_t *labels)
{
    return guard([&] { ix(index)->search(n, x, k, distances, labels); });
}

int faiss_Index_remove_ids(FaissIndex *index, const FaissIDSelector *sel, size_t *n_removed)
{
    return guard([&] {
        size_t n = ix(index)->remove_ids(*reinterpret_cast<const faiss::IDSelector *>(sel));
        if (n_removed)
            *n_removed = n;
    });
}

// ---- IndexFlat / IndexFlatIP --------------------------------------------------------------------

int faiss_IndexFlatIP_new_with(FaissIndexFlatIP **p_index, idx_t d)
{
    return guard([&] {
        *p_index = reinterpret_cast<FaissIndexFlatIP *>(new faiss::IndexFlatIP(d));
    });
}

FaissIndexFlat *faiss_IndexFlat_cast(FaissIndex *index)
{
    return reinterpret_cast<FaissIndexFlat *>(dynamic_cast<faiss::IndexFlat *>(ix(index)));
}

void faiss_IndexFlat_xb(FaissIndexFlat *index, float **p_xb, size_t *p_size)
{
    auto *flat = reinterpret_cast<faiss::IndexFlat *>(index);
    // IndexFlat keeps its vectors as bytes (codes) of code_size = d * sizeof(float).
    if (p_xb)
        *p_xb = reinterpret_cast<float *>(flat->codes.data());
    if (p_size)
        *p_size = flat->codes.size() / sizeof(float);
}

// ---- IndexIVFFlat / IndexIVF --------------------------------------------------------------------

int faiss_IndexIVFFlat_new_with_metric(FaissIndexIVFFlat **p_index, FaissIndex *quantizer,
                                       size_t d, size_t nlist, FaissMetricType metric)
{
    return guard([&] {
        *p_index = reinterpret_cast<FaissIndexIVFFlat *>(new faiss::IndexIVFFlat(
            ix(quantizer), d, nlist, static_cast<faiss::MetricType>(metric)));
    });
}

FaissIndexIVF *faiss_IndexIVF_cast(FaissIndex *index)
{
    return reinterpret_cast<FaissIndexIVF *>(dynamic_cast<faiss::IndexIVF *>(ix(index)));
}

size_t faiss_IndexIVF_nlist(const FaissIndexIVF *obj) { return ivf(obj)->nlist; }
size_t faiss_IndexIVF_nprobe(const FaissIndexIVF *obj) { return ivf(obj)->nprobe; }
void faiss_IndexIVF_set_nprobe(FaissIndexIVF *obj, size_t val) { ivf(obj)->nprobe = val; }
FaissIndex *faiss_IndexIVF_quantizer(const FaissIndexIVF *obj)
{
    return reinterpret_cast<FaissIndex *>(ivf(obj)->quantizer);
}
void faiss_IndexIVF_set_own_fields(FaissIndexIVF *obj, int val) { ivf(obj)->own_fields = val != 0; }

size_t faiss_IndexIVF_get_list_size(const FaissIndexIVF *index, size_t list_no)
{
    const faiss::IndexIVF *p = ivf(index);
    return list_no < p->nlist ? p->get_list_size(list_no) : 0;
}

int faiss_IndexIVF_search_preassigned(const FaissIndexIVF *index, idx_t n, const float *x,
                                      idx_t k, const idx_t *assign, const float *centroid_dis,
                                      float *distances, idx_t *labels, int store_pairs)
{
    return guard([&] {
        ivf(index)->search_preassigned(n, x, k, assign, centroid_dis, distances, labels,
                                       store_pairs != 0);
    });
}

// ---- IDSelector ---------------------------------------------------------------------------------

int faiss_IDSelectorBatch_new(FaissIDSelectorBatch **p_sel, size_t n, const idx_t *indices)
{
    return guard([&] {
        *p_sel = reinterpret_cast<FaissIDSelectorBatch *>(new faiss::IDSelectorBatch(n, indices));
    });
}

void faiss_IDSelector_free(FaissIDSelector *obj)
{
    delete reinterpret_cast<faiss::IDSelector *>(obj);
}

// ---- I/O ----------------------------------------------------------------------------------------

int faiss_write_index(const FaissIndex *idx, FILE *f)
{
    return guard([&] { faiss::write_index(ix(idx), f); });
}

int faiss_read_index(FILE *f, int io_flags, FaissIndex **p_out)
{
    return guard([&] { *p_out = reinterpret_cast<FaissIndex *>(faiss::read_index(f, io_flags)); });
}

} // extern "C"
