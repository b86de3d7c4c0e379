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
    char database_url[2048];   /* RTAAS_DATABASE_URL or the file RTAAS_DATABASE_URL_FILE names; empty: the
                                * private cluster */
    char database_password[1024]; /* RTAAS_DATABASE_PASSWORD_FILE's content, overriding the URL's password;
                                   * empty: none (the URL's, ~/.pgpass or PGPASSWORD) */
    int64_t max_upload;        /* RTAAS_MAX_UPLOAD bytes (default 4 GiB; suffixes K, M, G) */
    int http_threads;          /* RTAAS_HTTP_THREADS (default 4) */
    char devices[256];         /* RTAAS_DEVICES: "cpu", "cuda:0,cuda:1", or "" (no worker) */
    int lease_seconds;         /* RTAAS_LEASE_SECONDS: a job's lease; renewed every lease/4 (default 60) */
    int max_attempts;          /* RTAAS_MAX_ATTEMPTS per job (default 3) */
    int db_pool;               /* RTAAS_DB_POOL connections (default http_threads + devices + 2) */
    unsigned char signing_key[1024]; /* RTAAS_SIGNING_KEY or the file RTAAS_SIGNING_KEY_FILE names: the HMAC
                                      * key of download links (bytes, at least RT_SIGNING_KEY_MIN) */
    size_t signing_key_len;    /* 0: none given (serve makes a random one) */
} rt_config;

#define RT_SIGNING_KEY_MIN 16

/* Fills c from the environment, reading the files that the *_FILE variables name (their
 * trailing newlines stripped: secrets mounted by Docker or Kubernetes); on a bad value, or a
 * file that cannot be read, returns -1 with a message in err. */
int config_load(rt_config *c, char *err, size_t err_len);

/* "4G", "512M", "1024" -> bytes; -1 when not a size. */
int64_t config_parse_size(const char *s);

#endif
