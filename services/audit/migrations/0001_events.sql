-- Every event Choreo carries, once per id (docs/reference/guarantees.md: audit inserts are idempotent).
CREATE TABLE events (
    id            text PRIMARY KEY,
    type          text        NOT NULL,
    source        text        NOT NULL,
    subject       text,
    time          timestamptz NOT NULL,
    runid         text,
    stepid        text,
    attempt       integer,
    correlationid text,
    causationid   text,
    traceparent   text,
    data          jsonb,
    nats_subject  text        NOT NULL,
    stream        text        NOT NULL,
    stream_seq    bigint      NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX events_type_time_idx ON events (type, time);
CREATE INDEX events_runid_idx ON events (runid) WHERE runid IS NOT NULL;
CREATE INDEX events_correlationid_idx ON events (correlationid) WHERE correlationid IS NOT NULL;
CREATE INDEX events_causationid_idx ON events (causationid) WHERE causationid IS NOT NULL;
