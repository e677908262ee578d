-- Tenant isolation in the schema itself, for what row-level security cannot see.
--
-- 1. References carry the user. A foreign key is checked past RLS, so with a key of the
--    referenced id alone a signed-in user could point their journal or taken trades at another
--    user's account or taken trade (and a service bug could file one user's fills under another
--    user's connection). Every reference between tables holding user data becomes a composite
--    (x_id, user_id) -> (id, user_id) key, keeping the old key's ON DELETE action (SET NULL now
--    names the reference column only: the row stays its owner's).
--
--    Existing rows that break the rule are bugs. A nullable reference (the journal's account,
--    taken trade and connection; a taken trade's account) is set to NULL, with a NOTICE of how
--    many: the row stays with its owner and loses only the reference it had no right to. A
--    required one (everything the services write) is not guessed at: the migration stops,
--    naming the table, and nothing of it is applied.
--
-- 2. The API roles get exactly the grants intended, whatever was granted before. Supabase runs
--    `ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated,
--    service_role`, so every table created above came with ALL for anon and authenticated
--    (TRUNCATE and TRIGGER included, which row-level security does not restrict). Everything of
--    anon's and authenticated's on these tables is revoked and the intended grants are stated
--    again, here in one place; anon gets nothing (it sees no rows anyway).
--
-- 3. Owners read their credentials' and data keys' metadata, never the ciphertext or the
--    wrapped key (column grants).

ALTER TABLE public.trading_accounts
    ADD CONSTRAINT trading_accounts_id_user_id_key UNIQUE (id, user_id);
ALTER TABLE public.taken_trades
    ADD CONSTRAINT taken_trades_id_user_id_key UNIQUE (id, user_id);
ALTER TABLE public.mt5_connections
    ADD CONSTRAINT mt5_connections_id_user_id_key UNIQUE (id, user_id);

DO $$
DECLARE
    ref record;
    old record;
    on_delete "char";
    nullable boolean;
    broken bigint;
    action text;
BEGIN
    FOR ref IN
        SELECT * FROM (VALUES
            ('trading_journal', 'account_id', 'trading_accounts'),
            ('trading_journal', 'taken_trade_id', 'taken_trades'),
            ('trading_journal', 'connection_id', 'mt5_connections'),
            ('taken_trades', 'account_id', 'trading_accounts'),
            ('mt5_connections', 'account_id', 'trading_accounts'),
            ('mt5_credentials', 'connection_id', 'mt5_connections'),
            ('mt5_security_audit', 'connection_id', 'mt5_connections'),
            ('broker_fills', 'connection_id', 'mt5_connections'),
            ('broker_fills', 'account_id', 'trading_accounts'),
            ('broker_cash_movements', 'connection_id', 'mt5_connections'),
            ('broker_cash_movements', 'account_id', 'trading_accounts'),
            ('sync_events', 'connection_id', 'mt5_connections'),
            ('webhook_deliveries', 'connection_id', 'mt5_connections'),
            ('sync_schedule', 'connection_id', 'mt5_connections')
        ) AS r (tab, col, target)
    LOOP
        SELECT NOT a.attnotnull INTO nullable
        FROM pg_attribute a
        WHERE a.attrelid = format('public.%I', ref.tab)::regclass AND a.attname = ref.col;

        -- The old single-column key, found by what it is rather than by name (on Supabase the
        -- PosCal tables predate these migrations); its ON DELETE action is kept.
        on_delete := NULL;
        FOR old IN
            SELECT con.conname, con.confdeltype
            FROM pg_constraint con
            JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = con.conkey[1]
            WHERE con.contype = 'f'
              AND con.conrelid = format('public.%I', ref.tab)::regclass
              AND con.confrelid = format('public.%I', ref.target)::regclass
              AND cardinality(con.conkey) = 1 AND a.attname = ref.col
        LOOP
            on_delete := coalesce(on_delete, old.confdeltype);
            EXECUTE format('ALTER TABLE public.%I DROP CONSTRAINT %I', ref.tab, old.conname);
        END LOOP;
        on_delete := coalesce(on_delete, (CASE WHEN nullable THEN 'n' ELSE 'c' END)::"char");

        -- A reference to a row of another user (or to none at all, where no key held it).
        IF nullable THEN
            EXECUTE format(
                'UPDATE public.%1$I t SET %2$I = NULL WHERE t.%2$I IS NOT NULL AND NOT EXISTS ('
                ' SELECT 1 FROM public.%3$I r WHERE r.id = t.%2$I AND r.user_id = t.user_id)',
                ref.tab, ref.col, ref.target);
            GET DIAGNOSTICS broken = ROW_COUNT;
            IF broken > 0 THEN
                RAISE NOTICE '%.%: % reference(s) to another user''s % cleared',
                    ref.tab, ref.col, broken, ref.target;
            END IF;
        ELSE
            EXECUTE format(
                'SELECT count(*) FROM public.%1$I t WHERE NOT EXISTS ('
                ' SELECT 1 FROM public.%3$I r WHERE r.id = t.%2$I AND r.user_id = t.user_id)',
                ref.tab, ref.col, ref.target)
            INTO broken;
            IF broken > 0 THEN
                RAISE EXCEPTION '%.%: % row(s) refer to a % row of another user',
                    ref.tab, ref.col, broken, ref.target
                    USING HINT = 'These rows were written with the wrong user_id: correct or'
                        ' delete them, then migrate again.';
            END IF;
        END IF;

        action := CASE on_delete
            WHEN 'c' THEN 'CASCADE'
            WHEN 'n' THEN format('SET NULL (%I)', ref.col)
            WHEN 'd' THEN format('SET DEFAULT (%I)', ref.col)
            WHEN 'r' THEN 'RESTRICT'
            ELSE 'NO ACTION'
        END;
        EXECUTE format(
            'ALTER TABLE public.%1$I ADD CONSTRAINT %4$I FOREIGN KEY (%2$I, user_id)'
            ' REFERENCES public.%3$I (id, user_id) ON DELETE %5$s',
            ref.tab, ref.col, ref.target, ref.tab || '_' || ref.col || '_user_fkey', action);
    END LOOP;
END
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'trading_accounts', 'taken_trades', 'trading_journal',
        'mt5_connections', 'mt5_credentials', 'mt5_security_audit', 'user_data_keys',
        'broker_fills', 'broker_cash_movements', 'sync_events',
        'webhook_deliveries', 'webhook_attempts', 'sync_schedule'
    ] LOOP
        -- Revoking a table's privileges revokes its column privileges too.
        EXECUTE format('REVOKE ALL ON public.%I FROM PUBLIC, anon, authenticated', t);
    END LOOP;
    -- Only the services insert attempts.
    EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM PUBLIC, anon, authenticated',
        pg_get_serial_sequence('public.webhook_attempts', 'id'));
END
$$;

-- The PosCal tables users edit themselves (RLS: their own rows only; triggers guard the
-- columns sync owns).
GRANT SELECT, INSERT, UPDATE, DELETE
    ON public.trading_accounts, public.taken_trades, public.trading_journal TO authenticated;

-- Connections: read, relabel, delete.
GRANT SELECT, DELETE ON public.mt5_connections TO authenticated;
GRANT UPDATE (label) ON public.mt5_connections TO authenticated;

-- What the services write: read only.
GRANT SELECT ON public.mt5_security_audit, public.broker_fills, public.broker_cash_movements,
    public.sync_events, public.webhook_deliveries, public.webhook_attempts TO authenticated;

-- Credentials and data keys: their metadata, not the sealed values.
GRANT SELECT (id, connection_id, user_id, kind, created_at, expires_at, revoked_at,
    data_key_version, rotation_forced_at, rotation_forced_reason)
    ON public.mt5_credentials TO authenticated;
GRANT SELECT (user_id, version, kek_id, created_at) ON public.user_data_keys TO authenticated;

-- The schedule, without who holds a lease (as 0007 had it).
GRANT SELECT (connection_id, user_id, cursor, interval_seconds, next_sync_at,
    consecutive_failures, last_attempt_at, last_success_at, last_error, last_error_at,
    credentials_rejected_at, updated_at) ON public.sync_schedule TO authenticated;
