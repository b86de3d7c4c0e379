/* PNG encode/decode (round trips, every pixel format libpng can hand us, damaged files), gradient
 * maps and their layouts, the input gradient against finite differences, feature distances and
 * histograms. With RTAAS_PNG_SEED_DIR set, the crafted PNGs are also written there as fuzz seeds. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "engine.h"
#include "t.h"

static char tdir[512];
static eng_ctx *ctx;

/* ---- helpers ---- */

static void fill_bytes(uint8_t *p, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(eng_uniform(seed, i) * 256.0f);
}

static void fill_uniform(float *p, long n, uint64_t seed, float lo, float hi)
{
    for (long i = 0; i < n; i++)
        p[i] = lo + (hi - lo) * eng_uniform(seed, (uint64_t)i);
}

/* Writes buf as a fuzz seed when RTAAS_PNG_SEED_DIR names a directory. */
static void seed_out(const char *name, const uint8_t *buf, size_t len)
{
    const char *dir = getenv("RTAAS_PNG_SEED_DIR");
    if (!dir || !*dir)
        return;
    char p[1024];
    snprintf(p, sizeof p, "%s/%s.png", dir, name);
    FILE *fp = fopen(p, "wb");
    if (fp) {
        if (len)
            fwrite(buf, 1, len, fp);
        fclose(fp);
    }
}

/* Decodes and expects failure with status `want` and a message; pix must come back NULL. */
static int refused(const uint8_t *buf, size_t len, eng_status want)
{
    uint8_t *pix = (uint8_t *)1;
    int w = -1, h = -1, c = -1;
    eng_clear_error();
    eng_status s = eng_png_decode(buf, len, &pix, &w, &h, &c);
    int ok = s == want && pix == NULL && w == 0 && h == 0 && c == 0 && strlen(eng_last_error()) > 0;
    if (!ok)
        printf("#   decode of %zu bytes: %s (%s), wanted %s\n", len, eng_strerror(s), eng_last_error(),
               eng_strerror(want));
    if (s == ENG_OK)
        free(pix);
    return ok;
}

/* ---- crafted PNGs: every colour type, depth and interlacing our encoder never writes ---- */

typedef struct craft {
    int w, h, depth, color, interlace;
    const uint16_t *s;    /* h * w * samples-per-pixel samples, row-major */
    const uint8_t *plte;  /* palette (RGB triples) or NULL */
    int nplte;
    const uint8_t *trns;  /* tRNS chunk body or NULL */
    int ntrns;
    const uint8_t *idat;  /* raw IDAT body instead of the compressed pixels, or NULL */
    size_t nidat;
    long cut_raw;         /* > 0: compress only this many bytes of the scanlines */
} craft;

static int spp_of(int color) { return color == 2 ? 3 : color == 4 ? 2 : color == 6 ? 4 : 1; }

static uint8_t *put_chunk(uint8_t *o, const char *type, const uint8_t *data, uint32_t n)
{
    o[0] = (uint8_t)(n >> 24), o[1] = (uint8_t)(n >> 16), o[2] = (uint8_t)(n >> 8), o[3] = (uint8_t)n;
    memcpy(o + 4, type, 4);
    if (n)
        memcpy(o + 8, data, n);
    uint32_t crc = (uint32_t)crc32(0, o + 4, n + 4);
    o[8 + n] = (uint8_t)(crc >> 24), o[9 + n] = (uint8_t)(crc >> 16), o[10 + n] = (uint8_t)(crc >> 8);
    o[11 + n] = (uint8_t)crc;
    return o + 12 + n;
}

/* A PNG file image for c (filter 0 on every scanline); caller frees. */
static uint8_t *craft_png(const craft *c, size_t *len)
{
    static const int ax[7] = {0, 4, 0, 2, 0, 1, 0}, ay[7] = {0, 0, 4, 0, 2, 0, 1};
    static const int adx[7] = {8, 8, 4, 4, 2, 2, 1}, ady[7] = {8, 8, 8, 4, 4, 2, 2};
    const int spp = spp_of(c->color), bpp = spp * c->depth, npass = c->interlace ? 7 : 1;
    /* Files that claim huge sizes come without pixels (s NULL): no scanline buffer for them. */
    size_t cap = c->s ? 64 + (size_t)c->h * (1 + ((size_t)c->w * bpp + 7) / 8) * 2 : 64;
    uint8_t *raw = calloc(cap, 1), *r = raw;
    for (int p = 0; p < npass && c->s; p++) {
        int x0 = c->interlace ? ax[p] : 0, y0 = c->interlace ? ay[p] : 0;
        int dx = c->interlace ? adx[p] : 1, dy = c->interlace ? ady[p] : 1;
        if (x0 >= c->w || y0 >= c->h)
            continue; /* an empty pass has no scanlines at all */
        for (int y = y0; y < c->h; y += dy) {
            *r++ = 0;
            int bit = 0;
            for (int x = x0; x < c->w; x += dx)
                for (int k = 0; k < spp; k++) {
                    uint16_t v = c->s[((size_t)y * c->w + x) * spp + k];
                    if (c->depth == 16) {
                        *r++ = (uint8_t)(v >> 8);
                        *r++ = (uint8_t)v;
                    } else if (c->depth == 8) {
                        *r++ = (uint8_t)v;
                    } else if (8 % c->depth == 0) { /* an invalid depth leaves zero bytes */
                        *r |= (uint8_t)(v << (8 - c->depth - bit));
                        bit += c->depth;
                        if (bit == 8)
                            bit = 0, r++;
                    }
                }
            if (bit)
                r++;
        }
    }
    uLong nraw = (uLong)(r - raw);
    if (c->cut_raw > 0 && (uLong)c->cut_raw < nraw)
        nraw = (uLong)c->cut_raw;
    uLongf nz = compressBound(nraw);
    uint8_t *z = malloc(nz + c->nidat + 1);
    if (c->idat) {
        memcpy(z, c->idat, c->nidat);
        nz = c->nidat;
    } else {
        compress2(z, &nz, raw, nraw, 9);
    }
    uint8_t *out = malloc(8 + 25 + (12 + 768) + (12 + 256) + (12 + nz) + 12), *o = out;
    static const uint8_t sig[8] = {137, 80, 78, 71, 13, 10, 26, 10};
    memcpy(o, sig, 8);
    o += 8;
    uint8_t ihdr[13] = {(uint8_t)(c->w >> 24), (uint8_t)(c->w >> 16), (uint8_t)(c->w >> 8), (uint8_t)c->w,
                        (uint8_t)(c->h >> 24), (uint8_t)(c->h >> 16), (uint8_t)(c->h >> 8), (uint8_t)c->h,
                        (uint8_t)c->depth, (uint8_t)c->color, 0, 0, (uint8_t)c->interlace};
    o = put_chunk(o, "IHDR", ihdr, 13);
    if (c->plte)
        o = put_chunk(o, "PLTE", c->plte, (uint32_t)c->nplte * 3);
    if (c->trns)
        o = put_chunk(o, "tRNS", c->trns, (uint32_t)c->ntrns);
    o = put_chunk(o, "IDAT", z, (uint32_t)nz);
    o = put_chunk(o, "IEND", NULL, 0);
    *len = (size_t)(o - out);
    free(raw);
    free(z);
    return out;
}

/* Decodes a crafted image and compares with the expected 8-bit pixels. */
static void expect_decode(const char *name, const craft *c, const uint8_t *want, int want_c)
{
    size_t len;
    uint8_t *buf = craft_png(c, &len), *pix = NULL;
    int w, h, ch;
    seed_out(name, buf, len);
    eng_status s = eng_png_decode(buf, len, &pix, &w, &h, &ch);
    CHECKF(s == ENG_OK, "%s: %s: %s", name, eng_strerror(s), eng_last_error());
    if (s == ENG_OK) {
        CHECKF(w == c->w && h == c->h && ch == want_c, "%s: got %dx%dx%d", name, w, h, ch);
        if (w == c->w && h == c->h && ch == want_c)
            CHECKF(memcmp(pix, want, (size_t)w * h * ch) == 0, "%s: pixels differ", name);
    }
    free(pix);
    free(buf);
}

/* ---- PNG ---- */

static void png_round_trip(void)
{
    static const int sizes[][2] = {{1, 1}, {37, 5}, {5, 37}, {64, 48}, {1, 300}};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
        for (int ch = 1; ch <= 3; ch += 2) {
            int w = sizes[i][0], h = sizes[i][1];
            size_t n = (size_t)w * h * ch, len = 0;
            uint8_t *pix = malloc(n), *png = NULL, *back = NULL;
            fill_bytes(pix, n, 100 + i * 2 + (size_t)ch);
            REQUIRE_OK(eng_png_encode(pix, w, h, ch, &png, &len));
            CHECK(len > 8 && memcmp(png, "\x89PNG\r\n\x1a\n", 8) == 0);
            if (i == 1) {
                char name[32];
                snprintf(name, sizeof name, "ours_37x5x%d", ch);
                seed_out(name, png, len);
            }
            int w2, h2, c2;
            REQUIRE_OK(eng_png_decode(png, len, &back, &w2, &h2, &c2));
            CHECKF(w2 == w && h2 == h && c2 == ch, "%dx%dx%d came back %dx%dx%d", w, h, ch, w2, h2, c2);
            CHECKF(memcmp(back, pix, n) == 0, "%dx%dx%d: pixels differ", w, h, ch);
            free(pix);
            free(png);
            free(back);
        }
}

static void png_formats(void)
{
    /* 8-bit palette with a tRNS entry: RGB from the palette, transparency ignored. */
    static const uint8_t plte[4 * 3] = {0, 0, 0, 255, 0, 0, 0, 255, 0, 10, 20, 30};
    static const uint8_t trns[1] = {0};
    uint16_t idx[3 * 2] = {0, 1, 2, 3, 2, 1};
    uint8_t want_pal[3 * 2 * 3];
    for (int i = 0; i < 6; i++)
        memcpy(want_pal + 3 * i, plte + 3 * idx[i], 3);
    craft pal = {.w = 3, .h = 2, .depth = 8, .color = 3, .s = idx, .plte = plte, .nplte = 4, .trns = trns, .ntrns = 1};
    expect_decode("palette8_trns", &pal, want_pal, 3);
    /* 2-bit palette: indices packed four to a byte. */
    pal.depth = 2;
    pal.trns = NULL;
    expect_decode("palette2", &pal, want_pal, 3);

    /* 1-bit gray: 0 and 1 become 0 and 255; 10 pixels leave a partial byte per row. */
    uint16_t bits[10 * 3];
    uint8_t want_bits[10 * 3];
    for (int i = 0; i < 30; i++) {
        bits[i] = (uint16_t)((i * 7 + i / 10) % 3 == 0);
        want_bits[i] = bits[i] ? 255 : 0;
    }
    craft g1 = {.w = 10, .h = 3, .depth = 1, .color = 0, .s = bits};
    expect_decode("gray1", &g1, want_bits, 1);

    /* 16-bit gray: multiples of 257 scale to exactly k. */
    uint16_t g16s[4 * 4];
    uint8_t want16[4 * 4];
    for (int i = 0; i < 16; i++) {
        want16[i] = (uint8_t)(i * 17);
        g16s[i] = (uint16_t)(want16[i] * 257);
    }
    craft g16 = {.w = 4, .h = 4, .depth = 16, .color = 0, .s = g16s};
    expect_decode("gray16", &g16, want16, 1);

    /* RGBA and gray + alpha: the alpha channel is dropped. */
    uint16_t rgba[5 * 3 * 4], ga[5 * 3 * 2];
    uint8_t want_rgb[5 * 3 * 3], want_g[5 * 3];
    for (int i = 0; i < 15; i++) {
        for (int k = 0; k < 4; k++)
            rgba[i * 4 + k] = (uint16_t)((i * 31 + k * 77) & 255);
        for (int k = 0; k < 3; k++)
            want_rgb[i * 3 + k] = (uint8_t)rgba[i * 4 + k];
        ga[i * 2] = (uint16_t)(i * 13);
        ga[i * 2 + 1] = (uint16_t)(255 - i);
        want_g[i] = (uint8_t)(i * 13);
    }
    craft c_rgba = {.w = 5, .h = 3, .depth = 8, .color = 6, .s = rgba};
    expect_decode("rgba8", &c_rgba, want_rgb, 3);
    craft c_ga = {.w = 5, .h = 3, .depth = 8, .color = 4, .s = ga};
    expect_decode("gray_alpha8", &c_ga, want_g, 1);

    /* Adam7: odd sizes leave some passes empty; 1x1 has only the first. */
    uint16_t rgb[11 * 9 * 3];
    uint8_t want_i[11 * 9 * 3];
    for (int i = 0; i < 11 * 9 * 3; i++) {
        want_i[i] = (uint8_t)((i * 37 + 11) & 255);
        rgb[i] = want_i[i];
    }
    craft il = {.w = 11, .h = 9, .depth = 8, .color = 2, .interlace = 1, .s = rgb};
    expect_decode("adam7_rgb", &il, want_i, 3);
    craft il1 = {.w = 1, .h = 1, .depth = 8, .color = 0, .interlace = 1, .s = rgb};
    expect_decode("adam7_1x1", &il1, want_i, 1);
}

static void png_corrupt(void)
{
    uint8_t pix[37 * 5 * 3], *png = NULL;
    size_t len = 0;
    fill_bytes(pix, sizeof pix, 7);
    REQUIRE_OK(eng_png_encode(pix, 37, 5, 3, &png, &len));
    uint8_t *b = malloc(len);

    /* Signature. */
    CHECK(refused(png, 0, ENG_ERR_FORMAT));
    CHECK(refused(png, 7, ENG_ERR_FORMAT));
    CHECK(strstr(eng_last_error(), "signature") != NULL);
    memcpy(b, png, len);
    b[1] = 'Q';
    CHECK(refused(b, len, ENG_ERR_FORMAT) && strstr(eng_last_error(), "bad signature"));

    /* Truncated anywhere, including just the IEND chunk or its last byte missing. */
    size_t cuts[] = {8, 12, 20, 32, 33, 40, len / 2, len - 13, len - 12, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        CHECKF(refused(png, cuts[i], ENG_ERR_FORMAT), "cut at %zu of %zu", cuts[i], len);
        if (i == 6) {
            CHECKF(strstr(eng_last_error(), "truncated") != NULL, "message: %s", eng_last_error());
            seed_out("truncated_half", png, cuts[i]);
        }
    }

    /* A flipped byte in the IHDR's CRC, in the IDAT data (its CRC then fails). */
    memcpy(b, png, len);
    b[29] ^= 0x40;
    CHECK(refused(b, len, ENG_ERR_FORMAT));
    memcpy(b, png, len);
    b[33 + 8 + 5] ^= 0x01;
    CHECK(refused(b, len, ENG_ERR_FORMAT));
    free(b);
    free(png);

    /* Damage under valid CRCs: only libpng's own checks can catch these. */
    uint16_t s[4 * 4 * 3] = {0};
    static const uint8_t garbage[] = {0x78, 0x9c, 0xff, 0xff, 0xff, 0x00, 0x13, 0x37, 0x00, 0x00};
    struct {
        const char *name;
        craft c;
        eng_status want;
    } bad[] = {
        {"bad_zlib", {.w = 4, .h = 4, .depth = 8, .color = 2, .s = s, .idat = garbage, .nidat = sizeof garbage},
         ENG_ERR_FORMAT},
        {"short_idat", {.w = 4, .h = 4, .depth = 8, .color = 2, .s = s, .cut_raw = 20}, ENG_ERR_FORMAT},
        {"zero_width", {.w = 0, .h = 4, .depth = 8, .color = 2, .s = s}, ENG_ERR_FORMAT},
        {"depth3", {.w = 4, .h = 4, .depth = 3, .color = 0, .s = s}, ENG_ERR_FORMAT},
        {"color5", {.w = 4, .h = 4, .depth = 8, .color = 5, .s = s}, ENG_ERR_FORMAT},
        {"palette_without_plte", {.w = 4, .h = 4, .depth = 8, .color = 3, .s = s}, ENG_ERR_FORMAT},
        {"rgb_depth1", {.w = 4, .h = 4, .depth = 1, .color = 2, .s = s}, ENG_ERR_FORMAT},
        {"huge_65536x65536", {.w = 65536, .h = 65536, .depth = 8, .color = 0, .idat = garbage, .nidat = 2},
         ENG_ERR_LIMIT},
        {"width_2e31", {.w = INT32_MAX, .h = 1, .depth = 8, .color = 0, .idat = garbage, .nidat = 2},
         ENG_ERR_LIMIT},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        size_t n;
        uint8_t *f = craft_png(&bad[i].c, &n);
        seed_out(bad[i].name, f, n);
        CHECKF(refused(f, n, bad[i].want), "%s", bad[i].name);
        free(f);
    }

    /* Arguments. */
    uint8_t *pix_out;
    int w, h, c;
    CHECK(eng_png_decode(pix, sizeof pix, NULL, &w, &h, &c) == ENG_ERR_ARG);
    CHECK(eng_png_decode(pix, sizeof pix, &pix_out, &w, NULL, &c) == ENG_ERR_ARG);
    CHECK(eng_png_decode(NULL, 10, &pix_out, &w, &h, &c) == ENG_ERR_ARG && strstr(eng_last_error(), "buf"));
}

static void png_encode_args(void)
{
    uint8_t px[4] = {0}, *out = (uint8_t *)1;
    size_t len = 99;
    CHECK(eng_png_encode(px, 0, 1, 1, &out, &len) == ENG_ERR_ARG && out == NULL && len == 0);
    CHECK(strstr(eng_last_error(), "size") != NULL);
    CHECK(eng_png_encode(px, 1, -3, 1, &out, &len) == ENG_ERR_ARG);
    CHECK(eng_png_encode(px, 1, 1, 2, &out, &len) == ENG_ERR_ARG && strstr(eng_last_error(), "channels"));
    CHECK(eng_png_encode(px, 1, 1, 4, &out, &len) == ENG_ERR_ARG);
    CHECK(eng_png_encode(NULL, 1, 1, 1, &out, &len) == ENG_ERR_ARG && strstr(eng_last_error(), "pix"));
    CHECK(eng_png_encode(px, 1, 1, 1, NULL, &len) == ENG_ERR_ARG);
    CHECK(eng_png_encode(px, 1, 1, 1, &out, NULL) == ENG_ERR_ARG);
    /* Refused before a single pixel is read, so px need not be that large. */
    CHECK(eng_png_encode(px, 1 << 15, 1 << 14, 1, &out, &len) == ENG_ERR_LIMIT && out == NULL);
}

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

static void png_write_file(void)
{
    char p[600];
    snprintf(p, sizeof p, "%s/a.png", tdir);
    uint8_t pix[7 * 3];
    fill_bytes(pix, sizeof pix, 3);
    REQUIRE_OK(eng_png_write(p, pix, 7, 3, 1));
    /* Overwriting replaces the file whole. */
    pix[0] ^= 0xff;
    REQUIRE_OK(eng_png_write(p, pix, 7, 3, 1));
    FILE *fp = fopen(p, "rb");
    REQUIRE(fp != NULL);
    uint8_t buf[4096];
    size_t n = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    uint8_t *back = NULL;
    int w, h, c;
    REQUIRE_OK(eng_png_decode(buf, n, &back, &w, &h, &c));
    CHECK(w == 7 && h == 3 && c == 1 && memcmp(back, pix, sizeof pix) == 0);
    free(back);
    struct stat st;
    CHECK(stat(p, &st) == 0 && (st.st_mode & 0777) == 0644);
    CHECK(count_temps() == 0);

    snprintf(p, sizeof p, "%s/no/such/dir/a.png", tdir);
    CHECK(eng_png_write(p, pix, 7, 3, 1) == ENG_ERR_IO && strstr(eng_last_error(), "no/such"));
    CHECK(eng_png_write("", pix, 7, 3, 1) == ENG_ERR_ARG);
    CHECK(eng_png_write(NULL, pix, 7, 3, 1) == ENG_ERR_ARG);
    snprintf(p, sizeof p, "%s/b.png", tdir);
    CHECK(eng_png_write(p, pix, 7, 3, 2) == ENG_ERR_ARG && access(p, F_OK) != 0);
    CHECK(count_temps() == 0);
}

/* ---- gradient maps ---- */

static void gradmap_scaling(void)
{
    enum { H = 28, W = 28, N = H * W };
    float g[N];
    uint8_t out[N + 16];
    /* A ramp with one outlier a million times larger: with 1/99 clipping the ramp still spans
     * 0..255; without clipping it would all be black. */
    for (int i = 0; i < N; i++)
        g[i] = (float)i * 1e-3f;
    g[123] = 1e6f;
    memset(out, 0xab, sizeof out);
    REQUIRE_OK(eng_gradmap_image(g, 1, H, W, ENG_GRADMAP_LO_PCT, ENG_GRADMAP_HI_PCT, out));
    for (int i = N; i < N + 16; i++)
        CHECKF(out[i] == 0xab, "wrote past h*w*c at %d", i);
    int lo = 255, hi = 0, levels = 0, seen[256] = {0};
    for (int i = 0; i < N; i++) {
        if (i == 123)
            continue;
        lo = out[i] < lo ? out[i] : lo;
        hi = out[i] > hi ? out[i] : hi;
        if (!seen[out[i]]++)
            levels++;
    }
    CHECKF(lo == 0 && hi == 255, "the ramp spans %d..%d", lo, hi);
    CHECKF(levels > 200, "only %d grey levels", levels);
    CHECK(out[123] == 255);
    /* The middle of the ramp sits near mid-grey (the 1st percentile is ~8 steps up). */
    CHECKF(abs((int)out[N / 2] - 128) <= 3, "middle at %d", out[N / 2]);

    REQUIRE_OK(eng_gradmap_image(g, 1, H, W, 0, 100, out));
    int black = 0;
    for (int i = 0; i < N; i++)
        black += out[i] == 0;
    CHECKF(black == N - 1, "without clipping %d of %d are black", black, N - 1);

    /* Constant gradients: mid-grey, no NaN arithmetic. */
    float k[3 * 4 * 5];
    for (int i = 0; i < 60; i++)
        k[i] = 0.37f;
    REQUIRE_OK(eng_gradmap_image(k, 3, 4, 5, 1, 99, out));
    for (int i = 0; i < 60; i++)
        CHECKF(out[i] == 128, "constant gave %d at %d", out[i], i);
    memset(k, 0, sizeof k);
    REQUIRE_OK(eng_gradmap_image(k, 3, 4, 5, 1, 99, out));
    CHECK(out[0] == 128 && out[59] == 128);

    /* Channels interleave: plane c holds c, so the pixels read 0, 128, 255. NaN is grey, infinities
     * saturate, and neither moves the percentiles. */
    for (int ch = 0; ch < 3; ch++)
        for (int i = 0; i < 20; i++)
            k[ch * 20 + i] = (float)ch;
    k[5] = NAN;
    k[20 + 6] = INFINITY;
    k[40 + 7] = -INFINITY;
    REQUIRE_OK(eng_gradmap_image(k, 3, 4, 5, 0, 100, out));
    CHECK(out[0] == 0 && out[1] == 128 && out[2] == 255);
    CHECK(out[19 * 3] == 0 && out[19 * 3 + 1] == 128 && out[19 * 3 + 2] == 255);
    CHECK(out[5 * 3] == 128 && out[6 * 3 + 1] == 255 && out[7 * 3 + 2] == 0);

    /* Percentiles interpolate as numpy's: over 0..10, the 10th and 90th are 1 and 9. */
    float r[11];
    for (int i = 0; i < 11; i++)
        r[i] = (float)(10 - i);
    REQUIRE_OK(eng_gradmap_image(r, 1, 1, 11, 10, 90, out));
    CHECK(out[10] == 0 && out[9] == 0 && out[1] == 255 && out[0] == 255);
    CHECKF(out[5] == 128 && out[8] == 32, "got %d and %d", out[5], out[8]); /* 4/8 and 1/8 of 255 */

    /* Arguments. */
    CHECK(eng_gradmap_image(g, 1, H, W, 99, 1, out) == ENG_ERR_ARG && strstr(eng_last_error(), "lo_pct"));
    CHECK(eng_gradmap_image(g, 1, H, W, 50, 50, out) == ENG_ERR_ARG);
    CHECK(eng_gradmap_image(g, 1, H, W, -1, 50, out) == ENG_ERR_ARG);
    CHECK(eng_gradmap_image(g, 1, H, W, 1, 101, out) == ENG_ERR_ARG);
    CHECK(eng_gradmap_image(g, 1, H, W, NAN, 99, out) == ENG_ERR_ARG);
    CHECK(eng_gradmap_image(g, 1, H, W, 1, 99, NULL) == ENG_ERR_ARG && strstr(eng_last_error(), "out"));
    CHECK(eng_gradmap_image(NULL, 1, H, W, 1, 99, out) == ENG_ERR_ARG && strstr(eng_last_error(), "grad"));
    CHECK(eng_gradmap_image(g, 0, H, W, 1, 99, out) == ENG_ERR_ARG);
    CHECK(eng_gradmap_image(g, 5, H, W, 1, 99, out) == ENG_ERR_ARG);
    CHECK(eng_gradmap_image(g, 1, 0, W, 1, 99, out) == ENG_ERR_ARG);
    CHECK(eng_gradmap_image(g, 3, 1 << 15, 1 << 14, 1, 99, out) == ENG_ERR_LIMIT);
}

static void pixels_image(void)
{
    float x[8] = {-0.5f, 0.0f, 0.5f, 1.0f, 2.0f, 1.0f / 255.0f, 100.6f / 255.0f, NAN};
    uint8_t out[8];
    REQUIRE_OK(eng_pixels_image(x, 1, 2, 4, out));
    static const uint8_t want[8] = {0, 0, 128, 255, 255, 1, 101, 0};
    for (int i = 0; i < 8; i++)
        CHECKF(out[i] == want[i], "pixel %d: %d, wanted %d", i, out[i], want[i]);
    /* Two channels of 2x2: NCHW in, interleaved out. */
    float y[8] = {0, 0, 0, 0, 1, 1, 1, 1};
    REQUIRE_OK(eng_pixels_image(y, 2, 2, 2, out));
    CHECK(out[0] == 0 && out[1] == 255 && out[6] == 0 && out[7] == 255);
    CHECK(eng_pixels_image(NULL, 1, 2, 4, out) == ENG_ERR_ARG);
    CHECK(eng_pixels_image(x, 1, 2, 4, NULL) == ENG_ERR_ARG);
    CHECK(eng_pixels_image(x, 1, -2, 4, out) == ENG_ERR_ARG);
}

/* Pixel (x, y) of a decoded image, channel k. */
static int px_at(const uint8_t *pix, int w, int c, int x, int y, int k) { return pix[((size_t)y * w + x) * c + k]; }

static void triplet_png(void)
{
    enum { H = 28, W = 28 };
    float x[H * W], g[H * W], a[H * W];
    fill_uniform(x, H * W, 1, 0, 1);
    fill_uniform(g, H * W, 2, -1, 1);
    fill_uniform(a, H * W, 3, 0, 1);
    uint8_t *png = NULL, *pix = NULL, gm[H * W];
    size_t len;
    int w, h, c;
    const int s = 4, step = W * s + ENG_GRADMAP_GAP;
    REQUIRE_OK(eng_gradmap_triplet_png(x, g, a, 1, H, W, s, &png, &len));
    REQUIRE_OK(eng_png_decode(png, len, &pix, &w, &h, &c));
    CHECKF(w == 3 * W * s + 2 * ENG_GRADMAP_GAP && h == H * s && c == 1, "got %dx%dx%d", w, h, c);
    REQUIRE_OK(eng_gradmap_image(g, 1, H, W, ENG_GRADMAP_LO_PCT, ENG_GRADMAP_HI_PCT, gm));
    if (w == 3 * W * s + 2 * ENG_GRADMAP_GAP && h == H * s) {
        /* Pixel (5, 10) as a 4x4 block in each panel; the gaps are white. */
        int xi = 10 * W + 5, bad = 0;
        for (int dy = 0; dy < s; dy++)
            for (int dx = 0; dx < s; dx++) {
                bad += px_at(pix, w, 1, 5 * s + dx, 10 * s + dy, 0) != (int)(x[xi] * 255 + 0.5f);
                bad += px_at(pix, w, 1, step + 5 * s + dx, 10 * s + dy, 0) != gm[xi];
                bad += px_at(pix, w, 1, 2 * step + 5 * s + dx, 10 * s + dy, 0) != (int)(a[xi] * 255 + 0.5f);
            }
        CHECKF(bad == 0, "%d block pixels differ", bad);
        for (int y = 0; y < h; y++)
            for (int k = 0; k < ENG_GRADMAP_GAP; k++)
                bad += px_at(pix, w, 1, W * s + k, y, 0) != 255 || px_at(pix, w, 1, step + W * s + k, y, 0) != 255;
        CHECKF(bad == 0, "%d gap pixels are not white", bad);
    }
    free(png);
    free(pix);
    pix = png = NULL;

    /* No adversarial panel: two panels. */
    REQUIRE_OK(eng_gradmap_triplet_png(x, g, NULL, 1, H, W, 1, &png, &len));
    REQUIRE_OK(eng_png_decode(png, len, &pix, &w, &h, &c));
    CHECKF(w == 2 * W + ENG_GRADMAP_GAP && h == H && c == 1, "got %dx%dx%d", w, h, c);
    if (w == 2 * W + ENG_GRADMAP_GAP)
        CHECK(px_at(pix, w, 1, W + ENG_GRADMAP_GAP + 7, 3, 0) == gm[3 * W + 7]);
    free(png);
    free(pix);
    pix = png = NULL;

    /* RGB 32x32 at scale 2: the red, green and blue planes land in their channels. */
    enum { S = 32 };
    float *xr = malloc(3 * S * S * sizeof *xr), *gr = malloc(3 * S * S * sizeof *gr);
    fill_uniform(xr, 3 * S * S, 4, 0, 1);
    fill_uniform(gr, 3 * S * S, 5, -1, 1);
    REQUIRE_OK(eng_gradmap_triplet_png(xr, gr, xr, 3, S, S, 2, &png, &len));
    REQUIRE_OK(eng_png_decode(png, len, &pix, &w, &h, &c));
    CHECKF(w == 3 * S * 2 + 2 * ENG_GRADMAP_GAP && h == S * 2 && c == 3, "got %dx%dx%d", w, h, c);
    if (w == 3 * S * 2 + 2 * ENG_GRADMAP_GAP && c == 3) {
        int xi = 20 * S + 9, adv0 = 2 * (S * 2 + ENG_GRADMAP_GAP);
        for (int k = 0; k < 3; k++) {
            int want = (int)(xr[k * S * S + xi] * 255 + 0.5f);
            CHECK(px_at(pix, w, 3, 9 * 2 + 1, 20 * 2 + 1, k) == want);
            CHECK(px_at(pix, w, 3, adv0 + 9 * 2, 20 * 2, k) == want);
        }
    }
    free(png);
    free(pix);
    free(xr);
    free(gr);

    /* Arguments. */
    png = (uint8_t *)1;
    len = 5;
    CHECK(eng_gradmap_triplet_png(x, g, a, 1, H, W, 0, &png, &len) == ENG_ERR_ARG && png == NULL && len == 0);
    CHECK(strstr(eng_last_error(), "scale") != NULL);
    CHECK(eng_gradmap_triplet_png(x, g, a, 1, H, W, 17, &png, &len) == ENG_ERR_ARG);
    CHECK(eng_gradmap_triplet_png(x, g, a, 2, H, W, 1, &png, &len) == ENG_ERR_ARG);
    CHECK(eng_gradmap_triplet_png(x, g, a, 1, H, W, 1, NULL, &len) == ENG_ERR_ARG);
    CHECK(eng_gradmap_triplet_png(x, g, a, 1, H, W, 1, &png, NULL) == ENG_ERR_ARG);
    CHECK(eng_gradmap_triplet_png(NULL, g, a, 1, H, W, 1, &png, &len) == ENG_ERR_ARG);
    CHECK(eng_gradmap_triplet_png(x, NULL, a, 1, H, W, 1, &png, &len) == ENG_ERR_ARG &&
          strstr(eng_last_error(), "gradients"));
    CHECK(eng_gradmap_triplet_png(x, g, a, 1, 0, W, 1, &png, &len) == ENG_ERR_ARG);
}

static void grid_png(void)
{
    enum { N = 5, H = 28, W = 28, P = H * W };
    float *xs = malloc(N * P * sizeof *xs), *gs = malloc(N * P * sizeof *gs), *as = malloc(N * P * sizeof *as);
    fill_uniform(xs, N * P, 11, 0, 1);
    fill_uniform(gs, N * P, 12, -1, 1);
    fill_uniform(as, N * P, 13, 0, 1);
    uint8_t *png = NULL, *pix = NULL, gm[P];
    size_t len;
    int w, h, c;
    const int cell_w = 3 * W + 2 * ENG_GRADMAP_GAP, cell_h = H;
    REQUIRE_OK(eng_gradmap_grid_png(xs, gs, as, N, 1, H, W, 3, 1, &png, &len));
    REQUIRE_OK(eng_png_decode(png, len, &pix, &w, &h, &c));
    const int want_w = 3 * cell_w + 2 * ENG_GRADMAP_CELL_GAP, want_h = 2 * cell_h + ENG_GRADMAP_CELL_GAP;
    CHECKF(w == want_w && h == want_h && c == 1, "got %dx%dx%d, wanted %dx%dx1", w, h, c, want_w, want_h);
    if (w == want_w && h == want_h) {
        /* Example 4 is row 1, column 1. */
        int x0 = cell_w + ENG_GRADMAP_CELL_GAP, y0 = cell_h + ENG_GRADMAP_CELL_GAP, xi = 17 * W + 3;
        CHECK(px_at(pix, w, 1, x0 + 3, y0 + 17, 0) == (int)(xs[4 * P + xi] * 255 + 0.5f));
        CHECK(px_at(pix, w, 1, x0 + 2 * (W + ENG_GRADMAP_GAP) + 3, y0 + 17, 0) == (int)(as[4 * P + xi] * 255 + 0.5f));
        /* Example 3's gradient map, scaled on its own. */
        REQUIRE_OK(eng_gradmap_image(gs + 3 * P, 1, H, W, ENG_GRADMAP_LO_PCT, ENG_GRADMAP_HI_PCT, gm));
        int bad = 0;
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                bad += px_at(pix, w, 1, W + ENG_GRADMAP_GAP + x, y0 + y, 0) != gm[y * W + x];
        CHECKF(bad == 0, "%d pixels of example 3's gradient map differ", bad);
        /* The empty sixth cell and the gap between rows are white. */
        for (int y = y0; y < h; y++)
            for (int x = 2 * (cell_w + ENG_GRADMAP_CELL_GAP); x < w; x++)
                bad += px_at(pix, w, 1, x, y, 0) != 255;
        for (int x = 0; x < w; x++)
            bad += px_at(pix, w, 1, x, cell_h + 3, 0) != 255;
        CHECKF(bad == 0, "%d pixels of the empty cell or the row gap are not white", bad);
    }
    free(png);
    free(pix);
    pix = png = NULL;

    /* More columns than examples: one row of two, no adversarial panels, scale 2. */
    REQUIRE_OK(eng_gradmap_grid_png(xs, gs, NULL, 2, 1, H, W, 5, 2, &png, &len));
    REQUIRE_OK(eng_png_decode(png, len, &pix, &w, &h, &c));
    const int cw2 = 2 * W * 2 + ENG_GRADMAP_GAP;
    CHECKF(w == 2 * cw2 + ENG_GRADMAP_CELL_GAP && h == H * 2, "got %dx%d", w, h);
    if (w == 2 * cw2 + ENG_GRADMAP_CELL_GAP)
        CHECK(px_at(pix, w, 1, cw2 + ENG_GRADMAP_CELL_GAP + 2 * 6 + 1, 2 * 9, 0) ==
              (int)(xs[P + 9 * W + 6] * 255 + 0.5f));
    free(png);
    free(pix);

    /* Arguments. */
    CHECK(eng_gradmap_grid_png(xs, gs, as, 0, 1, H, W, 3, 1, &png, &len) == ENG_ERR_ARG &&
          strstr(eng_last_error(), "n must"));
    CHECK(eng_gradmap_grid_png(xs, gs, as, -4, 1, H, W, 3, 1, &png, &len) == ENG_ERR_ARG);
    CHECK(eng_gradmap_grid_png(xs, gs, as, N, 1, H, W, 0, 1, &png, &len) == ENG_ERR_ARG &&
          strstr(eng_last_error(), "cols"));
    CHECK(eng_gradmap_grid_png(xs, gs, as, N, 1, H, W, 3, 0, &png, &len) == ENG_ERR_ARG);
    CHECK(eng_gradmap_grid_png(xs, gs, as, N, 1, H, W, 3, 1, NULL, &len) == ENG_ERR_ARG);
    /* 2^20 examples of 28x28 in one row: refused on size before anything is read or allocated. */
    CHECK(eng_gradmap_grid_png(xs, gs, as, 1 << 20, 1, H, W, 1 << 20, 16, &png, &len) == ENG_ERR_LIMIT);
    free(xs);
    free(gs);
    free(as);
}

/* ---- model-level helpers ---- */

enum { B = 2, K = 10, IMG = 28 };

static eng_status small_model(eng_model **m)
{
    eng_model_spec spec = {.arch = "smallcnn", .num_classes = K, .in_channels = 1};
    /* A non-trivial normalisation, so that the gradient must pass through it. */
    spec.mean[0] = 0.3f;
    spec.std[0] = 0.4f;
    eng_status s = eng_model_new(ctx, &spec, m);
    if (s == ENG_OK && (s = eng_model_init(*m, 42)) != ENG_OK) {
        eng_model_free(*m);
        *m = NULL;
    }
    return s;
}

/* Mean cross-entropy of the batch at x. */
static double mean_loss(eng_model *m, const eng_tensor *x, const int32_t *labels)
{
    const eng_tensor *logits;
    eng_forward_opts o = {.mode = ENG_MODE_EVAL};
    double sum = NAN;
    if (eng_model_forward(m, x, &o, &logits) != ENG_OK || eng_xent(ctx, logits, labels, &sum, NULL, NULL, 1) != ENG_OK)
        return NAN;
    return sum / (double)x->dim[0];
}

static void input_gradient_fd(void)
{
    eng_model *m = NULL;
    REQUIRE_OK(small_model(&m));
    eng_tensor x = ENG_TENSOR_INIT, g = ENG_TENSOR_INIT, xp = ENG_TENSOR_INIT, small = ENG_TENSOR_INIT;
    const int64_t n = (int64_t)B * IMG * IMG;
    eng_tensor_alloc4(&x, B, 1, IMG, IMG);
    eng_tensor_alloc4(&g, B, 1, IMG, IMG);
    eng_tensor_alloc4(&xp, B, 1, IMG, IMG);
    eng_tensor_alloc4(&small, B, 1, IMG, IMG - 1);
    fill_uniform(x.data, (long)n, 21, 0, 1);
    int32_t labels[B] = {3, 7};
    float *v = malloc((size_t)n * sizeof *v);
    eng_status s = eng_input_gradient(m, &x, labels, &g);
    CHECKF(s == ENG_OK, "%s", eng_last_error());

    /* Central differences (L(x + h v) - L(x - h v)) / 2h against <grad, v> along unit (L2)
     * directions v, h = 1e-2. Why these numbers: the forward runs in float32, so the loss carries
     * ~1e-6 of rounding that a smaller h would amplify past the derivative; and the model is
     * piecewise linear, so a step crosses ReLU and max-pool kinks whose effect grows with the step's
     * length, not with the derivative. A purely random v has a derivative of only ~|g|/sqrt(n)
     * and drowns in those kinks; mixing the gradient's own direction into a random one keeps the
     * derivative at the scale of |g| (a wrongly scaled or wrongly aimed gradient still fails)
     * and leaves the relative error near 3e-3, well inside 2e-2. Directions: the whole batch
     * twice, example 1 alone (the other example's gradient must not leak in), and a 5x5 patch of
     * pixels in both examples. */
    const double fd_h = 1e-2;
    double gn = 0;
    for (int64_t i = 0; i < n; i++)
        gn += (double)g.data[i] * g.data[i];
    gn = sqrt(gn);
    CHECKF(gn > 1e-3, "|grad| = %g: too small to test", gn);
    for (int trial = 0; trial < 4 && s == ENG_OK && gn > 0; trial++) {
        double v2 = 0;
        for (int64_t i = 0; i < n; i++) {
            int64_t ex = i / (IMG * IMG), y = (i / IMG) % IMG, xx = i % IMG;
            int keep = trial < 2 || (trial == 2 && ex == 1) || (trial == 3 && y >= 10 && y < 15 && xx >= 12 && xx < 17);
            double r = 2.0 * eng_uniform(500 + (uint64_t)trial, (uint64_t)i) - 1.0;
            v[i] = keep ? (float)(g.data[i] / gn + r / sqrt((double)n / 3)) : 0.0f;
            v2 += (double)v[i] * v[i];
        }
        double an = 0;
        for (int64_t i = 0; i < n; i++) {
            v[i] = (float)(v[i] / sqrt(v2));
            an += (double)g.data[i] * v[i];
        }
        for (int64_t i = 0; i < n; i++)
            xp.data[i] = x.data[i] + (float)fd_h * v[i];
        double lp = mean_loss(m, &xp, labels);
        for (int64_t i = 0; i < n; i++)
            xp.data[i] = x.data[i] - (float)fd_h * v[i];
        double lm = mean_loss(m, &xp, labels);
        double fd = (lp - lm) / (2 * fd_h);
        printf("#   direction %d: analytic %.6e, central difference %.6e, relative error %.2e\n", trial, an, fd,
               fabs(fd - an) / fabs(an));
        CHECKF(isfinite(fd) && fabs(fd - an) <= 2e-2 * fabs(an), "direction %d: analytic %.6e vs fd %.6e", trial,
               an, fd);
    }

    /* Deterministic, and the model's next forward does not touch the caller's tensor. */
    float *g0 = malloc((size_t)n * sizeof *g0);
    memcpy(g0, g.data, (size_t)n * sizeof *g0);
    REQUIRE_OK(eng_input_gradient(m, &x, labels, &g));
    CHECK(memcmp(g0, g.data, (size_t)n * sizeof *g0) == 0);
    (void)mean_loss(m, &xp, labels);
    CHECK(memcmp(g0, g.data, (size_t)n * sizeof *g0) == 0);

    /* Arguments. */
    int32_t bad_labels[B] = {3, K};
    CHECK(eng_input_gradient(NULL, &x, labels, &g) == ENG_ERR_ARG);
    CHECK(eng_input_gradient(m, NULL, labels, &g) == ENG_ERR_ARG);
    CHECK(eng_input_gradient(m, &x, NULL, &g) == ENG_ERR_ARG && strstr(eng_last_error(), "labels"));
    CHECK(eng_input_gradient(m, &x, labels, NULL) == ENG_ERR_ARG && strstr(eng_last_error(), "grad"));
    CHECK(eng_input_gradient(m, &x, labels, &x) == ENG_ERR_ARG && strstr(eng_last_error(), "alias"));
    CHECK(eng_input_gradient(m, &x, labels, &small) == ENG_ERR_SHAPE);
    CHECK(eng_input_gradient(m, &x, bad_labels, &g) == ENG_ERR_ARG);
    free(g0);
    free(v);
    eng_tensor_cleanup(&x);
    eng_tensor_cleanup(&g);
    eng_tensor_cleanup(&xp);
    eng_tensor_cleanup(&small);
    eng_model_free(m);
}

/* The penultimate features of x, copied to the host (F per example). */
static float *features(eng_model *m, const eng_tensor *x, int64_t *F)
{
    eng_forward_opts o = {.mode = ENG_MODE_EVAL};
    if (eng_model_forward(m, x, &o, NULL) != ENG_OK)
        return NULL;
    const eng_tensor *z = eng_model_features(m);
    eng_tensor h = ENG_TENSOR_INIT;
    if (!z || eng_tensor_alloc_host(&h, z->ndim, z->dim, ENG_LAYOUT_NCHW) != ENG_OK)
        return NULL;
    eng_ctx_download(ctx, &h, z);
    *F = eng_tensor_numel(&h) / x->dim[0];
    float *out = malloc((size_t)eng_tensor_numel(&h) * sizeof *out);
    memcpy(out, h.data, (size_t)eng_tensor_numel(&h) * sizeof *out);
    eng_tensor_cleanup(&h);
    return out;
}

static void feature_distance(void)
{
    eng_model *m = NULL;
    REQUIRE_OK(small_model(&m));
    eng_tensor x1 = ENG_TENSOR_INIT, x2 = ENG_TENSOR_INIT, other = ENG_TENSOR_INIT;
    const int64_t n = (int64_t)B * IMG * IMG, per = IMG * IMG;
    eng_tensor_alloc4(&x1, B, 1, IMG, IMG);
    eng_tensor_alloc4(&x2, B, 1, IMG, IMG);
    eng_tensor_alloc4(&other, B + 1, 1, IMG, IMG);
    fill_uniform(x1.data, (long)n, 31, 0, 1);
    memcpy(x2.data, x1.data, (size_t)n * sizeof(float));
    float d[B] = {-1, -1};
    REQUIRE_OK(eng_feature_distance(m, &x1, &x2, d));
    CHECKF(d[0] == 0 && d[1] == 0, "identical inputs: %g %g", d[0], d[1]);

    /* Example 1 changes (an augmentation-sized shift of the pixels), example 0 does not. */
    for (int64_t i = 0; i < per; i++)
        x2.data[per + i] = fminf(1.0f, x1.data[per + i] + 0.1f * eng_uniform(32, (uint64_t)i));
    REQUIRE_OK(eng_feature_distance(m, &x1, &x2, d));
    int64_t F = 0;
    float *z1 = features(m, &x1, &F), *z2 = features(m, &x2, &F);
    REQUIRE(z1 && z2 && F == eng_model_feature_dim(m));
    for (int b = 0; b < B; b++) {
        double sum = 0;
        for (int64_t j = 0; j < F; j++)
            sum += ((double)z1[b * F + j] - z2[b * F + j]) * ((double)z1[b * F + j] - z2[b * F + j]);
        double want = sqrt(sum);
        CHECKF(fabs(d[b] - want) <= 1e-5 * want + 1e-6, "example %d: %g, directly %g", b, d[b], want);
    }
    /* Example 0's features do not depend on example 1 (eval mode has no batch statistics). */
    CHECKF(d[0] <= 1e-5f && d[1] > 1e-3f, "distances %g %g", d[0], d[1]);
    free(z1);
    free(z2);

    CHECK(eng_feature_distance(m, &x1, &x2, NULL) == ENG_ERR_ARG && strstr(eng_last_error(), "dist"));
    CHECK(eng_feature_distance(m, &x1, NULL, d) == ENG_ERR_ARG && strstr(eng_last_error(), "x2"));
    CHECK(eng_feature_distance(NULL, &x1, &x2, d) == ENG_ERR_ARG);
    CHECK(eng_feature_distance(m, &x1, &other, d) == ENG_ERR_SHAPE);
    eng_tensor_cleanup(&x1);
    eng_tensor_cleanup(&x2);
    eng_tensor_cleanup(&other);
    eng_model_free(m);
}

static void histogram(void)
{
    float v[] = {-5, 0, 0.1f, 0.5f, 0.99f, 1.0f, 7, NAN, INFINITY, -INFINITY, 0.25f, 0.7499f};
    int64_t counts[4] = {-1, -1, -1, -1};
    REQUIRE_OK(eng_histogram(v, 12, 4, 0, 1, counts));
    /* [0,.25): -5 0 .1 -inf; [.25,.5): .25; [.5,.75): .5 .7499; [.75,1]+: .99 1 7 inf; NaN nowhere. */
    CHECKF(counts[0] == 4 && counts[1] == 1 && counts[2] == 2 && counts[3] == 4, "counts %lld %lld %lld %lld",
           (long long)counts[0], (long long)counts[1], (long long)counts[2], (long long)counts[3]);
    int64_t one = -1;
    REQUIRE_OK(eng_histogram(v, 12, 1, -1e38f, 1e38f, &one));
    CHECK(one == 11);

    CHECK(eng_histogram(v, 0, 4, 0, 1, counts) == ENG_ERR_ARG && strstr(eng_last_error(), "n must"));
    CHECK(eng_histogram(v, -1, 4, 0, 1, counts) == ENG_ERR_ARG);
    CHECK(eng_histogram(v, 12, 0, 0, 1, counts) == ENG_ERR_ARG && strstr(eng_last_error(), "bins"));
    CHECK(eng_histogram(v, 12, 4, 1, 1, counts) == ENG_ERR_ARG);
    CHECK(eng_histogram(v, 12, 4, 2, 1, counts) == ENG_ERR_ARG);
    CHECK(eng_histogram(v, 12, 4, NAN, 1, counts) == ENG_ERR_ARG);
    CHECK(eng_histogram(v, 12, 4, 0, INFINITY, counts) == ENG_ERR_ARG);
    CHECK(eng_histogram(NULL, 12, 4, 0, 1, counts) == ENG_ERR_ARG);
    CHECK(eng_histogram(v, 12, 4, 0, 1, NULL) == ENG_ERR_ARG && strstr(eng_last_error(), "counts"));
}

static void rm_tree(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char sub[1024];
        snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
        remove(sub);
    }
    if (d)
        closedir(d);
    remove(path);
}

int main(void)
{
    const char *base = getenv("RTAAS_TEST_OUT");
    snprintf(tdir, sizeof tdir, "%s/gradmap.XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tdir)) {
        printf("not ok - mkdtemp %s: %s\n", tdir, strerror(errno));
        return 1;
    }
    (void)t_skip;
    (void)t_rel_err;
    (void)t_shared_data;
    T_RUN(png_round_trip);
    T_RUN(png_formats);
    T_RUN(png_corrupt);
    T_RUN(png_encode_args);
    T_RUN(png_write_file);
    T_RUN(gradmap_scaling);
    T_RUN(pixels_image);
    T_RUN(triplet_png);
    T_RUN(grid_png);
    T_RUN(histogram);
    eng_ctx_opts o = {.device = "cpu", .threads = 2};
    if (eng_ctx_new(&ctx, &o) != ENG_OK) {
        printf("not ok - context: %s\n", eng_last_error());
        return 1;
    }
    T_RUN(input_gradient_fd);
    T_RUN(feature_distance);
    eng_ctx_free(ctx);
    if (t_total_failed == 0)
        rm_tree(tdir);
    return t_exit();
}
