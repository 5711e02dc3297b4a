-- The floor of POST /v1/payments: the statements one request issues on the primary, in
-- the same transactions, without HTTP, JSON, Stripe or the API process.
--   pgbench -n -f create_payment.sql -D client=<api_clients.id> -D keyhash=<hex sha256>
SELECT gen_random_uuid() AS pid, gen_random_uuid()::text AS ikey \gset
\set amount random(100, 100000)
SELECT c.id, c.role FROM api_keys k JOIN api_clients c ON c.id = k.client_id
 WHERE k.key_hash = decode(:keyhash, 'hex') AND k.revoked_at IS NULL;
BEGIN;
INSERT INTO idempotency_keys (client_id, idempotency_key, request_hash, locked_until)
VALUES (:client, :ikey, sha256(:ikey::bytea), now() + interval '30 seconds')
ON CONFLICT DO NOTHING;
INSERT INTO payments (id, client_id, idempotency_key, amount, currency, description, customer_email, metadata)
VALUES (:pid, :client, :ikey, :amount, 'usd', NULL, NULL, '{}') RETURNING *;
INSERT INTO payment_status_history (payment_id, from_status, to_status, source)
VALUES (:pid, NULL, 'pending', 'api');
UPDATE idempotency_keys SET payment_id = :pid WHERE client_id = :client AND idempotency_key = :ikey;
COMMIT;
UPDATE payments SET stripe_payment_intent_id = 'pi_floor_' || replace(:pid, '-', ''),
       stripe_status = 'requires_payment_method', version = version + 1, updated_at = now()
 WHERE id = :pid RETURNING *;
UPDATE idempotency_keys SET response_status = 201, response_body = '{"id": "floor"}', locked_until = NULL
 WHERE client_id = :client AND idempotency_key = :ikey;
