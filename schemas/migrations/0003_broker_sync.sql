-- Broker sync: connections, encrypted credentials, per-connection security aggregates, the
-- append-only fills and cash movements the journal is computed from, and the sync log.

CREATE TABLE public.mt5_connections (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id          uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    account_id       uuid NOT NULL REFERENCES public.trading_accounts (id) ON DELETE CASCADE,
    broker           text NOT NULL DEFAULT 'mt5',
    connection_type  text NOT NULL CHECK (connection_type IN ('demo', 'live')),
    account_number   text NOT NULL,
    server           text NOT NULL DEFAULT '',
    label            text,
    status           text NOT NULL DEFAULT 'active'
                     CHECK (status IN ('active', 'paused', 'locked', 'error', 'revoked')),
    last_sync_at     timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- One broker account feeds one connection: journal keys are derived from the broker account,
-- so a second connection to it (by anyone) would write into the first one's rows.
CREATE UNIQUE INDEX mt5_connections_broker_account_key
    ON public.mt5_connections (broker, server, account_number);
CREATE INDEX mt5_connections_user_id_idx ON public.mt5_connections (user_id);

-- Per-user data keys, each wrapped by the key-encryption key named by kek_id.
CREATE TABLE public.user_data_keys (
    user_id      uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    version      integer NOT NULL,
    kek_id       text NOT NULL,
    wrapped_key  bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, version)
);

CREATE TABLE public.mt5_credentials (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    connection_id     uuid NOT NULL REFERENCES public.mt5_connections (id) ON DELETE CASCADE,
    user_id           uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    kind              text NOT NULL,
    ciphertext        bytea NOT NULL,
    data_key_version  integer NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz,
    revoked_at        timestamptz,
    FOREIGN KEY (user_id, data_key_version) REFERENCES public.user_data_keys (user_id, version)
);

CREATE INDEX mt5_credentials_connection_idx ON public.mt5_credentials (connection_id, kind);

CREATE TABLE public.mt5_security_audit (
    connection_id         uuid PRIMARY KEY REFERENCES public.mt5_connections (id) ON DELETE CASCADE,
    user_id               uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    last_ip               inet,
    last_user_agent       text,
    last_success_at       timestamptz,
    last_failure_at       timestamptz,
    consecutive_failures  integer NOT NULL DEFAULT 0,
    monthly_sync_count    integer NOT NULL DEFAULT 0,
    sync_month            date,
    last_sync_at          timestamptz,
    last_event_id         uuid,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE public.trading_journal
    ADD COLUMN IF NOT EXISTS mt5_trade_id text,
    ADD COLUMN IF NOT EXISTS connection_id uuid
        REFERENCES public.mt5_connections (id) ON DELETE SET NULL,
    ADD COLUMN IF NOT EXISTS connection_type text,
    ADD COLUMN IF NOT EXISTS broker text,
    ADD COLUMN IF NOT EXISTS position_key text,
    ADD COLUMN IF NOT EXISTS closed_volume numeric,
    ADD COLUMN IF NOT EXISTS fees numeric,
    ADD COLUMN IF NOT EXISTS fill_count integer,
    ADD COLUMN IF NOT EXISTS synced_at timestamptz;

CREATE UNIQUE INDEX IF NOT EXISTS trading_journal_mt5_trade_id_key
    ON public.trading_journal (mt5_trade_id);
CREATE INDEX IF NOT EXISTS trading_journal_position_key_idx
    ON public.trading_journal (position_key);

-- Append-only, keyed by the broker's atomic id (e.g. an MT5 deal ticket): the source of truth
-- from which each journal row is recomputed, so replays and reordering cannot change a total.
CREATE TABLE public.broker_fills (
    fill_key       text PRIMARY KEY,
    position_key   text NOT NULL,
    user_id        uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    connection_id  uuid NOT NULL REFERENCES public.mt5_connections (id) ON DELETE CASCADE,
    account_id     uuid NOT NULL REFERENCES public.trading_accounts (id) ON DELETE CASCADE,
    broker         text NOT NULL,
    symbol         text NOT NULL,
    side           text NOT NULL CHECK (side IN ('buy', 'sell')),
    entry          text NOT NULL CHECK (entry IN ('in', 'out', 'inout', 'out_by')),
    volume         numeric NOT NULL CHECK (volume > 0),
    price          numeric NOT NULL,
    profit         numeric NOT NULL DEFAULT 0,
    commission     numeric NOT NULL DEFAULT 0,
    swap           numeric NOT NULL DEFAULT 0,
    fee            numeric NOT NULL DEFAULT 0,
    executed_at    timestamptz NOT NULL,
    broker_time    text NOT NULL,
    broker_ref     text NOT NULL,
    order_ref      text,
    comment        text,
    -- Set once when the broker cancels the execution; a cancelled fill counts in no position.
    cancelled      boolean NOT NULL DEFAULT false,
    event_id       uuid NOT NULL,
    inserted_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX broker_fills_position_key_idx ON public.broker_fills (position_key);
CREATE INDEX broker_fills_user_id_idx ON public.broker_fills (user_id);
-- The newest deal an account has recorded: a balance report older than that is stale.
CREATE INDEX broker_fills_account_time_idx ON public.broker_fills (account_id, executed_at);

CREATE TABLE public.broker_cash_movements (
    movement_key   text PRIMARY KEY,
    user_id        uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    connection_id  uuid NOT NULL REFERENCES public.mt5_connections (id) ON DELETE CASCADE,
    account_id     uuid NOT NULL REFERENCES public.trading_accounts (id) ON DELETE CASCADE,
    kind           text NOT NULL,
    amount         numeric NOT NULL,
    currency       text,
    executed_at    timestamptz NOT NULL,
    broker_time    text NOT NULL,
    broker_ref     text NOT NULL,
    comment        text,
    event_id       uuid NOT NULL,
    inserted_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX broker_cash_movements_user_id_idx ON public.broker_cash_movements (user_id);
CREATE INDEX broker_cash_movements_account_time_idx
    ON public.broker_cash_movements (account_id, executed_at);

-- One row per processed event (idempotent on event_id): what each sync brought and changed.
CREATE TABLE public.sync_events (
    event_id           uuid PRIMARY KEY,
    connection_id      uuid NOT NULL REFERENCES public.mt5_connections (id) ON DELETE CASCADE,
    user_id            uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    source             text NOT NULL,
    received_at        timestamptz NOT NULL,
    fills_received     integer NOT NULL,
    fills_inserted     integer NOT NULL,
    cash_received      integer NOT NULL,
    cash_inserted      integer NOT NULL,
    positions_touched  integer NOT NULL,
    balance_applied    boolean NOT NULL,
    recorded_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX sync_events_connection_idx ON public.sync_events (connection_id, recorded_at);
