/*
 * retrieval/faiss_c_compat.h — the FAISS C API as cairn uses it.
 *
 * Debian's libfaiss-dev ships the C API headers (<faiss/c_api/...>) but not libfaiss_c.
 * retrieval/faiss_c_compat.cpp implements the subset of those functions that cairn calls,
 * with the very names and signatures of the shipped headers, on top of the C++ library.
 * Where a system libfaiss_c exists, CMake links it instead and leaves the compat file out,
 * so code that includes this header works with either.
 *
 * The subset: faiss_get_last_error; faiss_Index_{free,d,ntotal,is_trained,metric_type,train,
 * add_with_ids,search,remove_ids}; faiss_IndexFlatIP_new_with; faiss_IndexFlat_cast,
 * faiss_IndexFlat_xb; faiss_IndexIVFFlat_new_with_metric; faiss_IndexIVF_{cast,nlist,
 * nprobe,set_nprobe,quantizer,set_own_fields,get_list_size,search_preassigned};
 * faiss_IDSelectorBatch_new, faiss_IDSelector_free; faiss_write_index, faiss_read_index.
 *
 * Every function returns 0 or a negative FaissErrorCode; the message of the last failure
 * on the calling thread is faiss_get_last_error(). No C++ exception crosses into C.
 */
#ifndef CAIRN_RETRIEVAL_FAISS_C_COMPAT_H
#define CAIRN_RETRIEVAL_FAISS_C_COMPAT_H

#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/IndexIVFFlat_c.h>
#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/faiss_c.h>
#include <faiss/c_api/impl/AuxIndexStructures_c.h>
#include <faiss/c_api/index_io_c.h>

#endif
