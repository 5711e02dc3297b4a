//! `paystream`: operator commands.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use paystream_db::keys::{self, Role};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

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
    /// Create, register and revoke API keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
        database_url: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// A new random key for client NAME (created if new); printed once, stored hashed.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["client", "operator"])]
        role: String,
    },
    /// Registers a key you already hold (read from PAYSTREAM_KEY), e.g. the local stack's.
    Register {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["client", "operator"])]
        role: String,
        #[arg(long, env = "PAYSTREAM_KEY", hide_env_values = true)]
        key: String,
    },
    /// Revokes the keys starting with PREFIX (the first 12+ characters of a key).
    Revoke { prefix: String },
}

async fn connect(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .context("cannot connect to the primary")
}

fn role(s: &str) -> Role {
    Role::parse(s).unwrap_or(Role::Client)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Migrate { database_url } => {
            let pool = connect(&database_url).await?;
            // The same migrator `sqlx migrate run` uses, embedded so no extra tool is needed.
            let migrator = sqlx::migrate!("../migrations");
            migrator.run(&pool).await.context("migration failed")?;
            eprintln!("migrations applied: {}", migrator.iter().count());
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
                    let n = keys::revoke(&pool, &prefix).await?;
                    eprintln!("revoked {n} key(s)");
                }
            }
        }
    }
    Ok(())
}
