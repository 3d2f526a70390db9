-- The request that queued a job: its run and its end carry it, whichever message
-- woke the worker (concurrent requests' jobs share one transaction and one
-- dispatch message).
ALTER TABLE jobs ADD COLUMN correlation_id TEXT;
