//! The same black-box suites as `api.rs` (/v1 and the legacy /api/callbacks/), on the AWS
//! backend: `fluxcb serve --backend aws` (container mode) against DynamoDB and SQS emulated by
//! moto, through the real AWS SDK.
mod common;

const BACKEND: common::Backend = common::Backend::Aws;

include!("cases/api_cases.rs");
include!("cases/legacy_cases.rs");
include!("cases/isolation_cases.rs");
include!("cases/limits_cases.rs");
include!("cases/destination_cases.rs");
include!("cases/notification_cases.rs");
include!("cases/ordering_cases.rs");
