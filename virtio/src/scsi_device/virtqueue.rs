//! One virtqueue as a device worker serves it: popping chains, returning them, and raising the
//! queue's interrupt once per batch when the driver wants one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use slog::{debug, warn, Logger};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryLoadGuard, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::queue_counters::QueueCounters;
use crate::virtio_device::{ActiveQueue, GuestMemory, Interrupt};

/// A snapshot of guest memory, kept by a request until it completes.
pub type MemorySnapshot = GuestMemoryLoadGuard<GuestMemoryMmap>;

/// A chain popped from a queue: where its descriptors are, not yet read
/// (`data_buffers::ChainBuffers::collect` walks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    /// The queue's descriptor table and its size.
    pub table: GuestAddress,
    pub queue_size: u16,
}

impl Chain {
    pub fn head_index(&self) -> u16 {
        self.head
    }
}

/// How a worker tells the transport that the device cannot go on (a queue's rings became
/// unusable): the transport reports DEVICE_NEEDS_RESET in the device status, and the
/// configuration-change interrupt tells the driver to look.
#[derive(Clone)]
pub struct NeedsReset {
    flag: Arc<AtomicBool>,
    config_interrupt: Arc<dyn Interrupt>,
}

impl NeedsReset {
    pub fn new(flag: Arc<AtomicBool>, config_interrupt: Arc<dyn Interrupt>) -> NeedsReset {
        NeedsReset {
            flag,
            config_interrupt,
        }
    }

    pub(crate) fn raise(&self) {
        if !self.flag.swap(true, Ordering::SeqCst) {
            self.config_interrupt.trigger();
        }
    }
}

/// A queue with everything needed to serve it from any thread.
pub struct Virtqueue {
    index: u16,
    queue: Queue,
    notifier: Arc<EventFd>,
    memory: GuestMemory,
    interrupt: Arc<dyn Interrupt>,
    needs_reset: NeedsReset,
    /// Set once the rings proved unusable: the queue is left alone until reset.
    broken: bool,
    /// Chains returned since the last interrupt decision.
    returned: bool,
    counters: Arc<QueueCounters>,
    logger: Logger,
}

impl Virtqueue {
    pub fn new(
        active: ActiveQueue,
        memory: GuestMemory,
        event_idx: bool,
        needs_reset: NeedsReset,
        counters: Arc<QueueCounters>,
        logger: &Logger,
    ) -> Virtqueue {
        let ActiveQueue {
            index,
            mut queue,
            notifier,
            interrupt,
        } = active;
        queue.set_event_idx(event_idx);
        Virtqueue {
            index,
            queue,
            notifier,
            memory,
            interrupt,
            needs_reset,
            broken: false,
            returned: false,
            counters,
            logger: logger.new(slog::o!("vq" => index)),
        }
    }

    pub fn index(&self) -> u16 {
        self.index
    }

    pub fn notifier(&self) -> &Arc<EventFd> {
        &self.notifier
    }

    pub fn logger(&self) -> &Logger {
        &self.logger
    }

    pub fn counters(&self) -> &QueueCounters {
        &self.counters
    }

    /// Clears the notifier, counting the kicks it held.
    pub fn clear_notifier(&self) {
        // EAGAIN only says that the counter was already clear.
        if let Ok(kicks) = self.notifier.read() {
            self.counters.count_kicks(kicks);
        }
    }

    pub fn snapshot(&self) -> MemorySnapshot {
        self.memory.memory()
    }

    fn fail(&mut self, what: &'static str, error: &dyn std::fmt::Display) {
        warn!(self.logger, "queue unusable"; "what" => what, "error" => %error);
        self.broken = true;
        self.needs_reset.raise();
    }

    /// A look at the rings failed. Rings outside the client's mapped memory are normal while
    /// the queue is idle: QEMU unmaps and remaps the firmware areas after SeaBIOS's POST with
    /// SeaBIOS's rings in them, and SeaBIOS goes on using the queue without a reset. Ring
    /// addresses are resolved again at every use, so such a queue works once its memory is back;
    /// only rings that are mapped but wrong make it unusable.
    fn ring_unreadable(
        &mut self,
        mem: &GuestMemoryMmap,
        what: &'static str,
        error: &dyn std::fmt::Display,
    ) {
        if self.queue.is_valid(mem) {
            self.fail(what, error);
        } else {
            debug!(self.logger, "rings not mapped"; "what" => what, "error" => %error);
        }
    }

    /// Every chain the driver made available, with notifications suppressed while the caller
    /// works on them. Empty when there is none or the queue is broken.
    pub fn pop_all(&mut self, mem: &GuestMemoryMmap) -> Vec<Chain> {
        let mut chains = Vec::new();
        self.pop_all_into(mem, &mut chains);
        chains
    }

    /// `pop_all` into the caller's vector, whose capacity the request path keeps from one pass
    /// to the next.
    pub fn pop_all_into(&mut self, mem: &GuestMemoryMmap, chains: &mut Vec<Chain>) {
        if self.broken {
            return;
        }
        if let Err(error) = self.queue.disable_notification(mem) {
            self.ring_unreadable(mem, "disable_notification", &error);
            return;
        }
        let table = GuestAddress(self.queue.desc_table());
        let queue_size = self.queue.size();
        match self.queue.iter(mem) {
            Ok(iter) => chains.extend(iter.map(|chain| Chain {
                head: chain.head_index(),
                table,
                queue_size,
            })),
            Err(error) => self.ring_unreadable(mem, "avail_ring", &error),
        }
    }

    /// Stops driver notifications while the caller polls the avail ring.
    pub fn suppress_notifications(&mut self, mem: &GuestMemoryMmap) {
        if self.broken {
            return;
        }
        if let Err(error) = self.queue.disable_notification(mem) {
            self.ring_unreadable(mem, "disable_notification", &error);
        }
    }

    /// Whether the driver made chains available that are not popped yet; notifications are
    /// left as they are.
    pub fn has_available(&mut self, mem: &GuestMemoryMmap) -> bool {
        if self.broken {
            return false;
        }
        match self
            .queue
            .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
        {
            Ok(index) => index.0 != self.queue.next_avail(),
            Err(error) => {
                self.ring_unreadable(mem, "avail_idx", &error);
                false
            }
        }
    }

    /// Re-enables notifications; true when chains arrived meanwhile (the caller pops again).
    pub fn more_available(&mut self, mem: &GuestMemoryMmap) -> bool {
        if self.broken {
            return false;
        }
        match self.queue.enable_notification(mem) {
            Ok(more) => more,
            Err(error) => {
                self.ring_unreadable(mem, "enable_notification", &error);
                false
            }
        }
    }

    /// Returns a chain to the driver with `len` bytes written.
    pub fn add_used(&mut self, mem: &GuestMemoryMmap, head: u16, len: u32) {
        if self.broken {
            return;
        }
        match self.queue.add_used(mem, head, len) {
            Ok(()) => self.returned = true,
            Err(error) => self.fail("add_used", &error),
        }
    }

    /// Ends a batch: one interrupt if anything was returned and the driver asked for it.
    pub fn notify(&mut self, mem: &GuestMemoryMmap) {
        if self.broken || !std::mem::take(&mut self.returned) {
            return;
        }
        match self.queue.needs_notification(mem) {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => debug!(self.logger, "used_event unreadable"; "error" => %error),
        }
        self.interrupt.trigger();
        self.counters.interrupted();
    }
}
