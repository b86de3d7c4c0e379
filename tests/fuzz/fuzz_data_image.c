/* libFuzzer target for single-image decoding (PNG through engine/png.c, JPEG through
 * libjpeg-turbo with its error longjmp, warnings that mean damage, and the scan limit): any input
 * must be refused with a status or decoded within its bounds. Seeds: tests/unit/test_data.c. */
#include <stdint.h>
#include <stdlib.h>

#include "data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *pix = NULL;
    int w = 0, h = 0, c = 0;
    eng_status s = eng_image_decode(data, size, (int64_t)1 << 20, &pix, &w, &h, &c);
    if (s == ENG_OK) {
        if (!pix || w < 1 || h < 1 || (c != 1 && c != 3) || (int64_t)w * h > ((int64_t)1 << 20))
            abort();
        volatile uint8_t sum = 0;
        for (size_t i = 0; i < (size_t)w * (size_t)h * (size_t)c; i++)
            sum += pix[i];
        (void)sum;
    } else if (pix || w || h || c) {
        abort();
    }
    free(pix);
    return 0;
}
