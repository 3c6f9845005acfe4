/*
 * services/summarize.c — map-reduce summarization over the generation workers (summarize.h).
 *
 * Each round submits all of its pieces at once and waits for them on one condition variable;
 * the worker threads call back into the round's calls, so nothing here outlives a round while a
 * request is still in flight (the wait ends only when every on_done has run).
 */
#define CAIRN_LOG_TAG "summarize"
#include "services/summarize.h"

#include "common/clock.h"
#include "common/log.h"
#include "common/utf8.h"
#include "generation/chat.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

cairn_summarize_params cairn_summarize_default_params(void)
{
    return (cairn_summarize_params){
        .summary_tokens = 128,
        .chunk_tokens = 0,
        .max_attempts = 8,
        .max_depth = 6,
        .keepalive_ms = 10000,
    };
}

/* Prompt template overhead (instruction, chat markers) kept free in the context. */
#define PROMPT_OVERHEAD 96

static const char *const INSTRUCTION[3] = {
    "Summarize this document in a few sentences:\n\n",
    "Summarize this part of a longer document in a few sentences:\n\n",
    "Combine these notes on one document into a summary of a few sentences:\n\n",
};
enum { WHOLE, PART, COMBINE };

/* ---- One round of requests ------------------------------------------------------------- */

typedef struct round round;

typedef struct {
    round *r;
    char *prompt;
    size_t prompt_len;
    char *text; /* the summary so far */
    size_t len, cap;
    bool done, oom;
    const char *error; /* static, from the workers */
    int n_generated;
    int attempts;
} call;

struct round {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pending;
    bool cancel;
};

static int on_text(void *user, const char *s, size_t n)
{
    call *c = user;
    if (n && !c->oom) {
        if (c->len + n + 1 > c->cap) {
            size_t cap = (c->len + n + 1) * 2;
            char *t = realloc(c->text, cap);
            if (!t) {
                c->oom = true;
                return 1;
            }
            c->text = t;
            c->cap = cap;
        }
        memcpy(c->text + c->len, s, n);
        c->len += n;
        c->text[c->len] = '\0';
    }
    pthread_mutex_lock(&c->r->mu);
    bool stop = c->r->cancel;
    pthread_mutex_unlock(&c->r->mu);
    return stop;
}

static void on_done(void *user, const cairn_gen_result *res)
{
    call *c = user;
    pthread_mutex_lock(&c->r->mu);
    c->error = res->error;
    c->n_generated = res->n_generated;
    c->done = true;
    c->r->pending--;
    pthread_cond_broadcast(&c->r->cv);
    pthread_mutex_unlock(&c->r->mu);
}

/* Submits c (again); 0, or the workers' error. Busy counts as an attempt, retried later. */
static int submit(cairn_workers *w, call *c, int max_tokens, cairn_error *err)
{
    cairn_gen_request rq = {
        .prompt = c->prompt,
        .prompt_len = c->prompt_len,
        .tok_flags = CAIRN_TOK_ADD_SPECIAL | CAIRN_TOK_PARSE_SPECIAL,
        .max_tokens = max_tokens,
        .offline = true,
        .sample = cairn_sample_greedy_params(),
        .on_text = on_text,
        .on_done = on_done,
        .user = c,
    };
    c->len = 0;
    c->done = false;
    c->error = NULL;
    c->attempts++;
    pthread_mutex_lock(&c->r->mu);
    c->r->pending++;
    pthread_mutex_unlock(&c->r->mu);
    int rc = cairn_workers_submit(w, &rq, err);
    if (rc) {
        pthread_mutex_lock(&c->r->mu);
        c->r->pending--;
        pthread_mutex_unlock(&c->r->mu);
    }
    return rc;
}

/* Runs every call of the round to completion (resubmitting those refused as busy). */
static int run_round(cairn_workers *w, call *calls, int n, const cairn_summarize_params *p,
                     cairn_summarize_stats *st, cairn_error *err)
{
    round *r = calls[0].r;
    int rc = 0;
    bool *want = calloc((size_t)n, sizeof *want);
    if (!want) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++)
        want[i] = true;
    for (int pass = 0; !rc; pass++) {
        int busy = 0;
        for (int i = 0; i < n && !rc; i++) {
            if (!want[i]) continue;
            if (calls[i].attempts >= p->max_attempts) {
                rc = cairn_errorf(err, CAIRN_EBUSY,
                                  "piece %d of %d: still refused (busy) after %d attempts", i + 1,
                                  n, calls[i].attempts);
                break;
            }
            cairn_error e = {0};
            int s = submit(w, &calls[i], p->summary_tokens, &e);
            st->requests++;
            if (calls[i].attempts > 1) st->resubmitted++;
            if (s == CAIRN_EBUSY) {
                busy++;
                continue;
            }
            if (s) {
                rc = s;
                cairn_errorf(err, s, "%s", e.msg);
                break;
            }
            want[i] = false;
        }
        /* Wait for what is in flight (all of it, even after an error or a cancel). */
        pthread_mutex_lock(&r->mu);
        int64_t beat = cairn_now_ns();
        while (r->pending > 0) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            int64_t ns = ts.tv_nsec + (int64_t)p->keepalive_ms * CAIRN_NS_PER_MS;
            ts.tv_sec += (time_t)(ns / CAIRN_NS_PER_SEC);
            ts.tv_nsec = (long)(ns % CAIRN_NS_PER_SEC);
            pthread_cond_timedwait(&r->cv, &r->mu, &ts);
            /* On a clock, however often completions wake us. */
            int64_t now = cairn_now_ns();
            if (p->keepalive && now - beat >= (int64_t)p->keepalive_ms * CAIRN_NS_PER_MS) {
                beat = now;
                pthread_mutex_unlock(&r->mu);
                int stop = p->keepalive(p->keepalive_ctx);
                pthread_mutex_lock(&r->mu);
                if (stop) r->cancel = true;
            }
        }
        bool cancelled = r->cancel;
        pthread_mutex_unlock(&r->mu);
        if (rc) break;
        if (cancelled) {
            rc = cairn_errorf(err, CAIRN_ECANCELED, "summary abandoned");
            break;
        }
        int again = busy;
        for (int i = 0; i < n && !rc; i++) {
            call *c = &calls[i];
            if (want[i] || !c->done) continue;
            c->done = false;
            st->tokens_generated += c->n_generated;
            if (c->oom) rc = cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
            else if (c->error) {
                rc = cairn_errorf(err, c->error && !strncmp(c->error, "shutting", 8)
                                           ? CAIRN_ESTATE
                                           : CAIRN_EIO,
                                  "piece %d of %d: %s", i + 1, n, c->error);
            }
        }
        if (rc || again == 0) break;
        /* Back off before resubmitting: the queue needs time to drain. */
        int pause = 200 * (pass + 1);
        cairn_sleep_ms(pause > 2000 ? 2000 : pause);
    }
    free(want);
    return rc;
}

/* ---- Pieces and prompts ------------------------------------------------------------------ */

static int count_tokens(cairn_workers *w, const char *s, size_t n)
{
    int t = cairn_tok_encode(cairn_workers_tokenizer(w), s, n, NULL, 0, 0, NULL);
    return t < 0 ? -t : t;
}

/* Renders the chat prompt for instruction + text into *out (malloc'ed). 0 or an error. */
static int make_prompt(cairn_workers *w, int kind, const char *text, size_t n, char **out,
                       size_t *len, cairn_error *err)
{
    size_t il = strlen(INSTRUCTION[kind]);
    char *content = malloc(il + n + 1);
    if (!content) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    memcpy(content, INSTRUCTION[kind], il);
    memcpy(content + il, text, n);
    content[il + n] = '\0';
    cairn_chat_msg m = {.role = "user", .content = content};
    const cairn_chat_template *f = cairn_workers_chat_template(w);
    size_t need = 0;
    int rc = cairn_chat_render_template(f, &m, 1, true, NULL, 0, &need, err);
    char *buf = NULL;
    if (rc == 0 || rc == CAIRN_ERANGE) {
        rc = (buf = malloc(need + 1)) ? 0 : cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
        if (!rc) rc = cairn_chat_render_template(f, &m, 1, true, buf, need + 1, len, err);
    }
    free(content);
    if (rc) free(buf);
    else *out = buf;
    return rc;
}

static bool is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

/* Cuts text into k pieces of about len/k bytes, each ending after whitespace (or at a UTF-8
 * character boundary when a piece has none). cut[0..k] are the boundaries. */
static void cut_pieces(const char *s, size_t len, int k, size_t *cut)
{
    cut[0] = 0;
    for (int i = 1; i < k; i++) {
        size_t target = len * (size_t)i / (size_t)k, j = target;
        if (j < cut[i - 1]) j = cut[i - 1];
        size_t end = len * (size_t)(i + 1) / (size_t)k;
        while (j < end && !is_space(s[j]))
            j++;
        if (j >= end) { /* no whitespace: the first character boundary at or after target */
            j = target < cut[i - 1] ? cut[i - 1] : target;
            while (j < len && ((unsigned char)s[j] & 0xC0) == 0x80)
                j++;
        }
        cut[i] = j;
    }
    cut[k] = len;
}

static bool blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!is_space(s[i])) return false;
    return true;
}

/* ---- Summarize ------------------------------------------------------------------------------ */

int cairn_summarize(cairn_workers *w, const char *text, size_t len,
                    const cairn_summarize_params *p, char **out, size_t *out_len,
                    cairn_summarize_stats *stats, cairn_error *err)
{
    *out = NULL;
    *out_len = 0;
    cairn_summarize_stats st = {0};
    if (!text || blank(text, len))
        return cairn_errorf(err, CAIRN_EINVAL, "summarize: the document is empty");
    if (!cairn_utf8_valid(text, len))
        return cairn_errorf(err, CAIRN_EINVAL, "summarize: the document is not valid UTF-8");
    if (p->summary_tokens < 1 || p->max_attempts < 1 || p->max_depth < 1 ||
        p->keepalive_ms < 1 || p->chunk_tokens < 0)
        return cairn_errorf(err, CAIRN_EINVAL, "summarize: parameters out of range");
    int limit = cairn_workers_n_ctx(w) - p->summary_tokens - PROMPT_OVERHEAD;
    if (p->chunk_tokens && p->chunk_tokens < limit) limit = p->chunk_tokens;
    if (limit < 64)
        return cairn_errorf(err, CAIRN_EINVAL,
                            "summarize: a context of %d tokens leaves no room for a piece after "
                            "%d summary tokens",
                            cairn_workers_n_ctx(w), p->summary_tokens);

    char *cur = malloc(len + 1);
    if (!cur) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    memcpy(cur, text, len);
    cur[len] = '\0';
    size_t cur_len = len;
    int rc = 0;
    st.doc_tokens = count_tokens(w, cur, cur_len);
    round r = {.pending = 0};
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cv, NULL);

    for (int depth = 0; !rc; depth++) {
        int tokens = depth == 0 ? st.doc_tokens : count_tokens(w, cur, cur_len);
        int k = tokens <= limit ? 1 : (int)((tokens + limit * 9 / 10 - 1) / (limit * 9 / 10));
        if (depth > p->max_depth) {
            rc = cairn_errorf(err, CAIRN_ELIMIT, "summarize: still %d tokens after %d rounds",
                              tokens, p->max_depth);
            break;
        }
        /* Cut into k pieces, each within the limit (more pieces when one is not). */
        size_t *cut = NULL;
        for (;; k++) {
            free(cut);
            cut = malloc(((size_t)k + 1) * sizeof *cut);
            if (!cut) {
                rc = cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
                break;
            }
            cut_pieces(cur, cur_len, k, cut);
            bool ok = true;
            for (int i = 0; i < k && ok; i++)
                ok = count_tokens(w, cur + cut[i], cut[i + 1] - cut[i]) <= limit;
            if (ok || k >= tokens) break;
        }
        if (rc) break;
        if (depth == 0) st.pieces = k;
        st.rounds++;
        call *calls = calloc((size_t)k, sizeof *calls);
        if (!calls) {
            free(cut);
            rc = cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
            break;
        }
        int kind = k == 1 ? (depth == 0 ? WHOLE : COMBINE) : (depth == 0 ? PART : COMBINE);
        for (int i = 0; i < k && !rc; i++) {
            calls[i].r = &r;
            rc = make_prompt(w, kind, cur + cut[i], cut[i + 1] - cut[i], &calls[i].prompt,
                             &calls[i].prompt_len, err);
        }
        free(cut);
        if (!rc) rc = run_round(w, calls, k, p, &st, err);
        /* The next round reads the concatenated summaries. */
        size_t total = 0;
        for (int i = 0; i < k; i++)
            total += calls[i].len + 2;
        char *next = rc ? NULL : malloc(total + 1);
        if (!rc && !next) rc = cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
        size_t nl = 0;
        for (int i = 0; i < k; i++) {
            if (next && calls[i].len) {
                if (nl) {
                    memcpy(next + nl, "\n\n", 2);
                    nl += 2;
                }
                memcpy(next + nl, calls[i].text, calls[i].len);
                nl += calls[i].len;
            }
            free(calls[i].text);
            free(calls[i].prompt);
        }
        free(calls);
        if (rc) break;
        next[nl] = '\0';
        free(cur);
        cur = next;
        cur_len = nl;
        if (blank(cur, cur_len)) {
            rc = cairn_errorf(err, CAIRN_EFORMAT, "summarize: the model wrote an empty summary");
            break;
        }
        if (k == 1) break; /* one summary of everything: done */
    }
    pthread_cond_destroy(&r.cv);
    pthread_mutex_destroy(&r.mu);
    if (stats) *stats = st;
    if (rc) {
        free(cur);
        return rc;
    }
    /* Trim surrounding whitespace. */
    size_t a = 0, b = cur_len;
    while (a < b && is_space(cur[a]))
        a++;
    while (b > a && is_space(cur[b - 1]))
        b--;
    memmove(cur, cur + a, b - a);
    cur[b - a] = '\0';
    *out = cur;
    *out_len = b - a;
    CAIRN_LOG_INFO("summarized", "doc_tokens=%d pieces=%d rounds=%d requests=%d",
                   st.doc_tokens, st.pieces, st.rounds, st.requests);
    return 0;
}
