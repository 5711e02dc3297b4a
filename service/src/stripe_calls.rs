//! Every Stripe call a service makes, counted by call and outcome
//! (`stripe_calls_total`): what the account's shared rate limit is spent on, the 429s
//! and 5xx an operator alerts on, and the calls per payment the benchmarks report.

use std::sync::Arc;

use paystream_core::gateway::{
    GatewayError, IntentEventPage, IntentPage, IntentView, NewIntent, NewRefund, RefundPage,
    RefundView, ReportAvailability, ReportRun, StripeGateway, StripeReporting,
};

use crate::Metrics;

/// A gateway that counts the calls of the one it wraps.
pub struct Counted<G> {
    inner: G,
    metrics: Arc<Metrics>,
}

impl<G> Counted<G> {
    pub fn new(inner: G, metrics: Arc<Metrics>) -> Self {
        Counted { inner, metrics }
    }

    fn count<T>(&self, call: &'static str, r: Result<T, GatewayError>) -> Result<T, GatewayError> {
        let outcome = match &r {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        self.metrics.inc(
            "stripe_calls_total",
            "Stripe calls by operation and outcome",
            &[("operation", call), ("outcome", outcome)],
        );
        r
    }
}

impl<G: StripeGateway> StripeGateway for Counted<G> {
    async fn create_intent(&self, req: &NewIntent<'_>) -> Result<IntentView, GatewayError> {
        self.count("create_intent", self.inner.create_intent(req).await)
    }

    async fn retrieve_intent(&self, id: &str) -> Result<IntentView, GatewayError> {
        self.count("retrieve_intent", self.inner.retrieve_intent(id).await)
    }

    async fn cancel_intent(
        &self,
        id: &str,
        reason: Option<&str>,
        idempotency_key: &str,
    ) -> Result<IntentView, GatewayError> {
        let r = self.inner.cancel_intent(id, reason, idempotency_key).await;
        self.count("cancel_intent", r)
    }

    async fn list_intents(
        &self,
        created_gte: i64,
        created_lt: i64,
        starting_after: Option<&str>,
    ) -> Result<IntentPage, GatewayError> {
        let r = self
            .inner
            .list_intents(created_gte, created_lt, starting_after)
            .await;
        self.count("list_intents", r)
    }

    async fn intent_events(
        &self,
        types: &[&str],
        created_gte: i64,
        starting_after: Option<&str>,
    ) -> Result<IntentEventPage, GatewayError> {
        let r = self
            .inner
            .intent_events(types, created_gte, starting_after)
            .await;
        self.count("list_events", r)
    }

    async fn find_by_payment_id(
        &self,
        payment_id: &str,
    ) -> Result<Option<IntentView>, GatewayError> {
        let r = self.inner.find_by_payment_id(payment_id).await;
        self.count("search_intents", r)
    }

    async fn capture_intent(
        &self,
        id: &str,
        amount: Option<i64>,
        idempotency_key: &str,
    ) -> Result<IntentView, GatewayError> {
        let r = self.inner.capture_intent(id, amount, idempotency_key).await;
        self.count("capture_intent", r)
    }

    async fn create_refund(&self, req: &NewRefund<'_>) -> Result<RefundView, GatewayError> {
        self.count("create_refund", self.inner.create_refund(req).await)
    }

    async fn retrieve_refund(&self, id: &str) -> Result<RefundView, GatewayError> {
        self.count("retrieve_refund", self.inner.retrieve_refund(id).await)
    }

    async fn list_refunds(&self, payment_intent: &str) -> Result<Vec<RefundView>, GatewayError> {
        self.count(
            "list_refunds",
            self.inner.list_refunds(payment_intent).await,
        )
    }

    async fn list_refunds_created(
        &self,
        created_gte: i64,
        created_lt: i64,
        starting_after: Option<&str>,
    ) -> Result<RefundPage, GatewayError> {
        let r = self
            .inner
            .list_refunds_created(created_gte, created_lt, starting_after)
            .await;
        self.count("list_refunds", r)
    }
}

impl<G: StripeReporting> StripeReporting for Counted<G> {
    async fn report_availability(
        &self,
        report_type: &str,
    ) -> Result<ReportAvailability, GatewayError> {
        let r = self.inner.report_availability(report_type).await;
        self.count("report_availability", r)
    }

    async fn start_report_run(
        &self,
        report_type: &str,
        interval_start: i64,
        interval_end: i64,
        columns: &[&str],
    ) -> Result<ReportRun, GatewayError> {
        let r = self
            .inner
            .start_report_run(report_type, interval_start, interval_end, columns)
            .await;
        self.count("create_report_run", r)
    }

    async fn report_run(&self, id: &str) -> Result<ReportRun, GatewayError> {
        self.count("retrieve_report_run", self.inner.report_run(id).await)
    }

    /// One call however long the file: Stripe counts the request, not its bytes.
    async fn download_file(&self, url: &str, to: &std::path::Path) -> Result<u64, GatewayError> {
        self.count("download_file", self.inner.download_file(url, to).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed answer per call, some ok and some not, to see both outcomes counted.
    struct Fake;

    impl StripeReporting for Fake {
        async fn report_availability(&self, _: &str) -> Result<ReportAvailability, GatewayError> {
            Ok(ReportAvailability { start: 0, end: 10 })
        }

        async fn start_report_run(
            &self,
            _: &str,
            _: i64,
            _: i64,
            _: &[&str],
        ) -> Result<ReportRun, GatewayError> {
            Err(GatewayError::RateLimited)
        }

        async fn report_run(&self, id: &str) -> Result<ReportRun, GatewayError> {
            Ok(ReportRun {
                id: id.to_owned(),
                status: "pending".into(),
                error: None,
                file_url: None,
            })
        }

        async fn download_file(&self, _: &str, _: &std::path::Path) -> Result<u64, GatewayError> {
            Err(GatewayError::NotFound)
        }
    }

    #[tokio::test]
    async fn reporting_calls_are_counted_by_call_and_outcome() {
        let metrics = Arc::new(Metrics::default());
        let g = Counted::new(Fake, metrics.clone());
        g.report_availability("t").await.unwrap();
        g.start_report_run("t", 0, 1, &[]).await.unwrap_err();
        g.report_run("frr_1").await.unwrap();
        g.report_run("frr_1").await.unwrap();
        g.download_file("u", std::path::Path::new("x"))
            .await
            .unwrap_err();
        let out = metrics.render(&[]);
        for line in [
            r#"stripe_calls_total{operation="report_availability",outcome="ok"} 1"#,
            r#"stripe_calls_total{operation="create_report_run",outcome="rate_limited"} 1"#,
            r#"stripe_calls_total{operation="retrieve_report_run",outcome="ok"} 2"#,
            r#"stripe_calls_total{operation="download_file",outcome="not_found"} 1"#,
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        }
    }
}
