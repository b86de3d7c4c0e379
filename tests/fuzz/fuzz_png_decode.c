/* libFuzzer target for the PNG decoder: any input must be refused with a status or decoded
 * within its bounds, without leaks or crashes through libpng's longjmp; run by `make fuzz`.
 * Each input is decoded as it is and again with its chunk CRCs repaired.
 * Seeds: the crafted and damaged PNGs of tests/unit/test_gradmap.c, written by running it with
 * RTAAS_PNG_SEED_DIR=tests/fuzz/seeds/fuzz_png_decode. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "png.h"

/* Images claiming more pixels are skipped so that each input stays fast: zlib inflates ~1000:1,
 * so a small input can legitimately hold a huge image, which proves nothing but time. The
 * decoder's own limit check is still reached by claims above ENG_PNG_MAX_PIXELS. */
#define FUZZ_MAX_PIXELS ((uint64_t)1 << 20)

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Decodes one input and checks what comes back. */
static void one(const uint8_t *data, size_t size)
{
    /* IHDR must be the first chunk, so width and height sit at bytes 16..23 of any PNG libpng accepts. */
    if (size >= 24) {
        uint64_t px = (uint64_t)be32(data + 16) * be32(data + 20);
        if (px > FUZZ_MAX_PIXELS && px <= (uint64_t)ENG_PNG_MAX_PIXELS)
            return;
    }
    uint8_t *pix = NULL;
    int w = 0, h = 0, c = 0;
    eng_status s = eng_png_decode(data, size, &pix, &w, &h, &c);
    if (s == ENG_OK) {
        /* Touch every byte: a short buffer shows up under ASan. */
        volatile uint8_t sum = 0;
        for (size_t i = 0; i < (size_t)w * (size_t)h * (size_t)c; i++)
            sum += pix[i];
        (void)sum;
        if (w < 1 || h < 1 || (c != 1 && c != 3))
            abort();
        /* What came out must go back in and decode to the same thing. */
        uint8_t *png = NULL, *back = NULL;
        size_t len = 0;
        int w2, h2, c2;
        if (eng_png_encode(pix, w, h, c, &png, &len) != ENG_OK ||
            eng_png_decode(png, len, &back, &w2, &h2, &c2) != ENG_OK || w2 != w || h2 != h || c2 != c)
            abort();
        for (size_t i = 0; i < (size_t)w * (size_t)h * (size_t)c; i++)
            if (back[i] != pix[i])
                abort();
        free(png);
        free(back);
    } else if (pix != NULL || w || h || c) {
        abort(); /* a refusal leaves nothing behind */
    }
    free(pix);
}

/* Rewrites every complete chunk's CRC in place. Almost any mutation breaks a CRC, and libpng
 * stops there; with them repaired the fuzzer reaches the chunk parsers, zlib and the row code. */
static void fix_crcs(uint8_t *d, size_t size)
{
    size_t p = 8;
    while (size - p >= 12) {
        uint32_t n = be32(d + p);
        if (n > size - p - 12)
            break;
        uint32_t crc = (uint32_t)crc32(0, d + p + 4, n + 4);
        uint8_t *c = d + p + 8 + n;
        c[0] = (uint8_t)(crc >> 24), c[1] = (uint8_t)(crc >> 16), c[2] = (uint8_t)(crc >> 8), c[3] = (uint8_t)crc;
        p += 12 + (size_t)n;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    one(data, size);
    if (size >= 8 + 12) {
        uint8_t *fixed = malloc(size);
        if (!fixed)
            return 0;
        memcpy(fixed, data, size);
        fix_crcs(fixed, size);
        if (memcmp(fixed, data, size) != 0)
            one(fixed, size);
        free(fixed);
    }
    return 0;
}
