/* ImageFolder archives (.tar, .tar.gz, .zip through libarchive): class folders of PNG and JPEG
 * images. A first pass checks every member's name, type and declared image size against the
 * limits; only then does a second pass decode, straight into the dataset's final storage. */
#include <archive.h>
#include <archive_entry.h>
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data_internal.h"
#include "png.h"

/* ---- libarchive helpers, shared with the .npz reader ---- */

eng_status eng_data_archive_open(struct archive **out, const void *buf, size_t len, int zip_only, const char *who)
{
    static const uint8_t none[1];
    *out = NULL;
    struct archive *a = archive_read_new();
    if (!a)
        return eng_fail(ENG_ERR_NOMEM, "%s: out of memory for libarchive", who);
    /* Only the formats the service takes: fewer parsers facing hostile input. */
    archive_read_support_format_zip(a);
    if (!zip_only) {
        archive_read_support_format_tar(a);
        archive_read_support_filter_gzip(a);
    }
    if (archive_read_open_memory(a, buf && len ? buf : none, buf ? len : 0) != ARCHIVE_OK) {
        eng_status s = eng_fail(ENG_ERR_FORMAT, "%s: not a %s archive (%s)", who, zip_only ? "zip" : "tar, tar.gz or zip",
                                archive_error_string(a) ? archive_error_string(a) : "unrecognised");
        archive_read_free(a);
        return s;
    }
    *out = a;
    return ENG_OK;
}

typedef struct utf8_saved {
    locale_t utf8, old;
} utf8_saved;

void *eng_data_utf8_begin(void)
{
    utf8_saved *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->utf8 = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
    if (s->utf8)
        s->old = uselocale(s->utf8);
    return s;
}

void eng_data_utf8_end(void *saved)
{
    utf8_saved *s = saved;
    if (!s)
        return;
    if (s->utf8) {
        uselocale(s->old);
        freelocale(s->utf8);
    }
    free(s);
}

int eng_data_archive_next(struct archive *a, struct archive_entry **e, const char *who)
{
    int r = archive_read_next_header(a, e);
    if (r == ARCHIVE_EOF)
        return 0;
    /* A warning (an odd pax attribute, a name in another charset) leaves the member usable. */
    if (r == ARCHIVE_OK || r == ARCHIVE_WARN)
        return 1;
    eng_fail(ENG_ERR_FORMAT, "%s: damaged archive: %s", who,
             archive_error_string(a) ? archive_error_string(a) : "unreadable member header");
    return -1;
}

eng_status eng_data_archive_read(struct archive *a, uint64_t limit, uint8_t **out, size_t *len, const char *who,
                                 const char *member)
{
    *out = NULL;
    *len = 0;
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    if (!buf)
        return eng_fail(ENG_ERR_NOMEM, "%s: out of memory", who);
    for (;;) {
        if (n == cap) {
            if (n > limit) {
                free(buf);
                return eng_fail(ENG_ERR_LIMIT, "%s: member '%s' is larger than %llu bytes", who, member,
                                (unsigned long long)limit);
            }
            size_t ncap = cap * 2 > limit + 1 ? (size_t)limit + 1 : cap * 2;
            uint8_t *p = realloc(buf, ncap);
            if (!p) {
                free(buf);
                return eng_fail(ENG_ERR_NOMEM, "%s: out of memory for member '%s'", who, member);
            }
            buf = p;
            cap = ncap;
        }
        la_ssize_t r = archive_read_data(a, buf + n, cap - n);
        if (r < 0) {
            eng_status s = eng_fail(ENG_ERR_FORMAT, "%s: member '%s' is damaged or truncated: %s", who, member,
                                    archive_error_string(a) ? archive_error_string(a) : "read error");
            free(buf);
            return s;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    if (n > limit) {
        free(buf);
        return eng_fail(ENG_ERR_LIMIT, "%s: member '%s' is larger than %llu bytes", who, member,
                        (unsigned long long)limit);
    }
    *out = buf;
    *len = n;
    return ENG_OK;
}

/* ---- ImageFolder ---- */

typedef struct img_ent {
    char *path;     /* normalised, "class/.../file" */
    size_t cls_len; /* bytes of the class folder name at the front of path */
    int32_t cls;
    int w, h, c;
    int64_t ord;    /* position among the archive's regular files */
} img_ent;

typedef struct folder {
    const char *who;
    img_ent *ents;
    int64_t n, cap;
} folder;

static void folder_free(folder *f)
{
    for (int64_t i = 0; i < f->n; i++)
        free(f->ents[i].path);
    free(f->ents);
    memset(f, 0, sizeof *f);
}

static int cmp_class(const img_ent *a, const img_ent *b)
{
    size_t k = a->cls_len < b->cls_len ? a->cls_len : b->cls_len;
    int r = memcmp(a->path, b->path, k);
    return r ? r : (a->cls_len > b->cls_len) - (a->cls_len < b->cls_len);
}

/* Class folder first, then the whole path: classes in sorted order, files sorted within each. */
static int cmp_ent(const void *pa, const void *pb)
{
    const img_ent *a = pa, *b = pb;
    int r = cmp_class(a, b);
    return r ? r : strcmp(a->path, b->path);
}

static const char *type_name(unsigned t)
{
    switch (t) {
    case AE_IFLNK:
        return "a symbolic link";
    case AE_IFCHR:
        return "a character device";
    case AE_IFBLK:
        return "a block device";
    case AE_IFIFO:
        return "a FIFO";
    case AE_IFSOCK:
        return "a socket";
    default:
        return "not a regular file";
    }
}

/* The member's usable name, or an error for links and odd types. *is_file: 0 for a directory. */
static eng_status member(struct archive_entry *e, char *norm, size_t cap, int *is_file, const char *who)
{
    const char *raw = archive_entry_pathname_utf8(e);
    if (!raw)
        raw = archive_entry_pathname(e);
    eng_status s = eng_data_member_name(raw, norm, cap, who);
    if (s != ENG_OK)
        return s;
    unsigned t = archive_entry_filetype(e);
    *is_file = t == AE_IFREG;
    /* A tar hard link has no file type of its own, so it is looked for first. */
    if (archive_entry_hardlink(e))
        return eng_fail(ENG_ERR_FORMAT, "%s: member '%s' is a hard link; only regular files and folders are allowed",
                        who, norm);
    if (t == AE_IFDIR)
        return ENG_OK;
    if (t != AE_IFREG)
        return eng_fail(ENG_ERR_FORMAT, "%s: member '%s' is %s; only regular files and folders are allowed", who, norm,
                        type_name(t));
    if (!strchr(norm, '/'))
        return eng_fail(ENG_ERR_FORMAT, "%s: file '%s' is not inside a class folder", who, norm);
    return ENG_OK;
}

/* Pass 1: every member checked, every image's declared size summed against the budget. */
static eng_status scan(folder *f, const void *buf, size_t len, int64_t max_px)
{
    struct archive *a = NULL;
    struct archive_entry *e;
    uint8_t *data = NULL;
    size_t dlen;
    char norm[4096];
    int64_t declared = 0;
    int r;
    eng_status s = eng_data_archive_open(&a, buf, len, 0, f->who);
    if (s != ENG_OK)
        return s;
    while ((r = eng_data_archive_next(a, &e, f->who)) == 1) {
        int is_file;
        if ((s = member(e, norm, sizeof norm, &is_file, f->who)) != ENG_OK)
            goto out;
        if (!is_file)
            continue;
        if (f->n == ENG_DATA_MAX_FILES) {
            s = eng_fail(ENG_ERR_LIMIT, "%s: more than %d files", f->who, ENG_DATA_MAX_FILES);
            goto out;
        }
        if ((s = eng_data_archive_read(a, ENG_DATA_MAX_IMAGE_BYTES, &data, &dlen, f->who, norm)) != ENG_OK)
            goto out;
        if (eng_data_img_sniff(data, dlen) == ENG_IMG_NONE) {
            s = eng_fail(ENG_ERR_FORMAT, "%s: member '%s' (%zu bytes) is not a PNG or JPEG image", f->who, norm, dlen);
            goto out;
        }
        char who[4400];
        snprintf(who, sizeof who, "%s: member '%s'", f->who, norm);
        int w, h, c;
        if ((s = eng_data_img_probe(data, dlen, &w, &h, &c, who)) != ENG_OK)
            goto out;
        free(data);
        data = NULL;
        int64_t px = (int64_t)w * h;
        if (px > ENG_PNG_MAX_PIXELS || px * c > max_px - declared) {
            s = eng_fail(ENG_ERR_LIMIT,
                         "%s is %dx%d x %d; with the %lld images before it that is over the limit of %lld pixels",
                         who, w, h, c, (long long)f->n, (long long)(px > ENG_PNG_MAX_PIXELS ? ENG_PNG_MAX_PIXELS : max_px));
            goto out;
        }
        declared += px * c;
        if (f->n == f->cap) {
            int64_t ncap = f->cap ? f->cap * 2 : 256;
            img_ent *p = realloc(f->ents, (size_t)ncap * sizeof *p);
            if (!p) {
                s = eng_fail(ENG_ERR_NOMEM, "%s: out of memory", f->who);
                goto out;
            }
            f->ents = p;
            f->cap = ncap;
        }
        img_ent *en = &f->ents[f->n];
        if (!(en->path = strdup(norm))) {
            s = eng_fail(ENG_ERR_NOMEM, "%s: out of memory", f->who);
            goto out;
        }
        en->cls_len = (size_t)(strchr(norm, '/') - norm);
        en->w = w;
        en->h = h;
        en->c = c;
        en->ord = f->n;
        f->n++;
    }
    if (r < 0)
        s = ENG_ERR_FORMAT;
out:
    free(data);
    archive_read_free(a);
    return s;
}

/* One decoded image (HWC, c channels, w x h) into its slot (CHW, C x H x W), through float planes
 * when it must be resized. */
static eng_status place(uint8_t *dst, int C, int H, int W, const uint8_t *pix, int c, int h, int w, const char *who)
{
    const int64_t plane = (int64_t)h * w;
    if (H == h && W == w) {
        for (int64_t p = 0; p < plane; p++) {
            const uint8_t *q = pix + p * c;
            if (C == c) {
                for (int ch = 0; ch < C; ch++)
                    dst[ch * plane + p] = q[ch];
            } else if (C == 3) {
                dst[p] = dst[plane + p] = dst[2 * plane + p] = q[0];
            } else {
                dst[p] = (uint8_t)((299 * q[0] + 587 * q[1] + 114 * q[2] + 500) / 1000);
            }
        }
        return ENG_OK;
    }
    const int64_t oplane = (int64_t)H * W;
    float *src = malloc((size_t)plane * sizeof(float));
    float *out = malloc((size_t)oplane * sizeof(float));
    eng_data_lerp *th = malloc((size_t)(H + W) * sizeof *th);
    if (!src || !out || !th) {
        free(src);
        free(out);
        free(th);
        return eng_fail(ENG_ERR_NOMEM, "%s: out of memory to resize %dx%d to %dx%d", who, w, h, W, H);
    }
    eng_data_lerp *tw = th + H;
    eng_data_lerp_table(th, H, h);
    eng_data_lerp_table(tw, W, w);
    /* Channel conversion before resizing: a gray source is resized once and copied. */
    const int planes = C < c ? C : c;
    for (int ch = 0; ch < planes; ch++) {
        for (int64_t p = 0; p < plane; p++) {
            const uint8_t *q = pix + p * c;
            src[p] = C == 1 && c == 3 ? (float)((299 * q[0] + 587 * q[1] + 114 * q[2] + 500) / 1000) : (float)q[ch];
        }
        eng_data_resize_plane(out, H, W, src, w, th, tw);
        for (int64_t p = 0; p < oplane; p++) {
            float v = floorf(out[p] + 0.5f);
            dst[ch * oplane + p] = (uint8_t)(v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v);
        }
    }
    if (C == 3 && c == 1) {
        memcpy(dst + oplane, dst, (size_t)oplane);
        memcpy(dst + 2 * oplane, dst, (size_t)oplane);
    }
    free(src);
    free(out);
    free(th);
    return ENG_OK;
}

/* Pass 2: decode every file into the slot pass 1 gave it. */
static eng_status decode_all(folder *f, const int64_t *slot_of, eng_dataset *t, const void *buf, size_t len)
{
    struct archive *a = NULL;
    struct archive_entry *e;
    uint8_t *data = NULL, *pix = NULL;
    size_t dlen;
    char norm[4096];
    int64_t k = 0;
    int r;
    const int64_t per = (int64_t)t->c * t->h * t->w;
    eng_status s = eng_data_archive_open(&a, buf, len, 0, f->who);
    if (s != ENG_OK)
        return s;
    while ((r = eng_data_archive_next(a, &e, f->who)) == 1) {
        int is_file;
        if ((s = member(e, norm, sizeof norm, &is_file, f->who)) != ENG_OK)
            goto out;
        if (!is_file)
            continue;
        if (k >= f->n) {
            s = eng_fail(ENG_ERR_FORMAT, "%s: the archive changed between reads", f->who);
            goto out;
        }
        const img_ent *en = &f->ents[slot_of[k]];
        if (strcmp(en->path, norm) != 0) {
            s = eng_fail(ENG_ERR_FORMAT, "%s: the archive changed between reads ('%s')", f->who, norm);
            goto out;
        }
        if ((s = eng_data_archive_read(a, ENG_DATA_MAX_IMAGE_BYTES, &data, &dlen, f->who, norm)) != ENG_OK)
            goto out;
        char who[4400];
        snprintf(who, sizeof who, "%s: member '%s'", f->who, norm);
        int w, h, c;
        if ((s = eng_image_decode(data, dlen, (int64_t)en->w * en->h, &pix, &w, &h, &c)) != ENG_OK) {
            char why[512];
            snprintf(why, sizeof why, "%s", eng_last_error());
            s = eng_fail(s, "%s: %s", who, why);
            goto out;
        }
        if (w != en->w || h != en->h || c != en->c) {
            s = eng_fail(ENG_ERR_FORMAT, "%s decodes to %dx%d x %d, not the %dx%d x %d its header declares", who, w, h,
                         c, en->w, en->h, en->c);
            goto out;
        }
        if ((s = place(t->pixels + slot_of[k] * per, t->c, t->h, t->w, pix, c, h, w, who)) != ENG_OK)
            goto out;
        free(data);
        free(pix);
        data = pix = NULL;
        k++;
    }
    if (r < 0)
        s = ENG_ERR_FORMAT;
    else if (k != f->n)
        s = eng_fail(ENG_ERR_FORMAT, "%s: the archive changed between reads", f->who);
out:
    free(data);
    free(pix);
    archive_read_free(a);
    return s;
}

static eng_status archive_core(eng_dataset *d, const void *buf, size_t len, const char *name,
                               const eng_data_opts *opts)
{
    memset(d, 0, sizeof *d);
    char who[600];
    snprintf(who, sizeof who, "archive: %.500s", name);
    eng_dataset t = {0};
    folder f = {.who = who};
    int64_t *slot_of = NULL;
    const int64_t max_px = eng_data_max_pixels(opts);
    const int rh = opts ? opts->resize_h : 0, rw = opts ? opts->resize_w : 0, want_c = opts ? opts->channels : 0;
    eng_status s = ENG_OK;
    void *loc = eng_data_utf8_begin();
    if (rh < 0 || rw < 0 || (rh == 0) != (rw == 0) || rh > ENG_DATA_MAX_SIDE || rw > ENG_DATA_MAX_SIDE ||
        (want_c != 0 && want_c != 1 && want_c != 3)) {
        s = eng_fail(ENG_ERR_ARG, "%s: resize %dx%d and channels %d: give both sides (1..%d) or neither, channels 0, 1 "
                     "or 3", who, rw, rh, want_c, ENG_DATA_MAX_SIDE);
        goto out;
    }
    if ((s = scan(&f, buf, len, max_px)) != ENG_OK)
        goto out;
    if (f.n == 0) {
        s = eng_fail(ENG_ERR_FORMAT, "%s: no images", who);
        goto out;
    }
    qsort(f.ents, (size_t)f.n, sizeof *f.ents, cmp_ent);
    int any_colour = 0;
    int32_t ncls = 0;
    for (int64_t i = 0; i < f.n; i++) {
        if (i > 0 && strcmp(f.ents[i].path, f.ents[i - 1].path) == 0) {
            s = eng_fail(ENG_ERR_FORMAT, "%s: '%s' appears twice", who, f.ents[i].path);
            goto out;
        }
        if (i > 0 && cmp_class(&f.ents[i], &f.ents[i - 1]) != 0)
            ncls++;
        f.ents[i].cls = ncls;
        any_colour |= f.ents[i].c == 3;
    }
    ncls++;
    if (ncls < 2) {
        s = eng_fail(ENG_ERR_FORMAT,
                     "%s: all %lld images are in one class folder, '%.*s'; a classification dataset needs at least 2 "
                     "(class folders go at the top of the archive)",
                     who, (long long)f.n, (int)f.ents[0].cls_len, f.ents[0].path);
        goto out;
    }
    if (ncls > ENG_DATA_MAX_CLASSES) {
        s = eng_fail(ENG_ERR_LIMIT, "%s: %d class folders, more than %d", who, ncls, ENG_DATA_MAX_CLASSES);
        goto out;
    }
    int H = rh, W = rw;
    if (!rh) {
        /* Without a resize, every image must have the size of the first. */
        const img_ent *a = &f.ents[0];
        for (int64_t i = 1; i < f.n; i++) {
            const img_ent *b = &f.ents[i];
            if (b->w != a->w || b->h != a->h) {
                s = eng_fail(ENG_ERR_FORMAT,
                             "%s: images differ in size: '%s' is %dx%d but '%s' is %dx%d; ask for a resize", who,
                             a->path, a->w, a->h, b->path, b->w, b->h);
                goto out;
            }
        }
        H = a->h;
        W = a->w;
        if (H > ENG_DATA_MAX_SIDE || W > ENG_DATA_MAX_SIDE) {
            s = eng_fail(ENG_ERR_LIMIT, "%s: images of %dx%d are over %d a side", who, W, H, ENG_DATA_MAX_SIDE);
            goto out;
        }
    }
    const int C = want_c ? want_c : any_colour ? 3 : 1;
    if (f.n * C > max_px / ((int64_t)H * W)) {
        s = eng_fail(ENG_ERR_LIMIT, "%s: %lld images of %dx%d x %d are over the limit of %lld pixels", who,
                     (long long)f.n, W, H, C, (long long)max_px);
        goto out;
    }
    t.n = f.n;
    t.c = C;
    t.h = H;
    t.w = W;
    t.type = ENG_PIX_U8;
    t.num_classes = ncls;
    t.pixels = malloc((size_t)(f.n * C * H * W));
    t.labels = malloc((size_t)f.n * sizeof(int32_t));
    t.class_names = calloc((size_t)ncls, sizeof(char *));
    slot_of = malloc((size_t)f.n * sizeof *slot_of);
    if (!t.pixels || !t.labels || !t.class_names || !slot_of) {
        s = eng_fail(ENG_ERR_NOMEM, "%s: out of memory for %lld images of %dx%d x %d", who, (long long)f.n, W, H, C);
        goto out;
    }
    for (int64_t i = 0; i < f.n; i++) {
        const img_ent *en = &f.ents[i];
        slot_of[en->ord] = i;
        t.labels[i] = en->cls;
        if (!t.class_names[en->cls] && !(t.class_names[en->cls] = strndup(en->path, en->cls_len))) {
            s = eng_fail(ENG_ERR_NOMEM, "%s: out of memory", who);
            goto out;
        }
    }
    if ((s = decode_all(&f, slot_of, &t, buf, len)) != ENG_OK || (s = eng_data_finish(&t, who)) != ENG_OK)
        goto out;
    *d = t;
    memset(&t, 0, sizeof t);
out:
    free(slot_of);
    folder_free(&f);
    eng_dataset_cleanup(&t);
    eng_data_utf8_end(loc);
    return s;
}

eng_status eng_dataset_read_archive_mem(eng_dataset *d, const void *buf, size_t len, const eng_data_opts *opts)
{
    return archive_core(d, buf, len, ENG_DATA_MEM_NAME, opts);
}

eng_status eng_dataset_read_archive(eng_dataset *d, const char *path, const eng_data_opts *opts)
{
    memset(d, 0, sizeof *d);
    eng_data_map m;
    eng_status s = eng_data_map_file(&m, path, "archive");
    if (s == ENG_OK)
        s = archive_core(d, m.p, m.len, path, opts);
    eng_data_unmap(&m);
    return s;
}
