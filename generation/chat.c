/*
 * generation/chat.c — chat templates for Gemma, Llama 3, ChatML (Qwen2, SmolLM2), Llama 2,
 * Mistral and Phi-3.
 *
 * The formats are those of the models' own Jinja templates (tokenizer_config.json of
 * google/gemma-3-*-it, meta-llama/Llama-3.*-Instruct, Qwen/Qwen2*-Instruct,
 * HuggingFaceTB/SmolLM2-*-Instruct, meta-llama/Llama-2-*-chat-hf,
 * mistralai/Mistral-7B-Instruct-v0.1, microsoft/Phi-3-mini-*-instruct) without the BOS token,
 * which the tokenizer adds. The templates themselves are not run: a family is recognised by
 * its markers and rendered here.
 */
#include "generation/chat.h"

#include <stdio.h>
#include <stdlib.h>
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
    case CAIRN_CHAT_LLAMA2:
        return "llama2";
    case CAIRN_CHAT_MISTRAL:
        return "mistral";
    case CAIRN_CHAT_PHI3:
        return "phi3";
    }
    return "?";
}

int cairn_chat_family_from_name(const char *name, cairn_chat_family *out, cairn_error *err)
{
    if (name && strcmp(name, "gemma") == 0) {
        *out = CAIRN_CHAT_GEMMA;
    } else if (name && strcmp(name, "llama3") == 0) {
        *out = CAIRN_CHAT_LLAMA3;
    } else if (name && (strcmp(name, "chatml") == 0 || strcmp(name, "qwen2") == 0 ||
                        strcmp(name, "smollm2") == 0)) {
        *out = CAIRN_CHAT_CHATML;
    } else if (name && strcmp(name, "llama2") == 0) {
        *out = CAIRN_CHAT_LLAMA2;
    } else if (name && strcmp(name, "mistral") == 0) {
        *out = CAIRN_CHAT_MISTRAL;
    } else if (name && (strcmp(name, "phi3") == 0 || strcmp(name, "phi-3") == 0)) {
        *out = CAIRN_CHAT_PHI3;
    } else {
        return cairn_errorf(err, CAIRN_EINVAL,
                            "chat template '%s' is not known (gemma, llama3, chatml, llama2, "
                            "mistral, phi3)",
                            name ? name : "(null)");
    }
    return 0;
}

/* ---- Recognising a template ---- */

/* The first occurrence of the NUL-terminated needle in h[0..n), or NULL. */
static const char *find(const char *h, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; k <= n && i <= n - k; i++) {
        if (h[i] == needle[0] && memcmp(h + i, needle, k) == 0) {
            return h + i;
        }
    }
    return NULL;
}

/*
 * A constant system turn in a ChatML template: "<|im_start|>system", a newline (a real one or
 * the two characters \n of a Jinja string), text, "<|im_end|>", where the text is a plain
 * literal (no quote, brace, '+' or backslash other than \n: an expression such as
 * '... system\n' + message['content'] is not a default). Copies the text (escapes resolved)
 * into out; 1 when found, 0 when none, -1 when it does not fit.
 */
static int chatml_default_system(const char *t, size_t n, char *out, size_t cap)
{
    static const char open[] = "<|im_start|>system", close[] = "<|im_end|>";
    const char *end = t + n;
    for (const char *p = t; (p = find(p, (size_t)(end - p), open)) != NULL; p++) {
        const char *q = p + sizeof open - 1;
        if (q < end && *q == '\n') {
            q++;
        } else if (end - q >= 2 && q[0] == '\\' && q[1] == 'n') {
            q += 2;
        } else {
            continue;
        }
        const char *c = find(q, (size_t)(end - q), close);
        if (!c) {
            continue;
        }
        size_t w = 0;
        bool plain = c > q;
        for (const char *r = q; plain && r < c; r++) {
            char ch = *r;
            if (ch == '\\' && r + 1 < c && r[1] == 'n') {
                ch = '\n', r++;
            } else if (strchr("'\"{}+\\", ch)) {
                plain = false;
                break;
            }
            if (w + 1 >= cap) {
                return -1;
            }
            out[w++] = ch;
        }
        if (plain) {
            out[w] = '\0';
            return 1;
        }
    }
    return 0;
}

int cairn_chat_template_parse(const char *tmpl, size_t len, cairn_chat_template *out,
                              cairn_error *err)
{
    memset(out, 0, sizeof *out);
    if (!tmpl) {
        return cairn_errorf(err, CAIRN_EINVAL, "chat template: NULL");
    }
    if (find(tmpl, len, "<start_of_turn>")) {
        out->family = CAIRN_CHAT_GEMMA;
    } else if (find(tmpl, len, "<|start_header_id|>")) {
        out->family = CAIRN_CHAT_LLAMA3;
    } else if (find(tmpl, len, "<|im_start|>")) {
        out->family = CAIRN_CHAT_CHATML;
        if (chatml_default_system(tmpl, len, out->default_system, sizeof out->default_system) <
            0) {
            return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                                "chat template: its default system text is longer than %d bytes",
                                CAIRN_CHAT_SYSTEM_MAX - 1);
        }
    } else if (find(tmpl, len, "<|user|>") && find(tmpl, len, "<|assistant|>")) {
        out->family = CAIRN_CHAT_PHI3;
    } else if (find(tmpl, len, "[INST]")) {
        out->family = find(tmpl, len, "<<SYS>>") ? CAIRN_CHAT_LLAMA2 : CAIRN_CHAT_MISTRAL;
    } else {
        return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                            "chat template: none of the known families' markers (gemma, llama3, "
                            "chatml, llama2, mistral, phi3)");
    }
    return 0;
}

int cairn_chat_template_of(const cairn_gguf *g, const char *name, cairn_chat_template *out,
                           cairn_error *err)
{
    memset(out, 0, sizeof *out);
    if (name && *name) {
        return cairn_chat_family_from_name(name, &out->family, err);
    }
    const char *tmpl = NULL;
    size_t tlen = 0;
    if (cairn_gguf_get_str(g, "tokenizer.chat_template", &tmpl, &tlen, NULL) == 0) {
        if (cairn_chat_template_parse(tmpl, (size_t)tlen, out, err) == 0) {
            return 0;
        }
        const char *model = NULL;
        if (cairn_gguf_get_str(g, "general.name", &model, NULL, NULL) != 0) {
            model = "this model";
        }
        char head[81], why[160];
        snprintf(why, sizeof why, "%.150s", err ? err->msg : "no known markers");
        size_t k = 0;
        for (size_t i = 0; i < tlen && k < sizeof head - 1; i++) {
            char c = tmpl[i];
            head[k++] = c == '\n' || c == '\r' || c == '\t' ? ' ' : c;
        }
        head[k] = '\0';
        return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                            "the chat template of '%s' is not one cairn knows (%s; it begins "
                            "\"%s%s\"): name its family in model.chat_template (gemma, llama3, "
                            "chatml, llama2, mistral, phi3)",
                            model, why, head,
                            tlen > k ? "..." : "");
    }
    const char *arch = NULL;
    int rc = cairn_gguf_get_str(g, "general.architecture", &arch, NULL, err);
    if (rc < 0) {
        return rc;
    }
    if (strncmp(arch, "gemma", 5) == 0) {
        out->family = CAIRN_CHAT_GEMMA;
    } else if (strcmp(arch, "llama") == 0) {
        out->family = CAIRN_CHAT_LLAMA3;
    } else if (strncmp(arch, "qwen2", 5) == 0) {
        out->family = CAIRN_CHAT_CHATML;
    } else {
        return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                            "no chat template known for architecture '%s' (and none in the file)",
                            arch);
    }
    return 0;
}

int cairn_chat_detect(const cairn_gguf *g, cairn_chat_family *out, cairn_error *err)
{
    cairn_chat_template t;
    int rc = cairn_chat_template_of(g, NULL, &t, err);
    if (rc == 0) {
        *out = t.family;
    }
    return rc;
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
        case CAIRN_CHAT_LLAMA2:
        case CAIRN_CHAT_MISTRAL:
            ok = is(r, "user") || is(r, "assistant") || (is(r, "system") && i == 0);
            if (!ok && is(r, "system")) {
                return cairn_errorf(err, CAIRN_EINVAL,
                                    "messages[%zu]: %s takes a system message only first", i,
                                    cairn_chat_family_name(f));
            }
            break;
        case CAIRN_CHAT_PHI3:
            ok = is(r, "system") || is(r, "user") || is(r, "assistant");
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
    case CAIRN_CHAT_LLAMA2:
    case CAIRN_CHAT_MISTRAL: {
        /* Both fold a leading system message into the first user turn and need the turns to
         * alternate user/assistant from a user turn (their templates raise otherwise). */
        bool l2 = f == CAIRN_CHAT_LLAMA2;
        const char *system = NULL;
        if (n > 0 && is(msgs[0].role, "system")) {
            system = msgs[0].content;
            i = 1;
        }
        if (system && i == n) {
            return cairn_errorf(err, CAIRN_EINVAL, "%s: a system message needs a user turn",
                                cairn_chat_family_name(f));
        }
        for (size_t k = 0; i < n; i++, k++) {
            bool user = is(msgs[i].role, "user");
            if (user != (k % 2 == 0)) {
                return cairn_errorf(err, CAIRN_EINVAL,
                                    "messages[%zu]: %s turns must alternate user/assistant, "
                                    "starting with user (got '%s')",
                                    i, cairn_chat_family_name(f), msgs[i].role);
            }
            if (l2 && user) { /* bos + '[INST] ' + content.strip() + ' [/INST]' */
                puts_(&s, k == 0 ? "[INST] " : "<s>[INST] ");
                if (k == 0 && system) { /* '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + user */
                    puts_(&s, "<<SYS>>\n");
                    puts_(&s, system);
                    puts_(&s, "\n<</SYS>>\n\n");
                }
                put_trimmed(&s, msgs[i].content);
                puts_(&s, " [/INST]");
            } else if (l2) { /* ' ' + content.strip() + ' ' + eos */
                puts_(&s, " ");
                put_trimmed(&s, msgs[i].content);
                puts_(&s, " </s>");
            } else if (user) { /* '[INST] ' + content + ' [/INST]' */
                puts_(&s, "[INST] ");
                if (k == 0 && system) {
                    puts_(&s, system);
                    puts_(&s, "\n\n");
                }
                puts_(&s, msgs[i].content);
                puts_(&s, " [/INST]");
            } else { /* content + eos */
                puts_(&s, msgs[i].content);
                puts_(&s, "</s>");
            }
        }
        break;
    }
    case CAIRN_CHAT_PHI3:
        for (; i < n; i++) {
            puts_(&s, "<|");
            puts_(&s, msgs[i].role);
            puts_(&s, "|>\n");
            puts_(&s, msgs[i].content);
            puts_(&s, "<|end|>\n");
        }
        puts_(&s, add_generation_prompt ? "<|assistant|>\n" : "<|endoftext|>");
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

int cairn_chat_render_template(const cairn_chat_template *t, const cairn_chat_msg *msgs,
                               size_t n, bool add_generation_prompt, char *buf, size_t cap,
                               size_t *out_len, cairn_error *err)
{
    if (!t) {
        return cairn_errorf(err, CAIRN_EINVAL, "chat: NULL template");
    }
    bool add = t->default_system[0] && (n == 0 || !msgs || !msgs[0].role ||
                                        !is(msgs[0].role, "system"));
    if (!add) {
        return cairn_chat_render(t->family, msgs, n, add_generation_prompt, buf, cap, out_len,
                                 err);
    }
    if (n > 0 && !msgs) {
        return cairn_errorf(err, CAIRN_EINVAL, "chat: NULL messages");
    }
    cairn_chat_msg *all = malloc((n + 1) * sizeof *all);
    if (!all) {
        return cairn_errorf(err, CAIRN_ENOMEM, "chat: out of memory");
    }
    all[0] = (cairn_chat_msg){"system", t->default_system};
    if (n > 0) {
        memcpy(all + 1, msgs, n * sizeof *all);
    }
    int rc = cairn_chat_render(t->family, all, n + 1, add_generation_prompt, buf, cap, out_len,
                               err);
    free(all);
    return rc;
}

char *cairn_chat_render_alloc(const cairn_chat_template *t, const cairn_chat_msg *msgs, size_t n,
                              bool add_generation_prompt, size_t *out_len, cairn_error *err)
{
    size_t need = 0, len = 0;
    int rc = cairn_chat_render_template(t, msgs, n, add_generation_prompt, NULL, 0, &need, err);
    if (rc && rc != CAIRN_ERANGE) {
        return NULL;
    }
    char *buf = malloc(need + 1);
    if (!buf) {
        cairn_errorf(err, CAIRN_ENOMEM, "chat: out of memory");
        return NULL;
    }
    if (cairn_chat_render_template(t, msgs, n, add_generation_prompt, buf, need + 1, &len, err)) {
        free(buf);
        return NULL;
    }
    if (out_len) {
        *out_len = len;
    }
    return buf;
}
