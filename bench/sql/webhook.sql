-- The floor of one webhook: find the payment by intent, lock it, change its status,
-- write history, store the event with its outcome (dedupe by id), in one transaction,
-- as `paystream_db::events::process` does. Payments pi_wfloor_1..n are made final by
-- the bench first; each client takes its own slice.
--   pgbench -n -f webhook.sql -D n=<payments per client>
\set i :client_id * :n + random(1, :n)
BEGIN;
SELECT id FROM payments WHERE stripe_payment_intent_id = 'pi_wfloor_' || :i;
SELECT * FROM payments WHERE stripe_payment_intent_id = 'pi_wfloor_' || :i FOR UPDATE;
UPDATE payments SET stripe_status = 'succeeded', version = version + 1, updated_at = now()
 WHERE stripe_payment_intent_id = 'pi_wfloor_' || :i RETURNING *;
INSERT INTO payment_status_history (payment_id, from_status, to_status, source, detail)
SELECT id, 'pending', 'succeeded', 'webhook', '{}' FROM payments WHERE stripe_payment_intent_id = 'pi_wfloor_' || :i;
INSERT INTO stripe_events (id, type, payment_intent_id, payload, source, outcome, stripe_created, processed_at)
VALUES ('evt_floor_' || gen_random_uuid(), 'payment_intent.succeeded', 'pi_wfloor_' || :i,
        '{"type": "payment_intent.succeeded"}', 'webhook', 'applied', 0, now())
ON CONFLICT (id) DO NOTHING;
COMMIT;
