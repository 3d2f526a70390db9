-- Jobs done in the back by workers. The row is the job's truth: a worker leases it
-- (lease_until, kept alive by heartbeats) and every change it makes is fenced by the
-- attempt number it claimed, so a worker that lost its lease cannot finish the job.
CREATE TABLE jobs (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind          TEXT    NOT NULL,
    owner_id      BIGINT  REFERENCES users (id) ON DELETE SET NULL,
    state         TEXT    NOT NULL DEFAULT 'queued',
    progress      INTEGER NOT NULL DEFAULT 0,
    attempts      INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL,
    payload       TEXT    NOT NULL,
    result        TEXT,
    error         TEXT,
    -- Not to be run before this (a retry's backoff).
    run_at        BIGINT  NOT NULL,
    -- When a message was last sent for this run: the reaper dispatches due jobs
    -- that have none.
    dispatched_at BIGINT,
    worker        TEXT,
    lease_until   BIGINT  NOT NULL DEFAULT 0,
    created_at    BIGINT  NOT NULL,
    started_at    BIGINT,
    finished_at   BIGINT
);
CREATE INDEX jobs_state ON jobs (state, run_at);
CREATE INDEX jobs_owner ON jobs (owner_id, id);

-- An image job attaches at most one image, whichever attempt finishes it.
ALTER TABLE product_images ADD COLUMN job_id BIGINT;
CREATE UNIQUE INDEX product_images_job ON product_images (job_id);
