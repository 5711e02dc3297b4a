//! Webhook deliveries: one per (event, endpoint) and per injected duplicate, each with
//! its own status machine. Statuses change only through `Deliveries`' methods:
//!
//! ```text
//! Pending --start_sending--> Sending --record(2xx)--> Delivered
//!    ^                          |----record(else)---> Failed (past the retry horizon)
//!    +------record(else)--------+
//! Dropped (an injected fault: never sent)
//! Pending --cancel--> Canceled (its endpoint was disabled or deleted)
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use serde::{Deserialize, Serialize};

use super::World;
use super::seeded::Seeded;
use crate::faults::Faults;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryFault {
    StaleTimestamp,
    BadSignature,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Sending,
    Delivered,
    /// Retried until the horizon without a 2xx: given up.
    Failed,
    Dropped,
    /// Its endpoint was disabled or deleted before it was delivered: never retried.
    Canceled,
}

#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    id: u64,
    event_id: String,
    endpoint_id: String,
    attempt: u32,
    first_due_ms: i64,
    due_ms: i64,
    fault: Option<DeliveryFault>,
    /// Serialized as `state`, the name `/_sim/deliveries` has always used.
    state: DeliveryStatus,
    last_status: Option<u16>,
    last_error: Option<String>,
    /// A duplicate is a second copy: its success does not count towards pending_webhooks.
    duplicate: bool,
}

impl Delivery {
    pub fn event_id(&self) -> &str {
        &self.event_id
    }

    pub fn endpoint_id(&self) -> &str {
        &self.endpoint_id
    }

    pub fn fault(&self) -> Option<DeliveryFault> {
        self.fault
    }

    pub fn status(&self) -> DeliveryStatus {
        self.state
    }
}

/// A delivery's position: stable for the life of the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryId(usize);

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Answered(u16),
    TimedOut,
    Unreachable,
}

/// What recording an attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The first 2xx for this (event, endpoint): the event awaits one endpoint fewer.
    FirstDelivery {
        event_id: String,
    },
    /// A 2xx for a pair that already had one (a duplicate copy).
    Delivered,
    Retry {
        at_ms: i64,
    },
    GaveUp,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeliveryError {
    /// Its state was replaced (`/_sim/reset`) while it was in flight.
    #[error("no delivery at index {0}")]
    Unknown(usize),
    #[error("delivery {id} is {actual:?}, not {expected:?}")]
    Unexpected {
        id: u64,
        actual: DeliveryStatus,
        expected: DeliveryStatus,
    },
}

#[derive(Default)]
pub struct Deliveries {
    list: Vec<Delivery>,
    /// Pending deliveries by due time, so that no periodic work scans them all.
    queue: BinaryHeap<Reverse<(i64, usize)>>,
    /// (event, endpoint) pairs delivered at least once: what `pending_webhooks` counts down.
    delivered: HashSet<(String, String)>,
}

impl Deliveries {
    /// Plans the delivery of an event to one endpoint, drawing the webhook faults.
    pub fn queue(
        &mut self,
        event_id: &str,
        endpoint_id: &str,
        now_ms: i64,
        f: &Faults,
        dice: &mut Seeded,
    ) {
        let dropped = dice.roll(f.webhook_drop_rate);
        let copies = if dice.roll(f.webhook_duplicate_rate) {
            2
        } else {
            1
        };
        for copy in 0..copies {
            let jitter = dice.up_to(f.webhook_reorder_window_ms);
            let fault = if dice.roll(f.webhook_stale_rate) {
                Some(DeliveryFault::StaleTimestamp)
            } else if dice.roll(f.webhook_bad_signature_rate) {
                Some(DeliveryFault::BadSignature)
            } else {
                None
            };
            let due = now_ms + f.webhook_delay_ms as i64 + jitter as i64;
            let index = self.list.len();
            if !dropped {
                self.queue.push(Reverse((due, index)));
            }
            self.list.push(Delivery {
                id: index as u64 + 1,
                event_id: event_id.to_owned(),
                endpoint_id: endpoint_id.to_owned(),
                attempt: 0,
                first_due_ms: due,
                due_ms: due,
                fault,
                state: if dropped {
                    DeliveryStatus::Dropped
                } else {
                    DeliveryStatus::Pending
                },
                last_status: None,
                last_error: None,
                duplicate: copy > 0,
            });
        }
    }

    /// Pending deliveries whose time has come, in due order. They leave the queue: the
    /// caller sends them (`start_sending`) and records how each attempt ended.
    pub fn take_due(&mut self, now_ms: i64) -> Vec<DeliveryId> {
        let mut due = Vec::new();
        while let Some(&Reverse((at, index))) = self.queue.peek() {
            if at > now_ms {
                break;
            }
            self.queue.pop();
            if self
                .list
                .get(index)
                .is_some_and(|d| d.state == DeliveryStatus::Pending)
            {
                due.push(DeliveryId(index));
            }
        }
        due
    }

    pub fn get(&self, id: DeliveryId) -> Option<&Delivery> {
        self.list.get(id.0)
    }

    fn in_state(
        &mut self,
        id: DeliveryId,
        expected: DeliveryStatus,
    ) -> Result<&mut Delivery, DeliveryError> {
        let d = self
            .list
            .get_mut(id.0)
            .ok_or(DeliveryError::Unknown(id.0))?;
        if d.state != expected {
            return Err(DeliveryError::Unexpected {
                id: d.id,
                actual: d.state,
                expected,
            });
        }
        Ok(d)
    }

    /// A pending delivery whose endpoint no longer takes deliveries.
    pub fn cancel(&mut self, id: DeliveryId) -> Result<(), DeliveryError> {
        self.in_state(id, DeliveryStatus::Pending)?.state = DeliveryStatus::Canceled;
        Ok(())
    }

    /// Stops every pending delivery (retries included) to an endpoint that was disabled
    /// or deleted. One that is being sent is stopped when it comes due again.
    pub fn cancel_for_endpoint(&mut self, endpoint_id: &str) {
        for d in &mut self.list {
            if d.endpoint_id == endpoint_id && d.state == DeliveryStatus::Pending {
                d.state = DeliveryStatus::Canceled;
            }
        }
    }

    pub fn start_sending(&mut self, id: DeliveryId) -> Result<(), DeliveryError> {
        self.in_state(id, DeliveryStatus::Pending)?.state = DeliveryStatus::Sending;
        Ok(())
    }

    /// Records an attempt: a 2xx delivers; anything else retries with exponential
    /// backoff until the world's retry horizon, then gives up.
    pub fn record(
        &mut self,
        id: DeliveryId,
        attempt: Attempt,
        now_ms: i64,
        world: &World,
    ) -> Result<Recorded, DeliveryError> {
        let d = self.in_state(id, DeliveryStatus::Sending)?;
        d.attempt += 1;
        let (ok, status, error) = match attempt {
            Attempt::Answered(s) => ((200..300).contains(&s), Some(s), None),
            Attempt::TimedOut => (false, None, Some("timeout")),
            Attempt::Unreachable => (false, None, Some("connection error")),
        };
        d.last_status = status;
        d.last_error = error.map(str::to_owned);
        if ok {
            d.state = DeliveryStatus::Delivered;
            let pair = (d.event_id.clone(), d.endpoint_id.clone());
            return Ok(if self.delivered.insert(pair.clone()) {
                Recorded::FirstDelivery { event_id: pair.0 }
            } else {
                Recorded::Delivered
            });
        }
        let exp = 1_i64 << (d.attempt - 1).min(20);
        let backoff = world
            .retry_base_ms
            .saturating_mul(exp)
            .min(world.retry_max_ms);
        let next = now_ms + backoff;
        if next > d.first_due_ms + world.retry_horizon_ms {
            d.state = DeliveryStatus::Failed;
            return Ok(Recorded::GaveUp);
        }
        d.state = DeliveryStatus::Pending;
        d.due_ms = next;
        self.queue.push(Reverse((next, id.0)));
        Ok(Recorded::Retry { at_ms: next })
    }

    pub fn all(&self) -> &[Delivery] {
        &self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(faults: &Faults) -> Deliveries {
        let mut d = Deliveries::default();
        d.queue("evt_1", "we_1", 0, faults, &mut Seeded::new(1));
        d
    }

    fn send(d: &mut Deliveries, now_ms: i64) -> DeliveryId {
        let due = d.take_due(now_ms);
        assert_eq!(due.len(), 1, "one delivery due at {now_ms}");
        d.start_sending(due[0]).unwrap();
        due[0]
    }

    #[test]
    fn a_failed_attempt_is_retried_with_backoff_then_delivered() {
        let world = World::default();
        let mut d = one(&Faults::default());
        let id = send(&mut d, 0);
        assert_eq!(
            d.get(id).map(Delivery::status),
            Some(DeliveryStatus::Sending)
        );
        assert!(d.take_due(0).is_empty(), "a delivery in flight is not due");
        assert_eq!(
            d.record(id, Attempt::Answered(500), 0, &world),
            Ok(Recorded::Retry { at_ms: 5_000 })
        );
        assert_eq!(
            d.get(id).map(Delivery::status),
            Some(DeliveryStatus::Pending)
        );
        assert!(d.take_due(4_999).is_empty());
        let id = send(&mut d, 5_000);
        assert_eq!(
            d.record(id, Attempt::TimedOut, 5_000, &world),
            Ok(Recorded::Retry { at_ms: 15_000 })
        );
        let id = send(&mut d, 15_000);
        assert_eq!(
            d.record(id, Attempt::Answered(204), 15_000, &world),
            Ok(Recorded::FirstDelivery {
                event_id: "evt_1".into()
            })
        );
        let json = serde_json::to_value(&d.all()[0]).unwrap();
        assert_eq!(json["state"], "delivered");
        assert_eq!(json["attempt"], 3);
        assert_eq!(json["last_status"], 204);
    }

    #[test]
    fn past_the_horizon_a_delivery_is_given_up() {
        let world = World {
            retry_horizon_ms: 10_000,
            ..World::default()
        };
        let mut d = one(&Faults::default());
        let id = send(&mut d, 0);
        assert!(matches!(
            d.record(id, Attempt::Unreachable, 0, &world),
            Ok(Recorded::Retry { .. })
        ));
        let id = send(&mut d, 5_000);
        assert_eq!(
            d.record(id, Attempt::Unreachable, 5_000, &world),
            Ok(Recorded::GaveUp)
        );
        assert_eq!(
            d.get(id).map(Delivery::status),
            Some(DeliveryStatus::Failed)
        );
        assert!(d.take_due(i64::MAX).is_empty());
        assert_eq!(d.all()[0].last_error.as_deref(), Some("connection error"));
    }

    #[test]
    fn transitions_out_of_order_are_refused() {
        let world = World::default();
        let mut d = one(&Faults::default());
        let id = DeliveryId(0);
        assert_eq!(
            d.record(id, Attempt::Answered(200), 0, &world),
            Err(DeliveryError::Unexpected {
                id: 1,
                actual: DeliveryStatus::Pending,
                expected: DeliveryStatus::Sending
            })
        );
        assert_eq!(
            d.start_sending(DeliveryId(7)),
            Err(DeliveryError::Unknown(7))
        );
        let id = send(&mut d, 0);
        assert!(d.start_sending(id).is_err(), "already sending");
    }

    #[test]
    fn canceled_deliveries_are_never_sent() {
        let world = World::default();
        let mut d = one(&Faults::default());
        d.queue("evt_2", "we_2", 1, &Faults::default(), &mut Seeded::new(1));
        let id = send(&mut d, 0);
        assert!(matches!(
            d.record(id, Attempt::Answered(500), 0, &world),
            Ok(Recorded::Retry { .. })
        ));
        d.cancel_for_endpoint("we_1");
        assert_eq!(d.all()[0].status(), DeliveryStatus::Canceled);
        assert_eq!(
            d.all()[1].status(),
            DeliveryStatus::Pending,
            "another endpoint's"
        );
        let due = d.take_due(i64::MAX);
        assert_eq!(due.len(), 1, "only we_2's delivery is still due");
        d.cancel(due[0]).unwrap();
        assert!(d.start_sending(due[0]).is_err());
        assert!(d.take_due(i64::MAX).is_empty());
    }

    #[test]
    fn dropped_deliveries_are_never_due_and_duplicates_count_once() {
        let dropped = one(&Faults {
            webhook_drop_rate: 1.0,
            ..Faults::default()
        });
        assert_eq!(dropped.all()[0].status(), DeliveryStatus::Dropped);
        let mut dropped = dropped;
        assert!(dropped.take_due(i64::MAX).is_empty());

        let world = World::default();
        let mut d = one(&Faults {
            webhook_duplicate_rate: 1.0,
            ..Faults::default()
        });
        let due = d.take_due(0);
        assert_eq!(due.len(), 2);
        let mut outcomes = Vec::new();
        for id in due {
            d.start_sending(id).unwrap();
            outcomes.push(d.record(id, Attempt::Answered(200), 0, &world).unwrap());
        }
        assert_eq!(
            outcomes,
            [
                Recorded::FirstDelivery {
                    event_id: "evt_1".into()
                },
                Recorded::Delivered
            ]
        );
    }
}
