-- The floor of an idempotent replay: the stored response read under its row lock, in one
-- transaction (no key check: an instance remembers the keys it checked). Keys come from
-- the replay stage's own payments.
--   pgbench -n -M prepared -f replay.sql -D client=<id> -D prefix=<key prefix> -D n=<keys>
\set k random(1, :n)
BEGIN;
INSERT INTO idempotency_keys (client_id, idempotency_key, request_hash, locked_until)
VALUES (:client, :prefix::text || :k, '\x00', now()) ON CONFLICT DO NOTHING;
SELECT request_hash, payment_id, coalesce(locked_until > now(), false), response_status, response_body
  FROM idempotency_keys WHERE client_id = :client AND idempotency_key = :prefix::text || :k FOR UPDATE;
COMMIT;
