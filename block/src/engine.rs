//! The interface between a device's queues and the code that performs their I/O.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::{BlockError, Disk, IoRequest};

/// An eventfd as a borrowed descriptor (vmm-sys-util's `EventFd` has no `AsFd`).
pub fn borrow_eventfd(eventfd: &EventFd) -> BorrowedFd<'_> {
    // SAFETY: `eventfd` owns the descriptor and outlives the borrow, which is tied to it.
    unsafe { BorrowedFd::borrow_raw(eventfd.as_raw_fd()) }
}

/// The outcome of one submitted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The value given to [`Engine::submit`].
    pub user_data: u64,
    /// Bytes transferred (the request's length for discard and write-zeroes, 0 for flush), or
    /// the errno to report (EIO, ENOSPC, EROFS, EINVAL ...).
    pub result: Result<u64, i32>,
}

/// What became of a request [`Engine::submit`] accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a request done inside `submit` is reported by nothing else"]
pub enum Submitted {
    /// The engine finished it inside `submit` and let go of it (and of its buffers): its
    /// result, as a [`Completion`] would carry it. No `reap` reports it.
    Done(Result<u64, i32>),
    /// The engine keeps it; its [`Completion`] comes from a later `reap`.
    Started,
}

/// Runs requests for one event loop; each iothread owns its engine.
///
/// Every request accepted by `submit` either finishes inside it ([`Submitted::Done`]: a null
/// disk, the synchronous engine, a request the checks refuse), which signals nothing and leaves
/// nothing to reap, so that the caller answers it on the spot; or produces exactly one
/// [`Completion`], collected by `reap`, and makes `completion_fd` readable if it finishes
/// after `submit` returned. A started request (and its buffers) is kept until it is reaped,
/// and its `disk` stays open until then: the engine keeps a reference to it, which it may
/// share among that disk's requests (a reference count per request would be touched by every
/// queue of the disk), and drops with the last one.
///
/// `reap` makes no system call of its own (besides submitting what a completion made ready),
/// so that a polling caller makes none per request; a caller woken by `completion_fd` clears it
/// with `clear_completion_fd` before it reaps.
pub trait Engine: Send {
    /// Executes, starts or queues a request. An error means the request was not accepted and
    /// will not complete; the caller must answer it itself.
    fn submit(
        &mut self,
        disk: &Arc<Disk>,
        request: IoRequest,
        user_data: u64,
    ) -> Result<Submitted, BlockError>;

    /// Hands queued requests to the kernel in one batch (a no-op for engines that execute at
    /// submit). Call it once per event loop pass, after the last `submit`.
    fn submit_pending(&mut self);

    /// An eventfd that becomes readable when started requests finish; None for engines that
    /// finish every request inside `submit`.
    fn completion_fd(&self) -> Option<BorrowedFd<'_>>;

    /// Clears `completion_fd` after it woke the caller; the caller then reaps, so that a
    /// completion signalled after the clear is either reaped now or wakes the caller again.
    fn clear_completion_fd(&mut self) {}

    /// Appends every available completion of a started request to `out`.
    fn reap(&mut self, out: &mut Vec<Completion>);
}
