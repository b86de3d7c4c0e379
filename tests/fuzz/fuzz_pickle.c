/* libFuzzer target for the restricted unpickler: any input must be refused or give a finite
 * value tree within the limits, without leaks; persistent ids become fake storages so that the
 * tensor-rebuilding paths run. Run by `make fuzz` and tests/suites/fuzz_smoke.sh. */
#include <stdint.h>
#include <stdlib.h>

#include "pt_internal.h"

#define FUZZ_MAX_VISITS 100000 /* shared subtrees can make a tree exponentially larger than its DAG */

static eng_status fake_storage(void *user, pt_heap *h, const eng_pt_value *pid, eng_pt_value **out)
{
    (void)user;
    const eng_pt_value *type = eng_pt_item(pid, 1), *numel = eng_pt_item(pid, 4);
    eng_st_dtype dt;
    if (eng_pt_kind_of(type) != ENG_PT_GLOBAL || !pt_storage_dtype(eng_pt_str(type, NULL), &dt) ||
        eng_pt_kind_of(numel) != ENG_PT_INT || eng_pt_int(numel) < 0 || eng_pt_int(numel) > (1 << 20))
        return eng_fail(ENG_ERR_FORMAT, "fuzz: not a storage id");
    eng_pt_value *v = pt_new(h, ENG_PT_STORAGE);
    if (!v)
        return h->fail;
    v->u.st.key = "0";
    v->u.st.numel = eng_pt_int(numel);
    v->u.st.dtype = dt;
    *out = v;
    return ENG_OK;
}

/* Visits the tree depth-first; returns the visits left. Depth is bounded by ENG_PT_MAX_DEPTH. */
static long visit(const eng_pt_value *v, long budget, int depth)
{
    if (budget <= 0)
        return 0;
    if (depth > ENG_PT_MAX_DEPTH + 1)
        abort(); /* the depth limit did not hold: a cycle or a missed check */
    budget--;
    size_t len;
    volatile char sink;
    eng_pt_tensor_info t;
    switch (eng_pt_kind_of(v)) {
    case ENG_PT_STR:
    case ENG_PT_BYTES:
    case ENG_PT_GLOBAL:
    case ENG_PT_OPAQUE:
        sink = eng_pt_str(v, &len)[len]; /* the terminating NUL must be readable */
        (void)sink;
        break;
    case ENG_PT_TENSOR:
        if (eng_pt_tensor(v, &t) != ENG_OK || t.numel < 0 || t.ndim > ENG_PT_MAX_DIMS || t.offset < 0)
            abort();
        break;
    case ENG_PT_TUPLE:
    case ENG_PT_LIST:
        for (int64_t i = 0; i < eng_pt_len(v) && budget > 0; i++)
            budget = visit(eng_pt_item(v, i), budget, depth + 1);
        break;
    case ENG_PT_DICT:
        for (int64_t i = 0; i < eng_pt_len(v) && budget > 0; i++) {
            budget = visit(eng_pt_dict_key(v, i), budget, depth + 1);
            budget = visit(eng_pt_dict_val(v, i), budget, depth + 1);
        }
        break;
    default:
        break;
    }
    return budget;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pt_heap h = {0};
    eng_pt_value *v = NULL;
    size_t used = 0;
    if (pt_unpickle(&h, data, size, fake_storage, NULL, &v, &used) == ENG_OK) {
        if (!v || used == 0 || used > size)
            abort();
        visit(v, FUZZ_MAX_VISITS, 0);
    } else if (v) {
        abort(); /* a refusal leaves no value */
    }
    pt_heap_cleanup(&h);
    return 0;
}
