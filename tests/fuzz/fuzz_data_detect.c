/* libFuzzer target for upload format detection (magic bytes, a peek inside gzip, tar checksums,
 * CIFAR label patterns): any head and name must give a format without reading out of bounds.
 * Input: one byte choosing the file name, then the head. Seeds: tests/unit/test_data.c. */
#include <stdint.h>
#include <stdlib.h>

#include "data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *names[8] = {NULL, "x.bin", "x.bin.gz", "cifar100.bin", "x.tar", "x.tar.gz", "x.npz", "x.tgz"};
    if (size < 1)
        return 0;
    eng_data_format f = eng_dataset_detect(data + 1, size - 1, names[data[0] & 7]);
    if (f < ENG_FMT_UNKNOWN || f > ENG_FMT_ZIP || !eng_data_format_name(f))
        abort();
    return 0;
}
