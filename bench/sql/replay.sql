-- The floor of an idempotent replay: key check, then the stored response read under its
-- row lock, in one transaction. Keys come from the replay stage's own payments.
--   pgbench -n -f replay.sql -D client=<id> -D keyhash=<hex> -D prefix=<key prefix> -D n=<keys>
\set k random(1, :n)
SELECT c.id, c.role FROM api_keys k JOIN api_clients c ON c.id = k.client_id
 WHERE k.key_hash = decode(:keyhash, 'hex') AND k.revoked_at IS NULL;
BEGIN;
INSERT INTO idempotency_keys (client_id, idempotency_key, request_hash, locked_until)
VALUES (:client, :prefix::text || :k, '\x00', now()) ON CONFLICT DO NOTHING;
SELECT request_hash, payment_id, coalesce(locked_until > now(), false), response_status, response_body
  FROM idempotency_keys WHERE client_id = :client AND idempotency_key = :prefix::text || :k FOR UPDATE;
COMMIT;
