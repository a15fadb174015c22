//! Latency histograms with base-2 logarithmic buckets: values 0–7 exactly, then four buckets
//! per power of two (each within 25% of its values), 252 buckets for all of `u64`.
//!
//! The API is the part of crates.io's `base2histogram` 0.2 that the raft log's write-ahead
//! log uses ([`Histogram::record`], [`Histogram::percentile_stats`]), without its lookup
//! tables: a bucket index is a few bit operations.

/// Buckets: 0–3, then 62 groups (one per power of two from 4 up) of four.
const BUCKETS: usize = 4 + 62 * 4;

/// Counts of recorded values per bucket.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    samples: u64,
}

/// Percentiles of a [`Histogram`], each the smallest value of the bucket holding it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PercentileStats {
    /// Number of values recorded.
    pub samples: u64,
    /// 0.1th percentile.
    pub p0_1: u64,
    /// 1st percentile.
    pub p1: u64,
    /// 5th percentile.
    pub p5: u64,
    /// 10th percentile.
    pub p10: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p99_9: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    #[must_use]
    pub fn new() -> Self {
        Self {
            counts: Box::new([0; BUCKETS]),
            samples: 0,
        }
    }

    /// Counts `value` once.
    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    /// Counts `value` `n` times.
    pub fn record_n(&mut self, value: u64, n: u64) {
        self.counts[bucket(value)] += n;
        self.samples += n;
    }

    /// Number of values recorded.
    #[must_use]
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// The smallest value of the bucket holding the `q`-th quantile (`0.0..=1.0`); 0 when
    /// empty.
    #[must_use]
    pub fn quantile(&self, q: f64) -> u64 {
        if self.samples == 0 {
            return 0;
        }
        // The rank of the quantile's value among the samples, 1-based.
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let rank = ((q.clamp(0.0, 1.0) * self.samples as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return lower_bound(i);
            }
        }
        lower_bound(BUCKETS - 1)
    }

    /// The usual percentiles at once.
    #[must_use]
    pub fn percentile_stats(&self) -> PercentileStats {
        PercentileStats {
            samples: self.samples,
            p0_1: self.quantile(0.001),
            p1: self.quantile(0.01),
            p5: self.quantile(0.05),
            p10: self.quantile(0.1),
            p50: self.quantile(0.5),
            p90: self.quantile(0.9),
            p99: self.quantile(0.99),
            p99_9: self.quantile(0.999),
        }
    }
}

/// The bucket of `value`: itself below 4, else four per power of two, chosen by the two bits
/// after the highest set bit.
fn bucket(value: u64) -> usize {
    if value < 4 {
        return usize::try_from(value).expect("below 4");
    }
    let msb = 63 - value.leading_zeros() as usize; // 2..=63
    let offset = usize::try_from((value >> (msb - 2)) & 3).expect("two bits");
    4 * (msb - 1) + offset
}

/// The smallest value in bucket `i` (the inverse of [`bucket`] on bucket boundaries).
fn lower_bound(i: usize) -> u64 {
    if i < 4 {
        return i as u64;
    }
    let (group, offset) = (i / 4, i % 4);
    (4 + offset as u64) << (group - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_should_land_in_the_bucket_whose_range_holds_it() {
        let mut values: Vec<u64> = (0..10_000).collect();
        values.extend((2..64).flat_map(|b| {
            let p = 1u64 << b;
            [p - 1, p, p + 1, p + p / 3]
        }));
        values.push(u64::MAX);
        for v in values {
            let i = bucket(v);
            assert!(i < BUCKETS, "{v} → bucket {i}");
            assert!(lower_bound(i) <= v, "{v} below bucket {i}'s start");
            if i + 1 < BUCKETS {
                assert!(v < lower_bound(i + 1), "{v} past bucket {i}'s end");
            }
            // Each bucket spans at most a quarter of its smallest value beyond 7.
            if v > 7 {
                assert!(
                    v - lower_bound(i) <= lower_bound(i) / 4,
                    "{v} in bucket {i}"
                );
            }
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_should_come_within_a_bucket_of_the_exact_ones() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile_stats(), PercentileStats::default());
        for v in 1..=1_000 {
            h.record(v);
        }
        let s = h.percentile_stats();
        assert_eq!(s.samples, 1_000);
        for (got, exact) in [
            (s.p1, 10),
            (s.p10, 100),
            (s.p50, 500),
            (s.p90, 900),
            (s.p99, 990),
        ] {
            assert!(
                got <= exact && exact - got <= exact / 4,
                "{got} for {exact}"
            );
        }
        h.record_n(5, 9_000);
        assert_eq!(h.quantile(0.5), 5, "exact below 8");
        assert_eq!(h.samples(), 10_000);
    }
}
