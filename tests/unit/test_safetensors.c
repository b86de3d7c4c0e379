/* safetensors reader/writer and model weight files: round trips, exact half-precision
 * widening, and a malformed file for every check the reader makes. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"
#include "t.h"

static char tdir[512];

static void path_in(char *buf, size_t len, const char *name) { snprintf(buf, len, "%s/%s", tdir, name); }

static int write_file(const char *path, const void *buf, size_t len)
{
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return -1;
    size_t w = len ? fwrite(buf, 1, len, fp) : 0;
    return fclose(fp) == 0 && w == len ? 0 : -1;
}

/* A file image: u64 little-endian length of hdr, hdr, then dlen bytes of data. Caller frees. */
static uint8_t *make_st(const char *hdr, const void *data, size_t dlen, size_t *len)
{
    size_t hl = strlen(hdr);
    uint8_t *b = malloc(8 + hl + dlen + 1);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, hdr, hl);
    if (dlen)
        memcpy(b + 8 + hl, data, dlen);
    *len = 8 + hl + dlen;
    return b;
}

/* Number of directory entries in tdir whose name contains ".tmp." */
static int count_temps(void)
{
    int n = 0;
    DIR *d = opendir(tdir);
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (strstr(de->d_name, ".tmp."))
            n++;
    if (d)
        closedir(d);
    return n;
}

/* ---- writing and reading back ---- */

static void st_round_trip(void)
{
    char p[600];
    path_in(p, sizeof p, "rt.safetensors");
    float w[6] = {1.5f, -2.25f, 0.0f, -0.0f, 3.4e38f, 1e-45f};
    float b[3] = {0.1f, 0.2f, 0.3f};
    float sc = 42.0f;
    int64_t dw[2] = {2, 3}, db[1] = {3}, de[2] = {0, 4};
    eng_st_item items[] = {
        {"z.weight", w, 2, dw}, {"a.bias", b, 1, db}, {"scalar", &sc, 0, NULL}, {"empty", NULL, 2, de}};
    const char *mk[] = {"format", "arch"}, *mv[] = {"pt", "smallcnn"};
    REQUIRE_OK(eng_st_write(p, items, 4, mk, mv, 2));
    /* Writing again replaces the file through the same atomic path. */
    REQUIRE_OK(eng_st_write(p, items, 4, mk, mv, 2));
    CHECK(count_temps() == 0);

    FILE *fp = fopen(p, "rb");
    REQUIRE(fp);
    uint8_t head[8];
    REQUIRE(fread(head, 1, 8, fp) == 8);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = hl << 8 | head[i];
    char *hdr = calloc(1, hl + 1);
    CHECK(fread(hdr, 1, hl, fp) == hl);
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    fclose(fp);
    CHECKF(hl % 8 == 0, "header length %llu not 8-aligned", (unsigned long long)hl);
    CHECK(hdr[0] == '{');
    CHECKF(strstr(hdr, "\"__metadata__\"") == hdr + 1, "metadata first: %s", hdr);
    CHECKF((uint64_t)size == 8 + hl + (6 + 3 + 1) * 4, "file is %ld bytes", size);
    free(hdr);

    eng_st_file *f = NULL;
    REQUIRE_OK(eng_st_open(p, &f));
    CHECK(eng_st_count(f) == 4);
    const char *order[] = {"z.weight", "a.bias", "scalar", "empty"};
    for (int i = 0; i < 4 && i < eng_st_count(f); i++)
        CHECKF(strcmp(eng_st_get(f, i)->name, order[i]) == 0, "entry %d is %s", i, eng_st_get(f, i)->name);
    CHECK(eng_st_get(f, 4) == NULL && eng_st_get(f, -1) == NULL);
    const eng_st_entry *e = eng_st_find(f, "z.weight");
    REQUIRE(e);
    CHECK(e->dtype == ENG_ST_F32 && e->ndim == 2 && e->dim[0] == 2 && e->dim[1] == 3 && e->numel == 6);
    float got[6];
    REQUIRE_OK(eng_st_read_f32(f, e, got, 6));
    CHECK(memcmp(got, w, sizeof w) == 0);
    CHECK(eng_st_read_f32(f, e, got, 5) == ENG_ERR_SHAPE);
    e = eng_st_find(f, "a.bias");
    REQUIRE(e);
    REQUIRE_OK(eng_st_read_f32(f, e, got, 3));
    CHECK(memcmp(got, b, sizeof b) == 0);
    e = eng_st_find(f, "scalar");
    REQUIRE(e);
    CHECK(e->ndim == 0 && e->numel == 1);
    REQUIRE_OK(eng_st_read_f32(f, e, got, 1));
    CHECK(got[0] == 42.0f);
    e = eng_st_find(f, "empty");
    REQUIRE(e);
    CHECK(e->numel == 0 && e->begin == e->end);
    REQUIRE_OK(eng_st_read_f32(f, e, NULL, 0));
    CHECK(eng_st_find(f, "missing") == NULL);
    CHECK(eng_st_meta_count(f) == 2);
    CHECK(eng_st_meta_key(f, 0) && strcmp(eng_st_meta_key(f, 0), "format") == 0);
    CHECK(eng_st_meta_key(f, 1) && strcmp(eng_st_meta_key(f, 1), "arch") == 0);
    CHECK(eng_st_meta(f, "arch") && strcmp(eng_st_meta(f, "arch"), "smallcnn") == 0);
    CHECK(eng_st_meta(f, "nope") == NULL);
    eng_st_close(f);
    eng_st_close(NULL);
}

static void st_write_refusals(void)
{
    char p[600];
    path_in(p, sizeof p, "dup.safetensors");
    float v[2] = {1, 2};
    int64_t d[1] = {2}, neg[1] = {-1};
    eng_st_item dup[] = {{"x", v, 1, d}, {"x", v, 1, d}};
    CHECK(eng_st_write(p, dup, 2, NULL, NULL, 0) == ENG_ERR_ARG);
    CHECKF(strstr(eng_last_error(), "'x'"), "message: %s", eng_last_error());
    CHECK(access(p, F_OK) != 0);
    eng_st_item bad[] = {{"y", v, 1, neg}};
    CHECK(eng_st_write(p, bad, 1, NULL, NULL, 0) == ENG_ERR_ARG);
    eng_st_item reserved[] = {{"__metadata__", v, 1, d}};
    CHECK(eng_st_write(p, reserved, 1, NULL, NULL, 0) == ENG_ERR_ARG);
    const char *mk[] = {"k", "k"}, *mv[] = {"a", "b"};
    eng_st_item ok[] = {{"y", v, 1, d}};
    CHECK(eng_st_write(p, ok, 1, mk, mv, 2) == ENG_ERR_ARG);
    CHECK(access(p, F_OK) != 0);
    CHECK(count_temps() == 0);

    /* A directory that does not exist: nothing can be created. */
    char nodir[700];
    snprintf(nodir, sizeof nodir, "%s/no/such/dir/w.safetensors", tdir);
    CHECK(eng_st_write(nodir, ok, 1, NULL, NULL, 0) == ENG_ERR_IO);
    CHECKF(strstr(eng_last_error(), "no/such/dir"), "message: %s", eng_last_error());
    /* A target that is a non-empty directory: the temporary is written, the rename fails,
     * and the temporary must go. (chmod-based tests do not work as root.) */
    char sub[600], inner[700];
    path_in(sub, sizeof sub, "occupied");
    snprintf(inner, sizeof inner, "%s/file", sub);
    REQUIRE(mkdir(sub, 0755) == 0 || errno == EEXIST);
    REQUIRE(write_file(inner, "x", 1) == 0);
    CHECK(eng_st_write(sub, ok, 1, NULL, NULL, 0) == ENG_ERR_IO);
    CHECKF(strstr(eng_last_error(), "rename"), "message: %s", eng_last_error());
    CHECK(count_temps() == 0);
    if (geteuid() != 0) {
        char ro[600], rof[700];
        path_in(ro, sizeof ro, "readonly");
        snprintf(rof, sizeof rof, "%s/w.safetensors", ro);
        REQUIRE(mkdir(ro, 0555) == 0 || errno == EEXIST);
        CHECK(eng_st_write(rof, ok, 1, NULL, NULL, 0) == ENG_ERR_IO);
        DIR *dd = opendir(ro);
        int n = 0;
        struct dirent *de;
        while (dd && (de = readdir(dd)))
            n += de->d_name[0] != '.';
        if (dd)
            closedir(dd);
        CHECK(n == 0);
    }
}

/* ---- half precision ---- */

/* Independent references: value = (1024 + man) * 2^(exp - 25) etc., computed with ldexp. */
static float ref_f16(uint16_t h)
{
    int sign = h >> 15, exp = (h >> 10) & 31, man = h & 1023;
    double v = exp == 0 ? ldexp(man, -24) : exp == 31 ? (man ? NAN : INFINITY) : ldexp(1024 + man, exp - 25);
    return (float)(sign ? -v : v);
}

static float ref_bf16(uint16_t h)
{
    int sign = h >> 15, exp = (h >> 7) & 255, man = h & 127;
    double v = exp == 0 ? ldexp(man, -133) : exp == 255 ? (man ? NAN : INFINITY) : ldexp(128 + man, exp - 134);
    return (float)(sign ? -v : v);
}

static int same_float(float a, float b)
{
    if (isnan(a) || isnan(b))
        return isnan(a) && isnan(b);
    return a == b && signbit(a) == signbit(b);
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void st_half_widening(void)
{
    static const uint16_t h16[] = {0x3C00, 0xC000, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0x7C00, 0xFC00, 0x7E00, 0x8000, 0x3555, 0x8001};
    static const float w16[] = {1.0f, -2.0f, 0x1p-24f, 0x3FFp-24f, 0x1p-14f, 65504.0f, INFINITY, -INFINITY, NAN, -0.0f, 0.333251953125f, -0x1p-24f};
    static const uint16_t hb[] = {0x3F80, 0xC040, 0x0001, 0x7F80, 0xFF80, 0x7FC0, 0x8000, 0x4049};
    static const float wb[] = {1.0f, -3.0f, 0x1p-133f, INFINITY, -INFINITY, NAN, -0.0f, 3.140625f};
    enum { N16 = 12, NB = 8, NALL = 80000 };
    /* Every half value (and more, to cross the reader's 64 KB chunks) in one tensor each. */
    size_t dlen = 2 * N16 + 2 * NB + 2 * NALL + 2 * NALL + 16 + 8;
    uint8_t *data = calloc(1, dlen), *q = data;
    for (int i = 0; i < N16; i++, q += 2)
        put16(q, h16[i]);
    for (int i = 0; i < NB; i++, q += 2)
        put16(q, hb[i]);
    for (int i = 0; i < NALL; i++, q += 2)
        put16(q, (uint16_t)(i * 7));
    for (int i = 0; i < NALL; i++, q += 2)
        put16(q, (uint16_t)(i * 7));
    double d64[2] = {1.5, 0.1};
    memcpy(q, d64, 16);
    q += 16;
    int64_t i64 = 7;
    memcpy(q, &i64, 8);
    char hdr[1024];
    size_t o1 = 2 * N16, o2 = o1 + 2 * NB, o3 = o2 + 2 * NALL, o4 = o3 + 2 * NALL, o5 = o4 + 16;
    snprintf(hdr, sizeof hdr,
             "{\"h\":{\"dtype\":\"F16\",\"shape\":[%d],\"data_offsets\":[0,%zu]},"
             "\"b\":{\"dtype\":\"BF16\",\"shape\":[2,4],\"data_offsets\":[%zu,%zu]},"
             "\"hall\":{\"dtype\":\"F16\",\"shape\":[%d],\"data_offsets\":[%zu,%zu]},"
             "\"ball\":{\"dtype\":\"BF16\",\"shape\":[%d],\"data_offsets\":[%zu,%zu]},"
             "\"d\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[%zu,%zu]},"
             "\"steps\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[%zu,%zu]}}",
             N16, o1, o1, o2, NALL, o2, o3, NALL, o3, o4, o4, o5, o5, o5 + 8);
    size_t len;
    uint8_t *img = make_st(hdr, data, dlen, &len);
    char p[600];
    path_in(p, sizeof p, "half.safetensors");
    REQUIRE(write_file(p, img, len) == 0);
    float *out = malloc(NALL * sizeof(float));

    for (int mode = 0; mode < 2; mode++) {
        eng_st_file *f = NULL;
        if (mode == 0)
            REQUIRE_OK(eng_st_open(p, &f));
        else
            REQUIRE_OK(eng_st_open_mem(img, len, &f));
        const eng_st_entry *e = eng_st_find(f, "h");
        REQUIRE(e && e->dtype == ENG_ST_F16);
        REQUIRE_OK(eng_st_read_f32(f, e, out, N16));
        for (int i = 0; i < N16; i++)
            CHECKF(same_float(out[i], w16[i]), "mode %d f16 %04x -> %a, want %a", mode, h16[i], out[i], w16[i]);
        e = eng_st_find(f, "b");
        REQUIRE(e && e->dtype == ENG_ST_BF16 && e->ndim == 2);
        REQUIRE_OK(eng_st_read_f32(f, e, out, NB));
        for (int i = 0; i < NB; i++)
            CHECKF(same_float(out[i], wb[i]), "mode %d bf16 %04x -> %a, want %a", mode, hb[i], out[i], wb[i]);
        int bad = 0;
        REQUIRE_OK(eng_st_read_f32(f, eng_st_find(f, "hall"), out, NALL));
        for (int i = 0; i < NALL; i++)
            bad += !same_float(out[i], ref_f16((uint16_t)(i * 7)));
        REQUIRE_OK(eng_st_read_f32(f, eng_st_find(f, "ball"), out, NALL));
        for (int i = 0; i < NALL; i++)
            bad += !same_float(out[i], ref_bf16((uint16_t)(i * 7)));
        CHECKF(bad == 0, "mode %d: %d half values widened wrongly", mode, bad);
        REQUIRE_OK(eng_st_read_f32(f, eng_st_find(f, "d"), out, 2));
        CHECK(out[0] == 1.5f && out[1] == (float)0.1);
        e = eng_st_find(f, "steps");
        REQUIRE(e);
        CHECK(e->dtype == ENG_ST_I64 && e->ndim == 0 && e->numel == 1);
        CHECK(strcmp(eng_st_dtype_name(e->dtype), "I64") == 0);
        eng_clear_error();
        CHECK(eng_st_read_f32(f, e, out, 1) == ENG_ERR_FORMAT);
        CHECKF(strstr(eng_last_error(), "steps") && strstr(eng_last_error(), "I64"), "message: %s", eng_last_error());
        eng_st_close(f);
    }
    free(out);
    free(img);
    free(data);
}

/* ---- malformed files ---- */

/* Expects the image to be refused both from a file and from memory, with status want and a
 * message containing `needle`. The memory copy is exactly len bytes so ASan sees over-reads. */
static void expect_bad(const char *what, const uint8_t *img, size_t len, eng_status want, const char *needle)
{
    char p[600];
    path_in(p, sizeof p, "bad.safetensors");
    if (write_file(p, img, len) != 0) {
        t_failf(__FILE__, __LINE__, "%s: cannot write %s", what, p);
        return;
    }
    for (int mode = 0; mode < 2; mode++) {
        eng_st_file *f = (eng_st_file *)&f; /* must be reset to NULL */
        uint8_t *copy = malloc(len ? len : 1);
        if (len)
            memcpy(copy, img, len);
        eng_clear_error();
        eng_status s = mode == 0 ? eng_st_open(p, &f) : eng_st_open_mem(copy, len, &f);
        const char *msg = eng_last_error();
        CHECKF(s == want, "%s (%s): got %s, want %s: %s", what, mode ? "mem" : "file", eng_strerror(s),
               eng_strerror(want), msg);
        CHECKF(f == NULL, "%s: *out not NULL on failure", what);
        CHECKF(*msg && strstr(msg, needle), "%s (%s): message lacks '%s': %s", what, mode ? "mem" : "file", needle,
               msg);
        if (s == ENG_OK)
            eng_st_close(f);
        free(copy);
    }
}

static void expect_bad_hdr(const char *what, const char *hdr, size_t dlen, eng_status want, const char *needle)
{
    uint8_t *data = calloc(1, dlen ? dlen : 1);
    size_t len;
    uint8_t *img = make_st(hdr, data, dlen, &len);
    expect_bad(what, img, len, want, needle);
    free(img);
    free(data);
}

static void st_malformed_framing(void)
{
    expect_bad("empty file", (const uint8_t *)"", 0, ENG_ERR_FORMAT, "empty");
    expect_bad("5 bytes", (const uint8_t *)"\x10\0\0\0\0", 5, ENG_ERR_FORMAT, "5 bytes");

    size_t len;
    uint8_t *img = make_st("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", "abcd", 4, &len);
    expect_bad("truncated header", img, 30, ENG_ERR_FORMAT, "only 22 follow");
    free(img);

    uint8_t big[64] = {0};
    uint64_t claim = 100000000; /* 100 MB: must be refused from the prefix alone */
    for (int i = 0; i < 8; i++)
        big[i] = (uint8_t)(claim >> (8 * i));
    memcpy(big + 8, "{}", 2);
    expect_bad("100 MB header claimed", big, sizeof big, ENG_ERR_LIMIT, "100000000");
    memset(big, 0xff, 8);
    expect_bad("header length 2^64-1", big, sizeof big, ENG_ERR_LIMIT, "18446744073709551615");
    claim = 1000;
    for (int i = 0; i < 8; i++)
        big[i] = (uint8_t)(claim >> (8 * i));
    expect_bad("header length past end", big, sizeof big, ENG_ERR_FORMAT, "claims 1000 bytes");
    memset(big, 0, 8);
    expect_bad("header length 0", big, sizeof big, ENG_ERR_FORMAT, "0 bytes");

    expect_bad_hdr("header not JSON", "{\"a\": {\"dtype\": F32}}", 0, ENG_ERR_FORMAT, "not valid JSON");
    expect_bad_hdr("trailing garbage", "{} x", 0, ENG_ERR_FORMAT, "not valid JSON");
    expect_bad_hdr("header a JSON array", "[1, 2, 3]", 0, ENG_ERR_FORMAT, "not an object");
    expect_bad_hdr("header a JSON string", "\"hello\"", 0, ENG_ERR_FORMAT, "not an object");
    uint8_t nul[16] = {6, 0, 0, 0, 0, 0, 0, 0, '{', '"', 0, '"', ':', '}'};
    expect_bad("NUL in header", nul, 14, ENG_ERR_FORMAT, "JSON");

    /* The reference's own padding (spaces after the object) is accepted, as is an empty file. */
    eng_st_file *f = NULL;
    img = make_st("{}      ", NULL, 0, &len);
    REQUIRE_OK(eng_st_open_mem(img, len, &f));
    CHECK(eng_st_count(f) == 0 && eng_st_meta_count(f) == 0);
    eng_st_close(f);
    free(img);
}

static void st_malformed_entries(void)
{
    expect_bad_hdr("offsets past the end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
                   ENG_ERR_FORMAT, "ends at byte 16, past the 8-byte data section");
    expect_bad_hdr("end before begin", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8,
                   ENG_ERR_FORMAT, "before its begin 8");
    expect_bad_hdr("overlapping ranges",
                   "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                   16, ENG_ERR_FORMAT, "overlaps");
    expect_bad_hdr("overlap at the same begin",
                   "{\"long\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                   "\"short\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                   "\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                   16, ENG_ERR_FORMAT, "overlaps");
    expect_bad_hdr("size mismatch", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 24,
                   ENG_ERR_FORMAT, "holds 20 bytes, but F32 shape [2, 3] needs 24");
    expect_bad_hdr("unknown dtype", "{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2,
                   ENG_ERR_FORMAT, "'F8_E4M3'");
    expect_bad_hdr("dtype not a string", "{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                   ENG_ERR_FORMAT, "dtype");
    expect_bad_hdr("absurd shape",
                   "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", 4,
                   ENG_ERR_LIMIT, "2^40");
    expect_bad_hdr("huge dim times zero",
                   "{\"w\":{\"dtype\":\"F32\",\"shape\":[0,9223372036854775807],\"data_offsets\":[0,0]}}", 0,
                   ENG_ERR_LIMIT, "9223372036854775807");
    expect_bad_hdr("integer too big for JSON",
                   "{\"w\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,4]}}", 4,
                   ENG_ERR_FORMAT, "JSON");
    expect_bad_hdr("negative dim", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,0]}}", 0,
                   ENG_ERR_FORMAT, "negative");
    expect_bad_hdr("fractional dim", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
                   ENG_ERR_FORMAT, "not an integer");
    expect_bad_hdr("too many dims",
                   "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
                   ENG_ERR_LIMIT, "9 dimensions");
    expect_bad_hdr("duplicate names",
                   "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                   "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                   8, ENG_ERR_FORMAT, "\"w\"");
    expect_bad_hdr("metadata not strings", "{\"__metadata__\":{\"epochs\":10}}", 0, ENG_ERR_FORMAT, "'epochs'");
    expect_bad_hdr("metadata not an object", "{\"__metadata__\":[\"a\"]}", 0, ENG_ERR_FORMAT, "__metadata__");
    expect_bad_hdr("entry not an object", "{\"w\":[1,2]}", 0, ENG_ERR_FORMAT, "'w' is not a JSON object");
    expect_bad_hdr("no shape", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, ENG_ERR_FORMAT, "shape");
    expect_bad_hdr("offsets of three", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8,
                   ENG_ERR_FORMAT, "data_offsets");
    expect_bad_hdr("negative offset", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 8,
                   ENG_ERR_FORMAT, "data_offsets");

    /* A valid file cut short inside its data section. */
    char p[600];
    path_in(p, sizeof p, "cut.safetensors");
    float v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    int64_t d[1] = {4};
    eng_st_item items[] = {{"a", v, 1, d}, {"b", v + 4, 1, d}};
    REQUIRE_OK(eng_st_write(p, items, 2, NULL, NULL, 0));
    FILE *fp = fopen(p, "rb");
    REQUIRE(fp);
    uint8_t buf[4096];
    size_t len = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    expect_bad("truncated data section", buf, len - 3, ENG_ERR_FORMAT, "'b' ends at byte 32, past the 29-byte");

    /* Entries that are fine on their own: empty tensors anywhere, and gaps between ranges. */
    eng_st_file *f = NULL;
    size_t il;
    uint8_t *img = make_st("{\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
                           "\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                           "\"b\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[6,7]}}",
                           buf, 8, &il);
    REQUIRE_OK(eng_st_open_mem(img, il, &f));
    CHECK(eng_st_count(f) == 3);
    CHECK(eng_st_read_f32(f, eng_st_find(f, "a"), (float *)buf, 2) == ENG_ERR_FORMAT);
    eng_st_close(f);
    free(img);
}

static void st_open_errors(void)
{
    eng_st_file *f = NULL;
    char p[600];
    path_in(p, sizeof p, "does-not-exist.safetensors");
    CHECK(eng_st_open(p, &f) == ENG_ERR_NOT_FOUND && f == NULL);
    CHECKF(strstr(eng_last_error(), "does-not-exist"), "message: %s", eng_last_error());
    CHECK(eng_st_open(tdir, &f) == ENG_ERR_IO && f == NULL);
    CHECK(eng_st_open(NULL, &f) == ENG_ERR_ARG);
    CHECK(eng_st_open_mem(NULL, 10, &f) == ENG_ERR_ARG);
    CHECK(eng_st_count(NULL) == 0 && eng_st_find(NULL, "x") == NULL && eng_st_meta(NULL, "x") == NULL);
}

/* ---- model weights ---- */

static eng_ctx *wctx;

static eng_status new_model(const char *arch, eng_model **m)
{
    eng_model_spec spec = {.arch = arch, .num_classes = 10};
    return eng_model_new(wctx, &spec, m);
}

/* All parameter values of m, concatenated on the host. Caller frees. */
static float *snapshot(eng_model *m, int64_t *total)
{
    int64_t n = 0;
    for (int i = 0; i < eng_model_num_params(m); i++)
        n += eng_tensor_numel(&eng_model_param(m, i)->value);
    float *s = malloc((size_t)n * sizeof(float) + 1), *q = s;
    for (int i = 0; i < eng_model_num_params(m); i++) {
        eng_tensor *v = &eng_model_param(m, i)->value;
        eng_tensor h;
        eng_tensor_view(&h, q, v->ndim, v->dim, ENG_LAYOUT_NCHW, ENG_DEV_CPU);
        if (eng_ctx_download(wctx, &h, v) != ENG_OK)
            memset(q, 0xff, (size_t)eng_tensor_numel(v) * sizeof(float));
        q += eng_tensor_numel(v);
    }
    *total = n;
    return s;
}

static void weights_round_trip_arch(const char *arch, bool want_buffers)
{
    eng_model *a = NULL, *b = NULL;
    float *sa = NULL, *sb = NULL;
    char p[600];
    path_in(p, sizeof p, "model.safetensors");
    if (new_model(arch, &a) != ENG_OK || eng_model_init(a, 1) != ENG_OK || new_model(arch, &b) != ENG_OK) {
        t_failf(__FILE__, __LINE__, "%s: %s", arch, eng_last_error());
        goto out;
    }
    int np = eng_model_num_params(a), nbuf = 0;
    for (int i = 0; i < np; i++)
        nbuf += eng_model_param(a, i)->buffer;
    CHECKF(!want_buffers || nbuf > 0, "%s has no buffers", arch);
    const char *mk[] = {"arch"}, *mv[] = {arch};
    eng_status s = eng_model_save_safetensors(a, p, mk, mv, 1);
    CHECKF(s == ENG_OK, "save: %s", eng_last_error());
    eng_st_file *f = NULL;
    if (eng_st_open(p, &f) == ENG_OK) {
        CHECK(eng_st_count(f) == np);
        for (int i = 0; i < np && i < eng_st_count(f); i++)
            CHECK(strcmp(eng_st_get(f, i)->name, eng_model_param(a, i)->name) == 0);
        CHECK(eng_st_meta(f, "arch") && strcmp(eng_st_meta(f, "arch"), arch) == 0);
        eng_st_close(f);
    }
    eng_load_report rep;
    s = eng_model_load_safetensors(b, p, true, &rep);
    CHECKF(s == ENG_OK, "load: %s", eng_last_error());
    CHECKF(rep.loaded == np && rep.ignored == 0 && rep.missing == 0, "loaded %d ignored %d missing %d of %d",
           rep.loaded, rep.ignored, rep.missing, np);
    int64_t na, nb;
    sa = snapshot(a, &na);
    sb = snapshot(b, &nb);
    CHECK(na == nb && na > 0);
    CHECKF(na == nb && memcmp(sa, sb, (size_t)na * sizeof(float)) == 0, "%s: loaded values differ", arch);
out:
    free(sa);
    free(sb);
    eng_model_free(a);
    eng_model_free(b);
}

static void weights_round_trip(void)
{
    weights_round_trip_arch("smallcnn", false);
    weights_round_trip_arch("resnet20", true); /* batch norm running statistics are buffers */
}

/* Writes every parameter of m under its name, except `skip`, with `extra` added (F32 [2]), and
 * the parameter `reshape` given one more row. */
static eng_status write_variant(eng_model *m, const char *path, const char *skip, const char *extra,
                                const char *reshape)
{
    int np = eng_model_num_params(m), n = 0;
    int64_t total;
    float *vals = snapshot(m, &total), *q = vals;
    float *big = calloc(1 << 20, sizeof(float));
    eng_st_item *items = calloc((size_t)np + 1, sizeof *items);
    int64_t dims[4];
    for (int i = 0; i < np; i++) {
        eng_param *p = eng_model_param(m, i);
        int64_t numel = eng_tensor_numel(&p->value);
        if (!skip || strcmp(p->name, skip) != 0) {
            items[n] = (eng_st_item){p->name, q, p->value.ndim, p->value.dim};
            if (reshape && strcmp(p->name, reshape) == 0) {
                memcpy(dims, p->value.dim, sizeof dims);
                dims[0]++;
                items[n].dim = dims;
                items[n].data = big;
            }
            n++;
        }
        q += numel;
    }
    int64_t two = 2;
    if (extra)
        items[n++] = (eng_st_item){extra, big, 1, &two};
    eng_status s = eng_st_write(path, items, n, NULL, NULL, 0);
    free(items);
    free(big);
    free(vals);
    return s;
}

static void weights_refusals(void)
{
    eng_model *src = NULL, *dst = NULL;
    float *before = NULL, *after = NULL;
    char p[600];
    path_in(p, sizeof p, "variant.safetensors");
    if (new_model("resnet20", &src) != ENG_OK || eng_model_init(src, 1) != ENG_OK ||
        new_model("resnet20", &dst) != ENG_OK || eng_model_init(dst, 2) != ENG_OK) {
        t_failf(__FILE__, __LINE__, "%s", eng_last_error());
        goto out;
    }
    int np = eng_model_num_params(dst);
    int64_t n0, n1;
    before = snapshot(dst, &n0);
    const char *last = eng_model_param(src, np - 1)->name;
    eng_load_report rep;

    /* One parameter with a wrong shape, listed last so everything before it would have loaded. */
    REQUIRE_OK(write_variant(src, p, NULL, NULL, last));
    CHECK(eng_model_load_safetensors(dst, p, true, &rep) == ENG_ERR_SHAPE);
    eng_tensor grown = eng_model_param(src, np - 1)->value;
    char want_model[64], want_file[64];
    eng_tensor_shape_str(&grown, want_model, sizeof want_model);
    grown.dim[0]++;
    eng_tensor_shape_str(&grown, want_file, sizeof want_file);
    CHECKF(strstr(eng_last_error(), last) && strstr(eng_last_error(), want_model) &&
               strstr(eng_last_error(), want_file),
           "message: %s (want %s and %s)", eng_last_error(), want_model, want_file);
    after = snapshot(dst, &n1);
    CHECKF(n0 == n1 && memcmp(before, after, (size_t)n0 * sizeof(float)) == 0, "failed load changed the model");
    free(after);
    after = NULL;

    /* A missing parameter and an extra tensor: strict refuses, relaxed counts them. */
    const char *gone = eng_model_param(src, 1)->name;
    REQUIRE_OK(write_variant(src, p, gone, "bn1.num_batches_tracked", NULL));
    CHECK(eng_model_load_safetensors(dst, p, true, &rep) == ENG_ERR_NOT_FOUND);
    CHECKF(strstr(eng_last_error(), gone), "message: %s", eng_last_error());
    CHECK(rep.missing == 1 && strcmp(rep.first_missing, gone) == 0);
    after = snapshot(dst, &n1);
    CHECK(memcmp(before, after, (size_t)n0 * sizeof(float)) == 0);
    free(after);
    after = NULL;
    REQUIRE_OK(eng_model_load_safetensors(dst, p, false, &rep));
    CHECKF(rep.loaded == np - 1 && rep.missing == 1 && rep.ignored == 1, "loaded %d missing %d ignored %d",
           rep.loaded, rep.missing, rep.ignored);
    CHECK(strcmp(rep.first_missing, gone) == 0 && strcmp(rep.first_ignored, "bn1.num_batches_tracked") == 0);

    /* An integer tensor under a parameter's name. */
    const eng_param *w = eng_model_param(dst, 0);
    char hdr[512];
    int64_t numel = eng_tensor_numel(&w->value);
    snprintf(hdr, sizeof hdr, "{\"%s\":{\"dtype\":\"I32\",\"shape\":[%lld,%lld,%lld,%lld],\"data_offsets\":[0,%lld]}}",
             w->name, (long long)w->value.dim[0], (long long)w->value.dim[1], (long long)w->value.dim[2],
             (long long)w->value.dim[3], (long long)numel * 4);
    uint8_t *zeros = calloc((size_t)numel, 4);
    size_t len;
    uint8_t *img = make_st(hdr, zeros, (size_t)numel * 4, &len);
    REQUIRE(write_file(p, img, len) == 0);
    free(img);
    free(zeros);
    CHECK(w->value.ndim == 4);
    CHECK(eng_model_load_safetensors(dst, p, false, NULL) == ENG_ERR_FORMAT);
    CHECKF(strstr(eng_last_error(), "I32"), "message: %s", eng_last_error());
    CHECK(eng_model_load_safetensors(dst, "/nonexistent/x.safetensors", false, &rep) == ENG_ERR_NOT_FOUND);
out:
    free(before);
    free(after);
    eng_model_free(src);
    eng_model_free(dst);
}

static void rm_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *de;
        while (d && (de = readdir(d))) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            char sub[1024];
            snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
            rm_tree(sub);
        }
        if (d)
            closedir(d);
    }
    remove(path);
}

int main(void)
{
    const char *base = getenv("RTAAS_TEST_OUT");
    snprintf(tdir, sizeof tdir, "%s/safetensors.XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tdir)) {
        printf("not ok - mkdtemp %s: %s\n", tdir, strerror(errno));
        return 1;
    }
    (void)t_skip;
    (void)t_rel_err;
    (void)t_shared_data;
    T_RUN(st_round_trip);
    T_RUN(st_write_refusals);
    T_RUN(st_half_widening);
    T_RUN(st_malformed_framing);
    T_RUN(st_malformed_entries);
    T_RUN(st_open_errors);
    eng_ctx_opts o = {.device = "cpu", .threads = 2};
    if (eng_ctx_new(&wctx, &o) != ENG_OK) {
        printf("not ok - context: %s\n", eng_last_error());
        return 1;
    }
    T_RUN(weights_round_trip);
    T_RUN(weights_refusals);
    eng_ctx_free(wctx);
    /* Files stay behind for a look when something failed. */
    if (t_total_failed == 0)
        rm_tree(tdir);
    return t_exit();
}
