-- Payments, their status history, and Debezium's heartbeat row.

CREATE TABLE payments (
    -- UUID v7: time-ordered, so inserts append to the primary key's index.
    id                       uuid PRIMARY KEY,
    client_id                uuid NOT NULL,
    idempotency_key          text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    amount                   bigint NOT NULL CHECK (amount > 0),
    currency                 text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    status                   text NOT NULL DEFAULT 'pending'
                             CHECK (status IN ('pending', 'succeeded', 'failed', 'canceled')),
    stripe_payment_intent_id text UNIQUE,
    stripe_status            text,
    last_error               text,
    description              text,
    customer_email           text,
    metadata                 jsonb NOT NULL DEFAULT '{}'::jsonb,
    resolution_source        text CHECK (resolution_source IN ('api', 'webhook', 'poll', 'expiry', 'operator')),
    -- Bumped by every update: consumers of the change stream drop a change whose
    -- version is not newer than what they hold (Debezium delivers at least once).
    version                  bigint NOT NULL DEFAULT 1,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    resolved_at              timestamptz,
    UNIQUE (client_id, idempotency_key),
    CHECK ((status = 'pending') = (resolved_at IS NULL))
);

-- Debezium then emits full before-images on UPDATE and DELETE.
ALTER TABLE payments REPLICA IDENTITY FULL;

CREATE INDEX payments_pending_created_idx ON payments (created_at) WHERE status = 'pending';
CREATE INDEX payments_client_created_idx ON payments (client_id, created_at DESC, id DESC);

CREATE TABLE payment_status_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payment_id  uuid NOT NULL REFERENCES payments (id) ON DELETE CASCADE,
    from_status text,
    to_status   text NOT NULL,
    source      text NOT NULL CHECK (source IN ('api', 'webhook', 'poll', 'expiry', 'operator')),
    detail      jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_status_history_payment_idx ON payment_status_history (payment_id, id);

-- Debezium's heartbeat.action.query writes here, so the replication slot advances
-- even when no payment changes (otherwise the primary keeps WAL forever).
CREATE TABLE debezium_heartbeat (
    id      int PRIMARY KEY,
    beat_at timestamptz NOT NULL
);
