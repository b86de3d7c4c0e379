/* libFuzzer target for the IDX reader (images and labels, each gzip or plain): any input must be
 * refused with nothing left behind or read within its bounds; run by `make fuzz`.
 * Input: u16 length of the images part, the images, the labels (see fuzz_split). Seeds: written
 * by tests/unit/test_data.c with RTAAS_DATA_SEED_DIR=tests/fuzz/seeds. */
#include "fuzz_data_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *a, *b;
    size_t na, nb;
    int extra;
    if (!fuzz_split(data, size, &a, &na, &b, &nb, &extra))
        return 0;
    eng_data_opts o = {.max_pixels = FUZZ_MAX_PIXELS};
    eng_dataset d;
    fuzz_check_dataset(&d, eng_dataset_read_idx_mem(&d, a, na, b, nb, &o));
    return 0;
}
