/*
 * tests/fuzz/fuzz_chat_template.c — libFuzzer target for the chat-template recogniser
 * (cairn_chat_template_parse, generation/chat.h), which reads a model file's
 * tokenizer.chat_template: outside input.
 *
 * Input: the template's bytes (not NUL-terminated: the parser must stay inside them). Checks:
 * no crash or sanitizer report; a failure is CAIRN_EUNSUPPORTED with a message; a success names
 * a known family with a NUL-terminated default system text that fits, which then renders a
 * short conversation without error (or CAIRN_ERANGE, asked for the size first).
 *
 * Seed corpus: tests/fuzz/corpus/chat_template/ (real and near-miss templates).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "generation/chat.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a copy of exactly size bytes, so that ASan sees any read past the end */
    char *tmpl = malloc(size ? size : 1);
    if (!tmpl) return 0;
    memcpy(tmpl, data, size);
    cairn_chat_template t;
    cairn_error err = {0};
    int rc = cairn_chat_template_parse(tmpl, size, &t, &err);
    free(tmpl);
    if (rc != 0) {
        if (rc != CAIRN_EUNSUPPORTED || err.msg[0] == '\0') abort();
        return 0;
    }
    if (t.family < CAIRN_CHAT_GEMMA || t.family > CAIRN_CHAT_FAMILY_LAST) abort();
    if (memchr(t.default_system, '\0', sizeof t.default_system) == NULL) abort();
    static const cairn_chat_msg m[2] = {{"user", "hi"}, {"assistant", "hello"}};
    size_t need = 0;
    rc = cairn_chat_render_template(&t, m, 2, true, NULL, 0, &need, &err);
    if (rc != CAIRN_ERANGE) abort();
    char *buf = malloc(need + 1);
    if (!buf) return 0;
    size_t len = 0;
    rc = cairn_chat_render_template(&t, m, 2, true, buf, need + 1, &len, &err);
    if (rc != 0 || len != need || strlen(buf) != len) abort();
    free(buf);
    return 0;
}
