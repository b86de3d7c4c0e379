/* NumPy readers: .npy arrays with a strictly parsed header dict, and .npz zips of them (through
 * libarchive, stored or deflated members). Images are uint8 or float32, labels integers. */
#include <archive.h>
#include <archive_entry.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data_internal.h"

#define NPY_MAX_DIMS 8
/* numpy writes headers of a few hundred bytes; a longer one is not worth parsing. */
#define NPY_MAX_HEADER 65536

typedef struct npy_arr {
    char descr[8];
    int itemsize;
    int ndim;
    uint64_t shape[NPY_MAX_DIMS];
    uint64_t count;
    const uint8_t *data;
} npy_arr;

/* ---- the header dict: {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } ---- */

typedef struct cursor {
    const char *p, *end;
} cursor;

static void ws(cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t'))
        c->p++;
}

static int lit(cursor *c, const char *s)
{
    size_t n = strlen(s);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, s, n) != 0)
        return 0;
    c->p += n;
    return 1;
}

/* A quoted Python string of at most cap - 1 plain characters (no escapes). */
static int str(cursor *c, char *out, size_t cap)
{
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"'))
        return 0;
    char q = *c->p++;
    size_t n = 0;
    while (c->p < c->end && *c->p != q) {
        if (*c->p == '\\' || (unsigned char)*c->p < 0x20 || n + 1 >= cap)
            return 0;
        out[n++] = *c->p++;
    }
    if (c->p >= c->end)
        return 0;
    c->p++;
    out[n] = '\0';
    return 1;
}

static int num(cursor *c, uint64_t *v)
{
    if (c->p >= c->end || *c->p < '0' || *c->p > '9')
        return 0;
    uint64_t x = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        if (x > ((uint64_t)1 << 48))
            return 0;
        x = x * 10 + (uint64_t)(*c->p++ - '0');
    }
    *v = x;
    return 1;
}

/* A tuple of ints: "()", "(5,)", "(5, 6)", "(5, 6,)"; "(5)" is an int, not a tuple. */
static int tuple(cursor *c, npy_arr *a)
{
    if (!lit(c, "("))
        return 0;
    a->ndim = 0;
    ws(c);
    if (lit(c, ")"))
        return 1;
    int comma = 0;
    for (;;) {
        if (a->ndim == NPY_MAX_DIMS || !num(c, &a->shape[a->ndim]))
            return 0;
        a->ndim++;
        ws(c);
        comma = lit(c, ",");
        ws(c);
        if (lit(c, ")"))
            return a->ndim > 1 || comma;
        if (!comma)
            return 0;
    }
}

static eng_status npy_parse(const uint8_t *b, size_t len, const char *who, npy_arr *a)
{
    memset(a, 0, sizeof *a);
    if (len < 10 || memcmp(b, "\x93NUMPY", 6) != 0)
        return eng_fail(ENG_ERR_FORMAT, "%s: not a .npy array (no \\x93NUMPY magic)", who);
    const int major = b[6], minor = b[7];
    size_t start, hl;
    if (major == 1 && minor == 0) {
        start = 10;
        hl = (size_t)b[8] | (size_t)b[9] << 8;
    } else if ((major == 2 || major == 3) && minor == 0 && len >= 12) {
        start = 12;
        hl = (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
    } else {
        return eng_fail(ENG_ERR_FORMAT, "%s: .npy version %d.%d is not 1.0, 2.0 or 3.0", who, major, minor);
    }
    if (hl > NPY_MAX_HEADER)
        return eng_fail(ENG_ERR_FORMAT, "%s: .npy header of %zu bytes is longer than %d", who, hl, NPY_MAX_HEADER);
    if (hl > len - start)
        return eng_fail(ENG_ERR_FORMAT, "%s: truncated in the .npy header (%zu bytes declared, %zu there)", who, hl,
                        len - start);
    cursor c = {(const char *)b + start, (const char *)b + start + hl};
    int have_descr = 0, have_order = 0, have_shape = 0;
    ws(&c);
    if (!lit(&c, "{"))
        goto bad;
    for (;;) {
        char key[32];
        ws(&c);
        if (lit(&c, "}"))
            break;
        if (!str(&c, key, sizeof key))
            goto bad;
        ws(&c);
        if (!lit(&c, ":"))
            goto bad;
        ws(&c);
        if (strcmp(key, "descr") == 0 && !have_descr) {
            char v[16];
            if (!str(&c, v, sizeof v))
                goto bad;
            static const struct {
                const char *name;
                int size;
            } known[] = {{"|u1", 1}, {"<f4", 4}, {"<i4", 4}, {"<i8", 8}};
            for (size_t i = 0; i < sizeof known / sizeof *known; i++)
                if (strcmp(v, known[i].name) == 0) {
                    memcpy(a->descr, known[i].name, 4);
                    a->itemsize = known[i].size;
                }
            if (!a->itemsize)
                return eng_fail(ENG_ERR_FORMAT, "%s: dtype '%s' is not one of '|u1', '<f4', '<i4', '<i8'", who, v);
            have_descr = 1;
        } else if (strcmp(key, "fortran_order") == 0 && !have_order) {
            if (lit(&c, "True"))
                return eng_fail(ENG_ERR_FORMAT, "%s: Fortran-order arrays are not supported; save a C-order copy",
                                who);
            if (!lit(&c, "False"))
                goto bad;
            have_order = 1;
        } else if (strcmp(key, "shape") == 0 && !have_shape) {
            if (!tuple(&c, a))
                goto bad;
            have_shape = 1;
        } else {
            return eng_fail(ENG_ERR_FORMAT, "%s: .npy header key '%s' is unknown or repeated", who, key);
        }
        ws(&c);
        if (lit(&c, ","))
            continue;
        ws(&c);
        if (lit(&c, "}"))
            break;
        goto bad;
    }
    /* numpy pads with spaces up to a newline that ends the header. */
    while (c.p < c.end && (*c.p == ' ' || *c.p == '\n'))
        c.p++;
    if (c.p != c.end || c.end[-1] != '\n')
        goto bad;
    if (!have_descr || !have_order || !have_shape)
        return eng_fail(ENG_ERR_FORMAT, "%s: .npy header lacks %s", who,
                        !have_descr ? "'descr'" : !have_order ? "'fortran_order'" : "'shape'");
    a->count = 1;
    for (int i = 0; i < a->ndim; i++)
        if (__builtin_mul_overflow(a->count, a->shape[i], &a->count) || a->count > ((uint64_t)1 << 56))
            return eng_fail(ENG_ERR_FORMAT, "%s: .npy shape is too large", who);
    const uint64_t want = a->count * (uint64_t)a->itemsize, have = len - start - hl;
    if (want != have)
        return eng_fail(ENG_ERR_FORMAT, "%s: .npy shape and dtype need %llu data bytes but %llu follow the header%s",
                        who, (unsigned long long)want, (unsigned long long)have,
                        want > have ? " (truncated)" : "");
    a->data = b + start + hl;
    return ENG_OK;
bad:;
    /* The header as printable ASCII only: messages end up in JSON. */
    char shown[81];
    size_t k = 0;
    for (const char *q = (const char *)b + start; q < c.end && k < sizeof shown - 1; q++)
        shown[k++] = *q >= 0x20 && *q < 0x7f ? *q : '?';
    shown[k] = '\0';
    return eng_fail(ENG_ERR_FORMAT, "%s: malformed .npy header near byte %zu: '%s'", who,
                    start + (size_t)(c.p - ((const char *)b + start)), shown);
}

/* ---- arrays to a dataset ---- */

static const char *shape_str(const npy_arr *a, char *buf, size_t cap)
{
    size_t o = (size_t)snprintf(buf, cap, "(");
    for (int i = 0; i < a->ndim && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%llu", i ? ", " : "", (unsigned long long)a->shape[i]);
    if (o < cap)
        snprintf(buf + o, cap - o, ")");
    return buf;
}

static eng_status npy_images(eng_dataset *t, const npy_arr *a, eng_npy_layout layout, int64_t max_px,
                             const char *who)
{
    char sh[128];
    if (a->itemsize != 1 && strcmp(a->descr, "<f4") != 0)
        return eng_fail(ENG_ERR_FORMAT, "%s: images of dtype '%s'; want '|u1' or '<f4'", who, a->descr);
    if (a->ndim != 3 && a->ndim != 4)
        return eng_fail(ENG_ERR_FORMAT, "%s: images of shape %s; want [N, H, W] or 4-D", who,
                        shape_str(a, sh, sizeof sh));
    uint64_t n = a->shape[0], c = 1, h = a->shape[1], w = a->shape[2];
    int nhwc = 0;
    if (a->ndim == 4) {
        int c1 = a->shape[1] == 1 || a->shape[1] == 3, c3 = a->shape[3] == 1 || a->shape[3] == 3;
        if (layout == ENG_NPY_AUTO) {
            if (c1 == c3)
                return eng_fail(ENG_ERR_ARG, "%s: images of shape %s could be NHWC or NCHW; say which", who,
                                shape_str(a, sh, sizeof sh));
            layout = c3 ? ENG_NPY_NHWC : ENG_NPY_NCHW;
        }
        nhwc = layout == ENG_NPY_NHWC;
        if (nhwc) {
            h = a->shape[1], w = a->shape[2], c = a->shape[3];
        } else {
            c = a->shape[1], h = a->shape[2], w = a->shape[3];
        }
        if (c != 1 && c != 3)
            return eng_fail(ENG_ERR_FORMAT, "%s: images of shape %s as %s have %llu channels; want 1 or 3", who,
                            shape_str(a, sh, sizeof sh), nhwc ? "NHWC" : "NCHW", (unsigned long long)c);
    }
    if (n < 1 || n > INT32_MAX || h < 1 || w < 1 || h > ENG_DATA_MAX_SIDE || w > ENG_DATA_MAX_SIDE)
        return eng_fail(ENG_ERR_FORMAT, "%s: images of shape %s: need 1..%d images of 1..%d pixels a side", who,
                        shape_str(a, sh, sizeof sh), INT32_MAX, ENG_DATA_MAX_SIDE);
    if (a->count > (uint64_t)max_px)
        return eng_fail(ENG_ERR_LIMIT, "%s: images of shape %s are %llu pixels, over the limit of %lld", who,
                        shape_str(a, sh, sizeof sh), (unsigned long long)a->count, (long long)max_px);
    const int f32 = a->itemsize == 4;
    void *dst = malloc(a->count * (f32 ? sizeof(float) : 1));
    if (!dst)
        return eng_fail(ENG_ERR_NOMEM, "%s: out of memory for %llu pixels", who, (unsigned long long)a->count);
    if (f32) {
        t->fpixels = dst;
        t->type = ENG_PIX_F32;
    } else {
        t->pixels = dst;
        t->type = ENG_PIX_U8;
    }
    t->n = (int64_t)n;
    t->c = (int)c;
    t->h = (int)h;
    t->w = (int)w;
    const size_t plane = (size_t)(h * w), esz = f32 ? 4 : 1;
    if (!nhwc || c == 1) {
        memcpy(dst, a->data, a->count * esz);
    } else {
        /* [N, H, W, C] to [N, C, H, W]; the source may be unaligned, hence memcpy for floats. */
        for (size_t i = 0; i < n; i++)
            for (size_t ch = 0; ch < c; ch++) {
                const uint8_t *src = a->data + (i * plane * c + ch) * esz;
                if (f32) {
                    float *o = t->fpixels + (i * c + ch) * plane;
                    for (size_t p = 0; p < plane; p++)
                        memcpy(o + p, src + p * c * 4, 4);
                } else {
                    uint8_t *o = t->pixels + (i * c + ch) * plane;
                    for (size_t p = 0; p < plane; p++)
                        o[p] = src[p * c];
                }
            }
    }
    if (f32)
        for (uint64_t i = 0; i < a->count; i++) {
            float v = t->fpixels[i];
            if (!(v >= 0.0f && v <= 1.0f))
                return eng_fail(ENG_ERR_FORMAT, "%s: float32 images must hold pixels in [0, 1]; value %llu is %g", who,
                                (unsigned long long)i, (double)v);
        }
    return ENG_OK;
}

static eng_status npy_labels(eng_dataset *t, const npy_arr *a, const char *who)
{
    char sh[128];
    if (strcmp(a->descr, "<f4") == 0)
        return eng_fail(ENG_ERR_FORMAT, "%s: labels of dtype '<f4'; want '|u1', '<i4' or '<i8'", who);
    if (a->ndim != 1 || a->shape[0] != (uint64_t)t->n)
        return eng_fail(ENG_ERR_FORMAT, "%s: labels of shape %s for %lld images; want (%lld,)", who,
                        shape_str(a, sh, sizeof sh), (long long)t->n, (long long)t->n);
    if (!(t->labels = malloc((size_t)t->n * sizeof(int32_t))))
        return eng_fail(ENG_ERR_NOMEM, "%s: out of memory for labels", who);
    for (int64_t i = 0; i < t->n; i++) {
        int64_t v;
        if (a->itemsize == 1) {
            v = a->data[i];
        } else if (a->itemsize == 4) {
            int32_t x;
            memcpy(&x, a->data + i * 4, 4);
            v = x;
        } else {
            memcpy(&v, a->data + i * 8, 8);
        }
        if (v < 0 || v >= ENG_DATA_MAX_CLASSES)
            return eng_fail(ENG_ERR_FORMAT, "%s: label %lld of example %lld is outside 0..%d", who, (long long)v,
                            (long long)i, ENG_DATA_MAX_CLASSES - 1);
        t->labels[i] = (int32_t)v;
    }
    return ENG_OK;
}

/* Both arrays parsed into d; on failure d is left zeroed. */
static eng_status npy_build(eng_dataset *d, const uint8_t *img, size_t img_len, const char *iname, const uint8_t *lab,
                            size_t lab_len, const char *lname, const eng_data_opts *opts)
{
    memset(d, 0, sizeof *d);
    eng_dataset t = {0};
    npy_arr ai, al;
    char who[600];
    eng_status s;
    snprintf(who, sizeof who, "npy: %.500s", iname);
    if ((s = npy_parse(img, img_len, who, &ai)) != ENG_OK ||
        (s = npy_images(&t, &ai, opts ? opts->layout : ENG_NPY_AUTO, eng_data_max_pixels(opts), who)) != ENG_OK)
        goto out;
    snprintf(who, sizeof who, "npy: %.500s", lname);
    if ((s = npy_parse(lab, lab_len, who, &al)) != ENG_OK || (s = npy_labels(&t, &al, who)) != ENG_OK ||
        (s = eng_data_finish(&t, who)) != ENG_OK)
        goto out;
    *d = t;
    memset(&t, 0, sizeof t);
out:
    eng_dataset_cleanup(&t);
    return s;
}

eng_status eng_dataset_read_npy_mem(eng_dataset *d, const void *images, size_t images_len, const void *labels,
                                    size_t labels_len, const eng_data_opts *opts)
{
    static const uint8_t none[1];
    return npy_build(d, images ? images : none, images ? images_len : 0, "images " ENG_DATA_MEM_NAME,
                     labels ? labels : none, labels ? labels_len : 0, "labels " ENG_DATA_MEM_NAME, opts);
}

eng_status eng_dataset_read_npy(eng_dataset *d, const char *images_path, const char *labels_path,
                                const eng_data_opts *opts)
{
    static const uint8_t none[1];
    memset(d, 0, sizeof *d);
    eng_data_map mi, ml = {0};
    eng_status s = eng_data_map_file(&mi, images_path, "npy");
    if (s == ENG_OK)
        s = eng_data_map_file(&ml, labels_path, "npy");
    if (s == ENG_OK)
        s = npy_build(d, mi.p ? mi.p : none, mi.len, images_path, ml.p ? ml.p : none, ml.len, labels_path, opts);
    eng_data_unmap(&mi);
    eng_data_unmap(&ml);
    return s;
}

/* ---- .npz ---- */

#define NPZ_MAX_MEMBERS 65536

static const char *const images_keys[] = {"x", "images", "X", "data"};
static const char *const labels_keys[] = {"y", "labels", "Y", "targets"};

/* The member key ("x" of "x.npy"), or NULL for a member that is not an array. */
static const char *npz_key(const char *norm, char *buf, size_t cap)
{
    size_t n = strlen(norm);
    if (n < 5 || strcmp(norm + n - 4, ".npy") != 0 || n - 4 >= cap)
        return NULL;
    memcpy(buf, norm, n - 4);
    buf[n - 4] = '\0';
    return buf;
}

/* Picks the key: the one asked for, or the single default candidate present. */
static eng_status pick_key(char **keys, int nkeys, const char *want, const char *const *cands, int ncand,
                           const char *what, const char **out, const char *who)
{
    char list[256] = "";
    size_t o = 0;
    for (int i = 0; i < nkeys && o < sizeof list; i++)
        o += (size_t)snprintf(list + o, sizeof list - o, "%s'%s'", i ? ", " : "", keys[i]);
    if (want) {
        for (int i = 0; i < nkeys; i++)
            if (strcmp(keys[i], want) == 0) {
                *out = keys[i];
                return ENG_OK;
            }
        return eng_fail(ENG_ERR_FORMAT, "%s: no %s array '%s' (arrays: %s)", who, what, want, nkeys ? list : "none");
    }
    const char *found = NULL;
    for (int j = 0; j < ncand; j++)
        for (int i = 0; i < nkeys; i++)
            if (strcmp(keys[i], cands[j]) == 0) {
                if (found)
                    return eng_fail(ENG_ERR_ARG, "%s: both '%s' and '%s' could be the %s; name one", who, found,
                                    cands[j], what);
                found = keys[i];
            }
    if (!found)
        return eng_fail(ENG_ERR_FORMAT, "%s: no %s array: looked for '%s', '%s', '%s', '%s' (arrays: %s)", who, what,
                        cands[0], cands[1], cands[2], cands[3], nkeys ? list : "none");
    *out = found;
    return ENG_OK;
}

static eng_status npz_core(eng_dataset *d, const void *buf, size_t len, const char *name,
                           const eng_data_opts *opts)
{
    memset(d, 0, sizeof *d);
    char who[600], norm[4096], kb[4096];
    snprintf(who, sizeof who, "npz: %.500s", name);
    struct archive *a = NULL;
    struct archive_entry *e;
    char **keys = NULL;
    int nkeys = 0, r = 0;
    uint8_t *img = NULL, *lab = NULL;
    size_t img_len = 0, lab_len = 0;
    const char *ik = NULL, *lk = NULL;
    const int64_t max_px = eng_data_max_pixels(opts);
    void *loc = eng_data_utf8_begin();
    eng_status s = eng_data_archive_open(&a, buf, len, 1, who);
    if (s != ENG_OK)
        goto out;
    /* Pass 1: names only. */
    while ((r = eng_data_archive_next(a, &e, who)) == 1) {
        const char *raw = archive_entry_pathname_utf8(e);
        if (!raw)
            raw = archive_entry_pathname(e);
        if ((s = eng_data_member_name(raw, norm, sizeof norm, who)) != ENG_OK)
            goto out;
        const char *k = npz_key(norm, kb, sizeof kb);
        if (!k || archive_entry_filetype(e) != AE_IFREG)
            continue;
        for (int i = 0; i < nkeys; i++)
            if (strcmp(keys[i], k) == 0) {
                s = eng_fail(ENG_ERR_FORMAT, "%s: member '%s' appears twice", who, norm);
                goto out;
            }
        if (nkeys == NPZ_MAX_MEMBERS) {
            s = eng_fail(ENG_ERR_LIMIT, "%s: more than %d arrays", who, NPZ_MAX_MEMBERS);
            goto out;
        }
        char **nk = realloc(keys, (size_t)(nkeys + 1) * sizeof *keys);
        if (!nk || !(nk[nkeys] = strdup(k))) {
            keys = nk ? nk : keys;
            s = eng_fail(ENG_ERR_NOMEM, "%s: out of memory", who);
            goto out;
        }
        keys = nk;
        nkeys++;
    }
    if (r < 0) {
        s = ENG_ERR_FORMAT;
        goto out;
    }
    if ((s = pick_key(keys, nkeys, opts ? opts->images_key : NULL, images_keys, 4, "images", &ik, who)) != ENG_OK ||
        (s = pick_key(keys, nkeys, opts ? opts->labels_key : NULL, labels_keys, 4, "labels", &lk, who)) != ENG_OK)
        goto out;
    if (strcmp(ik, lk) == 0) {
        s = eng_fail(ENG_ERR_ARG, "%s: images and labels are both '%s'", who, ik);
        goto out;
    }
    /* Pass 2: the two arrays. */
    archive_read_free(a);
    a = NULL;
    if ((s = eng_data_archive_open(&a, buf, len, 1, who)) != ENG_OK)
        goto out;
    while ((img == NULL || lab == NULL) && (r = eng_data_archive_next(a, &e, who)) == 1) {
        const char *raw = archive_entry_pathname_utf8(e);
        if (!raw)
            raw = archive_entry_pathname(e);
        if ((s = eng_data_member_name(raw, norm, sizeof norm, who)) != ENG_OK)
            goto out;
        const char *k = npz_key(norm, kb, sizeof kb);
        if (!k || archive_entry_filetype(e) != AE_IFREG)
            continue;
        if (strcmp(k, ik) == 0 && !img)
            s = eng_data_archive_read(a, (uint64_t)max_px * 4 + NPY_MAX_HEADER + 64, &img, &img_len, who, norm);
        else if (strcmp(k, lk) == 0 && !lab)
            s = eng_data_archive_read(a, (uint64_t)max_px * 8 + NPY_MAX_HEADER + 64, &lab, &lab_len, who, norm);
        if (s != ENG_OK)
            goto out;
    }
    if (!img || !lab) {
        s = r < 0 ? ENG_ERR_FORMAT : eng_fail(ENG_ERR_FORMAT, "%s: the archive changed between reads", who);
        goto out;
    }
    char iname[700], lname[700];
    snprintf(iname, sizeof iname, "%.500s member '%.100s.npy'", name, ik);
    snprintf(lname, sizeof lname, "%.500s member '%.100s.npy'", name, lk);
    s = npy_build(d, img, img_len, iname, lab, lab_len, lname, opts);
out:
    if (a)
        archive_read_free(a);
    for (int i = 0; i < nkeys; i++)
        free(keys[i]);
    free(keys);
    free(img);
    free(lab);
    eng_data_utf8_end(loc);
    if (s != ENG_OK)
        memset(d, 0, sizeof *d);
    return s;
}

eng_status eng_dataset_read_npz_mem(eng_dataset *d, const void *buf, size_t len, const eng_data_opts *opts)
{
    return npz_core(d, buf, len, ENG_DATA_MEM_NAME, opts);
}

eng_status eng_dataset_read_npz(eng_dataset *d, const char *path, const eng_data_opts *opts)
{
    memset(d, 0, sizeof *d);
    eng_data_map m;
    eng_status s = eng_data_map_file(&m, path, "npz");
    if (s == ENG_OK)
        s = npz_core(d, m.p, m.len, path, opts);
    eng_data_unmap(&m);
    return s;
}
