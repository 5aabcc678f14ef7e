//! The memory of one request: iovecs into guest memory, kept mapped until the request completes.

use std::any::Any;
use std::sync::Arc;

use smallvec::SmallVec;

/// The iovecs of one request; the first few are stored inline, without an allocation.
pub type IoVecs = SmallVec<[libc::iovec; 4]>;

/// Scatter-gather buffers of a read or write, handed to the kernel without copying.
///
/// The keep-alive owner (for example a buffer of the device's own) is dropped only when the
/// engine drops the request, after its completion. Buffers in guest memory have none: the
/// device keeps that memory mapped itself, without a reference count touched per request.
pub struct IoBuffers {
    iovecs: IoVecs,
    len: u64,
    _keep_alive: Option<Arc<dyn Any + Send + Sync>>,
}

// SAFETY: the iovecs are plain addresses; the contract of `new` makes the memory they point to
// valid and unaliased for the request's lifetime, whichever thread completes it.
unsafe impl Send for IoBuffers {}

impl IoBuffers {
    /// # Safety
    /// Until this value is dropped, every iovec must point to memory that stays mapped, readable
    /// and writable for `iov_len` bytes, that nothing else writes, and (for reads from the disk)
    /// that nothing else reads; `keep_alive` is dropped after the iovecs' last use.
    pub unsafe fn new(iovecs: IoVecs, keep_alive: Arc<dyn Any + Send + Sync>) -> IoBuffers {
        // SAFETY: the caller's obligations, with keep_alive dropped with the buffers.
        let mut buffers = unsafe { IoBuffers::borrowed(iovecs) };
        buffers._keep_alive = Some(keep_alive);
        buffers
    }

    /// Buffers in memory that the caller keeps mapped, without an owner of their own.
    ///
    /// # Safety
    /// As for [`IoBuffers::new`], except that the caller keeps the memory mapped until the
    /// engine has dropped the request: until its completion has been reaped, or the engine
    /// itself has been dropped.
    pub unsafe fn borrowed(iovecs: IoVecs) -> IoBuffers {
        let len = iovecs.iter().map(|iov| iov.iov_len as u64).sum();
        IoBuffers {
            iovecs,
            len,
            _keep_alive: None,
        }
    }

    /// Total bytes over all iovecs.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iovecs(&self) -> &[libc::iovec] {
        &self.iovecs
    }

    /// Whether O_DIRECT can use these iovecs as they are: every base aligned to `memory` and
    /// every length a multiple of `length` (both powers of two).
    pub(crate) fn is_aligned(&self, memory: u32, length: u32) -> bool {
        let memory_mask = memory as usize - 1;
        let length_mask = length as usize - 1;
        self.iovecs
            .iter()
            .all(|iov| iov.iov_base as usize & memory_mask == 0 && iov.iov_len & length_mask == 0)
    }

    /// Copies `src` into the buffers, in iovec order, up to the shorter of the two.
    pub(crate) fn copy_from_slice(&self, mut src: &[u8]) {
        for iov in &self.iovecs {
            let n = iov.iov_len.min(src.len());
            // SAFETY: the contract of `new` makes the iovec writable for iov_len >= n bytes and
            // unaliased, so it cannot overlap `src` (an engine-owned bounce buffer).
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), iov.iov_base.cast::<u8>(), n) };
            src = &src[n..];
            if src.is_empty() {
                break;
            }
        }
    }

    /// Copies the buffers, in iovec order, into `dst`, up to the shorter of the two.
    pub(crate) fn copy_to_slice(&self, mut dst: &mut [u8]) {
        for iov in &self.iovecs {
            let n = iov.iov_len.min(dst.len());
            // SAFETY: the contract of `new` makes the iovec readable for iov_len >= n bytes; it
            // cannot overlap `dst` (an engine-owned bounce buffer).
            unsafe {
                std::ptr::copy_nonoverlapping(iov.iov_base.cast::<u8>(), dst.as_mut_ptr(), n)
            };
            dst = &mut dst[n..];
            if dst.is_empty() {
                break;
            }
        }
    }
}

impl std::fmt::Debug for IoBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBuffers")
            .field("segments", &self.iovecs.len())
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
pub(crate) mod test_memory {
    use super::IoBuffers;

    /// Guest-like memory for tests: segments at chosen offsets inside one page-aligned block.
    pub(crate) struct TestMemory {
        block: crate::aligned_buffer::AlignedBuffer,
    }

    impl TestMemory {
        pub(crate) fn new(len: usize) -> TestMemory {
            TestMemory {
                block: crate::aligned_buffer::AlignedBuffer::zeroed(len, 4096).unwrap(),
            }
        }

        pub(crate) fn bytes(&self) -> &[u8] {
            self.block.as_slice()
        }

        /// Buffers for (offset, length) segments of this memory, which must outlive the request.
        pub(crate) fn buffers(&mut self, segments: &[(usize, usize)]) -> IoBuffers {
            let base = self.block.as_mut_slice().as_mut_ptr();
            let iovecs = segments
                .iter()
                .map(|&(offset, len)| {
                    assert!(offset + len <= self.block.as_slice().len());
                    // SAFETY: offset + len is inside the block (asserted above).
                    libc::iovec {
                        iov_base: unsafe { base.add(offset) }.cast(),
                        iov_len: len,
                    }
                })
                .collect();
            // SAFETY: the tests keep the memory alive and untouched until the request completes.
            unsafe { IoBuffers::new(iovecs, std::sync::Arc::new(())) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_memory::TestMemory;

    #[test]
    fn length_alignment_and_copies() {
        let mut memory = TestMemory::new(8192);
        let buffers = memory.buffers(&[(0, 512), (1024, 1024), (4096, 100)]);
        assert_eq!(buffers.len(), 1636);
        assert!(!buffers.is_empty());
        assert_eq!(buffers.iovecs().len(), 3);
        assert!(!buffers.is_aligned(512, 512));
        let aligned = memory.buffers(&[(0, 512), (1024, 1024)]);
        assert!(aligned.is_aligned(512, 512));
        assert!(!aligned.is_aligned(2048, 512));
        let misplaced = memory.buffers(&[(3, 512)]);
        assert!(!misplaced.is_aligned(4, 512));
        assert!(misplaced.is_aligned(1, 512));

        let src: Vec<u8> = (0..1636).map(|i| i as u8).collect();
        buffers.copy_from_slice(&src);
        let mut back = vec![0u8; 1636];
        buffers.copy_to_slice(&mut back);
        assert_eq!(back, src);
        assert_eq!(&memory.bytes()[1024..1030], &src[512..518]);
        assert_eq!(memory.bytes()[600], 0);
    }
}
