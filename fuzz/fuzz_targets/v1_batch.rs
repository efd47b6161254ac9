//! `POST /v1/callbacks/batch` bodies: all or nothing, never a panic, refusals are 4xx.
#![no_main]
use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;

const MAX_ITEMS: usize = 1_000;

fuzz_target!(|data: &[u8]| {
    let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
    match fluxcb_http::fuzzing::create_batch(data, now, MAX_ITEMS) {
        Ok(specs) => assert!((1..=MAX_ITEMS).contains(&specs.len())),
        Err(status) => assert!(status.is_client_error(), "refused with {status}"),
    }
});
