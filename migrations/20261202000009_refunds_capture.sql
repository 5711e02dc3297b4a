-- Issue 14: manual capture and refunds. A refund is a row of its own, committed pending
-- (with its amount reserved) before Stripe is called, captured by Debezium like
-- payments, and resolved by the same webhooks-plus-polls pipeline.

-- What Stripe took and what went back. `amount_captured` is set when the payment
-- succeeds (the whole amount, or less after a partial capture); rows that succeeded
-- before this migration read it as their amount. `amount_refunded` is the sum of the
-- payment's succeeded refunds, kept in the transaction that changes a refund's status.
ALTER TABLE payments
    ADD COLUMN capture_method  text NOT NULL DEFAULT 'automatic' CHECK (capture_method IN ('automatic', 'manual')),
    ADD COLUMN amount_captured bigint CHECK (amount_captured >= 0 AND amount_captured <= amount),
    ADD COLUMN amount_refunded bigint NOT NULL DEFAULT 0 CHECK (amount_refunded >= 0);

CREATE TABLE refunds (
    -- UUID v7, as payments.
    id                uuid PRIMARY KEY,
    payment_id        uuid NOT NULL REFERENCES payments (id),
    -- Who asked: the payment's owner, or an operator. Idempotency keys are theirs.
    requested_by      uuid NOT NULL,
    idempotency_key   text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    amount            bigint NOT NULL CHECK (amount > 0),
    currency          text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    reason            text CHECK (reason IN ('duplicate', 'fraudulent', 'requested_by_customer')),
    metadata          jsonb NOT NULL DEFAULT '{}'::jsonb,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'succeeded', 'failed', 'canceled')),
    stripe_refund_id  text UNIQUE,
    stripe_status     text,
    failure_reason    text,
    resolution_source text CHECK (resolution_source IN ('api', 'webhook', 'poll', 'expiry', 'operator')),
    attention         text CHECK (attention IN ('refund_failed_after_success', 'unknown_at_stripe', 'unknown_stripe_status')),
    attention_at      timestamptz,
    version           bigint NOT NULL DEFAULT 1,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    resolved_at       timestamptz,
    UNIQUE (requested_by, idempotency_key),
    CHECK ((status = 'pending') = (resolved_at IS NULL)),
    CHECK ((status = 'pending') = (resolution_source IS NULL)),
    CHECK ((attention IS NULL) = (attention_at IS NULL))
);
ALTER TABLE refunds REPLICA IDENTITY FULL;
CREATE INDEX refunds_payment_idx ON refunds (payment_id, created_at DESC, id DESC);
CREATE INDEX refunds_pending_created_idx ON refunds (created_at) WHERE status = 'pending';
CREATE INDEX refunds_attention_idx ON refunds (attention_at) WHERE attention IS NOT NULL;

CREATE TRIGGER refunds_bump_version
    BEFORE UPDATE ON refunds
    FOR EACH ROW EXECUTE FUNCTION payments_bump_version();

-- Never over-refund, whichever statement tries: a refund that holds money (pending or
-- succeeded) fits in what the payment captured, counted under the payment's row lock,
-- so two API instances committing refunds at once queue here. A refund never changes
-- its payment, amount or Stripe refund once set, and leaves a final status only for
-- `failed` after `succeeded` (Stripe reports a refund failed days later).
CREATE FUNCTION refunds_guard() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    captured bigint;
    held     bigint;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.payment_id <> OLD.payment_id OR NEW.amount <> OLD.amount
           OR NEW.currency <> OLD.currency OR NEW.requested_by <> OLD.requested_by
           OR NEW.idempotency_key <> OLD.idempotency_key THEN
            RAISE EXCEPTION 'refund %: payment, amount and key never change', OLD.id
                USING ERRCODE = 'check_violation';
        END IF;
        IF OLD.stripe_refund_id IS NOT NULL
           AND NEW.stripe_refund_id IS DISTINCT FROM OLD.stripe_refund_id THEN
            RAISE EXCEPTION 'refund % holds Stripe refund %: it cannot be replaced', OLD.id, OLD.stripe_refund_id
                USING ERRCODE = 'check_violation';
        END IF;
        IF OLD.status <> 'pending' AND NEW.status <> OLD.status
           AND NOT (OLD.status = 'succeeded' AND NEW.status = 'failed') THEN
            RAISE EXCEPTION 'refund % is %: it cannot become %', OLD.id, OLD.status, NEW.status
                USING ERRCODE = 'check_violation';
        END IF;
        IF OLD.status IN ('pending', 'succeeded') OR NEW.status NOT IN ('pending', 'succeeded') THEN
            RETURN NEW;
        END IF;
    END IF;
    SELECT CASE WHEN status = 'succeeded' THEN coalesce(amount_captured, amount) ELSE 0 END
      INTO captured FROM payments WHERE id = NEW.payment_id FOR UPDATE;
    SELECT coalesce(sum(amount), 0) INTO held FROM refunds
     WHERE payment_id = NEW.payment_id AND status IN ('pending', 'succeeded') AND id <> NEW.id;
    IF held + NEW.amount > captured THEN
        RAISE EXCEPTION 'refund % of % exceeds what payment % has left to refund (% of %)',
            NEW.id, NEW.amount, NEW.payment_id, captured - held, captured
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER refunds_guard
    BEFORE INSERT OR UPDATE ON refunds
    FOR EACH ROW EXECUTE FUNCTION refunds_guard();

-- A refund's status changes, as payment_status_history has the payment's; the payment's
-- history shows both.
CREATE TABLE refund_status_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    refund_id   uuid NOT NULL REFERENCES refunds (id) ON DELETE CASCADE,
    payment_id  uuid NOT NULL REFERENCES payments (id) ON DELETE CASCADE,
    from_status text CHECK (from_status IN ('pending', 'succeeded', 'failed', 'canceled')),
    to_status   text NOT NULL CHECK (to_status IN ('pending', 'succeeded', 'failed', 'canceled')),
    source      text NOT NULL CHECK (source IN ('api', 'webhook', 'poll', 'expiry', 'operator')),
    detail      jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (from_status IS DISTINCT FROM to_status)
);
CREATE INDEX refund_status_history_payment_idx ON refund_status_history (payment_id, id);
CREATE INDEX refund_status_history_refund_idx ON refund_status_history (refund_id, id);

-- A refund's idempotency key is its requester's, in the same table as payments' (as at
-- Stripe, one key names one request, whichever endpoint). A capture's key names no row.
ALTER TABLE idempotency_keys ADD COLUMN refund_id uuid REFERENCES refunds (id);
CREATE INDEX idempotency_keys_refund_idx ON idempotency_keys (refund_id) WHERE refund_id IS NOT NULL;

-- Refund events name their refund.
ALTER TABLE stripe_events ADD COLUMN refund_id uuid REFERENCES refunds (id);
CREATE INDEX stripe_events_refund_idx ON stripe_events (refund_id) WHERE refund_id IS NOT NULL;
