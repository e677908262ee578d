-- Streaks from the rollup without a walk over every trade: each account day keeps the runs its
-- wins and losses come to (services/shared/analytics/streaks.py: Runs), and each group of a
-- user's accounts whose streaks together were asked for (a portfolio) keeps the runs of each
-- day's trades of all its accounts merged in close order. Runs of consecutive days combine, so
-- a streak over years is a fold over days.

-- The rollup is derived from the journal: emptied here, each zone is filled again, with the
-- new columns, by the next request in it.
DELETE FROM public.analytics_time_zones;

-- The day's runs: the one it starts with, the one it ends with (positive counts wins, negative
-- losses, 0 a day without either), and its longest win and loss runs.
ALTER TABLE public.analytics_daily
    ADD COLUMN first_run integer NOT NULL,
    ADD COLUMN last_run integer NOT NULL,
    ADD COLUMN longest_win integer NOT NULL CHECK (longest_win >= 0),
    ADD COLUMN longest_loss integer NOT NULL CHECK (longest_loss >= 0);

-- A group of two or more of the user's accounts (ids ascending) kept in one zone: the API adds
-- it, and fills its rows, the first time an answer needs its streaks.
CREATE TABLE public.analytics_portfolios (
    id          uuid NOT NULL DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    time_zone   text NOT NULL,
    accounts    uuid[] NOT NULL CHECK (cardinality(accounts) BETWEEN 2 AND 1000),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id),
    UNIQUE (id, user_id),
    UNIQUE (user_id, time_zone, accounts),
    FOREIGN KEY (user_id, time_zone) REFERENCES public.analytics_time_zones (user_id, time_zone)
        ON DELETE CASCADE
);

-- A portfolio's day with wins or losses: the runs of its accounts' trades that day together.
CREATE TABLE public.analytics_portfolio_daily (
    portfolio_id  uuid NOT NULL,
    user_id       uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    day           date NOT NULL,
    first_run     integer NOT NULL CHECK (first_run <> 0),
    last_run      integer NOT NULL CHECK (last_run <> 0),
    longest_win   integer NOT NULL CHECK (longest_win >= 0),
    longest_loss  integer NOT NULL CHECK (longest_loss >= 0),
    PRIMARY KEY (portfolio_id, day),
    -- The user's own portfolio only (see 0009).
    FOREIGN KEY (portfolio_id, user_id) REFERENCES public.analytics_portfolios (id, user_id)
        ON DELETE CASCADE
);

CREATE INDEX analytics_portfolio_daily_user_id_idx ON public.analytics_portfolio_daily (user_id);

-- Owner-only, read-only, as for everything the services write (0009).
ALTER TABLE public.analytics_portfolios ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.analytics_portfolio_daily ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.analytics_portfolios, public.analytics_portfolio_daily
    FROM PUBLIC, anon, authenticated;
GRANT SELECT ON public.analytics_portfolios, public.analytics_portfolio_daily TO authenticated;
GRANT ALL ON public.analytics_portfolios, public.analytics_portfolio_daily TO service_role;
CREATE POLICY analytics_portfolios_owner_select ON public.analytics_portfolios
    FOR SELECT TO authenticated USING (user_id = auth.uid());
CREATE POLICY analytics_portfolio_daily_owner_select ON public.analytics_portfolio_daily
    FOR SELECT TO authenticated USING (user_id = auth.uid());
