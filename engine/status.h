/* Status codes of the engine and the per-thread detail message that goes with them.
 * Every fallible engine call returns an eng_status; eng_last_error() says what exactly failed. */
#ifndef ENG_STATUS_H
#define ENG_STATUS_H

#define ENG_STATUS_LIST(X)                                                      \
    X(ENG_OK, "ok")                                                             \
    X(ENG_ERR_ARG, "invalid argument")                                          \
    X(ENG_ERR_SHAPE, "shape mismatch")                                          \
    X(ENG_ERR_NOMEM, "out of memory")                                           \
    X(ENG_ERR_IO, "input/output error")                                         \
    X(ENG_ERR_FORMAT, "malformed file")                                         \
    X(ENG_ERR_UNSUPPORTED, "unsupported by this backend or build")              \
    X(ENG_ERR_NOT_FOUND, "not found")                                           \
    X(ENG_ERR_BACKEND, "backend library failure")                               \
    X(ENG_ERR_LIMIT, "limit exceeded")                                          \
    X(ENG_ERR_CANCELLED, "cancelled")

typedef enum {
#define ENG_STATUS_ENUM(code, msg) code,
    ENG_STATUS_LIST(ENG_STATUS_ENUM)
#undef ENG_STATUS_ENUM
} eng_status;

/* Static text for a status code; never NULL. */
const char *eng_strerror(eng_status s);

/* Detail of the last failure on this thread ("safetensors: tensor 'fc.weight' ends at byte
 * 4100, past the 4096-byte data section"). Empty string when none. Valid until the next
 * engine call on this thread. */
const char *eng_last_error(void);

/* Records a printf-style detail for the current thread and returns s, so that a failing
 * path reads `return eng_fail(ENG_ERR_SHAPE, "conv: %d != %d", a, b);`. */
eng_status eng_fail(eng_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Clears the detail message. */
void eng_clear_error(void);

#endif
