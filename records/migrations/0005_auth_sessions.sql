-- Login sessions and a per-user token version, so that revocations live in PostgreSQL, not in Redis.
-- Every token carries its user's token_version; changing it (password change or reset, disable, enable)
-- ends every session of that user at once.
ALTER TABLE users ADD COLUMN token_version integer NOT NULL DEFAULT 0;

-- One row per login. refresh_jti is the one refresh token of the session that may still be used: a refresh
-- swaps it atomically, and presenting an older one revokes the session (refresh token reuse is theft).
CREATE TABLE auth_sessions (
    sid            text PRIMARY KEY,
    user_id        bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    refresh_jti    text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    refreshed_at   timestamptz,
    expires_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    revoked_reason text CHECK (revoked_reason IN ('logout', 'refresh_reuse', 'password_change', 'password_reset',
                                                  'disabled', 'enabled'))
);
CREATE INDEX auth_sessions_by_user ON auth_sessions (user_id, expires_at);
