//! The destinations' circuit breakers as the workers last saw them, for operators: each worker
//! keeps its own breaker (deciding stays local and free), and writes here only when one of its
//! breakers opens, reopens after a failed probe, or closes. The API on any instance (Lambda's
//! included) reads them back. One partition (`breakers`), an item per destination under the
//! SHA-256 of its key, kept a day after its last change.
use chrono::{DateTime, Utc};
use fluxcb_core::ports::StoreError;

use super::items::{get_n, get_s, ms, n, s};
use super::{store_error, DynamoStore, Item};

const BREAKERS_PK: &str = "breakers";
const KEEP_SECONDS: i64 = 86_400;

/// One destination's breaker as a worker last recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerRecord {
    /// The destination's limits key (`<tenant> <origin or prefix>`, or an origin).
    pub destination: String,
    pub consecutive_failures: u32,
    pub circuit_open: bool,
}

impl DynamoStore {
    /// Records that the breaker of `destination` is open until `open_until` (`None`: closed).
    pub async fn record_breaker(
        &self,
        destination: &str,
        open_until: Option<DateTime<Utc>>,
        consecutive_failures: u32,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut item = Item::new();
        item.insert("pk".into(), s(BREAKERS_PK));
        item.insert("sk".into(), s(fluxcb_core::auth::hash_key(destination)));
        item.insert("destination".into(), s(destination));
        item.insert("open_until_ms".into(), n(open_until.map_or(0, ms)));
        item.insert("consecutive_failures".into(), n(consecutive_failures));
        item.insert("updated_ms".into(), n(ms(now)));
        item.insert("expires_at".into(), n(now.timestamp() + KEEP_SECONDS));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| store_error("recording a circuit breaker", e))
    }

    /// The breakers recorded open or failing, as of `now`.
    pub async fn breakers(&self, now: DateTime<Utc>) -> Result<Vec<BreakerRecord>, StoreError> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(BREAKERS_PK))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| store_error("reading the circuit breakers", e))?;
            for item in page.items() {
                let updated = get_n(item, "updated_ms").unwrap_or(0);
                if updated + KEEP_SECONDS * 1000 < ms(now) {
                    continue;
                }
                let record = BreakerRecord {
                    destination: get_s(item, "destination").unwrap_or_default().to_owned(),
                    consecutive_failures: get_n(item, "consecutive_failures")
                        .and_then(|f| u32::try_from(f).ok())
                        .unwrap_or(0),
                    circuit_open: get_n(item, "open_until_ms").unwrap_or(0) > ms(now),
                };
                if record.circuit_open || record.consecutive_failures > 0 {
                    out.push(record);
                }
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        out.sort_by(|a, b| a.destination.cmp(&b.destination));
        Ok(out)
    }
}
