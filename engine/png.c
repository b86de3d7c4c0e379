/* PNG encoding to memory and to files, and a defensive decoder, on libpng.
 * libpng reports errors by longjmp; each setjmp lives in a small function whose state sits
 * behind a pointer that never changes, so nothing the error path reads can be clobbered. */
#include "png.h"

#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
/* Named through its versioned directory: with -Iengine, <png.h> would find engine/png.h. */
#include <libpng16/png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* State shared with libpng's callbacks through its error and io pointers. */
typedef struct png_state {
    /* decode: the input */
    const uint8_t *in;
    size_t in_len, in_pos;
    /* encode: the growing output */
    uint8_t *out;
    size_t out_len, out_cap;
    /* decode: the pixels */
    uint8_t *pix;
    int nomem;     /* an allocation failed: report ENG_ERR_NOMEM, not a format error */
    char msg[160]; /* libpng's error text, copied before the longjmp */
} png_state;

/* libpng must not return from an error callback; it jumps back to the setjmp of the call. */
static void on_error(png_structp png, png_const_charp msg)
{
    png_state *st = png_get_error_ptr(png);
    snprintf(st->msg, sizeof st->msg, "%s", msg ? msg : "unknown libpng error");
    png_longjmp(png, 1);
}

/* Warnings (an ancillary chunk's bad CRC, extra data after the image) do not change the pixels. */
static void on_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

/* libpng's own allocations go through here so that running out of memory is told apart from
 * damaged data; libpng turns the NULL into png_error itself. */
static png_voidp on_malloc(png_structp png, png_alloc_size_t size)
{
    void *p = malloc(size ? size : 1);
    if (!p)
        ((png_state *)png_get_mem_ptr(png))->nomem = 1;
    return p;
}

static void on_free(png_structp png, png_voidp p)
{
    (void)png;
    free(p);
}

/* ---- encode ---- */

static void on_write(png_structp png, png_bytep data, size_t n)
{
    png_state *st = png_get_io_ptr(png);
    if (n > st->out_cap - st->out_len) {
        size_t cap = st->out_cap ? st->out_cap : 4096;
        while (cap - st->out_len < n) {
            if (cap > SIZE_MAX / 2) {
                st->nomem = 1;
                png_error(png, "output over the address space");
            }
            cap *= 2;
        }
        uint8_t *p = realloc(st->out, cap);
        if (!p) {
            st->nomem = 1;
            png_error(png, "out of memory for the output");
        }
        st->out = p;
        st->out_cap = cap;
    }
    memcpy(st->out + st->out_len, data, n);
    st->out_len += n;
}

static void on_flush(png_structp png)
{
    (void)png;
}

/* The jump target for one encode; st->out is released by the caller on failure. */
static int encode_rows(png_structp png, png_infop info, png_state *st, const uint8_t *pix, int w, int h,
                       int channels)
{
    if (setjmp(png_jmpbuf(png)))
        return -1;
    /* libpng's default limit of 10^6 per side would refuse a long grid; the pixel count is
     * bounded by the caller instead. */
    png_set_user_limits(png, PNG_UINT_31_MAX, PNG_UINT_31_MAX);
    png_set_write_fn(png, st, on_write, on_flush);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    const size_t stride = (size_t)w * (size_t)channels;
    for (int y = 0; y < h; y++)
        png_write_row(png, pix + (size_t)y * stride);
    png_write_end(png, NULL);
    return 0;
}

eng_status eng_png_encode(const uint8_t *pix, int w, int h, int channels, uint8_t **out, size_t *len)
{
    if (out)
        *out = NULL;
    if (len)
        *len = 0;
    if (!out || !len)
        return eng_fail(ENG_ERR_ARG, "png: encode: out and len must not be NULL");
    if (!pix)
        return eng_fail(ENG_ERR_ARG, "png: encode: pix is NULL");
    if (w < 1 || h < 1)
        return eng_fail(ENG_ERR_ARG, "png: encode: size %dx%d must be at least 1x1", w, h);
    if (channels != 1 && channels != 3)
        return eng_fail(ENG_ERR_ARG, "png: encode: channels must be 1 (gray) or 3 (RGB), got %d", channels);
    if ((int64_t)w * h > ENG_PNG_MAX_PIXELS)
        return eng_fail(ENG_ERR_LIMIT, "png: encode: %dx%d is over the limit of %lld pixels", w, h,
                        (long long)ENG_PNG_MAX_PIXELS);

    png_state st = {0};
    eng_status s = ENG_OK;
    png_infop info = NULL;
    png_structp png = png_create_write_struct_2(PNG_LIBPNG_VER_STRING, &st, on_error, on_warning, &st, on_malloc,
                                                on_free);
    if (!png || !(info = png_create_info_struct(png))) {
        s = eng_fail(ENG_ERR_NOMEM, "png: encode: out of memory for libpng");
        goto out;
    }
    if (encode_rows(png, info, &st, pix, w, h, channels) != 0) {
        s = st.nomem ? eng_fail(ENG_ERR_NOMEM, "png: encode: %s", st.msg)
                     : eng_fail(ENG_ERR_BACKEND, "png: encode: libpng: %s", st.msg);
        goto out;
    }
    *out = st.out;
    *len = st.out_len;
    st.out = NULL;
out:
    png_destroy_write_struct(png ? &png : NULL, info ? &info : NULL);
    free(st.out);
    return s;
}

/* ---- write a file ---- */

eng_status eng_png_write(const char *path, const uint8_t *pix, int w, int h, int channels)
{
    if (!path || !*path)
        return eng_fail(ENG_ERR_ARG, "png: write: path is empty");
    uint8_t *buf = NULL;
    size_t len = 0;
    eng_status s = eng_png_encode(pix, w, h, channels, &buf, &len);
    if (s != ENG_OK)
        return s;

    eng_piece piece = {buf, len};
    s = eng_write_file_atomic(path, &piece, 1, "png: write");
    free(buf);
    return s;
}

/* ---- decode ---- */

static void on_read(png_structp png, png_bytep data, size_t n)
{
    png_state *st = png_get_io_ptr(png);
    if (n > st->in_len - st->in_pos) {
        snprintf(st->msg, sizeof st->msg, "truncated: the data ends at byte %zu, inside a read of %zu bytes at %zu",
                 st->in_len, n, st->in_pos);
        png_longjmp(png, 1); /* the message is already set: skip on_error's copy */
    }
    memcpy(data, st->in + st->in_pos, n);
    st->in_pos += n;
}

/* Result of decode_rows besides a libpng error. */
typedef struct png_dims {
    int w, h, channels;
} png_dims;

/* The jump target for one decode: returns -1 after a libpng error (message in st->msg), 1 when
 * the image is over the pixel limit (dims filled in), 0 on success with st->pix filled. */
static int decode_rows(png_structp png, png_infop info, png_state *st, png_dims *d)
{
    if (setjmp(png_jmpbuf(png)))
        return -1;
    png_set_user_limits(png, PNG_UINT_31_MAX, PNG_UINT_31_MAX);
    /* Every ancillary chunk is skipped unread: the pixels do not depend on them, and text or
     * ICC chunks are where a hostile file would make libpng inflate or allocate the most. */
    png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, NULL, -1);
    png_set_read_fn(png, st, on_read);
    png_read_info(png, info);

    png_uint_32 w, h;
    int depth, color, interlace;
    png_get_IHDR(png, info, &w, &h, &depth, &color, &interlace, NULL, NULL);
    d->w = (int)w; /* libpng has refused anything above 2^31 - 1 */
    d->h = (int)h;
    d->channels = (color & PNG_COLOR_MASK_COLOR) ? 3 : 1;
    if ((uint64_t)w * h > (uint64_t)ENG_PNG_MAX_PIXELS)
        return 1;

    /* Everything becomes 8-bit gray or RGB. Palette expansion turns a tRNS chunk into alpha,
     * so alpha is stripped whatever the colour type says. */
    if (color == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(png);
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8)
        png_set_expand_gray_1_2_4_to_8(png);
    if (depth == 16)
        png_set_scale_16(png);
    png_set_strip_alpha(png);
    int passes = png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_bit_depth(png, info) != 8 || png_get_channels(png, info) != d->channels ||
        png_get_rowbytes(png, info) != (size_t)w * (size_t)d->channels) {
        snprintf(st->msg, sizeof st->msg, "unexpected pixel format after conversion (color type %d, depth %d)", color,
                 depth);
        return -1;
    }

    const size_t stride = (size_t)w * (size_t)d->channels;
    if (!(st->pix = malloc(stride * h))) {
        st->nomem = 1;
        snprintf(st->msg, sizeof st->msg, "out of memory for %ux%u pixels", (unsigned)w, (unsigned)h);
        return -1;
    }
    /* Reading into the final rows pass after pass assembles an Adam7 image in place. */
    for (int p = 0; p < passes; p++)
        for (png_uint_32 y = 0; y < h; y++)
            png_read_row(png, st->pix + (size_t)y * stride, NULL);
    /* Reads through IEND, so a file cut after the pixel data is still refused. */
    png_read_end(png, NULL);
    return 0;
}

eng_status eng_png_decode(const uint8_t *buf, size_t len, uint8_t **pix, int *w, int *h, int *channels)
{
    if (pix)
        *pix = NULL;
    if (w)
        *w = 0;
    if (h)
        *h = 0;
    if (channels)
        *channels = 0;
    if (!pix || !w || !h || !channels)
        return eng_fail(ENG_ERR_ARG, "png: decode: pix, w, h and channels must not be NULL");
    if (!buf && len > 0)
        return eng_fail(ENG_ERR_ARG, "png: decode: buf is NULL");
    if (len < 8 || png_sig_cmp(buf, 0, 8) != 0)
        return eng_fail(ENG_ERR_FORMAT, "png: decode: not a PNG (%s)", len < 8 ? "shorter than the signature"
                                                                                : "bad signature");

    png_state st = {.in = buf, .in_len = len};
    png_dims d = {0};
    eng_status s = ENG_OK;
    png_infop info = NULL;
    png_structp png = png_create_read_struct_2(PNG_LIBPNG_VER_STRING, &st, on_error, on_warning, &st, on_malloc,
                                               on_free);
    if (!png || !(info = png_create_info_struct(png))) {
        s = eng_fail(ENG_ERR_NOMEM, "png: decode: out of memory for libpng");
        goto out;
    }
    int rc = decode_rows(png, info, &st, &d);
    if (rc < 0) {
        s = st.nomem ? eng_fail(ENG_ERR_NOMEM, "png: decode: %s", st.msg)
                     : eng_fail(ENG_ERR_FORMAT, "png: decode: %s", st.msg);
        goto out;
    }
    if (rc > 0) {
        s = eng_fail(ENG_ERR_LIMIT, "png: decode: %dx%d is over the limit of %lld pixels", d.w, d.h,
                     (long long)ENG_PNG_MAX_PIXELS);
        goto out;
    }
    *pix = st.pix;
    st.pix = NULL;
    *w = d.w;
    *h = d.h;
    *channels = d.channels;
out:
    png_destroy_read_struct(png ? &png : NULL, info ? &info : NULL, NULL);
    free(st.pix);
    return s;
}
