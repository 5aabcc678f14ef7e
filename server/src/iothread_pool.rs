//! The iothreads named on the command line, and the main loop's own set of queues: together
//! they host the device's queues where the iothread-vq-mapping says.

use std::io;
use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard, PoisonError};

use slog::{debug, warn, Logger};
use virtio::{QueueHost, QueueWorker};

use crate::iothread::{Iothread, IothreadStats};
use crate::mapping::{QueueMapping, QueueOwner};
use crate::queue_set::QueueSet;

pub struct IothreadPool {
    iothreads: Vec<Iothread>,
    mapping: QueueMapping,
    /// Queues the main loop serves; its `Poll` is nested in the main loop's.
    main_loop: Mutex<QueueSet>,
    main_loop_fd: RawFd,
    log: Logger,
}

impl IothreadPool {
    /// Starts one thread per name; `mapping` owners index `names`. Iothreads poll busy queues
    /// for up to `poll_max_ns` before they sleep.
    pub fn start(
        names: &[String],
        mapping: QueueMapping,
        poll_max_ns: u64,
        log: &Logger,
    ) -> io::Result<IothreadPool> {
        let iothreads = names
            .iter()
            .map(|name| Iothread::spawn(name, poll_max_ns, log))
            .collect::<io::Result<Vec<_>>>()?;
        let main_loop = QueueSet::new(log)?;
        Ok(IothreadPool {
            main_loop_fd: main_loop.poll_fd(),
            main_loop: Mutex::new(main_loop),
            iothreads,
            mapping,
            log: log.clone(),
        })
    }

    /// Who serves virtqueue `queue`.
    pub fn owner(&self, queue: u16) -> QueueOwner {
        match self.mapping.owner_of_virtqueue(usize::from(queue)) {
            Some(QueueOwner::Iothread(i)) if i < self.iothreads.len() => QueueOwner::Iothread(i),
            _ => QueueOwner::MainLoop,
        }
    }

    /// The `--iothread` names, in order (`QueueOwner::Iothread` indexes them).
    pub fn iothread_names(&self) -> Vec<&str> {
        self.iothreads.iter().map(Iothread::name).collect()
    }

    /// The main loop's queues (only ever locked by the main loop's thread).
    pub fn main_loop(&self) -> MutexGuard<'_, QueueSet> {
        self.main_loop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Readable while a main-loop queue has something to serve (`main_loop().serve_ready()`).
    /// Valid as long as the pool lives.
    pub fn main_loop_fd(&self) -> RawFd {
        self.main_loop_fd
    }

    /// Where each iothread's time went since it started, in command-line order.
    pub fn iothread_stats(&self) -> Vec<IothreadStats> {
        self.iothreads.iter().map(Iothread::stats).collect()
    }

    /// Stops every iothread from touching guest memory, with nothing left in flight, until
    /// `resume`; the main loop's queues are drained too.
    pub fn pause(&self) {
        let acks: Vec<_> = self.iothreads.iter().map(Iothread::pause).collect();
        self.main_loop().drain();
        acks.into_iter().for_each(|ack| ack.wait());
        debug!(self.log, "iothreads paused");
    }

    pub fn resume(&self) {
        self.iothreads.iter().for_each(Iothread::resume);
        self.main_loop().kick_all();
        debug!(self.log, "iothreads resumed");
    }
}

impl QueueHost for IothreadPool {
    fn adopt(&self, worker: Box<dyn QueueWorker>) {
        let queue = worker.queue_index();
        match self.owner(queue) {
            QueueOwner::Iothread(i) => {
                debug!(self.log, "queue handed over"; "vq" => queue, "iothread" => self.iothreads[i].name());
                self.iothreads[i].adopt(worker);
            }
            QueueOwner::MainLoop => {
                if let Err(e) = self.main_loop().adopt(worker) {
                    warn!(self.log, "cannot watch queue"; "vq" => queue, "error" => %e);
                }
            }
        }
    }

    fn release_all(&self) {
        let acks: Vec<_> = self.iothreads.iter().map(Iothread::release).collect();
        self.main_loop().release();
        acks.into_iter().for_each(|ack| ack.wait());
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, RawFd};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;

    /// What the fake workers saw, shared with the test.
    #[derive(Default)]
    struct Record {
        /// (virtqueue, name of the thread that served the kick)
        kicks: Mutex<Vec<(u16, String)>>,
        in_flight: AtomicUsize,
        completed: AtomicUsize,
        dropped: AtomicBool,
    }

    struct FakeWorker {
        queue: u16,
        kick: Arc<EventFd>,
        completions: EventFd,
        record: Arc<Record>,
    }

    impl QueueWorker for FakeWorker {
        fn queue_index(&self) -> u16 {
            self.queue
        }
        fn kick(&self) -> &Arc<EventFd> {
            &self.kick
        }
        fn kicked(&mut self) {
            let _ = self.kick.read();
            let name = std::thread::current().name().unwrap_or("").to_string();
            self.record.kicks.lock().unwrap().push((self.queue, name));
        }
        fn completion_fd(&self) -> Option<RawFd> {
            Some(self.completions.as_raw_fd())
        }
        fn completions_ready(&mut self) {
            let _ = self.completions.read();
            let pending = self.record.in_flight.swap(0, Ordering::SeqCst);
            self.record.completed.fetch_add(pending, Ordering::SeqCst);
        }
        fn in_flight(&self) -> usize {
            self.record.in_flight.load(Ordering::SeqCst)
        }
    }

    impl Drop for FakeWorker {
        fn drop(&mut self) {
            self.record.dropped.store(true, Ordering::SeqCst);
        }
    }

    /// A worker for `queue`, its kick eventfd, a second handle on its completion eventfd.
    fn worker(queue: u16) -> (Box<FakeWorker>, Arc<EventFd>, EventFd, Arc<Record>) {
        let kick = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let completions = EventFd::new(EFD_NONBLOCK).unwrap();
        let signal = completions.try_clone().unwrap();
        let record = Arc::new(Record::default());
        let worker = FakeWorker {
            queue,
            kick: kick.clone(),
            completions,
            record: record.clone(),
        };
        (Box::new(worker), kick, signal, record)
    }

    fn pool(request: Vec<QueueOwner>) -> IothreadPool {
        let log = Logger::root(slog::Discard, slog::o!());
        let mapping = QueueMapping {
            ctrl: QueueOwner::Iothread(0),
            event: QueueOwner::MainLoop,
            request,
        };
        IothreadPool::start(&["io0".into(), "io1".into()], mapping, 32_768, &log).unwrap()
    }

    fn wait_for(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn kicks(record: &Record) -> Vec<(u16, String)> {
        record.kicks.lock().unwrap().clone()
    }

    #[test]
    fn iothreads_carry_their_names() {
        let _pool = pool(vec![QueueOwner::MainLoop]);
        let names = || -> Vec<String> {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .map(|comm| comm.trim().to_string())
                .collect()
        };
        // A new thread names itself once it runs.
        wait_for("the iothreads' names", || {
            let names = names();
            names.contains(&"io0".to_string()) && names.contains(&"io1".to_string())
        });
    }

    #[test]
    fn each_queue_is_served_by_the_thread_the_mapping_names() {
        let pool = pool(vec![QueueOwner::Iothread(1), QueueOwner::Iothread(0)]);
        let (ctrl, ctrl_kick, _, ctrl_record) = worker(0);
        let (events, events_kick, _, events_record) = worker(1);
        let (rq0, rq0_kick, _, rq0_record) = worker(2);
        let (rq1, rq1_kick, _, rq1_record) = worker(3);
        for w in [ctrl, events, rq0, rq1] {
            pool.adopt(w);
        }
        // Adoption serves each queue once, on its thread.
        wait_for("adoption", || {
            [&ctrl_record, &rq0_record, &rq1_record]
                .iter()
                .all(|r| kicks(r).len() == 1)
        });
        for kick in [&ctrl_kick, &events_kick, &rq0_kick, &rq1_kick] {
            kick.write(1).unwrap();
        }
        wait_for("kicks", || {
            [&ctrl_record, &rq0_record, &rq1_record]
                .iter()
                .all(|r| kicks(r).len() == 2)
        });
        // The event queue stays on the main loop: served only when the main loop polls.
        assert_eq!(kicks(&events_record).len(), 1);
        pool.main_loop().serve_ready().unwrap();
        let here = std::thread::current().name().unwrap().to_string();
        assert_eq!(kicks(&events_record)[1], (1, here));
        assert_eq!(kicks(&ctrl_record)[1], (0, "io0".to_string()));
        assert_eq!(kicks(&rq0_record)[1], (2, "io1".to_string()));
        assert_eq!(kicks(&rq1_record)[1], (3, "io0".to_string()));
    }

    #[test]
    fn release_waits_for_requests_in_flight() {
        let pool = pool(vec![QueueOwner::Iothread(1)]);
        let (rq0, _kick, completion, record) = worker(2);
        record.in_flight.store(3, Ordering::SeqCst);
        pool.adopt(rq0);
        let finisher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            completion.write(1).unwrap();
        });
        pool.release_all();
        assert_eq!(record.completed.load(Ordering::SeqCst), 3);
        assert!(record.dropped.load(Ordering::SeqCst));
        finisher.join().unwrap();
    }

    #[test]
    fn paused_iothreads_serve_nothing_until_resumed() {
        let pool = pool(vec![QueueOwner::Iothread(1)]);
        let (rq0, kick, completion, record) = worker(2);
        pool.adopt(rq0);
        wait_for("adoption", || kicks(&record).len() == 1);
        record.in_flight.store(1, Ordering::SeqCst);
        completion.write(1).unwrap();
        pool.pause();
        assert_eq!(record.completed.load(Ordering::SeqCst), 1, "drained");
        kick.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(kicks(&record).len(), 1, "no kick served while paused");
        pool.resume();
        wait_for("the kick after the pause", || kicks(&record).len() == 2);
        assert_eq!(kicks(&record)[1].1, "io1");
    }

    #[test]
    fn shutdown_drops_the_queues_and_ends_the_threads() {
        let pool = pool(vec![QueueOwner::Iothread(0)]);
        let (rq0, _kick, _completion, record) = worker(2);
        pool.adopt(rq0);
        wait_for("adoption", || kicks(&record).len() == 1);
        // Dropping the pool joins its threads: returning at all shows they ended.
        drop(pool);
        assert!(record.dropped.load(Ordering::SeqCst));
    }
}
