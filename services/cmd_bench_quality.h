/* services/cmd_bench_quality.h — `cairn bench retrieval-quality`: hit@k and MRR of the dense,
 * lexical and hybrid search modes on a question set over the default corpus, with latency;
 * `cairn bench rag-answers`: hit@4 and the share of RAG answers that name the right package. */
#ifndef CAIRN_SERVICES_CMD_BENCH_QUALITY_H
#define CAIRN_SERVICES_CMD_BENCH_QUALITY_H

extern const char *const cairn_cmd_bench_quality_usage;

/* argv[0] is "bench", argv[1] "retrieval-quality". Returns 0, 1 (failure) or 2 (usage). */
int cairn_cmd_bench_quality(int argc, char **argv);

extern const char *const cairn_cmd_bench_answers_usage;

/* argv[0] is "bench", argv[1] "rag-answers". Returns 0, 1 (failure) or 2 (usage). */
int cairn_cmd_bench_answers(int argc, char **argv);

#endif
