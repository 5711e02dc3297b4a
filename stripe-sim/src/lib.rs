//! stripe-sim: a Stripe stand-in for tests, the local stack and benchmarks. See README.md.

pub mod api;
pub mod clock;
pub mod control;
pub mod error;
pub mod faults;
pub mod form;
pub mod metrics;
pub mod reports;
pub mod state;
pub mod webhooks;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use tokio::sync::Notify;

use crate::api::{IdempotencyStore, Limiter};
use crate::clock::Clock;
use crate::state::{State, World};

#[derive(Debug, Clone, Default)]
pub struct SimConfig {
    pub seed: u64,
    /// Accept only this key; `None` accepts any `sk_test_...` key.
    pub api_key: Option<String>,
    pub world: World,
}

#[derive(Clone)]
pub struct Sim {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    clock: Clock,
    limiter: Mutex<Limiter>,
    idem: Mutex<IdempotencyStore>,
    http: reqwest::Client,
    api_key: Option<String>,
    request_seq: AtomicU64,
    wake: Notify,
    world: World,
    metrics: metrics::Metrics,
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        Sim {
            inner: Arc::new(Inner {
                state: Mutex::new(State::new(cfg.seed, cfg.world.clone())),
                clock: Clock::default(),
                limiter: Mutex::new(Limiter::default()),
                idem: Mutex::new(IdempotencyStore::default()),
                http: reqwest::Client::new(),
                api_key: cfg.api_key,
                request_seq: AtomicU64::new(0),
                wake: Notify::new(),
                world: cfg.world,
                metrics: metrics::Metrics::default(),
            }),
        }
    }

    /// The HTTP app: `/v1/...` (Stripe), `/_sim/...` (control) and `/metrics`. Spawns the
    /// delivery loop, so it must be called inside a Tokio runtime.
    pub fn router(&self) -> Router {
        tokio::spawn(webhooks::run(self.clone()));
        // The Stripe API counts its own requests (its routes are matched in there); a
        // route layer here counts only what matched out here, so nothing twice.
        control::routes()
            .route("/metrics", axum::routing::get(metrics::serve))
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                metrics::observe,
            ))
            .fallback_service(api::router(self.clone()))
            .with_state(self.clone())
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        // A panic under the lock must not take the whole simulator down with it.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn idempotency(&self) -> MutexGuard<'_, IdempotencyStore> {
        self.inner.idem.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a webhook endpoint for `events` (as Stripe's `enabled_events`), with a
    /// known secret if given.
    pub fn add_endpoint(
        &self,
        url: &str,
        secret: Option<String>,
        events: &[String],
    ) -> Result<serde_json::Value, error::StripeError> {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("url", url);
        for kind in events {
            form.append_pair("enabled_events[]", kind);
        }
        let form = form.finish();
        let ctx = state::Ctx {
            now_ms: self.inner.clock.now_ms(),
            ..state::Ctx::default()
        };
        self.state()
            .create_endpoint(&form::Params::parse(&form), &ctx, secret)
    }

    fn next_request_id(&self) -> String {
        format!(
            "req_{:014}",
            self.inner.request_seq.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    /// Forgets everything (intents, events, endpoints, idempotency keys, faults, clock).
    pub fn reset(&self, seed: Option<u64>) {
        let seed = seed.unwrap_or_else(|| self.state().seed());
        *self.state() = State::new(seed, self.inner.world.clone());
        self.idempotency().clear();
        *self.inner.limiter.lock().unwrap_or_else(|p| p.into_inner()) = Limiter::default();
        self.inner.clock.reset();
        self.inner.request_seq.store(0, Ordering::Relaxed);
    }
}

/// A simulator on an ephemeral loopback port, for tests. Returns it and its base URL.
pub async fn spawn(cfg: SimConfig) -> std::io::Result<(Sim, String)> {
    let sim = Sim::new(cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = sim.router();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "stripe-sim stopped");
        }
    });
    Ok((sim, base))
}

/// `spawn` with a fresh seed: ids must not collide with those an earlier run left in a
/// shared database.
pub async fn spawn_ephemeral() -> std::io::Result<(Sim, String)> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    spawn(SimConfig {
        seed,
        ..SimConfig::default()
    })
    .await
}

pub(crate) fn real_now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
