-- The analytics' daily rollup: per account, time zone and local day, what that day's closed
-- trades and account-level cash movements add up to (services/shared/analytics/days.py says
-- what each column is). The writer recomputes every day an event touches, in the journal's
-- transaction, from the journal rows and movements of that day: a replayed, reordered or late
-- event gives the row computing it from scratch gives. GET /v1/analytics reads only these rows.

-- The zones the rollup is kept in for a user: each one the user asked analytics for (the API
-- adds it, and fills its rows, at the first such request).
CREATE TABLE public.analytics_time_zones (
    user_id     uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    time_zone   text NOT NULL CHECK (length(time_zone) BETWEEN 1 AND 64),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, time_zone)
);

CREATE TABLE public.analytics_daily (
    account_id        uuid NOT NULL,
    user_id           uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    time_zone         text NOT NULL,
    day               date NOT NULL,
    trades            integer NOT NULL CHECK (trades >= 0),
    wins              integer NOT NULL CHECK (wins >= 0),
    losses            integer NOT NULL CHECK (losses >= 0),
    gross_profit      numeric NOT NULL,
    gross_loss        numeric NOT NULL,
    largest_win       numeric,
    largest_loss      numeric,
    -- Account-level movements that are P&L (charges, interest...) and those that are flows
    -- (deposits, withdrawals): the day's balance change is gross_profit + gross_loss + both.
    charges           numeric NOT NULL,
    flows             numeric NOT NULL,
    duration_buckets  integer[] NOT NULL,
    -- Open-to-close microseconds of the day's closed trades, ascending (for the median).
    durations         bigint[] NOT NULL,
    -- The day's wins and losses in close order, each its close time in epoch microseconds,
    -- negative for a loss (for streaks across accounts).
    outcomes          bigint[] NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, time_zone, day),
    -- The user's own account only (see 0009).
    FOREIGN KEY (account_id, user_id) REFERENCES public.trading_accounts (id, user_id)
        ON DELETE CASCADE,
    FOREIGN KEY (user_id, time_zone) REFERENCES public.analytics_time_zones (user_id, time_zone)
        ON DELETE CASCADE
);

CREATE INDEX analytics_daily_user_id_idx ON public.analytics_daily (user_id, time_zone, day);

-- A day recomputed reads the account's closed trades and movements of that day only.
CREATE INDEX IF NOT EXISTS trading_journal_account_closed_idx
    ON public.trading_journal (account_id, closed_at) WHERE status = 'closed';

-- Owner-only, read-only, as for everything the services write (0009).
ALTER TABLE public.analytics_time_zones ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.analytics_daily ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.analytics_time_zones, public.analytics_daily FROM PUBLIC, anon, authenticated;
GRANT SELECT ON public.analytics_time_zones, public.analytics_daily TO authenticated;
GRANT ALL ON public.analytics_time_zones, public.analytics_daily TO service_role;
CREATE POLICY analytics_time_zones_owner_select ON public.analytics_time_zones
    FOR SELECT TO authenticated USING (user_id = auth.uid());
CREATE POLICY analytics_daily_owner_select ON public.analytics_daily
    FOR SELECT TO authenticated USING (user_id = auth.uid());
