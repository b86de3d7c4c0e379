/* Every SQL statement the service runs, by name: each is prepared on every pooled connection
 * (db.c), so that no statement text is built from request data. Replies that are JSON are
 * shaped here, in one column of text. */
#ifndef RT_SQL_H
#define RT_SQL_H

#define RT_JOB_JSON                                                                                                  \
    "jsonb_build_object('id', j.id, 'kind', j.kind, 'method', j.spec->>'method', 'status', j.state, "               \
    "'attempts', j.attempts, 'backbone', j.spec->'backbone', 'name', j.spec->'name', "                               \
    "'progress', jsonb_build_object('phase', j.phase, 'done', j.done, 'total', j.total, 'eta_seconds', "             \
    "  CASE WHEN j.state = 'running' AND j.done > 0 AND j.total > j.done AND j.phase_started_at IS NOT NULL "      \
    "  THEN round(extract(epoch FROM now() - j.phase_started_at) * (j.total - j.done) / j.done) END), "            \
    "'summary', j.summary, 'error', j.error, 'created_at', j.created_at, 'started_at', j.started_at, "              \
    "'finished_at', j.finished_at)"

#define RT_DS_JSON                                                                                                   \
    "(jsonb_build_object('id', d.id, 'name', d.name, 'format', d.format, 'sha256', d.sha256, "                      \
    "'labels_sha256', d.labels_sha256, 'size', d.size, 'created_at', d.created_at) || d.info)"

#define RT_BB_JSON                                                                                                   \
    "(jsonb_build_object('id', b.id, 'name', b.name, 'arch', b.arch, 'sha256', b.sha256, 'job', b.job_id, "         \
    "'created_at', b.created_at, 'status', CASE WHEN b.sha256 IS NOT NULL THEN 'ready' "                            \
    "  WHEN j.state IN ('queued', 'running') THEN 'training' ELSE coalesce(j.state, 'failed') END, "                \
    "'error', j.error) || b.meta)"

#define RT_SQL_LIST(X)                                                                                               \
    X(Q_PING, "SELECT 1")                                                                                            \
    X(Q_MIGRATIONS, "SELECT name, checksum FROM schema_migrations ORDER BY name")                                   \
    /* tenants and keys */                                                                                           \
    X(Q_TENANT_UPSERT, "INSERT INTO tenants (name) VALUES ($1) ON CONFLICT (name) DO UPDATE SET name = "             \
                       "EXCLUDED.name RETURNING id")                                                                 \
    X(Q_KEY_INSERT, "INSERT INTO api_keys (tenant_id, key_hash, prefix) VALUES ($1, $2, $3)")                       \
    X(Q_KEY_LOOKUP, "SELECT k.tenant_id, t.name, k.key_hash FROM api_keys k JOIN tenants t ON t.id = k.tenant_id "   \
                    "WHERE k.key_hash = $1 AND k.revoked_at IS NULL")                                                \
    /* blobs */                                                                                                      \
    /* DO UPDATE (not NOTHING) row-locks an existing blob until the caller commits: a concurrent  \
     * garbage collection of it waits for the new reference */                                     \
    X(Q_BLOB_CLAIM, "INSERT INTO blobs AS b (sha256, size) VALUES ($1, $2) ON CONFLICT (sha256) DO UPDATE "          \
                    "SET size = b.size RETURNING (xmax = 0)")                                                        \
    X(Q_BLOB_GC, "DELETE FROM blobs b WHERE b.sha256 IN ($1, $2) "                                                   \
                 "AND NOT EXISTS (SELECT 1 FROM datasets WHERE sha256 = b.sha256 OR labels_sha256 = b.sha256) "     \
                 "AND NOT EXISTS (SELECT 1 FROM backbones WHERE sha256 = b.sha256) "                                \
                 "AND NOT EXISTS (SELECT 1 FROM artifacts WHERE sha256 = b.sha256) "                                \
                 "AND NOT EXISTS (SELECT 1 FROM jobs WHERE checkpoint = b.sha256) RETURNING sha256")    \
    X(Q_BLOB_CHUNK_PUT, "INSERT INTO blob_chunks (sha256, seq, data) VALUES ($1, $2, $3)")                          \
    X(Q_BLOB_CHUNK_GET, "SELECT data FROM blob_chunks WHERE sha256 = $1 AND seq = $2")                              \
    X(Q_BLOB_SIZE, "SELECT size FROM blobs WHERE sha256 = $1")                                                       \
    /* datasets */                                                                                                   \
    X(Q_DS_INSERT, "INSERT INTO datasets AS d (id, tenant_id, name, format, sha256, labels_sha256, size, info) "     \
                   "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING " RT_DS_JSON "::text")                        \
    X(Q_DS_LIST, "SELECT " RT_DS_JSON "::text FROM datasets d WHERE d.tenant_id = $1 ORDER BY d.created_at DESC")  \
    X(Q_DS_GET, "SELECT " RT_DS_JSON "::text FROM datasets d WHERE d.tenant_id = $1 AND d.id = $2")                 \
    X(Q_DS_RESOLVE, "SELECT format, sha256, labels_sha256, info::text FROM datasets WHERE tenant_id = $1 AND id = $2") \
    X(Q_DS_IN_USE, "SELECT id FROM jobs WHERE tenant_id = $1 AND state IN ('queued', 'running') AND "               \
                   "(spec->'dataset'->>'id' = $2 OR spec->'test'->>'id' = $2) LIMIT 1")                             \
    X(Q_DS_DELETE, "DELETE FROM datasets WHERE tenant_id = $1 AND id = $2 RETURNING id, sha256, labels_sha256")                            \
    /* backbones */                                                                                                  \
    X(Q_BB_INSERT, "INSERT INTO backbones (id, tenant_id, name, arch, meta, sha256, job_id) "                        \
                   "VALUES ($1, $2, $3, $4, $5, $6, $7)")                                                            \
    X(Q_BB_LIST, "SELECT " RT_BB_JSON "::text FROM backbones b LEFT JOIN jobs j ON j.id = b.job_id "                \
                 "WHERE b.tenant_id = $1 ORDER BY b.created_at DESC")                                                \
    X(Q_BB_GET, "SELECT " RT_BB_JSON "::text FROM backbones b LEFT JOIN jobs j ON j.id = b.job_id "                 \
                "WHERE b.tenant_id = $1 AND b.id = $2")                                                              \
    X(Q_BB_RESOLVE, "SELECT arch, meta::text, sha256 FROM backbones WHERE tenant_id = $1 AND id = $2")              \
    X(Q_BB_IN_USE, "SELECT id FROM jobs WHERE tenant_id = $1 AND state IN ('queued', 'running') AND "               \
                   "(spec->>'backbone' = $2 OR id = (SELECT job_id FROM backbones WHERE id = $2)) LIMIT 1")        \
    X(Q_BB_DELETE, "DELETE FROM backbones WHERE tenant_id = $1 AND id = $2 RETURNING id, sha256, NULL::text")                           \
    X(Q_BB_SET_WEIGHTS, "UPDATE backbones SET sha256 = $2, meta = meta || $3::jsonb WHERE job_id = $1")            \
    /* jobs */                                                                                                       \
    X(Q_JOB_INSERT, "INSERT INTO jobs (id, tenant_id, kind, spec, max_attempts) VALUES ($1, $2, $3, $4, $5)")       \
    X(Q_JOB_NOTIFY, "SELECT pg_notify('rtaas_jobs', $1)")                                                           \
    X(Q_JOB_LIST, "SELECT " RT_JOB_JSON "::text FROM jobs j WHERE j.tenant_id = $1 AND "                            \
                  "($2::text IS NULL OR j.state = $2) AND ($3::text IS NULL OR j.kind = $3) "                        \
                  "ORDER BY j.created_at DESC LIMIT 1000")                                                           \
    X(Q_JOB_GET, "SELECT " RT_JOB_JSON "::text FROM jobs j WHERE j.tenant_id = $1 AND j.id = $2")                   \
    X(Q_JOB_STATE, "SELECT state FROM jobs WHERE tenant_id = $1 AND id = $2")                                       \
    X(Q_JOB_CANCEL, "UPDATE jobs SET cancel_requested = true, "                                                      \
                    "state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END, "                          \
                    "finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END "                     \
                    "WHERE tenant_id = $1 AND id = $2 AND state IN ('queued', 'running') RETURNING state")          \
    X(Q_JOB_REPORT, "SELECT state, report::text, spec::text FROM jobs WHERE tenant_id = $1 AND id = $2")            \
    X(Q_ARTIFACT_GET, "SELECT j.state, a.sha256, a.size, a.content_type FROM jobs j LEFT JOIN artifacts a "         \
                      "ON a.job_id = j.id AND a.name = $3 WHERE j.tenant_id = $1 AND j.id = $2")                    \
    X(Q_ARTIFACT_PUT, "INSERT INTO artifacts (job_id, name, sha256, size, content_type) VALUES ($1, $2, $3, $4, $5) " \
                      "ON CONFLICT (job_id, name) DO UPDATE SET sha256 = EXCLUDED.sha256, size = EXCLUDED.size, "   \
                      "content_type = EXCLUDED.content_type")                                                        \
    /* the queue */                                                                                                  \
    X(Q_JOB_EXPIRE, "UPDATE jobs SET state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'failed' END, "       \
                    "error = CASE WHEN cancel_requested THEN error ELSE 'the worker running it was lost ' || "       \
                    "attempts || ' times' END, finished_at = now(), lease_until = NULL "                            \
                    "WHERE state = 'running' AND lease_until < now() AND (attempts >= max_attempts OR "             \
                    "cancel_requested) RETURNING id")                                                                \
    X(Q_JOB_CLAIM, "UPDATE jobs SET state = 'running', attempts = attempts + 1, worker = $1, "                       \
                   "lease_until = now() + make_interval(secs => $2::int), heartbeat_at = now(), "                   \
                   "started_at = coalesce(started_at, now()) WHERE id = (SELECT id FROM jobs WHERE "                \
                   "(state = 'queued' OR (state = 'running' AND lease_until < now())) AND NOT cancel_requested "    \
                   "ORDER BY created_at FOR UPDATE SKIP LOCKED LIMIT 1) "                                           \
                   "RETURNING id, tenant_id, kind, spec::text, attempts, checkpoint, "                              \
                   "extract(epoch FROM now() - created_at)")                                                         \
    X(Q_JOB_HEARTBEAT, "UPDATE jobs SET lease_until = now() + make_interval(secs => $3::int), heartbeat_at = now(), " \
                       "phase_started_at = CASE WHEN phase IS DISTINCT FROM $4 THEN now() ELSE phase_started_at END, " \
                       "phase = $4, done = $5, total = $6 WHERE id = $1 AND worker = $2 AND state = 'running' "     \
                       "RETURNING cancel_requested")                                                                 \
    X(Q_JOB_FINISH, "UPDATE jobs SET state = $3, error = $4, report = $5::jsonb, summary = $6::jsonb, "             \
                    "phase = CASE WHEN $3 = 'succeeded' THEN 'done' ELSE phase END, "                               \
                    "finished_at = now(), lease_until = NULL WHERE id = $1 AND worker = $2 AND state = 'running' "  \
                    "RETURNING id")                                                                                  \
    X(Q_JOB_REQUEUE, "UPDATE jobs SET state = 'queued', worker = NULL, lease_until = NULL, "                         \
                     "attempts = greatest(attempts - 1, 0) WHERE id = $1 AND worker = $2 AND state = 'running'")    \
    X(Q_JOB_SET_CHECKPOINT, "UPDATE jobs SET checkpoint = $3 WHERE id = $1 AND worker = $2")                         \
    X(Q_JOB_HOST_WORKERS, "SELECT DISTINCT worker FROM jobs WHERE state = 'running' AND worker LIKE $1")          \
    X(Q_JOB_RELEASE, "UPDATE jobs SET lease_until = now() - interval '1 second' WHERE state = 'running' "           \
                     "AND worker = $1 RETURNING id")                                                                 \
    X(Q_JOBS_BY_STATE, "SELECT state, count(*) FROM jobs GROUP BY state")

#define RT_SQL_ENUM(id, text) id,
typedef enum { RT_SQL_LIST(RT_SQL_ENUM) RT_SQL_COUNT } rt_sql_id;
#undef RT_SQL_ENUM

typedef struct rt_sql_stmt {
    const char *name;
    const char *sql;
} rt_sql_stmt;

extern const rt_sql_stmt rt_sql[RT_SQL_COUNT];

#endif
