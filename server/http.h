/* HTTP plumbing on libmicrohttpd: the route table, request bodies (JSON in memory; uploads
 * streamed to temporary files while hashed, raw or multipart), authentication by bearer key,
 * JSON replies and errors, request logs and metrics. Handlers (api/) see an rt_req and fill an
 * rt_resp; they never touch libmicrohttpd. */
#ifndef RT_HTTP_H
#define RT_HTTP_H

#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include "blob.h"
#include "config.h"
#include "db.h"

/* The state every handler and worker shares. */
typedef struct rt_app {
    rt_config cfg;
    db *db;
    char tmp_dir[3200];       /* uploads in flight */
    char cache_dir[3200];     /* verified copies of blobs */
    char work_dir[3200];      /* jobs' output folders (checkpoints survive a restart here) */
} rt_app;

#define RT_MAX_PARTS 4
#define RT_JSON_LIMIT (1 << 20)

/* An uploaded file: the raw body ("body"), or a multipart part with a file name. */
typedef struct rt_part {
    char name[32];
    char filename[256];
    char path[PATH_MAX + 32];
    int fd;
    rt_sha256 *hash;
    char sha[65];
    int64_t size;
} rt_part;

typedef struct rt_route rt_route;
struct MHD_Connection;
struct MHD_PostProcessor;

typedef struct rt_req {
    rt_app *app;
    struct MHD_Connection *conn;
    const char *method;
    const char *url;
    const rt_route *route;
    char params[2][128];      /* the {…} segments of the route, in order */
    int64_t tenant_id;
    char tenant_id_s[24];     /* the same, as text for SQL parameters */
    char tenant[64];
    char id[24];              /* request id, in the X-Request-Id header and the logs */
    enum { BODY_NONE, BODY_MEM, BODY_FILE, BODY_MULTIPART } body;
    char *mem;                /* BODY_MEM: NUL-terminated */
    size_t mem_len;
    rt_part parts[RT_MAX_PARTS];
    int nparts;
    json_t *fields;           /* multipart text fields */
    struct MHD_PostProcessor *pp;
    int64_t received;
    int fail_status;          /* set while the body arrives: reply with this error at the end */
    char fail_code[32], fail_field[32], fail_msg[200];
    bool started;
    double t0;
    int status;
} rt_req;

typedef struct rt_resp {
    int status;
    const char *ctype;
    char *body;      /* malloc'd, freed by the plumbing */
    size_t len;
    int fd;          /* a file to send instead of body, when >= 0 */
    uint64_t fd_size;
    char filename[128];
    const char *headers[4][2]; /* extra headers {name, value}, static strings; unused ones NULL */
} rt_resp;

typedef void (*rt_handler)(rt_req *r, rt_resp *o);

enum { R_AUTH = 1, R_UPLOAD = 2 };

struct rt_route {
    const char *method;
    const char *pattern; /* "/v1/datasets/{id}" */
    rt_handler fn;
    unsigned flags;
};

/* The route table (api/routes.c), ended by a zeroed entry. */
extern const rt_route rt_routes[];

typedef struct rt_http rt_http;
rt_http *http_start(rt_app *app, char *err, size_t err_len);
void http_stop(rt_http *h);

/* ---- for handlers ---- */
void reply_json(rt_resp *o, int status, json_t *body);               /* takes body */
void reply_raw_json(rt_resp *o, int status, const char *text);       /* a JSON text from SQL */
void reply_error(rt_resp *o, int status, const char *code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
void reply_db(rt_resp *o, db_rc rc);                                 /* 503 or 500 */
void reply_file(rt_resp *o, const char *path, const char *ctype, const char *filename);
const char *req_query(rt_req *r, const char *key);
const char *req_header(rt_req *r, const char *key);
/* The body as a JSON object; on failure replies 400 (or 415) and returns NULL. */
json_t *req_json(rt_req *r, rt_resp *o);
/* A multipart text field, or a query parameter of the same name. */
const char *req_field(rt_req *r, const char *key);
rt_part *req_part(rt_req *r, const char *name);

/* A new random id with the given prefix: "ds_" + 20 base32 characters. */
void rt_new_id(char *out, size_t n, const char *prefix);
double rt_now(void);

#endif
