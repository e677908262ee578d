-- The PosCal tables broker sync extends. Created only where absent (on Supabase they exist);
-- the columns broker sync needs are added idempotently either way.

CREATE TABLE IF NOT EXISTS public.trading_accounts (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id          uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    name             text NOT NULL,
    broker           text,
    currency         text,
    current_balance  numeric NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE public.trading_accounts
    ADD COLUMN IF NOT EXISTS current_balance numeric NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS account_number text,
    ADD COLUMN IF NOT EXISTS account_type text,
    ADD COLUMN IF NOT EXISTS equity numeric,
    -- The broker's time for the balance above: only a newer snapshot may replace it.
    ADD COLUMN IF NOT EXISTS balance_as_of timestamptz,
    ADD COLUMN IF NOT EXISTS balance_received_at timestamptz;

CREATE INDEX IF NOT EXISTS trading_accounts_user_id_idx ON public.trading_accounts (user_id);

CREATE TABLE IF NOT EXISTS public.taken_trades (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    account_id   uuid REFERENCES public.trading_accounts (id) ON DELETE SET NULL,
    symbol       text NOT NULL,
    side         text CHECK (side IN ('buy', 'sell')),
    lot_size     numeric,
    entry_price  numeric,
    stop_loss    numeric,
    take_profit  numeric,
    risk_amount  numeric,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS taken_trades_user_id_idx ON public.taken_trades (user_id);

CREATE TABLE IF NOT EXISTS public.trading_journal (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    account_id      uuid REFERENCES public.trading_accounts (id) ON DELETE SET NULL,
    taken_trade_id  uuid REFERENCES public.taken_trades (id) ON DELETE SET NULL,
    symbol          text NOT NULL,
    side            text NOT NULL CHECK (side IN ('buy', 'sell')),
    volume          numeric,
    entry_price     numeric,
    exit_price      numeric,
    opened_at       timestamptz,
    closed_at       timestamptz,
    profit          numeric,
    commission      numeric,
    swap            numeric,
    status          text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    notes           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS trading_journal_user_id_idx ON public.trading_journal (user_id);
