//! One virtqueue as a device worker serves it: popping chains, walking their descriptors into
//! driver-readable and device-writable segments of guest memory, reading, writing and handing
//! those to the kernel as iovecs, returning chains and raising the queue's interrupt once per
//! batch when the driver wants one.
//!
//! Guest addresses are translated through [`CachedMemory`]: the region the previous access hit
//! is tried first, so that a pass over a queue whose rings and buffers lie in one region (as
//! they do in practice) makes one region lookup, and each access is a bounds check against that
//! region. Only a buffer that spans two regions, which drivers hardly ever make, takes
//! vm-memory's general path.

use std::cell::Cell;
use std::mem::size_of;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use block::IoVecs;
use slog::{debug, warn, Logger};
use smallvec::SmallVec;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryError,
    GuestMemoryLoadGuard, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress,
    VolatileSlice,
};
use vmm_sys_util::eventfd::EventFd;

use super::queue_counters::QueueCounters;
use crate::virtio_device::{ActiveQueue, GuestMemory, Interrupt};

/// A snapshot of guest memory, kept by a request until it completes.
pub type MemorySnapshot = GuestMemoryLoadGuard<GuestMemoryMmap>;

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

/// Guest memory as one pass over a queue sees it, remembering the last region an access hit.
pub struct CachedMemory<'a> {
    mem: &'a GuestMemoryMmap,
    region: Cell<Option<&'a GuestRegionMmap>>,
}

impl<'a> CachedMemory<'a> {
    pub fn new(mem: &'a GuestMemoryMmap) -> CachedMemory<'a> {
        CachedMemory {
            mem,
            region: Cell::new(None),
        }
    }

    /// The `len` bytes at `addr` as one bounds-checked host slice; None when they do not lie
    /// within one region.
    fn slice(&self, addr: GuestAddress, len: usize) -> Option<VolatileSlice<'a>> {
        if let Some(slice) = self.region.get().and_then(|r| slice_of(r, addr, len)) {
            return Some(slice);
        }
        let region = self.mem.find_region(addr)?;
        self.region.set(Some(region));
        slice_of(region, addr, len)
    }

    /// The descriptor at `addr`, or None when it cannot be read.
    fn descriptor(&self, addr: GuestAddress) -> Option<Descriptor> {
        match self.slice(addr, size_of::<Descriptor>()) {
            Some(slice) => slice.read_obj(0).ok(),
            None => self.mem.read_obj(addr).ok(),
        }
    }
}

impl Deref for CachedMemory<'_> {
    type Target = GuestMemoryMmap;

    fn deref(&self) -> &GuestMemoryMmap {
        self.mem
    }
}

fn slice_of<'a>(
    region: &'a GuestRegionMmap,
    addr: GuestAddress,
    len: usize,
) -> Option<VolatileSlice<'a>> {
    let offset = addr.checked_offset_from(region.start_addr())?;
    region.get_slice(MemoryRegionAddress(offset), len).ok()
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
    addr: GuestAddress,
    len: u32,
}

/// One direction of a chain: segments in chain order.
#[derive(Debug, Default, Clone)]
pub struct Segments {
    /// Inline for the usual chains (header, data, response), so collecting allocates nothing.
    list: SmallVec<[Segment; 4]>,
    len: u64,
}

impl Segments {
    fn push(&mut self, addr: GuestAddress, len: u32) {
        if len > 0 {
            self.list.push(Segment { addr, len });
            self.len += u64::from(len);
        }
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The (address, length) pieces covering `len` bytes after the first `skip`, stopping at
    /// the end of the segments.
    fn pieces(&self, skip: u64, len: u64) -> impl Iterator<Item = (GuestAddress, usize)> + '_ {
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
            let addr = GuestAddress(segment.addr.0.wrapping_add(skip));
            skip = 0;
            left -= take;
            // take <= u32::MAX (a segment length), so it fits usize.
            Some((addr, take as usize))
        })
    }

    /// Fills `out` from the bytes after the first `skip`; returns how many were available.
    pub fn read(
        &self,
        mem: &CachedMemory<'_>,
        skip: u64,
        out: &mut [u8],
    ) -> Result<usize, GuestMemoryError> {
        let mut done = 0;
        for (addr, len) in self.pieces(skip, out.len() as u64) {
            let out = &mut out[done..done + len];
            match mem.slice(addr, len) {
                Some(slice) => {
                    slice.copy_to(out);
                }
                None => mem.read_slice(out, addr)?,
            }
            done += len;
        }
        Ok(done)
    }

    /// Writes `data` after the first `skip` bytes; returns how many bytes fitted.
    pub fn write(
        &self,
        mem: &CachedMemory<'_>,
        skip: u64,
        data: &[u8],
    ) -> Result<usize, GuestMemoryError> {
        let mut done = 0;
        for (addr, len) in self.pieces(skip, data.len() as u64) {
            let data = &data[done..done + len];
            match mem.slice(addr, len) {
                Some(slice) => slice.copy_from(data),
                None => mem.write_slice(data, addr)?,
            }
            done += len;
        }
        Ok(done)
    }

    /// Host iovecs for `len` bytes after the first `skip`, split where guest memory regions end.
    /// The iovecs stay valid as long as the snapshot behind `mem` is alive.
    pub fn iovecs(
        &self,
        mem: &CachedMemory<'_>,
        skip: u64,
        len: u64,
    ) -> Result<IoVecs, GuestMemoryError> {
        let mut iovecs = IoVecs::new();
        for (addr, piece_len) in self.pieces(skip, len) {
            if let Some(slice) = mem.slice(addr, piece_len) {
                iovecs.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
                continue;
            }
            for slice in GuestMemoryBackend::get_slices(mem.mem, addr, piece_len) {
                let slice = slice?;
                iovecs.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
            }
        }
        Ok(iovecs)
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
        let mut defect = None;
        let mut last_has_next = None;
        for descriptor in Descriptors::new(chain, mem) {
            last_has_next = Some(descriptor.has_next());
            let (addr, len) = (descriptor.addr(), descriptor.len());
            let inside = len == 0
                || mem.slice(addr, len as usize).is_some()
                || GuestMemoryBackend::check_range(mem.mem, addr, len as usize);
            if !inside {
                defect.get_or_insert(ChainDefect::OutsideMemory { addr: addr.0, len });
                continue;
            }
            if descriptor.is_write_only() {
                buffers.writable.push(addr, len);
            } else {
                if !buffers.writable.list.is_empty() {
                    defect.get_or_insert(ChainDefect::ReadableAfterWritable);
                }
                buffers.readable.push(addr, len);
            }
        }
        match last_has_next {
            None => defect = Some(ChainDefect::Empty),
            Some(true) => defect = Some(ChainDefect::Truncated),
            Some(false) => {}
        }
        (buffers, defect)
    }
}

/// The descriptors of a chain, following virtio 1.2 §2.7.5 with the limits of virtio-queue's
/// `DescriptorChain`: at most as many descriptors as the table has, one level of indirection,
/// an indirect table of whole descriptors, and fewer than 4 GiB in all. The walk ends early
/// (the last descriptor still pointing to a next one) where a limit is hit or a descriptor
/// cannot be read.
struct Descriptors<'m, 'a> {
    mem: &'m CachedMemory<'a>,
    table: GuestAddress,
    table_len: u16,
    next: u16,
    /// Descriptors the current table may still yield: ends loops.
    ttl: u16,
    indirect: bool,
    yielded_bytes: u32,
}

impl<'m, 'a> Descriptors<'m, 'a> {
    fn new(chain: Chain, mem: &'m CachedMemory<'a>) -> Descriptors<'m, 'a> {
        Descriptors {
            mem,
            table: chain.table,
            table_len: chain.queue_size,
            next: chain.head,
            ttl: chain.queue_size,
            indirect: false,
            yielded_bytes: 0,
        }
    }

    /// Moves to the indirect table `descriptor` points to; false when it is not usable.
    fn enter_indirect(&mut self, descriptor: &Descriptor) -> bool {
        let entry = size_of::<Descriptor>() as u32;
        if self.indirect || descriptor.len() % entry != 0 {
            return false;
        }
        let Ok(len) = u16::try_from(descriptor.len() / entry) else {
            return false;
        };
        self.table = descriptor.addr();
        self.table_len = len;
        self.next = 0;
        self.ttl = len;
        self.indirect = true;
        true
    }
}

impl Iterator for Descriptors<'_, '_> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        loop {
            if self.ttl == 0 || self.next >= self.table_len {
                return None;
            }
            let offset = u64::from(self.next) * size_of::<Descriptor>() as u64;
            let descriptor = self.mem.descriptor(self.table.checked_add(offset)?)?;
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
