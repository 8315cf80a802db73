-- The audit trail is append-only: nobody updates, deletes or truncates what it recorded.
-- Two layers: the privileges are revoked (the audit role owns these tables, having created
-- them, and an owner's privileges can be revoked too), and a trigger refuses the change
-- for anyone, superusers included, unless it is dropped on purpose by a migration.
-- Projections (workflow_runs, step_runs, ...) stay updatable: they are views of the trail.
REVOKE UPDATE, DELETE, TRUNCATE ON events, audit_log FROM CURRENT_USER;

CREATE FUNCTION refuse_audit_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit rows are append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_audit_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_audit_change();
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION refuse_audit_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_audit_change();
