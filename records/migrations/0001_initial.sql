-- Users, training jobs and their events: Clara's system of record.
CREATE TABLE users (
    id            bigserial PRIMARY KEY,
    username      text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('admin', 'trainer', 'analyst')),
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE training_jobs (
    id               uuid PRIMARY KEY,
    job_name         text NOT NULL,
    trainer_type     text NOT NULL,
    status           text NOT NULL CHECK (status IN ('pending', 'queued', 'running', 'completed', 'failed', 'cancelled')),
    base_model       text NOT NULL,
    dataset_path     text NOT NULL,
    hyperparameters  jsonb NOT NULL,
    metadata         jsonb NOT NULL DEFAULT '{}',
    owner_id         bigint NOT NULL REFERENCES users (id),
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    progress         jsonb NOT NULL DEFAULT '{}',
    metrics          jsonb NOT NULL DEFAULT '{}',
    adapter_path     text,
    error_code       text,
    error_message    text,
    attempts         integer NOT NULL DEFAULT 0,
    worker           text,
    task_id          text,
    cancel_requested boolean NOT NULL DEFAULT false,
    -- The running attempt owns the job while its lease is fresh; a second delivery respects it.
    lease_owner      text,
    lease_expires_at timestamptz
);
CREATE INDEX training_jobs_listing ON training_jobs (created_at DESC, id DESC);
CREATE INDEX training_jobs_owner_listing ON training_jobs (owner_id, created_at DESC, id DESC);
CREATE INDEX training_jobs_active ON training_jobs (status) WHERE status IN ('pending', 'queued', 'running');

CREATE TABLE job_events (
    id         bigserial PRIMARY KEY,
    job_id     uuid NOT NULL REFERENCES training_jobs (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    level      text NOT NULL CHECK (level IN ('info', 'warning', 'error')),
    type       text NOT NULL CHECK (type IN ('status', 'progress', 'log')),
    message    text NOT NULL,
    data       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX job_events_by_job ON job_events (job_id, id);
