-- Follow-ups from review: each poller lease gets its own token (one replica may hold a
-- connection, lose the lease and lease it again: only the newest lease may write), and the
-- connection-change notification also fires for what 0006 added (live enabling, API URL).

ALTER TABLE public.sync_schedule ADD COLUMN lease_token uuid;

DROP TRIGGER mt5_connections_notify_changed ON public.mt5_connections;
CREATE TRIGGER mt5_connections_notify_changed
    AFTER UPDATE ON public.mt5_connections
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.broker IS DISTINCT FROM NEW.broker
          OR OLD.account_number IS DISTINCT FROM NEW.account_number
          OR OLD.server IS DISTINCT FROM NEW.server
          OR OLD.connection_type IS DISTINCT FROM NEW.connection_type
          OR OLD.user_id IS DISTINCT FROM NEW.user_id
          OR OLD.account_id IS DISTINCT FROM NEW.account_id
          OR OLD.live_enabled_at IS DISTINCT FROM NEW.live_enabled_at
          OR OLD.api_url IS DISTINCT FROM NEW.api_url)
    EXECUTE FUNCTION public.poscal_notify_connection_changed();

-- Which replica holds a lease is the services' business, not the user's.
REVOKE SELECT ON public.sync_schedule FROM authenticated;
GRANT SELECT (connection_id, user_id, cursor, interval_seconds, next_sync_at,
    consecutive_failures, last_attempt_at, last_success_at, last_error, last_error_at,
    credentials_rejected_at, updated_at) ON public.sync_schedule TO authenticated;
