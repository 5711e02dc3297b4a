//! `GET /metrics`: the simulator's requests, for Prometheus, in the OpenMetrics format.
//! `prometheus-client` directly rather than `paystream-service`'s registry: the simulator
//! needs one counter, not the services' database and runtime dependencies.

use std::sync::Mutex;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::Sim;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = [(&'static str, String); 3];

#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "stripe_sim_requests",
            "requests to the simulator by method, route as matched and status",
            requests.clone(),
        );
        registry.register(
            "paystream_build",
            "the build that runs: service name and version (value 1)",
            Info::new(vec![
                ("service", "stripe-sim"),
                ("version", env!("CARGO_PKG_VERSION")),
            ]),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
        }
    }
}

impl Metrics {
    fn count(&self, method: &'static str, route: String, status: u16) {
        self.requests
            .get_or_create(&[
                ("method", method.to_owned()),
                ("route", route),
                ("status", status.to_string()),
            ])
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = encode(&mut out, &registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Counts a request by its route as matched (`unmatched` if none), never its raw path:
/// ids and made-up URLs would each become a series.
pub async fn observe(State(sim): State<Sim>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = method_label(req.method());
    let res = next.run(req).await;
    sim.inner
        .metrics
        .count(method, route, res.status().as_u16());
    res
}

pub async fn serve(State(sim): State<Sim>) -> impl IntoResponse {
    ([("content-type", CONTENT_TYPE)], sim.inner.metrics.render())
}

/// HTTP's own methods, or `other`: anyone can send any token as a method.
fn method_label(m: &Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt;

    use crate::{Sim, SimConfig};

    async fn call(app: &axum::Router, method: &str, path: &str) -> (u16, String) {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", "Bearer sk_test_x")
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn requests_are_counted_by_route_as_matched_and_metrics_need_no_key() {
        let sim = Sim::new(SimConfig::default());
        let app = sim.router();
        call(&app, "GET", "/v1/payment_intents/pi_123").await;
        call(&app, "GET", "/v1/payment_intents/pi_456").await;
        call(&app, "GET", "/_sim/clock").await;
        for i in 0..50 {
            call(&app, "GET", &format!("/v1/nothing/{i}")).await;
            call(&app, "BREW", &format!("/v1/payment_intents/pi_{i}")).await;
        }
        // No Stripe key: /metrics is not behind Stripe's auth.
        let req = axum::http::Request::get("/metrics")
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], super::CONTENT_TYPE);
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let series: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with("stripe_sim_requests_total{"))
            .collect();
        // Over statuses: the rate limit answers some of them 429.
        let has = |method: &str, route: &str, n: u32| {
            let sum: u32 = series
                .iter()
                .filter(|l| {
                    l.contains(&format!("method=\"{method}\""))
                        && l.contains(&format!("route=\"{route}\""))
                })
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u32>().ok())
                .sum();
            sum == n
        };
        assert!(has("GET", "/v1/payment_intents/{id}", 2), "{text}");
        assert!(has("GET", "/_sim/clock", 1), "{text}");
        assert!(has("GET", "unmatched", 50), "{text}");
        assert!(has("other", "/v1/payment_intents/{id}", 50), "{text}");
        assert!(series.len() <= 8, "bounded: {text}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("paystream_build_info{service=\"stripe-sim\",version=")),
            "{text}"
        );
        assert_eq!(lines.last(), Some(&"# EOF"), "{text}");
    }
}
