-- The runs list orders by time DESC NULLS LAST (a run whose times are not known yet comes
-- last); a DESC index sorts NULLs first, so the planner could not use 0006's indexes for
-- it. Rebuilt in the order the query asks for.
DROP INDEX workflow_runs_time_runid_idx;
DROP INDEX workflow_runs_name_time_idx;
DROP INDEX workflow_runs_status_time_idx;
CREATE INDEX workflow_runs_time_runid_idx
    ON workflow_runs ((COALESCE(requested_at, started_at)) DESC NULLS LAST, runid DESC);
CREATE INDEX workflow_runs_name_time_idx
    ON workflow_runs (name, (COALESCE(requested_at, started_at)) DESC NULLS LAST, runid DESC);
CREATE INDEX workflow_runs_status_time_idx
    ON workflow_runs (status, (COALESCE(requested_at, started_at)) DESC NULLS LAST, runid DESC);
