/*
 * generation/kv.h — the paged KV cache.
 *
 * Keys and values (F16) live in fixed-size blocks of block_tokens token rows. Each sequence
 * has a block table per *layer group*: layers with the same attention window share one table
 * and one pool of blocks, and a block id holds the rows of every layer of its group. Gemma 3,
 * for instance, has a group of full-attention layers and a group of sliding-window layers.
 *
 * - Full-attention groups keep every position. Sliding-window groups (window W) keep only what
 *   a future query can see: appending tokens from position L on frees the blocks that lie
 *   wholly before L - W + 1 (their table entries become -1).
 * - Blocks are reference-counted, so sequences can share a common prefix: cairn_kv_seq_fork()
 *   copies a block table (no data) and bumps the counts; appending to a shared, partly filled
 *   last block first copies it (copy-on-write). Freeing a sequence drops its references.
 * - Admission, preemption and freeing move no data: a sequence is a list of block ids.
 * - The pools are device memory of the backend given in the params (generation/backend.h): GPU
 *   memory on a CUDA engine. This module only keeps the tables; the forward pass reads and
 *   writes rows through the backend's stages, handed the layout (cairn_kv_layout) and the
 *   step's tables (cairn_kv_seq_table). Copy-on-write copies pages with the backend's copy.
 *
 * Thread-safety: none; one owner (the engine) calls it, and forward passes read/write rows of
 * distinct (sequence, position) pairs in parallel between calls.
 */
#ifndef CAIRN_GENERATION_KV_H
#define CAIRN_GENERATION_KV_H

#include <stdint.h>

#include "common/error.h"
#include "generation/backend.h"

#define CAIRN_KV_MAX_GROUPS CAIRN_BACKEND_MAX_GROUPS

typedef struct cairn_kv cairn_kv;

typedef struct {
    int n_layers;
    const int *layer_window; /* n_layers entries: 0 = full attention, W > 0 = window of W
                                positions (query p sees keys p-W+1 .. p); NULL = all full */
    int kv_dim;              /* F16 values per token row: n_kv_heads * head_dim */
    int block_tokens;        /* token rows per block (16) */
    int n_blocks;            /* blocks in each full-attention group's pool */
    int n_blocks_window;     /* blocks in each sliding-window group's pool (0 = n_blocks) */
    int max_seqs;            /* sequences that may exist at once */
    int max_seq_tokens;      /* longest sequence (the context length) */
    cairn_backend *backend;  /* where the pools live (borrowed; must outlive the cache);
                                NULL = host memory */
} cairn_kv_params;

/* block_tokens 16, n_blocks 256, n_blocks_window 0, max_seqs 64, max_seq_tokens 4096; the
 * caller sets n_layers, layer_window and kv_dim. */
cairn_kv_params cairn_kv_default_params(void);

/* Allocates the pools. Returns 0 and *out (close with cairn_kv_close), CAIRN_EINVAL or
 * CAIRN_ENOMEM / CAIRN_EOVERFLOW. */
int cairn_kv_open(cairn_kv **out, const cairn_kv_params *p, cairn_error *err);
void cairn_kv_close(cairn_kv *kv); /* NULL is a no-op */

/* A new, empty sequence id in *seq. CAIRN_EBUSY when max_seqs already exist. */
int cairn_kv_seq_new(cairn_kv *kv, int *seq, cairn_error *err);

/*
 * A new sequence that shares the first n_tokens positions of src (no copying). Returns 0,
 * CAIRN_EINVAL (bad src or n_tokens > its length), CAIRN_EBUSY (no free sequence id) or
 * CAIRN_ESTATE (src's window layers already freed rows that position n_tokens would need).
 */
int cairn_kv_seq_fork(cairn_kv *kv, int src, int n_tokens, int *dst, cairn_error *err);

/* Drops seq's block references and frees its id. An unknown id is a no-op. */
void cairn_kv_seq_free(cairn_kv *kv, int seq);

/* Positions stored for seq (the next position to append), or -1 for an unknown id. */
int cairn_kv_seq_len(const cairn_kv *kv, int seq);

/*
 * Makes room for n positions after the current end (len .. len+n-1) and advances the length:
 * frees window blocks that no query from `len` on can see, copies a shared last block, takes
 * new blocks. All or nothing: CAIRN_EBUSY (pool exhausted; nothing changed, the message names
 * the group) or CAIRN_ELIMIT (past max_seq_tokens) or CAIRN_EINVAL (unknown seq).
 */
int cairn_kv_append(cairn_kv *kv, int seq, int n, cairn_error *err);

/*
 * Shortens seq to n positions (n <= len), releasing the blocks past the end. Used to roll
 * back an append. CAIRN_EINVAL for an unknown seq or n out of range.
 */
int cairn_kv_truncate(cairn_kv *kv, int seq, int n, cairn_error *err);

/* The K / V row of (layer, seq, pos); pos must be < len and in a live block. A device
 * address: host memory only when the pools are (no backend, or the CPU backend). */
uint16_t *cairn_kv_k_row(cairn_kv *kv, int layer, int seq, int pos);
uint16_t *cairn_kv_v_row(cairn_kv *kv, int layer, int seq, int pos);

/* Where the pools are and how a block is laid out, for the backend's stages (owned by kv,
 * valid until close). */
void cairn_kv_layout(const cairn_kv *kv, cairn_bkv *out);

/* Block-table entries per sequence and group: ceil(max_seq_tokens / block_tokens). */
int cairn_kv_max_table(const cairn_kv *kv);

/* Introspection (tests, metrics): groups, a layer's group, free blocks in a group's pool,
 * a block's reference count, a sequence's table in a group (entries, -1 = freed). */
int cairn_kv_n_groups(const cairn_kv *kv);
int cairn_kv_layer_group(const cairn_kv *kv, int layer);
int cairn_kv_group_window(const cairn_kv *kv, int group);
int cairn_kv_free_blocks(const cairn_kv *kv, int group);
int cairn_kv_block_refs(const cairn_kv *kv, int group, int block);
int cairn_kv_seq_table(const cairn_kv *kv, int seq, int group, const int32_t **table);

#endif
