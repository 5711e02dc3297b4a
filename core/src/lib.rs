//! The domain of Paystream, shared by every deployable. Adapters (HTTP, Kafka, Stripe,
//! SQL) depend on this crate; this crate depends on none of them.

pub mod gateway;
pub mod ids;
pub mod money;
pub mod ratelimit;
pub mod refund;
pub mod status;

pub use gateway::{
    GatewayError, IntentEvent, IntentEventPage, IntentPage, IntentView, NewIntent, NewRefund,
    RefundPage, RefundView, ReportAvailability, ReportRun, StripeGateway, StripeReporting,
};
pub use ids::{ClientId, PaymentId, RefundId};
pub use money::{Currency, Money, MoneyError};
pub use ratelimit::TokenBucket;
pub use refund::{CaptureMethod, RefundReason, RefundStatus};
pub use status::{PaymentStatus, StatusError, Transition};
