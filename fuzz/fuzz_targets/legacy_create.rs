//! `POST /api/callbacks/` (the legacy caller API): DRF's body parsing for each content type,
//! then its field rules. The first byte picks the content type. An accepted body keeps DRF's
//! limits, renders as the legacy sender's ASCII JSON, and that JSON reads back as the same value.
#![no_main]
use fluxcb_core::legacy;
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [&str; 6] = [
    "application/json",
    "application/x-www-form-urlencoded",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "",
    "text/plain",
];

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(first) % CONTENT_TYPES.len()];
    match fluxcb_http::fuzzing::legacy_create(content_type, body) {
        Ok(create) => {
            assert!((1..=20).contains(&create.max_attempts));
            let _ = create.spec();
            if let Some(value) = &create.payload {
                let rendered = legacy::render_body(value);
                assert!(rendered.is_ascii());
                let back: serde_json::Value = serde_json::from_slice(&rendered).unwrap();
                assert_eq!(back.is_object(), value.is_object());
            }
        }
        Err(status) => assert!(status.is_client_error(), "refused with {status}"),
    }
    if let Ok(text) = std::str::from_utf8(body) {
        if let Ok(stored) = legacy::django_url::validate(text) {
            assert_eq!(stored.trim(), stored);
        }
    }
});
