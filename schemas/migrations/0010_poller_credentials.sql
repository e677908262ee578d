-- The poller remembers WHICH broker credential the broker refused, not only when: a connection
-- is polled again as soon as it has an active credential other than that one. A time could not
-- say that: a poll's refusal recorded with now() (its transaction's start) could come after a
-- credential stored in a transaction begun earlier, and that credential never counted as new.
--
-- A connection without any active broker credential is simply not polled (waiting for
-- credentials), which needs nothing stored.

ALTER TABLE public.sync_schedule ADD COLUMN rejected_credential_id uuid;

COMMENT ON COLUMN public.sync_schedule.rejected_credential_id IS
    'The broker credential (mt5_credentials.id) the broker refused; NULL when none was.'
    ' Not a foreign key: a refused credential deleted later is simply no longer active.';

-- Refusals recorded before this have no credential to name, and their time is what could not
-- be trusted: each is tried once more (a broker that refuses again records which one).
--
-- And "no credentials stored" used to be recorded as a refusal, an error and a failure: a
-- connection still without an active broker credential is now only waiting for one, so what
-- that left behind is cleared (status `error` back to `active` only where it was set for that).
WITH waiting AS (
    UPDATE public.sync_schedule s
    SET credentials_rejected_at = NULL, consecutive_failures = 0, last_error = NULL,
        last_error_at = NULL, updated_at = now()
    WHERE s.credentials_rejected_at IS NOT NULL
      AND s.last_error LIKE 'credentials: no broker credentials stored%'
      AND NOT EXISTS (
          SELECT 1 FROM public.mt5_credentials k
          WHERE k.connection_id = s.connection_id AND k.kind = 'broker_credentials'
            AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now()))
    RETURNING s.connection_id
)
UPDATE public.mt5_connections c
SET status = 'active', last_error = NULL, updated_at = now()
FROM waiting
WHERE c.id = waiting.connection_id AND c.status = 'error'
  AND c.last_error LIKE 'credentials: no broker credentials stored%';

GRANT SELECT (rejected_credential_id) ON public.sync_schedule TO authenticated;
