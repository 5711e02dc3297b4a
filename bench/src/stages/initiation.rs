//! Stage 1, payment initiation through nginx at 1 to 128 clients, against pgbench running
//! the same SQL (`create_payment.sql`). The first run at 128 clients is the table's peak.

use std::time::Duration;

use paystream_testkit::Stack;

use super::{Ctx, Keys, create_payment};
use crate::report::summary;
use crate::{load, procs};

const PEAK_CLIENTS: usize = 128;

pub async fn measure(ctx: &mut Ctx<'_>, keys: &Keys) -> anyhow::Result<()> {
    let floor_vars = [
        ("client", keys.client.to_string()),
        ("keyhash", keys.keyhash.clone()),
    ];
    for clients in [1, 8, 32, PEAK_CLIENTS] {
        println!("payment initiation, {clients} clients ...");
        let r = creates(ctx, keys, clients).await;
        let floor = ctx
            .floor("create_payment.sql", clients, &floor_vars)
            .await?;
        ctx.report.against_floor(
            format!("1. POST /v1/payments, {clients} clients"),
            &r,
            "",
            floor,
        );
    }
    Ok(())
}

/// The median of the runs at `clients`. Not `Ctx::median_load`: the peak's resource use
/// is sampled around one run.
async fn creates(ctx: &mut Ctx<'_>, keys: &Keys, clients: usize) -> load::Run {
    let mut runs = Vec::new();
    for run in 0..ctx.s.runs {
        let before = procs::sample();
        let (http, api, keys) = (ctx.http.clone(), ctx.api.clone(), keys.all.clone());
        runs.push(
            load::closed_loop(clients, ctx.s.length, move |c, n| {
                create_payment(&http, &api, &keys, c + n as usize)
            })
            .await,
        );
        if clients == PEAK_CLIENTS && run == 0 {
            ctx.report.peak = Some(procs::between(&before, &procs::sample()));
        }
    }
    load::median(runs)
}

/// `--load SECS`: only POST /v1/payments at 32 clients, for a profiler to watch.
pub async fn load_only(
    stack: &Stack,
    http: &reqwest::Client,
    length: Duration,
) -> anyhow::Result<()> {
    let primary = stack.pool("DATABASE_URL").await;
    let keys = Keys::create(&primary, 32).await?;
    let (http, api) = (http.clone(), stack.var("PAYSTREAM_API_URL").to_owned());
    let r = load::closed_loop(32, length, move |c, n| {
        create_payment(&http, &api, &keys.all, c + n as usize)
    })
    .await;
    println!("{}", summary(&r, ""));
    Ok(())
}
