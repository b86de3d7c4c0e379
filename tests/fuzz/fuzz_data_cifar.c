/* libFuzzer target for the CIFAR-10/100 binary reader (gzip or plain): any input must be refused
 * with nothing left behind or read within its bounds. Each input is read with the kind taken
 * from its size and once more as the kind its length picks. Seeds: tests/unit/test_data.c. */
#include "fuzz_data_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    eng_data_opts o = {.max_pixels = FUZZ_MAX_PIXELS};
    eng_dataset d;
    fuzz_check_dataset(&d, eng_dataset_read_cifar_mem(&d, data, size, &o));
    o.cifar = (eng_cifar_kind)(ENG_CIFAR_10 + size % 3);
    fuzz_check_dataset(&d, eng_dataset_read_cifar_mem(&d, data, size, &o));
    return 0;
}
