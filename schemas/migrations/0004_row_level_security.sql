-- Owner-only row-level security, Supabase style: the `authenticated` role sees and changes only
-- rows whose user_id is auth.uid(). The services connect as the tables' owner (or service_role),
-- which RLS does not restrict.

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'trading_accounts', 'taken_trades', 'trading_journal',
        'mt5_connections', 'mt5_credentials', 'mt5_security_audit',
        'user_data_keys', 'broker_fills', 'broker_cash_movements', 'sync_events'
    ] LOOP
        EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON public.%I TO authenticated', t);
        EXECUTE format('GRANT ALL ON public.%I TO service_role', t);
        EXECUTE format(
            'CREATE POLICY %I ON public.%I FOR SELECT TO authenticated USING (user_id = auth.uid())',
            t || '_owner_select', t);
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
END
$$;

GRANT USAGE ON SCHEMA public TO authenticated, service_role;
