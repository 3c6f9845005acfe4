/*
 * services/workers.c — generation workers (see workers.h).
 *
 * Shared state: the submission queue (a FIFO of jobs) is guarded by workers.mu; each worker
 * thread alone touches its engine and the jobs it admitted. A job belongs to the queue until a
 * worker takes it, then to that worker until on_done.
 */
#define CAIRN_LOG_TAG "workers"
#include "services/workers.h"

#include "common/clock.h"
#include "common/log.h"
#include "generation/kv.h"
#include "generation/model.h"
#include "generation/sample.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct job job;
struct job {
    job *next;
    cairn_gen_request r; /* callbacks; prompt/stop pointers are not kept */
    int32_t *tokens;     /* the prompt, then what was generated before each preemption */
    int n_tokens;
    int n_prompt, n_done; /* the prompt's tokens; tokens generated before the last admission */
    cairn_stop *stop;
    char pend[8]; /* bytes of an incomplete UTF-8 character */
    size_t n_pend;
    int seq;      /* engine sequence id once admitted, else -1 */
    bool stop_hit, caller_stop;
    bool oom; /* a preemption could not requeue it for want of memory */
    uint64_t group;        /* choices of one request share it (0: alone); admitted together,
                              the later ones follow the first's prompt (shared KV blocks) */
    bool has_rng;          /* rng holds its sampler's PRNG from before a preemption */
    cairn_sampler_rng rng; /* so that its draws go on where they stood */
    int64_t t_submit, t_admit, t_first, t_last, t_served;
    struct worker *wk;
};

/* A FIFO of jobs. */
typedef struct {
    job *head, *tail;
    int n;
} fifo;

static void fifo_push(fifo *q, job *j)
{
    j->next = NULL;
    if (q->tail) q->tail->next = j;
    else q->head = j;
    q->tail = j;
    q->n++;
}

/* Inserts j before the first job that arrived after it: a requeued job keeps its turn. */
static void fifo_insert(fifo *q, job *j)
{
    job **at = &q->head;
    while (*at && (*at)->t_submit <= j->t_submit)
        at = &(*at)->next;
    j->next = *at;
    *at = j;
    if (!j->next) q->tail = j;
    q->n++;
}

static job *fifo_pop(fifo *q)
{
    job *j = q->head;
    if (!j) return NULL;
    q->head = j->next;
    if (!q->head) q->tail = NULL;
    q->n--;
    j->next = NULL;
    return j;
}

typedef struct worker {
    struct cairn_workers *w;
    int index;
    pthread_t thread;
    cairn_engine *engine;
    job **active; /* max_seqs slots */
    int n_active;
    cairn_predictor *pred;
    int online_active;     /* online jobs among active[], as of the last plan */
    int kv_limit;          /* admit only below this many sequences (set when the KV ran out) */
    cairn_sched_seq *plan; /* max_seqs entries */
    cairn_step_item *items;
    int kv_total; /* blocks of the full-attention group (all free at open), for cairn_kv_used */
} worker;

struct cairn_workers {
    cairn_workers_params p;
    cairn_model *model;
    cairn_tok *tok;
    cairn_chat_template tmpl; /* the model's chat format (immutable after open) */
    int32_t *eog;
    int n_eog;
    int n_ctx;
    worker *wk;
    int n_wk;
    pthread_mutex_t mu; /* guards the queues, n_running, n_offline_running, closing */
    pthread_cond_t cv;
    fifo online, offline;
    int n_running, n_offline_running;
    bool closing;
    bool no_offline; /* cairn_workers_stop_offline: offline requests end, new ones are refused */
    cairn_gauge *g_running, *g_queue, *g_offline_queue, *g_mape, *g_budget, *g_kv;
    cairn_histogram *h_ttft, *h_itl, *h_e2e, *h_queue, *h_iter;
    cairn_counter *c_tokens, *c_offline_tokens, *c_preempt, *c_yield;
    cairn_metrics *own_metrics; /* a private registry when the caller gave none */
};

cairn_workers_params cairn_workers_default_params(void)
{
    return (cairn_workers_params){
        .n_workers = 1,
        .engine = cairn_engine_default_params(),
        .max_queue = 64,
        .max_offline_queue = 64,
        .online_reserve = 2,
        .timeout_ns = 300 * CAIRN_NS_PER_SEC,
        .sched = cairn_sched_default_params(),
        .predictor_window = 256,
        .layer_yield = true,
    };
}

/* ---- Per-token path ----------------------------------------------------------------------- */

static double secs(int64_t ns) { return (double)ns / 1e9; }

/* Feeds newly decoded bytes through the stop matcher to the caller. Returns non-zero to stop. */
static int emit(job *j, const char *s, size_t n)
{
    cairn_stop_result r = {0};
    if (j->stop) {
        if (cairn_stop_feed(j->stop, s, n, &r) != 0) return 1;
    } else {
        r.emit = s;
        r.emit_len = n;
        r.stop_index = -1;
    }
    int rc = j->r.on_text(j->r.user, r.emit, r.emit_len);
    if (rc) j->caller_stop = true;
    if (r.stop_index >= 0) j->stop_hit = true;
    return rc || r.stop_index >= 0;
}

/* Hands the caller the log-probabilities of seq's latest token, with the tokens' texts. */
static void report_logprobs(cairn_workers *w, job *j, int seq)
{
    const cairn_token_logprobs *lp = cairn_engine_seq_logprobs(j->wk->engine, seq);
    if (!lp) return;
    cairn_gen_logprob g;
    const cairn_logprob *src[1 + CAIRN_SAMPLE_MAX_LOGPROBS];
    cairn_gen_logprob_entry *dst[1 + CAIRN_SAMPLE_MAX_LOGPROBS];
    src[0] = &lp->chosen;
    dst[0] = &g.chosen;
    g.n_top = lp->n_top;
    for (int i = 0; i < lp->n_top; i++) {
        src[1 + i] = &lp->top[i];
        dst[1 + i] = &g.top[i];
    }
    for (int i = 0; i < 1 + lp->n_top; i++) {
        const char *t = "";
        size_t n = 0;
        if (cairn_tok_decode_piece(w->tok, src[i]->token, CAIRN_TOK_DECODE_SPECIAL, &t, &n))
            t = "", n = 0;
        *dst[i] = (cairn_gen_logprob_entry){t, n, src[i]->token, src[i]->logprob};
    }
    j->r.on_logprob(j->r.user, &g);
}

static int on_token(void *user, int seq_id, int32_t token, bool last)
{
    job *j = user;
    cairn_workers *w = j->wk->w;
    int64_t now = cairn_now_ns();
    if (!j->t_first) {
        j->t_first = now;
        cairn_histogram_observe(w->h_ttft, secs(now - j->t_submit));
    } else {
        cairn_histogram_observe(w->h_itl, secs(now - j->t_last));
    }
    j->t_last = now;
    cairn_counter_inc(j->r.offline ? w->c_offline_tokens : w->c_tokens);
    if (cairn_tok_is_eog(w->tok, token)) return 0; /* the engine ends the sequence */
    if (j->r.logprobs && j->r.on_logprob) report_logprobs(w, j, seq_id);
    const char *piece = NULL;
    size_t len = 0;
    if (cairn_tok_decode_piece(w->tok, token, 0, &piece, &len) != 0) len = 0;
    /* Join with held bytes; pass on only whole UTF-8 characters. */
    char buf[256];
    const char *s = piece;
    size_t n = len;
    if (j->n_pend) {
        if (j->n_pend + len <= sizeof buf) {
            memcpy(buf, j->pend, j->n_pend);
            memcpy(buf + j->n_pend, piece, len);
            s = buf;
            n = j->n_pend + len;
        }
        j->n_pend = 0;
    }
    size_t ok = last ? n : cairn_tok_utf8_complete(s, n);
    if (n - ok > sizeof j->pend) ok = n; /* not a character prefix: pass the bytes on */
    memcpy(j->pend, s + ok, n - ok);
    j->n_pend = n - ok;
    return emit(j, s, ok);
}

/* ---- Jobs --------------------------------------------------------------------------------- */

static void job_free(job *j)
{
    if (!j) return;
    cairn_stop_free(j->stop);
    free(j->tokens);
    free((cairn_logit_bias *)j->r.sample.bias);
    free(j);
}

/* Ends j: flushes held text, reports, frees. Worker thread (or closing thread). */
static void job_finish(cairn_workers *w, job *j, cairn_finish finish, const char *error)
{
    if (!error && j->stop && !j->stop_hit && !j->caller_stop) {
        cairn_stop_result r = {0};
        cairn_stop_flush(j->stop, &r);
        if (r.emit_len) j->r.on_text(j->r.user, r.emit, r.emit_len);
    }
    int64_t now = cairn_now_ns();
    cairn_gen_result res = {
        .finish = j->stop_hit ? CAIRN_FINISH_STOP : finish,
        .error = error,
        .n_prompt = j->n_prompt,
        .n_generated = j->n_done,
        .queue_s = j->t_admit ? secs(j->t_admit - j->t_submit) : secs(now - j->t_submit),
        .ttft_s = j->t_first ? secs(j->t_first - j->t_submit) : 0,
        .total_s = secs(now - j->t_submit),
    };
    if (j->seq >= 0) {
        cairn_seq_info info;
        if (cairn_engine_seq_info(j->wk->engine, j->seq, &info) == 0)
            res.n_generated += info.n_generated;
        cairn_engine_release(j->wk->engine, j->seq);
        cairn_gauge_dec(w->g_running);
        pthread_mutex_lock(&w->mu);
        w->n_running--;
        w->n_offline_running -= j->r.offline;
        pthread_mutex_unlock(&w->mu);
    }
    if (!error) cairn_histogram_observe(w->h_e2e, res.total_s);
    j->r.on_done(j->r.user, &res);
    job_free(j);
}

/* Engine slots not taken by running sequences: a queued job headed for one of them does not
 * count against max_queue. Called with w->mu held. */
static int free_slots(const cairn_workers *w)
{
    int n = w->n_wk * w->p.engine.max_seqs - w->n_running;
    return n > 0 ? n : 0;
}

/* Choice i of r as a job of its own: its copy of the prompt's tokens, the logit biases and a
 * stop matcher, its seed (seed + i) and its callback user. NULL with err on failure. */
static job *job_new(const cairn_gen_request *r, const int32_t *tokens, int n_tokens, int i,
                    uint64_t group, int64_t t_submit, cairn_error *err)
{
    job *j = calloc(1, sizeof *j);
    if (!j) {
        cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
        return NULL;
    }
    j->r = *r;
    j->r.prompt = NULL;
    j->r.stop = NULL;
    j->r.choice_user = NULL;
    j->r.user = r->n > 1 ? r->choice_user[i] : r->user;
    j->r.sample.seed = r->sample.seed + (uint64_t)i; /* wraps, as a seed may */
    j->r.sample.bias = NULL; /* the job's own copy: the caller's may go before the job ends */
    j->seq = -1;
    j->group = group;
    j->t_submit = t_submit;
    if (r->sample.n_bias > 0) {
        size_t bytes = sizeof *r->sample.bias * (size_t)r->sample.n_bias;
        cairn_logit_bias *b = malloc(bytes);
        if (b) memcpy(b, r->sample.bias, bytes);
        j->r.sample.bias = b;
    }
    j->tokens = malloc((size_t)n_tokens * sizeof *j->tokens);
    if (!j->tokens || (r->sample.n_bias > 0 && !j->r.sample.bias)) {
        job_free(j);
        cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
        return NULL;
    }
    memcpy(j->tokens, tokens, (size_t)n_tokens * sizeof *j->tokens);
    j->n_tokens = j->n_prompt = n_tokens;
    if (r->n_stop > 0 && cairn_stop_new(&j->stop, r->stop, (size_t)r->n_stop, err)) {
        job_free(j);
        return NULL;
    }
    return j;
}

int cairn_workers_submit(cairn_workers *w, const cairn_gen_request *r, cairn_error *err)
{
    if (!r->on_text || !r->on_done) return cairn_errorf(err, CAIRN_EINVAL, "callbacks missing");
    const int n = r->n > 1 ? r->n : 1;
    if (n > CAIRN_WORKERS_MAX_N)
        return cairn_errorf(err, CAIRN_EINVAL, "n: %d is above the maximum %d", r->n,
                            CAIRN_WORKERS_MAX_N);
    if (n > 1 && !r->choice_user)
        return cairn_errorf(err, CAIRN_EINVAL, "n: %d choices without their callback users", n);
    if (r->logprobs && (r->top_logprobs < 0 || r->top_logprobs > CAIRN_SAMPLE_MAX_LOGPROBS))
        return cairn_errorf(err, CAIRN_EINVAL, "top_logprobs: %d is outside 0..%d",
                            r->top_logprobs, CAIRN_SAMPLE_MAX_LOGPROBS);
    int rc = cairn_sample_params_validate(&r->sample, err);
    if (rc) return rc;
    int need = cairn_tok_encode(w->tok, r->prompt, r->prompt_len, NULL, 0, r->tok_flags, err);
    if (need == CAIRN_TOK_ENCODE_FAILED) return CAIRN_ENOMEM;
    need = need < 0 ? -need : need;
    if (need == 0) return cairn_errorf(err, CAIRN_EINVAL, "the prompt is empty");
    if (need >= w->n_ctx)
        return cairn_errorf(err, CAIRN_ELIMIT,
                            "the prompt is %d tokens; the context holds %d (prompt + max_tokens)",
                            need, w->n_ctx);
    /* The last token generated is never fed back: n_ctx - need + 1 fit. */
    if (r->max_tokens_strict && (int64_t)need + r->max_tokens > (int64_t)w->n_ctx + 1)
        return cairn_errorf(err, CAIRN_ERANGE,
                            "max_tokens: %d with a prompt of %d tokens is past the context of %d "
                            "tokens (at most %d here, or leave max_tokens out for what the "
                            "context leaves)",
                            r->max_tokens, need, w->n_ctx, w->n_ctx - need + 1);
    int32_t *tokens = malloc((size_t)need * sizeof *tokens);
    if (!tokens) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    int n_tokens = cairn_tok_encode(w->tok, r->prompt, r->prompt_len, tokens, need, r->tok_flags,
                                    err);
    if (n_tokens <= 0) {
        free(tokens);
        return cairn_errorf(err, CAIRN_EINVAL, "the prompt could not be tokenized");
    }
    static _Atomic uint64_t next_group;
    const uint64_t group = n > 1 ? __atomic_add_fetch(&next_group, 1, __ATOMIC_RELAXED) : 0;
    const int64_t t_submit = cairn_now_ns();
    job *jobs[CAIRN_WORKERS_MAX_N] = {0};
    for (int i = 0; i < n && !rc; i++)
        if (!(jobs[i] = job_new(r, tokens, n_tokens, i, group, t_submit, err)))
            rc = err && err->code ? err->code : CAIRN_ENOMEM;
    free(tokens);
    if (!rc) {
        pthread_mutex_lock(&w->mu);
        if (w->closing || (r->offline && w->no_offline))
            rc = cairn_errorf(err, CAIRN_ESTATE, "the service is shutting down");
        else if (r->offline && w->offline.n + n > w->p.max_offline_queue)
            rc = cairn_errorf(err, CAIRN_EBUSY, "the offline queue is full (%d waiting)",
                              w->offline.n);
        else if (!r->offline && w->online.n + n > w->p.max_queue + free_slots(w))
            rc = cairn_errorf(err, CAIRN_EBUSY,
                              "the generation queue is full (%d waiting); retry later",
                              w->online.n);
        if (!rc) {
            /* the choices side by side: one admission pass takes them together */
            for (int i = 0; i < n; i++) fifo_push(r->offline ? &w->offline : &w->online, jobs[i]);
            cairn_gauge_set(r->offline ? w->g_offline_queue : w->g_queue,
                            r->offline ? w->offline.n : w->online.n);
            pthread_cond_broadcast(&w->cv);
        }
        pthread_mutex_unlock(&w->mu);
    }
    if (rc)
        for (int i = 0; i < n; i++) job_free(jobs[i]);
    return rc;
}

int cairn_workers_load(cairn_workers *w)
{
    pthread_mutex_lock(&w->mu);
    int n = w->online.n + w->offline.n + w->n_running;
    pthread_mutex_unlock(&w->mu);
    return n;
}

int cairn_workers_offline_load(cairn_workers *w)
{
    pthread_mutex_lock(&w->mu);
    int n = w->offline.n + w->n_offline_running;
    pthread_mutex_unlock(&w->mu);
    return n;
}

double cairn_workers_predict_generation(cairn_workers *w, int prompt, int tokens)
{
    return cairn_predictor_generation(w->wk[0].pred, prompt, tokens, w->p.engine.max_batch_tokens);
}

double cairn_workers_predictor_mape(cairn_workers *w, int *n)
{
    return cairn_predictor_mape(w->wk[0].pred, n);
}

/* ---- The worker loop ---------------------------------------------------------------------- */

static void drop_active(worker *wk, int i)
{
    wk->active[i] = wk->active[--wk->n_active];
}

/*
 * Preemption by recompute: puts an admitted job back in its queue, in order of arrival, with
 * what it generated appended to its prompt. Its next admission prefills that and generation
 * goes on where it stopped, its sampler's PRNG where it stood (cairn_engine_seq_rng); its
 * submitter sees only a pause. Its engine sequence is released.
 * Called with w->mu held. Returns 0; or, leaving the job admitted for the caller to end,
 * CAIRN_ENOMEM (job->oom set), or CAIRN_ELIMIT when prompt and output fill the context (the engine
 * admits no prompt that long: the job ends there, one token short of where it would have).
 */
static int requeue(worker *wk, job *j)
{
    cairn_workers *w = wk->w;
    cairn_seq_info info;
    if (cairn_engine_seq_info(wk->engine, j->seq, &info) != 0) info.n_generated = 0;
    const int n = j->n_tokens + info.n_generated;
    if (n >= w->n_ctx) return CAIRN_ELIMIT;
    int32_t *t = realloc(j->tokens, sizeof *t * (size_t)n);
    if (!t) {
        j->oom = true;
        return CAIRN_ENOMEM;
    }
    memcpy(t + j->n_tokens, info.generated, sizeof *t * (size_t)info.n_generated);
    j->tokens = t;
    j->n_tokens = n;
    j->n_done += info.n_generated;
    j->has_rng = cairn_engine_seq_rng(wk->engine, j->seq, &j->rng) == 0;
    j->group = 0; /* its prompt is its own now */
    cairn_engine_release(wk->engine, j->seq);
    j->seq = -1;
    w->n_running--;
    w->n_offline_running -= j->r.offline;
    cairn_gauge_dec(w->g_running);
    cairn_counter_inc(w->c_preempt);
    fifo_insert(j->r.offline ? &w->offline : &w->online, j);
    CAIRN_LOG_INFO("preempted", "worker=%d offline=%d requeued_tokens=%d", wk->index,
                   (int)j->r.offline, n);
    return 0;
}

/* Moves queued jobs into wk's engine while it has room: online ones first, offline ones only
 * into slots beyond online_reserve, and none beyond wk->kv_limit. Called with w->mu held.
 * Returns a job the engine refused although it runs nothing (it never could run: the caller
 * finishes it); *ended gets preempted jobs that could not be requeued (job->oom says why). */
static job *admit(worker *wk, job **ended)
{
    cairn_workers *w = wk->w;
    const int max = w->p.engine.max_seqs;
    if (wk->n_active == 0) wk->kv_limit = max;
    const int cap = wk->kv_limit < max ? wk->kv_limit : max;
    /* Online requests waiting while offline ones fill the engine: offline sequences give their
     * slots up (requeued; the next pass admits the online ones). Any victim frees one slot, so
     * it is the one with the least work done (tokens in its KV cache), the newest among
     * equals: the least is recomputed. */
    for (int waiting = w->online.n; waiting > 0 && wk->n_active >= cap; waiting--) {
        int victim = -1, victim_work = 0;
        for (int i = 0; i < wk->n_active; i++) {
            job *j = wk->active[i];
            if (!j->r.offline) continue;
            cairn_seq_info info;
            cairn_engine_seq_info(wk->engine, j->seq, &info);
            int work = info.n_prefilled + info.n_generated;
            if (victim < 0 || work < victim_work ||
                (work == victim_work && j->t_submit > wk->active[victim]->t_submit))
                victim = i, victim_work = work;
        }
        if (victim < 0) break;
        job *j = wk->active[victim];
        drop_active(wk, victim);
        cairn_engine_cancel(wk->engine, j->seq);
        if (requeue(wk, j) != 0) {
            j->next = *ended;
            *ended = j;
        }
    }
    for (int cls = 0; cls < 2; cls++) {
        fifo *q = cls ? &w->offline : &w->online;
        const int room = cls ? max - w->p.online_reserve : max, limit = room < cap ? room : cap;
        job *leader = NULL; /* the first choice admitted in this pass, for its siblings */
        while (q->head && wk->n_active < limit) {
            job *j = q->head;
            cairn_gen_params gp = cairn_gen_default_params();
            gp.max_tokens = j->r.max_tokens - j->n_done;
            gp.sample = j->r.sample;
            gp.n_history = j->n_done; /* what it generated before a preemption */
            gp.stop_tokens = w->eog;
            gp.n_stop_tokens = w->n_eog;
            gp.on_token = on_token;
            gp.user = j;
            gp.logprobs = j->r.logprobs;
            gp.top_logprobs = j->r.top_logprobs;
            int id;
            cairn_error err = {0};
            int rc = -1;
            if (leader && j->group && leader->group == j->group)
                rc = cairn_engine_add_follower(wk->engine, leader->seq, &gp, &id, &err);
            if (rc) { /* alone, the first of its choices, or its leader has started */
                rc = cairn_engine_add(wk->engine, j->tokens, j->n_tokens, &gp, &id, &err);
                leader = !rc && j->group ? j : NULL;
            }
            if (rc && (rc == CAIRN_EBUSY || wk->n_active > 0)) break;
            fifo_pop(q);
            if (rc) {
                CAIRN_LOG_WARN("request refused", "worker=%d error=%s", wk->index, err.msg);
                cairn_gauge_set(w->g_queue, w->online.n);
                cairn_gauge_set(w->g_offline_queue, w->offline.n);
                return j;
            }
            w->n_running++;
            w->n_offline_running += j->r.offline;
            j->seq = id;
            j->wk = wk;
            if (j->has_rng) cairn_engine_seq_set_rng(wk->engine, id, &j->rng);
            if (!j->t_admit) { /* the first admission, not one after a preemption */
                j->t_admit = cairn_now_ns();
                cairn_histogram_observe(w->h_queue, secs(j->t_admit - j->t_submit));
            }
            cairn_gauge_inc(w->g_running);
            wk->active[wk->n_active++] = j;
        }
    }
    cairn_gauge_set(w->g_queue, w->online.n);
    cairn_gauge_set(w->g_offline_queue, w->offline.n);
    return NULL;
}


/* Moves the jobs of q that waited past timeout onto *out (oldest first). w->mu held. */
static void take_expired(fifo *q, int64_t timeout, int64_t now, job **out)
{
    while (timeout > 0 && q->head && now - q->head->t_submit > timeout) {
        job *j = fifo_pop(q);
        j->next = *out;
        *out = j;
    }
}

static void record(worker *wk, const cairn_batch_shape *shape, int n_items, int64_t t0);

static job *find_job(worker *wk, int seq)
{
    for (int i = 0; i < wk->n_active; i++)
        if (wk->active[i]->seq == seq) return wk->active[i];
    return NULL;
}

/* The ends of preempted jobs that could not be requeued (see requeue). */
static void end_unrequeued(cairn_workers *w, job *j)
{
    if (j->oom)
        job_finish(w, j, CAIRN_FINISH_CANCELLED, "out of memory");
    else
        job_finish(w, j, CAIRN_FINISH_CONTEXT, NULL);
}

/* Whether j's sequence holds KV blocks: a follower still waiting for its leader's prompt (a
 * choice 2..n) holds none, and preempting it would free nothing. */
static bool holds_kv(const worker *wk, const job *j)
{
    cairn_seq_info info;
    return cairn_engine_seq_info(wk->engine, j->seq, &info) != 0 || info.following < 0;
}

/* The KV cache ran out: the newest offline sequence that holds blocks gives way, or the newest
 * one if none is offline, and is requeued (recomputed when admitted again). No more sequences
 * than are left are admitted until one ends. A sequence alone that outgrew the cache ends with
 * an error. */
static void preempt(worker *wk)
{
    cairn_workers *w = wk->w;
    int victim = -1;
    bool victim_holds = false;
    for (int i = 0; i < wk->n_active; i++) {
        job *j = wk->active[i];
        const job *v = victim >= 0 ? wk->active[victim] : NULL;
        bool holds = holds_kv(wk, j);
        if (!v || (holds && !victim_holds) ||
            (holds == victim_holds &&
             ((j->r.offline && !v->r.offline) ||
              (j->r.offline == v->r.offline && j->t_submit > v->t_submit)))) {
            victim = i;
            victim_holds = holds;
        }
    }
    job *j = wk->active[victim];
    drop_active(wk, victim);
    cairn_engine_cancel(wk->engine, j->seq);
    if (wk->n_active == 0) {
        CAIRN_LOG_WARN("KV cache too small", "worker=%d", wk->index);
        job_finish(w, j, CAIRN_FINISH_CANCELLED,
                   "out of KV cache: the sequence alone needs more than the engine's cache");
        return;
    }
    wk->kv_limit = wk->n_active;
    pthread_mutex_lock(&w->mu);
    int rc = requeue(wk, j);
    pthread_mutex_unlock(&w->mu);
    if (rc) end_unrequeued(w, j);
}

/* Layer-level yield: an offline-only pass stops at the next layer boundary once an online
 * request waits for admission. Read without the lock: a stale answer only delays by a layer. */
static int online_waiting(void *ctx)
{
    cairn_workers *w = ctx;
    return __atomic_load_n(&w->online.n, __ATOMIC_RELAXED) > 0;
}

/* A suspended offline pass resumes one layer at a time while online sequences run on this
 * worker, so that their next tokens wait at most a layer, not the rest of the pass. */
static int online_present(void *ctx)
{
    worker *wk = ctx;
    return wk->online_active > 0 || online_waiting(wk->w);
}

/* Plans one iteration with the scheduler, runs it, and teaches the predictor its time. An
 * iteration with offline work only may yield at a layer boundary when online work arrives; the
 * suspended pass then advances at least one layer after each iteration that carries online work
 * (all of it at once when there is none), or under online-only not until none is left. */
static int iterate(worker *wk, cairn_error *err)
{
    cairn_workers *w = wk->w;
    int n = 0;
    wk->online_active = 0;
    for (int i = 0; i < wk->n_active; i++) {
        job *j = wk->active[i];
        cairn_seq_info info;
        cairn_engine_seq_info(wk->engine, j->seq, &info);
        wk->online_active += !j->r.offline;
        if (info.held) continue;           /* in the suspended pass */
        if (info.following >= 0) continue; /* waits for its leader's prompt */
        wk->plan[n++] = (cairn_sched_seq){
            .id = j->seq,
            .online = !j->r.offline,
            .prefilling = info.prefilling,
            .remaining = info.n_prompt - info.n_prefilled,
            .ctx = info.n_prefilled + info.n_generated,
            .t_arrival = j->t_submit,
            .t_served = j->t_served,
        };
    }
    cairn_batch_shape shape;
    int64_t t0 = cairn_now_ns();
    int n_items = cairn_sched_plan(&w->p.sched, wk->pred, wk->plan, n,
                                   __atomic_load_n(&w->online.n, __ATOMIC_RELAXED), t0,
                                   wk->items, &shape);
    bool online = false;
    for (int i = 0; i < n_items && !online; i++) {
        job *j = find_job(wk, wk->items[i].id);
        online = j && !j->r.offline;
    }
    bool suspended = cairn_engine_suspended(wk->engine);
    int rc = 0;
    if (suspended && !online) n_items = 0; /* finish the suspended offline pass first */
    if (n_items > 0) {
        if (w->p.layer_yield && !online && !suspended) {
            rc = cairn_engine_step_yield(wk->engine, wk->items, n_items, online_waiting, w, err);
            if (rc == CAIRN_ENGINE_SUSPENDED) {
                cairn_counter_inc(w->c_yield);
                return 0;
            }
        } else {
            rc = cairn_engine_step(wk->engine, wk->items, n_items, err);
        }
        if (rc) return rc;
        record(wk, &shape, n_items, t0);
    }
    if (cairn_engine_suspended(wk->engine)) {
        /* online-only runs offline work only while no online sequence runs: its suspended
         * pass waits for that, where the other policies advance it a layer at a time. */
        if (w->p.sched.policy == CAIRN_SCHED_ONLINE_ONLY && wk->online_active > 0) return 0;
        rc = cairn_engine_resume(wk->engine, w->p.layer_yield ? online_present : NULL, wk, err);
        if (rc == CAIRN_ENGINE_SUSPENDED) cairn_counter_inc(w->c_yield);
        return rc == CAIRN_ENGINE_SUSPENDED ? 0 : rc;
    }
    return 0;
}

/* After a completed iteration planned at t0: its time to the predictor and the metrics. */
static void record(worker *wk, const cairn_batch_shape *shape, int n_items, int64_t t0)
{
    cairn_workers *w = wk->w;
    int64_t t1 = cairn_now_ns();
    double dt = secs(t1 - t0);
    cairn_predictor_observe(wk->pred, shape, dt);
    cairn_histogram_observe(w->h_iter, dt);
    if (wk->index == 0) cairn_gauge_set(w->g_mape, cairn_predictor_mape(wk->pred, NULL));
    if (wk->index == 0 && wk->kv_total > 0)
        cairn_gauge_set(w->g_kv, 1.0 - (double)cairn_kv_free_blocks(cairn_engine_kv(wk->engine),
                                                                     0) / wk->kv_total);
    for (int i = 0; i < n_items; i++) {
        job *j = find_job(wk, wk->items[i].id);
        if (j) j->t_served = t1;
    }
}

/* Ends the active jobs that finished (length, stop token, stop string, caller) or ran too long:
 * before admission, so that their slots and KV blocks count as free and none is preempted. */
static void end_finished(worker *wk)
{
    cairn_workers *w = wk->w;
    int64_t now = cairn_now_ns();
    for (int i = 0; i < wk->n_active;) {
        job *j = wk->active[i];
        cairn_seq_info info;
        cairn_engine_seq_info(wk->engine, j->seq, &info);
        int64_t limit = j->r.offline ? w->p.offline_timeout_ns : w->p.timeout_ns;
        bool late = limit > 0 && now - j->t_submit > limit;
        if (info.finish == CAIRN_FINISH_NONE && !late) {
            i++;
            continue;
        }
        drop_active(wk, i);
        wk->kv_limit = w->p.engine.max_seqs; /* its KV blocks are free again */
        if (late && info.finish == CAIRN_FINISH_NONE) {
            cairn_engine_cancel(wk->engine, j->seq);
            job_finish(w, j, CAIRN_FINISH_CANCELLED, "timed out");
        } else {
            job_finish(w, j, info.finish, NULL);
        }
    }
}

static void *worker_main(void *arg)
{
    worker *wk = arg;
    cairn_workers *w = wk->w;
    for (;;) {
        end_finished(wk);
        pthread_mutex_lock(&w->mu);
        while (!w->closing && !w->online.head && !w->offline.head && wk->n_active == 0)
            pthread_cond_wait(&w->cv, &w->mu);
        bool closing = w->closing;
        /* Requests that waited past the deadline in the queue are failed, oldest first. */
        job *expired = NULL;
        if (!closing) {
            int64_t t_now = cairn_now_ns();
            take_expired(&w->online, w->p.timeout_ns, t_now, &expired);
            take_expired(&w->offline, w->p.offline_timeout_ns, t_now, &expired);
        }
        /* A graceful stop sheds the offline work: what waits in the queue, and what this
         * worker runs (below, outside the lock). */
        const bool shed = w->no_offline;
        job *shed_queued = NULL;
        for (job *j; shed && (j = fifo_pop(&w->offline));) {
            j->next = shed_queued;
            shed_queued = j;
        }
        if (shed) cairn_gauge_set(w->g_offline_queue, w->offline.n);
        job *ended = NULL;
        job *rejected = closing ? NULL : admit(wk, &ended);
        pthread_mutex_unlock(&w->mu);
        while (shed_queued) {
            job *next = shed_queued->next;
            job_finish(w, shed_queued, CAIRN_FINISH_CANCELLED, "shutting down");
            shed_queued = next;
        }
        for (int i = 0; shed && i < wk->n_active;) {
            job *j = wk->active[i];
            if (!j->r.offline) {
                i++;
                continue;
            }
            drop_active(wk, i);
            cairn_engine_cancel(wk->engine, j->seq);
            job_finish(w, j, CAIRN_FINISH_CANCELLED, "shutting down");
        }
        if (closing) break;
        if (rejected) job_finish(w, rejected, CAIRN_FINISH_CANCELLED, "the engine refused it");
        while (ended) {
            job *next = ended->next;
            end_unrequeued(w, ended);
            ended = next;
        }
        while (expired) {
            job *next = expired->next;
            job_finish(w, expired, CAIRN_FINISH_CANCELLED, "timed out waiting for a worker");
            expired = next;
        }
        if (wk->n_active == 0) continue;

        cairn_error err = {0};
        int rc = iterate(wk, &err);
        if (rc == CAIRN_EBUSY && wk->n_active > 0) {
            preempt(wk);
        } else if (rc) {
            CAIRN_LOG_ERROR("step failed", "worker=%d error=%s", wk->index, err.msg);
            while (wk->n_active > 0) {
                job *j = wk->active[0];
                drop_active(wk, 0);
                cairn_engine_cancel(wk->engine, j->seq);
                job_finish(w, j, CAIRN_FINISH_CANCELLED, "generation failed");
            }
        }
    }
    /* Shutdown: cancel what this worker runs. */
    while (wk->n_active > 0) {
        job *j = wk->active[0];
        drop_active(wk, 0);
        cairn_engine_cancel(wk->engine, j->seq);
        job_finish(w, j, CAIRN_FINISH_CANCELLED, "shutting down");
    }
    return NULL;
}

/* ---- Lifecycle ------------------------------------------------------------------------------ */

static int make_metrics(cairn_workers *w, cairn_metrics *m, cairn_error *err)
{
    static const double lat[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
    const size_t nl = sizeof lat / sizeof lat[0];
    int rc = cairn_gauge_new(m, &w->g_running, "cairn_sequences_running",
                             "Generation sequences admitted into an engine and not yet ended", err);
    if (!rc) rc = cairn_gauge_new(m, &w->g_queue, "cairn_generation_queue_depth",
                                  "Generation requests waiting for admission", err);
    if (!rc) rc = cairn_histogram_new(m, &w->h_ttft, "cairn_ttft_seconds",
                                      "Time to first token, from submission", lat, nl, err);
    if (!rc) rc = cairn_histogram_new(m, &w->h_itl, "cairn_inter_token_seconds",
                                      "Time between consecutive tokens of a sequence", lat, nl,
                                      err);
    if (!rc) rc = cairn_histogram_new(m, &w->h_e2e, "cairn_e2e_seconds",
                                      "Generation request time, submission to last token", lat,
                                      nl, err);
    if (!rc) rc = cairn_histogram_new(m, &w->h_queue, "cairn_generation_queue_seconds",
                                      "Time a generation request waited for admission", lat, nl,
                                      err);
    if (!rc) rc = cairn_counter_new(m, &w->c_tokens, "cairn_generated_tokens_total",
                                    "Tokens generated for online requests", err);
    if (!rc) rc = cairn_counter_new(m, &w->c_offline_tokens, "cairn_offline_tokens_total",
                                    "Tokens generated for offline (batch job) requests", err);
    if (!rc)
        rc = cairn_counter_new(m, &w->c_preempt, "cairn_sched_preemptions_total",
                               "Sequences preempted (requeued, to be recomputed) to free KV "
                               "cache blocks or a slot for online work",
                               err);
    if (!rc) rc = cairn_counter_new(m, &w->c_yield, "cairn_sched_layer_yields_total",
                                    "Offline-only passes stopped at a layer boundary for online "
                                    "work", err);
    if (!rc) rc = cairn_gauge_new(m, &w->g_offline_queue, "cairn_offline_queue_depth",
                                  "Offline generation requests waiting for admission", err);
    if (!rc) rc = cairn_gauge_new(m, &w->g_mape, "cairn_sched_predictor_mape",
                                  "Mean absolute percentage error (fraction) of the iteration "
                                  "latency predictor on its recent iterations, out of sample",
                                  err);
    if (!rc) rc = cairn_gauge_new(m, &w->g_budget, "cairn_sched_budget_seconds",
                                  "Per-iteration latency budget of the slo policy", err);
    if (!rc) rc = cairn_gauge_new(m, &w->g_kv, "cairn_kv_used",
                                  "Fraction of the first engine's KV cache blocks in use (its "
                                  "full-attention layers), after its last iteration", err);
    static const double it[] = {0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5};
    if (!rc) rc = cairn_histogram_new(m, &w->h_iter, "cairn_sched_iteration_seconds",
                                      "Time of one engine iteration (forward pass)", it,
                                      sizeof it / sizeof it[0], err);
    if (!rc) cairn_gauge_set(w->g_budget, w->p.sched.budget_s);
    return rc;
}

int cairn_workers_open(cairn_workers **out, const cairn_workers_params *p, cairn_metrics *metrics,
                       cairn_error *err)
{
    *out = NULL;
    if (p->n_workers < 1 || p->n_workers > 64)
        return cairn_errorf(err, CAIRN_EINVAL, "workers: %d is outside 1..64", p->n_workers);
    if (p->max_queue < 0 || p->max_offline_queue < 0)
        return cairn_errorf(err, CAIRN_EINVAL, "workers: queue lengths must be >= 0");
    if (p->online_reserve < 0 || p->online_reserve >= p->engine.max_seqs)
        return cairn_errorf(err, CAIRN_EINVAL,
                            "workers: online_reserve %d must be in 0..max_seqs-1 (%d)",
                            p->online_reserve, p->engine.max_seqs - 1);
    if (!(p->sched.budget_s > 0) || !(p->sched.online_budget_s > 0) ||
        p->sched.min_chunk < 1 || p->sched.starve_ns < 0)
        return cairn_errorf(err, CAIRN_EINVAL,
                            "workers: scheduler budgets must be > 0, min_chunk >= 1, "
                            "starvation age >= 0");
    if (!(p->sched.offline_occupancy > 0 && p->sched.offline_occupancy <= 1))
        return cairn_errorf(err, CAIRN_EINVAL,
                            "workers: offline occupancy %g is outside (0, 1]",
                            p->sched.offline_occupancy);
    cairn_workers *w = calloc(1, sizeof *w);
    if (!w) return cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    w->p = *p;
    w->p.model_path = NULL;
    w->p.chat_template = NULL;
    w->p.predictor = NULL;
    w->p.sched.max_batch_tokens = p->engine.max_batch_tokens;
    w->p.sched.max_seqs = p->engine.max_seqs;
    if (w->p.sched.online_budget_s < w->p.sched.budget_s) /* online never gets less */
        w->p.sched.online_budget_s = w->p.sched.budget_s;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    int rc = 0;
    if (!metrics) rc = cairn_metrics_new(&w->own_metrics, err);
    if (!rc) rc = make_metrics(w, metrics ? metrics : w->own_metrics, err);
    if (!rc) rc = cairn_model_open(&w->model, p->model_path, err);
    if (!rc) rc = cairn_tok_open(&w->tok, cairn_model_gguf(w->model), err);
    if (!rc) rc = cairn_chat_template_of(cairn_model_gguf(w->model), p->chat_template, &w->tmpl,
                                         err);
    if (!rc) {
        int32_t nv = cairn_tok_vocab_size(w->tok);
        for (int32_t i = 0; i < nv; i++) w->n_eog += cairn_tok_is_eog(w->tok, i);
        w->eog = malloc((size_t)(w->n_eog ? w->n_eog : 1) * sizeof *w->eog);
        if (!w->eog) rc = cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
        for (int32_t i = 0, k = 0; !rc && i < nv; i++)
            if (cairn_tok_is_eog(w->tok, i)) w->eog[k++] = i;
        int train = cairn_model_hparams_of(w->model)->n_ctx_train;
        w->n_ctx = p->engine.n_ctx ? p->engine.n_ctx : (train < 4096 ? train : 4096);
    }
    if (!rc) {
        w->wk = calloc((size_t)p->n_workers, sizeof *w->wk);
        if (!w->wk) rc = cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
    }
    for (int i = 0; !rc && i < p->n_workers; i++) {
        worker *wk = &w->wk[i];
        wk->w = w;
        wk->index = i;
        wk->kv_limit = p->engine.max_seqs;
        wk->active = calloc((size_t)p->engine.max_seqs, sizeof *wk->active);
        wk->plan = calloc((size_t)p->engine.max_seqs, sizeof *wk->plan);
        wk->items = calloc((size_t)p->engine.max_seqs, sizeof *wk->items);
        if (!wk->active || !wk->plan || !wk->items)
            rc = cairn_errorf(err, CAIRN_ENOMEM, "out of memory");
        if (!rc) rc = cairn_predictor_new(&wk->pred, p->predictor_window, err);
        if (!rc && p->predictor) cairn_predictor_set_coefficients(wk->pred, p->predictor);
        if (!rc) rc = cairn_engine_open(&wk->engine, w->model, &p->engine, err);
        if (!rc) {
            /* The predictor's step features follow the engine's device. */
            cairn_backend *be = cairn_engine_backend(wk->engine);
            cairn_backend_traits tr;
            be->i->traits(be, &tr);
            cairn_predictor_set_traits(wk->pred, &tr);
        }
        if (!rc) wk->kv_total = cairn_kv_free_blocks(cairn_engine_kv(wk->engine), 0);
        if (!rc && pthread_create(&wk->thread, NULL, worker_main, wk) != 0) {
            cairn_engine_close(wk->engine);
            wk->engine = NULL;
            rc = cairn_errorf(err, CAIRN_EIO, "cannot start worker thread %d", i);
        }
        if (!rc) w->n_wk++;
    }
    if (rc) {
        cairn_workers_close(w);
        return rc;
    }
    *out = w;
    return 0;
}

void cairn_workers_stop(cairn_workers *w)
{
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    bool was = w->closing;
    w->closing = true;
    fifo q[2] = {w->online, w->offline};
    w->online = w->offline = (fifo){0};
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (was) return;
    for (int i = 0; i < w->n_wk; i++) pthread_join(w->wk[i].thread, NULL);
    w->n_wk = 0;
    for (int c = 0; c < 2; c++)
        for (job *j; (j = fifo_pop(&q[c]));)
            job_finish(w, j, CAIRN_FINISH_CANCELLED, "shutting down");
}

void cairn_workers_stop_offline(cairn_workers *w)
{
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    w->no_offline = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

void cairn_workers_close(cairn_workers *w)
{
    if (!w) return;
    cairn_workers_stop(w);
    if (w->wk)
        for (int i = 0; i < w->p.n_workers; i++) {
            cairn_engine_close(w->wk[i].engine);
            cairn_predictor_free(w->wk[i].pred);
            free(w->wk[i].active);
            free(w->wk[i].plan);
            free(w->wk[i].items);
        }
    free(w->wk);
    free(w->eog);
    cairn_tok_close(w->tok);
    cairn_model_close(w->model);
    cairn_metrics_free(w->own_metrics);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

const cairn_tok *cairn_workers_tokenizer(const cairn_workers *w) { return w->tok; }
cairn_chat_family cairn_workers_chat_family(const cairn_workers *w) { return w->tmpl.family; }
const cairn_chat_template *cairn_workers_chat_template(const cairn_workers *w) { return &w->tmpl; }
int cairn_workers_n_ctx(const cairn_workers *w) { return w->n_ctx; }
