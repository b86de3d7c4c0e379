/* JSON logs on stderr, one object per line: {"ts", "level", "event", ...fields}. Keys, key
 * hashes and database passwords never go in a field. */
#ifndef RT_LOG_H
#define RT_LOG_H

#include <jansson.h>

enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Writes one line; `fields` (an object or NULL) is consumed. Thread-safe. */
void rlog(int level, const char *event, json_t *fields);
/* Lowest level written (RTAAS_LOG_LEVEL: debug, info, warn, error). */
void rlog_set_level(int level);

#endif
