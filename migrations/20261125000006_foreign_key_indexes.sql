-- Deleting a payment (fixtures, a GDPR erasure) checks every table that references it.
-- Without these indexes each check scans the whole referencing table: the benchmark's
-- cleanup of 100,000 fixtures took minutes, one scan of idempotency_keys per row.
CREATE INDEX IF NOT EXISTS idempotency_keys_payment_idx ON idempotency_keys (payment_id);
CREATE INDEX IF NOT EXISTS stripe_events_payment_idx ON stripe_events (payment_id);
