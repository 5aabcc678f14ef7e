//! How a device hands its queues to the threads that serve them.
//!
//! The crate knows no threads: at activation a device gives each queue's [`QueueWorker`] to a
//! [`QueueHost`], which decides where it runs (the server's main loop or an iothread; the
//! caller's thread for [`crate::InlineQueueHost`]) and watches its notifier and its
//! completion eventfd there. It is the only way a queue is served. On reset the device asks the
//! host to give every worker back, with nothing left in flight, before the reset becomes
//! visible.
//!
//! Names, one meaning each: a *kick* is one driver notification of a queue (a notify write, or
//! a write to the eventfd handed out for it), and `kicks` count them; the *notifier* is the
//! queue's eventfd that kicks land in; `notifier_ready` is what the host calls when it fired.

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

/// Everything needed to serve one virtqueue, movable to the thread that serves it.
pub trait QueueWorker: Send {
    /// Virtqueue index (for virtio-scsi: 0 control, 1 event, 2.. request queues).
    fn queue_index(&self) -> u16;
    /// Written on every driver notification; the host watches it.
    fn notifier(&self) -> &Arc<EventFd>;
    /// The notifier was written (or the host was told of a notification): serve what is
    /// there. Hosts watch the notifier edge-triggered, so that each write wakes them again
    /// whether or not the worker cleared its counter.
    fn notifier_ready(&mut self);
    /// An eventfd readable while I/O completions wait, for workers that do asynchronous I/O.
    fn completion_fd(&self) -> Option<BorrowedFd<'_>>;
    /// `completion_fd` became readable: finish what completed and interrupt once if needed.
    fn completions_ready(&mut self);
    /// Requests handed to the I/O engine and not yet completed.
    fn in_flight(&self) -> usize;

    /// Enters polling: the driver is asked not to notify, `poll` looks for work instead.
    /// Queues that are not worth polling keep notifications on (the default).
    fn start_polling(&mut self) {}
    /// One look at the avail ring and the engine's completions, serving what is there; true
    /// when something was.
    fn poll(&mut self) -> bool {
        false
    }
    /// Leaves polling: notifications back on, and what arrived in between served.
    fn stop_polling(&mut self) {}

    /// A look at the avail ring by a host that is awake for another reason (it serves other
    /// queues on the same thread): when chains wait, they are served as a kick's pass serves
    /// them, notifications left as such a pass leaves them, and the answer is true. The kick
    /// that may be on its way for them still wakes the host, whose pass then finds nothing.
    /// Queues that are not worth the look (and polling ones, which look by themselves) answer
    /// false (the default).
    fn serve_waiting(&mut self) -> bool {
        false
    }

    /// How soon the host must call `recheck` if nothing else woke the queue first: `Some` while
    /// the driver was told it need not kick for every chain, so that a batch shorter than it
    /// was told is never stranded. The host asks after every call it makes into the worker
    /// (`poll` aside: polling looks by itself and ends with `stop_polling`; and a
    /// `serve_waiting` that found nothing, which changed nothing).
    fn recheck_in(&self) -> Option<Duration> {
        None
    }
    /// The time `recheck_in` asked for is up: serve what the driver made available meanwhile.
    fn recheck(&mut self) {}
}

/// What a host calls a worker for: one of the eventfds it watches for the worker fired, or
/// the re-check the worker asked for is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerEvent {
    Notifier,
    Completions,
    Recheck,
}

impl WorkerEvent {
    /// Makes the worker's call for this event.
    #[inline]
    pub fn serve(self, worker: &mut dyn QueueWorker) {
        match self {
            WorkerEvent::Notifier => worker.notifier_ready(),
            WorkerEvent::Completions => worker.completions_ready(),
            WorkerEvent::Recheck => worker.recheck(),
        }
    }
}

/// Whoever serves a device's queues.
pub trait QueueHost: Send + Sync {
    /// Takes a worker at activation and starts serving its queue.
    fn adopt(&self, worker: Box<dyn QueueWorker>);
    /// Stops serving every adopted queue: waits for the requests in flight to complete, then
    /// drops the workers. Returns when no thread touches the queues any more.
    fn release_all(&self);
}
