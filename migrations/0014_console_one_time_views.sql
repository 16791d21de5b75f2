-- One-time views of the admin console: a form that creates a secret (an API key created or
-- rotated, an invitation link) stores the page to show, encrypted under the master keys,
-- and redirects (303) to a GET page that shows it once (post/redirect/get: reloading that
-- page does not create a second key). A view belongs to the session that made it, is
-- deleted when it is shown and is useless after `expires_at` (minutes).

CREATE TABLE console_one_time_views (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    session_id  uuid NOT NULL REFERENCES console_sessions (id) ON DELETE CASCADE,
    -- The view's JSON, as an envelope of the master keys (never the plain secret).
    envelope    jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    CHECK (expires_at > created_at)
);
CREATE INDEX console_one_time_views_session_idx ON console_one_time_views (session_id);
CREATE INDEX console_one_time_views_expires_idx ON console_one_time_views (expires_at);
