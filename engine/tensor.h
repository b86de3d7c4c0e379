/* Float32 tensors of up to four dimensions, on the host or on a device.
 * 4-D activations are always described as N, C, H, W; `layout` says how they lie in memory. */
#ifndef ENG_TENSOR_H
#define ENG_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef enum {
    ENG_LAYOUT_NCHW = 0, /* plain row-major; the only layout of 1-D, 2-D tensors and of weights */
    ENG_LAYOUT_NHWC,     /* channels last (the CUDA backend's choice) */
    ENG_LAYOUT_NCHW8C,   /* channel blocks of 8 innermost (oneDNN nChw8c, AVX2) */
    ENG_LAYOUT_NCHW16C,  /* channel blocks of 16 innermost (oneDNN nChw16c, AVX-512) */
} eng_layout;

typedef enum { ENG_DEV_CPU = 0, ENG_DEV_CUDA } eng_device;

typedef struct eng_tensor {
    float *data;       /* ndim == 0 or NULL data: empty */
    int ndim;          /* 0..4 */
    int64_t dim[4];    /* logical shape, outermost first */
    eng_layout layout; /* only 4-D tensors may be other than NCHW */
    eng_device dev;
    size_t cap;        /* floats allocated and owned; 0 for a view */
    uint64_t version;  /* bumped whenever a parameter's values change; caches compare it */
} eng_tensor;

#define ENG_TENSOR_INIT {0}

/* Logical element count (product of dims; 0 for an empty tensor). */
int64_t eng_tensor_numel(const eng_tensor *t);

/* Floats the memory layout occupies (blocked layouts pad C up to the block). */
int64_t eng_tensor_storage(const eng_tensor *t);

/* Channel block of a layout: 8, 16, or 1 for the unblocked ones. */
int eng_layout_block(eng_layout l);
const char *eng_layout_name(eng_layout l);

/* Index of logical element (n, c, h, w) of a 4-D tensor in its memory. */
static inline int64_t eng_offset4(const eng_tensor *t, int64_t n, int64_t c, int64_t h, int64_t w)
{
    const int64_t C = t->dim[1], H = t->dim[2], W = t->dim[3];
    switch (t->layout) {
    case ENG_LAYOUT_NHWC:
        return ((n * H + h) * W + w) * C + c;
    case ENG_LAYOUT_NCHW8C:
        return (((n * ((C + 7) / 8) + c / 8) * H + h) * W + w) * 8 + c % 8;
    case ENG_LAYOUT_NCHW16C:
        return (((n * ((C + 15) / 16) + c / 16) * H + h) * W + w) * 16 + c % 16;
    default:
        return ((n * C + c) * H + h) * W + w;
    }
}

/* Sets shape fields without touching memory. Fails on ndim > 4 or a negative dim. */
eng_status eng_tensor_shape(eng_tensor *t, int ndim, const int64_t *dims, eng_layout layout);

/* Allocates host memory for the given shape, zero-filled, 64-byte aligned. The caller
 * owns it and releases it with eng_tensor_cleanup. Refuses more than 2^36 floats. */
eng_status eng_tensor_alloc_host(eng_tensor *t, int ndim, const int64_t *dims, eng_layout layout);

/* Convenience: 4-D / 2-D / 1-D host allocation. */
eng_status eng_tensor_alloc4(eng_tensor *t, int64_t n, int64_t c, int64_t h, int64_t w);
eng_status eng_tensor_alloc2(eng_tensor *t, int64_t a, int64_t b);
eng_status eng_tensor_alloc1(eng_tensor *t, int64_t a);

/* A non-owning view of memory the caller keeps alive. */
void eng_tensor_view(eng_tensor *t, float *data, int ndim, const int64_t *dims, eng_layout layout,
                     eng_device dev);

/* Releases owned host memory (device tensors go through eng_ctx_tensor_free). Accepts NULL and
 * views; leaves *t empty. */
void eng_tensor_cleanup(eng_tensor *t);

/* True when a and b have the same ndim and dims (layouts may differ). */
int eng_tensor_same_shape(const eng_tensor *a, const eng_tensor *b);

/* "[8, 3, 224, 224]" into buf; returns buf. */
const char *eng_tensor_shape_str(const eng_tensor *t, char *buf, size_t len);

/* Host-side layout conversion of a 4-D tensor (or plain copy for other ranks). Shapes must match. */
eng_status eng_tensor_copy_host(eng_tensor *dst, const eng_tensor *src);

/* 64-byte aligned host allocation used across the engine; eng_free accepts NULL. */
void *eng_alloc(size_t bytes);
void eng_free(void *p);

#endif
