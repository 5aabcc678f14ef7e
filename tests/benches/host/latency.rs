//! Request latencies (submit to completion) and their percentiles.
//!
//! Every measured request is kept: a few hundred thousand u32s per run is cheap, and sorting
//! them gives exact percentiles with no bucket error.

use std::time::Duration;

#[derive(Clone, Debug, Default)]
pub struct Latencies {
    nanos: Vec<u32>,
}

/// Percentiles and mean in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub mean_us: f64,
    pub max_us: f64,
}

impl Latencies {
    pub fn with_capacity(capacity: usize) -> Self {
        Latencies {
            nanos: Vec::with_capacity(capacity),
        }
    }

    pub fn record(&mut self, latency: Duration) {
        self.nanos
            .push(u32::try_from(latency.as_nanos()).unwrap_or(u32::MAX));
    }

    pub fn merge(&mut self, other: Latencies) {
        self.nanos.extend(other.nanos);
    }

    pub fn len(&self) -> usize {
        self.nanos.len()
    }

    pub fn summary(&mut self) -> Summary {
        if self.nanos.is_empty() {
            return Summary::default();
        }
        self.nanos.sort_unstable();
        let total: u64 = self.nanos.iter().map(|&n| u64::from(n)).sum();
        let us = |n: u64| n as f64 / 1000.0;
        Summary {
            p50_us: us(self.percentile(0.50)),
            p99_us: us(self.percentile(0.99)),
            p999_us: us(self.percentile(0.999)),
            mean_us: us(total) / self.nanos.len() as f64,
            max_us: us(self.nanos.last().map_or(0, |&n| u64::from(n))),
        }
    }

    /// The smallest recorded value that at least `fraction` of the values do not exceed
    /// (nearest-rank); the values must be sorted.
    fn percentile(&self, fraction: f64) -> u64 {
        let rank = (fraction * self.nanos.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.nanos.len()) - 1;
        u64::from(self.nanos[index])
    }
}
