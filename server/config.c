#include "config.h"

#include <ctype.h>
#include <errno.h>
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
    const char *url = getenv("RTAAS_DATABASE_URL");
    if (url && snprintf(c->database_url, sizeof c->database_url, "%s", url) >= (int)sizeof c->database_url) {
        snprintf(err, n, "RTAAS_DATABASE_URL is too long");
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
