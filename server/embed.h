/* Files compiled into the binary (build/embed.c, made by tools/embed from migrations/ and
 * static/): the service needs no files beside itself. */
#ifndef RT_EMBED_H
#define RT_EMBED_H

#include <stddef.h>

typedef struct rt_file {
    const char *name;          /* the path below its folder, e.g. "0001_init.sql", "app.js" */
    const unsigned char *data; /* NUL-terminated beyond len */
    size_t len;
} rt_file;

extern const rt_file rt_migrations[]; /* sorted by name */
extern const size_t rt_migrations_n;
extern const rt_file rt_static[];
extern const size_t rt_static_n;

#endif
