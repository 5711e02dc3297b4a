-- Analytics read model (issue 7). Analysts query the replicas; at 10 million payments a
-- GROUP BY over the raw table takes seconds, so whole hours are read from hourly rollups
-- and only the window's partial edge hours from the raw rows. The API refreshes the
-- rollups on the primary (one instance at a time) and they replicate like any table.

-- Analysts may hold keys that read analytics only.
ALTER TABLE api_clients DROP CONSTRAINT api_clients_role_check;
ALTER TABLE api_clients ADD CONSTRAINT api_clients_role_check
    CHECK (role IN ('client', 'operator', 'analyst'));

-- The refresh finds the hours touched since its last run through this index.
CREATE INDEX payments_updated_idx ON payments (updated_at) INCLUDE (created_at);
-- The raw edges of a window are read with an index-only scan through this one.
CREATE INDEX payments_created_idx ON payments (created_at)
    INCLUDE (currency, status, resolution_source, amount, resolved_at);

-- Time to resolution in histogram buckets of two significant digits: exact below 100 ms,
-- then buckets at most 10% wide (1234 -> 1200, 98765 -> 98000). Percentiles read from
-- summed buckets are therefore within one bucket of the exact value, and buckets of
-- different hours add up. The API computes bucket widths with the same rule.
CREATE FUNCTION analytics_ms_bucket(ms bigint) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE WHEN ms < 100 THEN greatest(ms, 0)
                ELSE ms - ms % power(10::numeric, length(ms::text) - 2)::bigint END;

CREATE FUNCTION analytics_resolution_ms(created timestamptz, resolved timestamptz) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN greatest(0, floor(extract(epoch FROM resolved - created) * 1000))::bigint;

-- Payments created in one UTC hour, by currency, status and resolution source ('' while
-- pending).
CREATE TABLE analytics_hourly (
    hour              timestamptz NOT NULL,
    currency          text NOT NULL,
    status            text NOT NULL,
    resolution_source text NOT NULL,
    payments          bigint NOT NULL,
    volume            bigint NOT NULL,
    PRIMARY KEY (hour, currency, status, resolution_source)
);

-- Final payments created in one UTC hour, by currency and time-to-resolution bucket.
CREATE TABLE analytics_resolution_hourly (
    hour     timestamptz NOT NULL,
    currency text NOT NULL,
    lo_ms    bigint NOT NULL,
    payments bigint NOT NULL,
    PRIMARY KEY (hour, currency, lo_ms)
);

-- One row: how far the rollups go. Everything committed before `refreshed_at` (less the
-- grace the refresh allows for long transactions) is in them.
CREATE TABLE analytics_refresh (
    id           int PRIMARY KEY CHECK (id = 1),
    refreshed_at timestamptz NOT NULL,
    hours        bigint NOT NULL
);
