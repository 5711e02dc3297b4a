-- The floor of POST /v1/payments: the statements one request issues on the primary, in
-- the same transactions, without HTTP, JSON, Stripe or the API process.
--   pgbench -n -f create_payment.sql -D client=<api_clients.id> -D keyhash=<hex sha256>
SELECT gen_random_uuid() AS pid, gen_random_uuid()::text AS ikey \gset
\set amount random(100, 100000)
SELECT c.id, c.role FROM api_keys k JOIN api_clients c ON c.id = k.client_id
 WHERE k.key_hash = decode(:keyhash, 'hex') AND k.revoked_at IS NULL;
WITH claimed AS (
  INSERT INTO idempotency_keys (client_id, idempotency_key, request_hash, locked_until, lease_token, payment_id)
  VALUES (:client, :ikey, sha256(:ikey::bytea), now() + interval '30 seconds', gen_random_uuid(), :pid)
  ON CONFLICT DO NOTHING RETURNING 1
), payment AS (
  INSERT INTO payments (id, client_id, idempotency_key, amount, currency, description, customer_email, metadata, capture_method)
  SELECT :pid::uuid, :client::uuid, :ikey, :amount::bigint, 'usd', NULL, NULL, '{}'::jsonb, 'automatic' FROM claimed
  RETURNING *
), history AS (
  INSERT INTO payment_status_history (payment_id, to_status, source)
  SELECT id, 'pending', 'api' FROM payment
)
SELECT * FROM payment;
BEGIN;
UPDATE payments SET stripe_payment_intent_id = 'pi_floor_' || replace(:pid, '-', ''),
       stripe_status = 'requires_payment_method'
 WHERE id = :pid AND status = 'pending' RETURNING *;
UPDATE idempotency_keys SET response_status = 201, response_body = '{"id": "floor"}', locked_until = NULL, lease_token = NULL
 WHERE client_id = :client AND idempotency_key = :ikey AND response_status IS NULL;
COMMIT;
