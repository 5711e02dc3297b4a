//! Webhook signing and delivery: signed exactly as Stripe signs
//! (`Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "t.payload")>`, one `v1` per
//! live secret during a roll), retried with exponential backoff until a horizon.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::Sim;
use crate::state::{Attempt, DeliveryFault, DeliveryId};

pub fn signature(secret: &str, timestamp: i64, payload: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("{timestamp}.{payload}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

pub fn header(secrets: &[&str], timestamp: i64, payload: &str) -> String {
    let mut parts = vec![format!("t={timestamp}")];
    parts.extend(
        secrets
            .iter()
            .map(|s| format!("v1={}", signature(s, timestamp, payload))),
    );
    parts.join(",")
}

/// Runs for the life of the simulator: completes timed state changes and sends due
/// deliveries. Deliveries run concurrently, each with its own timeout.
pub async fn run(sim: Sim) {
    loop {
        for send in due(&sim) {
            tokio::spawn(deliver(sim.clone(), send));
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(20)) => {},
            () = sim.inner.wake.notified() => {},
        }
    }
}

struct Send {
    id: DeliveryId,
    url: String,
    payload: String,
    header: String,
}

fn due(sim: &Sim) -> Vec<Send> {
    let now_ms = sim.inner.clock.now_ms();
    // Signatures carry real time, not simulated time: receivers check them against
    // their own clocks, as they would with Stripe.
    let wire_now = crate::real_now_s();
    let mut st = sim.state();
    st.tick(now_ms);
    st.take_due_deliveries(now_ms)
        .into_iter()
        .map(|o| {
            let live: Vec<&str> = o.secrets.iter().map(String::as_str).collect();
            let header = match o.fault {
                None => header(&live, wire_now, &o.payload),
                Some(DeliveryFault::StaleTimestamp) => header(&live, wire_now - 3600, &o.payload),
                Some(DeliveryFault::BadSignature) => {
                    header(&["whsec_not_the_endpoint_secret"], wire_now, &o.payload)
                }
            };
            Send {
                id: o.id,
                url: o.url,
                payload: o.payload,
                header,
            }
        })
        .collect()
}

async fn deliver(sim: Sim, send: Send) {
    let timeout = Duration::from_millis(sim.state().world().delivery_timeout_ms);
    let result = sim
        .inner
        .http
        .post(&send.url)
        .header("content-type", "application/json; charset=utf-8")
        .header(
            "user-agent",
            "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        )
        .header("stripe-signature", &send.header)
        .body(send.payload)
        .timeout(timeout)
        .send()
        .await;
    let attempt = match result {
        Ok(res) => Attempt::Answered(res.status().as_u16()),
        Err(e) if e.is_timeout() => Attempt::TimedOut,
        Err(_) => Attempt::Unreachable,
    };
    let now_ms = sim.inner.clock.now_ms();
    let recorded = sim.state().record_delivery(send.id, attempt, now_ms);
    if let Err(e) = recorded {
        // Only a reset while the delivery was in flight gets here: its state is gone.
        tracing::debug!(error = %e, "delivery outcome dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_stripes_documented_scheme() {
        // HMAC-SHA256("whsec_test", "1492774577.{}") computed independently with openssl:
        // printf '1492774577.{}' | openssl dgst -sha256 -hmac whsec_test
        let sig = signature("whsec_test", 1_492_774_577, "{}");
        assert_eq!(
            sig,
            "0d0602f6611bd2252dd4b74b58a4528355a7380639a15e6cc21e3059d56d5b8b"
        );
        let h = header(&["whsec_a", "whsec_b"], 10, "x");
        let parts: Vec<&str> = h.split(',').collect();
        assert_eq!(parts[0], "t=10");
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[1], format!("v1={}", signature("whsec_a", 10, "x")));
        assert_ne!(parts[1], parts[2]);
    }
}
