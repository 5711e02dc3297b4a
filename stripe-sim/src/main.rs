//! `stripe-sim`: serves the simulator on 127.0.0.1:12111 (Stripe's localstripe port).

use clap::Parser;
use stripe_sim::state::World;
use stripe_sim::{Sim, SimConfig};

#[derive(Parser)]
#[command(
    name = "stripe-sim",
    version,
    about = "A faithful Stripe stand-in with fault injection"
)]
struct Args {
    #[arg(long, env = "STRIPE_SIM_ADDR", default_value = "127.0.0.1:12111")]
    addr: std::net::SocketAddr,
    /// Seeds every id and fault decision: the same seed and requests replay the same run.
    /// Default: a fresh seed per start (logged), so a restarted sim never reissues ids
    /// that a database kept from its previous run.
    #[arg(long, env = "STRIPE_SIM_SEED")]
    seed: Option<u64>,
    /// Accept only this secret key (default: any sk_test_ key).
    #[arg(long, env = "STRIPE_SECRET_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Per-endpoint rate limit, requests/s (Stripe's test mode: 25).
    #[arg(long, default_value_t = 25)]
    per_endpoint_rate: u32,
    /// Global rate limit, requests/s (Stripe's test mode: 25 overall for some accounts; 100 live).
    #[arg(long, default_value_t = 100)]
    global_rate: u32,
    /// How long `pm_sim_processing` stays processing (simulated ms).
    #[arg(long, default_value_t = 5_000)]
    processing_ms: i64,
    /// How long an ordinary card refund stays `pending` (simulated ms; 0: `succeeded` at
    /// once, as in Stripe's test mode).
    #[arg(long, default_value_t = 2_000)]
    refund_ms: i64,
    /// Register a webhook endpoint at start-up (URL), signed with --webhook-secret.
    #[arg(long)]
    webhook_url: Option<String>,
    #[arg(long, env = "STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// The event types that endpoint is subscribed to, comma-separated (Stripe's
    /// `enabled_events`: types, prefixes such as `refund.*`, or `*`).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    enabled_events: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let world = World {
        per_endpoint_rate: args.per_endpoint_rate,
        global_rate: args.global_rate,
        processing_ms: args.processing_ms,
        refund_ms: args.refund_ms,
        ..World::default()
    };
    let sim = Sim::new(SimConfig {
        seed,
        api_key: args.api_key,
        world,
    });
    if let Some(url) = &args.webhook_url {
        sim.add_endpoint(url, args.webhook_secret.clone(), &args.enabled_events)
            .map_err(|e| anyhow::anyhow!(e.message))?;
    }
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    tracing::info!(addr = %args.addr, seed, "stripe-sim listening");
    axum::serve(listener, sim.router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
