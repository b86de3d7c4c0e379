/* The service's configuration, from the environment (see README, Configuration). */
#ifndef RT_CONFIG_H
#define RT_CONFIG_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

typedef struct rt_config {
    char listen_host[64];      /* RTAAS_LISTEN host:port, default 127.0.0.1:8080 */
    int port;
    char data_dir[3072];       /* RTAAS_DATA_DIR: private PostgreSQL, temp uploads, work dirs, blob cache */
    char database_url[2048];   /* RTAAS_DATABASE_URL; empty: the private cluster */
    int64_t max_upload;        /* RTAAS_MAX_UPLOAD bytes (default 4 GiB; suffixes K, M, G) */
    int http_threads;          /* RTAAS_HTTP_THREADS (default 4) */
    char devices[256];         /* RTAAS_DEVICES: "cpu", "cuda:0,cuda:1", or "" (no worker) */
    int lease_seconds;         /* RTAAS_LEASE_SECONDS: a job's lease; renewed every lease/4 (default 60) */
    int max_attempts;          /* RTAAS_MAX_ATTEMPTS per job (default 3) */
    int db_pool;               /* RTAAS_DB_POOL connections (default http_threads + devices + 2) */
} rt_config;

/* Fills c from the environment; on a bad value returns -1 with a message in err. */
int config_load(rt_config *c, char *err, size_t err_len);

/* "4G", "512M", "1024" -> bytes; -1 when not a size. */
int64_t config_parse_size(const char *s);

#endif
