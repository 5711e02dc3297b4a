-- Issue 18: the database refuses what the code relies on never happening, whichever
-- statement tries. Constraints are NOT VALID so that a stack holding older rows migrates
-- without a full scan or a failure; they hold for every row written from now on.

-- A payment leaves a final status only for `succeeded` (Stripe took the money after we
-- said canceled or failed: the overturn, which flags it), and never changes its
-- PaymentIntent, owner or idempotency key once set: the reconciler, the report and the
-- idempotency table all key on them.
CREATE FUNCTION payments_guard() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'pending' AND NEW.status <> OLD.status
       AND NOT (OLD.status IN ('canceled', 'failed') AND NEW.status = 'succeeded') THEN
        RAISE EXCEPTION 'payment % is %: it cannot become %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.stripe_payment_intent_id IS NOT NULL
       AND NEW.stripe_payment_intent_id IS DISTINCT FROM OLD.stripe_payment_intent_id THEN
        RAISE EXCEPTION 'payment % holds PaymentIntent %: it cannot be replaced', OLD.id, OLD.stripe_payment_intent_id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.client_id <> OLD.client_id OR NEW.idempotency_key <> OLD.idempotency_key THEN
        RAISE EXCEPTION 'payment %: owner and idempotency key never change', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER payments_guard
    BEFORE UPDATE ON payments
    FOR EACH ROW EXECUTE FUNCTION payments_guard();

-- A final payment says who resolved it; a pending one does not.
ALTER TABLE payments ADD CONSTRAINT payments_resolution_source
    CHECK ((status = 'pending') = (resolution_source IS NULL)) NOT VALID;

-- History rows name real statuses, and each is a change.
ALTER TABLE payment_status_history
    ADD CONSTRAINT payment_status_history_statuses CHECK (
        (from_status IS NULL OR from_status IN ('pending', 'succeeded', 'failed', 'canceled'))
        AND to_status IN ('pending', 'succeeded', 'failed', 'canceled')
        AND from_status IS DISTINCT FROM to_status
    ) NOT VALID;

-- An event's attempts count up from zero.
ALTER TABLE stripe_events ADD CONSTRAINT stripe_events_attempts CHECK (attempts >= 0) NOT VALID;
