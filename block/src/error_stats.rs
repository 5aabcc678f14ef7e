//! A disk's count of failed requests, and when each failure deserves an operator's attention.
//!
//! The first failure of each kind (reads or writes, by errno) is worth a warning of its own;
//! the rest are counted and summed up at most once per [`SUMMARY_INTERVAL`], so that a failing
//! disk under load neither floods the log nor goes unnoticed. Only failing requests touch it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The shortest time between two summaries of the same disk's repeated failures.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Errnos told apart when deciding whether a failure is the first of its kind; the rest share
/// the last class.
const ERRNO_CLASSES: [i32; 5] = [
    libc::EIO,
    libc::ENOSPC,
    libc::EROFS,
    libc::EINVAL,
    libc::EDQUOT,
];

/// What the caller should say about a failure that [`ErrorStats::record`] counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReport {
    /// The first failure of its kind on this disk: warn about it.
    FirstOfKind,
    /// Failures went unreported for a while: warn once with how many (this one included).
    Summary { unreported: u64 },
    /// Counted; nothing to say now.
    Counted,
}

#[derive(Debug)]
pub(crate) struct ErrorStats {
    opened: Instant,
    kinds_seen: AtomicU32,
    total: AtomicU64,
    unreported: AtomicU64,
    /// Milliseconds after `opened` of the last summary.
    last_summary_ms: AtomicU64,
}

impl Default for ErrorStats {
    fn default() -> Self {
        ErrorStats {
            opened: Instant::now(),
            kinds_seen: AtomicU32::new(0),
            total: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
            last_summary_ms: AtomicU64::new(0),
        }
    }
}

impl ErrorStats {
    /// Counts one failed request that read (`write` false) or modified the disk.
    pub(crate) fn record(&self, errno: i32, write: bool) -> ErrorReport {
        self.total.fetch_add(1, Ordering::Relaxed);
        let class = ERRNO_CLASSES
            .iter()
            .position(|&known| known == errno)
            .unwrap_or(ERRNO_CLASSES.len());
        let bit = 1u32 << (class * 2 + usize::from(write));
        if self.kinds_seen.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            return ErrorReport::FirstOfKind;
        }
        self.unreported.fetch_add(1, Ordering::Relaxed);
        let now_ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_summary_ms.load(Ordering::Relaxed);
        let interval_ms = SUMMARY_INTERVAL.as_millis() as u64;
        if now_ms.saturating_sub(last) < interval_ms
            || self
                .last_summary_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return ErrorReport::Counted;
        }
        ErrorReport::Summary {
            unreported: self.unreported.swap(0, Ordering::Relaxed),
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_of_each_kind_then_counted_then_summed_up() {
        let stats = ErrorStats::default();
        assert_eq!(stats.record(libc::EIO, true), ErrorReport::FirstOfKind);
        assert_eq!(stats.record(libc::EIO, false), ErrorReport::FirstOfKind);
        assert_eq!(stats.record(libc::ENOSPC, true), ErrorReport::FirstOfKind);
        assert_eq!(stats.record(libc::ENXIO, true), ErrorReport::FirstOfKind);
        assert_eq!(
            stats.record(libc::ENODEV, true),
            ErrorReport::Counted,
            "unlisted errnos share one kind; within the first interval nothing is summed up"
        );
        for _ in 0..100 {
            assert_eq!(stats.record(libc::EIO, true), ErrorReport::Counted);
        }
        assert_eq!(stats.total(), 105);

        // As if the last summary was one interval ago.
        stats.last_summary_ms.store(0, Ordering::Relaxed);
        let stale = ErrorStats {
            opened: Instant::now() - SUMMARY_INTERVAL,
            ..ErrorStats::default()
        };
        stale.record(libc::EIO, true);
        stale.record(libc::EIO, true);
        assert_eq!(
            stale.record(libc::EIO, true),
            ErrorReport::Counted,
            "the summary went to the first repeat; this one waits for the next interval"
        );
        assert_eq!(stale.unreported.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn summary_counts_what_went_unreported() {
        let stats = ErrorStats {
            opened: Instant::now() - SUMMARY_INTERVAL * 2,
            ..ErrorStats::default()
        };
        assert_eq!(stats.record(libc::EIO, false), ErrorReport::FirstOfKind);
        stats.unreported.store(41, Ordering::Relaxed);
        assert_eq!(
            stats.record(libc::EIO, false),
            ErrorReport::Summary { unreported: 42 }
        );
        assert_eq!(stats.record(libc::EIO, false), ErrorReport::Counted);
    }
}
