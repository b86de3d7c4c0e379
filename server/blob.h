/* Content-addressed blobs in PostgreSQL (tables blobs and blob_chunks): uploads, weights,
 * reports' artifacts. A blob is named by the SHA-256 of its bytes and stored once. Workers and
 * downloads read them through a local cache of verified files. */
#ifndef RT_BLOB_H
#define RT_BLOB_H

#include <stdint.h>

#include "db.h"

#define BLOB_CHUNK (1 << 20)

typedef struct rt_sha256 rt_sha256;
rt_sha256 *sha256_new(void);
void sha256_update(rt_sha256 *h, const void *data, size_t len);
/* Writes 64 lowercase hex digits and a NUL; frees h. */
void sha256_final(rt_sha256 *h, char hex[65]);
void sha256_hex(const void *data, size_t len, char hex[65]);
/* Hashes a file; -1 when it cannot be read. */
int sha256_file(const char *path, char hex[65], int64_t *size);

/* Stores the file at path (whose hash and size the caller computed) unless a blob with that
 * hash exists. Concurrent stores of the same content leave one blob. Call inside a transaction
 * (db_tx) so that the chunks commit with whatever refers to them. */
db_rc blob_store(db_conn *c, const char *path, const char *sha, int64_t size);

/* The blob as a verified file in cache_dir (named by its hash); fetched from the database when
 * missing. 0 on success, -1 (DB_UNAVAILABLE in *rc when the database is the reason). */
int blob_fetch(db *d, const char *sha, const char *cache_dir, char *path, size_t path_len, db_rc *rc);

#endif
