-- Reconciliation: each connection's last comparison of the broker's history with what the
-- journal holds (polled: deals the broker has that no fill or movement is; MT5 webhooks: the
-- reported balance against deposits + realized P&L - charges over the recorded deals), and when
-- the next one is due. A poller replica leases due rows as it leases syncs (lease_owner,
-- lease_until), so no two replicas reconcile one connection at once.

CREATE TABLE public.connection_reconciliations (
    connection_id       uuid PRIMARY KEY,
    user_id             uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    next_due_at         timestamptz NOT NULL DEFAULT now(),
    lease_owner         text,
    lease_until         timestamptz,
    last_reconciled_at  timestamptz,
    -- ok: nothing missing, no drift; gaps: some found (see the counts); failed: it could not
    -- compare (the broker or credentials refused; see detail).
    result              text CHECK (result IN ('ok', 'gaps', 'failed')),
    missing_deals       integer NOT NULL DEFAULT 0 CHECK (missing_deals >= 0),
    -- Of those, how many were fetched again (published on the raw topic for the pipeline).
    fetched_deals       integer NOT NULL DEFAULT 0 CHECK (fetched_deals >= 0),
    -- Reported balance minus the one the recorded deals add up to, each rounded to the
    -- account currency's minor unit; NULL when not compared.
    balance_drift       numeric,
    detail              jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    -- The user's own connection only (see 0009).
    FOREIGN KEY (connection_id, user_id) REFERENCES public.mt5_connections (id, user_id)
        ON DELETE CASCADE
);

CREATE INDEX connection_reconciliations_due_idx
    ON public.connection_reconciliations (next_due_at);
CREATE INDEX connection_reconciliations_user_id_idx
    ON public.connection_reconciliations (user_id);

-- Owner-only, read-only, as for everything the services write (0009); which replica holds a
-- lease is the services' business.
ALTER TABLE public.connection_reconciliations ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.connection_reconciliations FROM PUBLIC, anon, authenticated;
GRANT SELECT (connection_id, user_id, next_due_at, last_reconciled_at, result, missing_deals,
              fetched_deals, balance_drift, detail, updated_at)
    ON public.connection_reconciliations TO authenticated;
GRANT ALL ON public.connection_reconciliations TO service_role;
CREATE POLICY connection_reconciliations_owner_select ON public.connection_reconciliations
    FOR SELECT TO authenticated USING (user_id = auth.uid());
