/*
 * generation/tokenizer.h — LLM tokenizers built from GGUF metadata.
 *
 * Two algorithms, chosen by `tokenizer.ggml.model`:
 *  - "llama": SentencePiece-BPE (Gemma, Llama 2). Text is split into UTF-8 characters, spaces
 *    become U+2581, and adjacent symbols are merged highest-score-first while the merged text is
 *    a vocabulary entry; a symbol left outside the vocabulary falls back to <0xNN> byte tokens.
 *    A leading space is added only when `tokenizer.ggml.add_space_prefix` says so (Gemma: no).
 *  - "gpt2": byte-level BPE (Llama 3, Qwen2, SmolLM2). Text is pre-split by the rules of
 *    `tokenizer.ggml.pre` ("llama-bpe"/"llama3"/"llama-v3": digits in runs of up to 3;
 *    "qwen2": single digits; "smollm": every digit alone, then GPT-2's split with
 *    case-sensitive contractions), bytes are mapped to the GPT-2 byte↔unicode alphabet, and
 *    the `tokenizer.ggml.merges` pairs are applied lowest-rank-first.
 * The SentencePiece half lives in tokenizer_spm.c, the byte-level BPE half in tokenizer_bpe.c.
 * Both follow llama.cpp's behaviour token for token (tests/data/tokenizer holds its output):
 * user-defined tokens are always cut out of the text first (longest first); control tokens
 * such as <start_of_turn> only with CAIRN_TOK_PARSE_SPECIAL.
 *
 * Unicode classes for the pre-tokenizer (letter = category L*, number = N*) come from a table
 * generated from Python's unicodedata (scripts/gen-tokenizer-unicode); whitespace is the fixed
 * list of \s code points. Invalid UTF-8: SentencePiece encodes the raw bytes through byte
 * fallback (so it round-trips); byte-level BPE replaces each invalid byte by U+FFFD, as
 * llama.cpp does.
 *
 * Thread-safety: an open cairn_tok is immutable; any number of threads may encode and decode
 * with it at once. It copies what it needs from the GGUF, which may be closed afterwards.
 */
#ifndef CAIRN_GENERATION_TOKENIZER_H
#define CAIRN_GENERATION_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "proto/gguf.h"

typedef struct cairn_tok cairn_tok;

typedef enum cairn_tok_kind {
    CAIRN_TOK_SPM = 1, /* "llama": SentencePiece-BPE */
    CAIRN_TOK_BPE = 2, /* "gpt2": byte-level BPE */
} cairn_tok_kind;

/* Token types as stored in tokenizer.ggml.token_type (llama.cpp's llama_token_type). */
enum {
    CAIRN_TOK_TYPE_UNDEFINED = 0,
    CAIRN_TOK_TYPE_NORMAL = 1,
    CAIRN_TOK_TYPE_UNKNOWN = 2,
    CAIRN_TOK_TYPE_CONTROL = 3,
    CAIRN_TOK_TYPE_USER_DEFINED = 4,
    CAIRN_TOK_TYPE_UNUSED = 5,
    CAIRN_TOK_TYPE_BYTE = 6,
};

/* Encode flags. */
enum {
    /* Add the model's own leading/trailing special tokens: BOS when
     * tokenizer.ggml.add_bos_token is true (default true for both kinds here), EOS when
     * add_eos_token is true. (llama_tokenize's add_special.) */
    CAIRN_TOK_ADD_SPECIAL = 1 << 0,
    /* Recognise control tokens written in the text ("<start_of_turn>", "<|eot_id|>") as
     * themselves instead of spelling them out. (llama_tokenize's parse_special.) */
    CAIRN_TOK_PARSE_SPECIAL = 1 << 1,
};

/* Decode flags. */
enum {
    /* Render control/unknown tokens as their text; without it they decode to nothing. */
    CAIRN_TOK_DECODE_SPECIAL = 1 << 0,
};

/*
 * Builds the tokenizer from g's tokenizer.ggml.* metadata. Returns 0 and sets *out, or
 * CAIRN_ENOTFOUND (no tokens), CAIRN_EFORMAT (arrays of the wrong type or length, special ids
 * out of range), CAIRN_EUNSUPPORTED (a model or pre-tokenizer other than those above) or
 * CAIRN_ENOMEM. The caller owns *out and frees it with cairn_tok_close().
 */
int cairn_tok_open(cairn_tok **out, const cairn_gguf *g, cairn_error *err);
void cairn_tok_close(cairn_tok *t); /* NULL is a no-op */

/*
 * Encodes len bytes of text (need not be NUL-terminated or valid UTF-8) into out[0..cap).
 * Returns the number of tokens (>= 0); when cap is too small, the negative of the number
 * needed (nothing useful is in out), as llama_tokenize does; CAIRN_ENOMEM / CAIRN_EINVAL
 * (NULL arguments, len > INT32_MAX) are reported through err and returned as INT32_MIN so
 * they cannot be mistaken for a size. Thread-safe; allocates working memory per call.
 */
int cairn_tok_encode(const cairn_tok *t, const char *text, size_t len, int32_t *out, int cap,
                     int flags, cairn_error *err);
#define CAIRN_TOK_ENCODE_FAILED INT32_MIN

/*
 * The bytes token id decodes to, for streaming: sets *piece (owned by t, valid until close,
 * not NUL-terminated) and *len. Byte-fallback tokens give one raw byte, so a character may
 * arrive in several pieces (see cairn_tok_utf8_complete()). Control tokens give nothing
 * unless flags has CAIRN_TOK_DECODE_SPECIAL. Returns 0 or CAIRN_ERANGE (id out of range).
 * Allocates nothing; thread-safe.
 */
int cairn_tok_decode_piece(const cairn_tok *t, int32_t id, int flags, const char **piece,
                           size_t *len);

/*
 * Concatenates the pieces of ids[0..n) into buf (cap bytes) and NUL-terminates it. Returns 0
 * with *out_len = bytes written (without the NUL); CAIRN_ERANGE when buf is too small, with
 * *out_len = bytes needed (without the NUL); CAIRN_EINVAL for an id out of range.
 */
int cairn_tok_decode(const cairn_tok *t, const int32_t *ids, size_t n, int flags, char *buf,
                     size_t cap, size_t *out_len, cairn_error *err);

/* Length of the longest prefix of buf[0..len) that does not end inside an incomplete UTF-8
 * sequence (bytes after it may still become a character when more arrive). Thread-safe. */
size_t cairn_tok_utf8_complete(const char *buf, size_t len);

cairn_tok_kind cairn_tok_get_kind(const cairn_tok *t);
int32_t cairn_tok_vocab_size(const cairn_tok *t);
int32_t cairn_tok_bos(const cairn_tok *t); /* -1 when the model has none */
int32_t cairn_tok_eos(const cairn_tok *t); /* -1 when the model has none */
/* End-of-turn: tokenizer.ggml.eot_token_id, else a token named <end_of_turn>, <|eot_id|>,
 * <|im_end|>, ...; -1 when none. */
int32_t cairn_tok_eot(const cairn_tok *t);
/* True for tokens that end generation: EOS, EOT, EOM and the tokens llama.cpp names as such
 * (<end_of_turn>, <|im_end|>, <|endoftext|>, </s>, ...). Gemma 3: ids 1, 106, 212. */
bool cairn_tok_is_eog(const cairn_tok *t, int32_t id);
/* Type (CAIRN_TOK_TYPE_*) of id as the tokenizer treats it (tokens named like an end of turn,
 * e.g. Gemma's "</s>", count as CONTROL, as in llama.cpp), or -1 when out of range. */
int cairn_tok_type(const cairn_tok *t, int32_t id);
/* The vocabulary text of id (owned by t, NUL-terminated), NULL when out of range. */
const char *cairn_tok_text(const cairn_tok *t, int32_t id);
/* The id whose vocabulary text is exactly text[0..len), or -1. */
int32_t cairn_tok_find(const cairn_tok *t, const char *text, size_t len);

#endif
