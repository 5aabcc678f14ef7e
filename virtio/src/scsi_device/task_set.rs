//! The commands in flight on every request queue, whichever thread serves it, so that task
//! management functions on the control queue can see them.
//!
//! A command enters when its disk work goes to an I/O engine and leaves once its response is in
//! the used ring. Queries answer from it at once; aborts and resets wait until the tasks they
//! name have left (commands are never cancelled, they complete), since the driver relies on
//! every affected command being completed before the TMF response (virtio 1.2 §5.6.6.2).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Which tasks a TMF is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskScope {
    Task { lun: u16, tag: u64 },
    Lun(u16),
    All,
}

impl TaskScope {
    fn covers(self, lun: u16, tag: u64) -> bool {
        match self {
            TaskScope::Task { lun: l, tag: t } => l == lun && t == tag,
            TaskScope::Lun(l) => l == lun,
            TaskScope::All => true,
        }
    }
}

pub struct TaskSet {
    /// (lun, tag) -> number of commands in flight with that tag (a driver may reuse one).
    tasks: Mutex<HashMap<(u16, u64), usize>>,
    /// TMFs waiting for tasks to leave.
    waiters: AtomicUsize,
    /// Written when a task leaves while a TMF waits.
    left: EventFd,
}

impl TaskSet {
    pub fn new() -> io::Result<TaskSet> {
        Ok(TaskSet {
            tasks: Mutex::new(HashMap::new()),
            waiters: AtomicUsize::new(0),
            left: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    pub fn started(&self, lun: u16, tag: u64) {
        *self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((lun, tag))
            .or_default() += 1;
    }

    pub fn finished(&self, lun: u16, tag: u64) {
        {
            let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = tasks.get_mut(&(lun, tag)) {
                *count -= 1;
                if *count == 0 {
                    tasks.remove(&(lun, tag));
                }
            }
        }
        // Pairs with `wait`: the waiter counts itself before it looks at the tasks.
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _ = self.left.write(1);
        }
    }

    /// Whether a task in `scope` is in flight.
    pub fn any(&self, scope: TaskScope) -> bool {
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .any(|&(lun, tag)| scope.covers(lun, tag))
    }

    /// The commands in flight as (lun, tag), for telling an operator what is stuck.
    pub fn snapshot(&self) -> Vec<(u16, u64)> {
        let mut tasks: Vec<(u16, u64)> = self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect();
        tasks.sort_unstable();
        tasks
    }

    /// Registers a TMF that waits for `scope` to empty; false (and nothing registered) when it
    /// already is. `left_fd` fires after a task leaves; call `done_waiting` once satisfied.
    pub fn wait(&self, scope: TaskScope) -> bool {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        if self.any(scope) {
            return true;
        }
        self.done_waiting();
        false
    }

    pub fn done_waiting(&self) {
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Readable after a task left while some TMF waited.
    pub fn left_fd(&self) -> RawFd {
        self.left.as_raw_fd()
    }

    /// Clears `left_fd`.
    pub fn clear_left(&self) {
        // EAGAIN only says that the counter was already clear.
        let _ = self.left.read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_see_the_tasks_in_flight() {
        let tasks = TaskSet::new().unwrap();
        tasks.started(1, 7);
        tasks.started(1, 7);
        tasks.started(2, 9);
        assert!(tasks.any(TaskScope::Task { lun: 1, tag: 7 }));
        assert!(!tasks.any(TaskScope::Task { lun: 2, tag: 7 }));
        assert!(tasks.any(TaskScope::Lun(2)));
        assert!(!tasks.any(TaskScope::Lun(3)));
        tasks.finished(1, 7);
        assert!(
            tasks.any(TaskScope::Task { lun: 1, tag: 7 }),
            "a reused tag"
        );
        tasks.finished(1, 7);
        assert!(!tasks.any(TaskScope::Lun(1)));
        assert!(tasks.any(TaskScope::All));
        tasks.finished(2, 9);
        assert!(!tasks.any(TaskScope::All));
    }

    #[test]
    fn a_waiting_tmf_hears_when_tasks_leave() {
        let tasks = TaskSet::new().unwrap();
        assert!(!tasks.wait(TaskScope::All), "nothing to wait for");
        tasks.started(0, 1);
        tasks.finished(0, 1);
        assert!(tasks.left.read().is_err(), "nobody waited: no wakeup");

        tasks.started(0, 1);
        assert!(tasks.wait(TaskScope::Lun(0)));
        tasks.finished(0, 1);
        assert_eq!(tasks.left.read().unwrap(), 1);
        assert!(!tasks.any(TaskScope::Lun(0)));
        tasks.done_waiting();
        tasks.started(0, 2);
        tasks.finished(0, 2);
        assert!(tasks.left.read().is_err(), "no waiter left");
    }
}
