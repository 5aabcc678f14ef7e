//! A queue host without threads: it serves a device's queues on whichever thread calls
//! [`InlineQueueHost::serve_ready`].
//!
//! It watches the same eventfds an iothread does (each worker's notifier and completion eventfds,
//! and the [`RecheckTimer`], edge-triggered in one epoll) and calls the same [`QueueWorker`]
//! methods, so a test that drives a device through it runs the code production runs: a driver's
//! notify write becomes a notifier write, which wakes only the worker of that queue, a round of
//! wake-ups that served queues ends with a look at every queue's avail ring, and a re-check a
//! worker asked for is served by the first `serve_ready` after it is due.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard, PoisonError};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::queue_worker::{QueueHost, QueueWorker, WorkerEvent};
use crate::recheck_timer::RecheckTimer;

/// How long `release_all` waits for completions before it looks at the workers again (ms).
const DRAIN_WAIT_MS: i32 = 10;
/// The epoll token of the re-check timer (worker tokens are far below it).
const RECHECK_TOKEN: u64 = u64::MAX;

/// A worker's epoll token: its slot, and in the low bit which of its eventfds fired.
fn token(slot: usize, wakeup: WorkerEvent) -> u64 {
    (slot as u64) << 1 | u64::from(wakeup == WorkerEvent::Completions)
}

fn slot_of(token: u64) -> (usize, WorkerEvent) {
    let wakeup = if token & 1 == 0 {
        WorkerEvent::Notifier
    } else {
        WorkerEvent::Completions
    };
    ((token >> 1) as usize, wakeup)
}

struct Workers {
    epoll: Epoll,
    /// Indexed by slot; a slot is never reused, so a stale token finds `None`.
    slots: Vec<Option<Box<dyn QueueWorker>>>,
    /// Why a worker could not be watched or its re-check booked (`adopt` cannot fail);
    /// `serve_ready` reports it.
    adopt_error: Option<io::Error>,
    rechecks: RecheckTimer,
    /// The slots of one expiry of `rechecks`, kept for the vector's capacity.
    due: Vec<usize>,
}

/// Serves adopted queues on the caller's thread; see the module documentation.
pub struct InlineQueueHost {
    workers: Mutex<Workers>,
}

impl InlineQueueHost {
    pub fn new() -> io::Result<InlineQueueHost> {
        let workers = Workers {
            epoll: Epoll::new()?,
            slots: Vec::new(),
            adopt_error: None,
            rechecks: RecheckTimer::new()?,
            due: Vec::new(),
        };
        if let Some(fd) = workers.rechecks.fd() {
            workers.watch(fd.as_raw_fd(), RECHECK_TOKEN)?;
        }
        Ok(InlineQueueHost {
            workers: Mutex::new(workers),
        })
    }

    fn workers(&self) -> MutexGuard<'_, Workers> {
        self.workers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Serves every queue whose notifier or completion eventfd fired, and every re-check that is
    /// due, until none is left; returns the wake-ups served as (virtqueue, true for a kick, false
    /// for completions). Re-checks are not listed: the rings show what they served.
    pub fn serve_ready(&self) -> io::Result<Vec<(u16, bool)>> {
        let mut workers = self.workers();
        if let Some(error) = workers.adopt_error.take() {
            return Err(error);
        }
        let mut served = Vec::new();
        let mut events = vec![EpollEvent::default(); workers.slots.len() * 2 + 1];
        loop {
            let count = workers.epoll.wait(0, &mut events)?;
            if count == 0 {
                return Ok(served);
            }
            let mut served_queues = false;
            for event in &events[..count] {
                if event.data() == RECHECK_TOKEN {
                    workers.recheck_due()?;
                    continue;
                }
                let (slot, wakeup) = slot_of(event.data());
                let Some(worker) = workers.slots.get_mut(slot).and_then(Option::as_mut) else {
                    continue;
                };
                wakeup.serve(&mut **worker);
                served.push((worker.queue_index(), wakeup == WorkerEvent::Notifier));
                workers.book(slot)?;
                served_queues = true;
            }
            if served_queues {
                workers.serve_waiting()?;
            }
        }
    }

    /// Starts a stretch of polling, as a polling iothread does: every queue asks its driver not
    /// to kick and is looked at by `poll` instead, and the re-checks they asked for are
    /// forgotten.
    pub fn start_polling(&self) -> io::Result<()> {
        self.workers().call_each(|worker| worker.start_polling())
    }

    /// One look at every queue while polling; true when one had work.
    pub fn poll(&self) -> bool {
        let mut served = false;
        for worker in self.workers().slots.iter_mut().flatten() {
            served |= worker.poll();
        }
        served
    }

    /// Ends the stretch of polling: notifications back on (as far as each queue asks) and the
    /// re-checks they want booked.
    pub fn stop_polling(&self) -> io::Result<()> {
        self.workers().call_each(|worker| worker.stop_polling())
    }

    /// The virtqueues being served, in adoption order.
    pub fn queues(&self) -> Vec<u16> {
        self.workers()
            .slots
            .iter()
            .flatten()
            .map(|worker| worker.queue_index())
            .collect()
    }

    /// Requests in flight on every queue.
    pub fn in_flight(&self) -> usize {
        self.workers()
            .slots
            .iter()
            .flatten()
            .map(|worker| worker.in_flight())
            .sum()
    }
}

impl Workers {
    /// Makes `call` into every worker, booking the re-check each asks for after it.
    fn call_each(&mut self, mut call: impl FnMut(&mut dyn QueueWorker)) -> io::Result<()> {
        for slot in 0..self.slots.len() {
            if let Some(worker) = self.slots[slot].as_mut() {
                call(&mut **worker);
                self.book(slot)?;
            }
        }
        Ok(())
    }

    /// Books the re-check the worker in `slot` asks for after a call into it.
    fn book(&mut self, slot: usize) -> io::Result<()> {
        match self.slots.get(slot).and_then(Option::as_ref) {
            Some(worker) => self.rechecks.book(slot, &**worker),
            None => Ok(()),
        }
    }

    /// After a round of wake-ups that served queues, the look at every queue's avail ring an
    /// iothread takes (`QueueWorker::serve_waiting`).
    fn serve_waiting(&mut self) -> io::Result<()> {
        for slot in 0..self.slots.len() {
            if let Some(worker) = self.slots[slot].as_mut() {
                if worker.serve_waiting() {
                    self.book(slot)?;
                }
            }
        }
        Ok(())
    }

    /// Serves the re-checks that are due.
    fn recheck_due(&mut self) -> io::Result<()> {
        let mut due = std::mem::take(&mut self.due);
        let result = self.rechecks.take_due(&mut due);
        for slot in due.drain(..) {
            if let Some(worker) = self.slots.get_mut(slot).and_then(Option::as_mut) {
                worker.recheck();
                self.book(slot)?;
            }
        }
        self.due = due;
        result
    }

    fn watch(&self, fd: i32, token: u64) -> io::Result<()> {
        let event = EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, token);
        self.epoll.ctl(ControlOperation::Add, fd, event)
    }

    fn unwatch(&self, worker: &dyn QueueWorker) {
        // Closing a worker's eventfds would drop them from the epoll too; the notifier
        // outlives the worker (the transport keeps it), so it is removed by hand.
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            worker.notifier().as_raw_fd(),
            EpollEvent::default(),
        );
        if let Some(fd) = worker.completion_fd() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                fd.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }
}

impl QueueHost for InlineQueueHost {
    /// Watches the worker's eventfds and serves it once, as an iothread does: the driver may
    /// have notified before the hand-over.
    fn adopt(&self, mut worker: Box<dyn QueueWorker>) {
        let mut workers = self.workers();
        let slot = workers.slots.len();
        let watched = workers
            .watch(
                worker.notifier().as_raw_fd(),
                token(slot, WorkerEvent::Notifier),
            )
            .and_then(|()| match worker.completion_fd() {
                Some(fd) => workers.watch(fd.as_raw_fd(), token(slot, WorkerEvent::Completions)),
                None => Ok(()),
            });
        if let Err(error) = watched {
            workers.unwatch(&*worker);
            workers.adopt_error = Some(error);
            return;
        }
        // As a queue set does: a worker handed over mid-polling stops polling.
        worker.stop_polling();
        worker.notifier_ready();
        workers.slots.push(Some(worker));
        if let Err(error) = workers.book(slot) {
            workers.adopt_error = Some(error);
        }
    }

    /// Completes what is in flight (serving completions only, as an iothread does on reset),
    /// then drops every worker.
    fn release_all(&self) {
        let mut workers = self.workers();
        let mut events = vec![EpollEvent::default(); workers.slots.len() * 2 + 1];
        while workers.slots.iter().flatten().any(|w| w.in_flight() > 0) {
            let Ok(count) = workers.epoll.wait(DRAIN_WAIT_MS, &mut events) else {
                break;
            };
            for event in &events[..count] {
                // The timer waits for its expiry to be taken before it arms again.
                if event.data() == RECHECK_TOKEN {
                    let mut due = std::mem::take(&mut workers.due);
                    if let Err(error) = workers.rechecks.take_due(&mut due) {
                        workers.adopt_error = Some(error);
                    }
                    due.clear();
                    workers.due = due;
                } else if let (slot, WorkerEvent::Completions) = slot_of(event.data()) {
                    if let Some(worker) = workers.slots.get_mut(slot).and_then(Option::as_mut) {
                        worker.completions_ready();
                    }
                }
            }
        }
        let released: Vec<_> = workers.slots.iter_mut().filter_map(Option::take).collect();
        for worker in released {
            workers.unwatch(&*worker);
        }
        for slot in 0..workers.slots.len() {
            workers.rechecks.forget(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::BorrowedFd;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;

    struct Recorder {
        queue: u16,
        notifier: Arc<EventFd>,
        completions: EventFd,
        in_flight: usize,
        recheck_in: Option<Duration>,
        rechecks: Arc<AtomicUsize>,
    }

    impl QueueWorker for Recorder {
        fn queue_index(&self) -> u16 {
            self.queue
        }
        fn notifier(&self) -> &Arc<EventFd> {
            &self.notifier
        }
        fn notifier_ready(&mut self) {
            let _ = self.notifier.read();
            self.in_flight += 1;
        }
        fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
            Some(block::borrow_eventfd(&self.completions))
        }
        fn completions_ready(&mut self) {
            let _ = self.completions.read();
            self.in_flight = 0;
        }
        fn in_flight(&self) -> usize {
            self.in_flight
        }
        fn recheck_in(&self) -> Option<Duration> {
            self.recheck_in
        }
        fn recheck(&mut self) {
            self.rechecks.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn recorder(queue: u16) -> (Box<Recorder>, Arc<EventFd>, EventFd) {
        let notifier = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let completions = EventFd::new(EFD_NONBLOCK).unwrap();
        let signal = completions.try_clone().unwrap();
        let worker = Recorder {
            queue,
            notifier: notifier.clone(),
            completions,
            in_flight: 0,
            recheck_in: None,
            rechecks: Arc::new(AtomicUsize::new(0)),
        };
        (Box::new(worker), notifier, signal)
    }

    #[test]
    fn a_recheck_booked_after_a_release_that_took_the_timers_expiry_is_served() {
        let host = InlineQueueHost::new().unwrap();
        let (mut first, _, completions) = recorder(2);
        first.recheck_in = Some(Duration::from_millis(1));
        host.adopt(first);
        std::thread::sleep(Duration::from_millis(5));
        // The release drains the completion and the timer's expiry together.
        completions.write(1).unwrap();
        host.release_all();
        let (mut second, _, _) = recorder(2);
        second.recheck_in = Some(Duration::from_millis(1));
        let rechecks = Arc::clone(&second.rechecks);
        host.adopt(second);
        let start = Instant::now();
        while rechecks.load(Ordering::SeqCst) == 0 && start.elapsed() < Duration::from_secs(5) {
            host.serve_ready().unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            rechecks.load(Ordering::SeqCst) > 0,
            "the timer was left waiting for an expiry that the release took"
        );
    }

    #[test]
    fn a_kick_wakes_only_its_queue_once() {
        let host = InlineQueueHost::new().unwrap();
        let (a, notifier_a, _) = recorder(0);
        let (b, _, _) = recorder(2);
        host.adopt(a);
        host.adopt(b);
        assert_eq!(host.queues(), [0, 2]);
        assert_eq!(host.in_flight(), 2, "adoption served each queue once");
        notifier_a.write(1).unwrap();
        notifier_a.write(1).unwrap();
        assert_eq!(host.serve_ready().unwrap(), [(0, true)]);
        assert!(host.serve_ready().unwrap().is_empty(), "edge-triggered");
    }

    #[test]
    fn release_waits_for_completions_and_ignores_kicks() {
        let host = InlineQueueHost::new().unwrap();
        let (worker, notifier, completions) = recorder(3);
        host.adopt(worker);
        notifier.write(1).unwrap();
        let finisher = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            completions.write(1).unwrap();
        });
        host.release_all();
        finisher.join().unwrap();
        assert!(host.queues().is_empty());
        assert_eq!(host.in_flight(), 0);
        notifier.write(1).unwrap();
        assert!(host.serve_ready().unwrap().is_empty(), "no longer watched");
    }
}
