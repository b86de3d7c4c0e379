/* PyTorch checkpoint import against PyTorch: every case of tests/parity/gen_pt.py is imported
 * (the reader, layout recognition, the model), the report is checked against what the case must
 * be recognised as, and the model must give PyTorch's eval logits. Cases marked backbone_file go
 * through eng_pt_import's file and are loaded back the way `rtaas run` loads a backbone (its
 * metadata gives arch and normalisation).
 *
 * Usage: pt_check OUTDIR   (OUTDIR holds manifest.json, x.safetensors, refs.safetensors, *.pt)
 * One TAP case per checkpoint, pt_<case>; a "#" line gives the largest logit difference. */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <unistd.h>

#include "engine.h"
#include "t.h"

#define TOL_LOGITS 1e-4 /* max |rtaas - torch| of a logit; the reference is float64 */

static struct {
    const char *dir;
    eng_ctx *ctx;
    eng_st_file *refs;
    eng_tensor x; /* the input, on the context */
    const json_t *c; /* the running case */
    double worst;
    char worst_case[96];
} S;

static const char *cs(const char *key)
{
    const char *v = json_string_value(json_object_get(S.c, key));
    return v ? v : "";
}

static int floats_meta(const char *s, float *out, int max)
{
    int n = 0;
    while (s && *s && n < max) {
        char *end;
        out[n++] = strtof(s, &end);
        if (end == s)
            return -1;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

/* The backbone file as `rtaas run` reads it: arch, classes, channels and normalisation from its
 * metadata, every parameter from its tensors (strict). */
static eng_status load_backbone(const char *path, eng_model **out)
{
    eng_st_file *f = NULL;
    eng_status s = eng_st_open(path, &f);
    if (s != ENG_OK)
        return s;
    eng_model_spec sp = {0};
    const char *arch = eng_st_meta(f, "arch"), *nc = eng_st_meta(f, "num_classes"), *ic = eng_st_meta(f, "in_channels");
    sp.arch = arch;
    sp.num_classes = nc ? atoi(nc) : 0;
    sp.in_channels = ic ? atoi(ic) : 0;
    int nm = floats_meta(eng_st_meta(f, "mean"), sp.mean, ENG_MAX_CHANNELS);
    int ns = floats_meta(eng_st_meta(f, "std"), sp.std, ENG_MAX_CHANNELS);
    if (!arch || nm != ns || nm < 0)
        s = eng_fail(ENG_ERR_FORMAT, "backbone metadata: arch %s, %d mean and %d std values", arch ? arch : "(none)", nm, ns);
    else if ((s = eng_model_new(S.ctx, &sp, out)) == ENG_OK && (s = eng_model_load_safetensors(*out, path, true, NULL)) != ENG_OK) {
        eng_model_free(*out);
        *out = NULL;
    }
    eng_st_close(f);
    return s;
}

static void check_report(const eng_pt_report *r)
{
    static const char *const sources[] = {"missing", "file", "option"};
    CHECKF(!strcmp(r->arch, cs("arch")), "arch %s, expected %s", r->arch, cs("arch"));
    CHECKF(!strcmp(eng_pt_format_name(r->format), cs("format")), "format %s, expected %s",
           eng_pt_format_name(r->format), cs("format"));
    CHECKF(!strcmp(r->wrapper, cs("wrapper")), "wrapper '%s', expected '%s'", r->wrapper, cs("wrapper"));
    CHECKF(!strcmp(r->prefix, cs("prefix")), "prefix '%s', expected '%s'", r->prefix, cs("prefix"));
    CHECKF(!strcmp(sources[r->norm], cs("norm")), "normalisation from %s, expected %s", sources[r->norm], cs("norm"));
    int used = (int)json_integer_value(json_object_get(S.c, "used"));
    int ignored = (int)json_integer_value(json_object_get(S.c, "ignored"));
    CHECKF(r->used == used, "%d tensors used, expected %d", r->used, used);
    CHECKF(r->n_ignored == ignored, "%d tensors ignored, expected %d (first: %s)", r->n_ignored, ignored,
           r->n_ignored ? r->ignored[0].name : "-");
    CHECK(r->has_fc && r->num_classes == 1000 && r->in_channels == 3);
    int k = 0;
    while (k <= ENG_ST_BOOL && strcmp(eng_st_dtype_name((eng_st_dtype)k), cs("dtype")))
        k++;
    CHECKF(k <= ENG_ST_BOOL && r->by_dtype[k] == used, "not all %d used tensors were %s", used, cs("dtype"));
    const json_t *mean = json_object_get(S.c, "mean");
    if (r->norm == ENG_PT_NORM_FILE && !mean) /* the file's values are the reference's */
        CHECK(r->file_norm && r->mean[0] == r->file_mean[0] && r->std[2] == r->file_std[2]);
    for (int i = 0; mean && i < 3; i++)
        CHECK(fabsf(r->mean[i] - (float)json_real_value(json_array_get(mean, (size_t)i))) < 1e-7f);
}

static void case_import(void)
{
    char pt[1024], out[1024];
    snprintf(pt, sizeof pt, "%s/%s", S.dir, cs("file"));
    snprintf(out, sizeof out, "%s/imported.safetensors", S.dir);
    eng_pt_import_opts opts = {0};
    const json_t *mean = json_object_get(S.c, "mean"), *std = json_object_get(S.c, "std");
    for (size_t i = 0; mean && std && i < json_array_size(mean) && i < ENG_MAX_CHANNELS; i++) {
        opts.mean[i] = (float)json_real_value(json_array_get(mean, i));
        opts.std[i] = (float)json_real_value(json_array_get(std, i));
        opts.n_norm = (int)i + 1;
    }
    eng_pt_report rep;
    eng_pt_report_init(&rep);
    eng_model *m = NULL;
    float *got = NULL, *ref = NULL;
    eng_tensor host = ENG_TENSOR_INIT;
    eng_pt_file *f = NULL;
    bool via_file = json_is_true(json_object_get(S.c, "backbone_file"));
    eng_status s;
    unlink(out);
    if (via_file) { /* import to a backbone file, loaded back as rtaas run loads it */
        s = eng_pt_import(S.ctx, pt, out, &opts, &rep);
    } else if ((s = eng_pt_open(pt, &f)) == ENG_OK) {
        s = eng_pt_import_model(S.ctx, f, &opts, &rep, &m);
        eng_pt_close(f);
    }
    CHECKF(s == ENG_OK, "import %s: %s", pt, eng_last_error());
    if (s != ENG_OK)
        goto done;
    check_report(&rep);
    if (via_file && (s = load_backbone(out, &m)) != ENG_OK) {
        t_failf(__FILE__, __LINE__, "loading the imported backbone: %s", eng_last_error());
        goto done;
    }
    const eng_tensor *logits = NULL;
    if ((s = eng_model_forward(m, &S.x, &(eng_forward_opts){.mode = ENG_MODE_EVAL}, &logits)) != ENG_OK ||
        (s = eng_tensor_alloc_host(&host, logits->ndim, logits->dim, ENG_LAYOUT_NCHW)) != ENG_OK ||
        (s = eng_ctx_download(S.ctx, &host, logits)) != ENG_OK) {
        t_failf(__FILE__, __LINE__, "forward: %s", eng_last_error());
        goto done;
    }
    const eng_st_entry *e = eng_st_find(S.refs, cs("ref"));
    int64_t n = eng_tensor_numel(&host);
    if (!e || e->numel != n || !(ref = malloc((size_t)n * sizeof *ref)) || eng_st_read_f32(S.refs, e, ref, n) != ENG_OK) {
        t_failf(__FILE__, __LINE__, "reference '%s' missing or of another size", cs("ref"));
        goto done;
    }
    got = host.data;
    double worst = 0, mag = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        worst = d > worst || d != d ? d : worst;
        mag = fabs(ref[i]) > mag ? fabs(ref[i]) : mag;
    }
    printf("# %-32s max |logit diff| %.2e  (max |logit| %.2f, %d used, %d ignored%s)\n", cs("name"), worst, mag,
           rep.used, rep.n_ignored, via_file ? ", through the backbone file" : "");
    CHECKF(worst <= TOL_LOGITS, "max |logit diff| %.3e > %.0e", worst, TOL_LOGITS);
    if (worst > S.worst || worst != worst) {
        S.worst = worst;
        snprintf(S.worst_case, sizeof S.worst_case, "%s", cs("name"));
    }
done:
    free(ref);
    eng_tensor_cleanup(&host);
    eng_model_free(m);
    eng_pt_report_cleanup(&rep);
    unlink(out);
}

/* A NumPy .npy file (format 1.0) of raw little-endian data. */
static int write_npy(const char *path, const char *descr, const char *shape, const void *data, size_t len)
{
    char hdr[128];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }", descr, shape);
    int total = (10 + n + 1 + 63) / 64 * 64; /* magic, version, length, dict, newline: 64-byte aligned */
    while (10 + n + 1 < total)
        hdr[n++] = ' ';
    hdr[n++] = '\n';
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)(n & 0xff), (uint8_t)(n >> 8)};
    size_t ok = fwrite(pre, 1, 10, f) + fwrite(hdr, 1, (size_t)n, f) + fwrite(data, 1, len, f);
    return fclose(f) == 0 && ok == 10 + (size_t)n + len ? 0 : -1;
}

/* The imported backbone of a file without a normaliser records that, and rtaas run refuses it
 * unless the spec gives mean and std. */
static void case_run_refuses_missing_norm(void)
{
    char pt[1024], out[1024];
    snprintf(pt, sizeof pt, "%s/r18_plain_zip.pt", S.dir);
    snprintf(out, sizeof out, "%s/nonorm.safetensors", S.dir);
    eng_pt_report rep;
    eng_pt_report_init(&rep);
    REQUIRE_OK(eng_pt_import(S.ctx, pt, out, NULL, &rep));
    CHECK(rep.norm == ENG_PT_NORM_MISSING && rep.n_notes >= 1);
    eng_pt_report_cleanup(&rep);
    eng_st_file *f = NULL;
    REQUIRE_OK(eng_st_open(out, &f));
    const char *nm = eng_st_meta(f, "normalization"), *mean = eng_st_meta(f, "mean");
    CHECKF(nm && !strcmp(nm, "missing"), "normalization metadata '%s'", nm ? nm : "(none)");
    CHECK(mean && !*mean);
    eng_st_close(f);

    /* A tiny dataset so that the job gets as far as loading the backbone. */
    char imgs[1100], labels[1100], spec[4096];
    snprintf(imgs, sizeof imgs, "%s/nonorm-x.npy", S.dir);
    snprintf(labels, sizeof labels, "%s/nonorm-y.npy", S.dir);
    uint8_t px[4 * 8 * 8 * 3];
    int64_t y[4] = {0, 1, 0, 1};
    for (size_t i = 0; i < sizeof px; i++)
        px[i] = (uint8_t)(i * 37);
    REQUIRE(write_npy(imgs, "|u1", "(4, 8, 8, 3)", px, sizeof px) == 0);
    REQUIRE(write_npy(labels, "<i8", "(4,)", y, sizeof y) == 0);
    snprintf(spec, sizeof spec,
             "{\"method\": \"linear\", \"backbone\": {\"arch\": \"resnet18\", \"weights\": \"%s\"},"
             "\"dataset\": {\"format\": \"npy\", \"path\": \"%s\", \"labels\": \"%s\", \"layout\": \"nhwc\"}}",
             out, imgs, labels);
    eng_job *job = NULL;
    char field[160];
    eng_status s = eng_job_parse(spec, strlen(spec), &job, field, sizeof field);
    if (s == ENG_OK) {
        char dir[1100];
        snprintf(dir, sizeof dir, "%s/nonorm-run", S.dir);
        eng_job_hooks hooks = {.out_dir = dir};
        char *report = NULL;
        s = eng_job_run(job, &hooks, &report);
        CHECKF(s != ENG_OK && strstr(eng_last_error(), "without input normalisation"),
               "rtaas run on a backbone without normalisation: %s: %s", eng_strerror(s), eng_last_error());
        free(report);
        eng_job_free(job);
    } else {
        t_failf(__FILE__, __LINE__, "spec refused at %s: %s", field, eng_last_error());
    }
    unlink(imgs);
    unlink(labels);
    unlink(out);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: pt_check OUTDIR\n");
        return 2;
    }
    S.dir = argv[1];
    char path[1024];
    snprintf(path, sizeof path, "%s/manifest.json", S.dir);
    json_error_t jerr;
    json_t *man = json_load_file(path, 0, &jerr);
    eng_st_file *xf = NULL;
    if (!man || eng_ctx_new(&S.ctx, NULL) != ENG_OK) {
        printf("not ok - pt_setup # %s\n", man ? eng_last_error() : jerr.text);
        return 1;
    }
    snprintf(path, sizeof path, "%s/refs.safetensors", S.dir);
    eng_status s = eng_st_open(path, &S.refs);
    snprintf(path, sizeof path, "%s/x.safetensors", S.dir);
    const eng_st_entry *xe = NULL;
    eng_tensor xh = ENG_TENSOR_INIT;
    if (s == ENG_OK)
        s = eng_st_open(path, &xf);
    if (s == ENG_OK && (!(xe = eng_st_find(xf, "x")) || xe->ndim != 4))
        s = eng_fail(ENG_ERR_FORMAT, "x.safetensors has no 4-D 'x'");
    if (s == ENG_OK && (s = eng_tensor_alloc_host(&xh, 4, xe->dim, ENG_LAYOUT_NCHW)) == ENG_OK &&
        (s = eng_st_read_f32(xf, xe, xh.data, xe->numel)) == ENG_OK &&
        (s = eng_ctx_tensor_alloc(S.ctx, &S.x, 4, xe->dim, ENG_LAYOUT_NCHW)) == ENG_OK)
        s = eng_ctx_upload(S.ctx, &S.x, &xh);
    eng_tensor_cleanup(&xh);
    eng_st_close(xf);
    if (s != ENG_OK) {
        printf("not ok - pt_setup # %s\n", eng_last_error());
        return 1;
    }
    const json_t *cases = json_object_get(man, "cases");
    size_t i;
    json_array_foreach(cases, i, S.c)
    {
        char name[128];
        snprintf(name, sizeof name, "pt_%s", cs("name"));
        t_run(name, case_import);
    }
    t_run("pt_run_refuses_missing_normalisation", case_run_refuses_missing_norm);
    printf("# %zu checkpoints; largest logit difference %.2e (%s)\n", json_array_size(cases), S.worst, S.worst_case);
    eng_ctx_tensor_free(S.ctx, &S.x);
    eng_st_close(S.refs);
    eng_ctx_free(S.ctx);
    json_decref(man);
    return t_exit();
}
