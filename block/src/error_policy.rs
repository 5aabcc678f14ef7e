//! What a disk does when a request fails in the backend, as QEMU's `werror=`/`rerror=` say,
//! and whether the disk is stopped on such an error (QEMU's iostatus).
//!
//! `report` hands the error to the guest. `stop` (and `enospc` for ENOSPC) instead holds the
//! failing request and stops the disk: its later requests wait too, until an operator has made
//! room or repaired the storage and resumes it. The requests themselves stay with whoever
//! serves them; the disk only says that it is stopped, why, and how many requests wait.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};

/// `werror=`: what a failed write (or flush, discard, write zeroes) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnWriteError {
    Report,
    /// Stop on ENOSPC, report the rest: QEMU's default for scsi-hd.
    #[default]
    Enospc,
    Stop,
}

/// `rerror=`: what a failed read does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnReadError {
    /// QEMU's default for scsi-hd.
    #[default]
    Report,
    Stop,
}

/// A disk's `werror=` and `rerror=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErrorPolicy {
    pub write: OnWriteError,
    pub read: OnReadError,
}

/// What to do with one failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    /// Answer it with the error.
    Report,
    /// Hold it and stop the disk.
    Stop,
}

impl ErrorPolicy {
    /// The action for a request that failed with `errno` while reading, or modifying the disk
    /// when `write`.
    pub fn action(&self, errno: i32, write: bool) -> ErrorAction {
        let stop = if write {
            match self.write {
                OnWriteError::Report => false,
                OnWriteError::Enospc => errno == libc::ENOSPC,
                OnWriteError::Stop => true,
            }
        } else {
            self.read == OnReadError::Stop
        };
        if stop {
            ErrorAction::Stop
        } else {
            ErrorAction::Report
        }
    }
}

/// Whether a disk is stopped by its error policy. Only failing requests and the operator
/// change it; requests read `is_stopped` with one atomic load.
#[derive(Debug, Default)]
pub struct IoStatus {
    stopped: AtomicBool,
    /// The errno that stopped the disk last (0: never stopped).
    reason: AtomicI32,
    /// Requests held now, on every queue.
    held: AtomicUsize,
    /// Times the disk stopped since it was opened.
    stops: AtomicU64,
}

impl IoStatus {
    #[inline]
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// A request failed with `errno` and its policy says stop; true when this stopped the
    /// disk (it was running).
    pub fn stop(&self, errno: i32) -> bool {
        self.reason.store(errno, Ordering::Relaxed);
        let newly = !self.stopped.swap(true, Ordering::AcqRel);
        if newly {
            self.stops.fetch_add(1, Ordering::Relaxed);
        }
        newly
    }

    /// Lets the held requests go again (QMP's `cont`); true when the disk was stopped.
    pub fn resume(&self) -> bool {
        self.stopped.swap(false, Ordering::AcqRel)
    }

    /// The errno of the last stop.
    pub fn reason(&self) -> Option<i32> {
        Some(self.reason.load(Ordering::Relaxed)).filter(|&errno| errno != 0)
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn stops(&self) -> u64 {
        self.stops.load(Ordering::Relaxed)
    }

    /// One more request waits for the disk to resume; call `released` when it leaves.
    pub fn hold(&self) {
        self.held.fetch_add(1, Ordering::Relaxed);
    }

    /// A held request was resubmitted, aborted or dropped.
    pub fn released(&self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_follow_qemus_policies() {
        let default = ErrorPolicy::default();
        assert_eq!(default.action(libc::ENOSPC, true), ErrorAction::Stop);
        assert_eq!(default.action(libc::EIO, true), ErrorAction::Report);
        assert_eq!(default.action(libc::EIO, false), ErrorAction::Report);
        assert_eq!(default.action(libc::ENOSPC, false), ErrorAction::Report);
        let report = ErrorPolicy {
            write: OnWriteError::Report,
            read: OnReadError::Report,
        };
        assert_eq!(report.action(libc::ENOSPC, true), ErrorAction::Report);
        let stop = ErrorPolicy {
            write: OnWriteError::Stop,
            read: OnReadError::Stop,
        };
        assert_eq!(stop.action(libc::EIO, true), ErrorAction::Stop);
        assert_eq!(stop.action(libc::EIO, false), ErrorAction::Stop);
    }

    #[test]
    fn stop_and_resume() {
        let status = IoStatus::default();
        assert!(!status.is_stopped());
        assert_eq!(status.reason(), None);
        assert!(!status.resume(), "nothing to resume");
        assert!(status.stop(libc::ENOSPC));
        assert!(!status.stop(libc::ENOSPC), "already stopped");
        status.hold();
        status.hold();
        assert!(status.is_stopped());
        assert_eq!(
            (status.reason(), status.held(), status.stops()),
            (Some(libc::ENOSPC), 2, 1)
        );
        assert!(status.resume());
        status.released();
        status.released();
        assert!(!status.is_stopped());
        assert_eq!((status.held(), status.reason()), (0, Some(libc::ENOSPC)));
    }
}
