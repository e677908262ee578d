-- Cloud sync: the terminal a cloud service (MetaApi) runs for an MT5 connection, logged in with
-- the investor password kept in the vault. One row per connection that was ever provisioned;
-- `connections provision` writes it, `connections delete` removes it with the terminal.
--
-- The poller polls such a connection through its terminal: the connection is put on the
-- schedule (sync_schedule) only once its terminal is ready, and while a terminal is being made
-- again (`ready_at` NULL: new credentials) or removed (`removing_at`) it is not leased. An MT5
-- connection with no row here is fed by its webhooks alone (the Expert Advisor) and not polled.
--
-- The reference to the connection does not cascade: a connection with a terminal is deleted
-- through `connections delete`, which removes the terminal at the service first. Deleted any
-- other way (the app's table API), it is refused, so no terminal is left running (and billed)
-- with nobody knowing its id.
CREATE TABLE public.cloud_terminals (
    connection_id      uuid PRIMARY KEY,
    user_id            uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    provider           text NOT NULL CHECK (provider <> ''),
    -- Sent with every request that creates the terminal: a retry, or a provisioning run again
    -- after a crash, gets the same account at the service, never a second one.
    transaction_id     text NOT NULL,
    -- The service's id of it; NULL until the service has created it.
    remote_account_id  text UNIQUE,
    region             text,
    -- The service's own words, as last seen: its deployment state (DEPLOYING, DEPLOYED...) and
    -- whether the terminal is connected to the broker (CONNECTED, DISCONNECTED...).
    state              text,
    connection_status  text,
    -- The vault credential (mt5_credentials.id) the terminal was made with. Not a foreign key:
    -- deleting a connection destroys its credentials, and this row is then being removed.
    credential_id      uuid,
    -- Deployed, connected to the broker and its account checked: polled from then on.
    ready_at           timestamptz,
    -- The connection was deleted: the terminal is being undeployed and removed at the service.
    removing_at        timestamptz,
    last_error         text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    -- The user's own connection only (see 0009).
    FOREIGN KEY (connection_id, user_id) REFERENCES public.mt5_connections (id, user_id)
);

CREATE INDEX cloud_terminals_user_id_idx ON public.cloud_terminals (user_id);

-- Owner-only, read-only (as 0004 and 0009 have it for what the services write); the creation's
-- transaction id is the services' alone.
ALTER TABLE public.cloud_terminals ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.cloud_terminals FROM PUBLIC, anon, authenticated;
GRANT SELECT (connection_id, user_id, provider, remote_account_id, region, state,
    connection_status, credential_id, ready_at, removing_at, last_error, created_at, updated_at)
    ON public.cloud_terminals TO authenticated;
GRANT ALL ON public.cloud_terminals TO service_role;
CREATE POLICY cloud_terminals_owner_select ON public.cloud_terminals
    FOR SELECT TO authenticated USING (user_id = auth.uid());
