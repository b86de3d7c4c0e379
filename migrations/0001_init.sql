-- rtaas schema: tenants and keys, content-addressed blobs, datasets, backbones, jobs and
-- their artifacts. Every user-visible row carries its tenant; every query filters by it.

CREATE TABLE tenants (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          bigserial PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    key_hash    bytea NOT NULL UNIQUE,          -- SHA-256 of the key; the key itself is never stored
    prefix      text NOT NULL,                  -- the first characters, to tell keys apart in listings
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Blobs are stored once per content (SHA-256, hex), in chunks of up to 1 MiB so that no
-- single value is large and any worker host can stream them.
CREATE TABLE blobs (
    sha256      text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size        bigint NOT NULL CHECK (size >= 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE blob_chunks (
    sha256      text NOT NULL REFERENCES blobs(sha256) ON DELETE CASCADE,
    seq         integer NOT NULL CHECK (seq >= 0),
    data        bytea NOT NULL,
    PRIMARY KEY (sha256, seq)
);
-- uploads are mostly compressed or random-looking: storing them uncompressed saves the CPU
ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE datasets (
    id          text PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name        text NOT NULL,
    format      text NOT NULL,
    sha256      text NOT NULL REFERENCES blobs(sha256),
    labels_sha256 text REFERENCES blobs(sha256), -- the labels file of two-file formats (IDX, npy)
    size        bigint NOT NULL,
    info        jsonb NOT NULL,                 -- classes, counts per class, image shape, splits
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX datasets_tenant ON datasets (tenant_id, created_at);

CREATE TABLE jobs (
    id            text PRIMARY KEY,
    tenant_id     bigint NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('transfer', 'backbone')),
    spec          jsonb NOT NULL,               -- the request as accepted (ids, not files)
    state         text NOT NULL DEFAULT 'queued'
                  CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts      integer NOT NULL DEFAULT 0,
    max_attempts  integer NOT NULL DEFAULT 3,
    cancel_requested boolean NOT NULL DEFAULT false,
    worker        text,
    lease_until   timestamptz,
    heartbeat_at  timestamptz,
    phase         text,
    phase_started_at timestamptz,
    done          bigint NOT NULL DEFAULT 0,
    total         bigint NOT NULL DEFAULT 0,
    error         text,
    summary       jsonb,                        -- headline metrics, copied from the report
    report        jsonb,
    checkpoint    text REFERENCES blobs(sha256), -- the last training checkpoint, for a resumed attempt
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz
);
CREATE INDEX jobs_tenant ON jobs (tenant_id, created_at);
CREATE INDEX jobs_claimable ON jobs (created_at) WHERE state IN ('queued', 'running');

CREATE TABLE backbones (
    id          text PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name        text NOT NULL,
    arch        text NOT NULL,
    meta        jsonb NOT NULL,                 -- mean, std, input size, eps trained at, classes
    sha256      text REFERENCES blobs(sha256),  -- NULL until a training job has produced it
    job_id      text REFERENCES jobs(id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX backbones_tenant ON backbones (tenant_id, created_at);

-- Files a job produced: report.json, head.safetensors, model.safetensors, gradients.png,
-- gradients/NNNN.png.
CREATE TABLE artifacts (
    job_id        text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    name          text NOT NULL,
    sha256        text NOT NULL REFERENCES blobs(sha256),
    size          bigint NOT NULL,
    content_type  text NOT NULL,
    PRIMARY KEY (job_id, name)
);
