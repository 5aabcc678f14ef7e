//! The commands in flight on every request queue, whichever thread serves it, so that task
//! management functions on the control queue can see them.
//!
//! Each request queue has a table of its own with one slot per command it can have in flight;
//! only the queue's thread writes it, and nothing is locked: a slot's sequence number is odd
//! while a command (its LUN and tag) occupies it and changes when the command leaves, so a
//! reader on the control queue tells a stable entry from one that changed under it (a seqlock).
//! A command enters when an I/O engine keeps its disk work past `submit` and leaves once the
//! used idx shows the driver its response; one the engine finishes inside `submit` (a null
//! disk, the sync engine) is answered in the pass that popped it, as a command without disk
//! work is, and never enters. Queries answer from the tables at once; aborts and resets wait until the tasks
//! they name have left (commands are never cancelled, they complete), since the driver relies on
//! every affected command being completed before the TMF response (virtio 1.2 §5.6.6.2).
//!
//! The exception are commands held for a disk that its error policy stopped: they would wait
//! for the operator, so their queue answers them as aborted when a waiting TMF names them.
//! Queues holding such commands register their notifier here to hear about TMFs and resumes.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Which tasks a TMF is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskScope {
    Task { lun: u16, tag: u64 },
    Lun(u16),
    All,
}

impl TaskScope {
    pub fn covers(self, lun: u16, tag: u64) -> bool {
        match self {
            TaskScope::Task { lun: l, tag: t } => l == lun && t == tag,
            TaskScope::Lun(l) => l == lun,
            TaskScope::All => true,
        }
    }
}

#[derive(Default)]
struct TaskSlot {
    /// Odd while a command occupies the slot.
    sequence: AtomicU32,
    lun: AtomicU32,
    tag: AtomicU64,
}

impl TaskSlot {
    /// The (lun, tag) in the slot, if a command stayed in it for the whole read.
    fn read(&self) -> Option<(u16, u64)> {
        let before = self.sequence.load(Ordering::Acquire);
        if before % 2 == 0 {
            return None;
        }
        let lun = self.lun.load(Ordering::Relaxed) as u16;
        let tag = self.tag.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        // A different number means that command left while we read (and maybe another came).
        (self.sequence.load(Ordering::Relaxed) == before).then_some((lun, tag))
    }
}

/// Slots in one [`TaskLine`].
const SLOTS_PER_LINE: usize = 8;

/// Task slots that fill a 128-byte block on their own (two cache lines, which the adjacent-line
/// prefetcher moves together): a queue's table is made of whole lines, so that no line holds
/// slots of two queues, which their threads would take from each other at every command.
#[repr(align(128))]
#[derive(Default)]
struct TaskLine([TaskSlot; SLOTS_PER_LINE]);

/// The slots of one request queue.
struct TaskTable {
    lines: Box<[TaskLine]>,
    slots: usize,
}

impl TaskTable {
    fn new(slots: usize) -> TaskTable {
        TaskTable {
            lines: (0..slots.div_ceil(SLOTS_PER_LINE))
                .map(|_| TaskLine::default())
                .collect(),
            slots,
        }
    }

    #[inline(always)]
    fn get(&self, slot: usize) -> Option<&TaskSlot> {
        if slot >= self.slots {
            return None;
        }
        self.lines
            .get(slot / SLOTS_PER_LINE)
            .map(|line| &line.0[slot % SLOTS_PER_LINE])
    }

    fn iter(&self) -> impl Iterator<Item = &TaskSlot> {
        self.lines.iter().flat_map(|line| &line.0).take(self.slots)
    }
}

pub struct TaskSet {
    /// Per request queue (virtqueue index - 2), one slot per descriptor of the queue.
    tables: Vec<TaskTable>,
    /// TMFs waiting for tasks to leave.
    waiters: AtomicUsize,
    /// Written when a task leaves while a TMF waits.
    left: EventFd,
    /// Notifiers of the request queues that hold commands for a stopped disk (rare: locked).
    holders: Mutex<Vec<Arc<EventFd>>>,
    /// Scopes of the aborts and resets waiting now, one entry per waiting TMF.
    aborting: Mutex<Vec<TaskScope>>,
}

impl TaskSet {
    /// Tables for request queues of `sizes` descriptors (0 for a queue that is not enabled).
    pub fn new(sizes: &[u16]) -> io::Result<TaskSet> {
        Ok(TaskSet {
            tables: sizes
                .iter()
                .map(|&size| TaskTable::new(usize::from(size)))
                .collect(),
            waiters: AtomicUsize::new(0),
            left: EventFd::new(EFD_NONBLOCK)?,
            holders: Mutex::default(),
            aborting: Mutex::default(),
        })
    }

    fn slot(&self, queue: usize, slot: usize) -> Option<&TaskSlot> {
        self.tables.get(queue)?.get(slot)
    }

    /// Slots in `queue`'s table: the commands it can show at once.
    pub fn capacity(&self, queue: usize) -> usize {
        self.tables.get(queue).map_or(0, |table| table.slots)
    }

    /// Request queue `queue` put a command in `slot` (called only by the queue's thread).
    #[inline(always)]
    pub fn started(&self, queue: usize, slot: usize, lun: u16, tag: u64) {
        let Some(slot) = self.slot(queue, slot) else {
            return;
        };
        // Orders the last `finished` before these stores, for a reader still on that command.
        fence(Ordering::Release);
        slot.lun.store(u32::from(lun), Ordering::Relaxed);
        slot.tag.store(tag, Ordering::Relaxed);
        let sequence = slot.sequence.load(Ordering::Relaxed);
        slot.sequence
            .store(sequence.wrapping_add(1) | 1, Ordering::Release);
    }

    /// The command in `slot` of request queue `queue` completed (called only by its thread,
    /// which calls `tell_waiters` once it is done with the commands of its pass).
    #[inline(always)]
    pub fn finished(&self, queue: usize, slot: usize) {
        let Some(slot) = self.slot(queue, slot) else {
            return;
        };
        let sequence = slot.sequence.load(Ordering::Relaxed);
        slot.sequence
            .store(sequence.wrapping_add(1) & !1, Ordering::Release);
    }

    /// Tells a waiting TMF that commands finished: called once per pass of a queue that
    /// finished any, rather than with a full barrier per command.
    pub fn tell_waiters(&self) {
        // Pairs with the fence in `wait`: either the waiter sees the slots free, or this sees
        // the waiter.
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::Relaxed) > 0 {
            let _ = self.left.write(1);
        }
    }

    /// Whether a task in `scope` is in flight.
    pub fn any(&self, scope: TaskScope) -> bool {
        self.tables
            .iter()
            .flat_map(|table| table.iter())
            .filter_map(TaskSlot::read)
            .any(|(lun, tag)| scope.covers(lun, tag))
    }

    /// The commands in flight as (lun, tag), for telling an operator what is stuck.
    pub fn snapshot(&self) -> Vec<(u16, u64)> {
        let mut tasks: Vec<(u16, u64)> = self
            .tables
            .iter()
            .flat_map(|table| table.iter())
            .filter_map(TaskSlot::read)
            .collect();
        tasks.sort_unstable();
        tasks
    }

    /// Registers a TMF that waits for `scope` to empty; false (and nothing registered) when it
    /// already is. `left_fd` fires after a task leaves; call `done_waiting` once satisfied.
    /// Queues holding commands hear of it, so that they abort those in `scope`.
    pub fn wait(&self, scope: TaskScope) -> bool {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        // Pairs with the fence in `tell_waiters`.
        fence(Ordering::SeqCst);
        if self.any(scope) {
            lock(&self.aborting).push(scope);
            self.wake_holders();
            return true;
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        false
    }

    pub fn done_waiting(&self, scope: TaskScope) {
        let mut aborting = lock(&self.aborting);
        if let Some(at) = aborting.iter().position(|&waiting| waiting == scope) {
            aborting.swap_remove(at);
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether a waiting TMF names the held command (`lun`, `tag`).
    pub fn aborting(&self, lun: u16, tag: u64) -> bool {
        lock(&self.aborting)
            .iter()
            .any(|scope| scope.covers(lun, tag))
    }

    /// The queue with `notifier` holds commands: wake it on TMFs and resumes from now on.
    pub fn add_holder(&self, notifier: &Arc<EventFd>) {
        let mut holders = lock(&self.holders);
        if !holders.iter().any(|known| Arc::ptr_eq(known, notifier)) {
            holders.push(Arc::clone(notifier));
        }
    }

    /// Wakes every queue that held commands, to resubmit or abort them.
    pub fn wake_holders(&self) {
        for notifier in lock(&self.holders).iter() {
            // EAGAIN: the counter is full, the queue will wake anyway.
            let _ = notifier.write(1);
        }
    }

    /// Readable after a task left while some TMF waited.
    pub fn left_fd(&self) -> BorrowedFd<'_> {
        block::borrow_eventfd(&self.left)
    }

    /// Clears `left_fd`.
    pub fn clear_left(&self) {
        // EAGAIN only says that the counter was already clear.
        let _ = self.left.read();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_see_the_tasks_in_flight() {
        let tasks = TaskSet::new(&[4, 4]).unwrap();
        tasks.started(0, 0, 1, 7);
        tasks.started(1, 3, 1, 7);
        tasks.started(1, 0, 2, 9);
        assert!(tasks.any(TaskScope::Task { lun: 1, tag: 7 }));
        assert!(!tasks.any(TaskScope::Task { lun: 2, tag: 7 }));
        assert!(tasks.any(TaskScope::Lun(2)));
        assert!(!tasks.any(TaskScope::Lun(3)));
        tasks.finished(0, 0);
        assert!(
            tasks.any(TaskScope::Task { lun: 1, tag: 7 }),
            "a reused tag on another queue"
        );
        tasks.finished(1, 3);
        assert!(!tasks.any(TaskScope::Lun(1)));
        assert!(tasks.any(TaskScope::All));
        tasks.finished(1, 0);
        assert!(!tasks.any(TaskScope::All));
        tasks.started(1, 0, 5, 1);
        assert!(
            tasks.any(TaskScope::Task { lun: 5, tag: 1 }),
            "a slot used again"
        );
        tasks.started(9, 0, 5, 1);
        tasks.finished(0, 99);
    }

    #[test]
    fn a_waiting_tmf_hears_when_tasks_leave() {
        let tasks = TaskSet::new(&[2]).unwrap();
        assert!(!tasks.wait(TaskScope::All), "nothing to wait for");
        tasks.started(0, 1, 0, 1);
        tasks.finished(0, 1);
        tasks.tell_waiters();
        assert!(tasks.left.read().is_err(), "nobody waited: no wakeup");
        tasks.started(0, 1, 0, 1);
        assert!(tasks.wait(TaskScope::Lun(0)));
        tasks.finished(0, 1);
        assert!(tasks.left.read().is_err(), "told once the pass is done");
        tasks.tell_waiters();
        assert_eq!(tasks.left.read().unwrap(), 1);
        assert!(!tasks.any(TaskScope::Lun(0)));
        tasks.done_waiting(TaskScope::Lun(0));
        tasks.started(0, 0, 0, 2);
        tasks.finished(0, 0);
        tasks.tell_waiters();
        assert!(tasks.left.read().is_err(), "no waiter left");
    }

    #[test]
    fn queues_share_no_cache_line() {
        let tasks = TaskSet::new(&[3, 256, 9]).unwrap();
        let lines = |queue: usize| {
            let table = &tasks.tables[queue];
            let first = table.get(0).unwrap() as *const TaskSlot as usize;
            let last = table.get(table.slots - 1).unwrap() as *const TaskSlot as usize;
            assert_eq!(first % 128, 0, "queue {queue} starts a 128-byte block");
            (first / 128, (last + size_of::<TaskSlot>() - 1) / 128)
        };
        let blocks: Vec<_> = (0..3).map(lines).collect();
        for (queue, (first, last)) in blocks.iter().enumerate() {
            for (other, (other_first, other_last)) in blocks.iter().enumerate() {
                assert!(
                    queue == other || last < other_first || other_last < first,
                    "queues {queue} and {other} share a block"
                );
            }
        }
        assert_eq!(tasks.capacity(0), 3);
        assert!(tasks.tables[0].get(3).is_none(), "past the queue's slots");
        tasks.started(0, 2, 1, 5);
        tasks.started(2, 8, 1, 6);
        assert_eq!(tasks.snapshot(), vec![(1, 5), (1, 6)]);
    }

    #[test]
    fn a_reader_never_sees_a_torn_entry() {
        let tasks = std::sync::Arc::new(TaskSet::new(&[1]).unwrap());
        let writer = {
            let tasks = std::sync::Arc::clone(&tasks);
            std::thread::spawn(move || {
                for tag in 0..200_000u64 {
                    tasks.started(0, 0, (tag % 7) as u16, tag);
                    tasks.finished(0, 0);
                }
            })
        };
        while !writer.is_finished() {
            if let Some((lun, tag)) = tasks.tables[0].get(0).and_then(TaskSlot::read) {
                assert_eq!(u64::from(lun), tag % 7, "lun and tag of different commands");
            }
        }
        writer.join().unwrap();
    }
}
