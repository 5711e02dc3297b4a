//! The reconciler's stream-processing core: decoding Debezium's change events, the keyed
//! state of pending payments with its poll timers, the poll schedule, and the Avro
//! encoding of `payment-status-update`. The consumer
//! loop, the Stripe poller and the status output are built on these (issue 6).

pub mod envelope;
pub mod output;
pub mod schedule;
pub mod state;
