//! Refunds through the same pipeline as payments: the refunds table's CDC topic in,
//! pending refunds as state, polls on their own schedule under the instance's shared
//! Stripe budget, `refund-status-update` out (Avro, `schemas/refund_status_update.avsc`).
//!
//! - `envelope`: Debezium's refund change events;
//! - `state`: pending refunds and their poll timers (pure);
//! - `poll`: one poll of one refund (send it if the API never did);
//! - `output`: the Avro messages;
//! - `worker`: the loop around them.

pub mod envelope;
pub mod output;
pub mod poll;
pub mod state;
pub mod worker;
