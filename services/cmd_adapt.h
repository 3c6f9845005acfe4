/* services/cmd_adapt.h — `cairn adapt ...` (training and evaluating the adaptation CNNs). */
#ifndef CAIRN_SERVICES_CMD_ADAPT_H
#define CAIRN_SERVICES_CMD_ADAPT_H

#include <stdint.h>

/*
 * Entry of `cairn adapt`: argv[0] is "adapt", argv[1] the subcommand (train | eval-clean |
 * corrupt | eval).
 * Returns the process exit status (0 success, 1 failure, 2 usage error).
 */
int cairn_cmd_adapt(int argc, char **argv);

#include "adapt/data.h"
#include "common/error.h"

/*
 * The splits `cairn adapt eval` and `cairn adapt corrupt` draw their streams from: the test set;
 * the train set (to choose settings without the test labels); and the holdout, the training
 * images from CAIRN_ADAPT_HOLDOUT_FROM on, which the committed teacher
 * (adapt/models/foundation-res-w32.gguf, trained with --limit 48000) never saw, so that the
 * teacher is as unsure of them as of test images (the edge model was trained on all 60,000).
 */
typedef enum {
    CAIRN_ADAPT_SPLIT_TEST,
    CAIRN_ADAPT_SPLIT_TRAIN,
    CAIRN_ADAPT_SPLIT_HOLDOUT
} cairn_adapt_split;
#define CAIRN_ADAPT_HOLDOUT_FROM 48000

/* Parses "test", "train" or "holdout"; 0 or -1. */
int cairn__adapt_split_parse(const char *s, cairn_adapt_split *out);
const char *cairn__adapt_split_name(cairn_adapt_split s);

/*
 * Loads the split from dir (NULL: the Debian package's) into *full (the whole split, holdout: its
 * 12,000 images) and *sub (n evenly spaced images of it, cairn_dataset_subset). The caller frees
 * both. Returns 0 or as cairn_fmnist_load and cairn_dataset_subset.
 */
int cairn__adapt_split_load(cairn_dataset *full, cairn_dataset *sub, const char *dir,
                            cairn_adapt_split s, int n, cairn_error *err);

/*
 * The corruption seed of the stream (corruption, severity) of `cairn adapt eval`'s suite on a
 * split: seeds offset by 500,000 on the train split and 1,000,000 on the holdout, so no test draw
 * is reused. `cairn adapt corrupt` writes the same streams with it.
 */
uint64_t cairn__adapt_stream_seed(int corruption, int severity, cairn_adapt_split split);

#endif
