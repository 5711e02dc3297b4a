//! Time-to-resolution histograms. Buckets keep two significant digits, the rule of the
//! migration's `analytics_ms_bucket`, so hours add up and percentiles stay within a bucket.

use serde::Serialize;

/// The bucket of `ms`: its lower bound. The Rust twin of SQL's `analytics_ms_bucket`.
pub fn bucket_lo(ms: i64) -> i64 {
    if ms < 100 {
        return ms.max(0);
    }
    ms - ms % bucket_width(ms)
}

/// How many milliseconds the bucket holding `ms` spans: 1 below 100 ms, then a tenth of
/// the value's decade (100..=999 -> 10, 1000..=9999 -> 100, ...).
pub fn bucket_width(ms: i64) -> i64 {
    if ms < 100 {
        return 1;
    }
    10_i64.pow(ms.ilog10() - 1)
}

/// Nearest-rank percentiles. Each is the largest value of its bucket, so it is never below
/// the exact percentile and above it by less than the bucket's width (at most 10%).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Percentiles {
    /// Final payments counted.
    pub resolved: i64,
    pub p50_ms: i64,
    pub p95_ms: i64,
    pub p99_ms: i64,
    pub max_ms: i64,
}

/// From `(bucket lower bound, count)` pairs in any order; `None` when nothing resolved.
pub fn percentiles(buckets: &[(i64, i64)]) -> Option<Percentiles> {
    let mut sorted: Vec<(i64, i64)> = buckets.iter().copied().filter(|&(_, n)| n > 0).collect();
    sorted.sort_unstable();
    let total: i64 = sorted.iter().map(|&(_, n)| n).sum();
    if total == 0 {
        return None;
    }
    let at = |pct: i64| {
        let rank = ((total * pct + 99) / 100).max(1);
        let mut seen = 0;
        for &(lo, n) in &sorted {
            seen += n;
            if seen >= rank {
                return lo + bucket_width(lo) - 1;
            }
        }
        unreachable!("rank {rank} is at most the total {total}")
    };
    Some(Percentiles {
        resolved: total,
        p50_ms: at(50),
        p95_ms: at(95),
        p99_ms: at(99),
        max_ms: at(100),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_keep_two_significant_digits() {
        for (ms, lo, width) in [
            (-5, 0, 1),
            (0, 0, 1),
            (99, 99, 1),
            (100, 100, 10),
            (109, 100, 10),
            (999, 990, 10),
            (1000, 1000, 100),
            (1234, 1200, 100),
            (98_765, 98_000, 1000),
            (86_400_000, 86_000_000, 1_000_000),
        ] {
            assert_eq!((bucket_lo(ms), bucket_width(ms)), (lo, width), "{ms}");
        }
    }

    #[test]
    fn percentiles_take_the_top_of_the_ranked_bucket() {
        assert_eq!(percentiles(&[]), None);
        assert_eq!(percentiles(&[(5, 0)]), None);
        // 100 values: 90 at 7 ms, 9 in the 1200 bucket, 1 in the 50_000 bucket.
        let p = percentiles(&[(50_000, 1), (7, 90), (1200, 9)]).unwrap();
        assert_eq!(
            p,
            Percentiles {
                resolved: 100,
                p50_ms: 7,
                p95_ms: 1299,
                p99_ms: 1299,
                max_ms: 50_999
            }
        );
        let one = percentiles(&[(42, 1)]).unwrap();
        assert_eq!((one.p50_ms, one.p99_ms, one.max_ms), (42, 42, 42));
    }

    proptest! {
        #[test]
        fn a_value_lies_in_its_bucket_within_ten_percent(ms in 0i64..1_000_000_000_000) {
            let lo = bucket_lo(ms);
            let width = bucket_width(ms);
            prop_assert!(lo <= ms && ms < lo + width);
            prop_assert_eq!(bucket_lo(lo), lo);
            prop_assert_eq!(bucket_width(lo), width);
            prop_assert!(width == 1 || width * 10 <= lo);
        }

        #[test]
        fn percentiles_bound_the_exact_nearest_rank(mut values in prop::collection::vec(0i64..10_000_000, 1..300)) {
            values.sort_unstable();
            let mut counts = std::collections::BTreeMap::new();
            for &v in &values {
                *counts.entry(bucket_lo(v)).or_insert(0i64) += 1;
            }
            let pairs: Vec<(i64, i64)> = counts.into_iter().collect();
            let p = percentiles(&pairs).unwrap();
            let n = values.len();
            for (pct, got) in [(50, p.p50_ms), (95, p.p95_ms), (99, p.p99_ms), (100, p.max_ms)] {
                let exact = values[(n * pct).div_ceil(100).max(1) - 1];
                prop_assert!(got >= exact && got < bucket_lo(exact) + bucket_width(exact), "p{pct}: {got} vs {exact}");
            }
            prop_assert_eq!(p.resolved, n as i64);
        }
    }
}
