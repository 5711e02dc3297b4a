-- The floor the design needs for POST /v1/payments: two durable commits per payment, the
-- pending row before Stripe is called and the result after, each one single-statement
-- transaction, on a table of the payments table's shape (bench_floor_payments: its
-- columns, defaults, constraints, indexes and fillfactor, made by the bench), the
-- intent's uniqueness kept as payments keep it (bench_floor_intents).
--   pgbench -n -M prepared -f two_commits.sql -D client=<api_clients.id>
\set amount random(100, 100000)
INSERT INTO bench_floor_payments (id, client_id, idempotency_key, amount, currency, metadata)
VALUES (gen_random_uuid(), :client, gen_random_uuid()::text, :amount, 'usd', '{}')
RETURNING id AS pid \gset
WITH attached AS (
    UPDATE bench_floor_payments SET stripe_payment_intent_id = 'pi_floor_' || replace(:pid, '-', ''),
           stripe_status = 'requires_payment_method', version = version + 1, updated_at = now()
     WHERE id = :pid RETURNING id, stripe_payment_intent_id
)
INSERT INTO bench_floor_intents (intent_id, payment_id) SELECT stripe_payment_intent_id, id FROM attached;
