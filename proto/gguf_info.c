/*
 * proto/gguf_info.c — human-readable summary of a GGUF file (`cairn gguf-info FILE`).
 */
#include "proto/gguf.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { ARR_SHOW = 8, STR_SHOW = 120 };

/* Prints a string with control characters escaped, at most max bytes unless max == 0. */
static void put_escaped(FILE *out, const char *s, uint64_t len, uint64_t max)
{
    uint64_t n = max && len > max ? max : len;
    fputc('"', out);
    for (uint64_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '\n')
            fputs("\\n", out);
        else if (ch == '\t')
            fputs("\\t", out);
        else if (ch == '"' || ch == '\\')
            fprintf(out, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            fprintf(out, "\\x%02x", ch);
        else
            fputc(ch, out);
    }
    fputc('"', out);
    if (n < len) fprintf(out, "... (%" PRIu64 " bytes)", len);
}

/* The shortest %g form that reads back as the same float (1e-06, not 9.99999997e-07). */
static void put_float(FILE *out, double v, bool is_f32)
{
    char buf[40];
    if (v == floor(v) && fabs(v) < 1e15) { /* integral: 1000000, not 1e+06 */
        fprintf(out, "%.0f", v);
        return;
    }
    for (int prec = is_f32 ? 6 : 15; prec <= (is_f32 ? 9 : 17); prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (is_f32 ? strtof(buf, NULL) == (float)v : strtod(buf, NULL) == v) break;
    }
    fputs(buf, out);
}

static void put_elem(FILE *out, cairn_gguf_kv_type t, const void *arr, uint64_t i)
{
    const uint8_t *p = (const uint8_t *)arr + i * cairn_gguf_kv_type_size(t);
    switch (t) {
    case CAIRN_GGUF_KV_U8:
        fprintf(out, "%u", *p);
        break;
    case CAIRN_GGUF_KV_I8:
        fprintf(out, "%d", *(const int8_t *)p);
        break;
    case CAIRN_GGUF_KV_U16:
        fprintf(out, "%u", *(const uint16_t *)p);
        break;
    case CAIRN_GGUF_KV_I16:
        fprintf(out, "%d", *(const int16_t *)p);
        break;
    case CAIRN_GGUF_KV_U32:
        fprintf(out, "%" PRIu32, *(const uint32_t *)p);
        break;
    case CAIRN_GGUF_KV_I32:
        fprintf(out, "%" PRId32, *(const int32_t *)p);
        break;
    case CAIRN_GGUF_KV_U64:
        fprintf(out, "%" PRIu64, *(const uint64_t *)p);
        break;
    case CAIRN_GGUF_KV_I64:
        fprintf(out, "%" PRId64, *(const int64_t *)p);
        break;
    case CAIRN_GGUF_KV_F32:
        put_float(out, *(const float *)p, true);
        break;
    case CAIRN_GGUF_KV_F64:
        put_float(out, *(const double *)p, false);
        break;
    case CAIRN_GGUF_KV_BOOL:
        fputs(*p ? "true" : "false", out);
        break;
    default:
        fputs("?", out);
        break;
    }
}

static void put_value(FILE *out, const cairn_gguf_kv *kv, bool full)
{
    switch (kv->type) {
    case CAIRN_GGUF_KV_STRING:
        put_escaped(out, kv->str, kv->str_len, full ? 0 : STR_SHOW);
        break;
    case CAIRN_GGUF_KV_F32:
        put_float(out, kv->f, true);
        break;
    case CAIRN_GGUF_KV_F64:
        put_float(out, kv->f, false);
        break;
    case CAIRN_GGUF_KV_BOOL:
        fputs(kv->u ? "true" : "false", out);
        break;
    case CAIRN_GGUF_KV_I8:
    case CAIRN_GGUF_KV_I16:
    case CAIRN_GGUF_KV_I32:
    case CAIRN_GGUF_KV_I64:
        fprintf(out, "%" PRId64, kv->i);
        break;
    case CAIRN_GGUF_KV_ARRAY: {
        uint64_t n = kv->arr_count, show = full || n <= ARR_SHOW ? n : ARR_SHOW;
        if (kv->arr_type == CAIRN_GGUF_KV_ARRAY) {
            fprintf(out, "[%" PRIu64 " nested arrays]", n);
            break;
        }
        fputc('[', out);
        for (uint64_t i = 0; i < show; i++) {
            if (i) fputs(", ", out);
            if (kv->arr_type == CAIRN_GGUF_KV_STRING)
                put_escaped(out, kv->strs[i].ptr, kv->strs[i].len, full ? 0 : 40);
            else
                put_elem(out, kv->arr_type, kv->arr, i);
        }
        if (show < n) fprintf(out, ", ... %" PRIu64 " more", n - show);
        fputc(']', out);
        break;
    }
    default:
        fprintf(out, "%" PRIu64, kv->u);
        break;
    }
}

static void human_bytes(char *buf, size_t n, uint64_t b)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, n, "%" PRIu64 " B", b);
    else
        snprintf(buf, n, "%.2f %s", v, units[u]);
}

int cairn_gguf_print_info(FILE *out, const cairn_gguf *g, int flags)
{
    bool full = flags & CAIRN_GGUF_INFO_FULL;
    size_t nt = cairn_gguf_tensor_count(g), nkv = cairn_gguf_kv_count(g);
    uint64_t params = 0, tbytes = 0;
    uint64_t count_by_type[64] = {0}, bytes_by_type[64] = {0}, other = 0;
    for (size_t i = 0; i < nt; i++) {
        const cairn_gguf_tensor *t = cairn_gguf_tensor_at(g, i);
        params += t->n_elements;
        tbytes += t->nbytes;
        if (t->type < 64) {
            count_by_type[t->type]++;
            bytes_by_type[t->type] += t->nbytes;
        } else {
            other++;
        }
    }
    char fs[32], tb[32];
    human_bytes(fs, sizeof fs, cairn_gguf_file_size(g));
    human_bytes(tb, sizeof tb, tbytes);
    const char *arch = NULL, *name = NULL;
    cairn_gguf_get_str(g, "general.architecture", &arch, NULL, NULL);
    cairn_gguf_get_str(g, "general.name", &name, NULL, NULL);

    fprintf(out, "GGUF version %" PRIu32 "\n", cairn_gguf_version(g));
    if (name) fprintf(out, "  name:         %s\n", name);
    if (arch) fprintf(out, "  architecture: %s\n", arch);
    fprintf(out, "  file size:    %" PRIu64 " bytes (%s)\n", cairn_gguf_file_size(g), fs);
    fprintf(out, "  metadata:     %zu keys\n", nkv);
    fprintf(out, "  tensors:      %zu, %s of data from offset %" PRIu64 "\n", nt, tb,
            cairn_gguf_data_offset(g));
    fprintf(out, "  alignment:    %" PRIu32 "\n", cairn_gguf_alignment(g));
    fprintf(out, "  parameters:   %" PRIu64 " (%.1f M)\n", params, (double)params / 1e6);
    fprintf(out, "  tensor types:");
    for (int t = 0; t < 64; t++) {
        if (!count_by_type[t]) continue;
        const char *tn = cairn_gguf_type_name((uint32_t)t);
        char b[32];
        human_bytes(b, sizeof b, bytes_by_type[t]);
        fprintf(out, " %s x%" PRIu64 " (%s)%s", tn ? tn : "?", count_by_type[t], b,
                tn && cairn_gguf_type_can_dequantize((uint32_t)t) ? "" : " [unsupported]");
    }
    if (other) fprintf(out, " unknown x%" PRIu64 " [unsupported]", other);
    fputc('\n', out);

    if (!(flags & CAIRN_GGUF_INFO_NO_METADATA)) {
        fprintf(out, "\nMetadata (%zu):\n", nkv);
        size_t kw = 0;
        for (size_t i = 0; i < nkv; i++) {
            size_t l = strlen(cairn_gguf_kv_at(g, i)->key);
            if (l > kw) kw = l;
        }
        if (kw > 48) kw = 48;
        for (size_t i = 0; i < nkv; i++) {
            const cairn_gguf_kv *kv = cairn_gguf_kv_at(g, i);
            char type[24];
            if (kv->type == CAIRN_GGUF_KV_ARRAY)
                snprintf(type, sizeof type, "%s[%" PRIu64 "]",
                         cairn_gguf_kv_type_name(kv->arr_type), kv->arr_count);
            else
                snprintf(type, sizeof type, "%s", cairn_gguf_kv_type_name(kv->type));
            fprintf(out, "  %4zu  %-*s  %-14s = ", i, (int)kw, kv->key, type);
            put_value(out, kv, full);
            fputc('\n', out);
        }
    }

    if (!(flags & CAIRN_GGUF_INFO_NO_TENSORS)) {
        size_t nw = 4;
        for (size_t i = 0; i < nt; i++) {
            size_t l = strlen(cairn_gguf_tensor_at(g, i)->name);
            if (l > nw) nw = l;
        }
        if (nw > 64) nw = 64;
        fprintf(out, "\nTensors (%zu):\n", nt);
        fprintf(out, "  %5s  %-*s  %-7s  %-24s  %12s  %12s  %12s\n", "#", (int)nw, "name", "type",
                "shape", "elements", "bytes", "offset");
        for (size_t i = 0; i < nt; i++) {
            const cairn_gguf_tensor *t = cairn_gguf_tensor_at(g, i);
            char shape[96] = "[", tname[16];
            size_t p = 1;
            for (uint32_t d = 0; d < t->n_dims && p < sizeof shape; d++)
                p += (size_t)snprintf(shape + p, sizeof shape - p, "%s%" PRIu64, d ? ", " : "",
                                      t->dims[d]);
            if (p < sizeof shape - 1) {
                shape[p] = ']';
                shape[p + 1] = '\0';
            }
            const char *tn = cairn_gguf_type_name(t->type);
            if (tn)
                snprintf(tname, sizeof tname, "%s", tn);
            else
                snprintf(tname, sizeof tname, "?%" PRIu32, t->type);
            fprintf(out, "  %5zu  %-*s  %-7s  %-24s  %12" PRIu64 "  %12" PRIu64 "  %12" PRIu64 "\n",
                    i, (int)nw, t->name, tname, shape, t->n_elements, t->nbytes, t->file_offset);
        }
    }
    return ferror(out) ? CAIRN_EIO : 0;
}
