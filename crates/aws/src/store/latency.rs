//! Attempt durations as counts in fixed buckets, so that DynamoDB counters (`ADD`) can hold a
//! distribution and percentiles can be read back from summed counts.
//!
//! Precision: durations under 32 ms have a bucket each (exact); above, each power of two is
//! split into 16 equal buckets, so a bucket spans at most 1/16 of its lower bound. A
//! percentile is reported as the lower bound of the bucket holding the nearest-rank value: never
//! above the true value, and at most 6.25 % below it. The maximum is kept exactly apart from the
//! buckets.
use fluxcb_core::ports::LatencyPercentiles;

/// Sub-buckets per power of two.
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Below this every millisecond is its own bucket.
const EXACT_BELOW: u64 = 2 * SUB;

/// The bucket a duration falls in.
pub(crate) fn bucket_of(ms: u64) -> u32 {
    if ms < EXACT_BELOW {
        return ms as u32;
    }
    let power = 63 - ms.leading_zeros(); // >= 5
    let sub = (ms >> (power - SUB_BITS)) & (SUB - 1);
    EXACT_BELOW as u32 + (power - (SUB_BITS + 1)) * SUB as u32 + sub as u32
}

/// The smallest duration in a bucket.
pub(crate) fn lower_bound(bucket: u32) -> u64 {
    let b = u64::from(bucket);
    if b < EXACT_BELOW {
        return b;
    }
    let power = (b - EXACT_BELOW) / SUB + u64::from(SUB_BITS) + 1;
    let sub = (b - EXACT_BELOW) % SUB;
    (SUB + sub) << (power - u64::from(SUB_BITS))
}

/// Nearest-rank percentiles from bucket counts (any order), with the exact maximum.
pub(crate) fn percentiles(counts: &[(u32, u64)], max_ms: u64) -> Option<LatencyPercentiles> {
    let mut sorted: Vec<(u32, u64)> = counts.iter().copied().filter(|(_, c)| *c > 0).collect();
    sorted.sort_unstable();
    let total: u64 = sorted.iter().map(|(_, c)| c).sum();
    if total == 0 {
        return None;
    }
    let at = |p: u64| {
        let rank = (total * p).div_ceil(100).max(1);
        let mut seen = 0;
        for (bucket, count) in &sorted {
            seen += count;
            if seen >= rank {
                return lower_bound(*bucket).min(max_ms);
            }
        }
        max_ms
    };
    Some(LatencyPercentiles {
        p50_ms: at(50),
        p90_ms: at(90),
        p99_ms: at(99),
        max_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_exact_below_32_ms_and_within_a_sixteenth_above() {
        for ms in 0..32 {
            assert_eq!(lower_bound(bucket_of(ms)), ms);
        }
        let mut previous = 0;
        for ms in (32..2_000_000).chain([u64::MAX / 3, u64::MAX]) {
            let b = bucket_of(ms);
            let low = lower_bound(b);
            assert!(low <= ms, "{ms} in a bucket from {low}");
            assert!((ms - low) * 16 < low, "{ms}: bucket from {low} is too wide");
            assert!(b >= previous, "buckets grow with the duration");
            previous = b;
        }
        assert_eq!(bucket_of(32), 32);
        assert_eq!(lower_bound(bucket_of(50)), 50);
        assert_eq!(lower_bound(bucket_of(1234)), 1216);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let durations = [10u64, 20, 30, 50, 200];
        let mut counts: Vec<(u32, u64)> = Vec::new();
        for d in durations {
            counts.push((bucket_of(d), 1));
        }
        let p = percentiles(&counts, 200).unwrap();
        assert_eq!(
            (p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms),
            (30, 200, 200, 200)
        );
        assert_eq!(percentiles(&[], 0), None);
        // 1,000 durations 1..=1000 ms: true p50 500, p90 900, p99 990.
        let mut counts = std::collections::BTreeMap::new();
        for d in 1..=1000u64 {
            *counts.entry(bucket_of(d)).or_insert(0u64) += 1;
        }
        let counts: Vec<(u32, u64)> = counts.into_iter().collect();
        let p = percentiles(&counts, 1000).unwrap();
        for (got, truth) in [(p.p50_ms, 500), (p.p90_ms, 900), (p.p99_ms, 990)] {
            assert!(
                got <= truth && (truth - got) * 16 <= truth,
                "{got} for {truth}"
            );
        }
    }
}
