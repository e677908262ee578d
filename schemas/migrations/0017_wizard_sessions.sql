-- The connection wizard's sessions (the app API, POST /v1/wizard/sessions): what a user entered
-- and the broker confirmed, kept between verifying it and confirming the connection. Short
-- lived (`expires_at`): a session past it is answered as gone, and removed by the next one made.
--
-- The credentials are kept only sealed by the vault (`sealed_credentials`, under the user's data
-- key, bound to the session's id), and only once the broker accepted them: a session whose
-- verification failed or is still under way (a cloud terminal being provisioned) holds none.
-- Confirming the connection moves them into mt5_credentials and clears them here.
CREATE TABLE public.wizard_sessions (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id             uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    broker              text NOT NULL CHECK (broker <> ''),
    connection_type     text NOT NULL CHECK (connection_type IN ('demo', 'live')),
    sync_method         text NOT NULL CHECK (sync_method IN ('webhook', 'poll')),
    -- verifying: the broker is being asked (a cloud terminal provisioned); verified: the
    -- accounts are known; failed: `error` says why; confirmed: `connection_id` was made.
    state               text NOT NULL
                        CHECK (state IN ('verifying', 'verified', 'failed', 'confirmed')),
    sealed_credentials  bytea,
    data_key_version    integer,
    -- What the broker showed of the accounts (never a credential): the wizard's preview.
    accounts            jsonb NOT NULL DEFAULT '[]'::jsonb,
    -- Where a slow verification stands ({step, detail}), and why a failed one failed
    -- ({code, message}); both for a person to read.
    progress            jsonb,
    error               jsonb,
    -- A provisioned cloud terminal: the service's id of it, the creation's transaction id and
    -- its region, carried to the connection's cloud_terminals row on confirming.
    terminal            jsonb,
    connection_id       uuid,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL,
    CHECK ((sealed_credentials IS NULL) = (data_key_version IS NULL)),
    -- The user's own connection only (see 0009); a deleted connection leaves the session.
    FOREIGN KEY (connection_id, user_id) REFERENCES public.mt5_connections (id, user_id)
        ON DELETE SET NULL (connection_id)
);

CREATE INDEX wizard_sessions_user_id_idx ON public.wizard_sessions (user_id, created_at);
CREATE INDEX wizard_sessions_expires_at_idx ON public.wizard_sessions (expires_at);

-- Owner-only and read-only for users, and never the sealed credentials: the API writes as the
-- service, after checking who is asking.
ALTER TABLE public.wizard_sessions ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.wizard_sessions FROM PUBLIC, anon, authenticated;
GRANT SELECT (id, user_id, broker, connection_type, sync_method, state, accounts, progress,
    error, connection_id, created_at, updated_at, expires_at)
    ON public.wizard_sessions TO authenticated;
GRANT ALL ON public.wizard_sessions TO service_role;
CREATE POLICY wizard_sessions_owner_select ON public.wizard_sessions
    FOR SELECT TO authenticated USING (user_id = auth.uid());
