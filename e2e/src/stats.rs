//! Latency summaries.

use serde::Serialize;
use std::time::Duration;

/// Percentiles of a sample of durations, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Summary {
    /// Nearest-rank percentiles (p99 of 20 samples is the largest one).
    pub fn of(samples: &[Duration]) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        let mut sorted: Vec<Duration> = samples.to_vec();
        sorted.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let rank = |p: f64| {
            let r = (p / 100.0 * sorted.len() as f64).ceil() as usize;
            sorted[r.clamp(1, sorted.len()) - 1]
        };
        let total: Duration = sorted.iter().sum();
        Summary {
            count: sorted.len(),
            min_ms: ms(sorted[0]),
            p50_ms: ms(rank(50.0)),
            p99_ms: ms(rank(99.0)),
            max_ms: ms(sorted[sorted.len() - 1]),
            mean_ms: ms(total) / sorted.len() as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(&samples);
        assert_eq!(
            (s.count, s.min_ms, s.p50_ms, s.p99_ms, s.max_ms),
            (100, 1.0, 50.0, 99.0, 100.0)
        );
        let s = Summary::of(&samples[..20]);
        assert_eq!((s.p50_ms, s.p99_ms), (10.0, 20.0));
        assert_eq!(Summary::of(&[]).count, 0);
    }
}
