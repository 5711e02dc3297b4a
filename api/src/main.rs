//! Payment API: clients initiate and read payments (issue 4 builds it out).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    paystream_service::run("api", axum::Router::new()).await?;
    Ok(())
}
