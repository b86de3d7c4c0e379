/* The IDX reader (LeCun's MNIST format, also Fashion-MNIST): uint8 images [n, h, w] and labels
 * [n], each file gzip-compressed or plain; every header field is checked before anything is allocated. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data_internal.h"

/* Reads the magic (0x00 0x00 0x08 = unsigned byte, then the rank) and the big-endian dims. */
static eng_status idx_header(eng_data_src *s, int rank, uint32_t *dims)
{
    uint8_t h[4];
    eng_status st = eng_data_src_need(s, h, 4, "the header");
    if (st != ENG_OK)
        return st;
    if (h[0] != 0 || h[1] != 0 || h[2] != 0x08 || h[3] != rank)
        return eng_fail(ENG_ERR_FORMAT, "idx: %s has magic %02x%02x%02x%02x, expected 000008%02x (uint8, rank %d)",
                        s->name, h[0], h[1], h[2], h[3], rank, rank);
    for (int i = 0; i < rank; i++) {
        uint8_t b[4];
        if ((st = eng_data_src_need(s, b, 4, "the header")) != ENG_OK)
            return st;
        dims[i] = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    }
    return ENG_OK;
}

static eng_status idx_core(eng_dataset *d, const void *images, size_t images_len, const char *iname,
                           const void *labels, size_t labels_len, const char *lname, const eng_data_opts *opts)
{
    memset(d, 0, sizeof *d);
    eng_dataset t = {0};
    eng_data_src si, sl;
    uint8_t *lab8 = NULL;
    uint32_t di[3], dl[1];
    eng_status s = eng_data_src_open(&si, images, images_len, iname);
    eng_status s2 = eng_data_src_open(&sl, labels, labels_len, lname);
    if (s == ENG_OK)
        s = s2;
    if (s != ENG_OK)
        goto out;
    if ((s = idx_header(&si, 3, di)) != ENG_OK || (s = idx_header(&sl, 1, dl)) != ENG_OK)
        goto out;
    if (di[0] != dl[0]) {
        s = eng_fail(ENG_ERR_FORMAT, "idx: %s holds %u images but %s %u labels", iname, di[0], lname, dl[0]);
        goto out;
    }
    if (di[0] == 0 || di[0] > INT32_MAX || di[1] == 0 || di[2] == 0 || di[1] > ENG_DATA_MAX_SIDE ||
        di[2] > ENG_DATA_MAX_SIDE) {
        s = eng_fail(ENG_ERR_FORMAT, "idx: %s declares images [%u, %u, %u]; each must be 1..%d (n 1..%d)", iname,
                     di[0], di[1], di[2], ENG_DATA_MAX_SIDE, INT32_MAX);
        goto out;
    }
    const int64_t total = (int64_t)di[0] * di[1] * di[2];
    if (total > eng_data_max_pixels(opts)) {
        s = eng_fail(ENG_ERR_LIMIT, "idx: %s declares %u images of %ux%u, %lld pixels, over the limit of %lld", iname,
                     di[0], di[1], di[2], (long long)total, (long long)eng_data_max_pixels(opts));
        goto out;
    }
    /* A header cannot make us allocate more than the file can hold. */
    if ((uint64_t)total > eng_data_src_bound(&si)) {
        s = eng_fail(ENG_ERR_FORMAT, "idx: %s is truncated: it declares %u images of %ux%u (%lld bytes) but %s %llu",
                     iname, di[0], di[1], di[2], (long long)total, si.gz ? "its gzip data can hold at most" : "holds",
                     (unsigned long long)eng_data_src_bound(&si));
        goto out;
    }
    if ((uint64_t)di[0] > eng_data_src_bound(&sl)) {
        s = eng_fail(ENG_ERR_FORMAT, "idx: %s is truncated: it declares %u labels but %s %llu bytes", lname, dl[0],
                     sl.gz ? "its gzip data can hold at most" : "holds", (unsigned long long)eng_data_src_bound(&sl));
        goto out;
    }
    t.pixels = malloc((size_t)total);
    t.labels = malloc((size_t)di[0] * sizeof(int32_t));
    lab8 = malloc(di[0]);
    if (!t.pixels || !t.labels || !lab8) {
        s = eng_fail(ENG_ERR_NOMEM, "idx: out of memory for %lld pixels", (long long)total);
        goto out;
    }
    if ((s = eng_data_src_need(&si, t.pixels, (size_t)total, "the pixels")) != ENG_OK ||
        (s = eng_data_src_end(&si)) != ENG_OK || (s = eng_data_src_need(&sl, lab8, di[0], "the labels")) != ENG_OK ||
        (s = eng_data_src_end(&sl)) != ENG_OK)
        goto out;
    t.n = di[0];
    t.c = 1;
    t.h = (int)di[1];
    t.w = (int)di[2];
    t.type = ENG_PIX_U8;
    for (uint32_t i = 0; i < di[0]; i++)
        t.labels[i] = lab8[i];
    char who[600];
    snprintf(who, sizeof who, "idx: %.500s", lname);
    if ((s = eng_data_finish(&t, who)) != ENG_OK)
        goto out;
    *d = t;
    memset(&t, 0, sizeof t);
out:
    free(lab8);
    eng_data_src_close(&si);
    eng_data_src_close(&sl);
    eng_dataset_cleanup(&t);
    return s;
}

eng_status eng_dataset_read_idx_mem(eng_dataset *d, const void *images, size_t images_len, const void *labels,
                                    size_t labels_len, const eng_data_opts *opts)
{
    return idx_core(d, images, images_len, "images " ENG_DATA_MEM_NAME, labels, labels_len,
                    "labels " ENG_DATA_MEM_NAME, opts);
}

eng_status eng_dataset_read_idx(eng_dataset *d, const char *images_path, const char *labels_path,
                                const eng_data_opts *opts)
{
    memset(d, 0, sizeof *d);
    eng_data_map mi, ml = {0};
    eng_status s = eng_data_map_file(&mi, images_path, "idx");
    if (s == ENG_OK)
        s = eng_data_map_file(&ml, labels_path, "idx");
    if (s == ENG_OK)
        s = idx_core(d, mi.p, mi.len, images_path, ml.p, ml.len, labels_path, opts);
    eng_data_unmap(&mi);
    eng_data_unmap(&ml);
    return s;
}
