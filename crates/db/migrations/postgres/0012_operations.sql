-- What the /ops view reads besides the processes' own metrics (issue 26).

-- The process registry: every process (load balancers, clones, push, email,
-- workers) keeps its row fresh while it runs, so the operations view finds each
-- one's /metrics on any host. A row not seen for a while is a process gone.
CREATE TABLE processes (
    id         TEXT    PRIMARY KEY,
    role       TEXT    NOT NULL,
    -- Where its /metrics answers (a load balancer's admin address).
    addr       TEXT    NOT NULL,
    host       TEXT    NOT NULL,
    pid        BIGINT  NOT NULL,
    started_at BIGINT  NOT NULL,
    seen_at    BIGINT  NOT NULL,
    -- Starts under this id in a row (a restart after a crash counts; a start after
    -- the id was gone for a while begins again at 1).
    starts     INTEGER NOT NULL DEFAULT 1
);

-- The journey of a request: one row per hop it caused (its write, each publish,
-- each delivery and outcome, the mail, the push), by correlation id (the request
-- id). Kept for a while (BAKERY_OPS_JOURNEY_SECS), then pruned.
CREATE TABLE journey (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    correlation_id TEXT   NOT NULL,
    at             BIGINT NOT NULL,
    process        TEXT   NOT NULL,
    what           TEXT   NOT NULL,
    -- A JSON object: the message, queue, outcome, attempt...
    detail         TEXT   NOT NULL
);
CREATE INDEX journey_correlation ON journey (correlation_id, at);
CREATE INDEX journey_at ON journey (at);

-- A notification remembers the request that caused it, so its delivery on a
-- stream is a hop of that request's journey.
ALTER TABLE notifications ADD COLUMN correlation_id TEXT NOT NULL DEFAULT '';

-- A load balancer registers itself too (with the edge's least-privilege role).
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'bakery_edge') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON processes TO bakery_edge;
    END IF;
END
$$;
