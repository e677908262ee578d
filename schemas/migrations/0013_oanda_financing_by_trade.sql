-- OANDA daily financing is now booked as a charge of each open trade it names (its journal swap
-- then equals OANDA's own TradeSummary `financing`). A DAILY_FINANCING booked before as the
-- account's whole financing (`oanda:{account}:txn:{id}`, no position) would count a second time
-- beside the per-trade charges once its page is polled again. Those rows are removed, and each
-- connection that had any reads its history again from the start, so every one is booked anew,
-- split by trade (fills are keyed per transaction, so nothing else is written twice; the
-- balance never rolls back to an older report).
WITH removed AS (
    DELETE FROM public.broker_cash_movements m
    USING public.mt5_connections c
    WHERE m.connection_id = c.id AND c.broker = 'oanda'
      AND m.kind = 'financing' AND m.position_key IS NULL
    RETURNING m.connection_id
)
UPDATE public.sync_schedule s
SET cursor = NULL, next_sync_at = now(), updated_at = now()
WHERE s.connection_id IN (SELECT connection_id FROM removed);
