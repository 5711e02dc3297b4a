//! Stripe's Reporting API: report types and runs through async-stripe's typed requests
//! (the same transport, the same pinned `Stripe-Version` as every other call), and the
//! run's file downloaded by a plain authenticated GET, streamed to disk, since
//! async-stripe reads whole answers into memory and a month's report is hundreds of MB.

use std::path::Path;
use std::time::Duration;

use paystream_core::gateway::{GatewayError, ReportAvailability, ReportRun, StripeReporting};
use stripe_misc::ReportingReportRun;
use stripe_misc::reporting_report_run::{
    CreateReportingReportRun, CreateReportingReportRunParameters, RetrieveReportingReportRun,
};
use stripe_misc::reporting_report_type::RetrieveReportingReportType;
use tokio::io::AsyncWriteExt;

use crate::StripeApi;

impl StripeReporting for StripeApi {
    async fn report_availability(
        &self,
        report_type: &str,
    ) -> Result<ReportAvailability, GatewayError> {
        let t = self
            .send(RetrieveReportingReportType::new(report_type))
            .await?;
        Ok(ReportAvailability {
            start: t.data_available_start,
            end: t.data_available_end,
        })
    }

    /// Sent without an idempotency key: a retry that makes a second run costs a report,
    /// never money, and the caller polls whichever run it got.
    async fn start_report_run(
        &self,
        report_type: &str,
        interval_start: i64,
        interval_end: i64,
        columns: &[&str],
    ) -> Result<ReportRun, GatewayError> {
        let mut parameters = CreateReportingReportRunParameters::new();
        parameters.interval_start = Some(interval_start);
        parameters.interval_end = Some(interval_end);
        // None, not an empty list: Stripe runs the type's default columns then.
        if !columns.is_empty() {
            parameters.columns = Some(columns.iter().map(|c| (*c).to_owned()).collect());
        }
        let run = self
            .send(CreateReportingReportRun::new(report_type).parameters(parameters))
            .await?;
        Ok(report_run(run))
    }

    async fn report_run(&self, id: &str) -> Result<ReportRun, GatewayError> {
        let run = self.send(RetrieveReportingReportRun::new(id)).await?;
        Ok(report_run(run))
    }

    /// The secret key is sent only to Stripe's API host (the configured base) and
    /// `files.stripe.com`; any other `url` is refused unsent. Nothing is left at `to` when
    /// the download fails, so a cut-short file never passes for a report; a local write
    /// failure answers `Unavailable`, like any other outcome worth retrying.
    async fn download_file(&self, url: &str, to: &Path) -> Result<u64, GatewayError> {
        let res = self.client.get_file(url).await?;
        let file = tokio::fs::File::create(to).await.map_err(local)?;
        match write_body(res, file, self.client.timeout()).await {
            Ok(size) => Ok(size),
            Err(e) => {
                // Best effort: the error to report is the download's, not the cleanup's.
                let _ = tokio::fs::remove_file(to).await;
                Err(e)
            }
        }
    }
}

fn report_run(run: ReportingReportRun) -> ReportRun {
    ReportRun {
        id: run.id.as_str().to_owned(),
        status: run.status,
        error: run.error,
        file_url: run.result.and_then(|f| f.url),
    }
}

/// Streams the body into `file`; `stall` bounds the wait for each chunk, not the whole.
async fn write_body(
    mut res: reqwest::Response,
    file: tokio::fs::File,
    stall: Duration,
) -> Result<u64, GatewayError> {
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut size = 0u64;
    loop {
        let chunk = tokio::time::timeout(stall, res.chunk())
            .await
            .map_err(|_| GatewayError::Unavailable("timeout".into()))?
            .map_err(|e| {
                GatewayError::Unavailable(if e.is_timeout() {
                    "timeout".into()
                } else {
                    "answer cut short".into()
                })
            })?;
        let Some(chunk) = chunk else { break };
        out.write_all(&chunk).await.map_err(local)?;
        size += chunk.len() as u64;
    }
    out.flush().await.map_err(local)?;
    // Durable before it is reported done: the caller may record the report as fetched.
    out.into_inner().sync_all().await.map_err(local)?;
    Ok(size)
}

fn local(e: std::io::Error) -> GatewayError {
    GatewayError::Unavailable(format!("writing the report file: {e}"))
}
