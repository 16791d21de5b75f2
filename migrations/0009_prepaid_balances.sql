-- Prepaid balances (SPEC §7, the credit model of reseller gateways): a budget without a period
-- is a balance. Its amount_nanos is the total credited so far (the initial amount plus every
-- top-up); it has one window that never ends, whose used_nanos / reserved_nanos count what has
-- been spent and what is in flight, so the remaining balance is
-- amount_nanos - used_nanos - reserved_nanos. Admins top a balance up through the admin API;
-- each top-up adds to amount_nanos and is recorded in budget_topups in the same transaction.

ALTER TABLE budgets ALTER COLUMN period DROP NOT NULL;
-- Rollover carries a window's unused amount into the next one: a balance has no next window.
ALTER TABLE budgets ADD CONSTRAINT budgets_rollover_check CHECK (period IS NOT NULL OR NOT rollover);

CREATE TABLE budget_topups (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    budget_id           uuid NOT NULL REFERENCES budgets (id) ON DELETE CASCADE,
    organisation_id     uuid NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    amount_nanos        bigint NOT NULL CHECK (amount_nanos > 0),
    -- The budget's amount_nanos (total credited) once this top-up is applied.
    credited_after_nanos bigint NOT NULL CHECK (credited_after_nanos >= amount_nanos),
    note                text NOT NULL DEFAULT '',
    -- The admin user who made it (kept as history when the user is deleted).
    created_by          uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX budget_topups_budget_idx ON budget_topups (budget_id, created_at);
