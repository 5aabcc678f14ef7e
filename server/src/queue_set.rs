//! The queues one thread serves (an iothread, or the main loop): their notifier and completion
//! eventfds in one epoll, watched edge-triggered, the re-checks they asked for, and the workers
//! behind them.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use slog::{debug, error, trace, warn, FnValue, Logger};
use virtio::{QueueWorker, RecheckTimer, WorkerEvent};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Reserved for the owner of the set (an iothread's waker).
const OWNER_TOKEN: u64 = 0;
/// The re-check timerfd's, in a nested set (queue tokens are far below it).
const RECHECK_TOKEN: u64 = u64::MAX;
/// Each worker slot takes two tokens from here: its notifier, then its completions.
const FIRST_QUEUE_TOKEN: u64 = 1;
/// Events taken by one wait.
const EVENTS: usize = 64;
/// How long `drain` waits for completions before it checks the workers again.
const DRAIN_POLL: Duration = Duration::from_millis(10);

pub struct QueueSet {
    epoll: Epoll,
    /// `EVENTS` slots; the first `harvested` hold the last wait's events.
    events: Vec<EpollEvent>,
    harvested: usize,
    /// `epoll_pwait2` is missing (kernels before 5.11, valgrind before 3.20): waits time out in
    /// whole milliseconds, rounded up.
    millisecond_waits: bool,
    workers: Vec<Option<Box<dyn QueueWorker>>>,
    /// Time blocked waiting for events since `take_slept`.
    slept: Duration,
    /// Polling asked the drivers not to notify, and no `stop_polling` has asked them again.
    notifications_suppressed: bool,
    /// The last `serve_events` woke for re-checks alone.
    rechecked_only: bool,
    /// Booked for the set's own waits (an iothread's), or on a timerfd in the epoll (a set
    /// nested in its owner's loop).
    rechecks: RecheckTimer,
    /// The slots of one expiry of `rechecks`, kept for the vector's capacity.
    due: Vec<usize>,
    log: Logger,
}

/// What `QueueSet::poll_queues` came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polled {
    /// A queue had work, found after polling `waited` (zero: at the first look).
    Found { waited: Duration },
    /// The window ran out: notifications are back on.
    GaveUp,
    /// Not polled: the last wake-up was for re-checks alone, whose passes looked at their
    /// queues and asked for the next re-check or kick.
    Rechecked,
}

fn token(slot: usize, wakeup: WorkerEvent) -> u64 {
    let offset = match wakeup {
        WorkerEvent::Notifier | WorkerEvent::Recheck => 0,
        WorkerEvent::Completions => 1,
    };
    FIRST_QUEUE_TOKEN + 2 * slot as u64 + offset
}

fn slot_of(token: u64) -> Option<(usize, WorkerEvent)> {
    let n = token.checked_sub(FIRST_QUEUE_TOKEN)?;
    let wakeup = if n % 2 == 0 {
        WorkerEvent::Notifier
    } else {
        WorkerEvent::Completions
    };
    Some((usize::try_from(n / 2).ok()?, wakeup))
}

/// Watches `fd` edge-triggered: every write to an eventfd wakes the set again, whether or not
/// its counter was read since (request queues' notifiers are not).
fn watch(epoll: &Epoll, fd: RawFd, token: u64) -> io::Result<()> {
    let event = EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, token);
    epoll.ctl(ControlOperation::Add, fd, event)
}

fn unwatch(epoll: &Epoll, fd: RawFd) {
    let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
}

/// Books the re-check `worker` asks for after a call into it. Arming a timerfd with a valid
/// duration cannot fail; if it did, a batch shorter than the driver was told would wait for
/// the queue's next kick, so it is an error record.
fn book(rechecks: &mut RecheckTimer, log: &Logger, slot: usize, worker: &dyn QueueWorker) {
    if let Err(e) = rechecks.book(slot, worker) {
        error!(log, "cannot arm the re-check timer"; "iothread" => thread_name(), "vq" => worker.queue_index(), "error" => %e);
    }
}

/// The name the current thread was given (iothread names; "main" for the main loop).
pub(crate) fn thread_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_string()
}

impl QueueSet {
    /// A set whose thread waits in `serve_events`, which ends its waits at the earliest
    /// re-check, and wakes when `owner` is written.
    pub fn new(owner: &EventFd, log: &Logger) -> io::Result<QueueSet> {
        let set = QueueSet::with_rechecks(RecheckTimer::for_own_waits(), log)?;
        watch(&set.epoll, owner.as_raw_fd(), OWNER_TOKEN)?;
        Ok(set)
    }

    /// A set whose owner watches `poll_fd` in a loop of its own and calls `serve_ready`: the
    /// re-checks come from a timerfd in the set's epoll.
    pub fn nested(log: &Logger) -> io::Result<QueueSet> {
        let set = QueueSet::with_rechecks(RecheckTimer::new()?, log)?;
        if let Some(fd) = set.rechecks.fd() {
            watch(&set.epoll, fd.as_raw_fd(), RECHECK_TOKEN)?;
        }
        Ok(set)
    }

    fn with_rechecks(rechecks: RecheckTimer, log: &Logger) -> io::Result<QueueSet> {
        Ok(QueueSet {
            epoll: Epoll::new()?,
            events: vec![EpollEvent::default(); EVENTS],
            harvested: 0,
            millisecond_waits: false,
            workers: Vec::new(),
            slept: Duration::ZERO,
            notifications_suppressed: false,
            rechecked_only: false,
            rechecks,
            due: Vec::new(),
            log: log.clone(),
        })
    }

    /// The epoll's own descriptor: readable while an event waits (for nesting in another loop).
    pub fn poll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub fn len(&self) -> usize {
        self.workers.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts watching `worker`'s eventfds. The driver may have kicked before the hand-over,
    /// so the queue is served once at once.
    pub fn adopt(&mut self, mut worker: Box<dyn QueueWorker>) -> io::Result<()> {
        let slot = self
            .workers
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.workers.len());
        let notifier = worker.notifier().as_raw_fd();
        watch(&self.epoll, notifier, token(slot, WorkerEvent::Notifier))?;
        if let Some(fd) = worker.completion_fd() {
            let completions = token(slot, WorkerEvent::Completions);
            if let Err(e) = watch(&self.epoll, fd.as_raw_fd(), completions) {
                unwatch(&self.epoll, notifier);
                return Err(e);
            }
        }
        debug!(self.log, "queue adopted"; "iothread" => thread_name(), "vq" => worker.queue_index());
        // Handed over in the middle of its old set's polling, it would keep notifications off
        // here, where nothing polls it yet.
        worker.stop_polling();
        worker.notifier_ready();
        book(&mut self.rechecks, &self.log, slot, &*worker);
        if slot == self.workers.len() {
            self.workers.push(Some(worker));
        } else {
            self.workers[slot] = Some(worker);
        }
        Ok(())
    }

    /// Waits up to `timeout` for events (and, in a set that waits by itself, no later than
    /// the earliest re-check) and serves them; true when the owner's token fired.
    pub fn serve_events(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        if timeout == Some(Duration::ZERO) {
            self.wait(timeout)?;
        } else {
            let start = Instant::now();
            let timeout = match (self.own_next_due(), timeout) {
                (None, timeout) => timeout,
                (Some(due), None) => Some(due.saturating_duration_since(start)),
                (Some(due), Some(timeout)) => {
                    Some(timeout.min(due.saturating_duration_since(start)))
                }
            };
            let result = self.wait(timeout);
            self.slept += start.elapsed();
            result?;
        }
        let mut owner = false;
        let mut rechecked = false;
        let mut served = false;
        for index in 0..self.harvested {
            let token = self.events[index].data();
            if token == OWNER_TOKEN {
                owner = true;
            } else if token == RECHECK_TOKEN {
                rechecked = true;
                self.recheck_due();
            } else if let Some((slot, wakeup)) = slot_of(token) {
                served = true;
                self.serve(slot, wakeup);
            }
        }
        if self.own_next_due().is_some_and(|due| due <= Instant::now()) {
            rechecked = true;
            self.recheck_due();
        }
        if served && !self.notifications_suppressed {
            self.serve_waiting();
        }
        self.rechecked_only = rechecked && !served && !owner;
        Ok(owner)
    }

    /// After a wake-up that served queues: one look at every queue's avail ring, serving the
    /// chains that wait there. One thread's queues are kicked apart (each driver kicks when its
    /// own answers came), so while the thread serves one, another's driver sends its batch;
    /// served now, it costs no wake-up of its own. Its kick, if the driver sent one, still
    /// reaches the epoll and finds nothing, and a queue whose driver sends nothing was left
    /// asking for its kick by its last pass, as after any kick.
    fn serve_waiting(&mut self) {
        for (slot, worker) in self.workers.iter_mut().enumerate() {
            let Some(worker) = worker else {
                continue;
            };
            if worker.serve_waiting() {
                trace!(self.log, "queue served";
                    "iothread" => FnValue(|_| thread_name()), "vq" => worker.queue_index(),
                    "wakeup" => "look", "in_flight" => worker.in_flight());
                book(&mut self.rechecks, &self.log, slot, &**worker);
            }
        }
    }

    /// The earliest re-check, in a set that times its own waits for them.
    fn own_next_due(&self) -> Option<Instant> {
        match self.rechecks.fd() {
            Some(_) => None,
            None => self.rechecks.next_due(),
        }
    }

    /// One wait, whose events are then the first `harvested`: `epoll_pwait2`, for timeouts in
    /// nanoseconds (a re-check is due some tens of microseconds ahead), or where that is missing
    /// `epoll_wait`, with the timeout rounded up to a millisecond.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.harvested = 0;
        if !self.millisecond_waits {
            match self.wait_nanoseconds(timeout) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    warn!(self.log, "epoll_pwait2 is missing: re-checks wait for whole milliseconds";
                        "iothread" => thread_name());
                    self.millisecond_waits = true;
                }
                result => return result,
            }
        }
        let milliseconds = timeout.map_or(-1, |timeout| {
            let ms = timeout.as_nanos().div_ceil(1_000_000);
            i32::try_from(ms).unwrap_or(i32::MAX)
        });
        self.harvested = self.epoll.wait(milliseconds, &mut self.events)?;
        Ok(())
    }

    fn wait_nanoseconds(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let timespec = timeout.map(|timeout| libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
        });
        let timespec_ptr = timespec.as_ref().map_or(std::ptr::null(), |timespec| {
            timespec as *const libc::timespec
        });
        let capacity = libc::c_int::try_from(self.events.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: the epoll descriptor is open for as long as `self`; `EpollEvent` is a
        // transparent `epoll_event`, and the kernel writes at most `capacity` of them into
        // `events`, which holds that many; the timespec, when given, lives across the call; a
        // null signal mask leaves the mask as it is.
        let count = unsafe {
            libc::epoll_pwait2(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr().cast::<libc::epoll_event>(),
                capacity,
                timespec_ptr,
                std::ptr::null(),
            )
        };
        self.harvested = usize::try_from(count).map_err(|_| io::Error::last_os_error())?;
        Ok(())
    }

    /// The time spent blocked in `serve_events` since the last `take_slept`.
    pub fn slept(&self) -> Duration {
        self.slept
    }

    /// The time spent blocked in `serve_events` since the last call.
    pub fn take_slept(&mut self) -> Duration {
        std::mem::take(&mut self.slept)
    }

    /// Serves whatever is ready without waiting, for an owner that watches `poll_fd` in a
    /// `Poll` of its own. One look takes it all unless it filled the events buffer: the owner's
    /// `Poll` watches this epoll edge-triggered, and every event that reaches this one after the
    /// look makes it readable there again.
    pub fn serve_ready(&mut self) -> io::Result<()> {
        loop {
            self.serve_events(Some(Duration::ZERO))?;
            if self.harvested < self.events.len() {
                return Ok(());
            }
        }
    }

    /// Serves every queue as if kicked: after a pause, kicks that arrived meanwhile were taken
    /// off the epoll without being served.
    pub fn serve_all(&mut self) {
        for slot in 0..self.workers.len() {
            self.serve(slot, WorkerEvent::Notifier);
        }
    }

    /// Serves the re-checks that are due.
    fn recheck_due(&mut self) {
        let mut due = std::mem::take(&mut self.due);
        if let Err(e) = self.rechecks.take_due(&mut due) {
            error!(self.log, "cannot arm the re-check timer"; "iothread" => thread_name(), "error" => %e);
        }
        for slot in due.drain(..) {
            self.serve(slot, WorkerEvent::Recheck);
        }
        self.due = due;
    }

    /// Takes the due re-checks without serving them (a drain: `serve_all` follows).
    fn skip_due_rechecks(&mut self) {
        if let Err(e) = self.rechecks.take_due(&mut self.due) {
            error!(self.log, "cannot arm the re-check timer"; "iothread" => thread_name(), "error" => %e);
        }
        self.due.clear();
    }

    fn serve(&mut self, slot: usize, wakeup: WorkerEvent) {
        let Some(worker) = self.workers.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        wakeup.serve(&mut **worker);
        trace!(self.log, "queue served";
            "iothread" => FnValue(|_| thread_name()), "vq" => worker.queue_index(),
            "wakeup" => match wakeup {
                WorkerEvent::Notifier => "notifier",
                WorkerEvent::Completions => "completions",
                WorkerEvent::Recheck => "recheck",
            },
            "in_flight" => worker.in_flight());
        book(&mut self.rechecks, &self.log, slot, &**worker);
    }

    /// Polls every queue for up to `window` with driver notifications suppressed. `Found`
    /// when one had work (notifications stay suppressed: poll again), with the time polling
    /// waited for it; `GaveUp` when the window ran out: notifications are back on and whatever
    /// raced in has been served.
    ///
    /// Work found by the first look costs no clock read, and notifications already suppressed
    /// by the previous call are not suppressed again: under load a pass is the queues' own work.
    ///
    /// After a wake-up for re-checks alone it does not poll (`Rechecked`): a busy queue that
    /// polling gave up on lets its driver send a batch unannounced and looks again on a timer,
    /// and a window spun after each of those looks took turns with the vCPUs for the cores
    /// (a TCG guest at depth 64 lost a third of its IOPS to it).
    pub fn poll_queues(&mut self, window: Duration) -> Polled {
        if !self.notifications_suppressed && self.rechecked_only {
            return Polled::Rechecked;
        }
        if !self.notifications_suppressed {
            // Polling looks by itself: a re-check booked by the last pass is forgotten.
            for (slot, worker) in self.workers.iter_mut().enumerate() {
                if let Some(worker) = worker {
                    worker.start_polling();
                    book(&mut self.rechecks, &self.log, slot, &**worker);
                }
            }
            self.notifications_suppressed = true;
        }
        let mut first_miss: Option<Instant> = None;
        let mut last_miss: Option<Instant> = None;
        loop {
            if self.poll_once() {
                let waited = match (first_miss, last_miss) {
                    (Some(first), Some(last)) => last.duration_since(first),
                    _ => Duration::ZERO,
                };
                return Polled::Found { waited };
            }
            let now = Instant::now();
            let first = *first_miss.get_or_insert(now);
            if now.duration_since(first) >= window {
                break;
            }
            last_miss = Some(now);
            std::hint::spin_loop();
        }
        self.stop_polling();
        Polled::GaveUp
    }

    /// One look at every queue; true when one had work.
    fn poll_once(&mut self) -> bool {
        let mut served = false;
        for worker in self.workers.iter_mut().flatten() {
            if worker.poll() {
                served = true;
                trace!(self.log, "queue served";
                    "iothread" => FnValue(|_| thread_name()), "vq" => worker.queue_index(),
                    "wakeup" => "poll", "in_flight" => worker.in_flight());
            }
        }
        served
    }

    /// Turns driver notifications back on after polling, if polling had turned them off, and
    /// serves what raced in: due before any sleep.
    pub fn stop_polling(&mut self) {
        if !std::mem::take(&mut self.notifications_suppressed) {
            return;
        }
        for (slot, worker) in self.workers.iter_mut().enumerate() {
            if let Some(worker) = worker {
                worker.stop_polling();
                book(&mut self.rechecks, &self.log, slot, &**worker);
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.workers.iter().flatten().map(|w| w.in_flight()).sum()
    }

    /// Completes every request in flight, taking no new ones: kicks and due re-checks are taken
    /// off the epoll but not served (`serve_all` serves every queue later). The re-check timer
    /// is still told of its expiry, which it waits for before it arms again.
    pub fn drain(&mut self) {
        while self.in_flight() > 0 {
            match self.wait(Some(DRAIN_POLL)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(self.log, "cannot wait for completions"; "iothread" => thread_name(), "error" => %e);
                    return;
                }
            }
            for index in 0..self.harvested {
                let token = self.events[index].data();
                if token == RECHECK_TOKEN {
                    self.skip_due_rechecks();
                } else if let Some((slot, WorkerEvent::Completions)) = slot_of(token) {
                    self.serve(slot, WorkerEvent::Completions);
                }
            }
        }
    }

    /// Hands virtqueue `queue` over to another thread: the set's requests in flight complete
    /// first, then the queue is no longer watched here. `None` when the set does not hold it.
    /// Like `drain`, it leaves the other queues' kicks for `serve_all`.
    pub fn surrender(&mut self, queue: u16) -> Option<Box<dyn QueueWorker>> {
        let slot = self
            .workers
            .iter()
            .position(|worker| worker.as_ref().is_some_and(|w| w.queue_index() == queue))?;
        self.drain();
        let worker = self.workers[slot].take()?;
        self.rechecks.forget(slot);
        self.unwatch(&*worker);
        debug!(self.log, "queue handed off"; "iothread" => thread_name(), "vq" => queue);
        Some(worker)
    }

    /// Stops watching `worker`'s eventfds: the notifier outlives the worker (the transport
    /// keeps it), so closing does not take it off the epoll.
    fn unwatch(&self, worker: &dyn QueueWorker) {
        unwatch(&self.epoll, worker.notifier().as_raw_fd());
        if let Some(fd) = worker.completion_fd() {
            unwatch(&self.epoll, fd.as_raw_fd());
        }
    }

    /// Completes what is in flight, stops watching every queue and drops the workers.
    pub fn release(&mut self) {
        self.drain();
        for slot in 0..self.workers.len() {
            self.rechecks.forget(slot);
        }
        for worker in std::mem::take(&mut self.workers).into_iter().flatten() {
            self.unwatch(&*worker);
            debug!(self.log, "queue released"; "iothread" => thread_name(), "vq" => worker.queue_index());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::BorrowedFd;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;

    /// A set that waits by itself, as an iothread's does (its owner's eventfd is not kept).
    fn own_set(log: &Logger) -> QueueSet {
        QueueSet::new(&EventFd::new(EFD_NONBLOCK).unwrap(), log).unwrap()
    }

    /// Counts the polling calls; `poll` finds work on its `work_on`-th call. Like a request
    /// queue, it leaves polling only if it was polling.
    struct PollingWorker {
        notifier: Arc<EventFd>,
        work_on: usize,
        calls: Arc<[AtomicUsize; 3]>,
        polling: bool,
    }

    const STARTED: usize = 0;
    const POLLED: usize = 1;
    const STOPPED: usize = 2;

    impl QueueWorker for PollingWorker {
        fn queue_index(&self) -> u16 {
            2
        }
        fn notifier(&self) -> &Arc<EventFd> {
            &self.notifier
        }
        fn notifier_ready(&mut self) {}
        fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
            None
        }
        fn completions_ready(&mut self) {}
        fn in_flight(&self) -> usize {
            0
        }
        fn start_polling(&mut self) {
            self.polling = true;
            self.calls[STARTED].fetch_add(1, Ordering::SeqCst);
        }
        fn poll(&mut self) -> bool {
            self.calls[POLLED].fetch_add(1, Ordering::SeqCst) + 1 == self.work_on
        }
        fn stop_polling(&mut self) {
            if std::mem::take(&mut self.polling) {
                self.calls[STOPPED].fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn set_with(work_on: usize) -> (QueueSet, Arc<[AtomicUsize; 3]>) {
        set_adopting(work_on, false)
    }

    /// A set that adopted a `PollingWorker` whose old set was polling it or not.
    fn set_adopting(work_on: usize, polling: bool) -> (QueueSet, Arc<[AtomicUsize; 3]>) {
        let log = Logger::root(slog::Discard, slog::o!());
        let mut set = own_set(&log);
        let calls = Arc::new([
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        ]);
        let worker = PollingWorker {
            notifier: Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()),
            work_on,
            calls: calls.clone(),
            polling,
        };
        set.adopt(Box::new(worker)).unwrap();
        (set, calls)
    }

    /// Asks for a re-check after each kick, and for none after the re-check; a kick also
    /// starts a request that completes when `completions` is written.
    struct RecheckingWorker {
        notifier: Arc<EventFd>,
        completions: EventFd,
        in_flight: usize,
        asks: bool,
        rechecks: Arc<AtomicUsize>,
    }

    /// A set serving one `RecheckingWorker`: its notifier, its completions eventfd and its
    /// count of re-checks.
    fn rechecking_set() -> (QueueSet, Arc<EventFd>, EventFd, Arc<AtomicUsize>) {
        let log = Logger::root(slog::Discard, slog::o!());
        rechecking(own_set(&log))
    }

    /// `rechecking_set` for a set nested in its owner's loop: re-checks on a timerfd.
    fn nested_rechecking_set() -> (QueueSet, Arc<EventFd>, EventFd, Arc<AtomicUsize>) {
        let log = Logger::root(slog::Discard, slog::o!());
        rechecking(QueueSet::nested(&log).unwrap())
    }

    fn rechecking(mut set: QueueSet) -> (QueueSet, Arc<EventFd>, EventFd, Arc<AtomicUsize>) {
        let notifier = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let completions = EventFd::new(EFD_NONBLOCK).unwrap();
        let rechecks = Arc::new(AtomicUsize::new(0));
        let worker = RecheckingWorker {
            notifier: Arc::clone(&notifier),
            completions: completions.try_clone().unwrap(),
            in_flight: 0,
            asks: false,
            rechecks: Arc::clone(&rechecks),
        };
        set.adopt(Box::new(worker)).unwrap();
        (set, notifier, completions, rechecks)
    }

    impl QueueWorker for RecheckingWorker {
        fn queue_index(&self) -> u16 {
            2
        }
        fn notifier(&self) -> &Arc<EventFd> {
            &self.notifier
        }
        fn notifier_ready(&mut self) {
            let _ = self.notifier.read();
            self.asks = true;
            self.in_flight = 1;
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
            self.asks.then_some(Duration::from_millis(2))
        }
        fn recheck(&mut self) {
            self.asks = false;
            self.rechecks.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// `rechecking_set`, kicked once: its notifier and its re-check count.
    fn kicked_rechecking_set() -> (QueueSet, Arc<EventFd>, Arc<AtomicUsize>) {
        let (mut set, notifier, _, rechecks) = rechecking_set();
        notifier.write(1).unwrap();
        set.serve_events(Some(Duration::ZERO)).unwrap();
        (set, notifier, rechecks)
    }

    /// Sleeps in `set` until the re-check was served; how long that took.
    fn sleep_until_rechecked(set: &mut QueueSet, rechecks: &AtomicUsize) -> Duration {
        let start = Instant::now();
        while rechecks.load(Ordering::SeqCst) == 0 && start.elapsed() < Duration::from_secs(5) {
            set.serve_events(None).unwrap();
        }
        assert_eq!(rechecks.load(Ordering::SeqCst), 1);
        start.elapsed()
    }

    /// A queue whose ring is a count of chains the driver made available (`published`) and
    /// served (`served`); serving queue `sends_to`, when set, makes its driver send a chain and
    /// kick, as a driver does while the thread serves another queue.
    struct RingWorker {
        notifier: Arc<EventFd>,
        ring: Arc<Ring>,
        sends_to: Option<(Arc<Ring>, Arc<EventFd>)>,
    }

    #[derive(Default)]
    struct Ring {
        published: AtomicUsize,
        served: AtomicUsize,
        /// Every pass, whatever woke it.
        passes: AtomicUsize,
    }

    impl RingWorker {
        fn serve_available(&mut self) {
            self.ring.passes.fetch_add(1, Ordering::SeqCst);
            let published = self.ring.published.load(Ordering::SeqCst);
            self.ring.served.store(published, Ordering::SeqCst);
            if let Some((ring, notifier)) = &self.sends_to {
                ring.published.fetch_add(1, Ordering::SeqCst);
                notifier.write(1).unwrap();
            }
        }
    }

    impl QueueWorker for RingWorker {
        fn queue_index(&self) -> u16 {
            2
        }
        fn notifier(&self) -> &Arc<EventFd> {
            &self.notifier
        }
        fn notifier_ready(&mut self) {
            self.serve_available();
        }
        fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
            None
        }
        fn completions_ready(&mut self) {}
        fn in_flight(&self) -> usize {
            0
        }
        fn serve_waiting(&mut self) -> bool {
            let waiting = self.ring.published.load(Ordering::SeqCst)
                != self.ring.served.load(Ordering::SeqCst);
            if waiting {
                self.serve_available();
            }
            waiting
        }
    }

    #[test]
    fn a_kick_that_arrives_while_another_queue_is_served_is_served_in_the_same_wake_up() {
        let log = Logger::root(slog::Discard, slog::o!());
        let mut set = own_set(&log);
        let (a, b) = (Arc::new(Ring::default()), Arc::new(Ring::default()));
        let a_notifier = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let b_notifier = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let b_worker = RingWorker {
            notifier: Arc::clone(&b_notifier),
            ring: Arc::clone(&b),
            sends_to: None,
        };
        set.adopt(Box::new(b_worker)).unwrap();
        let a_worker = RingWorker {
            notifier: Arc::clone(&a_notifier),
            ring: Arc::clone(&a),
            sends_to: Some((Arc::clone(&b), Arc::clone(&b_notifier))),
        };
        // Adoption serves a once, which sends b a chain: served by b's kick here.
        set.adopt(Box::new(a_worker)).unwrap();
        set.serve_ready().unwrap();
        assert_eq!(b.served.load(Ordering::SeqCst), 1);
        let passes = |ring: &Ring| ring.passes.load(Ordering::SeqCst);
        let (a_passes, b_passes) = (passes(&a), passes(&b));
        // A kick for a; b's driver sends and kicks while a is served.
        a.published.store(1, Ordering::SeqCst);
        a_notifier.write(1).unwrap();
        set.serve_events(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(passes(&a), a_passes + 1);
        assert_eq!(
            b.served.load(Ordering::SeqCst),
            2,
            "b's chain waits for a wake-up of its own"
        );
        assert_eq!(passes(&b), b_passes + 1);
        // b's kick still wakes the set, once, and its pass finds nothing new.
        let served = b.served.load(Ordering::SeqCst);
        set.serve_events(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(passes(&b), b_passes + 2);
        assert_eq!(b.served.load(Ordering::SeqCst), served, "served twice");
        // Then the set sleeps: nothing is left to wake it.
        set.serve_events(Some(Duration::from_millis(20))).unwrap();
        assert_eq!((passes(&a), passes(&b)), (a_passes + 1, b_passes + 2));
    }

    #[test]
    fn a_sleeping_set_wakes_for_the_recheck_a_worker_asked_for_and_only_once() {
        let (mut set, _notifier, rechecks) = kicked_rechecking_set();
        assert_eq!(rechecks.load(Ordering::SeqCst), 0, "not due yet");
        assert!(sleep_until_rechecked(&mut set, &rechecks) >= Duration::from_millis(1));
        set.serve_events(Some(Duration::from_millis(20))).unwrap();
        assert_eq!(rechecks.load(Ordering::SeqCst), 1, "not asked for again");
    }

    #[test]
    fn a_recheck_moved_later_by_a_kick_does_not_wake_the_set_at_its_old_time() {
        let (mut set, notifier, rechecks) = kicked_rechecking_set();
        // Half-way to the re-check, a kick moves it 2 ms later.
        std::thread::sleep(Duration::from_millis(1));
        notifier.write(1).unwrap();
        set.serve_events(Some(Duration::ZERO)).unwrap();
        let moved_at = Instant::now();
        // The first wake-up after that is the re-check, at its new time: no timer armed for
        // the old one fires meanwhile (nor was armed: a deadline that moves costs nothing).
        set.serve_events(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(
            rechecks.load(Ordering::SeqCst),
            1,
            "woken at the old re-check time, with nothing due"
        );
        assert!(moved_at.elapsed() >= Duration::from_millis(1));
    }

    #[test]
    fn without_epoll_pwait2_the_set_still_wakes_for_its_kicks_and_rechecks() {
        let (mut set, notifier, rechecks) = kicked_rechecking_set();
        // As where the kernel or valgrind answers ENOSYS.
        set.millisecond_waits = true;
        assert!(sleep_until_rechecked(&mut set, &rechecks) >= Duration::from_millis(1));
        notifier.write(1).unwrap();
        let owner = set.serve_events(Some(Duration::from_secs(5))).unwrap();
        assert!(!owner);
        assert_eq!(set.harvested, 1, "the kick");
    }

    #[test]
    fn a_nested_set_is_rechecked_through_its_timerfd() {
        let (mut set, notifier, _, rechecks) = nested_rechecking_set();
        notifier.write(1).unwrap();
        set.serve_ready().unwrap();
        assert!(sleep_until_rechecked(&mut set, &rechecks) >= Duration::from_millis(1));
    }

    #[test]
    fn a_wake_up_for_rechecks_alone_is_not_followed_by_polling() {
        let (mut set, notifier, rechecks) = kicked_rechecking_set();
        let window = Duration::from_millis(1);
        assert_eq!(set.poll_queues(window), Polled::GaveUp, "a kick: polled");
        sleep_until_rechecked(&mut set, &rechecks);
        assert_eq!(set.poll_queues(window), Polled::Rechecked);
        notifier.write(1).unwrap();
        set.serve_events(Some(Duration::ZERO)).unwrap();
        assert_eq!(
            set.poll_queues(window),
            Polled::GaveUp,
            "a kick again: polled"
        );
    }

    #[test]
    fn a_recheck_owed_after_a_drain_took_the_timers_expiry_is_served() {
        let (mut set, _, completions, rechecks) = nested_rechecking_set();
        // The re-check asked for at adoption falls due while the request is in flight; the
        // drain (a pause) takes its expiry together with the completion.
        std::thread::sleep(Duration::from_millis(5));
        completions.write(1).unwrap();
        set.drain();
        assert_eq!(
            rechecks.load(Ordering::SeqCst),
            0,
            "a drain serves no re-check"
        );
        // The resume serves every queue, which asks for a re-check again.
        set.serve_all();
        set.serve_events(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(
            rechecks.load(Ordering::SeqCst),
            1,
            "the timer was left waiting for an expiry that the drain took"
        );
    }

    #[test]
    fn polling_that_finds_work_keeps_notifications_off() {
        let (mut set, calls) = set_with(3);
        assert!(matches!(
            set.poll_queues(Duration::from_secs(5)),
            Polled::Found { waited } if waited > Duration::ZERO
        ));
        assert_eq!(calls[STARTED].load(Ordering::SeqCst), 1);
        assert_eq!(calls[POLLED].load(Ordering::SeqCst), 3);
        assert_eq!(calls[STOPPED].load(Ordering::SeqCst), 0);
    }

    #[test]
    fn notifications_suppressed_by_polling_are_not_suppressed_again_until_turned_on() {
        let (mut set, calls) = set_with(1);
        assert_eq!(
            set.poll_queues(Duration::from_secs(5)),
            Polled::Found {
                waited: Duration::ZERO
            },
            "found at the first look"
        );
        assert_eq!(set.poll_queues(Duration::from_millis(1)), Polled::GaveUp);
        assert_eq!(calls[STARTED].load(Ordering::SeqCst), 1);
        assert_eq!(calls[STOPPED].load(Ordering::SeqCst), 1);
        set.stop_polling();
        assert_eq!(calls[STOPPED].load(Ordering::SeqCst), 1, "already on");
        assert_eq!(set.poll_queues(Duration::from_millis(1)), Polled::GaveUp);
        assert_eq!(calls[STARTED].load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_queue_handed_over_in_the_middle_of_polling_turns_notifications_on_at_adoption() {
        let (_, calls) = set_adopting(usize::MAX, true);
        assert_eq!(calls[STOPPED].load(Ordering::SeqCst), 1);
        let (_, calls) = set_adopting(usize::MAX, false);
        assert_eq!(calls[STOPPED].load(Ordering::SeqCst), 0);
    }

    #[test]
    fn polling_gives_up_after_the_window_and_turns_notifications_on() {
        let (mut set, calls) = set_with(usize::MAX);
        let start = Instant::now();
        assert_eq!(set.poll_queues(Duration::from_millis(2)), Polled::GaveUp);
        assert!(start.elapsed() >= Duration::from_millis(2));
        assert!(
            calls[POLLED].load(Ordering::SeqCst) > 1,
            "polled until the window ran out"
        );
        assert_eq!(calls[STOPPED].load(Ordering::SeqCst), 1);
    }
}
