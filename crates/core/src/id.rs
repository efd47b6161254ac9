//! Prefixed, time-sortable identifiers.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

const CALLBACK_PREFIX: &str = "cb_";

/// `cb_<ULID>`: sortable by creation time, which list pagination relies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CallbackId(Ulid);

/// One generator per process: ULIDs made in the same millisecond are otherwise random in their
/// low bits, and "newest first" listings would shuffle callbacks accepted within a millisecond.
/// A monotonic generator increments instead, so ids sort in the order they were made.
static GENERATOR: std::sync::LazyLock<std::sync::Mutex<ulid::Generator>> =
    std::sync::LazyLock::new(|| std::sync::Mutex::new(ulid::Generator::new()));

impl CallbackId {
    pub fn generate() -> Self {
        let next = GENERATOR
            .lock()
            .map(|mut g| g.generate())
            .unwrap_or_else(|poisoned| poisoned.into_inner().generate());
        // Overflow needs 2^80 ids within one millisecond; a random one is still unique.
        Self(next.unwrap_or_else(|_| Ulid::new()))
    }

    /// The id of a row imported from the legacy table: its creation time and its legacy id,
    /// so that importing the same row twice names the same callback.
    pub fn for_legacy_row(created_at: chrono::DateTime<chrono::Utc>, legacy_id: i64) -> Self {
        // A fixed marker in the high random bits keeps these apart from generated ids.
        const MARKER: u128 = 0x1e6a << 64;
        let ms = created_at.timestamp_millis().max(0) as u64;
        Self(Ulid::from_parts(ms, MARKER | u128::from(legacy_id as u64)))
    }

    /// The id of a row the engine makes about another callback (a notification): its source's
    /// creation time, a marker, and 64 bits of SHA-256 over (source, channel, event, attempt),
    /// so that rerunning the same transition names the same row and the same `webhook-id`.
    pub fn for_event(source: &CallbackId, channel: &str, event: &str, attempt: u32) -> Self {
        use sha2::{Digest, Sha256};
        const MARKER: u128 = 0x4e07 << 64;
        let mut hasher = Sha256::new();
        for part in [
            source.to_string().as_bytes(),
            channel.as_bytes(),
            event.as_bytes(),
            &attempt.to_be_bytes(),
        ] {
            hasher.update((part.len() as u32).to_be_bytes());
            hasher.update(part);
        }
        let digest = hasher.finalize();
        let bits = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        Self(Ulid::from_parts(
            source.0.timestamp_ms(),
            MARKER | u128::from(bits),
        ))
    }

    pub fn from_ulid(ulid: Ulid) -> Self {
        Self(ulid)
    }

    pub fn ulid(&self) -> Ulid {
        self.0
    }
}

impl fmt::Display for CallbackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{CALLBACK_PREFIX}{}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a callback id (expected cb_ followed by a 26-character ULID)")]
pub struct InvalidId(pub String);

impl FromStr for CallbackId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix(CALLBACK_PREFIX)
            .and_then(|rest| Ulid::from_string(rest).ok())
            .map(Self)
            .ok_or_else(|| InvalidId(s.chars().take(64).collect()))
    }
}

impl TryFrom<String> for CallbackId {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<CallbackId> for String {
    fn from(id: CallbackId) -> Self {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        let id = CallbackId::generate();
        let text = id.to_string();
        assert!(text.starts_with("cb_") && text.len() == 29, "{text}");
        assert_eq!(text.parse::<CallbackId>().unwrap(), id);
    }

    #[test]
    fn ids_sort_in_the_order_they_were_made() {
        let ids: Vec<CallbackId> = (0..10_000).map(|_| CallbackId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn rejects_other_prefixes_and_garbage() {
        assert!("msg_01ARZ3NDEKTSV4RRFFQ69G5FAV"
            .parse::<CallbackId>()
            .is_err());
        assert!("cb_nope".parse::<CallbackId>().is_err());
        assert!("01ARZ3NDEKTSV4RRFFQ69G5FAV".parse::<CallbackId>().is_err());
    }
}
