-- Fraud verdicts projected from stream FRAUD (services/audit/projections.py: fraud_row).
-- One score per transaction: a re-score (redelivery, restart, a re-post of the same
-- transaction) keeps the first row. Columns are those of the events' `data`, plus the
-- verdict event's id and time.
CREATE TABLE fraud_scores (
    transaction_id       text PRIMARY KEY,
    transaction_event_id text             NOT NULL,
    card_id              text             NOT NULL,
    terminal_id          text             NOT NULL,
    amount               double precision NOT NULL,
    currency             text             NOT NULL,
    tx_time              timestamptz      NOT NULL,
    score                double precision NOT NULL,
    decision             text             NOT NULL,
    reasons              jsonb            NOT NULL,
    rules                jsonb            NOT NULL,
    model                text             NOT NULL,
    scored_event_id      text             NOT NULL,
    scored_at            timestamptz      NOT NULL,
    received_at          timestamptz      NOT NULL DEFAULT now()
);

-- One row per fraud.alert event (review or block), newest first for `choreo fraud alerts`.
CREATE TABLE fraud_alerts (
    id                   text PRIMARY KEY,
    transaction_id       text             NOT NULL,
    transaction_event_id text             NOT NULL,
    card_id              text             NOT NULL,
    terminal_id          text             NOT NULL,
    amount               double precision NOT NULL,
    currency             text             NOT NULL,
    tx_time              timestamptz      NOT NULL,
    score                double precision NOT NULL,
    decision             text             NOT NULL,
    reasons              jsonb            NOT NULL,
    rules                jsonb            NOT NULL,
    model                text             NOT NULL,
    created_at           timestamptz      NOT NULL,
    received_at          timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX fraud_alerts_created_idx ON fraud_alerts (created_at DESC, id DESC);
CREATE INDEX fraud_alerts_transaction_idx ON fraud_alerts (transaction_id);
