//! The same black-box /v1 API suite as `api.rs`, on the AWS backend: `fluxcb serve --backend
//! aws` (container mode) against DynamoDB and SQS emulated by moto, through the real AWS SDK.
mod common;

const BACKEND: common::Backend = common::Backend::Aws;

include!("cases/api_cases.rs");
