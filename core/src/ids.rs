//! Typed ids. A payment id and a client id are both UUIDs; as types they cannot be
//! swapped (`payments::get(db, client, id)` with the two reversed does not compile). A
//! bare UUID becomes one only by name (`PaymentId::from_uuid`), never by `.into()`, which
//! would pick whichever the signature wants.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered id (UUID v7: inserts append to the primary key's index).
            pub fn generate() -> Self {
                $name(Uuid::now_v7())
            }

            pub const fn from_uuid(id: Uuid) -> Self {
                $name(id)
            }

            pub const fn as_uuid(self) -> Uuid {
                self.0
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map($name)
            }
        }
    };
}

typed_id!(
    /// A payment, ours (never Stripe's PaymentIntent id).
    PaymentId
);
typed_id!(
    /// An API client: the owner of payments and keys.
    ClientId
);
typed_id!(
    /// A refund, ours (never Stripe's refund id).
    RefundId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_and_print_as_their_uuid() {
        let id = PaymentId::generate();
        assert_eq!(id.to_string(), id.as_uuid().to_string());
        assert_eq!(id.to_string().parse::<PaymentId>().unwrap(), id);
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{id}\""));
        assert!("not-a-uuid".parse::<ClientId>().is_err());
    }
}
