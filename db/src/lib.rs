//! The only crate that speaks SQL. Writes go to the `Primary`; reads that may lag go to
//! a `Replica` through `replica`. Every status change goes through
//! `payments::apply_status`, which asks the core's transition table what to do.

pub mod analytics;
pub mod events;
pub mod health;
pub mod idempotency;
pub mod keys;
pub mod payments;
mod pool;
pub mod refunds;
pub mod replica;
pub mod runs;
pub mod tls;

pub use pool::{MIGRATOR, Primary, Replica, WalPosition};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sql(sqlx::Error),
    /// tokio-postgres shows only "db error" or "error performing TLS handshake" and keeps
    /// the reason (a refusal, a certificate that failed) in its source: the message
    /// carries the whole chain, so no field is a source to print twice.
    #[error("replica: {}", chain(.0))]
    Replica(tokio_postgres::Error),
    #[error("replica: {}", chain(.0))]
    ReplicaPool(deadpool_postgres::PoolError),
    #[error("the replica did not replay up to the primary's {lsn} within {waited:?}")]
    ReplicaBehind {
        lsn: String,
        waited: std::time::Duration,
    },
    /// Settings that can never work (a malformed URL): fail at start, not per request.
    #[error("database settings are invalid: {0}")]
    Config(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The request contradicts what is stored (e.g. a key for a client of another role).
    #[error("{0}")]
    Refused(String),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> DbError {
        pool::retire_if_stale(&e);
        DbError::Sql(e)
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> DbError {
        DbError::Replica(e)
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> DbError {
        DbError::ReplicaPool(e)
    }
}

/// `e` and its sources, each said once (some wrappers repeat their source's text).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let said = cause.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct E {
        text: &'static str,
        #[source]
        source: Option<Box<E>>,
    }

    #[test]
    fn a_chain_says_each_cause_once() {
        let inner = E {
            text: "no pg_hba.conf entry",
            source: None,
        };
        let middle = E {
            text: "db error",
            source: Some(Box::new(inner)),
        };
        let outer = E {
            text: "creating a new object: db error",
            source: Some(Box::new(middle)),
        };
        assert_eq!(
            chain(&outer),
            "creating a new object: db error: no pg_hba.conf entry"
        );
    }
}
