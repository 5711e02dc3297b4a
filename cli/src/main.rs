//! `paystream`: operator commands.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
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
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Migrate { database_url } => {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect(&database_url)
                .await
                .context("cannot connect to the primary")?;
            // The same migrator `sqlx migrate run` uses, embedded so no extra tool is needed.
            let migrator = sqlx::migrate!("../migrations");
            migrator.run(&pool).await.context("migration failed")?;
            eprintln!("migrations applied: {}", migrator.iter().count());
        }
    }
    Ok(())
}
