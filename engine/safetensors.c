/* safetensors reader and writer. Files come from users, so every size, offset and shape in
 * the header is checked against the bytes that exist before anything is allocated or read. */
#include "safetensors.h"

#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Tensor bytes are copied as they lie in the file, which the format defines as little-endian. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

/* No model comes near this; it keeps numel * dtype size far from overflowing 64 bits. */
#define ST_MAX_NUMEL ((int64_t)1 << 40)
/* Bytes converted per pass when reading a file through a bounce buffer. */
#define ST_CHUNK ((size_t)1 << 16)

struct eng_st_file {
    json_t *root;          /* parsed header; entry names and metadata strings point into it */
    eng_st_entry *entries; /* header order */
    int n;
    const eng_st_entry **by_name; /* entries sorted by name, for eng_st_find */
    const char **meta_keys, **meta_vals;
    int n_meta;
    uint64_t data_len;     /* bytes in the data section */
    const uint8_t *mem;    /* data section of a caller's buffer (eng_st_open_mem), or NULL */
    int fd;                /* open file (eng_st_open), or -1 */
    uint64_t data_pos;     /* file offset of the data section */
};

static const struct {
    const char *name;
    eng_st_dtype dtype;
    unsigned size;
} st_dtypes[] = {
    {"F32", ENG_ST_F32, 4}, {"F16", ENG_ST_F16, 2}, {"BF16", ENG_ST_BF16, 2}, {"F64", ENG_ST_F64, 8},
    {"I64", ENG_ST_I64, 8}, {"I32", ENG_ST_I32, 4}, {"I16", ENG_ST_I16, 2},   {"I8", ENG_ST_I8, 1},
    {"U8", ENG_ST_U8, 1},   {"BOOL", ENG_ST_BOOL, 1},
};
#define ST_NDTYPES ((int)(sizeof st_dtypes / sizeof *st_dtypes))

static unsigned st_dtype_size(eng_st_dtype d)
{
    for (int i = 0; i < ST_NDTYPES; i++)
        if (st_dtypes[i].dtype == d)
            return st_dtypes[i].size;
    return 0;
}

const char *eng_st_dtype_name(eng_st_dtype d)
{
    for (int i = 0; i < ST_NDTYPES; i++)
        if (st_dtypes[i].dtype == d)
            return st_dtypes[i].name;
    return "?";
}

static uint64_t st_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void st_shape_str(const eng_st_entry *e, char *buf, size_t len)
{
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < e->ndim && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, i ? ", %lld" : "%lld", (long long)e->dim[i]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
}

void eng_st_close(eng_st_file *f)
{
    if (!f)
        return;
    if (f->fd >= 0)
        close(f->fd);
    json_decref(f->root);
    free(f->entries);
    free(f->by_name);
    free(f->meta_keys);
    free(f->meta_vals);
    free(f);
}

/* ---- header parsing ---- */

/* A JSON integer in [0, 2^63); jansson has already refused integers that do not fit. */
static bool st_json_u63(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

static eng_status st_parse_entry(const char *name, const json_t *v, uint64_t data_len, eng_st_entry *e)
{
    if (!json_is_object(v))
        return eng_fail(ENG_ERR_FORMAT, "safetensors: tensor '%.200s' is not a JSON object", name);
    e->name = name;

    const json_t *dt = json_object_get(v, "dtype");
    if (!json_is_string(dt))
        return eng_fail(ENG_ERR_FORMAT, "safetensors: tensor '%.200s' has no string \"dtype\"", name);
    int k = 0;
    while (k < ST_NDTYPES && strcmp(st_dtypes[k].name, json_string_value(dt)) != 0)
        k++;
    if (k == ST_NDTYPES)
        return eng_fail(ENG_ERR_FORMAT,
                        "safetensors: tensor '%.200s' has dtype '%.32s', not one of F32, F16, BF16, F64, I64, I32, "
                        "I16, I8, U8, BOOL",
                        name, json_string_value(dt));
    e->dtype = st_dtypes[k].dtype;

    const json_t *shape = json_object_get(v, "shape");
    if (!json_is_array(shape))
        return eng_fail(ENG_ERR_FORMAT, "safetensors: tensor '%.200s' has no \"shape\" array", name);
    size_t nd = json_array_size(shape);
    if (nd > ENG_ST_MAX_DIMS)
        return eng_fail(ENG_ERR_LIMIT, "safetensors: tensor '%.200s' has %zu dimensions (at most %d)", name, nd,
                        ENG_ST_MAX_DIMS);
    e->ndim = (int)nd;
    e->numel = 1; /* shape [] is a scalar */
    for (int i = 0; i < e->ndim; i++) {
        const json_t *d = json_array_get(shape, (size_t)i);
        if (!json_is_integer(d))
            return eng_fail(ENG_ERR_FORMAT, "safetensors: tensor '%.200s' dimension %d is not an integer", name, i);
        json_int_t dv = json_integer_value(d);
        if (dv < 0)
            return eng_fail(ENG_ERR_FORMAT, "safetensors: tensor '%.200s' dimension %d is %lld (negative)", name,
                            i, (long long)dv);
        if (dv > ST_MAX_NUMEL || (dv > 0 && e->numel > ST_MAX_NUMEL / dv))
            return eng_fail(ENG_ERR_LIMIT,
                            "safetensors: tensor '%.200s' dimension %d is %lld, which makes more than 2^40 elements",
                            name, i, (long long)dv);
        e->dim[i] = dv;
        e->numel *= dv;
    }

    const json_t *off = json_object_get(v, "data_offsets");
    if (!json_is_array(off) || json_array_size(off) != 2 || !st_json_u63(json_array_get(off, 0), &e->begin) ||
        !st_json_u63(json_array_get(off, 1), &e->end))
        return eng_fail(ENG_ERR_FORMAT,
                        "safetensors: tensor '%.200s' needs \"data_offsets\" [begin, end] of non-negative integers",
                        name);
    if (e->end < e->begin)
        return eng_fail(ENG_ERR_FORMAT, "safetensors: tensor '%.200s' ends at byte %llu, before its begin %llu",
                        name, (unsigned long long)e->end, (unsigned long long)e->begin);
    if (e->end > data_len)
        return eng_fail(ENG_ERR_FORMAT, "safetensors: tensor '%.200s' ends at byte %llu, past the %llu-byte data section",
                        name, (unsigned long long)e->end, (unsigned long long)data_len);
    uint64_t need = (uint64_t)e->numel * st_dtype_size(e->dtype);
    if (e->end - e->begin != need) {
        char sh[160];
        st_shape_str(e, sh, sizeof sh);
        return eng_fail(ENG_ERR_FORMAT, "safetensors: tensor '%.200s' holds %llu bytes, but %s shape %s needs %llu", name,
                        (unsigned long long)(e->end - e->begin), eng_st_dtype_name(e->dtype), sh,
                        (unsigned long long)need);
    }
    return ENG_OK;
}

static eng_status st_parse_meta(eng_st_file *f, const json_t *meta)
{
    if (!json_is_object(meta))
        return eng_fail(ENG_ERR_FORMAT, "safetensors: \"__metadata__\" is not a JSON object");
    size_t n = json_object_size(meta);
    f->meta_keys = calloc(n ? n : 1, sizeof *f->meta_keys);
    f->meta_vals = calloc(n ? n : 1, sizeof *f->meta_vals);
    if (!f->meta_keys || !f->meta_vals)
        return eng_fail(ENG_ERR_NOMEM, "safetensors: out of memory for %zu metadata entries", n);
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)meta, key, v) {
        if (!json_is_string(v))
            return eng_fail(ENG_ERR_FORMAT, "safetensors: \"__metadata__\" value of '%.200s' is not a string", key);
        f->meta_keys[f->n_meta] = key;
        f->meta_vals[f->n_meta] = json_string_value(v);
        f->n_meta++;
    }
    return ENG_OK;
}

static int st_cmp_name(const void *a, const void *b)
{
    return strcmp((*(const eng_st_entry *const *)a)->name, (*(const eng_st_entry *const *)b)->name);
}

static int st_cmp_range(const void *a, const void *b)
{
    const eng_st_entry *x = *(const eng_st_entry *const *)a, *y = *(const eng_st_entry *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Fills f from the header text; f->data_len must be set. */
static eng_status st_parse(eng_st_file *f, const char *hdr, size_t hlen)
{
    eng_status s = ENG_OK;
    const eng_st_entry **by_range = NULL;
    json_error_t jerr;
    /* Duplicate keys would silently hide a tensor, so they are refused while parsing. */
    f->root = json_loadb(hdr, hlen, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!f->root) {
        if (json_error_code(&jerr) == json_error_duplicate_key)
            s = eng_fail(ENG_ERR_FORMAT, "safetensors: header repeats a tensor name or field: %s (line %d, column %d)",
                         jerr.text, jerr.line, jerr.column);
        else
            s = eng_fail(ENG_ERR_FORMAT, "safetensors: header is not valid JSON: %s (line %d, column %d)", jerr.text,
                         jerr.line, jerr.column);
        goto out;
    }
    if (!json_is_object(f->root)) {
        s = eng_fail(ENG_ERR_FORMAT, "safetensors: header is a JSON %s, not an object",
                     json_is_array(f->root) ? "array" : json_is_string(f->root) ? "string" : "scalar");
        goto out;
    }

    size_t total = json_object_size(f->root);
    f->entries = calloc(total ? total : 1, sizeof *f->entries);
    f->by_name = calloc(total ? total : 1, sizeof *f->by_name);
    by_range = calloc(total ? total : 1, sizeof *by_range);
    if (!f->entries || !f->by_name || !by_range) {
        s = eng_fail(ENG_ERR_NOMEM, "safetensors: out of memory for %zu header entries", total);
        goto out;
    }
    const char *key;
    json_t *v;
    json_object_foreach(f->root, key, v) {
        if (strcmp(key, "__metadata__") == 0) {
            if ((s = st_parse_meta(f, v)) != ENG_OK)
                goto out;
            continue;
        }
        if ((s = st_parse_entry(key, v, f->data_len, &f->entries[f->n])) != ENG_OK)
            goto out;
        f->by_name[f->n] = &f->entries[f->n];
        by_range[f->n] = &f->entries[f->n];
        f->n++;
    }

    qsort(f->by_name, (size_t)f->n, sizeof *f->by_name, st_cmp_name);
    qsort(by_range, (size_t)f->n, sizeof *by_range, st_cmp_range);
    /* Empty tensors occupy no bytes and cannot overlap anything; every other range must start
     * at or after the furthest end seen so far. */
    const eng_st_entry *furthest = NULL;
    for (int i = 0; i < f->n; i++) {
        const eng_st_entry *e = by_range[i];
        if (e->end == e->begin)
            continue;
        if (furthest && e->begin < furthest->end) {
            s = eng_fail(ENG_ERR_FORMAT,
                         "safetensors: tensor '%.200s' (bytes %llu..%llu) overlaps tensor '%.200s' (bytes %llu..%llu)",
                         e->name, (unsigned long long)e->begin, (unsigned long long)e->end, furthest->name,
                         (unsigned long long)furthest->begin, (unsigned long long)furthest->end);
            goto out;
        }
        if (!furthest || e->end > furthest->end)
            furthest = e;
    }
out:
    free(by_range);
    return s;
}

static eng_st_file *st_new(void)
{
    eng_st_file *f = calloc(1, sizeof *f);
    if (f)
        f->fd = -1;
    return f;
}

/* Checks the 8-byte length prefix against what exists: file_len is the whole file's size. */
static eng_status st_check_hlen(uint64_t hlen, uint64_t file_len)
{
    if (hlen > ENG_ST_MAX_HEADER)
        return eng_fail(ENG_ERR_LIMIT, "safetensors: header claims %llu bytes (at most %u)", (unsigned long long)hlen,
                        (unsigned)ENG_ST_MAX_HEADER);
    if (hlen > file_len - 8)
        return eng_fail(ENG_ERR_FORMAT, "safetensors: header claims %llu bytes, but only %llu follow the length",
                        (unsigned long long)hlen, (unsigned long long)(file_len - 8));
    if (hlen < 2)
        return eng_fail(ENG_ERR_FORMAT, "safetensors: header of %llu bytes cannot hold a JSON object",
                        (unsigned long long)hlen);
    return ENG_OK;
}

static eng_status st_check_len(uint64_t len)
{
    if (len == 0)
        return eng_fail(ENG_ERR_FORMAT, "safetensors: file is empty");
    if (len < 8)
        return eng_fail(ENG_ERR_FORMAT, "safetensors: file is %llu bytes, shorter than the 8-byte header length",
                        (unsigned long long)len);
    return ENG_OK;
}

eng_status eng_st_open_mem(const void *buf, size_t len, eng_st_file **out)
{
    eng_status s;
    eng_st_file *f = NULL;
    if (!out)
        return eng_fail(ENG_ERR_ARG, "safetensors: NULL output");
    *out = NULL;
    if (!buf && len)
        return eng_fail(ENG_ERR_ARG, "safetensors: NULL buffer of %zu bytes", len);
    if ((s = st_check_len(len)) != ENG_OK)
        goto out;
    const uint8_t *p = buf;
    uint64_t hlen = st_le64(p);
    if ((s = st_check_hlen(hlen, len)) != ENG_OK)
        goto out;
    if (!(f = st_new())) {
        s = eng_fail(ENG_ERR_NOMEM, "safetensors: out of memory");
        goto out;
    }
    f->data_len = len - 8 - hlen;
    f->mem = p + 8 + hlen;
    if ((s = st_parse(f, (const char *)p + 8, (size_t)hlen)) != ENG_OK)
        goto out;
    *out = f;
    f = NULL;
out:
    eng_st_close(f);
    return s;
}

/* pread until done; a short file (changed since it was checked) is an I/O error. */
static eng_status st_pread(int fd, void *buf, size_t len, uint64_t pos, const char *what)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t r = pread(fd, p, len, (off_t)pos);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return eng_fail(ENG_ERR_IO, "safetensors: reading %s: %s", what, strerror(errno));
        if (r == 0)
            return eng_fail(ENG_ERR_IO, "safetensors: reading %s: file ended early (changed while open?)", what);
        p += r;
        pos += (uint64_t)r;
        len -= (size_t)r;
    }
    return ENG_OK;
}

eng_status eng_st_open(const char *path, eng_st_file **out)
{
    eng_status s;
    eng_st_file *f = NULL;
    char *hdr = NULL;
    if (!out)
        return eng_fail(ENG_ERR_ARG, "safetensors: NULL output");
    *out = NULL;
    if (!path)
        return eng_fail(ENG_ERR_ARG, "safetensors: NULL path");
    if (!(f = st_new()))
        return eng_fail(ENG_ERR_NOMEM, "safetensors: out of memory");
    /* O_NONBLOCK so that a FIFO cannot block the open; it is refused below as not a regular file. */
    f->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (f->fd < 0) {
        s = eng_fail(errno == ENOENT ? ENG_ERR_NOT_FOUND : ENG_ERR_IO, "safetensors: cannot open '%.300s': %s", path,
                     strerror(errno));
        goto out;
    }
    struct stat st;
    if (fstat(f->fd, &st) != 0) {
        s = eng_fail(ENG_ERR_IO, "safetensors: cannot stat '%.300s': %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        s = eng_fail(ENG_ERR_IO, "safetensors: '%.300s' is not a regular file", path);
        goto out;
    }
    uint64_t len = (uint64_t)st.st_size;
    if ((s = st_check_len(len)) != ENG_OK)
        goto out;
    uint8_t lenbuf[8];
    if ((s = st_pread(f->fd, lenbuf, 8, 0, "the header length")) != ENG_OK)
        goto out;
    uint64_t hlen = st_le64(lenbuf);
    if ((s = st_check_hlen(hlen, len)) != ENG_OK)
        goto out;
    if (!(hdr = malloc((size_t)hlen))) {
        s = eng_fail(ENG_ERR_NOMEM, "safetensors: out of memory for a %llu-byte header", (unsigned long long)hlen);
        goto out;
    }
    if ((s = st_pread(f->fd, hdr, (size_t)hlen, 8, "the header")) != ENG_OK)
        goto out;
    f->data_pos = 8 + hlen;
    f->data_len = len - 8 - hlen;
    if ((s = st_parse(f, hdr, (size_t)hlen)) != ENG_OK)
        goto out;
    *out = f;
    f = NULL;
out:
    free(hdr);
    eng_st_close(f);
    return s;
}

/* ---- lookups ---- */

int eng_st_count(const eng_st_file *f) { return f ? f->n : 0; }

const eng_st_entry *eng_st_get(const eng_st_file *f, int i)
{
    return f && i >= 0 && i < f->n ? &f->entries[i] : NULL;
}

const eng_st_entry *eng_st_find(const eng_st_file *f, const char *name)
{
    if (!f || !name)
        return NULL;
    int lo = 0, hi = f->n;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(f->by_name[mid]->name, name);
        if (c == 0)
            return f->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const char *eng_st_meta(const eng_st_file *f, const char *key)
{
    if (!f || !key)
        return NULL;
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0)
            return f->meta_vals[i];
    return NULL;
}

int eng_st_meta_count(const eng_st_file *f) { return f ? f->n_meta : 0; }

const char *eng_st_meta_key(const eng_st_file *f, int i)
{
    return f && i >= 0 && i < f->n_meta ? f->meta_keys[i] : NULL;
}

/* ---- conversion ---- */

/* Exact: every half is a float. Subnormal halves are man * 2^-24, which a float holds. */
static float st_f16(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0 && man == 0) {
        bits = sign;
    } else if (exp == 0) {
        float v = (float)man * 0x1p-24f;
        memcpy(&bits, &v, 4);
        bits |= sign;
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | man << 13; /* inf, or NaN keeping its payload */
    } else {
        bits = sign | (exp + 112) << 23 | man << 13;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static float st_bf16(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Converts n elements of a float dtype at src (any alignment) into dst. */
static void st_convert(eng_st_dtype d, const uint8_t *src, float *dst, size_t n)
{
    switch (d) {
    case ENG_ST_F32:
        memcpy(dst, src, n * 4);
        break;
    case ENG_ST_F16:
    case ENG_ST_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = (uint16_t)(src[2 * i] | src[2 * i + 1] << 8);
            dst[i] = d == ENG_ST_F16 ? st_f16(h) : st_bf16(h);
        }
        break;
    case ENG_ST_F64:
        for (size_t i = 0; i < n; i++) {
            double v;
            memcpy(&v, src + 8 * i, 8);
            dst[i] = (float)v;
        }
        break;
    default:
        break;
    }
}

eng_status eng_st_read_f32(const eng_st_file *f, const eng_st_entry *e, float *dst, int64_t n)
{
    eng_status s = ENG_OK;
    uint8_t *bounce = NULL;
    if (!f || !e)
        return eng_fail(ENG_ERR_ARG, "safetensors: NULL file or entry");
    /* The entry must be one of this file's: its range was checked against this data section. */
    uintptr_t at = (uintptr_t)e, first = (uintptr_t)f->entries;
    if (at < first || at >= first + (uintptr_t)f->n * sizeof *e)
        return eng_fail(ENG_ERR_ARG, "safetensors: tensor '%.200s' does not belong to this file", e->name);
    if (e->dtype != ENG_ST_F32 && e->dtype != ENG_ST_F16 && e->dtype != ENG_ST_BF16 && e->dtype != ENG_ST_F64)
        return eng_fail(ENG_ERR_FORMAT, "safetensors: tensor '%.200s' has dtype %s, not a floating-point type", e->name,
                        eng_st_dtype_name(e->dtype));
    if (n != e->numel)
        return eng_fail(ENG_ERR_SHAPE, "safetensors: tensor '%.200s' has %lld elements, asked for %lld", e->name,
                        (long long)e->numel, (long long)n);
    if (n == 0)
        return ENG_OK;
    if (!dst)
        return eng_fail(ENG_ERR_ARG, "safetensors: NULL destination for tensor '%.200s'", e->name);
    size_t esize = st_dtype_size(e->dtype);
    if (f->mem) {
        st_convert(e->dtype, f->mem + e->begin, dst, (size_t)n);
        return ENG_OK;
    }
    if (e->dtype == ENG_ST_F32)
        return st_pread(f->fd, dst, (size_t)(e->end - e->begin), f->data_pos + e->begin, e->name);
    if (!(bounce = malloc(ST_CHUNK)))
        return eng_fail(ENG_ERR_NOMEM, "safetensors: out of memory");
    size_t per = ST_CHUNK / esize;
    for (size_t done = 0; done < (size_t)n;) {
        size_t k = (size_t)n - done < per ? (size_t)n - done : per;
        if ((s = st_pread(f->fd, bounce, k * esize, f->data_pos + e->begin + done * esize, e->name)) != ENG_OK)
            goto out;
        st_convert(e->dtype, bounce, dst + done, k);
        done += k;
    }
out:
    free(bounce);
    return s;
}

/* ---- writing ---- */

/* Checks the items and builds the header object (keys in the caller's order, metadata first
 * as the reference writer does). The caller owns *out. */
static eng_status st_build_header(const eng_st_item *items, int n, const char *const *meta_keys,
                                  const char *const *meta_values, int n_meta, json_t **out)
{
    eng_status s = ENG_OK;
    json_t *root = json_object(), *meta = NULL, *ent = NULL;
    uint64_t off = 0;
    if (!root)
        return eng_fail(ENG_ERR_NOMEM, "safetensors: out of memory");
    if (n_meta > 0) {
        if (!(meta = json_object())) {
            s = eng_fail(ENG_ERR_NOMEM, "safetensors: out of memory");
            goto out;
        }
        for (int i = 0; i < n_meta; i++) {
            if (!meta_keys[i] || !meta_values[i]) {
                s = eng_fail(ENG_ERR_ARG, "safetensors: metadata entry %d has a NULL key or value", i);
                goto out;
            }
            if (json_object_get(meta, meta_keys[i])) {
                s = eng_fail(ENG_ERR_ARG, "safetensors: metadata key '%.200s' given twice", meta_keys[i]);
                goto out;
            }
            if (json_object_set_new(meta, meta_keys[i], json_string(meta_values[i])) != 0) {
                s = eng_fail(ENG_ERR_ARG, "safetensors: metadata '%.200s' is not valid UTF-8", meta_keys[i]);
                goto out;
            }
        }
        json_object_set_new(root, "__metadata__", meta);
        meta = NULL;
    }
    for (int i = 0; i < n; i++) {
        const eng_st_item *it = &items[i];
        if (!it->name || !*it->name || strcmp(it->name, "__metadata__") == 0) {
            s = eng_fail(ENG_ERR_ARG, "safetensors: item %d has no usable name", i);
            goto out;
        }
        if (json_object_get(root, it->name)) {
            s = eng_fail(ENG_ERR_ARG, "safetensors: tensor '%.200s' given twice", it->name);
            goto out;
        }
        if (it->ndim < 0 || it->ndim > ENG_ST_MAX_DIMS || (it->ndim > 0 && !it->dim)) {
            s = eng_fail(ENG_ERR_ARG, "safetensors: tensor '%.200s' has %d dimensions (0..%d)", it->name, it->ndim,
                         ENG_ST_MAX_DIMS);
            goto out;
        }
        int64_t numel = 1;
        json_t *shape = json_array();
        if (!shape || !(ent = json_object())) {
            json_decref(shape);
            s = eng_fail(ENG_ERR_NOMEM, "safetensors: out of memory");
            goto out;
        }
        if (json_object_set_new(ent, "dtype", json_string("F32")) || json_object_set_new(ent, "shape", shape)) {
            s = eng_fail(ENG_ERR_NOMEM, "safetensors: out of memory");
            goto out;
        }
        for (int d = 0; d < it->ndim; d++) {
            int64_t dv = it->dim[d];
            if (dv < 0 || dv > ST_MAX_NUMEL || (dv > 0 && numel > ST_MAX_NUMEL / dv)) {
                s = eng_fail(ENG_ERR_ARG, "safetensors: tensor '%.200s' dimension %d is %lld", it->name, d,
                             (long long)dv);
                goto out;
            }
            numel *= dv;
            if (json_array_append_new(shape, json_integer(dv))) {
                s = eng_fail(ENG_ERR_NOMEM, "safetensors: out of memory");
                goto out;
            }
        }
        if (numel > 0 && !it->data) {
            s = eng_fail(ENG_ERR_ARG, "safetensors: tensor '%.200s' has no data", it->name);
            goto out;
        }
        uint64_t bytes = (uint64_t)numel * 4;
        if (json_object_set_new(ent, "data_offsets", json_pack("[II]", (json_int_t)off, (json_int_t)(off + bytes)))) {
            s = eng_fail(ENG_ERR_NOMEM, "safetensors: out of memory");
            goto out;
        }
        /* json_object_set_new takes ent even when it fails (a key that is not UTF-8). */
        int rc = json_object_set_new(root, it->name, ent);
        ent = NULL;
        if (rc) {
            s = eng_fail(ENG_ERR_ARG, "safetensors: tensor name '%.200s' is not valid UTF-8", it->name);
            goto out;
        }
        off += bytes;
    }
    *out = root;
    root = NULL;
out:
    json_decref(ent);
    json_decref(meta);
    json_decref(root);
    return s;
}

eng_status eng_st_write(const char *path, const eng_st_item *items, int n, const char *const *meta_keys,
                        const char *const *meta_values, int n_meta)
{
    eng_status s;
    json_t *root = NULL;
    char *text = NULL;
    uint8_t *hdr = NULL;
    eng_piece *pieces = NULL;
    if (!path || n < 0 || (n > 0 && !items) || n_meta < 0 || (n_meta > 0 && (!meta_keys || !meta_values)))
        return eng_fail(ENG_ERR_ARG, "safetensors: bad arguments to write");
    if ((s = st_build_header(items, n, meta_keys, meta_values, n_meta, &root)) != ENG_OK)
        goto out;
    if (!(text = json_dumps(root, JSON_COMPACT))) {
        s = eng_fail(ENG_ERR_NOMEM, "safetensors: out of memory for the header");
        goto out;
    }
    /* Spaces pad the header so the data section starts 8-byte aligned, as the reference does. */
    size_t tlen = strlen(text), hlen = (tlen + 7) & ~(size_t)7;
    if (hlen > ENG_ST_MAX_HEADER) {
        s = eng_fail(ENG_ERR_LIMIT, "safetensors: header of %zu bytes is over the %u-byte limit", hlen,
                     (unsigned)ENG_ST_MAX_HEADER);
        goto out;
    }
    if (!(hdr = malloc(8 + hlen))) {
        s = eng_fail(ENG_ERR_NOMEM, "safetensors: out of memory for the header");
        goto out;
    }
    for (int i = 0; i < 8; i++)
        hdr[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    memcpy(hdr + 8, text, tlen);
    memset(hdr + 8 + tlen, ' ', hlen - tlen);

    pieces = malloc((size_t)(n + 1) * sizeof *pieces);
    if (!pieces) {
        s = eng_fail(ENG_ERR_NOMEM, "safetensors: out of memory");
        goto out;
    }
    int np = 0;
    pieces[np++] = (eng_piece){hdr, 8 + hlen};
    for (int i = 0; i < n; i++) {
        int64_t numel = 1;
        for (int d = 0; d < items[i].ndim; d++)
            numel *= items[i].dim[d];
        if (numel > 0)
            pieces[np++] = (eng_piece){items[i].data, (size_t)numel * 4};
    }
    s = eng_write_file_atomic(path, pieces, np, "safetensors: writing");
out:
    free(pieces);
    free(hdr);
    free(text);
    json_decref(root);
    return s;
}
