/* libFuzzer target for PyTorch checkpoint files (zip and legacy): open, read every small tensor
 * of the state dict and of one wrapper level, recognise the layout and write the report; any
 * input must be refused or read within its bounds, without leaks. Run by `make fuzz` and
 * tests/suites/fuzz_smoke.sh. */
#include <stdint.h>
#include <stdlib.h>

#include "ptimport.h"
#include "ptload.h"

#define FUZZ_MAX_NUMEL ((int64_t)1 << 18) /* bigger tensors are skipped to keep inputs fast */

static void read_tensors(eng_pt_file *f, const eng_pt_value *d, int level)
{
    for (int64_t i = 0; i < eng_pt_len(d); i++) {
        const eng_pt_value *v = eng_pt_dict_val(d, i);
        eng_pt_tensor_info t;
        if (eng_pt_kind_of(v) == ENG_PT_DICT && level == 0)
            read_tensors(f, v, 1);
        if (eng_pt_tensor(v, &t) != ENG_OK || t.numel > FUZZ_MAX_NUMEL)
            continue;
        float *buf = malloc((size_t)(t.numel ? t.numel : 1) * sizeof *buf);
        if (buf)
            (void)eng_pt_read_f32(f, v, buf, t.numel);
        free(buf);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    eng_pt_file *f = NULL;
    if (eng_pt_open_mem(data, size, &f) != ENG_OK) {
        if (f)
            abort(); /* a refusal leaves nothing behind */
        return 0;
    }
    read_tensors(f, eng_pt_root(f), 0);
    eng_pt_report rep;
    eng_pt_report_init(&rep);
    (void)eng_pt_recognise(f, NULL, &rep);
    free(eng_pt_report_json(&rep));
    eng_pt_report_cleanup(&rep);
    eng_pt_close(f);
    return 0;
}
