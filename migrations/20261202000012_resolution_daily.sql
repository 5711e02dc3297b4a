-- Time-to-resolution histogram by UTC day (issue 16). A 30-day summary otherwise sums
-- about 1.4 M hourly histogram rows (up to ~630 buckets x 3 currencies x 720 hours): most
-- of its time at 10 M payments. Each day's row is the sum of that day's hourly rows, kept
-- so by the refresh (db/src/analytics.rs), which recomputes the days of the hours it
-- recomputes in the same transaction (today's once it is over). Readers use it for the
-- whole days inside a window's rolled-up hours (those days end before today), and the
-- hourly rows for the rest.
CREATE TABLE analytics_resolution_daily (
    day      timestamptz NOT NULL,
    currency text NOT NULL,
    lo_ms    bigint NOT NULL,
    payments bigint NOT NULL,
    PRIMARY KEY (day, currency, lo_ms)
);

-- The refresh's own lock (db/src/analytics.rs, LOCK_KEY), held to the migration's commit:
-- no refresh rewrites hours while their days are summed. A refresh by an instance still
-- on the previous release (a rolling deploy) rewrites hours without their days; those
-- days are right again once an hour of each is refreshed by this release.
SELECT pg_advisory_xact_lock(8102925026637999225);

INSERT INTO analytics_resolution_daily (day, currency, lo_ms, payments)
SELECT date_trunc('day', hour, 'UTC'), currency, lo_ms, sum(payments)
FROM analytics_resolution_hourly
WHERE hour < date_trunc('day', now(), 'UTC')
GROUP BY 1, 2, 3;

-- The whole UTC days of [from_, to_): from the first midnight at or after from_ to the
-- last at or before to_ (first > last when there is none). A reader's hours before
-- `first` and from `last` on come from the hourly rows.
CREATE FUNCTION analytics_whole_days(from_ timestamptz, to_ timestamptz,
                                     OUT first timestamptz, OUT last timestamptz)
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    AS $$
        SELECT CASE WHEN date_trunc('day', from_, 'UTC') = from_ THEN from_
                    ELSE date_trunc('day', from_, 'UTC') + interval '24 hours' END,
               date_trunc('day', to_, 'UTC')
    $$;
