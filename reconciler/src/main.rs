//! CDC stream worker that reconciles pending payments with Stripe (issue 6 builds it out).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    paystream_service::run("reconciler", axum::Router::new()).await?;
    Ok(())
}
