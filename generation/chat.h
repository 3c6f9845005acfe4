/*
 * generation/chat.h — chat templates: a list of (role, content) messages to the prompt text a
 * model family was trained on.
 *
 *  - Gemma:  <start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n{content}...
 *            Roles user and assistant (written "model"; "model" is accepted too), alternating
 *            and starting with user. Gemma has no system role: a leading system message is
 *            prepended to the first user turn, followed by a blank line. Turn contents are
 *            trimmed of surrounding whitespace (the system text is not, as in the template).
 *  - Llama 3: <|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>; roles
 *            system, user, assistant, tool (ipython accepted). Contents are trimmed.
 *  - ChatML (Qwen2, SmolLM2): <|im_start|>{role}\n{content}<|im_end|>\n; roles system, user,
 *            assistant, tool. A template may open with a system turn of its own when the
 *            messages have none (SmolLM2: "You are a helpful AI assistant named SmolLM, ...");
 *            cairn_chat_template keeps that text as default_system.
 *  - Llama 2: [INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] ...
 *            (each user turn after the first opens with <s>); turns alternate user/assistant
 *            starting with user; contents are trimmed.
 *  - Mistral (v0.1 instruct): [INST] {user} [/INST]{assistant}</s>[INST] ...; a leading system
 *            message is prepended to the first user turn, followed by a blank line.
 *  - Phi-3:  <|{role}|>\n{content}<|end|>\n; roles system, user, assistant; without
 *            add_generation_prompt the template ends in <|endoftext|>.
 * add_generation_prompt appends the opening of an assistant turn (Llama 2 and Mistral have
 * none: their prompt ends in [/INST]). The BOS token is not written: encode the result with
 * CAIRN_TOK_ADD_SPECIAL | CAIRN_TOK_PARSE_SPECIAL.
 *
 * Families are recognised in tokenizer.chat_template (Jinja source) by their markers:
 * <start_of_turn> Gemma, <|start_header_id|> Llama 3, <|im_start|> ChatML, <|user|> with
 * <|assistant|> Phi-3, [INST] with <<SYS>> Llama 2, [INST] alone Mistral. No Jinja runs.
 *
 * All functions are pure and thread-safe.
 */
#ifndef CAIRN_GENERATION_CHAT_H
#define CAIRN_GENERATION_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include "common/error.h"
#include "proto/gguf.h"

typedef enum cairn_chat_family {
    CAIRN_CHAT_GEMMA = 1,
    CAIRN_CHAT_LLAMA3 = 2,
    CAIRN_CHAT_CHATML = 3,
    CAIRN_CHAT_LLAMA2 = 4,
    CAIRN_CHAT_MISTRAL = 5,
    CAIRN_CHAT_PHI3 = 6,
} cairn_chat_family;
#define CAIRN_CHAT_FAMILY_LAST CAIRN_CHAT_PHI3

/* A model's chat format: its family, and the system turn its template writes when the
 * messages open without one (empty when it writes none). */
#define CAIRN_CHAT_SYSTEM_MAX 1024
typedef struct cairn_chat_template {
    cairn_chat_family family;
    char default_system[CAIRN_CHAT_SYSTEM_MAX]; /* NUL-terminated */
} cairn_chat_template;

typedef struct cairn_chat_msg {
    const char *role;    /* NUL-terminated */
    const char *content; /* NUL-terminated; may be empty */
} cairn_chat_msg;

/* "gemma", "llama3", "chatml", "llama2", "mistral", "phi3"; "?" for another value. */
const char *cairn_chat_family_name(cairn_chat_family f);

/* The family named name (those above; "qwen2" and "smollm2" = chatml, "phi-3" = phi3).
 * 0 or CAIRN_EINVAL listing the names. */
int cairn_chat_family_from_name(const char *name, cairn_chat_family *out, cairn_error *err);

/*
 * Recognises the Jinja template text tmpl[0..len) (need not be NUL-terminated): its family by
 * the markers above, and for ChatML a constant system turn it writes
 * ("<|im_start|>system\n...<|im_end|>" with no expression inside) as default_system. Returns
 * 0, or CAIRN_EUNSUPPORTED when no family's markers are there (or the default system text is
 * longer than CAIRN_CHAT_SYSTEM_MAX - 1). Reads nothing past tmpl + len.
 */
int cairn_chat_template_parse(const char *tmpl, size_t len, cairn_chat_template *out,
                              cairn_error *err);

/*
 * The chat format of model g. With name (the config's model.chat_template) non-NULL and
 * non-empty: that family, no default system turn, whatever the file says. Else by
 * tokenizer.chat_template when the file has one: an unknown template is refused
 * (CAIRN_EUNSUPPORTED naming the model and quoting the template's start, and saying that
 * model.chat_template can name a family); without one, by general.architecture (gemma*, llama,
 * qwen2*), or CAIRN_EUNSUPPORTED naming the architecture. CAIRN_EINVAL for an unknown name.
 */
int cairn_chat_template_of(const cairn_gguf *g, const char *name, cairn_chat_template *out,
                           cairn_error *err);

/* cairn_chat_template_of(g, NULL, ...)'s family. */
int cairn_chat_detect(const cairn_gguf *g, cairn_chat_family *out, cairn_error *err);

/*
 * Renders msgs[0..n) into buf (cap bytes, NUL-terminated). Returns 0 with *out_len = length;
 * CAIRN_ERANGE when it does not fit, with *out_len = the length needed (without the NUL);
 * CAIRN_EINVAL for an unknown role, a NULL role or content, a system message the family
 * cannot place (Gemma: only first), Gemma turns that do not alternate user/assistant, or
 * n == 0 without add_generation_prompt. Partial output is not meaningful on error.
 */
int cairn_chat_render(cairn_chat_family f, const cairn_chat_msg *msgs, size_t n,
                      bool add_generation_prompt, char *buf, size_t cap, size_t *out_len,
                      cairn_error *err);

/* cairn_chat_render in t's family, with t's default system turn first when it has one and
 * msgs do not open with a system message. Same returns. */
int cairn_chat_render_template(const cairn_chat_template *t, const cairn_chat_msg *msgs,
                               size_t n, bool add_generation_prompt, char *buf, size_t cap,
                               size_t *out_len, cairn_error *err);

/* cairn_chat_render_template into a buffer of its own: the text (malloc'ed, NUL-terminated;
 * the caller frees) with *out_len its length (out_len may be NULL), or NULL with the code in
 * err (as cairn_chat_render_template, or CAIRN_ENOMEM). */
char *cairn_chat_render_alloc(const cairn_chat_template *t, const cairn_chat_msg *msgs, size_t n,
                              bool add_generation_prompt, size_t *out_len, cairn_error *err);

#endif
