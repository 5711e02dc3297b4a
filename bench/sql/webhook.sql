-- The floor of one webhook: the statements `paystream_db::events::process` issues for a
-- payment_intent.succeeded event, in the same transaction, without HTTP, the signature,
-- JSON or the webhook process. Each transaction resolves a pending payment of its own
-- (pi_wfloor_<run>_<n>, made by the bench, n drawn from bench_wfloor_seq), as each event
-- does, and stores the same event body ($payload), so the primary, the change stream and
-- the reconciler do for the floor what they do for the events.
--   pgbench -n -M prepared -f webhook.sql -D run=<id> -D payload=<event JSON>
BEGIN;
SELECT p.*, p.id AS pid, p.stripe_payment_intent_id AS pi FROM payments p WHERE id = (
    SELECT id FROM (
        SELECT payment_id AS id, 1 AS pref FROM payment_intents
         WHERE intent_id = (SELECT 'pi_wfloor_' || :run || '_' || nextval('bench_wfloor_seq'))
    ) found ORDER BY pref LIMIT 1
) FOR UPDATE \gset
WITH changed AS (
    UPDATE payments SET status = 'succeeded', stripe_status = 'succeeded', resolution_source = 'webhook',
           resolved_at = now(), amount_captured = amount
     WHERE id = :pid RETURNING *
), history AS (
    INSERT INTO payment_status_history (payment_id, from_status, to_status, source, detail)
    SELECT id, 'pending', 'succeeded', 'webhook', jsonb_build_object('event', 'evt_' || :pi) FROM changed
)
SELECT * FROM changed;
INSERT INTO stripe_events (id, type, payment_intent_id, payload, source, stripe_created,
                           outcome, payment_id, processed_at, attempts)
VALUES ('evt_' || :pi, 'payment_intent.succeeded', :pi, :payload, 'webhook', 0,
        'applied', :pid, now(), 0)
ON CONFLICT (id) DO NOTHING;
COMMIT;
