/* The IDX reader (LeCun's MNIST format) through zlib, which reads gzip and plain files alike,
 * and batch extraction. */
#include "data.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

void eng_dataset_cleanup(eng_dataset *d)
{
    if (!d)
        return;
    free(d->pixels);
    free(d->labels);
    memset(d, 0, sizeof *d);
}

/* Reads exactly n bytes or fails naming the file. */
static eng_status read_all(gzFile f, void *buf, size_t n, const char *path)
{
    uint8_t *p = buf;
    while (n > 0) {
        unsigned chunk = n > (1u << 30) ? (1u << 30) : (unsigned)n;
        int got = gzread(f, p, chunk);
        if (got <= 0) {
            int err;
            const char *msg = gzerror(f, &err);
            return eng_fail(err == Z_OK || err == Z_BUF_ERROR ? ENG_ERR_FORMAT : ENG_ERR_IO,
                            "idx: %s is truncated or unreadable (%s)", path, err == Z_OK ? "unexpected end" : msg);
        }
        p += got;
        n -= (size_t)got;
    }
    return ENG_OK;
}

/* Opens an IDX file and checks its magic (0x08 = unsigned byte, then the rank); dims out. */
static eng_status idx_open(const char *path, int rank, gzFile *out, uint32_t *dims)
{
    *out = NULL;
    gzFile f = gzopen(path, "rb");
    if (!f)
        return eng_fail(ENG_ERR_NOT_FOUND, "idx: cannot open %s", path);
    uint8_t h[4];
    eng_status s = read_all(f, h, 4, path);
    if (s == ENG_OK && (h[0] != 0 || h[1] != 0 || h[2] != 0x08 || h[3] != rank))
        s = eng_fail(ENG_ERR_FORMAT, "idx: %s has magic %02x%02x%02x%02x, expected 000008%02x (uint8, rank %d)", path,
                     h[0], h[1], h[2], h[3], rank, rank);
    for (int i = 0; s == ENG_OK && i < rank; i++) {
        uint8_t b[4];
        s = read_all(f, b, 4, path);
        dims[i] = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    }
    if (s != ENG_OK) {
        gzclose(f);
        return s;
    }
    *out = f;
    return ENG_OK;
}

eng_status eng_dataset_read_idx(eng_dataset *d, const char *images_path, const char *labels_path)
{
    memset(d, 0, sizeof *d);
    gzFile fi = NULL, fl = NULL;
    uint32_t di[3], dl[1];
    uint8_t *lab8 = NULL;
    eng_status s = idx_open(images_path, 3, &fi, di);
    if (s == ENG_OK)
        s = idx_open(labels_path, 1, &fl, dl);
    if (s != ENG_OK)
        goto out;
    if (di[0] != dl[0]) {
        s = eng_fail(ENG_ERR_FORMAT, "idx: %u images but %u labels", di[0], dl[0]);
        goto out;
    }
    if (di[0] == 0 || di[1] == 0 || di[2] == 0 || di[1] > 65536 || di[2] > 65536) {
        s = eng_fail(ENG_ERR_FORMAT, "idx: bad image shape %u x %u x %u", di[0], di[1], di[2]);
        goto out;
    }
    int64_t total = (int64_t)di[0] * di[1] * di[2];
    if (total > ENG_DATA_MAX_PIXELS) {
        s = eng_fail(ENG_ERR_LIMIT, "idx: %lld pixels is more than the limit", (long long)total);
        goto out;
    }
    d->pixels = malloc((size_t)total);
    d->labels = malloc((size_t)di[0] * sizeof(int32_t));
    lab8 = malloc(di[0]);
    if (!d->pixels || !d->labels || !lab8) {
        s = eng_fail(ENG_ERR_NOMEM, "idx: out of memory for %lld pixels", (long long)total);
        goto out;
    }
    if ((s = read_all(fi, d->pixels, (size_t)total, images_path)) != ENG_OK ||
        (s = read_all(fl, lab8, di[0], labels_path)) != ENG_OK)
        goto out;
    d->n = di[0];
    d->c = 1;
    d->h = (int)di[1];
    d->w = (int)di[2];
    for (uint32_t i = 0; i < di[0]; i++) {
        d->labels[i] = lab8[i];
        if (lab8[i] + 1 > d->num_classes)
            d->num_classes = lab8[i] + 1;
    }
out:
    free(lab8);
    if (fi)
        gzclose(fi);
    if (fl)
        gzclose(fl);
    if (s != ENG_OK)
        eng_dataset_cleanup(d);
    return s;
}

eng_status eng_dataset_batch(const eng_dataset *d, const int32_t *idx, int n, eng_tensor *x, int32_t *labels)
{
    if (!x || x->ndim != 4 || x->dim[0] != n || x->dim[1] != d->c || x->dim[2] != d->h || x->dim[3] != d->w ||
        x->layout != ENG_LAYOUT_NCHW || x->dev != ENG_DEV_CPU)
        return eng_fail(ENG_ERR_SHAPE, "dataset: batch tensor must be a host [%d, %d, %d, %d] NCHW tensor", n, d->c,
                        d->h, d->w);
    const int64_t per = (int64_t)d->c * d->h * d->w;
    for (int k = 0; k < n; k++) {
        if (idx[k] < 0 || idx[k] >= d->n)
            return eng_fail(ENG_ERR_ARG, "dataset: index %d outside [0, %lld)", idx[k], (long long)d->n);
        const uint8_t *src = d->pixels + (int64_t)idx[k] * per;
        float *dst = x->data + (int64_t)k * per;
        for (int64_t i = 0; i < per; i++)
            dst[i] = (float)src[i] * (1.0f / 255.0f);
        if (labels)
            labels[k] = d->labels[idx[k]];
    }
    return ENG_OK;
}
