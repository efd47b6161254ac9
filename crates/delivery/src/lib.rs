//! Sending callbacks and running deliveries.
//!
//! - [`connector`], [`sender`]: the HTTP client. The connector checks every address it dials
//!   against the SSRF policy, after DNS, so no spelling of a private address and no DNS answer
//!   can get a request through.
//! - [`destinations`]: per-destination concurrency and rate limits and circuit breakers.
//! - [`routes`]: what a callback is delivered with: its registered destination's settings,
//!   limits key, secrets and TLS client.
//! - [`dispatcher`]: claims due callbacks tenant by tenant and runs the engine's one-step
//!   delivery for each, under a global in-flight cap.
//! - [`wake`]: wakes the dispatcher for new work due before it would look anyway.
//! - [`ops_events`]: the breaker's events for the operational event stream, debounced.
//! - [`maintenance`]: lease recovery and retention.
//! - [`secrets`]: a short-lived cache of each tenant's signing secrets.
//! - [`send_now`]: the legacy API's synchronous one-attempt `send`.

pub mod connector;
pub mod destinations;
pub mod dispatcher;
pub mod maintenance;
pub mod ops_events;
pub mod routes;
pub mod secrets;
pub mod send_now;
pub mod sender;
pub mod wake;
