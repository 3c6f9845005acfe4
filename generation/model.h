/*
 * generation/model.h — decoder-only transformer architectures over GGUF weights.
 *
 * Supported: `gemma3` (embedding scaled by sqrt(d_model), pre/post attention and FFN RMSNorms,
 * per-head q/k RMSNorm, GELU-tanh gated MLP, interleaved sliding-window / global layers with
 * their two RoPE bases, tied output), `llama` (Llama 2/3.x: SiLU gated MLP, normal-layout RoPE)
 * and `qwen2` (as llama, plus q/k/v biases and NeoX-layout RoPE). The GGUF converter already
 * stores Gemma's RMSNorm weights as (1 + w), so every architecture multiplies by the stored
 * weight. The model holds what the file says; a workspace (cairn_model_ws_new) holds the weights
 * on a backend's device (generation/backend.h) and runs the forward pass there, stage by stage.
 *
 * One cairn_model_forward() runs a ragged batch: any mix of prefill chunks and decode tokens
 * of different sequences, each with its own positions and paged-KV blocks.
 */
#ifndef CAIRN_GENERATION_MODEL_H
#define CAIRN_GENERATION_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"
#include "generation/backend.h"
#include "generation/kv.h"
#include "proto/gguf.h"

typedef enum { CAIRN_ARCH_GEMMA3 = 1, CAIRN_ARCH_LLAMA, CAIRN_ARCH_QWEN2 } cairn_arch;

/* Hyperparameters, read from `<arch>.*` metadata and checked against the tensor shapes. */
typedef struct cairn_model_hparams {
    cairn_arch arch;
    const char *arch_name;
    int n_vocab;      /* rows of token_embd */
    int n_embd;       /* d_model */
    int n_layer;
    int n_head;
    int n_head_kv;
    int head_dim;     /* attention.key_length (default n_embd / n_head) */
    int head_dim_v;   /* attention.value_length (default head_dim) */
    int n_ff;
    int n_ctx_train;  /* context_length */
    float rms_eps;
    float rope_base;        /* rope.freq_base (global layers) */
    float rope_freq_scale;  /* 1 / rope.scaling.factor for linear scaling, else 1 */
    float rope_base_local;  /* gemma3 sliding-window layers: 10000 */
    bool rope_neox;
    float attn_scale;       /* multiplies q.k */
    int sliding_window;     /* 0 = none */
    const int *layer_window; /* n_layer entries: 0 = global layer, else the window */
} cairn_model_hparams;

typedef struct cairn_model cairn_model;

/*
 * Opens the GGUF at path and binds the architecture's tensors. Returns 0 and *out (close with
 * cairn_model_close), or: CAIRN_EIO / CAIRN_EFORMAT (unreadable or corrupt file, a tensor with
 * the wrong shape), CAIRN_EUNSUPPORTED (unknown architecture, a weight type without kernels),
 * CAIRN_ENOTFOUND (a required tensor or metadata key is missing), CAIRN_ERANGE (a
 * hyperparameter out of range). err names the key or tensor.
 */
int cairn_model_open(cairn_model **out, const char *path, cairn_error *err);
void cairn_model_close(cairn_model *m); /* NULL is a no-op */

/* The hyperparameters (owned by m) and the open GGUF (for the tokenizer; owned by m). */
const cairn_model_hparams *cairn_model_hparams_of(const cairn_model *m);
const cairn_gguf *cairn_model_gguf(const cairn_model *m);

/*
 * A ragged batch of n_tokens tokens. Token i belongs to KV sequence seq[i] at position pos[i].
 * Within a sequence the batch's tokens must continue it: positions len, len+1, ... in batch
 * order (len = cairn_kv_seq_len before the call). logits[i] != 0 asks for the next-token logits
 * after token i; logits NULL asks only for the batch's last token. prompt_len (optional) gives
 * each token its sequence's prompt length: the CPU backend rounds as llama.cpp would for the
 * batch llama.cpp would have run the token in, which follows from it (backend_cpu.c); NULL
 * treats every token as a decode step.
 */
typedef struct cairn_batch {
    int n_tokens;
    const int32_t *tokens;
    const int32_t *seq;
    const int32_t *pos;
    const uint8_t *logits;
    const int32_t *prompt_len;
    /* Per logits row (batch order), what of it the forward returns (backend.h's cairn_bpick:
     * the whole row, or its k first entries), through the backend's logits_pick; NULL: whole
     * rows into the forward's logits. Only for a backend with logits_pick. */
    const struct cairn_bpick *picks;
} cairn_batch;

/* A workspace: the model's weights loaded onto backend be (borrowed; must outlive it) and the
 * activations of forward passes of up to max_tokens tokens over sequences of up to max_ctx
 * positions. Sized once; a forward allocates nothing (but the block tables of a batch with more
 * sequences than any before). A weight type the backend cannot multiply fails here with
 * CAIRN_EUNSUPPORTED naming the tensor; device memory that runs out, with CAIRN_ENOMEM naming
 * the bytes. */
typedef struct cairn_model_ws cairn_model_ws;
int cairn_model_ws_new(cairn_model_ws **out, const cairn_model *m, cairn_backend *be,
                       int max_tokens, int max_ctx, cairn_error *err);
void cairn_model_ws_free(cairn_model_ws *ws); /* NULL is a no-op */

/*
 * A debugging hook, the counterpart of ggml's eval callback: when set, every forward on ws
 * calls fn after each stage with that stage's rows (n_rows rows of width floats, one per batch
 * token, copied to host memory; layer -1 for the embeddings). Stages: "embd", "attn_norm", "q"
 * (after norm, RoPE and scaling), "k", "v", "kqv_out", "attn_out", "sa_out", "ffn_norm",
 * "ffn_gate", "ffn_up", "ffn_act", "ffn_out", "l_out". It costs nothing when unset; fn NULL
 * unsets it. Returns 0 or CAIRN_ENOMEM (the host copy of a stage's rows).
 */
typedef void (*cairn_model_trace_fn)(void *ctx, int layer, const char *stage, const float *rows,
                                     int n_rows, int width);
int cairn_model_ws_set_trace(cairn_model_ws *ws, const cairn_model *m, cairn_model_trace_fn fn,
                             void *ctx, cairn_error *err);

/*
 * The KV cache layout a model needs (n_layers, per-layer windows, kv_dim) filled into p.
 */
void cairn_model_kv_params(const cairn_model *m, cairn_kv_params *p);

/*
 * Runs the batch: appends its tokens' K/V rows to their sequences in kv, and writes the
 * logits asked for into logits, n_vocab floats per requested token in batch order (the caller
 * sizes it). Returns 0, or CAIRN_EINVAL (bad token id, unknown sequence, positions that do
 * not continue their sequence, more tokens than the workspace), CAIRN_EBUSY (KV blocks
 * exhausted: no sequence was changed), CAIRN_ELIMIT (past the context), or a backend's error
 * (CAIRN_EDEVICE). Not thread-safe per kv/ws; kv's pools must be on ws's backend. The model
 * itself is read-only and may be shared by several engines.
 */
int cairn_model_forward(const cairn_model *m, cairn_model_ws *ws, cairn_kv *kv,
                        const cairn_batch *b, float *logits, cairn_error *err);

/*
 * Layer-level preemption (QLLM): a forward pass that may stop at a layer boundary and resume
 * later, keeping what it computed. Before every layer after the first one it runs in this call,
 * should_yield(ctx) is asked; when it returns non-zero the pass stops: the hidden states go to
 * x_save (n_tokens * n_embd floats of the caller's, in device memory of ws's backend: its
 * alloc), next_layer says where to resume, and the
 * K/V rows of the layers done stay in the cache (the batch's sequences are extended already:
 * nothing else may run them until the pass completes or they are truncated back). To resume,
 * call again with the same batch and first_layer = next_layer; the hidden states are read back
 * from x_save. Each call runs at least one layer.
 */
typedef struct {
    int (*should_yield)(void *ctx); /* may be NULL: never yield */
    void *ctx;
    float *x_save;   /* n_tokens * n_embd floats of device memory (the backend's alloc) */
    int first_layer; /* 0: a new pass; else resume at this layer */
    int next_layer;  /* out, when the pass yielded */
} cairn_model_yield;

#define CAIRN_MODEL_YIELDED 1

/* cairn_model_forward with yielding (y may be NULL). Returns 0 when the pass completed (logits
 * written), CAIRN_MODEL_YIELDED when it stopped at a layer boundary, or an error as above. */
int cairn_model_forward_ex(const cairn_model *m, cairn_model_ws *ws, cairn_kv *kv,
                           const cairn_batch *b, float *logits, cairn_model_yield *y,
                           cairn_error *err);

#endif
