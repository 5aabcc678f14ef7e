//! What each LUN has done: one block of counters per request queue, written only by the thread
//! serving that queue and summed when someone asks.
//!
//! The blocks live in the LUN's entry of the LUN map, allocated when the LUN is added, so that
//! the per-request path takes no lock, allocates nothing, and queues never write a cache line
//! another queue writes. A removed LUN takes its counters with it; a LUN added again under the
//! same number starts from zero.

use std::sync::atomic::{AtomicU64, Ordering};

use super::queue_counters::{add, LatencyBucket, LATENCY_BUCKETS, SENSE_KEYS};

/// One request queue's share of a LUN's counters, on cache lines of its own (two, as the
/// adjacent-line prefetcher pairs them).
#[repr(align(128))]
#[derive(Debug, Default)]
struct QueueShare {
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    errors_by_sense_key: [AtomicU64; SENSE_KEYS],
    /// Commands this queue has with the I/O engine for the LUN (a queue finishes what it
    /// started, so this never goes below zero).
    in_flight: AtomicU64,
    /// Answered commands by latency bucket, whose sum counts them (as for a queue's counters).
    latency: [AtomicU64; LATENCY_BUCKETS],
}

/// The counters of one LUN: a share per request queue.
#[derive(Debug)]
pub struct LunCounters {
    shares: Box<[QueueShare]>,
}

/// A LUN's counters summed over the request queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LunStats {
    pub lun: u16,
    /// Commands answered by the LUN (not those refused before they reached it).
    pub requests: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// CHECK CONDITION answers by sense key.
    pub errors_by_sense_key: [u64; SENSE_KEYS],
    /// Commands with the I/O engine at the time of the snapshot.
    pub in_flight: u64,
    /// Latency from the pass that popped the chain to the pass that answered it, in the buckets
    /// of [`LATENCY_BUCKETS`].
    pub latency: [u64; LATENCY_BUCKETS],
}

impl LunStats {
    /// CHECK CONDITION answers of every sense key.
    pub fn errors(&self) -> u64 {
        self.errors_by_sense_key.iter().sum()
    }
}

impl LunCounters {
    /// Counters for a LUN served by `request_queues` request queues.
    pub fn new(request_queues: u16) -> LunCounters {
        LunCounters {
            shares: (0..request_queues).map(|_| QueueShare::default()).collect(),
        }
    }

    /// The share of request queue `queue` (0-based); only that queue's thread may count in it.
    pub fn queue(&self, queue: usize) -> LunQueueCounters<'_> {
        LunQueueCounters(self.shares.get(queue))
    }

    pub fn snapshot(&self, lun: u16) -> LunStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut stats = LunStats {
            lun,
            ..LunStats::default()
        };
        for share in self.shares.iter() {
            stats.bytes_read += load(&share.bytes_read);
            stats.bytes_written += load(&share.bytes_written);
            stats.in_flight = stats.in_flight.wrapping_add(load(&share.in_flight));
            for (sum, counter) in stats
                .errors_by_sense_key
                .iter_mut()
                .zip(&share.errors_by_sense_key)
            {
                *sum += load(counter);
            }
            for (sum, counter) in stats.latency.iter_mut().zip(&share.latency) {
                *sum += load(counter);
            }
        }
        stats.requests = stats.latency.iter().sum();
        stats
    }
}

/// One request queue's view of a LUN's counters. A queue beyond those the LUN was built for
/// (none is: every LUN is built for the device's queues) counts nothing.
#[derive(Debug, Clone, Copy)]
pub struct LunQueueCounters<'a>(Option<&'a QueueShare>);

impl LunQueueCounters<'_> {
    /// A command answered with `sense_key` (for CHECK CONDITION) after a latency in `latency`.
    #[inline(always)]
    pub fn answered(self, sense_key: Option<u8>, latency: LatencyBucket) {
        if let Some(share) = self.0 {
            if let Some(key) = sense_key {
                add(&share.errors_by_sense_key[usize::from(key & 0x0f)], 1);
            }
            add(&share.latency[latency.index()], 1);
        }
    }

    pub fn read(self, bytes: u64) {
        if let Some(share) = self.0 {
            add(&share.bytes_read, bytes);
        }
    }

    pub fn written(self, bytes: u64) {
        if let Some(share) = self.0 {
            add(&share.bytes_written, bytes);
        }
    }

    /// A command went to the I/O engine.
    pub fn started(self) {
        if let Some(share) = self.0 {
            add(&share.in_flight, 1);
        }
    }

    /// A command came back from the I/O engine.
    pub fn finished(self) {
        if let Some(share) = self.0 {
            add(&share.in_flight, u64::MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn shares_of_different_queues_share_no_cache_line() {
        assert_eq!(std::mem::align_of::<QueueShare>(), 128);
        assert_eq!(std::mem::size_of::<QueueShare>() % 128, 0);
    }

    #[test]
    fn snapshot_sums_the_queues() {
        let counters = LunCounters::new(2);
        counters
            .queue(0)
            .answered(None, LatencyBucket::of(Duration::from_micros(3)));
        counters
            .queue(1)
            .answered(Some(0x3), LatencyBucket::of(Duration::ZERO));
        counters.queue(0).read(4096);
        counters.queue(1).written(512);
        counters.queue(0).started();
        counters.queue(1).started();
        counters.queue(1).finished();
        // Out of range: ignored, not a panic.
        counters
            .queue(7)
            .answered(None, LatencyBucket::of(Duration::ZERO));
        let stats = counters.snapshot(5);
        assert_eq!(stats.lun, 5);
        assert_eq!(stats.requests, 2);
        assert_eq!((stats.bytes_read, stats.bytes_written), (4096, 512));
        assert_eq!(stats.errors_by_sense_key[3], 1);
        assert_eq!(stats.errors(), 1);
        assert_eq!(stats.in_flight, 1);
        assert_eq!(stats.latency[0], 1);
        assert_eq!(stats.latency[2], 1);
    }
}
