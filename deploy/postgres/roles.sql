-- Choreo's PostgreSQL roles and databases, and the append-only guard of the audit trail.
-- Run once by a superuser (compose: deploy/postgres/init.sh at the first start; Kubernetes
-- dev overlay: the same files from a ConfigMap) with psql variables audit_password,
-- transform_password and reader_password: psql -v audit_password=... -f roles.sql
\set ON_ERROR_STOP on

-- One role per service that uses PostgreSQL, each owning its database, as the embedded
-- stack does (choreo/credentials.py DATABASES): audit the audit trail `choreo`, transform
-- its streaming analytics `analytics`. choreo_reader reads the audit trail (the CLI's
-- `choreo audit`/`runs`/`status`, dashboards) and writes nothing.
CREATE ROLE choreo_audit LOGIN PASSWORD :'audit_password';
CREATE ROLE choreo_transform LOGIN PASSWORD :'transform_password';
CREATE ROLE choreo_reader LOGIN PASSWORD :'reader_password';
CREATE DATABASE choreo OWNER choreo_audit;
CREATE DATABASE analytics OWNER choreo_transform;
-- Nobody else connects to them (PUBLIC has CONNECT by default).
REVOKE ALL ON DATABASE choreo FROM PUBLIC;
REVOKE ALL ON DATABASE analytics FROM PUBLIC;
GRANT CONNECT ON DATABASE choreo TO choreo_reader;

\connect choreo

-- The audit service creates its tables itself (services/audit/migrations, applied at
-- start as choreo_audit, their owner); what it creates later is readable by the reader.
ALTER DEFAULT PRIVILEGES FOR ROLE choreo_audit IN SCHEMA public GRANT SELECT ON TABLES TO choreo_reader;
GRANT USAGE ON SCHEMA public TO choreo_reader;

-- Audit rows are append-only: nobody, the owning audit role included, may UPDATE, DELETE or
-- TRUNCATE them. A table's owner can bypass privileges, so the rule is a trigger, and the
-- owner could drop or disable a trigger, so event triggers (which only a superuser can
-- create, alter or drop) attach the guard when the audit migrations create a table and
-- refuse any DDL that would remove or disable it. workflow_runs and step_runs are
-- projections the audit service updates in place, so they are not guarded.
CREATE SCHEMA choreo_guard AUTHORIZATION postgres;
REVOKE ALL ON SCHEMA choreo_guard FROM PUBLIC;
GRANT USAGE ON SCHEMA choreo_guard TO PUBLIC;

CREATE TABLE choreo_guard.append_only (table_name text PRIMARY KEY);
INSERT INTO choreo_guard.append_only VALUES ('events'), ('audit_log'), ('business_events');

CREATE FUNCTION choreo_guard.refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit rows are append-only: % on %.% is refused', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

-- Attach the guard to a guarded table just created in `public`.
CREATE FUNCTION choreo_guard.on_create() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    created record;
BEGIN
    FOR created IN
        SELECT c.relname FROM pg_event_trigger_ddl_commands() AS d
        JOIN pg_class AS c ON c.oid = d.objid
        JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE d.command_tag = 'CREATE TABLE' AND n.nspname = 'public'
          AND c.relname IN (SELECT table_name FROM choreo_guard.append_only)
    LOOP
        EXECUTE format('CREATE TRIGGER choreo_append_only BEFORE UPDATE OR DELETE ON public.%I '
                       'FOR EACH ROW EXECUTE FUNCTION choreo_guard.refuse_change()', created.relname);
        EXECUTE format('CREATE TRIGGER choreo_no_truncate BEFORE TRUNCATE ON public.%I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION choreo_guard.refuse_change()', created.relname);
    END LOOP;
END
$$;

-- After any ALTER TABLE / DROP TRIGGER: every guarded table that exists still has both
-- triggers, enabled. (A guarded table cannot be dropped either: see on_drop.)
CREATE FUNCTION choreo_guard.check_intact() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    broken text;
BEGIN
    SELECT string_agg(c.relname, ', ') INTO broken
    FROM pg_class AS c
    JOIN pg_namespace AS n ON n.oid = c.relnamespace AND n.nspname = 'public'
    WHERE c.relname IN (SELECT table_name FROM choreo_guard.append_only)
      AND (SELECT count(*) FROM pg_trigger AS t
           WHERE t.tgrelid = c.oid AND t.tgname IN ('choreo_append_only', 'choreo_no_truncate')
             AND t.tgenabled <> 'D') < 2;
    IF broken IS NOT NULL THEN
        RAISE EXCEPTION 'the append-only guard of % cannot be removed or disabled', broken
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;

CREATE FUNCTION choreo_guard.on_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_event_trigger_dropped_objects() AS d
        WHERE d.object_type = 'table' AND d.schema_name = 'public'
          AND d.object_name IN (SELECT table_name FROM choreo_guard.append_only)
    ) THEN
        RAISE EXCEPTION 'audit tables cannot be dropped' USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;

CREATE EVENT TRIGGER choreo_guard_create ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
    EXECUTE FUNCTION choreo_guard.on_create();
CREATE EVENT TRIGGER choreo_guard_intact ON ddl_command_end WHEN TAG IN ('ALTER TABLE', 'DROP TRIGGER')
    EXECUTE FUNCTION choreo_guard.check_intact();
CREATE EVENT TRIGGER choreo_guard_drop ON sql_drop WHEN TAG IN ('DROP TABLE', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION choreo_guard.on_drop();
