//! One virtqueue as a device worker serves it (virtio 1.2 §2.7, split rings): popping chains,
//! walking their descriptors into driver-readable and device-writable segments of guest memory,
//! reading, writing and handing those to the kernel as iovecs, returning chains and raising the
//! queue's interrupt once per batch when the driver wants one.
//!
//! Every access goes through a pass's [`CachedMemory`]: the pass's guest memory snapshot with
//! the region the previous access hit kept as a plain host range, so that a pass over a queue
//! whose rings and buffers lie in one region (as they do in practice) makes one region lookup,
//! and each access is a bounds check and a host pointer. Ring fields are little-endian atomics
//! read and written in place, with the orderings and fences of §2.7. A descriptor is translated
//! once, when its chain is collected: its segments keep their host addresses along with the
//! generation of the snapshot they belong to, and reads, writes and iovecs in that snapshot use
//! them as they are. Only buffers of an older snapshot (the client remapped memory meanwhile)
//! and buffers that span two regions take vm-memory's general path.

use std::cell::Cell;
use std::mem::size_of;
use std::num::Wrapping;
use std::ops::Deref;
use std::sync::atomic::{fence, AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use slog::{debug, warn, Logger};
use smallvec::SmallVec;
use virtio_bindings::virtio_ring::{VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::QueueT;
use vm_memory::{
    ByteValued, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryError,
    GuestMemoryLoadGuard, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};
use vmm_sys_util::eventfd::EventFd;

use super::queue_counters::QueueCounters;
use crate::virtio_device::{ActiveQueue, GuestMemory, Interrupt};

/// A snapshot of guest memory, kept by a request until it completes.
pub type MemorySnapshot = GuestMemoryLoadGuard<GuestMemoryMmap>;

/// Snapshot generations, unique in the process so that host addresses translated in one
/// snapshot are never taken for another's; 0 is none.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

/// The guest memory snapshot of one pass over a queue, with its generation and the region that
/// holds the queue's used ring in it, if one does.
pub struct PassMemory {
    snapshot: MemorySnapshot,
    generation: u64,
    rings: Option<HostRegion>,
}

impl Deref for PassMemory {
    type Target = MemorySnapshot;

    fn deref(&self) -> &MemorySnapshot {
        &self.snapshot
    }
}

/// A chain popped from a queue: where its descriptors are, not yet read
/// (`ChainBuffers::collect` walks it).
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

/// Why a ring could not be used.
#[derive(Debug, thiserror::Error)]
enum RingError {
    #[error("ring field at {addr:#x} is outside guest memory or misaligned")]
    Unreachable { addr: u64 },
    #[error("avail idx {avail} is more than the queue size ahead of the next chain {next}")]
    AvailIndex { avail: u16, next: u16 },
    #[error("used head {head} is outside the queue of {size}")]
    Head { head: u16, size: u16 },
}

/// Byte offsets in the rings (virtio 1.2 §2.7.6, §2.7.8).
const RING_HEADER: u64 = 4;
const AVAIL_ENTRY: u64 = 2;
const USED_ENTRY: u64 = 8;
const DESCRIPTOR: u64 = size_of::<Descriptor>() as u64;

/// Where a split queue's rings are, and how far the device got in them.
struct SplitRing {
    /// A power of two (virtio-queue checks it when the driver sets it), so that ring slots are
    /// indices masked, not divided.
    size: u16,
    desc_table: u64,
    avail: u64,
    used: u64,
    next_avail: Wrapping<u16>,
    next_used: Wrapping<u16>,
    /// `next_used` as the driver last saw it in the used idx.
    published_used: Wrapping<u16>,
    event_idx: bool,
    /// `next_used` when the driver's wish for an interrupt was last looked at (EVENT_IDX).
    signalled_used: Wrapping<u16>,
}

impl SplitRing {
    fn avail_idx(&self) -> u64 {
        self.avail + 2
    }

    fn avail_entry(&self, at: Wrapping<u16>) -> u64 {
        self.avail + RING_HEADER + AVAIL_ENTRY * u64::from(at.0 & (self.size - 1))
    }

    fn used_event(&self) -> u64 {
        self.avail + RING_HEADER + AVAIL_ENTRY * u64::from(self.size)
    }

    fn used_idx(&self) -> u64 {
        self.used + 2
    }

    fn used_entry(&self, at: Wrapping<u16>) -> u64 {
        self.used + RING_HEADER + USED_ENTRY * u64::from(at.0 & (self.size - 1))
    }

    fn avail_event(&self) -> u64 {
        self.used + RING_HEADER + USED_ENTRY * u64::from(self.size)
    }

    /// The guest areas of the descriptor table and the rings (with their event fields).
    fn areas(&self) -> [(u64, u64); 3] {
        let size = u64::from(self.size);
        [
            (self.desc_table, DESCRIPTOR * size),
            (self.avail, RING_HEADER + AVAIL_ENTRY * size + 2),
            (self.used, RING_HEADER + USED_ENTRY * size + 2),
        ]
    }
}

/// A queue with everything needed to serve it from any thread.
pub struct Virtqueue {
    index: u16,
    ring: SplitRing,
    notifier: Arc<EventFd>,
    memory: GuestMemory,
    /// The snapshot the last pass used, kept so that no other snapshot can take its address
    /// while `generation` names it.
    current: Option<Arc<GuestMemoryMmap>>,
    generation: u64,
    /// The region of `current` that holds the used ring: where a pass starts looking, so that
    /// a pass (a poll that finds a chain or two) makes no region lookup at all when the rings
    /// and buffers lie in one region, as they do in practice.
    rings: Option<HostRegion>,
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
            queue,
            notifier,
            interrupt,
        } = active;
        let next_used = Wrapping(queue.next_used());
        Virtqueue {
            index,
            ring: SplitRing {
                size: queue.size(),
                desc_table: queue.desc_table(),
                avail: queue.avail_ring(),
                used: queue.used_ring(),
                next_avail: Wrapping(queue.next_avail()),
                next_used,
                published_used: next_used,
                event_idx,
                signalled_used: next_used,
            },
            notifier,
            memory,
            current: None,
            generation: 0,
            rings: None,
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

    pub fn size(&self) -> u16 {
        self.ring.size
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

    /// The guest memory for a pass, with a new generation when the client remapped memory
    /// since the last pass.
    pub fn snapshot(&mut self) -> PassMemory {
        let snapshot = self.memory.memory();
        let same = self
            .current
            .as_ref()
            .is_some_and(|current| std::ptr::eq(Arc::as_ptr(current), &*snapshot));
        if !same {
            self.current = Some(snapshot.clone().into_inner());
            self.generation = GENERATIONS.fetch_add(1, Ordering::Relaxed);
            self.rings = snapshot
                .find_region(GuestAddress(self.ring.used))
                .and_then(HostRegion::of);
        }
        PassMemory {
            snapshot,
            generation: self.generation,
            // Found in `current`, the very snapshot this pass holds (same generation).
            rings: self.rings,
        }
    }

    /// Out of line, so that the ring accesses that may end here stay small enough to inline.
    #[cold]
    #[inline(never)]
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
    fn ring_unreadable(&mut self, mem: &CachedMemory<'_>, what: &'static str, error: &RingError) {
        let mapped = self.ring.areas().iter().all(|&(addr, len)| {
            usize::try_from(len)
                .is_ok_and(|len| GuestMemoryBackend::check_range(mem.mem, GuestAddress(addr), len))
        });
        if mapped {
            self.fail(what, error);
        } else {
            debug!(self.logger, "rings not mapped"; "what" => what, "error" => %error);
        }
    }

    fn avail_idx(
        &self,
        mem: &CachedMemory<'_>,
        order: Ordering,
    ) -> Result<Wrapping<u16>, RingError> {
        let idx = mem.field16(self.ring.avail_idx())?;
        Ok(Wrapping(u16::from_le(idx.load(order))))
    }

    /// Tells the driver when to kick (virtio 1.2 §2.7.10): once `ahead` chains beyond those
    /// popped are available (1: at the next one), or not at all (0). With EVENT_IDX that is
    /// `avail_event`, which Linux's `virtqueue_kick_prepare` looks for among the chains it
    /// added since its last kick; not at all writes nothing, as the driver stops by itself once
    /// `avail_event` is passed. Without EVENT_IDX the flag can only say "kick" or "do not", so
    /// any batch longer than one chain is NO_NOTIFY and the caller looks again by itself.
    fn kick_after(&self, mem: &CachedMemory<'_>, ahead: u16) -> Result<(), RingError> {
        let ring = &self.ring;
        match (ring.event_idx, ahead) {
            (true, 0) => {}
            (true, ahead) => {
                let at = ring.next_avail + Wrapping(ahead - 1);
                mem.field16(ring.avail_event())?
                    .store(at.0.to_le(), Ordering::Relaxed);
            }
            (false, ahead) => {
                let flags = if ahead == 1 {
                    0
                } else {
                    VRING_USED_F_NO_NOTIFY as u16
                };
                mem.field16(ring.used)?
                    .store(flags.to_le(), Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Every chain the driver made available, with notifications suppressed while the caller
    /// works on them. Empty when there is none or the queue is broken.
    pub fn pop_all(&mut self, mem: &CachedMemory<'_>) -> Vec<Chain> {
        let mut chains = Vec::new();
        self.pop_all_into(mem, &mut chains);
        chains
    }

    /// `pop_all` into the caller's vector, whose capacity the request path keeps from one pass
    /// to the next.
    pub fn pop_all_into(&mut self, mem: &CachedMemory<'_>, chains: &mut Vec<Chain>) {
        if self.broken {
            return;
        }
        if let Err(error) = self.kick_after(mem, 0) {
            return self.ring_unreadable(mem, "disable_notification", &error);
        }
        // Acquire: the ring entries and descriptors behind the index are read after it.
        let avail = match self.avail_idx(mem, Ordering::Acquire) {
            Ok(avail) => avail,
            Err(error) => return self.ring_unreadable(mem, "avail_ring", &error),
        };
        let next = self.ring.next_avail;
        if (avail - next).0 > self.ring.size {
            let error = RingError::AvailIndex {
                avail: avail.0,
                next: next.0,
            };
            return self.ring_unreadable(mem, "avail_ring", &error);
        }
        let table = GuestAddress(self.ring.desc_table);
        let queue_size = self.ring.size;
        // The ring's entries, found once for the pass's chains when they lie in one region.
        let ring_len = AVAIL_ENTRY as usize * usize::from(queue_size);
        let entries = mem
            .host(self.ring.avail + RING_HEADER, ring_len)
            .filter(|&host| host as usize % std::mem::align_of::<AtomicU16>() == 0);
        while self.ring.next_avail != avail {
            let at = self.ring.next_avail;
            let entry = match entries {
                // SAFETY: the index is masked below the queue size, so the entry lies in the
                // ring, which `host` found whole, and aligned, in a region of the snapshot `mem`
                // borrows. The driver writes ring fields concurrently: read as an atomic.
                Some(host) => unsafe {
                    let slot = usize::from(at.0 & (queue_size - 1));
                    AtomicU16::from_host(host.wrapping_add(AVAIL_ENTRY as usize * slot))
                },
                None => match mem.field16(self.ring.avail_entry(at)) {
                    Ok(entry) => entry,
                    Err(_) => break,
                },
            };
            let head = u16::from_le(entry.load(Ordering::Relaxed));
            self.ring.next_avail += Wrapping(1);
            chains.push(Chain {
                head,
                table,
                queue_size,
            });
        }
    }

    /// Stops driver notifications while the caller polls the avail ring. With EVENT_IDX,
    /// `avail_event` goes back to the last chain popped, which the driver has passed: left
    /// where the last pass asked for a kick, a batch ahead, it would bring one more kick
    /// once the driver got there.
    pub fn suppress_notifications(&mut self, mem: &CachedMemory<'_>) {
        if self.broken {
            return;
        }
        let suppressed = if self.ring.event_idx {
            let passed = self.ring.next_avail - Wrapping(1);
            mem.field16(self.ring.avail_event())
                .map(|event| event.store(passed.0.to_le(), Ordering::Relaxed))
        } else {
            self.kick_after(mem, 0)
        };
        if let Err(error) = suppressed {
            self.ring_unreadable(mem, "disable_notification", &error);
        }
    }

    /// Whether the driver made chains available that are not popped yet; notifications are
    /// left as they are.
    pub fn has_available(&mut self, mem: &CachedMemory<'_>) -> bool {
        if self.broken {
            return false;
        }
        match self.avail_idx(mem, Ordering::Acquire) {
            Ok(index) => index != self.ring.next_avail,
            Err(error) => {
                self.ring_unreadable(mem, "avail_idx", &error);
                false
            }
        }
    }

    /// How many of the chains popped so far the driver has not taken back yet, as far as it
    /// says: with EVENT_IDX, Linux moves `used_event` to the used entries it has consumed while
    /// it wants interrupts, so this counts the chains in flight and the answers it has still to
    /// read, which are what keeps it from sending more. None without EVENT_IDX, or when the
    /// field is more than a queue away (a hostile driver, or one that parked it with
    /// interrupts off).
    pub fn driver_holds(&self, mem: &CachedMemory<'_>) -> Option<u16> {
        let ring = &self.ring;
        if self.broken || !ring.event_idx {
            return None;
        }
        let used_event = mem.field16(ring.used_event()).ok()?.load(Ordering::Relaxed);
        let holds = ring.next_avail - Wrapping(u16::from_le(used_event));
        (holds.0 <= ring.size).then_some(holds.0)
    }

    /// Re-enables notifications; true when chains arrived meanwhile (the caller pops again).
    pub fn more_available(&mut self, mem: &CachedMemory<'_>) -> bool {
        self.kick_at_batch(mem, 1)
    }

    /// Asks the driver to kick once `ahead` chains (at least one, at most the queue size)
    /// beyond those popped are available; true when that many already are, which no kick will
    /// announce (the caller pops again). Fewer are left for the caller to look at by itself.
    pub fn kick_at_batch(&mut self, mem: &CachedMemory<'_>, ahead: u16) -> bool {
        if self.broken {
            return false;
        }
        let ahead = ahead.clamp(1, self.ring.size);
        let more = self.kick_after(mem, ahead).and_then(|()| {
            // The driver reads our notification setting after publishing its avail idx; we
            // read its idx after publishing the setting, or a chain made available in between
            // would get neither a notification nor a look.
            fence(Ordering::SeqCst);
            self.avail_idx(mem, Ordering::Relaxed)
        });
        match more {
            Ok(avail) => (avail - self.ring.next_avail).0 >= ahead,
            Err(error) => {
                self.ring_unreadable(mem, "enable_notification", &error);
                false
            }
        }
    }

    /// Returns a chain to the driver with `len` bytes written: its used element is written now,
    /// and the driver sees it with the others of the batch once `publish_used` (or
    /// `interrupt_if_wanted`) moves the used idx, one store for the batch.
    #[inline(always)]
    pub fn add_used(&mut self, mem: &CachedMemory<'_>, head: u16, len: u32) {
        if self.broken {
            return;
        }
        match self.put_used(mem, head, len) {
            Ok(()) => self.returned = true,
            Err(error) => self.fail("add_used", &error),
        }
    }

    #[inline(always)]
    fn put_used(&mut self, mem: &CachedMemory<'_>, head: u16, len: u32) -> Result<(), RingError> {
        let ring = &self.ring;
        if head >= ring.size {
            return Err(RingError::Head {
                head,
                size: ring.size,
            });
        }
        let (id, written) = mem.used_element(ring.used_entry(ring.next_used))?;
        id.store(u32::from(head).to_le(), Ordering::Relaxed);
        written.store(len.to_le(), Ordering::Relaxed);
        self.ring.next_used += Wrapping(1);
        Ok(())
    }

    /// Shows the driver the chains returned since the last call, with one store of the used idx.
    pub fn publish_used(&mut self, mem: &CachedMemory<'_>) {
        let ring = &self.ring;
        if self.broken || ring.published_used == ring.next_used {
            return;
        }
        match mem.field16(ring.used_idx()) {
            Ok(used_idx) => {
                // Release: the driver that sees the new idx sees the entries and the data
                // before it.
                used_idx.store(ring.next_used.0.to_le(), Ordering::Release);
                self.ring.published_used = self.ring.next_used;
            }
            Err(error) => self.fail("add_used", &error),
        }
    }

    /// Whether chains were returned since the last interrupt decision (`interrupt_if_wanted`).
    pub fn returned(&self) -> bool {
        self.returned && !self.broken
    }

    /// Ends a batch: publishes what was returned, and interrupts once if anything was and the
    /// driver asked for it.
    pub fn interrupt_if_wanted(&mut self, mem: &CachedMemory<'_>) {
        self.publish_used(mem);
        if self.broken || !std::mem::take(&mut self.returned) {
            return;
        }
        match self.interrupt_wanted(mem) {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => debug!(self.logger, "used_event unreadable"; "error" => %error),
        }
        self.interrupt.trigger();
        self.counters.interrupted();
    }

    /// Whether the driver wants an interrupt for the chains returned since the last decision:
    /// with EVENT_IDX when `used_event` lies among them, otherwise unless it set NO_INTERRUPT.
    fn interrupt_wanted(&mut self, mem: &CachedMemory<'_>) -> Result<bool, RingError> {
        // The used idx is published before the driver's wish is read, and the driver publishes
        // its wish before reading the used idx: without this fence both could miss the other.
        fence(Ordering::SeqCst);
        let ring = &self.ring;
        if !ring.event_idx {
            let flags = u16::from_le(mem.field16(ring.avail)?.load(Ordering::Relaxed));
            return Ok(flags & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0);
        }
        let used_event = Wrapping(u16::from_le(
            mem.field16(ring.used_event())?.load(Ordering::Relaxed),
        ));
        let (new, old) = (ring.next_used, ring.signalled_used);
        self.ring.signalled_used = new;
        Ok(new - used_event - Wrapping(1) < new - old)
    }
}

/// A guest memory region as a plain host range. The base is kept as a number, so that a queue
/// can keep the range between passes and move to another thread with it; it is turned back into
/// a pointer only under a [`CachedMemory`] borrowing the snapshot the range was found in.
#[derive(Debug, Clone, Copy)]
struct HostRegion {
    start: u64,
    len: u64,
    base: usize,
}

impl HostRegion {
    fn of(region: &GuestRegionMmap) -> Option<HostRegion> {
        let slice = region.as_volatile_slice().ok()?;
        Some(HostRegion {
            start: region.start_addr().0,
            len: slice.len() as u64,
            base: slice.ptr_guard_mut().as_ptr() as usize,
        })
    }

    /// The host address of the `len` bytes at guest `addr`, when they lie in this region.
    #[inline(always)]
    fn host(self, addr: u64, len: usize) -> Option<*mut u8> {
        let offset = addr.checked_sub(self.start)?;
        if offset.checked_add(len as u64)? > self.len {
            return None;
        }
        // In bounds of the mapping, checked just above.
        Some(self.base.wrapping_add(offset as usize) as *mut u8)
    }
}

/// Guest memory as one pass over a queue sees it, remembering the last region an access hit.
pub struct CachedMemory<'a> {
    mem: &'a GuestMemoryMmap,
    generation: u64,
    region: Cell<Option<HostRegion>>,
}

impl<'a> CachedMemory<'a> {
    pub fn new(memory: &'a PassMemory) -> CachedMemory<'a> {
        CachedMemory {
            mem: &memory.snapshot,
            generation: memory.generation,
            region: Cell::new(memory.rings),
        }
    }

    /// The host address of the `len` bytes at `addr`, valid while the snapshot is borrowed;
    /// None when they do not lie within one region.
    #[inline(always)]
    fn host(&self, addr: u64, len: usize) -> Option<*mut u8> {
        if let Some(host) = self.region.get().and_then(|region| region.host(addr, len)) {
            return Some(host);
        }
        self.host_in_another_region(addr, len)
    }

    /// `host` past the region the last access hit: the lookup, kept out of line so that the
    /// usual hit stays small enough to inline.
    #[cold]
    #[inline(never)]
    fn host_in_another_region(&self, addr: u64, len: usize) -> Option<*mut u8> {
        let region = HostRegion::of(self.mem.find_region(GuestAddress(addr))?)?;
        self.region.set(Some(region));
        region.host(addr, len)
    }

    /// The ring field at `addr` as the atomic `A` (`AtomicU16` or `AtomicU32`), or None when
    /// it is outside memory or misaligned.
    #[inline]
    fn atomic<A: RingField>(&self, addr: u64) -> Option<&'a A> {
        let host = self.host(addr, size_of::<A>())?;
        // A mask, not `align_offset`, which costs several times as much per ring access.
        if host as usize & (std::mem::align_of::<A>() - 1) != 0 {
            return None;
        }
        // SAFETY: `host` is the address of size_of::<A>() bytes, aligned for A, inside a
        // mapping of the snapshot this memory borrows for 'a. The driver reads and writes ring
        // fields concurrently, which is why they are accessed only as atomics.
        Some(unsafe { A::from_host(host) })
    }

    #[inline]
    fn field16(&self, addr: u64) -> Result<&'a AtomicU16, RingError> {
        self.atomic(addr).ok_or(RingError::Unreachable { addr })
    }

    /// The id and len fields of the used element at `addr`, with one lookup.
    #[inline(always)]
    fn used_element(&self, addr: u64) -> Result<(&'a AtomicU32, &'a AtomicU32), RingError> {
        let unreachable = RingError::Unreachable { addr };
        let host = self
            .host(addr, USED_ENTRY as usize)
            .filter(|&host| host as usize & (std::mem::align_of::<AtomicU32>() - 1) == 0)
            .ok_or(unreachable)?;
        // SAFETY: `host` addresses a whole, aligned used element of a region of the snapshot
        // borrowed for 'a; its two u32 fields are at offsets 0 and 4. The driver reads them
        // concurrently, which is why they are accessed only as atomics.
        Ok(unsafe {
            (
                AtomicU32::from_host(host),
                AtomicU32::from_host(host.wrapping_add(4)),
            )
        })
    }

    /// The descriptor at `addr`, or None when it cannot be read (a table that is not in one
    /// region).
    #[cold]
    #[inline(never)]
    fn descriptor(&self, addr: u64) -> Option<Descriptor> {
        match self.host(addr, size_of::<Descriptor>()) {
            // SAFETY: `host` is the address of a whole descriptor in the snapshot borrowed for
            // 'a (checked by `host`).
            Some(host) => Some(unsafe { read_descriptor(host) }),
            None => self.mem.read_obj(GuestAddress(addr)).ok(),
        }
    }
}

/// The atomics ring fields are accessed as.
trait RingField {
    /// # Safety
    /// `host` is aligned for Self, valid for its size and lives for 'a.
    unsafe fn from_host<'a>(host: *mut u8) -> &'a Self;
}

impl RingField for AtomicU16 {
    unsafe fn from_host<'a>(host: *mut u8) -> &'a AtomicU16 {
        // SAFETY: as the caller promised.
        unsafe { AtomicU16::from_ptr(host.cast()) }
    }
}

impl RingField for AtomicU32 {
    unsafe fn from_host<'a>(host: *mut u8) -> &'a AtomicU32 {
        // SAFETY: as the caller promised.
        unsafe { AtomicU32::from_ptr(host.cast()) }
    }
}

/// Copies the descriptor at `host` out of guest memory (a descriptor is 16 bytes of plain data,
/// indirect tables need not be aligned).
///
/// # Safety
/// `host` is valid for reads of a descriptor.
#[inline(always)]
unsafe fn read_descriptor(host: *const u8) -> Descriptor {
    let mut descriptor = Descriptor::default();
    let bytes = descriptor.as_mut_slice();
    // SAFETY: `host` is valid for the descriptor's size (the caller's promise), `bytes` is
    // exactly that size and a local, so they do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(host, bytes.as_mut_ptr(), bytes.len()) };
    descriptor
}

/// What makes a chain malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainDefect {
    /// No descriptor at all (or the head could not be read).
    Empty,
    /// The chain ends on a descriptor that still points to a next one: a loop, a chain longer
    /// than the queue, a next index out of range or an unusable indirect table.
    Truncated,
    /// A driver-readable descriptor follows a device-writable one.
    ReadableAfterWritable,
    /// A descriptor points outside the DMA-mapped memory.
    OutsideMemory { addr: u64, len: u32 },
}

impl ChainDefect {
    /// The name logged for this defect.
    pub fn name(self) -> &'static str {
        match self {
            ChainDefect::Empty => "empty",
            ChainDefect::Truncated => "truncated",
            ChainDefect::ReadableAfterWritable => "readable_after_writable",
            ChainDefect::OutsideMemory { .. } => "outside_memory",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    addr: u64,
    len: u32,
}

/// The iovecs of one request, built in place in the record of its command; the usual few are
/// stored inline, without an allocation.
#[derive(Default)]
pub struct IoVecs(SmallVec<[libc::iovec; INLINE_IOVECS]>);

/// Iovecs a request keeps without an allocation.
const INLINE_IOVECS: usize = 4;

// SAFETY: the iovecs are plain addresses into guest memory; whoever hands them to an engine
// answers for the memory (`block::IoBuffers::borrowed`), and they go to another thread only
// with the queue worker that owns them, or as such a request.
unsafe impl Send for IoVecs {}

impl Deref for IoVecs {
    type Target = [libc::iovec];

    fn deref(&self) -> &[libc::iovec] {
        &self.0
    }
}

/// One direction of a chain: segments in chain order.
#[derive(Debug, Default, Clone)]
pub struct Segments {
    /// Inline for the usual chains (header, data, response), so collecting allocates nothing.
    list: SmallVec<[Segment; 4]>,
    len: u64,
    /// The snapshot generation in which every segment was found within one region at
    /// `host_offset` from its guest address; 0 when a segment spans regions.
    generation: u64,
    /// Host address minus guest address (wrapping) of the segments in `generation`: in the
    /// usual chain, whose buffers lie in one region, that is one number for all of them.
    host_offset: usize,
}

/// Whether the `len` bytes at `addr`, which lie in no one region, are all in guest memory.
#[cold]
#[inline(never)]
fn spans_regions(mem: &CachedMemory<'_>, addr: u64, len: u32) -> bool {
    GuestMemoryBackend::check_range(mem.mem, GuestAddress(addr), len as usize)
}

/// A piece of the segments to copy from or to.
struct Piece {
    addr: u64,
    len: usize,
}

impl Segments {
    /// Empties the segments for a chain collected in `mem`. A list that a long chain spilled
    /// to the heap is let go rather than kept, so that a slot holds no more than a usual
    /// chain needs between commands.
    fn restart(&mut self, mem: &CachedMemory<'_>) {
        if self.list.spilled() {
            self.list = SmallVec::new();
        } else {
            // SAFETY: no element is read past the new length, and a `Segment` is `Copy`, so
            // forgetting the old ones leaks nothing (`clear` would visit each to drop it).
            unsafe { self.list.set_len(0) };
        }
        self.len = 0;
        self.generation = mem.generation;
        self.host_offset = 0;
    }

    /// Adds the `len` bytes at `addr`; false when they are not all in guest memory.
    #[inline(always)]
    fn push(&mut self, mem: &CachedMemory<'_>, addr: u64, len: u32) -> bool {
        if len == 0 {
            return true;
        }
        match mem.host(addr, len as usize) {
            Some(host) => {
                let host_offset = (host as usize).wrapping_sub(addr as usize);
                // No segment has length 0, so no bytes means no segment (and asks the list
                // nothing).
                if self.len == 0 {
                    self.host_offset = host_offset;
                } else if host_offset != self.host_offset {
                    self.generation = 0;
                }
            }
            None => {
                if !spans_regions(mem, addr, len) {
                    return false;
                }
                self.generation = 0;
            }
        }
        self.list.push(Segment { addr, len });
        self.len += u64::from(len);
        true
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces covering `len` bytes after the first `skip`, stopping at the end of the
    /// segments.
    fn pieces(&self, skip: u64, len: u64) -> impl Iterator<Item = Piece> + '_ {
        let mut skip = skip;
        let mut left = len;
        self.list.iter().filter_map(move |segment| {
            let segment_len = u64::from(segment.len);
            if skip >= segment_len {
                skip -= segment_len;
                return None;
            }
            if left == 0 {
                return None;
            }
            let take = (segment_len - skip).min(left);
            // take <= u32::MAX (a segment length), so it fits usize.
            let piece = Piece {
                addr: segment.addr.wrapping_add(skip),
                len: take as usize,
            };
            skip = 0;
            left -= take;
            Some(piece)
        })
    }

    /// The host address of `piece` in `mem`: at the offset found when the chain was collected
    /// if `mem` is of that snapshot, else translated again; None when the piece does not lie
    /// within one region of `mem`.
    #[inline]
    fn host(&self, mem: &CachedMemory<'_>, piece: &Piece) -> Option<*mut u8> {
        if self.generation == mem.generation {
            Some((piece.addr as usize).wrapping_add(self.host_offset) as *mut u8)
        } else {
            mem.host(piece.addr, piece.len)
        }
    }

    /// The host address of the `len` bytes after the first `skip` when they lie within one
    /// segment translated in `mem`'s snapshot: what the request path touches (a header, a
    /// response, a data buffer) usually does, and then takes neither pieces nor translation.
    #[inline(always)]
    fn within_one(&self, mem: &CachedMemory<'_>, skip: u64, len: u64) -> Option<*mut u8> {
        if self.generation != mem.generation {
            return None;
        }
        let mut skip = skip;
        for segment in &self.list {
            let segment_len = u64::from(segment.len);
            if skip < segment_len {
                if len > segment_len - skip {
                    return None;
                }
                let addr = segment.addr.wrapping_add(skip) as usize;
                return Some(addr.wrapping_add(self.host_offset) as *mut u8);
            }
            skip -= segment_len;
        }
        None
    }

    /// Fills `out` from the bytes after the first `skip`; returns how many were available.
    #[inline(always)]
    pub fn read(
        &self,
        mem: &CachedMemory<'_>,
        skip: u64,
        out: &mut [u8],
    ) -> Result<usize, GuestMemoryError> {
        if let Some(host) = self.within_one(mem, skip, out.len() as u64) {
            // SAFETY: `within_one` found the bytes inside one segment that `push` checked
            // against a region of the snapshot `mem` borrows, at this offset; `out` is a
            // local buffer, not guest memory, so they do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(host.cast_const(), out.as_mut_ptr(), out.len())
            };
            return Ok(out.len());
        }
        self.read_pieces(mem, skip, out)
    }

    /// `read` of bytes that are not within one segment of `mem`'s snapshot.
    #[inline(never)]
    fn read_pieces(
        &self,
        mem: &CachedMemory<'_>,
        skip: u64,
        out: &mut [u8],
    ) -> Result<usize, GuestMemoryError> {
        let mut done = 0;
        for piece in self.pieces(skip, out.len() as u64) {
            let out = &mut out[done..done + piece.len];
            match self.host(mem, &piece) {
                // SAFETY: `host` addresses `piece.len` bytes of a region of the snapshot `mem`
                // borrows: translated just now, or of the same generation, where `push`
                // checked each segment against a region at this offset; `out` is a local
                // buffer of that length, not guest memory, so they do not overlap.
                Some(host) => unsafe {
                    std::ptr::copy_nonoverlapping(host.cast_const(), out.as_mut_ptr(), out.len())
                },
                None => mem.mem.read_slice(out, GuestAddress(piece.addr))?,
            }
            done += piece.len;
        }
        Ok(done)
    }

    /// Writes `data` after the first `skip` bytes; returns how many bytes fitted.
    #[inline(always)]
    pub fn write(
        &self,
        mem: &CachedMemory<'_>,
        skip: u64,
        data: &[u8],
    ) -> Result<usize, GuestMemoryError> {
        if let Some(host) = self.within_one(mem, skip, data.len() as u64) {
            // SAFETY: as in `read`, with the copy going the other way.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), host, data.len()) };
            return Ok(data.len());
        }
        self.write_pieces(mem, skip, data)
    }

    /// `write` of bytes that are not within one segment of `mem`'s snapshot.
    #[inline(never)]
    fn write_pieces(
        &self,
        mem: &CachedMemory<'_>,
        skip: u64,
        data: &[u8],
    ) -> Result<usize, GuestMemoryError> {
        let mut done = 0;
        for piece in self.pieces(skip, data.len() as u64) {
            let data = &data[done..done + piece.len];
            match self.host(mem, &piece) {
                // SAFETY: as in `read`, with the copy going the other way.
                Some(host) => unsafe {
                    std::ptr::copy_nonoverlapping(data.as_ptr(), host, data.len())
                },
                None => mem.mem.write_slice(data, GuestAddress(piece.addr))?,
            }
            done += piece.len;
        }
        Ok(done)
    }

    /// Replaces `iovecs` with host iovecs for `len` bytes after the first `skip`, split where
    /// guest memory regions end, and returns the bytes they cover (fewer than `len` where the
    /// segments end first). The iovecs stay valid as long as the snapshot behind `mem` is
    /// alive. Iovecs that a long chain spilled to the heap are let go, as `restart` lets go of
    /// segments.
    #[inline(always)]
    pub fn iovecs_into(
        &self,
        mem: &CachedMemory<'_>,
        skip: u64,
        len: u64,
        iovecs: &mut IoVecs,
    ) -> Result<u64, GuestMemoryError> {
        if let Some(host) = self.within_one(mem, skip, len) {
            // len lies within one segment, whose length is a u32.
            let iovec = libc::iovec {
                iov_base: host.cast(),
                iov_len: len as usize,
            };
            let mut inline = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; INLINE_IOVECS];
            inline[0] = iovec;
            // Written whole, which costs less than a clear and a push.
            *iovecs = IoVecs(SmallVec::from_buf_and_len(inline, 1));
            return Ok(len);
        }
        if iovecs.0.spilled() {
            *iovecs = IoVecs::default();
        } else {
            iovecs.0.clear();
        }
        self.iovecs_of_pieces(mem, skip, len, iovecs)
    }

    /// `iovecs_into` for bytes that are not within one segment of `mem`'s snapshot.
    #[inline(never)]
    fn iovecs_of_pieces(
        &self,
        mem: &CachedMemory<'_>,
        skip: u64,
        len: u64,
        iovecs: &mut IoVecs,
    ) -> Result<u64, GuestMemoryError> {
        let mut covered = 0;
        for piece in self.pieces(skip, len) {
            covered += piece.len as u64;
            if let Some(host) = self.host(mem, &piece) {
                iovecs.0.push(libc::iovec {
                    iov_base: host.cast(),
                    iov_len: piece.len,
                });
                continue;
            }
            for slice in
                GuestMemoryBackend::get_slices(mem.mem, GuestAddress(piece.addr), piece.len)
            {
                let slice = slice?;
                iovecs.0.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
            }
        }
        Ok(covered)
    }
}

/// A chain split into its driver-readable and device-writable parts.
#[derive(Debug, Default, Clone)]
pub struct ChainBuffers {
    pub readable: Segments,
    pub writable: Segments,
}

impl ChainBuffers {
    /// Walks `chain`, checking every descriptor against the memory map. On a defect, returns
    /// what could be collected along with it, so that a response can still be attempted.
    pub fn collect(chain: Chain, mem: &CachedMemory<'_>) -> (ChainBuffers, Option<ChainDefect>) {
        let mut buffers = ChainBuffers::default();
        let defect = buffers.collect_again(chain, mem);
        (buffers, defect)
    }

    /// `collect` into these buffers, which forget the chain they held: the request path
    /// collects in place, into the slot that keeps the command, rather than moving the
    /// buffers there.
    /// Inlined: the request path collects every chain through it, and the call cost some
    /// 10 instructions a chain.
    #[inline(always)]
    pub fn collect_again(&mut self, chain: Chain, mem: &CachedMemory<'_>) -> Option<ChainDefect> {
        if self.collect_usual(chain, mem) {
            return None;
        }
        self.walk(chain, mem)
    }

    /// Collects the chain Linux makes with indirect descriptors, when `chain` is that and
    /// nothing in it is wrong: a head that points to an indirect table, whose descriptors
    /// follow each other in table order (each but the last with NEXT to the next index), none
    /// indirect, the driver-readable ones first, fewer than 4 GiB in all, and the table and
    /// every buffer in the region the table is in. It reads each descriptor once and skips
    /// the general walk's checks, which such a chain passes; false, with the buffers to be
    /// collected again, for any other chain, which `walk` takes with every check. Both collect
    /// the same buffers from such a chain.
    #[inline(always)]
    fn collect_usual(&mut self, chain: Chain, mem: &CachedMemory<'_>) -> bool {
        if chain.head >= chain.queue_size
            || self.readable.list.spilled()
            || self.writable.list.spilled()
        {
            return false;
        }
        let head_at = chain
            .table
            .0
            .checked_add(u64::from(chain.head) * DESCRIPTOR);
        let Some(head) = head_at.and_then(|at| mem.host(at, size_of::<Descriptor>())) else {
            return false;
        };
        // SAFETY: `host` found the whole descriptor in a region of the snapshot `mem` borrows.
        let head = unsafe { read_descriptor(head) };
        let table_len = head.len();
        let count = u64::from(table_len) / DESCRIPTOR;
        if !head.refers_to_indirect_table()
            || count == 0
            || u64::from(table_len) % DESCRIPTOR != 0
            || count > u64::from(u16::MAX)
        {
            return false;
        }
        let Some(table) = mem.host(head.addr().0, table_len as usize) else {
            return false;
        };
        // The region `host` found the table in.
        let Some(region) = mem.region.get() else {
            return false;
        };
        // SAFETY: neither list spilled, and a `Segment` is `Copy`: forgetting the elements
        // leaks nothing.
        unsafe {
            self.readable.list.set_len(0);
            self.writable.list.set_len(0);
        }
        let (mut readable, mut writable) = (0u64, 0u64);
        let mut bytes = 0u32;
        for index in 0..count as u16 {
            // SAFETY: index < count, so the descriptor lies in the table, which `host` found
            // whole in a region of the snapshot `mem` borrows.
            let descriptor =
                unsafe { read_descriptor(table.wrapping_add(usize::from(index) * 16)) };
            let follows = if index + 1 == count as u16 {
                !descriptor.has_next()
            } else {
                descriptor.has_next() && descriptor.next() == index + 1
            };
            let (addr, len) = (descriptor.addr().0, descriptor.len());
            let Some(sum) = bytes.checked_add(len) else {
                return false;
            };
            bytes = sum;
            let write = descriptor.is_write_only();
            if !follows
                || descriptor.refers_to_indirect_table()
                || (!write && writable != 0)
                || region.host(addr, len as usize).is_none()
            {
                return false;
            }
            if len == 0 {
                continue;
            }
            let segment = Segment { addr, len };
            if write {
                self.writable.list.push(segment);
                writable += u64::from(len);
            } else {
                self.readable.list.push(segment);
                readable += u64::from(len);
            }
        }
        let host_offset = region.base.wrapping_sub(region.start as usize);
        for (segments, len) in [
            (&mut self.readable, readable),
            (&mut self.writable, writable),
        ] {
            segments.len = len;
            segments.generation = mem.generation;
            segments.host_offset = if len == 0 { 0 } else { host_offset };
        }
        true
    }

    /// Walks `chain` descriptor by descriptor, with every check of virtio 1.2 §2.7.5.
    fn walk(&mut self, chain: Chain, mem: &CachedMemory<'_>) -> Option<ChainDefect> {
        self.readable.restart(mem);
        self.writable.restart(mem);
        let mut defect = None;
        let mut last_has_next = None;
        for descriptor in Descriptors::new(chain, mem) {
            last_has_next = Some(descriptor.has_next());
            let (addr, len) = (descriptor.addr().0, descriptor.len());
            let write_only = descriptor.is_write_only();
            let segments = if write_only {
                &mut self.writable
            } else {
                &mut self.readable
            };
            if !segments.push(mem, addr, len) {
                defect.get_or_insert(ChainDefect::OutsideMemory { addr, len });
            } else if !write_only && !self.writable.is_empty() {
                defect.get_or_insert(ChainDefect::ReadableAfterWritable);
            }
        }
        match last_has_next {
            None => Some(ChainDefect::Empty),
            Some(true) => Some(ChainDefect::Truncated),
            Some(false) => defect,
        }
    }
}

/// The descriptors of a chain, following virtio 1.2 §2.7.5 with the limits of virtio-queue's
/// `DescriptorChain`: at most as many descriptors as the table has, one level of indirection,
/// an indirect table of whole descriptors, and fewer than 4 GiB in all. The walk ends early
/// (the last descriptor still pointing to a next one) where a limit is hit or a descriptor
/// cannot be read.
struct Descriptors<'m, 'a> {
    mem: &'m CachedMemory<'a>,
    table: u64,
    /// The table's host address when it lies in one region.
    table_host: Option<*mut u8>,
    table_len: u16,
    next: u16,
    /// Descriptors the current table may still yield: ends loops.
    ttl: u16,
    indirect: bool,
    yielded_bytes: u32,
}

impl<'m, 'a> Descriptors<'m, 'a> {
    fn new(chain: Chain, mem: &'m CachedMemory<'a>) -> Descriptors<'m, 'a> {
        let mut descriptors = Descriptors {
            mem,
            table: 0,
            table_host: None,
            table_len: 0,
            next: chain.head,
            ttl: 0,
            indirect: false,
            yielded_bytes: 0,
        };
        descriptors.enter(chain.table.0, chain.queue_size);
        descriptors
    }

    fn enter(&mut self, table: u64, len: u16) {
        self.table = table;
        self.table_host = self
            .mem
            .host(table, usize::from(len) * size_of::<Descriptor>());
        self.table_len = len;
        self.ttl = len;
    }

    /// Moves to the indirect table `descriptor` points to; false when it is not usable.
    fn enter_indirect(&mut self, descriptor: &Descriptor) -> bool {
        if self.indirect || u64::from(descriptor.len()) % DESCRIPTOR != 0 {
            return false;
        }
        let Ok(len) = u16::try_from(u64::from(descriptor.len()) / DESCRIPTOR) else {
            return false;
        };
        self.enter(descriptor.addr().0, len);
        self.next = 0;
        self.indirect = true;
        true
    }

    #[inline(always)]
    fn read(&self, index: u16) -> Option<Descriptor> {
        let offset = u64::from(index) * DESCRIPTOR;
        match self.table_host {
            // SAFETY: index < table_len, so the descriptor lies in the table, which `enter`
            // found whole in a region of the snapshot `mem` borrows.
            Some(host) => Some(unsafe { read_descriptor(host.wrapping_add(offset as usize)) }),
            None => self.mem.descriptor(self.table.checked_add(offset)?),
        }
    }
}

impl Iterator for Descriptors<'_, '_> {
    type Item = Descriptor;

    #[inline(always)]
    fn next(&mut self) -> Option<Descriptor> {
        loop {
            if self.ttl == 0 || self.next >= self.table_len {
                return None;
            }
            let descriptor = self.read(self.next)?;
            if descriptor.refers_to_indirect_table() {
                if !self.enter_indirect(&descriptor) {
                    return None;
                }
                continue;
            }
            self.yielded_bytes = self.yielded_bytes.checked_add(descriptor.len())?;
            if descriptor.has_next() {
                self.next = descriptor.next();
                self.ttl -= 1;
            } else {
                self.ttl = 0;
            }
            return Some(descriptor);
        }
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::Queue;
    use vm_memory::GuestMemoryAtomic;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::scsi_device::test_driver::CountingInterrupt;

    const SIZE: u16 = 8;
    const DESC: u64 = 0;
    const AVAIL: u64 = 0x1000;
    const USED: u64 = 0x2000;
    const USED_EVENT: u64 = AVAIL + 4 + 2 * SIZE as u64;
    const AVAIL_EVENT: u64 = USED + 4 + 8 * SIZE as u64;

    struct Rings {
        memory: GuestMemory,
        queue: Virtqueue,
        interrupt: Arc<CountingInterrupt>,
        needs_reset: Arc<AtomicBool>,
    }

    fn memory(ranges: &[(u64, usize)]) -> GuestMemoryMmap {
        let ranges: Vec<_> = ranges
            .iter()
            .map(|&(start, len)| (GuestAddress(start), len))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }

    /// A queue of SIZE whose driver and device indices both start at `start`.
    fn rings(event_idx: bool, start: u16, mem: GuestMemoryMmap) -> Rings {
        let mut queue = Queue::new(SIZE).unwrap();
        queue
            .try_set_desc_table_address(GuestAddress(DESC))
            .unwrap();
        queue
            .try_set_avail_ring_address(GuestAddress(AVAIL))
            .unwrap();
        queue.try_set_used_ring_address(GuestAddress(USED)).unwrap();
        queue.set_next_avail(start);
        queue.set_next_used(start);
        mem.write_obj(start.to_le(), GuestAddress(AVAIL + 2))
            .unwrap();
        mem.write_obj(start.to_le(), GuestAddress(USED + 2))
            .unwrap();
        let memory = GuestMemoryAtomic::new(mem);
        let interrupt = Arc::new(CountingInterrupt::default());
        let needs_reset = Arc::new(AtomicBool::new(false));
        let active = ActiveQueue {
            index: 2,
            queue,
            notifier: Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()),
            interrupt: interrupt.clone(),
        };
        let logger = Logger::root(slog::Discard, slog::o!());
        let reset = NeedsReset::new(needs_reset.clone(), Arc::new(CountingInterrupt::default()));
        let queue = Virtqueue::new(
            active,
            memory.clone(),
            event_idx,
            reset,
            Arc::default(),
            &logger,
        );
        Rings {
            memory,
            queue,
            interrupt,
            needs_reset,
        }
    }

    impl Rings {
        fn u16_at(&self, addr: u64) -> u16 {
            u16::from_le(self.memory.memory().read_obj(GuestAddress(addr)).unwrap())
        }

        fn u32_at(&self, addr: u64) -> u32 {
            u32::from_le(self.memory.memory().read_obj(GuestAddress(addr)).unwrap())
        }

        fn set_u16(&self, addr: u64, value: u16) {
            let mem = self.memory.memory();
            mem.write_obj(value.to_le(), GuestAddress(addr)).unwrap();
        }

        /// Makes `heads` available, as a driver does.
        fn publish(&self, heads: &[u16]) {
            let mut idx = self.u16_at(AVAIL + 2);
            for &head in heads {
                self.set_u16(AVAIL + 4 + 2 * u64::from(idx % SIZE), head);
                idx = idx.wrapping_add(1);
            }
            self.set_u16(AVAIL + 2, idx);
        }

        fn descriptor(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let descriptor = Descriptor::new(addr, len, flags, next);
            let at = GuestAddress(DESC + DESCRIPTOR * u64::from(index));
            self.memory.memory().write_obj(descriptor, at).unwrap();
        }

        /// Runs `f` as one pass over the queue.
        fn pass<R>(&mut self, f: impl FnOnce(&mut Virtqueue, &CachedMemory<'_>) -> R) -> R {
            let snapshot = self.queue.snapshot();
            let mem = CachedMemory::new(&snapshot);
            f(&mut self.queue, &mem)
        }

        fn pop(&mut self) -> Vec<u16> {
            self.pass(|queue, mem| queue.pop_all(mem).iter().map(Chain::head_index).collect())
        }

        fn return_chain(&mut self, head: u16, len: u32) {
            self.pass(|queue, mem| {
                queue.add_used(mem, head, len);
                queue.publish_used(mem);
            });
        }

        fn interrupt_if_wanted(&mut self) {
            self.pass(|queue, mem| queue.interrupt_if_wanted(mem));
        }

        /// The used ring entry in `slot`: (id, len).
        fn used(&self, slot: u16) -> (u32, u32) {
            let at = USED + 4 + 8 * u64::from(slot);
            (self.u32_at(at), self.u32_at(at + 4))
        }
    }

    #[test]
    fn ring_indices_wrap_around_at_16_bits() {
        let mut rings = rings(false, 0xfffe, memory(&[(0, 0x10000)]));
        rings.publish(&[3, 1, 4, 5]);
        assert_eq!(rings.u16_at(AVAIL + 2), 2);
        assert_eq!(rings.pop(), [3, 1, 4, 5]);
        for (n, head) in [3, 1, 4, 5].into_iter().enumerate() {
            rings.return_chain(head, 10 * n as u32);
        }
        assert_eq!(rings.u16_at(USED + 2), 2);
        // 0xfffe % 8 = 6: the entries go to slots 6, 7, 0, 1.
        assert_eq!(rings.used(6), (3, 0));
        assert_eq!(rings.used(7), (1, 10));
        assert_eq!(rings.used(0), (4, 20));
        assert_eq!(rings.used(1), (5, 30));
        assert!(!rings.pass(|queue, mem| queue.more_available(mem)));
        rings.publish(&[2]);
        assert!(rings.pass(|queue, mem| queue.has_available(mem)));
        assert_eq!(rings.pop(), [2]);
        assert!(!rings.needs_reset.load(Ordering::SeqCst));
    }

    #[test]
    fn the_driver_holds_what_it_popped_less_what_used_event_says_it_consumed() {
        let mut with = rings(true, 0xfffe, memory(&[(0, 0x10000)]));
        with.set_u16(USED_EVENT, 0xfffe);
        with.publish(&[3, 1, 4]);
        assert_eq!(with.pop(), [3, 1, 4]);
        let holds = |rings: &mut Rings| rings.pass(|queue, mem| queue.driver_holds(mem));
        assert_eq!(holds(&mut with), Some(3), "across the 16-bit wrap");
        with.return_chain(3, 0);
        with.set_u16(USED_EVENT, 0xffff);
        assert_eq!(holds(&mut with), Some(2));
        with.set_u16(USED_EVENT, 0x100);
        assert_eq!(holds(&mut with), None, "more than a queue away");
        let mut without = rings(false, 0, memory(&[(0, 0x10000)]));
        without.publish(&[3]);
        assert_eq!(without.pop(), [3]);
        assert_eq!(holds(&mut without), None, "without EVENT_IDX");
    }

    #[test]
    fn event_idx_interrupts_only_once_used_event_is_passed() {
        let mut rings = rings(true, 0xfffe, memory(&[(0, 0x10000)]));
        // An interrupt once the entry at index 0xffff is used, i.e. after the second chain.
        rings.set_u16(USED_EVENT, 0xffff);
        rings.return_chain(0, 0);
        rings.interrupt_if_wanted();
        assert_eq!(rings.interrupt.count(), 0);
        rings.return_chain(1, 0);
        rings.interrupt_if_wanted();
        assert_eq!(rings.interrupt.count(), 1, "used idx went from 0xffff to 0");
        rings.return_chain(2, 0);
        rings.interrupt_if_wanted();
        assert_eq!(rings.interrupt.count(), 1, "used_event already passed");
        // Both chains of one batch: used_event in the middle of it still counts.
        rings.set_u16(USED_EVENT, 1);
        rings.return_chain(3, 0);
        rings.return_chain(4, 0);
        rings.interrupt_if_wanted();
        assert_eq!(rings.interrupt.count(), 2);
        rings.interrupt_if_wanted();
        assert_eq!(rings.interrupt.count(), 2, "nothing returned since");
    }

    #[test]
    fn event_idx_avail_event_asks_for_the_next_chain() {
        let mut rings = rings(true, 0xfffe, memory(&[(0, 0x10000)]));
        rings.publish(&[0, 1, 2]);
        rings.pass(|queue, mem| queue.suppress_notifications(mem));
        assert_eq!(rings.u16_at(USED), 0, "EVENT_IDX leaves used.flags alone");
        assert_eq!(rings.pop(), [0, 1, 2]);
        assert!(!rings.pass(|queue, mem| queue.more_available(mem)));
        assert_eq!(
            rings.u16_at(AVAIL_EVENT),
            1,
            "the next chain the device will pop"
        );
        rings.publish(&[3]);
        assert!(rings.pass(|queue, mem| queue.more_available(mem)));
        assert_eq!(rings.pop(), [3]);
        assert!(!rings.pass(|queue, mem| queue.more_available(mem)));
        assert_eq!(rings.u16_at(AVAIL_EVENT), 2);
    }

    /// Linux's `vring_need_event`: whether a driver that moved its avail idx from `old` to
    /// `new` since its last kick kicks now.
    fn driver_kicks(avail_event: u16, new: u16, old: u16) -> bool {
        new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old)
    }

    #[test]
    fn a_kick_asked_a_batch_ahead_comes_with_the_last_chain_of_the_batch() {
        let mut rings = rings(true, 0xfffe, memory(&[(0, 0x10000)]));
        rings.publish(&[0, 1]);
        assert_eq!(rings.pop(), [0, 1]);
        assert!(!rings.pass(|queue, mem| queue.kick_at_batch(mem, 3)));
        let avail_event = rings.u16_at(AVAIL_EVENT);
        assert_eq!(avail_event, 2, "the third chain from 0 (after the wrap)");
        // A driver that kicks after every chain it adds: quiet for two, kicks on the third.
        assert!(!driver_kicks(avail_event, 1, 0));
        assert!(!driver_kicks(avail_event, 2, 1));
        assert!(driver_kicks(avail_event, 3, 2));
        // One that adds all three before it looks kicks too.
        assert!(driver_kicks(avail_event, 3, 0));
    }

    #[test]
    fn chains_no_kick_will_announce_are_reported_and_fewer_are_left_to_the_caller() {
        let mut rings = rings(true, 0, memory(&[(0, 0x10000)]));
        rings.publish(&[0, 1]);
        assert!(
            !rings.pass(|queue, mem| queue.kick_at_batch(mem, 3)),
            "two of three: the kick will come with the third"
        );
        assert!(
            rings.pass(|queue, mem| queue.kick_at_batch(mem, 2)),
            "the driver passed avail_event before it was written: no kick will come"
        );
        assert!(rings.pass(|queue, mem| queue.more_available(mem)));
        assert_eq!(rings.pop(), [0, 1]);
        assert!(!rings.pass(|queue, mem| queue.kick_at_batch(mem, 1000)));
        assert_eq!(
            rings.u16_at(AVAIL_EVENT),
            SIZE + 1,
            "at most the queue size ahead"
        );
    }

    #[test]
    fn without_event_idx_a_batch_turns_kicks_off_and_the_next_chain_turns_them_on() {
        let mut rings = rings(false, 0, memory(&[(0, 0x10000)]));
        assert!(!rings.pass(|queue, mem| queue.kick_at_batch(mem, 4)));
        assert_eq!(rings.u16_at(USED), VRING_USED_F_NO_NOTIFY as u16);
        rings.publish(&[0]);
        assert!(!rings.pass(|queue, mem| queue.kick_at_batch(mem, 4)));
        assert!(rings.pass(|queue, mem| queue.kick_at_batch(mem, 1)));
        assert_eq!(rings.u16_at(USED), 0);
    }

    #[test]
    fn without_event_idx_the_ring_flags_suppress_notifications_and_interrupts() {
        let mut rings = rings(false, 0, memory(&[(0, 0x10000)]));
        rings.pass(|queue, mem| queue.suppress_notifications(mem));
        assert_eq!(rings.u16_at(USED), VRING_USED_F_NO_NOTIFY as u16);
        assert!(!rings.pass(|queue, mem| queue.more_available(mem)));
        assert_eq!(rings.u16_at(USED), 0);

        rings.set_u16(AVAIL, VRING_AVAIL_F_NO_INTERRUPT as u16);
        rings.return_chain(0, 0);
        rings.interrupt_if_wanted();
        assert_eq!(rings.interrupt.count(), 0, "the driver set NO_INTERRUPT");
        rings.set_u16(AVAIL, 0);
        rings.return_chain(1, 0);
        rings.interrupt_if_wanted();
        assert_eq!(rings.interrupt.count(), 1);
    }

    #[test]
    fn an_avail_idx_more_than_the_queue_size_ahead_needs_reset() {
        let mut rings = rings(false, 0, memory(&[(0, 0x10000)]));
        rings.set_u16(AVAIL + 2, SIZE + 1);
        assert!(rings.pop().is_empty());
        assert!(rings.needs_reset.load(Ordering::SeqCst));
        rings.set_u16(AVAIL + 2, 1);
        assert!(
            rings.pop().is_empty(),
            "a broken queue stays broken until reset"
        );
    }

    /// Returned chains are written at once and shown to the driver together, by one used idx
    /// store; the interrupt decision publishes what is left.
    #[test]
    fn the_used_idx_moves_once_for_a_batch() {
        let mut rings = rings(false, 0, memory(&[(0, 0x10000)]));
        rings.pass(|queue, mem| {
            queue.add_used(mem, 3, 10);
            queue.add_used(mem, 5, 20);
        });
        assert_eq!(rings.u16_at(USED + 2), 0, "not published yet");
        assert_eq!((rings.used(0), rings.used(1)), ((3, 10), (5, 20)));
        rings.pass(|queue, mem| queue.publish_used(mem));
        assert_eq!(rings.u16_at(USED + 2), 2);
        rings.pass(|queue, mem| queue.add_used(mem, 1, 0));
        rings.interrupt_if_wanted();
        assert_eq!(rings.u16_at(USED + 2), 3);
        assert_eq!(rings.interrupt.count(), 1);
    }

    #[test]
    fn returning_a_head_outside_the_queue_needs_reset() {
        let mut rings = rings(false, 0, memory(&[(0, 0x10000)]));
        rings.return_chain(SIZE, 0);
        assert!(rings.needs_reset.load(Ordering::SeqCst));
        assert_eq!(rings.u16_at(USED + 2), 0);
    }

    #[test]
    fn rings_outside_mapped_memory_wait_for_it_to_come_back() {
        let mut rings = rings(false, 0, memory(&[(0, 0x10000)]));
        rings.publish(&[5]);
        let saved = rings.memory.memory().clone().into_inner();
        rings
            .memory
            .lock()
            .unwrap()
            .replace(memory(&[(0x8000, 0x8000)]));
        assert!(rings.pop().is_empty());
        assert!(!rings.needs_reset.load(Ordering::SeqCst));
        rings.memory.lock().unwrap().replace((*saved).clone());
        assert_eq!(rings.pop(), [5]);
    }

    /// Collects the chain at `head` in one pass.
    fn collect(rings: &mut Rings, head: u16) -> (ChainBuffers, Option<ChainDefect>) {
        let chain = Chain {
            head,
            table: GuestAddress(DESC),
            queue_size: SIZE,
        };
        rings.pass(|_, mem| ChainBuffers::collect(chain, mem))
    }

    /// Indirect tables of the shape Linux makes, and ways to get them wrong or unusual: the fast
    /// collection takes only the good ones in one region, and collects from them exactly what
    /// the general walk does; whatever it leaves, the walk collects as before.
    #[test]
    fn the_usual_indirect_chain_is_collected_as_the_walk_collects_it() {
        const TABLE: u64 = 0x3000;
        const INNER: u64 = 0x3800;
        const N: u16 = VRING_DESC_F_NEXT as u16;
        const W: u16 = VRING_DESC_F_WRITE as u16;
        const I: u16 = VRING_DESC_F_INDIRECT as u16;
        let read = vec![
            (0x4000, 51, N, 1),
            (0x5000, 108, W | N, 2),
            (0x6000, 4096, W, 0),
        ];
        let write = vec![
            (0x4000, 51, N, 1),
            (0x6000, 4096, N, 2),
            (0x5000, 108, W, 0),
        ];
        type Table = Vec<(u64, u32, u16, u16)>;
        /// What the head points to when it is not the table itself: (addr, len).
        type Head = Option<(u64, u32)>;
        // (what, table, head, taken fast)
        let cases: Vec<(&str, Table, Head, bool)> = vec![
            ("a read", read.clone(), None, true),
            ("a write", write.clone(), None, true),
            ("one descriptor", vec![(0x5000, 108, W, 0)], None, true),
            (
                "an empty descriptor",
                vec![(0x4000, 51, N, 1), (0x7000, 0, N, 2), (0x5000, 108, W, 0)],
                None,
                true,
            ),
            (
                "a buffer in the other region",
                vec![(0x14000, 108, W, 0)],
                None,
                false,
            ),
            (
                "next out of order",
                vec![
                    (0x4000, 51, N, 2),
                    (0x5000, 108, W, 0),
                    (0x6000, 8, W | N, 1),
                ],
                None,
                false,
            ),
            (
                "no NEXT before the end",
                vec![(0x4000, 51, 0, 1), (0x5000, 108, W, 0)],
                None,
                false,
            ),
            (
                "NEXT on the last",
                vec![(0x4000, 51, N, 1), (0x5000, 108, W | N, 0)],
                None,
                false,
            ),
            (
                "readable after writable",
                vec![(0x5000, 108, W | N, 1), (0x4000, 51, 0, 0)],
                None,
                false,
            ),
            (
                "an indirect descriptor inside",
                vec![(0x4000, 51, N, 1), (INNER, 16, I, 0)],
                None,
                false,
            ),
            (
                "a buffer outside memory",
                vec![(0x4000, 51, N, 1), (0x4000_0000, 108, W, 0)],
                None,
                false,
            ),
            (
                "a buffer across regions",
                vec![(0x4000, 51, N, 1), (0xfff0, 108, W, 0)],
                None,
                false,
            ),
            (
                "4 GiB in all",
                vec![(0x4000, u32::MAX, N, 1), (0x5000, 1, W, 0)],
                None,
                false,
            ),
            (
                "a table of partial descriptors",
                read.clone(),
                Some((TABLE, 40)),
                false,
            ),
            ("an empty table", read.clone(), Some((TABLE, 0)), false),
            (
                "a table outside memory",
                read.clone(),
                Some((0x4000_0000, 48)),
                false,
            ),
            ("a table across regions", read, Some((0xffe0, 48)), false),
        ];
        let mut rings = rings(false, 0, memory(&[(0, 0x10000), (0x10000, 0x10000)]));
        let chain = Chain {
            head: 0,
            table: GuestAddress(DESC),
            queue_size: SIZE,
        };
        let same = |a: &Segments, b: &Segments| {
            (&a.list, a.len, a.generation, a.host_offset)
                == (&b.list, b.len, b.generation, b.host_offset)
        };
        for (what, table, head, fast) in cases {
            let (table_at, table_len) = head.unwrap_or((TABLE, 16 * table.len() as u32));
            let mem = rings.memory.memory();
            for (index, &(addr, len, flags, next)) in table.iter().enumerate() {
                let descriptor = Descriptor::new(addr, len, flags, next);
                let at = table_at + DESCRIPTOR * index as u64;
                let _ = mem.write_obj(descriptor, GuestAddress(at));
            }
            rings.descriptor(0, table_at, table_len, I, 0);
            rings.pass(|_, mem| {
                let mut walked = ChainBuffers::default();
                let defect = walked.walk(chain, mem);
                let mut usual = ChainBuffers::default();
                assert_eq!(usual.collect_usual(chain, mem), fast, "{what}");
                if fast {
                    assert_eq!(defect, None, "{what}");
                    assert!(same(&usual.readable, &walked.readable), "{what}");
                    assert!(same(&usual.writable, &walked.writable), "{what}");
                }
                let mut collected = ChainBuffers::default();
                assert_eq!(collected.collect_again(chain, mem), defect, "{what}");
                assert!(same(&collected.readable, &walked.readable), "{what}");
                assert!(same(&collected.writable, &walked.writable), "{what}");
            });
        }
    }

    #[test]
    fn segments_of_an_older_snapshot_are_translated_again() {
        let mut rings = rings(false, 0, memory(&[(0, 0x10000)]));
        rings.descriptor(0, 0x4000, 8, VRING_DESC_F_NEXT as u16, 1);
        rings.descriptor(1, 0x5000, 8, VRING_DESC_F_WRITE as u16, 0);
        let old = rings.memory.memory().clone().into_inner();
        old.write_slice(b"old data", GuestAddress(0x4000)).unwrap();
        let (buffers, defect) = collect(&mut rings, 0);
        assert_eq!(defect, None);

        let mut out = [0u8; 8];
        rings.pass(|_, mem| buffers.readable.read(mem, 0, &mut out).unwrap());
        assert_eq!(&out, b"old data");

        // The client remaps: a copy of memory with other contents at the same addresses.
        let new = memory(&[(0, 0x10000)]);
        new.write_slice(b"new data", GuestAddress(0x4000)).unwrap();
        rings.memory.lock().unwrap().replace(new);
        rings.pass(|_, mem| {
            assert_eq!(buffers.readable.read(mem, 0, &mut out).unwrap(), 8);
            assert_eq!(buffers.writable.write(mem, 0, b"answered").unwrap(), 8);
        });
        assert_eq!(&out, b"new data");
        assert_eq!(
            rings
                .memory
                .memory()
                .read_obj::<[u8; 8]>(GuestAddress(0x5000))
                .unwrap(),
            *b"answered"
        );
        assert_eq!(
            old.read_obj::<[u8; 8]>(GuestAddress(0x5000)).unwrap(),
            [0; 8]
        );
    }

    #[test]
    fn collecting_again_forgets_the_last_chain() {
        let mut rings = rings(false, 0, memory(&[(0, 0x10000)]));
        let mem = rings.memory.memory();
        mem.write_slice(b"headdata", GuestAddress(0x4000)).unwrap();
        mem.write_slice(b"0123456789", GuestAddress(0x5000))
            .unwrap();
        rings.descriptor(0, 0x4000, 4, VRING_DESC_F_NEXT as u16, 1);
        rings.descriptor(1, 0x5000, 10, VRING_DESC_F_NEXT as u16, 2);
        rings.descriptor(2, 0x6000, 8, VRING_DESC_F_WRITE as u16, 0);
        let (mut buffers, defect) = collect(&mut rings, 0);
        assert_eq!(defect, None);
        assert_eq!((buffers.readable.len(), buffers.writable.len()), (14, 8));
        rings.pass(|_, mem| {
            // Within the second segment: one piece at its host address.
            let mut out = [0u8; 3];
            assert_eq!(buffers.readable.read(mem, 6, &mut out).unwrap(), 3);
            assert_eq!(&out, b"234");
            let mut iovecs = IoVecs::default();
            let covered = buffers.readable.iovecs_into(mem, 4, 10, &mut iovecs);
            assert_eq!(covered.unwrap(), 10);
            assert_eq!(iovecs.len(), 1);
            assert_eq!(iovecs[0].iov_len, 10);
            // Across both, and past the end: pieces, cut at the end.
            let mut out = [0u8; 16];
            assert_eq!(buffers.readable.read(mem, 2, &mut out).unwrap(), 12);
            assert_eq!(&out[..12], b"ad0123456789");
            assert_eq!(buffers.writable.write(mem, 4, b"too long").unwrap(), 4);
        });

        // A chain of one writable descriptor into the same buffers.
        rings.descriptor(3, 0x7000, 16, VRING_DESC_F_WRITE as u16, 0);
        let chain = Chain {
            head: 3,
            table: GuestAddress(DESC),
            queue_size: SIZE,
        };
        let defect = rings.pass(|_, mem| buffers.collect_again(chain, mem));
        assert_eq!(defect, None);
        assert_eq!((buffers.readable.len(), buffers.writable.len()), (0, 16));
        assert_eq!(buffers.readable.list.len(), 0);
        rings.pass(|_, mem| {
            assert_eq!(buffers.readable.read(mem, 0, &mut [0u8; 4]).unwrap(), 0);
            assert_eq!(buffers.writable.write(mem, 0, b"answer").unwrap(), 6);
        });
        assert_eq!(
            mem.read_obj::<[u8; 6]>(GuestAddress(0x7000)).unwrap(),
            *b"answer"
        );
        assert_eq!(
            mem.read_obj::<[u8; 4]>(GuestAddress(0x6004)).unwrap(),
            *b"too "
        );

        // A chain longer than the inline list spills it; the next chain lets the heap go.
        for index in 0..6 {
            let flags = if index < 5 {
                VRING_DESC_F_NEXT as u16
            } else {
                0
            };
            rings.descriptor(index, 0x4000 + u64::from(index) * 8, 8, flags, index + 1);
        }
        let chain = Chain { head: 0, ..chain };
        assert_eq!(rings.pass(|_, mem| buffers.collect_again(chain, mem)), None);
        assert_eq!(buffers.readable.len(), 48);
        assert!(buffers.readable.list.spilled());
        let chain = Chain { head: 3, ..chain };
        rings.descriptor(3, 0x7000, 16, VRING_DESC_F_WRITE as u16, 0);
        assert_eq!(rings.pass(|_, mem| buffers.collect_again(chain, mem)), None);
        assert!(!buffers.readable.list.spilled());
        assert_eq!(buffers.writable.len(), 16);
    }

    #[test]
    fn a_buffer_across_two_regions_is_read_through_both() {
        let mut rings = rings(false, 0, memory(&[(0, 0x8000), (0x8000, 0x8000)]));
        rings.descriptor(0, 0x7ff8, 16, VRING_DESC_F_NEXT as u16, 1);
        rings.descriptor(
            1,
            0x9000,
            0,
            (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
            2,
        );
        rings.descriptor(2, 0x20000, 4, VRING_DESC_F_WRITE as u16, 0);
        let data: Vec<u8> = (0..16).collect();
        rings
            .memory
            .memory()
            .write_slice(&data, GuestAddress(0x7ff8))
            .unwrap();
        let (buffers, defect) = collect(&mut rings, 0);
        assert_eq!(
            defect,
            Some(ChainDefect::OutsideMemory {
                addr: 0x20000,
                len: 4
            })
        );
        assert_eq!(buffers.readable.len(), 16);
        assert_eq!(
            buffers.readable.generation, 0,
            "no one host offset for all of it"
        );
        assert!(
            buffers.writable.is_empty(),
            "zero-length and outside buffers are left out"
        );
        rings.pass(|_, mem| {
            let mut out = [0u8; 12];
            assert_eq!(buffers.readable.read(mem, 4, &mut out).unwrap(), 12);
            assert_eq!(out[..], data[4..]);
            let mut iovecs = IoVecs::default();
            let covered = buffers.readable.iovecs_into(mem, 0, 16, &mut iovecs);
            assert_eq!(covered.unwrap(), 16);
            let lens: Vec<usize> = iovecs.iter().map(|iovec| iovec.iov_len).collect();
            assert_eq!(lens, [8, 8]);
            // The next request's iovecs replace these, in the same place.
            let covered = buffers.readable.iovecs_into(mem, 2, 4, &mut iovecs);
            assert_eq!(covered.unwrap(), 4);
            assert_eq!(iovecs.len(), 1);
            assert_eq!(iovecs[0].iov_len, 4);
        });
    }

    #[test]
    fn buffers_in_one_region_keep_one_host_offset_and_others_do_not() {
        let mut rings = rings(false, 0, memory(&[(0, 0x8000), (0x8000, 0x8000)]));
        rings.descriptor(0, 0x4000, 8, VRING_DESC_F_NEXT as u16, 1);
        rings.descriptor(1, 0x5000, 8, VRING_DESC_F_NEXT as u16, 2);
        rings.descriptor(2, 0x9000, 8, VRING_DESC_F_WRITE as u16, 0);
        let mem = rings.memory.memory();
        mem.write_slice(b"01234567", GuestAddress(0x4000)).unwrap();
        mem.write_slice(b"89abcdef", GuestAddress(0x5000)).unwrap();
        let (buffers, defect) = collect(&mut rings, 0);
        assert_eq!(defect, None);
        let generation = rings.queue.generation;
        assert_eq!(buffers.readable.generation, generation);
        assert_eq!(buffers.writable.generation, generation);
        rings.pass(|_, mem| {
            let mut out = [0u8; 12];
            assert_eq!(buffers.readable.read(mem, 2, &mut out).unwrap(), 12);
            assert_eq!(&out, b"23456789abcd");
            assert_eq!(buffers.writable.write(mem, 0, b"response").unwrap(), 8);
        });
        assert_eq!(
            mem.read_obj::<[u8; 8]>(GuestAddress(0x9000)).unwrap(),
            *b"response"
        );

        // A readable part in both regions: two host offsets, so no fast path, same bytes.
        rings.descriptor(1, 0xa000, 8, VRING_DESC_F_NEXT as u16, 2);
        mem.write_slice(b"ABCDEFGH", GuestAddress(0xa000)).unwrap();
        let (buffers, defect) = collect(&mut rings, 0);
        assert_eq!(defect, None);
        assert_eq!(buffers.readable.generation, 0);
        rings.pass(|_, mem| {
            let mut out = [0u8; 16];
            assert_eq!(buffers.readable.read(mem, 0, &mut out).unwrap(), 16);
            assert_eq!(&out, b"01234567ABCDEFGH");
        });
    }
}
