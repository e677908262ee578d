-- The app's status and sync history: each error a polled sync ended with, kept (the schedule
-- holds only the last one). Written by a trigger on sync_schedule, so whatever records a failure
-- there (any poller version) records it here too; the newest 100 per connection are kept.

CREATE TABLE public.sync_errors (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    connection_id         uuid NOT NULL,
    user_id               uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    occurred_at           timestamptz NOT NULL,
    message               text NOT NULL,
    -- Failures in a row when it was recorded (0: the broker asked to wait, not a failure).
    consecutive_failures  integer NOT NULL CHECK (consecutive_failures >= 0),
    -- The user's own connection only (see 0009).
    FOREIGN KEY (connection_id, user_id) REFERENCES public.mt5_connections (id, user_id)
        ON DELETE CASCADE
);

CREATE INDEX sync_errors_connection_idx ON public.sync_errors (connection_id, occurred_at, id);
CREATE INDEX sync_errors_user_id_idx ON public.sync_errors (user_id);

-- Owner-only, read-only, as for everything the services write (0009).
ALTER TABLE public.sync_errors ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.sync_errors FROM PUBLIC, anon, authenticated;
GRANT SELECT ON public.sync_errors TO authenticated;
GRANT ALL ON public.sync_errors TO service_role;
CREATE POLICY sync_errors_owner_select ON public.sync_errors
    FOR SELECT TO authenticated USING (user_id = auth.uid());

-- A new error is a new `last_error_at` with an error (a success clears both).
CREATE FUNCTION public.poscal_record_sync_error() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO public.sync_errors
        (connection_id, user_id, occurred_at, message, consecutive_failures)
    VALUES (NEW.connection_id, NEW.user_id, NEW.last_error_at, left(NEW.last_error, 500),
            NEW.consecutive_failures);
    DELETE FROM public.sync_errors
    WHERE connection_id = NEW.connection_id
      AND id NOT IN (
          SELECT id FROM public.sync_errors WHERE connection_id = NEW.connection_id
          ORDER BY occurred_at DESC, id DESC LIMIT 100);
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION public.poscal_record_sync_error() FROM PUBLIC;

CREATE TRIGGER sync_schedule_records_errors
    AFTER UPDATE OF last_error_at ON public.sync_schedule
    FOR EACH ROW
    WHEN (NEW.last_error IS NOT NULL AND NEW.last_error_at IS NOT NULL
          AND NEW.last_error_at IS DISTINCT FROM OLD.last_error_at)
    EXECUTE FUNCTION public.poscal_record_sync_error();
