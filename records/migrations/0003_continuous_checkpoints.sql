-- Continuous jobs name the job they continue; checkpoints of a job are listed here once complete on disk.
ALTER TABLE training_jobs ADD COLUMN parent_job_id uuid REFERENCES training_jobs (id);
CREATE INDEX training_jobs_children ON training_jobs (parent_job_id) WHERE parent_job_id IS NOT NULL;

CREATE TABLE training_checkpoints (
    job_id     uuid NOT NULL REFERENCES training_jobs (id) ON DELETE CASCADE,
    step       integer NOT NULL CHECK (step >= 0),
    name       text NOT NULL,
    path       text NOT NULL,
    created_at timestamptz NOT NULL,
    metrics    jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (job_id, step)
);
