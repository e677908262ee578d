-- Where the writer's fold of each position stands (services/writer/journal.py: PositionFold):
-- its last fill, the volume left open and its latest round trip's running totals, so a batch
-- adds a position's new fills to it instead of reading every fill of the position again. Only
-- the writer's bookkeeping: a position without a row (a fill out of order, a cancellation, a
-- charge, or none yet) is folded again from all its fills, and gets its row back.

CREATE TABLE public.position_folds (
    connection_id  uuid NOT NULL,
    position_key   text NOT NULL,
    user_id        uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    fold           jsonb NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, position_key),
    -- The user's own connection only (see 0009).
    FOREIGN KEY (connection_id, user_id) REFERENCES public.mt5_connections (id, user_id)
        ON DELETE CASCADE
);

CREATE INDEX position_folds_user_id_idx ON public.position_folds (user_id);

-- Owner-only, read-only, as for everything the services write (0009).
ALTER TABLE public.position_folds ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.position_folds FROM PUBLIC, anon, authenticated;
GRANT SELECT ON public.position_folds TO authenticated;
GRANT ALL ON public.position_folds TO service_role;
CREATE POLICY position_folds_owner_select ON public.position_folds
    FOR SELECT TO authenticated USING (user_id = auth.uid());
