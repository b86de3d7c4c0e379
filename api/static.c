/* The web dashboard: GET / and GET /static/{file} answer with the files of static/ that the
 * build compiled into the binary (rt_static[]); the filesystem is never read. */
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "embed.h"

/* The dashboard talks only to this origin; images are the gradient maps fetched as blobs. */
#define STATIC_CSP                                                                                                   \
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; connect-src 'self'; "      \
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

static const struct {
    const char *ext;
    const char *ctype;
} ctypes[] = {
    {".html", "text/html; charset=utf-8"},
    {".js", "text/javascript; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},
    {".svg", "image/svg+xml"},
    {".png", "image/png"},
    {".ico", "image/x-icon"},
    {".json", "application/json"},
    {".txt", "text/plain; charset=utf-8"},
};

static const char *ctype_of(const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof ctypes / sizeof ctypes[0]; i++) {
        size_t e = strlen(ctypes[i].ext);
        if (n > e && !strcmp(name + n - e, ctypes[i].ext))
            return ctypes[i].ctype;
    }
    return "application/octet-stream";
}

/* The embedded file of that exact name, or NULL: names are compared whole, so "..", "a/b" or
 * "%2e%2e" can only match a file of that literal name, and static/ holds none. */
static const rt_file *static_find(const char *name)
{
    for (size_t i = 0; i < rt_static_n; i++)
        if (rt_static[i].name && !strcmp(rt_static[i].name, name))
            return &rt_static[i];
    return NULL;
}

void h_static(rt_req *r, rt_resp *o)
{
    const char *name = strcmp(r->route->pattern, "/") ? r->params[0] : "index.html";
    const rt_file *f = static_find(name);
    if (!f) {
        reply_error(o, 404, "not_found", NULL, "no such file");
        return;
    }
    char *body = malloc(f->len ? f->len : 1);
    if (!body) {
        reply_error(o, 500, "internal", NULL, "out of memory");
        return;
    }
    memcpy(body, f->data, f->len);
    free(o->body);
    o->status = 200;
    o->ctype = ctype_of(name);
    o->body = body;
    o->len = f->len;
    o->headers[0][0] = "Content-Security-Policy";
    o->headers[0][1] = STATIC_CSP;
    o->headers[1][0] = "X-Content-Type-Options";
    o->headers[1][1] = "nosniff";
    o->headers[2][0] = "Referrer-Policy";
    o->headers[2][1] = "no-referrer";
}
