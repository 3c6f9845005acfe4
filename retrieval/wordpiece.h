/*
 * retrieval/wordpiece.h — the BERT tokenizer: basic tokenization, then greedy WordPiece.
 *
 * What encode does to a text, in the order of HF tokenizers' BertNormalizer + BertPreTokenizer +
 * WordPiece (the reference our tests compare with, token for token):
 *  1. decode UTF-8; an invalid or truncated sequence becomes U+FFFD (one per bad byte);
 *  2. clean: drop NUL, U+FFFD and every "other" code point (categories Cc Cf Cs Co Cn) except
 *     tab/newline/CR; whitespace (Zs, tab, newline, CR, U+2028/9) separates words;
 *  3. CJK ideographs (the BERT ranges: U+4E00–9FFF, 3400–4DBF, 20000–2CEAF, F900–FAFF,
 *     2F800–2FA1F) become words of their own;
 *  4. with lowercase (uncased models): canonical decomposition (NFD), nonspacing marks (Mn)
 *     dropped, full Unicode lowercase — from tables generated out of the Unicode database
 *     (scripts/gen-wordpiece-tables: every script, Hangul syllables decomposed into jamo);
 *     without lowercase the text is left as it is (cased models);
 *  5. punctuation (category P* and the ASCII symbols) splits off as one-character words;
 *  6. each word: greedy longest-match-first WordPiece, continuations spelled "##piece"; a word
 *     with no full match, or longer than 100 characters, is one [UNK];
 *  7. [CLS] word pieces [SEP], the pieces truncated so that the whole fits max_len.
 * Encoding never allocates and stops reading the text once max_len is reached, so a huge text
 * costs only what its first words cost.
 *
 * Thread-safety: an open tokenizer is immutable; any number of threads may encode at once.
 */
#ifndef CAIRN_RETRIEVAL_WORDPIECE_H
#define CAIRN_RETRIEVAL_WORDPIECE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

typedef struct cairn_wordpiece cairn_wordpiece;
struct cairn_gguf;

#define CAIRN_WORDPIECE_MAX_WORD_CHARS 100 /* longer words become [UNK] (BERT's limit) */

typedef struct {
    bool lowercase; /* uncased model: NFD, drop marks, lowercase (BERT's strip_accents = None) */
    bool split_cjk; /* CJK ideographs are words of their own (BERT's tokenize_chinese_chars) */
} cairn_wordpiece_params;

/* lowercase true, split_cjk true (bert-base-uncased and all-MiniLM-L6-v2). */
cairn_wordpiece_params cairn_wordpiece_default_params(void);

/*
 * Builds a tokenizer over n vocabulary entries (tokens[i] of lens[i] bytes is id i); the strings
 * are copied. The vocabulary must hold [UNK], [CLS] and [SEP]. Returns 0 and *out (the caller
 * closes it), CAIRN_EFORMAT (missing special token, empty or duplicate entry), CAIRN_EINVAL or
 * CAIRN_ENOMEM.
 */
int cairn_wordpiece_open(cairn_wordpiece **out, const char *const *tokens, const size_t *lens,
                         size_t n, const cairn_wordpiece_params *p, cairn_error *err);

/*
 * The same from a GGUF file's metadata: the array tokenizer.ggml.tokens and the flags
 * tokenizer.cairn.lowercase / tokenizer.cairn.split_cjk (defaults: true). Returns as above, or
 * CAIRN_ENOTFOUND when the file has no vocabulary. The tokenizer does not refer to g afterwards.
 */
int cairn_wordpiece_open_gguf(cairn_wordpiece **out, const struct cairn_gguf *g, cairn_error *err);

/* Frees everything. NULL is a no-op. */
void cairn_wordpiece_close(cairn_wordpiece *wp);

/*
 * Encodes len bytes of text (need not be NUL-terminated, may hold anything) into
 * ids[0 .. n): [CLS] pieces [SEP] with n <= max_len. Returns n (>= 2), or CAIRN_EINVAL when
 * max_len < 2 or an argument is NULL. Thread-safe; allocates nothing.
 */
int cairn_wordpiece_encode(const cairn_wordpiece *wp, const char *text, size_t len, int32_t *ids,
                           int max_len);

/* Vocabulary size; the id of token s (len bytes) or -1; the text of id (NUL-terminated, owned
 * by wp) or NULL when out of range; the special ids. All thread-safe. */
size_t cairn_wordpiece_vocab_size(const cairn_wordpiece *wp);
int32_t cairn_wordpiece_find(const cairn_wordpiece *wp, const char *s, size_t len);
const char *cairn_wordpiece_token(const cairn_wordpiece *wp, int32_t id);
int32_t cairn_wordpiece_cls(const cairn_wordpiece *wp);
int32_t cairn_wordpiece_sep(const cairn_wordpiece *wp);
int32_t cairn_wordpiece_unk(const cairn_wordpiece *wp);
int32_t cairn_wordpiece_pad(const cairn_wordpiece *wp); /* [PAD], or 0 when absent */

#endif
