//! Health endpoints and the serve loop with graceful shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use paystream_db::Primary;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::metrics::Metrics;
use crate::runtime::{Runtime, TaskState};

/// Who answers, and what readiness depends on.
#[derive(Clone)]
pub struct Health {
    pub service: &'static str,
    pub instance: String,
    pub primary: Primary,
    pub metrics: Arc<Metrics>,
    /// Its supervised background tasks, if it has any.
    pub runtime: Option<Runtime>,
}

impl Health {
    /// `/health/live` (the process answers) and `/health/ready` (it can reach the
    /// primary and its background tasks run), plus an `x-served-by` header on every
    /// response of `app`, so that an operator behind nginx can tell which instance
    /// answered.
    pub fn wrap(self, app: Router) -> Router {
        let served_by =
            HeaderValue::from_str(&self.instance).unwrap_or(HeaderValue::from_static("unknown"));
        let metrics = self.metrics.clone();
        let health = Router::new()
            .route("/health/live", get(live))
            .route("/health/ready", get(ready))
            .route("/metrics", get(prometheus))
            .with_state(self);
        // Outermost first: a request id (nginx's `X-Request-Id` if it is one, else a new
        // one), a span carrying it with one log line at the end, the id echoed back.
        let tracing = ServiceBuilder::new()
            .layer(axum::middleware::map_request(drop_invalid_request_id))
            .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), NewRequestId))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(request_span)
                    .on_request(())
                    .on_response(log_response)
                    .on_failure(()),
            )
            .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()));
        app.merge(health)
            .layer(axum::middleware::from_fn_with_state(metrics, observe))
            .layer(tracing)
            .layer(SetResponseHeaderLayer::overriding(
                HeaderName::from_static("x-served-by"),
                served_by,
            ))
    }
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// An incoming id is kept only if it is short and plain: it goes into every log line of
/// the request, and anyone can send anything.
async fn drop_invalid_request_id(mut req: Request) -> Request {
    let valid = req.headers().get(&REQUEST_ID).is_none_or(|v| {
        let v = v.as_bytes();
        !v.is_empty() && v.len() <= 64 && v.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    });
    if !valid {
        req.headers_mut().remove(&REQUEST_ID);
    }
    req
}

#[derive(Clone, Copy)]
struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&new_request_id())
            .ok()
            .map(RequestId::new)
    }
}

/// Routes as matched, never raw paths: a bounded set of span and metric labels.
fn route_of<B>(req: &axum::http::Request<B>) -> String {
    req.extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned()
}

fn request_span<B>(req: &axum::http::Request<B>) -> Span {
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        request_id = %request_id,
        method = method_label(req.method()),
        route = %route_of(req),
        // Filled in by handlers once they know the payment (`Span::current().record`), so
        // every line of the request carries it.
        payment_id = tracing::field::Empty,
        refund_id = tracing::field::Empty
    )
}

/// One line per request, inside its span. Headers (which carry API keys) are never logged.
fn log_response<B>(res: &axum::http::Response<B>, took: Duration, _: &Span) {
    tracing::info!(
        status = res.status().as_u16(),
        latency_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        "request"
    );
}

/// One metrics sample per request, by route as matched, method and status.
async fn observe(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = route_of(&req);
    let method = method_label(req.method());
    let started = Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics.inc(
        "http_requests_total",
        "HTTP requests by route, method and status",
        &[("route", &route), ("method", method), ("status", &status)],
    );
    metrics.observe(
        "http_request_duration_seconds",
        "HTTP request latency by route",
        &[("route", &route), ("method", method)],
        started.elapsed(),
    );
    res
}

/// A label value from a bounded set: HTTP's own methods, or `other`. Anyone can send any
/// token as a method; each would otherwise become a metrics series for ever.
pub fn method_label(m: &axum::http::Method) -> &'static str {
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

fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}-{:x}", SEQ.fetch_add(1, Ordering::Relaxed))
}

async fn prometheus(State(h): State<Health>) -> impl IntoResponse {
    let (open, idle) = h.primary.connections();
    let gauges = [
        (
            "db_pool_connections",
            "connections open in the primary's pool",
            i64::from(open),
        ),
        (
            "db_pool_idle_connections",
            "idle connections in the primary's pool",
            idle as i64,
        ),
    ];
    (
        [("content-type", crate::metrics::CONTENT_TYPE)],
        h.metrics.render(&gauges),
    )
}

async fn live(State(h): State<Health>) -> impl IntoResponse {
    Json(json!({"status": "ok", "service": h.service, "instance": h.instance}))
}

async fn ready(State(h): State<Health>) -> impl IntoResponse {
    let probe = tokio::time::timeout(Duration::from_secs(2), h.primary.ping()).await;
    let primary = match probe {
        Ok(Ok(())) => "ok",
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: primary unreachable");
            "error"
        }
        Err(_) => "timeout",
    };
    // States only: a task's error can name hosts, and is in the logs already.
    let tasks: serde_json::Map<String, serde_json::Value> = h
        .runtime
        .as_ref()
        .map(Runtime::tasks)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, state)| {
            let v = match state {
                TaskState::Running => json!("running"),
                TaskState::Restarting { restarts, .. } => {
                    json!({"state": "restarting", "restarts": restarts})
                }
                TaskState::Failed { .. } => json!({"state": "failed"}),
            };
            (name.to_owned(), v)
        })
        .collect();
    let serving = h.runtime.as_ref().is_none_or(Runtime::serving);
    let ready = primary == "ok" && serving;
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(json!({
            "status": if ready { "ready" } else if serving { "unready" } else { "stopping" },
            "primary": primary,
            "tasks": tasks,
        })),
    )
}

/// Serves until `shutdown` is cancelled, then stops accepting and lets in-flight requests
/// finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// SIGTERM or Ctrl-C. Only `Runtime::new` listens: one handler per process.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received, draining");
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Method;
    use tower::ServiceExt;

    fn app(runtime: Option<Runtime>) -> Router {
        app_with(runtime, Arc::new(Metrics::default()))
    }

    fn app_with(runtime: Option<Runtime>, metrics: Arc<Metrics>) -> Router {
        Health {
            service: "test",
            instance: "test-1".into(),
            primary: Primary::connect_lazy("postgres://x:y@127.0.0.1:1/none", 1).unwrap(),
            metrics,
            runtime,
        }
        .wrap(Router::new().route("/hello", get(|| async { "hi" })))
    }

    async fn call(app: Router, path: &str, request_id: Option<&str>) -> Response {
        let mut req = axum::http::Request::get(path);
        if let Some(id) = request_id {
            req = req.header("x-request-id", id);
        }
        app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn a_plain_request_id_is_echoed_and_anything_else_replaced() {
        let res = call(app(None), "/hello", Some("req-abc-123")).await;
        assert_eq!(res.headers()["x-request-id"], "req-abc-123");
        assert_eq!(res.headers()["x-served-by"], "test-1");
        for bad in ["has space", "semi;colon", &"x".repeat(65)] {
            let res = call(app(None), "/hello", Some(bad)).await;
            let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
            assert!(id != bad && !id.is_empty(), "{bad:?} -> {id:?}");
        }
        // Not even text: replaced too, never echoed.
        let req = axum::http::Request::get("/hello")
            .header(
                "x-request-id",
                HeaderValue::from_bytes(b"id\xff\tx").unwrap(),
            )
            .body(Body::empty())
            .unwrap();
        let res = app(None).oneshot(req).await.unwrap();
        let id = res.headers()["x-request-id"].as_bytes();
        assert!(
            !id.is_empty() && id.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-'),
            "{id:?}"
        );
        let res = call(app(None), "/hello", None).await;
        let a = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        let res = call(app(None), "/hello", None).await;
        assert_ne!(res.headers()["x-request-id"].to_str().unwrap(), a);
    }

    #[tokio::test]
    async fn readiness_lists_the_background_tasks_and_says_stopping_at_shutdown() {
        let rt = Runtime::without_signals(Arc::default());
        rt.supervise("dies", crate::OnExit::Restart, |_| async {
            Err("lost it".to_owned())
        });
        rt.supervise("lives", crate::OnExit::Restart, |token| async move {
            token.cancelled().await;
            Ok(())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let v = unready(&rt).await;
        assert_eq!(v["tasks"]["lives"], "running", "{v}");
        assert_eq!(v["tasks"]["dies"]["state"], "restarting", "{v}");
        assert!(v["tasks"]["dies"].get("last_error").is_none(), "{v}");
        assert_eq!(v["status"], "unready", "the primary is down: {v}");
        rt.shutdown();
        assert_eq!(unready(&rt).await["status"], "stopping");
    }

    /// `/health/ready`'s body, after checking it answers 503.
    async fn unready(rt: &Runtime) -> serde_json::Value {
        let res = call(app(Some(rt.clone())), "/health/ready", None).await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// The values of `label` in the series of `metric`.
    fn label_values(text: &str, metric: &str, label: &str) -> std::collections::BTreeSet<String> {
        let key = format!("{label}=\"");
        text.lines()
            .filter(|l| l.starts_with(&format!("{metric}{{")))
            .filter_map(|l| Some(l.split(&key).nth(1)?.split('"').next()?.to_owned()))
            .collect()
    }

    #[tokio::test]
    async fn raw_paths_and_invented_methods_add_no_label_values() {
        let metrics = Arc::new(Metrics::default());
        let app = app_with(None, metrics.clone());
        let send = |method: &str, path: String| {
            let req = axum::http::Request::builder()
                .method(Method::from_bytes(method.as_bytes()).unwrap())
                .uri(path)
                .body(Body::empty())
                .unwrap();
            app.clone().oneshot(req)
        };
        send("GET", "/hello".into()).await.unwrap();
        // Paths as anyone may send them: ids, traversal, encoded bytes, near misses.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..300 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let path = match i % 5 {
                0 => format!("/{seed:x}"),
                1 => format!("/hello/{seed}"),
                2 => format!("/v1/payments/{seed:x}/../%2e%2e/{i}"),
                3 => format!("/hello%20{seed}?q={seed}"),
                _ => format!("/health/{seed:o}/x"),
            };
            let method = ["GET", "POST", "BREW", "PROPFIND", "X-EVIL", "get"][i % 6];
            send(method, path).await.unwrap();
        }
        let res = send("SPACEJUMP", "/hello".into()).await.unwrap();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        let text = metrics.render(&[]);
        for metric in [
            "http_requests_total",
            "http_request_duration_seconds_bucket",
        ] {
            let routes = label_values(&text, metric, "route");
            assert_eq!(
                routes.iter().map(String::as_str).collect::<Vec<_>>(),
                ["/hello", "unmatched"],
                "{metric}: {text}"
            );
            let methods = label_values(&text, metric, "method");
            assert_eq!(
                methods.iter().map(String::as_str).collect::<Vec<_>>(),
                ["GET", "POST", "other"],
                "{metric}: {text}"
            );
        }
        let statuses = label_values(&text, "http_requests_total", "status");
        assert!(statuses.len() <= 3, "{statuses:?}");
    }

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics() {
        let res = call(app(None), "/metrics", None).await;
        assert_eq!(res.headers()["content-type"], crate::metrics::CONTENT_TYPE);
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("\ndb_pool_connections 0\n"), "{text}");
    }

    #[test]
    fn method_labels_are_a_bounded_set() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::TRACE), "TRACE");
        let invented: std::collections::HashSet<&str> = (0..1000)
            .map(|i| Method::from_bytes(format!("X{i}").as_bytes()).unwrap())
            .map(|m| method_label(&m))
            .collect();
        assert_eq!(invented.into_iter().collect::<Vec<_>>(), ["other"]);
    }
}
