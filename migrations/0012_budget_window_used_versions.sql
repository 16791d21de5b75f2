-- A number for each change of a window's used amount (SPEC §7, the Redis fast path of database
-- budgets and quotas). A Redis window seeded from a row keeps the number it read, so a node
-- that wrote an amount to Postgres knows whether that amount is already in the Redis window
-- (its change's number is at most the seed's) or must still be added there: after a Redis
-- outage nothing is counted twice or left out.

ALTER TABLE budget_windows ADD COLUMN used_version bigint NOT NULL DEFAULT 0;
ALTER TABLE quota_windows ADD COLUMN used_version bigint NOT NULL DEFAULT 0;

CREATE FUNCTION wharf_budget_window_used_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.used_version := CASE WHEN NEW.used_nanos <> 0 THEN 1 ELSE 0 END;
    ELSIF NEW.used_nanos IS DISTINCT FROM OLD.used_nanos THEN
        NEW.used_version := OLD.used_version + 1;
    ELSE
        NEW.used_version := OLD.used_version;
    END IF;
    RETURN NEW;
END;
$$;

CREATE FUNCTION wharf_quota_window_used_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.used_version := CASE WHEN NEW.used <> 0 THEN 1 ELSE 0 END;
    ELSIF NEW.used IS DISTINCT FROM OLD.used THEN
        NEW.used_version := OLD.used_version + 1;
    ELSE
        NEW.used_version := OLD.used_version;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER budget_windows_used_version BEFORE INSERT OR UPDATE ON budget_windows
    FOR EACH ROW EXECUTE FUNCTION wharf_budget_window_used_version();
CREATE TRIGGER quota_windows_used_version BEFORE INSERT OR UPDATE ON quota_windows
    FOR EACH ROW EXECUTE FUNCTION wharf_quota_window_used_version();
