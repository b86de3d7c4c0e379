/* PyTorch checkpoint files: format detection, the storage table behind the pickle's persistent
 * ids (zip entries or the legacy format's trailing records), and tensor reads to float32. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pt_internal.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "ptload.c assumes a little-endian host"
#endif

#define PT_MAX_KEY 128
/* torch.serialization's MAGIC_NUMBER 0x1950a86a20f9469cfc6c, little-endian, and PROTOCOL_VERSION. */
static const uint8_t legacy_magic[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
#define LEGACY_PROTOCOL 1001

typedef struct pt_storage {
    char *key;
    eng_st_dtype dtype;
    int64_t numel;
    const pt_zip_entry *entry; /* zip: the data/<key> record */
    const uint8_t *data;       /* numel * element bytes once located (legacy) or read (zip) */
    uint8_t *owned;            /* inflated copy of a compressed entry */
} pt_storage;

struct eng_pt_file {
    eng_pt_format format;
    const uint8_t *buf;
    uint64_t len;
    void *map; /* the mapped file (eng_pt_open), or NULL */
    pt_zip zip;
    char archive[PT_MAX_KEY + 1];
    pt_heap heap;
    eng_pt_value *root;
    pt_storage *st;
    int n_st, cap_st;
    int *slots; /* open-addressing table of storage indices by key, -1 empty */
    size_t n_slots;
};

const char *eng_pt_format_name(eng_pt_format f) { return f == ENG_PT_LEGACY ? "legacy" : "zip"; }

void eng_pt_close(eng_pt_file *f)
{
    if (!f)
        return;
    for (int i = 0; i < f->n_st; i++) {
        free(f->st[i].key);
        free(f->st[i].owned);
    }
    free(f->st);
    free(f->slots);
    pt_heap_cleanup(&f->heap);
    pt_zip_cleanup(&f->zip);
    if (f->map)
        munmap(f->map, (size_t)f->len);
    free(f);
}

eng_pt_format eng_pt_get_format(const eng_pt_file *f) { return f->format; }
const char *eng_pt_archive_name(const eng_pt_file *f) { return f->archive; }
const eng_pt_value *eng_pt_root(const eng_pt_file *f) { return f->root; }
int eng_pt_opaque_count(const eng_pt_file *f) { return f->heap.n_opaque; }
const char *eng_pt_opaque_name(const eng_pt_file *f, int i)
{
    return i >= 0 && i < f->heap.n_opaque ? f->heap.opaque[i] : NULL;
}

/* ---- storage table ---- */

static uint64_t key_hash(const char *k)
{
    uint64_t h = 1469598103934665603ull;
    for (; *k; k++)
        h = (h ^ (uint8_t)*k) * 1099511628211ull;
    return h;
}

static int storage_find(const eng_pt_file *f, const char *key)
{
    if (!f->n_slots)
        return -1;
    for (size_t i = key_hash(key) & (f->n_slots - 1);; i = (i + 1) & (f->n_slots - 1)) {
        if (f->slots[i] < 0)
            return -1;
        if (strcmp(f->st[f->slots[i]].key, key) == 0)
            return f->slots[i];
    }
}

static eng_status storage_add(eng_pt_file *f, const char *key, eng_st_dtype dtype, int64_t numel, int *index)
{
    if (f->n_st >= ENG_PT_MAX_STORAGES)
        return eng_fail(ENG_ERR_LIMIT, "checkpoint: more than %d storages", ENG_PT_MAX_STORAGES);
    if (f->n_st == f->cap_st) {
        int cap = f->cap_st ? 2 * f->cap_st : 64;
        pt_storage *st = realloc(f->st, (size_t)cap * sizeof *st);
        if (!st)
            return eng_fail(ENG_ERR_NOMEM, "checkpoint: out of memory");
        f->st = st;
        f->cap_st = cap;
    }
    if ((size_t)(f->n_st + 1) * 2 > f->n_slots) { /* keep the table at most half full */
        size_t n = f->n_slots ? 2 * f->n_slots : 128;
        int *slots = malloc(n * sizeof *slots);
        if (!slots)
            return eng_fail(ENG_ERR_NOMEM, "checkpoint: out of memory");
        for (size_t i = 0; i < n; i++)
            slots[i] = -1;
        for (int j = 0; j < f->n_st; j++) {
            size_t i = key_hash(f->st[j].key) & (n - 1);
            while (slots[i] >= 0)
                i = (i + 1) & (n - 1);
            slots[i] = j;
        }
        free(f->slots);
        f->slots = slots;
        f->n_slots = n;
    }
    pt_storage *s = &f->st[f->n_st];
    memset(s, 0, sizeof *s);
    if (!(s->key = strdup(key)))
        return eng_fail(ENG_ERR_NOMEM, "checkpoint: out of memory");
    s->dtype = dtype;
    s->numel = numel;
    size_t i = key_hash(key) & (f->n_slots - 1);
    while (f->slots[i] >= 0)
        i = (i + 1) & (f->n_slots - 1);
    f->slots[i] = f->n_st;
    *index = f->n_st++;
    return ENG_OK;
}

/* Keys are short decimal numbers in every torch writer; anything else could not name a record. */
static bool key_ok(const char *k, size_t n)
{
    if (n == 0 || n > PT_MAX_KEY || memchr(k, '\0', n))
        return false;
    for (size_t i = 0; i < n; i++)
        if (k[i] == '/' || k[i] == '\\' || (unsigned char)k[i] < 0x20 || (unsigned char)k[i] > 0x7e)
            return false;
    return !(n <= 2 && k[0] == '.' && (n == 1 || k[1] == '.'));
}

/* The persistent id of a storage: ('storage', <torch.XStorage>, key, location, numel) in the zip
 * format, with a sixth item view_metadata (None, or (view_key, offset, size)) in the legacy one. */
static eng_status persistent_load(void *user, pt_heap *h, const eng_pt_value *pid, eng_pt_value **out)
{
    eng_pt_file *f = user;
    const int want = f->format == ENG_PT_ZIP ? 5 : 6;
    const eng_pt_value *tag = eng_pt_item(pid, 0);
    size_t tl = 0;
    const char *tags = eng_pt_kind_of(tag) == ENG_PT_STR ? eng_pt_str(tag, &tl) : NULL;
    if (eng_pt_kind_of(pid) != ENG_PT_TUPLE || !tags)
        return eng_fail(ENG_ERR_FORMAT, "checkpoint: a persistent id is a %s, not a ('storage', ...) tuple",
                        eng_pt_kind_name(eng_pt_kind_of(pid)));
    if (f->format == ENG_PT_LEGACY && !strcmp(tags, "module")) /* a pickled nn.Module class and its source */
        return (*out = pt_new_str(h, ENG_PT_OPAQUE, "torch.nn.Module", 15)) ? ENG_OK : h->fail;
    if (strcmp(tags, "storage") != 0 || eng_pt_len(pid) != want)
        return eng_fail(ENG_ERR_FORMAT, "checkpoint: persistent id '%.40s' with %lld items (expected 'storage' with %d)",
                        tags, (long long)eng_pt_len(pid), want);
    const eng_pt_value *type = eng_pt_item(pid, 1), *key = eng_pt_item(pid, 2), *numel = eng_pt_item(pid, 4);
    eng_st_dtype dt;
    size_t kl = 0;
    const char *ks = eng_pt_kind_of(key) == ENG_PT_STR ? eng_pt_str(key, &kl) : NULL;
    if (eng_pt_kind_of(type) != ENG_PT_GLOBAL || !pt_storage_dtype(eng_pt_str(type, NULL), &dt))
        return eng_fail(ENG_ERR_UNSUPPORTED, "checkpoint: storage type %.100s is not supported (float, half, bfloat16, "
                        "double and integer storages are)",
                        eng_pt_kind_of(type) == ENG_PT_GLOBAL ? eng_pt_str(type, NULL) : eng_pt_kind_name(eng_pt_kind_of(type)));
    if (!ks || !key_ok(ks, kl))
        return eng_fail(ENG_ERR_FORMAT, "checkpoint: storage key is not a short printable string");
    if (eng_pt_kind_of(numel) != ENG_PT_INT || eng_pt_int(numel) < 0 ||
        eng_pt_int(numel) > (int64_t)(((uint64_t)1 << 62) / pt_dtype_size(dt)))
        return eng_fail(ENG_ERR_FORMAT, "checkpoint: storage '%s' has a bad element count", ks);
    int64_t n = eng_pt_int(numel);
    int idx = storage_find(f, ks);
    if (idx >= 0) {
        if (f->st[idx].dtype != dt || f->st[idx].numel != n)
            return eng_fail(ENG_ERR_FORMAT, "checkpoint: storage '%s' is declared twice with different types or sizes", ks);
    } else {
        uint64_t bytes = (uint64_t)n * pt_dtype_size(dt);
        const pt_zip_entry *e = NULL;
        if (f->format == ENG_PT_ZIP) {
            char name[2 * PT_MAX_KEY + 16];
            snprintf(name, sizeof name, "%s/data/%s", f->archive, ks);
            if (!(e = pt_zip_find(&f->zip, name)))
                return eng_fail(ENG_ERR_FORMAT, "checkpoint: storage '%s' has no record %s in the archive", ks, name);
            if (e->size != bytes)
                return eng_fail(ENG_ERR_FORMAT, "checkpoint: storage '%s' declares %lld %s elements (%llu bytes) but "
                                "its record holds %llu bytes%s", ks, (long long)n, eng_st_dtype_name(dt),
                                (unsigned long long)bytes, (unsigned long long)e->size,
                                e->size < bytes ? " (truncated)" : "");
        } else if (bytes > f->len) {
            return eng_fail(ENG_ERR_FORMAT, "checkpoint: storage '%s' declares %llu bytes, more than the %llu-byte file",
                            ks, (unsigned long long)bytes, (unsigned long long)f->len);
        }
        eng_status s = storage_add(f, ks, dt, n, &idx);
        if (s != ENG_OK)
            return s;
        f->st[idx].entry = e;
    }
    int64_t off = 0, vn = n;
    const eng_pt_value *view = f->format == ENG_PT_LEGACY ? eng_pt_item(pid, 5) : NULL;
    if (view && eng_pt_kind_of(view) != ENG_PT_NONE) { /* (view_key, offset, size) in elements */
        const eng_pt_value *vo = eng_pt_item(view, 1), *vs = eng_pt_item(view, 2);
        if (eng_pt_kind_of(view) != ENG_PT_TUPLE || eng_pt_len(view) != 3 || eng_pt_kind_of(vo) != ENG_PT_INT ||
            eng_pt_kind_of(vs) != ENG_PT_INT || eng_pt_int(vo) < 0 || eng_pt_int(vs) < 0 || eng_pt_int(vo) > n ||
            eng_pt_int(vs) > n - eng_pt_int(vo))
            return eng_fail(ENG_ERR_FORMAT, "checkpoint: storage '%s' has a view outside its %lld elements", ks,
                            (long long)n);
        off = eng_pt_int(vo);
        vn = eng_pt_int(vs);
    }
    eng_pt_value *v = pt_new(h, ENG_PT_STORAGE);
    if (!v)
        return h->fail;
    v->u.st.index = idx;
    v->u.st.key = f->st[idx].key;
    v->u.st.offset = off;
    v->u.st.numel = vn;
    v->u.st.dtype = dt;
    *out = v;
    return ENG_OK;
}

/* ---- formats ---- */

static eng_status open_zip(eng_pt_file *f)
{
    eng_status s;
    if ((s = pt_zip_open(&f->zip, f->buf, f->len)) != ENG_OK)
        return s;
    if (f->zip.n == 0)
        return eng_fail(ENG_ERR_FORMAT, "checkpoint: the zip archive is empty");
    /* torch names every record <archive>/...; the archive name is the first record's directory. */
    const char *first = f->zip.entries[0].name, *slash = strchr(first, '/');
    size_t al = slash ? (size_t)(slash - first) : 0;
    if (!slash || al == 0 || al > PT_MAX_KEY)
        return eng_fail(ENG_ERR_FORMAT, "checkpoint: zip entry '%.200s' is not inside an archive directory; "
                        "not a torch.save file", first);
    memcpy(f->archive, first, al);
    f->archive[al] = '\0';
    char name[PT_MAX_KEY + 32];
    snprintf(name, sizeof name, "%s/constants.pkl", f->archive);
    if (pt_zip_find(&f->zip, name))
        return eng_fail(ENG_ERR_UNSUPPORTED, "checkpoint: a TorchScript archive (torch.jit.save), not a torch.save "
                        "checkpoint; save the model's state_dict() with torch.save");
    snprintf(name, sizeof name, "%s/byteorder", f->archive);
    const pt_zip_entry *bo = pt_zip_find(&f->zip, name);
    if (bo) {
        const uint8_t *d;
        uint8_t *own;
        if ((s = pt_zip_read(&f->zip, bo, 16, &d, &own)) != ENG_OK)
            return s;
        bool little = bo->size == 6 && memcmp(d, "little", 6) == 0;
        free(own);
        if (!little)
            return eng_fail(ENG_ERR_UNSUPPORTED, "checkpoint: tensors were saved big-endian");
    }
    snprintf(name, sizeof name, "%s/data.pkl", f->archive);
    const pt_zip_entry *pk = pt_zip_find(&f->zip, name);
    if (!pk)
        return eng_fail(ENG_ERR_FORMAT, "checkpoint: the archive has no %s", name);
    const uint8_t *d;
    uint8_t *own;
    if ((s = pt_zip_read(&f->zip, pk, ENG_PT_MAX_PICKLE, &d, &own)) != ENG_OK)
        return s;
    s = pt_unpickle(&f->heap, d, (size_t)pk->size, persistent_load, f, &f->root, NULL);
    free(own);
    return s;
}

/* One of the small pickles that open a legacy file. */
static eng_status legacy_small(eng_pt_file *f, uint64_t *pos, const char *what, eng_pt_value **v)
{
    size_t used;
    eng_status s = pt_unpickle(&f->heap, f->buf + *pos, (size_t)(f->len - *pos), NULL, NULL, v, &used);
    if (s != ENG_OK)
        return eng_fail(s, "checkpoint: legacy %s: %s", what, eng_last_error());
    *pos += used;
    return ENG_OK;
}

static eng_status open_legacy(eng_pt_file *f)
{
    eng_status s;
    eng_pt_value *v;
    uint64_t pos = 0;
    if ((s = legacy_small(f, &pos, "magic number", &v)) != ENG_OK)
        return s;
    size_t n = 0;
    const char *m = eng_pt_kind_of(v) == ENG_PT_BIGINT ? v->u.s.p : NULL;
    n = m ? v->u.s.len : 0;
    if (!m || n != sizeof legacy_magic || memcmp(m, legacy_magic, n) != 0)
        return eng_fail(ENG_ERR_FORMAT, "checkpoint: a pickle, but not a torch.save file (wrong magic number)");
    if ((s = legacy_small(f, &pos, "protocol version", &v)) != ENG_OK)
        return s;
    if (eng_pt_kind_of(v) != ENG_PT_INT || eng_pt_int(v) != LEGACY_PROTOCOL)
        return eng_fail(ENG_ERR_UNSUPPORTED, "checkpoint: legacy protocol version %lld (only %d)",
                        (long long)eng_pt_int(v), LEGACY_PROTOCOL);
    if ((s = legacy_small(f, &pos, "system info", &v)) != ENG_OK)
        return s;
    const eng_pt_value *le = eng_pt_dict_get(v, "little_endian");
    if (eng_pt_kind_of(v) != ENG_PT_DICT || (le && !eng_pt_int(le)))
        return eng_fail(ENG_ERR_UNSUPPORTED, "checkpoint: saved on a big-endian machine or without system info");
    size_t used;
    s = pt_unpickle(&f->heap, f->buf + pos, (size_t)(f->len - pos), persistent_load, f, &f->root, &used);
    if (s != ENG_OK)
        return s;
    pos += used;
    eng_pt_value *keys;
    if ((s = legacy_small(f, &pos, "storage key list", &keys)) != ENG_OK)
        return s;
    if (eng_pt_kind_of(keys) != ENG_PT_LIST)
        return eng_fail(ENG_ERR_FORMAT, "checkpoint: the legacy storage key list is a %s",
                        eng_pt_kind_name(eng_pt_kind_of(keys)));
    /* Each record: int64 element count, then the elements. A record the pickle never mentioned
     * has an unknown element size and cannot be skipped, so it is refused. */
    for (int64_t i = 0; i < eng_pt_len(keys); i++) {
        const char *k = eng_pt_str(eng_pt_item(keys, i), NULL);
        int idx = k ? storage_find(f, k) : -1;
        if (idx < 0)
            return eng_fail(ENG_ERR_FORMAT, "checkpoint: stored storage '%.40s' is not used by the pickle",
                            k ? k : "(not a string)");
        pt_storage *st = &f->st[idx];
        if (st->data)
            return eng_fail(ENG_ERR_FORMAT, "checkpoint: storage '%s' is stored twice", k);
        if (f->len - pos < 8)
            return eng_fail(ENG_ERR_FORMAT, "checkpoint: truncated before storage '%s'", k);
        int64_t count;
        memcpy(&count, f->buf + pos, 8);
        pos += 8;
        if (count != st->numel)
            return eng_fail(ENG_ERR_FORMAT, "checkpoint: storage '%s' holds %lld elements, the pickle says %lld", k,
                            (long long)count, (long long)st->numel);
        uint64_t bytes = (uint64_t)st->numel * pt_dtype_size(st->dtype);
        if (bytes > f->len - pos)
            return eng_fail(ENG_ERR_FORMAT, "checkpoint: storage '%s' needs %llu bytes, only %llu left (truncated file)",
                            k, (unsigned long long)bytes, (unsigned long long)(f->len - pos));
        st->data = f->buf + pos;
        pos += bytes;
    }
    for (int i = 0; i < f->n_st; i++)
        if (!f->st[i].data)
            return eng_fail(ENG_ERR_FORMAT, "checkpoint: storage '%s' is used but not stored (truncated file?)",
                            f->st[i].key);
    return ENG_OK;
}

static eng_status pt_parse(eng_pt_file *f)
{
    if (f->len >= 4 && memcmp(f->buf, "PK\003\004", 4) == 0) {
        f->format = ENG_PT_ZIP;
        return open_zip(f);
    }
    if (f->len >= 2 && f->buf[0] == 0x80 && f->buf[1] <= 5) {
        f->format = ENG_PT_LEGACY;
        return open_legacy(f);
    }
    if (f->len >= 262 && memcmp(f->buf + 257, "ustar", 5) == 0)
        return eng_fail(ENG_ERR_UNSUPPORTED, "checkpoint: the tar format of PyTorch before 0.4 is not supported; load "
                        "and save it again with a recent torch");
    return eng_fail(ENG_ERR_FORMAT, "checkpoint: neither a torch.save zip archive nor a legacy pickle (%llu bytes)",
                    (unsigned long long)f->len);
}

eng_status eng_pt_open_mem(const void *buf, size_t len, eng_pt_file **out)
{
    if (!out)
        return eng_fail(ENG_ERR_ARG, "checkpoint: NULL output");
    *out = NULL;
    if (!buf && len)
        return eng_fail(ENG_ERR_ARG, "checkpoint: NULL buffer of %zu bytes", len);
    eng_pt_file *f = calloc(1, sizeof *f);
    if (!f)
        return eng_fail(ENG_ERR_NOMEM, "checkpoint: out of memory");
    f->buf = buf;
    f->len = len;
    eng_status s = pt_parse(f);
    if (s != ENG_OK) {
        eng_pt_close(f);
        return s;
    }
    *out = f;
    return ENG_OK;
}

eng_status eng_pt_open(const char *path, eng_pt_file **out)
{
    if (!out || !path)
        return eng_fail(ENG_ERR_ARG, "checkpoint: NULL path or output");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return eng_fail(ENG_ERR_IO, "checkpoint: cannot open '%.300s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return eng_fail(ENG_ERR_IO, "checkpoint: '%.300s' is not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        return eng_fail(ENG_ERR_FORMAT, "checkpoint: '%.300s' is empty", path);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return eng_fail(ENG_ERR_IO, "checkpoint: cannot map '%.300s': %s", path, strerror(errno));
    eng_pt_file *f = calloc(1, sizeof *f);
    if (!f) {
        munmap(map, (size_t)st.st_size);
        return eng_fail(ENG_ERR_NOMEM, "checkpoint: out of memory");
    }
    f->map = map;
    f->buf = map;
    f->len = (uint64_t)st.st_size;
    eng_status s = pt_parse(f);
    if (s != ENG_OK) {
        eng_pt_close(f);
        return eng_fail(s, "%s (in '%.300s')", eng_last_error(), path);
    }
    *out = f;
    return ENG_OK;
}

/* ---- reading tensors ---- */

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | man << 13; /* inf, nan */
    } else if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            bits = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
        }
    } else {
        bits = sign | (exp + 127 - 15) << 23 | man << 13;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static float load_elem(const uint8_t *p, eng_st_dtype dt)
{
    switch (dt) {
    case ENG_ST_F32: {
        float x;
        memcpy(&x, p, 4);
        return x;
    }
    case ENG_ST_F64: {
        double x;
        memcpy(&x, p, 8);
        return (float)x;
    }
    case ENG_ST_F16: {
        uint16_t x;
        memcpy(&x, p, 2);
        return half_to_float(x);
    }
    case ENG_ST_BF16: {
        uint32_t bits = (uint32_t)(p[0] | p[1] << 8) << 16;
        float x;
        memcpy(&x, &bits, 4);
        return x;
    }
    default:
        return 0;
    }
}

static eng_status storage_bytes(eng_pt_file *f, pt_storage *st)
{
    if (st->data)
        return ENG_OK;
    if (!st->entry) /* legacy storages are located at open time */
        return eng_fail(ENG_ERR_FORMAT, "checkpoint: storage '%s' has no data", st->key);
    uint64_t bytes = (uint64_t)st->numel * pt_dtype_size(st->dtype);
    eng_status s = pt_zip_read(&f->zip, st->entry, bytes, &st->data, &st->owned);
    if (s != ENG_OK)
        return s;
    return ENG_OK;
}

eng_status eng_pt_read_f32(eng_pt_file *f, const eng_pt_value *v, float *dst, int64_t n)
{
    if (!f || !v || v->kind != ENG_PT_TENSOR || (n > 0 && !dst))
        return eng_fail(ENG_ERR_ARG, "checkpoint: read of a %s, not a tensor", eng_pt_kind_name(eng_pt_kind_of(v)));
    const pt_tensor *t = v->u.t;
    const eng_pt_tensor_info *in = &t->info;
    if (n != in->numel)
        return eng_fail(ENG_ERR_SHAPE, "checkpoint: tensor has %lld elements, %lld requested", (long long)in->numel,
                        (long long)n);
    if (in->dtype != ENG_ST_F32 && in->dtype != ENG_ST_F16 && in->dtype != ENG_ST_BF16 && in->dtype != ENG_ST_F64)
        return eng_fail(ENG_ERR_FORMAT, "checkpoint: tensor of dtype %s is not floating-point",
                        eng_st_dtype_name(in->dtype));
    if (t->storage < 0 || t->storage >= f->n_st)
        return eng_fail(ENG_ERR_ARG, "checkpoint: tensor of another file");
    pt_storage *st = &f->st[t->storage];
    eng_status s = storage_bytes(f, st);
    if (s != ENG_OK || n == 0)
        return s;
    const unsigned es = pt_dtype_size(in->dtype);
    const uint8_t *base = st->data + (size_t)in->offset * es;
    if (in->contiguous && in->dtype == ENG_ST_F32) {
        memcpy(dst, base, (size_t)n * sizeof(float));
        return ENG_OK;
    }
    /* Any strides: walk the index like an odometer, the last dimension innermost. Every
     * position was checked against the storage when the tensor was unpickled. */
    int nd = in->ndim;
    int64_t idx[ENG_PT_MAX_DIMS] = {0}, inner = nd ? in->dim[nd - 1] : 1, istride = nd ? in->stride[nd - 1] : 0;
    int64_t off = 0, done = 0;
    while (done < n) {
        const uint8_t *p = base + (size_t)off * es;
        for (int64_t j = 0; j < inner; j++)
            dst[done + j] = load_elem(p + (size_t)(j * istride) * es, in->dtype);
        done += inner;
        for (int d = nd - 2; d >= 0; d--) {
            off += in->stride[d];
            if (++idx[d] < in->dim[d])
                break;
            off -= in->stride[d] * in->dim[d];
            idx[d] = 0;
        }
    }
    return ENG_OK;
}
