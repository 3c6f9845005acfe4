/*
 * services/summarize.h — the "summarize" job: a document in, a summary out, through the
 * generation workers as OFFLINE requests (the scheduler fits them around online traffic).
 *
 * A document that fits one prompt (the context less the summary's tokens and the template) is
 * summarized at once. A longer one is summarized map-reduce style: it is cut at whitespace into
 * k pieces of about equal size, each under chunk_tokens tokens; the k summaries are requested
 * together (the engine batches them); their concatenation is summarized again, recursively,
 * until one summary is left. A request the workers refuse as busy (a full queue) is submitted
 * again after a pause, up to max_attempts times; one they preempt they requeue themselves.
 *
 * Thread-safety: any number of threads may summarize at once over one cairn_workers.
 */
#ifndef CAIRN_SERVICES_SUMMARIZE_H
#define CAIRN_SERVICES_SUMMARIZE_H

#include <stddef.h>

#include "common/error.h"
#include "services/workers.h"

typedef struct {
    int summary_tokens; /* max_tokens of each summary (default 128) */
    int chunk_tokens;   /* largest piece in tokens; 0 = what the context allows (default 0) */
    int max_attempts;   /* submissions per piece before giving up (default 8) */
    int max_depth;      /* reduce rounds at most (default 6) */
    /* Called about every keepalive_ms while waiting for the workers (e.g. a job heartbeat);
     * a non-zero return abandons the summary with CAIRN_ECANCELED. May be NULL. */
    int (*keepalive)(void *ctx);
    void *keepalive_ctx;
    int keepalive_ms; /* default 10000 */
} cairn_summarize_params;

cairn_summarize_params cairn_summarize_default_params(void);

typedef struct {
    int doc_tokens;  /* tokens of the document */
    int pieces;      /* map pieces of the first round (1: no map-reduce) */
    int rounds;      /* generation rounds (1 + reduce rounds) */
    int requests;    /* generation requests made, resubmissions included */
    int resubmitted; /* of which resubmissions after a full queue */
    long long tokens_generated;
} cairn_summarize_stats;

/*
 * Summarizes text[0..len) (UTF-8). On success returns 0 with a malloc'ed NUL-terminated summary
 * in *out (caller frees) and its length in *out_len; stats (may be NULL) says what it took.
 * Errors: CAIRN_EINVAL (empty or whitespace-only text, invalid UTF-8), CAIRN_ELIMIT (the
 * summaries stopped shrinking within max_depth rounds), CAIRN_EBUSY (still busy after
 * max_attempts), CAIRN_ECANCELED (keepalive asked to stop), CAIRN_ESTATE (the workers are
 * shutting down), CAIRN_ENOMEM; detail in err.
 */
int cairn_summarize(cairn_workers *w, const char *text, size_t len,
                    const cairn_summarize_params *p, char **out, size_t *out_len,
                    cairn_summarize_stats *stats, cairn_error *err);

#endif
