-- Ingest security: durable replay defence, the attempt log, lockout, forced credential rotation,
-- and change notifications that keep every ingest replica's connection cache honest.

-- One row per webhook id a connection has delivered. The primary key is the replay defence: the
-- first replica to insert a (connection, webhook id) owns it, however many race; a second copy is
-- refused. `publishing` rows are claims whose event is on its way to Kafka: a claim older than
-- its lease (its replica died before the acknowledgement was recorded) may be taken over, which
-- at worst re-publishes the same event id, and downstream idempotency absorbs that.
CREATE TABLE public.webhook_deliveries (
    connection_id  uuid NOT NULL REFERENCES public.mt5_connections (id) ON DELETE CASCADE,
    webhook_id     text NOT NULL,
    user_id        uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    event_id       uuid NOT NULL,
    state          text NOT NULL CHECK (state IN ('publishing', 'accepted')),
    claim_token    uuid NOT NULL,
    claimed_at     timestamptz NOT NULL DEFAULT now(),
    accepted_at    timestamptz,
    PRIMARY KEY (connection_id, webhook_id)
);

CREATE INDEX webhook_deliveries_claimed_at_idx ON public.webhook_deliveries (claimed_at);
CREATE INDEX webhook_deliveries_user_id_idx ON public.webhook_deliveries (user_id);

-- Every delivery attempt, accepted or refused. Attempts at unknown connections are kept too
-- (they are what an attack looks like) with no user, so no signed-in user can see them.
CREATE TABLE public.webhook_attempts (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    connection_id      uuid,
    user_id            uuid REFERENCES auth.users (id) ON DELETE CASCADE,
    broker             text NOT NULL,
    outcome            text NOT NULL CHECK (outcome IN ('accepted', 'refused')),
    status_code        smallint NOT NULL,
    reason             text NOT NULL,
    client_ip          inet,
    user_agent         text,
    webhook_id         text,
    webhook_timestamp  bigint,
    event_id           uuid,
    received_at        timestamptz NOT NULL,
    recorded_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_attempts_connection_idx
    ON public.webhook_attempts (connection_id, received_at);
CREATE INDEX webhook_attempts_user_id_idx ON public.webhook_attempts (user_id);
CREATE INDEX webhook_attempts_received_at_idx ON public.webhook_attempts (received_at);

-- Lockout: when and why a connection stopped accepting webhooks (status 'locked').
ALTER TABLE public.mt5_connections ADD COLUMN locked_at timestamptz;

-- Suspicious activity (a lockout) marks a connection's credentials for forced rotation; storing
-- new credentials replaces the marked rows.
ALTER TABLE public.mt5_credentials
    ADD COLUMN rotation_forced_at timestamptz,
    ADD COLUMN rotation_forced_reason text;

-- A signed-in user reads their own attempts and deliveries; only the services write them.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['webhook_deliveries', 'webhook_attempts'] LOOP
        EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('REVOKE ALL ON public.%I FROM anon, authenticated', t);
        EXECUTE format('GRANT SELECT ON public.%I TO authenticated', t);
        EXECUTE format('GRANT ALL ON public.%I TO service_role', t);
        EXECUTE format(
            'CREATE POLICY %I ON public.%I FOR SELECT TO authenticated USING (user_id = auth.uid())',
            t || '_owner_select', t);
    END LOOP;
END
$$;

-- Ingest replicas cache connections and their keys; whatever changes what a webhook is verified
-- against (status, identity, credentials) tells them to forget that connection at once.
CREATE OR REPLACE FUNCTION public.poscal_notify_connection_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed uuid;
BEGIN
    IF TG_TABLE_NAME = 'mt5_connections' THEN
        changed := coalesce(NEW.id, OLD.id);
    ELSE
        changed := coalesce(NEW.connection_id, OLD.connection_id);
    END IF;
    PERFORM pg_notify('poscal_connection_changed', changed::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER mt5_connections_notify_changed
    AFTER UPDATE ON public.mt5_connections
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.broker IS DISTINCT FROM NEW.broker
          OR OLD.account_number IS DISTINCT FROM NEW.account_number
          OR OLD.server IS DISTINCT FROM NEW.server
          OR OLD.connection_type IS DISTINCT FROM NEW.connection_type
          OR OLD.user_id IS DISTINCT FROM NEW.user_id
          OR OLD.account_id IS DISTINCT FROM NEW.account_id)
    EXECUTE FUNCTION public.poscal_notify_connection_changed();

CREATE TRIGGER mt5_connections_notify_deleted
    AFTER DELETE ON public.mt5_connections
    FOR EACH ROW EXECUTE FUNCTION public.poscal_notify_connection_changed();

CREATE TRIGGER mt5_credentials_notify_changed
    AFTER INSERT OR UPDATE OR DELETE ON public.mt5_credentials
    FOR EACH ROW EXECUTE FUNCTION public.poscal_notify_connection_changed();
