/* PNG images of 8-bit gray or RGB pixels, in memory (the service stores them in PostgreSQL)
 * or in a file, through libpng. Decoding is there for tests and checks and refuses what it cannot trust. */
#ifndef ENG_PNG_H
#define ENG_PNG_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* Largest image, in pixels, that encode or decode accept (ENG_ERR_LIMIT past it):
 * 2^28 pixels is 768 MiB of RGB, far above any gradient grid. */
#define ENG_PNG_MAX_PIXELS ((int64_t)1 << 28)

/* Encodes pix (h rows of w pixels, `channels` interleaved bytes each: 1 gray, 3 RGB; row
 * stride w * channels) as an 8-bit, non-interlaced PNG into a new buffer. On success the
 * caller owns *out and frees it with free(); on failure *out is NULL and *len 0. */
eng_status eng_png_encode(const uint8_t *pix, int w, int h, int channels, uint8_t **out, size_t *len);

/* Writes the same PNG to `path` atomically: a temporary next to it, fsync, rename, so
 * readers see the old file or the whole new one, never a partial one. */
eng_status eng_png_write(const char *path, const uint8_t *pix, int w, int h, int channels);

/* Decodes a PNG held in buf[len] into a new buffer of h rows of w pixels, *channels (1 or 3)
 * interleaved bytes each. Palette and low-bit gray are expanded, 16-bit samples scaled to 8
 * bits, alpha dropped (not composited), ancillary chunks (gamma, text) ignored. Corrupt or
 * truncated data: ENG_ERR_FORMAT with the reason; more than ENG_PNG_MAX_PIXELS:
 * ENG_ERR_LIMIT. On success the caller frees *pix with free(); on failure *pix is NULL. */
eng_status eng_png_decode(const uint8_t *buf, size_t len, uint8_t **pix, int *w, int *h, int *channels);

#endif
