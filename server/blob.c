#include "blob.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

struct rt_sha256 {
    EVP_MD_CTX *ctx;
};

rt_sha256 *sha256_new(void)
{
    rt_sha256 *h = malloc(sizeof *h);
    if (!h)
        return NULL;
    h->ctx = EVP_MD_CTX_new();
    if (!h->ctx || !EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL)) {
        EVP_MD_CTX_free(h->ctx);
        free(h);
        return NULL;
    }
    return h;
}

void sha256_update(rt_sha256 *h, const void *data, size_t len) { EVP_DigestUpdate(h->ctx, data, len); }

void sha256_final(rt_sha256 *h, char hex[65])
{
    unsigned char md[32];
    unsigned int n = 0;
    EVP_DigestFinal_ex(h->ctx, md, &n);
    for (int i = 0; i < 32; i++)
        sprintf(hex + 2 * i, "%02x", md[i]);
    EVP_MD_CTX_free(h->ctx);
    free(h);
}

void sha256_hex(const void *data, size_t len, char hex[65])
{
    rt_sha256 *h = sha256_new();
    sha256_update(h, data, len);
    sha256_final(h, hex);
}

int sha256_file(const char *path, char hex[65], int64_t *size)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    rt_sha256 *h = sha256_new();
    char *buf = malloc(BLOB_CHUNK);
    int64_t total = 0;
    ssize_t got;
    while (buf && (got = read(fd, buf, BLOB_CHUNK)) > 0) {
        sha256_update(h, buf, (size_t)got);
        total += got;
    }
    close(fd);
    sha256_final(h, hex);
    if (!buf)
        return -1;
    free(buf);
    if (size)
        *size = total;
    return 0;
}

static ssize_t read_full(int fd, char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

db_rc blob_store(db_conn *c, const char *path, const char *sha, int64_t size)
{
    char size_s[32];
    snprintf(size_s, sizeof size_s, "%" PRId64, size);
    const char *p[2] = {sha, size_s};
    db_rc rc;
    PGresult *r = db_exec(c, Q_BLOB_CLAIM, 2, p, &rc);
    bool fresh = rc == DB_OK && PQntuples(r) == 1 && !strcmp(PQgetvalue(r, 0, 0), "t");
    PQclear(r);
    if (rc != DB_OK || !fresh)
        return rc; /* an error, or the content is stored already */
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return DB_FAILED;
    char *buf = malloc(BLOB_CHUNK);
    int64_t seq = 0, total = 0;
    ssize_t got;
    while (buf && rc == DB_OK && (got = read_full(fd, buf, BLOB_CHUNK)) > 0) {
        char seq_s[24];
        snprintf(seq_s, sizeof seq_s, "%" PRId64, seq++);
        const char *v[3] = {sha, seq_s, buf};
        const int len[3] = {0, 0, (int)got}, fmt[3] = {0, 0, 1};
        PQclear(db_exec_bin(c, Q_BLOB_CHUNK_PUT, 3, v, len, fmt, &rc));
        total += got;
    }
    close(fd);
    free(buf);
    if (rc == DB_OK && (!buf || total != size))
        rc = DB_FAILED; /* the file changed under us: refuse to record a wrong blob */
    return rc;
}

int blob_fetch(db *d, const char *sha, const char *cache_dir, char *path, size_t n, db_rc *rc_out)
{
    db_rc rc = DB_OK;
    if (rc_out)
        *rc_out = DB_OK;
    if (strlen(sha) != 64 || strspn(sha, "0123456789abcdef") != 64)
        return -1;
    snprintf(path, n, "%s/%s", cache_dir, sha);
    if (access(path, R_OK) == 0)
        return 0;
    mkdir(cache_dir, 0700);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s/.%s.XXXXXX", cache_dir, sha);
    int fd = mkstemp(tmp);
    if (fd < 0)
        return -1;
    db_conn *c = db_get(d);
    if (!c) {
        close(fd);
        unlink(tmp);
        if (rc_out)
            *rc_out = DB_UNAVAILABLE;
        return -1;
    }
    rt_sha256 *h = sha256_new();
    int ok = 0;
    for (int64_t seq = 0;; seq++) {
        char seq_s[24];
        snprintf(seq_s, sizeof seq_s, "%" PRId64, seq);
        const char *v[2] = {sha, seq_s};
        PGresult *r = PQexecPrepared(c->pg, rt_sql[Q_BLOB_CHUNK_GET].name, 2, v, NULL, NULL, 1);
        rc = db_result_rc(c, r);
        if (rc != DB_OK || PQntuples(r) == 0) {
            ok = rc == DB_OK && seq > 0 ? 1 : rc == DB_OK ? 2 : 0; /* 2: no chunk 0 (maybe empty) */
            PQclear(r);
            break;
        }
        size_t len = (size_t)PQgetlength(r, 0, 0);
        const char *data = PQgetvalue(r, 0, 0);
        sha256_update(h, data, len);
        bool wrote = write(fd, data, len) == (ssize_t)len;
        PQclear(r);
        if (!wrote)
            break;
    }
    db_put(d, c);
    close(fd);
    char got[65];
    sha256_final(h, got);
    if (ok && strcmp(got, sha) == 0 && rename(tmp, path) == 0)
        return 0;
    unlink(tmp);
    if (rc_out)
        *rc_out = rc;
    if (ok)
        rlog(LOG_ERROR, "blob_corrupt", json_pack("{s:s,s:s}", "sha256", sha, "got", got));
    return -1;
}
