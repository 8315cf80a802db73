-- Business events (type business_event), one row per event id: the seed's company events.
CREATE TABLE business_events (
    id          text PRIMARY KEY,
    company_id  text        NOT NULL,
    event_type  text        NOT NULL,
    payload     jsonb       NOT NULL,
    occurred_at timestamptz,
    time        timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX business_events_company_idx ON business_events (company_id, event_type);
