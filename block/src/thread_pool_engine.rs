//! An engine that runs requests with blocking calls on a few threads of its own, so that the
//! event loop that submits them never blocks on the disk: for backends or kernels where
//! io_uring is not wanted.

use std::os::fd::BorrowedFd;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::sync_engine::execute;
use crate::{BlockError, Completion, Disk, Engine, IoRequest, Submitted};

struct Job {
    disk: Arc<Disk>,
    request: IoRequest,
    user_data: u64,
}

/// Completions and the eventfd that says there are some, changed together under the lock so
/// that the eventfd is readable exactly while completions wait.
struct Finished {
    completions: Mutex<Vec<Completion>>,
    eventfd: EventFd,
}

pub struct ThreadPoolEngine {
    /// None once dropping began: closing the channel ends the threads.
    jobs: Option<Sender<Job>>,
    finished: Arc<Finished>,
    threads: Vec<JoinHandle<()>>,
}

impl ThreadPoolEngine {
    /// An engine with `threads` threads (at least one), each running one request at a time.
    pub fn new(threads: usize) -> Result<ThreadPoolEngine, BlockError> {
        let finished = Arc::new(Finished {
            completions: Mutex::new(Vec::new()),
            eventfd: EventFd::new(EFD_NONBLOCK).map_err(BlockError::Eventfd)?,
        });
        let (jobs, receiver) = channel();
        let receiver = Arc::new(Mutex::new(receiver));
        let mut engine = ThreadPoolEngine {
            jobs: Some(jobs),
            finished,
            threads: Vec::new(),
        };
        for _ in 0..threads.max(1) {
            let receiver = Arc::clone(&receiver);
            let finished = Arc::clone(&engine.finished);
            let thread = std::thread::Builder::new()
                .name("vus-aio".into())
                .spawn(move || serve(&receiver, &finished))
                .map_err(BlockError::Threads)?;
            engine.threads.push(thread);
        }
        Ok(engine)
    }
}

fn serve(jobs: &Mutex<Receiver<Job>>, finished: &Finished) {
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else {
            return;
        };
        let result = execute(&job.disk, &job.request);
        // The buffers are released before the completion says the request is done.
        drop(job.request);
        let mut completions = finished
            .completions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        completions.push(Completion {
            user_data: job.user_data,
            result,
        });
        // Cannot fail short of the counter overflowing, which a reap prevents.
        let _ = finished.eventfd.write(1);
    }
}

impl Engine for ThreadPoolEngine {
    fn submit(
        &mut self,
        disk: &Arc<Disk>,
        request: IoRequest,
        user_data: u64,
    ) -> Result<Submitted, BlockError> {
        let job = Job {
            disk: Arc::clone(disk),
            request,
            user_data,
        };
        match &self.jobs {
            Some(jobs) if jobs.send(job).is_ok() => Ok(Submitted::Started),
            _ => Err(BlockError::ThreadsGone),
        }
    }

    fn submit_pending(&mut self) {}

    fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(crate::borrow_eventfd(&self.finished.eventfd))
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        let mut completions = self
            .finished
            .completions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // EAGAIN only says that the counter was already clear.
        let _ = self.finished.eventfd.read();
        out.append(&mut completions);
    }
}

impl Drop for ThreadPoolEngine {
    /// Waits for the requests in flight: their buffers point into memory the caller frees next.
    fn drop(&mut self) {
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
