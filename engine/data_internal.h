/* What the dataset readers (engine/data*.c) share and nothing else uses: a byte source over a
 * plain or gzip buffer, file mapping, the common last checks, archive member names, resizing. */
#ifndef ENG_DATA_INTERNAL_H
#define ENG_DATA_INTERNAL_H

#include <stdint.h>
#include <zlib.h>

#include "data.h"

/* How a buffer handed to a _mem reader is named in messages. */
#define ENG_DATA_MEM_NAME "(memory buffer)"

/* Deflate's best case is 1032:1, so a gzip stream of n bytes holds at most this many. */
#define ENG_DATA_GZ_RATIO 1032

/* Sequential reads of a buffer that is gzip (one or more members, by its magic) or plain. */
typedef struct eng_data_src {
    const uint8_t *in;
    size_t in_len;
    size_t pos;       /* plain: next byte */
    const char *name; /* for messages */
    int gz, live, ended;
    uint64_t out;     /* bytes handed out so far */
    z_stream zs;
} eng_data_src;

eng_status eng_data_src_open(eng_data_src *s, const void *buf, size_t len, const char *name);
/* Up to n bytes into dst; *got < n only at the end of the data. A corrupt or cut gzip stream,
 * or bytes after its last member, fail with ENG_ERR_FORMAT. */
eng_status eng_data_src_read(eng_data_src *s, void *dst, size_t n, size_t *got);
/* Exactly n bytes, or ENG_ERR_FORMAT "<name>: truncated in <what> ...". */
eng_status eng_data_src_need(eng_data_src *s, void *dst, size_t n, const char *what);
/* ENG_ERR_FORMAT unless the data ends here. */
eng_status eng_data_src_end(eng_data_src *s);
/* An upper bound of the bytes still to come (exact for plain data). */
uint64_t eng_data_src_bound(const eng_data_src *s);
void eng_data_src_close(eng_data_src *s);

/* A whole file, read-only (mapped; NULL data for an empty file). */
typedef struct eng_data_map {
    const uint8_t *p;
    size_t len;
} eng_data_map;

eng_status eng_data_map_file(eng_data_map *m, const char *path, const char *who);
void eng_data_unmap(eng_data_map *m);

/* opts->max_pixels or the default; opts may be NULL. */
int64_t eng_data_max_pixels(const eng_data_opts *opts);

/* The checks every reader ends with: labels in range, num_classes, at least two classes.
 * `who` names the reader and file for the message. */
eng_status eng_data_finish(eng_dataset *d, const char *who);

/* Checks an archive member name and writes its normalised form (no "./" or empty components)
 * into out[cap]. Refuses (ENG_ERR_FORMAT) absolute paths, drive letters, ".." components,
 * control characters and names longer than cap - 1. `who` prefixes the message. */
eng_status eng_data_member_name(const char *name, char *out, size_t cap, const char *who);

/* libarchive, for .npz and ImageFolder archives. */
struct archive;
struct archive_entry;

/* Opens buf[len] for reading: zip only (zip_only) or tar, tar.gz and zip. Release with
 * archive_read_free. */
eng_status eng_data_archive_open(struct archive **a, const void *buf, size_t len, int zip_only, const char *who);
/* libarchive converts member names to the thread's locale and gives NULL where it cannot (any
 * non-ASCII name under "C"); between these two calls the thread runs in C.UTF-8. */
void *eng_data_utf8_begin(void);
void eng_data_utf8_end(void *saved);
/* The next member: 1 with *e set, 0 at the end of the archive, -1 after eng_fail. */
int eng_data_archive_next(struct archive *a, struct archive_entry **e, const char *who);
/* The current member's data into a new buffer (*out, caller frees) of at most limit bytes. */
eng_status eng_data_archive_read(struct archive *a, uint64_t limit, uint8_t **out, size_t *len, const char *who,
                                 const char *member);

/* Bilinear resize with align_corners = false, the arithmetic of the CPU op eng_upsample_fwd. */
typedef struct eng_data_lerp {
    int32_t i0, i1;
    float w0, w1;
} eng_data_lerp;

void eng_data_lerp_table(eng_data_lerp *t, int out, int in);
/* One plane: src [ih, iw] into dst [oh, ow] with tables th (oh entries) and tw (ow entries). */
void eng_data_resize_plane(float *dst, int oh, int ow, const float *src, int iw, const eng_data_lerp *th,
                           const eng_data_lerp *tw);

/* Image kinds found by their magic bytes. */
typedef enum { ENG_IMG_NONE = 0, ENG_IMG_PNG, ENG_IMG_JPEG } eng_data_img_kind;

eng_data_img_kind eng_data_img_sniff(const uint8_t *buf, size_t len);
/* Width, height and channels (1 or 3) an image's header declares, without decoding pixels. */
eng_status eng_data_img_probe(const uint8_t *buf, size_t len, int *w, int *h, int *channels, const char *who);

#endif
