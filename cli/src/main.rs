//! `paystream`: operator commands.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use paystream_db::keys::{self, Role};
use paystream_db::{Primary, Replica};

mod exporter;
mod tail;

#[derive(Parser)]
#[command(name = "paystream", version, about = "Paystream operator commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the migrations in migrations/ to the primary (idempotent).
    Migrate {
        /// The primary, as the table owner.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Reconcile our payments and refunds (read from a replica) with Stripe for a time
    /// window. Exits 2 when there are discrepancies, so cron can alert on it.
    Report(ReportArgs),
    /// Stored report runs, read from a replica: list them, re-render one, diff two.
    Reports {
        #[command(subcommand)]
        action: RunsAction,
        #[arg(long, env = "REPLICA_URL", hide_env_values = true, global = true)]
        replica_url: Option<String>,
    },
    /// Payments waiting for an operator (charged after cancel, unknown at Stripe, ...):
    /// list them, or clear one's flag once dealt with (a pending one is polled again).
    Attention {
        #[command(subcommand)]
        action: AttentionAction,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
        database_url: Option<String>,
    },
    /// Read one of the pipeline's topics, decoded: Debezium's changes (`cdc`,
    /// `refund-cdc`) or the Avro status updates (`status`, `refund-status`), one line per
    /// record, as a table or JSON lines. Commits no offsets. Follows until Ctrl-C, or
    /// stops after --max records or --timeout-secs without one.
    Tail(tail::TailArgs),
    /// Serve Prometheus metrics (`GET /metrics`) about what has no /metrics of its own:
    /// Kafka Connect's connectors, the primary's replication slots and replicas, the
    /// payments backlog (read from a replica), the consumer groups' lag. Read at scrape
    /// time; a source that fails shows as `paystream_exporter_source_up 0`.
    Exporter(exporter::ExporterArgs),
    /// Create, register and revoke API keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
        database_url: Option<String>,
    },
}

#[derive(clap::Args)]
struct ReportArgs {
    /// Start of the window: a duration back from now (`24h`, `30m`, `7d`) or RFC 3339.
    #[arg(long, default_value = "24h")]
    since: String,
    /// End of the window (same forms); now by default.
    #[arg(long)]
    until: Option<String>,
    #[arg(long, default_value = "table", value_parser = ["table", "json", "csv", "html"])]
    format: String,
    /// Write the report here instead of stdout.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// A payment (refund) pending longer than this is `stuck_pending`
    /// (`refund_stuck_pending`); younger refunds on their way are not discrepancies.
    #[arg(long, default_value = "1h")]
    stuck_after: String,
    /// A payment pending here, final at Stripe, that changed within this is `in_flight`
    /// (its webhook is most likely on its way), not a `status_mismatch`.
    #[arg(long, default_value = "2m")]
    grace: String,
    /// Stripe calls per second: the report's share of the account's rate limit.
    #[arg(long, default_value_t = 5)]
    stripe_rate: u32,
    /// Windows with at least this many payments compare with one Stripe Reporting API
    /// file (money moved) instead of walking Stripe's PaymentIntent list.
    #[arg(long, default_value_t = paystream_report::BULK_FROM)]
    bulk_from: u64,
    /// Give `status_mismatch` payments Stripe's final status (source `operator`) on the
    /// primary, printing each change; nothing else is touched.
    #[arg(long)]
    repair: bool,
    /// The primary: where the run is stored, and what --repair writes to.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// A read replica (never the primary), e.g. nginx's replica port.
    #[arg(long, env = "REPLICA_URL", hide_env_values = true)]
    replica_url: String,
    #[arg(long, env = "STRIPE_API_BASE")]
    stripe_api_base: String,
    #[arg(long, env = "STRIPE_SECRET_KEY", hide_env_values = true)]
    stripe_secret_key: String,
}

use paystream_report::window::{duration, instant};

async fn report(args: ReportArgs) -> anyhow::Result<bool> {
    use std::io::IsTerminal;
    let now = chrono::Utc::now();
    let settings = paystream_report::Settings {
        since: instant(&args.since, now)?,
        until: args.until.as_deref().map_or(Ok(now), |u| instant(u, now))?,
        stuck_after: duration(&args.stuck_after)?,
        grace: duration(&args.grace)?,
        stripe_rate: args.stripe_rate,
        bulk_from: args.bulk_from,
    };
    anyhow::ensure!(
        settings.since < settings.until,
        "--since must be before --until"
    );
    let format: paystream_report::render::Format =
        args.format.parse().map_err(anyhow::Error::msg)?;
    let replica = replica_pool(&args.replica_url)?;
    let stripe = paystream_stripe::StripeApi::new(
        &args.stripe_api_base,
        &args.stripe_secret_key,
        Duration::from_secs(10),
    )?;
    // On a terminal, one line that counts; otherwise (cron, a pipe, CI logs) a line per
    // step, so a long run shows it is alive.
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    if !tty {
        eprintln!("report {} .. {}", settings.since, settings.until);
    }
    let mut phase = "";
    let report = paystream_report::run(&replica, &stripe, &settings, |p| {
        if tty {
            eprint!("\r\x1b[K{}: {}", p.phase, p.done);
        } else if p.phase != phase || (p.done > 0 && p.done % 5_000 == 0) {
            eprintln!("{}: {} ({:.0?})", p.phase, p.done, started.elapsed());
        }
        phase = p.phase;
    })
    .await?;
    if tty {
        eprintln!();
    } else {
        eprintln!(
            "report made in {:.1?}: {} payments, {} Stripe intents ({}), {} refunds",
            started.elapsed(),
            report.payments,
            report.stripe_intents,
            report.stripe_source,
            report.refunds
        );
    }
    // Runs are stored on the primary (the one write a report makes), when it is given.
    let primary = match args.database_url.as_deref() {
        Some(url) => Some(connect(url).await?),
        None => None,
    };
    match &primary {
        Some(db) => {
            let id = paystream_report::runs::store(db, &report).await?;
            eprintln!("run {id} stored");
        }
        None => eprintln!("run not stored: set DATABASE_URL (the primary) to keep it"),
    }
    if args.repair {
        let primary = primary
            .as_ref()
            .context("--repair writes to the primary: set DATABASE_URL or --database-url")?;
        for r in paystream_report::repair::repair(primary, &report.classified.findings).await? {
            match r {
                paystream_report::repair::Repair::Changed { id, from, to } => {
                    eprintln!("repaired {id}: {from} -> {}", to.as_str());
                }
                paystream_report::repair::Repair::Refused { id, reason } => {
                    eprintln!("not repaired {id}: {reason}");
                }
            }
        }
    }
    let text = paystream_report::render::render(&report, format);
    match &args.out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => {
            use std::io::Write;
            std::io::stdout().write_all(text.as_bytes())?;
        }
    }
    Ok(report.classified.discrepancies() == 0)
}

#[derive(Subcommand)]
enum RunsAction {
    /// The latest runs, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// A stored run, rendered again.
    Show {
        id: uuid::Uuid,
        #[arg(long, default_value = "table", value_parser = ["table", "json", "csv", "html"])]
        format: String,
    },
    /// Which payments changed class from run A to run B.
    Diff { a: uuid::Uuid, b: uuid::Uuid },
}

fn replica_pool(url: &str) -> anyhow::Result<Replica> {
    Replica::new(url, 2).context("replica")
}

async fn runs(action: RunsAction, replica_url: Option<String>) -> anyhow::Result<()> {
    use paystream_report::runs;
    let replica = replica_pool(&replica_url.context("--replica-url or REPLICA_URL is required")?)?;
    let load = |id| {
        let replica = &replica;
        async move {
            runs::load(replica, id)
                .await?
                .with_context(|| format!("no stored run {id} on the replica"))
        }
    };
    let text = match action {
        RunsAction::List { limit } => {
            let mut out = format!(
                "{:<36}  {:<25} {:<25} {:>13}\n",
                "run", "since", "until", "discrepancies"
            );
            for r in runs::list(&replica, limit).await? {
                out.push_str(&format!(
                    "{:<36}  {:<25} {:<25} {:>13}\n",
                    r.id,
                    r.since.format("%Y-%m-%dT%H:%M:%SZ"),
                    r.until.format("%Y-%m-%dT%H:%M:%SZ"),
                    r.discrepancies
                ));
            }
            out
        }
        RunsAction::Show { id, format } => paystream_report::render::render(
            &load(id).await?,
            format.parse().map_err(anyhow::Error::msg)?,
        ),
        RunsAction::Diff { a, b } => {
            runs::render_diff(&runs::diff(&load(a).await?, &load(b).await?))
        }
    };
    use std::io::Write;
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

#[derive(Subcommand)]
enum KeysAction {
    /// A new random key for client NAME (created if new); printed once, stored hashed.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["client", "operator", "analyst"])]
        role: String,
    },
    /// Registers a key you already hold (read from PAYSTREAM_KEY), e.g. the local stack's.
    Register {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["client", "operator", "analyst"])]
        role: String,
        #[arg(long, env = "PAYSTREAM_KEY", hide_env_values = true)]
        key: String,
    },
    /// Revokes the one key starting with PREFIX (the first 12 to 16 characters of a key,
    /// or the whole key). A prefix shared by several keys revokes none.
    Revoke { prefix: String },
}

#[derive(Subcommand)]
enum AttentionAction {
    /// Every flagged payment, oldest flag first, with what to do.
    List {
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// The operator has dealt with it: the flag goes.
    Clear { id: paystream_core::PaymentId },
}

async fn attention(action: AttentionAction, pool: &Primary) -> anyhow::Result<()> {
    use paystream_db::payments::{self, Attention};
    match action {
        AttentionAction::List { limit } => {
            let mut out = String::new();
            for p in payments::needing_attention(pool, limit).await? {
                out.push_str(&format!(
                    "{}  {:<10} {:<22} {}\n    {}\n",
                    p.id,
                    p.status.as_str(),
                    p.attention.map_or("", Attention::as_str),
                    p.stripe_payment_intent_id.as_deref().unwrap_or("-"),
                    p.attention.map_or("", Attention::action)
                ));
            }
            use std::io::Write;
            std::io::stdout().write_all(out.as_bytes())?;
        }
        AttentionAction::Clear { id } => match payments::clear_attention(pool, id).await? {
            Some(was) => eprintln!("{id}: {} cleared", was.as_str()),
            None => anyhow::bail!("{id} is not flagged (or does not exist)"),
        },
    }
    Ok(())
}

async fn connect(url: &str) -> anyhow::Result<Primary> {
    Primary::connect(url, 1)
        .await
        .context("cannot connect to the primary")
}

fn role(s: &str) -> Role {
    Role::parse(s).unwrap_or(Role::Client)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Reports {
            action,
            replica_url,
        } => runs(action, replica_url).await?,
        Command::Report(args) => {
            if !report(args).await? {
                std::process::exit(2);
            }
        }
        Command::Tail(args) => {
            let summary = tail::run(&args, &mut std::io::stdout()).await?;
            eprintln!("tail: {} shown, {} read", summary.shown, summary.read);
        }
        Command::Exporter(args) => exporter::run(args).await?,
        Command::Migrate { database_url } => {
            let pool = connect(&database_url).await?;
            // The same migrator `sqlx migrate run` uses, embedded so no extra tool is needed.
            let n = pool.migrate().await.context("migration failed")?;
            eprintln!("migrations applied: {n}");
        }
        Command::Attention {
            action,
            database_url,
        } => {
            let url = database_url.context("--database-url or DATABASE_URL is required")?;
            attention(action, &connect(&url).await?).await?;
        }
        Command::Keys {
            action,
            database_url,
        } => {
            let url = database_url.context("--database-url or DATABASE_URL is required")?;
            let pool = connect(&url).await?;
            match action {
                KeysAction::Create { name, role: r } => {
                    let (client_id, key) = keys::create(&pool, &name, role(&r)).await?;
                    eprintln!("client {name} ({client_id}), role {r}. The key is shown once:");
                    #[allow(clippy::print_stdout)]
                    {
                        println!("{key}");
                    }
                }
                KeysAction::Register { name, role: r, key } => {
                    let client_id = keys::register(&pool, &name, role(&r), &key).await?;
                    eprintln!("key registered for client {name} ({client_id})");
                }
                KeysAction::Revoke { prefix } => {
                    anyhow::ensure!(
                        prefix.len() >= 12,
                        "give at least the first 12 characters of the key"
                    );
                    let client_id = keys::revoke(&pool, &prefix).await?;
                    eprintln!("revoked 1 key of client {client_id}");
                }
            }
        }
    }
    Ok(())
}
