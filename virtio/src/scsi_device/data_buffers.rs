//! The buffers of one descriptor chain: its driver-readable and device-writable parts as lists
//! of guest memory segments, and the ways to read, write and hand them to the kernel as iovecs.
//!
//! Guest addresses are translated through [`CachedMemory`]: the region the previous access hit
//! is tried first, so that a pass over a queue whose rings and buffers lie in one region (as
//! they do in practice) makes one region lookup, and each access is a bounds check against that
//! region. Only a buffer that spans two regions, which drivers hardly ever make, takes
//! vm-memory's general path.

use std::cell::Cell;
use std::mem::size_of;
use std::ops::Deref;

use block::IoVecs;
use smallvec::SmallVec;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
    GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress, VolatileSlice,
};

use super::virtqueue::Chain;

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
