//! Whether a disk's flushes can still be trusted.
//!
//! After a failed fdatasync Linux may have marked the dirty pages clean, and a later fdatasync
//! with no writes in between succeeds although the data acknowledged earlier is lost. Like
//! QEMU's file-posix, a disk therefore fails every flush after the first failed one, until it
//! is opened again.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub(crate) struct FlushState {
    failed: AtomicBool,
}

impl FlushState {
    /// EIO once a flush has failed: the page cache may have dropped acknowledged writes.
    pub(crate) fn check(&self) -> Result<(), i32> {
        if self.failed.load(Ordering::Acquire) {
            Err(libc::EIO)
        } else {
            Ok(())
        }
    }

    /// Passes a flush's outcome through, remembering a failure for good.
    pub(crate) fn record(&self, result: Result<u64, i32>) -> Result<u64, i32> {
        if result.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failure_fails_every_later_flush() {
        let state = FlushState::default();
        assert_eq!(state.check(), Ok(()));
        assert_eq!(state.record(Ok(0)), Ok(0));
        assert_eq!(state.check(), Ok(()));
        assert_eq!(state.record(Err(libc::ENOSPC)), Err(libc::ENOSPC));
        assert_eq!(state.check(), Err(libc::EIO));
        assert_eq!(
            state.record(Ok(0)),
            Ok(0),
            "the outcome itself is passed through"
        );
        assert_eq!(
            state.check(),
            Err(libc::EIO),
            "a later success does not clear it"
        );
    }
}
