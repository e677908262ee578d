-- Owner-only row-level security, Supabase style: the `authenticated` role sees only rows whose
-- user_id is auth.uid(). The services connect as the tables' owner (or service_role), which RLS
-- does not restrict.
--
-- What a signed-in user may change is narrower than what they may see:
--   * their journal, accounts and taken trades: full owner CRUD, except the columns sync owns
--     (a planted trade id or balance clock would hijack or freeze what sync writes);
--   * their connections: read, relabel, delete (identity and status are the service's);
--   * credentials, data keys, audit, fills, cash movements, sync log: read only (written by
--     the services alone; a user-written fill must never reach anyone's journal).

CREATE OR REPLACE FUNCTION public.poscal_guard_sync_columns() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    col text;
BEGIN
    IF current_user NOT IN ('authenticated', 'anon') THEN
        RETURN NEW;
    END IF;
    FOREACH col IN ARRAY TG_ARGV LOOP
        IF (TG_OP = 'INSERT' AND coalesce(to_jsonb(NEW) -> col, 'null') <> 'null')
            OR (TG_OP = 'UPDATE' AND (to_jsonb(NEW) -> col) IS DISTINCT FROM (to_jsonb(OLD) -> col))
        THEN
            RAISE EXCEPTION 'column %.% is written by PosCal sync only', TG_TABLE_NAME, col
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    END LOOP;
    RETURN NEW;
END
$$;

CREATE TRIGGER trading_journal_guard_sync_columns
    BEFORE INSERT OR UPDATE ON public.trading_journal
    FOR EACH ROW EXECUTE FUNCTION public.poscal_guard_sync_columns(
        'mt5_trade_id', 'connection_id', 'position_key', 'connection_type');

CREATE TRIGGER trading_accounts_guard_sync_columns
    BEFORE INSERT OR UPDATE ON public.trading_accounts
    FOR EACH ROW EXECUTE FUNCTION public.poscal_guard_sync_columns(
        'balance_as_of', 'balance_received_at');

DO $$
DECLARE
    t text;
BEGIN
    -- The PosCal tables users edit themselves.
    FOREACH t IN ARRAY ARRAY['trading_accounts', 'taken_trades', 'trading_journal'] LOOP
        EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON public.%I TO authenticated', t);
        EXECUTE format(
            'CREATE POLICY %I ON public.%I FOR INSERT TO authenticated WITH CHECK (user_id = auth.uid())',
            t || '_owner_insert', t);
        EXECUTE format(
            'CREATE POLICY %I ON public.%I FOR UPDATE TO authenticated'
            ' USING (user_id = auth.uid()) WITH CHECK (user_id = auth.uid())',
            t || '_owner_update', t);
        EXECUTE format(
            'CREATE POLICY %I ON public.%I FOR DELETE TO authenticated USING (user_id = auth.uid())',
            t || '_owner_delete', t);
    END LOOP;

    -- Broker sync's own tables: nothing by default (Supabase grants all to the API roles).
    FOREACH t IN ARRAY ARRAY[
        'mt5_connections', 'mt5_credentials', 'mt5_security_audit', 'user_data_keys',
        'broker_fills', 'broker_cash_movements', 'sync_events'
    ] LOOP
        EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('REVOKE ALL ON public.%I FROM anon, authenticated', t);
        EXECUTE format('GRANT SELECT ON public.%I TO authenticated', t);
    END LOOP;

    -- Everyone sees only their own rows, everywhere.
    FOREACH t IN ARRAY ARRAY[
        'trading_accounts', 'taken_trades', 'trading_journal',
        'mt5_connections', 'mt5_credentials', 'mt5_security_audit', 'user_data_keys',
        'broker_fills', 'broker_cash_movements', 'sync_events'
    ] LOOP
        EXECUTE format('GRANT ALL ON public.%I TO service_role', t);
        EXECUTE format(
            'CREATE POLICY %I ON public.%I FOR SELECT TO authenticated USING (user_id = auth.uid())',
            t || '_owner_select', t);
    END LOOP;
END
$$;

-- Connections: relabel and delete your own; what they connect to and their status are not yours
-- to change (a lockout must not be undone by its subject).
GRANT UPDATE (label) ON public.mt5_connections TO authenticated;
GRANT DELETE ON public.mt5_connections TO authenticated;
CREATE POLICY mt5_connections_owner_update ON public.mt5_connections FOR UPDATE TO authenticated
    USING (user_id = auth.uid()) WITH CHECK (user_id = auth.uid());
CREATE POLICY mt5_connections_owner_delete ON public.mt5_connections FOR DELETE TO authenticated
    USING (user_id = auth.uid());

GRANT USAGE ON SCHEMA public TO authenticated, service_role;
