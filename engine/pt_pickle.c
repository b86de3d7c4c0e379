/* A restricted unpickler for PyTorch checkpoints: it runs the data opcodes of pickle protocols
 * 0-5 and never imports or calls anything; the few globals a state dict needs are interpreted. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pt_internal.h"

#define PT_CHUNK ((size_t)64 << 10)
#define PT_MAX_LINE 1024  /* text opcodes (GLOBAL, INT, PUT, ...) */
#define PT_MAX_LONG 1024  /* bytes of a LONG4 integer */
#define PT_MAX_NAME 256   /* bytes of a GLOBAL's module or name */

struct pt_chunk {
    struct pt_chunk *next;
    size_t cap;
    _Alignas(16) unsigned char data[];
};

/* ---- heap ---- */

void pt_heap_cleanup(pt_heap *h)
{
    if (!h)
        return;
    for (size_t i = 0; i < h->n_growable; i++)
        free(h->growable[i]->u.a.v);
    free(h->growable);
    for (struct pt_chunk *c = h->chunks, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    for (int i = 0; i < h->n_opaque; i++)
        free(h->opaque[i]);
    memset(h, 0, sizeof *h);
}

static eng_status heap_charge(pt_heap *h, size_t n)
{
    if (n > ENG_PT_MAX_HEAP - h->bytes)
        return h->fail = eng_fail(ENG_ERR_LIMIT, "pickle: decoded values need more than %zu MB", ENG_PT_MAX_HEAP >> 20);
    h->bytes += n;
    return ENG_OK;
}

/* Zeroed, 16-byte aligned memory that lives as long as the heap; NULL after recording a failure. */
static void *heap_alloc(pt_heap *h, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (heap_charge(h, n) != ENG_OK)
        return NULL;
    if (!h->chunks || h->chunks->cap - h->used_in_chunk < n) {
        size_t cap = n > PT_CHUNK ? n : PT_CHUNK;
        struct pt_chunk *c = malloc(sizeof *c + cap);
        if (!c) {
            h->fail = eng_fail(ENG_ERR_NOMEM, "pickle: out of memory");
            return NULL;
        }
        c->cap = cap;
        c->next = h->chunks;
        h->chunks = c;
        h->used_in_chunk = 0;
    }
    void *p = h->chunks->data + h->used_in_chunk;
    h->used_in_chunk += n;
    memset(p, 0, n);
    return p;
}

eng_pt_value *pt_new(pt_heap *h, eng_pt_kind k)
{
    eng_pt_value *v = heap_alloc(h, sizeof *v);
    if (!v)
        return NULL;
    v->kind = k;
    v->depth = 1;
    if (k == ENG_PT_LIST || k == ENG_PT_DICT) {
        if (h->n_growable == h->cap_growable) {
            size_t cap = h->cap_growable ? 2 * h->cap_growable : 64;
            eng_pt_value **g = realloc(h->growable, cap * sizeof *g);
            if (!g || heap_charge(h, (cap - h->cap_growable) * sizeof *g) != ENG_OK) {
                if (g)
                    h->growable = g;
                else
                    h->fail = eng_fail(ENG_ERR_NOMEM, "pickle: out of memory");
                return NULL;
            }
            h->growable = g;
            h->cap_growable = cap;
        }
        h->growable[h->n_growable++] = v;
    }
    return v;
}

eng_pt_value *pt_new_str(pt_heap *h, eng_pt_kind k, const void *p, size_t n)
{
    eng_pt_value *v = pt_new(h, k);
    if (!v || !(v->u.s.p = heap_alloc(h, n + 1)))
        return NULL;
    memcpy(v->u.s.p, p, n);
    v->u.s.len = n;
    return v;
}

/* Makes room for `more` pointers in a list's or dict's array. */
static eng_status grow(pt_heap *h, eng_pt_value *c, size_t more)
{
    size_t need = c->u.a.n * (c->kind == ENG_PT_DICT ? 2 : 1) + more;
    if (need <= c->u.a.cap)
        return ENG_OK;
    size_t cap = c->u.a.cap ? c->u.a.cap : 8;
    while (cap < need)
        cap *= 2;
    eng_status s = heap_charge(h, (cap - c->u.a.cap) * sizeof(eng_pt_value *));
    if (s != ENG_OK)
        return s;
    eng_pt_value **a = realloc(c->u.a.v, cap * sizeof *a);
    if (!a)
        return h->fail = eng_fail(ENG_ERR_NOMEM, "pickle: out of memory");
    c->u.a.v = a;
    c->u.a.cap = cap;
    return ENG_OK;
}

/* Records child as placed inside parent: the child is sealed (never mutated again) and the
 * parent's depth grows. Mutating a sealed list or dict is what a cycle needs, so refusing it
 * makes every value a finite tree (possibly with shared subtrees). */
static eng_status place(eng_pt_value *parent, eng_pt_value *child)
{
    child->sealed = true;
    if (parent->sealed && (parent->kind == ENG_PT_LIST || parent->kind == ENG_PT_DICT))
        return eng_fail(ENG_ERR_FORMAT, "pickle: a %s is modified after being placed in another value "
                                        "(recursive or self-referencing structure)",
                        parent->kind == ENG_PT_LIST ? "list" : "dict");
    if (child->depth + 1 > parent->depth) {
        if (child->depth + 1 > ENG_PT_MAX_DEPTH)
            return eng_fail(ENG_ERR_LIMIT, "pickle: values nested more than %d deep", ENG_PT_MAX_DEPTH);
        parent->depth = (uint16_t)(child->depth + 1);
    }
    return ENG_OK;
}

static void note_opaque(pt_heap *h, const char *name)
{
    for (int i = 0; i < h->n_opaque; i++)
        if (strcmp(h->opaque[i], name) == 0)
            return;
    if (h->n_opaque < (int)(sizeof h->opaque / sizeof *h->opaque))
        h->opaque[h->n_opaque] = strdup(name), h->n_opaque += h->opaque[h->n_opaque] != NULL;
}

/* ---- dtypes ---- */

unsigned pt_dtype_size(eng_st_dtype d)
{
    switch (d) {
    case ENG_ST_F64:
    case ENG_ST_I64:
        return 8;
    case ENG_ST_F32:
    case ENG_ST_I32:
        return 4;
    case ENG_ST_F16:
    case ENG_ST_BF16:
    case ENG_ST_I16:
        return 2;
    case ENG_ST_I8:
    case ENG_ST_U8:
    case ENG_ST_BOOL:
        return 1;
    }
    return 0;
}

bool pt_storage_dtype(const char *global, eng_st_dtype *d)
{
    static const struct {
        const char *name;
        eng_st_dtype dtype;
    } map[] = {
        {"torch.FloatStorage", ENG_ST_F32}, {"torch.DoubleStorage", ENG_ST_F64}, {"torch.HalfStorage", ENG_ST_F16},
        {"torch.BFloat16Storage", ENG_ST_BF16}, {"torch.LongStorage", ENG_ST_I64}, {"torch.IntStorage", ENG_ST_I32},
        {"torch.ShortStorage", ENG_ST_I16}, {"torch.CharStorage", ENG_ST_I8}, {"torch.ByteStorage", ENG_ST_U8},
        {"torch.BoolStorage", ENG_ST_BOOL},
    };
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
        if (strcmp(global, map[i].name) == 0) {
            *d = map[i].dtype;
            return true;
        }
    return false;
}

/* ---- public accessors ---- */

const char *eng_pt_kind_name(eng_pt_kind k)
{
    static const char *const names[] = {"None", "bool",   "int",    "bigint",  "float",  "str",    "bytes",
                                        "tuple", "list",  "dict",   "tensor",  "storage", "global", "object"};
    return (unsigned)k < sizeof names / sizeof *names ? names[k] : "?";
}

eng_pt_kind eng_pt_kind_of(const eng_pt_value *v) { return v ? v->kind : ENG_PT_NONE; }

static bool is_seq(const eng_pt_value *v) { return v && (v->kind == ENG_PT_TUPLE || v->kind == ENG_PT_LIST); }

int64_t eng_pt_len(const eng_pt_value *v)
{
    return v && (is_seq(v) || v->kind == ENG_PT_DICT) ? (int64_t)v->u.a.n : 0;
}

const eng_pt_value *eng_pt_item(const eng_pt_value *v, int64_t i)
{
    return is_seq(v) && i >= 0 && (uint64_t)i < v->u.a.n ? v->u.a.v[i] : NULL;
}

const eng_pt_value *eng_pt_dict_key(const eng_pt_value *v, int64_t i)
{
    return v && v->kind == ENG_PT_DICT && i >= 0 && (uint64_t)i < v->u.a.n ? v->u.a.v[2 * i] : NULL;
}

const eng_pt_value *eng_pt_dict_val(const eng_pt_value *v, int64_t i)
{
    return v && v->kind == ENG_PT_DICT && i >= 0 && (uint64_t)i < v->u.a.n ? v->u.a.v[2 * i + 1] : NULL;
}

const eng_pt_value *eng_pt_dict_get(const eng_pt_value *v, const char *key)
{
    if (!v || v->kind != ENG_PT_DICT || !key)
        return NULL;
    size_t kl = strlen(key);
    for (size_t i = 0; i < v->u.a.n; i++) {
        const eng_pt_value *k = v->u.a.v[2 * i];
        if (k->kind == ENG_PT_STR && k->u.s.len == kl && memcmp(k->u.s.p, key, kl) == 0)
            return v->u.a.v[2 * i + 1];
    }
    return NULL;
}

const char *eng_pt_str(const eng_pt_value *v, size_t *len)
{
    if (!v || (v->kind != ENG_PT_STR && v->kind != ENG_PT_BYTES && v->kind != ENG_PT_GLOBAL && v->kind != ENG_PT_OPAQUE))
        return NULL;
    if (len)
        *len = v->u.s.len;
    return v->u.s.p;
}

int64_t eng_pt_int(const eng_pt_value *v) { return v && (v->kind == ENG_PT_INT || v->kind == ENG_PT_BOOL) ? v->u.i : 0; }

double eng_pt_float(const eng_pt_value *v)
{
    if (!v)
        return 0;
    if (v->kind == ENG_PT_FLOAT)
        return v->u.f;
    return v->kind == ENG_PT_INT || v->kind == ENG_PT_BOOL ? (double)v->u.i : 0;
}

eng_status eng_pt_tensor(const eng_pt_value *v, eng_pt_tensor_info *info)
{
    if (!v || v->kind != ENG_PT_TENSOR || !info)
        return eng_fail(ENG_ERR_ARG, "pickle: value is a %s, not a tensor", eng_pt_kind_name(eng_pt_kind_of(v)));
    *info = v->u.t->info;
    return ENG_OK;
}

/* ---- the machine ---- */

typedef struct up {
    pt_heap *h;
    const uint8_t *buf;
    size_t len, pos, op_pos;
    eng_pt_value **stack;
    size_t sp, cap;
    size_t marks[ENG_PT_MAX_DEPTH];
    int nmarks;
    eng_pt_value **memo;
    size_t memo_cap, memo_set, ops;
    pt_persistent_fn persistent;
    void *user;
} up;

#define UP_FAIL(u, st, ...) pickle_fail((u), (st), __VA_ARGS__)
/* After an allocation returned NULL: the status the heap recorded. */
#define OOM(u) ((u)->h->fail ? (u)->h->fail : ENG_ERR_NOMEM)

static eng_status pickle_fail(up *u, eng_status s, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static eng_status pickle_fail(up *u, eng_status s, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return eng_fail(s, "pickle: %s (opcode at byte %zu)", msg, u->op_pos);
}

static size_t base(const up *u) { return u->nmarks ? u->marks[u->nmarks - 1] : 0; }

static eng_status push(up *u, eng_pt_value *v)
{
    if (!v)
        return OOM(u); /* the allocator recorded why (memory or ENG_PT_MAX_HEAP) */
    if (u->sp == u->cap) {
        if (u->cap >= ENG_PT_MAX_STACK)
            return UP_FAIL(u, ENG_ERR_LIMIT, "more than %d values on the stack", ENG_PT_MAX_STACK);
        size_t cap = u->cap ? 2 * u->cap : 64;
        eng_pt_value **s = realloc(u->stack, cap * sizeof *s);
        if (!s)
            return UP_FAIL(u, ENG_ERR_NOMEM, "out of memory for the stack");
        u->stack = s;
        u->cap = cap;
    }
    u->stack[u->sp++] = v;
    return ENG_OK;
}

static eng_status pop(up *u, eng_pt_value **v)
{
    if (u->sp <= base(u))
        return UP_FAIL(u, ENG_ERR_FORMAT, "stack underflow");
    *v = u->stack[--u->sp];
    return ENG_OK;
}

static eng_status top(up *u, eng_pt_value **v)
{
    if (u->sp <= base(u))
        return UP_FAIL(u, ENG_ERR_FORMAT, "stack underflow");
    *v = u->stack[u->sp - 1];
    return ENG_OK;
}

/* Pops the innermost MARK: items are stack[*from .. u->sp) and the stack is cut back to them by
 * the caller (u->sp = *from) once they are used. */
static eng_status pop_mark(up *u, size_t *from)
{
    if (u->nmarks == 0)
        return UP_FAIL(u, ENG_ERR_FORMAT, "no MARK to pop");
    *from = u->marks[--u->nmarks];
    return ENG_OK;
}

static eng_status need(up *u, size_t n)
{
    if (n > u->len - u->pos)
        return UP_FAIL(u, ENG_ERR_FORMAT, "truncated: %zu bytes needed, %zu left", n, u->len - u->pos);
    return ENG_OK;
}

static uint64_t rd_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* A text argument up to '\n' (not included); refuses lines over PT_MAX_LINE. */
static eng_status line(up *u, const char **p, size_t *n)
{
    size_t left = u->len - u->pos, max = left < PT_MAX_LINE ? left : PT_MAX_LINE;
    const uint8_t *s = u->buf + u->pos, *nl = memchr(s, '\n', max);
    if (!nl)
        return UP_FAIL(u, ENG_ERR_FORMAT, "text argument without a newline in %zu bytes", max);
    *p = (const char *)s;
    *n = (size_t)(nl - s);
    u->pos += *n + 1;
    return ENG_OK;
}

/* A decimal integer from a text line ("I", "L", "PUT", "GET"); "00"/"01" are bools for INT. */
static eng_status text_int(up *u, int64_t *v, bool *is_bool)
{
    const char *p;
    size_t n;
    eng_status s = line(u, &p, &n);
    if (s != ENG_OK)
        return s;
    char buf[64];
    if (n && p[n - 1] == 'L')
        n--;
    if (n == 0 || n >= sizeof buf)
        return UP_FAIL(u, ENG_ERR_FORMAT, "bad integer text");
    memcpy(buf, p, n);
    buf[n] = '\0';
    if (is_bool)
        *is_bool = !strcmp(buf, "00") || !strcmp(buf, "01");
    char *end;
    errno = 0;
    long long x = strtoll(buf, &end, 10);
    if (*end || errno)
        return UP_FAIL(u, ENG_ERR_FORMAT, "bad or too large integer '%s'", buf);
    *v = x;
    return ENG_OK;
}

static eng_status memo_get(up *u, uint64_t idx)
{
    if (idx >= u->memo_cap || !u->memo[idx])
        return UP_FAIL(u, ENG_ERR_FORMAT, "memo entry %llu was never stored", (unsigned long long)idx);
    return push(u, u->memo[idx]);
}

/* Python's picklers number memo entries 0, 1, 2, ... so an index never exceeds the opcodes
 * run so far; that bound keeps the memo proportional to the input. */
static eng_status memo_put(up *u, uint64_t idx)
{
    eng_pt_value *v = NULL;
    eng_status s = top(u, &v);
    if (s != ENG_OK)
        return s;
    if (idx >= ENG_PT_MAX_MEMO || idx > u->ops)
        return UP_FAIL(u, ENG_ERR_LIMIT, "memo index %llu (at most %d, and not beyond the opcodes so far)",
                       (unsigned long long)idx, ENG_PT_MAX_MEMO);
    if (idx >= u->memo_cap) {
        size_t cap = u->memo_cap ? u->memo_cap : 256;
        while (cap <= idx)
            cap *= 2;
        eng_pt_value **m = realloc(u->memo, cap * sizeof *m);
        if (!m)
            return UP_FAIL(u, ENG_ERR_NOMEM, "out of memory for the memo");
        memset(m + u->memo_cap, 0, (cap - u->memo_cap) * sizeof *m);
        u->memo = m;
        u->memo_cap = cap;
    }
    u->memo_set += u->memo[idx] == NULL;
    u->memo[idx] = v;
    return ENG_OK;
}

/* TUPLE, LIST from stack[from..sp). */
static eng_status build_seq(up *u, eng_pt_kind k, size_t from)
{
    size_t n = u->sp - from;
    eng_status s0;
    eng_pt_value *t = pt_new(u->h, k);
    if (!t)
        return OOM(u);
    if (k == ENG_PT_TUPLE) {
        if (n && !(t->u.a.v = heap_alloc(u->h, n * sizeof *t->u.a.v)))
            return OOM(u);
        t->u.a.cap = n;
    } else if ((s0 = grow(u->h, t, n)) != ENG_OK) {
        return s0;
    }
    for (size_t i = 0; i < n; i++) {
        eng_status s = place(t, u->stack[from + i]);
        if (s != ENG_OK)
            return s;
        t->u.a.v[i] = u->stack[from + i];
    }
    t->u.a.n = n;
    u->sp = from;
    return push(u, t);
}

static eng_status dict_set(up *u, eng_pt_value *d, eng_pt_value *k, eng_pt_value *v)
{
    eng_status s;
    if ((s = place(d, k)) != ENG_OK || (s = place(d, v)) != ENG_OK)
        return s;
    if (d->kind == ENG_PT_OPAQUE)
        return ENG_OK; /* an object we do not model: its items are dropped */
    if (d->kind != ENG_PT_DICT)
        return UP_FAIL(u, ENG_ERR_FORMAT, "SETITEM on a %s", eng_pt_kind_name(d->kind));
    if (k->kind == ENG_PT_LIST || k->kind == ENG_PT_DICT)
        return UP_FAIL(u, ENG_ERR_FORMAT, "a %s used as a dict key", eng_pt_kind_name(k->kind));
    if ((s = grow(u->h, d, 2)) != ENG_OK)
        return s;
    d->u.a.v[2 * d->u.a.n] = k;
    d->u.a.v[2 * d->u.a.n + 1] = v;
    d->u.a.n++;
    return ENG_OK;
}

static eng_status list_append(up *u, eng_pt_value *l, eng_pt_value *v)
{
    eng_status s = place(l, v);
    if (s != ENG_OK)
        return s;
    if (l->kind == ENG_PT_OPAQUE)
        return ENG_OK;
    if (l->kind != ENG_PT_LIST)
        return UP_FAIL(u, ENG_ERR_FORMAT, "APPEND to a %s", eng_pt_kind_name(l->kind));
    if ((s = grow(u->h, l, 1)) != ENG_OK)
        return s;
    l->u.a.v[l->u.a.n++] = v;
    return ENG_OK;
}

static eng_status new_opaque(up *u, const char *name)
{
    note_opaque(u->h, name);
    return push(u, pt_new_str(u->h, ENG_PT_OPAQUE, name, strlen(name)));
}

static bool get_int(const eng_pt_value *v, int64_t *out)
{
    if (!v || v->kind != ENG_PT_INT)
        return false;
    *out = v->u.i;
    return true;
}

/* torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
 * backward_hooks[, metadata]) and _rebuild_tensor(storage, storage_offset, size, stride). */
static eng_status rebuild_tensor(up *u, const eng_pt_value *args)
{
    if (args->u.a.n < 4)
        return UP_FAIL(u, ENG_ERR_FORMAT, "_rebuild_tensor with %zu arguments (needs 4 or more)", args->u.a.n);
    const eng_pt_value *st = args->u.a.v[0], *size = args->u.a.v[2], *stride = args->u.a.v[3];
    int64_t off;
    if (st->kind != ENG_PT_STORAGE)
        return UP_FAIL(u, ENG_ERR_FORMAT, "_rebuild_tensor over a %s, not a storage", eng_pt_kind_name(st->kind));
    if (!get_int(args->u.a.v[1], &off) || off < 0)
        return UP_FAIL(u, ENG_ERR_FORMAT, "_rebuild_tensor with a bad storage offset");
    if (!is_seq(size) || !is_seq(stride) || size->u.a.n != stride->u.a.n)
        return UP_FAIL(u, ENG_ERR_FORMAT, "_rebuild_tensor with size and stride that are not tuples of one length");
    if (size->u.a.n > ENG_PT_MAX_DIMS)
        return UP_FAIL(u, ENG_ERR_LIMIT, "tensor of %zu dimensions (at most %d)", size->u.a.n, ENG_PT_MAX_DIMS);
    pt_tensor *t = heap_alloc(u->h, sizeof *t);
    eng_pt_value *v = pt_new(u->h, ENG_PT_TENSOR);
    if (!t || !v)
        return OOM(u);
    eng_pt_tensor_info *in = &t->info;
    t->storage = st->u.st.index;
    in->storage_key = st->u.st.key;
    in->dtype = st->u.st.dtype;
    in->ndim = (int)size->u.a.n;
    in->numel = 1;
    /* Sizes are capped so that numel and the strided extent stay far from overflowing. */
    const int64_t cap = (int64_t)1 << 48;
    for (int i = 0; i < in->ndim; i++) {
        if (!get_int(size->u.a.v[i], &in->dim[i]) || !get_int(stride->u.a.v[i], &in->stride[i]) || in->dim[i] < 0 ||
            in->stride[i] < 0 || in->dim[i] > cap || in->stride[i] > cap)
            return UP_FAIL(u, ENG_ERR_FORMAT, "tensor dimension %d has a bad size or stride", i);
        if (in->dim[i] > 0 && in->numel > cap / in->dim[i])
            return UP_FAIL(u, ENG_ERR_LIMIT, "tensor of more than 2^48 elements");
        in->numel *= in->dim[i];
    }
    /* The last element's position must lie inside the storage view; a tensor with more elements
     * than its storage (stride 0, overlapping strides) is refused outright. */
    const int64_t vn = st->u.st.numel;
    if (off > vn)
        return UP_FAIL(u, ENG_ERR_FORMAT, "tensor starts at element %lld of a %lld-element storage", (long long)off,
                       (long long)vn);
    if (in->numel > vn)
        return UP_FAIL(u, ENG_ERR_FORMAT, "tensor of %lld elements over a storage of %lld (broadcast or overlapping strides)",
                       (long long)in->numel, (long long)vn);
    if (in->numel > 0) {
        int64_t last = off;
        for (int i = 0; i < in->ndim; i++) {
            int64_t step = (in->dim[i] - 1) * in->stride[i]; /* both < 2^48: cannot overflow int64 */
            if (step > vn || last > vn - step)
                return UP_FAIL(u, ENG_ERR_FORMAT, "tensor's strides reach past its %lld-element storage", (long long)vn);
            last += step;
        }
        if (last >= vn)
            return UP_FAIL(u, ENG_ERR_FORMAT, "tensor's last element %lld lies past its %lld-element storage",
                           (long long)last, (long long)vn);
    }
    in->offset = st->u.st.offset + off;
    in->contiguous = true;
    int64_t expect = 1; /* at most numel, so at most 2^48 */
    for (int i = in->ndim - 1; i >= 0; i--) {
        if (in->dim[i] != 1 && in->stride[i] != expect)
            in->contiguous = false;
        expect *= in->dim[i];
    }
    v->u.t = t;
    return push(u, v);
}

/* REDUCE (and NEWOBJ when newobj): what calling fn(*args) means here. Nothing is ever called. */
static eng_status call(up *u, eng_pt_value *fn, eng_pt_value *args, bool newobj)
{
    eng_status s;
    args->sealed = true; /* consumed: the result never refers to them as a container */
    if (args->kind != ENG_PT_TUPLE)
        return UP_FAIL(u, ENG_ERR_FORMAT, "%s arguments are a %s, not a tuple", newobj ? "NEWOBJ" : "REDUCE",
                       eng_pt_kind_name(args->kind));
    if (fn->kind == ENG_PT_OPAQUE)
        return new_opaque(u, fn->u.s.p); /* calling an unknown object gives another one */
    if (fn->kind != ENG_PT_GLOBAL)
        return UP_FAIL(u, ENG_ERR_FORMAT, "%s of a %s, which is not callable", newobj ? "NEWOBJ" : "REDUCE",
                       eng_pt_kind_name(fn->kind));
    const char *name = fn->u.s.p;
    if (!newobj && (!strcmp(name, "torch._utils._rebuild_tensor_v2") || !strcmp(name, "torch._utils._rebuild_tensor")))
        return rebuild_tensor(u, args);
    if (!newobj && (!strcmp(name, "torch._utils._rebuild_parameter") ||
                    !strcmp(name, "torch._utils._rebuild_parameter_with_state"))) {
        if (args->u.a.n < 1 || args->u.a.v[0]->kind != ENG_PT_TENSOR)
            return UP_FAIL(u, ENG_ERR_FORMAT, "%s without a tensor", name);
        return push(u, args->u.a.v[0]); /* a Parameter is its data */
    }
    if (!strcmp(name, "collections.OrderedDict")) {
        eng_pt_value *d = pt_new(u->h, ENG_PT_DICT);
        if (!d)
            return OOM(u);
        if (args->u.a.n > 1)
            return UP_FAIL(u, ENG_ERR_FORMAT, "OrderedDict called with %zu arguments", args->u.a.n);
        if (args->u.a.n == 1) { /* OrderedDict([(k, v), ...]) */
            const eng_pt_value *items = args->u.a.v[0];
            if (!is_seq(items))
                return UP_FAIL(u, ENG_ERR_FORMAT, "OrderedDict of a %s", eng_pt_kind_name(items->kind));
            for (size_t i = 0; i < items->u.a.n; i++) {
                const eng_pt_value *kv = items->u.a.v[i];
                if (!is_seq(kv) || kv->u.a.n != 2)
                    return UP_FAIL(u, ENG_ERR_FORMAT, "OrderedDict item %zu is not a pair", i);
                if ((s = dict_set(u, d, kv->u.a.v[0], kv->u.a.v[1])) != ENG_OK)
                    return s;
            }
        }
        return push(u, d);
    }
    return new_opaque(u, name);
}

static eng_status make_global(up *u, const char *mod, size_t ml, const char *name, size_t nl)
{
    if (ml == 0 || nl == 0 || ml > PT_MAX_NAME || nl > PT_MAX_NAME)
        return UP_FAIL(u, ENG_ERR_FORMAT, "GLOBAL with an empty or overlong name");
    for (size_t i = 0; i < ml + nl; i++) {
        unsigned char c = (unsigned char)(i < ml ? mod[i] : name[i - ml]);
        if (c < 0x21 || c > 0x7e)
            return UP_FAIL(u, ENG_ERR_FORMAT, "GLOBAL name with byte 0x%02x", c);
    }
    char buf[2 * PT_MAX_NAME + 2];
    memcpy(buf, mod, ml);
    buf[ml] = '.';
    memcpy(buf + ml + 1, name, nl);
    return push(u, pt_new_str(u->h, ENG_PT_GLOBAL, buf, ml + 1 + nl));
}

/* Pushes a str/bytes value of n bytes read from the input. */
static eng_status data_str(up *u, eng_pt_kind k, uint64_t n)
{
    if (n > u->len - u->pos)
        return UP_FAIL(u, ENG_ERR_FORMAT, "string of %llu bytes, %zu left", (unsigned long long)n, u->len - u->pos);
    eng_status s = push(u, pt_new_str(u->h, k, u->buf + u->pos, (size_t)n));
    u->pos += (size_t)n;
    return s;
}

/* A little-endian two's complement integer of n bytes (LONG1, LONG4). */
static eng_status data_long(up *u, uint64_t n)
{
    if (n > PT_MAX_LONG)
        return UP_FAIL(u, ENG_ERR_LIMIT, "integer of %llu bytes", (unsigned long long)n);
    eng_status s = need(u, (size_t)n);
    if (s != ENG_OK)
        return s;
    const uint8_t *p = u->buf + u->pos;
    u->pos += (size_t)n;
    if (n > 8)
        return push(u, pt_new_str(u->h, ENG_PT_BIGINT, p, (size_t)n));
    uint64_t x = n ? rd_le(p, (int)n) : 0;
    if (n && n < 8 && (p[n - 1] & 0x80))
        x |= ~(uint64_t)0 << (8 * n); /* sign-extend */
    eng_pt_value *v = pt_new(u->h, ENG_PT_INT);
    if (v)
        v->u.i = (int64_t)x;
    return push(u, v);
}

static eng_status push_int(up *u, eng_pt_kind k, int64_t x)
{
    eng_pt_value *v = pt_new(u->h, k);
    if (v)
        v->u.i = x;
    return push(u, v);
}

static eng_status persid(up *u, eng_pt_value *pid)
{
    if (!u->persistent)
        return UP_FAIL(u, ENG_ERR_FORMAT, "persistent id where none is expected");
    eng_pt_value *v = NULL;
    pid->sealed = true;
    eng_status s = u->persistent(u->user, u->h, pid, &v);
    if (s != ENG_OK)
        return s;
    return push(u, v);
}

/* One opcode. *stop is set by STOP. */
static eng_status step(up *u, bool *stop)
{
    eng_status s;
    eng_pt_value *a = NULL, *b = NULL, *c = NULL;
    size_t from = 0;
    u->op_pos = u->pos;
    if ((s = need(u, 1)) != ENG_OK)
        return s;
    uint8_t op = u->buf[u->pos++];
    u->ops++;
    switch (op) {
    case 0x80: /* PROTO */
        if ((s = need(u, 1)) != ENG_OK)
            return s;
        if (u->buf[u->pos] > 5)
            return UP_FAIL(u, ENG_ERR_UNSUPPORTED, "pickle protocol %u (at most 5)", u->buf[u->pos]);
        u->pos++;
        return ENG_OK;
    case 0x95: /* FRAME: the framed bytes follow inline */
        if ((s = need(u, 8)) != ENG_OK)
            return s;
        u->pos += 8;
        return ENG_OK;
    case '.': /* STOP */
        if ((s = pop(u, &a)) != ENG_OK)
            return s;
        u->stack[u->sp++] = a; /* left for the caller */
        *stop = true;
        return ENG_OK;
    case '(': /* MARK */
        if (u->nmarks == ENG_PT_MAX_DEPTH)
            return UP_FAIL(u, ENG_ERR_LIMIT, "MARKs nested more than %d deep", ENG_PT_MAX_DEPTH);
        u->marks[u->nmarks++] = u->sp;
        return ENG_OK;
    case '0': /* POP: an item, or the mark when nothing lies above it */
        if (u->sp > base(u)) {
            u->sp--;
            return ENG_OK;
        }
        return pop_mark(u, &from);
    case '1': /* POP_MARK */
        if ((s = pop_mark(u, &from)) != ENG_OK)
            return s;
        u->sp = from;
        return ENG_OK;
    case '2': /* DUP */
        if ((s = top(u, &a)) != ENG_OK)
            return s;
        return push(u, a);
    case 'N':
        return push(u, pt_new(u->h, ENG_PT_NONE));
    case 0x88: /* NEWTRUE */
    case 0x89: /* NEWFALSE */
        return push_int(u, ENG_PT_BOOL, op == 0x88);
    case 'J': /* BININT */
        if ((s = need(u, 4)) != ENG_OK)
            return s;
        u->pos += 4;
        return push_int(u, ENG_PT_INT, (int32_t)(uint32_t)rd_le(u->buf + u->pos - 4, 4));
    case 'K': /* BININT1 */
    case 'M': /* BININT2 */
        if ((s = need(u, op == 'K' ? 1 : 2)) != ENG_OK)
            return s;
        u->pos += op == 'K' ? 1 : 2;
        return push_int(u, ENG_PT_INT, (int64_t)rd_le(u->buf + u->pos - (op == 'K' ? 1 : 2), op == 'K' ? 1 : 2));
    case 0x8a: /* LONG1 */
        if ((s = need(u, 1)) != ENG_OK)
            return s;
        return data_long(u, u->buf[u->pos++]);
    case 0x8b: /* LONG4 */
        if ((s = need(u, 4)) != ENG_OK)
            return s;
        u->pos += 4;
        {
            int32_t n = (int32_t)(uint32_t)rd_le(u->buf + u->pos - 4, 4);
            if (n < 0)
                return UP_FAIL(u, ENG_ERR_FORMAT, "LONG4 of negative length");
            return data_long(u, (uint64_t)n);
        }
    case 'I': /* INT (text) */
    case 'L': { /* LONG (text) */
        int64_t x;
        bool is_bool = false;
        if ((s = text_int(u, &x, op == 'I' ? &is_bool : NULL)) != ENG_OK)
            return s;
        return push_int(u, is_bool ? ENG_PT_BOOL : ENG_PT_INT, x);
    }
    case 'G': { /* BINFLOAT: big-endian */
        if ((s = need(u, 8)) != ENG_OK)
            return s;
        uint64_t bits = 0;
        for (int i = 0; i < 8; i++)
            bits = bits << 8 | u->buf[u->pos + (size_t)i];
        u->pos += 8;
        eng_pt_value *v = pt_new(u->h, ENG_PT_FLOAT);
        if (v)
            memcpy(&v->u.f, &bits, sizeof bits);
        return push(u, v);
    }
    case 'F': { /* FLOAT (text) */
        const char *p;
        size_t n;
        char buf[64], *end;
        if ((s = line(u, &p, &n)) != ENG_OK)
            return s;
        if (n == 0 || n >= sizeof buf)
            return UP_FAIL(u, ENG_ERR_FORMAT, "bad float text");
        memcpy(buf, p, n);
        buf[n] = '\0';
        double x = strtod(buf, &end);
        if (*end)
            return UP_FAIL(u, ENG_ERR_FORMAT, "bad float text '%s'", buf);
        eng_pt_value *v = pt_new(u->h, ENG_PT_FLOAT);
        if (v)
            v->u.f = x;
        return push(u, v);
    }
    case 'X':  /* BINUNICODE */
    case 'T':  /* BINSTRING (Python 2 str) */
    case 'B':  /* BINBYTES */
        if ((s = need(u, 4)) != ENG_OK)
            return s;
        u->pos += 4;
        if (op == 'T' && (rd_le(u->buf + u->pos - 4, 4) & 0x80000000u))
            return UP_FAIL(u, ENG_ERR_FORMAT, "BINSTRING of negative length");
        return data_str(u, op == 'B' ? ENG_PT_BYTES : ENG_PT_STR, rd_le(u->buf + u->pos - 4, 4));
    case 0x8c: /* SHORT_BINUNICODE */
    case 'U':  /* SHORT_BINSTRING */
    case 'C':  /* SHORT_BINBYTES */
        if ((s = need(u, 1)) != ENG_OK)
            return s;
        u->pos++;
        return data_str(u, op == 'C' ? ENG_PT_BYTES : ENG_PT_STR, u->buf[u->pos - 1]);
    case 0x8d: /* BINUNICODE8 */
    case 0x8e: /* BINBYTES8 */
    case 0x96: /* BYTEARRAY8 */
        if ((s = need(u, 8)) != ENG_OK)
            return s;
        u->pos += 8;
        return data_str(u, op == 0x8d ? ENG_PT_STR : ENG_PT_BYTES, rd_le(u->buf + u->pos - 8, 8));
    case ')': /* EMPTY_TUPLE */
        return build_seq(u, ENG_PT_TUPLE, u->sp);
    case 0x85: /* TUPLE1 */
    case 0x86: /* TUPLE2 */
    case 0x87: /* TUPLE3 */
        if (u->sp - base(u) < (size_t)(op - 0x84))
            return UP_FAIL(u, ENG_ERR_FORMAT, "stack underflow");
        return build_seq(u, ENG_PT_TUPLE, u->sp - (size_t)(op - 0x84));
    case 't': /* TUPLE */
    case 'l': /* LIST */
        if ((s = pop_mark(u, &from)) != ENG_OK)
            return s;
        return build_seq(u, op == 't' ? ENG_PT_TUPLE : ENG_PT_LIST, from);
    case ']': /* EMPTY_LIST */
        return push(u, pt_new(u->h, ENG_PT_LIST));
    case '}': /* EMPTY_DICT */
        return push(u, pt_new(u->h, ENG_PT_DICT));
    case 'd': /* DICT */
        if ((s = pop_mark(u, &from)) != ENG_OK)
            return s;
        if ((u->sp - from) % 2)
            return UP_FAIL(u, ENG_ERR_FORMAT, "DICT with an odd number of items");
        if (!(a = pt_new(u->h, ENG_PT_DICT)))
            return OOM(u);
        for (size_t i = from; i < u->sp; i += 2)
            if ((s = dict_set(u, a, u->stack[i], u->stack[i + 1])) != ENG_OK)
                return s;
        u->sp = from;
        return push(u, a);
    case 'a': /* APPEND */
        if ((s = pop(u, &a)) != ENG_OK || (s = top(u, &b)) != ENG_OK)
            return s;
        return list_append(u, b, a);
    case 'e':  /* APPENDS */
    case 'u':  /* SETITEMS */
    case 0x90: /* ADDITEMS */
        if ((s = pop_mark(u, &from)) != ENG_OK)
            return s;
        if (from < base(u) + 1)
            return UP_FAIL(u, ENG_ERR_FORMAT, "stack underflow");
        b = u->stack[from - 1];
        if (op == 'u' && (u->sp - from) % 2)
            return UP_FAIL(u, ENG_ERR_FORMAT, "SETITEMS with an odd number of items");
        for (size_t i = from; i < u->sp; i += op == 'u' ? 2 : 1) {
            if (op == 'u')
                s = dict_set(u, b, u->stack[i], u->stack[i + 1]);
            else if (op == 'e')
                s = list_append(u, b, u->stack[i]);
            else if (b->kind != ENG_PT_OPAQUE)
                s = UP_FAIL(u, ENG_ERR_FORMAT, "ADDITEMS to a %s", eng_pt_kind_name(b->kind));
            else
                u->stack[i]->sealed = true;
            if (s != ENG_OK)
                return s;
        }
        u->sp = from;
        return ENG_OK;
    case 's': /* SETITEM */
        if ((s = pop(u, &a)) != ENG_OK || (s = pop(u, &b)) != ENG_OK || (s = top(u, &c)) != ENG_OK)
            return s;
        return dict_set(u, c, b, a);
    case 0x8f: /* EMPTY_SET */
        return new_opaque(u, "builtins.set");
    case 0x91: /* FROZENSET */
        if ((s = pop_mark(u, &from)) != ENG_OK)
            return s;
        u->sp = from;
        return new_opaque(u, "builtins.frozenset");
    case 'q': /* BINPUT */
        if ((s = need(u, 1)) != ENG_OK)
            return s;
        return memo_put(u, u->buf[u->pos++]);
    case 'r': /* LONG_BINPUT */
        if ((s = need(u, 4)) != ENG_OK)
            return s;
        u->pos += 4;
        return memo_put(u, rd_le(u->buf + u->pos - 4, 4));
    case 'p': { /* PUT (text) */
        int64_t x;
        if ((s = text_int(u, &x, NULL)) != ENG_OK)
            return s;
        if (x < 0)
            return UP_FAIL(u, ENG_ERR_FORMAT, "negative memo index");
        return memo_put(u, (uint64_t)x);
    }
    case 0x94: /* MEMOIZE */
        return memo_put(u, u->memo_set);
    case 'h': /* BINGET */
        if ((s = need(u, 1)) != ENG_OK)
            return s;
        return memo_get(u, u->buf[u->pos++]);
    case 'j': /* LONG_BINGET */
        if ((s = need(u, 4)) != ENG_OK)
            return s;
        u->pos += 4;
        return memo_get(u, rd_le(u->buf + u->pos - 4, 4));
    case 'g': { /* GET (text) */
        int64_t x;
        if ((s = text_int(u, &x, NULL)) != ENG_OK)
            return s;
        if (x < 0)
            return UP_FAIL(u, ENG_ERR_FORMAT, "negative memo index");
        return memo_get(u, (uint64_t)x);
    }
    case 'c':   /* GLOBAL */
    case 'i': { /* INST: GLOBAL, then instantiate with the items above the mark */
        const char *m, *n;
        size_t ml, nl;
        if ((s = line(u, &m, &ml)) != ENG_OK || (s = line(u, &n, &nl)) != ENG_OK)
            return s;
        if ((s = make_global(u, m, ml, n, nl)) != ENG_OK || op == 'c')
            return s;
        a = u->stack[--u->sp];
        if ((s = pop_mark(u, &from)) != ENG_OK)
            return s;
        u->sp = from;
        return new_opaque(u, a->u.s.p);
    }
    case 0x93: /* STACK_GLOBAL */
        if ((s = pop(u, &b)) != ENG_OK || (s = pop(u, &a)) != ENG_OK)
            return s;
        if (a->kind != ENG_PT_STR || b->kind != ENG_PT_STR)
            return UP_FAIL(u, ENG_ERR_FORMAT, "STACK_GLOBAL of non-strings");
        return make_global(u, a->u.s.p, a->u.s.len, b->u.s.p, b->u.s.len);
    case 'R': /* REDUCE */
        if ((s = pop(u, &b)) != ENG_OK || (s = pop(u, &a)) != ENG_OK)
            return s;
        return call(u, a, b, false);
    case 0x81: /* NEWOBJ */
        if ((s = pop(u, &b)) != ENG_OK || (s = pop(u, &a)) != ENG_OK)
            return s;
        return call(u, a, b, true);
    case 0x92: /* NEWOBJ_EX: cls, args, kwargs */
        if ((s = pop(u, &c)) != ENG_OK || (s = pop(u, &b)) != ENG_OK || (s = pop(u, &a)) != ENG_OK)
            return s;
        c->sealed = true;
        return call(u, a, b, true);
    case 'o': /* OBJ: mark, cls, args... */
        if ((s = pop_mark(u, &from)) != ENG_OK)
            return s;
        if (u->sp == from)
            return UP_FAIL(u, ENG_ERR_FORMAT, "OBJ without a class");
        a = u->stack[from];
        for (size_t i = from + 1; i < u->sp; i++)
            u->stack[i]->sealed = true;
        u->sp = from;
        if (a->kind != ENG_PT_GLOBAL && a->kind != ENG_PT_OPAQUE)
            return UP_FAIL(u, ENG_ERR_FORMAT, "OBJ of a %s", eng_pt_kind_name(a->kind));
        return new_opaque(u, a->u.s.p);
    case 'b': /* BUILD: the object's state is dropped (objects are opaque; dict attributes unused) */
        if ((s = pop(u, &a)) != ENG_OK || (s = top(u, &b)) != ENG_OK)
            return s;
        a->sealed = true;
        return ENG_OK;
    case 'Q': /* BINPERSID */
        if ((s = pop(u, &a)) != ENG_OK)
            return s;
        return persid(u, a);
    case 'P': { /* PERSID (text) */
        const char *p;
        size_t n;
        if ((s = line(u, &p, &n)) != ENG_OK)
            return s;
        if (!(a = pt_new_str(u->h, ENG_PT_STR, p, n)))
            return OOM(u);
        return persid(u, a);
    }
    case 'S': /* STRING, UNICODE: escaped text of protocol 0, which torch never writes */
    case 'V':
        return UP_FAIL(u, ENG_ERR_UNSUPPORTED, "protocol 0 %s opcode is not supported", op == 'S' ? "STRING" : "UNICODE");
    case 0x82: /* EXT1, EXT2, EXT4: the copyreg extension registry */
    case 0x83:
    case 0x84:
        return UP_FAIL(u, ENG_ERR_UNSUPPORTED, "extension-registry opcode 0x%02x is not supported", op);
    case 0x97: /* NEXT_BUFFER, READONLY_BUFFER: out-of-band buffers */
    case 0x98:
        return UP_FAIL(u, ENG_ERR_UNSUPPORTED, "out-of-band buffer opcode 0x%02x is not supported", op);
    default:
        return UP_FAIL(u, ENG_ERR_FORMAT, "unknown opcode 0x%02x", op);
    }
}

eng_status pt_unpickle(pt_heap *h, const uint8_t *buf, size_t len, pt_persistent_fn persistent, void *user,
                       eng_pt_value **out, size_t *used)
{
    *out = NULL;
    if (used)
        *used = 0;
    if (len > ENG_PT_MAX_PICKLE)
        len = ENG_PT_MAX_PICKLE; /* a pickle longer than this ends in "truncated" */
    up u = {.h = h, .buf = buf, .len = len, .persistent = persistent, .user = user};
    eng_status s = ENG_OK;
    bool stop = false;
    while (!stop && s == ENG_OK)
        s = step(&u, &stop);
    if (s == ENG_OK) {
        *out = u.stack[u.sp - 1];
        if (used)
            *used = u.pos;
    }
    free(u.stack);
    free(u.memo);
    return s;
}
