//! The buffers of one descriptor chain: its driver-readable and device-writable parts as lists
//! of guest memory segments, and the ways to read, write and hand them to the kernel as iovecs.
//!
//! Each access looks its segment up once (`GuestMemoryBackend::get_slice`: one region lookup,
//! bounds-checked) and copies through the resulting volatile slice. Only a segment that spans
//! two regions, which drivers hardly ever make, takes vm-memory's general path.

use std::ops::Deref;

use block::IoVecs;
use smallvec::SmallVec;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap};

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
        mem: &GuestMemoryMmap,
        skip: u64,
        out: &mut [u8],
    ) -> Result<usize, GuestMemoryError> {
        let mut done = 0;
        for (addr, len) in self.pieces(skip, out.len() as u64) {
            let out = &mut out[done..done + len];
            match mem.get_slice(addr, len) {
                Ok(slice) => {
                    slice.copy_to(out);
                }
                Err(_) => mem.read_slice(out, addr)?,
            }
            done += len;
        }
        Ok(done)
    }

    /// Writes `data` after the first `skip` bytes; returns how many bytes fitted.
    pub fn write(
        &self,
        mem: &GuestMemoryMmap,
        skip: u64,
        data: &[u8],
    ) -> Result<usize, GuestMemoryError> {
        let mut done = 0;
        for (addr, len) in self.pieces(skip, data.len() as u64) {
            let data = &data[done..done + len];
            match mem.get_slice(addr, len) {
                Ok(slice) => slice.copy_from(data),
                Err(_) => mem.write_slice(data, addr)?,
            }
            done += len;
        }
        Ok(done)
    }

    /// Host iovecs for `len` bytes after the first `skip`, split where guest memory regions end.
    /// The iovecs stay valid as long as `mem` (the same snapshot) is alive.
    pub fn iovecs(
        &self,
        mem: &GuestMemoryMmap,
        skip: u64,
        len: u64,
    ) -> Result<IoVecs, GuestMemoryError> {
        let mut iovecs = IoVecs::new();
        for (addr, piece_len) in self.pieces(skip, len) {
            if let Ok(slice) = mem.get_slice(addr, piece_len) {
                iovecs.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
                continue;
            }
            for slice in GuestMemoryBackend::get_slices(mem, addr, piece_len) {
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
    pub fn collect<M>(
        chain: DescriptorChain<M>,
        mem: &GuestMemoryMmap,
    ) -> (ChainBuffers, Option<ChainDefect>)
    where
        M: Deref<Target = GuestMemoryMmap>,
    {
        let mut buffers = ChainBuffers::default();
        let mut defect = None;
        let mut last_has_next = None;
        for descriptor in chain {
            last_has_next = Some(descriptor.has_next());
            let (addr, len) = (descriptor.addr(), descriptor.len());
            let inside = len == 0
                || mem.get_slice(addr, len as usize).is_ok()
                || GuestMemoryBackend::check_range(mem, addr, len as usize);
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
