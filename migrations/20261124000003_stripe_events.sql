-- Every genuine Stripe event we received (webhook or catch-up), once: the event id is
-- the dedupe key. Events that matched no payment yet wait here as 'unmatched'.
CREATE TABLE stripe_events (
    id                text PRIMARY KEY,
    type              text NOT NULL,
    payment_intent_id text,
    payment_id        uuid REFERENCES payments (id),
    payload           jsonb NOT NULL,
    source            text NOT NULL CHECK (source IN ('webhook', 'catchup')),
    outcome           text NOT NULL CHECK (outcome IN ('applied', 'unchanged', 'stale', 'unmatched', 'ignored')),
    stripe_created    bigint NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now(),
    processed_at      timestamptz
);
CREATE INDEX stripe_events_unmatched_idx ON stripe_events (received_at) WHERE outcome = 'unmatched';
CREATE INDEX stripe_events_created_idx ON stripe_events (stripe_created);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'analyst') THEN
        REVOKE ALL ON stripe_events FROM analyst;
    END IF;
END
$$;
