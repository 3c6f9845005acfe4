/*
 * tests/unit/synth_bert.h — a BERT embedder GGUF with all-MiniLM-L6-v2's shapes (6 layers,
 * hidden 384, 12 heads, FFN 1536, 512 positions, 30,522 tokens) and seeded random weights, for
 * machines that lack the real model: the GPU machine, where the real file (90 MB of F32) is
 * more than a call carries. Same shapes, so the same work and timings; the vectors mean nothing,
 * which a GPU-against-CPU comparison does not need.
 *
 * The vocabulary: the specials, a-z, 0-9 and some punctuation, each also as a "##" piece, then
 * two- and three-letter words and three-letter "##" pieces; any lowercase ASCII word tokenizes
 * (into letters at worst).
 * Weights are uniform: embeddings in [-0.5, 0.5), Q and K in [-0.1, 0.1) (so that the scores
 * spread: softmax far from uniform), the other projections in [-0.05, 0.05), biases in
 * [-0.1, 0.1), LayerNorm gains 1 +- 0.1.
 * Header-only (static functions): include it in one file of each program.
 */
#ifndef CAIRN_TESTS_SYNTH_BERT_H
#define CAIRN_TESTS_SYNTH_BERT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/rand.h"
#include "proto/gguf.h"

enum { SYNTH_BERT_VOCAB = 30522, SYNTH_BERT_H = 384, SYNTH_BERT_FF = 1536, SYNTH_BERT_POS = 512 };

static int synth_bert_tensor(cairn_gguf_writer *w, const char *name, uint64_t in, uint64_t out,
                             float center, float scale, uint64_t *rng, cairn_error *err)
{
    uint64_t n = in * (out ? out : 1), dims[2] = {in, out};
    float *v = malloc(n * sizeof *v);
    if (!v) return cairn_errorf(err, CAIRN_ENOMEM, "synth bert: out of memory");
    for (uint64_t i = 0; i < n; i++)
        v[i] = center + scale * cairn_rand_sym(rng);
    int rc = cairn_gguf_writer_add_tensor_f32(w, name, CAIRN_GGUF_F32, out ? 2 : 1, dims, v, err);
    free(v);
    return rc;
}

/* Writes the model to path. Returns 0 or a CAIRN_E* code with err set. */
static int synth_bert_write(const char *path, uint64_t seed, cairn_error *err)
{
    cairn_gguf_writer *w = NULL;
    int rc = cairn_gguf_writer_new(&w, err);
    if (rc) return rc;
    const uint64_t H = SYNTH_BERT_H, FF = SYNTH_BERT_FF;
    char(*words)[8] = calloc(SYNTH_BERT_VOCAB, sizeof *words);
    const char **vocab = calloc(SYNTH_BERT_VOCAB, sizeof *vocab);
    if (!words || !vocab) {
        rc = cairn_errorf(err, CAIRN_ENOMEM, "synth bert: out of memory");
        goto out;
    }
    static const char *const special[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
    static const char chars[] = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;()";
    int n = 0;
    for (int i = 0; i < 5; i++)
        snprintf(words[n++], 8, "%s", special[i]);
    for (int piece = 0; piece < 2; piece++)
        for (const char *c = chars; *c; c++)
            snprintf(words[n++], 8, "%s%c", piece ? "##" : "", *c);
    for (int len = 2; len <= 3 && n < SYNTH_BERT_VOCAB; len++)
        for (int k = 0; k < (len == 2 ? 26 * 26 : 26 * 26 * 26) && n < SYNTH_BERT_VOCAB; k++) {
            char *s = words[n++];
            for (int j = 0, v = k; j < len; j++, v /= 26)
                s[len - 1 - j] = (char)('a' + v % 26);
        }
    for (int k = 0; n < SYNTH_BERT_VOCAB; k++) /* "##aaa".. fill the rest (12,173 of 17,576) */
        snprintf(words[n++], 8, "##%c%c%c", 'a' + k / 676 % 26, 'a' + k / 26 % 26, 'a' + k % 26);
    for (int i = 0; i < SYNTH_BERT_VOCAB; i++)
        vocab[i] = words[i];
    if ((rc = cairn_gguf_writer_add_str(w, "general.architecture", "bert", err)) ||
        (rc = cairn_gguf_writer_add_u32(w, "bert.block_count", 6, err)) ||
        (rc = cairn_gguf_writer_add_u32(w, "bert.embedding_length", (uint32_t)H, err)) ||
        (rc = cairn_gguf_writer_add_u32(w, "bert.attention.head_count", 12, err)) ||
        (rc = cairn_gguf_writer_add_u32(w, "bert.feed_forward_length", (uint32_t)FF, err)) ||
        (rc = cairn_gguf_writer_add_u32(w, "bert.context_length", SYNTH_BERT_POS, err)) ||
        (rc = cairn_gguf_writer_add_u32(w, "bert.max_seq_length", 256, err)) ||
        (rc = cairn_gguf_writer_add_u32(w, "bert.pooling_type", 1, err)) ||
        (rc = cairn_gguf_writer_add_bool(w, "bert.normalize", true, err)) ||
        (rc = cairn_gguf_writer_add_f32(w, "bert.attention.layer_norm_epsilon", 1e-12f, err)) ||
        (rc = cairn_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", vocab, SYNTH_BERT_VOCAB,
                                            err)))
        goto out;
    uint64_t rng = seed;
    if ((rc = synth_bert_tensor(w, "token_embd.weight", H, SYNTH_BERT_VOCAB, 0, 0.5f, &rng, err)) ||
        (rc =
             synth_bert_tensor(w, "position_embd.weight", H, SYNTH_BERT_POS, 0, 0.5f, &rng, err)) ||
        (rc = synth_bert_tensor(w, "token_types.weight", H, 2, 0, 0.5f, &rng, err)) ||
        (rc = synth_bert_tensor(w, "token_embd_norm.weight", H, 0, 1, 0.1f, &rng, err)) ||
        (rc = synth_bert_tensor(w, "token_embd_norm.bias", H, 0, 0, 0.1f, &rng, err)))
        goto out;
    static const struct {
        const char *name;
        int in_ff, out_ff, vec; /* widths: FF or H; vec: a 1-D tensor */
        float center, scale;
    } parts[] = {
        {"attn_q.weight", 0, 0, 0, 0, 0.1f},
        {"attn_q.bias", 0, 0, 1, 0, 0.1f},
        {"attn_k.weight", 0, 0, 0, 0, 0.1f},
        {"attn_k.bias", 0, 0, 1, 0, 0.1f},
        {"attn_v.weight", 0, 0, 0, 0, 0.05f},
        {"attn_v.bias", 0, 0, 1, 0, 0.1f},
        {"attn_output.weight", 0, 0, 0, 0, 0.05f},
        {"attn_output.bias", 0, 0, 1, 0, 0.1f},
        {"attn_output_norm.weight", 0, 0, 1, 1, 0.1f},
        {"attn_output_norm.bias", 0, 0, 1, 0, 0.1f},
        {"ffn_up.weight", 0, 1, 0, 0, 0.05f},
        {"ffn_up.bias", 1, 0, 1, 0, 0.1f},
        {"ffn_down.weight", 1, 0, 0, 0, 0.05f},
        {"ffn_down.bias", 0, 0, 1, 0, 0.1f},
        {"layer_output_norm.weight", 0, 0, 1, 1, 0.1f},
        {"layer_output_norm.bias", 0, 0, 1, 0, 0.1f},
    };
    char name[64];
    for (int l = 0; l < 6; l++)
        for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
            snprintf(name, sizeof name, "blk.%d.%s", l, parts[i].name);
            uint64_t in = parts[i].in_ff ? FF : H, out = parts[i].out_ff ? FF : H;
            if ((rc = synth_bert_tensor(w, name, in, parts[i].vec ? 0 : out, parts[i].center,
                                        parts[i].scale, &rng, err)))
                goto out;
        }
    rc = cairn_gguf_writer_write_file(w, path, err);
out:
    free(words);
    free(vocab);
    cairn_gguf_writer_free(w);
    return rc;
}

#endif
