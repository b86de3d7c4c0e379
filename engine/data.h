/* Labelled image datasets in memory and the readers that fill them (IDX, CIFAR-10/100 binary,
 * NumPy .npy/.npz, ImageFolder archives of PNG/JPEG), with subsets, splits and training batches. */
#ifndef ENG_DATA_H
#define ENG_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

/* Default cap on a dataset's stored values (n * c * h * w: 8 GiB of uint8) and, for archives,
 * on the sum of the decoded source images' values. eng_data_opts.max_pixels lowers it. */
#define ENG_DATA_MAX_PIXELS ((int64_t)1 << 33)
/* Largest image side and label a reader accepts. */
#define ENG_DATA_MAX_SIDE 65536
#define ENG_DATA_MAX_CLASSES 65536
/* Largest encoded image file inside an archive. */
#define ENG_DATA_MAX_IMAGE_BYTES ((int64_t)64 << 20)
/* Most image files in one archive. */
#define ENG_DATA_MAX_FILES (1 << 23)

typedef enum {
    ENG_PIX_U8 = 0, /* `pixels`: bytes 0..255 standing for [0, 1] */
    ENG_PIX_F32,    /* `fpixels`: floats in [0, 1] (NumPy float32 sources) */
} eng_pix_type;

/* One dataset, every example the same shape. Readers fill it whole or leave it all zero. */
typedef struct eng_dataset {
    int64_t n;          /* examples, 1 .. INT32_MAX */
    int c, h, w;        /* image shape: c is 1 (gray) or 3 (RGB) */
    int num_classes;    /* largest label + 1; at least two distinct labels are present */
    eng_pix_type type;  /* which of pixels / fpixels holds the images */
    uint8_t *pixels;    /* ENG_PIX_U8: n * c * h * w bytes, NCHW; owned */
    float *fpixels;     /* ENG_PIX_F32: n * c * h * w floats, NCHW; owned */
    int32_t *labels;    /* n labels in [0, num_classes); owned */
    char **class_names; /* num_classes names (ImageFolder folders), or NULL where the format has none; owned */
} eng_dataset;

/* Formats eng_dataset_detect recognises. */
typedef enum {
    ENG_FMT_UNKNOWN = 0,
    ENG_FMT_IDX_IMAGES, /* gzip or plain */
    ENG_FMT_IDX_LABELS, /* gzip or plain */
    ENG_FMT_CIFAR10,    /* gzip or plain */
    ENG_FMT_CIFAR100,   /* gzip or plain */
    ENG_FMT_NPY,
    ENG_FMT_NPZ,
    ENG_FMT_TAR,
    ENG_FMT_TAR_GZ,
    ENG_FMT_ZIP,
} eng_data_format;

typedef enum {
    ENG_CIFAR_AUTO = 0,   /* from the size: a multiple of 3073 bytes is CIFAR-10, of 3074 CIFAR-100
                           * (fine labels); a size that is both is refused until the caller says */
    ENG_CIFAR_10,         /* records of 1 label byte + 3072 pixel bytes */
    ENG_CIFAR_100,        /* 1 coarse + 1 fine label byte + 3072; the fine label (0..99) is kept */
    ENG_CIFAR_100_COARSE, /* the same records; the coarse label (0..19) is kept */
} eng_cifar_kind;

typedef enum {
    ENG_NPY_AUTO = 0, /* 3-D arrays are [N, H, W] gray; a 4-D array is accepted only when exactly
                       * one of dims 1 and 3 is 1 or 3, and refused as ambiguous otherwise */
    ENG_NPY_NHWC,     /* [N, H, W, C] */
    ENG_NPY_NCHW,     /* [N, C, H, W] */
} eng_npy_layout;

/* Options of every reader; a zeroed struct (or NULL) means the defaults. Each reader looks at
 * max_pixels and at the fields named for it. */
typedef struct eng_data_opts {
    int64_t max_pixels;     /* cap on stored values (see ENG_DATA_MAX_PIXELS); 0: that default */
    eng_cifar_kind cifar;   /* CIFAR */
    eng_npy_layout layout;  /* npy, npz: the images array's axis order */
    const char *images_key; /* npz: member holding images (without ".npy"); NULL: "x", "images", "X" or "data" */
    const char *labels_key; /* npz: member holding labels; NULL: "y", "labels", "Y" or "targets" */
    int resize_h, resize_w; /* archives: bilinear resize of every image to this size (both or neither);
                             * 0: every image must have the same size */
    int channels;           /* archives: 1 or 3; 0: 3 if any image is in colour, else 1 */
} eng_data_opts;

/* ---- readers ----
 * Each fills *d on success and leaves it zeroed on failure, with eng_last_error() naming the
 * file (or member) and the numbers that did not fit. A dataset must hold at least two classes.
 * The _mem variants read a buffer the caller keeps; the file variants map the file and call
 * them. `opts` may be NULL. Release with eng_dataset_cleanup. */

/* IDX (MNIST, Fashion-MNIST): images (magic 0x803, [n, h, w] uint8) and labels (0x801, [n]),
 * each gzip-compressed or plain. */
eng_status eng_dataset_read_idx(eng_dataset *d, const char *images_path, const char *labels_path,
                                const eng_data_opts *opts);
eng_status eng_dataset_read_idx_mem(eng_dataset *d, const void *images, size_t images_len, const void *labels,
                                    size_t labels_len, const eng_data_opts *opts);

/* CIFAR-10 / CIFAR-100 binary (32x32 RGB), gzip-compressed or plain; opts->cifar says which.
 * The five CIFAR-10 training batches may simply be concatenated into one file. */
eng_status eng_dataset_read_cifar(eng_dataset *d, const char *path, const eng_data_opts *opts);
eng_status eng_dataset_read_cifar_mem(eng_dataset *d, const void *buf, size_t len, const eng_data_opts *opts);

/* NumPy: images '|u1' (kept as bytes) or '<f4' (kept as floats; every value must be in [0, 1]),
 * shape [N, H, W] or 4-D in opts->layout with C of 1 or 3; labels '|u1', '<i4' or '<i8', shape
 * [N]. Version 1-3 headers, C order only. */
eng_status eng_dataset_read_npy(eng_dataset *d, const char *images_path, const char *labels_path,
                                const eng_data_opts *opts);
eng_status eng_dataset_read_npy_mem(eng_dataset *d, const void *images, size_t images_len, const void *labels,
                                    size_t labels_len, const eng_data_opts *opts);
/* .npz (a zip of .npy members, stored or deflated): images and labels by opts->images_key and
 * opts->labels_key; other members are not read. */
eng_status eng_dataset_read_npz(eng_dataset *d, const char *path, const eng_data_opts *opts);
eng_status eng_dataset_read_npz_mem(eng_dataset *d, const void *buf, size_t len, const eng_data_opts *opts);

/* ImageFolder archive (.tar, .tar.gz, .zip): every regular file is a PNG or JPEG image (found by
 * its magic bytes) under a top-level folder naming its class; class indices follow the sorted
 * folder names (byte order), examples are sorted by path. Refused: any other file (no skipping),
 * links and special files, absolute paths and ".." components, a path that appears twice,
 * images of different sizes unless opts->resize_h/w is given, more than opts->max_pixels of
 * declared image values (checked from the image headers before anything is decoded), CMYK
 * JPEGs, damaged or truncated images. Gray images become RGB (and RGB gray, by BT.601 luma)
 * as opts->channels says. The archive is read twice: once to check, once to decode. */
eng_status eng_dataset_read_archive(eng_dataset *d, const char *path, const eng_data_opts *opts);
eng_status eng_dataset_read_archive_mem(eng_dataset *d, const void *buf, size_t len, const eng_data_opts *opts);

/* Reads a file in the given format (labels_path: the IDX or npy labels file, else NULL). */
eng_status eng_dataset_read_file(eng_dataset *d, eng_data_format fmt, const char *path, const char *labels_path,
                                 const eng_data_opts *opts);

/* Guesses the format of an upload from its first bytes (head[0..len), 4 KiB is plenty; a gzip
 * head is inflated to look inside) and its file name (may be NULL). CIFAR binary has no magic:
 * it needs a ".bin" or ".bin.gz" name and label bytes in range where records start. */
eng_data_format eng_dataset_detect(const void *head, size_t len, const char *filename);
/* "idx-images", "cifar10", "tar.gz", ...; never NULL. */
const char *eng_data_format_name(eng_data_format f);

/* Releases what a reader allocated; NULL-safe; leaves *d zeroed. */
void eng_dataset_cleanup(eng_dataset *d);

/* Examples per class into counts[0 .. d->num_classes). */
void eng_dataset_class_counts(const eng_dataset *d, int64_t *counts);

/* Decodes one PNG or JPEG (by its magic bytes) of at most max_pixels pixels (w * h; checked
 * from the header before decoding) into a new buffer of h rows of w pixels, *channels (1 or 3)
 * interleaved bytes each. The caller frees *pix with free(); on failure *pix is NULL. */
eng_status eng_image_decode(const uint8_t *buf, size_t len, int64_t max_pixels, uint8_t **pix, int *w, int *h,
                            int *channels);

/* ---- subsets and splits ---- */

typedef struct eng_subset {
    const int32_t *classes; /* labels to keep; an example of class classes[i] gets label i (at least
                             * two, no repeats). NULL: every class, labels unchanged */
    int n_classes;
    int64_t per_class;      /* take this many of each kept class (a class with fewer is an error); 0: all */
    int random;             /* 0: the first per_class in file order; else a random choice by seed */
    uint64_t seed;
} eng_subset;

/* A new dataset (copies) of the examples s selects, in their original order. On failure *out
 * is zeroed. */
eng_status eng_dataset_subset(eng_dataset *out, const eng_dataset *d, const eng_subset *s);

/* A new dataset (copies) of examples idx[0 .. n), in that order, labels unchanged. */
eng_status eng_dataset_take(eng_dataset *out, const eng_dataset *d, const int32_t *idx, int64_t n);

/* Stratified split: of each class's n_c examples, round(val_fraction * n_c) (half up) go to
 * validation, chosen at random by seed; the rest to training. Both lists are ascending. On
 * success the caller frees *train and *val with free(); on failure they are NULL. */
eng_status eng_dataset_split(const eng_dataset *d, double val_fraction, uint64_t seed, int32_t **train,
                             int64_t *n_train, int32_t **val, int64_t *n_val);

/* ---- batches ---- */

/* Copies examples idx[0 .. n) into x ([n, c, h, w] host NCHW float tensor, pixels in [0,1])
 * and labels (host array of n, or NULL). */
eng_status eng_dataset_batch(const eng_dataset *d, const int32_t *idx, int n, eng_tensor *x, int32_t *labels);

/* How eng_dataset_batch_ex turns stored examples into network input. A zeroed struct (or NULL)
 * is a plain copy. Order: random crop, flip, resize, channels. */
typedef struct eng_batch_opts {
    int h, w;      /* output size (bilinear, align_corners = false, as F.interpolate); 0: the dataset's */
    int c;         /* output channels: 3 from gray repeats the plane, 1 from RGB is BT.601 luma; 0: the dataset's */
    int crop_pad;  /* random crop of the stored size out of the image zero-padded by this many pixels
                    * on every side (torchvision RandomCrop(size, padding)); 0: none */
    int flip;      /* nonzero: mirror left-right with probability 1/2 */
    uint64_t seed; /* draws depend on (seed, idx[k]) only, never on the thread count; pass a new
                    * seed each epoch, e.g. eng_hash64(job_seed, epoch) */
} eng_batch_opts;

/* Examples idx[0 .. n) through opts into x ([n, c, h, w] host NCHW float tensor of the output
 * shape) and labels (or NULL). */
eng_status eng_dataset_batch_ex(const eng_dataset *d, const int32_t *idx, int n, const eng_batch_opts *opts,
                                eng_tensor *x, int32_t *labels);

#endif
