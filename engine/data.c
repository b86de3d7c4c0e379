/* The dataset container and what the readers share: gzip-or-plain byte sources, file mapping,
 * the common final checks, archive member names, and format detection for uploads. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data_internal.h"

void eng_dataset_cleanup(eng_dataset *d)
{
    if (!d)
        return;
    if (d->class_names)
        for (int i = 0; i < d->num_classes; i++)
            free(d->class_names[i]);
    free(d->class_names);
    free(d->pixels);
    free(d->fpixels);
    free(d->labels);
    memset(d, 0, sizeof *d);
}

void eng_dataset_class_counts(const eng_dataset *d, int64_t *counts)
{
    memset(counts, 0, (size_t)d->num_classes * sizeof *counts);
    for (int64_t i = 0; i < d->n; i++)
        if (d->labels[i] >= 0 && d->labels[i] < d->num_classes)
            counts[d->labels[i]]++;
}

int64_t eng_data_max_pixels(const eng_data_opts *opts)
{
    return opts && opts->max_pixels > 0 ? opts->max_pixels : ENG_DATA_MAX_PIXELS;
}

eng_status eng_data_finish(eng_dataset *d, const char *who)
{
    if (d->n < 1)
        return eng_fail(ENG_ERR_FORMAT, "%s: no examples", who);
    int32_t max = -1, first = d->labels[0];
    int distinct = 0;
    uint8_t *seen = calloc(ENG_DATA_MAX_CLASSES, 1);
    if (!seen)
        return eng_fail(ENG_ERR_NOMEM, "%s: out of memory", who);
    for (int64_t i = 0; i < d->n; i++) {
        int32_t l = d->labels[i];
        if (l < 0 || l >= ENG_DATA_MAX_CLASSES) {
            free(seen);
            return eng_fail(ENG_ERR_FORMAT, "%s: example %lld has label %d, outside 0..%d", who, (long long)i, l,
                            ENG_DATA_MAX_CLASSES - 1);
        }
        if (!seen[l]) {
            seen[l] = 1;
            distinct++;
        }
        if (l > max)
            max = l;
    }
    free(seen);
    if (distinct < 2)
        return eng_fail(ENG_ERR_FORMAT,
                        "%s: all %lld examples have label %d; a classification dataset needs at least 2 classes",
                        who, (long long)d->n, first);
    d->num_classes = max + 1;
    return ENG_OK;
}

/* ---- byte sources ---- */

static int gz_magic(const uint8_t *p, size_t n) { return n >= 2 && p[0] == 0x1f && p[1] == 0x8b; }

/* Hands zlib the next slice of input (avail_in is 32 bits). */
static void gz_feed(eng_data_src *s)
{
    size_t pos = (size_t)(s->zs.next_in - s->in);
    size_t left = s->in_len - pos;
    s->zs.avail_in = (uInt)(left > (1u << 30) ? (1u << 30) : left);
}

eng_status eng_data_src_open(eng_data_src *s, const void *buf, size_t len, const char *name)
{
    memset(s, 0, sizeof *s);
    s->in = buf;
    s->in_len = buf ? len : 0;
    s->name = name;
    if (!gz_magic(s->in, s->in_len))
        return ENG_OK;
    s->gz = 1;
    /* 15 + 16: gzip framing only, so that a zlib or raw stream is not taken for one. */
    if (inflateInit2(&s->zs, 15 + 16) != Z_OK)
        return eng_fail(ENG_ERR_NOMEM, "%s: cannot start zlib", name);
    s->live = 1;
    s->zs.next_in = (Bytef *)s->in;
    gz_feed(s);
    return ENG_OK;
}

void eng_data_src_close(eng_data_src *s)
{
    if (s->live)
        inflateEnd(&s->zs);
    s->live = 0;
}

eng_status eng_data_src_read(eng_data_src *s, void *dst, size_t n, size_t *got)
{
    *got = 0;
    if (!s->gz) {
        size_t k = s->in_len - s->pos < n ? s->in_len - s->pos : n;
        if (k)
            memcpy(dst, s->in + s->pos, k);
        s->pos += k;
        s->out += k;
        *got = k;
        return ENG_OK;
    }
    uint8_t *o = dst;
    size_t done = 0;
    while (done < n && !s->ended) {
        if (s->zs.avail_in == 0)
            gz_feed(s);
        size_t want = n - done > (1u << 30) ? (1u << 30) : n - done;
        s->zs.next_out = o + done;
        s->zs.avail_out = (uInt)want;
        int r = inflate(&s->zs, Z_NO_FLUSH);
        size_t k = want - s->zs.avail_out;
        done += k;
        s->out += k;
        size_t pos = (size_t)(s->zs.next_in - s->in);
        if (r == Z_STREAM_END) {
            /* gzip allows members one after another; anything else after one is damage. */
            if (gz_magic(s->in + pos, s->in_len - pos)) {
                inflateReset(&s->zs);
                gz_feed(s);
                continue;
            }
            if (pos < s->in_len) {
                *got = done;
                return eng_fail(ENG_ERR_FORMAT, "%s: %zu bytes of garbage after the gzip data", s->name,
                                s->in_len - pos);
            }
            s->ended = 1;
        } else if (r == Z_BUF_ERROR || (r == Z_OK && k == 0 && s->zs.avail_in == 0 && pos == s->in_len)) {
            *got = done;
            return eng_fail(ENG_ERR_FORMAT, "%s: the gzip data is truncated (it stops after %llu uncompressed bytes)",
                            s->name, (unsigned long long)s->out);
        } else if (r == Z_MEM_ERROR) {
            *got = done;
            return eng_fail(ENG_ERR_NOMEM, "%s: out of memory in zlib", s->name);
        } else if (r != Z_OK) {
            *got = done;
            return eng_fail(ENG_ERR_FORMAT, "%s: corrupt gzip data after %llu uncompressed bytes (%s)", s->name,
                            (unsigned long long)s->out, s->zs.msg ? s->zs.msg : "zlib error");
        }
    }
    *got = done;
    return ENG_OK;
}

eng_status eng_data_src_need(eng_data_src *s, void *dst, size_t n, const char *what)
{
    size_t got;
    uint64_t at = s->out;
    eng_status st = eng_data_src_read(s, dst, n, &got);
    if (st != ENG_OK)
        return st;
    if (got < n)
        return eng_fail(ENG_ERR_FORMAT, "%s: truncated in %s: %zu bytes needed at offset %llu, %zu there", s->name,
                        what, n, (unsigned long long)at, got);
    return ENG_OK;
}

eng_status eng_data_src_end(eng_data_src *s)
{
    uint8_t b[256];
    size_t got;
    uint64_t at = s->out;
    eng_status st = eng_data_src_read(s, b, sizeof b, &got);
    if (st != ENG_OK)
        return st;
    if (got > 0)
        return eng_fail(ENG_ERR_FORMAT, "%s: data goes on past the %llu bytes the header declares", s->name,
                        (unsigned long long)at);
    return ENG_OK;
}

uint64_t eng_data_src_bound(const eng_data_src *s)
{
    if (!s->gz)
        return s->in_len - s->pos;
    if (s->ended)
        return 0;
    size_t pos = (size_t)(s->zs.next_in - s->in);
    /* What zlib holds back is at most its 32 KiB window. */
    return (uint64_t)(s->in_len - pos) * ENG_DATA_GZ_RATIO + 65536;
}

/* ---- files ---- */

eng_status eng_data_map_file(eng_data_map *m, const char *path, const char *who)
{
    memset(m, 0, sizeof *m);
    if (!path || !*path)
        return eng_fail(ENG_ERR_ARG, "%s: no file name", who);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return eng_fail(errno == ENOENT ? ENG_ERR_NOT_FOUND : ENG_ERR_IO, "%s: cannot open %s: %s", who, path,
                        strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return eng_fail(ENG_ERR_IO, "%s: cannot stat %s: %s", who, path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return eng_fail(ENG_ERR_IO, "%s: %s is not a regular file", who, path);
    }
    if (st.st_size > 0) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            return eng_fail(e == ENOMEM ? ENG_ERR_NOMEM : ENG_ERR_IO, "%s: cannot map %s (%lld bytes): %s", who, path,
                            (long long)st.st_size, strerror(e));
        }
        /* Readers go through the file once, front to back. */
        (void)madvise(p, (size_t)st.st_size, MADV_SEQUENTIAL);
        m->p = p;
        m->len = (size_t)st.st_size;
    }
    close(fd);
    return ENG_OK;
}

void eng_data_unmap(eng_data_map *m)
{
    if (m && m->p)
        munmap((void *)m->p, m->len);
    if (m)
        memset(m, 0, sizeof *m);
}

/* ---- archive member names ---- */

eng_status eng_data_member_name(const char *name, char *out, size_t cap, const char *who)
{
    if (!name || !*name)
        return eng_fail(ENG_ERR_FORMAT, "%s: a member has an empty name", who);
    if (name[0] == '/' || name[0] == '\\')
        return eng_fail(ENG_ERR_FORMAT, "%s: member '%.200s' has an absolute path", who, name);
    if (((name[0] | 0x20) >= 'a' && (name[0] | 0x20) <= 'z') && name[1] == ':')
        return eng_fail(ENG_ERR_FORMAT, "%s: member '%.200s' has a drive letter", who, name);
    size_t o = 0;
    const char *p = name;
    while (*p) {
        /* One component, up to a separator; backslashes count as separators so that a name
         * meant for Windows cannot climb out either. */
        const char *e = p;
        while (*e && *e != '/' && *e != '\\') {
            if ((unsigned char)*e < 0x20 || *e == 0x7f)
                return eng_fail(ENG_ERR_FORMAT, "%s: member '%.200s' has a control character in its name", who, name);
            e++;
        }
        size_t k = (size_t)(e - p);
        if (k == 2 && p[0] == '.' && p[1] == '.')
            return eng_fail(ENG_ERR_FORMAT, "%s: member '%.200s' has a '..' component (path traversal)", who, name);
        if (k > 0 && !(k == 1 && p[0] == '.')) {
            if (o + (o ? 1 : 0) + k + 1 > cap)
                return eng_fail(ENG_ERR_FORMAT, "%s: member name '%.200s...' is longer than %zu bytes", who, name,
                                cap - 1);
            if (o)
                out[o++] = '/';
            memcpy(out + o, p, k);
            o += k;
        }
        p = *e ? e + 1 : e;
    }
    out[o] = '\0';
    return ENG_OK;
}

/* ---- format detection ---- */

const char *eng_data_format_name(eng_data_format f)
{
    switch (f) {
    case ENG_FMT_IDX_IMAGES:
        return "idx-images";
    case ENG_FMT_IDX_LABELS:
        return "idx-labels";
    case ENG_FMT_CIFAR10:
        return "cifar10";
    case ENG_FMT_CIFAR100:
        return "cifar100";
    case ENG_FMT_NPY:
        return "npy";
    case ENG_FMT_NPZ:
        return "npz";
    case ENG_FMT_TAR:
        return "tar";
    case ENG_FMT_TAR_GZ:
        return "tar.gz";
    case ENG_FMT_ZIP:
        return "zip";
    default:
        return "unknown";
    }
}

static int ends_with(const char *s, const char *suffix)
{
    if (!s)
        return 0;
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcasecmp(s + n - k, suffix) == 0;
}

/* Label bytes where records start must be in range; at least one record must be visible. */
static eng_data_format cifar_guess(const uint8_t *p, size_t n, const char *filename)
{
    if (n == 0)
        return ENG_FMT_UNKNOWN;
    int ok10 = 1, ok100 = n >= 2;
    for (size_t at = 0; at < n; at += 3073)
        ok10 &= p[at] < 10;
    for (size_t at = 0; at + 1 < n; at += 3074)
        ok100 &= p[at] < 20 && p[at + 1] < 100;
    const char *base = filename ? strrchr(filename, '/') : NULL;
    base = base ? base + 1 : filename;
    if (base && strstr(base, "100") && ok100)
        return ENG_FMT_CIFAR100;
    if (ok10)
        return ENG_FMT_CIFAR10;
    return ok100 ? ENG_FMT_CIFAR100 : ENG_FMT_UNKNOWN;
}

static int tar_header(const uint8_t *p, size_t n)
{
    if (n < 512)
        return 0;
    if (memcmp(p + 257, "ustar", 5) == 0)
        return 1;
    /* A pre-POSIX header has no magic, only its checksum (field at 148, counted as spaces). */
    unsigned sum = 0, want = 0;
    int digits = 0;
    for (int i = 0; i < 512; i++)
        sum += (i >= 148 && i < 156) ? ' ' : p[i];
    for (int i = 148; i < 156; i++) {
        if (p[i] >= '0' && p[i] <= '7') {
            want = want * 8 + (unsigned)(p[i] - '0');
            digits++;
        } else if (p[i] != ' ' && p[i] != 0) {
            return 0;
        }
    }
    return digits > 0 && sum == want && p[0] != 0;
}

static eng_data_format detect_plain(const uint8_t *p, size_t n, const char *filename, int gz)
{
    if (n >= 4 && p[0] == 0 && p[1] == 0 && p[2] == 0x08 && (p[3] == 3 || p[3] == 1))
        return p[3] == 3 ? ENG_FMT_IDX_IMAGES : ENG_FMT_IDX_LABELS;
    if (n >= 6 && memcmp(p, "\x93NUMPY", 6) == 0)
        return gz ? ENG_FMT_UNKNOWN : ENG_FMT_NPY;
    if (!gz && n >= 4 && p[0] == 'P' && p[1] == 'K' && ((p[2] == 3 && p[3] == 4) || (p[2] == 5 && p[3] == 6))) {
        if (ends_with(filename, ".npz"))
            return ENG_FMT_NPZ;
        /* np.savez writes members named "<key>.npy"; the first local header shows one. */
        if (p[2] == 3 && n >= 30) {
            size_t nl = (size_t)p[26] | (size_t)p[27] << 8;
            if (nl >= 4 && 30 + nl <= n && memcmp(p + 30 + nl - 4, ".npy", 4) == 0)
                return ENG_FMT_NPZ;
        }
        return ENG_FMT_ZIP;
    }
    if (tar_header(p, n) && (memcmp(p + 257, "ustar", 5) == 0 || ends_with(filename, gz ? ".tar.gz" : ".tar") ||
                             (gz && ends_with(filename, ".tgz"))))
        return gz ? ENG_FMT_TAR_GZ : ENG_FMT_TAR;
    if (ends_with(filename, gz ? ".bin.gz" : ".bin"))
        return cifar_guess(p, n, filename);
    return ENG_FMT_UNKNOWN;
}

eng_data_format eng_dataset_detect(const void *head, size_t len, const char *filename)
{
    const uint8_t *p = head;
    if (!p)
        return ENG_FMT_UNKNOWN;
    if (!gz_magic(p, len))
        return detect_plain(p, len, filename, 0);
    /* Look inside: as much of the start as the head holds, up to a few CIFAR records. */
    enum { PEEK = 5 * 3074 };
    uint8_t *out = malloc(PEEK);
    if (!out)
        return ENG_FMT_UNKNOWN;
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    size_t got = 0;
    if (inflateInit2(&zs, 15 + 16) == Z_OK) {
        zs.next_in = (Bytef *)p;
        zs.avail_in = (uInt)(len > (1u << 30) ? (1u << 30) : len);
        zs.next_out = out;
        zs.avail_out = PEEK;
        (void)inflate(&zs, Z_SYNC_FLUSH);
        got = PEEK - zs.avail_out;
        inflateEnd(&zs);
    }
    eng_data_format f = detect_plain(out, got, filename, 1);
    free(out);
    if (f == ENG_FMT_UNKNOWN && (ends_with(filename, ".tar.gz") || ends_with(filename, ".tgz")))
        f = ENG_FMT_TAR_GZ;
    return f;
}

eng_status eng_dataset_read_file(eng_dataset *d, eng_data_format fmt, const char *path, const char *labels_path,
                                 const eng_data_opts *opts)
{
    eng_data_opts o = opts ? *opts : (eng_data_opts){0};
    switch (fmt) {
    case ENG_FMT_IDX_IMAGES:
        return eng_dataset_read_idx(d, path, labels_path, &o);
    case ENG_FMT_CIFAR10:
    case ENG_FMT_CIFAR100:
        if (o.cifar == ENG_CIFAR_AUTO)
            o.cifar = fmt == ENG_FMT_CIFAR10 ? ENG_CIFAR_10 : ENG_CIFAR_100;
        return eng_dataset_read_cifar(d, path, &o);
    case ENG_FMT_NPY:
        return eng_dataset_read_npy(d, path, labels_path, &o);
    case ENG_FMT_NPZ:
        return eng_dataset_read_npz(d, path, &o);
    case ENG_FMT_TAR:
    case ENG_FMT_TAR_GZ:
    case ENG_FMT_ZIP:
        return eng_dataset_read_archive(d, path, &o);
    default:
        if (d)
            memset(d, 0, sizeof *d);
        return eng_fail(ENG_ERR_ARG, "dataset: cannot read %s as '%s'", path ? path : "(null)",
                        eng_data_format_name(fmt));
    }
}
