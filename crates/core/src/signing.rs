//! Standard Webhooks signatures (<https://www.standardwebhooks.com>) and `whsec_` secrets.
//!
//! Receivers verify with any Standard Webhooks (or Svix) library, so the wire format
//! here must match the spec byte for byte: `webhook-signature` is a space-separated
//! list of `v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>`.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "whsec_";
const GENERATED_LEN: usize = 32;
/// Below 24 bytes brute force becomes thinkable; above 64 HMAC-SHA256 would hash the
/// key down anyway, so a longer key only suggests a pasted wrong value.
const MIN_LEN: usize = 24;
const MAX_LEN: usize = 64;

/// A symmetric signing key. Its bytes never appear in `Debug` output; [`Self::expose`]
/// is the only way to get the text back, which makes leaks easy to grep for.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Vec<u8>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("signing secret must start with \"whsec_\"")]
    MissingPrefix,
    // The decoder's error is not included: it quotes the offending character, which
    // would put part of the secret in logs.
    #[error(
        "signing secret is not valid base64 (standard alphabet, with padding) after \"whsec_\""
    )]
    InvalidBase64,
    #[error("signing secret decodes to {len} bytes; expected {MIN_LEN} to {MAX_LEN}")]
    InvalidLength { len: usize },
}

impl SigningSecret {
    /// 32 bytes from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut key = vec![0u8; GENERATED_LEN];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self(key)
    }

    /// Parses `whsec_<base64>`. Surrounding whitespace is not trimmed: a secret read
    /// from a file with a trailing newline should fail loudly here rather than be
    /// silently accepted in one place and rejected in another.
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let encoded = s.strip_prefix(PREFIX).ok_or(SecretError::MissingPrefix)?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::InvalidBase64)?;
        if !(MIN_LEN..=MAX_LEN).contains(&key.len()) {
            return Err(SecretError::InvalidLength { len: key.len() });
        }
        Ok(Self(key))
    }

    /// The secret in its `whsec_<base64>` text form, e.g. to show once to the tenant
    /// or to store.
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}", STANDARD.encode(&self.0))
    }

    /// One signature, `v1,<base64>`.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(msg_id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(whsec_***)")
    }
}

/// Header value for one or more active secrets (rotation: old and new both sign), space-separated.
///
/// During rotation each secret signs, so receivers still holding the old secret and
/// those already on the new one both find a match. An empty slice yields an empty
/// string; callers decide whether unsigned delivery is acceptable.
pub fn signature_header(
    secrets: &[SigningSecret],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|secret| secret.sign(msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Verify like a receiver would: any v1 signature in the header matching, compared in
/// constant time, and `|now - timestamp| <= tolerance_secs`.
///
/// Unknown versions and malformed entries are skipped rather than failing the whole
/// header, as the spec leaves room for future schemes alongside `v1`.
pub fn verify(
    secret: &SigningSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
    now: i64,
    tolerance_secs: i64,
) -> bool {
    let Ok(tolerance) = u64::try_from(tolerance_secs) else {
        return false;
    };
    if now.abs_diff(timestamp) > tolerance {
        return false;
    }
    let expected = secret.mac(msg_id, timestamp, body);
    header
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .any(|tag| expected.clone().verify_slice(&tag).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The spec's published vector, from the reference libraries' test suites:
    // standard-webhooks/standard-webhooks, libraries/javascript/src/webhook.test.ts,
    // test "sign function works".
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn reproduces_the_spec_test_vector() {
        let secret = SigningSecret::parse(SPEC_SECRET).unwrap();
        assert_eq!(secret.0.len(), 24, "spec secret sits at our minimum length");
        assert_eq!(secret.sign(SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIG);
        assert_eq!(
            signature_header(std::slice::from_ref(&secret), SPEC_ID, SPEC_TS, SPEC_BODY),
            SPEC_SIG
        );
        assert!(verify(
            &secret, SPEC_ID, SPEC_TS, SPEC_BODY, SPEC_SIG, SPEC_TS, 300
        ));
        assert_eq!(secret.expose(), SPEC_SECRET);
    }

    #[test]
    fn generated_secrets_round_trip() {
        let a = SigningSecret::generate();
        let b = SigningSecret::generate();
        assert_ne!(a, b);
        assert_eq!(a.0.len(), 32);
        let text = a.expose();
        assert!(text.starts_with("whsec_"));
        assert_eq!(SigningSecret::parse(&text), Ok(a));
    }

    #[test]
    fn rotation_header_carries_both_signatures() {
        let old = SigningSecret::generate();
        let new = SigningSecret::generate();
        let body = b"{\"event\":\"x\"}";
        let header = signature_header(&[old.clone(), new.clone()], "msg_1", 1_700_000_000, body);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            parts,
            [
                old.sign("msg_1", 1_700_000_000, body),
                new.sign("msg_1", 1_700_000_000, body)
            ]
        );
        for secret in [&old, &new] {
            assert!(verify(
                secret,
                "msg_1",
                1_700_000_000,
                body,
                &header,
                1_700_000_010,
                300
            ));
        }
        let stranger = SigningSecret::generate();
        assert!(!verify(
            &stranger,
            "msg_1",
            1_700_000_000,
            body,
            &header,
            1_700_000_000,
            300
        ));
        assert_eq!(signature_header(&[], "msg_1", 1_700_000_000, body), "");
    }

    #[test]
    fn tampering_fails_verification() {
        let secret = SigningSecret::parse(SPEC_SECRET).unwrap();
        let check =
            |id: &str, ts: i64, body: &[u8]| verify(&secret, id, ts, body, SPEC_SIG, SPEC_TS, 300);
        assert!(check(SPEC_ID, SPEC_TS, SPEC_BODY));
        assert!(!check(SPEC_ID, SPEC_TS, br#"{"test": 2432232315}"#));
        assert!(!check(SPEC_ID, SPEC_TS, br#"{"test":2432232314}"#));
        assert!(!check("msg_p5jXN8AQM9LWM0D4loKWxJel", SPEC_TS, SPEC_BODY));
        assert!(!check(SPEC_ID, SPEC_TS + 1, SPEC_BODY));
    }

    #[test]
    fn stale_or_future_timestamps_fail() {
        let secret = SigningSecret::parse(SPEC_SECRET).unwrap();
        let at = |now: i64, tolerance: i64| {
            verify(
                &secret, SPEC_ID, SPEC_TS, SPEC_BODY, SPEC_SIG, now, tolerance,
            )
        };
        assert!(at(SPEC_TS + 300, 300));
        assert!(at(SPEC_TS - 300, 300));
        assert!(!at(SPEC_TS + 301, 300));
        assert!(!at(SPEC_TS - 301, 300));
        assert!(!at(SPEC_TS, -1));
        assert!(!verify(
            &secret,
            SPEC_ID,
            i64::MIN,
            SPEC_BODY,
            SPEC_SIG,
            i64::MAX,
            i64::MAX
        ));
    }

    #[test]
    fn malformed_and_foreign_entries_are_skipped() {
        let secret = SigningSecret::parse(SPEC_SECRET).unwrap();
        let truncated = &SPEC_SIG[..SPEC_SIG.len() - 4];
        let header = format!(
            "v2,{sig} v1,not*base64 v1, {truncated} v1a,{sig}   {SPEC_SIG}",
            sig = &SPEC_SIG[3..]
        );
        assert!(verify(
            &secret, SPEC_ID, SPEC_TS, SPEC_BODY, &header, SPEC_TS, 300
        ));
        for bad in [
            "",
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            truncated,
            "v1,",
        ] {
            assert!(
                !verify(&secret, SPEC_ID, SPEC_TS, SPEC_BODY, bad, SPEC_TS, 300),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parse_errors_are_specific() {
        assert_eq!(
            SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SecretError::MissingPrefix)
        );
        assert_eq!(
            SigningSecret::parse("WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SecretError::MissingPrefix)
        );
        assert_eq!(
            SigningSecret::parse("whsec_not base64!"),
            Err(SecretError::InvalidBase64)
        );
        assert_eq!(
            SigningSecret::parse(&format!("{SPEC_SECRET}\n")),
            Err(SecretError::InvalidBase64)
        );
        assert_eq!(
            SigningSecret::parse("whsec_"),
            Err(SecretError::InvalidLength { len: 0 })
        );
        let short = format!("whsec_{}", STANDARD.encode([7u8; 23]));
        assert_eq!(
            SigningSecret::parse(&short),
            Err(SecretError::InvalidLength { len: 23 })
        );
        let long = format!("whsec_{}", STANDARD.encode([7u8; 65]));
        assert_eq!(
            SigningSecret::parse(&long),
            Err(SecretError::InvalidLength { len: 65 })
        );
        let max = format!("whsec_{}", STANDARD.encode([7u8; 64]));
        assert!(SigningSecret::parse(&max).is_ok());
        let err = SigningSecret::parse("whsec_abc$").unwrap_err().to_string();
        assert!(!err.contains("abc"), "{err}");
    }

    #[test]
    fn debug_does_not_leak_the_key() {
        let secret = SigningSecret::parse(SPEC_SECRET).unwrap();
        let shown = format!("{secret:?} {:#?}", secret);
        assert!(!shown.contains("MfKQ9r8"), "{shown}");
        assert_eq!(format!("{secret:?}"), "SigningSecret(whsec_***)");
        let nested = format!("{:?}", Some(vec![secret]));
        assert!(!nested.contains("MfKQ9r8"), "{nested}");
    }
}
