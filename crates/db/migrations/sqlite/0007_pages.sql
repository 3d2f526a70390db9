-- Pages written by the staff in Markdown (PUT /api/pages/{slug}); a render job
-- turns each into HTML for the edge.
CREATE TABLE pages (
    slug          TEXT   PRIMARY KEY,
    title         TEXT   NOT NULL,
    body_markdown TEXT   NOT NULL,
    updated_at    BIGINT NOT NULL
);

-- What the load balancers serve at the edge, by path: pre-rendered pages and the
-- site's content-hashed assets, each with its precompressed copies. In the database
-- so that every load balancer, on any machine, can get them; a load balancer follows
-- the rows by updated_at. 'stale' marks a page whose source changed and whose new
-- render is on its way (served meanwhile, as stale-while-revalidate); 'gone' is a
-- tombstone: the source was deleted and followers drop the page.
CREATE TABLE edge_pages (
    path         TEXT    PRIMARY KEY,
    content_type TEXT    NOT NULL,
    etag         TEXT    NOT NULL,
    body         BLOB   NOT NULL,
    gzip         BLOB   NOT NULL,
    br           BLOB   NOT NULL,
    immutable    BIGINT  NOT NULL DEFAULT 0, -- booleans as 0 or 1 (sqlx Any, SQLite)
    stale        BIGINT  NOT NULL DEFAULT 0,
    gone         BIGINT  NOT NULL DEFAULT 0,
    updated_at   BIGINT  NOT NULL
);
CREATE INDEX edge_pages_updated ON edge_pages (updated_at);

-- A job may name what it works on: while one such job is queued, another for the
-- same key is not added (a burst of changes to a product renders it once).
ALTER TABLE jobs ADD COLUMN dedupe_key TEXT;
CREATE UNIQUE INDEX jobs_queued_key ON jobs (dedupe_key) WHERE state = 'queued';
