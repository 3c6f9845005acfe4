/*
 * clients/edge/examples/example.c — a minimal device loop on libcairn_edge.
 *
 *   cairn_edge_example [--socket] MODEL.gguf CLOUD_PUBKEY.pem BASE_URL DEVICE_ID DEVICE_KEY
 *                      [IMAGES.f32]
 *
 * Classifies images (raw little-endian float32, C*H*W values in [0, 1] per image; without a file,
 * a few synthetic ones), queues the samples CEMA selects for upload, asks the cloud for a newer
 * bundle, waits up to 5 s for the uploads, and prints what happened. --socket uses the plain-socket
 * transport of transport_socket.c instead of libcurl's.
 *
 * Exit status: 0 done (an update applied or none newer), 1 an error, 3 the cloud offered a bundle
 * and the SDK refused it (signature, base model, version or tensors: the model kept its
 * parameters).
 *
 * Built against an installed SDK with nothing but pkg-config:
 *   cc example.c transport_socket.c $(pkg-config --cflags --libs cairn-edge) -o example
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cairn_edge.h>

#include "transport_socket.h"

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0, r;
    do {
        if (n == cap) {
            cap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, cap + 1);
            if (!nb) break;
            buf = nb;
        }
        r = fread(buf + n, 1, cap - n, f);
        n += r;
    } while (r > 0);
    fclose(f);
    if (buf) buf[n] = 0;
    *len = n;
    return buf;
}

int main(int argc, char **argv)
{
    int use_socket = argc > 1 && strcmp(argv[1], "--socket") == 0;
    if (use_socket) {
        argv[1] = argv[0];
        argv++;
        argc--;
    }
    if (argc < 6) {
        fprintf(stderr,
                "usage: %s [--socket] MODEL.gguf PUBKEY.pem BASE_URL DEVICE_ID DEVICE_KEY "
                "[IMAGES.f32]\n",
                argv[0]);
        return 2;
    }
    cairn_error err;
    size_t key_len = 0;
    char *key = read_file(argv[2], &key_len);
    if (!key) {
        fprintf(stderr, "cannot read %s\n", argv[2]);
        return 1;
    }
    cairn_edge_transport t;
    int trc = use_socket ? socket_transport_new(&t, argv[3], argv[5], 10000, &err)
                         : cairn_edge_transport_curl_new(&t, argv[3], argv[5], 10000, &err);
    if (trc) {
        fprintf(stderr, "transport: %s\n", err.msg);
        free(key);
        return 1;
    }
    cairn_edge_params p = cairn_edge_default_params();
    p.model_name = "edge";
    p.device_id = argv[4];
    p.public_key_pem = key;
    p.public_key_len = key_len;
    cairn_edge *e = NULL;
    if (cairn_edge_open(&e, argv[1], &p, &t, &err)) {
        fprintf(stderr, "open: %s\n", err.msg);
        free(key);
        return 1;
    }
    int c, h, w;
    cairn_edge_input_shape(e, &c, &h, &w);
    const size_t dim = (size_t)c * h * w;
    const int k = cairn_edge_classes(e);

    float *images = NULL;
    int n = 0;
    if (argc > 6) {
        size_t len = 0;
        images = (float *)read_file(argv[6], &len);
        n = images ? (int)(len / (dim * sizeof(float))) : 0;
    } else {
        n = 16;
        images = malloc((size_t)n * dim * sizeof(float));
        for (size_t i = 0; images && i < (size_t)n * dim; i++)
            images[i] = (float)((i * 2654435761u) % 1000) / 1000.0f;
    }
    if (!images || n < 1) {
        fprintf(stderr, "no images\n");
        cairn_edge_close(e);
        free(key);
        return 1;
    }
    float *probs = malloc((size_t)n * k * sizeof(float)), *ent = malloc((size_t)n * sizeof(float));
    uint8_t *keep = malloc((size_t)n);
    int rc = probs && ent && keep ? 0 : CAIRN_ENOMEM, refused = 0;
    for (int i = 0; i < n && !rc; i += 32) {
        int b = n - i < 32 ? n - i : 32;
        int queued = cairn_edge_process(e, images + (size_t)i * dim, b, probs + (size_t)i * k,
                                        ent + i, keep + i, &err);
        if (queued < 0) rc = queued; /* else: how many went to the upload queue */
    }
    if (rc < 0) {
        fprintf(stderr, "process: %s\n", err.msg);
    } else {
        for (int i = 0; i < n && i < 8; i++) {
            int best = 0;
            for (int j = 1; j < k; j++)
                if (probs[(size_t)i * k + j] > probs[(size_t)i * k + best]) best = j;
            printf("image %d: class %d (p %.3f, entropy %.3f)%s\n", i, best,
                   probs[(size_t)i * k + best], ent[i], keep[i] ? " -> upload" : "");
        }
        int u = cairn_edge_update(e, &err);
        /* These four: the cloud answered with a bundle that the SDK refused, and the model runs
         * on with the parameters it had. Others: the cloud could not be asked. */
        refused = u == CAIRN_EAUTH || u == CAIRN_ERANGE || u == CAIRN_EFORMAT || u == CAIRN_ELIMIT;
        if (u < 0)
            printf("update: %s: %s (%s; version %llu)\n", refused ? "refused" : "failed",
                   err.msg, cairn_strerror(u), (unsigned long long)cairn_edge_version(e));
        else
            printf("update: %s (version %llu)\n", u ? "applied" : "none newer",
                   (unsigned long long)cairn_edge_version(e));
        if (cairn_edge_flush(e, 5000)) printf("uploads still pending after 5 s\n");
    }
    cairn_edge_stats st;
    cairn_edge_get_stats(e, &st);
    printf("inferred %llu, selected %llu, uploaded %llu, dropped %llu+%llu, bytes up %llu\n",
           (unsigned long long)st.inferred, (unsigned long long)st.selected,
           (unsigned long long)st.uploaded, (unsigned long long)st.dropped_full,
           (unsigned long long)st.dropped_failed, (unsigned long long)st.bytes_up);
    cairn_edge_close(e);
    free(images);
    free(probs);
    free(ent);
    free(keep);
    free(key);
    return rc < 0 ? 1 : refused ? 3 : 0;
}
