/* What a PyTorch checkpoint holds: the state dict inside the wrappers people save, the model
 * prefix, the stored input normaliser, and which torchvision ResNet the keys and shapes make;
 * and the import report that says all of it. No model is built here (see ptimport.c). */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pt_internal.h"

/* Dict keys that hold the state dict, tried in this order. The robustness library saves
 * {"model": sd, "optimizer": ..., "schedule": ..., "epoch": ...}. */
static const char *const wrappers[] = {"state_dict", "model"};
/* Model prefixes, most specific first: robustness library under DataParallel ("module.model."),
 * DataParallel, a wrapper module, none; the attacker's copy only when nothing else exists. */
static const char *const prefixes[] = {"module.model.", "module.", "model.", "", "module.attacker.model.",
                                       "attacker.model."};
static const char *const attacker_prefixes[] = {"module.attacker.", "attacker."};
/* Normaliser tensors (mean, std), matched as the last components of a key. */
static const struct {
    const char *mean, *std;
} norms[] = {
    {"normalizer.new_mean", "normalizer.new_std"},
    {"normalize.new_mean", "normalize.new_std"},
    {"normalize.mean", "normalize.std"},
    {"normalizer.mean", "normalizer.std"},
};
#define NNORMS ((int)(sizeof norms / sizeof *norms))

/* torchvision ImageNet ResNets by block type, bottleneck width of layer1 and blocks per stage. */
static const struct {
    const char *arch;
    bool bottleneck;
    int64_t width;
    int blocks[4];
    bool supported;
} resnets[] = {
    {"resnet18", false, 64, {2, 2, 2, 2}, true},       {"resnet34", false, 64, {3, 4, 6, 3}, true},
    {"resnet50", true, 64, {3, 4, 6, 3}, true},        {"wide_resnet50_2", true, 128, {3, 4, 6, 3}, true},
    {"resnet101", true, 64, {3, 4, 23, 3}, false},     {"resnet152", true, 64, {3, 8, 36, 3}, false},
    {"wide_resnet101_2", true, 128, {3, 4, 23, 3}, false},
};

/* ---- report ---- */

void eng_pt_report_init(eng_pt_report *r) { memset(r, 0, sizeof *r); }

void eng_pt_report_cleanup(eng_pt_report *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->n_ignored; i++)
        free(r->ignored[i].name);
    free(r->ignored);
    for (int i = 0; i < r->n_other_keys; i++)
        free(r->other_keys[i]);
    for (int i = 0; i < r->n_opaque; i++)
        free(r->opaque[i]);
    for (int i = 0; i < r->n_notes; i++)
        free(r->notes[i]);
    eng_pt_report_init(r);
}

eng_status pt_report_ignore(eng_pt_report *r, const char *name, const char *why)
{
    if (r->n_ignored == r->cap_ignored) {
        int cap = r->cap_ignored ? 2 * r->cap_ignored : 32;
        eng_pt_ignored *a = realloc(r->ignored, (size_t)cap * sizeof *a);
        if (!a)
            return eng_fail(ENG_ERR_NOMEM, "import: out of memory");
        r->ignored = a;
        r->cap_ignored = cap;
    }
    if (!(r->ignored[r->n_ignored].name = strdup(name)))
        return eng_fail(ENG_ERR_NOMEM, "import: out of memory");
    r->ignored[r->n_ignored++].why = why;
    return ENG_OK;
}

void pt_report_note(eng_pt_report *r, const char *fmt, ...)
{
    if (r->n_notes == ENG_PT_REPORT_LIST)
        return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if ((r->notes[r->n_notes] = strdup(buf)))
        r->n_notes++;
}

static json_t *floats_json(const float *v, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_real(v[i]));
    return a;
}

static json_t *names_json(char *const *v, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_string(v[i]));
    return a;
}

char *eng_pt_report_json(const eng_pt_report *r)
{
    static const char *const sources[] = {"missing", "file", "option"};
    json_t *o = json_object();
    json_object_set_new(o, "format", json_string(eng_pt_format_name(r->format)));
    if (r->archive[0])
        json_object_set_new(o, "archive", json_string(r->archive));
    json_object_set_new(o, "arch", r->arch[0] ? json_string(r->arch) : json_null());
    json_object_set_new(o, "num_classes", json_integer(r->num_classes));
    json_object_set_new(o, "in_channels", json_integer(r->in_channels));
    json_object_set_new(o, "input_size", json_integer(r->input_size));
    json_object_set_new(o, "fc", json_string(r->has_fc ? "kept" : "absent (zero-filled)"));
    json_object_set_new(o, "wrapper", r->wrapper[0] ? json_string(r->wrapper) : json_null());
    if (r->wrapper[0])
        json_object_set_new(o, "wrapper_other_keys", names_json(r->other_keys, r->n_other_keys));
    json_object_set_new(o, "prefix", json_string(r->prefix));
    json_object_set_new(o, "state_dict_entries", json_integer(r->n_state_dict));

    json_t *n = json_object();
    int c = r->in_channels > 0 && r->in_channels <= ENG_MAX_CHANNELS ? r->in_channels : 0;
    json_object_set_new(n, "source", json_string(sources[r->norm]));
    json_object_set_new(n, "found_in_file", json_boolean(r->file_norm));
    json_object_set_new(n, "mean", r->norm != ENG_PT_NORM_MISSING ? floats_json(r->mean, c) : json_null());
    json_object_set_new(n, "std", r->norm != ENG_PT_NORM_MISSING ? floats_json(r->std, c) : json_null());
    if (r->file_norm) {
        json_object_set_new(n, "keys", json_pack("[s,s]", r->norm_keys[0], r->norm_keys[1]));
        json_object_set_new(n, "file_mean", floats_json(r->file_mean, c));
        json_object_set_new(n, "file_std", floats_json(r->file_std, c));
    }
    json_object_set_new(o, "normalization", n);

    json_object_set_new(o, "tensors_used", json_integer(r->used));
    json_t *dt = json_object();
    for (int i = 0; i <= ENG_ST_BOOL; i++)
        if (r->by_dtype[i])
            json_object_set_new(dt, eng_st_dtype_name((eng_st_dtype)i), json_integer(r->by_dtype[i]));
    json_object_set_new(o, "dtypes", dt);
    json_t *ig = json_array();
    for (int i = 0; i < r->n_ignored; i++)
        json_array_append_new(ig, json_pack("{s:s, s:s}", "name", r->ignored[i].name, "why", r->ignored[i].why));
    json_object_set_new(o, "tensors_ignored", ig);
    json_object_set_new(o, "opaque_objects", names_json(r->opaque, r->n_opaque));
    json_object_set_new(o, "notes", names_json(r->notes, r->n_notes));
    /* 7 digits show float32 values as written (0.485, not 0.48500001430511475). */
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(7));
    json_decref(o);
    return text;
}

/* ---- recognition ---- */

static bool starts_with(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

/* key is suffix, or ends with "." + suffix. */
static bool ends_with_part(const char *key, const char *suffix)
{
    size_t k = strlen(key), s = strlen(suffix);
    return k >= s && strcmp(key + k - s, suffix) == 0 && (k == s || key[k - s - 1] == '.');
}

static bool is_attacker(const char *key)
{
    for (size_t i = 0; i < sizeof attacker_prefixes / sizeof *attacker_prefixes; i++)
        if (starts_with(key, attacker_prefixes[i]))
            return true;
    return false;
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp(((const pt_sd_entry *)a)->key, ((const pt_sd_entry *)b)->key);
}

static int cmp_mapped(const void *a, const void *b)
{
    return strcmp(((const pt_sd_entry *)a)->mapped, ((const pt_sd_entry *)b)->mapped);
}

void pt_layout_cleanup(pt_layout *lay)
{
    if (!lay)
        return;
    free(lay->e);
    memset(lay, 0, sizeof *lay);
}

pt_sd_entry *pt_layout_find(const pt_layout *lay, const char *mapped)
{
    pt_sd_entry k = {.mapped = mapped};
    return lay->n ? bsearch(&k, lay->e, (size_t)lay->n, sizeof k, cmp_mapped) : NULL;
}

/* A tensor of the sorted (by key) entries, or NULL. */
static const pt_sd_entry *by_key(const pt_sd_entry *sorted, int n, const char *key)
{
    pt_sd_entry k = {.key = key};
    return n ? bsearch(&k, sorted, (size_t)n, sizeof k, cmp_key) : NULL;
}

/* Reads a normaliser tensor of exactly c values. */
static eng_status read_norm(eng_pt_file *f, const pt_sd_entry *e, int c, float *out, bool is_std)
{
    eng_pt_tensor_info t;
    eng_status s = eng_pt_tensor(e->v, &t);
    if (s != ENG_OK)
        return s;
    if (t.numel != c)
        return eng_fail(ENG_ERR_SHAPE, "import: normaliser '%.200s' has %lld values, the model has %d input channels",
                        e->key, (long long)t.numel, c);
    if ((s = eng_pt_read_f32(f, e->v, out, c)) != ENG_OK)
        return eng_fail(s, "import: normaliser '%.200s': %s", e->key, eng_last_error());
    for (int i = 0; i < c; i++)
        if (!isfinite(out[i]) || (is_std && !(out[i] > 0)))
            return eng_fail(ENG_ERR_FORMAT, "import: normaliser '%.200s' holds %g at channel %d", e->key, out[i], i);
    return ENG_OK;
}

static const char *opaque_hint(const char *cls)
{
    return strncmp(cls, "__torch__", 9) == 0 ? "a TorchScript module" : "a whole pickled module or object";
}

/* Finds the state dict: the root, or the value of a wrapper key. */
static eng_status find_state_dict(const eng_pt_value *root, eng_pt_report *rep, const eng_pt_value **sd)
{
    *sd = root;
    if (eng_pt_kind_of(root) == ENG_PT_DICT) {
        for (size_t w = 0; w < sizeof wrappers / sizeof *wrappers; w++) {
            const eng_pt_value *v = eng_pt_dict_get(root, wrappers[w]);
            if (eng_pt_kind_of(v) == ENG_PT_OPAQUE)
                return eng_fail(ENG_ERR_UNSUPPORTED,
                                "import: checkpoint['%s'] is %s (%.200s), not a state dict; save model.state_dict()",
                                wrappers[w], opaque_hint(eng_pt_str(v, NULL)), eng_pt_str(v, NULL));
            if (eng_pt_kind_of(v) != ENG_PT_DICT)
                continue;
            *sd = v;
            snprintf(rep->wrapper, sizeof rep->wrapper, "%s", wrappers[w]);
            for (int64_t i = 0; i < eng_pt_len(root) && rep->n_other_keys < ENG_PT_REPORT_LIST; i++) {
                const char *k = eng_pt_str(eng_pt_dict_key(root, i), NULL);
                if (eng_pt_kind_of(eng_pt_dict_key(root, i)) == ENG_PT_STR && strcmp(k, wrappers[w]) != 0 &&
                    (rep->other_keys[rep->n_other_keys] = strdup(k)))
                    rep->n_other_keys++;
            }
            break;
        }
    }
    if (eng_pt_kind_of(*sd) == ENG_PT_OPAQUE)
        return eng_fail(ENG_ERR_UNSUPPORTED, "import: the checkpoint is %s (%.200s), not a state dict; save "
                        "model.state_dict() with torch.save", opaque_hint(eng_pt_str(*sd, NULL)), eng_pt_str(*sd, NULL));
    if (eng_pt_kind_of(*sd) != ENG_PT_DICT)
        return eng_fail(ENG_ERR_FORMAT, "import: the checkpoint holds a %s, not a state dict",
                        eng_pt_kind_name(eng_pt_kind_of(*sd)));
    return ENG_OK;
}

/* "a, b, c" of the first keys, for messages. */
static void first_keys(const eng_pt_value *sd, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int64_t i = 0; i < eng_pt_len(sd) && i < 4 && used < len; i++) {
        const char *k = eng_pt_str(eng_pt_dict_key(sd, i), NULL);
        used += (size_t)snprintf(buf + used, len - used, "%s'%.60s'", i ? ", " : "", k ? k : "?");
    }
    if (eng_pt_len(sd) > 4 && used < len)
        snprintf(buf + used, len - used, ", ...");
}

static bool shape_is(const pt_sd_entry *e, int ndim, eng_pt_tensor_info *t)
{
    return e && eng_pt_tensor(e->v, t) == ENG_OK && t->ndim == ndim;
}

/* The architecture from the mapped names and shapes. */
static eng_status recognise_arch(const pt_layout *lay, eng_pt_report *rep)
{
    eng_pt_tensor_info t;
    char name[64];
    const pt_sd_entry *c1 = pt_layout_find(lay, "conv1.weight");
    if (!shape_is(c1, 4, &t))
        return eng_fail(ENG_ERR_FORMAT, "import: 'conv1.weight' is not a 4-D tensor");
    if (t.dim[2] != 7 || t.dim[3] != 7 || t.dim[0] != 64)
        return eng_fail(ENG_ERR_UNSUPPORTED,
                        "import: conv1 is %lldx%lld with %lld filters; rtaas imports torchvision ImageNet ResNets "
                        "(7x7, 64 filters)%s",
                        (long long)t.dim[2], (long long)t.dim[3], (long long)t.dim[0],
                        t.dim[2] == 3 ? ", not CIFAR-style ResNets" : "");
    if (t.dim[1] < 1 || t.dim[1] > ENG_MAX_CHANNELS)
        return eng_fail(ENG_ERR_UNSUPPORTED, "import: conv1 takes %lld input channels (1 to %d)", (long long)t.dim[1],
                        ENG_MAX_CHANNELS);
    rep->in_channels = (int)t.dim[1];
    bool bottle = pt_layout_find(lay, "layer1.0.conv3.weight") != NULL;
    const pt_sd_entry *l1 = pt_layout_find(lay, "layer1.0.conv1.weight");
    if (!shape_is(l1, 4, &t))
        return eng_fail(ENG_ERR_UNSUPPORTED, "import: no 'layer1.0.conv1.weight': not a torchvision ResNet");
    int64_t width = t.dim[0];
    int blocks[4];
    for (int li = 0; li < 4; li++) {
        blocks[li] = 0;
        for (;;) {
            snprintf(name, sizeof name, "layer%d.%d.conv1.weight", li + 1, blocks[li]);
            if (blocks[li] >= 64 || !pt_layout_find(lay, name))
                break;
            blocks[li]++;
        }
    }
    for (size_t i = 0; i < sizeof resnets / sizeof *resnets; i++) {
        if (resnets[i].bottleneck != bottle || resnets[i].width != width ||
            memcmp(resnets[i].blocks, blocks, sizeof blocks) != 0)
            continue;
        if (!resnets[i].supported)
            return eng_fail(ENG_ERR_UNSUPPORTED, "import: the checkpoint is a %s, which rtaas does not have "
                            "(resnet18, resnet34, resnet50, wide_resnet50_2)", resnets[i].arch);
        snprintf(rep->arch, sizeof rep->arch, "%s", resnets[i].arch);
        break;
    }
    if (!rep->arch[0])
        return eng_fail(ENG_ERR_UNSUPPORTED, "import: a ResNet of %s blocks %d-%d-%d-%d with layer1 width %lld, not "
                        "torchvision's resnet18, resnet34, resnet50 or wide_resnet50_2",
                        bottle ? "bottleneck" : "basic", blocks[0], blocks[1], blocks[2], blocks[3], (long long)width);
    const pt_sd_entry *fc = pt_layout_find(lay, "fc.weight");
    rep->has_fc = fc != NULL;
    rep->num_classes = 1000;
    if (fc) {
        if (!shape_is(fc, 2, &t) || t.dim[0] < 1 || t.dim[0] > (1 << 20))
            return eng_fail(ENG_ERR_FORMAT, "import: 'fc.weight' is not a [classes, features] tensor");
        rep->num_classes = (int)t.dim[0];
    } else {
        pt_report_note(rep, "the file has no fc layer; the backbone gets a zero 1000-class fc (transfer replaces it)");
    }
    return ENG_OK;
}

eng_status pt_layout_build(eng_pt_file *f, const eng_pt_import_opts *opts, eng_pt_report *rep, pt_layout *lay)
{
    eng_status s = ENG_OK;
    pt_sd_entry *all = NULL, *sorted = NULL;
    memset(lay, 0, sizeof *lay);
    rep->format = eng_pt_get_format(f);
    snprintf(rep->archive, sizeof rep->archive, "%s", eng_pt_archive_name(f));
    for (int i = 0; i < eng_pt_opaque_count(f) && rep->n_opaque < ENG_PT_REPORT_LIST; i++)
        if ((rep->opaque[rep->n_opaque] = strdup(eng_pt_opaque_name(f, i))))
            rep->n_opaque++;
    rep->input_size = opts && opts->input_size > 0 ? opts->input_size : 224;

    const eng_pt_value *sd;
    if ((s = find_state_dict(eng_pt_root(f), rep, &sd)) != ENG_OK)
        return s;
    int64_t n = eng_pt_len(sd);
    rep->n_state_dict = (int)n;
    all = calloc(n ? (size_t)n : 1, sizeof *all);
    sorted = calloc(n ? (size_t)n : 1, sizeof *sorted);
    if (!all || !sorted) {
        s = eng_fail(ENG_ERR_NOMEM, "import: out of memory for %lld entries", (long long)n);
        goto out;
    }
    int nt = 0; /* string keys with tensor values, in order */
    for (int64_t i = 0; i < n; i++) {
        const eng_pt_value *k = eng_pt_dict_key(sd, i), *v = eng_pt_dict_val(sd, i);
        if (eng_pt_kind_of(k) != ENG_PT_STR) {
            s = pt_report_ignore(rep, "(a key that is not a string)", "not a parameter name");
        } else if (eng_pt_kind_of(v) != ENG_PT_TENSOR) {
            s = pt_report_ignore(rep, eng_pt_str(k, NULL), "not a tensor");
        } else {
            all[nt] = (pt_sd_entry){.key = eng_pt_str(k, NULL), .v = v, .order = (int)i};
            nt++;
        }
        if (s != ENG_OK)
            goto out;
    }
    memcpy(sorted, all, (size_t)nt * sizeof *all);
    qsort(sorted, (size_t)nt, sizeof *sorted, cmp_key);
    for (int i = 1; i < nt; i++)
        if (strcmp(sorted[i - 1].key, sorted[i].key) == 0) {
            s = eng_fail(ENG_ERR_FORMAT, "import: key '%.200s' appears twice in the state dict", sorted[i].key);
            goto out;
        }

    /* The model prefix: the first under which the stem exists. */
    const char *prefix = NULL;
    for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes && !prefix; i++) {
        char k[96];
        snprintf(k, sizeof k, "%sconv1.weight", prefixes[i]);
        if (by_key(sorted, nt, k))
            prefix = prefixes[i];
    }
    if (!prefix) {
        char keys[320];
        first_keys(sd, keys, sizeof keys);
        s = eng_fail(ENG_ERR_UNSUPPORTED, "import: no torchvision ResNet in the state dict (no 'conv1.weight' under "
                     "the prefixes module., model., module.model.); %lld entries%s%s", (long long)n, n ? ": " : "", keys);
        goto out;
    }
    snprintf(rep->prefix, sizeof rep->prefix, "%s", prefix);
    bool prefix_is_attacker = is_attacker(prefix);

    /* The normaliser: the first (mean, std) pair that is not the attacker's copy. */
    pt_sd_entry norm_mean, norm_std; /* copies: `sorted` is reused below */
    const pt_sd_entry *nm = NULL, *ns = NULL;
    for (int i = 0; i < nt && !nm; i++) {
        if (is_attacker(all[i].key) && !prefix_is_attacker)
            continue;
        for (int j = 0; j < NNORMS && !nm; j++) {
            if (!ends_with_part(all[i].key, norms[j].mean))
                continue;
            char k[512];
            size_t stem = strlen(all[i].key) - strlen(norms[j].mean);
            snprintf(k, sizeof k, "%.*s%s", (int)stem, all[i].key, norms[j].std);
            const pt_sd_entry *e = by_key(sorted, nt, k);
            if (e) {
                norm_mean = all[i];
                norm_std = *e;
                nm = &norm_mean;
                ns = &norm_std;
            }
        }
    }

    /* Every other tensor: under the prefix it is a candidate model parameter. */
    for (int i = 0; i < nt; i++) {
        pt_sd_entry *e = &all[i];
        const char *why = NULL;
        bool is_norm = false;
        for (int j = 0; j < NNORMS; j++)
            is_norm |= ends_with_part(e->key, norms[j].mean) || ends_with_part(e->key, norms[j].std);
        if (nm && (strcmp(e->key, nm->key) == 0 || strcmp(e->key, ns->key) == 0))
            continue;
        if (ends_with_part(e->key, "num_batches_tracked"))
            why = "batch-norm step counter (unused)";
        else if (is_norm)
            why = is_attacker(e->key) ? "the attacker's copy of the normaliser (robustness library)"
                                      : "a second normaliser (the first one is used)";
        else if (!prefix_is_attacker && is_attacker(e->key))
            why = "the attacker's copy of the model (robustness library)";
        else if (!starts_with(e->key, prefix))
            why = "outside the model prefix";
        if (why) {
            if ((s = pt_report_ignore(rep, e->key, why)) != ENG_OK)
                goto out;
            continue;
        }
        e->mapped = e->key + strlen(prefix);
        sorted[lay->n++] = *e; /* lay->n <= i: the entries still to be read lie in `all` */
    }
    lay->e = sorted;
    sorted = NULL;
    qsort(lay->e, (size_t)lay->n, sizeof *lay->e, cmp_mapped);

    if ((s = recognise_arch(lay, rep)) != ENG_OK)
        goto out;
    int c = rep->in_channels;
    if (nm) {
        rep->file_norm = true;
        snprintf(rep->norm_keys[0], sizeof rep->norm_keys[0], "%s", nm->key);
        snprintf(rep->norm_keys[1], sizeof rep->norm_keys[1], "%s", ns->key);
        if ((s = read_norm(f, nm, c, rep->file_mean, false)) != ENG_OK ||
            (s = read_norm(f, ns, c, rep->file_std, true)) != ENG_OK)
            goto out;
    }
    if (opts && opts->n_norm > 0) {
        if (opts->n_norm != c) {
            s = eng_fail(ENG_ERR_ARG, "import: %d mean/std values given, the model has %d input channels", opts->n_norm, c);
            goto out;
        }
        for (int i = 0; i < c; i++)
            if (!isfinite(opts->mean[i]) || !(opts->std[i] > 0) || !isfinite(opts->std[i])) {
                s = eng_fail(ENG_ERR_ARG, "import: mean/std of channel %d are %g/%g", i, opts->mean[i], opts->std[i]);
                goto out;
            }
        rep->norm = ENG_PT_NORM_OPTION;
        memcpy(rep->mean, opts->mean, sizeof rep->mean);
        memcpy(rep->std, opts->std, sizeof rep->std);
        if (nm && (memcmp(rep->mean, rep->file_mean, (size_t)c * sizeof(float)) != 0 ||
                   memcmp(rep->std, rep->file_std, (size_t)c * sizeof(float)) != 0))
            pt_report_note(rep, "the given mean/std replace the file's own normaliser (%s), which differs", nm->key);
    } else if (nm) {
        rep->norm = ENG_PT_NORM_FILE;
        memcpy(rep->mean, rep->file_mean, sizeof rep->mean);
        memcpy(rep->std, rep->file_std, sizeof rep->std);
    } else {
        rep->norm = ENG_PT_NORM_MISSING;
        pt_report_note(rep, "the file stores no input normalisation: give it (torchvision ImageNet models: mean "
                            "0.485,0.456,0.406 std 0.229,0.224,0.225) with --mean/--std here or backbone.mean/std "
                            "in the job spec; rtaas run refuses this backbone without it");
    }
out:
    free(all);
    free(sorted);
    if (s != ENG_OK)
        pt_layout_cleanup(lay);
    return s;
}

eng_status eng_pt_recognise(eng_pt_file *f, const eng_pt_import_opts *opts, eng_pt_report *rep)
{
    if (!f || !rep)
        return eng_fail(ENG_ERR_ARG, "import: NULL file or report");
    pt_layout lay;
    eng_status s = pt_layout_build(f, opts, rep, &lay);
    pt_layout_cleanup(&lay);
    return s;
}
