-- The objects the lake lander wrote (lake.object.written by "lander", stream LAKE): which
-- DATA sequences of one event type and UTC date each holds, so the audit can say where an
-- event landed (GET /v1/audit/events/{id}) without listing the bucket. A key is written once.
CREATE TABLE lake_objects (
    key         text   PRIMARY KEY,
    bucket      text   NOT NULL,
    event_type  text   NOT NULL,  -- the key's type segment (shared/lake.py key_segment)
    day         date   NOT NULL,
    first_seq   bigint NOT NULL,
    last_seq    bigint NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX lake_objects_range_idx ON lake_objects (event_type, day, first_seq);
