//! The iothreads named on the command line, and the main loop's own set of queues: together
//! they host the device's queues where the iothread-vq-mapping says.

use std::io;
use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard, PoisonError};

use slog::{debug, warn, Logger};
use virtio::{QueueHost, QueueWorker};

use crate::iothread::Iothread;
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
    /// Starts one thread per name; `mapping` owners index `names`.
    pub fn start(
        names: &[String],
        mapping: QueueMapping,
        log: &Logger,
    ) -> io::Result<IothreadPool> {
        let iothreads = names
            .iter()
            .map(|name| Iothread::spawn(name, log))
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
