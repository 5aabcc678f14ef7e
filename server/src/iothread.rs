//! One iothread: a named thread with its own epoll serving the queues handed to it, and a
//! control channel (a channel plus an eventfd the epoll watches) through which the main loop
//! hands queues over, pauses it, takes its queues back and stops it.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use slog::{debug, error, Logger};
use virtio::QueueWorker;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::poll_window::PollWindow;
use crate::queue_set::{thread_name, Polled, QueueSet};

enum IothreadMessage {
    Adopt(Box<dyn QueueWorker>),
    /// Complete the requests in flight, acknowledge, then touch no queue until `Resume`.
    Pause(Sender<()>),
    Resume,
    /// Complete the requests in flight, drop every queue, acknowledge.
    Release(Sender<()>),
    /// Complete the requests in flight and send virtqueue N's worker back (if held here).
    Surrender(u16, Sender<Option<Box<dyn QueueWorker>>>),
    Shutdown,
}

/// Where an iothread's time went, written only by the iothread (relaxed loads and stores) on
/// cache lines of its own.
#[repr(align(128))]
#[derive(Debug, Default)]
struct TimeCounters {
    /// Serving queues and messages.
    busy_ns: AtomicU64,
    /// Polling queues that had no work.
    poll_ns: AtomicU64,
    /// Blocked waiting for an event.
    sleep_ns: AtomicU64,
}

/// How often an iothread whose polling keeps finding work still looks at its epoll.
const EVENT_LOOK_INTERVAL: Duration = Duration::from_micros(50);

fn add(counter: &AtomicU64, time: Duration) {
    let ns = u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(ns),
        Ordering::Relaxed,
    );
}

/// A copy of an iothread's time counters, in nanoseconds since it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IothreadStats {
    pub name: String,
    pub busy_ns: u64,
    pub poll_ns: u64,
    pub sleep_ns: u64,
}

pub struct Iothread {
    name: String,
    time: Arc<TimeCounters>,
    messages: Sender<IothreadMessage>,
    /// Set after each message sent, before the waker fires.
    pending: Arc<AtomicBool>,
    /// Written after each message; the thread's set watches it.
    waker: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Iothread {
    /// Starts a thread called `name` (as /proc/<pid>/task/*/comm shows it, cut to 15 bytes)
    /// that polls busy queues for up to `poll_max_ns` before it sleeps (0: never polls).
    pub fn spawn(name: &str, poll_max_ns: u64, log: &Logger) -> io::Result<Iothread> {
        let waker = EventFd::new(EFD_NONBLOCK)?;
        let set = QueueSet::new(&waker, log)?;
        let (messages, receiver) = channel();
        let thread_log = log.clone();
        let time = Arc::new(TimeCounters::default());
        let thread_time = Arc::clone(&time);
        let pending = Arc::new(AtomicBool::new(false));
        let inbox = Inbox {
            receiver,
            pending: Arc::clone(&pending),
        };
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let window = PollWindow::new(poll_max_ns);
                run(set, &inbox, window, &thread_time, &thread_log)
            })?;
        debug!(log, "iothread started"; "iothread" => name);
        Ok(Iothread {
            name: name.to_string(),
            time,
            messages,
            pending,
            waker,
            thread: Some(thread),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> IothreadStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        IothreadStats {
            name: self.name.clone(),
            busy_ns: load(&self.time.busy_ns),
            poll_ns: load(&self.time.poll_ns),
            sleep_ns: load(&self.time.sleep_ns),
        }
    }

    /// Sends a message; false when the thread is gone.
    fn send(&self, message: IothreadMessage) -> bool {
        if self.messages.send(message).is_err() {
            return false;
        }
        self.pending.store(true, Ordering::Release);
        self.waker.write(1).is_ok()
    }

    pub fn adopt(&self, worker: Box<dyn QueueWorker>) {
        self.send(IothreadMessage::Adopt(worker));
    }

    /// Asks for a pause; `wait` on the result returns once the thread has stopped.
    pub fn pause(&self) -> Acknowledgement {
        let (ack, done) = channel();
        Acknowledgement(self.send(IothreadMessage::Pause(ack)).then_some(done))
    }

    pub fn resume(&self) {
        self.send(IothreadMessage::Resume);
    }

    /// Takes virtqueue `queue` back, once the requests in flight here have completed; `None`
    /// when the thread does not serve it (or is gone).
    pub fn surrender(&self, queue: u16) -> Option<Box<dyn QueueWorker>> {
        let (reply, worker) = channel();
        if !self.send(IothreadMessage::Surrender(queue, reply)) {
            return None;
        }
        worker.recv().ok().flatten()
    }

    /// Asks for the queues back; `wait` on the result returns once they are dropped.
    pub fn release(&self) -> Acknowledgement {
        let (ack, done) = channel();
        Acknowledgement(self.send(IothreadMessage::Release(ack)).then_some(done))
    }
}

/// The answer to a message that the main loop waits for.
pub struct Acknowledgement(Option<Receiver<()>>);

impl Acknowledgement {
    /// Blocks until the iothread acknowledged (or is gone, which has the same effect).
    pub fn wait(self) {
        if let Some(done) = self.0 {
            let _ = done.recv();
        }
    }
}

impl Drop for Iothread {
    fn drop(&mut self) {
        self.send(IothreadMessage::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    mut set: QueueSet,
    inbox: &Inbox,
    mut window: PollWindow,
    time: &TimeCounters,
    log: &Logger,
) {
    // The one clock read of a pass that finds work: the end of a pass is the start of the next.
    let mut pass_start = Instant::now();
    let mut looked = pass_start;
    loop {
        let polling = window.current();
        let found = if polling.is_zero() || set.is_empty() {
            set.stop_polling();
            Polled::GaveUp
        } else {
            set.poll_queues(polling)
        };
        // Notifications stay off while polling finds work, and the queues' kicks and
        // completions were served by polling: poll again without a system call. The epoll
        // (queues that are not polled, the owner's waker) is still looked at now and then.
        let (result, waited) = match found {
            Polled::Found { waited } => {
                let result = if pass_start.duration_since(looked) >= EVENT_LOOK_INTERVAL {
                    looked = pass_start;
                    set.serve_events(Some(Duration::ZERO))
                } else {
                    Ok(false)
                };
                (result, waited)
            }
            Polled::GaveUp | Polled::Rechecked => {
                let result = set.serve_events(None);
                looked = pass_start;
                // The window polled in vain, then the sleep: not the serving that followed.
                let polled = if found == Polled::GaveUp {
                    polling
                } else {
                    Duration::ZERO
                };
                (result, polled + set.slept())
            }
        };
        window.adjust(waited);
        let pass_end = Instant::now();
        let slept = set.take_slept();
        let pass = pass_end.duration_since(pass_start);
        add(&time.sleep_ns, slept);
        add(&time.poll_ns, waited.saturating_sub(slept));
        add(&time.busy_ns, pass.saturating_sub(waited));
        pass_start = pass_end;
        match result {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                error!(log, "iothread poll failed"; "iothread" => thread_name(), "error" => %e);
                return;
            }
        }
        if inbox.take_pending() {
            if !inbox.execute(&mut set, log) {
                return;
            }
            pass_start = Instant::now();
        }
    }
}

/// The receiving end of the control channel, with a flag that says a message waits, so that a
/// pass looks at the channel only when the main loop sent something.
struct Inbox {
    receiver: Receiver<IothreadMessage>,
    pending: Arc<AtomicBool>,
}

impl Inbox {
    /// Whether a message was sent since the last look (a relaxed load first: the flag is only
    /// written when a message is sent).
    fn take_pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed) && self.pending.swap(false, Ordering::Acquire)
    }

    /// Carries out the messages waiting; false when the thread must stop.
    fn execute(&self, set: &mut QueueSet, log: &Logger) -> bool {
        loop {
            match self.receiver.try_recv() {
                Ok(message) => {
                    if !execute(set, message, &self.receiver, log) {
                        return false;
                    }
                }
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }
}

/// Carries out one message; false when the thread must stop.
fn execute(
    set: &mut QueueSet,
    message: IothreadMessage,
    messages: &Receiver<IothreadMessage>,
    log: &Logger,
) -> bool {
    match message {
        IothreadMessage::Adopt(worker) => {
            adopt(set, worker, log);
            true
        }
        IothreadMessage::Pause(ack) => {
            set.drain();
            let _ = ack.send(());
            debug!(log, "iothread paused"; "iothread" => thread_name(), "queues" => set.len());
            paused(set, messages, log)
        }
        IothreadMessage::Resume => true,
        IothreadMessage::Release(ack) => {
            set.release();
            let _ = ack.send(());
            true
        }
        IothreadMessage::Surrender(queue, reply) => {
            let _ = reply.send(set.surrender(queue));
            set.serve_all();
            true
        }
        IothreadMessage::Shutdown => {
            set.release();
            false
        }
    }
}

fn adopt(set: &mut QueueSet, worker: Box<dyn QueueWorker>, log: &Logger) {
    let queue = worker.queue_index();
    if let Err(e) = set.adopt(worker) {
        error!(log, "cannot watch queue"; "iothread" => thread_name(), "vq" => queue, "error" => %e);
    }
}

/// Waits for the end of a pause without touching the queues; false when the thread must stop.
fn paused(set: &mut QueueSet, messages: &Receiver<IothreadMessage>, log: &Logger) -> bool {
    loop {
        match messages.recv() {
            Ok(IothreadMessage::Resume) => {
                debug!(log, "iothread resumed"; "iothread" => thread_name());
                set.serve_all();
                return true;
            }
            // Already paused: nothing is in flight.
            Ok(IothreadMessage::Pause(ack)) => {
                let _ = ack.send(());
            }
            Ok(IothreadMessage::Adopt(worker)) => adopt(set, worker, log),
            // Nothing is in flight, so the hand-over touches no queue.
            Ok(IothreadMessage::Surrender(queue, reply)) => {
                let _ = reply.send(set.surrender(queue));
            }
            Ok(IothreadMessage::Release(ack)) => {
                set.release();
                let _ = ack.send(());
                return true;
            }
            Ok(IothreadMessage::Shutdown) | Err(_) => {
                set.release();
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::BorrowedFd;
    use std::sync::atomic::AtomicBool;

    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;

    const POLL_MAX: Duration = Duration::from_millis(50);

    #[derive(Default)]
    struct Observed {
        notifications_off: AtomicBool,
        kicks: AtomicU64,
        slow_poll_started: AtomicBool,
        polls_after_the_slow_one: AtomicU64,
    }

    /// A queue whose first poll serves a batch that takes longer than the polling window's
    /// maximum (a preempted or long serving pass), then never finds work again.
    struct SlowPollWorker {
        notifier: Arc<EventFd>,
        observed: Arc<Observed>,
    }

    impl QueueWorker for SlowPollWorker {
        fn queue_index(&self) -> u16 {
            2
        }
        fn notifier(&self) -> &Arc<EventFd> {
            &self.notifier
        }
        fn notifier_ready(&mut self) {
            let _ = self.notifier.read();
            self.observed
                .notifications_off
                .store(false, Ordering::SeqCst);
            self.observed.kicks.fetch_add(1, Ordering::SeqCst);
        }
        fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
            None
        }
        fn completions_ready(&mut self) {}
        fn in_flight(&self) -> usize {
            0
        }
        fn start_polling(&mut self) {
            self.observed
                .notifications_off
                .store(true, Ordering::SeqCst);
        }
        fn poll(&mut self) -> bool {
            if self.observed.slow_poll_started.swap(true, Ordering::SeqCst) {
                self.observed
                    .polls_after_the_slow_one
                    .fetch_add(1, Ordering::SeqCst);
                return false;
            }
            std::thread::sleep(POLL_MAX * 2);
            true
        }
        fn stop_polling(&mut self) {
            self.observed
                .notifications_off
                .store(false, Ordering::SeqCst);
        }
    }

    fn wait_for(condition: impl Fn() -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !condition() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    #[test]
    fn a_slow_batch_keeps_polling_on_and_notifications_are_back_on_before_sleeping() {
        let log = Logger::root(slog::Discard, slog::o!());
        let max_ns = u64::try_from(POLL_MAX.as_nanos()).unwrap();
        let iothread = Iothread::spawn("io-slow-poll", max_ns, &log).unwrap();
        let observed = Arc::new(Observed::default());
        let notifier = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        iothread.adopt(Box::new(SlowPollWorker {
            notifier: Arc::clone(&notifier),
            observed: Arc::clone(&observed),
        }));
        // Short passes (a kick each) open the polling window; one kick at a time, each served
        // before the next, so that no kick is left to wake the thread after the slow poll.
        let slow_poll_started = || observed.slow_poll_started.load(Ordering::SeqCst);
        let mut started = false;
        for _ in 0..100 {
            let kicks = observed.kicks.load(Ordering::SeqCst);
            notifier.write(1).unwrap();
            let kicks_now = || observed.kicks.load(Ordering::SeqCst) > kicks;
            assert!(wait_for(kicks_now, Duration::from_secs(5)), "kick served");
            if wait_for(slow_poll_started, Duration::from_secs(1)) {
                started = true;
                break;
            }
        }
        assert!(started, "the iothread polled the queue");
        // The slow pass ends; the time spent serving says nothing about how soon work comes, so
        // the thread polls on for its window, then turns notifications on and sleeps.
        std::thread::sleep(POLL_MAX * 6);
        assert!(
            observed.polls_after_the_slow_one.load(Ordering::SeqCst) > 0,
            "the slow batch turned polling off"
        );
        assert!(
            !observed.notifications_off.load(Ordering::SeqCst),
            "the iothread sleeps with the driver's notifications off: a kick would be lost"
        );
    }

    /// A queue that always has work: the iothread polls it without ever sleeping.
    struct BusyWorker {
        notifier: Arc<EventFd>,
        polls: Arc<AtomicU64>,
    }

    impl QueueWorker for BusyWorker {
        fn queue_index(&self) -> u16 {
            2
        }
        fn notifier(&self) -> &Arc<EventFd> {
            &self.notifier
        }
        fn notifier_ready(&mut self) {
            let _ = self.notifier.read();
        }
        fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
            None
        }
        fn completions_ready(&mut self) {}
        fn in_flight(&self) -> usize {
            0
        }
        fn poll(&mut self) -> bool {
            self.polls.fetch_add(1, Ordering::SeqCst);
            true
        }
    }

    #[test]
    fn messages_reach_an_iothread_whose_polling_always_finds_work() {
        let log = Logger::root(slog::Discard, slog::o!());
        let iothread = Iothread::spawn("io-busy", 1_000_000, &log).unwrap();
        let notifier = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let polls = Arc::new(AtomicU64::new(0));
        iothread.adopt(Box::new(BusyWorker {
            notifier: Arc::clone(&notifier),
            polls: Arc::clone(&polls),
        }));
        // Kicks soon after one another open the window; from then on every look finds work and
        // the thread never sleeps.
        let polling = || polls.load(Ordering::SeqCst) > 1000;
        for _ in 0..1000 {
            if polling() {
                break;
            }
            notifier.write(1).unwrap();
            std::thread::sleep(Duration::from_micros(100));
        }
        assert!(polling(), "the iothread polls the busy queue");
        iothread.pause().wait();
        iothread.resume();
        let worker = iothread
            .surrender(2)
            .expect("the busy queue is handed back");
        assert_eq!(worker.queue_index(), 2);
        assert!(iothread.surrender(2).is_none());
    }
}
