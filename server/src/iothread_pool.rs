//! The iothreads (named on the command line, added and removed at run time), and the main loop's
//! own set of queues: together they host the device's queues where the iothread-vq-mapping says,
//! and move them when the mapping changes.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::{Mutex, MutexGuard, PoisonError};

use slog::{debug, info, warn, Logger};
use virtio::{QueueHost, QueueWorker};

use crate::iothread::{Iothread, IothreadStats};
use crate::mapping::{QueueMapping, QueueOwner};
use crate::queue_set::QueueSet;

/// Why the pool refused a change.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("iothread '{name}' does not exist")]
    NoSuchIothread { name: String },
    #[error("iothread '{name}' still serves {queues}; move them away with set-mapping first")]
    IothreadInUse { name: String, queues: String },
    #[error(transparent)]
    Mapping(#[from] crate::mapping::MappingError),
    #[error("cannot start iothread '{name}': {source}")]
    Spawn { name: String, source: io::Error },
}

/// One queue that `set_mapping` moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMove {
    pub vq: u16,
    pub from: String,
    pub to: String,
}

pub struct IothreadPool {
    /// Only the main loop's thread changes these (control requests run there).
    iothreads: Mutex<Vec<Iothread>>,
    mapping: Mutex<QueueMapping>,
    poll_max_ns: u64,
    /// Queues the main loop serves; their epoll is nested in the main loop's `Poll`.
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
        let main_loop = QueueSet::nested(log)?;
        Ok(IothreadPool {
            main_loop_fd: main_loop.poll_fd(),
            main_loop: Mutex::new(main_loop),
            iothreads: Mutex::new(iothreads),
            mapping: Mutex::new(mapping),
            poll_max_ns,
            log: log.clone(),
        })
    }

    fn threads(&self) -> MutexGuard<'_, Vec<Iothread>> {
        self.iothreads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn current_mapping(&self) -> MutexGuard<'_, QueueMapping> {
        self.mapping.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Who serves virtqueue `queue`.
    pub fn owner(&self, queue: u16) -> QueueOwner {
        let iothreads = self.threads().len();
        match self
            .current_mapping()
            .owner_of_virtqueue(usize::from(queue))
        {
            Some(QueueOwner::Iothread(i)) if i < iothreads => QueueOwner::Iothread(i),
            _ => QueueOwner::MainLoop,
        }
    }

    /// The iothread names, in order (`QueueOwner::Iothread` indexes them).
    pub fn iothread_names(&self) -> Vec<String> {
        self.threads()
            .iter()
            .map(|thread| thread.name().to_string())
            .collect()
    }

    fn owner_name(&self, owner: QueueOwner) -> String {
        match owner {
            QueueOwner::Iothread(i) => self
                .threads()
                .get(i)
                .map_or_else(|| "main-loop".into(), |t| t.name().to_string()),
            QueueOwner::MainLoop => "main-loop".into(),
        }
    }

    /// Moves every queue whose owner differs in `json` (validated as --iothread-vq-mapping is)
    /// to its new owner: the old owner completes its requests in flight and hands the queue
    /// over, so no request is lost or failed. Queues not running yet just change owner.
    pub fn set_mapping(&self, json: &str, num_queues: usize) -> Result<Vec<QueueMove>, PoolError> {
        let names = self.iothread_names();
        let new = crate::mapping::build_mapping(&names, Some(json), num_queues)?;
        let mut moves = Vec::new();
        for vq in 0..num_queues + 2 {
            let queue = vq as u16;
            let from = self.owner(queue);
            let to = new.owner_of_virtqueue(vq).unwrap_or(QueueOwner::MainLoop);
            if from == to {
                continue;
            }
            let worker = match from {
                QueueOwner::MainLoop => {
                    let mut main_loop = self.main_loop();
                    let worker = main_loop.surrender(queue);
                    main_loop.serve_all();
                    worker
                }
                QueueOwner::Iothread(i) => self.threads().get(i).and_then(|t| t.surrender(queue)),
            };
            let mut mapping = self.current_mapping();
            match vq {
                0 => mapping.ctrl = to,
                1 => mapping.event = to,
                n => mapping.request[n - 2] = to,
            }
            drop(mapping);
            let moved = QueueMove {
                vq: queue,
                from: self.owner_name(from),
                to: self.owner_name(to),
            };
            info!(self.log, "queue moved"; "vq" => queue, "from" => &moved.from, "to" => &moved.to,
                  "running" => worker.is_some());
            if let Some(worker) = worker {
                self.adopt(worker);
            }
            moves.push(moved);
        }
        Ok(moves)
    }

    /// Starts another iothread; queues reach it through `set_mapping`.
    pub fn add_iothread(&self, name: &str) -> Result<(), PoolError> {
        let mut names = self.iothread_names();
        names.push(name.to_string());
        crate::mapping::check_iothread_names(&names)?;
        let thread = Iothread::spawn(name, self.poll_max_ns, &self.log).map_err(|source| {
            PoolError::Spawn {
                name: name.to_string(),
                source,
            }
        })?;
        self.threads().push(thread);
        info!(self.log, "iothread added"; "iothread" => name);
        Ok(())
    }

    /// Stops an iothread that serves no queue.
    pub fn remove_iothread(&self, name: &str) -> Result<(), PoolError> {
        let index = self
            .threads()
            .iter()
            .position(|t| t.name() == name)
            .ok_or_else(|| PoolError::NoSuchIothread {
                name: name.to_string(),
            })?;
        let mut mapping = self.current_mapping();
        let owners = [mapping.ctrl, mapping.event]
            .into_iter()
            .chain(mapping.request.iter().copied());
        let served: Vec<String> = owners
            .enumerate()
            .filter(|(_, owner)| *owner == QueueOwner::Iothread(index))
            .map(|(vq, _)| match vq {
                0 => "ctrl".to_string(),
                1 => "event".to_string(),
                n => (n - 2).to_string(),
            })
            .collect();
        if !served.is_empty() {
            return Err(PoolError::IothreadInUse {
                name: name.to_string(),
                queues: format!("queues {}", served.join(", ")),
            });
        }
        let renumber = |owner: &mut QueueOwner| {
            if let QueueOwner::Iothread(i) = owner {
                if *i > index {
                    *i -= 1;
                }
            }
        };
        renumber(&mut mapping.ctrl);
        renumber(&mut mapping.event);
        mapping.request.iter_mut().for_each(renumber);
        drop(mapping);
        let thread = self.threads().remove(index);
        drop(thread);
        info!(self.log, "iothread removed"; "iothread" => name);
        Ok(())
    }

    /// The main loop's queues (only ever locked by the main loop's thread).
    pub fn main_loop(&self) -> MutexGuard<'_, QueueSet> {
        self.main_loop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Readable while a main-loop queue has something to serve (`main_loop().serve_ready()`).
    pub fn main_loop_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor is the epoll of `self.main_loop`, which lives (and is never
        // replaced) as long as the pool the borrow is tied to.
        unsafe { BorrowedFd::borrow_raw(self.main_loop_fd) }
    }

    /// Where each iothread's time went since it started, in command-line order.
    pub fn iothread_stats(&self) -> Vec<IothreadStats> {
        self.threads().iter().map(Iothread::stats).collect()
    }

    /// Stops every iothread from touching guest memory, with nothing left in flight, until
    /// `resume`; the main loop's queues are drained too.
    pub fn pause(&self) {
        let acks: Vec<_> = self.threads().iter().map(Iothread::pause).collect();
        self.main_loop().drain();
        acks.into_iter().for_each(|ack| ack.wait());
        debug!(self.log, "iothreads paused");
    }

    pub fn resume(&self) {
        self.threads().iter().for_each(Iothread::resume);
        self.main_loop().serve_all();
        debug!(self.log, "iothreads resumed");
    }
}

impl QueueHost for IothreadPool {
    fn adopt(&self, worker: Box<dyn QueueWorker>) {
        let queue = worker.queue_index();
        match self.owner(queue) {
            QueueOwner::Iothread(i) => {
                let threads = self.threads();
                debug!(self.log, "queue handed over"; "vq" => queue, "iothread" => threads[i].name());
                threads[i].adopt(worker);
            }
            QueueOwner::MainLoop => {
                if let Err(e) = self.main_loop().adopt(worker) {
                    warn!(self.log, "cannot watch queue"; "vq" => queue, "error" => %e);
                }
            }
        }
    }

    fn release_all(&self) {
        let acks: Vec<_> = self.threads().iter().map(Iothread::release).collect();
        self.main_loop().release();
        acks.into_iter().for_each(|ack| ack.wait());
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::BorrowedFd;
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
        notifier: Arc<EventFd>,
        completions: EventFd,
        record: Arc<Record>,
    }

    impl QueueWorker for FakeWorker {
        fn queue_index(&self) -> u16 {
            self.queue
        }
        fn notifier(&self) -> &Arc<EventFd> {
            &self.notifier
        }
        fn notifier_ready(&mut self) {
            let _ = self.notifier.read();
            let name = std::thread::current().name().unwrap_or("").to_string();
            self.record.kicks.lock().unwrap().push((self.queue, name));
        }
        fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
            Some(block::borrow_eventfd(&self.completions))
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

    /// A worker for `queue`, its notifier, a second handle on its completion eventfd.
    fn worker(queue: u16) -> (Box<FakeWorker>, Arc<EventFd>, EventFd, Arc<Record>) {
        let notifier = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let completions = EventFd::new(EFD_NONBLOCK).unwrap();
        let signal = completions.try_clone().unwrap();
        let record = Arc::new(Record::default());
        let worker = FakeWorker {
            queue,
            notifier: notifier.clone(),
            completions,
            record: record.clone(),
        };
        (Box::new(worker), notifier, signal, record)
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
        let (ctrl, ctrl_notifier, _, ctrl_record) = worker(0);
        let (events, events_notifier, _, events_record) = worker(1);
        let (rq0, rq0_notifier, _, rq0_record) = worker(2);
        let (rq1, rq1_notifier, _, rq1_record) = worker(3);
        for w in [ctrl, events, rq0, rq1] {
            pool.adopt(w);
        }
        // Adoption serves each queue once, on its thread.
        wait_for("adoption", || {
            [&ctrl_record, &rq0_record, &rq1_record]
                .iter()
                .all(|r| kicks(r).len() == 1)
        });
        for notifier in [
            &ctrl_notifier,
            &events_notifier,
            &rq0_notifier,
            &rq1_notifier,
        ] {
            notifier.write(1).unwrap();
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
        let (rq0, _notifier, completion, record) = worker(2);
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
        let (rq0, notifier, completion, record) = worker(2);
        pool.adopt(rq0);
        wait_for("adoption", || kicks(&record).len() == 1);
        record.in_flight.store(1, Ordering::SeqCst);
        completion.write(1).unwrap();
        pool.pause();
        assert_eq!(record.completed.load(Ordering::SeqCst), 1, "drained");
        notifier.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(kicks(&record).len(), 1, "no kick served while paused");
        pool.resume();
        wait_for("the kick after the pause", || kicks(&record).len() == 2);
        assert_eq!(kicks(&record)[1].1, "io1");
    }

    #[test]
    fn shutdown_drops_the_queues_and_ends_the_threads() {
        let pool = pool(vec![QueueOwner::Iothread(0)]);
        let (rq0, _notifier, _completion, record) = worker(2);
        pool.adopt(rq0);
        wait_for("adoption", || kicks(&record).len() == 1);
        // Dropping the pool joins its threads: returning at all shows they ended.
        drop(pool);
        assert!(record.dropped.load(Ordering::SeqCst));
    }

    #[test]
    fn set_mapping_moves_a_queue_after_its_requests_complete() {
        let pool = pool(vec![QueueOwner::Iothread(1)]);
        let (rq0, notifier, completion, record) = worker(2);
        pool.adopt(rq0);
        wait_for("adoption", || kicks(&record).len() == 1);
        record.in_flight.store(2, Ordering::SeqCst);
        let finisher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            completion.write(1).unwrap();
        });
        let moves = pool
            .set_mapping(
                r#"[{"iothread":"io0","vqs":["ctrl",0]},{"iothread":"io1","vqs":[]}]"#,
                1,
            )
            .unwrap();
        finisher.join().unwrap();
        assert_eq!(record.completed.load(Ordering::SeqCst), 2, "drained first");
        assert!(
            !record.dropped.load(Ordering::SeqCst),
            "handed over, not dropped"
        );
        assert_eq!(
            moves,
            [QueueMove {
                vq: 2,
                from: "io1".into(),
                to: "io0".into()
            }]
        );
        assert_eq!(pool.owner(2), QueueOwner::Iothread(0));
        // Adoption served it once on io0; a kick now reaches io0.
        wait_for("adoption by io0", || kicks(&record).len() == 2);
        notifier.write(1).unwrap();
        wait_for("the kick", || kicks(&record).len() == 3);
        assert_eq!(kicks(&record)[2], (2, "io0".to_string()));
        let error = pool
            .set_mapping(r#"[{"iothread":"io9","vqs":[0]}]"#, 1)
            .unwrap_err();
        assert!(error.to_string().contains("io9"), "{error}");
    }

    #[test]
    fn iothreads_come_and_go_unless_they_serve_a_queue() {
        let pool = pool(vec![QueueOwner::Iothread(1)]);
        pool.add_iothread("io2").unwrap();
        assert!(pool.add_iothread("io2").is_err());
        assert_eq!(pool.iothread_names(), ["io0", "io1", "io2"]);
        let error = pool.remove_iothread("io1").unwrap_err();
        assert!(error.to_string().contains("queues 0"), "{error}");
        assert!(matches!(
            pool.remove_iothread("io7"),
            Err(PoolError::NoSuchIothread { .. })
        ));
        pool.set_mapping(
            r#"[{"iothread":"io2","vqs":[0]},{"iothread":"io0","vqs":["ctrl"]}]"#,
            1,
        )
        .unwrap();
        pool.remove_iothread("io1").unwrap();
        assert_eq!(pool.iothread_names(), ["io0", "io2"]);
        assert_eq!(pool.owner(2), QueueOwner::Iothread(1), "io2 renumbered");
    }
}
