-- Bytes each user stores, for the per-user storage quota: a dataset's files and a job's published adapter.
ALTER TABLE dataset_jobs ADD COLUMN size_bytes bigint CHECK (size_bytes >= 0);
ALTER TABLE training_jobs ADD COLUMN adapter_bytes bigint CHECK (adapter_bytes >= 0);
-- Retention removes a finished job's checkpoints once; this marks the job as done so it is not visited again.
ALTER TABLE training_jobs ADD COLUMN checkpoints_removed_at timestamptz;
CREATE INDEX training_jobs_retention ON training_jobs (finished_at)
    WHERE finished_at IS NOT NULL AND checkpoints_removed_at IS NULL;
