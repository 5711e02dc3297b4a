-- Issue 13: the database enforces what the code relies on, and payments that cannot
-- converge on their own are marked for an operator.

-- Consumers of the change stream drop a change whose version is not newer than what they
-- hold; that only works if every UPDATE bumps it. A trigger owns `version` and
-- `updated_at`, so no statement can forget (or fake) them.
CREATE FUNCTION payments_bump_version() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER payments_bump_version
    BEFORE UPDATE ON payments
    FOR EACH ROW EXECUTE FUNCTION payments_bump_version();

-- A payment that needs a human: Stripe took money after we said canceled or failed
-- (`charged_after_cancel`), Stripe does not know the PaymentIntent we hold
-- (`unknown_at_stripe`), or Stripe says a status this code does not know
-- (`unknown_stripe_status`). The reconciler stops polling a flagged payment; the report
-- lists it until an operator clears the flag (`paystream attention clear`).
ALTER TABLE payments
    ADD COLUMN attention    text CHECK (attention IN ('charged_after_cancel', 'unknown_at_stripe', 'unknown_stripe_status')),
    ADD COLUMN attention_at timestamptz,
    ADD CONSTRAINT payments_attention_at CHECK ((attention IS NULL) = (attention_at IS NULL));
CREATE INDEX payments_attention_idx ON payments (attention_at) WHERE attention IS NOT NULL;

-- A request holds its idempotency key with a token: completing or releasing the key
-- checks the token, so a request whose lease expired (and was taken over) cannot
-- overwrite the response of the one that holds it now.
ALTER TABLE idempotency_keys ADD COLUMN lease_token uuid;

-- Unmatched webhook events are retried with a backoff of their own, so a few events that
-- will never match cannot pin the retry batch; past a bounded age they become
-- `orphaned` and the report lists them.
ALTER TABLE stripe_events
    ADD COLUMN attempts        integer NOT NULL DEFAULT 0,
    ADD COLUMN next_attempt_at timestamptz;
ALTER TABLE stripe_events DROP CONSTRAINT stripe_events_outcome_check;
ALTER TABLE stripe_events ADD CONSTRAINT stripe_events_outcome_check
    CHECK (outcome IN ('applied', 'unchanged', 'stale', 'unmatched', 'orphaned', 'ignored'));
UPDATE stripe_events SET next_attempt_at = received_at WHERE outcome = 'unmatched';
DROP INDEX stripe_events_unmatched_idx;
CREATE INDEX stripe_events_unmatched_idx ON stripe_events (next_attempt_at) WHERE outcome = 'unmatched';
CREATE INDEX stripe_events_orphaned_idx ON stripe_events (received_at) WHERE outcome = 'orphaned';

-- What the report shows of orphaned events: no payload (it may carry customer data).
CREATE VIEW stripe_events_orphaned AS
    SELECT id, type, payment_intent_id, attempts, stripe_created, received_at
    FROM stripe_events WHERE outcome = 'orphaned';

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'analyst') THEN
        GRANT SELECT ON stripe_events_orphaned TO analyst;
    END IF;
END
$$;
