/* Labelled image datasets in memory (uint8 pixels, NCHW) and the readers that fill them.
 * This file holds the IDX reader (MNIST, Fashion-MNIST; gzip or plain); the other formats
 * of the transfer-methods issue arrive next to it. */
#ifndef ENG_DATA_H
#define ENG_DATA_H

#include <stdint.h>

#include "tensor.h"

/* Refused above this many pixels in one dataset (8 GiB of uint8). */
#define ENG_DATA_MAX_PIXELS ((int64_t)1 << 33)

typedef struct eng_dataset {
    int64_t n;          /* examples */
    int c, h, w;        /* image shape */
    int num_classes;    /* largest label + 1 */
    uint8_t *pixels;    /* n * c * h * w bytes, NCHW; owned */
    int32_t *labels;    /* n; owned */
} eng_dataset;

/* Reads an IDX image file (magic 0x803, [n, h, w]) and its label file (0x801, [n]), gzip-
 * compressed or not. Every header field is checked against the data before use. */
eng_status eng_dataset_read_idx(eng_dataset *d, const char *images_path, const char *labels_path);

/* Releases what a reader allocated; NULL-safe; leaves *d empty. */
void eng_dataset_cleanup(eng_dataset *d);

/* Copies examples idx[0..n) into x ([n, c, h, w] host float tensor, pixels scaled to [0,1])
 * and labels (host array of n). */
eng_status eng_dataset_batch(const eng_dataset *d, const int32_t *idx, int n, eng_tensor *x, int32_t *labels);

#endif
