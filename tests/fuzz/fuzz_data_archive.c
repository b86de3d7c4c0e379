/* libFuzzer target for the ImageFolder reader (tar, tar.gz, zip of PNG and JPEG class folders):
 * any input must be refused with nothing left behind or read within its bounds.
 * Input: one options byte (bits 0-1: channels 0, 1, 3, 0; bit 4: resize to 9x7), then the archive.
 * Seeds: tests/unit/test_data.c with RTAAS_DATA_SEED_DIR=tests/fuzz/seeds. */
#include "fuzz_data_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    static const int channels[4] = {0, 1, 3, 0};
    eng_data_opts o = {.max_pixels = FUZZ_MAX_PIXELS, .channels = channels[data[0] & 3]};
    if (data[0] & 0x10) {
        o.resize_h = 7;
        o.resize_w = 9;
    }
    eng_dataset d;
    fuzz_check_dataset(&d, eng_dataset_read_archive_mem(&d, data + 1, size - 1, &o));
    return 0;
}
