/* safetensors files: read (F32, and F16/BF16 widened to F32; integer tensors listed but not
 * converted) and write (F32), with every offset, shape and size checked against the file
 * before use. Format: u64 little-endian header length, JSON header, data section. */
#ifndef ENG_SAFETENSORS_H
#define ENG_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

/* Header bigger than this is refused before it is read (the format allows 100 MB; no model
 * rtaas handles needs more than a few hundred KB). */
#define ENG_ST_MAX_HEADER (16u << 20)
#define ENG_ST_MAX_DIMS 8

typedef enum {
    ENG_ST_F32 = 0,
    ENG_ST_F16,
    ENG_ST_BF16,
    ENG_ST_F64,
    ENG_ST_I64,
    ENG_ST_I32,
    ENG_ST_I16,
    ENG_ST_I8,
    ENG_ST_U8,
    ENG_ST_BOOL,
} eng_st_dtype;

/* "F32", "BF16", ...; "?" for a value outside the enum. Static storage. */
const char *eng_st_dtype_name(eng_st_dtype d);

typedef struct eng_st_entry {
    const char *name;
    eng_st_dtype dtype;
    int ndim;
    int64_t dim[ENG_ST_MAX_DIMS];
    int64_t numel;
    uint64_t begin, end; /* byte range within the data section, checked */
} eng_st_entry;

typedef struct eng_st_file eng_st_file;

/* Opens and validates a file (the whole header and every entry's range). On failure *out is
 * NULL and the status says why, with eng_last_error() naming the entry and the numbers. */
eng_status eng_st_open(const char *path, eng_st_file **out);
/* The same over a caller-owned buffer that must outlive the file object (used by the fuzzer). */
eng_status eng_st_open_mem(const void *buf, size_t len, eng_st_file **out);
void eng_st_close(eng_st_file *f); /* NULL-safe */

int eng_st_count(const eng_st_file *f);
const eng_st_entry *eng_st_get(const eng_st_file *f, int i); /* in file header order */
const eng_st_entry *eng_st_find(const eng_st_file *f, const char *name); /* NULL if absent */
/* Value of a "__metadata__" key, or NULL. */
const char *eng_st_meta(const eng_st_file *f, const char *key);
int eng_st_meta_count(const eng_st_file *f);
const char *eng_st_meta_key(const eng_st_file *f, int i);

/* Copies an F32/F16/BF16/F64 entry into dst as float32 (n must equal the entry's numel).
 * Integer and bool entries are refused with ENG_ERR_FORMAT. */
eng_status eng_st_read_f32(const eng_st_file *f, const eng_st_entry *e, float *dst, int64_t n);

/* One tensor to write: name, host float32 data (NCHW-contiguous), shape. */
typedef struct eng_st_item {
    const char *name;
    const float *data;
    int ndim;
    const int64_t *dim;
} eng_st_item;

/* Writes F32 tensors and string metadata (meta: n_meta key/value pairs, may be 0) to path,
 * atomically: a temporary file in the same directory, fsync, rename. Names must be unique. */
eng_status eng_st_write(const char *path, const eng_st_item *items, int n, const char *const *meta_keys,
                        const char *const *meta_values, int n_meta);

#endif
