-- The poller: where each polled connection's sync stands, who holds it, and how it is failing;
-- plus what demo-before-live needs.

-- Per-connection base-URL override for a broker's API (proxies, tests).
ALTER TABLE public.mt5_connections
    ADD COLUMN api_url text,
    -- When a live connection was allowed to sync (after a successful demo sync of that broker).
    ADD COLUMN live_enabled_at timestamptz;

-- One row per polled connection. A poller replica leases due rows with FOR UPDATE SKIP LOCKED
-- (lease_owner/lease_until), so no two replicas poll one connection at once; a lease that runs
-- out (its replica died) is free again. The cursor advances only after Kafka acknowledged the
-- page it ends: a crash in between re-polls the same delta, which downstream absorbs.
CREATE TABLE public.sync_schedule (
    connection_id            uuid PRIMARY KEY
                             REFERENCES public.mt5_connections (id) ON DELETE CASCADE,
    user_id                  uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    cursor                   text,
    interval_seconds         integer NOT NULL DEFAULT 60 CHECK (interval_seconds > 0),
    next_sync_at             timestamptz NOT NULL DEFAULT now(),
    lease_owner              text,
    lease_until              timestamptz,
    consecutive_failures     integer NOT NULL DEFAULT 0,
    last_attempt_at          timestamptz,
    last_success_at          timestamptz,
    last_error               text,
    last_error_at            timestamptz,
    -- Set on 401/403: no retry until the credentials change.
    credentials_rejected_at  timestamptz,
    updated_at               timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX sync_schedule_due_idx ON public.sync_schedule (next_sync_at);
CREATE INDEX sync_schedule_user_id_idx ON public.sync_schedule (user_id);

ALTER TABLE public.sync_schedule ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.sync_schedule FROM anon, authenticated;
GRANT SELECT ON public.sync_schedule TO authenticated;
GRANT ALL ON public.sync_schedule TO service_role;
CREATE POLICY sync_schedule_owner_select ON public.sync_schedule FOR SELECT TO authenticated
    USING (user_id = auth.uid());
