-- Admin console sign-in sessions. The browser holds a random session token in an HttpOnly
-- cookie; only its SHA-256 is stored here, with the session's CSRF token (every console form
-- carries it) and an absolute expiry. Deleting a user ends their sessions.

CREATE TABLE console_sessions (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- SHA-256 of the session cookie value, lower-case hex.
    token_hash   text NOT NULL CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    -- Synchronizer token for the forms of this session.
    csrf_token   text NOT NULL CHECK (length(csrf_token) >= 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    user_agent   text,
    CONSTRAINT console_sessions_token_hash_key UNIQUE (token_hash),
    CHECK (expires_at > created_at)
);
CREATE INDEX console_sessions_user_idx ON console_sessions (user_id);
CREATE INDEX console_sessions_expires_idx ON console_sessions (expires_at);
