//! Signature headers as a receiver would check them: no header verifies unless it carries the
//! exact signature (Standard Webhooks `v1,<base64>` entries; legacy `sha256=<hex>`), and
//! secret parsing never panics.
#![no_main]
use fluxcb_core::legacy;
use fluxcb_core::signing::{verify, SigningSecret};
use libfuzzer_sys::fuzz_target;

const TIMESTAMP: i64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = SigningSecret::parse(text);
    // The header, a newline, the body.
    let (header, body) = text.split_once('\n').unwrap_or((text, ""));
    let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let expected = secret.sign("msg_1", TIMESTAMP, body.as_bytes());
    if verify(
        &secret,
        "msg_1",
        TIMESTAMP,
        body.as_bytes(),
        header,
        TIMESTAMP,
        300,
    ) {
        assert!(header.split_whitespace().any(|entry| entry == expected));
    }
    let legacy_expected = legacy::signature(b"legacy-secret", TIMESTAMP, body.as_bytes());
    if legacy::verify(b"legacy-secret", TIMESTAMP, body.as_bytes(), header) {
        assert_eq!(header.to_ascii_lowercase(), legacy_expected);
    }
});
