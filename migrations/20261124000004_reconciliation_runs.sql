-- Every reconciliation report run, whole, so operators can list past runs, diff two of
-- them and re-render one in any format.
CREATE TABLE reconciliation_runs (
    id            uuid PRIMARY KEY,
    since         timestamptz NOT NULL,
    until         timestamptz NOT NULL,
    generated_at  timestamptz NOT NULL,
    discrepancies bigint NOT NULL,
    counts        jsonb NOT NULL,
    report        jsonb NOT NULL
);
CREATE INDEX reconciliation_runs_generated_idx ON reconciliation_runs (generated_at DESC);
