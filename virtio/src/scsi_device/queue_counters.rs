//! What each virtqueue has done, counted by the thread that serves it and read by anyone.
//!
//! A queue's counters are written only by its own thread, so an increment is a relaxed load and
//! store (no locked instruction), and each queue's block sits on cache lines of its own: the
//! readers (the control socket's `stats`, the disconnect record) never slow the writers, and
//! queues served by different iothreads share nothing. A snapshot taken while the queue runs is
//! a set of values each of which was true at some instant of the read. A request queue's kicks
//! are the exception: they wait in its notifier's counter, which its thread does not read, and
//! whoever takes a snapshot counts them into the block, under a lock the queue never takes. The
//! snapshot looks at the counter without reading it (`/proc/self/fdinfo`): its host watches the
//! notifier edge-triggered, and a read between a kick and the host's wake-up would take the
//! kick's event away (the kernel hands an event out only if the eventfd is still readable).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use virtio_bindings::virtio_scsi::VIRTIO_SCSI_S_BAD_TARGET;
use vmm_sys_util::eventfd::EventFd;

/// Latency buckets: bucket 0 holds requests answered in under 1 µs, bucket `i` those that took
/// [2^(i-1), 2^i) µs, and the last one everything from 2^(LATENCY_BUCKETS-2) µs (about 1 s) on.
pub const LATENCY_BUCKETS: usize = 22;
/// One counter per SCSI sense key (a 4-bit field).
pub const SENSE_KEYS: usize = 16;

/// The live counters of one virtqueue. Aligned to two cache lines, as the adjacent-line
/// prefetcher pairs them.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct QueueCounters {
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    /// Requests answered with CHECK CONDITION, by sense key.
    errors_by_sense_key: [AtomicU64; SENSE_KEYS],
    /// Requests answered with a virtio response other than OK and BAD_TARGET (bad chain,
    /// overrun, a failed transfer): the command never reached the target.
    transport_failures: AtomicU64,
    /// Requests for a target that does not exist (BAD_TARGET): a driver's scan probing every
    /// target finds them (Linux sends 255 at boot), so they are no failure.
    bad_targets: AtomicU64,
    in_flight: AtomicU64,
    /// Driver notifications: what the notifier's counter gained, summed over its reads (or,
    /// for a notifier its thread leaves unread, over the snapshots' looks at it).
    kicks: AtomicU64,
    /// A notifier that the queue's thread does not read (a request queue's: its host wakes at
    /// every write, edge-triggered), so that its counter holds its kicks; looked at by
    /// `snapshot` under the lock, which is then the only writer of `kicks`.
    unread_kicks: Mutex<UnreadKicks>,
    /// Interrupts raised (MSI-X eventfd writes).
    interrupts: AtomicU64,
    /// Passes that left their interrupt to the queue's next look.
    interrupts_deferred: AtomicU64,
    /// Looks at the queue that its host's re-check timer made, standing in for kicks the
    /// driver was told it need not send.
    rechecks: AtomicU64,
    /// Answered requests by latency bucket; their sum is the count of requests, which is not
    /// counted apart so that an answer costs one increment fewer.
    latency: [AtomicU64; LATENCY_BUCKETS],
}

/// A copy of one queue's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Virtqueue index (2.. for request queues).
    pub vq: u16,
    /// Requests answered (used-ring entries written).
    pub requests: u64,
    /// Data-in bytes moved from disks to the driver's buffers.
    pub bytes_read: u64,
    /// Data-out bytes moved from the driver's buffers to disks.
    pub bytes_written: u64,
    /// CHECK CONDITION answers by sense key.
    pub errors_by_sense_key: [u64; SENSE_KEYS],
    pub transport_failures: u64,
    pub bad_targets: u64,
    /// Requests with the I/O engine at the time of the snapshot.
    pub in_flight: u64,
    pub kicks: u64,
    pub interrupts: u64,
    pub interrupts_deferred: u64,
    pub rechecks: u64,
    /// Request latency from the pass that popped the chain to the pass that returned it, in
    /// the buckets of [`LATENCY_BUCKETS`].
    pub latency: [u64; LATENCY_BUCKETS],
}

/// The notifier whose counter holds a queue's kicks, and how much of that counter is counted.
#[derive(Debug, Default)]
struct UnreadKicks {
    notifier: Option<Arc<EventFd>>,
    counted: u64,
}

/// The count `eventfd` holds, as its fdinfo shows it (hexadecimal), left in place; None when
/// that cannot be read.
fn eventfd_count(eventfd: &EventFd) -> Option<u64> {
    let info =
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", eventfd.as_raw_fd())).ok()?;
    let count = info
        .lines()
        .find_map(|line| line.strip_prefix("eventfd-count:"))?;
    u64::from_str_radix(count.trim(), 16).ok()
}

impl QueueStats {
    /// CHECK CONDITION answers of every sense key.
    pub fn errors(&self) -> u64 {
        self.errors_by_sense_key.iter().sum()
    }
}

/// Adds `n` to a counter that only the calling thread writes.
pub(super) fn add(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// The latency histogram bucket of one request (see [`LATENCY_BUCKETS`]), found once for the
/// queue's and the LUN's histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyBucket(usize);

impl LatencyBucket {
    pub fn of(latency: Duration) -> LatencyBucket {
        LatencyBucket::of_micros(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX))
    }

    /// The bucket of a latency in nanoseconds: what the request path measures, without the
    /// 128-bit arithmetic of `Duration`.
    #[inline(always)]
    pub fn of_nanos(nanos: u64) -> LatencyBucket {
        LatencyBucket::of_micros(nanos / 1000)
    }

    fn of_micros(micros: u64) -> LatencyBucket {
        let bucket = (u64::BITS - micros.leading_zeros()) as usize;
        LatencyBucket(bucket.min(LATENCY_BUCKETS - 1))
    }

    pub(super) fn index(self) -> usize {
        self.0
    }
}

impl QueueCounters {
    /// A request answered with `sense_key` (for CHECK CONDITION) after a latency in `latency`.
    #[inline(always)]
    pub fn answered(&self, sense_key: Option<u8>, latency: LatencyBucket) {
        if let Some(key) = sense_key {
            add(&self.errors_by_sense_key[usize::from(key & 0x0f)], 1);
        }
        add(&self.latency[latency.index()], 1);
    }

    /// A request the virtio layer answered with `response`, not OK.
    pub fn refused(&self, response: u32) {
        if response == VIRTIO_SCSI_S_BAD_TARGET {
            add(&self.bad_targets, 1);
        } else {
            add(&self.transport_failures, 1);
        }
    }

    pub fn read(&self, bytes: u64) {
        add(&self.bytes_read, bytes);
    }

    pub fn written(&self, bytes: u64) {
        add(&self.bytes_written, bytes);
    }

    pub fn set_in_flight(&self, requests: usize) {
        self.in_flight.store(requests as u64, Ordering::Relaxed);
    }

    pub fn count_kicks(&self, kicks: u64) {
        add(&self.kicks, kicks);
    }

    /// From now on the queue's kicks wait in `notifier`'s counter, which its thread leaves
    /// unread, until a snapshot counts them (and those left in a previous one are counted).
    pub fn count_kicks_in(&self, notifier: &Arc<EventFd>) {
        let mut unread = self.unread_kicks();
        self.count_unread(&mut unread);
        let same = unread
            .notifier
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, notifier));
        if !same {
            *unread = UnreadKicks {
                notifier: Some(Arc::clone(notifier)),
                counted: 0,
            };
        }
    }

    fn unread_kicks(&self) -> MutexGuard<'_, UnreadKicks> {
        self.unread_kicks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds the kicks the notifier's counter gained since the last look to `kicks`. A counter
    /// below what was counted was drained meanwhile (a device reset, before the activation that
    /// hands the notifier over again), and holds only kicks that came after.
    fn count_unread(&self, unread: &mut UnreadKicks) {
        let Some(total) = unread.notifier.as_deref().and_then(eventfd_count) else {
            return;
        };
        add(
            &self.kicks,
            total.checked_sub(unread.counted).unwrap_or(total),
        );
        unread.counted = total;
    }

    pub fn interrupted(&self) {
        add(&self.interrupts, 1);
    }

    pub fn interrupt_deferred(&self) {
        add(&self.interrupts_deferred, 1);
    }

    pub fn rechecked(&self) {
        add(&self.rechecks, 1);
    }

    pub fn snapshot(&self, vq: u16) -> QueueStats {
        self.count_unread(&mut self.unread_kicks());
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let latency: [u64; LATENCY_BUCKETS] = std::array::from_fn(|i| load(&self.latency[i]));
        QueueStats {
            vq,
            requests: latency.iter().sum(),
            bytes_read: load(&self.bytes_read),
            bytes_written: load(&self.bytes_written),
            errors_by_sense_key: std::array::from_fn(|i| load(&self.errors_by_sense_key[i])),
            transport_failures: load(&self.transport_failures),
            bad_targets: load(&self.bad_targets),
            in_flight: load(&self.in_flight),
            kicks: load(&self.kicks),
            interrupts: load(&self.interrupts),
            interrupts_deferred: load(&self.interrupts_deferred),
            rechecks: load(&self.rechecks),
            latency,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_different_queues_share_no_cache_line() {
        assert_eq!(std::mem::align_of::<QueueCounters>(), 128);
        assert_eq!(std::mem::size_of::<QueueCounters>() % 128, 0);
    }

    #[test]
    fn latencies_fall_in_power_of_two_microsecond_buckets() {
        let bucket = |latency| LatencyBucket::of(latency).index();
        assert_eq!(bucket(Duration::from_nanos(999)), 0);
        assert_eq!(bucket(Duration::from_micros(1)), 1);
        assert_eq!(bucket(Duration::from_micros(3)), 2);
        assert_eq!(bucket(Duration::from_micros(4)), 3);
        assert_eq!(bucket(Duration::from_secs(3600)), LATENCY_BUCKETS - 1);
        for nanos in [0, 999, 1000, 3999, 4000, 1 << 40, u64::MAX] {
            assert_eq!(
                LatencyBucket::of_nanos(nanos),
                LatencyBucket::of(Duration::from_nanos(nanos)),
                "{nanos} ns"
            );
        }
    }

    #[test]
    fn kicks_left_in_an_unread_notifier_are_counted_by_the_snapshots_once() {
        let counters = QueueCounters::default();
        let notifier = Arc::new(EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap());
        notifier.write(1).unwrap();
        counters.count_kicks_in(&notifier);
        notifier.write(1).unwrap();
        notifier.write(1).unwrap();
        assert_eq!(counters.snapshot(2).kicks, 3);
        notifier.write(1).unwrap();
        assert_eq!(
            counters.snapshot(2).kicks,
            4,
            "counted twice, or not at all"
        );
        // A new activation's notifier: the old one's kicks are not lost.
        notifier.write(1).unwrap();
        let next = Arc::new(EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap());
        counters.count_kicks_in(&next);
        next.write(1).unwrap();
        assert_eq!(counters.snapshot(2).kicks, 6);
        // A reset drains the notifier, and the next activation hands the same one over: the
        // kicks after the drain are counted, from zero.
        next.write(1).unwrap();
        next.read().unwrap();
        counters.count_kicks_in(&next);
        next.write(1).unwrap();
        assert_eq!(counters.snapshot(2).kicks, 7);
    }

    #[test]
    fn snapshot_reports_what_was_counted() {
        let counters = QueueCounters::default();
        counters.answered(None, LatencyBucket::of(Duration::from_micros(5)));
        counters.answered(Some(0x5), LatencyBucket::of(Duration::ZERO));
        counters.refused(virtio_bindings::virtio_scsi::VIRTIO_SCSI_S_FAILURE);
        counters.refused(VIRTIO_SCSI_S_BAD_TARGET);
        counters.refused(VIRTIO_SCSI_S_BAD_TARGET);
        counters.read(4096);
        counters.written(512);
        counters.count_kicks(3);
        counters.interrupted();
        counters.rechecked();
        counters.rechecked();
        counters.interrupt_deferred();
        counters.set_in_flight(7);
        let stats = counters.snapshot(2);
        assert_eq!(stats.vq, 2);
        assert_eq!(stats.requests, 2);
        assert_eq!(stats.errors_by_sense_key[5], 1);
        assert_eq!(stats.errors(), 1);
        assert_eq!(stats.transport_failures, 1);
        assert_eq!(stats.bad_targets, 2, "a target scan is no failure");
        assert_eq!((stats.bytes_read, stats.bytes_written), (4096, 512));
        assert_eq!((stats.kicks, stats.interrupts, stats.in_flight), (3, 1, 7));
        assert_eq!((stats.rechecks, stats.interrupts_deferred), (2, 1));
        assert_eq!(stats.latency[0], 1);
        assert_eq!(stats.latency[3], 1);
    }
}
