//! Black-box tests of the /v1 API on the embedded store: the real server on port 0 with a
//! temporary store, and a real receiver on loopback. The cases (the /v1 API and the legacy
//! `/api/callbacks/` API) are shared with `api_aws.rs`.
mod common;

const BACKEND: common::Backend = common::Backend::Sqlite;

include!("cases/api_cases.rs");
include!("cases/legacy_cases.rs");
include!("cases/isolation_cases.rs");
include!("cases/limits_cases.rs");
include!("cases/destination_cases.rs");
include!("cases/notification_cases.rs");
include!("cases/ordering_cases.rs");
