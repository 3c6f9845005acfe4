/*
 * tests/bench/bench_edge.c — the edge SDK's run-time footprint on this machine (docs/BENCHMARKS.md,
 * "Edge SDK footprint"; its code size comes from scripts/bench-edge-size).
 *
 *   bench_edge [--images N] [--model FILE] [--quick]
 *
 * Prints JSON lines:
 *   {"bench":"edge_infer",...}  inference latency per batch of the edge CNN
 *       (adapt/models/edge.gguf) through cairn_edge_infer, pinned to one core: batches of 1, 8
 *       and 32, median and p90 of repeated runs over Fashion-MNIST test images;
 *   {"bench":"edge_heap",...}   the heap of a device streaming N Fashion-MNIST test images (all
 *       10,000 by default) through cairn_edge_process in batches of 32, uploading what CEMA
 *       selects and fetching an update every 2,000 images (the first one a real signed bundle,
 *       applied; later ones 204). Every malloc, calloc, realloc and free of the process — SDK,
 *       libcurl, OpenSSL, protobuf-c, libc — goes through the counters below (glibc's
 *       __libc_malloc family underneath), so the peak is the device's whole heap above what
 *       was allocated before cairn_edge_open (the images, the bench's own buffers). One line per
 *       transport (libcurl, the plain-socket example) and per parameter set (the defaults; a small
 *       device's: max_batch 8, queue_capacity 64, upload_batch 16; the least that still batches
 *       uploads: max_batch 1, queue_capacity 16, upload_batch 8). Each run is a fresh
 *       process (fork), so libcurl's and OpenSSL's one-time initialisation counts in every run.
 *       Uploads go to a sink in the measured process that allocates nothing: a loopback socket
 *       server with static buffers that answers every POST with 200 and counts the bytes on the
 *       wire (HTTP headers included).
 *
 * Thread stacks (the SDK's upload thread: the default 8 MiB of address space, of which it touches
 * a few pages) are mmap'ed, not heap, and not counted. Under AddressSanitizer (whose allocator
 * must not be wrapped) the heap lines say they were skipped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "adapt/bundle.h"
#include "adapt/data.h"
#include "adapt/nn/nn_gguf.h"
#include "clients/edge/cairn_edge.h"
#include "clients/edge/examples/transport_socket.h"

/* ---- Heap accounting ------------------------------------------------------------------------- */

#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
#define HEAP_TRACKED 1
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

/* Bytes in use (malloc_usable_size: what the allocator really set aside) and their high mark. */
static _Atomic long long heap_live, heap_peak;

static void heap_add(long long d)
{
    long long v = atomic_fetch_add(&heap_live, d) + d, p = atomic_load(&heap_peak);
    while (v > p && !atomic_compare_exchange_weak(&heap_peak, &p, v)) {
    }
}

void *malloc(size_t n)
{
    void *p = __libc_malloc(n);
    if (p) heap_add((long long)malloc_usable_size(p));
    return p;
}

void *calloc(size_t a, size_t b)
{
    void *p = __libc_calloc(a, b);
    if (p) heap_add((long long)malloc_usable_size(p));
    return p;
}

void *realloc(void *old, size_t n)
{
    long long before = old ? (long long)malloc_usable_size(old) : 0;
    void *p = __libc_realloc(old, n);
    if (p)
        heap_add((long long)malloc_usable_size(p) - before);
    else if (old && n == 0) /* glibc frees old and returns NULL */
        heap_add(-before);
    return p;
}

void free(void *p)
{
    if (p) heap_add(-(long long)malloc_usable_size(p));
    __libc_free(p);
}

void *memalign(size_t align, size_t n)
{
    void *p = __libc_memalign(align, n);
    if (p) heap_add((long long)malloc_usable_size(p));
    return p;
}

void *aligned_alloc(size_t align, size_t n)
{
    return memalign(align, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    void *p = memalign(align, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}

void *valloc(size_t n)
{
    return memalign((size_t)sysconf(_SC_PAGESIZE), n);
}
#else
#define HEAP_TRACKED 0
static _Atomic long long heap_live, heap_peak;
#endif

/* ---- A sink that allocates nothing ----------------------------------------------------------- */

typedef struct {
    int lfd, port;
    _Atomic int stop;
    _Atomic long long wire_in, wire_out, posts, gets;
    const uint8_t *bundle; /* served to GET .../bundle?after=N while N < bundle_version */
    size_t bundle_len;
    uint64_t bundle_version;
    pthread_t thread;
} sink;

static int send_all(int fd, const void *buf, size_t len, sink *s)
{
    const char *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n <= 0) return -1;
        atomic_fetch_add(&s->wire_out, n);
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* One request per connection (both transports open one per request). */
static void sink_serve(sink *s, int fd)
{
    static char buf[1 << 16];
    size_t got = 0;
    char *end = NULL;
    while (!end && got < sizeof buf - 1) {
        ssize_t n = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (n <= 0) return;
        atomic_fetch_add(&s->wire_in, n);
        got += (size_t)n;
        buf[got] = 0;
        end = strstr(buf, "\r\n\r\n");
    }
    if (!end) return;
    size_t head = (size_t)(end + 4 - buf), body = 0;
    char *cl = strcasestr(buf, "\r\nContent-Length:");
    if (cl && cl < end) body = strtoul(cl + 17, NULL, 10);
    char *ex = strcasestr(buf, "\r\nExpect: 100-continue");
    if (ex && ex < end) send_all(fd, "HTTP/1.1 100 Continue\r\n\r\n", 25, s);
    for (size_t have = got - head; have < body;) { /* read and drop the body */
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0) return;
        atomic_fetch_add(&s->wire_in, n);
        have += (size_t)n;
    }
    char hdr[256];
    if (strncmp(buf, "POST ", 5) == 0) {
        atomic_fetch_add(&s->posts, 1);
        static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 "Content-Length: 16\r\nConnection: close\r\n\r\n"
                                 "{\"accepted\": 32}";
        send_all(fd, ok, sizeof ok - 1, s);
        return;
    }
    atomic_fetch_add(&s->gets, 1);
    char *after = strstr(buf, "after=");
    unsigned long long n = after ? strtoull(after + 6, NULL, 10) : 0;
    if (s->bundle && n < s->bundle_version) {
        int hl = snprintf(hdr, sizeof hdr,
                          "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
                          "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                          s->bundle_len);
        if (send_all(fd, hdr, (size_t)hl, s) == 0) send_all(fd, s->bundle, s->bundle_len, s);
    } else {
        static const char none[] = "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n";
        send_all(fd, none, sizeof none - 1, s);
    }
}

static void *sink_main(void *arg)
{
    sink *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd p = {.fd = s->lfd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0) continue;
        int fd = accept(s->lfd, NULL, NULL);
        if (fd < 0) continue;
        sink_serve(s, fd);
        close(fd);
    }
    return NULL;
}

static int sink_start(sink *s)
{
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (s->lfd < 0 || bind(s->lfd, (struct sockaddr *)&a, sizeof a) ||
        listen(s->lfd, 64) || getsockname(s->lfd, (struct sockaddr *)&a, &al))
        return -1;
    s->port = ntohs(a.sin_port);
    return pthread_create(&s->thread, NULL, sink_main, s) ? -1 : 0;
}

static void sink_stop(sink *s)
{
    atomic_store(&s->stop, 1);
    pthread_join(s->thread, NULL);
    close(s->lfd);
}

/* ---- Shared setup ---------------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* What the device needs from the cloud: the public key it pins and a signed bundle (version 1)
 * of the model's own batchnorm tensors. Made in a child process, so that this process has not
 * initialised OpenSSL when the measured children fork from it. */
static char pub_pem[1024];
static uint8_t bundle[1 << 16];
static size_t bundle_len;

static int make_bundle(const char *model_path)
{
    int pfd[2];
    if (pipe(pfd)) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        cairn_error err;
        cairn_nn_model *m = NULL;
        cairn_bundle_key *k = NULL;
        char *pem = NULL;
        uint8_t *b = NULL;
        size_t bl = 0;
        cairn_bundle_build_params bp = cairn_bundle_default_build_params();
        bp.model_name = "edge";
        bp.version = 1;
        if (cairn_nn_load(&m, model_path, &err) || cairn_bundle_key_generate(&k, &err) ||
            cairn_bundle_key_to_pem(k, 0, &pem, &err) ||
            cairn_bundle_sha256_file(model_path, bp.base_sha256, &err) ||
            cairn_bundle_build(m, &bp, k, &b, &bl, &err) || strlen(pem) >= sizeof pub_pem ||
            bl > sizeof bundle) {
            fprintf(stderr, "bench_edge: bundle: %s\n", err.msg);
            _exit(1);
        }
        size_t pl = strlen(pem) + 1;
        if (write(pfd[1], &pl, sizeof pl) != (ssize_t)sizeof pl ||
            write(pfd[1], pem, pl) != (ssize_t)pl ||
            write(pfd[1], &bl, sizeof bl) != (ssize_t)sizeof bl ||
            write(pfd[1], b, bl) != (ssize_t)bl)
            _exit(1);
        _exit(0);
    }
    close(pfd[1]);
    size_t pl = 0;
    int ok = read(pfd[0], &pl, sizeof pl) == (ssize_t)sizeof pl && pl <= sizeof pub_pem &&
             read(pfd[0], pub_pem, pl) == (ssize_t)pl &&
             read(pfd[0], &bundle_len, sizeof bundle_len) == (ssize_t)sizeof bundle_len &&
             bundle_len <= sizeof bundle;
    for (size_t got = 0; ok && got < bundle_len;) {
        ssize_t n = read(pfd[0], bundle + got, bundle_len - got);
        if (n <= 0) ok = 0;
        got += n > 0 ? (size_t)n : 0;
    }
    close(pfd[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    return ok && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

/* A transport that reaches nothing: inference alone. */
static int null_post(void *c, const char *p, const uint8_t *b, size_t l, long *s, cairn_error *e)
{
    *s = 200;
    return 0;
}

static int null_get(void *c, const char *p, uint8_t **b, size_t *l, long *s, cairn_error *e)
{
    *b = NULL;
    *l = 0;
    *s = 204;
    return 0;
}

/* ---- Inference latency ----------------------------------------------------------------------- */

static int bench_infer(const char *model_path, const cairn_dataset *ds, int quick)
{
    /* One core: the one this thread runs on now. */
    cpu_set_t set;
    CPU_ZERO(&set);
    int cpu = sched_getcpu();
    CPU_SET(cpu < 0 ? 0 : cpu, &set);
    int pinned = sched_setaffinity(0, sizeof set, &set) == 0;

    cairn_edge_params p = cairn_edge_default_params();
    p.model_name = "edge";
    p.device_id = "bench";
    p.public_key_pem = pub_pem;
    cairn_edge_transport t = {.post = null_post, .get = null_get};
    cairn_edge *e = NULL;
    cairn_error err;
    if (cairn_edge_open(&e, model_path, &p, &t, &err)) {
        fprintf(stderr, "bench_edge: open: %s\n", err.msg);
        return 1;
    }
    static float probs[32 * CAIRN_FMNIST_CLASSES], ent[32];
    static const int batches[] = {1, 8, 32};
    for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; bi++) {
        int b = batches[bi], reps = 0, max_reps = 2000, at = 0;
        static double ms[2000];
        double budget = quick ? 0.3 : 2.0, t0 = now_s();
        for (int w = 0; w < 10; w++) /* warm the caches and the branch predictors */
            cairn_edge_infer(e, ds->images, b, probs, ent, &err);
        while (reps < max_reps && (now_s() - t0 < budget || reps < 20)) {
            if (at + b > ds->n) at = 0;
            double a = now_s();
            if (cairn_edge_infer(e, ds->images + (size_t)at * CAIRN_FMNIST_PIXELS, b, probs, ent,
                                 &err)) {
                fprintf(stderr, "bench_edge: infer: %s\n", err.msg);
                cairn_edge_close(e);
                return 1;
            }
            ms[reps++] = (now_s() - a) * 1e3;
            at += b;
        }
        qsort(ms, (size_t)reps, sizeof ms[0], cmp_double);
        double med = ms[reps / 2], p90 = ms[(reps * 9) / 10];
        printf("{\"bench\":\"edge_infer\",\"model\":\"edge\",\"arch\":\"%s\",\"threads\":1,"
               "\"pinned\":%s,\"batch\":%d,\"runs\":%d,\"ms_median\":%.4f,\"ms_p90\":%.4f,"
               "\"ms_per_image\":%.4f,\"images_per_s\":%.0f}\n",
#if defined(__x86_64__)
               "x86_64",
#elif defined(__aarch64__)
               "aarch64",
#else
               "other",
#endif
               pinned ? "true" : "false", b, reps, med, p90, med / b, 1e3 * b / med);
        fflush(stdout);
    }
    cairn_edge_close(e);
    return 0;
}

/* ---- Heap over a stream ---------------------------------------------------------------------- */

typedef struct {
    const char *name;
    int max_batch, queue_capacity, upload_batch;
} heap_config;

/* The run in a forked child; prints one JSON line. */
static int heap_run(const char *model_path, const cairn_dataset *ds, int n_images,
                    const heap_config *hc, int use_socket)
{
    static sink s;
    memset(&s, 0, sizeof s);
    s.bundle = bundle;
    s.bundle_len = bundle_len;
    s.bundle_version = 1;
    if (sink_start(&s)) {
        fprintf(stderr, "bench_edge: sink: %s\n", strerror(errno));
        return 1;
    }
    static float probs[32 * CAIRN_FMNIST_CLASSES], ent[32];
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", s.port);

    /* From here on, every allocation is the device's. */
    long long base = atomic_load(&heap_live);
    atomic_store(&heap_peak, base);
    double t0 = now_s();
    cairn_error err;
    cairn_edge_transport t;
    int rc = use_socket ? socket_transport_new(&t, url, "cek_bench", 10000, &err)
                        : cairn_edge_transport_curl_new(&t, url, "cek_bench", 10000, &err);
    cairn_edge_params p = cairn_edge_default_params();
    p.model_name = "edge";
    p.device_id = "dev-bench";
    p.public_key_pem = pub_pem;
    p.max_batch = hc->max_batch;
    p.queue_capacity = hc->queue_capacity;
    p.upload_batch = hc->upload_batch;
    p.seed = 1;
    cairn_edge *e = NULL;
    if (!rc) rc = cairn_edge_open(&e, model_path, &p, &t, &err);
    if (rc) {
        fprintf(stderr, "bench_edge: open: %s\n", err.msg);
        sink_stop(&s);
        return 1;
    }
    long long after_open = atomic_load(&heap_live) - base, warm_peak = 0, late_max = 0;
    int applied = 0;
    for (int i = 0; i < n_images && !rc; i += 32) {
        int b = n_images - i < 32 ? n_images - i : 32;
        int q = cairn_edge_process(e, ds->images + (size_t)(i % ds->n) * CAIRN_FMNIST_PIXELS, b,
                                   probs, ent, NULL, &err);
        if (q < 0) rc = q;
        if ((i + b) % 2000 < 32 && i + b >= 2000) {
            int u = cairn_edge_update(e, &err);
            if (u < 0) {
                fprintf(stderr, "bench_edge: update: %s\n", err.msg);
                rc = u;
            }
            applied += u > 0;
        }
        long long live = atomic_load(&heap_live) - base;
        if (i + b <= 1000) warm_peak = atomic_load(&heap_peak) - base;
        else if (live > late_max) late_max = live;
    }
    if (!rc && cairn_edge_flush(e, 60000)) fprintf(stderr, "bench_edge: uploads pending\n");
    long long live_end = atomic_load(&heap_live) - base;
    cairn_edge_stats st;
    cairn_edge_get_stats(e, &st);
    cairn_edge_close(e);
    double secs = now_s() - t0;
    long long retained = atomic_load(&heap_live) - base, peak = atomic_load(&heap_peak) - base;
    sink_stop(&s);
    if (rc) {
        fprintf(stderr, "bench_edge: stream: %s\n", err.msg);
        return 1;
    }
    /* What the params bound by construction: the upload queue (queue_capacity samples of pixels,
     * probabilities and entropy as float32), the upload thread's batch (upload_batch samples)
     * and the probe copy of the last inference batch (max_batch images) — the rest is the model
     * (weights and max_batch-sized activations) and the transport. */
    const long long dim = CAIRN_FMNIST_PIXELS, k = CAIRN_FMNIST_CLASSES;
    long long bound = (long long)hc->queue_capacity * (dim + k + 1) * 4 +
                      (long long)hc->upload_batch * (dim + k + 1) * 4 +
                      (long long)hc->max_batch * dim * 4;
    printf("{\"bench\":\"edge_heap\",\"params\":\"%s\",\"transport\":\"%s\",\"images\":%d,"
           "\"max_batch\":%d,\"queue_capacity\":%d,\"upload_batch\":%d,"
           "\"heap_peak_bytes\":%lld,\"heap_after_open_bytes\":%lld,"
           "\"heap_peak_first_1000_bytes\":%lld,\"heap_live_max_after_1000_bytes\":%lld,"
           "\"heap_live_end_bytes\":%lld,\"heap_retained_after_close_bytes\":%lld,"
           "\"queue_and_batch_buffers_bytes\":%lld,\"selected\":%llu,\"uploaded\":%llu,"
           "\"dropped\":%llu,\"upload_requests\":%llu,\"upload_body_bytes\":%llu,"
           "\"upload_wire_bytes\":%lld,\"body_bytes_per_uploaded_sample\":%.1f,"
           "\"bundles_applied\":%d,\"bundle_bytes\":%zu,\"seconds\":%.2f,\"heap_tracked\":%s}\n",
           hc->name, use_socket ? "socket" : "curl", n_images, hc->max_batch, hc->queue_capacity,
           hc->upload_batch, peak, after_open, warm_peak, late_max, live_end, retained, bound,
           (unsigned long long)st.selected, (unsigned long long)st.uploaded,
           (unsigned long long)(st.dropped_full + st.dropped_failed),
           (unsigned long long)st.upload_requests, (unsigned long long)st.bytes_up,
           (long long)atomic_load(&s.wire_in),
           st.uploaded ? (double)st.bytes_up / (double)st.uploaded : 0.0, applied, bundle_len,
           secs, HEAP_TRACKED ? "true" : "false");
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    const char *model = "adapt/models/edge.gguf";
    int n_images = 10000, quick = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--images") && i + 1 < argc)
            n_images = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--model") && i + 1 < argc)
            model = argv[++i];
        else if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else {
            fprintf(stderr, "usage: %s [--images N] [--model FILE] [--quick]\n", argv[0]);
            return 2;
        }
    }
    if (access(model, R_OK) != 0) {
        printf("{\"bench\":\"edge_infer\",\"note\":\"skipped: no %s (run from the repository "
               "root)\"}\n", model);
        return 0;
    }
    cairn_dataset ds;
    cairn_error err;
    if (cairn_fmnist_load(&ds, NULL, CAIRN_FMNIST_TEST, &err)) {
        printf("{\"bench\":\"edge_infer\",\"note\":\"skipped: Fashion-MNIST: %s\"}\n", err.msg);
        return 0;
    }
    if (n_images < 32) n_images = 32;
    if (make_bundle(model)) return 1;
    if (bench_infer(model, &ds, quick)) return 1;

    static const heap_config configs[] = {
        {"default", 32, 256, 32},
        {"small", 8, 64, 16},
        {"minimal", 1, 16, 8},
    };
    int rc = 0;
    if (!HEAP_TRACKED)
        printf("{\"bench\":\"edge_heap\",\"note\":\"skipped: AddressSanitizer build\"}\n");
    for (size_t c = 0; HEAP_TRACKED && c < sizeof configs / sizeof configs[0]; c++)
        for (int sock = 0; sock <= 1; sock++) {
            fflush(stdout);
            pid_t pid = fork();
            if (pid == 0) _exit(heap_run(model, &ds, n_images, &configs[c], sock));
            int st = 0;
            waitpid(pid, &st, 0);
            if (!WIFEXITED(st) || WEXITSTATUS(st)) rc = 1;
        }
    cairn_dataset_free(&ds);
    return rc;
}
