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
 *  - ChatML (Qwen2): <|im_start|>{role}\n{content}<|im_end|>\n; roles system, user,
 *            assistant, tool.
 * add_generation_prompt appends the opening of an assistant turn. The BOS token is not
 * written: encode the result with CAIRN_TOK_ADD_SPECIAL | CAIRN_TOK_PARSE_SPECIAL.
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
} cairn_chat_family;

typedef struct cairn_chat_msg {
    const char *role;    /* NUL-terminated */
    const char *content; /* NUL-terminated; may be empty */
} cairn_chat_msg;

/* "gemma", "llama3", "chatml"; "?" for another value. */
const char *cairn_chat_family_name(cairn_chat_family f);

/* The family named name ("gemma", "llama3", "chatml"; "qwen2" = chatml). 0 or CAIRN_EINVAL. */
int cairn_chat_family_from_name(const char *name, cairn_chat_family *out, cairn_error *err);

/*
 * The family of model g: by tokenizer.chat_template when the file has one (which markers it
 * uses), else by general.architecture (gemma*, llama, qwen2*). Returns 0, or
 * CAIRN_EUNSUPPORTED naming the architecture when neither tells.
 */
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

#endif
