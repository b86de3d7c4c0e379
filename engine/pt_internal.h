/* Internal to the PyTorch checkpoint reader: the zip directory (pt_zip.c), the restricted
 * unpickler and its values (pt_pickle.c), shared with ptload.c and the fuzz targets. */
#ifndef ENG_PT_INTERNAL_H
#define ENG_PT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ptimport.h"
#include "ptload.h"

/* ---- zip (pt_zip.c) ---- */

typedef struct pt_zip_entry {
    char *name;         /* NUL-terminated; checked: no "..", no leading '/', no NUL or '\\' */
    uint64_t data_off;  /* file offset of the entry's (compressed) bytes */
    uint64_t comp_size; /* bytes at data_off */
    uint64_t size;      /* bytes once inflated (== comp_size when stored) */
    uint32_t crc;
    uint16_t method;    /* 0 stored, 8 deflate */
} pt_zip_entry;

typedef struct pt_zip {
    const uint8_t *buf;
    uint64_t len;
    pt_zip_entry *entries; /* central directory order */
    int n;
    pt_zip_entry **by_name;
} pt_zip;

/* Parses the central directory (zip64 too) of buf[0..len) and checks every entry's name and
 * byte range against the file; duplicate names, encrypted and multi-disk archives, methods
 * other than stored and deflate are refused. z keeps pointing into buf. */
eng_status pt_zip_open(pt_zip *z, const uint8_t *buf, uint64_t len);
void pt_zip_cleanup(pt_zip *z); /* accepts a zeroed or failed z */
const pt_zip_entry *pt_zip_find(const pt_zip *z, const char *name);
/* The entry's bytes: stored entries point into the buffer (*owned = NULL); deflated ones are
 * inflated into *owned (malloc'd, the caller frees it), refused above max bytes. The length
 * and CRC-32 are checked in both cases. */
eng_status pt_zip_read(const pt_zip *z, const pt_zip_entry *e, uint64_t max, const uint8_t **data,
                       uint8_t **owned);

/* ---- values and the unpickler (pt_pickle.c) ---- */

typedef struct pt_tensor {
    int storage;             /* index into the file's storage table */
    eng_pt_tensor_info info; /* offset counted from the start of the whole storage */
} pt_tensor;

struct eng_pt_value {
    eng_pt_kind kind;
    bool sealed;      /* placed inside another value: never mutated again, so no cycles */
    uint16_t depth;   /* nesting depth (1 for scalars and empty containers) */
    union {
        int64_t i;    /* BOOL, INT */
        double f;     /* FLOAT */
        struct {
            char *p;  /* NUL-terminated */
            size_t len;
        } s;          /* STR, BYTES, BIGINT, GLOBAL, OPAQUE */
        struct {
            eng_pt_value **v; /* TUPLE, LIST: n items; DICT: key, value pairs (2n pointers) */
            size_t n, cap;
        } a;
        pt_tensor *t; /* TENSOR */
        struct {
            int index;       /* into the file's storage table */
            const char *key; /* its key (zip: the entry data/<key>) */
            int64_t offset;  /* view: first element within the storage */
            int64_t numel;  /* view: elements */
            eng_st_dtype dtype;
        } st;         /* STORAGE */
    } u;
};

/* Owns every value, string and array one or more unpicklings made; freed at once. */
typedef struct pt_heap {
    struct pt_chunk *chunks;
    size_t used_in_chunk;
    eng_pt_value **growable; /* lists and dicts, whose arrays are malloc'd */
    size_t n_growable, cap_growable;
    size_t bytes;            /* counted against ENG_PT_MAX_HEAP */
    eng_status fail;         /* why the last allocation failed (ENG_ERR_NOMEM or ENG_ERR_LIMIT) */
    char *opaque[32];        /* distinct globals called or instantiated */
    int n_opaque;
} pt_heap;

void pt_heap_cleanup(pt_heap *h); /* accepts a zeroed heap */
/* A new value of kind k in h, or NULL (failure recorded) past ENG_PT_MAX_HEAP. */
eng_pt_value *pt_new(pt_heap *h, eng_pt_kind k);
/* A STR, BYTES, BIGINT, GLOBAL or OPAQUE value holding a copy of p[0..n), or NULL. */
eng_pt_value *pt_new_str(pt_heap *h, eng_pt_kind k, const void *p, size_t n);

/* Resolves a persistent id (the argument of BINPERSID) to a STORAGE value, or fails. */
typedef eng_status (*pt_persistent_fn)(void *user, pt_heap *h, const eng_pt_value *pid, eng_pt_value **out);

/* Unpickles one pickle from buf[0..len): *out is its value (owned by h), *used the bytes up to
 * and including STOP. persistent may be NULL (BINPERSID is then refused). Only protocol 0-5
 * opcodes that hold data are run; globals are never imported: collections.OrderedDict builds a
 * dict, torch._utils._rebuild_tensor(_v2) and _rebuild_parameter build tensors over storages,
 * anything else called or instantiated gives an OPAQUE value. */
eng_status pt_unpickle(pt_heap *h, const uint8_t *buf, size_t len, pt_persistent_fn persistent, void *user,
                       eng_pt_value **out, size_t *used);

/* Bytes per element of a dtype (0 for none). */
unsigned pt_dtype_size(eng_st_dtype d);
/* The dtype of a torch storage class name ("torch.FloatStorage"); false when not one. */
bool pt_storage_dtype(const char *global, eng_st_dtype *d);


/* ---- layout recognition (pt_layout.c), used by the import (ptimport.c) ---- */

typedef struct pt_sd_entry {
    const char *key;        /* the state dict's key */
    const char *mapped;     /* the key without the model prefix: a torchvision name */
    const eng_pt_value *v;  /* a tensor */
    int order;              /* position in the state dict */
    bool used;
} pt_sd_entry;

typedef struct pt_layout {
    pt_sd_entry *e; /* the tensors under the model prefix, sorted by mapped name */
    int n;
} pt_layout;

/* eng_pt_recognise, keeping the mapping for the import. */
eng_status pt_layout_build(eng_pt_file *f, const eng_pt_import_opts *opts, eng_pt_report *rep, pt_layout *lay);
void pt_layout_cleanup(pt_layout *lay);
pt_sd_entry *pt_layout_find(const pt_layout *lay, const char *mapped);
eng_status pt_report_ignore(eng_pt_report *r, const char *name, const char *why);
void pt_report_note(eng_pt_report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
