/* The zip container of torch.save (>= 1.6): a read-only directory over a mapped file. Archives
 * come from users, so every offset and size is checked against the file before it is used,
 * and an entry name that climbs out of the archive refuses the whole file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "pt_internal.h"

#define ZIP_EOCD_SIG 0x06054b50u
#define ZIP64_EOCD_SIG 0x06064b50u
#define ZIP64_LOC_SIG 0x07064b50u
#define ZIP_CDIR_SIG 0x02014b50u
#define ZIP_LOCAL_SIG 0x04034b50u
#define ZIP_EOCD_LEN 22
#define ZIP64_LOC_LEN 20
#define ZIP64_EOCD_LEN 56
#define ZIP_CDIR_LEN 46
#define ZIP_LOCAL_LEN 30
#define ZIP_MAX_NAME 4096
/* DEFLATE cannot expand more than about 1032:1; a larger declared size is a lie. */
#define ZIP_MAX_RATIO 1032

static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t le32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }

void pt_zip_cleanup(pt_zip *z)
{
    if (!z)
        return;
    for (int i = 0; i < z->n; i++)
        free(z->entries[i].name);
    free(z->entries);
    free(z->by_name);
    memset(z, 0, sizeof *z);
}

/* Refuses names that could mean a path outside the archive, or that no torch writer makes. */
static eng_status zip_check_name(const char *name, size_t len)
{
    if (len == 0)
        return eng_fail(ENG_ERR_FORMAT, "zip: an entry has an empty name");
    if (memchr(name, '\0', len) || memchr(name, '\\', len))
        return eng_fail(ENG_ERR_FORMAT, "zip: entry name '%.200s' holds a NUL or a backslash", name);
    if (name[0] == '/')
        return eng_fail(ENG_ERR_FORMAT, "zip: entry name '%.200s' is an absolute path", name);
    for (size_t i = 0; i < len;) {
        size_t j = i;
        while (j < len && name[j] != '/')
            j++;
        if (j - i == 2 && name[i] == '.' && name[i + 1] == '.')
            return eng_fail(ENG_ERR_FORMAT, "zip: entry name '%.200s' climbs out of the archive ('..')", name);
        i = j + 1;
    }
    return ENG_OK;
}

static int zip_cmp_name(const void *a, const void *b)
{
    return strcmp((*(pt_zip_entry *const *)a)->name, (*(pt_zip_entry *const *)b)->name);
}

/* Finds the end of central directory record: the last signature whose comment fits the file. */
static eng_status zip_find_eocd(const uint8_t *buf, uint64_t len, uint64_t *pos)
{
    if (len < ZIP_EOCD_LEN)
        return eng_fail(ENG_ERR_FORMAT, "zip: file of %llu bytes is too short for a directory", (unsigned long long)len);
    uint64_t lo = len > ZIP_EOCD_LEN + 65535 ? len - ZIP_EOCD_LEN - 65535 : 0;
    for (uint64_t p = len - ZIP_EOCD_LEN + 1; p-- > lo;) {
        if (le32(buf + p) == ZIP_EOCD_SIG && p + ZIP_EOCD_LEN + le16(buf + p + 20) <= len) {
            *pos = p;
            return ENG_OK;
        }
    }
    return eng_fail(ENG_ERR_FORMAT, "zip: no end of central directory record (truncated file?)");
}

/* Reads the zip64 extra field of a central directory entry for the fields that were 0xFFFFFFFF. */
static eng_status zip64_extra(const uint8_t *ex, size_t exlen, const char *name, uint64_t *size, uint64_t *comp,
                              uint64_t *off, bool need_size, bool need_comp, bool need_off)
{
    for (size_t i = 0; i + 4 <= exlen;) {
        uint16_t id = le16(ex + i), n = le16(ex + i + 2);
        if (i + 4 + n > exlen)
            break;
        if (id == 0x0001) {
            const uint8_t *q = ex + i + 4, *end = q + n;
            if (need_size) {
                if (q + 8 > end)
                    goto short_field;
                *size = le64(q), q += 8;
            }
            if (need_comp) {
                if (q + 8 > end)
                    goto short_field;
                *comp = le64(q), q += 8;
            }
            if (need_off) {
                if (q + 8 > end)
                    goto short_field;
                *off = le64(q);
            }
            return ENG_OK;
        }
        i += 4 + (size_t)n;
    }
    return eng_fail(ENG_ERR_FORMAT, "zip: entry '%.200s' needs a zip64 extra field and has none", name);
short_field:
    return eng_fail(ENG_ERR_FORMAT, "zip: entry '%.200s' has a zip64 extra field too short for its sizes", name);
}

/* Parses one central directory entry at buf[*p..cd_end) into e and checks it against the file. */
static eng_status zip_parse_entry(const uint8_t *buf, uint64_t *p, uint64_t cd_end, uint64_t cd_off, pt_zip_entry *e)
{
    const uint8_t *h = buf + *p;
    if (*p + ZIP_CDIR_LEN > cd_end || le32(h) != ZIP_CDIR_SIG)
        return eng_fail(ENG_ERR_FORMAT, "zip: central directory entry at byte %llu is damaged", (unsigned long long)*p);
    uint16_t flags = le16(h + 8), nlen = le16(h + 28), xlen = le16(h + 30), clen = le16(h + 32);
    uint64_t comp = le32(h + 20), size = le32(h + 24), off = le32(h + 42);
    if (*p + ZIP_CDIR_LEN + nlen + xlen + clen > cd_end)
        return eng_fail(ENG_ERR_FORMAT, "zip: central directory entry at byte %llu runs past the directory",
                        (unsigned long long)*p);
    if (nlen > ZIP_MAX_NAME)
        return eng_fail(ENG_ERR_LIMIT, "zip: an entry name of %u bytes (at most %d)", nlen, ZIP_MAX_NAME);
    if (!(e->name = malloc((size_t)nlen + 1)))
        return eng_fail(ENG_ERR_NOMEM, "zip: out of memory");
    memcpy(e->name, h + ZIP_CDIR_LEN, nlen);
    e->name[nlen] = '\0';
    eng_status s = zip_check_name(e->name, nlen); /* the copy: NUL-terminated for messages */
    if (s != ENG_OK)
        return s;
    if (le16(h + 34) != 0 && le16(h + 34) != 0xFFFF)
        return eng_fail(ENG_ERR_UNSUPPORTED, "zip: entry '%.200s' is on another disk (split archive)", e->name);
    if (flags & 0x41)
        return eng_fail(ENG_ERR_UNSUPPORTED, "zip: entry '%.200s' is encrypted", e->name);
    if (comp == 0xFFFFFFFFu || size == 0xFFFFFFFFu || off == 0xFFFFFFFFu) {
        s = zip64_extra(h + ZIP_CDIR_LEN + nlen, xlen, e->name, &size, &comp, &off, size == 0xFFFFFFFFu,
                        comp == 0xFFFFFFFFu, off == 0xFFFFFFFFu);
        if (s != ENG_OK)
            return s;
    }
    e->method = le16(h + 10);
    e->crc = le32(h + 16);
    e->comp_size = comp;
    e->size = size;
    if (e->method != 0 && e->method != 8)
        return eng_fail(ENG_ERR_UNSUPPORTED, "zip: entry '%.200s' uses compression method %u (only stored and deflate)",
                        e->name, e->method);
    if (e->method == 0 && comp != size)
        return eng_fail(ENG_ERR_FORMAT, "zip: stored entry '%.200s' declares %llu bytes but holds %llu", e->name,
                        (unsigned long long)size, (unsigned long long)comp);
    if (e->method == 8 && (size > ENG_PT_MAX_INFLATE || size / ZIP_MAX_RATIO > comp + 1))
        return eng_fail(ENG_ERR_LIMIT, "zip: entry '%.200s' claims to inflate %llu bytes to %llu", e->name,
                        (unsigned long long)comp, (unsigned long long)size);
    /* The local header repeats the name; its own extra field may differ in length. */
    if (off > cd_off || cd_off - off < ZIP_LOCAL_LEN)
        return eng_fail(ENG_ERR_FORMAT, "zip: entry '%.200s' has its header at byte %llu, outside the data area",
                        e->name, (unsigned long long)off);
    const uint8_t *lh = buf + off;
    uint64_t data = off + ZIP_LOCAL_LEN + le16(lh + 26) + (uint64_t)le16(lh + 28);
    if (le32(lh) != ZIP_LOCAL_SIG || le16(lh + 26) != nlen || data > cd_off ||
        memcmp(lh + ZIP_LOCAL_LEN, e->name, nlen) != 0)
        return eng_fail(ENG_ERR_FORMAT, "zip: the local header of entry '%.200s' (byte %llu) does not match the directory",
                        e->name, (unsigned long long)off);
    if (comp > cd_off - data)
        return eng_fail(ENG_ERR_FORMAT, "zip: entry '%.200s' declares %llu bytes, past the end of the data (%llu left)",
                        e->name, (unsigned long long)comp, (unsigned long long)(cd_off - data));
    e->data_off = data;
    *p += ZIP_CDIR_LEN + (uint64_t)nlen + xlen + clen;
    return ENG_OK;
}

eng_status pt_zip_open(pt_zip *z, const uint8_t *buf, uint64_t len)
{
    eng_status s;
    memset(z, 0, sizeof *z);
    z->buf = buf;
    z->len = len;
    uint64_t eocd = 0;
    if ((s = zip_find_eocd(buf, len, &eocd)) != ENG_OK)
        return s;
    const uint8_t *q = buf + eocd;
    uint64_t count = le16(q + 10), cd_size = le32(q + 12), cd_off = le32(q + 16), cd_limit = eocd;
    bool disk0 = le16(q + 4) == 0 && le16(q + 6) == 0, disk64 = le16(q + 4) == 0xFFFF && le16(q + 6) == 0xFFFF;
    if (!disk0 && !disk64)
        return eng_fail(ENG_ERR_UNSUPPORTED, "zip: split (multi-disk) archives are not supported");
    /* torch writes the zip64 records always; other writers only when a field overflows. */
    if (eocd >= ZIP64_LOC_LEN && le32(buf + eocd - ZIP64_LOC_LEN) == ZIP64_LOC_SIG) {
        uint64_t z64 = le64(buf + eocd - ZIP64_LOC_LEN + 8);
        if (z64 > eocd - ZIP64_LOC_LEN || eocd - ZIP64_LOC_LEN - z64 < ZIP64_EOCD_LEN ||
            le32(buf + z64) != ZIP64_EOCD_SIG)
            return eng_fail(ENG_ERR_FORMAT, "zip: the zip64 directory locator points to byte %llu, not to a record",
                            (unsigned long long)z64);
        q = buf + z64;
        if (le32(q + 16) != 0 || le32(q + 20) != 0)
            return eng_fail(ENG_ERR_UNSUPPORTED, "zip: split (multi-disk) archives are not supported");
        count = le64(q + 32);
        cd_size = le64(q + 40);
        cd_off = le64(q + 48);
        cd_limit = z64;
    } else if (count == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_off == 0xFFFFFFFFu) {
        return eng_fail(ENG_ERR_FORMAT, "zip: the directory needs zip64 records and has none");
    }
    if (cd_off > cd_limit || cd_size > cd_limit - cd_off)
        return eng_fail(ENG_ERR_FORMAT, "zip: central directory (%llu bytes at %llu) lies outside the %llu-byte file",
                        (unsigned long long)cd_size, (unsigned long long)cd_off, (unsigned long long)len);
    if (count > ENG_PT_MAX_ZIP_ENTRIES || count > cd_size / ZIP_CDIR_LEN)
        return eng_fail(count > ENG_PT_MAX_ZIP_ENTRIES ? ENG_ERR_LIMIT : ENG_ERR_FORMAT,
                        "zip: directory claims %llu entries in %llu bytes (at most %d entries)",
                        (unsigned long long)count, (unsigned long long)cd_size, ENG_PT_MAX_ZIP_ENTRIES);
    z->entries = calloc(count ? (size_t)count : 1, sizeof *z->entries);
    z->by_name = calloc(count ? (size_t)count : 1, sizeof *z->by_name);
    if (!z->entries || !z->by_name) {
        s = eng_fail(ENG_ERR_NOMEM, "zip: out of memory for %llu entries", (unsigned long long)count);
        goto fail;
    }
    uint64_t p = cd_off;
    for (uint64_t i = 0; i < count; i++) {
        s = zip_parse_entry(buf, &p, cd_off + cd_size, cd_off, &z->entries[z->n]);
        z->n++; /* counted even on failure, so that cleanup frees the name */
        if (s != ENG_OK)
            goto fail;
        z->by_name[i] = &z->entries[i];
    }
    qsort(z->by_name, (size_t)z->n, sizeof *z->by_name, zip_cmp_name);
    for (int i = 1; i < z->n; i++)
        if (strcmp(z->by_name[i - 1]->name, z->by_name[i]->name) == 0) {
            s = eng_fail(ENG_ERR_FORMAT, "zip: entry '%.200s' appears twice", z->by_name[i]->name);
            goto fail;
        }
    return ENG_OK;
fail:
    pt_zip_cleanup(z);
    return s;
}

const pt_zip_entry *pt_zip_find(const pt_zip *z, const char *name)
{
    int lo = 0, hi = z->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, c = strcmp(z->by_name[mid]->name, name);
        if (c == 0)
            return z->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

static uint32_t zip_crc(const uint8_t *p, uint64_t n)
{
    uLong c = crc32(0L, Z_NULL, 0);
    while (n > 0) {
        uInt step = n > (1u << 30) ? (1u << 30) : (uInt)n;
        c = crc32(c, p, step);
        p += step;
        n -= step;
    }
    return (uint32_t)c;
}

eng_status pt_zip_read(const pt_zip *z, const pt_zip_entry *e, uint64_t max, const uint8_t **data, uint8_t **owned)
{
    *data = NULL;
    *owned = NULL;
    if (e->size > max)
        return eng_fail(ENG_ERR_LIMIT, "zip: entry '%.200s' holds %llu bytes (at most %llu here)", e->name,
                        (unsigned long long)e->size, (unsigned long long)max);
    const uint8_t *src = z->buf + e->data_off;
    if (e->method == 0) {
        if (zip_crc(src, e->size) != e->crc)
            return eng_fail(ENG_ERR_FORMAT, "zip: entry '%.200s' fails its CRC check (damaged file)", e->name);
        *data = src;
        return ENG_OK;
    }
    /* One spare byte: a stream longer than declared shows as out_done > size. */
    uint8_t *out = malloc((size_t)e->size + 1);
    if (!out)
        return eng_fail(ENG_ERR_NOMEM, "zip: cannot allocate %llu bytes to inflate '%.200s'",
                        (unsigned long long)e->size, e->name);
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) {
        free(out);
        return eng_fail(ENG_ERR_NOMEM, "zip: cannot start inflating '%.200s'", e->name);
    }
    const uint8_t *in = src;
    uint64_t in_left = e->comp_size, out_done = 0, out_cap = e->size + 1;
    int rc;
    do {
        if (zs.avail_in == 0 && in_left > 0) {
            zs.next_in = (Bytef *)in;
            zs.avail_in = in_left > (1u << 30) ? (1u << 30) : (uInt)in_left;
            in += zs.avail_in;
            in_left -= zs.avail_in;
        }
        if (zs.avail_out == 0 && out_done < out_cap) {
            zs.next_out = out + out_done;
            zs.avail_out = out_cap - out_done > (1u << 30) ? (1u << 30) : (uInt)(out_cap - out_done);
        }
        uInt before = zs.avail_out;
        rc = inflate(&zs, Z_NO_FLUSH); /* Z_BUF_ERROR: no progress, input used up or output full */
        out_done += before - zs.avail_out;
    } while (rc == Z_OK);
    inflateEnd(&zs);
    if (rc != Z_STREAM_END || out_done != e->size) {
        free(out);
        return eng_fail(ENG_ERR_FORMAT, "zip: entry '%.200s' does not inflate to its declared %llu bytes (%s)", e->name,
                        (unsigned long long)e->size, rc == Z_STREAM_END ? "size differs" : "damaged or truncated data");
    }
    if (zip_crc(out, e->size) != e->crc) {
        free(out);
        return eng_fail(ENG_ERR_FORMAT, "zip: entry '%.200s' fails its CRC check (damaged file)", e->name);
    }
    *data = out;
    *owned = out;
    return ENG_OK;
}
