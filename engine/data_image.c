/* Single images for the archive reader: PNG (through engine/png.c) and JPEG (libjpeg-turbo),
 * told apart by magic bytes, with the declared size read from the header before any decoding.
 * libjpeg reports errors by longjmp; the setjmp lives in one small function whose state sits
 * behind a pointer, as in png.c. */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* jpeglib.h first: jerror.h's list depends on jconfig.h's switches. */
#include <jpeglib.h>
#include <jerror.h>

#include "data_internal.h"
#include "png.h"

/* A progressive JPEG may hold any number of scans, each a pass over the whole image; real
 * encoders write about ten. More is refused as a CPU bomb (libjpeg-turbo's own tools use 500). */
#define JPG_MAX_SCANS 200

eng_data_img_kind eng_data_img_sniff(const uint8_t *buf, size_t len)
{
    if (len >= 8 && memcmp(buf, "\x89PNG\r\n\x1a\n", 8) == 0)
        return ENG_IMG_PNG;
    if (len >= 3 && buf[0] == 0xff && buf[1] == 0xd8 && buf[2] == 0xff)
        return ENG_IMG_JPEG;
    return ENG_IMG_NONE;
}

static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

/* IHDR must be the first chunk: width and height at bytes 16..23, colour type at 25. */
static eng_status png_probe(const uint8_t *buf, size_t len, int *w, int *h, int *c, const char *who)
{
    if (len < 33 || be32(buf + 8) != 13 || memcmp(buf + 12, "IHDR", 4) != 0)
        return eng_fail(ENG_ERR_FORMAT, "%s: PNG without an IHDR chunk first (%zu bytes)", who, len);
    uint32_t pw = be32(buf + 16), ph = be32(buf + 20);
    if (pw == 0 || ph == 0 || pw > 0x7fffffffu || ph > 0x7fffffffu)
        return eng_fail(ENG_ERR_FORMAT, "%s: PNG declares %ux%u pixels", who, pw, ph);
    switch (buf[25]) {
    case 0: /* gray */
    case 4: /* gray + alpha */
        *c = 1;
        break;
    case 2: /* RGB */
    case 3: /* palette */
    case 6: /* RGBA */
        *c = 3;
        break;
    default:
        return eng_fail(ENG_ERR_FORMAT, "%s: PNG colour type %d is not one of 0, 2, 3, 4, 6", who, buf[25]);
    }
    *w = (int)pw;
    *h = (int)ph;
    return ENG_OK;
}

/* ---- JPEG ---- */

typedef struct jpg_state {
    struct jpeg_error_mgr err; /* first, so that cinfo->err leads back here */
    struct jpeg_progress_mgr progress;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX + 64];
    const uint8_t *in;
    size_t in_len;
    int64_t max_pixels;
    uint8_t *pix;
    int w, h, c;
    int nomem;
} jpg_state;

static void jpg_error_exit(j_common_ptr ci)
{
    jpg_state *st = (jpg_state *)ci->err;
    char m[JMSG_LENGTH_MAX];
    ci->err->format_message(ci, m);
    snprintf(st->msg, sizeof st->msg, "%s", m);
    if (ci->err->msg_code == JERR_OUT_OF_MEMORY)
        st->nomem = 1;
    longjmp(st->jb, 1);
}

/* Warnings that mean the pixels are not what the file meant (a cut file above all) stop the
 * decode, as libjpeg-turbo's TJFLAG_STOPONWARNING does; harmless ones are counted and ignored. */
static void jpg_emit(j_common_ptr ci, int level)
{
    if (level >= 0)
        return;
    switch (ci->err->msg_code) {
#if JPEG_LIB_VERSION >= 70 || defined(C_ARITH_CODING_SUPPORTED) || defined(D_ARITH_CODING_SUPPORTED)
    case JWRN_ARITH_BAD_CODE:
#endif
    case JWRN_BOGUS_PROGRESSION:
    case JWRN_HIT_MARKER:
    case JWRN_HUFF_BAD_CODE:
    case JWRN_JPEG_EOF:
    case JWRN_MUST_RESYNC:
    case JWRN_NOT_SEQUENTIAL:
        jpg_error_exit(ci);
        break;
    default:
        ci->err->num_warnings++;
    }
}

static void jpg_progress(j_common_ptr ci)
{
    if (!ci->is_decompressor || ((j_decompress_ptr)ci)->input_scan_number <= JPG_MAX_SCANS)
        return;
    jpg_state *st = (jpg_state *)ci->err;
    snprintf(st->msg, sizeof st->msg, "more than %d scans", JPG_MAX_SCANS);
    longjmp(st->jb, 1);
}

/* The jump target of one probe or decode: 0 done, 1 over max_pixels (w, h filled), -1 error in
 * st->msg. Only jpeg_destroy_decompress is left to the caller. */
static int jpg_run(struct jpeg_decompress_struct *ci, jpg_state *st, int decode)
{
    if (setjmp(st->jb))
        return -1;
    jpeg_create_decompress(ci);
    st->progress.progress_monitor = jpg_progress;
    ci->progress = &st->progress;
    jpeg_mem_src(ci, st->in, (unsigned long)st->in_len);
    jpeg_read_header(ci, TRUE);
    st->w = (int)ci->image_width;
    st->h = (int)ci->image_height;
    switch (ci->jpeg_color_space) {
    case JCS_GRAYSCALE:
        st->c = 1;
        ci->out_color_space = JCS_GRAYSCALE;
        break;
    case JCS_YCbCr:
    case JCS_RGB:
        st->c = 3;
        ci->out_color_space = JCS_RGB;
        break;
    default:
        snprintf(st->msg, sizeof st->msg, "JPEG colour space %d (CMYK or YCCK) is not supported",
                 (int)ci->jpeg_color_space);
        return -1;
    }
    if (st->w < 1 || st->h < 1) {
        snprintf(st->msg, sizeof st->msg, "JPEG declares %dx%d pixels", st->w, st->h);
        return -1;
    }
    if ((int64_t)st->w * st->h > st->max_pixels)
        return 1;
    if (!decode)
        return 0;
    jpeg_start_decompress(ci);
    if ((int)ci->output_width != st->w || (int)ci->output_height != st->h || ci->output_components != st->c) {
        snprintf(st->msg, sizeof st->msg, "JPEG decodes to %ux%u x %d, not the %dx%d x %d its header declares",
                 ci->output_width, ci->output_height, ci->output_components, st->w, st->h, st->c);
        return -1;
    }
    const size_t stride = (size_t)st->w * (size_t)st->c;
    if (!(st->pix = malloc(stride * (size_t)st->h))) {
        st->nomem = 1;
        snprintf(st->msg, sizeof st->msg, "out of memory for %dx%d pixels", st->w, st->h);
        return -1;
    }
    while (ci->output_scanline < ci->output_height) {
        JSAMPROW row = st->pix + (size_t)ci->output_scanline * stride;
        if (jpeg_read_scanlines(ci, &row, 1) != 1) {
            snprintf(st->msg, sizeof st->msg, "JPEG decoding stopped at row %u", ci->output_scanline);
            return -1;
        }
    }
    jpeg_finish_decompress(ci);
    return 0;
}

/* Probes (decode 0) or decodes (decode 1) one JPEG; on success with decode, *pix is the caller's. */
static eng_status jpg_do(const uint8_t *buf, size_t len, int64_t max_pixels, int decode, uint8_t **pix, int *w,
                         int *h, int *c, const char *who)
{
    jpg_state *st = calloc(1, sizeof *st);
    struct jpeg_decompress_struct *ci = calloc(1, sizeof *ci);
    if (!st || !ci) {
        free(st);
        free(ci);
        return eng_fail(ENG_ERR_NOMEM, "%s: out of memory", who);
    }
    ci->err = jpeg_std_error(&st->err);
    st->err.error_exit = jpg_error_exit;
    st->err.emit_message = jpg_emit;
    st->in = buf;
    st->in_len = len;
    st->max_pixels = max_pixels;
    eng_status s = ENG_OK;
    int rc = jpg_run(ci, st, decode);
    if (rc < 0)
        s = eng_fail(st->nomem ? ENG_ERR_NOMEM : ENG_ERR_FORMAT, "%s: bad JPEG: %s", who, st->msg);
    else if (rc > 0)
        s = eng_fail(ENG_ERR_LIMIT, "%s: JPEG of %dx%d pixels is over the limit of %lld", who, st->w, st->h,
                     (long long)max_pixels);
    jpeg_destroy_decompress(ci);
    if (s == ENG_OK) {
        if (pix)
            *pix = st->pix;
        else
            free(st->pix);
        *w = st->w;
        *h = st->h;
        *c = st->c;
    } else {
        free(st->pix);
    }
    free(st);
    free(ci);
    return s;
}

eng_status eng_data_img_probe(const uint8_t *buf, size_t len, int *w, int *h, int *channels, const char *who)
{
    switch (eng_data_img_sniff(buf, len)) {
    case ENG_IMG_PNG:
        return png_probe(buf, len, w, h, channels, who);
    case ENG_IMG_JPEG:
        return jpg_do(buf, len, INT64_MAX, 0, NULL, w, h, channels, who);
    default:
        return eng_fail(ENG_ERR_FORMAT, "%s: not a PNG or JPEG image (%zu bytes)", who, len);
    }
}

eng_status eng_image_decode(const uint8_t *buf, size_t len, int64_t max_pixels, uint8_t **pix, int *w, int *h,
                            int *channels)
{
    if (pix)
        *pix = NULL;
    if (!pix || !w || !h || !channels)
        return eng_fail(ENG_ERR_ARG, "image: pix, w, h and channels must not be NULL");
    *w = *h = *channels = 0;
    if (!buf && len)
        return eng_fail(ENG_ERR_ARG, "image: buf is NULL");
    if (max_pixels <= 0)
        max_pixels = ENG_PNG_MAX_PIXELS;
    int pw, ph, pc;
    eng_status s;
    switch (eng_data_img_sniff(buf, len)) {
    case ENG_IMG_JPEG:
        return jpg_do(buf, len, max_pixels, 1, pix, w, h, channels, "image");
    case ENG_IMG_PNG:
        if ((s = png_probe(buf, len, &pw, &ph, &pc, "image")) != ENG_OK)
            return s;
        if ((int64_t)pw * ph > max_pixels || (int64_t)pw * ph > ENG_PNG_MAX_PIXELS)
            return eng_fail(ENG_ERR_LIMIT, "image: PNG of %dx%d pixels is over the limit of %lld", pw, ph,
                            (long long)(max_pixels < ENG_PNG_MAX_PIXELS ? max_pixels : ENG_PNG_MAX_PIXELS));
        if ((s = eng_png_decode(buf, len, pix, w, h, channels)) != ENG_OK)
            return s;
        if (*w != pw || *h != ph || *channels != pc) {
            s = eng_fail(ENG_ERR_FORMAT, "image: PNG decodes to %dx%d x %d, not the %dx%d x %d its header declares", *w,
                         *h, *channels, pw, ph, pc);
            free(*pix);
            *pix = NULL;
            *w = *h = *channels = 0;
        }
        return s;
    default:
        return eng_fail(ENG_ERR_FORMAT, "image: not a PNG or JPEG (%zu bytes)", len);
    }
}
