#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int64_t config_parse_size(const char *s)
{
    if (!s || !isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    int shift = 0;
    switch (toupper((unsigned char)*end)) {
    case 'K': shift = 10; end++; break;
    case 'M': shift = 20; end++; break;
    case 'G': shift = 30; end++; break;
    case 'T': shift = 40; end++; break;
    }
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end || v > ((unsigned long long)INT64_MAX >> shift))
        return -1;
    return (int64_t)(v << shift);
}

static int env_int(const char *name, int def, int lo, int hi, int *out, char *err, size_t n)
{
    const char *v = getenv(name);
    if (!v || !*v) {
        *out = def;
        return 0;
    }
    char *end;
    long x = strtol(v, &end, 10);
    if (*end || x < lo || x > hi) {
        snprintf(err, n, "%s=%s: expected an integer in [%d, %d]", name, v, lo, hi);
        return -1;
    }
    *out = (int)x;
    return 0;
}

/* A secret from the variable `name` (NULL: none) or from the file that the variable `fname`
 * names, not both: at most cap - 1 bytes into out, NUL-terminated, trailing newlines stripped
 * (`echo x > file` writes one); *len its length, 0 when neither is set. A text secret may not
 * hold a NUL byte. A file named but unreadable or empty is an error: starting with no secret,
 * or the wrong one, fails later and more obscurely. */
static int env_secret(const char *name, const char *fname, bool text, char *out, size_t cap, size_t *len, char *err,
                      size_t n)
{
    const char *v = name ? getenv(name) : NULL, *path = getenv(fname);
    *len = 0;
    out[0] = 0;
    if (v && *v && path && *path) {
        snprintf(err, n, "%s and %s are both set: give one", name, fname);
        return -1;
    }
    if (v && *v) {
        size_t l = strlen(v);
        if (l >= cap) {
            snprintf(err, n, "%s is too long (at most %zu bytes)", name, cap - 1);
            return -1;
        }
        memcpy(out, v, l + 1);
        *len = l;
        return 0;
    }
    if (!path || !*path)
        return 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, n, "%s=%s: cannot read it: %s", fname, path, strerror(errno));
        return -1;
    }
    size_t got = fread(out, 1, cap, f);
    int read_errno = ferror(f) ? errno : 0;
    fclose(f);
    if (read_errno) {
        snprintf(err, n, "%s=%s: cannot read it: %s", fname, path, strerror(read_errno));
        return -1;
    }
    if (got >= cap) {
        snprintf(err, n, "%s=%s: the file is too long (at most %zu bytes)", fname, path, cap - 1);
        return -1;
    }
    while (got && (out[got - 1] == '\n' || out[got - 1] == '\r'))
        got--;
    out[got] = 0;
    if (!got) {
        snprintf(err, n, "%s=%s: the file is empty", fname, path);
        return -1;
    }
    if (text && memchr(out, 0, got)) {
        snprintf(err, n, "%s=%s: the file holds a NUL byte", fname, path);
        return -1;
    }
    *len = got;
    return 0;
}

int config_load(rt_config *c, char *err, size_t n)
{
    memset(c, 0, sizeof *c);
    const char *listen = getenv("RTAAS_LISTEN");
    if (!listen || !*listen)
        listen = "127.0.0.1:8080";
    const char *colon = strrchr(listen, ':');
    char *end;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || *end || port < 0 || port > 65535 || (size_t)(colon - listen) >= sizeof c->listen_host) {
        snprintf(err, n, "RTAAS_LISTEN=%s: expected host:port", listen);
        return -1;
    }
    memcpy(c->listen_host, listen, (size_t)(colon - listen));
    if (!c->listen_host[0])
        strcpy(c->listen_host, "0.0.0.0");
    c->port = (int)port;

    const char *dir = getenv("RTAAS_DATA_DIR");
    if (!dir || !*dir)
        dir = "rtaas-data";
    if (snprintf(c->data_dir, sizeof c->data_dir, "%s", dir) >= (int)sizeof c->data_dir) {
        snprintf(err, n, "RTAAS_DATA_DIR is too long");
        return -1;
    }
    size_t len;
    if (env_secret("RTAAS_DATABASE_URL", "RTAAS_DATABASE_URL_FILE", true, c->database_url, sizeof c->database_url,
                   &len, err, n) ||
        env_secret(NULL, "RTAAS_DATABASE_PASSWORD_FILE", true, c->database_password, sizeof c->database_password,
                   &len, err, n))
        return -1;
    if (c->database_password[0] && !c->database_url[0]) {
        snprintf(err, n, "RTAAS_DATABASE_PASSWORD_FILE is set but RTAAS_DATABASE_URL(_FILE) is not: the private "
                         "cluster takes no password");
        return -1;
    }
    if (env_secret("RTAAS_SIGNING_KEY", "RTAAS_SIGNING_KEY_FILE", false, (char *)c->signing_key,
                   sizeof c->signing_key, &c->signing_key_len, err, n))
        return -1;
    if (c->signing_key_len && c->signing_key_len < RT_SIGNING_KEY_MIN) {
        snprintf(err, n, "RTAAS_SIGNING_KEY(_FILE): the key is %zu bytes; give at least %d (e.g. openssl rand -hex 32)",
                 c->signing_key_len, RT_SIGNING_KEY_MIN);
        return -1;
    }
    const char *mu = getenv("RTAAS_MAX_UPLOAD");
    c->max_upload = mu && *mu ? config_parse_size(mu) : (int64_t)4 << 30;
    if (c->max_upload <= 0) {
        snprintf(err, n, "RTAAS_MAX_UPLOAD=%s: expected a size such as 4G or 500M", mu);
        return -1;
    }
    const char *dev = getenv("RTAAS_DEVICES");
    snprintf(c->devices, sizeof c->devices, "%s", dev ? dev : "cpu");
    if (env_int("RTAAS_HTTP_THREADS", 4, 1, 256, &c->http_threads, err, n) ||
        env_int("RTAAS_LEASE_SECONDS", 60, 2, 86400, &c->lease_seconds, err, n) ||
        env_int("RTAAS_MAX_ATTEMPTS", 3, 1, 100, &c->max_attempts, err, n))
        return -1;
    int ndev = 0;
    for (const char *p = c->devices; *p; p++)
        ndev += *p == ',';
    ndev += c->devices[0] != 0;
    if (env_int("RTAAS_DB_POOL", c->http_threads + ndev + 2, 1, 1000, &c->db_pool, err, n))
        return -1;
    return 0;
}
