#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"

struct rt_http {
    struct MHD_Daemon *d;
    rt_app *app;
};

double rt_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void rt_new_id(char *out, size_t n, const char *prefix)
{
    static const char alphabet[] = "abcdefghijkmnpqrstuvwxyz23456789";
    unsigned char rnd[20];
    if (RAND_bytes(rnd, sizeof rnd) != 1)
        for (size_t i = 0; i < sizeof rnd; i++)
            rnd[i] = (unsigned char)rand();
    size_t p = (size_t)snprintf(out, n, "%s", prefix);
    for (size_t i = 0; i < sizeof rnd && p + 1 < n; i++)
        out[p++] = alphabet[rnd[i] & 31];
    out[p < n ? p : n - 1] = 0;
}

/* ---- replies ---- */

void reply_json(rt_resp *o, int status, json_t *body)
{
    free(o->body);
    o->status = status;
    o->ctype = "application/json";
    o->body = body ? json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    o->len = o->body ? strlen(o->body) : 0;
    json_decref(body);
}

void reply_raw_json(rt_resp *o, int status, const char *text)
{
    free(o->body);
    o->status = status;
    o->ctype = "application/json";
    o->body = strdup(text);
    o->len = o->body ? strlen(o->body) : 0;
}

void reply_error(rt_resp *o, int status, const char *code, const char *field, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *e = json_pack("{s:s,s:s}", "code", code, "message", msg);
    json_object_set_new(e, "field", field ? json_string(field) : json_null());
    reply_json(o, status, json_pack("{s:o}", "error", e));
}

void reply_db(rt_resp *o, db_rc rc)
{
    if (rc == DB_UNAVAILABLE)
        reply_error(o, 503, "unavailable", NULL, "the database cannot be reached; retry later");
    else
        reply_error(o, 500, "internal", NULL, "database error: %s", db_last_error());
}

void reply_file(rt_resp *o, const char *path, const char *ctype, const char *filename)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        if (fd >= 0)
            close(fd);
        reply_error(o, 500, "internal", NULL, "artifact file unreadable");
        return;
    }
    free(o->body);
    o->body = NULL;
    o->status = 200;
    o->ctype = ctype;
    o->fd = fd;
    o->fd_size = (uint64_t)st.st_size;
    snprintf(o->filename, sizeof o->filename, "%s", filename ? filename : "");
}

const char *req_query(rt_req *r, const char *key)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, key);
}

const char *req_header(rt_req *r, const char *key)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, key);
}

const char *req_field(rt_req *r, const char *key)
{
    json_t *v = r->fields ? json_object_get(r->fields, key) : NULL;
    return v ? json_string_value(v) : req_query(r, key);
}

rt_part *req_part(rt_req *r, const char *name)
{
    for (int i = 0; i < r->nparts; i++)
        if (!strcmp(r->parts[i].name, name))
            return &r->parts[i];
    return NULL;
}

json_t *req_json(rt_req *r, rt_resp *o)
{
    if (r->body != BODY_MEM || !r->mem_len) {
        reply_error(o, r->body == BODY_NONE ? 400 : 415, r->body == BODY_NONE ? "bad_json" : "unsupported_format", NULL,
                    "expected a JSON object as the request body (Content-Type: application/json)");
        return NULL;
    }
    json_error_t e;
    json_t *j = json_loadb(r->mem, r->mem_len, JSON_REJECT_DUPLICATES, &e);
    if (!j) {
        reply_error(o, 400, "bad_json", NULL, "not JSON: %s (line %d, column %d)", e.text, e.line, e.column);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        reply_error(o, 400, "bad_json", NULL, "expected a JSON object");
        return NULL;
    }
    return j;
}

/* ---- routing ---- */

/* Matches url against pattern, capturing {…} segments; 1 on a match. */
static int match(const char *pattern, const char *url, char params[2][128])
{
    int np = 0;
    const char *p = pattern, *u = url;
    while (*p && *u) {
        if (*p == '{') {
            const char *pe = strchr(p, '}'), *ue = strchr(u, '/');
            size_t len = ue ? (size_t)(ue - u) : strlen(u);
            if (!pe || len == 0 || len >= 128 || np == 2)
                return 0;
            memcpy(params[np], u, len);
            params[np++][len] = 0;
            p = pe + 1;
            u += len;
        } else if (*p++ != *u++) {
            return 0;
        }
    }
    return !*p && (!*u || !strcmp(u, "/"));
}

/* ---- authentication ---- */

#define KEY_CACHE 512
#define KEY_TTL 5.0
static struct {
    unsigned char hash[32];
    int64_t tenant;
    char name[64];
    double at;
} key_cache[KEY_CACHE];
static pthread_mutex_t key_lock = PTHREAD_MUTEX_INITIALIZER;

/* 0: authenticated; else the HTTP status to reply with (401 or 503). */
static int authenticate(rt_req *r)
{
    const char *h = req_header(r, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7))
        return 401;
    const char *key = h + 7;
    while (*key == ' ')
        key++;
    size_t klen = strlen(key);
    if (klen < 16 || klen > 200)
        return 401;
    unsigned char hash[32];
    unsigned int hl = 0;
    EVP_Digest(key, klen, hash, &hl, EVP_sha256(), NULL);
    unsigned slot = ((unsigned)hash[0] | (unsigned)hash[1] << 8) % KEY_CACHE;
    double now = rt_now();
    pthread_mutex_lock(&key_lock);
    if (key_cache[slot].at > 0 && now - key_cache[slot].at < KEY_TTL &&
        CRYPTO_memcmp(key_cache[slot].hash, hash, 32) == 0) {
        r->tenant_id = key_cache[slot].tenant;
        snprintf(r->tenant, sizeof r->tenant, "%s", key_cache[slot].name);
        pthread_mutex_unlock(&key_lock);
        snprintf(r->tenant_id_s, sizeof r->tenant_id_s, "%lld", (long long)r->tenant_id);
        return 0;
    }
    pthread_mutex_unlock(&key_lock);
    db_conn *c = db_get(r->app->db);
    if (!c)
        return 503;
    const char *v[1] = {(const char *)hash};
    const int len[1] = {32}, fmt[1] = {1};
    db_rc rc;
    PGresult *res = PQexecPrepared(c->pg, rt_sql[Q_KEY_LOOKUP].name, 1, v, len, fmt, 0);
    rc = db_result_rc(c, res);
    int status = rc == DB_UNAVAILABLE ? 503 : rc != DB_OK ? 500 : 401;
    if (rc == DB_OK && PQntuples(res) == 1) {
        size_t hlen = 0;
        unsigned char *stored = PQunescapeBytea((const unsigned char *)PQgetvalue(res, 0, 2), &hlen);
        if (stored && hlen == 32 && CRYPTO_memcmp(stored, hash, 32) == 0) {
            r->tenant_id = atoll(PQgetvalue(res, 0, 0));
            snprintf(r->tenant, sizeof r->tenant, "%s", PQgetvalue(res, 0, 1));
            status = 0;
        }
        PQfreemem(stored);
    }
    PQclear(res);
    db_put(r->app->db, c);
    if (status == 0) {
        snprintf(r->tenant_id_s, sizeof r->tenant_id_s, "%lld", (long long)r->tenant_id);
        pthread_mutex_lock(&key_lock);
        memcpy(key_cache[slot].hash, hash, 32);
        key_cache[slot].tenant = r->tenant_id;
        snprintf(key_cache[slot].name, sizeof key_cache[slot].name, "%s", r->tenant);
        key_cache[slot].at = now;
        pthread_mutex_unlock(&key_lock);
    }
    return status;
}

/* ---- bodies ---- */

static void fail(rt_req *r, int status, const char *code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void fail(rt_req *r, int status, const char *code, const char *fmt, ...)
{
    if (r->fail_status)
        return;
    r->fail_status = status;
    snprintf(r->fail_code, sizeof r->fail_code, "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->fail_msg, sizeof r->fail_msg, fmt, ap);
    va_end(ap);
}

static void part_close(rt_part *p, bool remove)
{
    if (p->fd >= 0)
        close(p->fd);
    p->fd = -1;
    if (p->hash) {
        sha256_final(p->hash, p->sha);
        p->hash = NULL;
    }
    if (remove && p->path[0]) {
        unlink(p->path);
        p->path[0] = 0;
    }
}

static rt_part *part_open(rt_req *r, const char *name, const char *filename)
{
    if (r->nparts == RT_MAX_PARTS) {
        fail(r, 400, "bad_request", "too many files in one request (at most %d)", RT_MAX_PARTS);
        return NULL;
    }
    rt_part *p = &r->parts[r->nparts];
    memset(p, 0, sizeof *p);
    p->fd = -1;
    snprintf(p->name, sizeof p->name, "%s", name);
    snprintf(p->filename, sizeof p->filename, "%s", filename ? filename : "");
    snprintf(p->path, sizeof p->path, "%s/upload-XXXXXX", r->app->tmp_dir);
    p->fd = mkstemp(p->path);
    p->hash = sha256_new();
    if (p->fd < 0 || !p->hash) {
        p->path[0] = 0;
        fail(r, 500, "internal", "cannot create a temporary file: %s", strerror(errno));
        return NULL;
    }
    r->nparts++;
    return p;
}

static void part_write(rt_req *r, rt_part *p, const char *data, size_t size)
{
    if (r->fail_status || !p || p->fd < 0)
        return;
    r->received += (int64_t)size;
    if (r->received > r->app->cfg.max_upload) {
        fail(r, 413, "too_large", "the upload is over the limit of %lld bytes (RTAAS_MAX_UPLOAD)",
             (long long)r->app->cfg.max_upload);
        for (int i = 0; i < r->nparts; i++)
            part_close(&r->parts[i], true);
        return;
    }
    sha256_update(p->hash, data, size);
    p->size += (int64_t)size;
    while (size) {
        ssize_t w = write(p->fd, data, size);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            fail(r, 507, "insufficient_storage", "writing the upload: %s", strerror(errno));
            for (int i = 0; i < r->nparts; i++)
                part_close(&r->parts[i], true);
            return;
        }
        data += w;
        size -= (size_t)w;
    }
}

static enum MHD_Result post_iter(void *cls, enum MHD_ValueKind kind, const char *key, const char *filename,
                                 const char *content_type, const char *transfer_encoding, const char *data,
                                 uint64_t off, size_t size)
{
    (void)kind, (void)content_type, (void)transfer_encoding;
    rt_req *r = cls;
    if (r->fail_status || !key)
        return MHD_YES;
    if (filename) {
        rt_part *p = req_part(r, key);
        if (!p && off == 0)
            p = part_open(r, key, filename);
        part_write(r, p, data, size);
        return MHD_YES;
    }
    if (!r->fields)
        r->fields = json_object();
    const char *old = json_string_value(json_object_get(r->fields, key));
    size_t ol = old ? strlen(old) : 0;
    if (ol + size > 4096 || json_object_size(r->fields) > 32) {
        fail(r, 413, "too_large", "form field %s is too long", key);
        return MHD_YES;
    }
    char *v = malloc(ol + size + 1);
    if (!v)
        return MHD_NO;
    memcpy(v, old ? old : "", ol);
    memcpy(v + ol, data, size);
    v[ol + size] = 0;
    json_object_set_new(r->fields, key, json_stringn(v, ol + size));
    free(v);
    return MHD_YES;
}

static void body_start(rt_req *r)
{
    const char *ct = req_header(r, "Content-Type");
    const char *cl = req_header(r, "Content-Length");
    bool upload = r->route && (r->route->flags & R_UPLOAD);
    bool json = !ct || !strncasecmp(ct, "application/json", 16);
    long long declared = cl ? atoll(cl) : -1;
    if (upload && ct && !strncasecmp(ct, "multipart/form-data", 19)) {
        r->body = BODY_MULTIPART;
        r->pp = MHD_create_post_processor(r->conn, 64 * 1024, post_iter, r);
        if (!r->pp)
            fail(r, 400, "bad_request", "cannot read the multipart body (boundary missing?)");
    } else if (upload && !json) {
        r->body = BODY_FILE;
    } else {
        r->body = BODY_MEM;
        if (declared > RT_JSON_LIMIT)
            fail(r, 413, "too_large", "a JSON body may be at most %d bytes", RT_JSON_LIMIT);
    }
    if (upload && declared > r->app->cfg.max_upload)
        fail(r, 413, "too_large", "the upload (%lld bytes) is over the limit of %lld bytes (RTAAS_MAX_UPLOAD)",
             declared, (long long)r->app->cfg.max_upload);
}

static void body_data(rt_req *r, const char *data, size_t size)
{
    if (r->fail_status)
        return;
    switch (r->body) {
    case BODY_MULTIPART:
        if (MHD_post_process(r->pp, data, size) != MHD_YES)
            fail(r, 400, "bad_request", "malformed multipart body");
        break;
    case BODY_FILE:
        if (!r->nparts && !part_open(r, "body", NULL))
            return;
        part_write(r, &r->parts[0], data, size);
        break;
    default:
        if (r->mem_len + size > RT_JSON_LIMIT) {
            fail(r, 413, "too_large", "a JSON body may be at most %d bytes", RT_JSON_LIMIT);
            free(r->mem);
            r->mem = NULL;
            r->mem_len = 0;
            return;
        }
        char *m = realloc(r->mem, r->mem_len + size + 1);
        if (!m) {
            fail(r, 500, "internal", "out of memory");
            return;
        }
        memcpy(m + r->mem_len, data, size);
        r->mem = m;
        r->mem_len += size;
        r->mem[r->mem_len] = 0;
    }
}

/* ---- the handler ---- */

static enum MHD_Result send_resp(rt_req *r, rt_resp *o)
{
    struct MHD_Response *resp;
    if (o->fd >= 0) {
        resp = MHD_create_response_from_fd(o->fd_size, o->fd);
        o->fd = -1;
    } else {
        resp = MHD_create_response_from_buffer(o->len, o->body, MHD_RESPMEM_MUST_FREE);
        o->body = NULL;
    }
    if (!resp)
        return MHD_NO;
    if (o->ctype)
        MHD_add_response_header(resp, "Content-Type", o->ctype);
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    if (o->filename[0]) {
        char cd[200];
        snprintf(cd, sizeof cd, "attachment; filename=\"%s\"", o->filename);
        MHD_add_response_header(resp, "Content-Disposition", cd);
    }
    if (o->status == 401)
        MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    for (int i = 0; i < 4 && o->headers[i][0]; i++)
        MHD_add_response_header(resp, o->headers[i][0], o->headers[i][1]);
    r->status = o->status;
    enum MHD_Result ret = MHD_queue_response(r->conn, (unsigned)o->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result send_error(rt_req *r, int status, const char *code, const char *field, const char *msg)
{
    rt_resp o = {.fd = -1};
    reply_error(&o, status, code, field, "%s", msg);
    return send_resp(r, &o);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)version;
    rt_http *h = cls;
    rt_req *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r)
            return MHD_NO;
        *con_cls = r;
        r->app = h->app;
        r->conn = conn;
        r->method = method;
        r->url = url;
        r->t0 = rt_now();
        for (int i = 0; i < RT_MAX_PARTS; i++)
            r->parts[i].fd = -1;
        rt_new_id(r->id, sizeof r->id, "req_");
        bool path_known = false;
        char allow[64] = "";
        for (const rt_route *rt = rt_routes; rt->method; rt++) {
            char params[2][128];
            if (!match(rt->pattern, url, params))
                continue;
            path_known = true;
            size_t al = strlen(allow);
            snprintf(allow + al, sizeof allow - al, "%s%s", al ? ", " : "", rt->method);
            if (!strcmp(rt->method, method)) {
                r->route = rt;
                memcpy(r->params, params, sizeof params);
                break;
            }
        }
        if (!r->route && path_known) {
            rt_resp o = {.fd = -1};
            reply_error(&o, 405, "method_not_allowed", NULL, "this route takes %s", allow);
            o.headers[0][0] = "Allow";
            o.headers[0][1] = allow;
            return send_resp(r, &o);
        }
        if (!r->route)
            return send_error(r, 404, "not_found", NULL, "no such route");
        if (r->route->flags & R_AUTH) {
            int st = authenticate(r);
            if (st == 401)
                return send_error(r, 401, "unauthorized", NULL,
                                  "a valid API key is needed: Authorization: Bearer <key>");
            if (st)
                return send_error(r, st, st == 503 ? "unavailable" : "internal", NULL,
                                  st == 503 ? "the database cannot be reached; retry later" : "database error");
        }
        body_start(r);
        if (r->fail_status == 413)
            return send_error(r, 413, r->fail_code, NULL, r->fail_msg);
        return MHD_YES;
    }
    if (*upload_data_size) {
        body_data(r, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (r->status) /* a reply was queued already */
        return MHD_YES;
    for (int i = 0; i < r->nparts; i++)
        part_close(&r->parts[i], false);
    if (r->fail_status)
        return send_error(r, r->fail_status, r->fail_code, r->fail_field[0] ? r->fail_field : NULL, r->fail_msg);
    rt_resp o = {.status = 500, .fd = -1};
    r->route->fn(r, &o);
    if (!o.body && o.fd < 0 && o.status != 204)
        reply_error(&o, 500, "internal", NULL, "the handler gave no reply");
    enum MHD_Result ret = send_resp(r, &o);
    free(o.body);
    if (o.fd >= 0)
        close(o.fd);
    return ret;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)conn;
    rt_req *r = *con_cls;
    if (!r)
        return;
    double dt = rt_now() - r->t0;
    const char *route = r->route ? r->route->pattern : "unmatched";
    int status = r->status ? r->status : 499;
    metrics_request(r->method, route, status, dt);
    json_t *f = json_pack("{s:s,s:s,s:s,s:i,s:f}", "id", r->id, "method", r->method, "route", route, "status", status,
                          "ms", dt * 1000.0);
    if (r->tenant[0])
        json_object_set_new(f, "tenant", json_string(r->tenant));
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
        json_object_set_new(f, "aborted", json_integer(toe));
    if (r->received)
        json_object_set_new(f, "bytes_in", json_integer(r->received));
    rlog(status >= 500 ? LOG_ERROR : LOG_INFO, "request", f);
    for (int i = 0; i < r->nparts; i++)
        part_close(&r->parts[i], true);
    if (r->pp)
        MHD_destroy_post_processor(r->pp);
    json_decref(r->fields);
    free(r->mem);
    free(r);
    *con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n')
        msg[--n] = 0;
    rlog(LOG_WARN, "http", json_pack("{s:s}", "message", msg));
}

rt_http *http_start(rt_app *app, char *err, size_t n)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", app->cfg.port);
    int gai = getaddrinfo(app->cfg.listen_host, port, &hints, &ai);
    if (gai) {
        snprintf(err, n, "RTAAS_LISTEN %s: %s", app->cfg.listen_host, gai_strerror(gai));
        return NULL;
    }
    rt_http *h = calloc(1, sizeof *h);
    h->app = app;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    /* The connection memory: libmicrohttpd clears all of it between two requests on a kept-alive
     * connection, so 256 KiB cost a tenth of the server's CPU under wrk (perf: memset); 64 KiB
     * still reads uploads in 64 KiB pieces. bench/service, 10 s runs alternated: 8674 and 8373
     * req/s at 64 KiB against 7480 and 7968 at 256 KiB. */
    h->d = MHD_start_daemon(flags, (uint16_t)app->cfg.port, NULL, NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER,
                            mhd_log, NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)app->cfg.http_threads,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_CONNECTION_TIMEOUT, 300u,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
                            MHD_OPTION_CONNECTION_LIMIT, 4096u, MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
                            MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!h->d) {
        snprintf(err, n, "cannot listen on %s:%d (in use?)", app->cfg.listen_host, app->cfg.port);
        free(h);
        return NULL;
    }
    return h;
}

void http_stop(rt_http *h)
{
    if (!h)
        return;
    MHD_stop_daemon(h->d);
    free(h);
}
