/*
 * retrieval/embed.h — text embedder: a BERT-family encoder over GGUF (all-MiniLM-L6-v2).
 *
 * text -> WordPiece ids ([CLS] ... [SEP], truncated to max_seq) -> token + position + type
 * embeddings, LayerNorm -> n_layer x (self-attention, add & LayerNorm, GELU(erf) FFN, add &
 * LayerNorm) (post-LN BERT, Devlin et al. 2019) -> mean over the sequence's tokens -> L2 norm.
 *
 * The model file is what scripts/convert-embedder writes (llama.cpp's BERT names; see that
 * script): general.architecture "bert", bert.* hyperparameters, tokenizer.ggml.tokens, tensors
 * token_embd / position_embd / token_types / token_embd_norm / blk.N.{attn_q,attn_k,attn_v,
 * attn_output,attn_output_norm,ffn_up,ffn_down,layer_output_norm}. F32 tensors are used in place
 * (mapped); any other type the GGUF reader can dequantize is converted to F32 at open.
 *
 * A batch is packed ragged — the sequences' tokens back to back, no padding rows — so the
 * projections (OpenBLAS sgemm) never compute on padding, and attention (split over the thread
 * pool by sequence x head) sees only each sequence's own tokens. All buffers are sized at open
 * for max_batch sequences / max_batch_tokens tokens; embedding allocates nothing.
 *
 * With device >= 0 the forward pass runs on that GPU instead (retrieval/cuda/embed_cuda.cu:
 * weights uploaded once at open, cuBLAS FP32 projections over the same packed batch, own
 * kernels for the rest); tokenization stays on the calling thread. The vectors agree with the
 * CPU's to rounding (tests/unit/test_cuda_embed.c bounds it).
 */
#ifndef CAIRN_RETRIEVAL_EMBED_H
#define CAIRN_RETRIEVAL_EMBED_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "retrieval/wordpiece.h"

typedef struct cairn_embed cairn_embed;

typedef struct {
    int n_threads;        /* threads for attention and element-wise work; 0 = CPUs online */
    int max_batch;        /* sequences per forward pass (larger calls are split); >= 1 */
    int max_batch_tokens; /* tokens per forward pass; raised to max_seq when smaller */
    int max_seq;          /* tokens per text incl. [CLS]/[SEP]; 0 = the model's
                             bert.max_seq_length (256 for all-MiniLM-L6-v2), else its
                             context length; never more than the context length */
    int simd;             /* 1: AVX2/FMA kernels when the CPU has them; 0: portable C only */
    int amx;              /* 1: linear layers in BF16 on AMX tiles (FP32 accumulation) where
                             the CPU and the kernel allow them, F32 sgemm elsewhere; 0: always
                             F32. BF16 vectors differ slightly from F32 ones (docs/BENCHMARKS.md
                             gives recall@10 against F32) */
    int blas_threads;     /* 1: each pool thread runs a single-threaded sgemm on its share of
                             the rows, and open sets OpenBLAS to one thread PROCESS-WIDE (FAISS
                             training then runs its sgemm on one thread too); 0: leave OpenBLAS
                             alone, sgemm parallelises inside it */
    int device;           /* -1: the CPU; N >= 0: CUDA GPU N (n_threads, simd, amx and
                             blas_threads are then unused). A build without CUDA, or no such
                             GPU, fails open with CAIRN_EUNSUPPORTED: fall back to -1 */
} cairn_embed_params;

/* n_threads 0, max_batch 32, max_batch_tokens 4096, max_seq 0, simd 1, amx 1, blas_threads 1,
 * device -1. */
cairn_embed_params cairn_embed_default_params(void);

/*
 * Opens the model at path (GGUF) and sizes every buffer. p may be NULL (defaults).
 * Returns 0 and *out (the caller closes it), or CAIRN_EIO / CAIRN_EFORMAT / CAIRN_ENOTFOUND
 * (missing key or tensor) / CAIRN_EUNSUPPORTED (another architecture, a tensor type that cannot
 * be dequantized; with device >= 0: no CUDA in this build, no such GPU, a head size the GPU
 * kernels do not take) / CAIRN_EINVAL (bad params) / CAIRN_ENOMEM (host or GPU memory) /
 * CAIRN_EDEVICE (a CUDA or cuBLAS call failed, named in err), with the detail in err.
 */
int cairn_embed_open(cairn_embed **out, const char *path, const cairn_embed_params *p,
                     cairn_error *err);

/* Whether the linear layers run in BF16 on AMX tiles (amx asked, and the CPU has it). */
int cairn_embed_amx(const cairn_embed *e);

/* Frees the model, buffers and threads. NULL is a no-op. Not while a batch is running. */
void cairn_embed_close(cairn_embed *e);

/* The GPU the forward pass runs on, or -1 for the CPU. */
int cairn_embed_device(const cairn_embed *e);

/* Threads a batch runs on (n_threads, or the CPUs online for 0; 1 on a GPU, the caller's). */
int cairn_embed_threads(const cairn_embed *e);

/* Embedding width (384 for all-MiniLM-L6-v2). */
int cairn_embed_dim(const cairn_embed *e);
/* Tokens a text is truncated to, [CLS] and [SEP] included. */
int cairn_embed_max_seq(const cairn_embed *e);
/* The model's tokenizer, owned by e (valid until close); thread-safe to use (wordpiece.h). */
const cairn_wordpiece *cairn_embed_tokenizer(const cairn_embed *e);

/*
 * Embeds n NUL-terminated texts into out[i * dim .. (i + 1) * dim), each vector L2-normalised
 * (an empty text embeds "[CLS] [SEP]"; a NULL entry counts as empty; invalid UTF-8 is replaced,
 * long texts truncated). Returns 0, or CAIRN_EINVAL (n < 0, texts or out NULL with n > 0), or on
 * a GPU CAIRN_EDEVICE (a CUDA or cuBLAS call failed; out is then undefined).
 * Calls on one embedder from several threads are serialised by an internal lock.
 */
int cairn_embed_batch(cairn_embed *e, const char *const *texts, int n, float *out,
                      cairn_error *err);

/*
 * The same for already-tokenized input: ids[i] holds lens[i] ids ([CLS]/[SEP] included, as
 * cairn_wordpiece_encode() makes them). Returns 0, CAIRN_EINVAL (bad arguments),
 * CAIRN_ERANGE (a length outside 1..max_seq or an id outside the vocabulary) or, on a GPU,
 * CAIRN_EDEVICE.
 */
int cairn_embed_tokens(cairn_embed *e, const int32_t *const *ids, const int *lens, int n,
                       float *out, cairn_error *err);

#endif
