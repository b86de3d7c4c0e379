/* libFuzzer target for the .npz reader (a zip through libarchive, then two .npy members): any
 * input must be refused with nothing left behind or read within its bounds.
 * Seeds: tests/unit/test_data.c with RTAAS_DATA_SEED_DIR=tests/fuzz/seeds. */
#include "fuzz_data_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    eng_data_opts o = {.max_pixels = FUZZ_MAX_PIXELS};
    eng_dataset d;
    fuzz_check_dataset(&d, eng_dataset_read_npz_mem(&d, data, size, &o));
    return 0;
}
