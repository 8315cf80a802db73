-- Workflow runs and their steps, projected from the wf.* events (idempotent and
-- order-tolerant: a row changes only for an event at least as late as the one it shows;
-- see services/audit/projections.py for the order keys).
CREATE TABLE workflow_runs (
    runid        text PRIMARY KEY,
    name         text,
    status       text        NOT NULL,
    generation   integer     NOT NULL,
    inputs       jsonb,
    outputs      jsonb,
    reason       text,
    failed_step  text,
    problems     jsonb,
    requested_at timestamptz,
    started_at   timestamptz,
    ended_at     timestamptz,
    order_key    bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workflow_runs_started_idx ON workflow_runs (COALESCE(requested_at, started_at) DESC);

CREATE TABLE step_runs (
    runid        text        NOT NULL,
    stepid       text        NOT NULL,
    status       text        NOT NULL,
    generation   integer     NOT NULL,
    attempt      integer     NOT NULL,
    uses         text,
    service      text,
    inputs       jsonb,
    output       jsonb,
    error        text,
    requested_at timestamptz,
    started_at   timestamptz,
    ended_at     timestamptz,
    duration_s   double precision,
    order_key    bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (runid, stepid)
);

-- Step kind audit.log writes here; the id is the step's idempotency key.
CREATE TABLE audit_log (
    id          text PRIMARY KEY,
    runid       text,
    stepid      text,
    message     text        NOT NULL,
    details     jsonb,
    logged_at   timestamptz NOT NULL DEFAULT now()
);
