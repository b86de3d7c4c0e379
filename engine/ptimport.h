/* Importing a PyTorch checkpoint as an rtaas backbone: the layouts people save (plain state
 * dicts, {"model": ...} and {"state_dict": ...} wrappers, DataParallel and robustness-library
 * prefixes, stored input normalisers) mapped to torchvision names, the ResNet recognised from
 * its keys and shapes, and a safetensors file in the form `rtaas run` loads. */
#ifndef ENG_PTIMPORT_H
#define ENG_PTIMPORT_H

#include <stdbool.h>

#include "model.h"
#include "ptload.h"

typedef enum {
    ENG_PT_NORM_MISSING = 0, /* neither the file nor the caller gave one */
    ENG_PT_NORM_FILE,        /* the file's normaliser tensors */
    ENG_PT_NORM_OPTION,      /* the caller's values (they win over the file's) */
} eng_pt_norm_source;

typedef struct eng_pt_ignored {
    char *name;      /* key in the checkpoint's state dict */
    const char *why; /* static text */
} eng_pt_ignored;

#define ENG_PT_REPORT_LIST 32 /* names kept of the wrapper's other keys, opaque objects, notes */

/* What an import recognised and did. Filled as far as the import got, on failure too; the
 * strings it owns are released by eng_pt_report_cleanup. */
typedef struct eng_pt_report {
    eng_pt_format format;
    char archive[136];  /* zip archive directory; "" for legacy files */
    char arch[32];      /* "resnet50", ...; "" until recognised */
    int num_classes, in_channels, input_size;
    bool has_fc;        /* false: the file has no fc, which is left zero */
    char wrapper[32];   /* "model", "state_dict", or "" for a plain state dict */
    char prefix[64];    /* stripped from the model's keys: "", "module.", "model.", "module.model.", ... */
    int n_state_dict;   /* entries in the state dict */
    /* normalisation: the file's (if any) and the one the backbone uses */
    bool file_norm;
    char norm_keys[2][160];
    float file_mean[ENG_MAX_CHANNELS], file_std[ENG_MAX_CHANNELS];
    eng_pt_norm_source norm;
    float mean[ENG_MAX_CHANNELS], std[ENG_MAX_CHANNELS]; /* valid unless norm is MISSING */
    int used;                  /* model parameters (buffers included) filled from the file */
    int by_dtype[ENG_ST_BOOL + 1]; /* of the used tensors, per stored dtype */
    eng_pt_ignored *ignored;   /* state-dict entries not used, in the order found */
    int n_ignored, cap_ignored;
    char *other_keys[ENG_PT_REPORT_LIST]; /* the wrapper dict's other keys ("optimizer", "epoch") */
    int n_other_keys;
    char *opaque[ENG_PT_REPORT_LIST];     /* globals the pickle called and that were left opaque */
    int n_opaque;
    char *notes[ENG_PT_REPORT_LIST];      /* warnings for the user */
    int n_notes;
} eng_pt_report;

void eng_pt_report_init(eng_pt_report *r);
void eng_pt_report_cleanup(eng_pt_report *r); /* leaves r as after init; NULL-safe */
/* The report as a JSON object text (malloc'd; the caller frees it), or NULL without memory. */
char *eng_pt_report_json(const eng_pt_report *r);

/* Normalisation the caller imposes; n 0: take the file's. Values per channel, pixels in [0,1]. */
typedef struct eng_pt_import_opts {
    int n_norm;
    float mean[ENG_MAX_CHANNELS], std[ENG_MAX_CHANNELS];
    int input_size; /* written as the backbone's input size; 0: 224 */
} eng_pt_import_opts;

/* Recognises the layout and architecture of an open checkpoint and reads its normaliser, without
 * building a model: fills rep (initialised by the caller) up to the parameter mapping. Fails
 * with a clear message for whole pickled modules, TorchScript, unknown or unsupported nets. */
eng_status eng_pt_recognise(eng_pt_file *f, const eng_pt_import_opts *opts, eng_pt_report *rep);

/* Recognises the checkpoint and builds its model on ctx with every parameter and buffer read
 * from the file (shapes checked, F16/BF16/F64 widened), normalisation as rep->norm says. The
 * caller frees *out. rep is initialised by the caller. */
eng_status eng_pt_import_model(eng_ctx *ctx, eng_pt_file *f, const eng_pt_import_opts *opts, eng_pt_report *rep,
                               eng_model **out);

/* The whole import: opens pt_path, builds the model on ctx, and writes it to out_path as F32
 * safetensors with the metadata `rtaas run` reads (arch, num_classes, in_channels, input_size,
 * mean, std, normalization, ...). out_path is written atomically and only on success. */
eng_status eng_pt_import(eng_ctx *ctx, const char *pt_path, const char *out_path, const eng_pt_import_opts *opts,
                         eng_pt_report *rep);

#endif
