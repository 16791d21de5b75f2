-- Filter chains configured in the database (SPEC §9), beside `[[filters]]` in the file.
-- A row is one filter of a chain: global when organisation_id is NULL, else scoped to that
-- organisation, optionally narrowed to keys (api_keys.id as text) and models (names).
-- `kind` and `settings` are checked by the gateway when it loads the catalog: a row it cannot
-- build rejects that refresh (the running chains stay) and is logged with its name.

CREATE TABLE filters (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organisation_id uuid REFERENCES organisations (id) ON DELETE CASCADE,
    name            text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    kind            text NOT NULL CHECK (
        kind IN ('lua', 'audit_log', 'request_transform', 'pii_mask', 'safetysec')),
    -- Lua only: the script's path on the gateway nodes (as in the file).
    script          text CHECK (script IS NULL OR length(btrim(script)) > 0),
    position        integer NOT NULL DEFAULT 0,
    on_error        text NOT NULL DEFAULT 'open' CHECK (on_error IN ('open', 'closed')),
    read_only       boolean NOT NULL DEFAULT false,
    enabled         boolean NOT NULL DEFAULT true,
    -- Lua only: restrict to these phases (NULL: what the script defines).
    phases          text[],
    scope_keys      text[] NOT NULL DEFAULT '{}',
    scope_models    text[] NOT NULL DEFAULT '{}',
    settings        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT filters_organisation_name_key UNIQUE NULLS NOT DISTINCT (organisation_id, name)
);
CREATE INDEX filters_organisation_idx ON filters (organisation_id);

CREATE TRIGGER filters_touch BEFORE UPDATE ON filters
    FOR EACH ROW EXECUTE FUNCTION wharf_touch_updated_at();

CREATE TRIGGER filters_notify_insert_delete AFTER INSERT OR DELETE ON filters
    FOR EACH ROW EXECUTE FUNCTION wharf_notify_config_change();
CREATE TRIGGER filters_notify_update AFTER UPDATE ON filters
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION wharf_notify_config_change();
CREATE TRIGGER filters_notify_truncate AFTER TRUNCATE ON filters
    FOR EACH STATEMENT EXECUTE FUNCTION wharf_notify_config_truncate();
