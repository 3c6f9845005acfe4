/*
 * services/api.c — the /v1 handlers: OpenAI-shaped generation, models, and admission.
 *
 * HTTP threads authenticate, parse, render the prompt and submit; generation answers arrive
 * from worker threads through a deferred HTTP answer (services/http.h): a whole JSON body, or
 * an SSE stream of `data: {...}\n\n` events closed by `data: [DONE]\n\n`. A request context
 * (gen_ctx) lives from submission to the workers' on_done.
 *
 * Admission: `active` counts generation requests from acceptance to on_done; beyond
 * max_concurrent + max_queue they are shed with 429 and Retry-After, so that memory stays
 * bounded under overload.
 */
#define _GNU_SOURCE /* strcasestr */
#define CAIRN_LOG_TAG "api"
#include "services/api.h"

#include "common/clock.h"
#include "common/json.h"
#include "common/log.h"
#include "common/rand.h"
#include "common/strbuf.h"
#include "common/threadpool.h"
#include "retrieval/embed.h"
#include "retrieval/extract.h"
#include "services/rag.h"
#include "services/workers.h"

#include <errno.h>
#include <math.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

_Static_assert(CAIRN_API_MAX_N == CAIRN_WORKERS_MAX_N, "n: the API's limit is the workers'");
_Static_assert(CAIRN_API_MAX_TOP_LOGPROBS <= CAIRN_SAMPLE_MAX_LOGPROBS &&
                   CAIRN_API_MAX_COMPLETION_LOGPROBS <= CAIRN_SAMPLE_MAX_LOGPROBS,
               "top_logprobs: the API's limits fit the sampler's");

struct cairn_api {
    cairn_api_params p;
    cairn_api_auth *auth;
    atomic_int active;     /* generation requests accepted and not yet done */
    atomic_uint_fast64_t next_id;
    int64_t created;       /* Unix time the model was loaded (for /v1/models) */
    cairn_counter *c_shed; /* 429s */
    cairn_counter *c_auth; /* 401s */
    cairn_gauge *g_active; /* mirrors `active` */
    cairn_histogram *h_embed, *h_pre, *h_search; /* cairn_rag_stage_seconds{stage} */
    /* Requests the API runs itself (embeddings) go to this pool; `aux_lock` (read: submit,
     * write: stop) keeps submissions off a pool that is closing. */
    pthread_rwlock_t aux_lock;
    cairn_pool *aux;
};

cairn_api_params cairn_api_default_params(void)
{
    return (cairn_api_params){
        .limits = cairn_api_default_limits(),
        .max_concurrent = 8,
        .max_queue = 64,
        .retry_after_s = 1,
        .model_name = "cairn",
        .rag_answer_prefix = true,
        .max_upload = 16u << 20,
        .max_upload_text = 4u << 20,
        .max_upload_passages = 4096,
    };
}

/* ---- Helpers --------------------------------------------------------------------------- */

/* Gives back n admission slots taken by admit_n(). Always before the request's answer is
 * handed to the HTTP layer: a client that sends its next request the moment it has the answer
 * must find the slot free (given back after, a burst that followed at once could be refused). */
static void release_slots(cairn_api *a, int n)
{
    atomic_fetch_sub(&a->active, n);
    cairn_gauge_add(a->g_active, -n);
}

static void release_slot(cairn_api *a) { release_slots(a, 1); }

/* A seed for a request that gave none: OpenAI's (and llama.cpp's server's) unseeded calls
 * differ from one another. From the kernel's generator; a clock-based mix if that fails. */
static uint64_t fresh_seed(void)
{
    uint64_t s;
    if (getrandom(&s, sizeof s, GRND_NONBLOCK) == (ssize_t)sizeof s) return s;
    static _Atomic uint64_t n;
    uint64_t x = (uint64_t)cairn_now_ns() ^ (atomic_fetch_add(&n, 1) << 48);
    return cairn_rand_next(&x);
}

/* Status for a parse or submit error code. */
static int status_of(int rc)
{
    switch (rc) {
    case CAIRN_EBUSY: return 429;
    case CAIRN_ENOMEM: return 503;
    case CAIRN_ESTATE: return 503;
    default: return 400;
    }
}

/* Status of an index update's failure that is not the request's fault: the document log (on
 * Redis, docs.log = redis) unreachable or closed (503, retry), or written but not yet applied
 * here (504); 0 for the others. */
static int index_status(int rc)
{
    switch (rc) {
    case CAIRN_ENET:
    case CAIRN_ESTATE: return 503;
    case CAIRN_ETIMEDOUT: return 504;
    default: return 0;
    }
}

static void set_json(cairn_http_resp *resp, int status, json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s) {
        cairn_http_json_error(resp, 500, "out of memory");
        return;
    }
    free(resp->body);
    resp->status = status;
    resp->content_type = "application/json";
    resp->body = s;
    resp->body_len = strlen(s);
}

/* A JSON string of s[0..n), invalid UTF-8 replaced (cairn_json_text). */
static json_t *json_text(const char *s, size_t n) { return cairn_json_text(s, n); }

/* Authenticates the request; on failure fills resp with 401 and returns false. */
static bool authorized(cairn_api *a, const cairn_http_req *req, cairn_http_resp *resp)
{
    cairn_error err = {0};
    if (cairn_api_auth_request(a->auth, req, &err) == 0)
        return true;
    cairn_counter_inc(a->c_auth);
    cairn_http_json_error(resp, 401, "%s", err.msg);
    return false;
}

static const char *finish_reason(const cairn_gen_result *r)
{
    switch (r->finish) {
    case CAIRN_FINISH_LENGTH:
    case CAIRN_FINISH_CONTEXT: return "length";
    default: return "stop";
    }
}

/* ---- Generation ------------------------------------------------------------------------ */

/*
 * A request's n choices (n > 1: OpenAI's `n`) run as n worker jobs that may end on different
 * worker threads, so the context's state is guarded by `mu`; the last choice to end answers
 * and frees it. Choice i's events carry `index` i; a stream interleaves them as they come.
 * Log probabilities arrive per token (on_logprob) just before its text (on_text): a stream
 * sends each token's with the chunk that carries its text (or with the choice's last chunk).
 */
struct gen_ctx;

typedef struct gen_choice {
    struct gen_ctx *g;
    int index;
    cairn_strbuf text;  /* non-streaming: the answer so far */
    bool sent_role;     /* streaming chat: the first delta carries the role */
    bool prefixed;      /* the answer prefix (gen_ctx.prefix) went out before its text */
    json_t *lp;         /* logprobs not yet sent (streaming) or all of them: chat, an array of
                           content entries; completions, {tokens, token_logprobs, ...} */
    size_t offset;      /* completions: characters of the choice's tokens so far */
    cairn_gen_result res;
} gen_choice;

typedef struct gen_ctx {
    cairn_api *api;
    cairn_http_async *async;
    int slots; /* admission slots held: one per choice, at most max_concurrent + max_queue */
    bool chat, stream, include_usage;
    char id[48];
    int64_t created;
    int64_t t_start;   /* request arrival (monotonic ns) */
    json_t *sources;   /* RAG: the passages the answer was given, or NULL */
    json_t *stages;    /* RAG: per-stage timings (object), or NULL */
    char *prefix;      /* RAG: the answer's first words, written into the prompt (the model
                          went on from them): each choice's text begins with them; or NULL */
    bool logprobs;     /* the request asked for them */
    int n, n_left;     /* choices; those not yet ended */
    const char *error; /* the first failed choice's reason (static text) */
    pthread_mutex_t mu;
    gen_choice *ch;    /* n */
    void **users;      /* n: &ch[i], the workers' callback users */
} gen_ctx;

/* A context for n choices (zeroed otherwise), or NULL. */
static gen_ctx *gen_new(int n)
{
    gen_ctx *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    pthread_mutex_init(&g->mu, NULL);
    g->n = g->n_left = n;
    g->ch = calloc((size_t)n, sizeof *g->ch);
    g->users = calloc((size_t)n, sizeof *g->users);
    if (!g->ch || !g->users) {
        free(g->ch);
        free(g->users);
        pthread_mutex_destroy(&g->mu);
        free(g);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        g->ch[i].g = g;
        g->ch[i].index = i;
        g->users[i] = &g->ch[i];
    }
    return g;
}

static void gen_free(gen_ctx *g)
{
    for (int i = 0; i < g->n; i++) {
        cairn_strbuf_free(&g->ch[i].text);
        json_decref(g->ch[i].lp);
    }
    free(g->ch);
    free(g->users);
    free(g->prefix);
    json_decref(g->sources);
    json_decref(g->stages);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

static json_t *chunk_base(gen_ctx *g)
{
    return json_pack("{s:s,s:s,s:I,s:s}", "id", g->id, "object",
                     g->chat ? "chat.completion.chunk" : "text_completion", "created",
                     (json_int_t)g->created, "model", g->api->p.model_name);
}

/* Sends one SSE event with o (consumed). Returns non-zero when the client is gone. */
static int send_event(gen_ctx *g, json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s) return 0; /* out of memory: drop the event, keep going */
    cairn_strbuf sb = {0};
    cairn_strbuf_puts(&sb, "data: ");
    cairn_strbuf_puts(&sb, s);
    cairn_strbuf_puts(&sb, "\n\n");
    free(s);
    size_t n = 0;
    char *ev = cairn_strbuf_take(&sb, &n);
    int rc = ev ? cairn_http_async_write(g->async, ev, n) : 0;
    free(ev);
    return rc == CAIRN_ECANCELED;
}

/* ---- Log probabilities: OpenAI's shapes ---- */

/* A log-probability as JSON; -9999 stands for -inf, which JSON cannot hold (OpenAI's value for
 * a token of no probability). */
static json_t *lp_real(float v)
{
    return json_real(isfinite(v) ? (double)v : -9999.0);
}

/* Chat's {token, logprob, bytes}: the token as text (invalid UTF-8 replaced) and its bytes. */
static json_t *lp_token(const cairn_gen_logprob_entry *e)
{
    json_t *bytes = json_array();
    for (size_t i = 0; bytes && i < e->len; i++)
        json_array_append_new(bytes, json_integer((unsigned char)e->text[i]));
    return json_pack("{s:o,s:o,s:o}", "token", json_text(e->text, e->len), "logprob",
                     lp_real(e->logprob), "bytes", bytes ? bytes : json_null());
}

/* Characters in s[0..n) as a Python str would count them (UTF-8 lead bytes; a stray
 * continuation byte is replaced by one U+FFFD, so it counts too when it starts the text). */
static size_t utf8_chars(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

/* Adds one token's log-probabilities to the choice's pending ones. */
static void gen_on_logprob(void *user, const cairn_gen_logprob *lp)
{
    gen_choice *ch = user;
    gen_ctx *g = ch->g;
    pthread_mutex_lock(&g->mu);
    if (g->chat) {
        if (!ch->lp) ch->lp = json_array();
        json_t *e = lp_token(&lp->chosen), *top = json_array();
        for (int i = 0; top && i < lp->n_top; i++)
            json_array_append_new(top, lp_token(&lp->top[i]));
        if (e) json_object_set_new(e, "top_logprobs", top ? top : json_array());
        if (ch->lp && e) json_array_append_new(ch->lp, e);
        else json_decref(e);
    } else {
        if (!ch->lp)
            ch->lp = json_pack("{s:[],s:[],s:[],s:[]}", "tokens", "token_logprobs",
                               "top_logprobs", "text_offset");
        /* Legacy top_logprobs: {token text: logprob}, the sampled token always included (up
         * to logprobs + 1 entries, as OpenAI documents). Tokens of one text share a key. */
        json_t *top = json_object();
        for (int i = 0; top && i < lp->n_top; i++) {
            json_t *k = json_text(lp->top[i].text, lp->top[i].len);
            if (k && !json_object_get(top, json_string_value(k)))
                json_object_set_new(top, json_string_value(k), lp_real(lp->top[i].logprob));
            json_decref(k);
        }
        json_t *tok = json_text(lp->chosen.text, lp->chosen.len);
        if (top && tok && lp->n_top > 0 && !json_object_get(top, json_string_value(tok)))
            json_object_set_new(top, json_string_value(tok), lp_real(lp->chosen.logprob));
        if (ch->lp && tok) {
            json_array_append(json_object_get(ch->lp, "tokens"), tok);
            json_array_append_new(json_object_get(ch->lp, "token_logprobs"),
                                  lp_real(lp->chosen.logprob));
            json_array_append_new(json_object_get(ch->lp, "top_logprobs"),
                                  top && lp->n_top > 0 ? json_incref(top) : json_null());
            json_array_append_new(json_object_get(ch->lp, "text_offset"),
                                  json_integer((json_int_t)ch->offset));
        }
        ch->offset += utf8_chars(lp->chosen.text, lp->chosen.len);
        json_decref(top);
        json_decref(tok);
    }
    pthread_mutex_unlock(&g->mu);
}

/* The choice's `logprobs` member, taking what is pending: null when none were asked for;
 * chat's {"content": [...], "refusal": null}; completions' object of four arrays. */
static json_t *take_logprobs(gen_ctx *g, gen_choice *ch)
{
    if (!g->logprobs) return json_null();
    json_t *lp = ch->lp;
    ch->lp = NULL;
    if (g->chat) return json_pack("{s:o,s:n}", "content", lp ? lp : json_array(), "refusal");
    return lp ? lp : json_pack("{s:[],s:[],s:[],s:[]}", "tokens", "token_logprobs",
                               "top_logprobs", "text_offset");
}

/* Streams text as the choice's next delta. g->mu held. */
static int send_text(gen_ctx *g, gen_choice *ch, const char *text, size_t len)
{
    json_t *o = chunk_base(g);
    json_t *t = json_text(text, len);
    json_t *choice = g->chat ? json_pack("{s:i,s:{s:o},s:o,s:n}", "index", ch->index, "delta",
                                         "content", t, "logprobs", take_logprobs(g, ch),
                                         "finish_reason")
                             : json_pack("{s:i,s:o,s:o,s:n}", "index", ch->index, "text", t,
                                         "logprobs", take_logprobs(g, ch), "finish_reason");
    if (g->chat && choice && !ch->sent_role) {
        json_object_set_new(json_object_get(choice, "delta"), "role", json_string("assistant"));
        ch->sent_role = true;
    }
    json_object_set_new(o, "choices", json_pack("[o]", choice));
    return send_event(g, o);
}

/* The answer prefix, once per choice, before its first text (or at its end when it generated
 * none): the prompt ended in it, so the answer begins with it. It was not sampled, so its
 * delta carries no logprobs: those pending are the first token's and go with its text.
 * Streaming: g->mu held. */
static int send_prefix(gen_ctx *g, gen_choice *ch)
{
    if (ch->prefixed || !g->prefix) return 0;
    ch->prefixed = true;
    size_t n = strlen(g->prefix);
    if (!g->stream) {
        cairn_strbuf_append(&ch->text, g->prefix, n);
        return 0;
    }
    json_t *pending = ch->lp;
    ch->lp = NULL;
    int rc = send_text(g, ch, g->prefix, n);
    ch->lp = pending;
    return rc;
}

static int gen_on_text(void *user, const char *text, size_t len)
{
    gen_choice *ch = user;
    gen_ctx *g = ch->g;
    if (!g->stream) {
        send_prefix(g, ch); /* this choice's own text: no lock needed */
        cairn_strbuf_append(&ch->text, text, len);
        return cairn_http_async_gone(g->async);
    }
    if (len == 0) return cairn_http_async_gone(g->async);
    pthread_mutex_lock(&g->mu);
    int rc = send_prefix(g, ch);
    if (!rc) rc = send_text(g, ch, text, len);
    pthread_mutex_unlock(&g->mu);
    return rc;
}

/* The choices' results as one: prompt tokens once, completion tokens summed, the earliest
 * queue and first-token times, the latest end. */
static cairn_gen_result gen_total(const gen_ctx *g)
{
    cairn_gen_result t = g->ch[0].res;
    for (int i = 1; i < g->n; i++) {
        const cairn_gen_result *r = &g->ch[i].res;
        t.n_generated += r->n_generated;
        t.queue_s = r->queue_s < t.queue_s ? r->queue_s : t.queue_s;
        if (r->ttft_s > 0 && (t.ttft_s == 0 || r->ttft_s < t.ttft_s)) t.ttft_s = r->ttft_s;
        t.total_s = r->total_s > t.total_s ? r->total_s : t.total_s;
    }
    return t;
}

static json_t *usage_json(const cairn_gen_result *r)
{
    return json_pack("{s:i,s:i,s:i}", "prompt_tokens", r->n_prompt, "completion_tokens",
                     r->n_generated, "total_tokens", r->n_prompt + r->n_generated);
}

/* cairn's extension object: generation timings, plus the RAG stages when there were any. */
static json_t *timings_json(const gen_ctx *g, const cairn_gen_result *r)
{
    json_t *o = json_pack("{s:f,s:f,s:f,s:f}", "queue_s", r->queue_s, "ttft_s", r->ttft_s,
                          "generation_s", r->total_s, "total_s",
                          (double)(cairn_now_ns() - g->t_start) / 1e9);
    if (o && g->stages) json_object_update(o, g->stages);
    return o;
}

/* A stream's last event of one choice: its finish reason (and what logprobs are pending). */
static json_t *finish_choice(gen_ctx *g, gen_choice *ch)
{
    const char *why = finish_reason(&ch->res);
    json_t *lp = ch->lp ? take_logprobs(g, ch) : json_null(); /* nothing left: null */
    return g->chat ? json_pack("{s:i,s:{},s:o,s:s}", "index", ch->index, "delta", "logprobs",
                               lp, "finish_reason", why)
                   : json_pack("{s:i,s:s,s:o,s:s}", "index", ch->index, "text", "", "logprobs",
                               lp, "finish_reason", why);
}

/* The whole answer of a non-streaming request. */
static json_t *answer_json(gen_ctx *g, const cairn_gen_result *total)
{
    json_t *choices = json_array();
    for (int i = 0; choices && i < g->n; i++) {
        gen_choice *ch = &g->ch[i];
        size_t n = 0;
        char *text = cairn_strbuf_take(&ch->text, &n);
        json_t *t = json_text(text ? text : "", text ? n : 0);
        free(text);
        json_t *c = g->chat ? json_pack("{s:i,s:{s:s,s:o,s:n},s:o,s:s}", "index", i, "message",
                                        "role", "assistant", "content", t, "refusal",
                                        "logprobs", take_logprobs(g, ch), "finish_reason",
                                        finish_reason(&ch->res))
                            : json_pack("{s:i,s:o,s:o,s:s}", "index", i, "text", t, "logprobs",
                                        take_logprobs(g, ch), "finish_reason",
                                        finish_reason(&ch->res));
        json_array_append_new(choices, c);
    }
    json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:o,s:o,s:o}", "id", g->id, "object",
                          g->chat ? "chat.completion" : "text_completion", "created",
                          (json_int_t)g->created, "model", g->api->p.model_name, "choices",
                          choices ? choices : json_array(), "usage", usage_json(total), "cairn",
                          timings_json(g, total));
    if (o && g->sources) json_object_set(o, "sources", g->sources);
    return o;
}

static void gen_on_done(void *user, const cairn_gen_result *r)
{
    gen_choice *ch = user;
    gen_ctx *g = ch->g;
    cairn_api *a = g->api;
    pthread_mutex_lock(&g->mu);
    ch->res = *r;
    if (r->error && !g->error) g->error = r->error;
    if (!r->error) send_prefix(g, ch); /* an answer of no text is still the prefix */
    const bool last = --g->n_left == 0;
    /* n > 1: each choice's finish is an event of its own; usage and timings close the stream.
     * n = 1: one event carries them all, as before. */
    if (g->stream && !r->error && g->n > 1) {
        json_t *o = chunk_base(g);
        json_object_set_new(o, "choices", json_pack("[o]", finish_choice(g, ch)));
        send_event(g, o);
    }
    if (!last) {
        pthread_mutex_unlock(&g->mu);
        return;
    }
    cairn_gen_result total = gen_total(g);
    release_slots(a, g->slots); /* before the answer goes out (see release_slots) */
    if (g->stream) {
        if (g->error) {
            json_t *e = json_pack("{s:{s:i,s:s,s:s}}", "error", "code", 503, "message", g->error,
                                  "type", "server_error");
            send_event(g, e);
        } else {
            json_t *o = chunk_base(g);
            json_object_set_new(o, "choices", g->n > 1 ? json_array()
                                                       : json_pack("[o]", finish_choice(g, ch)));
            json_object_set_new(o, "cairn", timings_json(g, &total));
            if (g->sources) json_object_set(o, "sources", g->sources);
            if (g->include_usage) json_object_set_new(o, "usage", usage_json(&total));
            send_event(g, o);
        }
        cairn_http_async_write(g->async, "data: [DONE]\n\n", 14);
        cairn_http_async_end(g->async);
    } else {
        cairn_http_resp resp = {0};
        if (g->error) {
            cairn_http_json_error(&resp, 503, "generation failed: %s", g->error);
            resp.retry_after_s = a->p.retry_after_s;
        } else {
            set_json(&resp, 200, answer_json(g, &total));
        }
        cairn_http_async_respond(g->async, &resp);
    }
    pthread_mutex_unlock(&g->mu);
    gen_free(g);
}

/* Renders msgs with the model's template; malloc'ed text or NULL with err. */
static char *render_chat(cairn_api *a, const cairn_chat_msg *msgs, size_t n, size_t *len,
                         cairn_error *err)
{
    return cairn_chat_render_alloc(cairn_workers_chat_template(a->p.workers), msgs, n, true, len,
                                   err);
}

/*
 * Submits the generation for g: the prompt pr when given (RAG: the text the pipeline built,
 * so that what is answered is what `cairn bench rag-answers` measures), else msgs rendered
 * with the chat template (g->chat), else r's prompt as is. Returns 0 (g now belongs to the
 * workers: do not touch it), or a CAIRN_E* code with nothing submitted (the caller answers
 * and frees g). Any thread.
 */
static int start_generation(cairn_api *a, gen_ctx *g, const cairn_api_req *r,
                            const cairn_chat_msg *msgs, size_t n_msgs, const cairn_rag_prompt *pr,
                            cairn_error *err)
{
    size_t plen = r->prompt_len;
    char *rendered = NULL;
    if (!pr && g->chat) {
        rendered = render_chat(a, msgs, n_msgs, &plen, err);
        if (!rendered) return cairn_error_prefix(err, "messages");
    }
    cairn_gen_request gr = {
        .prompt = pr ? pr->text : g->chat ? rendered : r->prompt,
        .prompt_len = pr ? pr->len : plen,
        .tok_flags = pr ? pr->tok_flags
                        : CAIRN_TOK_ADD_SPECIAL | (g->chat ? CAIRN_TOK_PARSE_SPECIAL : 0),
        .max_tokens = r->max_tokens,
        /* RAG fits its prompt to leave the answer room itself */
        .max_tokens_strict = r->max_tokens_given && r->kind != CAIRN_API_RAG,
        .sample = {.temperature = (float)r->temperature,
                   .top_k = r->top_k,
                   .top_p = (float)r->top_p,
                   .seed = r->has_seed ? r->seed : fresh_seed(),
                   .min_p = (float)r->min_p,
                   .repetition_penalty = (float)r->repetition_penalty,
                   .presence_penalty = (float)r->presence_penalty,
                   .frequency_penalty = (float)r->frequency_penalty,
                   .bias = r->bias,
                   .n_bias = r->n_bias},
        .stop = r->stop,
        .n_stop = r->n_stop,
        .on_text = gen_on_text,
        .on_done = gen_on_done,
        .user = g->users[0],
        .n = g->n,
        .choice_user = g->users,
        .logprobs = r->logprobs,
        .top_logprobs = r->top_logprobs,
        .on_logprob = gen_on_logprob,
    };
    bool stream = g->stream;
    cairn_http_async *async = g->async;
    int rc = cairn_workers_submit(a->p.workers, &gr, err);
    free(rendered);
    /* g may be gone already (a fast finish); the handle lives until this request completes,
     * which cannot happen before it is answered. */
    if (!rc && stream) cairn_http_async_stream_begin(async, "text/event-stream");
    return rc;
}

/* Answers a deferred request that failed before generation started, and releases g. */
static void fail_deferred(cairn_api *a, gen_ctx *g, int rc, const char *msg)
{
    cairn_http_resp e = {0};
    cairn_http_json_error(&e, status_of(rc), "%s", msg);
    if (rc == CAIRN_EBUSY) {
        e.retry_after_s = a->p.retry_after_s;
        cairn_counter_inc(a->c_shed);
    }
    release_slots(a, g->slots);
    cairn_http_async_respond(g->async, &e);
    gen_free(g);
}

/* Takes n admission slots (a generation of n choices runs n sequences); false (and 429 in
 * resp) when the service has not that many free. */
static bool admit_n(cairn_api *a, cairn_http_resp *resp, int n)
{
    if (atomic_fetch_add(&a->active, n) + n <= a->p.max_concurrent + a->p.max_queue) {
        cairn_gauge_add(a->g_active, n);
        return true;
    }
    atomic_fetch_sub(&a->active, n);
    cairn_counter_inc(a->c_shed);
    cairn_http_json_error(resp, 429, "too many requests in flight; retry later");
    resp->retry_after_s = a->p.retry_after_s;
    return false;
}

static bool admit(cairn_api *a, cairn_http_resp *resp) { return admit_n(a, resp, 1); }

/* Defers req and queues fn(task) on the aux pool; *slot gets the handle before fn can run.
 * Returns 0, or non-zero with the request answered (through resp or the handle). */
static int aux_submit(cairn_api *a, const cairn_http_req *req, cairn_http_resp *resp,
                      cairn_pool_task_fn fn, void *task, cairn_http_async **slot)
{
    pthread_rwlock_rdlock(&a->aux_lock);
    *slot = a->aux ? cairn_http_defer(req, resp) : NULL;
    int rc = *slot ? cairn_pool_submit(a->aux, fn, task) : CAIRN_ESTATE;
    pthread_rwlock_unlock(&a->aux_lock);
    if (!rc) return 0;
    cairn_http_resp e = {0};
    cairn_http_json_error(&e, rc == CAIRN_EBUSY ? 429 : 503, "%s",
                          rc == CAIRN_EBUSY ? "the request queue is full; retry later"
                                            : "the service is shutting down");
    e.retry_after_s = a->p.retry_after_s;
    if (*slot) cairn_http_async_respond(*slot, &e);
    else *resp = e;
    return rc;
}

/* ---- RAG ---------------------------------------------------------------------------------- */

typedef struct rag_task {
    cairn_api *api;
    gen_ctx *g;
    cairn_api_req r;
} rag_task;

static double since(int64_t t0) { return (double)(cairn_now_ns() - t0) / 1e9; }

/*
 * A RAG request on an aux thread: the pipeline (services/rag.c: embed, prefetch, rewrite/HyDE,
 * search, the messages with the passages), then the answer generation handed to the workers.
 */
static void rag_run(void *arg)
{
    rag_task *t = arg;
    cairn_api *a = t->api;
    gen_ctx *g = t->g;
    cairn_api_req *r = &t->r;
    cairn_error err = {0};
    cairn_rag_ask ask = {.question = r->prompt,
                         .msgs = r->messages,
                         .n_msgs = r->n_messages,
                         .opts = &r->rag,
                         .max_tokens = r->max_tokens,
                         .no_prefix = !a->p.rag_answer_prefix,
                         .workers = a->p.workers};
    cairn_rag_result res;
    int rc = cairn_rag_pipeline(a->p.rag, &ask, &res, &err);
    if (!rc) {
        cairn_histogram_observe(a->h_embed, res.embed_s);
        if (r->rag.mode != CAIRN_RAG_NONE) cairn_histogram_observe(a->h_pre, res.pre_s);
        cairn_histogram_observe(a->h_search, res.search_s);
        /* the sources are the passages the prompt holds; it says how many were cut or left out
         * to fit the context */
        g->sources = cairn_rag_hits_json(res.hits, res.prompt.n_passages);
        g->stages = json_pack("{s:f,s:f,s:f,s:s,s:s,s:f,s:f,s:i,s:i,s:i}", "embed_s", res.embed_s,
                              "pre_retrieval_s", res.pre_s, "search_s", res.search_s, "rag_mode",
                              r->rag.mode == CAIRN_RAG_HYDE      ? "hyde"
                              : r->rag.mode == CAIRN_RAG_REWRITE ? "rewrite"
                                                                 : "none",
                              "search_mode", cairn_search_mode_name(r->rag.search), "dense_s",
                              res.ss.dense_s, "lexical_s", res.ss.lexical_s, "rag_prompt_tokens",
                              res.prompt.tokens, "passages_truncated", res.prompt.n_truncated,
                              "passages_left_out", res.n_hits - res.prompt.n_passages);
        if (res.pre_text && g->stages)
            json_object_set_new(g->stages, "pre_retrieval_text",
                                json_text(res.pre_text, strlen(res.pre_text)));
        if (g->stages) json_object_set_new(g->stages, "index", cairn_rag_status_json(a->p.rag));
        if (res.prompt.answer_prefix && !(g->prefix = strdup(res.prompt.answer_prefix)))
            rc = cairn_errorf(&err, CAIRN_ENOMEM, "out of memory");
        /* completions' text_offset counts the answer's characters, the prefix's first */
        for (int i = 0; g->prefix && i < g->n; i++)
            g->ch[i].offset = utf8_chars(g->prefix, strlen(g->prefix));
        if (!rc) rc = start_generation(a, g, r, NULL, 0, &res.prompt, &err);
        cairn_rag_result_free(&res);
    }
    if (rc) fail_deferred(a, g, rc, err.msg[0] ? err.msg : "out of memory");
    cairn_api_req_free(r);
    free(t);
}

/* ---- Chat and completions ------------------------------------------------------------------- */

static void handle_generate(cairn_api *a, cairn_api_kind kind, const cairn_http_req *req,
                            cairn_http_resp *resp)
{
    if (!authorized(a, req, resp)) return;
    cairn_error err = {0};
    cairn_api_req r;
    int rc = cairn_api_parse(kind, req->body, req->body_len, &a->p.limits, &r, &err);
    if (rc) {
        cairn_http_json_error(resp, status_of(rc), "%s", err.msg);
        return;
    }
    gen_ctx *g = NULL;
    rag_task *t = NULL;
    if (r.model && strcmp(r.model, a->p.model_name) != 0) {
        cairn_http_json_error(resp, 404, "model: '%s' is not served here (try '%s')", r.model,
                              a->p.model_name);
        goto out;
    }
    if (r.rag.enabled && !a->p.rag) {
        cairn_http_json_error(resp, 503, "rag: no passage index is loaded on this server");
        goto out;
    }
    if (!a->p.workers) {
        cairn_http_json_error(resp, 503, "no generation model is loaded");
        goto out;
    }
    /* n choices run n sequences: they take n slots (all there are, for n past the limits) */
    const int n = r.n > 1 ? r.n : 1, cap = a->p.max_concurrent + a->p.max_queue,
              slots = n < cap ? n : cap;
    if (!admit_n(a, resp, slots)) goto out; /* shed before any work when the service is full */
    g = gen_new(n);
    t = r.rag.enabled ? calloc(1, sizeof *t) : NULL;
    if (!g || (r.rag.enabled && !t)) {
        cairn_http_json_error(resp, 503, "out of memory");
        release_slots(a, slots);
        goto out;
    }
    g->api = a;
    g->slots = slots;
    g->chat = kind != CAIRN_API_COMPLETION;
    g->stream = r.stream;
    g->logprobs = r.logprobs;
    json_t *so = json_object_get((json_t *)r.root, "stream_options");
    g->include_usage = so && json_is_true(json_object_get(so, "include_usage"));
    g->created = (int64_t)time(NULL);
    g->t_start = cairn_now_ns();
    snprintf(g->id, sizeof g->id, "%s-%llu", g->chat ? "chatcmpl" : "cmpl",
             (unsigned long long)atomic_fetch_add(&a->next_id, 1));

    if (r.rag.enabled) {
        /* Embedding and search are compute: they run on the aux pool, never here. */
        t->api = a;
        t->g = g;
        t->r = r;
        if (aux_submit(a, req, resp, rag_run, t, &g->async) != 0) {
            release_slots(a, slots);
            gen_free(g);
            free(t);
            cairn_api_req_free(&r);
        }
        return;
    }
    g->async = cairn_http_defer(req, resp);
    if (!g->async) {
        cairn_http_json_error(resp, 503, "out of memory");
        release_slots(a, slots);
        goto out;
    }
    rc = start_generation(a, g, &r, r.messages, r.n_messages, NULL, &err);
    if (rc) {
        fail_deferred(a, g, rc, err.msg); /* nothing was queued: answer now */
        g = NULL;
    } else {
        g = NULL; /* the workers own it */
    }
out:
    if (g) gen_free(g);
    free(t);
    cairn_api_req_free(&r);
}

static void on_chat(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    handle_generate(ctx, CAIRN_API_CHAT, req, resp);
}

static void on_completions(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    handle_generate(ctx, CAIRN_API_COMPLETION, req, resp);
}

static void on_rag(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    handle_generate(ctx, CAIRN_API_RAG, req, resp);
}

static void on_models(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    cairn_api *a = ctx;
    if (!authorized(a, req, resp)) return;
    json_t *data = json_array();
    if (a->p.workers)
        json_array_append_new(data, json_pack("{s:s,s:s,s:I,s:s}", "id", a->p.model_name,
                                              "object", "model", "created",
                                              (json_int_t)a->created, "owned_by", "cairn"));
    set_json(resp, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
}

/* ---- Embeddings ---------------------------------------------------------------------------- */

typedef struct embed_task {
    cairn_api *api;
    cairn_http_async *async;
    cairn_api_req r;
} embed_task;

/* OpenAI's base64 encoding: the little-endian float32 bytes, base64 (RFC 4648). */
static json_t *base64_floats(const float *v, int n)
{
    size_t bytes = (size_t)n * 4;
    unsigned char *raw = malloc(bytes);
    char *out = malloc(4 * ((bytes + 2) / 3) + 1);
    json_t *s = NULL;
    if (raw && out) {
        for (int i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, &v[i], 4);
            for (int b = 0; b < 4; b++) raw[4 * i + b] = (unsigned char)(u >> (8 * b));
        }
        int len = EVP_EncodeBlock((unsigned char *)out, raw, (int)bytes);
        s = json_stringn(out, (size_t)len);
    }
    free(raw);
    free(out);
    return s;
}

static void embed_run(void *arg)
{
    embed_task *t = arg;
    cairn_api *a = t->api;
    cairn_http_resp resp = {0};
    int dim = cairn_embed_dim(a->p.embed);
    float *v = malloc(t->r.n_inputs * (size_t)dim * sizeof *v);
    cairn_error err = {0};
    if (!v) {
        cairn_http_json_error(&resp, 503, "out of memory");
    } else if (cairn_embed_batch(a->p.embed, t->r.inputs, (int)t->r.n_inputs, v, &err) != 0) {
        cairn_http_json_error(&resp, 500, "embedding failed: %s", err.msg);
    } else {
        json_t *data = json_array();
        int tokens = 0;
        for (size_t i = 0; i < t->r.n_inputs; i++) {
            json_t *e = t->r.base64 ? base64_floats(v + i * dim, dim) : json_array();
            for (int d = 0; !t->r.base64 && d < dim; d++)
                json_array_append_new(e, json_real(v[i * dim + d]));
            json_array_append_new(data, json_pack("{s:s,s:I,s:o}", "object", "embedding",
                                                  "index", (json_int_t)i, "embedding", e));
            tokens += (int)(strlen(t->r.inputs[i]) + 3) / 4; /* approximate, as documented */
        }
        set_json(&resp, 200,
                 json_pack("{s:s,s:o,s:s,s:{s:i,s:i}}", "object", "list", "data", data, "model",
                           a->p.embed_model_name ? a->p.embed_model_name : "embedder",
                           "usage", "prompt_tokens", tokens, "total_tokens", tokens));
    }
    free(v);
    release_slot(a);
    cairn_http_async_respond(t->async, &resp);
    cairn_api_req_free(&t->r);
    free(t);
}

static void on_embeddings(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    cairn_api *a = ctx;
    if (!authorized(a, req, resp)) return;
    cairn_error err = {0};
    embed_task *t = calloc(1, sizeof *t);
    if (!t) {
        cairn_http_json_error(resp, 503, "out of memory");
        return;
    }
    int rc = cairn_api_parse(CAIRN_API_EMBEDDINGS, req->body, req->body_len, &a->p.limits, &t->r,
                             &err);
    if (rc) {
        cairn_http_json_error(resp, status_of(rc), "%s", err.msg);
        free(t);
        return;
    }
    if (!a->p.embed) {
        cairn_http_json_error(resp, 503, "no embedding model is loaded");
        goto fail;
    }
    if (!admit(a, resp)) goto fail;
    t->api = a;
    if (aux_submit(a, req, resp, embed_run, t, &t->async) != 0) {
        release_slot(a);
        goto fail;
    }
    return;
fail:
    cairn_api_req_free(&t->r);
    free(t);
}

/* ---- Retrieval and documents ------------------------------------------------------------- */

typedef struct index_task {
    cairn_api *api;
    cairn_http_async *async;
    cairn_api_req r;
    uint64_t doc_id; /* DELETE of a passage */
    char doc_key[CAIRN_API_DOC_ID_SIZE]; /* DELETE of a document: its id, else "" */
    int64_t t_start;
} index_task;

static void index_task_done(index_task *t, cairn_http_resp *resp)
{
    release_slot(t->api);
    cairn_http_async_respond(t->async, resp);
    cairn_api_req_free(&t->r);
    free(t);
}

static void retrieve_run(void *arg)
{
    index_task *t = arg;
    cairn_api *a = t->api;
    cairn_http_resp resp = {0};
    cairn_error err = {0};
    float *q = malloc((size_t)cairn_rag_dim(a->p.rag) * sizeof *q);
    cairn_rag_hit hits[CAIRN_RAG_MAX_K]; /* the parser keeps k within it */
    int n = 0;
    bool dense = t->r.rag.search != CAIRN_SEARCH_LEXICAL;
    cairn_lex_filter filters[CAIRN_API_MAX_FILTERS];
    cairn_rag_query rq = cairn_rag_query_of(&t->r.rag, t->r.prompt, NULL, filters);
    cairn_rag_search_stats ss = {0};
    double embed_s = 0;
    int64_t t1 = cairn_now_ns();
    /* embeds the query (dense, hybrid) and searches; hybrid's lexical list overlaps both */
    int rc = !q ? cairn_errorf(&err, CAIRN_ENOMEM, "out of memory")
                : cairn_rag_retrieve(a->p.rag, &rq, q, &embed_s, hits, &n, &ss, &err);
    double search_s = since(t1) - embed_s;
    if (rc) {
        cairn_http_json_error(&resp, 500, "retrieval failed: %s", err.msg);
    } else {
        if (dense) cairn_histogram_observe(a->h_embed, embed_s);
        cairn_histogram_observe(a->h_search, search_s);
        set_json(&resp, 200,
                 json_pack("{s:s,s:o,s:{s:s,s:f,s:f,s:f,s:f,s:f,s:o}}", "object", "list", "data",
                           cairn_rag_hits_json(hits, n), "cairn", "mode",
                           cairn_search_mode_name(t->r.rag.search), "embed_s", embed_s,
                           "search_s", search_s, "dense_s", ss.dense_s, "lexical_s",
                           ss.lexical_s, "total_s", since(t->t_start), "index",
                           cairn_rag_status_json(a->p.rag)));
    }
    cairn_rag_hits_free(hits, n);
    free(q);
    index_task_done(t, &resp);
}

/* A new document's id: "doc-" and 16 hex digits from the kernel's generator (unique across
 * replicas without coordination). */
static void new_document_id(char out[CAIRN_API_DOC_ID_SIZE])
{
    uint64_t v = fresh_seed();
    snprintf(out, CAIRN_API_DOC_ID_SIZE, "doc-%016llx", (unsigned long long)v);
}

/* Whether s is a document id as new_document_id makes them. */
static bool is_document_id(const char *s)
{
    if (strncmp(s, "doc-", 4) || strlen(s) != 20) return false;
    for (const char *p = s + 4; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) return false;
    return true;
}

/* POST /v1/documents: each document is chunked as the corpus is (cairn_rag_add_texts), each
 * chunk a passage whose metadata holds the document's id ("document") and its number
 * ("chunk"), beside the caller's metadata; all documents' passages are added together or not
 * at all. */
static void documents_run(void *arg)
{
    index_task *t = arg;
    cairn_api *a = t->api;
    cairn_http_resp resp = {0};
    cairn_error err = {0};
    size_t n = t->r.n_docs;
    cairn_api_doc *docs = calloc(n, sizeof *docs);
    char (*ids)[CAIRN_API_DOC_ID_SIZE] = calloc(n, sizeof *ids);
    size_t *counts = calloc(n, sizeof *counts);
    int rc = docs && ids && counts ? 0 : cairn_errorf(&err, CAIRN_ENOMEM, "out of memory");
    for (size_t i = 0; !rc && i < n; i++) {
        docs[i] = t->r.docs[i];
        new_document_id(ids[i]);
        json_t *meta = docs[i].metadata_json ? json_loads(docs[i].metadata_json, 0, NULL)
                                             : json_object();
        json_object_set_new(meta, "document", json_string(ids[i]));
        docs[i].metadata_json = json_dumps(meta, JSON_COMPACT);
        json_decref(meta);
        docs[i].key = ids[i];
        if (!docs[i].metadata_json) rc = cairn_errorf(&err, CAIRN_ENOMEM, "out of memory");
    }
    uint64_t first = 0;
    if (!rc) rc = cairn_rag_add_texts(a->p.rag, docs, n, a->p.max_upload_passages, &first, counts,
                                      &err);
    if (rc) {
        cairn_http_json_error(&resp, index_status(rc)                       ? index_status(rc)
                                     : rc == CAIRN_ELIMIT                   ? 413
                                     : rc == CAIRN_ENOMEM || rc == CAIRN_EIO ? 500
                                                                            : 400,
                              "%s", err.msg);
        if (index_status(rc) == 503) resp.retry_after_s = 1;
    } else {
        json_t *data = json_array();
        uint64_t id = first;
        for (size_t i = 0; i < n; i++) {
            json_t *pids = json_array();
            for (size_t j = 0; j < counts[i]; j++)
                json_array_append_new(pids, json_integer((json_int_t)(id + j)));
            json_array_append_new(data, json_pack("{s:I,s:s,s:I,s:o}", "id", (json_int_t)id,
                                                  "document", ids[i], "passages",
                                                  (json_int_t)counts[i], "passage_ids", pids));
            id += counts[i];
        }
        set_json(&resp, 200, json_pack("{s:s,s:o,s:I}", "object", "list", "data", data,
                                       "total_documents", (json_int_t)cairn_rag_count(a->p.rag)));
    }
    for (size_t i = 0; docs && i < n; i++) free((char *)docs[i].metadata_json);
    free(docs);
    free(ids);
    free(counts);
    index_task_done(t, &resp);
}

/* DELETE /v1/documents/{id}: a passage by its id, or a document's every chunk by its id. */
static void delete_run(void *arg)
{
    index_task *t = arg;
    cairn_http_resp resp = {0};
    cairn_error err = {0};
    size_t n = 1;
    int rc = t->doc_key[0]
                 ? cairn_rag_delete_where(t->api->p.rag, "document", t->doc_key, &n, &err)
                 : cairn_rag_delete(t->api->p.rag, t->doc_id, &err);
    if (rc == CAIRN_ENOTFOUND && t->doc_key[0])
        cairn_http_json_error(&resp, 404, "no document %s", t->doc_key);
    else if (rc == CAIRN_ENOTFOUND)
        cairn_http_json_error(&resp, 404, "no document with id %llu",
                              (unsigned long long)t->doc_id);
    else if (rc) {
        cairn_http_json_error(&resp, index_status(rc) ? index_status(rc) : 500,
                              "delete failed: %s", err.msg);
        if (index_status(rc) == 503) resp.retry_after_s = 1;
    } else if (t->doc_key[0])
        set_json(&resp, 200, json_pack("{s:s,s:b,s:I}", "id", t->doc_key, "deleted", 1,
                                        "passages", (json_int_t)n));
    else set_json(&resp, 200, json_pack("{s:I,s:b}", "id", (json_int_t)t->doc_id, "deleted", 1));
    index_task_done(t, &resp);
}

/* Shared path of the index endpoints: auth, parse (kind 0: no body), admission, aux pool. */
static void handle_index(cairn_api *a, cairn_api_kind kind, cairn_pool_task_fn fn,
                         const cairn_http_req *req, cairn_http_resp *resp)
{
    if (!authorized(a, req, resp)) return;
    index_task *t = calloc(1, sizeof *t);
    if (!t) {
        cairn_http_json_error(resp, 503, "out of memory");
        return;
    }
    t->api = a;
    t->t_start = cairn_now_ns();
    cairn_error err = {0};
    int rc = 0;
    if (kind) {
        rc = cairn_api_parse(kind, req->body, req->body_len, &a->p.limits, &t->r, &err);
    } else {
        /* DELETE /v1/documents/{id}: a passage's decimal id, or a document's doc-<16 hex>. */
        const char *s = req->path + strlen("/v1/documents/");
        char *end = NULL;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (is_document_id(s))
            snprintf(t->doc_key, sizeof t->doc_key, "%s", s);
        else if (!*s || *end || errno || *s == '-' || *s == '+' || *s == ' ')
            rc = cairn_errorf(&err, CAIRN_EINVAL,
                              "document id: '%.64s' is neither a passage id (decimal) nor a "
                              "document id (doc-<16 hex digits>)",
                              s);
        t->doc_id = v;
    }
    if (rc) cairn_http_json_error(resp, status_of(rc), "%s", err.msg);
    else if (!a->p.rag)
        cairn_http_json_error(resp, 503, "no passage index is loaded on this server");
    else if (admit(a, resp)) {
        if (aux_submit(a, req, resp, fn, t, &t->async) == 0) return;
        release_slot(a);
    }
    cairn_api_req_free(&t->r);
    free(t);
}

static void on_retrieve(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    handle_index(ctx, CAIRN_API_RETRIEVE, retrieve_run, req, resp);
}

static void on_documents(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    handle_index(ctx, CAIRN_API_DOCUMENTS, documents_run, req, resp);
}

static void on_document_delete(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    handle_index(ctx, 0, delete_run, req, resp);
}

/* ---- Uploads ------------------------------------------------------------------------------ */

typedef struct upload_task {
    cairn_api *api;
    cairn_http_async *async;
    char *data; /* the file, copied: the request's buffer belongs to the HTTP layer */
    size_t len;
    cairn_extract_kind kind;
    char *filename;
    char *meta; /* the caller's metadata plus source, kind, content_type, upload (JSON text) */
    char upload_id[32];
    int64_t t_start;
} upload_task;

static void upload_task_free(upload_task *t)
{
    free(t->data);
    free(t->filename);
    free(t->meta);
    free(t);
}

/* Status of an extraction or indexing error: the file is malformed (400), of a kind cairn
 * does not read (415), too large (413); or the server failed (500). */
static int upload_status(int rc)
{
    if (index_status(rc)) return index_status(rc);
    switch (rc) {
    case CAIRN_EUNSUPPORTED: return 415;
    case CAIRN_ELIMIT: return 413;
    case CAIRN_ENOMEM:
    case CAIRN_EIO: return 500;
    default: return 400;
    }
}

/* Extracts, chunks and indexes the file on an aux thread. Nothing is added unless every step
 * succeeds (cairn_rag_add_text adds all passages or none). */
static void upload_run(void *arg)
{
    upload_task *t = arg;
    cairn_api *a = t->api;
    cairn_http_resp resp = {0};
    cairn_error err = {0};
    cairn_extract_result x = {0};
    int64_t t0 = cairn_now_ns();
    int rc = cairn_extract(t->kind, t->data, t->len, a->p.max_upload_text, &x, &err);
    double extract_s = since(t0);
    int64_t t1 = cairn_now_ns();
    uint64_t first = 0;
    size_t n = 0;
    const char *title = x.title && x.title[0] ? x.title : t->filename;
    if (!rc)
        rc = cairn_rag_add_text(a->p.rag, x.text, x.text_len, t->filename, title, t->meta,
                                a->p.max_upload_passages, &first, &n, &err);
    if (rc) {
        cairn_http_json_error(&resp, upload_status(rc), "%s: %s", t->filename, err.msg);
    } else {
        json_t *data = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(data, json_pack("{s:I}", "id", (json_int_t)(first + i)));
        set_json(&resp, 200,
                 json_pack("{s:s,s:s,s:s,s:s,s:o,s:I,s:I,s:I,s:o,s:I,s:{s:f,s:f,s:f}}", "object",
                           "upload", "upload_id", t->upload_id, "filename", t->filename, "kind",
                           cairn_extract_kind_name(t->kind), "title",
                           json_text(title, strlen(title)), "bytes", (json_int_t)t->len,
                           "text_bytes", (json_int_t)x.text_len, "passages", (json_int_t)n,
                           "data", data, "total_documents",
                           (json_int_t)cairn_rag_count(a->p.rag), "cairn", "extract_s",
                           extract_s, "index_s", since(t1), "total_s", since(t->t_start)));
        CAIRN_LOG_INFO("document uploaded", "file=%s kind=%s bytes=%zu passages=%zu upload=%s",
                       t->filename, cairn_extract_kind_name(t->kind), t->len, n, t->upload_id);
    }
    cairn_extract_free(&x);
    release_slot(a);
    cairn_http_async_respond(t->async, &resp);
    upload_task_free(t);
}

/* The file's name without any directory part a client may have sent, checked: 1..255 bytes of
 * UTF-8 without control characters. Returns a pointer into name, or NULL with err. */
static const char *upload_name(const char *name, cairn_error *err)
{
    if (!name || !*name) {
        cairn_errorf(err, CAIRN_EINVAL, "filename: missing (POST /v1/documents/upload?filename="
                                        "report.pdf, with the file as the body)");
        return NULL;
    }
    const char *base = name;
    for (const char *p = name; *p; p++)
        if (*p == '/' || *p == '\\') base = p + 1;
    size_t n = strlen(base);
    bool ctrl = false;
    for (size_t i = 0; i < n; i++) ctrl |= (unsigned char)base[i] < 0x20 || base[i] == 0x7f;
    if (n == 0 || n > 255 || ctrl || !cairn_json_utf8_valid(base, n)) {
        cairn_errorf(err, CAIRN_EINVAL,
                     "filename: must be 1..255 bytes of UTF-8 without control characters");
        return NULL;
    }
    return base;
}

static void on_upload(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    cairn_api *a = ctx;
    if (!authorized(a, req, resp)) return;
    cairn_error err = {0};
    const char *name = upload_name(cairn_http_query(req, "filename"), &err);
    if (!name) {
        cairn_http_json_error(resp, 400, "%s", err.msg);
        return;
    }
    const char *ct = cairn_http_header(req, "Content-Type");
    if (ct && !strncasecmp(ct, "multipart/", 10)) {
        cairn_http_json_error(resp, 415, "send the file itself as the body, with its "
                                         "Content-Type; multipart forms are not read");
        return;
    }
    cairn_extract_kind kind;
    int rc = cairn_extract_kind_for(name, ct, &kind, &err);
    if (rc) {
        cairn_http_json_error(resp, rc == CAIRN_EUNSUPPORTED ? 415 : 400, "%s", err.msg);
        return;
    }
    if (req->body_len == 0) {
        cairn_http_json_error(resp, 400, "%s: the body is empty (send the file's bytes)", name);
        return;
    }
    /* Metadata: an optional JSON object of at most 4 KiB; cairn's own keys override its. */
    const char *m = cairn_http_query(req, "metadata");
    json_t *meta = NULL;
    if (m && strlen(m) > 4096) {
        cairn_http_json_error(resp, 400, "metadata: longer than 4096 bytes");
        return;
    }
    if (m && *m) {
        json_error_t je;
        meta = json_loads(m, JSON_REJECT_DUPLICATES, &je);
        if (!json_is_object(meta)) {
            json_decref(meta);
            cairn_http_json_error(resp, 400, "metadata: not a JSON object (%s)",
                                  meta ? "another JSON value" : je.text);
            return;
        }
    } else {
        meta = json_object();
    }
    if (!a->p.rag) {
        json_decref(meta);
        cairn_http_json_error(resp, 503, "no passage index is loaded on this server");
        return;
    }
    upload_task *t = calloc(1, sizeof *t);
    if (t) {
        t->api = a;
        t->kind = kind;
        t->len = req->body_len;
        t->t_start = cairn_now_ns();
        snprintf(t->upload_id, sizeof t->upload_id, "up-%llx-%llu",
                 (unsigned long long)time(NULL),
                 (unsigned long long)atomic_fetch_add(&a->next_id, 1));
        json_object_set_new(meta, "source", json_string(name));
        json_object_set_new(meta, "kind", json_string(cairn_extract_kind_name(kind)));
        json_object_set_new(meta, "upload", json_string(t->upload_id));
        t->meta = json_dumps(meta, JSON_COMPACT);
        t->filename = strdup(name);
        t->data = malloc(req->body_len);
    }
    json_decref(meta);
    if (!t || !t->meta || !t->filename || !t->data) {
        if (t) upload_task_free(t);
        cairn_http_json_error(resp, 503, "out of memory");
        return;
    }
    memcpy(t->data, req->body, req->body_len);
    if (!admit(a, resp)) {
        upload_task_free(t);
        return;
    }
    if (aux_submit(a, req, resp, upload_run, t, &t->async) != 0) {
        release_slot(a);
        upload_task_free(t);
    }
}

/* ---- GET /v1/documents: a page of passages, filtered --------------------------------------- */

#define LIST_MAX_FILTERS 8

typedef struct list_task {
    cairn_api *api;
    cairn_http_async *async;
    uint64_t after;
    bool all; /* no `after`: from the first passage */
    size_t limit;
    char *q; /* substring of key, title or text (any case), or NULL */
    bool full; /* whole texts, not 300-byte previews */
    size_t n_filters;
    char *fkey[LIST_MAX_FILTERS], *fval[LIST_MAX_FILTERS]; /* metadata.<key>=<value> */
    json_t *data;
    bool more;
    uint64_t last;
    cairn_error err;
    int rc;
} list_task;

static void list_task_free(list_task *t)
{
    free(t->q);
    for (size_t i = 0; i < t->n_filters; i++) free(t->fkey[i]), free(t->fval[i]);
    json_decref(t->data);
    free(t);
}

/* A metadata value as the text a filter compares with: strings as they are, numbers and
 * booleans as JSON writes them. */
static bool meta_equals(json_t *v, const char *want)
{
    char buf[64];
    if (json_is_string(v)) return !strcmp(json_string_value(v), want);
    if (json_is_integer(v))
        snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
    else if (json_is_boolean(v))
        snprintf(buf, sizeof buf, "%s", json_is_true(v) ? "true" : "false");
    else if (json_is_real(v)) snprintf(buf, sizeof buf, "%g", json_real_value(v));
    else return false;
    return !strcmp(buf, want);
}

static int list_visit(void *ctx, const cairn_doc *d)
{
    list_task *t = ctx;
    if (t->q && !strcasestr(d->key, t->q) && !strcasestr(d->title, t->q) &&
        !strcasestr(d->text, t->q))
        return 0;
    json_t *meta = json_loadb(d->meta, d->meta_len, 0, NULL);
    bool ok = true;
    for (size_t i = 0; ok && i < t->n_filters; i++)
        ok = meta_equals(json_object_get(meta, t->fkey[i]), t->fval[i]);
    if (!ok) {
        json_decref(meta);
        return 0;
    }
    if (json_array_size(t->data) == t->limit) { /* one past the page: there is more */
        json_decref(meta);
        t->more = true;
        return 1;
    }
    size_t n = t->full || d->text_len < 300 ? d->text_len : 300;
    while (n < d->text_len && n && ((unsigned char)d->text[n] & 0xC0) == 0x80) n--;
    json_array_append_new(t->data,
                          json_pack("{s:I,s:o,s:o,s:o,s:o,s:I}", "id", (json_int_t)d->id, "key",
                                    json_text(d->key, d->key_len), "title",
                                    json_text(d->title, d->title_len), "text",
                                    json_text(d->text, n), "metadata",
                                    meta ? meta : json_object(), "text_bytes",
                                    (json_int_t)d->text_len));
    t->last = d->id;
    return 0;
}

static void list_run(void *arg)
{
    list_task *t = arg;
    cairn_http_resp resp = {0};
    t->data = json_array();
    if (!t->data) {
        cairn_http_json_error(&resp, 503, "out of memory");
    } else {
        cairn_rag_scan(t->api->p.rag, t->after, t->all, list_visit, t);
        json_t *o = json_pack("{s:s,s:O,s:b,s:I}", "object", "list", "data", t->data, "has_more",
                              t->more, "total_documents",
                              (json_int_t)cairn_rag_count(t->api->p.rag));
        if (o && t->more) json_object_set_new(o, "next_after", json_integer((json_int_t)t->last));
        set_json(&resp, 200, o);
    }
    release_slot(t->api);
    cairn_http_async_respond(t->async, &resp);
    list_task_free(t);
}

static int list_arg(void *ctx, const char *name, const char *value)
{
    list_task *t = ctx;
    cairn_error *err = &t->err;
    if (!value) value = "";
    if (!strcmp(name, "after") || !strcmp(name, "limit")) {
        char *end = NULL;
        errno = 0;
        unsigned long long v = strtoull(value, &end, 10);
        if (!*value || *end || errno || *value == '-' || *value == '+' || *value == ' ')
            return cairn_errorf(err, CAIRN_EINVAL, "%s: '%.32s' is not an unsigned integer", name,
                                value);
        if (name[0] == 'a') {
            t->after = v;
            t->all = false;
        } else if (v < 1 || v > 500) {
            return cairn_errorf(err, CAIRN_ERANGE, "limit: %llu is outside 1..500", v);
        } else {
            t->limit = (size_t)v;
        }
    } else if (!strcmp(name, "full")) {
        if (strcmp(value, "1") && strcmp(value, "true") && strcmp(value, "0") &&
            strcmp(value, "false"))
            return cairn_errorf(err, CAIRN_EINVAL, "full: '%.16s' is not 1, 0, true or false",
                                value);
        t->full = value[0] == '1' || value[0] == 't';
    } else if (!strcmp(name, "q")) {
        if (!*value || strlen(value) > 200)
            return cairn_errorf(err, CAIRN_ERANGE, "q: must be 1..200 bytes");
        free(t->q);
        t->q = strdup(value);
        if (!t->q) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    } else if (!strncmp(name, "metadata.", 9)) {
        const char *k = name + 9;
        if (!*k || strlen(k) > 64 || strlen(value) > 256)
            return cairn_errorf(err, CAIRN_ERANGE,
                                "%.80s: the key must be 1..64 bytes and the value at most 256",
                                name);
        if (t->n_filters == LIST_MAX_FILTERS)
            return cairn_errorf(err, CAIRN_ELIMIT, "at most %d metadata filters",
                                LIST_MAX_FILTERS);
        t->fkey[t->n_filters] = strdup(k);
        t->fval[t->n_filters] = strdup(value);
        t->n_filters++;
        if (!t->fkey[t->n_filters - 1] || !t->fval[t->n_filters - 1])
            return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    } else {
        return cairn_errorf(err, CAIRN_EINVAL,
                            "unknown query parameter '%.64s' (after, limit, q, full, "
                            "metadata.<key>)",
                            name);
    }
    return 0;
}

static void on_documents_list(void *ctx, const cairn_http_req *req, cairn_http_resp *resp)
{
    cairn_api *a = ctx;
    if (!authorized(a, req, resp)) return;
    list_task *t = calloc(1, sizeof *t);
    if (!t) {
        cairn_http_json_error(resp, 503, "out of memory");
        return;
    }
    t->api = a;
    t->all = true;
    t->limit = 50;
    int rc = cairn_http_query_each(req, list_arg, t);
    if (rc) cairn_http_json_error(resp, rc == CAIRN_ENOMEM ? 503 : 400, "%s", t->err.msg);
    else if (!a->p.rag)
        cairn_http_json_error(resp, 503, "no passage index is loaded on this server");
    else if (admit(a, resp)) {
        if (aux_submit(a, req, resp, list_run, t, &t->async) == 0) return;
        release_slot(a);
    }
    list_task_free(t);
}

/* ---- Lifecycle ------------------------------------------------------------------------------ */

int cairn_api_new(cairn_api **out, const cairn_api_params *p, cairn_http *h,
                  cairn_metrics *metrics, cairn_error *err)
{
    *out = NULL;
    if (p->max_concurrent < 1 || p->max_queue < 0)
        return cairn_errorf(err, CAIRN_EINVAL, "limits: max_concurrent >= 1, max_queue >= 0");
    cairn_api *a = calloc(1, sizeof *a);
    if (!a) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    a->p = *p;
    a->created = (int64_t)time(NULL);
    atomic_init(&a->active, 0);
    atomic_init(&a->next_id, 1);
    pthread_rwlock_init(&a->aux_lock, NULL);
    cairn_pool_params pp = cairn_pool_default_params();
    /* Four workers: a RAG request holds one while its rewrite/HyDE generation runs. */
    pp.n_threads = 5;
    pp.queue_capacity = p->max_queue > 0 ? p->max_queue : 1;
    int rc = cairn_pool_open(&a->aux, &pp, err);
    if (!rc) rc = cairn_api_auth_new(&a->auth, p->api_keys, p->api_key_hashes, err);
    if (!rc && metrics)
        rc = cairn_counter_new(metrics, &a->c_shed, "cairn_requests_shed_total",
                               "Requests answered 429 because the service was full", err);
    if (!rc && metrics)
        rc = cairn_counter_new(metrics, &a->c_auth, "cairn_requests_unauthorized_total",
                               "Requests answered 401", err);
    if (!rc && metrics)
        rc = cairn_gauge_new(metrics, &a->g_active, "cairn_requests_admitted",
                             "Admission slots held by generation, embedding and index requests "
                             "not yet answered (running or queued; a generation of n choices "
                             "holds n); past limits.max_concurrent + limits.max_queue new ones "
                             "get 429",
                             err);
    if (!rc && metrics) {
        static const double b[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                   0.1,    0.25,  0.5,    1,     2.5,  5,     10};
        static const char *const stage[] = {"stage"};
        cairn_metric_family *f = NULL;
        rc = cairn_histogram_family_new(metrics, &f, "cairn_rag_stage_seconds",
                                        "Retrieval stages of /v1/retrieve and RAG requests: "
                                        "query embedding, pre-retrieval generation (rewrite or "
                                        "HyDE), hybrid search",
                                        stage, 1, 3, b, sizeof b / sizeof b[0], err);
        a->h_embed = cairn_histogram_child(f, CAIRN_LABELS("embed"));
        a->h_pre = cairn_histogram_child(f, CAIRN_LABELS("pre_retrieval"));
        a->h_search = cairn_histogram_child(f, CAIRN_LABELS("search"));
    }
    static const struct {
        const char *method, *path;
        cairn_http_handler fn;
    } routes[] = {
        {"POST", "/v1/chat/completions", on_chat},
        {"POST", "/v1/completions", on_completions},
        {"POST", "/v1/embeddings", on_embeddings},
        {"GET", "/v1/models", on_models},
        {"POST", "/v1/retrieve", on_retrieve},
        {"POST", "/v1/rag", on_rag},
        {"POST", "/v1/documents", on_documents},
        {"GET", "/v1/documents", on_documents_list},
        {"DELETE", "/v1/documents/*", on_document_delete},
    };
    for (size_t i = 0; !rc && i < sizeof routes / sizeof routes[0]; i++)
        rc = cairn_http_route(h, routes[i].method, routes[i].path, routes[i].fn, a);
    /* Before the DELETE prefix route matters not (methods differ), but uploads carry files:
     * their own body limit, well above the JSON endpoints'. */
    if (!rc)
        rc = cairn_http_route_limit(h, "POST", "/v1/documents/upload", on_upload, a,
                                    p->max_upload);
    if (rc) {
        cairn_api_free(a);
        return rc == CAIRN_ELIMIT ? cairn_errorf(err, rc, "the HTTP route table is full") : rc;
    }
    if (!cairn_api_auth_enabled(a->auth))
        CAIRN_LOG_WARN("no API keys configured", "detail=%s",
                       "every /v1 request is allowed; set auth.api_keys");
    *out = a;
    return 0;
}

void cairn_api_stop(cairn_api *a)
{
    if (!a) return;
    pthread_rwlock_wrlock(&a->aux_lock);
    cairn_pool *pool = a->aux;
    a->aux = NULL;
    pthread_rwlock_unlock(&a->aux_lock);
    cairn_pool_close(pool); /* runs what is queued: every deferred request gets its answer */
}

void cairn_api_free(cairn_api *a)
{
    if (!a) return;
    cairn_api_stop(a);
    pthread_rwlock_destroy(&a->aux_lock);
    cairn_api_auth_free(a->auth);
    free(a);
}
