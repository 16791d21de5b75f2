-- Change notifications for gateway caches (SPEC §1.3, §11): every committed change to a
-- configuration row, whether made by the admin API or by hand in SQL, is announced on the
-- channel `wharf_config` with a JSON payload
--   {"table": "models", "op": "INSERT"|"UPDATE"|"DELETE", "id": "<uuid>", "organisation_id": "<uuid>"|null}
-- and, for api_keys, also
--   "key_hash": "<hex of the row's hash (the old row's on DELETE)>",
--   "old_key_hash": "<hex of the previous hash when an UPDATE changed it (rotation)>"|null
-- A TRUNCATE sends {"table": ..., "op": "TRUNCATE", "id": null, "organisation_id": null}:
-- drop everything cached from that table. UPDATEs that change nothing send nothing.

CREATE FUNCTION wharf_notify_config_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    rec jsonb;
    org text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        rec := to_jsonb(OLD);
    ELSE
        rec := to_jsonb(NEW);
    END IF;
    IF TG_TABLE_NAME = 'organisations' THEN
        org := rec ->> 'id';
    ELSE
        org := rec ->> 'organisation_id';
    END IF;
    PERFORM pg_notify('wharf_config', json_build_object(
        'table', TG_TABLE_NAME,
        'op', TG_OP,
        'id', rec ->> 'id',
        'organisation_id', org
    )::text);
    RETURN NULL;
END;
$$;

CREATE FUNCTION wharf_notify_api_key_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
    v_org uuid;
    v_hash text;
    v_old_hash text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        v_id := OLD.id;
        v_org := OLD.organisation_id;
        v_hash := OLD.key_hash;
    ELSE
        v_id := NEW.id;
        v_org := NEW.organisation_id;
        v_hash := NEW.key_hash;
        IF TG_OP = 'UPDATE' AND OLD.key_hash IS DISTINCT FROM NEW.key_hash THEN
            v_old_hash := OLD.key_hash;
        END IF;
    END IF;
    PERFORM pg_notify('wharf_config', json_build_object(
        'table', TG_TABLE_NAME,
        'op', TG_OP,
        'id', v_id,
        'organisation_id', v_org,
        'key_hash', v_hash,
        'old_key_hash', v_old_hash
    )::text);
    RETURN NULL;
END;
$$;

CREATE FUNCTION wharf_notify_config_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('wharf_config', json_build_object(
        'table', TG_TABLE_NAME,
        'op', TG_OP,
        'id', NULL,
        'organisation_id', NULL
    )::text);
    RETURN NULL;
END;
$$;

DO $$
DECLARE
    t text;
    fn text;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'organisations', 'users', 'teams', 'team_members', 'api_keys', 'providers',
        'provider_api_keys', 'models', 'model_deployments', 'api_key_model_access',
        'mcp_servers', 'api_key_mcp_access', 'budgets', 'quotas'
    ] LOOP
        IF t = 'api_keys' THEN
            fn := 'wharf_notify_api_key_change';
        ELSE
            fn := 'wharf_notify_config_change';
        END IF;
        EXECUTE format(
            'CREATE TRIGGER %I AFTER INSERT OR DELETE ON %I FOR EACH ROW EXECUTE FUNCTION %I()',
            t || '_notify_insert_delete', t, fn);
        EXECUTE format(
            'CREATE TRIGGER %I AFTER UPDATE ON %I FOR EACH ROW '
            'WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION %I()',
            t || '_notify_update', t, fn);
        EXECUTE format(
            'CREATE TRIGGER %I AFTER TRUNCATE ON %I FOR EACH STATEMENT '
            'EXECUTE FUNCTION wharf_notify_config_truncate()',
            t || '_notify_truncate', t);
    END LOOP;
END;
$$;
