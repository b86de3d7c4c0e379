/* Shape bookkeeping and host memory for eng_tensor. Device memory lives with the backends. */
#include "tensor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ENG_MAX_FLOATS ((int64_t)1 << 36)

void *eng_alloc(size_t bytes)
{
    if (bytes == 0)
        bytes = 64;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    return aligned_alloc(64, rounded);
}

void eng_free(void *p) { free(p); }

int eng_layout_block(eng_layout l)
{
    return l == ENG_LAYOUT_NCHW8C ? 8 : l == ENG_LAYOUT_NCHW16C ? 16 : 1;
}

const char *eng_layout_name(eng_layout l)
{
    switch (l) {
    case ENG_LAYOUT_NCHW:
        return "nchw";
    case ENG_LAYOUT_NHWC:
        return "nhwc";
    case ENG_LAYOUT_NCHW8C:
        return "nChw8c";
    case ENG_LAYOUT_NCHW16C:
        return "nChw16c";
    }
    return "?";
}

int64_t eng_tensor_numel(const eng_tensor *t)
{
    if (t->ndim == 0)
        return 0;
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->dim[i];
    return n;
}

int64_t eng_tensor_storage(const eng_tensor *t)
{
    int b = eng_layout_block(t->layout);
    if (t->ndim != 4 || b == 1)
        return eng_tensor_numel(t);
    int64_t cp = (t->dim[1] + b - 1) / b * b;
    return t->dim[0] * cp * t->dim[2] * t->dim[3];
}

eng_status eng_tensor_shape(eng_tensor *t, int ndim, const int64_t *dims, eng_layout layout)
{
    if (ndim < 0 || ndim > 4)
        return eng_fail(ENG_ERR_ARG, "tensor: %d dimensions (at most 4)", ndim);
    if (layout != ENG_LAYOUT_NCHW && ndim != 4)
        return eng_fail(ENG_ERR_ARG, "tensor: layout %s needs 4 dimensions", eng_layout_name(layout));
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (dims[i] < 0)
            return eng_fail(ENG_ERR_ARG, "tensor: negative dimension %lld", (long long)dims[i]);
        if (dims[i] > 0 && n > ENG_MAX_FLOATS / dims[i])
            return eng_fail(ENG_ERR_LIMIT, "tensor: more than 2^36 elements");
        n *= dims[i];
    }
    t->ndim = ndim;
    for (int i = 0; i < 4; i++)
        t->dim[i] = i < ndim ? dims[i] : 1;
    t->layout = layout;
    return ENG_OK;
}

eng_status eng_tensor_alloc_host(eng_tensor *t, int ndim, const int64_t *dims, eng_layout layout)
{
    eng_tensor tmp = ENG_TENSOR_INIT;
    eng_status s = eng_tensor_shape(&tmp, ndim, dims, layout);
    if (s != ENG_OK)
        return s;
    int64_t need = eng_tensor_storage(&tmp);
    if (need > ENG_MAX_FLOATS)
        return eng_fail(ENG_ERR_LIMIT, "tensor: more than 2^36 elements");
    tmp.data = eng_alloc((size_t)need * sizeof(float));
    if (!tmp.data)
        return eng_fail(ENG_ERR_NOMEM, "tensor: cannot allocate %lld floats", (long long)need);
    memset(tmp.data, 0, (size_t)need * sizeof(float));
    tmp.cap = (size_t)(need > 0 ? need : 16); /* eng_alloc(0) still hands out a block to free */
    tmp.dev = ENG_DEV_CPU;
    eng_tensor_cleanup(t);
    *t = tmp;
    return ENG_OK;
}

eng_status eng_tensor_alloc4(eng_tensor *t, int64_t n, int64_t c, int64_t h, int64_t w)
{
    int64_t d[4] = {n, c, h, w};
    return eng_tensor_alloc_host(t, 4, d, ENG_LAYOUT_NCHW);
}

eng_status eng_tensor_alloc2(eng_tensor *t, int64_t a, int64_t b)
{
    int64_t d[2] = {a, b};
    return eng_tensor_alloc_host(t, 2, d, ENG_LAYOUT_NCHW);
}

eng_status eng_tensor_alloc1(eng_tensor *t, int64_t a) { return eng_tensor_alloc_host(t, 1, &a, ENG_LAYOUT_NCHW); }

void eng_tensor_view(eng_tensor *t, float *data, int ndim, const int64_t *dims, eng_layout layout,
                     eng_device dev)
{
    int64_t d[4];
    for (int i = 0; i < 4; i++)
        d[i] = i < ndim ? dims[i] : 1; /* dims may point into *t */
    memset(t, 0, sizeof *t);
    t->ndim = ndim;
    memcpy(t->dim, d, sizeof d);
    t->layout = layout;
    t->data = data;
    t->dev = dev;
}

void eng_tensor_cleanup(eng_tensor *t)
{
    if (!t)
        return;
    if (t->cap && t->dev == ENG_DEV_CPU)
        eng_free(t->data);
    memset(t, 0, sizeof *t);
}

int eng_tensor_same_shape(const eng_tensor *a, const eng_tensor *b)
{
    if (a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->dim[i] != b->dim[i])
            return 0;
    return 1;
}

const char *eng_tensor_shape_str(const eng_tensor *t, char *buf, size_t len)
{
    size_t used = 0;
    used += (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < t->ndim && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, i ? ", %lld" : "%lld", (long long)t->dim[i]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
    return buf;
}

eng_status eng_tensor_copy_host(eng_tensor *dst, const eng_tensor *src)
{
    if (!eng_tensor_same_shape(dst, src))
        return eng_fail(ENG_ERR_SHAPE, "copy: shapes differ");
    if (dst->dev != ENG_DEV_CPU || src->dev != ENG_DEV_CPU)
        return eng_fail(ENG_ERR_ARG, "copy: host tensors only");
    if (dst->layout == src->layout) {
        memcpy(dst->data, src->data, (size_t)eng_tensor_storage(src) * sizeof(float));
        return ENG_OK;
    }
    const int64_t N = src->dim[0], C = src->dim[1], H = src->dim[2], W = src->dim[3];
    if (eng_tensor_storage(dst) != eng_tensor_numel(dst))
        memset(dst->data, 0, (size_t)eng_tensor_storage(dst) * sizeof(float));
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t w = 0; w < W; w++)
                    dst->data[eng_offset4(dst, n, c, h, w)] = src->data[eng_offset4(src, n, c, h, w)];
    return ENG_OK;
}
