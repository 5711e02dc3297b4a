-- Issue 16: the single-column rules of payments, refunds and their histories become
-- domains; the same values are refused, with the same SQLSTATE (23514, check_violation).
--
-- Why: PostgreSQL reads a table's CHECK constraints back from their stored text and plans
-- them again in every statement that inserts or updates a row of the table, all of them
-- on every update, whatever columns it sets. payments had twelve; a payment is written
-- three times (created, linked to its PaymentIntent, resolved), and the checks were 11%
-- of the primary's CPU samples under load. A domain's checks are planned once per
-- connection (the type cache) and run only where a statement assigns that column. Probe
-- (pgbench, one client, insert then update of a table of payments' shape, backend CPU a
-- pair): 240 us with the table's checks, 177 us with these domains, 110 us with no checks.
--
-- Rules that relate two columns stay table checks. The type change rewrites each table
-- once (and checks every row against its domain) under an exclusive lock. Services that
-- run through it have prepared statements returning these columns; PostgreSQL refuses
-- each once ("cached plan must not change result type"), and the pool then replaces its
-- connections (db/src/pool.rs). stripe_events keeps its checks: a view reads `outcome`,
-- and a column a view reads cannot change type.

CREATE DOMAIN payment_status AS text
    CHECK (VALUE IN ('pending', 'succeeded', 'failed', 'canceled'));
CREATE DOMAIN resolution_source AS text
    CHECK (VALUE IN ('api', 'webhook', 'poll', 'expiry', 'operator'));
CREATE DOMAIN currency_code AS text CHECK (VALUE ~ '^[a-z]{3}$');
CREATE DOMAIN idempotency_key AS text CHECK (length(VALUE) BETWEEN 1 AND 255);
-- Money in minor units: an amount asked for, and a sum that may be nothing.
CREATE DOMAIN positive_minor_units AS bigint CHECK (VALUE > 0);
CREATE DOMAIN minor_units AS bigint CHECK (VALUE >= 0);
CREATE DOMAIN capture_method AS text CHECK (VALUE IN ('automatic', 'manual'));
CREATE DOMAIN payment_attention AS text
    CHECK (VALUE IN ('charged_after_cancel', 'unknown_at_stripe', 'unknown_stripe_status'));
CREATE DOMAIN refund_attention AS text
    CHECK (VALUE IN ('refund_failed_after_success', 'unknown_at_stripe', 'unknown_stripe_status'));
CREATE DOMAIN refund_reason AS text
    CHECK (VALUE IN ('duplicate', 'fraudulent', 'requested_by_customer'));

ALTER TABLE payments
    DROP CONSTRAINT payments_idempotency_key_check,
    DROP CONSTRAINT payments_amount_check,
    DROP CONSTRAINT payments_currency_check,
    DROP CONSTRAINT payments_status_check,
    DROP CONSTRAINT payments_resolution_source_check,
    DROP CONSTRAINT payments_attention_check,
    DROP CONSTRAINT payments_capture_method_check,
    DROP CONSTRAINT payments_amount_refunded_check,
    DROP CONSTRAINT payments_check1,
    ALTER COLUMN idempotency_key TYPE idempotency_key,
    ALTER COLUMN amount TYPE positive_minor_units,
    ALTER COLUMN currency TYPE currency_code,
    ALTER COLUMN status TYPE payment_status,
    ALTER COLUMN resolution_source TYPE resolution_source,
    ALTER COLUMN attention TYPE payment_attention,
    ALTER COLUMN capture_method TYPE capture_method,
    ALTER COLUMN amount_captured TYPE minor_units,
    ALTER COLUMN amount_refunded TYPE minor_units,
    ADD CONSTRAINT payments_amount_captured CHECK (amount_captured <= amount);

ALTER TABLE payment_status_history
    DROP CONSTRAINT payment_status_history_source_check,
    DROP CONSTRAINT payment_status_history_statuses,
    ALTER COLUMN from_status TYPE payment_status,
    ALTER COLUMN to_status TYPE payment_status,
    ALTER COLUMN source TYPE resolution_source,
    -- NOT VALID as the rule it replaces (migration 0008): rows from before it are kept.
    ADD CONSTRAINT payment_status_history_change CHECK (from_status IS DISTINCT FROM to_status) NOT VALID;

-- Refunds share a payment's four statuses and its resolvers.
ALTER TABLE refunds
    DROP CONSTRAINT refunds_idempotency_key_check,
    DROP CONSTRAINT refunds_amount_check,
    DROP CONSTRAINT refunds_currency_check,
    DROP CONSTRAINT refunds_reason_check,
    DROP CONSTRAINT refunds_status_check,
    DROP CONSTRAINT refunds_resolution_source_check,
    DROP CONSTRAINT refunds_attention_check,
    ALTER COLUMN idempotency_key TYPE idempotency_key,
    ALTER COLUMN amount TYPE positive_minor_units,
    ALTER COLUMN currency TYPE currency_code,
    ALTER COLUMN reason TYPE refund_reason,
    ALTER COLUMN status TYPE payment_status,
    ALTER COLUMN resolution_source TYPE resolution_source,
    ALTER COLUMN attention TYPE refund_attention;

ALTER TABLE refund_status_history
    DROP CONSTRAINT refund_status_history_from_status_check,
    DROP CONSTRAINT refund_status_history_to_status_check,
    DROP CONSTRAINT refund_status_history_source_check,
    ALTER COLUMN from_status TYPE payment_status,
    ALTER COLUMN to_status TYPE payment_status,
    ALTER COLUMN source TYPE resolution_source;
