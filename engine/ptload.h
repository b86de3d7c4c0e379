/* PyTorch checkpoints (torch.save) read without Python and without executing anything: the
 * zip format (torch >= 1.6) and the legacy pickle-stream format, through a restricted unpickler.
 * Every size, offset and stride is checked against the bytes that exist before it is used. */
#ifndef ENG_PTLOAD_H
#define ENG_PTLOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "safetensors.h" /* eng_st_dtype */
#include "status.h"

/* Limits of the unpickler; a file that needs more is refused with ENG_ERR_LIMIT. A ResNet-50
 * state dict needs a 30 KB pickle, ~2,000 memo entries, a stack of ~10 and nesting of ~6. */
#define ENG_PT_MAX_PICKLE ((size_t)64 << 20)  /* bytes of one pickle */
#define ENG_PT_MAX_HEAP ((size_t)512 << 20)   /* bytes of decoded values (strings, nodes, arrays) */
#define ENG_PT_MAX_MEMO (1 << 22)             /* memo entries */
#define ENG_PT_MAX_STACK (1 << 20)            /* values on the unpickler's stack */
#define ENG_PT_MAX_DEPTH 64                   /* nested containers, and open MARKs */
#define ENG_PT_MAX_STORAGES (1 << 20)         /* distinct storages */
#define ENG_PT_MAX_ZIP_ENTRIES (1 << 20)
#define ENG_PT_MAX_INFLATE ((uint64_t)1 << 36) /* bytes a DEFLATE entry may inflate to */
#define ENG_PT_MAX_DIMS ENG_ST_MAX_DIMS

typedef enum { ENG_PT_ZIP = 0, ENG_PT_LEGACY } eng_pt_format;
const char *eng_pt_format_name(eng_pt_format f); /* "zip", "legacy"; static */

/* What the unpickler produced. GLOBAL is a reference to a Python name that was never imported;
 * OPAQUE is what calling or instantiating such a name would have made (nothing was called);
 * its name says which global made it ("argparse.Namespace", "os.system"). */
typedef enum {
    ENG_PT_NONE = 0,
    ENG_PT_BOOL,
    ENG_PT_INT,
    ENG_PT_BIGINT, /* an integer of more than 64 bits: its little-endian bytes */
    ENG_PT_FLOAT,
    ENG_PT_STR,
    ENG_PT_BYTES,
    ENG_PT_TUPLE,
    ENG_PT_LIST,
    ENG_PT_DICT, /* dict and collections.OrderedDict, in insertion order */
    ENG_PT_TENSOR,
    ENG_PT_STORAGE,
    ENG_PT_GLOBAL,
    ENG_PT_OPAQUE,
} eng_pt_kind;

const char *eng_pt_kind_name(eng_pt_kind k); /* "dict", "tensor", ...; static */

typedef struct eng_pt_file eng_pt_file;
typedef struct eng_pt_value eng_pt_value; /* owned by its file; valid until eng_pt_close */

/* Opens a checkpoint: maps the file, parses the archive and the pickle, and checks every
 * tensor against its storage. On failure *out is NULL and eng_last_error() says what and
 * where. Storage bytes are read (and DEFLATE entries inflated) only when a tensor is read. */
eng_status eng_pt_open(const char *path, eng_pt_file **out);
/* The same over a caller-owned buffer that must outlive the file object (fuzzers, tests). */
eng_status eng_pt_open_mem(const void *buf, size_t len, eng_pt_file **out);
void eng_pt_close(eng_pt_file *f); /* NULL-safe */

eng_pt_format eng_pt_get_format(const eng_pt_file *f);
/* The zip archive's top directory ("resnet50" for resnet50.pt written by torch 1.13, "archive"
 * by torch 2); "" for the legacy format. */
const char *eng_pt_archive_name(const eng_pt_file *f);
const eng_pt_value *eng_pt_root(const eng_pt_file *f);
/* Distinct globals that the pickle called or instantiated and that were left opaque, in the
 * order first seen (at most 32 are kept); for reports. */
int eng_pt_opaque_count(const eng_pt_file *f);
const char *eng_pt_opaque_name(const eng_pt_file *f, int i);

/* ---- values ---- (all accessors accept NULL and values of the wrong kind: they return 0/NULL) */
eng_pt_kind eng_pt_kind_of(const eng_pt_value *v);
int64_t eng_pt_len(const eng_pt_value *v);                       /* tuple/list items, dict pairs */
const eng_pt_value *eng_pt_item(const eng_pt_value *v, int64_t i); /* tuple/list item i */
const eng_pt_value *eng_pt_dict_key(const eng_pt_value *v, int64_t i);
const eng_pt_value *eng_pt_dict_val(const eng_pt_value *v, int64_t i);
/* The value of the first string key `key` of a dict, or NULL. */
const eng_pt_value *eng_pt_dict_get(const eng_pt_value *v, const char *key);
/* STR, BYTES: the bytes (NUL-terminated; *len may be NULL); GLOBAL, OPAQUE: "module.name". */
const char *eng_pt_str(const eng_pt_value *v, size_t *len);
int64_t eng_pt_int(const eng_pt_value *v); /* INT, BOOL */
double eng_pt_float(const eng_pt_value *v); /* FLOAT, INT, BOOL */

/* A tensor as torch._utils._rebuild_tensor_v2 described it. Element strides and offset are
 * within its storage; the whole strided extent was checked to lie inside the storage. */
typedef struct eng_pt_tensor_info {
    eng_st_dtype dtype;
    int ndim;
    int64_t dim[ENG_PT_MAX_DIMS], stride[ENG_PT_MAX_DIMS];
    int64_t offset;   /* elements, from the start of the storage */
    int64_t numel;
    bool contiguous;  /* row-major with no gaps */
    const char *storage_key;
} eng_pt_tensor_info;

/* ENG_ERR_ARG when v is not a tensor. */
eng_status eng_pt_tensor(const eng_pt_value *v, eng_pt_tensor_info *info);

/* Copies tensor v into dst as row-major float32, widening F16, BF16 and F64 and following any
 * strides (channels-last and sliced tensors come out in logical order). n must equal the
 * tensor's numel. Integer and bool tensors are refused (ENG_ERR_FORMAT). The first read of a
 * compressed storage inflates it (its size and CRC checked) and keeps it for later reads. */
eng_status eng_pt_read_f32(eng_pt_file *f, const eng_pt_value *v, float *dst, int64_t n);

#endif
