-- What the /ops view reads besides the processes' own metrics (issue 26); see the
-- PostgreSQL migration of the same number for what each column means.
CREATE TABLE processes (
    id         TEXT    PRIMARY KEY,
    role       TEXT    NOT NULL,
    addr       TEXT    NOT NULL,
    host       TEXT    NOT NULL,
    pid        INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    seen_at    INTEGER NOT NULL,
    starts     INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE journey (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    correlation_id TEXT    NOT NULL,
    at             INTEGER NOT NULL,
    process        TEXT    NOT NULL,
    what           TEXT    NOT NULL,
    detail         TEXT    NOT NULL
);
CREATE INDEX journey_correlation ON journey (correlation_id, at);
CREATE INDEX journey_at ON journey (at);

-- A notification remembers the request that caused it, so its delivery on a
-- stream is a hop of that request's journey.
ALTER TABLE notifications ADD COLUMN correlation_id TEXT NOT NULL DEFAULT '';
