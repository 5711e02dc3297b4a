//! `paystream-chaos`: one seeded run of the adversarial suite (`make chaos`, or
//! `make chaos SEED=...` to replay one). Exits 1 on any violated invariant.

use std::time::Duration;

use clap::Parser;
use paystream_chaos::plan::Settings;
use paystream_chaos::{RunConfig, run};

#[derive(Parser)]
#[command(
    name = "paystream-chaos",
    about = "Break the stack on purpose; check every money invariant after"
)]
struct Args {
    /// Seeds the plan (payments, customers, fault schedule) and stripe-sim; a fresh one by
    /// default, printed first so that a failure can be replayed.
    #[arg(long, env = "SEED")]
    seed: Option<u64>,
    #[arg(long, default_value_t = 2000)]
    payments: usize,
    /// Seconds during which clients start payments and faults are injected.
    #[arg(long, default_value_t = 120)]
    load_secs: u64,
    /// Process faults beyond one of each kind.
    #[arg(long, default_value_t = 5)]
    extra_faults: usize,
    #[arg(long, default_value_t = 48)]
    concurrency: usize,
    /// Seconds every payment may take to settle after the load.
    #[arg(long, default_value_t = 240)]
    settle_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "paystream_chaos=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000_000)
            .unwrap_or(1)
    });
    eprintln!("chaos seed {seed} (replay with: make chaos SEED={seed})");
    let summary = run(RunConfig {
        seed,
        settings: Settings {
            payments: args.payments,
            load_ms: args.load_secs * 1000,
            extra_process_faults: args.extra_faults,
        },
        concurrency: args.concurrency,
        settle_limit: Duration::from_secs(args.settle_secs),
    })
    .await?;
    use std::io::Write;
    std::io::stdout().write_all(summary.render().as_bytes())?;
    if !summary.violations.is_empty() {
        eprintln!(
            "chaos seed {seed}: {} violations (replay with: make chaos SEED={seed})",
            summary.violations.len()
        );
        std::process::exit(1);
    }
    Ok(())
}
