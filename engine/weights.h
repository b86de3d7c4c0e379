/* A model's parameters as a safetensors file, by torchvision name: load (F32, F16, BF16 or
 * F64 tensors, shapes checked, all or nothing) and save (F32, every parameter and buffer). */
#ifndef ENG_WEIGHTS_H
#define ENG_WEIGHTS_H

#include <stdbool.h>

#include "model.h"

/* What a load matched. Counts are of tensors; the names are empty when the count is 0. */
typedef struct eng_load_report {
    int loaded;              /* model parameters (buffers included) written from the file */
    int ignored;             /* file tensors the model has no parameter for ("*.num_batches_tracked") */
    int missing;             /* model parameters the file lacks (non-strict loads only) */
    char first_missing[128]; /* first missing parameter in model order */
    char first_ignored[128]; /* first ignored tensor in file order */
} eng_load_report;

/* Loads every parameter and buffer of m whose exact name is in the file at path. Each
 * tensor's shape must equal the parameter's (ENG_ERR_SHAPE names both), and its dtype must be
 * a floating-point one (ENG_ERR_FORMAT). strict: a parameter the file lacks is an error
 * (ENG_ERR_NOT_FOUND); otherwise it keeps its value and is counted. Nothing in m changes
 * unless the whole load succeeds; then the model is touched (eng_model_touch). rep may be
 * NULL; when given it is filled on failure too, as far as the check got. */
eng_status eng_model_load_safetensors(eng_model *m, const char *path, bool strict, eng_load_report *rep);

/* Writes every parameter and buffer of m in model order as F32, with n_meta string metadata
 * pairs (may be 0), atomically (see eng_st_write). */
eng_status eng_model_save_safetensors(eng_model *m, const char *path, const char *const *meta_keys,
                                      const char *const *meta_values, int n_meta);

#endif
