-- Dataset jobs (builds and uploads), their events, and training on a dataset by id.
CREATE TABLE dataset_jobs (
    id               uuid PRIMARY KEY,
    name             text NOT NULL,
    description      text NOT NULL DEFAULT '',
    kind             text NOT NULL CHECK (kind IN ('build', 'upload')),
    status           text NOT NULL CHECK (status IN ('pending', 'queued', 'running', 'completed', 'failed', 'cancelled')),
    spec             jsonb NOT NULL,
    owner_id         bigint NOT NULL REFERENCES users (id),
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    progress         jsonb NOT NULL DEFAULT '{}',
    metrics          jsonb NOT NULL DEFAULT '{}',
    manifest         jsonb,
    storage_path     text,
    error_code       text,
    error_message    text,
    attempts         integer NOT NULL DEFAULT 0,
    worker           text,
    task_id          text,
    cancel_requested boolean NOT NULL DEFAULT false,
    lease_owner      text,
    lease_expires_at timestamptz,
    deleted_at       timestamptz
);
CREATE INDEX dataset_jobs_listing ON dataset_jobs (created_at DESC, id DESC);
CREATE INDEX dataset_jobs_owner_listing ON dataset_jobs (owner_id, created_at DESC, id DESC);

CREATE TABLE dataset_events (
    id         bigserial PRIMARY KEY,
    job_id     uuid NOT NULL REFERENCES dataset_jobs (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    level      text NOT NULL CHECK (level IN ('info', 'warning', 'error')),
    type       text NOT NULL CHECK (type IN ('status', 'progress', 'log')),
    message    text NOT NULL,
    data       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX dataset_events_by_job ON dataset_events (job_id, id);

ALTER TABLE training_jobs ADD COLUMN dataset_id uuid REFERENCES dataset_jobs (id);
ALTER TABLE training_jobs ADD COLUMN validation_path text;
CREATE INDEX training_jobs_by_dataset ON training_jobs (dataset_id) WHERE dataset_id IS NOT NULL;
