//! The HTTP under async-stripe's typed requests: an implementation of async-stripe's own
//! `StripeClient` trait over reqwest, instead of async-stripe's hyper client, because
//! that client (1.0.0-rc.10) drops Stripe's `Stripe-Should-Retry` verdict and keeps no
//! connection alive (a TLS handshake per call). Requests are built and answers read by
//! async-stripe; this only carries them, once each (retries are the callers', with the
//! same key), and says what Stripe's answer means for the gateway.

use std::fmt::{self, Display};
use std::time::Duration;

use bytes::Bytes;
use paystream_core::gateway::GatewayError;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use stripe_client_core::{CustomizedStripeRequest, StripeClient, StripeClientErr, StripeMethod};
use stripe_shared::ApiErrorsType;

use crate::STRIPE_VERSION;

#[derive(Clone)]
pub(crate) struct Transport {
    http: reqwest::Client,
    /// `https://api.stripe.com`, without a trailing slash.
    base: String,
    /// `Bearer sk_...`, marked sensitive so that no debug output shows it.
    auth: HeaderValue,
    /// A call's whole budget; a download's budget between two chunks (see `get_file`).
    timeout: Duration,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("base", &self.base)
            .field("secret_key", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Transport {
    pub(crate) fn new(
        base: &str,
        secret_key: &str,
        timeout: Duration,
    ) -> Result<Self, GatewayError> {
        let mut auth = HeaderValue::try_from(format!("Bearer {secret_key}"))
            .map_err(|_| GatewayError::Misconfigured { status: 0 })?;
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("paystream/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GatewayError::Unavailable(format!("http client: {e}")))?;
        Ok(Transport {
            http,
            base: base.trim_end_matches('/').to_owned(),
            auth,
            timeout,
        })
    }

    /// How long a download may wait for its answer, or between two of its chunks.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// An authenticated GET of a file Stripe serves (a report run's result), answered
    /// once its headers are in: the body is the caller's to stream. The client's total
    /// timeout is lifted for it (a month's report takes longer than a call's budget), so
    /// the answer and each chunk are bounded by `timeout` instead.
    pub(crate) async fn get_file(&self, url: &str) -> Result<reqwest::Response, GatewayError> {
        if !self.serves_files(url) {
            // The secret key goes to Stripe alone, whatever a (forged) run's url says.
            return Err(GatewayError::Rejected {
                status: 400,
                code: "file_url_not_stripe".into(),
                message: "a file url outside stripe's hosts is not fetched".into(),
            });
        }
        let send = self
            .http
            .get(url)
            .header("Authorization", self.auth.clone())
            .header("Stripe-Version", STRIPE_VERSION)
            .timeout(DOWNLOAD_LIMIT)
            .send();
        let res = tokio::time::timeout(self.timeout, send)
            .await
            .map_err(|_| GatewayError::Unavailable("timeout".into()))?
            .map_err(|e| {
                GatewayError::Unavailable(if e.is_timeout() {
                    "timeout".into()
                } else {
                    "connection failed".into()
                })
            })?;
        let status = res.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(res);
        }
        let should_retry = should_retry(res.headers());
        // An error's body is small JSON, read only to map it; bounded in time all the same.
        let body = tokio::time::timeout(self.timeout, res.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        Err(verdict(status, should_retry, &body))
    }

    /// Stripe's API itself, or the host Stripe serves files from (`files.stripe.com`).
    fn serves_files(&self, url: &str) -> bool {
        let Ok(url) = reqwest::Url::parse(url) else {
            return false;
        };
        let Ok(base) = reqwest::Url::parse(&self.base) else {
            return false;
        };
        let same_origin = url.origin() == base.origin();
        let stripe_files = url.scheme() == "https" && url.host_str() == Some(STRIPE_FILES_HOST);
        same_origin || stripe_files
    }
}

/// Where Stripe serves report files from, rather than from the API's host.
const STRIPE_FILES_HOST: &str = "files.stripe.com";

/// A download's outer bound: long enough for any report, short enough that a peer
/// trickling bytes forever cannot hold a task forever.
const DOWNLOAD_LIMIT: Duration = Duration::from_secs(3600);

fn should_retry(headers: &reqwest::header::HeaderMap) -> Option<bool> {
    headers
        .get("stripe-should-retry")
        .and_then(|v| v.to_str().ok())
        .map(|v| v == "true")
}

/// The gateway's verdict on a call, as async-stripe's client trait wants its error.
#[derive(Debug)]
pub(crate) struct CallError(pub(crate) GatewayError);

/// An answer async-stripe's model cannot read (an object of another shape): the outcome
/// is unknown, so it is retried like one, with the same key.
impl StripeClientErr for CallError {
    fn deserialize_err(msg: impl Display) -> Self {
        CallError(GatewayError::Unavailable(format!(
            "unreadable stripe answer: {msg}"
        )))
    }
}

impl StripeClient for Transport {
    type Err = CallError;

    async fn execute(&self, req: CustomizedStripeRequest) -> Result<Bytes, CallError> {
        let (req, config) = req.into_pieces();
        let mut url = format!("{}/v1{}", self.base, req.path);
        if let Some(query) = &req.query {
            url.push('?');
            url.push_str(query);
        }
        let method = match req.method {
            StripeMethod::Get => reqwest::Method::GET,
            StripeMethod::Post => reqwest::Method::POST,
            StripeMethod::Delete => reqwest::Method::DELETE,
        };
        let mut http = self
            .http
            .request(method, url)
            .header("Authorization", self.auth.clone())
            .header("Stripe-Version", STRIPE_VERSION);
        if let Some(key) = config.request_strategy.as_ref().and_then(|s| s.get_key()) {
            http = http.header("Idempotency-Key", key.as_str());
        }
        if let Some(account) = &config.account_id {
            http = http.header("Stripe-Account", account.as_str());
        }
        if let Some(timeout) = config.timeout {
            http = http.timeout(timeout);
        }
        if let Some(body) = req.body {
            http = http
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body);
        }
        let res = http.send().await.map_err(|e| {
            CallError(GatewayError::Unavailable(if e.is_timeout() {
                "timeout".into()
            } else {
                "connection failed".into()
            }))
        })?;
        let status = res.status().as_u16();
        let should_retry = should_retry(res.headers());
        let body = res
            .bytes()
            .await
            .map_err(|_| CallError(GatewayError::Unavailable("answer cut short".into())))?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        Err(CallError(verdict(status, should_retry, &body)))
    }
}

/// What a non-2xx answer means. Stripe's `Stripe-Should-Retry` overrides the status
/// code's usual meaning.
pub(crate) fn verdict(status: u16, should_retry: Option<bool>, body: &[u8]) -> GatewayError {
    match (status, should_retry) {
        // Stripe's message would carry our (masked) key: it is neither logged nor passed
        // on, and the fault is ours, not the customer's.
        (401 | 403, _) => GatewayError::Misconfigured { status },
        (404, _) => GatewayError::NotFound,
        (429, _) => GatewayError::RateLimited,
        (409 | 500..=599, Some(false)) => GatewayError::Rejected {
            status,
            code: "should_not_retry".into(),
            message: format!("stripe answered {status} and asked not to retry"),
        },
        (409, _) => GatewayError::InFlight,
        (500..=599, _) | (_, Some(true)) => {
            GatewayError::Unavailable(format!("stripe answered {status}"))
        }
        _ => {
            let error = std::str::from_utf8(body)
                .ok()
                .and_then(|b| miniserde::json::from_str::<stripe_shared::Error>(b).ok())
                .map(|e| e.error);
            match error {
                Some(e) if e.type_ == ApiErrorsType::IdempotencyError => GatewayError::KeyReused,
                Some(e) => GatewayError::Rejected {
                    status,
                    code: e.code.map(|c| c.as_str().to_owned()).unwrap_or_default(),
                    message: e.message.unwrap_or_default(),
                },
                None => GatewayError::Rejected {
                    status,
                    code: String::new(),
                    message: format!("stripe answered {status}"),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_fetched_from_stripe_alone() {
        let stripe = Transport::new(
            "https://api.stripe.com/",
            "sk_test_x",
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(stripe.serves_files("https://files.stripe.com/v1/files/file_1/contents"));
        assert!(stripe.serves_files("https://api.stripe.com/v1/files/file_1/contents"));
        assert!(!stripe.serves_files("http://files.stripe.com/v1/files/file_1/contents"));
        assert!(!stripe.serves_files("https://files.stripe.com.evil.example/v1/files/f"));
        assert!(!stripe.serves_files("https://evil.example/v1/files/file_1/contents"));
        assert!(!stripe.serves_files("not a url"));
        let sim = Transport::new(
            "http://127.0.0.1:12111",
            "sk_test_x",
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(sim.serves_files("http://127.0.0.1:12111/v1/files/file_1/contents"));
        assert!(!sim.serves_files("http://127.0.0.1:12112/v1/files/file_1/contents"));
        assert!(!format!("{sim:?}").contains("sk_test_x"));
    }
}
