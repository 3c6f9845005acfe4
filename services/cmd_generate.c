/*
 * services/cmd_generate.c — `cairn generate`: one prompt through the engine, tokens streamed to
 * stdout as they are sampled, a timings line on stderr at the end.
 *
 * Streaming: each token's piece goes through the stop-string matcher (which withholds a possible
 * stop-string prefix), then only whole UTF-8 characters are written; byte-fallback tokens can
 * split a character over several tokens.
 */
#include "services/cmd_generate.h"

#include "common/clock.h"
#include "common/error.h"
#include "generation/chat.h"
#include "generation/engine.h"
#include "generation/model.h"
#include "generation/sample.h"
#include "generation/tokenizer.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const cairn_cmd_generate_usage =
    "usage: cairn generate -m MODEL -p PROMPT [--chat] [--chat-template NAME] [-n N]\n"
    "                      [--temp T] [--top-k K] [--top-p P] [--seed S] [--stop STR]...\n"
    "                      [--threads T] [--device D]\n\n"
    "Streams the model's continuation of PROMPT to stdout, then prints a timings line\n"
    "(prompt tokens and tok/s, generated tokens and tok/s) on stderr.\n\n"
    "  -m, --model FILE  GGUF model (Gemma 3, Llama 2/3 and SmolLM2, Qwen2)\n"
    "  -p, --prompt TEXT the prompt ('-' reads it from stdin)\n"
    "  --chat            wrap the prompt as one user turn of the model's chat template\n"
    "  --chat-template NAME  --chat in this format (gemma, llama3, chatml, llama2, mistral,\n"
    "                    phi3) instead of the one the model file's template is recognised as\n"
    "  -n N              tokens to generate at most (default 128)\n"
    "  --temp T          temperature; 0 = greedy (default 0)\n"
    "  --top-k K         keep the K most likely tokens; 0 = all (default 40)\n"
    "  --top-p P         nucleus sampling mass in (0, 1] (default 0.95)\n"
    "  --seed S          sampling seed (default 0)\n"
    "  --stop STR        stop when STR is generated (not printed); may repeat, at most 8\n"
    "  --threads T       compute threads; 0 = CPUs online (default 0)\n"
    "  --device D        -1 the CPU (default), N CUDA GPU N";

#define MAX_STOPS 8
#define MAX_PROMPT (1 << 20)

typedef struct gen_state {
    const cairn_tok *tok;
    cairn_stop *stop;
    char pending[16]; /* bytes of an incomplete UTF-8 character */
    size_t n_pending;
    int64_t t_first_ns; /* when the first token arrived (prefill done) */
    int n_generated;
} gen_state;

/* Writes text, keeping a trailing incomplete character for the next call. */
static void emit_utf8(gen_state *st, const char *p, size_t n, int final)
{
    char buf[4096];
    while (n || st->n_pending) {
        size_t take = n < sizeof buf - st->n_pending ? n : sizeof buf - st->n_pending;
        memcpy(buf, st->pending, st->n_pending);
        memcpy(buf + st->n_pending, p, take);
        size_t len = st->n_pending + take;
        p += take;
        n -= take;
        size_t ok = final && n == 0 ? len : cairn_tok_utf8_complete(buf, len);
        fwrite(buf, 1, ok, stdout);
        st->n_pending = len - ok;
        if (st->n_pending > sizeof st->pending) { /* not UTF-8 at all: write it as is */
            fwrite(buf + ok, 1, st->n_pending, stdout);
            st->n_pending = 0;
        } else {
            memcpy(st->pending, buf + ok, st->n_pending);
        }
        if (n == 0) break;
    }
    fflush(stdout);
}

static int on_token(void *user, int seq_id, int32_t token, bool last)
{
    gen_state *st = user;
    if (st->n_generated++ == 0) st->t_first_ns = cairn_now_ns();
    if (cairn_tok_is_eog(st->tok, token)) return 0; /* the engine ends the sequence */
    const char *piece;
    size_t len;
    if (cairn_tok_decode_piece(st->tok, token, 0, &piece, &len) != 0) return 1;
    cairn_stop_result r;
    if (cairn_stop_feed(st->stop, piece, len, &r) != 0) return 1;
    emit_utf8(st, r.emit, r.emit_len, 0);
    return r.stop_index >= 0; /* a stop string completed: end here */
}

/* Parses a number option; on error prints which option and why. */
static int parse_num(const char *opt, const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "cairn generate: %s: '%s' is not a number in [%g, %g]\n", opt, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static char *read_stdin(void)
{
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t n = fread(buf + len, 1, cap - len - 1, stdin);
        len += n;
        if (n == 0) break;
        if (len + 1 == cap) {
            if (cap >= MAX_PROMPT) {
                free(buf);
                fprintf(stderr, "cairn generate: prompt on stdin exceeds %d bytes\n", MAX_PROMPT);
                return NULL;
            }
            char *b = realloc(buf, cap *= 2);
            if (!b) free(buf);
            buf = b;
        }
    }
    if (buf) buf[len] = '\0';
    return buf;
}

int cairn_cmd_generate(int argc, char **argv)
{
    const char *model_path = NULL, *prompt_arg = NULL, *stops[MAX_STOPS], *chat_template = NULL;
    size_t n_stops = 0;
    int chat = 0;
    double n_max = 128, threads = 0, seed = 0, device = -1;
    cairn_sample_params sp = cairn_sample_default_params();
    sp.temperature = 0; /* greedy unless --temp says otherwise */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        double x;
        int takes = 1;
        if (strcmp(a, "--chat") == 0) {
            chat = 1;
            takes = 0;
        } else if (!v) {
            fprintf(stderr, "cairn generate: %s needs a value (see cairn generate --help)\n", a);
            return 2;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_path = v;
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) prompt_arg = v;
        else if (!strcmp(a, "--chat-template")) {
            chat_template = v;
            chat = 1;
        }
        else if (!strcmp(a, "-n")) {
            if (parse_num(a, v, 1, 1 << 20, &n_max)) return 2;
        } else if (!strcmp(a, "--temp")) {
            if (parse_num(a, v, 0, 100, &x)) return 2;
            sp.temperature = (float)x;
        } else if (!strcmp(a, "--top-k")) {
            if (parse_num(a, v, 0, INT32_MAX, &x)) return 2;
            sp.top_k = (int32_t)x;
        } else if (!strcmp(a, "--top-p")) {
            if (parse_num(a, v, 0, 1, &x)) return 2;
            sp.top_p = (float)x;
        } else if (!strcmp(a, "--seed")) {
            if (parse_num(a, v, 0, 18446744073709551615.0, &seed)) return 2;
        } else if (!strcmp(a, "--threads")) {
            if (parse_num(a, v, 0, 1024, &threads)) return 2;
        } else if (!strcmp(a, "--device")) {
            if (parse_num(a, v, -1, 1024, &device)) return 2;
        } else if (!strcmp(a, "--stop")) {
            if (n_stops == MAX_STOPS) {
                fprintf(stderr, "cairn generate: at most %d --stop strings\n", MAX_STOPS);
                return 2;
            }
            stops[n_stops++] = v;
        } else {
            fprintf(stderr, "cairn generate: unknown option '%s' (see cairn generate --help)\n",
                    a);
            return 2;
        }
        i += takes;
    }
    if (!model_path || !prompt_arg) {
        fprintf(stderr, "cairn generate: -m MODEL and -p PROMPT are required\n");
        return 2;
    }
    sp.seed = (uint64_t)seed;
    cairn_error err = {0};
    if (cairn_sample_params_validate(&sp, &err)) {
        fprintf(stderr, "cairn generate: %s\n", err.msg);
        return 2;
    }

    int status = 1;
    char *stdin_prompt = NULL, *rendered = NULL;
    int32_t *ids = NULL;
    cairn_model *model = NULL;
    cairn_tok *tok = NULL;
    cairn_engine *eng = NULL;
    gen_state st = {0};
    const char *prompt = prompt_arg;
    if (strcmp(prompt_arg, "-") == 0 && !(prompt = stdin_prompt = read_stdin())) goto out;

    if (cairn_model_open(&model, model_path, &err) ||
        cairn_tok_open(&tok, cairn_model_gguf(model), &err) ||
        cairn_stop_new(&st.stop, stops, n_stops, &err)) {
        fprintf(stderr, "cairn generate: %s\n", err.msg);
        goto out;
    }
    int flags = CAIRN_TOK_ADD_SPECIAL;
    if (chat) {
        cairn_chat_template fam;
        cairn_chat_msg msg = {"user", prompt};
        size_t cap = strlen(prompt) + 256, len = 0;
        int rc = cairn_chat_template_of(cairn_model_gguf(model), chat_template, &fam, &err);
        for (int tries = 0; !rc && tries < 2; tries++) {
            free(rendered);
            if (!(rendered = malloc(cap))) {
                rc = cairn_errorf(&err, CAIRN_ENOMEM, "out of memory");
                break;
            }
            rc = cairn_chat_render_template(&fam, &msg, 1, true, rendered, cap, &len, &err);
            if (rc != CAIRN_ERANGE) break;
            cap = len + 1; /* the size it needs; the second try fits */
        }
        if (rc) {
            fprintf(stderr, "cairn generate: chat template: %s\n", err.msg);
            goto out;
        }
        prompt = rendered;
        flags |= CAIRN_TOK_PARSE_SPECIAL; /* the template's turn markers are control tokens */
    }
    /* A token covers at least one byte, plus BOS/EOS: plen + 8 always suffices. */
    size_t plen = strlen(prompt);
    int n_ids = -1;
    if (plen > MAX_PROMPT || !(ids = malloc(sizeof *ids * (plen + 8))))
        cairn_errorf(&err, CAIRN_ELIMIT, "the prompt exceeds %d bytes", MAX_PROMPT);
    else
        n_ids = cairn_tok_encode(tok, prompt, plen, ids, (int)plen + 8, flags, &err);
    if (n_ids < 0) {
        fprintf(stderr, "cairn generate: tokenizing the prompt: %s\n", err.msg);
        goto out;
    }

    cairn_engine_params ep = cairn_engine_default_params();
    ep.n_threads = (int)threads;
    ep.device = (int)device;
    ep.max_seqs = 1;
    if (cairn_engine_open(&eng, model, &ep, &err)) {
        fprintf(stderr, "cairn generate: %s\n", err.msg);
        goto out;
    }
    int32_t eog[64];
    int n_eog = 0;
    for (int32_t i = 0; i < cairn_tok_vocab_size(tok) && n_eog < 64; i++)
        if (cairn_tok_is_eog(tok, i)) eog[n_eog++] = i;
    cairn_gen_params gp = cairn_gen_default_params();
    gp.max_tokens = (int)n_max;
    gp.sample = sp;
    gp.stop_tokens = eog;
    gp.n_stop_tokens = n_eog;
    gp.on_token = on_token;
    gp.user = &st;
    st.tok = tok;
    int id;
    int64_t t0 = cairn_now_ns();
    if (cairn_engine_add(eng, ids, n_ids, &gp, &id, &err) || cairn_engine_run(eng, &err)) {
        fprintf(stderr, "\ncairn generate: %s\n", err.msg);
        goto out;
    }
    int64_t t1 = cairn_now_ns();
    cairn_stop_result r;
    cairn_stop_flush(st.stop, &r);
    emit_utf8(&st, r.emit, r.emit_len, 1);
    cairn_seq_info info;
    cairn_engine_seq_info(eng, id, &info);
    static const char *reasons[] = {"running", "length", "stop token", "stop string",
                                    "context full", "cancelled"};
    double prefill_s = (double)((st.n_generated ? st.t_first_ns : t1) - t0) / 1e9;
    double decode_s = (double)(t1 - (st.n_generated ? st.t_first_ns : t1)) / 1e9;
    int decoded = st.n_generated > 1 ? st.n_generated - 1 : 0;
    fprintf(stderr,
            "\n[timings] prompt %d tokens in %.3f s (%.1f tok/s); generated %d tokens, "
            "%d after the first in %.3f s (%.1f tok/s); finish: %s\n",
            n_ids, prefill_s, prefill_s > 0 ? n_ids / prefill_s : 0.0, st.n_generated, decoded,
            decode_s, decode_s > 0 ? decoded / decode_s : 0.0,
            info.finish < sizeof reasons / sizeof reasons[0] ? reasons[info.finish] : "?");
    status = 0;
out:
    cairn_engine_close(eng);
    cairn_stop_free(st.stop);
    cairn_tok_close(tok);
    cairn_model_close(model);
    free(ids);
    free(rendered);
    free(stdin_prompt);
    return status;
}
