-- The request that queued a job (see PostgreSQL's 0015).
ALTER TABLE jobs ADD COLUMN correlation_id VARCHAR(255);
