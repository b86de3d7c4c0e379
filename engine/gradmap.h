/* What a model looks at: input gradients of the loss rendered as images (the paper's Figure 5:
 * robust feature extractors give gradients that look like objects), and distances between
 * penultimate features with a histogram of them (its appendix B). */
#ifndef ENG_GRADMAP_H
#define ENG_GRADMAP_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "png.h"

/* Default clipping percentiles of a gradient map, in percent. */
#define ENG_GRADMAP_LO_PCT 1.0f
#define ENG_GRADMAP_HI_PCT 99.0f

/* Layout of the PNGs, in output pixels: panels of one triplet are ENG_GRADMAP_GAP apart,
 * triplets of a grid ENG_GRADMAP_CELL_GAP apart (wider, so that triplets read as units);
 * gaps and empty cells are white. */
#define ENG_GRADMAP_GAP 2
#define ENG_GRADMAP_CELL_GAP 8
#define ENG_GRADMAP_MAX_SCALE 16

/* d(mean cross-entropy over the batch)/dx for x [N, C, H, W] (context memory, NCHW, pixels in
 * [0,1]) and labels (host array of N class ids), in eval mode, through the model's own
 * normalisation: a gradient in pixel space, per pixel unit. grad: a caller tensor of x's shape
 * in the context's memory, NCHW, not aliasing x. The model's last forward is overwritten. */
eng_status eng_input_gradient(eng_model *m, const eng_tensor *x, const int32_t *labels, eng_tensor *grad);

/* One example's gradient (host, NCHW: c planes of h * w floats) as 8-bit pixels out[h * w * c]
 * (interleaved, row-major). Values are clipped at the lo_pct and hi_pct percentiles (percent,
 * 0 <= lo_pct < hi_pct <= 100; linear interpolation between order statistics) taken over
 * all values of the image, all channels together, and [p_lo, p_hi] maps linearly onto
 * [0, 255], so that a few huge values do not flatten the rest to grey. When p_lo == p_hi
 * (a constant gradient) values equal to it are 128 (mid-grey), lower 0, higher 255.
 * Non-finite values are left out of the percentiles; NaN is 128, -inf 0, +inf 255.
 * c in 1..ENG_MAX_CHANNELS; c * h * w at most ENG_PNG_MAX_PIXELS. */
eng_status eng_gradmap_image(const float *grad, int c, int h, int w, float lo_pct, float hi_pct, uint8_t *out);

/* One example's pixels (host, NCHW, [0,1]) as out[h * w * c] interleaved: round(255 x), with
 * x clamped to [0,1] first (NaN is 0). For inputs and adversarial examples. */
eng_status eng_pixels_image(const float *x, int c, int h, int w, uint8_t *out);

/* A PNG of input | gradient map | adversarial example side by side (the adversarial panel
 * left out when x_adv is NULL), each panel upscaled by `scale` (1..ENG_GRADMAP_MAX_SCALE,
 * nearest neighbour) so that 28x28 or 32x32 images are visible. x, grad, x_adv: one example
 * each, host, NCHW, c in {1, 3}; the gradient map uses the default percentiles. All panels
 * share c, so a 1-channel triplet is a gray PNG and a 3-channel one RGB (the compositor
 * would turn gray panels RGB only next to an RGB one).
 * Size: width k * w * scale + (k - 1) * ENG_GRADMAP_GAP, height h * scale, k = 2 or 3 panels.
 * On success the caller frees *png with free(); on failure *png is NULL and *len 0. */
eng_status eng_gradmap_triplet_png(const float *x, const float *grad, const float *x_adv, int c, int h, int w,
                                   int scale, uint8_t **png, size_t *len);

/* A grid of n triplets, `cols` per row (fewer when n < cols), row-major from the top left:
 * the Figure 5 view. xs, grads, advs (advs may be NULL): n examples each, host, NCHW
 * [n, c, h, w]. With cell_w, cell_h a triplet's size above and cols' = min(cols, n),
 * rows = ceil(n / cols'): width cols' * cell_w + (cols' - 1) * ENG_GRADMAP_CELL_GAP,
 * height rows * cell_h + (rows - 1) * ENG_GRADMAP_CELL_GAP. Each gradient map is scaled on
 * its own. Ownership of *png as for the triplet. */
eng_status eng_gradmap_grid_png(const float *xs, const float *grads, const float *advs, int n, int c, int h, int w,
                                int cols, int scale, uint8_t **png, size_t *len);

/* dist[i] = ||z(x1_i) - z(x2_i)||_2 over the penultimate features z (eng_model_features) in
 * eval mode. x1, x2: [N, C, H, W] of the same shape, context memory, NCHW, pixels in [0,1];
 * dist: host array of N. The model's last forward is overwritten (it ends on x2). */
eng_status eng_feature_distance(eng_model *m, const eng_tensor *x1, const eng_tensor *x2, float *dist);

/* counts[bins] = histogram of v[n] over [lo, hi) in equal bins; values below lo count in the
 * first bin, values at or above hi in the last, NaN nowhere (so the counts may sum to less
 * than n). counts is overwritten. n >= 1, bins >= 1, lo < hi, both finite. */
eng_status eng_histogram(const float *v, int n, int bins, float lo, float hi, int64_t *counts);

#endif
