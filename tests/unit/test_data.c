/* Dataset readers on real data (Fashion-MNIST always; MNIST and CIFAR-10 from the shared data
 * when present) and on small files written here, every malformed case each reader refuses,
 * format detection, subsets, splits, and batches (resize, channels, deterministic augmentation).
 * With RTAAS_DATA_SEED_DIR set, the crafted inputs are also written there as fuzz seeds. */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <dirent.h>
#include <omp.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <jpeglib.h>

#include "engine.h"
#include "t.h"

#define FASHION "/usr/share/datasets/fashion-mnist"

static char tdir[512];

/* ---- helpers ---- */

static void path_in(char *buf, size_t len, const char *name) { snprintf(buf, len, "%s/%s", tdir, name); }

static int write_file(const char *path, const void *buf, size_t len)
{
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return -1;
    size_t w = len ? fwrite(buf, 1, len, fp) : 0;
    return fclose(fp) == 0 && w == len ? 0 : -1;
}

/* Writes buf as seed `name` of fuzz target `target` when RTAAS_DATA_SEED_DIR names a directory. */
static void seed_out(const char *target, const char *name, const void *buf, size_t len)
{
    const char *dir = getenv("RTAAS_DATA_SEED_DIR");
    if (!dir || !*dir)
        return;
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, target);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/%s/%s", dir, target, name);
    (void)write_file(p, buf, len);
    /* The start of every seed, behind a file-name byte, also seeds format detection. */
    if (strcmp(target, "fuzz_data_detect") != 0) {
        size_t k = len < 2048 ? len : 2048;
        uint8_t *h = malloc(k + 1);
        h[0] = (uint8_t)(strlen(name) + len);
        memcpy(h + 1, buf, k);
        snprintf(p, sizeof p, "%s/fuzz_data_detect", dir);
        mkdir(p, 0755);
        snprintf(p, sizeof p, "%s/fuzz_data_detect/%s.%s", dir, target + 10, name);
        (void)write_file(p, h, k + 1);
        free(h);
    }
}

/* Two inputs in one seed for the two-file readers: u16 little-endian length of the first, then both. */
static void seed_pair(const char *target, const char *name, const void *a, size_t na, const void *b, size_t nb)
{
    if (na > 65535)
        return;
    uint8_t *s = malloc(2 + na + nb);
    s[0] = (uint8_t)na;
    s[1] = (uint8_t)(na >> 8);
    memcpy(s + 2, a, na);
    memcpy(s + 2 + na, b, nb);
    seed_out(target, name, s, 2 + na + nb);
    free(s);
}

/* gzip of buf into a new buffer. */
static uint8_t *gz(const void *buf, size_t len, size_t *out_len)
{
    z_stream zs = {0};
    deflateInit2(&zs, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
    size_t cap = deflateBound(&zs, len) + 64;
    uint8_t *o = malloc(cap);
    zs.next_in = (Bytef *)buf;
    zs.avail_in = (uInt)len;
    zs.next_out = o;
    zs.avail_out = (uInt)cap;
    deflate(&zs, Z_FINISH);
    *out_len = cap - zs.avail_out;
    deflateEnd(&zs);
    return o;
}

/* Expects status `want`, a message, and *d left zeroed. */
static int refused_ds(eng_status got, eng_status want, const eng_dataset *d, const char *expect_in_msg)
{
    static const eng_dataset zero;
    int ok = got == want && memcmp(d, &zero, sizeof zero) == 0 && strlen(eng_last_error()) > 0;
    if (ok && expect_in_msg && !strstr(eng_last_error(), expect_in_msg))
        ok = 0;
    if (!ok)
        printf("#   got %s (%s), wanted %s%s%s\n", eng_strerror(got), eng_last_error(), eng_strerror(want),
               expect_in_msg ? " mentioning " : "", expect_in_msg ? expect_in_msg : "");
    return ok;
}

/* The detail message is cleared first, so that a stale one cannot pass for the call's own. */
#define REFUSED(call, want, d, msg) (eng_clear_error(), refused_ds((call), (want), (d), (msg)))

static void be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

/* IDX image file of n h x w images (pixel i = i * 7 mod 256) and labels (label i = i mod classes). */
static uint8_t *idx_images(uint32_t n, uint32_t h, uint32_t w, size_t *len)
{
    *len = 16 + (size_t)n * h * w;
    uint8_t *b = malloc(*len);
    be32(b, 0x803), be32(b + 4, n), be32(b + 8, h), be32(b + 12, w);
    for (size_t i = 16; i < *len; i++)
        b[i] = (uint8_t)((i - 16) * 7);
    return b;
}

static uint8_t *idx_labels(uint32_t n, int classes, size_t *len)
{
    *len = 8 + n;
    uint8_t *b = malloc(*len);
    be32(b, 0x801), be32(b + 4, n);
    for (uint32_t i = 0; i < n; i++)
        b[8 + i] = (uint8_t)(i % (uint32_t)classes);
    return b;
}

/* A .npy file: header dict text (padded to 64 as numpy does) and data. */
static uint8_t *npy_make(const char *dict, const void *data, size_t dlen, size_t *len)
{
    size_t dl = strlen(dict), hl = dl + 1;
    hl += (64 - (10 + hl) % 64) % 64;
    *len = 10 + hl + dlen;
    uint8_t *b = malloc(*len + 1);
    memcpy(b, "\x93NUMPY\x01\x00", 8);
    b[8] = (uint8_t)hl, b[9] = (uint8_t)(hl >> 8);
    memcpy(b + 10, dict, dl);
    memset(b + 10 + dl, ' ', hl - dl - 1);
    b[10 + hl - 1] = '\n';
    if (dlen)
        memcpy(b + 10 + hl, data, dlen);
    return b;
}

/* An archive built with libarchive's writer. */
enum { E_FILE, E_DIR, E_SYMLINK, E_HARDLINK };
typedef struct ent {
    const char *name;
    const void *data;
    size_t len;
    int type;
} ent;

static uint8_t *arch_make(const char *fmt, const ent *e, int n, size_t *len)
{
    struct archive *a = archive_write_new();
    if (strncmp(fmt, "zip", 3) == 0) {
        archive_write_set_format_zip(a);
        archive_write_set_options(a, strcmp(fmt, "zip-store") == 0 ? "zip:compression=store" : "zip:compression=deflate");
    } else {
        archive_write_set_format_pax_restricted(a);
        if (strcmp(fmt, "tar.gz") == 0)
            archive_write_add_filter_gzip(a);
    }
    size_t cap = (size_t)8 << 20, used = 0;
    uint8_t *buf = malloc(cap);
    archive_write_open_memory(a, buf, cap, &used);
    for (int i = 0; i < n; i++) {
        struct archive_entry *en = archive_entry_new();
        archive_entry_set_pathname(en, e[i].name);
        archive_entry_set_perm(en, 0644);
        archive_entry_set_mtime(en, 1700000000, 0);
        if (e[i].type == E_DIR) {
            archive_entry_set_filetype(en, AE_IFDIR);
        } else if (e[i].type == E_SYMLINK) {
            archive_entry_set_filetype(en, AE_IFLNK);
            archive_entry_set_symlink(en, "../../etc/passwd");
        } else if (e[i].type == E_HARDLINK) {
            archive_entry_set_filetype(en, AE_IFREG);
            archive_entry_set_hardlink(en, e[0].name);
        } else {
            archive_entry_set_filetype(en, AE_IFREG);
            archive_entry_set_size(en, (la_int64_t)e[i].len);
        }
        /* In the C locale a non-ASCII name only warns and is stored as its bytes. */
        if (archive_write_header(a, en) < ARCHIVE_WARN)
            printf("#   archive_write_header %s: %s\n", e[i].name, archive_error_string(a));
        if (e[i].type == E_FILE && e[i].len)
            archive_write_data(a, e[i].data, e[i].len);
        archive_entry_free(en);
    }
    archive_write_close(a);
    archive_write_free(a);
    *len = used;
    return buf;
}

/* Interleaved test pattern, distinct per seed. */
static uint8_t *pattern(int w, int h, int c, int seed)
{
    uint8_t *p = malloc((size_t)w * h * c);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int ch = 0; ch < c; ch++)
                p[((size_t)y * w + x) * c + ch] = (uint8_t)(x * 7 + y * 13 + ch * 50 + seed * 31);
    return p;
}

static uint8_t *png_of(int w, int h, int c, int seed, size_t *len)
{
    uint8_t *p = pattern(w, h, c, seed), *out = NULL;
    eng_png_encode(p, w, h, c, &out, len);
    free(p);
    return out;
}

/* JPEG through libjpeg: c 1 (gray), 3 (RGB) or 4 (CMYK). */
static uint8_t *jpeg_of(int w, int h, int c, int seed, int progressive, size_t *len)
{
    uint8_t *p = pattern(w, h, c, seed);
    struct jpeg_compress_struct ci;
    struct jpeg_error_mgr err;
    ci.err = jpeg_std_error(&err);
    jpeg_create_compress(&ci);
    unsigned char *out = NULL;
    unsigned long olen = 0;
    jpeg_mem_dest(&ci, &out, &olen);
    ci.image_width = (JDIMENSION)w;
    ci.image_height = (JDIMENSION)h;
    ci.input_components = c;
    ci.in_color_space = c == 1 ? JCS_GRAYSCALE : c == 3 ? JCS_RGB : JCS_CMYK;
    jpeg_set_defaults(&ci);
    jpeg_set_quality(&ci, 90, TRUE);
    if (progressive)
        jpeg_simple_progression(&ci);
    jpeg_start_compress(&ci, TRUE);
    while (ci.next_scanline < ci.image_height) {
        JSAMPROW row = p + (size_t)ci.next_scanline * w * c;
        jpeg_write_scanlines(&ci, &row, 1);
    }
    jpeg_finish_compress(&ci);
    jpeg_destroy_compress(&ci);
    free(p);
    *len = olen;
    return out;
}

/* ---- IDX ---- */

static void idx_fashion(void)
{
    eng_dataset d;
    REQUIRE_OK(eng_dataset_read_idx(&d, FASHION "/train-images-idx3-ubyte.gz", FASHION "/train-labels-idx1-ubyte.gz",
                                    NULL));
    CHECK(d.n == 60000 && d.c == 1 && d.h == 28 && d.w == 28 && d.num_classes == 10 && d.type == ENG_PIX_U8);
    CHECK(d.fpixels == NULL && d.class_names == NULL);
    int64_t counts[10];
    eng_dataset_class_counts(&d, counts);
    for (int i = 0; i < 10; i++)
        CHECKF(counts[i] == 6000, "class %d: %lld", i, (long long)counts[i]);
    const int first[8] = {9, 0, 0, 3, 0, 2, 7, 2};
    for (int i = 0; i < 8; i++)
        CHECK(d.labels[i] == first[i]);
    uint8_t mn = 255, mx = 0;
    for (int64_t i = 0; i < d.n * 784; i++) {
        mn = d.pixels[i] < mn ? d.pixels[i] : mn;
        mx = d.pixels[i] > mx ? d.pixels[i] : mx;
    }
    CHECK(mn == 0 && mx == 255);
    eng_dataset_cleanup(&d);
    eng_dataset_cleanup(&d); /* twice is fine */
    eng_dataset_cleanup(NULL);

    REQUIRE_OK(eng_dataset_read_idx(&d, FASHION "/t10k-images-idx3-ubyte.gz", FASHION "/t10k-labels-idx1-ubyte.gz",
                                    NULL));
    CHECK(d.n == 10000 && d.labels[0] == 9 && d.labels[1] == 2 && d.labels[4] == 6);
    eng_dataset_class_counts(&d, counts);
    for (int i = 0; i < 10; i++)
        CHECK(counts[i] == 1000);
    eng_dataset_cleanup(&d);
}

/* Pixels must equal zlib's own decompression of the file, byte for byte. */
static void idx_mnist(void)
{
    const char *root = t_shared_data();
    if (!root) {
        t_skip("no shared data");
        return;
    }
    char ti[600], tl[600];
    snprintf(ti, sizeof ti, "%s/mnist/t10k-images-idx3-ubyte.gz", root);
    snprintf(tl, sizeof tl, "%s/mnist/t10k-labels-idx1-ubyte.gz", root);
    if (access(ti, R_OK) != 0) {
        t_skip("no MNIST in %s", root);
        return;
    }
    eng_dataset d;
    REQUIRE_OK(eng_dataset_read_idx(&d, ti, tl, NULL));
    CHECK(d.n == 10000 && d.h == 28 && d.w == 28 && d.num_classes == 10);
    const int first[8] = {7, 2, 1, 0, 4, 1, 4, 9};
    for (int i = 0; i < 8; i++)
        CHECK(d.labels[i] == first[i]);
    const int64_t want[10] = {980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009};
    int64_t counts[10];
    eng_dataset_class_counts(&d, counts);
    for (int i = 0; i < 10; i++)
        CHECK(counts[i] == want[i]);
    gzFile f = gzopen(ti, "rb");
    REQUIRE(f);
    uint8_t *raw = malloc(16 + 10000 * 784);
    int got = gzread(f, raw, 16 + 10000 * 784);
    gzclose(f);
    CHECK(got == 16 + 10000 * 784 && memcmp(raw + 16, d.pixels, 10000 * 784) == 0);
    CHECK(crc32(0, raw, 16 + 10000 * 784) == crc32(crc32(0, raw, 16), d.pixels, 10000 * 784));
    free(raw);
    eng_dataset_cleanup(&d);

    snprintf(ti, sizeof ti, "%s/mnist/train-images-idx3-ubyte.gz", root);
    snprintf(tl, sizeof tl, "%s/mnist/train-labels-idx1-ubyte.gz", root);
    REQUIRE_OK(eng_dataset_read_idx(&d, ti, tl, NULL));
    const int64_t wtr[10] = {5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949};
    eng_dataset_class_counts(&d, counts);
    for (int i = 0; i < 10; i++)
        CHECK(counts[i] == wtr[i]);
    CHECK(d.n == 60000 && d.labels[0] == 5 && d.labels[1] == 0 && d.labels[2] == 4);
    eng_dataset_cleanup(&d);
}

static void idx_synthetic(void)
{
    size_t il, ll, gil, gll;
    uint8_t *img = idx_images(12, 5, 7, &il), *lab = idx_labels(12, 3, &ll);
    uint8_t *gimg = gz(img, il, &gil), *glab = gz(lab, ll, &gll);
    eng_dataset d;
    REQUIRE_OK(eng_dataset_read_idx_mem(&d, img, il, lab, ll, NULL));
    CHECK(d.n == 12 && d.h == 5 && d.w == 7 && d.c == 1 && d.num_classes == 3 && d.labels[4] == 1);
    CHECK(memcmp(d.pixels, img + 16, 12 * 35) == 0);
    eng_dataset_cleanup(&d);
    /* gzip and plain mixed */
    REQUIRE_OK(eng_dataset_read_idx_mem(&d, gimg, gil, lab, ll, NULL));
    CHECK(d.n == 12 && memcmp(d.pixels, img + 16, 12 * 35) == 0);
    eng_dataset_cleanup(&d);
    /* two gzip members one after the other are one stream */
    size_t h1, h2;
    uint8_t *m1 = gz(img, 100, &h1), *m2 = gz(img + 100, il - 100, &h2);
    uint8_t *cat = malloc(h1 + h2);
    memcpy(cat, m1, h1);
    memcpy(cat + h1, m2, h2);
    REQUIRE_OK(eng_dataset_read_idx_mem(&d, cat, h1 + h2, glab, gll, NULL));
    CHECK(memcmp(d.pixels, img + 16, 12 * 35) == 0);
    eng_dataset_cleanup(&d);
    seed_pair("fuzz_data_idx", "plain", img, il, lab, ll);
    seed_pair("fuzz_data_idx", "gzip", gimg, gil, glab, gll);

    /* from files */
    char pi[600], pl[600];
    path_in(pi, sizeof pi, "i.idx.gz");
    path_in(pl, sizeof pl, "l.idx");
    REQUIRE(write_file(pi, gimg, gil) == 0 && write_file(pl, lab, ll) == 0);
    REQUIRE_OK(eng_dataset_read_idx(&d, pi, pl, NULL));
    CHECK(d.n == 12);
    eng_dataset_cleanup(&d);
    free(m1);
    free(m2);
    free(cat);
    free(img);
    free(lab);
    free(gimg);
    free(glab);
}

static void idx_malformed(void)
{
    size_t il, ll, k;
    uint8_t *img = idx_images(12, 5, 7, &il), *lab = idx_labels(12, 3, &ll);
    eng_dataset d;
    uint8_t *b = malloc(il + 10);

    memcpy(b, img, il);
    b[2] = 0x0d; /* float IDX */
    CHECK(REFUSED(eng_dataset_read_idx_mem(&d, b, il, lab, ll, NULL), ENG_ERR_FORMAT, &d, "magic"));
    seed_pair("fuzz_data_idx", "bad_magic", b, il, lab, ll);
    /* labels and images disagree */
    uint8_t *lab11 = idx_labels(11, 3, &k);
    CHECK(REFUSED(eng_dataset_read_idx_mem(&d, img, il, lab11, k, NULL), ENG_ERR_FORMAT, &d, "12 images"));
    free(lab11);
    /* truncated pixels, plain and gzip */
    CHECK(REFUSED(eng_dataset_read_idx_mem(&d, img, il - 1, lab, ll, NULL), ENG_ERR_FORMAT, &d, "truncated"));
    size_t gl;
    uint8_t *g = gz(img, il - 3, &gl);
    CHECK(REFUSED(eng_dataset_read_idx_mem(&d, g, gl, lab, ll, NULL), ENG_ERR_FORMAT, &d, "truncated"));
    seed_pair("fuzz_data_idx", "short_gz", g, gl, lab, ll);
    free(g);
    /* a cut gzip stream and garbage after one */
    g = gz(img, il, &gl);
    CHECK(REFUSED(eng_dataset_read_idx_mem(&d, g, gl - 9, lab, ll, NULL), ENG_ERR_FORMAT, &d, "truncated"));
    uint8_t *g2 = malloc(gl + 3);
    memcpy(g2, g, gl);
    memcpy(g2 + gl, "xyz", 3);
    CHECK(REFUSED(eng_dataset_read_idx_mem(&d, g2, gl + 3, lab, ll, NULL), ENG_ERR_FORMAT, &d, "garbage"));
    g2[gl / 2] ^= 0x55; /* corrupt deflate data or CRC */
    CHECK(REFUSED(eng_dataset_read_idx_mem(&d, g2, gl, lab, ll, NULL), ENG_ERR_FORMAT, &d, NULL));
    free(g2);
    free(g);
    /* data after what the header declares */
    memcpy(b, img, il);
    b[il] = 1;
    CHECK(REFUSED(eng_dataset_read_idx_mem(&d, b, il + 1, lab, ll, NULL), ENG_ERR_FORMAT, &d, "goes on"));
    /* a header claiming 4 billion pixels in a few bytes: refused before any allocation */
    memcpy(b, img, il);
    be32(b + 4, 0x7fffffff), be32(b + 8, 60000), be32(b + 12, 60000);
    CHECK(REFUSED(eng_dataset_read_idx_mem(&d, b, il, lab, ll, NULL), ENG_ERR_FORMAT, &d, NULL));
    be32(b + 4, 12), be32(b + 8, 2000), be32(b + 12, 2000);
    CHECK(REFUSED(eng_dataset_read_idx_mem(&d, b, il, lab, ll, NULL), ENG_ERR_FORMAT, &d, "truncated"));
    seed_pair("fuzz_data_idx", "claims_48m", b, il, lab, ll);
    g = gz(b, il, &gl);
    CHECK(REFUSED(eng_dataset_read_idx_mem(&d, g, gl, lab, ll, NULL), ENG_ERR_FORMAT, &d, "at most"));
    free(g);
    be32(b + 8, 0);
    CHECK(REFUSED(eng_dataset_read_idx_mem(&d, b, il, lab, ll, NULL), ENG_ERR_FORMAT, &d, "declares images"));
    /* the caller's pixel limit */
    eng_data_opts o = {.max_pixels = 100};
    CHECK(REFUSED(eng_dataset_read_idx_mem(&d, img, il, lab, ll, &o), ENG_ERR_LIMIT, &d, "limit"));
    /* one class only */
    uint8_t *one = idx_labels(12, 1, &k);
    CHECK(REFUSED(eng_dataset_read_idx_mem(&d, img, il, one, k, NULL), ENG_ERR_FORMAT, &d, "at least 2 classes"));
    seed_pair("fuzz_data_idx", "one_class", img, il, one, k);
    free(one);
    /* empty and missing */
    CHECK(REFUSED(eng_dataset_read_idx_mem(&d, NULL, 0, lab, ll, NULL), ENG_ERR_FORMAT, &d, "truncated"));
    CHECK(REFUSED(eng_dataset_read_idx(&d, "/nonexistent/x", "/nonexistent/y", NULL), ENG_ERR_NOT_FOUND, &d,
                     "/nonexistent/x"));
    CHECK(REFUSED(eng_dataset_read_idx(&d, tdir, tdir, NULL), ENG_ERR_IO, &d, "regular file"));
    free(b);
    free(img);
    free(lab);
}

/* ---- CIFAR ---- */

static uint8_t *cifar_make(int n, int hundred, int label_mod, size_t *len)
{
    const size_t rec = hundred ? 3074 : 3073;
    *len = rec * (size_t)n;
    uint8_t *b = malloc(*len);
    for (int i = 0; i < n; i++) {
        uint8_t *r = b + rec * (size_t)i;
        if (hundred) {
            r[0] = (uint8_t)(i % 20);
            r[1] = (uint8_t)(i % label_mod);
        } else {
            r[0] = (uint8_t)(i % label_mod);
        }
        for (int p = 0; p < 3072; p++)
            r[rec - 3072 + (size_t)p] = (uint8_t)(p * 3 + i);
    }
    return b;
}

static void cifar_shared(void)
{
    const char *root = t_shared_data();
    char p[600];
    if (root)
        snprintf(p, sizeof p, "%s/cifar10/test_batch.bin.gz", root);
    if (!root || access(p, R_OK) != 0) {
        t_skip("no shared CIFAR-10");
        return;
    }
    eng_dataset d;
    REQUIRE_OK(eng_dataset_read_cifar(&d, p, NULL)); /* the kind from the size */
    CHECK(d.n == 10000 && d.c == 3 && d.h == 32 && d.w == 32 && d.num_classes == 10);
    const int first[8] = {3, 8, 1, 0, 4, 0, 9, 3};
    for (int i = 0; i < 8; i++)
        CHECK(d.labels[i] == first[i]);
    int64_t counts[10], sum = 0;
    eng_dataset_class_counts(&d, counts);
    for (int i = 0; i < 10; i++)
        CHECK(counts[i] == 1000);
    for (int i = 0; i < 3072; i++)
        sum += d.pixels[i];
    CHECKF(sum == 311619, "first image sums to %lld", (long long)sum);
    eng_dataset_cleanup(&d);

    /* detection from the head of the file */
    FILE *fp = fopen(p, "rb");
    REQUIRE(fp);
    uint8_t head[4096];
    size_t hn = fread(head, 1, sizeof head, fp);
    fclose(fp);
    CHECK(eng_dataset_detect(head, hn, "test_batch.bin.gz") == ENG_FMT_CIFAR10);

    snprintf(p, sizeof p, "%s/cifar10/train_1000pc.bin.gz", root);
    eng_data_opts o = {.cifar = ENG_CIFAR_10};
    REQUIRE_OK(eng_dataset_read_cifar(&d, p, &o));
    sum = 0;
    for (int i = 0; i < 3072; i++)
        sum += d.pixels[i];
    CHECK(d.n == 10000 && sum == 359075);
    eng_dataset_cleanup(&d);
}

static void cifar_synthetic(void)
{
    size_t len, gl;
    uint8_t *b = cifar_make(7, 0, 10, &len);
    eng_dataset d;
    REQUIRE_OK(eng_dataset_read_cifar_mem(&d, b, len, NULL));
    CHECK(d.n == 7 && d.c == 3 && d.h == 32 && d.num_classes == 7 && d.labels[3] == 3);
    CHECK(d.pixels[3072 * 2 + 5] == (uint8_t)(5 * 3 + 2) && d.pixels[3072 * 6 + 3071] == (uint8_t)(3071 * 3 + 6));
    eng_dataset_cleanup(&d);
    seed_out("fuzz_data_cifar", "c10_7", b, len);
    uint8_t *g = gz(b, len, &gl);
    REQUIRE_OK(eng_dataset_read_cifar_mem(&d, g, gl, NULL));
    CHECK(d.n == 7 && d.pixels[3072 * 2 + 5] == (uint8_t)(5 * 3 + 2));
    eng_dataset_cleanup(&d);
    seed_out("fuzz_data_cifar", "c10_7.gz", g, gl);
    char p[600];
    path_in(p, sizeof p, "c10.bin.gz");
    REQUIRE(write_file(p, g, gl) == 0);
    REQUIRE_OK(eng_dataset_read_cifar(&d, p, NULL));
    CHECK(d.n == 7);
    eng_dataset_cleanup(&d);
    CHECK(eng_dataset_detect(g, gl, "c10.bin.gz") == ENG_FMT_CIFAR10);
    CHECK(eng_dataset_detect(b, len, "data_batch_1.bin") == ENG_FMT_CIFAR10);
    CHECK(eng_dataset_detect(b, len, "data.raw") == ENG_FMT_UNKNOWN);
    REQUIRE_OK(eng_dataset_read_file(&d, ENG_FMT_CIFAR10, p, NULL, NULL));
    eng_dataset_cleanup(&d);
    free(g);

    /* CIFAR-100: fine labels by default, coarse on request */
    size_t hl;
    uint8_t *h = cifar_make(9, 1, 100, &hl);
    REQUIRE_OK(eng_dataset_read_cifar_mem(&d, h, hl, NULL));
    CHECK(d.n == 9 && d.labels[8] == 8 && d.pixels[3072 + 1] == (uint8_t)(3 + 1));
    eng_dataset_cleanup(&d);
    eng_data_opts o = {.cifar = ENG_CIFAR_100_COARSE};
    REQUIRE_OK(eng_dataset_read_cifar_mem(&d, h, hl, &o));
    CHECK(d.n == 9 && d.labels[8] == 8 % 20);
    eng_dataset_cleanup(&d);
    CHECK(eng_dataset_detect(h, hl, "cifar100_train.bin") == ENG_FMT_CIFAR100);
    seed_out("fuzz_data_cifar", "c100_9", h, hl);
    /* the wrong kind: 9 CIFAR-100 records are not whole CIFAR-10 records */
    o.cifar = ENG_CIFAR_10;
    CHECK(REFUSED(eng_dataset_read_cifar_mem(&d, h, hl, &o), ENG_ERR_FORMAT, &d, "bytes over"));
    free(h);

    /* truncated, and neither size */
    CHECK(REFUSED(eng_dataset_read_cifar_mem(&d, b, len - 1, NULL), ENG_ERR_FORMAT, &d, "truncated"));
    o.cifar = ENG_CIFAR_10;
    CHECK(REFUSED(eng_dataset_read_cifar_mem(&d, b, len - 100, &o), ENG_ERR_FORMAT, &d, "truncated"));
    seed_out("fuzz_data_cifar", "truncated", b, len - 100);
    CHECK(REFUSED(eng_dataset_read_cifar_mem(&d, b, 0, NULL), ENG_ERR_FORMAT, &d, "empty"));
    /* a label out of range */
    b[3073 * 4] = 10;
    CHECK(REFUSED(eng_dataset_read_cifar_mem(&d, b, len, NULL), ENG_ERR_FORMAT, &d, "record 4 has label 10"));
    b[3073 * 4] = 4;
    /* one class */
    uint8_t *one = cifar_make(3, 0, 1, &len);
    CHECK(REFUSED(eng_dataset_read_cifar_mem(&d, one, len, NULL), ENG_ERR_FORMAT, &d, "at least 2 classes"));
    free(one);
    /* the pixel limit */
    o = (eng_data_opts){.max_pixels = 3072 * 6};
    CHECK(REFUSED(eng_dataset_read_cifar_mem(&d, b, 7 * 3073, &o), ENG_ERR_LIMIT, &d, NULL));
    o.cifar = ENG_CIFAR_10;
    g = gz(b, 7 * 3073, &gl);
    CHECK(REFUSED(eng_dataset_read_cifar_mem(&d, g, gl, &o), ENG_ERR_LIMIT, &d, NULL));
    free(g);
    free(b);

    /* 3074 CIFAR-10 records are also 3073 CIFAR-100 records: the caller must say */
    b = cifar_make(3074, 0, 10, &len);
    CHECK(REFUSED(eng_dataset_read_cifar_mem(&d, b, len, NULL), ENG_ERR_ARG, &d, "say which"));
    o = (eng_data_opts){.cifar = ENG_CIFAR_10};
    REQUIRE_OK(eng_dataset_read_cifar_mem(&d, b, len, &o));
    CHECK(d.n == 3074 && d.labels[3073] == 3);
    eng_dataset_cleanup(&d);
    free(b);
}

/* ---- NumPy ---- */

static void npy_read(void)
{
    /* uint8 NHWC [4, 2, 3, 3] and int64 labels */
    uint8_t px[4 * 2 * 3 * 3];
    for (size_t i = 0; i < sizeof px; i++)
        px[i] = (uint8_t)(i * 5);
    int64_t l8[4] = {1, 0, 1, 2};
    size_t il, ll;
    uint8_t *img = npy_make("{'descr': '|u1', 'fortran_order': False, 'shape': (4, 2, 3, 3), }", px, sizeof px, &il);
    uint8_t *lab = npy_make("{'descr': '<i8', 'fortran_order': False, 'shape': (4,), }", l8, sizeof l8, &ll);
    eng_dataset d;
    eng_data_opts o = {.layout = ENG_NPY_NHWC};
    REQUIRE_OK(eng_dataset_read_npy_mem(&d, img, il, lab, ll, &o));
    CHECK(d.n == 4 && d.c == 3 && d.h == 2 && d.w == 3 && d.num_classes == 3 && d.type == ENG_PIX_U8);
    /* element (n=1, c=2, y=1, x=0) comes from NHWC offset ((1*2 + 1)*3 + 0)*3 + 2 */
    CHECK(d.pixels[((1 * 3 + 2) * 2 + 1) * 3 + 0] == px[((1 * 2 + 1) * 3 + 0) * 3 + 2]);
    CHECK(d.labels[3] == 2);
    eng_dataset_cleanup(&d);
    /* AUTO sees the channels last */
    REQUIRE_OK(eng_dataset_read_npy_mem(&d, img, il, lab, ll, NULL));
    CHECK(d.c == 3 && d.h == 2 && d.w == 3);
    eng_dataset_cleanup(&d);
    seed_pair("fuzz_data_npy", "u8_nhwc", img, il, lab, ll);
    /* the same bytes as NCHW: [4, 2, 3, 3] has 2 channels */
    o.layout = ENG_NPY_NCHW;
    CHECK(REFUSED(eng_dataset_read_npy_mem(&d, img, il, lab, ll, &o), ENG_ERR_FORMAT, &d, "2 channels"));
    free(img);

    /* float32 NCHW [4, 1, 2, 2] in [0, 1], int32 labels; also from files */
    float fp[16];
    for (int i = 0; i < 16; i++)
        fp[i] = (float)i / 15.0f;
    int32_t l4[4] = {0, 1, 0, 1};
    img = npy_make("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 1, 2, 2), }", fp, sizeof fp, &il);
    free(lab);
    lab = npy_make("{\"descr\": \"<i4\", \"shape\": (4,), \"fortran_order\": False}", l4, sizeof l4, &ll);
    o.layout = ENG_NPY_NCHW;
    char pi[600], pl[600];
    path_in(pi, sizeof pi, "x.npy");
    path_in(pl, sizeof pl, "y.npy");
    REQUIRE(write_file(pi, img, il) == 0 && write_file(pl, lab, ll) == 0);
    REQUIRE_OK(eng_dataset_read_npy(&d, pi, pl, &o));
    CHECK(d.type == ENG_PIX_F32 && d.fpixels && !d.pixels && d.c == 1 && d.h == 2 && d.num_classes == 2);
    CHECK(d.fpixels[7] == fp[7]);
    /* a float batch passes the values through */
    eng_tensor x = ENG_TENSOR_INIT;
    REQUIRE_OK(eng_tensor_alloc4(&x, 2, 1, 2, 2));
    int32_t idx[2] = {3, 1}, labs[2];
    REQUIRE_OK(eng_dataset_batch(&d, idx, 2, &x, labs));
    CHECK(x.data[0] == fp[12] && x.data[7] == fp[7] && labs[0] == 1);
    eng_tensor_cleanup(&x);
    eng_dataset_cleanup(&d);
    seed_pair("fuzz_data_npy", "f4_nchw", img, il, lab, ll);
    free(img);

    /* [N, H, W] gray and uint8 labels; detection */
    img = npy_make("{'descr': '|u1', 'fortran_order': False, 'shape': (4, 2, 2), }", px, 16, &il);
    uint8_t l1[4] = {3, 1, 3, 1};
    free(lab);
    lab = npy_make("{'descr': '|u1', 'fortran_order': False, 'shape': (4,), }", l1, 4, &ll);
    REQUIRE_OK(eng_dataset_read_npy_mem(&d, img, il, lab, ll, NULL));
    CHECK(d.c == 1 && d.h == 2 && d.w == 2 && d.num_classes == 4 && memcmp(d.pixels, px, 16) == 0);
    eng_dataset_cleanup(&d);
    CHECK(eng_dataset_detect(img, il, "whatever") == ENG_FMT_NPY);
    seed_pair("fuzz_data_npy", "u8_gray", img, il, lab, ll);
    free(img);
    free(lab);
}

static void npy_malformed(void)
{
    uint8_t px[4 * 2 * 2];
    memset(px, 7, sizeof px);
    uint8_t l1[4] = {0, 1, 0, 1};
    size_t ll, il;
    uint8_t *lab = npy_make("{'descr': '|u1', 'fortran_order': False, 'shape': (4,), }", l1, 4, &ll);
    eng_dataset d;
    static const struct {
        const char *dict;
        const char *msg;
    } bad[] = {
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (4, 2, 2), }", "dtype '<f8'"},
        {"{'descr': '>f4', 'fortran_order': False, 'shape': (4, 2, 2), }", "dtype '>f4'"},
        {"{'descr': '|u1', 'fortran_order': True, 'shape': (4, 2, 2), }", "Fortran"},
        {"{'descr': '|u1', 'fortran_order': False, 'shape': (4, 2, 2), 'extra': 1, }", "unknown"},
        {"{'descr': '|u1', 'descr': '|u1', 'fortran_order': False, 'shape': (4, 2, 2), }", "repeated"},
        {"{'descr': '|u1', 'shape': (4, 2, 2), }", "lacks 'fortran_order'"},
        {"{'descr': '|u1', 'fortran_order': False, 'shape': (16), }", "malformed"},
        {"{'descr': '|u1', 'fortran_order': False, 'shape': (4, 2, -2), }", "malformed"},
        {"{'descr': '|u1', 'fortran_order': False, 'shape': (4, 2, 2L), }", "malformed"},
        {"{'descr': '|u1', 'fortran_order': False, 'shape': (4, 2, 2), } x", "malformed"},
        {"['descr', '|u1']", "malformed"},
        {"{'descr': '|u1', 'fortran_order': False, 'shape': (4, 2, 3), }", "truncated"},
        {"{'descr': '|u1', 'fortran_order': False, 'shape': (4, 2, 1), }", "need 8 data bytes but 16"},
        {"{'descr': '|u1', 'fortran_order': False, 'shape': (16,), }", "want [N, H, W]"},
        {"{'descr': '|u1', 'fortran_order': False, 'shape': (2, 2, 2, 2), }", "NHWC or NCHW"},
        {"{'descr': '<i4', 'fortran_order': False, 'shape': (2, 2, 1), }", "want '|u1' or '<f4'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        uint8_t *img = npy_make(bad[i].dict, px, 16, &il);
        eng_status want = strstr(bad[i].msg, "NHWC") ? ENG_ERR_ARG : ENG_ERR_FORMAT;
        CHECKF(REFUSED(eng_dataset_read_npy_mem(&d, img, il, lab, ll, NULL), want, &d, bad[i].msg), "case %zu: %s",
               i, bad[i].dict);
        char nm[32];
        snprintf(nm, sizeof nm, "bad_header_%02zu", i);
        seed_pair("fuzz_data_npy", nm, img, il, lab, ll);
        free(img);
    }
    uint8_t *img = npy_make("{'descr': '|u1', 'fortran_order': False, 'shape': (4, 2, 2), }", px, 16, &il);
    /* magic, version, header length past the end */
    uint8_t *b = malloc(il);
    memcpy(b, img, il);
    b[1] = 'n';
    CHECK(REFUSED(eng_dataset_read_npy_mem(&d, b, il, lab, ll, NULL), ENG_ERR_FORMAT, &d, "magic"));
    memcpy(b, img, il);
    b[6] = 4;
    CHECK(REFUSED(eng_dataset_read_npy_mem(&d, b, il, lab, ll, NULL), ENG_ERR_FORMAT, &d, "version 4.0"));
    memcpy(b, img, il);
    b[9] = 0xf0;
    CHECK(REFUSED(eng_dataset_read_npy_mem(&d, b, il, lab, ll, NULL), ENG_ERR_FORMAT, &d, "header"));
    free(b);
    /* truncated data and trailing data */
    CHECK(REFUSED(eng_dataset_read_npy_mem(&d, img, il - 1, lab, ll, NULL), ENG_ERR_FORMAT, &d, "truncated"));
    b = malloc(il + 1);
    memcpy(b, img, il);
    b[il] = 0;
    CHECK(REFUSED(eng_dataset_read_npy_mem(&d, b, il + 1, lab, ll, NULL), ENG_ERR_FORMAT, &d, "17 follow"));
    free(b);
    /* labels: count, dtype, values, one class */
    uint8_t *l;
    size_t ln;
    l = npy_make("{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }", l1, 3, &ln);
    CHECK(REFUSED(eng_dataset_read_npy_mem(&d, img, il, l, ln, NULL), ENG_ERR_FORMAT, &d, "for 4 images"));
    free(l);
    float lf[4] = {0, 1, 0, 1};
    l = npy_make("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", lf, 16, &ln);
    CHECK(REFUSED(eng_dataset_read_npy_mem(&d, img, il, l, ln, NULL), ENG_ERR_FORMAT, &d, "labels of dtype"));
    free(l);
    int64_t l8[4] = {0, 1, -1, 1};
    l = npy_make("{'descr': '<i8', 'fortran_order': False, 'shape': (4,), }", l8, 32, &ln);
    CHECK(REFUSED(eng_dataset_read_npy_mem(&d, img, il, l, ln, NULL), ENG_ERR_FORMAT, &d, "label -1 of example 2"));
    free(l);
    l8[2] = 1 << 20;
    l = npy_make("{'descr': '<i8', 'fortran_order': False, 'shape': (4,), }", l8, 32, &ln);
    CHECK(REFUSED(eng_dataset_read_npy_mem(&d, img, il, l, ln, NULL), ENG_ERR_FORMAT, &d, "outside"));
    free(l);
    uint8_t same[4] = {2, 2, 2, 2};
    l = npy_make("{'descr': '|u1', 'fortran_order': False, 'shape': (4,), }", same, 4, &ln);
    CHECK(REFUSED(eng_dataset_read_npy_mem(&d, img, il, l, ln, NULL), ENG_ERR_FORMAT, &d, "at least 2 classes"));
    free(l);
    /* float pixels outside [0, 1], NaN */
    float f[16] = {0};
    f[5] = 1.5f;
    uint8_t *fi = npy_make("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 2, 2), }", f, sizeof f, &ln);
    CHECK(REFUSED(eng_dataset_read_npy_mem(&d, fi, ln, lab, ll, NULL), ENG_ERR_FORMAT, &d, "value 5 is 1.5"));
    free(fi);
    f[5] = NAN;
    fi = npy_make("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 2, 2), }", f, sizeof f, &ln);
    CHECK(REFUSED(eng_dataset_read_npy_mem(&d, fi, ln, lab, ll, NULL), ENG_ERR_FORMAT, &d, "[0, 1]"));
    free(fi);
    /* limit */
    eng_data_opts o = {.max_pixels = 15};
    CHECK(REFUSED(eng_dataset_read_npy_mem(&d, img, il, lab, ll, &o), ENG_ERR_LIMIT, &d, "limit"));
    CHECK(REFUSED(eng_dataset_read_npy_mem(&d, NULL, 0, NULL, 0, NULL), ENG_ERR_FORMAT, &d, "magic"));
    CHECK(REFUSED(eng_dataset_read_npy(&d, "/nonexistent.npy", "/nonexistent.npy", NULL), ENG_ERR_NOT_FOUND, &d,
                     NULL));
    free(img);
    free(lab);
}

/* A .npz of the given members as numpy writes them ("<key>.npy"). */
static uint8_t *npz_make(const char *fmt, const char **keys, uint8_t **arrs, size_t *lens, int n, size_t *len)
{
    ent e[8];
    char names[8][64];
    for (int i = 0; i < n; i++) {
        snprintf(names[i], sizeof names[i], "%s.npy", keys[i]);
        e[i] = (ent){names[i], arrs[i], lens[i], E_FILE};
    }
    return arch_make(fmt, e, n, len);
}

static void npz_read(void)
{
    uint8_t px[6 * 3 * 3 * 3];
    for (size_t i = 0; i < sizeof px; i++)
        px[i] = (uint8_t)(i * 3);
    uint8_t l1[6] = {0, 1, 2, 0, 1, 2};
    size_t lens[4];
    uint8_t *arrs[4];
    arrs[0] = npy_make("{'descr': '|u1', 'fortran_order': False, 'shape': (6, 3, 3, 3), }", px, sizeof px, &lens[0]);
    arrs[1] = npy_make("{'descr': '|u1', 'fortran_order': False, 'shape': (6,), }", l1, 6, &lens[1]);
    arrs[2] = npy_make("{'descr': '|u1', 'fortran_order': False, 'shape': (6,), }", l1, 6, &lens[2]);
    arrs[3] = arrs[0];
    lens[3] = lens[0];
    eng_dataset d;
    eng_data_opts o = {.layout = ENG_NPY_NHWC};
    const char *fmts[] = {"zip", "zip-store"};
    for (int f = 0; f < 2; f++) {
        size_t len;
        const char *keys[] = {"x", "y"};
        uint8_t *z = npz_make(fmts[f], keys, arrs, lens, 2, &len);
        REQUIRE_OK(eng_dataset_read_npz_mem(&d, z, len, &o));
        CHECK(d.n == 6 && d.c == 3 && d.h == 3 && d.w == 3 && d.num_classes == 3);
        CHECK(d.pixels[((2 * 3 + 1) * 3 + 2) * 3 + 0] == px[((2 * 3 + 2) * 3 + 0) * 3 + 1]);
        eng_dataset_cleanup(&d);
        CHECK(eng_dataset_detect(z, len, "data.zip") == ENG_FMT_NPZ); /* by the member name */
        CHECK(eng_dataset_detect(z, len, NULL) == ENG_FMT_NPZ);
        seed_out("fuzz_data_npz", f ? "stored" : "deflated", z, len);
        char p[600];
        path_in(p, sizeof p, "d.npz");
        REQUIRE(write_file(p, z, len) == 0);
        REQUIRE_OK(eng_dataset_read_npz(&d, p, &o));
        CHECK(d.n == 6);
        eng_dataset_cleanup(&d);
        free(z);
    }
    /* named members, other arrays ignored */
    size_t len;
    const char *k2[] = {"train_images", "train_labels", "test_labels"};
    uint8_t *z = npz_make("zip", k2, arrs, lens, 3, &len);
    CHECK(REFUSED(eng_dataset_read_npz_mem(&d, z, len, &o), ENG_ERR_FORMAT, &d, "'train_images'"));
    o.images_key = "train_images";
    o.labels_key = "train_labels";
    REQUIRE_OK(eng_dataset_read_npz_mem(&d, z, len, &o));
    CHECK(d.n == 6);
    eng_dataset_cleanup(&d);
    o.labels_key = "nope";
    CHECK(REFUSED(eng_dataset_read_npz_mem(&d, z, len, &o), ENG_ERR_FORMAT, &d, "no labels array 'nope'"));
    o.labels_key = "train_images";
    CHECK(REFUSED(eng_dataset_read_npz_mem(&d, z, len, &o), ENG_ERR_ARG, &d, "both"));
    o.images_key = o.labels_key = NULL;
    free(z);
    /* two default candidates */
    const char *k3[] = {"x", "y", "labels", "images"};
    z = npz_make("zip", k3, arrs, lens, 4, &len);
    CHECK(REFUSED(eng_dataset_read_npz_mem(&d, z, len, &o), ENG_ERR_ARG, &d, "name one"));
    free(z);
    for (int i = 0; i < 3; i++)
        free(arrs[i]);
}

static void npz_malformed(void)
{
    uint8_t px[16];
    memset(px, 1, sizeof px);
    uint8_t l1[4] = {0, 1, 0, 1};
    size_t lens[2], len;
    uint8_t *arrs[2];
    arrs[0] = npy_make("{'descr': '|u1', 'fortran_order': False, 'shape': (4, 2, 2), }", px, 16, &lens[0]);
    arrs[1] = npy_make("{'descr': '|u1', 'fortran_order': False, 'shape': (4,), }", l1, 4, &lens[1]);
    eng_dataset d;
    ent e[3] = {{"x.npy", arrs[0], lens[0], E_FILE}, {"y.npy", arrs[1], lens[1], E_FILE}, {NULL, NULL, 0, E_FILE}};
    /* path traversal and absolute member names */
    const char *evil[] = {"../x.npy", "/etc/x.npy", "a/../../x.npy", "C:\\x.npy", "a\\..\\..\\x.npy"};
    for (int i = 0; i < 5; i++) {
        e[2] = (ent){evil[i], arrs[0], lens[0], E_FILE};
        uint8_t *z = arch_make("zip", e, 3, &len);
        CHECKF(REFUSED(eng_dataset_read_npz_mem(&d, z, len, NULL), ENG_ERR_FORMAT, &d, "member"), "%s", evil[i]);
        char nm[32];
        snprintf(nm, sizeof nm, "evil_%d", i);
        seed_out("fuzz_data_npz", nm, z, len);
        free(z);
    }
    /* a member twice */
    e[2] = (ent){"x.npy", arrs[0], lens[0], E_FILE};
    uint8_t *z = arch_make("zip-store", e, 3, &len);
    CHECK(REFUSED(eng_dataset_read_npz_mem(&d, z, len, NULL), ENG_ERR_FORMAT, &d, "twice"));
    free(z);
    /* truncated zip, damaged member data, not a zip */
    z = arch_make("zip", e, 2, &len);
    CHECK(REFUSED(eng_dataset_read_npz_mem(&d, z, len / 2, NULL), ENG_ERR_FORMAT, &d, NULL));
    seed_out("fuzz_data_npz", "truncated", z, len / 2);
    size_t data_at = 30 + (size_t)(z[26] | z[27] << 8) + (size_t)(z[28] | z[29] << 8);
    z[data_at + 10] ^= 0xff; /* inside the first member's deflate data */
    CHECK(REFUSED(eng_dataset_read_npz_mem(&d, z, len, NULL), ENG_ERR_FORMAT, &d, NULL));
    free(z);
    CHECK(REFUSED(eng_dataset_read_npz_mem(&d, "hello", 5, NULL), ENG_ERR_FORMAT, &d, "not a zip"));
    CHECK(REFUSED(eng_dataset_read_npz_mem(&d, NULL, 0, NULL), ENG_ERR_FORMAT, &d, NULL));
    /* a member that is not an array is refused where it is used */
    e[1] = (ent){"y.npy", "garbage", 7, E_FILE};
    z = arch_make("zip", e, 2, &len);
    CHECK(REFUSED(eng_dataset_read_npz_mem(&d, z, len, NULL), ENG_ERR_FORMAT, &d, "member 'y.npy'"));
    free(z);
    free(arrs[0]);
    free(arrs[1]);
}

/* ---- ImageFolder archives ---- */

static void archive_read(void)
{
    /* three classes given out of order; PNG (RGB and gray) and JPEG (RGB, progressive gray) */
    size_t l[6];
    uint8_t *img[6] = {png_of(8, 6, 3, 1, &l[0]), png_of(8, 6, 1, 2, &l[1]), jpeg_of(8, 6, 3, 3, 0, &l[2]),
                       png_of(8, 6, 3, 4, &l[3]), jpeg_of(8, 6, 1, 5, 1, &l[4]), png_of(8, 6, 3, 6, &l[5])};
    ent e[] = {
        {"zebra/", NULL, 0, E_DIR},       {"zebra/b.png", img[0], l[0], E_FILE}, {"./cat/x/2.png", img[1], l[1], E_FILE},
        {"cat/1.jpg", img[2], l[2], E_FILE}, {"zebra/a.png", img[3], l[3], E_FILE}, {"dog/z.jpeg", img[4], l[4], E_FILE},
        {"dog/y.png", img[5], l[5], E_FILE},
    };
    const int ne = sizeof e / sizeof *e;
    const char *fmts[] = {"tar", "tar.gz", "zip"};
    const eng_data_format want_fmt[] = {ENG_FMT_TAR, ENG_FMT_TAR_GZ, ENG_FMT_ZIP};
    for (int f = 0; f < 3; f++) {
        size_t len;
        uint8_t *a = arch_make(fmts[f], e, ne, &len);
        eng_dataset d;
        REQUIRE_OK(eng_dataset_read_archive_mem(&d, a, len, NULL));
        CHECK(d.n == 6 && d.c == 3 && d.h == 6 && d.w == 8 && d.num_classes == 3 && d.type == ENG_PIX_U8);
        REQUIRE(d.class_names);
        CHECK(strcmp(d.class_names[0], "cat") == 0 && strcmp(d.class_names[1], "dog") == 0 &&
              strcmp(d.class_names[2], "zebra") == 0);
        /* sorted by class, then path: cat/1.jpg, cat/x/2.png, dog/y.png, dog/z.jpeg, zebra/a.png, zebra/b.png */
        const int32_t wl[6] = {0, 0, 1, 1, 2, 2};
        for (int i = 0; i < 6; i++)
            CHECK(d.labels[i] == wl[i]);
        const int64_t per = 3 * 6 * 8;
        uint8_t *p4 = pattern(8, 6, 3, 4), *p2 = pattern(8, 6, 1, 2);
        int exact = 1;
        for (int y = 0; y < 6; y++)
            for (int x = 0; x < 8; x++)
                for (int ch = 0; ch < 3; ch++) {
                    exact &= d.pixels[4 * per + (ch * 6 + y) * 8 + x] == p4[(y * 8 + x) * 3 + ch]; /* zebra/a.png */
                    exact &= d.pixels[1 * per + (ch * 6 + y) * 8 + x] == p2[y * 8 + x];          /* gray, copied */
                }
        CHECK(exact);
        /* JPEG pixels are what the decoder gives */
        uint8_t *jp;
        int w, h, c;
        REQUIRE_OK(eng_image_decode(img[2], l[2], 0, &jp, &w, &h, &c));
        CHECK(w == 8 && h == 6 && c == 3 && d.pixels[0 * per + (2 * 6 + 5) * 8 + 7] == jp[(5 * 8 + 7) * 3 + 2]);
        free(jp);
        free(p4);
        free(p2);
        eng_dataset_cleanup(&d);
        CHECK(eng_dataset_detect(a, len, NULL) == want_fmt[f]);
        char nm[32];
        snprintf(nm, sizeof nm, "mixed.%s", fmts[f]);
        /* the fuzz target takes an options byte first */
        uint8_t *s = malloc(len + 1);
        s[0] = 0;
        memcpy(s + 1, a, len);
        seed_out("fuzz_data_archive", nm, s, len + 1);
        free(s);
        if (f == 1) {
            char p[600];
            path_in(p, sizeof p, "folder.tgz");
            REQUIRE(write_file(p, a, len) == 0);
            eng_data_opts o = {.channels = 1};
            REQUIRE_OK(eng_dataset_read_file(&d, ENG_FMT_TAR_GZ, p, NULL, &o));
            CHECK(d.c == 1 && d.n == 6);
            /* luma of zebra/a.png pixel (0, 0) */
            uint8_t *q = pattern(8, 6, 3, 4);
            CHECK(d.pixels[4 * 48] == (uint8_t)((299 * q[0] + 587 * q[1] + 114 * q[2] + 500) / 1000));
            free(q);
            eng_dataset_cleanup(&d);
        }
        free(a);
    }
    for (int i = 0; i < 6; i++)
        free(img[i]);
}

static void archive_resize(void)
{
    /* different sizes, resized to 9x7: compare with PyTorch's bilinear (align_corners=False) */
    size_t l[3];
    uint8_t *img[3] = {png_of(4, 5, 1, 1, &l[0]), png_of(16, 12, 3, 2, &l[1]), png_of(9, 7, 3, 3, &l[2])};
    ent e[] = {{"a/0.png", img[0], l[0], E_FILE}, {"b/1.png", img[1], l[1], E_FILE}, {"b/2.png", img[2], l[2], E_FILE}};
    size_t len;
    uint8_t *a = arch_make("zip", e, 3, &len);
    eng_dataset d;
    CHECK(REFUSED(eng_dataset_read_archive_mem(&d, a, len, NULL), ENG_ERR_FORMAT, &d,
                     "'a/0.png' is 4x5 but 'b/1.png' is 16x12"));
    eng_data_opts o = {.resize_h = 7, .resize_w = 9};
    REQUIRE_OK(eng_dataset_read_archive_mem(&d, a, len, &o));
    CHECK(d.n == 3 && d.c == 3 && d.h == 7 && d.w == 9);
    uint8_t *src = pattern(16, 12, 3, 2);
    int worst = 0;
    for (int ch = 0; ch < 3; ch++)
        for (int y = 0; y < 7; y++)
            for (int x = 0; x < 9; x++) {
                double sy = (y + 0.5) * 12.0 / 7.0 - 0.5, sx = (x + 0.5) * 16.0 / 9.0 - 0.5;
                sy = sy < 0 ? 0 : sy;
                sx = sx < 0 ? 0 : sx;
                int y0 = (int)sy, x0 = (int)sx, y1 = y0 < 11 ? y0 + 1 : y0, x1 = x0 < 15 ? x0 + 1 : x0;
                double ly = sy - y0, lx = sx - x0;
#define S(yy, xx) (double)src[((yy) * 16 + (xx)) * 3 + ch]
                double v = (1 - ly) * ((1 - lx) * S(y0, x0) + lx * S(y0, x1)) + ly * ((1 - lx) * S(y1, x0) + lx * S(y1, x1));
#undef S
                int got = d.pixels[1 * 189 + (ch * 7 + y) * 9 + x];
                int diff = abs(got - (int)floor(v + 0.5));
                worst = diff > worst ? diff : worst;
            }
    CHECKF(worst <= 1, "resize off by %d", worst);
    /* 9x7 is already the size: copied exactly; gray is spread to three planes */
    uint8_t *s3 = pattern(9, 7, 3, 3);
    CHECK(d.pixels[2 * 189 + (1 * 7 + 3) * 9 + 4] == s3[(3 * 9 + 4) * 3 + 1]);
    CHECK(memcmp(d.pixels, d.pixels + 63, 63) == 0 && memcmp(d.pixels, d.pixels + 126, 63) == 0);
    free(s3);
    free(src);
    eng_dataset_cleanup(&d);
    uint8_t *s = malloc(len + 1);
    s[0] = 0x13; /* resize on in the fuzz target's option byte */
    memcpy(s + 1, a, len);
    seed_out("fuzz_data_archive", "sizes.zip", s, len + 1);
    free(s);
    free(a);
    for (int i = 0; i < 3; i++)
        free(img[i]);
}

/* A PNG whose IHDR claims w x h, with no pixel data behind it: a decompression bomb's header. */
static uint8_t *png_claim(uint32_t w, uint32_t h, size_t *len)
{
    size_t l;
    uint8_t *p = png_of(2, 2, 1, 0, &l);
    be32(p + 16, w);
    be32(p + 20, h);
    uint32_t crc = (uint32_t)crc32(0, p + 12, 17);
    be32(p + 29, crc);
    *len = l;
    return p;
}

static void archive_malformed(void)
{
    size_t l1, l2, l3, len;
    uint8_t *a1 = png_of(4, 4, 3, 1, &l1), *a2 = png_of(4, 4, 3, 2, &l2), *a3 = jpeg_of(4, 4, 3, 3, 0, &l3);
    eng_dataset d;
    const ent good[2] = {{"a/1.png", a1, l1, E_FILE}, {"b/2.png", a2, l2, E_FILE}};
    static const struct {
        ent e;
        eng_status want;
        const char *msg;
    } bad[] = {
        {{"../c/3.png", NULL, 0, E_FILE}, ENG_ERR_FORMAT, "path traversal"},
        {{"c/../../3.png", NULL, 0, E_FILE}, ENG_ERR_FORMAT, "path traversal"},
        {{"/c/3.png", NULL, 0, E_FILE}, ENG_ERR_FORMAT, "absolute"},
        {{"c/3.png", NULL, 0, E_SYMLINK}, ENG_ERR_FORMAT, "symbolic link"},
        {{"c/3.png", NULL, 0, E_HARDLINK}, ENG_ERR_FORMAT, "hard link"},
        {{"c/4.png", NULL, 0, E_SYMLINK}, ENG_ERR_FORMAT, "symbolic link"},
        {{"c/readme.txt", "hello", 5, E_FILE}, ENG_ERR_FORMAT, "'c/readme.txt' (5 bytes) is not a PNG or JPEG"},
        {{"c/.DS_Store", "\0\0\0\1Bud1", 8, E_FILE}, ENG_ERR_FORMAT, "not a PNG or JPEG"},
        {{"3.png", NULL, 0, E_FILE}, ENG_ERR_FORMAT, "not inside a class folder"},
        {{"a/1.png", NULL, 0, E_FILE}, ENG_ERR_FORMAT, "appears twice"},
        {{"c/bomb.png", NULL, 0, E_FILE}, ENG_ERR_LIMIT, "over the limit"},
        {{"c/half.png", NULL, 0, E_FILE}, ENG_ERR_FORMAT, "truncated"},
        {{"c/half.jpg", NULL, 0, E_FILE}, ENG_ERR_FORMAT, "Premature end"},
        {{"c/cmyk.jpg", NULL, 0, E_FILE}, ENG_ERR_FORMAT, "CMYK"},
        {{"c/empty.png", "", 0, E_FILE}, ENG_ERR_FORMAT, "not a PNG or JPEG"},
    };
    size_t bl, cl;
    uint8_t *bomb = png_claim(30000, 30000, &bl), *cmyk = jpeg_of(4, 4, 4, 7, 0, &cl);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ent e[3] = {good[0], good[1], bad[i].e};
        if (!e[2].data) {
            e[2].data = a1;
            e[2].len = l1;
        }
        if (strstr(e[2].name, "bomb"))
            e[2].data = bomb, e[2].len = bl;
        if (strstr(e[2].name, "half.png"))
            e[2].len = l1 / 2;
        if (strstr(e[2].name, "half.jpg"))
            e[2].data = a3, e[2].len = l3 - 40;
        if (strstr(e[2].name, "cmyk"))
            e[2].data = cmyk, e[2].len = cl;
        /* zip has no hard links */
        const char *fmt = i % 3 == 0 || e[2].type == E_HARDLINK ? "tar" : i % 3 == 1 ? "zip" : "tar.gz";
        uint8_t *a = arch_make(fmt, e, 3, &len);
        CHECKF(REFUSED(eng_dataset_read_archive_mem(&d, a, len, NULL), bad[i].want, &d, bad[i].msg), "case %zu (%s)",
               i, bad[i].e.name);
        uint8_t *s = malloc(len + 1);
        s[0] = (uint8_t)i;
        memcpy(s + 1, a, len);
        char nm[32];
        snprintf(nm, sizeof nm, "bad_%02zu.%s", i, fmt);
        seed_out("fuzz_data_archive", nm, s, len + 1);
        free(s);
        free(a);
    }
    /* the declared-pixel budget: three 4x4 RGB images are 144 values */
    ent e3[3] = {good[0], good[1], {"c/3.jpg", a3, l3, E_FILE}};
    uint8_t *a = arch_make("tar", e3, 3, &len);
    eng_data_opts o = {.max_pixels = 100};
    CHECK(REFUSED(eng_dataset_read_archive_mem(&d, a, len, &o), ENG_ERR_LIMIT, &d, "with the 2 images before it"));
    o.max_pixels = 144;
    REQUIRE_OK(eng_dataset_read_archive_mem(&d, a, len, &o));
    CHECK(d.n == 3 && d.num_classes == 3);
    eng_dataset_cleanup(&d);
    /* a cut archive */
    CHECK(REFUSED(eng_dataset_read_archive_mem(&d, a, len - 1100, NULL), ENG_ERR_FORMAT, &d, NULL));
    free(a);
    a = arch_make("tar.gz", e3, 3, &len);
    CHECK(REFUSED(eng_dataset_read_archive_mem(&d, a, len - 20, NULL), ENG_ERR_FORMAT, &d, NULL));
    free(a);
    /* one class, nothing at all, not an archive, options */
    ent one[2] = {{"root/a/1.png", a1, l1, E_FILE}, {"root/b/2.png", a2, l2, E_FILE}};
    a = arch_make("zip", one, 2, &len);
    CHECK(REFUSED(eng_dataset_read_archive_mem(&d, a, len, NULL), ENG_ERR_FORMAT, &d, "one class folder, 'root'"));
    free(a);
    ent dirs[1] = {{"a/", NULL, 0, E_DIR}};
    a = arch_make("tar", dirs, 1, &len);
    CHECK(REFUSED(eng_dataset_read_archive_mem(&d, a, len, NULL), ENG_ERR_FORMAT, &d, "no images"));
    free(a);
    CHECK(REFUSED(eng_dataset_read_archive_mem(&d, "not an archive at all", 21, NULL), ENG_ERR_FORMAT, &d, NULL));
    a = arch_make("tar", good, 2, &len);
    o = (eng_data_opts){.resize_h = 5};
    CHECK(REFUSED(eng_dataset_read_archive_mem(&d, a, len, &o), ENG_ERR_ARG, &d, "both sides"));
    o = (eng_data_opts){.channels = 2};
    CHECK(REFUSED(eng_dataset_read_archive_mem(&d, a, len, &o), ENG_ERR_ARG, &d, NULL));
    free(a);
    CHECK(REFUSED(eng_dataset_read_archive(&d, "/nonexistent.tar", NULL), ENG_ERR_NOT_FOUND, &d, NULL));
    /* single images: the decoder's own refusals */
    uint8_t *pix = (uint8_t *)1;
    int w, h, c;
    CHECK(eng_image_decode(bomb, bl, 0, &pix, &w, &h, &c) == ENG_ERR_LIMIT && pix == NULL);
    CHECK(eng_image_decode(a3, l3, 15, &pix, &w, &h, &c) == ENG_ERR_LIMIT && pix == NULL);
    CHECK(eng_image_decode(a3, l3 / 2, 0, &pix, &w, &h, &c) == ENG_ERR_FORMAT && pix == NULL);
    CHECK(eng_image_decode((const uint8_t *)"GIF89a", 6, 0, &pix, &w, &h, &c) == ENG_ERR_FORMAT && pix == NULL);
    REQUIRE_OK(eng_image_decode(a3, l3, 16, &pix, &w, &h, &c));
    CHECK(w == 4 && h == 4 && c == 3);
    free(pix);
    seed_out("fuzz_data_image", "rgb.jpg", a3, l3);
    seed_out("fuzz_data_image", "half.jpg", a3, l3 / 2);
    seed_out("fuzz_data_image", "cmyk.jpg", cmyk, cl);
    seed_out("fuzz_data_image", "rgb.png", a1, l1);
    seed_out("fuzz_data_image", "bomb.png", bomb, bl);
    size_t pl;
    uint8_t *prog = jpeg_of(16, 16, 1, 9, 1, &pl);
    seed_out("fuzz_data_image", "progressive_gray.jpg", prog, pl);
    free(prog);
    free(bomb);
    free(cmyk);
    free(a1);
    free(a2);
    free(a3);
}

static void archive_unicode_names(void)
{
    size_t l1, l2, len;
    uint8_t *a1 = png_of(3, 3, 1, 1, &l1), *a2 = png_of(3, 3, 1, 2, &l2);
    ent e[2] = {{"\xc3\xa9t\xc3\xa9/1.png", a1, l1, E_FILE}, {"hiver/2.png", a2, l2, E_FILE}};
    for (int f = 0; f < 2; f++) {
        uint8_t *a = arch_make(f ? "zip" : "tar", e, 2, &len);
        eng_dataset d;
        REQUIRE_OK(eng_dataset_read_archive_mem(&d, a, len, NULL));
        CHECK(d.n == 2 && d.c == 1 && strcmp(d.class_names[1], "\xc3\xa9t\xc3\xa9") == 0 &&
              strcmp(d.class_names[0], "hiver") == 0);
        eng_dataset_cleanup(&d);
        free(a);
    }
    free(a1);
    free(a2);
}

/* ---- detection ---- */

static void detect_formats(void)
{
    size_t l, gl;
    uint8_t *img = idx_images(3, 2, 2, &l), *g = gz(img, l, &gl);
    CHECK(eng_dataset_detect(img, l, NULL) == ENG_FMT_IDX_IMAGES);
    CHECK(eng_dataset_detect(g, gl, "x.gz") == ENG_FMT_IDX_IMAGES);
    CHECK(eng_dataset_detect(g, 20, "x.gz") == ENG_FMT_IDX_IMAGES); /* a short head still shows the magic */
    free(img);
    free(g);
    img = idx_labels(3, 2, &l);
    CHECK(eng_dataset_detect(img, l, "labels") == ENG_FMT_IDX_LABELS);
    free(img);
    CHECK(eng_dataset_detect("PK\x05\x06", 4, "empty.npz") == ENG_FMT_NPZ);
    CHECK(eng_dataset_detect("PK\x05\x06", 4, "empty.zip") == ENG_FMT_ZIP);
    CHECK(eng_dataset_detect("hello", 5, "hello.txt") == ENG_FMT_UNKNOWN);
    CHECK(eng_dataset_detect(NULL, 0, NULL) == ENG_FMT_UNKNOWN);
    CHECK(eng_dataset_detect("\x1f\x8b", 2, "x.tar.gz") == ENG_FMT_TAR_GZ);
    CHECK(strcmp(eng_data_format_name(ENG_FMT_TAR_GZ), "tar.gz") == 0 &&
          strcmp(eng_data_format_name((eng_data_format)99), "unknown") == 0);
    /* Fashion-MNIST's own files */
    FILE *fp = fopen(FASHION "/t10k-labels-idx1-ubyte.gz", "rb");
    REQUIRE(fp);
    uint8_t head[512];
    size_t n = fread(head, 1, sizeof head, fp);
    fclose(fp);
    CHECK(eng_dataset_detect(head, n, "t10k-labels-idx1-ubyte.gz") == ENG_FMT_IDX_LABELS);
    seed_out("fuzz_data_detect", "idx_labels.gz", head, n);
    eng_dataset d;
    CHECK(REFUSED(eng_dataset_read_file(&d, ENG_FMT_UNKNOWN, "x", NULL, NULL), ENG_ERR_ARG, &d, "unknown"));
}

/* ---- subsets, splits ---- */

/* 40 examples: label i % 10 (so four per class), pixel value = example index. */
static void toy(eng_dataset *d, int c, int h, int w)
{
    memset(d, 0, sizeof *d);
    d->n = 40;
    d->c = c;
    d->h = h;
    d->w = w;
    d->num_classes = 10;
    d->pixels = malloc((size_t)40 * c * h * w);
    d->labels = malloc(40 * sizeof(int32_t));
    for (int i = 0; i < 40; i++) {
        d->labels[i] = i % 10;
        memset(d->pixels + (size_t)i * c * h * w, i, (size_t)c * h * w);
    }
}

static void subsets(void)
{
    eng_dataset d, s, s2;
    toy(&d, 1, 2, 2);
    const int32_t hi[5] = {5, 6, 7, 8, 9};
    eng_subset sub = {.classes = hi, .n_classes = 5};
    REQUIRE_OK(eng_dataset_subset(&s, &d, &sub));
    CHECK(s.n == 20 && s.num_classes == 5 && s.c == 1 && s.h == 2);
    int ok = 1;
    for (int i = 0; i < 20; i++)
        ok &= s.labels[i] == s.pixels[i * 4] % 10 - 5 && s.pixels[i * 4] % 10 >= 5;
    CHECK(ok);
    CHECK(s.pixels[0] == 5 && s.pixels[4] == 6); /* file order kept */
    eng_dataset_cleanup(&s);
    /* reordered classes relabel in the order given */
    const int32_t two[2] = {3, 1};
    sub = (eng_subset){.classes = two, .n_classes = 2, .per_class = 2};
    REQUIRE_OK(eng_dataset_subset(&s, &d, &sub));
    CHECK(s.n == 4 && s.num_classes == 2);
    CHECK(s.pixels[0] == 1 && s.labels[0] == 1 && s.pixels[4] == 3 && s.labels[1] == 0 && s.pixels[8] == 11 &&
          s.pixels[12] == 13);
    eng_dataset_cleanup(&s);
    /* N per class at random: reproducible by seed, different across seeds, each class N */
    sub = (eng_subset){.per_class = 2, .random = 1, .seed = 7};
    REQUIRE_OK(eng_dataset_subset(&s, &d, &sub));
    REQUIRE_OK(eng_dataset_subset(&s2, &d, &sub));
    CHECK(s.n == 20 && s.num_classes == 10 && memcmp(s.pixels, s2.pixels, 80) == 0);
    int64_t counts[10];
    eng_dataset_class_counts(&s, counts);
    for (int i = 0; i < 10; i++)
        CHECK(counts[i] == 2);
    eng_dataset_cleanup(&s2);
    int differs = 0;
    for (uint64_t seed = 8; seed < 12 && !differs; seed++) {
        sub.seed = seed;
        REQUIRE_OK(eng_dataset_subset(&s2, &d, &sub));
        differs = memcmp(s.pixels, s2.pixels, 80) != 0;
        eng_dataset_cleanup(&s2);
    }
    CHECK(differs);
    eng_dataset_cleanup(&s);
    /* refusals */
    const int32_t dup[2] = {1, 1}, out[2] = {1, 10}, single[1] = {4};
    sub = (eng_subset){.classes = dup, .n_classes = 2};
    CHECK(eng_dataset_subset(&s, &d, &sub) == ENG_ERR_ARG && strstr(eng_last_error(), "twice") && s.n == 0);
    sub = (eng_subset){.classes = out, .n_classes = 2};
    CHECK(eng_dataset_subset(&s, &d, &sub) == ENG_ERR_ARG && strstr(eng_last_error(), "outside"));
    sub = (eng_subset){.classes = single, .n_classes = 1};
    CHECK(eng_dataset_subset(&s, &d, &sub) == ENG_ERR_ARG);
    sub = (eng_subset){.per_class = 5};
    CHECK(eng_dataset_subset(&s, &d, &sub) == ENG_ERR_ARG && strstr(eng_last_error(), "has 4 examples, 5 asked"));
    /* take */
    const int32_t pick[3] = {39, 0, 39};
    REQUIRE_OK(eng_dataset_take(&s, &d, pick, 3));
    CHECK(s.n == 3 && s.pixels[0] == 39 && s.pixels[4] == 0 && s.labels[0] == 9 && s.num_classes == 10);
    eng_dataset_cleanup(&s);
    const int32_t badpick[1] = {40};
    CHECK(eng_dataset_take(&s, &d, badpick, 1) == ENG_ERR_ARG && s.n == 0);
    eng_dataset_cleanup(&d);

    /* class names follow the relabelling */
    size_t l1, l2, l3, len;
    uint8_t *a1 = png_of(2, 2, 1, 1, &l1), *a2 = png_of(2, 2, 1, 2, &l2), *a3 = png_of(2, 2, 1, 3, &l3);
    ent e[3] = {{"ant/1.png", a1, l1, E_FILE}, {"bee/1.png", a2, l2, E_FILE}, {"cow/1.png", a3, l3, E_FILE}};
    uint8_t *a = arch_make("tar", e, 3, &len);
    REQUIRE_OK(eng_dataset_read_archive_mem(&d, a, len, NULL));
    const int32_t ca[2] = {2, 0};
    sub = (eng_subset){.classes = ca, .n_classes = 2};
    REQUIRE_OK(eng_dataset_subset(&s, &d, &sub));
    CHECK(s.n == 2 && strcmp(s.class_names[0], "cow") == 0 && strcmp(s.class_names[1], "ant") == 0);
    CHECK(s.labels[0] == 1 && s.labels[1] == 0);
    eng_dataset_cleanup(&s);
    eng_dataset_cleanup(&d);
    free(a);
    free(a1);
    free(a2);
    free(a3);
}

static void splits(void)
{
    eng_dataset d;
    REQUIRE_OK(eng_dataset_read_idx(&d, FASHION "/t10k-images-idx3-ubyte.gz", FASHION "/t10k-labels-idx1-ubyte.gz",
                                    NULL));
    int32_t *tr, *va, *tr2, *va2;
    int64_t nt, nv, nt2, nv2;
    REQUIRE_OK(eng_dataset_split(&d, 0.1, 42, &tr, &nt, &va, &nv));
    CHECK(nt == 9000 && nv == 1000);
    /* stratified: 100 of each class in validation */
    int64_t per[10] = {0};
    for (int64_t i = 0; i < nv; i++)
        per[d.labels[va[i]]]++;
    for (int i = 0; i < 10; i++)
        CHECK(per[i] == 100);
    /* disjoint, ascending, covering */
    uint8_t *seen = calloc(10000, 1);
    int ok = 1;
    for (int64_t i = 0; i < nt; i++)
        ok &= !seen[tr[i]]++ && (i == 0 || tr[i] > tr[i - 1]);
    for (int64_t i = 0; i < nv; i++)
        ok &= !seen[va[i]]++ && (i == 0 || va[i] > va[i - 1]);
    CHECK(ok);
    free(seen);
    /* the same seed, the same split; another seed, another */
    REQUIRE_OK(eng_dataset_split(&d, 0.1, 42, &tr2, &nt2, &va2, &nv2));
    CHECK(nv2 == nv && memcmp(va, va2, (size_t)nv * 4) == 0);
    free(tr2);
    free(va2);
    REQUIRE_OK(eng_dataset_split(&d, 0.1, 43, &tr2, &nt2, &va2, &nv2));
    CHECK(nv2 == nv && memcmp(va, va2, (size_t)nv * 4) != 0);
    free(tr2);
    free(va2);
    free(tr);
    free(va);
    /* rounding per class: 4 per class at 0.3 -> round(1.2) = 1 */
    eng_dataset t;
    toy(&t, 1, 1, 1);
    REQUIRE_OK(eng_dataset_split(&t, 0.3, 1, &tr, &nt, &va, &nv));
    CHECK(nv == 10 && nt == 30);
    free(tr);
    free(va);
    REQUIRE_OK(eng_dataset_split(&t, 0.0, 1, &tr, &nt, &va, &nv));
    CHECK(nv == 0 && nt == 40);
    free(tr);
    free(va);
    CHECK(eng_dataset_split(&t, 1.5, 1, &tr, &nt, &va, &nv) == ENG_ERR_ARG && tr == NULL && va == NULL);
    CHECK(eng_dataset_split(&t, NAN, 1, &tr, &nt, &va, &nv) == ENG_ERR_ARG);
    eng_dataset_cleanup(&t);
    eng_dataset_cleanup(&d);
}

/* ---- batches ---- */

static void batch_resize_channels(void)
{
    eng_dataset d;
    REQUIRE_OK(eng_dataset_read_idx(&d, FASHION "/t10k-images-idx3-ubyte.gz", FASHION "/t10k-labels-idx1-ubyte.gz",
                                    NULL));
    int32_t idx[3] = {0, 17, 9999}, labs[3];
    /* plain: pixels / 255 */
    eng_tensor x = ENG_TENSOR_INIT, y = ENG_TENSOR_INIT, ref = ENG_TENSOR_INIT, src = ENG_TENSOR_INIT;
    REQUIRE_OK(eng_tensor_alloc4(&src, 3, 1, 28, 28));
    REQUIRE_OK(eng_dataset_batch(&d, idx, 3, &src, labs));
    CHECK(labs[0] == 9 && labs[2] == d.labels[9999]);
    CHECK(src.data[784 + 300] == d.pixels[17 * 784 + 300] / 255.0f);
    /* the paper's 32 -> 224 style upsample with gray -> RGB, against the engine op and a direct formula */
    eng_batch_opts o = {.h = 224, .w = 200, .c = 3};
    REQUIRE_OK(eng_tensor_alloc4(&x, 3, 3, 224, 200));
    REQUIRE_OK(eng_dataset_batch_ex(&d, idx, 3, &o, &x, NULL));
    eng_ctx *ctx;
    eng_ctx_opts co = {.device = "cpu", .threads = 2};
    REQUIRE_OK(eng_ctx_new(&ctx, &co));
    REQUIRE_OK(eng_tensor_alloc4(&ref, 3, 1, 224, 200));
    REQUIRE_OK(eng_upsample_fwd(ctx, &ref, &src));
    eng_ctx_free(ctx);
    double worst = 0, worst_op = 0;
    for (int n = 0; n < 3; n++)
        for (int c = 0; c < 3; c++)
            for (int p = 0; p < 224; p++)
                for (int q = 0; q < 200; q++) {
                    float got = x.data[((n * 3 + c) * 224 + p) * 200 + q];
                    double e = fabs(got - ref.data[(n * 224 + p) * 200 + q]);
                    worst_op = e > worst_op ? e : worst_op;
                    double sy = (p + 0.5) * 28.0 / 224.0 - 0.5, sx = (q + 0.5) * 28.0 / 200.0 - 0.5;
                    sy = sy < 0 ? 0 : sy;
                    sx = sx < 0 ? 0 : sx;
                    int y0 = (int)sy, x0 = (int)sx, y1 = y0 < 27 ? y0 + 1 : y0, x1 = x0 < 27 ? x0 + 1 : x0;
                    double ly = sy - y0, lx = sx - x0;
                    const uint8_t *im = d.pixels + (int64_t)idx[n] * 784;
#define P(yy, xx) (im[(yy) * 28 + (xx)] / 255.0)
                    double v = (1 - ly) * ((1 - lx) * P(y0, x0) + lx * P(y0, x1)) +
                               ly * ((1 - lx) * P(y1, x0) + lx * P(y1, x1));
#undef P
                    e = fabs(got - v);
                    worst = e > worst ? e : worst;
                }
    CHECKF(worst_op == 0, "differs from eng_upsample_fwd by %g", worst_op);
    CHECKF(worst < 1e-6, "differs from bilinear by %g", worst);
    eng_tensor_cleanup(&ref);
    /* a shape mismatch is refused */
    CHECK(eng_dataset_batch_ex(&d, idx, 2, &o, &x, NULL) == ENG_ERR_SHAPE);
    CHECK(eng_dataset_batch(&d, idx, 3, &x, NULL) == ENG_ERR_SHAPE);
    int32_t badidx[1] = {10000};
    REQUIRE_OK(eng_tensor_alloc4(&y, 1, 1, 28, 28));
    CHECK(eng_dataset_batch(&d, badidx, 1, &y, NULL) == ENG_ERR_ARG);
    o = (eng_batch_opts){.c = 2};
    CHECK(eng_dataset_batch_ex(&d, idx, 1, &o, &y, NULL) == ENG_ERR_ARG);
    eng_tensor_cleanup(&y);
    eng_tensor_cleanup(&x);
    eng_tensor_cleanup(&src);
    eng_dataset_cleanup(&d);

    /* RGB -> gray is BT.601 luma */
    size_t len;
    uint8_t *c = malloc(2 * 3074);
    for (int i = 0; i < 2; i++) {
        c[i * 3073] = (uint8_t)i;
        for (int p = 0; p < 3072; p++)
            c[i * 3073 + 1 + p] = (uint8_t)(p < 1024 ? 200 : p < 2048 ? 100 : 10);
    }
    len = 2 * 3073;
    REQUIRE_OK(eng_dataset_read_cifar_mem(&d, c, len, NULL));
    o = (eng_batch_opts){.c = 1};
    REQUIRE_OK(eng_tensor_alloc4(&y, 1, 1, 32, 32));
    REQUIRE_OK(eng_dataset_batch_ex(&d, idx, 1, &o, &y, NULL));
    CHECK(fabsf(y.data[77] - (0.299f * 200 + 0.587f * 100 + 0.114f * 10) / 255.0f) < 1e-6f);
    eng_tensor_cleanup(&y);
    eng_dataset_cleanup(&d);
    free(c);
}

/* Finds the (dy, dx, flip) that explains out as a shifted, zero-filled, maybe mirrored copy of src. */
static int explain(const float *out, const float *src, int c, int h, int w, int pad, int *dy, int *dx, int *flip)
{
    for (int f = 0; f < 2; f++)
        for (int ty = -pad; ty <= pad; ty++)
            for (int tx = -pad; tx <= pad; tx++) {
                int match = 1;
                for (int ch = 0; ch < c && match; ch++)
                    for (int y = 0; y < h && match; y++)
                        for (int x = 0; x < w && match; x++) {
                            int sy = y + ty, sx = (f ? w - 1 - x : x) + tx;
                            float v = sy >= 0 && sy < h && sx >= 0 && sx < w ? src[(ch * h + sy) * w + sx] : 0.0f;
                            match = out[(ch * h + y) * w + x] == v;
                        }
                if (match) {
                    *dy = ty, *dx = tx, *flip = f;
                    return 1;
                }
            }
    return 0;
}

static void batch_augment(void)
{
    size_t len;
    uint8_t *b = cifar_make(64, 0, 10, &len);
    /* make every image distinct and asymmetric so a shift or a flip shows */
    for (int i = 0; i < 64; i++)
        for (int p = 0; p < 3072; p++)
            b[i * 3073 + 1 + p] = (uint8_t)(1 + (p * 37 + i * 11 + (p / 32) * (p % 32)) % 250);
    eng_dataset d;
    REQUIRE_OK(eng_dataset_read_cifar_mem(&d, b, len, NULL));
    free(b);
    int32_t idx[64];
    for (int i = 0; i < 64; i++)
        idx[i] = 63 - i;
    eng_tensor x1 = ENG_TENSOR_INIT, x2 = ENG_TENSOR_INIT, plain = ENG_TENSOR_INIT;
    REQUIRE_OK(eng_tensor_alloc4(&x1, 64, 3, 32, 32));
    REQUIRE_OK(eng_tensor_alloc4(&x2, 64, 3, 32, 32));
    REQUIRE_OK(eng_tensor_alloc4(&plain, 64, 3, 32, 32));
    REQUIRE_OK(eng_dataset_batch(&d, idx, 64, &plain, NULL));
    eng_batch_opts o = {.crop_pad = 4, .flip = 1, .seed = 1234};
    /* one thread and two: the same images */
    omp_set_num_threads(1);
    REQUIRE_OK(eng_dataset_batch_ex(&d, idx, 64, &o, &x1, NULL));
    omp_set_num_threads(2);
    REQUIRE_OK(eng_dataset_batch_ex(&d, idx, 64, &o, &x2, NULL));
    CHECK(memcmp(x1.data, x2.data, 64 * 3072 * sizeof(float)) == 0);
    /* each example is its image shifted by at most 4 with zeros, maybe mirrored */
    int flips = 0, shifts = 0, unexplained = 0, hist[9] = {0};
    for (int k = 0; k < 64; k++) {
        int dy, dx, f;
        if (!explain(x1.data + k * 3072, plain.data + k * 3072, 3, 32, 32, 4, &dy, &dx, &f)) {
            unexplained++;
            continue;
        }
        flips += f;
        shifts += dy != 0 || dx != 0;
        hist[dy + 4]++;
    }
    CHECK(unexplained == 0);
    CHECKF(flips > 16 && flips < 48, "%d of 64 flipped", flips);
    CHECK(shifts > 48);
    int used = 0;
    for (int i = 0; i < 9; i++)
        used += hist[i] > 0;
    CHECK(used >= 6);
    /* the draw depends on the example, not its position in the batch */
    int32_t one = idx[5];
    eng_tensor x3 = ENG_TENSOR_INIT;
    REQUIRE_OK(eng_tensor_alloc4(&x3, 1, 3, 32, 32));
    REQUIRE_OK(eng_dataset_batch_ex(&d, &one, 1, &o, &x3, NULL));
    CHECK(memcmp(x3.data, x1.data + 5 * 3072, 3072 * sizeof(float)) == 0);
    /* another seed, another augmentation */
    o.seed = 1235;
    REQUIRE_OK(eng_dataset_batch_ex(&d, idx, 64, &o, &x2, NULL));
    CHECK(memcmp(x1.data, x2.data, 64 * 3072 * sizeof(float)) != 0);
    /* with augmentation and upsampling together */
    eng_tensor big = ENG_TENSOR_INIT;
    REQUIRE_OK(eng_tensor_alloc4(&big, 4, 3, 64, 64));
    o = (eng_batch_opts){.crop_pad = 4, .flip = 1, .seed = 9, .h = 64, .w = 64};
    REQUIRE_OK(eng_dataset_batch_ex(&d, idx, 4, &o, &big, NULL));
    float mn = 1, mx = 0;
    for (int64_t i = 0; i < eng_tensor_numel(&big); i++) {
        mn = big.data[i] < mn ? big.data[i] : mn;
        mx = big.data[i] > mx ? big.data[i] : mx;
    }
    CHECK(mn >= 0.0f && mx <= 1.0f);
    eng_tensor_cleanup(&big);
    eng_tensor_cleanup(&x3);
    eng_tensor_cleanup(&x1);
    eng_tensor_cleanup(&x2);
    eng_tensor_cleanup(&plain);
    eng_dataset_cleanup(&d);
}

static void rm_tree(const char *dir)
{
    DIR *dd = opendir(dir);
    struct dirent *de;
    char p[1024];
    while (dd && (de = readdir(dd))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        unlink(p);
    }
    if (dd)
        closedir(dd);
    rmdir(dir);
}

int main(void)
{
    const char *base = getenv("RTAAS_TEST_OUT");
    snprintf(tdir, sizeof tdir, "%s/data.XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tdir)) {
        printf("not ok - mkdtemp %s: %s\n", tdir, strerror(errno));
        return 1;
    }
    (void)t_rel_err;
    T_RUN(idx_fashion);
    T_RUN(idx_mnist);
    T_RUN(idx_synthetic);
    T_RUN(idx_malformed);
    T_RUN(cifar_shared);
    T_RUN(cifar_synthetic);
    T_RUN(npy_read);
    T_RUN(npy_malformed);
    T_RUN(npz_read);
    T_RUN(npz_malformed);
    T_RUN(archive_read);
    T_RUN(archive_resize);
    T_RUN(archive_malformed);
    T_RUN(archive_unicode_names);
    T_RUN(detect_formats);
    T_RUN(subsets);
    T_RUN(splits);
    T_RUN(batch_resize_channels);
    T_RUN(batch_augment);
    if (t_total_failed == 0)
        rm_tree(tdir);
    return t_exit();
}
