/* The CIFAR-10 and CIFAR-100 binary reader: fixed-size records of label byte(s) and a 32x32 RGB
 * image in planes, gzip or plain. The record count comes from the size, so that is checked first. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data_internal.h"

#define CIFAR_PIX 3072

static const char *kind_name(eng_cifar_kind k)
{
    return k == ENG_CIFAR_10 ? "CIFAR-10" : k == ENG_CIFAR_100 ? "CIFAR-100 (fine labels)" : "CIFAR-100 (coarse labels)";
}

/* Reads the whole (decompressed) stream into a buffer of at most `limit` bytes; *len its size. */
static eng_status slurp(eng_data_src *src, uint64_t limit, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    uint64_t bound = eng_data_src_bound(src);
    /* One byte over what can come, so that a plain buffer is read in one go and its end seen. */
    size_t cap = (size_t)(bound < limit ? bound + 1 : limit + 1);
    if (src->gz && cap > ((size_t)4 << 20))
        cap = (size_t)4 << 20; /* the bound of a gzip stream is loose: grow as it comes */
    uint8_t *buf = malloc(cap);
    if (!buf)
        return eng_fail(ENG_ERR_NOMEM, "cifar: out of memory for %zu bytes", cap);
    size_t n = 0;
    for (;;) {
        size_t got;
        eng_status s = eng_data_src_read(src, buf + n, cap - n, &got);
        if (s != ENG_OK) {
            free(buf);
            return s;
        }
        n += got;
        if (n < cap)
            break;
        if (n > limit) {
            free(buf);
            return eng_fail(ENG_ERR_LIMIT, "cifar: %s holds more than %llu bytes, over the pixel limit", src->name,
                            (unsigned long long)limit);
        }
        size_t ncap = cap * 2 > limit + 1 ? (size_t)limit + 1 : cap * 2;
        uint8_t *p = realloc(buf, ncap);
        if (!p) {
            free(buf);
            return eng_fail(ENG_ERR_NOMEM, "cifar: out of memory for %zu bytes", ncap);
        }
        buf = p;
        cap = ncap;
    }
    *out = buf;
    *len = n;
    return ENG_OK;
}

static eng_status cifar_core(eng_dataset *d, const void *buf, size_t len, const char *name,
                             const eng_data_opts *opts)
{
    memset(d, 0, sizeof *d);
    eng_dataset t = {0};
    eng_data_src src;
    uint8_t *raw = NULL;
    size_t n_bytes = 0;
    eng_cifar_kind kind = opts ? opts->cifar : ENG_CIFAR_AUTO;
    eng_status s = eng_data_src_open(&src, buf, len, name);
    if (s != ENG_OK)
        goto out;
    if (kind < ENG_CIFAR_AUTO || kind > ENG_CIFAR_100_COARSE) {
        s = eng_fail(ENG_ERR_ARG, "cifar: unknown kind %d", (int)kind);
        goto out;
    }
    const int64_t max_px = eng_data_max_pixels(opts);
    const uint64_t limit = (uint64_t)(max_px / CIFAR_PIX) * (CIFAR_PIX + 2);
    if ((s = slurp(&src, limit, &raw, &n_bytes)) != ENG_OK)
        goto out;
    if (n_bytes == 0) {
        s = eng_fail(ENG_ERR_FORMAT, "cifar: %s is empty", name);
        goto out;
    }
    if (kind == ENG_CIFAR_AUTO) {
        int is10 = n_bytes % (CIFAR_PIX + 1) == 0, is100 = n_bytes % (CIFAR_PIX + 2) == 0;
        if (is10 && is100) {
            s = eng_fail(ENG_ERR_ARG,
                         "cifar: %s has %zu bytes, a whole number of both CIFAR-10 (3073-byte) and CIFAR-100 "
                         "(3074-byte) records; say which it is",
                         name, n_bytes);
            goto out;
        }
        if (!is10 && !is100) {
            s = eng_fail(ENG_ERR_FORMAT,
                         "cifar: %s has %zu bytes: %zu CIFAR-10 records and %zu bytes over, or %zu CIFAR-100 records "
                         "and %zu over (truncated?)",
                         name, n_bytes, n_bytes / (CIFAR_PIX + 1), n_bytes % (CIFAR_PIX + 1),
                         n_bytes / (CIFAR_PIX + 2), n_bytes % (CIFAR_PIX + 2));
            goto out;
        }
        kind = is10 ? ENG_CIFAR_10 : ENG_CIFAR_100;
    }
    const size_t rec = kind == ENG_CIFAR_10 ? CIFAR_PIX + 1 : CIFAR_PIX + 2;
    const size_t lab_bytes = rec - CIFAR_PIX;
    if (n_bytes % rec) {
        s = eng_fail(ENG_ERR_FORMAT, "cifar: %s has %zu bytes: %zu %s records of %zu bytes and %zu bytes over (truncated?)",
                     name, n_bytes, n_bytes / rec, kind_name(kind), rec, n_bytes % rec);
        goto out;
    }
    const size_t n = n_bytes / rec;
    if (n > INT32_MAX || (int64_t)n * CIFAR_PIX > max_px) {
        s = eng_fail(ENG_ERR_LIMIT, "cifar: %s holds %zu images, %lld pixels, over the limit of %lld", name, n,
                     (long long)n * CIFAR_PIX, (long long)max_px);
        goto out;
    }
    if (!(t.labels = malloc(n * sizeof(int32_t)))) {
        s = eng_fail(ENG_ERR_NOMEM, "cifar: out of memory for %zu labels", n);
        goto out;
    }
    const int lim = kind == ENG_CIFAR_10 ? 10 : kind == ENG_CIFAR_100 ? 100 : 20;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *r = raw + i * rec;
        if (kind != ENG_CIFAR_10 && (r[0] >= 20 || r[1] >= 100)) {
            s = eng_fail(ENG_ERR_FORMAT, "cifar: %s: record %zu has coarse label %d and fine label %d, outside 0..19 "
                         "and 0..99", name, i, r[0], r[1]);
            goto out;
        }
        int l = kind == ENG_CIFAR_100 ? r[1] : r[0];
        if (l >= lim) {
            s = eng_fail(ENG_ERR_FORMAT, "cifar: %s: record %zu has label %d, outside 0..%d of %s", name, i, l,
                         lim - 1, kind_name(kind));
            goto out;
        }
        t.labels[i] = l;
    }
    /* The planes are already NCHW per image: close the gaps the label bytes leave, front to back. */
    for (size_t i = 0; i < n; i++)
        memmove(raw + i * CIFAR_PIX, raw + i * rec + lab_bytes, CIFAR_PIX);
    uint8_t *shrunk = realloc(raw, n * CIFAR_PIX);
    t.pixels = shrunk ? shrunk : raw;
    raw = NULL;
    t.n = (int64_t)n;
    t.c = 3;
    t.h = t.w = 32;
    t.type = ENG_PIX_U8;
    char who[600];
    snprintf(who, sizeof who, "cifar: %.500s", name);
    if ((s = eng_data_finish(&t, who)) != ENG_OK)
        goto out;
    *d = t;
    memset(&t, 0, sizeof t);
out:
    free(raw);
    eng_data_src_close(&src);
    eng_dataset_cleanup(&t);
    return s;
}

eng_status eng_dataset_read_cifar_mem(eng_dataset *d, const void *buf, size_t len, const eng_data_opts *opts)
{
    return cifar_core(d, buf, len, ENG_DATA_MEM_NAME, opts);
}

eng_status eng_dataset_read_cifar(eng_dataset *d, const char *path, const eng_data_opts *opts)
{
    memset(d, 0, sizeof *d);
    eng_data_map m;
    eng_status s = eng_data_map_file(&m, path, "cifar");
    if (s == ENG_OK)
        s = cifar_core(d, m.p, m.len, path, opts);
    eng_data_unmap(&m);
    return s;
}
