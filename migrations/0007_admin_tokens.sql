-- Admin API credentials (SPEC §1.3), separate from virtual keys: bearer tokens that belong to a
-- `users` row and act with that user's role and organisation. Only the SHA-256 of a token is
-- stored, with a short display prefix (e.g. "wharf_adm_ab12"); the token is shown once.

CREATE TABLE admin_tokens (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL DEFAULT 'default' CHECK (length(btrim(name)) > 0),
    -- Display prefix of the token; never enough to authenticate.
    token_prefix text NOT NULL CHECK (length(token_prefix) BETWEEN 1 AND 32),
    -- SHA-256 of the whole token, lower-case hex.
    token_hash   text NOT NULL CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT admin_tokens_token_hash_key UNIQUE (token_hash)
);
CREATE INDEX admin_tokens_user_idx ON admin_tokens (user_id);
