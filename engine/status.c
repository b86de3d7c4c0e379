/* Status texts and the thread-local error detail buffer. */
#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[512];

const char *eng_strerror(eng_status s)
{
    switch (s) {
#define ENG_STATUS_CASE(code, msg) \
    case code:                     \
        return msg;
        ENG_STATUS_LIST(ENG_STATUS_CASE)
#undef ENG_STATUS_CASE
    }
    return "unknown status";
}

const char *eng_last_error(void) { return last_error; }

void eng_clear_error(void) { last_error[0] = '\0'; }

eng_status eng_fail(eng_status s, const char *fmt, ...)
{
    /* Formatted apart first: callers wrap the previous detail, eng_fail(s, "x: %s", eng_last_error()). */
    char buf[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    memcpy(last_error, buf, sizeof buf);
    return s;
}
