//! Request latencies (submit to completion) and their percentiles, and the driver's work per
//! request pass by pass.
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

/// The driver's work per request in each pass (a reap of completions and the submissions that
/// refill them, waits and kicks apart). A pass during which the thread was preempted counts the
/// time it was off its core; such passes are few (a tick every few milliseconds against passes
/// of microseconds), so the median over requests is the driver's own cost even on a busy
/// machine, where the mean is not.
#[derive(Clone, Debug, Default)]
pub struct PassTimes {
    /// (ns per request, requests) of each pass.
    passes: Vec<(u32, u32)>,
}

impl PassTimes {
    pub fn with_capacity(capacity: usize) -> Self {
        PassTimes {
            passes: Vec::with_capacity(capacity),
        }
    }

    pub fn record(&mut self, work: Duration, requests: usize) {
        let Ok(requests) = u32::try_from(requests) else {
            return;
        };
        if requests == 0 {
            return;
        }
        let per_request = work.as_nanos() / u128::from(requests);
        self.passes
            .push((u32::try_from(per_request).unwrap_or(u32::MAX), requests));
    }

    pub fn merge(&mut self, other: PassTimes) {
        self.passes.extend(other.passes);
    }

    /// The ns per request that half of the requests' passes did not exceed.
    pub fn median_ns_per_request(&mut self) -> Option<u32> {
        self.passes.sort_unstable();
        let total: u64 = self.passes.iter().map(|&(_, n)| u64::from(n)).sum();
        let mut seen = 0;
        self.passes.iter().find_map(|&(ns, n)| {
            seen += u64::from(n);
            (seen * 2 >= total).then_some(ns)
        })
    }
}
