-- The seed plan's names are the frontend's contract, read directly under RLS:
-- `mt5_connections.account_label` (never null), `mt5_connections.status` the sync state
-- (idle | syncing | error), the connection's lifecycle (active, paused, locked, revoked) in a
-- column of its own, and `mt5_credentials.last_rotated_at`. Existing rows are carried over.

-- What `status` said is the lifecycle; its 'error' was an active connection whose sync fails.
-- (The change-notification trigger follows the renamed column: a lifecycle change tells ingest
-- replicas, a sync-state change does not.)
ALTER TABLE public.mt5_connections RENAME COLUMN status TO lifecycle;
ALTER TABLE public.mt5_connections DROP CONSTRAINT mt5_connections_status_check;
ALTER TABLE public.mt5_connections
    ADD COLUMN status text NOT NULL DEFAULT 'idle'
        CONSTRAINT mt5_connections_status_check CHECK (status IN ('idle', 'syncing', 'error'));
UPDATE public.mt5_connections SET status = 'error', lifecycle = 'active'
WHERE lifecycle = 'error';
ALTER TABLE public.mt5_connections
    ADD CONSTRAINT mt5_connections_lifecycle_check
        CHECK (lifecycle IN ('active', 'paused', 'locked', 'revoked'));

-- A label for every connection: the broker and the account where none was given.
ALTER TABLE public.mt5_connections RENAME COLUMN label TO account_label;
UPDATE public.mt5_connections
SET account_label = upper(broker) || ' ' || account_number
    || CASE WHEN server <> '' THEN ' @ ' || server ELSE '' END
WHERE account_label IS NULL OR btrim(account_label) = '';
UPDATE public.mt5_connections SET account_label = left(account_label, 200)
WHERE length(account_label) > 200;
ALTER TABLE public.mt5_connections
    ALTER COLUMN account_label SET NOT NULL,
    ADD CONSTRAINT mt5_connections_account_label_check
        CHECK (btrim(account_label) <> '' AND length(account_label) <= 200);

-- When a credential's value was put in place: each rotation stores a new credential.
ALTER TABLE public.mt5_credentials ADD COLUMN last_rotated_at timestamptz;
UPDATE public.mt5_credentials SET last_rotated_at = created_at;
ALTER TABLE public.mt5_credentials
    ALTER COLUMN last_rotated_at SET DEFAULT now(),
    ALTER COLUMN last_rotated_at SET NOT NULL;
GRANT SELECT (last_rotated_at) ON public.mt5_credentials TO authenticated;
