/*
 * retrieval/embed_cuda.h — the embedder's forward pass on a GPU (internal to retrieval/).
 *
 * embed.c owns the model (GGUF, tokenizer, F32 weights on the host) and packs each batch as on
 * the CPU: sequences back to back, row t one token. This seam takes those weights once, at
 * open, and afterwards runs whole packed batches on the GPU. Built as cuda/embed_cuda.cu on
 * CUDA builds and as cuda/embed_cuda_none.c otherwise, where opening answers
 * CAIRN_EUNSUPPORTED, so embed.c needs no #ifdef.
 */
#ifndef CAIRN_RETRIEVAL_EMBED_CUDA_H
#define CAIRN_RETRIEVAL_EMBED_CUDA_H

#include <stdint.h>

#include "common/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One encoder layer's F32 weights on the host, [out x in] row-major as embed.c keeps them;
 * qkv_w is the fused [3H x H] projection (rows of W_q, W_k, W_v) with its [3H] bias. */
typedef struct {
    const float *qkv_w, *qkv_b, *o_w, *o_b, *ln1_g, *ln1_b;
    const float *up_w, *up_b, *down_w, *down_b, *ln2_g, *ln2_b;
} cairn__embed_cuda_layer;

/* What the GPU needs of the model and of the embedder's limits. Read only during open. */
typedef struct {
    int n_layer, H, n_head, FF, vocab, max_pos, n_types;
    float eps;
    int normalize;         /* L2-normalise the pooled vectors */
    const float *tok_emb;  /* [vocab x H] */
    const float *pos_emb;  /* [max_pos x H] */
    const float *type_emb; /* [n_types x H]; only type 0 is used */
    const float *emb_ln_g, *emb_ln_b;
    const cairn__embed_cuda_layer *layers; /* [n_layer] */
    int max_seq;                           /* tokens per sequence, at most */
    int max_batch;                         /* sequences per forward, at most */
    int max_tokens;                        /* tokens per forward, at most */
} cairn__embed_cuda_model;

typedef struct cairn__embed_cuda cairn__embed_cuda;

/*
 * Uploads the weights to GPU `device` and sizes every device and page-locked buffer for
 * max_batch sequences / max_tokens tokens; creates the stream and cuBLAS handle. Returns 0 and
 * *out, or CAIRN_EUNSUPPORTED (no CUDA in this build, no such GPU, a head size the attention
 * kernel does not take, more shared memory than the GPU has), CAIRN_ENOMEM (GPU or host
 * memory), CAIRN_EDEVICE (another CUDA or cuBLAS failure, the call named in err).
 */
int cairn__embed_cuda_open(cairn__embed_cuda **out, int device, const cairn__embed_cuda_model *m,
                           cairn_error *err);

/* Frees everything open made. NULL is a no-op. */
void cairn__embed_cuda_close(cairn__embed_cuda *g);

/*
 * Runs one packed batch: ids[ntok] token ids, sequence s at rows [start[s], start[s] + len[s])
 * (back to back from 0, 1 <= len[s] <= max_seq), nseq <= max_batch, ntok <= max_tokens. Writes
 * the pooled (and normalised) vectors to out[s * H .. (s + 1) * H). Blocks until they are on
 * the host. Returns 0 or CAIRN_EDEVICE with the failing call in err. Not thread-safe: embed.c
 * calls it under its lock; any thread may call it (the GPU is made current each time).
 */
int cairn__embed_cuda_forward(cairn__embed_cuda *g, const int32_t *ids, const int *start,
                              const int *len, int nseq, int ntok, float *out, cairn_error *err);

#ifdef __cplusplus
}
#endif
#endif
