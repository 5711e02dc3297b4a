//! The adversarial suite in `make test`: a short run with a fixed seed (every fault kind,
//! every customer behaviour, captures and refunds, a few hundred payments) that must end
//! with no violation.
//! `make chaos` runs the long one with a fresh seed.

use std::time::Duration;

use paystream_chaos::plan::{FaultKind, Settings};
use paystream_chaos::{RunConfig, run};

#[tokio::test(flavor = "multi_thread")]
async fn every_invariant_holds_under_every_fault_kind() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("paystream_chaos=info")
        .try_init();
    let summary = run(RunConfig {
        seed: 13,
        settings: Settings {
            payments: 300,
            load_ms: 50_000,
            extra_process_faults: 0,
        },
        concurrency: 32,
        settle_limit: Duration::from_secs(180),
    })
    .await
    .unwrap_or_else(|e| panic!("the chaos run could not run: {e}"));
    let report = summary.render();
    eprintln!("{report}");
    let kinds: Vec<FaultKind> = summary.faults.keys().copied().collect();
    assert_eq!(kinds.len(), 10, "every fault kind was injected: {kinds:?}");
    assert_eq!(
        summary.payments, 300,
        "every payment reached the database\n{report}"
    );
    assert!(
        summary.outcomes.keys().any(|k| k.starts_with("succeeded"))
            && summary.outcomes.keys().any(|k| k.starts_with("canceled"))
            && summary.outcomes.keys().any(|k| k.starts_with("failed")),
        "the run exercised every outcome\n{report}"
    );
    assert!(
        summary.refunds.keys().any(|k| k.starts_with("succeeded"))
            && summary.captures.keys().any(|k| k.starts_with("captured")),
        "the run refunded and captured\n{report}"
    );
    assert!(summary.violations.is_empty(), "{report}");
}
