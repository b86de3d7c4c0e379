/* What happens to a dataset after reading: class subsets and relabelling, N per class, stratified
 * splits, and batches with random crop, flip, bilinear resize and channel conversion. Every random
 * choice is a function of (seed, class or example index), so runs and thread counts agree. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data_internal.h"
#include "rng.h"

/* ---- bilinear resize ---- */

void eng_data_lerp_table(eng_data_lerp *t, int out, int in)
{
    /* The arithmetic of engine/cpu/ops_cpu.c lerp_table, so the two agree to the bit. */
    const double scale = (double)in / (double)out;
    for (int o = 0; o < out; o++) {
        double src = ((double)o + 0.5) * scale - 0.5;
        if (src < 0)
            src = 0;
        int i0 = (int)src;
        if (i0 > in - 1)
            i0 = in - 1;
        int i1 = i0 + (i0 < in - 1 ? 1 : 0);
        float l = (float)(src - (double)i0);
        t[o] = (eng_data_lerp){i0, i1, 1.0f - l, l};
    }
}

void eng_data_resize_plane(float *dst, int oh, int ow, const float *src, int iw, const eng_data_lerp *th,
                           const eng_data_lerp *tw)
{
    for (int p = 0; p < oh; p++) {
        const eng_data_lerp a = th[p];
        const float *r0 = src + (int64_t)a.i0 * iw, *r1 = src + (int64_t)a.i1 * iw;
        float *o = dst + (int64_t)p * ow;
        for (int q = 0; q < ow; q++) {
            const eng_data_lerp b = tw[q];
            o[q] = a.w0 * (b.w0 * r0[b.i0] + b.w1 * r0[b.i1]) + a.w1 * (b.w0 * r1[b.i0] + b.w1 * r1[b.i1]);
        }
    }
}

/* ---- subsets ---- */

static eng_status copy_names(eng_dataset *out, const eng_dataset *d, const int32_t *map_new_to_old, int n_new)
{
    if (!d->class_names)
        return ENG_OK;
    if (!(out->class_names = calloc((size_t)n_new, sizeof(char *))))
        return eng_fail(ENG_ERR_NOMEM, "dataset: out of memory for class names");
    for (int i = 0; i < n_new; i++) {
        int old = map_new_to_old ? map_new_to_old[i] : i;
        const char *nm = old < d->num_classes && d->class_names[old] ? d->class_names[old] : "";
        if (!(out->class_names[i] = strdup(nm)))
            return eng_fail(ENG_ERR_NOMEM, "dataset: out of memory for class names");
    }
    return ENG_OK;
}

eng_status eng_dataset_take(eng_dataset *out, const eng_dataset *d, const int32_t *idx, int64_t n)
{
    memset(out, 0, sizeof *out);
    if (!d || d->n < 1 || (!d->pixels && !d->fpixels))
        return eng_fail(ENG_ERR_ARG, "dataset: take from an empty dataset");
    if (n < 1 || !idx)
        return eng_fail(ENG_ERR_ARG, "dataset: take of %lld examples", (long long)n);
    for (int64_t k = 0; k < n; k++)
        if (idx[k] < 0 || idx[k] >= d->n)
            return eng_fail(ENG_ERR_ARG, "dataset: take: index %d (position %lld) outside [0, %lld)", idx[k],
                            (long long)k, (long long)d->n);
    eng_dataset t = {.n = n, .c = d->c, .h = d->h, .w = d->w, .num_classes = d->num_classes, .type = d->type};
    const size_t per = (size_t)d->c * (size_t)d->h * (size_t)d->w;
    const size_t esz = d->type == ENG_PIX_F32 ? sizeof(float) : 1;
    uint8_t *dst = malloc((size_t)n * per * esz);
    t.labels = malloc((size_t)n * sizeof(int32_t));
    if (d->type == ENG_PIX_F32)
        t.fpixels = (float *)dst;
    else
        t.pixels = dst;
    eng_status s = ENG_OK;
    if (!dst || !t.labels) {
        s = eng_fail(ENG_ERR_NOMEM, "dataset: out of memory for %lld examples", (long long)n);
        goto out;
    }
    const uint8_t *src = d->type == ENG_PIX_F32 ? (const uint8_t *)d->fpixels : d->pixels;
    for (int64_t k = 0; k < n; k++) {
        memcpy(dst + (size_t)k * per * esz, src + (size_t)idx[k] * per * esz, per * esz);
        t.labels[k] = d->labels[idx[k]];
    }
    if ((s = copy_names(&t, d, NULL, d->num_classes)) != ENG_OK)
        goto out;
    *out = t;
    return ENG_OK;
out:
    eng_dataset_cleanup(&t);
    return s;
}

/* Indices of class `cls` in file order into list; returns their count. */
static int64_t class_members(const eng_dataset *d, int32_t cls, int32_t *list)
{
    int64_t k = 0;
    for (int64_t i = 0; i < d->n; i++)
        if (d->labels[i] == cls)
            list[k++] = (int32_t)i;
    return k;
}

/* Moves a random choice of `take` of list[0 .. n) to its front (partial Fisher-Yates). The
 * stream depends on (seed, purpose, class), so that a subset and a split drawn with one seed
 * do not pick the same positions. */
enum { CHOOSE_SUBSET = 1, CHOOSE_SPLIT = 2 };
static void choose(int32_t *list, int64_t n, int64_t take, uint64_t seed, int purpose, int32_t cls)
{
    eng_rng r;
    eng_rng_init(&r, eng_hash64(eng_hash64(seed, (uint64_t)purpose), (uint64_t)(uint32_t)cls));
    for (int64_t i = 0; i < take; i++) {
        int64_t j = i + (int64_t)(eng_rng_uniform(&r) * (double)(n - i));
        if (j >= n)
            j = n - 1;
        int32_t tmp = list[i];
        list[i] = list[j];
        list[j] = tmp;
    }
}

eng_status eng_dataset_subset(eng_dataset *out, const eng_dataset *d, const eng_subset *s)
{
    memset(out, 0, sizeof *out);
    if (!d || d->n < 1 || !d->labels)
        return eng_fail(ENG_ERR_ARG, "subset: empty dataset");
    const eng_subset def = {0};
    if (!s)
        s = &def;
    if (s->per_class < 0)
        return eng_fail(ENG_ERR_ARG, "subset: per_class %lld is negative", (long long)s->per_class);
    const int nk = s->classes ? s->n_classes : d->num_classes;
    if (s->classes && (s->n_classes < 2 || s->n_classes > d->num_classes))
        return eng_fail(ENG_ERR_ARG, "subset: %d classes asked for; need 2..%d", s->n_classes, d->num_classes);
    int32_t *newlab = malloc((size_t)d->num_classes * sizeof(int32_t));
    int32_t *list = malloc((size_t)d->n * sizeof(int32_t));
    uint8_t *keep = calloc((size_t)d->n, 1);
    int32_t *idx = NULL;
    eng_status st = ENG_OK;
    if (!newlab || !list || !keep) {
        st = eng_fail(ENG_ERR_NOMEM, "subset: out of memory");
        goto out;
    }
    for (int i = 0; i < d->num_classes; i++)
        newlab[i] = s->classes ? -1 : i;
    for (int i = 0; s->classes && i < nk; i++) {
        int32_t c = s->classes[i];
        if (c < 0 || c >= d->num_classes) {
            st = eng_fail(ENG_ERR_ARG, "subset: class %d outside 0..%d", c, d->num_classes - 1);
            goto out;
        }
        if (newlab[c] >= 0) {
            st = eng_fail(ENG_ERR_ARG, "subset: class %d listed twice", c);
            goto out;
        }
        newlab[c] = i;
    }
    int64_t total = 0;
    int present = 0;
    for (int i = 0; i < nk; i++) {
        int32_t c = s->classes ? s->classes[i] : i;
        int64_t m = class_members(d, c, list);
        if (m == 0 && s->classes) {
            st = eng_fail(ENG_ERR_ARG, "subset: class %d has no examples", c);
            goto out;
        }
        if (s->per_class > m && (s->classes || m > 0)) {
            st = eng_fail(ENG_ERR_ARG, "subset: class %d has %lld examples, %lld asked for", c, (long long)m,
                          (long long)s->per_class);
            goto out;
        }
        int64_t take = s->per_class ? s->per_class : m;
        if (s->random && take < m)
            choose(list, m, take, s->seed, CHOOSE_SUBSET, c);
        for (int64_t k = 0; k < take; k++)
            keep[list[k]] = 1;
        total += take;
        present += take > 0;
    }
    if (present < 2) {
        st = eng_fail(ENG_ERR_ARG, "subset: only %d class left; a classification dataset needs at least 2", present);
        goto out;
    }
    if (!(idx = malloc((size_t)total * sizeof(int32_t)))) {
        st = eng_fail(ENG_ERR_NOMEM, "subset: out of memory");
        goto out;
    }
    int64_t k = 0;
    for (int64_t i = 0; i < d->n; i++)
        if (keep[i])
            idx[k++] = (int32_t)i;
    eng_dataset t;
    if ((st = eng_dataset_take(&t, d, idx, total)) != ENG_OK)
        goto out;
    if (s->classes) {
        for (int64_t i = 0; i < t.n; i++)
            t.labels[i] = newlab[t.labels[i]];
        /* take copied the old names; map them to the new labels */
        if (t.class_names) {
            char **names = t.class_names;
            t.class_names = NULL;
            st = copy_names(&t, &(eng_dataset){.num_classes = d->num_classes, .class_names = names}, s->classes, nk);
            for (int i = 0; i < d->num_classes; i++)
                free(names[i]);
            free(names);
        }
        t.num_classes = nk;
        if (st != ENG_OK) {
            eng_dataset_cleanup(&t);
            goto out;
        }
    }
    *out = t;
out:
    free(newlab);
    free(list);
    free(keep);
    free(idx);
    return st;
}

eng_status eng_dataset_split(const eng_dataset *d, double val_fraction, uint64_t seed, int32_t **train,
                             int64_t *n_train, int32_t **val, int64_t *n_val)
{
    *train = *val = NULL;
    *n_train = *n_val = 0;
    if (!d || d->n < 1 || !d->labels)
        return eng_fail(ENG_ERR_ARG, "split: empty dataset");
    if (!(val_fraction >= 0.0 && val_fraction <= 1.0))
        return eng_fail(ENG_ERR_ARG, "split: validation fraction %g outside [0, 1]", val_fraction);
    int32_t *list = malloc((size_t)d->n * sizeof(int32_t));
    uint8_t *is_val = calloc((size_t)d->n, 1);
    int32_t *tr = NULL, *va = NULL;
    eng_status s = ENG_OK;
    if (!list || !is_val) {
        s = eng_fail(ENG_ERR_NOMEM, "split: out of memory");
        goto out;
    }
    int64_t nv = 0;
    for (int32_t c = 0; c < d->num_classes; c++) {
        int64_t m = class_members(d, c, list);
        int64_t take = (int64_t)floor(val_fraction * (double)m + 0.5);
        if (take > m)
            take = m;
        choose(list, m, take, seed, CHOOSE_SPLIT, c);
        for (int64_t k = 0; k < take; k++)
            is_val[list[k]] = 1;
        nv += take;
    }
    const int64_t nt = d->n - nv;
    tr = malloc((size_t)(nt ? nt : 1) * sizeof(int32_t));
    va = malloc((size_t)(nv ? nv : 1) * sizeof(int32_t));
    if (!tr || !va) {
        s = eng_fail(ENG_ERR_NOMEM, "split: out of memory");
        goto out;
    }
    int64_t a = 0, b = 0;
    for (int64_t i = 0; i < d->n; i++) {
        if (is_val[i])
            va[b++] = (int32_t)i;
        else
            tr[a++] = (int32_t)i;
    }
    *train = tr;
    *val = va;
    *n_train = nt;
    *n_val = nv;
    tr = va = NULL;
out:
    free(list);
    free(is_val);
    free(tr);
    free(va);
    return s;
}

/* ---- batches ---- */

eng_status eng_dataset_batch(const eng_dataset *d, const int32_t *idx, int n, eng_tensor *x, int32_t *labels)
{
    return eng_dataset_batch_ex(d, idx, n, NULL, x, labels);
}

eng_status eng_dataset_batch_ex(const eng_dataset *d, const int32_t *idx, int n, const eng_batch_opts *opts,
                                eng_tensor *x, int32_t *labels)
{
    const eng_batch_opts o = opts ? *opts : (eng_batch_opts){0};
    if (!d || d->n < 1 || (d->type == ENG_PIX_F32 ? !d->fpixels : !d->pixels))
        return eng_fail(ENG_ERR_ARG, "batch: empty dataset");
    if (n < 0 || (n > 0 && !idx))
        return eng_fail(ENG_ERR_ARG, "batch: %d examples", n);
    const int C = o.c ? o.c : d->c, H = o.h ? o.h : d->h, W = o.w ? o.w : d->w;
    if ((C != 1 && C != 3) || H < 1 || W < 1 || H > ENG_DATA_MAX_SIDE || W > ENG_DATA_MAX_SIDE || o.crop_pad < 0 ||
        o.crop_pad > ENG_DATA_MAX_SIDE)
        return eng_fail(ENG_ERR_ARG, "batch: output %d x %d x %d with crop padding %d is not possible", C, H, W,
                        o.crop_pad);
    if (!x || x->ndim != 4 || x->dim[0] != n || x->dim[1] != C || x->dim[2] != H || x->dim[3] != W ||
        x->layout != ENG_LAYOUT_NCHW || x->dev != ENG_DEV_CPU || !x->data)
        return eng_fail(ENG_ERR_SHAPE, "batch: x must be a host [%d, %d, %d, %d] NCHW tensor", n, C, H, W);
    for (int k = 0; k < n; k++)
        if (idx[k] < 0 || idx[k] >= d->n)
            return eng_fail(ENG_ERR_ARG, "batch: index %d outside [0, %lld)", idx[k], (long long)d->n);

    const int c = d->c, h = d->h, w = d->w, pad = o.crop_pad;
    const int64_t plane = (int64_t)h * w, oplane = (int64_t)H * W;
    const int resize = H != h || W != w;
    eng_data_lerp *th = NULL, *tw = NULL;
    if (resize) {
        if (!(th = malloc((size_t)(H + W) * sizeof *th)))
            return eng_fail(ENG_ERR_NOMEM, "batch: out of memory");
        tw = th + H;
        eng_data_lerp_table(th, H, h);
        eng_data_lerp_table(tw, W, w);
    }
    int failed = 0;
#pragma omp parallel if ((int64_t)n * C * oplane > (1 << 16))
    {
        /* Per thread: the cropped source, then the resized planes before channel conversion. */
        float *a = malloc((size_t)(c * plane) * sizeof(float));
        float *b = malloc((size_t)(c * oplane) * sizeof(float));
        if (!a || !b) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int k = 0; k < n; k++) {
            if (!a || !b)
                continue;
            const int64_t e = idx[k];
            const uint64_t r = (uint64_t)e * 4;
            int top = pad, left = pad, flip = 0;
            if (pad > 0) {
                top = (int)(eng_uniform(o.seed, r) * (float)(2 * pad + 1));
                left = (int)(eng_uniform(o.seed, r + 1) * (float)(2 * pad + 1));
                top = top > 2 * pad ? 2 * pad : top;
                left = left > 2 * pad ? 2 * pad : left;
            }
            if (o.flip)
                flip = eng_uniform(o.seed, r + 2) < 0.5f;
            /* Crop from the zero-padded image and flip: a(y, x) = src(y + top - pad, x' + left - pad)
             * with x' = w - 1 - x when flipped. */
            for (int ch = 0; ch < c; ch++) {
                const int64_t base = (e * c + ch) * plane;
                for (int y = 0; y < h; y++) {
                    const int sy = y + top - pad;
                    float *row = a + ch * plane + (int64_t)y * w;
                    for (int xx = 0; xx < w; xx++) {
                        const int sx = (flip ? w - 1 - xx : xx) + left - pad;
                        float v = 0.0f;
                        if (sy >= 0 && sy < h && sx >= 0 && sx < w) {
                            const int64_t at = base + (int64_t)sy * w + sx;
                            v = d->type == ENG_PIX_F32 ? d->fpixels[at] : (float)d->pixels[at] * (1.0f / 255.0f);
                        }
                        row[xx] = v;
                    }
                }
            }
            float *res = a;
            if (resize) {
                for (int ch = 0; ch < c; ch++)
                    eng_data_resize_plane(b + ch * oplane, H, W, a + ch * plane, w, th, tw);
                res = b;
            }
            float *out = x->data + (int64_t)k * C * oplane;
            if (C == c) {
                memcpy(out, res, (size_t)(C * oplane) * sizeof(float));
            } else if (C == 3) {
                for (int ch = 0; ch < 3; ch++)
                    memcpy(out + ch * oplane, res, (size_t)oplane * sizeof(float));
            } else {
                for (int64_t i = 0; i < oplane; i++)
                    out[i] = 0.299f * res[i] + 0.587f * res[oplane + i] + 0.114f * res[2 * oplane + i];
            }
            if (labels)
                labels[k] = d->labels[e];
        }
        free(a);
        free(b);
    }
    free(th);
    if (failed)
        return eng_fail(ENG_ERR_NOMEM, "batch: out of memory for the scratch images");
    return ENG_OK;
}
