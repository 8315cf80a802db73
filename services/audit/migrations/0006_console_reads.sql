-- What the console reads page by page: runs newest first with a stable tie-breaker (keyset
-- pagination), per workflow and per status; fraud scores of the last hour.
CREATE INDEX workflow_runs_time_runid_idx
    ON workflow_runs ((COALESCE(requested_at, started_at)) DESC, runid DESC);
CREATE INDEX workflow_runs_name_time_idx
    ON workflow_runs (name, (COALESCE(requested_at, started_at)) DESC, runid DESC);
CREATE INDEX workflow_runs_status_time_idx
    ON workflow_runs (status, (COALESCE(requested_at, started_at)) DESC, runid DESC);
CREATE INDEX fraud_scores_scored_idx ON fraud_scores (scored_at);
