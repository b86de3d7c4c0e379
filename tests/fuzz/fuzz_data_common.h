/* What every dataset fuzz target does with a dataset a reader accepted: check its invariants,
 * touch every byte (a short buffer shows under ASan), and push it through the transforms. */
#ifndef FUZZ_DATA_COMMON_H
#define FUZZ_DATA_COMMON_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"

/* Readers run with this budget so that each input stays small and fast. */
#define FUZZ_MAX_PIXELS ((int64_t)1 << 20)

static void fuzz_check_dataset(eng_dataset *d, eng_status s)
{
    static const eng_dataset zero;
    if (s != ENG_OK) {
        if (memcmp(d, &zero, sizeof zero) != 0)
            abort(); /* a refusal leaves nothing behind */
        return;
    }
    if (d->n < 1 || d->num_classes < 2 || (d->c != 1 && d->c != 3) || d->h < 1 || d->w < 1 || !d->labels)
        abort();
    const int64_t total = d->n * d->c * d->h * d->w;
    volatile uint32_t sum = 0;
    if (d->type == ENG_PIX_F32) {
        if (!d->fpixels || d->pixels)
            abort();
        for (int64_t i = 0; i < total; i++)
            if (!(d->fpixels[i] >= 0.0f && d->fpixels[i] <= 1.0f))
                abort();
    } else {
        if (!d->pixels || d->fpixels)
            abort();
        for (int64_t i = 0; i < total; i++)
            sum += d->pixels[i];
    }
    for (int64_t i = 0; i < d->n; i++)
        if (d->labels[i] < 0 || d->labels[i] >= d->num_classes)
            abort();
    if (d->class_names)
        for (int i = 0; i < d->num_classes; i++)
            sum += (uint32_t)strlen(d->class_names[i]);

    /* A small augmented, resized, channel-converted batch of the first examples. */
    int32_t idx[4];
    const int n = d->n < 4 ? (int)d->n : 4;
    for (int i = 0; i < n; i++)
        idx[i] = (int32_t)(d->n - 1 - i);
    eng_tensor x = ENG_TENSOR_INIT;
    int32_t labels[4];
    eng_batch_opts o = {.h = 5, .w = 7, .c = 4 - d->c, .crop_pad = 2, .flip = 1, .seed = 3};
    if (eng_tensor_alloc4(&x, n, o.c, 5, 7) == ENG_OK) {
        if (eng_dataset_batch_ex(d, idx, n, &o, &x, labels) != ENG_OK)
            abort();
        for (int64_t i = 0; i < eng_tensor_numel(&x); i++)
            if (!(x.data[i] >= 0.0f && x.data[i] <= 1.0001f))
                abort();
    }
    eng_tensor_cleanup(&x);

    /* A split and a relabelled two-class subset. */
    int32_t *tr, *va;
    int64_t nt, nv;
    if (eng_dataset_split(d, 0.25, 1, &tr, &nt, &va, &nv) == ENG_OK) {
        if (nt + nv != d->n)
            abort();
        free(tr);
        free(va);
    }
    int32_t two[2] = {d->labels[0], -1};
    for (int64_t i = 1; i < d->n && two[1] < 0; i++)
        if (d->labels[i] != two[0])
            two[1] = d->labels[i];
    eng_subset sub = {.classes = two, .n_classes = 2, .per_class = 1, .random = 1, .seed = 5};
    eng_dataset s2;
    if (two[1] >= 0) {
        if (eng_dataset_subset(&s2, d, &sub) != ENG_OK || s2.n != 2 || s2.num_classes != 2)
            abort();
        eng_dataset_cleanup(&s2);
    }
    (void)sum;
    eng_dataset_cleanup(d);
}

/* Two inputs from one: a u16 little-endian header whose low 14 bits are the length of the first. */
static int fuzz_split(const uint8_t *data, size_t size, const uint8_t **a, size_t *na, const uint8_t **b, size_t *nb,
                      int *extra)
{
    if (size < 2)
        return 0;
    unsigned v = data[0] | (unsigned)data[1] << 8;
    size_t k = v & 0x3fff;
    if (k > size - 2)
        k = size - 2;
    *a = data + 2;
    *na = k;
    *b = data + 2 + k;
    *nb = size - 2 - k;
    *extra = (int)(v >> 14);
    return 1;
}

#endif
