/* Input-gradient maps and their PNG layouts (the paper's Figure 5), feature distances and
 * histograms (appendix B). Image work is on host arrays; only the model calls touch the context. */
#include "gradmap.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- gradients and features ---- */

eng_status eng_input_gradient(eng_model *m, const eng_tensor *x, const int32_t *labels, eng_tensor *grad)
{
    if (!m)
        return eng_fail(ENG_ERR_ARG, "input_gradient: m is NULL");
    if (!x || !x->data)
        return eng_fail(ENG_ERR_ARG, "input_gradient: x is NULL or empty");
    if (!labels)
        return eng_fail(ENG_ERR_ARG, "input_gradient: labels is NULL");
    if (!grad || !grad->data)
        return eng_fail(ENG_ERR_ARG, "input_gradient: grad is NULL or empty");
    eng_ctx *ctx = eng_model_ctx(m);
    if (grad->layout != ENG_LAYOUT_NCHW || grad->dev != eng_ctx_device(ctx))
        return eng_fail(ENG_ERR_ARG, "input_gradient: grad must be NCHW in the context's memory");
    if (!eng_tensor_same_shape(grad, x)) {
        char a[64], b[64];
        return eng_fail(ENG_ERR_SHAPE, "input_gradient: grad %s must have x's shape %s",
                        eng_tensor_shape_str(grad, a, sizeof a), eng_tensor_shape_str(x, b, sizeof b));
    }
    /* The model's input layer stays a view of x until the next forward; the gradient must not
     * change what it points at. */
    if (grad->data == x->data)
        return eng_fail(ENG_ERR_ARG, "input_gradient: grad must not alias x");

    const eng_tensor *logits = NULL, *dx = NULL;
    eng_tensor dl = ENG_TENSOR_INIT;
    eng_forward_opts o = {.mode = ENG_MODE_EVAL, .grads = ENG_GRAD_INPUT};
    eng_status s = eng_model_forward(m, x, &o, &logits);
    if (s != ENG_OK)
        return s;
    if ((s = eng_ctx_tensor_alloc(ctx, &dl, 2, logits->dim, ENG_LAYOUT_NCHW)) != ENG_OK)
        return s;
    /* 1/N: the gradient of the mean loss, as training and the paper's figure use it. */
    if ((s = eng_xent(ctx, logits, labels, NULL, NULL, &dl, 1.0f / (float)logits->dim[0])) != ENG_OK)
        goto out;
    if ((s = eng_model_backward(m, &dl, NULL, &dx)) != ENG_OK)
        goto out;
    s = eng_copy(ctx, grad, dx);
out:
    eng_ctx_tensor_free(ctx, &dl);
    return s;
}

/* Runs x through the model and copies its penultimate features to a new host tensor *f
 * (NCHW), since the model's own is overwritten by the next forward. */
static eng_status features_of(eng_model *m, const eng_tensor *x, eng_tensor *f)
{
    eng_forward_opts o = {.mode = ENG_MODE_EVAL, .grads = ENG_GRAD_NONE};
    eng_status s = eng_model_forward(m, x, &o, NULL);
    if (s != ENG_OK)
        return s;
    const eng_tensor *z = eng_model_features(m);
    if (!z || z->dim[0] != x->dim[0])
        return eng_fail(ENG_ERR_BACKEND, "feature_distance: the model gave no features for the batch");
    if ((s = eng_tensor_alloc_host(f, z->ndim, z->dim, ENG_LAYOUT_NCHW)) != ENG_OK)
        return s;
    return eng_ctx_download(eng_model_ctx(m), f, z);
}

eng_status eng_feature_distance(eng_model *m, const eng_tensor *x1, const eng_tensor *x2, float *dist)
{
    if (!m)
        return eng_fail(ENG_ERR_ARG, "feature_distance: m is NULL");
    if (!x1 || !x1->data)
        return eng_fail(ENG_ERR_ARG, "feature_distance: x1 is NULL or empty");
    if (!x2 || !x2->data)
        return eng_fail(ENG_ERR_ARG, "feature_distance: x2 is NULL or empty");
    if (!dist)
        return eng_fail(ENG_ERR_ARG, "feature_distance: dist is NULL");
    if (!eng_tensor_same_shape(x1, x2)) {
        char a[64], b[64];
        return eng_fail(ENG_ERR_SHAPE, "feature_distance: x1 %s and x2 %s differ in shape",
                        eng_tensor_shape_str(x1, a, sizeof a), eng_tensor_shape_str(x2, b, sizeof b));
    }
    eng_tensor f1 = ENG_TENSOR_INIT, f2 = ENG_TENSOR_INIT;
    eng_status s;
    if ((s = features_of(m, x1, &f1)) != ENG_OK || (s = features_of(m, x2, &f2)) != ENG_OK)
        goto out;
    const int64_t N = f1.dim[0], per = eng_tensor_numel(&f1) / N;
    for (int64_t i = 0; i < N; i++) {
        const float *a = f1.data + i * per, *b = f2.data + i * per;
        double sum = 0; /* double: thousands of squared terms lose digits in float */
        for (int64_t j = 0; j < per; j++) {
            double d = (double)a[j] - (double)b[j];
            sum += d * d;
        }
        dist[i] = (float)sqrt(sum);
    }
out:
    eng_tensor_cleanup(&f1);
    eng_tensor_cleanup(&f2);
    return s;
}

eng_status eng_histogram(const float *v, int n, int bins, float lo, float hi, int64_t *counts)
{
    if (!v)
        return eng_fail(ENG_ERR_ARG, "histogram: v is NULL");
    if (!counts)
        return eng_fail(ENG_ERR_ARG, "histogram: counts is NULL");
    if (n <= 0)
        return eng_fail(ENG_ERR_ARG, "histogram: n must be at least 1, got %d", n);
    if (bins <= 0)
        return eng_fail(ENG_ERR_ARG, "histogram: bins must be at least 1, got %d", bins);
    if (!isfinite(lo) || !isfinite(hi) || !(lo < hi))
        return eng_fail(ENG_ERR_ARG, "histogram: range [lo, hi) = [%g, %g) must be finite with lo < hi", (double)lo,
                        (double)hi);
    memset(counts, 0, (size_t)bins * sizeof *counts);
    /* In double, so that hi - lo cannot overflow for a range like [-3e38, 3e38). */
    const double dlo = lo, width = (double)hi - dlo;
    for (int i = 0; i < n; i++) {
        double x = v[i];
        if (isnan(x))
            continue;
        double t = (x - dlo) / width * bins;
        int b = t < 0 ? 0 : t >= bins ? bins - 1 : (int)t;
        counts[b]++;
    }
    return ENG_OK;
}

/* ---- images ---- */

static eng_status check_image(const char *fn, int c, int h, int w, int max_c)
{
    if (c < 1 || c > max_c)
        return eng_fail(ENG_ERR_ARG, "%s: c must be in 1..%d, got %d", fn, max_c, c);
    if (h < 1 || w < 1)
        return eng_fail(ENG_ERR_ARG, "%s: h and w must be at least 1, got %dx%d", fn, h, w);
    if ((int64_t)c * h * w > ENG_PNG_MAX_PIXELS)
        return eng_fail(ENG_ERR_LIMIT, "%s: %dx%dx%d is over the limit of %lld values", fn, c, h, w,
                        (long long)ENG_PNG_MAX_PIXELS);
    return ENG_OK;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* The q-th percentile (percent) of sorted s[m], interpolating between neighbours as numpy's
 * default does, so that results match a reference computed there. */
static double percentile(const float *s, int64_t m, double q)
{
    double pos = q / 100.0 * (double)(m - 1);
    int64_t i = (int64_t)pos;
    if (i >= m - 1)
        return s[m - 1];
    double f = pos - (double)i;
    return (double)s[i] + f * ((double)s[i + 1] - (double)s[i]);
}

/* eng_gradmap_image with its checks done and a scratch of c * h * w floats supplied, so that
 * a grid sorts every example in the same buffer. */
static void gradmap_into(const float *g, int c, int h, int w, double lo_pct, double hi_pct, uint8_t *out,
                         float *scratch)
{
    const int64_t plane = (int64_t)h * w, n = plane * c;
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(g[i]))
            scratch[m++] = g[i];
    double p_lo = 0, p_hi = 0;
    if (m > 0) {
        qsort(scratch, (size_t)m, sizeof *scratch, cmp_float);
        p_lo = percentile(scratch, m, lo_pct);
        p_hi = percentile(scratch, m, hi_pct);
    }
    /* Double throughout: v - p_lo can overflow float for extreme gradients. */
    const double range = p_hi - p_lo;
    for (int ch = 0; ch < c; ch++)
        for (int64_t i = 0; i < plane; i++) {
            double v = g[ch * plane + i];
            uint8_t px;
            if (isnan(v))
                px = 128;
            else if (!(range > 0)) /* every value at one level: no scale to divide by */
                px = v < p_lo ? 0 : v > p_hi ? 255 : 128;
            else {
                double t = (v - p_lo) / range * 255.0;
                px = t <= 0 ? 0 : t >= 255 ? 255 : (uint8_t)(t + 0.5);
            }
            out[i * c + ch] = px;
        }
}

static eng_status check_pct(const char *fn, float lo_pct, float hi_pct)
{
    if (!(lo_pct >= 0) || !(hi_pct <= 100) || !(lo_pct < hi_pct))
        return eng_fail(ENG_ERR_ARG, "%s: percentiles must satisfy 0 <= lo_pct < hi_pct <= 100, got %g and %g", fn,
                        (double)lo_pct, (double)hi_pct);
    return ENG_OK;
}

eng_status eng_gradmap_image(const float *grad, int c, int h, int w, float lo_pct, float hi_pct, uint8_t *out)
{
    eng_status s;
    if (!grad)
        return eng_fail(ENG_ERR_ARG, "gradmap_image: grad is NULL");
    if (!out)
        return eng_fail(ENG_ERR_ARG, "gradmap_image: out is NULL");
    if ((s = check_image("gradmap_image", c, h, w, ENG_MAX_CHANNELS)) != ENG_OK ||
        (s = check_pct("gradmap_image", lo_pct, hi_pct)) != ENG_OK)
        return s;
    float *scratch = malloc((size_t)c * (size_t)h * (size_t)w * sizeof *scratch);
    if (!scratch)
        return eng_fail(ENG_ERR_NOMEM, "gradmap_image: out of memory for %dx%dx%d values", c, h, w);
    gradmap_into(grad, c, h, w, lo_pct, hi_pct, out, scratch);
    free(scratch);
    return ENG_OK;
}

static void pixels_into(const float *x, int c, int h, int w, uint8_t *out)
{
    const int64_t plane = (int64_t)h * w;
    for (int ch = 0; ch < c; ch++)
        for (int64_t i = 0; i < plane; i++) {
            float v = x[ch * plane + i];
            /* !(v > 0) also catches NaN, which has no pixel value: black. */
            out[i * c + ch] = !(v > 0) ? 0 : v >= 1 ? 255 : (uint8_t)(v * 255.0f + 0.5f);
        }
}

eng_status eng_pixels_image(const float *x, int c, int h, int w, uint8_t *out)
{
    eng_status s;
    if (!x)
        return eng_fail(ENG_ERR_ARG, "pixels_image: x is NULL");
    if (!out)
        return eng_fail(ENG_ERR_ARG, "pixels_image: out is NULL");
    if ((s = check_image("pixels_image", c, h, w, ENG_MAX_CHANNELS)) != ENG_OK)
        return s;
    pixels_into(x, c, h, w, out);
    return ENG_OK;
}

/* ---- PNG layouts ---- */

/* An 8-bit image being composed, cc bytes per pixel. */
typedef struct canvas {
    uint8_t *p;
    int64_t w, h;
    int cc;
} canvas;

/* Copies img (h x w, c interleaved bytes) to (x0, y0), each pixel as a scale x scale block;
 * a gray image on an RGB canvas is replicated into the three channels, so that panels of
 * either kind can share one canvas. */
static void blit(canvas *cv, int64_t x0, int64_t y0, const uint8_t *img, int c, int h, int w, int scale)
{
    for (int64_t y = 0; y < (int64_t)h * scale; y++) {
        const uint8_t *src = img + (y / scale) * (int64_t)w * c;
        uint8_t *dst = cv->p + ((y0 + y) * cv->w + x0) * cv->cc;
        for (int64_t x = 0; x < (int64_t)w * scale; x++, dst += cv->cc) {
            const uint8_t *px = src + (x / scale) * c;
            for (int k = 0; k < cv->cc; k++)
                dst[k] = px[c == cv->cc ? k : 0];
        }
    }
}

/* Input | gradient | adversarial grid of n examples; the triplet is the grid of one. */
static eng_status layout_png(const char *fn, const float *xs, const float *grads, const float *advs, int n, int c,
                             int h, int w, int cols, int scale, uint8_t **png, size_t *len)
{
    if (png)
        *png = NULL;
    if (len)
        *len = 0;
    if (!png || !len)
        return eng_fail(ENG_ERR_ARG, "%s: png and len must not be NULL", fn);
    if (!xs)
        return eng_fail(ENG_ERR_ARG, "%s: the inputs are NULL", fn);
    if (!grads)
        return eng_fail(ENG_ERR_ARG, "%s: the gradients are NULL", fn);
    if (n < 1)
        return eng_fail(ENG_ERR_ARG, "%s: n must be at least 1, got %d", fn, n);
    if (cols < 1)
        return eng_fail(ENG_ERR_ARG, "%s: cols must be at least 1, got %d", fn, cols);
    if (scale < 1 || scale > ENG_GRADMAP_MAX_SCALE)
        return eng_fail(ENG_ERR_ARG, "%s: scale must be in 1..%d, got %d", fn, ENG_GRADMAP_MAX_SCALE, scale);
    if (c != 1 && c != 3)
        return eng_fail(ENG_ERR_ARG, "%s: c must be 1 (gray) or 3 (RGB) for a PNG, got %d", fn, c);
    eng_status s = check_image(fn, c, h, w, 3);
    if (s != ENG_OK)
        return s;

    /* Sizes in int64: each panel side is below 2^28 * 16 after check_image, so none of these
     * products can overflow before the pixel limit refuses them. */
    const int k = advs ? 3 : 2;
    const int64_t cell_w = (int64_t)k * w * scale + (int64_t)(k - 1) * ENG_GRADMAP_GAP;
    const int64_t cell_h = (int64_t)h * scale;
    const int64_t ncols = cols < n ? cols : n, nrows = (n + ncols - 1) / ncols;
    const int64_t W = ncols * cell_w + (ncols - 1) * ENG_GRADMAP_CELL_GAP;
    const int64_t H = nrows * cell_h + (nrows - 1) * ENG_GRADMAP_CELL_GAP;
    if (W > ENG_PNG_MAX_PIXELS || H > ENG_PNG_MAX_PIXELS || W * H > ENG_PNG_MAX_PIXELS)
        return eng_fail(ENG_ERR_LIMIT, "%s: a %lldx%lld image is over the limit of %lld pixels", fn, (long long)W,
                        (long long)H, (long long)ENG_PNG_MAX_PIXELS);

    const size_t per = (size_t)c * (size_t)h * (size_t)w;
    canvas cv = {.w = W, .h = H, .cc = c};
    uint8_t *img = malloc(per);
    float *scratch = malloc(per * sizeof *scratch);
    cv.p = malloc((size_t)(W * H) * (size_t)c);
    if (!img || !scratch || !cv.p) {
        s = eng_fail(ENG_ERR_NOMEM, "%s: out of memory for a %lldx%lld image", fn, (long long)W, (long long)H);
        goto out;
    }
    memset(cv.p, 255, (size_t)(W * H) * (size_t)c); /* white gaps and empty cells */
    for (int i = 0; i < n; i++) {
        const int64_t x0 = (i % ncols) * (cell_w + ENG_GRADMAP_CELL_GAP);
        const int64_t y0 = (i / ncols) * (cell_h + ENG_GRADMAP_CELL_GAP);
        const int64_t step = (int64_t)w * scale + ENG_GRADMAP_GAP;
        pixels_into(xs + i * per, c, h, w, img);
        blit(&cv, x0, y0, img, c, h, w, scale);
        gradmap_into(grads + i * per, c, h, w, ENG_GRADMAP_LO_PCT, ENG_GRADMAP_HI_PCT, img, scratch);
        blit(&cv, x0 + step, y0, img, c, h, w, scale);
        if (advs) {
            pixels_into(advs + i * per, c, h, w, img);
            blit(&cv, x0 + 2 * step, y0, img, c, h, w, scale);
        }
    }
    s = eng_png_encode(cv.p, (int)W, (int)H, cv.cc, png, len);
out:
    free(img);
    free(scratch);
    free(cv.p);
    return s;
}

eng_status eng_gradmap_triplet_png(const float *x, const float *grad, const float *x_adv, int c, int h, int w,
                                   int scale, uint8_t **png, size_t *len)
{
    return layout_png("gradmap_triplet_png", x, grad, x_adv, 1, c, h, w, 1, scale, png, len);
}

eng_status eng_gradmap_grid_png(const float *xs, const float *grads, const float *advs, int n, int c, int h, int w,
                                int cols, int scale, uint8_t **png, size_t *len)
{
    return layout_png("gradmap_grid_png", xs, grads, advs, n, c, h, w, cols, scale, png, len);
}
