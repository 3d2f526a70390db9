-- A render stores its page only if it read its source after whatever wrote the
-- page last (a slower render of older data changes nothing), and a tombstone counts
-- as read when the source was found deleted (a render that read the product just
-- before its deletion cannot bring the page back): when the source was read.
ALTER TABLE edge_pages ADD COLUMN source_read_at BIGINT NOT NULL DEFAULT 0;
