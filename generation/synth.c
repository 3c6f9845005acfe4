/*
 * generation/synth.c — a model of a real architecture's shapes with random
 * weights, written with our GGUF writer (`cairn gguf-synth`, benchmarks and tests).
 *
 * What it is for: benchmarks and GPU tests that need a Llama-3-8B-sized file where the real one
 * cannot travel (the device machine takes 64 MiB per call), and tiny models of every supported
 * architecture for tests. The weights are random blocks (cairn_gguf_random_blocks), scaled so
 * that a product with unit-variance inputs has outputs of about unit variance; norm weights are
 * near 1. The text such a model generates is noise; its speed and memory traffic are a real
 * model's. Mixed files follow llama.cpp's Q4_K_M rule: Q6_K for the output projection and for
 * attn_v / ffn_down in the layers that rule favours, Q4_K elsewhere.
 */
#include "generation/synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rand.h"
#include "proto/gguf.h"

typedef struct {
    const char *name, *arch;
    int n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_ctx;
    float rope_base, eps;
    int window, pattern; /* gemma3 */
    int tied;
} shape;

static const shape shapes[] = {
    {"llama3-8b", "llama", 4096, 32, 32, 8, 128, 14336, 128256, 8192, 500000, 1e-5f, 0, 0, 0},
    {"qwen2-0.5b", "qwen2", 896, 24, 14, 2, 64, 4864, 151936, 32768, 1000000, 1e-6f, 0, 0, 1},
    {"gemma3-270m", "gemma3", 640, 18, 4, 1, 256, 2048, 262144, 32768, 1000000, 1e-6f, 512, 6,
     1},
    {"tiny-llama", "llama", 256, 2, 4, 2, 64, 512, 1024, 512, 10000, 1e-5f, 0, 0, 0},
    {"tiny-qwen2", "qwen2", 256, 2, 4, 2, 64, 512, 1024, 512, 10000, 1e-6f, 0, 0, 1},
    {"tiny-gemma3", "gemma3", 256, 3, 4, 1, 64, 512, 1024, 512, 10000, 1e-6f, 8, 2, 1},
};

static const struct {
    const char *name;
    uint32_t type;
} types[] = {
    {"q4_k_m", CAIRN_GGUF_Q4_K}, {"q8_0", CAIRN_GGUF_Q8_0}, {"bf16", CAIRN_GGUF_BF16},
    {"f16", CAIRN_GGUF_F16},     {"f32", CAIRN_GGUF_F32},   {"q4_0", CAIRN_GGUF_Q4_0},
    {"q4_1", CAIRN_GGUF_Q4_1},   {"q5_0", CAIRN_GGUF_Q5_0}, {"q4_k", CAIRN_GGUF_Q4_K},
    {"q6_k", CAIRN_GGUF_Q6_K},
};

/* llama.cpp's Q4_K_M gives attn_v and ffn_down more bits in the first and last eighth of the
 * layers and every third layer between (its use_more_bits rule). */
static int more_bits(int l, int n)
{
    return l < n / 8 || l >= 7 * n / 8 || (l - n / 8) % 3 == 2;
}

static int add_mat(cairn_gguf_writer *w, const char *name, uint32_t type, int64_t rows,
                   int64_t cols, uint64_t *rng, cairn_error *err)
{
    /* Rows too short for the type's blocks fall back to F16 (as converters do). */
    uint32_t bs = cairn_gguf_type_block_size(type);
    if (cols % bs)
        type = CAIRN_GGUF_F16;
    uint64_t n = (uint64_t)rows * (uint64_t)cols, bytes;
    int rc = cairn_gguf_tensor_nbytes(type, n, &bytes, err);
    if (rc)
        return rc;
    void *buf = malloc(bytes);
    if (!buf)
        return cairn_errorf(err, CAIRN_ENOMEM, "%s: out of memory for %llu bytes", name,
                            (unsigned long long)bytes);
    uint64_t dims[2] = {(uint64_t)cols, (uint64_t)rows};
    rc = cairn_gguf_random_blocks(type, n, sqrtf(3.0f / (float)cols), rng, buf, bytes, err);
    if (!rc)
        rc = cairn_gguf_writer_add_tensor(w, name, type, 2, dims, buf, bytes, err);
    free(buf);
    return rc;
}

static int add_vec(cairn_gguf_writer *w, const char *name, int n, float base, float noise,
                   uint64_t *rng, cairn_error *err)
{
    float *v = malloc(sizeof(float) * (size_t)n);
    if (!v)
        return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++)
        v[i] = base + noise * cairn_rand_sym(rng);
    uint64_t dims[1] = {(uint64_t)n};
    int rc = cairn_gguf_writer_add_tensor(w, name, CAIRN_GGUF_F32, 1, dims, v,
                                          sizeof(float) * (size_t)n, err);
    free(v);
    return rc;
}
/*
 * A byte-level BPE tokenizer with no merges (tokenizer.ggml.model gpt2, pre-tokenizer
 * llama-bpe): the 256 bytes in GPT-2's byte-to-character map, then fillers up to the shape's
 * vocabulary, the last two BOS and EOS. Every byte of a text is one token, so servers and
 * benchmarks that take text (the workers, `cairn bench colocate`) run on a synthetic model
 * with prompts of the lengths they ask for; the text it generates stays noise.
 */
static int add_tokenizer(cairn_gguf_writer *w, const shape *s, cairn_error *err)
{
    const int n = s->n_vocab;
    char **toks = calloc((size_t)n, sizeof *toks);
    char *text = malloc((size_t)n * 24);
    int rc = toks && text ? 0 : cairn_errorf(err, CAIRN_ENOMEM, "synth: out of memory");
    for (int i = 0, next = 256; !rc && i < n; i++) {
        char *t = toks[i] = text + (size_t)i * 24;
        if (i < 256) {
            /* GPT-2's map: printable bytes stand for themselves, the others for 256 + k. */
            int printable = (i >= 33 && i <= 126) || (i >= 161 && i <= 172) || i >= 174;
            int cp = printable ? i : next++;
            if (cp < 0x80) snprintf(t, 24, "%c", cp);
            else snprintf(t, 24, "%c%c", 0xc0 | (cp >> 6), 0x80 | (cp & 0x3f));
        } else if (i == n - 2) {
            snprintf(t, 24, "<|bos|>");
        } else if (i == n - 1) {
            snprintf(t, 24, "<|eos|>");
        } else {
            snprintf(t, 24, "<synth_%d>", i);
        }
    }
    if (!rc) rc = cairn_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2", err);
    if (!rc) rc = cairn_gguf_writer_add_str(w, "tokenizer.ggml.pre", "llama-bpe", err);
    if (!rc)
        rc = cairn_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)toks,
                                           (uint64_t)n, err);
    if (!rc) rc = cairn_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", NULL, 0, err);
    if (!rc)
        rc = cairn_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)n - 2, err);
    if (!rc)
        rc = cairn_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)n - 1, err);
    free(toks);
    free(text);
    return rc;
}

static int build(cairn_gguf_writer *w, const shape *s, int n_layer, uint32_t base_type,
                 bool mixed, uint64_t *rng, cairn_error *err)
{
    char key[128];
#define KEY(k) (snprintf(key, sizeof key, "%s.%s", s->arch, k), key)
    int rc;
    if ((rc = cairn_gguf_writer_add_str(w, "general.architecture", s->arch, err)) ||
        (rc = cairn_gguf_writer_add_str(w, "general.name", s->name, err)) ||
        (rc = cairn_gguf_writer_add_u32(w, KEY("embedding_length"), (uint32_t)s->n_embd, err)) ||
        (rc = cairn_gguf_writer_add_u32(w, KEY("block_count"), (uint32_t)n_layer, err)) ||
        (rc = cairn_gguf_writer_add_u32(w, KEY("attention.head_count"), (uint32_t)s->n_head,
                                        err)) ||
        (rc = cairn_gguf_writer_add_u32(w, KEY("attention.head_count_kv"),
                                        (uint32_t)s->n_head_kv, err)) ||
        (rc = cairn_gguf_writer_add_u32(w, KEY("attention.key_length"), (uint32_t)s->head_dim,
                                        err)) ||
        (rc = cairn_gguf_writer_add_u32(w, KEY("attention.value_length"),
                                        (uint32_t)s->head_dim, err)) ||
        (rc = cairn_gguf_writer_add_u32(w, KEY("feed_forward_length"), (uint32_t)s->n_ff,
                                        err)) ||
        (rc = cairn_gguf_writer_add_u32(w, KEY("context_length"), (uint32_t)s->n_ctx, err)) ||
        (rc = cairn_gguf_writer_add_f32(w, KEY("rope.freq_base"), s->rope_base, err)) ||
        (rc = cairn_gguf_writer_add_f32(w, KEY("attention.layer_norm_rms_epsilon"), s->eps,
                                        err)))
        return rc;
    if (s->window &&
        ((rc = cairn_gguf_writer_add_u32(w, KEY("attention.sliding_window"),
                                         (uint32_t)s->window, err)) ||
         (rc = cairn_gguf_writer_add_u32(w, KEY("attention.sliding_window_pattern"),
                                         (uint32_t)s->pattern, err))))
        return rc;
#undef KEY
    if ((rc = add_tokenizer(w, s, err))) return rc;
    const uint32_t hi = mixed ? CAIRN_GGUF_Q6_K : base_type;
    const int d = s->n_embd, qd = s->n_head * s->head_dim, kd = s->n_head_kv * s->head_dim;
    if ((rc = add_mat(w, "token_embd.weight", base_type, s->n_vocab, d, rng, err)) ||
        (rc = add_vec(w, "output_norm.weight", d, 1.0f, 0.05f, rng, err)) ||
        (!s->tied && (rc = add_mat(w, "output.weight", hi, s->n_vocab, d, rng, err))))
        return rc;
    for (int l = 0; l < n_layer; l++) {
        char nm[96];
#define N(x) (snprintf(nm, sizeof nm, "blk.%d.%s", l, x), nm)
        uint32_t vt = mixed && more_bits(l, n_layer) ? hi : base_type;
        if ((rc = add_vec(w, N("attn_norm.weight"), d, 1.0f, 0.05f, rng, err)) ||
            (rc = add_vec(w, N("ffn_norm.weight"), d, 1.0f, 0.05f, rng, err)) ||
            (rc = add_mat(w, N("attn_q.weight"), base_type, qd, d, rng, err)) ||
            (rc = add_mat(w, N("attn_k.weight"), base_type, kd, d, rng, err)) ||
            (rc = add_mat(w, N("attn_v.weight"), vt, kd, d, rng, err)) ||
            (rc = add_mat(w, N("attn_output.weight"), base_type, d, qd, rng, err)) ||
            (rc = add_mat(w, N("ffn_gate.weight"), base_type, s->n_ff, d, rng, err)) ||
            (rc = add_mat(w, N("ffn_up.weight"), base_type, s->n_ff, d, rng, err)) ||
            (rc = add_mat(w, N("ffn_down.weight"), vt, d, s->n_ff, rng, err)))
            return rc;
        if (!strcmp(s->arch, "gemma3") &&
            ((rc = add_vec(w, N("attn_q_norm.weight"), s->head_dim, 1.0f, 0.05f, rng, err)) ||
             (rc = add_vec(w, N("attn_k_norm.weight"), s->head_dim, 1.0f, 0.05f, rng, err)) ||
             (rc = add_vec(w, N("post_attention_norm.weight"), d, 1.0f, 0.05f, rng, err)) ||
             (rc = add_vec(w, N("post_ffw_norm.weight"), d, 1.0f, 0.05f, rng, err))))
            return rc;
        if (!strcmp(s->arch, "qwen2") &&
            ((rc = add_vec(w, N("attn_q.bias"), qd, 0.0f, 0.1f, rng, err)) ||
             (rc = add_vec(w, N("attn_k.bias"), kd, 0.0f, 0.1f, rng, err)) ||
             (rc = add_vec(w, N("attn_v.bias"), kd, 0.0f, 0.1f, rng, err))))
            return rc;
#undef N
    }
    return 0;
}

int cairn_synth_write(const char *path, const char *shape_name, const char *type_name,
                      int layers, uint64_t seed, cairn_error *err)
{
    const shape *s = NULL;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        if (!strcmp(shapes[i].name, shape_name))
            s = &shapes[i];
    if (!s)
        return cairn_errorf(err, CAIRN_EINVAL, "synth: unknown shape '%s' (%s)", shape_name,
                            CAIRN_SYNTH_SHAPES);
    uint32_t type = UINT32_MAX;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(types[i].name, type_name))
            type = types[i].type;
    if (type == UINT32_MAX)
        return cairn_errorf(err, CAIRN_EINVAL, "synth: unknown type '%s' (%s)", type_name,
                            CAIRN_SYNTH_TYPES);
    if (layers < 0)
        return cairn_errorf(err, CAIRN_EINVAL, "synth: %d layers", layers);
    int n_layer = layers && layers < s->n_layer ? layers : s->n_layer;
    cairn_gguf_writer *w = NULL;
    uint64_t rng = seed;
    int rc = cairn_gguf_writer_new(&w, err);
    if (!rc)
        rc = build(w, s, n_layer, type, !strcmp(type_name, "q4_k_m"), &rng, err);
    if (!rc)
        rc = cairn_gguf_writer_write_file(w, path, err);
    cairn_gguf_writer_free(w);
    return rc;
}
