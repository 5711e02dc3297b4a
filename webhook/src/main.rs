//! Stripe webhook receiver (issue 5 builds it out).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    paystream_service::run("webhook", axum::Router::new()).await?;
    Ok(())
}
