-- What the journal can hold, stated where it is stored (services/shared/canonical.py refuses the
-- same values where they enter, with their reason): broker numbers are finite, below 10^15 in
-- magnitude, with at most 18 decimal places; a journal row's sums stay below 10^20. `numeric`
-- stays unconstrained in type (a declared scale would pad every value with zeros); the bounds are
-- CHECKs, so nothing is ever rounded or altered to fit: a value outside is refused.
--
-- Tables PosCal users also write (trading_accounts, trading_journal) get the checks NOT VALID:
-- enforced for every new write, without judging rows written before.
--
-- Also: a cash movement may belong to a position (an OANDA trade's daily financing), and counts
-- in that position's journal row.

CREATE OR REPLACE FUNCTION public.poscal_fits(value numeric, magnitude numeric)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    -- NaN and infinities fail the comparison; min_scale ignores trailing zeros.
    SELECT value IS NULL OR (abs(value) < magnitude AND min_scale(value) <= 18)
$$;

ALTER TABLE public.broker_fills
    ADD CONSTRAINT broker_fills_volume_fits CHECK (poscal_fits(volume, 1e15)),
    ADD CONSTRAINT broker_fills_price_fits CHECK (poscal_fits(price, 1e15)),
    ADD CONSTRAINT broker_fills_profit_fits CHECK (poscal_fits(profit, 1e15)),
    ADD CONSTRAINT broker_fills_commission_fits CHECK (poscal_fits(commission, 1e15)),
    ADD CONSTRAINT broker_fills_swap_fits CHECK (poscal_fits(swap, 1e15)),
    ADD CONSTRAINT broker_fills_fee_fits CHECK (poscal_fits(fee, 1e15)),
    ADD CONSTRAINT broker_fills_text_fits CHECK (
        char_length(fill_key) <= 256 AND char_length(position_key) <= 256
        AND char_length(symbol) <= 64 AND char_length(broker_time) <= 128
        AND char_length(broker_ref) <= 128 AND char_length(order_ref) <= 128
        AND char_length(comment) <= 1024);

ALTER TABLE public.broker_cash_movements
    ADD COLUMN position_key text,
    ADD CONSTRAINT broker_cash_movements_amount_fits CHECK (poscal_fits(amount, 1e15)),
    ADD CONSTRAINT broker_cash_movements_text_fits CHECK (
        char_length(movement_key) <= 256 AND char_length(kind) <= 64
        AND char_length(currency) <= 64 AND char_length(broker_time) <= 128
        AND char_length(broker_ref) <= 128 AND char_length(comment) <= 1024
        AND char_length(position_key) <= 256);

CREATE INDEX broker_cash_movements_position_key_idx
    ON public.broker_cash_movements (position_key) WHERE position_key IS NOT NULL;

ALTER TABLE public.trading_accounts
    ADD CONSTRAINT trading_accounts_current_balance_fits
        CHECK (poscal_fits(current_balance, 1e15)) NOT VALID,
    ADD CONSTRAINT trading_accounts_equity_fits CHECK (poscal_fits(equity, 1e15)) NOT VALID;

ALTER TABLE public.trading_journal
    ADD CONSTRAINT trading_journal_volume_fits CHECK (poscal_fits(volume, 1e20)) NOT VALID,
    ADD CONSTRAINT trading_journal_closed_volume_fits
        CHECK (poscal_fits(closed_volume, 1e20)) NOT VALID,
    ADD CONSTRAINT trading_journal_entry_price_fits
        CHECK (poscal_fits(entry_price, 1e20)) NOT VALID,
    ADD CONSTRAINT trading_journal_exit_price_fits
        CHECK (poscal_fits(exit_price, 1e20)) NOT VALID,
    ADD CONSTRAINT trading_journal_profit_fits CHECK (poscal_fits(profit, 1e20)) NOT VALID,
    ADD CONSTRAINT trading_journal_commission_fits
        CHECK (poscal_fits(commission, 1e20)) NOT VALID,
    ADD CONSTRAINT trading_journal_swap_fits CHECK (poscal_fits(swap, 1e20)) NOT VALID,
    ADD CONSTRAINT trading_journal_fees_fits CHECK (poscal_fits(fees, 1e20)) NOT VALID;
