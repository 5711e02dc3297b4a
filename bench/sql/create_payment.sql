-- The floor of POST /v1/payments: the statements one request issues on the primary, in
-- the same transactions, without HTTP, JSON, Stripe or the API process. No key check: an
-- instance remembers the keys it checked (api/src/auth.rs).
--   pgbench -n -M prepared -f create_payment.sql -D client=<api_clients.id>
SELECT gen_random_uuid() AS pid, gen_random_uuid()::text AS ikey \gset
\set amount random(100, 100000)
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
-- The link and the stored answer, one statement (idempotency::attach_and_complete). The
-- time format quotes its colons, which pgbench would read as variables.
WITH attached AS (
  UPDATE payments SET stripe_payment_intent_id = 'pi_floor_' || replace(:pid, '-', ''),
         stripe_status = CASE WHEN stripe_payment_intent_id IS NULL THEN 'requires_payment_method' ELSE stripe_status END
   WHERE id = :pid AND status = 'pending'
     AND (stripe_payment_intent_id IS NULL OR stripe_payment_intent_id = 'pi_floor_' || replace(:pid, '-', ''))
   RETURNING *
), answered AS (
  UPDATE idempotency_keys k
     SET response_status = 201,
         response_body = jsonb_set('{"id": "floor", "updated_at": null}', '{updated_at}', to_jsonb(
           (SELECT to_char(t, 'YYYY-MM-DD"T"HH24":"MI":"SS')
                   || CASE WHEN to_char(t, 'US') = '000000' THEN ''
                           WHEN to_char(t, 'US') LIKE '%000' THEN '.' || to_char(t, 'MS')
                           ELSE '.' || to_char(t, 'US') END
                   || 'Z'
              FROM (SELECT a.updated_at AT TIME ZONE 'UTC' AS t) utc))),
         locked_until = NULL, lease_token = NULL
    FROM attached a
   WHERE a.version = 2
     AND k.client_id = :client AND k.idempotency_key = :ikey AND k.response_status IS NULL
  RETURNING k.response_body
)
SELECT attached.*, (SELECT response_body FROM answered) AS stored_answer FROM attached;
