//! The callback domain, shared by every deployment of fluxcb.
//!
//! # Layout
//! - [`id`], [`tenant`]: typed identifiers (`cb_<ULID>`, tenant names).
//! - [`callback`]: what a caller asks for (validated [`callback::CallbackSpec`]) and what is stored
//!   ([`callback::Callback`]).
//! - [`status`]: the delivery state machine; a [`status::Transition`] can only name legal moves.
//! - [`attempt`]: one delivery attempt and its outcome as data with stable error codes.
//! - [`retry`]: the retry policy (schedule, jitter, `Retry-After`, 410).
//! - [`signing`]: Standard Webhooks signatures and `whsec_` secrets.
//! - [`destination`], [`directory`]: registered destinations, their settings and how they
//!   resolve; each node's briefly cached copy of them.
//! - [`target`]: which IP addresses a delivery may dial (the SSRF policy).
//! - [`ports`]: the traits adapters implement (stores, sender, clock).
//! - [`engine`]: the one-step delivery that the local dispatcher and the Lambda consumer share.
//! - [`message`]: versioned queue messages for queue-backed deployments.
//! - [`notify`]: failure notifications and the operational event stream, as rows the engine
//!   writes in the transaction that ends their source.
//! - [`ordering`]: ordered delivery per key and what a dead letter does to its key.
//! - [`metric_names`]: the metrics vocabulary shared by every deployment.
//! - [`legacy`], [`migration`]: the legacy services' wire format, API rules and table rows, and
//!   the shadow/split switch used while callers move over.
//!
//! Nothing here performs I/O or needs a runtime: adapters live in their own crates.

pub mod attempt;
pub mod auth;
pub mod callback;
pub mod destination;
pub mod directory;
pub mod engine;
pub mod event;
pub mod id;
pub mod legacy;
pub mod message;
pub mod metric_names;
pub mod migration;
pub mod notify;
pub mod ordering;
pub mod ports;
pub mod retry;
pub mod signing;
pub mod status;
pub mod target;
pub mod tenant;
