-- Budgets, quotas, their accounting windows and the reserve -> settle/release ledger (SPEC §7).
--
-- A budget or quota belongs to a scope (ORG, TEAM, USER, APIKEY) identified by scope_id; for
-- ORG the scope id is the organisation id. Enforcement reserves the estimate in the current
-- window only if used + reserved + estimate <= limit, then settles to the actual amount or
-- releases. Reservations are idempotent by (request_id, budget_id / quota_id); a worker
-- expires stale ones (state RESERVED and expires_at in the past).

CREATE TYPE limit_scope AS ENUM ('ORG', 'TEAM', 'USER', 'APIKEY');
CREATE TYPE limit_period AS ENUM ('DAILY', 'WEEKLY', 'MONTHLY', 'QUARTERLY');
CREATE TYPE quota_metric AS ENUM ('REQUESTS', 'TOKENS', 'TOKENS_IN', 'TOKENS_OUT', 'ERRORS', 'COST', 'LATENCY_MS');
CREATE TYPE reservation_state AS ENUM ('RESERVED', 'SETTLED', 'RELEASED', 'EXPIRED');
CREATE TYPE budget_request_state AS ENUM ('RESERVED', 'DENIED', 'SETTLED', 'RELEASED', 'EXPIRED');

CREATE TABLE budgets (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organisation_id    uuid NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    name               text NOT NULL DEFAULT '',
    scope              limit_scope NOT NULL,
    scope_id           uuid NOT NULL,
    amount_nanos       bigint NOT NULL CHECK (amount_nanos >= 0),
    period             limit_period NOT NULL,
    -- IANA zone in which periods start (midnight, Monday, 1st of month/quarter).
    timezone           text NOT NULL DEFAULT 'UTC' CHECK (length(timezone) > 0),
    starts_at          timestamptz,
    ends_at            timestamptz,
    -- Carry the unused amount of a window into the next one.
    rollover           boolean NOT NULL DEFAULT false,
    -- Percentages of the amount at which a warning is emitted, e.g. {50, 80, 100}.
    warning_thresholds integer[] NOT NULL DEFAULT '{}' CHECK (
        0 < ALL (warning_thresholds) AND 100 >= ALL (warning_thresholds)
    ),
    enabled            boolean NOT NULL DEFAULT true,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at IS NULL OR starts_at IS NULL OR ends_at > starts_at),
    CHECK (scope <> 'ORG' OR scope_id = organisation_id)
);
CREATE INDEX budgets_scope_idx ON budgets (organisation_id, scope, scope_id);
CREATE INDEX budgets_scope_id_idx ON budgets (scope_id);
CREATE TRIGGER budgets_touch BEFORE UPDATE ON budgets
    FOR EACH ROW EXECUTE FUNCTION wharf_touch_updated_at();

CREATE TABLE budget_windows (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    budget_id       uuid NOT NULL REFERENCES budgets (id) ON DELETE CASCADE,
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    used_nanos      bigint NOT NULL DEFAULT 0 CHECK (used_nanos >= 0),
    reserved_nanos  bigint NOT NULL DEFAULT 0 CHECK (reserved_nanos >= 0),
    -- Amount carried in from the previous window when the budget rolls over.
    rollover_nanos  bigint NOT NULL DEFAULT 0 CHECK (rollover_nanos >= 0),
    -- Thresholds already warned about in this window.
    warned_thresholds integer[] NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (window_end > window_start),
    CONSTRAINT budget_windows_budget_start_key UNIQUE (budget_id, window_start)
);
CREATE TRIGGER budget_windows_touch BEFORE UPDATE ON budget_windows
    FOR EACH ROW EXECUTE FUNCTION wharf_touch_updated_at();

CREATE TABLE quotas (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organisation_id    uuid NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    name               text NOT NULL DEFAULT '',
    scope              limit_scope NOT NULL,
    scope_id           uuid NOT NULL,
    metric             quota_metric NOT NULL,
    -- In the metric's unit: requests, tokens, errors, nanos-USD (COST), milliseconds.
    limit_value        bigint NOT NULL CHECK (limit_value >= 0),
    period             limit_period NOT NULL,
    timezone           text NOT NULL DEFAULT 'UTC' CHECK (length(timezone) > 0),
    starts_at          timestamptz,
    ends_at            timestamptz,
    rollover           boolean NOT NULL DEFAULT false,
    warning_thresholds integer[] NOT NULL DEFAULT '{}' CHECK (
        0 < ALL (warning_thresholds) AND 100 >= ALL (warning_thresholds)
    ),
    enabled            boolean NOT NULL DEFAULT true,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at IS NULL OR starts_at IS NULL OR ends_at > starts_at),
    CHECK (scope <> 'ORG' OR scope_id = organisation_id)
);
CREATE INDEX quotas_scope_idx ON quotas (organisation_id, scope, scope_id);
CREATE INDEX quotas_scope_id_idx ON quotas (scope_id);
CREATE TRIGGER quotas_touch BEFORE UPDATE ON quotas
    FOR EACH ROW EXECUTE FUNCTION wharf_touch_updated_at();

CREATE TABLE quota_windows (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    quota_id       uuid NOT NULL REFERENCES quotas (id) ON DELETE CASCADE,
    window_start   timestamptz NOT NULL,
    window_end     timestamptz NOT NULL,
    used           bigint NOT NULL DEFAULT 0 CHECK (used >= 0),
    reserved       bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    rollover       bigint NOT NULL DEFAULT 0 CHECK (rollover >= 0),
    warned_thresholds integer[] NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (window_end > window_start),
    CONSTRAINT quota_windows_quota_start_key UNIQUE (quota_id, window_start)
);
CREATE TRIGGER quota_windows_touch BEFORE UPDATE ON quota_windows
    FOR EACH ROW EXECUTE FUNCTION wharf_touch_updated_at();

-- Request-level state of a reservation: one row per request that reserved anything; the
-- budget and quota reservations of that request hang off it.
CREATE TABLE budget_requests (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    request_id      text NOT NULL CHECK (length(request_id) BETWEEN 1 AND 200),
    organisation_id uuid REFERENCES organisations (id) ON DELETE CASCADE,
    api_key_id      uuid,
    state           budget_request_state NOT NULL DEFAULT 'RESERVED',
    estimate_nanos  bigint NOT NULL DEFAULT 0 CHECK (estimate_nanos >= 0),
    actual_nanos    bigint CHECK (actual_nanos >= 0),
    -- Which budget or quota denied the request, when state = DENIED.
    denied_by       uuid,
    expires_at      timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT budget_requests_request_id_key UNIQUE (request_id)
);
CREATE INDEX budget_requests_expiry_idx ON budget_requests (expires_at) WHERE state = 'RESERVED';
CREATE TRIGGER budget_requests_touch BEFORE UPDATE ON budget_requests
    FOR EACH ROW EXECUTE FUNCTION wharf_touch_updated_at();

CREATE TABLE budget_reservations (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    request_id    text NOT NULL REFERENCES budget_requests (request_id) ON DELETE CASCADE,
    budget_id     uuid NOT NULL REFERENCES budgets (id) ON DELETE CASCADE,
    -- The window the amount was reserved in (settle/release adjust that window even when the
    -- period has rolled over since).
    window_id     uuid NOT NULL REFERENCES budget_windows (id) ON DELETE CASCADE,
    amount_nanos  bigint NOT NULL CHECK (amount_nanos >= 0),
    -- Settled cost; set when state = SETTLED.
    actual_nanos  bigint CHECK (actual_nanos >= 0),
    state         reservation_state NOT NULL DEFAULT 'RESERVED',
    expires_at    timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (state <> 'SETTLED' OR actual_nanos IS NOT NULL),
    CONSTRAINT budget_reservations_request_budget_key UNIQUE (request_id, budget_id)
);
CREATE INDEX budget_reservations_expiry_idx ON budget_reservations (expires_at)
    WHERE state = 'RESERVED';
CREATE INDEX budget_reservations_window_idx ON budget_reservations (window_id);
CREATE INDEX budget_reservations_budget_idx ON budget_reservations (budget_id);
CREATE TRIGGER budget_reservations_touch BEFORE UPDATE ON budget_reservations
    FOR EACH ROW EXECUTE FUNCTION wharf_touch_updated_at();

CREATE TABLE quota_reservations (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    request_id    text NOT NULL REFERENCES budget_requests (request_id) ON DELETE CASCADE,
    quota_id      uuid NOT NULL REFERENCES quotas (id) ON DELETE CASCADE,
    window_id     uuid NOT NULL REFERENCES quota_windows (id) ON DELETE CASCADE,
    amount        bigint NOT NULL CHECK (amount >= 0),
    actual        bigint CHECK (actual >= 0),
    state         reservation_state NOT NULL DEFAULT 'RESERVED',
    expires_at    timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (state <> 'SETTLED' OR actual IS NOT NULL),
    CONSTRAINT quota_reservations_request_quota_key UNIQUE (request_id, quota_id)
);
CREATE INDEX quota_reservations_expiry_idx ON quota_reservations (expires_at)
    WHERE state = 'RESERVED';
CREATE INDEX quota_reservations_window_idx ON quota_reservations (window_id);
CREATE INDEX quota_reservations_quota_idx ON quota_reservations (quota_id);
CREATE TRIGGER quota_reservations_touch BEFORE UPDATE ON quota_reservations
    FOR EACH ROW EXECUTE FUNCTION wharf_touch_updated_at();
