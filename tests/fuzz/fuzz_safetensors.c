/* libFuzzer target for the safetensors reader: any input must be refused or read within its
 * bounds, without leaks; run by `make fuzz` and tests/suites/fuzz_smoke.sh. */
#include <stdint.h>
#include <stdlib.h>

#include "safetensors.h"

/* Reads of bigger tensors are skipped so that each input stays fast. */
#define FUZZ_MAX_NUMEL ((int64_t)1 << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    eng_st_file *f = NULL;
    if (eng_st_open_mem(data, size, &f) != ENG_OK)
        return 0;
    for (int i = 0; i < eng_st_count(f); i++) {
        const eng_st_entry *e = eng_st_get(f, i);
        if (e->numel > FUZZ_MAX_NUMEL || eng_st_find(f, e->name) == NULL)
            continue;
        float *buf = malloc((size_t)(e->numel ? e->numel : 1) * sizeof(float));
        if (buf)
            (void)eng_st_read_f32(f, e, buf, e->numel);
        free(buf);
    }
    for (int i = 0; i < eng_st_meta_count(f); i++)
        (void)eng_st_meta(f, eng_st_meta_key(f, i));
    eng_st_close(f);
    return 0;
}
