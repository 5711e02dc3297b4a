//! Webhook signing and delivery: signed exactly as Stripe signs
//! (`Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "t.payload")>`, one `v1` per
//! live secret during a roll), retried with exponential backoff until a horizon.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::Sim;
use crate::state::DeliveryFault;

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

struct Send {
    index: usize,
    url: String,
    payload: String,
    header: String,
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

fn due(sim: &Sim) -> Vec<Send> {
    let now_ms = sim.inner.clock.now_ms();
    // Signatures carry real time, not simulated time: receivers check them against
    // their own clocks, as they would with Stripe.
    let wire_now = crate::real_now_s();
    let mut st = sim.state();
    st.tick(now_ms);
    let mut sends = Vec::new();
    for index in st.take_due_deliveries(now_ms) {
        let d = &st.deliveries[index];
        let Some(endpoint) = st.endpoints.iter().find(|e| e.id == d.endpoint_id) else {
            continue;
        };
        let Some(&ev) = st.event_index.get(&d.event_id) else {
            continue;
        };
        let payload = st.events[ev].to_json().to_string();
        let live: Vec<&str> = endpoint
            .secrets
            .iter()
            .filter(|(_, exp)| exp.is_none_or(|e| e > now_ms))
            .map(|(s, _)| s.as_str())
            .collect();
        let header = match d.fault {
            None => header(&live, wire_now, &payload),
            Some(DeliveryFault::StaleTimestamp) => header(&live, wire_now - 3600, &payload),
            Some(DeliveryFault::BadSignature) => {
                header(&["whsec_not_the_endpoint_secret"], wire_now, &payload)
            }
        };
        sends.push(Send {
            index,
            url: endpoint.url.clone(),
            payload,
            header,
        });
    }
    for s in &sends {
        st.deliveries[s.index].state = "sending";
    }
    sends
}

async fn deliver(sim: Sim, send: Send) {
    let timeout = Duration::from_millis(sim.state().world.delivery_timeout_ms);
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
    let now_ms = sim.inner.clock.now_ms();
    let mut st = sim.state();
    let world = st.world.clone();
    let (ok, status, error) = match result {
        Ok(res) => (res.status().is_success(), Some(res.status().as_u16()), None),
        Err(e) => (
            false,
            None,
            Some(if e.is_timeout() {
                "timeout".to_owned()
            } else {
                "connection error".to_owned()
            }),
        ),
    };
    let d = &mut st.deliveries[send.index];
    d.attempt += 1;
    d.last_status = status;
    d.last_error = error;
    if ok {
        d.state = "delivered";
        let pair = (d.event_id.clone(), d.endpoint_id.clone());
        if st.delivered.insert(pair.clone()) {
            if let Some(&i) = st.event_index.get(&pair.0) {
                st.events[i].pending_webhooks = (st.events[i].pending_webhooks - 1).max(0);
            }
        }
        return;
    }
    let exp = 1_i64 << (d.attempt - 1).min(20);
    let backoff = world
        .retry_base_ms
        .saturating_mul(exp)
        .min(world.retry_max_ms);
    let next = now_ms + backoff;
    if next > d.first_due_ms + world.retry_horizon_ms {
        d.state = "failed";
    } else {
        st.reschedule(send.index, next);
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
