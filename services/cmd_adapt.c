/*
 * services/cmd_adapt.c — `cairn adapt train|eval-clean|corrupt`: train the edge and foundation
 * CNNs on clean Fashion-MNIST, measure their clean test accuracy, and write corrupted streams as
 * IDX files for `cairn adapt eval --stream`.
 */
#include "services/cmd_adapt.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapt/corrupt.h"
#include "adapt/data.h"
#include "adapt/models.h"
#include "adapt/nn/nn_gguf.h"
#include "adapt/train.h"

static const char *USAGE =
    "usage: cairn adapt train --model edge|foundation|foundation-res --out FILE [--epochs N]\n"
    "                         [--seed S] [--threads T] [--shards K] [--batch B] [--lr LR]\n"
    "                         [--limit N] [--augment|--no-augment] [--augmix|--no-augmix]\n"
    "                         [--jsd-lambda L] [--augmix-severity S] [--width W]\n"
    "                         [--checkpoint FILE] [--resume FILE --start-epoch E] [--data DIR]\n"
    "       cairn adapt eval-clean --model FILE [--data DIR] [--limit N]\n"
    "       cairn adapt corrupt --out DIR --corruptions a,b,... [--severity S] [--images N]\n"
    "                           [--split test|train|holdout] [--data DIR]\n"
    "       cairn adapt eval [options]   (cloud-edge adaptation benchmark; eval --help)\n"
    "\n"
    "train: SGD (momentum 0.9, weight decay 5e-4, cosine lr) on the clean Fashion-MNIST train\n"
    "       set; the foundation model uses generic augmentation (shifts, flips, random erasing)\n"
    "       by default. Defaults: edge 6 epochs, batch 128 in 2 shards, lr 0.05; foundation 12\n"
    "       epochs, batch 256 in 16 shards, lr 0.1; foundation-res (residual, width 64) 10\n"
    "       epochs, batch 256 in 16 shards, lr 0.1, shifts and flips plus AugMix with the JSD\n"
    "       consistency loss (lambda 12, severity 3); seed 1; threads: one per CPU (at most one\n"
    "       per shard; the weights depend on the shards, never on the threads). Saves a GGUF\n"
    "       with training metadata. --checkpoint saves the weights after every epoch; --resume\n"
    "       with --start-epoch (the epochs it holds) continues a run with the same options.\n"
    "eval-clean: accuracy on the clean Fashion-MNIST test set (--limit N: an evenly spaced\n"
    "       subset of N images).\n"
    "corrupt: writes DIR/images-idx3-ubyte and DIR/labels-idx1-ubyte, a stream for `adapt eval\n"
    "       --stream DIR`: for each corruption in the order given, the N (default 1000) images\n"
    "       and corruption draws of adapt eval's stream at severity S (default 5) on the split;\n"
    "       several corruptions make one stream whose shift changes every N images.\n";

static int parse_long(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s ? s : "", &end, 10);
    if (!s || errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "cairn adapt: %s wants an integer in %ld..%ld, got '%s'\n", opt, lo, hi,
                s ? s : "");
        return -1;
    }
    *out = v;
    return 0;
}

static void fmt_time(double s, char *buf, size_t cap)
{
    long t = (long)(s + 0.5);
    snprintf(buf, cap, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
}

static void on_progress(const cairn_train_progress *p, void *ctx)
{
    int tty = *(const int *)ctx;
    char eta[32];
    fmt_time(p->eta_s, eta, sizeof(eta));
    fprintf(stderr, "%sepoch %d/%d  step %d/%d  loss %.4f  acc %.4f  lr %.4f  %.0f img/s  ETA %s%s",
            tty ? "\r" : "", p->epoch, p->epochs, p->step, p->steps, p->loss, p->accuracy, p->lr,
            p->images_per_s, eta, tty ? (p->epoch_done ? "\n" : "") : "\n");
    fflush(stderr);
}

static int cmd_train(int argc, char **argv)
{
    const char *model = NULL, *out = NULL, *dir = NULL;
    cairn_train_params p = cairn_train_default_params();
    int epochs = 0, threads = -1, augment = -1, shards_set = 0, batch_set = 0, lr_set = 0;
    int augmix = -1;
    long v;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--model") && next)
            model = argv[++i];
        else if (!strcmp(a, "--out") && next)
            out = argv[++i];
        else if (!strcmp(a, "--data") && next)
            dir = argv[++i];
        else if (!strcmp(a, "--augment"))
            augment = 1;
        else if (!strcmp(a, "--no-augment"))
            augment = 0;
        else if (!strcmp(a, "--augmix"))
            augmix = 1;
        else if (!strcmp(a, "--no-augmix"))
            augmix = 0;
        else if (!strcmp(a, "--checkpoint") && next)
            p.checkpoint = argv[++i];
        else if (!strcmp(a, "--resume") && next)
            p.resume = argv[++i];
        else if (!strcmp(a, "--jsd-lambda") && next) {
            char *end;
            p.jsd_lambda = strtof(argv[++i], &end);
            if (*end || !(p.jsd_lambda >= 0 && p.jsd_lambda <= 1000)) {
                fprintf(stderr, "cairn adapt train: --jsd-lambda wants a number in [0, 1000]\n");
                return 2;
            }
        } else if ((!strcmp(a, "--width") || !strcmp(a, "--augmix-severity") ||
                    !strcmp(a, "--start-epoch")) &&
                   next) {
            int w = a[2] == 'w', sev = a[2] == 'a';
            if (parse_long(a, argv[++i], w ? 2 : sev ? 1 : 0, w ? 1024 : sev ? 10 : 100000, &v))
                return 2;
            if (w)
                p.width = (int)v;
            else if (sev)
                p.augmix_severity = (int)v;
            else
                p.start_epoch = (int)v;
        }
        else if (!strcmp(a, "--lr") && next) {
            char *end;
            p.lr = strtof(argv[++i], &end);
            lr_set = 1;
            if (*end || !(p.lr > 0 && p.lr < 10)) {
                fprintf(stderr, "cairn adapt train: --lr wants a number in (0, 10)\n");
                return 2;
            }
        } else if (!strcmp(a, "--seed") && next) {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(argv[++i], &end, 10);
            if (errno || *end || argv[i][0] == '-' || !argv[i][0]) {
                fprintf(stderr, "cairn adapt train: --seed wants an unsigned integer\n");
                return 2;
            }
            p.seed = s;
        } else if ((!strcmp(a, "--epochs") || !strcmp(a, "--threads") || !strcmp(a, "--shards") ||
                    !strcmp(a, "--batch") || !strcmp(a, "--limit")) &&
                   next) {
            if (parse_long(a, argv[++i], a[2] == 'l' ? 0 : 1, 100000, &v)) return 2;
            if (!strcmp(a, "--epochs"))
                epochs = (int)v;
            else if (!strcmp(a, "--threads"))
                threads = (int)v;
            else if (!strcmp(a, "--shards"))
                p.shards = (int)v, shards_set = 1;
            else if (!strcmp(a, "--batch"))
                p.batch_size = (int)v, batch_set = 1;
            else
                p.limit = (int)v;
        } else {
            fprintf(stderr, "cairn adapt train: unexpected argument '%s'\n%s", a, USAGE);
            return 2;
        }
    }
    if (!model || !out) {
        fprintf(stderr, "cairn adapt train: --model and --out are required\n%s", USAGE);
        return 2;
    }
    cairn_error err = {0};
    cairn_model_arch arch;
    if (cairn_model_arch_parse(model, &arch, &err)) {
        fprintf(stderr, "cairn adapt train: %s\n", err.msg);
        return 2;
    }
    const int resnet = arch == CAIRN_MODEL_FOUNDATION_RES;
    const int fnd = arch == CAIRN_MODEL_FOUNDATION || resnet;
    p.epochs = epochs ? epochs : (resnet ? 10 : fnd ? 12 : 6);
    p.augment = augment >= 0 ? augment : fnd;
    p.augmix = augmix >= 0 ? augmix : resnet;
    if (resnet) p.erase_prob = 0; /* AugMix's base augmentation: shifts and flips only */
    if (p.width && !resnet) {
        fprintf(stderr, "cairn adapt train: --width is for foundation-res only\n");
        return 2;
    }
    p.threads = threads >= 0 ? threads : 0;
    if (!shards_set) p.shards = fnd ? 16 : 2;
    if (!batch_set) p.batch_size = fnd ? 256 : 128;
    if (!lr_set) p.lr = fnd ? 0.1f : 0.05f;
    int tty = isatty(STDERR_FILENO);
    p.progress = on_progress;
    p.progress_ctx = &tty;
    p.progress_every = tty ? 10 : 100;

    cairn_dataset train = {0}, test = {0};
    cairn_nn_model *m = NULL;
    int rc = cairn_fmnist_load(&train, dir, CAIRN_FMNIST_TRAIN, &err);
    if (!rc) rc = cairn_fmnist_load(&test, dir, CAIRN_FMNIST_TEST, &err);
    if (rc) {
        fprintf(stderr, "cairn adapt train: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr,
            "training %s on %d images: %d epochs, batch %d in %d shards, threads %d (0: one per "
            "CPU), lr %g, seed %llu, augment %s, augmix %s (jsd lambda %g, severity %d)%s%s\n",
            model, p.limit ? p.limit : train.n, p.epochs, p.batch_size, p.shards, p.threads, p.lr,
            (unsigned long long)p.seed, p.augment ? "on" : "off", p.augmix ? "on" : "off",
            (double)p.jsd_lambda, p.augmix_severity, p.resume ? ", resuming from " : "",
            p.resume ? p.resume : "");
    cairn_train_result res = {0};
    double test_acc = -1;
    rc = cairn_train_model(arch, &train, &p, &m, &res, &err);
    if (!rc) {
        fprintf(stderr, "trained %zu parameters in %.1f s: train loss %.4f, train acc %.4f\n",
                cairn_nn_trainable_count(m), res.seconds, res.train_loss, res.train_accuracy);
        rc = cairn_eval_accuracy(m, &test, &test_acc, &err);
    }
    if (!rc) {
        printf("clean test accuracy %.4f (%d images)\n", test_acc, test.n);
        rc = cairn_train_save(m, arch, &p, &res, test_acc, out, &err);
    }
    if (!rc)
        fprintf(stderr, "saved %s\n", out);
    else
        fprintf(stderr, "cairn adapt train: %s\n", err.msg);
    cairn_nn_model_free(m);
    cairn_dataset_free(&train);
    cairn_dataset_free(&test);
    return rc ? 1 : 0;
}

static int cmd_eval_clean(int argc, char **argv)
{
    const char *path = NULL, *dir = NULL;
    long limit = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--model") && next)
            path = argv[++i];
        else if (!strcmp(a, "--data") && next)
            dir = argv[++i];
        else if (!strcmp(a, "--limit") && next) {
            if (parse_long(a, argv[++i], 0, 1000000, &limit)) return 2;
        } else {
            fprintf(stderr, "cairn adapt eval-clean: unexpected argument '%s'\n%s", a, USAGE);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "cairn adapt eval-clean: --model is required\n%s", USAGE);
        return 2;
    }
    cairn_error err = {0};
    cairn_dataset test = {0}, sub = {0};
    cairn_nn_model *m = NULL;
    double acc = 0;
    int rc = cairn_nn_load(&m, path, &err);
    if (!rc) rc = cairn_fmnist_load(&test, dir, CAIRN_FMNIST_TEST, &err);
    if (!rc && limit > 0) rc = cairn_dataset_subset(&sub, &test, (int)limit, &err);
    if (!rc) rc = cairn_eval_accuracy(m, limit > 0 ? &sub : &test, &acc, &err);
    if (!rc)
        printf("%s: clean test accuracy %.4f (%d images)\n", path, acc, limit > 0 ? sub.n : test.n);
    else
        fprintf(stderr, "cairn adapt eval-clean: %s\n", err.msg);
    cairn_nn_model_free(m);
    cairn_dataset_free(&test);
    cairn_dataset_free(&sub);
    return rc ? 1 : 0;
}

/*
 * `cairn adapt corrupt`: the suite's streams as IDX files. Each corruption's images are the
 * evenly spaced subset and the corruption seed adapt eval uses (cairn__adapt_stream_seed), so a
 * one-corruption file holds the suite's stream, its pixels rounded to bytes.
 */
static int cmd_corrupt(int argc, char **argv)
{
    const char *out = NULL, *dir = NULL, *list = NULL;
    long sev = 5, n = 1000;
    cairn_adapt_split split = CAIRN_ADAPT_SPLIT_TEST;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!next) {
            fprintf(stderr, "cairn adapt corrupt: '%s' needs a value or is unknown\n%s", a, USAGE);
            return 2;
        }
        i++;
        if (!strcmp(a, "--out"))
            out = next;
        else if (!strcmp(a, "--data"))
            dir = next;
        else if (!strcmp(a, "--corruptions"))
            list = next;
        else if (!strcmp(a, "--split")) {
            if (cairn__adapt_split_parse(next, &split)) {
                fprintf(stderr,
                        "cairn adapt corrupt: --split wants test, train or holdout, got '%s'\n",
                        next);
                return 2;
            }
        } else if (!strcmp(a, "--severity")) {
            if (parse_long(a, next, 1, 5, &sev)) return 2;
        } else if (!strcmp(a, "--images")) {
            if (parse_long(a, next, 1, 10000, &n)) return 2;
        } else {
            fprintf(stderr, "cairn adapt corrupt: unexpected argument '%s'\n%s", a, USAGE);
            return 2;
        }
    }
    if (!out || !list || !*out) {
        fprintf(stderr, "cairn adapt corrupt: --out and --corruptions are required\n%s", USAGE);
        return 2;
    }
    enum { MAX_PARTS = 64 };
    cairn_corruption parts[MAX_PARTS];
    int n_parts = 0;
    cairn_error err = {0};
    char buf[1024];
    if (strlen(list) >= sizeof buf) {
        fprintf(stderr, "cairn adapt corrupt: --corruptions is too long\n");
        return 2;
    }
    snprintf(buf, sizeof buf, "%s", list);
    for (char *s = NULL, *t = strtok_r(buf, ",", &s); t; t = strtok_r(NULL, ",", &s)) {
        if (n_parts == MAX_PARTS) {
            fprintf(stderr, "cairn adapt corrupt: at most %d corruptions\n", MAX_PARTS);
            return 2;
        }
        if (cairn_corruption_parse(t, &parts[n_parts++], &err)) {
            fprintf(stderr, "cairn adapt corrupt: %s\n", err.msg);
            return 2;
        }
    }
    if (n_parts == 0) {
        fprintf(stderr, "cairn adapt corrupt: --corruptions names no corruption\n");
        return 2;
    }
    /* A bound on memory (the stream is built in floats, 3 KiB an image) well above what
     * `adapt eval --stream` reads (--images at most 10,000). */
    if ((long)n_parts * n > 100000) {
        fprintf(stderr, "cairn adapt corrupt: %d corruptions x %ld images is over 100,000\n",
                n_parts, n);
        return 2;
    }
    if (mkdir(out, 0755) && errno != EEXIST) {
        fprintf(stderr, "cairn adapt corrupt: %s: %s\n", out, strerror(errno));
        return 1;
    }

    cairn_dataset full = {0}, sub = {0}, stream = {0};
    int rc = cairn__adapt_split_load(&full, &sub, dir, split, (int)n, &err);
    if (!rc) {
        const size_t D = (size_t)sub.c * sub.h * sub.w, total = (size_t)sub.n * n_parts;
        stream = (cairn_dataset){
            .n = (int)total, .c = sub.c, .h = sub.h, .w = sub.w, .n_classes = sub.n_classes};
        stream.images = malloc(total * D * sizeof(float));
        stream.labels = malloc(total * sizeof(int));
        if (!stream.images || !stream.labels) rc = cairn_errorf(&err, CAIRN_ENOMEM, "stream");
        for (int k = 0; !rc && k < n_parts; k++) {
            cairn_dataset d = {0};
            uint64_t seed = cairn__adapt_stream_seed((int)parts[k], (int)sev, split);
            rc = cairn_corrupt_dataset(&d, &sub, parts[k], (int)sev, seed, &err);
            if (!rc) {
                memcpy(stream.images + (size_t)k * sub.n * D, d.images,
                       (size_t)sub.n * D * sizeof(float));
                memcpy(stream.labels + (size_t)k * sub.n, d.labels, (size_t)sub.n * sizeof(int));
            }
            cairn_dataset_free(&d);
        }
    }
    char ip[4096], lp[4096];
    if (!rc && (snprintf(ip, sizeof ip, "%s/%s", out, CAIRN_STREAM_IMAGES) >= (int)sizeof ip ||
                snprintf(lp, sizeof lp, "%s/%s", out, CAIRN_STREAM_LABELS) >= (int)sizeof lp))
        rc = cairn_errorf(&err, CAIRN_EINVAL, "%s: path too long", out);
    if (!rc) rc = cairn_idx_write_pair(&stream, ip, lp, &err);
    if (!rc)
        printf("wrote %d images (%d corruptions x %d, severity %ld, %s split) to %s\n", stream.n,
               n_parts, sub.n, sev, cairn__adapt_split_name(split), out);
    else
        fprintf(stderr, "cairn adapt corrupt: %s\n", err.msg);
    cairn_dataset_free(&full);
    cairn_dataset_free(&sub);
    cairn_dataset_free(&stream);
    return rc ? 1 : 0;
}

/* `cairn adapt eval` (services/cmd_adapt_eval.c): the cloud–edge adaptation benchmark. */
int cairn_cmd_adapt_eval(int argc, char **argv);

int cairn_cmd_adapt(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "train")) return cmd_train(argc - 1, argv + 1);
    if (!strcmp(argv[1], "eval-clean")) return cmd_eval_clean(argc - 1, argv + 1);
    if (!strcmp(argv[1], "eval")) return cairn_cmd_adapt_eval(argc - 1, argv + 1);
    if (!strcmp(argv[1], "corrupt")) return cmd_corrupt(argc - 1, argv + 1);
    fprintf(stderr, "cairn adapt: no such subcommand '%s'\n%s", argv[1], USAGE);
    return 2;
}
