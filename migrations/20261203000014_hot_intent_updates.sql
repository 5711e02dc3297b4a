-- Issue 16: attaching the PaymentIntent to a pending payment (one UPDATE per payment,
-- right after Stripe answers) becomes a HOT update. PostgreSQL can update a row in place,
-- without a new entry in any index, only when no indexed column changes and the page has
-- room. The attach changed two indexed columns: `stripe_payment_intent_id` (its UNIQUE
-- index) and `updated_at` (the analytics refresh's index). So every attach wrote a new
-- entry in each of the table's nine indexes, 0.24-0.48 ms of the primary's time, and the
-- replicas replayed them all.

-- 1. The intent's uniqueness and its lookup move to a table of their own, kept by the
-- database: whichever statement sets a payment's intent (the API's attach, a webhook or a
-- poll linking an intent the API never stored) inserts here, and a second payment with
-- the same intent is refused (unique_violation) as before. `payments_guard` still refuses
-- replacing an intent, so a mapping never goes stale while its payment exists.
CREATE TABLE payment_intents (
    intent_id  text PRIMARY KEY,
    payment_id uuid NOT NULL
);
INSERT INTO payment_intents (intent_id, payment_id)
SELECT stripe_payment_intent_id, id FROM payments WHERE stripe_payment_intent_id IS NOT NULL;

CREATE FUNCTION payments_map_intent() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO payment_intents (intent_id, payment_id) VALUES (NEW.stripe_payment_intent_id, NEW.id);
    RETURN NULL;
END
$$;
CREATE TRIGGER payments_map_intent_insert
    AFTER INSERT ON payments FOR EACH ROW
    WHEN (NEW.stripe_payment_intent_id IS NOT NULL)
    EXECUTE FUNCTION payments_map_intent();
CREATE TRIGGER payments_map_intent_update
    AFTER UPDATE OF stripe_payment_intent_id ON payments FOR EACH ROW
    WHEN (OLD.stripe_payment_intent_id IS NULL AND NEW.stripe_payment_intent_id IS NOT NULL)
    EXECUTE FUNCTION payments_map_intent();

-- No foreign key: its check on every insert costs what this migration saves. Payments are
-- deleted only by tests and the benchmarks' cleanup.
CREATE FUNCTION payments_unmap_intent() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM payment_intents WHERE intent_id = OLD.stripe_payment_intent_id AND payment_id = OLD.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER payments_unmap_intent
    AFTER DELETE ON payments FOR EACH ROW
    WHEN (OLD.stripe_payment_intent_id IS NOT NULL)
    EXECUTE FUNCTION payments_unmap_intent();

ALTER TABLE payments DROP CONSTRAINT payments_stripe_payment_intent_id_key;

-- 2. The analytics refresh finds what changed since its previous run from the status
-- history, by transaction, instead of `payments.updated_at` less a grace period (which
-- needed the index, and recomputed a whole hour on every run for a minute after it ended).
-- Every change the rollups count (status, resolution, captured amount; a refund's status)
-- writes a history row in the same statement or transaction. A row whose transaction
-- the previous run's snapshot did not see is new to this run, exactly: no grace, and a
-- long transaction is not missed. Rows written before this migration have no `xact`; the
-- first run after it (no snapshot stored yet) recomputes every hour.
ALTER TABLE payment_status_history ADD COLUMN xact xid8;
ALTER TABLE payment_status_history ALTER COLUMN xact SET DEFAULT pg_current_xact_id();
CREATE INDEX payment_status_history_xact_idx ON payment_status_history (xact);
ALTER TABLE refund_status_history ADD COLUMN xact xid8;
ALTER TABLE refund_status_history ALTER COLUMN xact SET DEFAULT pg_current_xact_id();
CREATE INDEX refund_status_history_xact_idx ON refund_status_history (xact);
ALTER TABLE analytics_refresh ADD COLUMN snapshot pg_snapshot;

DROP INDEX payments_updated_idx;
DROP INDEX refunds_updated_idx;

-- 3. Room on each page for the attach's new row version (HOT needs the same page). A
-- payment is updated twice (the attach, then its resolution), each soon after the insert,
-- while its page is still the one being filled; pruning then frees the old version.
ALTER TABLE payments SET (fillfactor = 90);
