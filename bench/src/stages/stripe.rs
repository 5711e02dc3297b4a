//! The Stripe stand-in's own capacity, so it is known not to be the API's bottleneck in
//! the stages after it.

use super::Ctx;
use crate::report::ms;

pub async fn capacity(ctx: &mut Ctx<'_>) {
    let http = ctx.http.clone();
    let base = ctx.stack.var("STRIPE_API_BASE").to_owned();
    let key = ctx.stack.var("STRIPE_SECRET_KEY").to_owned();
    let r = ctx
        .median_load(32, move |_, _| {
            let request = http
                .post(format!("{base}/v1/payment_intents"))
                .bearer_auth(&key)
                .form(&[("amount", "1250"), ("currency", "usd")]);
            async move { request.send().await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
    ctx.report.record(
        "Stripe stand-in: create intent, 32 clients",
        format!("{:.0}/s, p50 {}", r.per_sec, ms(r.p50)),
        "",
        "",
    );
}
