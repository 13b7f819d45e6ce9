//! Process figures (RSS, CPU) and percentiles.

use std::time::Duration;

pub(crate) use distribus::testing::{cpu_seconds, rss_bytes};

/// Sorted samples with percentile queries.
#[derive(Debug, Default)]
pub(crate) struct Samples(Vec<f64>);

impl Samples {
    /// Adds a duration, in milliseconds.
    pub(crate) fn push_ms(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1e3);
    }

    /// Adds a value.
    pub(crate) fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    /// The `p`-th percentile (0–100), nearest rank; 0 when empty.
    pub(crate) fn pct(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_by(|a, b| a.total_cmp(b));
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    /// Joins another set of samples.
    pub(crate) fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut s = Samples::default();
        for v in 1..=100 {
            s.push(v as f64);
        }
        assert_eq!(s.pct(50.0), 50.0);
        assert_eq!(s.pct(99.0), 99.0);
        assert_eq!(s.pct(100.0), 100.0);
        assert!(rss_bytes() > 0);
    }
}
