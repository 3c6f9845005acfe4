/*
 * generation/chat.c — chat templates for Gemma, Llama 3 and ChatML (Qwen2).
 *
 * The formats are those of the models' own Jinja templates (tokenizer_config.json of
 * google/gemma-3-*-it, meta-llama/Llama-3.*-Instruct, Qwen/Qwen2*-Instruct) without the BOS
 * token, which the tokenizer adds.
 */
#include "generation/chat.h"

#include <string.h>

const char *cairn_chat_family_name(cairn_chat_family f)
{
    switch (f) {
    case CAIRN_CHAT_GEMMA:
        return "gemma";
    case CAIRN_CHAT_LLAMA3:
        return "llama3";
    case CAIRN_CHAT_CHATML:
        return "chatml";
    }
    return "?";
}

int cairn_chat_family_from_name(const char *name, cairn_chat_family *out, cairn_error *err)
{
    if (name && strcmp(name, "gemma") == 0) {
        *out = CAIRN_CHAT_GEMMA;
    } else if (name && strcmp(name, "llama3") == 0) {
        *out = CAIRN_CHAT_LLAMA3;
    } else if (name && (strcmp(name, "chatml") == 0 || strcmp(name, "qwen2") == 0)) {
        *out = CAIRN_CHAT_CHATML;
    } else {
        return cairn_errorf(err, CAIRN_EINVAL,
                            "chat template '%s' is not known (gemma, llama3, chatml)",
                            name ? name : "(null)");
    }
    return 0;
}

int cairn_chat_detect(const cairn_gguf *g, cairn_chat_family *out, cairn_error *err)
{
    const char *tmpl = NULL;
    if (cairn_gguf_get_str(g, "tokenizer.chat_template", &tmpl, NULL, NULL) == 0) {
        if (strstr(tmpl, "<start_of_turn>")) {
            *out = CAIRN_CHAT_GEMMA;
            return 0;
        }
        if (strstr(tmpl, "<|start_header_id|>")) {
            *out = CAIRN_CHAT_LLAMA3;
            return 0;
        }
        if (strstr(tmpl, "<|im_start|>")) {
            *out = CAIRN_CHAT_CHATML;
            return 0;
        }
    }
    const char *arch = NULL;
    int rc = cairn_gguf_get_str(g, "general.architecture", &arch, NULL, err);
    if (rc < 0) {
        return rc;
    }
    if (strncmp(arch, "gemma", 5) == 0) {
        *out = CAIRN_CHAT_GEMMA;
    } else if (strcmp(arch, "llama") == 0) {
        *out = CAIRN_CHAT_LLAMA3;
    } else if (strncmp(arch, "qwen2", 5) == 0) {
        *out = CAIRN_CHAT_CHATML;
    } else {
        return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                            "no chat template known for architecture '%s' (and none in the file)",
                            arch);
    }
    return 0;
}

/* ---- Rendering ---- */

typedef struct {
    char *buf;
    size_t cap, len;
} sink;

static void put(sink *s, const char *p, size_t n)
{
    if (s->len + n < s->cap) {
        memcpy(s->buf + s->len, p, n);
    }
    s->len += n;
}

static void puts_(sink *s, const char *p)
{
    put(s, p, strlen(p));
}

/* Content without leading and trailing whitespace (Jinja's |trim). */
static void put_trimmed(sink *s, const char *p)
{
    size_t n = strlen(p);
    while (n && strchr(" \t\n\r\f\v", p[n - 1])) {
        n--;
    }
    while (n && strchr(" \t\n\r\f\v", *p)) {
        p++, n--;
    }
    put(s, p, n);
}

static bool is(const char *a, const char *b)
{
    return strcmp(a, b) == 0;
}

int cairn_chat_render(cairn_chat_family f, const cairn_chat_msg *msgs, size_t n,
                      bool add_generation_prompt, char *buf, size_t cap, size_t *out_len,
                      cairn_error *err)
{
    if (n > 0 && !msgs) {
        return cairn_errorf(err, CAIRN_EINVAL, "chat: NULL messages");
    }
    if (n == 0 && !add_generation_prompt) {
        return cairn_errorf(err, CAIRN_EINVAL, "chat: no messages");
    }
    for (size_t i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].content) {
            return cairn_errorf(err, CAIRN_EINVAL, "messages[%zu]: NULL role or content", i);
        }
        const char *r = msgs[i].role;
        bool ok;
        switch (f) {
        case CAIRN_CHAT_GEMMA:
            ok = is(r, "user") || is(r, "assistant") || is(r, "model") ||
                 (is(r, "system") && i == 0);
            if (!ok && is(r, "system")) {
                return cairn_errorf(err, CAIRN_EINVAL,
                                    "messages[%zu]: Gemma takes a system message only first", i);
            }
            break;
        case CAIRN_CHAT_LLAMA3:
            ok = is(r, "system") || is(r, "user") || is(r, "assistant") || is(r, "tool") ||
                 is(r, "ipython");
            break;
        case CAIRN_CHAT_CHATML:
            ok = is(r, "system") || is(r, "user") || is(r, "assistant") || is(r, "tool");
            break;
        default:
            return cairn_errorf(err, CAIRN_EINVAL, "chat: unknown template family %d", (int)f);
        }
        if (!ok) {
            return cairn_errorf(err, CAIRN_EINVAL, "messages[%zu]: role '%s' is not valid for %s",
                                i, r, cairn_chat_family_name(f));
        }
    }

    sink s = {buf, buf ? cap : 0, 0};
    size_t i = 0;
    switch (f) {
    case CAIRN_CHAT_GEMMA: {
        /* As the Gemma 3 template: the system text plus a blank line opens the first turn,
         * which must be the user's; turns then alternate user / model. A lone system message
         * (which the template would drop) becomes the user turn. */
        const char *system = NULL;
        if (n > 0 && is(msgs[0].role, "system")) {
            system = msgs[0].content;
            i = 1;
        }
        if (system && i == n) {
            puts_(&s, "<start_of_turn>user\n");
            put_trimmed(&s, system);
            puts_(&s, "<end_of_turn>\n");
        }
        for (size_t k = 0; i < n; i++, k++) {
            bool user = is(msgs[i].role, "user");
            if (user != (k % 2 == 0)) {
                return cairn_errorf(err, CAIRN_EINVAL,
                                    "messages[%zu]: Gemma turns must alternate user/assistant, "
                                    "starting with user (got '%s')",
                                    i, msgs[i].role);
            }
            puts_(&s, user ? "<start_of_turn>user\n" : "<start_of_turn>model\n");
            if (k == 0 && system) {
                puts_(&s, system);
                puts_(&s, "\n\n");
            }
            put_trimmed(&s, msgs[i].content);
            puts_(&s, "<end_of_turn>\n");
        }
        if (add_generation_prompt) {
            puts_(&s, "<start_of_turn>model\n");
        }
        break;
    }
    case CAIRN_CHAT_LLAMA3:
        for (; i < n; i++) {
            puts_(&s, "<|start_header_id|>");
            puts_(&s, msgs[i].role);
            puts_(&s, "<|end_header_id|>\n\n");
            put_trimmed(&s, msgs[i].content);
            puts_(&s, "<|eot_id|>");
        }
        if (add_generation_prompt) {
            puts_(&s, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        }
        break;
    case CAIRN_CHAT_CHATML:
        for (; i < n; i++) {
            puts_(&s, "<|im_start|>");
            puts_(&s, msgs[i].role);
            puts_(&s, "\n");
            puts_(&s, msgs[i].content);
            puts_(&s, "<|im_end|>\n");
        }
        if (add_generation_prompt) {
            puts_(&s, "<|im_start|>assistant\n");
        }
        break;
    }
    if (out_len) {
        *out_len = s.len;
    }
    if (s.len >= s.cap) {
        if (s.cap > 0) {
            buf[0] = '\0';
        }
        return cairn_errorf(err, CAIRN_ERANGE, "chat: %zu bytes (+1) do not fit in %zu", s.len,
                            s.cap);
    }
    buf[s.len] = '\0';
    return 0;
}
