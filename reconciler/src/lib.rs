//! The reconciler: a stream worker over the Debezium change stream of `payments`.
//!
//! - `source`: the Kafka consumer group (rebalances, offsets stored after the work);
//! - `envelope`: Debezium's change events, decoded (`json`: the reader of the fields kept;
//!   `timestamp`: their timestamps);
//! - `state`: pending payments per partition, with a timer queue of next polls;
//! - `recovery`: state of newly assigned partitions, rebuilt from a replica;
//! - `schedule` and `poll`: when and how a pending payment is polled at Stripe, expired;
//! - `backoff`: how polling slows down on Stripe's 429s and recovers;
//! - `output`: `payment-status-update` in Avro (`fingerprint`: the spec's schema fingerprint;
//!   `registry`: the schemas registered with a schema registry, when one is configured);
//! - `worker`: the loop that ties them together.

pub mod backoff;
pub mod config;
pub mod envelope;
pub mod fingerprint;
mod json;
pub mod output;
pub mod partition;
pub mod poll;
pub mod recovery;
pub mod refunds;
pub mod registry;
pub mod schedule;
pub mod source;
pub mod state;
pub mod sweep;
mod timestamp;
pub mod worker;
