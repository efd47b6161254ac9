//! `POST /v1/callbacks` bodies: decoding and validation never panic, a refusal is always a
//! 4xx, and what is accepted holds within the documented limits.
#![no_main]
use chrono::{TimeZone, Utc};
use fluxcb_core::callback::{MAX_ATTEMPTS_LIMIT, MAX_HEADERS, MAX_TIMEOUT_MS, MAX_URL_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
    match fluxcb_http::fuzzing::create_callback(data, now) {
        Ok(spec) => {
            assert!(matches!(spec.url.scheme(), "http" | "https"));
            assert!(
                spec.url.as_str().len() <= MAX_URL_LEN,
                "the normalised URL is past the limit"
            );
            assert!(spec.url.username().is_empty() && spec.url.password().is_none());
            assert!(spec.headers.len() <= MAX_HEADERS);
            assert!(spec
                .max_attempts
                .is_none_or(|n| (1..=MAX_ATTEMPTS_LIMIT).contains(&n)));
            assert!(spec.timeout_ms.is_none_or(|t| t <= MAX_TIMEOUT_MS));
        }
        Err(status) => assert!(status.is_client_error(), "refused with {status}"),
    }
});
