//! Stage 2, idempotent replays: the same 200 requests again, served from the stored
//! responses, against pgbench's key check and locked read of a stored response
//! (`replay.sql`).

use uuid::Uuid;

use super::{Ctx, Keys, post_payment};

/// Distinct idempotency keys replayed.
const REQUESTS: usize = 200;

pub async fn measure(ctx: &mut Ctx<'_>, keys: &Keys) -> anyhow::Result<()> {
    println!("idempotent replays ...");
    let prefix = format!("replay-{}-", Uuid::now_v7());
    seed(ctx, keys, &prefix).await?;
    // Each key replays its own requests, spread over the 32 keys so the per-key rate limit
    // (100/s per instance) is not what is measured.
    let (http, api, all, p) = (
        ctx.http.clone(),
        ctx.api.clone(),
        keys.all.clone(),
        prefix.clone(),
    );
    ctx.quiet().await?;
    let r = ctx
        .median_load(32, move |c, n| {
            let k = 1 + (c * 7 + n as usize) % REQUESTS;
            let request = post_payment(&http, &api, &all[k % all.len()], format!("{p}{k}"));
            async move {
                request
                    .send()
                    .await
                    .is_ok_and(|r| r.headers().contains_key("idempotent-replayed"))
            }
        })
        .await;
    let vars = [
        ("client", keys.client.to_string()),
        ("prefix", prefix),
        ("n", REQUESTS.to_string()),
    ];
    let floor = ctx.floor("replay.sql", 32, &vars).await?;
    ctx.report
        .against_floor("2. Idempotent replay, 32 clients", &r, "", floor);
    Ok(())
}

/// The first time of each request, so every request of the load is a replay.
async fn seed(ctx: &Ctx<'_>, keys: &Keys, prefix: &str) -> anyhow::Result<()> {
    for k in 1..=REQUESTS {
        let key = &keys.all[k % keys.all.len()];
        let r = post_payment(&ctx.http, &ctx.api, key, format!("{prefix}{k}"))
            .send()
            .await?;
        anyhow::ensure!(
            r.status() == reqwest::StatusCode::CREATED,
            "replay seed: {}",
            r.status()
        );
    }
    Ok(())
}
