-- Ingest's request path, per source: a webhook URL that can be replaced without touching the
-- connection, failed verifications counted per connection and client (so a stranger's failures
-- never lock out the real sender), and attempt rows that can stand for many throttled attempts.

-- The webhook URL's last segment, random and replaceable (`connections rotate-url`). Event ids,
-- journal rows, fills and audit stay keyed by the connection id, which never changes. Connections
-- made before this migration keep their id as their path, so their current URL keeps working
-- until it is rotated.
ALTER TABLE public.mt5_connections ADD COLUMN webhook_path_id uuid;
UPDATE public.mt5_connections SET webhook_path_id = id;
ALTER TABLE public.mt5_connections
    ALTER COLUMN webhook_path_id SET DEFAULT gen_random_uuid(),
    ALTER COLUMN webhook_path_id SET NOT NULL,
    ADD CONSTRAINT mt5_connections_webhook_path_id_key UNIQUE (webhook_path_id);

-- A rotated URL must stop working in every ingest replica at once: their caches hear of it.
-- A trigger of its own, so later changes to the status trigger cannot drop this column.
CREATE TRIGGER mt5_connections_notify_path_changed
    AFTER UPDATE OF webhook_path_id ON public.mt5_connections
    FOR EACH ROW
    WHEN (OLD.webhook_path_id IS DISTINCT FROM NEW.webhook_path_id)
    EXECUTE FUNCTION public.poscal_notify_connection_changed();

-- Failed verifications per connection and source (a client address; for IPv6 its /64), counted by
-- every replica into one number. They throttle that source only, and at the alert threshold mark
-- the connection's credentials for rotation. A delivery that verifies from the same source ends
-- the run, but only if every failure counted was before its claim (`last_failure_at`, the
-- database's clock), so a late acceptance write never erases later failures.
CREATE TABLE public.webhook_verification_failures (
    connection_id     uuid NOT NULL,
    source            text NOT NULL,
    user_id           uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    failures          integer NOT NULL CHECK (failures >= 0),
    first_failure_at  timestamptz NOT NULL,
    last_failure_at   timestamptz NOT NULL,
    PRIMARY KEY (connection_id, source),
    -- The user's own connection only (see 0009).
    FOREIGN KEY (connection_id, user_id) REFERENCES public.mt5_connections (id, user_id)
        ON DELETE CASCADE
);

CREATE INDEX webhook_verification_failures_user_id_idx
    ON public.webhook_verification_failures (user_id);
CREATE INDEX webhook_verification_failures_last_failure_at_idx
    ON public.webhook_verification_failures (last_failure_at);

ALTER TABLE public.webhook_verification_failures ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.webhook_verification_failures FROM PUBLIC, anon, authenticated;
GRANT SELECT ON public.webhook_verification_failures TO authenticated;
GRANT ALL ON public.webhook_verification_failures TO service_role;
CREATE POLICY webhook_verification_failures_owner_select ON public.webhook_verification_failures
    FOR SELECT TO authenticated USING (user_id = auth.uid());

-- The URL an attempt was sent to (NULL when its last segment is no UUID): attempts refused before
-- their connection is known, or at a URL since rotated, still say where they went. A client
-- throttled for its refusals adds one row per window for everything it sent in it: `attempts`
-- says how many attempts a row stands for (1 for all others).
ALTER TABLE public.webhook_attempts
    ADD COLUMN webhook_path_id uuid,
    ADD COLUMN attempts integer NOT NULL DEFAULT 1 CHECK (attempts >= 1);
