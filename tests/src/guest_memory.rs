//! Guest memory for the userspace driver: a memfd mapped here and DMA-mapped to the server.
//!
//! The server writes into this memory concurrently (used rings, data-in buffers), so every access
//! goes through volatile copies or atomics, never through Rust references to the shared bytes.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot create guest memory of {size} bytes: {source}")]
    Create { size: u64, source: io::Error },
    #[error("guest range {gpa:#x}+{len:#x} is outside the memory at {base:#x}+{size:#x}")]
    OutOfRange {
        gpa: u64,
        len: u64,
        base: u64,
        size: u64,
    },
    #[error("guest address {gpa:#x} is not aligned to {align}")]
    Unaligned { gpa: u64, align: u64 },
    #[error("no free guest memory for {len} bytes aligned to {align}")]
    Exhausted { len: u64, align: u64 },
    #[error("freeing {gpa:#x}, which was not allocated")]
    NotAllocated { gpa: u64 },
}

pub type Result<T> = std::result::Result<T, MemoryError>;

/// What backs guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryKind {
    /// A memfd the client may still truncate.
    #[default]
    Memfd,
    /// A memfd sealed with F_SEAL_SHRINK, as QEMU's memory-backend-memfd makes by default.
    SealedMemfd,
    /// A memfd on hugetlbfs (2 MiB pages), as with QEMU's hugepage backends.
    HugeTlb,
}

impl MemoryKind {
    fn flags(self) -> libc::c_uint {
        match self {
            MemoryKind::Memfd => 0,
            MemoryKind::SealedMemfd => libc::MFD_ALLOW_SEALING,
            MemoryKind::HugeTlb => libc::MFD_HUGETLB,
        }
    }
}

/// First-fit allocator over guest addresses; free ranges are kept coalesced.
#[derive(Debug)]
struct Allocator {
    free: BTreeMap<u64, u64>,
    used: BTreeMap<u64, u64>,
}

impl Allocator {
    fn new(base: u64, size: u64) -> Self {
        let mut free = BTreeMap::new();
        free.insert(base, size);
        Allocator {
            free,
            used: BTreeMap::new(),
        }
    }

    fn alloc(&mut self, len: u64, align: u64) -> Result<u64> {
        let len = len.max(1);
        let align = align.max(1);
        let found = self.free.iter().find_map(|(&start, &size)| {
            let aligned = start.checked_add(align - 1)? / align * align;
            let end = aligned.checked_add(len)?;
            (end <= start + size).then_some((start, size, aligned))
        });
        let (start, size, aligned) = found.ok_or(MemoryError::Exhausted { len, align })?;
        self.free.remove(&start);
        if aligned > start {
            self.free.insert(start, aligned - start);
        }
        let end = aligned + len;
        if end < start + size {
            self.free.insert(end, start + size - end);
        }
        self.used.insert(aligned, len);
        Ok(aligned)
    }

    fn free(&mut self, gpa: u64) -> Result<()> {
        let mut len = self
            .used
            .remove(&gpa)
            .ok_or(MemoryError::NotAllocated { gpa })?;
        let mut start = gpa;
        if let Some((&prev, &prev_len)) = self.free.range(..start).next_back() {
            if prev + prev_len == start {
                self.free.remove(&prev);
                start = prev;
                len += prev_len;
            }
        }
        if let Some(next_len) = self.free.remove(&(start + len)) {
            len += next_len;
        }
        self.free.insert(start, len);
        Ok(())
    }
}

/// A shared memfd mapped at `base` in guest-physical (IOVA) space.
#[derive(Debug)]
pub struct DriverMemory {
    file: File,
    host: *mut u8,
    base: u64,
    size: u64,
    allocator: Mutex<Allocator>,
}

// SAFETY: the mapping is owned by this struct for its whole life; all accesses go through volatile
// or atomic operations on raw pointers, which is sound for memory shared with another process.
unsafe impl Send for DriverMemory {}
// SAFETY: as above; the allocator state is behind a mutex.
unsafe impl Sync for DriverMemory {}

impl DriverMemory {
    /// Creates `size` bytes (a multiple of 4096) of guest memory seen by the device at `base`.
    pub fn new(base: u64, size: u64) -> Result<Self> {
        Self::of_kind(base, size, MemoryKind::Memfd)
    }

    /// The same in memory of `kind` (a multiple of 2 MiB for huge pages).
    pub fn of_kind(base: u64, size: u64, kind: MemoryKind) -> Result<Self> {
        let create = |source| MemoryError::Create { size, source };
        if size == 0 || size % 4096 != 0 || base % 4096 != 0 || base.checked_add(size).is_none() {
            return Err(create(io::Error::new(
                io::ErrorKind::InvalidInput,
                "base and size must be multiples of 4096, size non-zero, base + size below 2^64",
            )));
        }
        let len = usize::try_from(size)
            .map_err(|_| create(io::Error::new(io::ErrorKind::InvalidInput, "too large")))?;
        let name = CString::new("vus-guest-memory").map_err(|e| create(io::Error::other(e)))?;
        // SAFETY: memfd_create reads a NUL-terminated name and returns a new descriptor or -1.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | kind.flags()) };
        if fd < 0 {
            return Err(create(io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size).map_err(create)?;
        if kind == MemoryKind::SealedMemfd {
            // SAFETY: F_ADD_SEALS on our own memfd, created with MFD_ALLOW_SEALING.
            if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) } < 0
            {
                return Err(create(io::Error::last_os_error()));
            }
        }
        // SAFETY: a new shared mapping of the whole memfd; the result is checked for MAP_FAILED.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if host == libc::MAP_FAILED {
            return Err(create(io::Error::last_os_error()));
        }
        Ok(DriverMemory {
            file,
            host: host.cast(),
            base,
            size,
            allocator: Mutex::new(Allocator::new(base, size)),
        })
    }

    /// The memfd, to send with DMA_MAP.
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Allocates `len` bytes aligned to `align` (a power of two), zero-filled.
    pub fn alloc(&self, len: u64, align: u64) -> Result<u64> {
        let gpa = self
            .allocator
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .alloc(len, align)?;
        self.fill(gpa, 0, len.max(1))?;
        Ok(gpa)
    }

    pub fn free(&self, gpa: u64) -> Result<()> {
        self.allocator
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .free(gpa)
    }

    // The accessors are inlined into the benchmark's driver, where a copy of a constant length
    // becomes a move instead of a memcpy call.
    #[inline]
    fn host_ptr(&self, gpa: u64, len: u64) -> Result<*mut u8> {
        let out = || MemoryError::OutOfRange {
            gpa,
            len,
            base: self.base,
            size: self.size,
        };
        let offset = gpa.checked_sub(self.base).ok_or_else(out)?;
        let end = offset.checked_add(len).ok_or_else(out)?;
        if end > self.size {
            return Err(out());
        }
        // SAFETY: offset + len <= size, so the pointer stays inside the mapping.
        Ok(unsafe { self.host.add(offset as usize) })
    }

    #[inline]
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        let dst = self.host_ptr(gpa, data.len() as u64)?;
        // SAFETY: dst..dst+len is inside the mapping (checked) and cannot overlap `data`, a Rust slice.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        std::sync::atomic::fence(Ordering::Release);
        Ok(())
    }

    #[inline]
    pub fn read(&self, gpa: u64, data: &mut [u8]) -> Result<()> {
        let src = self.host_ptr(gpa, data.len() as u64)?;
        std::sync::atomic::fence(Ordering::Acquire);
        // SAFETY: src..src+len is inside the mapping (checked) and cannot overlap `data`.
        unsafe { std::ptr::copy_nonoverlapping(src, data.as_mut_ptr(), data.len()) };
        Ok(())
    }

    pub fn read_vec(&self, gpa: u64, len: usize) -> Result<Vec<u8>> {
        let mut data = vec![0u8; len];
        self.read(gpa, &mut data)?;
        Ok(data)
    }

    pub fn fill(&self, gpa: u64, byte: u8, len: u64) -> Result<()> {
        let dst = self.host_ptr(gpa, len)?;
        // SAFETY: dst..dst+len is inside the mapping (checked above).
        unsafe { std::ptr::write_bytes(dst, byte, len as usize) };
        Ok(())
    }

    #[inline]
    fn atomic_u16(&self, gpa: u64) -> Result<&AtomicU16> {
        if gpa % 2 != 0 {
            return Err(MemoryError::Unaligned { gpa, align: 2 });
        }
        let ptr = self.host_ptr(gpa, 2)?;
        // SAFETY: in range and 2-byte aligned (the mapping is page aligned); AtomicU16 has the
        // layout of u16 and the mapping outlives the borrow of self.
        Ok(unsafe { &*(ptr as *const AtomicU16) })
    }

    #[inline]
    fn atomic_u32(&self, gpa: u64) -> Result<&AtomicU32> {
        if gpa % 4 != 0 {
            return Err(MemoryError::Unaligned { gpa, align: 4 });
        }
        let ptr = self.host_ptr(gpa, 4)?;
        // SAFETY: in range and 4-byte aligned; AtomicU32 has the layout of u32.
        Ok(unsafe { &*(ptr as *const AtomicU32) })
    }

    /// Little-endian u16 load with acquire ordering (ring indices written by the device).
    #[inline]
    pub fn load_u16(&self, gpa: u64) -> Result<u16> {
        Ok(u16::from_le(self.atomic_u16(gpa)?.load(Ordering::Acquire)))
    }

    /// Little-endian u16 store with release ordering (publishes everything written before).
    #[inline]
    pub fn store_u16(&self, gpa: u64, value: u16) -> Result<()> {
        self.atomic_u16(gpa)?
            .store(value.to_le(), Ordering::Release);
        Ok(())
    }

    #[inline]
    pub fn load_u32(&self, gpa: u64) -> Result<u32> {
        Ok(u32::from_le(self.atomic_u32(gpa)?.load(Ordering::Acquire)))
    }

    #[inline]
    pub fn store_u32(&self, gpa: u64, value: u32) -> Result<()> {
        self.atomic_u32(gpa)?
            .store(value.to_le(), Ordering::Release);
        Ok(())
    }
}

impl Drop for DriverMemory {
    fn drop(&mut self) {
        // SAFETY: host/size describe the mapping created in new(), unmapped exactly once here.
        unsafe { libc::munmap(self.host.cast(), self.size as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_disjoint_and_coalesce_when_freed() {
        let mem = DriverMemory::new(0x10000, 0x4000).unwrap();
        let a = mem.alloc(100, 16).unwrap();
        let b = mem.alloc(100, 4096).unwrap();
        assert_eq!(a, 0x10000);
        assert_eq!(b % 4096, 0);
        assert!(b >= a + 100);
        mem.free(a).unwrap();
        mem.free(b).unwrap();
        // Everything coalesced back: the whole memory is allocatable again.
        assert_eq!(mem.alloc(0x4000, 1).unwrap(), 0x10000);
        assert!(matches!(
            mem.alloc(1, 1),
            Err(MemoryError::Exhausted { .. })
        ));
        assert!(matches!(
            mem.free(0x10001),
            Err(MemoryError::NotAllocated { .. })
        ));
    }

    #[test]
    fn accesses_are_bounds_checked_and_little_endian() {
        let mem = DriverMemory::new(0x1000, 0x1000).unwrap();
        mem.store_u16(0x1002, 0x1234).unwrap();
        assert_eq!(mem.read_vec(0x1002, 2).unwrap(), vec![0x34, 0x12]);
        mem.write(0x1ffc, &[1, 2, 3, 4]).unwrap();
        assert_eq!(mem.load_u32(0x1ffc).unwrap(), 0x04030201);
        assert!(mem.write(0x1ffd, &[1, 2, 3, 4]).is_err());
        assert!(mem.read_vec(0xfff, 1).is_err());
        assert!(mem.load_u16(0x1001).is_err());
    }
}
