-- Virtual key rotation history (SPEC §1.2, §1.3).
--
-- Rotating a key replaces `api_keys.key_hash` and `api_keys.key_prefix` in place (the id, and
-- with it grants, budgets and usage, stays). The replaced values are recorded here: the hash,
-- so that a presented old secret can be recognised as rotated, and the display prefix in
-- masked form ("wharf_sk_3f9a…"), so that an operator can tell which secret was retired. The
-- secret itself is never stored, neither here nor anywhere else.

CREATE TABLE api_key_history (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    api_key_id      uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    -- Masked display prefix of the replaced secret; a few characters, never the secret.
    previous_prefix text NOT NULL CHECK (length(previous_prefix) BETWEEN 1 AND 32),
    -- SHA-256 of the replaced secret, lower-case hex.
    previous_hash   text NOT NULL CHECK (previous_hash ~ '^[0-9a-f]{64}$'),
    rotated_at      timestamptz NOT NULL DEFAULT now(),
    -- Who rotated it (a user id, an e-mail address, `cli`, ...); NULL when unknown.
    rotated_by      text
);
CREATE INDEX api_key_history_key_idx ON api_key_history (api_key_id, rotated_at DESC);
CREATE INDEX api_key_history_hash_idx ON api_key_history (previous_hash);
