/* libFuzzer target for the .npy reader (strict header parsing, uint8/float32 images, integer
 * labels): any input must be refused with nothing left behind or read within its bounds.
 * Input: u16 header (low 14 bits: length of the images part; top 2: the layout), the images
 * array, the labels array. Seeds: tests/unit/test_data.c with RTAAS_DATA_SEED_DIR. */
#include "fuzz_data_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *a, *b;
    size_t na, nb;
    int extra;
    if (!fuzz_split(data, size, &a, &na, &b, &nb, &extra))
        return 0;
    eng_data_opts o = {.max_pixels = FUZZ_MAX_PIXELS, .layout = (eng_npy_layout)(extra % 3)};
    eng_dataset d;
    fuzz_check_dataset(&d, eng_dataset_read_npy_mem(&d, a, na, b, nb, &o));
    return 0;
}
