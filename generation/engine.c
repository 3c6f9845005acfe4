/*
 * generation/engine.c — sequences, step() over a caller-chosen batch, the simple run loop.
 *
 * A sequence's prompt and generated tokens are kept; its K/V rows live in the paged cache
 * (one kv sequence each). A decoding sequence holds one sampled token that has not been fed
 * yet ("pending"): the next step feeds it at position n_prompt + n_generated - 1.
 *
 * A follower (cairn_engine_add_follower: choice 2..n of one prompt) has no kv sequence while
 * it waits; the pass that completes its leader's prompt forks the leader's blocks for it and
 * samples its first token from the leader's logits row, before the leader's own token is taken
 * (which may end the leader and free its blocks).
 */
#define CAIRN_LOG_TAG "engine"
#include "generation/engine.h"

#include "common/log.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Whether a GPU engine takes its logits rows' first entries (logits_pick) unless
 * CAIRN_LOGITS_PICK says: yes (test_backend_ops' test_logits_pick and test_cuda_model's
 * test_engine_picks pass on an H100; batch 64 decodes 27% faster: docs/BENCHMARKS.md). */
#define PICK_BY_DEFAULT true

typedef struct {
    bool used;
    int kv_seq; /* -1 once freed */
    int32_t *prompt;
    int n_prompt, n_prefilled;
    int32_t *gen;
    int n_gen, max_tokens;
    int32_t *stops;
    int n_stops;
    cairn_sampler *sampler; /* NULL: greedy */
    cairn_token_cb cb;
    void *user;
    cairn_finish finish;
    uint64_t stamp; /* last step that listed it, to catch duplicates */
    bool held;      /* in a suspended pass (cairn_engine_step_yield) */
    int follow;     /* the leader whose prompt's blocks it waits to share, or -1 */
    int pick_k;     /* entries of its logits row that stand for the row (0: the whole row) */
    bool want_lp;   /* compute logprobs of each sampled token */
    int top_lp;     /* alternatives with them */
    bool has_lp;    /* lp holds the latest token's */
    cairn_token_logprobs lp;
} eseq;

struct cairn_engine {
    const cairn_model *m;
    cairn_engine_params p;
    int n_vocab;
    cairn_pool *pool;
    cairn_backend *be; /* the device's (p.device), computing on pool when it is the CPU */
    cairn_kv *kv;
    cairn_model_ws *ws;
    eseq *seqs;
    /* Batch arrays (max_batch_tokens) and logits rows (one per sequence at most). */
    int32_t *b_tok, *b_seq, *b_pos;
    uint8_t *b_logits;
    int32_t *b_plen; /* per batch token: its prompt's length (cairn_batch.prompt_len) */
    int *row_of_item;
    float *logits;
    /* Per logits row, what the backend sends back (NULL: whole rows into logits): a GPU's
     * logits_pick, its entries in cand (CAIRN_BACKEND_MAX_PICK a row). */
    cairn_bpick *picks;
    cairn_cand *cand;
    int32_t *sampled; /* per item of the pass being completed: its token, or an error code */
    cairn_step_item *run_items;
    uint64_t n_steps;
    int *pre_len; /* per item of the pass being prepared: its KV length before the pass */
    /* A pass stopped at a layer boundary: its batch, items, rows and hidden states, kept until
     * cairn_engine_resume completes it or a cancel of one of its sequences abandons it. */
    bool susp;
    int susp_n;
    cairn_step_item *susp_items;
    int *susp_row, *susp_pre_len;
    int32_t *s_tok, *s_seq, *s_pos;
    uint8_t *s_logits;
    int32_t *s_plen;
    int s_nt;
    float *x_save;
    cairn_model_yield y;
};

cairn_engine_params cairn_engine_default_params(void)
{
    return (cairn_engine_params){.n_threads = 0, .n_ctx = 0, .max_seqs = 8,
                                 .max_batch_tokens = 512, .block_tokens = 16, .kv_blocks = 0,
                                 .device = -1};
}

cairn_gen_params cairn_gen_default_params(void)
{
    return (cairn_gen_params){.max_tokens = 128, .sample = cairn_sample_greedy_params()};
}

static void promote_followers(cairn_engine *e, eseq *leader);

static void seq_clear(cairn_engine *e, eseq *s)
{
    promote_followers(e, s);
    if (s->kv_seq >= 0)
        cairn_kv_seq_free(e->kv, s->kv_seq);
    free(s->prompt);
    free(s->gen);
    free(s->stops);
    cairn_sampler_free(s->sampler);
    memset(s, 0, sizeof *s);
    s->kv_seq = -1;
    s->follow = -1;
}

void cairn_engine_close(cairn_engine *e)
{
    if (!e)
        return;
    if (e->seqs)
        for (int i = 0; i < e->p.max_seqs; i++)
            if (e->seqs[i].used)
                seq_clear(e, &e->seqs[i]);
    free(e->seqs);
    cairn_model_ws_free(e->ws);
    cairn_kv_close(e->kv);
    if (e->be && e->x_save)
        e->be->i->free(e->be, e->x_save);
    cairn_backend_close(e->be);
    cairn_pool_close(e->pool);
    free(e->b_tok);
    free(e->b_seq);
    free(e->b_pos);
    free(e->b_logits);
    free(e->b_plen);
    free(e->row_of_item);
    free(e->sampled);
    free(e->logits);
    free(e->picks);
    free(e->cand);
    free(e->run_items);
    free(e->pre_len);
    free(e->susp_items);
    free(e->susp_row);
    free(e->susp_pre_len);
    free(e->s_tok);
    free(e->s_seq);
    free(e->s_pos);
    free(e->s_logits);
    free(e->s_plen);
    free(e);
}

/*
 * KV blocks when the caller leaves it to the engine: room for every sequence's full context
 * (max_seqs x n_ctx, plus the two blocks copy-on-write may need), so that max_seqs says how
 * many sequences really run at once; on a GPU no more than 90% of the memory the weights left,
 * as llama.cpp and vLLM size theirs, and on the CPU no more than half the memory the OS calls
 * available (host memory is shared with everything else; the pool is allocated, not touched,
 * so a pool this size costs only what sequences fill). A block holds block_tokens rows of K
 * and V in F16 for every layer. A pool cut below max_seqs contexts is logged.
 */
static int default_kv_blocks(const cairn_backend *be, const cairn_model_hparams *hp,
                             const cairn_engine_params *p, int ctx_blocks)
{
    size_t free_b, total_b;
    long cap = (long)p->max_seqs * ctx_blocks + 2;
    if (be->i->mem_info(be, &free_b, &total_b)) return (int)(cap > INT32_MAX ? INT32_MAX : cap);
    size_t per = (size_t)hp->n_layer * p->block_tokens * hp->n_head_kv * hp->head_dim * 2 * 2;
    double share = p->device < 0 ? 0.5 : 0.9;
    long fit = (long)((double)free_b * share / (double)per);
    long n = fit < cap ? fit : cap;
    if (n < cap)
        CAIRN_LOG_WARN("KV pool cut to the memory free", "device=%d blocks=%ld wanted=%ld "
                       "max_seqs=%d n_ctx=%d free_mib=%zu", p->device, n, cap, p->max_seqs,
                       p->n_ctx, free_b >> 20);
    return (int)(n < 1 ? 1 : n > INT32_MAX ? INT32_MAX : n);
}

int cairn_engine_open(cairn_engine **out, const cairn_model *m, const cairn_engine_params *pin,
                      cairn_error *err)
{
    *out = NULL;
    cairn_engine_params p = *pin;
    const cairn_model_hparams *hp = cairn_model_hparams_of(m);
    if (p.n_threads < 0 || p.n_threads > 256)
        return cairn_errorf(err, CAIRN_EINVAL, "engine: n_threads %d outside [0, 256]",
                            p.n_threads);
    if (p.n_threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        p.n_threads = n > 0 ? (int)n : 1;
    }
    if (p.n_ctx == 0)
        p.n_ctx = hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
    if (p.n_ctx < 2 || p.n_ctx > hp->n_ctx_train)
        return cairn_errorf(err, CAIRN_EINVAL, "engine: n_ctx %d outside [2, %d] (the model's "
                            "context_length)", p.n_ctx, hp->n_ctx_train);
    if (p.max_seqs < 1 || p.max_seqs > 4096)
        return cairn_errorf(err, CAIRN_EINVAL, "engine: max_seqs %d outside [1, 4096]",
                            p.max_seqs);
    if (p.max_batch_tokens < 1 || p.max_batch_tokens > 65536)
        return cairn_errorf(err, CAIRN_EINVAL, "engine: max_batch_tokens %d outside [1, 65536]",
                            p.max_batch_tokens);
    if (p.block_tokens < 1 || p.block_tokens > 1024)
        return cairn_errorf(err, CAIRN_EINVAL, "engine: block_tokens %d outside [1, 1024]",
                            p.block_tokens);
    if (p.kv_blocks < 0)
        return cairn_errorf(err, CAIRN_EINVAL, "engine: kv_blocks %d is negative", p.kv_blocks);
    const int ctx_blocks = (p.n_ctx + p.block_tokens - 1) / p.block_tokens;

    cairn_engine *e = calloc(1, sizeof *e);
    if (!e)
        return cairn_errorf(err, CAIRN_ENOMEM, "engine: out of memory");
    e->m = m;
    e->p = p;
    e->n_vocab = hp->n_vocab;
    int rc;
    cairn_pool_params pp = cairn_pool_default_params();
    pp.n_threads = p.n_threads;
    if ((rc = cairn_pool_open(&e->pool, &pp, err)))
        goto fail;

    /* The weights first: on a GPU, the KV pool takes what they leave. */
    if ((rc = cairn_backend_open(&e->be, p.device, e->pool, err)) ||
        (rc = cairn_model_ws_new(&e->ws, m, e->be, p.max_batch_tokens, p.n_ctx, err)))
        goto fail;
    if (p.kv_blocks == 0)
        p.kv_blocks = default_kv_blocks(e->be, hp, &p, ctx_blocks);
    e->p.kv_blocks = p.kv_blocks;
    cairn_kv_params kp = cairn_kv_default_params();
    cairn_model_kv_params(m, &kp);
    kp.backend = e->be;
    kp.block_tokens = p.block_tokens;
    kp.n_blocks = p.kv_blocks;
    kp.max_seqs = p.max_seqs;
    kp.max_seq_tokens = p.n_ctx;
    if (hp->sliding_window > 0) {
        /* Each sequence holds at most its window plus one partly filled block and the chunk
         * being prefilled; never more than a full context. */
        int per_seq = (hp->sliding_window + p.block_tokens - 1) / p.block_tokens + 2;
        /* ... and the chunks of a suspended pass and of the pass that runs meanwhile. */
        long need = (long)p.max_seqs * per_seq + 2L * ((p.max_batch_tokens + p.block_tokens - 1) /
                                                       p.block_tokens);
        kp.n_blocks_window = need < p.kv_blocks ? (int)need : p.kv_blocks;
    }
    if ((rc = cairn_kv_open(&e->kv, &kp, err)))
        goto fail;
    e->seqs = calloc((size_t)p.max_seqs, sizeof(eseq));
    e->b_tok = malloc(sizeof(int32_t) * (size_t)p.max_batch_tokens);
    e->b_seq = malloc(sizeof(int32_t) * (size_t)p.max_batch_tokens);
    e->b_pos = malloc(sizeof(int32_t) * (size_t)p.max_batch_tokens);
    e->b_logits = malloc((size_t)p.max_batch_tokens);
    e->b_plen = malloc(sizeof(int32_t) * (size_t)p.max_batch_tokens);
    e->row_of_item = malloc(sizeof(int) * (size_t)p.max_seqs);
    e->sampled = malloc(sizeof(int32_t) * (size_t)p.max_seqs);
    e->run_items = malloc(sizeof(cairn_step_item) * (size_t)p.max_seqs);
    const size_t ns = (size_t)p.max_seqs, nb = (size_t)p.max_batch_tokens;
    e->pre_len = malloc(sizeof(int) * ns);
    e->susp_items = malloc(sizeof(cairn_step_item) * ns);
    e->susp_row = malloc(sizeof(int) * ns);
    e->susp_pre_len = malloc(sizeof(int) * ns);
    e->s_tok = malloc(sizeof(int32_t) * nb);
    e->s_seq = malloc(sizeof(int32_t) * nb);
    e->s_pos = malloc(sizeof(int32_t) * nb);
    e->s_logits = malloc(nb);
    e->s_plen = malloc(sizeof(int32_t) * nb);
    /* The suspended pass's hidden states stay on the device (a GPU's 100+ MB of a long
     * prefill would otherwise cross the bus twice, once in an online request's wait). */
    void *xs = NULL;
    if ((rc = e->be->i->alloc(e->be, sizeof(float) * nb * (size_t)hp->n_embd, &xs, err)))
        goto fail;
    e->x_save = xs;
    int rows = p.max_seqs < p.max_batch_tokens ? p.max_seqs : p.max_batch_tokens;
    e->logits = malloc(sizeof(float) * (size_t)rows * (size_t)e->n_vocab);
    if (!e->seqs || !e->b_tok || !e->b_seq || !e->b_pos || !e->b_logits || !e->b_plen ||
        !e->row_of_item || !e->sampled || !e->run_items || !e->logits || !e->pre_len ||
        !e->susp_items || !e->susp_row || !e->susp_pre_len || !e->s_tok || !e->s_seq || !e->s_pos ||
        !e->s_logits || !e->s_plen || !e->x_save) {
        rc = cairn_errorf(err, CAIRN_ENOMEM, "engine: out of memory");
        goto fail;
    }
    /* A backend that can send back a row's first entries instead of the row (a GPU's): rows
     * that need no more are sampled from those. CAIRN_LOGITS_PICK=1 / 0 turns it on / off
     * (to measure what it saves); without it, PICK_BY_DEFAULT. */
    const char *pk = getenv("CAIRN_LOGITS_PICK");
    const bool pick = pk && *pk ? strcmp(pk, "0") != 0 : PICK_BY_DEFAULT;
    if (e->be->i->logits_pick && pick) {
        e->picks = calloc((size_t)rows, sizeof *e->picks);
        e->cand = malloc(sizeof *e->cand * (size_t)rows * CAIRN_BACKEND_MAX_PICK);
        if (!e->picks || !e->cand) {
            rc = cairn_errorf(err, CAIRN_ENOMEM, "engine: out of memory");
            goto fail;
        }
    }
    for (int i = 0; i < p.max_seqs; i++) {
        e->seqs[i].kv_seq = -1;
        e->seqs[i].follow = -1;
    }
    *out = e;
    return 0;
fail:
    cairn_engine_close(e);
    return rc;
}

static eseq *find(const cairn_engine *e, int id)
{
    if (id < 0 || id >= e->p.max_seqs || !e->seqs[id].used)
        return NULL;
    return &e->seqs[id];
}

int cairn_engine_add(cairn_engine *e, const int32_t *prompt, int n_prompt,
                     const cairn_gen_params *gp, int *id, cairn_error *err)
{
    if (!prompt || n_prompt < 1)
        return cairn_errorf(err, CAIRN_EINVAL, "engine: empty prompt");
    if (n_prompt >= e->p.n_ctx)
        return cairn_errorf(err, CAIRN_ELIMIT,
                            "engine: prompt of %d tokens does not fit the context of %d tokens",
                            n_prompt, e->p.n_ctx);
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= e->n_vocab)
            return cairn_errorf(err, CAIRN_EINVAL,
                                "engine: prompt token %d at index %d is outside the vocabulary "
                                "(%d)", prompt[i], i, e->n_vocab);
    if (gp->max_tokens < 1)
        return cairn_errorf(err, CAIRN_EINVAL, "engine: max_tokens %d must be >= 1",
                            gp->max_tokens);
    if (gp->n_stop_tokens < 0 || (gp->n_stop_tokens > 0 && !gp->stop_tokens))
        return cairn_errorf(err, CAIRN_EINVAL, "engine: bad stop token list");
    if (gp->n_history < 0 || gp->n_history > n_prompt)
        return cairn_errorf(err, CAIRN_EINVAL, "engine: n_history %d outside 0..%d",
                            gp->n_history, n_prompt);
    if (gp->logprobs && (gp->top_logprobs < 0 || gp->top_logprobs > CAIRN_SAMPLE_MAX_LOGPROBS))
        return cairn_errorf(err, CAIRN_EINVAL, "top_logprobs: %d is outside 0..%d",
                            gp->top_logprobs, CAIRN_SAMPLE_MAX_LOGPROBS);
    int rc = cairn_sample_params_validate(&gp->sample, err);
    if (rc)
        return rc;
    int slot = -1;
    for (int i = 0; i < e->p.max_seqs && slot < 0; i++)
        if (!e->seqs[i].used)
            slot = i;
    if (slot < 0)
        return cairn_errorf(err, CAIRN_EBUSY, "engine: all %d sequence slots are in use",
                            e->p.max_seqs);
    eseq *s = &e->seqs[slot];
    memset(s, 0, sizeof *s);
    s->kv_seq = -1;
    s->follow = -1;
    int cap = gp->max_tokens < e->p.n_ctx ? gp->max_tokens : e->p.n_ctx;
    s->prompt = malloc(sizeof(int32_t) * (size_t)n_prompt);
    s->gen = malloc(sizeof(int32_t) * (size_t)cap);
    s->stops = malloc(sizeof(int32_t) * (size_t)(gp->n_stop_tokens + 1));
    if (!s->prompt || !s->gen || !s->stops) {
        seq_clear(e, s);
        return cairn_errorf(err, CAIRN_ENOMEM, "engine: out of memory");
    }
    bool greedy = gp->sample.temperature == 0.0f || gp->sample.top_k == 1;
    if ((!greedy || cairn_sample_params_adjusts(&gp->sample)) &&
        (rc = cairn_sampler_new(&s->sampler, e->n_vocab, &gp->sample, err))) {
        seq_clear(e, s);
        return rc;
    }
    for (int i = n_prompt - gp->n_history; s->sampler && i < n_prompt; i++)
        cairn_sampler_accept(s->sampler, prompt[i]);
    if (!gp->logprobs) /* logprobs need the whole row */
        (void)cairn_sample_params_top(&gp->sample, e->n_vocab, CAIRN_BACKEND_MAX_PICK,
                                      &s->pick_k);
    if ((rc = cairn_kv_seq_new(e->kv, &s->kv_seq, err))) {
        s->kv_seq = -1;
        seq_clear(e, s);
        return rc;
    }
    memcpy(s->prompt, prompt, sizeof(int32_t) * (size_t)n_prompt);
    if (gp->n_stop_tokens)
        memcpy(s->stops, gp->stop_tokens, sizeof(int32_t) * (size_t)gp->n_stop_tokens);
    s->n_stops = gp->n_stop_tokens;
    s->n_prompt = n_prompt;
    s->max_tokens = cap;
    s->cb = gp->on_token;
    s->user = gp->user;
    s->want_lp = gp->logprobs;
    s->top_lp = gp->logprobs ? gp->top_logprobs : 0;
    s->used = true;
    *id = slot;
    return 0;
}

static eseq *find(const cairn_engine *e, int id);

int cairn_engine_add_follower(cairn_engine *e, int leader, const cairn_gen_params *gp, int *id,
                              cairn_error *err)
{
    eseq *l = find(e, leader);
    if (!l)
        return cairn_errorf(err, CAIRN_EINVAL, "engine: no sequence %d to follow", leader);
    if (l->finish != CAIRN_FINISH_NONE || l->n_prefilled >= l->n_prompt || l->follow >= 0 ||
        l->held)
        return cairn_errorf(err, CAIRN_ESTATE, "engine: sequence %d is not a prefilling leader",
                            leader);
    int rc = cairn_engine_add(e, l->prompt, l->n_prompt, gp, id, err);
    if (rc)
        return rc;
    eseq *s = &e->seqs[*id];
    cairn_kv_seq_free(e->kv, s->kv_seq); /* it shares the leader's once they exist */
    s->kv_seq = -1;
    s->follow = leader;
    return 0;
}

/* leader ends before its prompt completed: its followers go on as ordinary sequences that
 * prefill the prompt themselves (a kv sequence id is always free: the cache has one per
 * engine slot). */
static void promote_followers(cairn_engine *e, eseq *leader)
{
    const int lid = (int)(leader - e->seqs);
    for (int i = 0; i < e->p.max_seqs; i++) {
        eseq *f = &e->seqs[i];
        if (!f->used || f->follow != lid)
            continue;
        f->follow = -1;
        if (f->finish == CAIRN_FINISH_NONE && cairn_kv_seq_new(e->kv, &f->kv_seq, NULL) != 0) {
            f->kv_seq = -1;
            f->finish = CAIRN_FINISH_CANCELLED;
        }
    }
}

static void finish(cairn_engine *e, eseq *s, cairn_finish why)
{
    if (s->n_prefilled < s->n_prompt)
        promote_followers(e, s);
    s->finish = why;
    if (s->kv_seq >= 0) {
        cairn_kv_seq_free(e->kv, s->kv_seq);
        s->kv_seq = -1;
    }
}

/* Drops the suspended pass: its sequences' K/V rows go back to where they were before it, as if
 * it never ran (the rows of finished layers are simply recomputed by a later pass). */
static void abandon(cairn_engine *e)
{
    if (!e->susp)
        return;
    for (int i = 0; i < e->susp_n; i++) {
        eseq *s = &e->seqs[e->susp_items[i].id];
        if (s->kv_seq >= 0)
            cairn_kv_truncate(e->kv, s->kv_seq, e->susp_pre_len[i], NULL);
        s->held = false;
    }
    e->susp = false;
}

int cairn_engine_cancel(cairn_engine *e, int id)
{
    eseq *s = find(e, id);
    if (!s)
        return CAIRN_ENOTFOUND;
    if (s->held)
        abandon(e);
    if (s->finish == CAIRN_FINISH_NONE)
        finish(e, s, CAIRN_FINISH_CANCELLED);
    return 0;
}

void cairn_engine_release(cairn_engine *e, int id)
{
    eseq *s = find(e, id);
    if (s && s->held)
        abandon(e);
    if (s)
        seq_clear(e, s);
}

/* Records a sampled token and decides whether the sequence ends with it. */
static void take_token(cairn_engine *e, int id, eseq *s, int32_t tok)
{
    s->gen[s->n_gen++] = tok;
    cairn_finish why = CAIRN_FINISH_NONE;
    for (int i = 0; i < s->n_stops; i++)
        if (s->stops[i] == tok)
            why = CAIRN_FINISH_STOP;
    if (why == CAIRN_FINISH_NONE && s->n_gen >= s->max_tokens)
        why = CAIRN_FINISH_LENGTH;
    /* Feeding this token needs position n_prompt + n_gen - 1. */
    if (why == CAIRN_FINISH_NONE && s->n_prompt + s->n_gen - 1 >= e->p.n_ctx)
        why = CAIRN_FINISH_CONTEXT;
    if (s->cb && s->cb(s->user, id, tok, why != CAIRN_FINISH_NONE) != 0 &&
        why == CAIRN_FINISH_NONE)
        why = CAIRN_FINISH_CALLBACK;
    if (why != CAIRN_FINISH_NONE)
        finish(e, s, why);
}

/* Validates items and fills the batch arrays; returns the token count or an error. */
static int prepare(cairn_engine *e, const cairn_step_item *items, int n_items, cairn_error *err)
{
    if (n_items < 1 || n_items > e->p.max_seqs)
        return cairn_errorf(err, CAIRN_EINVAL, "engine step: %d items (1..%d)", n_items,
                            e->p.max_seqs);
    uint64_t stamp = ++e->n_steps;
    int nt = 0, rows = 0;
    for (int i = 0; i < n_items; i++) {
        eseq *s = find(e, items[i].id);
        if (!s || s->finish != CAIRN_FINISH_NONE)
            return cairn_errorf(err, CAIRN_EINVAL, "engine step: sequence %d is not running",
                                items[i].id);
        if (s->stamp == stamp)
            return cairn_errorf(err, CAIRN_EINVAL, "engine step: sequence %d listed twice",
                                items[i].id);
        if (s->held)
            return cairn_errorf(err, CAIRN_ESTATE, "engine step: sequence %d is in a suspended "
                                "pass; resume it first", items[i].id);
        if (s->follow >= 0)
            return cairn_errorf(err, CAIRN_EINVAL, "engine step: sequence %d waits for the "
                                "prompt of sequence %d", items[i].id, s->follow);
        s->stamp = stamp;
        e->pre_len[i] = cairn_kv_seq_len(e->kv, s->kv_seq);
        int n;
        bool want;
        if (s->n_prefilled < s->n_prompt) {
            if (items[i].n_tokens < 1)
                return cairn_errorf(err, CAIRN_EINVAL, "engine step: n_tokens %d < 1",
                                    items[i].n_tokens);
            n = s->n_prompt - s->n_prefilled;
            if (items[i].n_tokens < n)
                n = items[i].n_tokens;
            want = s->n_prefilled + n == s->n_prompt;
        } else {
            n = 1;
            want = true;
        }
        if (nt + n > e->p.max_batch_tokens)
            return cairn_errorf(err, CAIRN_EINVAL,
                                "engine step: batch exceeds max_batch_tokens (%d)",
                                e->p.max_batch_tokens);
        for (int j = 0; j < n; j++) {
            int pos;
            if (s->n_prefilled < s->n_prompt) {
                pos = s->n_prefilled + j;
                e->b_tok[nt] = s->prompt[pos];
            } else {
                pos = s->n_prompt + s->n_gen - 1;
                e->b_tok[nt] = s->gen[s->n_gen - 1];
            }
            e->b_seq[nt] = s->kv_seq;
            e->b_pos[nt] = pos;
            e->b_logits[nt] = want && j == n - 1;
            e->b_plen[nt] = s->n_prompt;
            nt++;
        }
        e->row_of_item[i] = want ? rows++ : -1;
    }
    return nt;
}

typedef struct {
    cairn_engine *e;
    const cairn_step_item *items;
    const int *row_of_item;
    const cairn_bpick *picks; /* the pass's (NULL: whole rows in e->logits) */
} sample_ctx;

/* Whether sequence id leads followers (n > 1), which take their first token from its row. */
static bool leads(const cairn_engine *e, int id)
{
    for (int i = 0; i < e->p.max_seqs; i++)
        if (e->seqs[i].used && e->seqs[i].follow == id)
            return true;
    return false;
}

/* What each logits row of a pass comes back as (NULL: whole rows): the k first entries where
 * they stand for the row (its sequence's pick_k), else the whole row into e->logits. A
 * leader's row stays whole: its followers draw from it with their own settings. */
static const cairn_bpick *set_picks(cairn_engine *e, const cairn_step_item *items, int n_items,
                                    const int *row_of_item)
{
    if (!e->picks)
        return NULL;
    for (int i = 0; i < n_items; i++) {
        const int r = row_of_item[i];
        if (r < 0)
            continue;
        const eseq *s = &e->seqs[items[i].id];
        const bool whole = !s->pick_k || (s->n_prefilled < s->n_prompt && leads(e, items[i].id));
        e->picks[r] = (cairn_bpick){.k = whole ? 0 : s->pick_k,
                                    .row = e->logits + (size_t)r * e->n_vocab,
                                    .cand = e->cand + (size_t)r * CAIRN_BACKEND_MAX_PICK};
    }
    return e->picks;
}

/* Samples the logits rows of items [b, e) into e->sampled: each sequence has its own sampler,
 * so the rows of a pass are drawn on the pool's threads at once (a draw from a 262k vocabulary
 * takes ~0.2 ms). An error leaves CAIRN_EINVAL; the caller reports it. */
static void sample_rows(void *p, size_t b, size_t end, int tid)
{
    (void)tid;
    const sample_ctx *c = p;
    cairn_engine *e = c->e;
    for (size_t i = b; i < end; i++) {
        if (c->row_of_item[i] < 0) continue;
        eseq *s = &e->seqs[c->items[i].id];
        const int r = c->row_of_item[i];
        if (c->picks && c->picks[r].k > 0) { /* the row's first entries stand for it */
            const cairn_top top = {c->picks[r].cand, c->picks[r].k};
            int32_t tok = s->sampler ? cairn_sampler_sample_top(s->sampler, &top, NULL)
                                     : top.c[0].id; /* the arg-max, -1 for none */
            e->sampled[i] = tok >= 0 ? tok : CAIRN_EINVAL;
            continue;
        }
        const float *lg = e->logits + (size_t)r * e->n_vocab;
        int32_t tok = s->sampler ? cairn_sampler_sample(s->sampler, lg, NULL)
                                 : cairn_sample_argmax(lg, e->n_vocab);
        e->sampled[i] = tok >= 0 && lg[tok] > -INFINITY ? tok : CAIRN_EINVAL;
        if (s->want_lp && e->sampled[i] >= 0)
            s->has_lp = cairn_sample_logprobs(lg, e->n_vocab, tok, s->top_lp, &s->lp) == 0;
    }
}

/* leader's prompt completed in this pass with logits row lg: each follower forks its blocks
 * and takes its first token from the row with its own sampler. A follower that cannot fork
 * (window rows already gone) prefills the prompt itself. */
static void spawn_followers(cairn_engine *e, int lid, eseq *leader, const float *lg)
{
    for (int i = 0; i < e->p.max_seqs; i++) {
        eseq *f = &e->seqs[i];
        if (!f->used || f->follow != lid)
            continue;
        f->follow = -1;
        if (f->finish != CAIRN_FINISH_NONE)
            continue;
        if (cairn_kv_seq_fork(e->kv, leader->kv_seq, leader->n_prompt, &f->kv_seq, NULL) != 0) {
            if (cairn_kv_seq_new(e->kv, &f->kv_seq, NULL) != 0) {
                f->kv_seq = -1;
                finish(e, f, CAIRN_FINISH_CANCELLED);
            }
            continue;
        }
        f->n_prefilled = f->n_prompt;
        int32_t tok = f->sampler ? cairn_sampler_sample(f->sampler, lg, NULL)
                                 : cairn_sample_argmax(lg, e->n_vocab);
        if (tok < 0 || !(lg[tok] > -INFINITY)) {
            finish(e, f, CAIRN_FINISH_CANCELLED);
            continue;
        }
        if (f->want_lp)
            f->has_lp = cairn_sample_logprobs(lg, e->n_vocab, tok, f->top_lp, &f->lp) == 0;
        take_token(e, i, f, tok);
    }
}

/* After a completed pass: prompts advance, logits rows are sampled. */
static int complete(cairn_engine *e, const cairn_step_item *items, int n_items,
                    const int *row_of_item, const cairn_bpick *picks, cairn_error *err)
{
    sample_ctx c = {e, items, row_of_item, picks};
    int rows = 0;
    for (int i = 0; i < n_items; i++)
        rows += row_of_item[i] >= 0;
    if (rows > 1)
        cairn_pool_parallel_for(e->pool, (size_t)n_items, sample_rows, &c);
    else
        sample_rows(&c, 0, (size_t)n_items, 0);
    for (int i = 0; i < n_items; i++) {
        eseq *s = &e->seqs[items[i].id];
        const bool was_prefilling = s->n_prefilled < s->n_prompt;
        if (was_prefilling) {
            int n = s->n_prompt - s->n_prefilled;
            s->n_prefilled += items[i].n_tokens < n ? items[i].n_tokens : n;
        }
        if (row_of_item[i] < 0)
            continue;
        if (e->sampled[i] < 0) /* no finite logit: a numerical failure, reported */
            return cairn_errorf(err, CAIRN_EINVAL, "sampler: no finite logit in a row of %d",
                                e->n_vocab);
        if (was_prefilling) /* before the leader's token, which may end it and free its blocks */
            spawn_followers(e, items[i].id, s,
                            e->logits + (size_t)row_of_item[i] * e->n_vocab);
        take_token(e, items[i].id, s, e->sampled[i]);
    }
    return 0;
}

int cairn_engine_step(cairn_engine *e, const cairn_step_item *items, int n_items,
                      cairn_error *err)
{
    return cairn_engine_step_yield(e, items, n_items, NULL, NULL, err);
}

int cairn_engine_step_yield(cairn_engine *e, const cairn_step_item *items, int n_items,
                            int (*should_yield)(void *ctx), void *ctx, cairn_error *err)
{
    int nt = prepare(e, items, n_items, err);
    if (nt < 0)
        return nt;
    cairn_batch b = {.n_tokens = nt, .tokens = e->b_tok, .seq = e->b_seq, .pos = e->b_pos,
                     .logits = e->b_logits, .prompt_len = e->b_plen,
                     .picks = set_picks(e, items, n_items, e->row_of_item)};
    /* One suspended pass at a time: while one waits, this pass runs to the end. */
    cairn_model_yield y = {.should_yield = e->susp ? NULL : should_yield, .ctx = ctx,
                           .x_save = e->x_save};
    int rc = cairn_model_forward_ex(e->m, e->ws, e->kv, &b, e->logits,
                                    should_yield && !e->susp ? &y : NULL, err);
    if (rc == CAIRN_MODEL_YIELDED) {
        e->susp = true;
        e->susp_n = n_items;
        e->s_nt = nt;
        e->y = y;
        memcpy(e->susp_items, items, sizeof *items * (size_t)n_items);
        memcpy(e->susp_row, e->row_of_item, sizeof(int) * (size_t)n_items);
        memcpy(e->susp_pre_len, e->pre_len, sizeof(int) * (size_t)n_items);
        memcpy(e->s_tok, e->b_tok, sizeof(int32_t) * (size_t)nt);
        memcpy(e->s_seq, e->b_seq, sizeof(int32_t) * (size_t)nt);
        memcpy(e->s_pos, e->b_pos, sizeof(int32_t) * (size_t)nt);
        memcpy(e->s_logits, e->b_logits, (size_t)nt);
        memcpy(e->s_plen, e->b_plen, sizeof(int32_t) * (size_t)nt);
        for (int i = 0; i < n_items; i++)
            e->seqs[items[i].id].held = true;
        return CAIRN_ENGINE_SUSPENDED;
    }
    if (rc)
        return rc;
    return complete(e, items, n_items, e->row_of_item, b.picks, err);
}

int cairn_engine_resume(cairn_engine *e, int (*should_yield)(void *ctx), void *ctx,
                        cairn_error *err)
{
    if (!e->susp)
        return cairn_errorf(err, CAIRN_ESTATE, "engine resume: no pass is suspended");
    cairn_batch b = {.n_tokens = e->s_nt, .tokens = e->s_tok, .seq = e->s_seq, .pos = e->s_pos,
                     .logits = e->s_logits, .prompt_len = e->s_plen,
                     .picks = set_picks(e, e->susp_items, e->susp_n, e->susp_row)};
    e->y.first_layer = e->y.next_layer;
    e->y.should_yield = should_yield;
    e->y.ctx = ctx;
    int rc = cairn_model_forward_ex(e->m, e->ws, e->kv, &b, e->logits, &e->y, err);
    if (rc == CAIRN_MODEL_YIELDED)
        return CAIRN_ENGINE_SUSPENDED;
    if (rc) {
        abandon(e);
        return rc;
    }
    for (int i = 0; i < e->susp_n; i++)
        e->seqs[e->susp_items[i].id].held = false;
    e->susp = false;
    return complete(e, e->susp_items, e->susp_n, e->susp_row, b.picks, err);
}

bool cairn_engine_suspended(const cairn_engine *e) { return e->susp; }

int cairn_engine_run(cairn_engine *e, cairn_error *err)
{
    for (;;) {
        int n = 0, budget = e->p.max_batch_tokens;
        /* Decode tokens first: they keep running sequences' inter-token latency steady. */
        for (int i = 0; i < e->p.max_seqs && budget > 0; i++) {
            eseq *s = &e->seqs[i];
            if (s->used && s->finish == CAIRN_FINISH_NONE && s->n_prefilled == s->n_prompt) {
                e->run_items[n++] = (cairn_step_item){.id = i, .n_tokens = 1};
                budget--;
            }
        }
        for (int i = 0; i < e->p.max_seqs && budget > 0; i++) {
            eseq *s = &e->seqs[i];
            if (s->used && s->finish == CAIRN_FINISH_NONE && s->n_prefilled < s->n_prompt &&
                s->follow < 0) {
                int chunk = s->n_prompt - s->n_prefilled;
                if (chunk > budget)
                    chunk = budget;
                e->run_items[n++] = (cairn_step_item){.id = i, .n_tokens = chunk};
                budget -= chunk;
            }
        }
        if (n == 0)
            return 0;
        int rc = cairn_engine_step(e, e->run_items, n, err);
        if (rc)
            return rc;
    }
}

int cairn_engine_seq_info(const cairn_engine *e, int id, cairn_seq_info *out)
{
    const eseq *s = find(e, id);
    if (!s)
        return CAIRN_ENOTFOUND;
    out->prefilling = s->n_prefilled < s->n_prompt;
    out->finish = s->finish;
    out->n_prompt = s->n_prompt;
    out->n_prefilled = s->n_prefilled;
    out->n_generated = s->n_gen;
    out->generated = s->gen;
    out->held = s->held;
    out->following = s->follow;
    return 0;
}

const cairn_token_logprobs *cairn_engine_seq_logprobs(const cairn_engine *e, int id)
{
    const eseq *s = find(e, id);
    return s && s->want_lp && s->has_lp ? &s->lp : NULL;
}

int cairn_engine_seq_rng(const cairn_engine *e, int id, cairn_sampler_rng *out)
{
    const eseq *s = find(e, id);
    if (!s) return CAIRN_ENOTFOUND;
    if (!s->sampler) return CAIRN_ESTATE;
    cairn_sampler_rng_get(s->sampler, out);
    return 0;
}

int cairn_engine_seq_set_rng(cairn_engine *e, int id, const cairn_sampler_rng *r)
{
    eseq *s = find(e, id);
    if (!s) return CAIRN_ENOTFOUND;
    if (!s->sampler) return CAIRN_ESTATE;
    cairn_sampler_rng_set(s->sampler, r);
    return 0;
}

int cairn_engine_active(const cairn_engine *e)
{
    int n = 0;
    for (int i = 0; i < e->p.max_seqs; i++)
        n += e->seqs[i].used && e->seqs[i].finish == CAIRN_FINISH_NONE;
    return n;
}

const cairn_kv *cairn_engine_kv(const cairn_engine *e) { return e->kv; }

cairn_backend *cairn_engine_backend(const cairn_engine *e) { return e->be; }
