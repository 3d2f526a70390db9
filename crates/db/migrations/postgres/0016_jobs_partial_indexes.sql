-- A job's row changes state twice (claimed, ended) and each change writes a new
-- version into every index of the table (the state is indexed: no HOT update). The
-- indexes now hold only the rows their readers look for: `jobs_state` the queued and
-- running jobs (the reaper's and the dispatcher's), `jobs_owner` the jobs someone
-- owns (a user's deletion). An ended job, and a job nobody owns, costs one index
-- entry fewer per version: six per job instead of ten, for a bulk producer's jobs.
DROP INDEX jobs_state;
CREATE INDEX jobs_state ON jobs (state, run_at) WHERE state IN ('queued', 'running');
DROP INDEX jobs_owner;
CREATE INDEX jobs_owner ON jobs (owner_id, id) WHERE owner_id IS NOT NULL;
