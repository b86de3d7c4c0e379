/* Jobs: one JSON spec (the body of POST /v1/transfers, or the file of `rtaas run`) taken from
 * datasets and a source backbone through a method to a trained model, its evaluation under
 * attack, gradient maps and a JSON report. The spec names local files; the service resolves
 * its stored blobs to files before it hands a spec here. */
#ifndef ENG_JOB_H
#define ENG_JOB_H

#include <stdbool.h>
#include <stddef.h>

#include "train.h"

typedef struct eng_job eng_job;

/* Parses and validates a spec. On failure, *out is NULL, the status is ENG_ERR_ARG (or
 * ENG_ERR_FORMAT for text that is not JSON), eng_last_error() says what is wrong, and `field`
 * (when not NULL) receives the path of the offending field, e.g. "params.lr" or
 * "eval.attacks[1].steps" ("" when the problem is the document itself). */
eng_status eng_job_parse(const char *json, size_t len, eng_job **out, char *field, size_t field_len);
void eng_job_free(eng_job *job);

/* "linear", "mlp", "lwf", "retrain_blocks", "adv_finetune", "free_at", "natural". */
const char *eng_job_method(const eng_job *job);

typedef struct eng_job_hooks {
    eng_progress_fn progress;      /* phase: "load", "features", "train", "eval", "gradients" */
    bool (*cancelled)(void *user); /* polled between steps and batches */
    void *user;
    const char *out_dir;           /* artifacts, report.json and the training checkpoint go here */
    const char *device;            /* overrides the spec's device when not NULL */
} eng_job_hooks;

/* Runs the job. Writes into out_dir: model.safetensors (the whole trained model, with its
 * architecture, classes and normalisation as metadata), head.safetensors (linear, mlp: the
 * classifier alone), report.json, gradients.png (a grid) and gradients/NNNN.png (input,
 * gradient, adversarial example), and checkpoint.safetensors while training (removed at the end;
 * a run that finds one resumes from it). *report (may be NULL) receives report.json's text; the
 * caller frees it with free(). */
eng_status eng_job_run(eng_job *job, const eng_job_hooks *hooks, char **report);

#endif
