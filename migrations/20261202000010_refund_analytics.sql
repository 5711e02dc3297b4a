-- Issue 14, reports and analytics: refunds in the reconciliation report and in the
-- analytics read model. Analytics stay a cohort of payments (the window is over the
-- payments' `created_at`, as in 0005): a payment's succeeded refunds count in its own
-- hour, whenever they were made, so gross, refunded and net volume and the refund rate
-- all describe the same payments.

-- The report reads a window's refunds by creation.
CREATE INDEX refunds_created_idx ON refunds (created_at);
-- The analytics refresh finds the hours (of their payments) whose refunds changed.
CREATE INDEX refunds_updated_idx ON refunds (updated_at) INCLUDE (payment_id);
-- A payment's succeeded refunds, index-only, for the rollups and the raw edges.
CREATE INDEX refunds_succeeded_payment_idx ON refunds (payment_id) INCLUDE (amount)
    WHERE status = 'succeeded';
-- The succeeded payments of a window's raw edges, with what gross volume reads.
CREATE INDEX payments_succeeded_created_idx ON payments (created_at)
    INCLUDE (id, currency, amount, amount_captured) WHERE status = 'succeeded';

-- Succeeded payments created in one UTC hour, by currency: how many, what was captured
-- (gross, `coalesce(amount_captured, amount)`), and what of it went back (their
-- succeeded refunds: how many payments had one, how many, how much).
CREATE TABLE analytics_money_hourly (
    hour              timestamptz NOT NULL,
    currency          text NOT NULL,
    payments          bigint NOT NULL,
    captured          bigint NOT NULL,
    refunded_payments bigint NOT NULL,
    refunds           bigint NOT NULL,
    refunded          bigint NOT NULL,
    PRIMARY KEY (hour, currency)
);

-- The existing rollups have no money rows yet: forget the last refresh, so readers use
-- raw rows until the next refresh, which is then a full one.
DELETE FROM analytics_refresh;
