-- Audit durability without a write per request: attempt records are written in batches, so an
-- ingest process that dies uncleanly (kill -9, a host lost) takes its unwritten batch with it.
-- Each process therefore registers itself, holds a session advisory lock for its life, and moves
-- `flushed_through` forward with every batch it writes. An instance still marked `running` whose
-- lock nobody holds has died: whoever notices (any replica's start, or its periodic check)
-- marks it `lost` and records an audit gap for the window its attempts may be missing from.

CREATE TABLE public.ingest_instances (
    instance_id      uuid PRIMARY KEY,
    -- The advisory lock held by the instance's own session: pg_advisory_lock(namespace, lock_key).
    lock_key         integer GENERATED ALWAYS AS IDENTITY UNIQUE,
    host             text NOT NULL,
    pid              integer NOT NULL,
    state            text NOT NULL DEFAULT 'running'
                     CHECK (state IN ('running', 'stopped', 'lost')),
    started_at       timestamptz NOT NULL DEFAULT now(),
    -- Every attempt this instance received before this time is in webhook_attempts.
    flushed_through  timestamptz NOT NULL DEFAULT now(),
    stopped_at       timestamptz,
    lost_at          timestamptz
);

CREATE INDEX ingest_instances_running_idx
    ON public.ingest_instances (lock_key) WHERE state = 'running';

-- A window in which an instance's attempt records may be missing. `instance_lost`: the instance
-- died with attempts perhaps unwritten, received from window_start on (window_end: when it was
-- found dead, an upper bound). `queue_overflow`: the instance was alive but its queue was full
-- while Postgres was away; `unrecorded` then counts exactly what was dropped, received between
-- window_start and window_end. A lost instance that comes back (its lock session had only been
-- cut) had lost nothing: its gap is resolved as `instance_resumed`.
CREATE TABLE public.webhook_audit_gaps (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id   uuid NOT NULL,
    reason        text NOT NULL CHECK (reason IN ('instance_lost', 'queue_overflow')),
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    unrecorded    integer CHECK (unrecorded > 0),
    detected_at   timestamptz NOT NULL DEFAULT now(),
    detected_by   uuid NOT NULL,
    resolved_at   timestamptz,
    resolution    text CHECK (resolution IN ('instance_resumed')),
    CHECK (window_start <= window_end)
);

CREATE INDEX webhook_audit_gaps_instance_idx ON public.webhook_audit_gaps (instance_id);
CREATE INDEX webhook_audit_gaps_window_idx ON public.webhook_audit_gaps (window_start);

-- Which processes run, and where, is the services' business alone: no user row, no user access.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['ingest_instances', 'webhook_audit_gaps'] LOOP
        EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('REVOKE ALL ON public.%I FROM PUBLIC, anon, authenticated', t);
        EXECUTE format('GRANT ALL ON public.%I TO service_role', t);
    END LOOP;
    -- Their identity sequences too (Supabase's default grants give them to the API roles).
    EXECUTE format('REVOKE ALL ON SEQUENCE %s, %s FROM PUBLIC, anon, authenticated',
        pg_get_serial_sequence('public.ingest_instances', 'lock_key'),
        pg_get_serial_sequence('public.webhook_audit_gaps', 'id'));
END
$$;
