-- Issue 19, item 4: reconciliation reports run in the background over HTTP. A job is
-- one run in progress (or its end); its result is a stored run like the CLI's.
CREATE TABLE report_jobs (
    id           uuid PRIMARY KEY,
    since        timestamptz NOT NULL,
    until        timestamptz NOT NULL,
    status       text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'failed')),
    -- What the run is doing, and how far it got (Stripe objects read so far).
    phase        text NOT NULL DEFAULT 'starting',
    progress     bigint NOT NULL DEFAULT 0,
    error        text,
    run_id       uuid REFERENCES reconciliation_runs (id),
    started_at   timestamptz NOT NULL DEFAULT now(),
    -- Written every second while it runs: a job whose instance died stops beating, and
    -- reads as abandoned.
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    CHECK ((status = 'done') = (run_id IS NOT NULL)),
    CHECK ((status = 'running') = (finished_at IS NULL))
);
CREATE INDEX report_jobs_started_idx ON report_jobs (started_at DESC);
