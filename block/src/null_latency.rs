//! The null disk's optional completion latency: slow storage without storage, so that depth
//! benchmarks can show how IOPS follow requests in flight divided by latency.

use std::time::Duration;

use io_uring::{opcode, squeue, types};

/// One delayed completion on io_uring: a timeout SQE, so that requests waiting out their
/// latency hold no thread and any number of them can be in flight at once.
pub(crate) struct Delay {
    /// Read by the kernel when the SQE is submitted: it lives in the engine's slot until then.
    timespec: types::Timespec,
    len: u64,
}

impl Delay {
    /// A request of `len` bytes that completes successfully after `latency`.
    pub(crate) fn new(latency: Duration, len: u64) -> Delay {
        Delay {
            timespec: types::Timespec::from(latency),
            len,
        }
    }

    pub(crate) fn entry(&self) -> squeue::Entry {
        opcode::Timeout::new(&self.timespec).build()
    }

    /// A timeout that expired is the request's success; anything else (the ring cancelled it)
    /// is an error the guest must see.
    pub(crate) fn result(&self, cqe_result: i32) -> Result<u64, i32> {
        match -cqe_result {
            0 | libc::ETIME => Ok(self.len),
            errno => Err(errno),
        }
    }
}

/// What blocking engines do instead: they have no way to wait without their thread.
pub(crate) fn sleep(latency: Duration) {
    if !latency.is_zero() {
        std::thread::sleep(latency);
    }
}
