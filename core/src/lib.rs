//! The domain of Paystream, shared by every deployable. Adapters (HTTP, Kafka, Stripe,
//! SQL) depend on this crate; this crate depends on none of them.

pub mod gateway;
pub mod ids;
pub mod money;
pub mod ratelimit;
pub mod status;

pub use gateway::{GatewayError, IntentPage, IntentView, NewIntent, StripeGateway};
pub use ids::{ClientId, PaymentId};
pub use money::{Currency, Money, MoneyError};
pub use ratelimit::TokenBucket;
pub use status::{PaymentStatus, StatusError, Transition};
