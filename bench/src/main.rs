//! `make bench`: each stage of the running local stack against its floor, measured in the
//! same run on the same machine, printed as one table and written to
//! `.stack/bench/latest.md`. Every figure is the median of several runs.
//!
//!   paystream-bench [--quick] [--only STAGE]
//! (--quick: one short run each, a smoke test; --only: one stage, e.g. `sweep`)
//!   paystream-bench --load SECS   (only payment initiation at 32 clients, to profile)
//!
//! Each stage is a module of `stages`, run in the table's order by `stages::run`.
#![allow(
    clippy::print_stdout,
    clippy::float_arithmetic,
    clippy::cast_precision_loss
)]

mod lag;
mod load;
mod metrics;
mod pgbench;
mod procs;
mod report;
mod stages;

use std::time::Duration;

use anyhow::Context;
use paystream_testkit::Stack;
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut s = stages::Settings::new(std::env::args().any(|a| a == "--quick"));
    s.only = std::env::args().skip_while(|a| a != "--only").nth(1);
    let load_only = std::env::args()
        .skip_while(|a| a != "--load")
        .nth(1)
        .map(|v| v.parse::<u64>())
        .transpose()?;
    let stack = Stack::from_env_file();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;
    let limits = StripeLimits::lift(&http, stack.var("STRIPE_SIM_URL")).await?;
    let result = match load_only {
        Some(secs) => stages::load_only(&stack, &http, Duration::from_secs(secs))
            .await
            .map(|()| None),
        None => stages::run(&stack, &http, &s).await.map(Some),
    };
    limits.restore(&http).await?;
    let Some(report) = result? else {
        return Ok(());
    };

    let text = report.table();
    println!("\n{text}");
    let out = stack.root().join(".stack/bench/latest.md");
    std::fs::create_dir_all(out.parent().context("dir")?)?;
    std::fs::write(&out, text)?;
    println!("written to {}", out.display());
    Ok(())
}

/// Stripe's own rate limits (which stripe-sim mimics: 100/s, 25/s per endpoint) would
/// cap every figure at 25 creates/s: lifted for the run, restored after.
struct StripeLimits {
    sim: String,
    world: serde_json::Value,
}

impl StripeLimits {
    async fn lift(http: &reqwest::Client, sim: &str) -> anyhow::Result<StripeLimits> {
        let world: serde_json::Value = http
            .get(format!("{sim}/_sim/world"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut unlimited = world.clone();
        unlimited["per_endpoint_rate"] = json!(0);
        unlimited["global_rate"] = json!(0);
        http.put(format!("{sim}/_sim/world"))
            .json(&unlimited)
            .send()
            .await?
            .error_for_status()?;
        Ok(StripeLimits {
            sim: sim.to_owned(),
            world,
        })
    }

    async fn restore(self, http: &reqwest::Client) -> anyhow::Result<()> {
        http.put(format!("{}/_sim/world", self.sim))
            .json(&self.world)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}
