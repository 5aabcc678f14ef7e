//! The memory of one request: iovecs into guest memory, kept mapped until the request completes.

use std::any::Any;
use std::sync::Arc;

/// Scatter-gather buffers of a read or write, handed to the kernel without copying.
///
/// Buffers in guest memory point to iovecs that the device builds in place, in the record it
/// keeps for the command, so that a request is a few words wherever it is moved on its way to
/// the kernel; that memory the device keeps mapped itself, without a reference count touched
/// per request. A buffer of its own (a pattern, a scratch area) carries its one iovec and an
/// owner that is dropped only when the engine drops the request, after its completion.
pub struct IoBuffers {
    iovecs: Iovecs,
    len: u64,
}

enum Iovecs {
    /// An array the caller keeps in place: see [`IoBuffers::borrowed`].
    Borrowed {
        first: *const libc::iovec,
        count: usize,
    },
    Owned {
        iovec: libc::iovec,
        _keep_alive: Arc<dyn Any + Send + Sync>,
    },
}

// SAFETY: the iovecs are plain addresses; the contracts of `owned` and `borrowed` make the
// memory they point to (and a borrowed iovec array) valid and unaliased for the request's
// lifetime, whichever thread completes it.
unsafe impl Send for IoBuffers {}

impl IoBuffers {
    /// One buffer, kept allocated by `keep_alive`.
    ///
    /// # Safety
    /// Until this value is dropped, the iovec must point to memory that stays mapped, readable
    /// and writable for `iov_len` bytes, that nothing else writes, and (for reads from the disk)
    /// that nothing else reads; `keep_alive` is dropped after the iovec's last use.
    #[inline]
    pub unsafe fn owned(iovec: libc::iovec, keep_alive: Arc<dyn Any + Send + Sync>) -> IoBuffers {
        IoBuffers {
            len: iovec.iov_len as u64,
            iovecs: Iovecs::Owned {
                iovec,
                _keep_alive: keep_alive,
            },
        }
    }

    /// Buffers in memory that the caller keeps mapped, described by iovecs it keeps too, of
    /// `len` bytes in all (the caller, which built the iovecs, knows their sum: summing them
    /// again cost a request path some 20 instructions).
    ///
    /// # Safety
    /// As for [`IoBuffers::owned`], for every iovec, except that the caller keeps the memory
    /// mapped until the engine has dropped the request (until its completion has been reaped,
    /// or the engine itself has been dropped); until then `iovecs` itself also stays where it
    /// is, unchanged. `len` is the sum of the iovecs' lengths: the engines check the disk range
    /// a request covers with it.
    #[inline]
    pub unsafe fn borrowed(iovecs: &[libc::iovec], len: u64) -> IoBuffers {
        debug_assert_eq!(
            len,
            iovecs.iter().map(|iov| iov.iov_len as u64).sum::<u64>(),
            "IoBuffers::borrowed: len is not the sum of the iovecs"
        );
        IoBuffers {
            len,
            iovecs: Iovecs::Borrowed {
                first: iovecs.as_ptr(),
                count: iovecs.len(),
            },
        }
    }

    /// Total bytes over all iovecs.
    #[inline]
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn iovecs(&self) -> &[libc::iovec] {
        match &self.iovecs {
            // SAFETY: the contract of `borrowed` keeps the array in place and unchanged while
            // this value lives.
            Iovecs::Borrowed { first, count } => unsafe {
                std::slice::from_raw_parts(*first, *count)
            },
            Iovecs::Owned { iovec, .. } => std::slice::from_ref(iovec),
        }
    }

    /// Whether O_DIRECT can use these iovecs as they are: every base aligned to `memory` and
    /// every length a multiple of `length` (both powers of two).
    pub(crate) fn is_aligned(&self, memory: u32, length: u32) -> bool {
        let memory_mask = memory as usize - 1;
        let length_mask = length as usize - 1;
        self.iovecs()
            .iter()
            .all(|iov| iov.iov_base as usize & memory_mask == 0 && iov.iov_len & length_mask == 0)
    }

    /// Copies `src` into the buffers, in iovec order, up to the shorter of the two.
    pub(crate) fn copy_from_slice(&self, mut src: &[u8]) {
        for iov in self.iovecs() {
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
        for iov in self.iovecs() {
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
            .field("segments", &self.iovecs().len())
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
pub(crate) mod test_memory {
    use super::IoBuffers;

    /// Guest-like memory for tests: segments at chosen offsets inside one page-aligned block,
    /// with the iovecs of every buffer handed out kept in place as long as the memory.
    pub(crate) struct TestMemory {
        block: crate::aligned_buffer::AlignedBuffer,
        iovecs: Vec<Box<[libc::iovec]>>,
    }

    impl TestMemory {
        pub(crate) fn new(len: usize) -> TestMemory {
            TestMemory {
                block: crate::aligned_buffer::AlignedBuffer::zeroed(len, 4096).unwrap(),
                iovecs: Vec::new(),
            }
        }

        pub(crate) fn bytes(&self) -> &[u8] {
            self.block.as_slice()
        }

        /// Buffers for (offset, length) segments of this memory, which must outlive the request.
        pub(crate) fn buffers(&mut self, segments: &[(usize, usize)]) -> IoBuffers {
            let base = self.block.as_mut_slice().as_mut_ptr();
            let iovecs: Box<[libc::iovec]> = segments
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
            self.iovecs.push(iovecs);
            let iovecs = self.iovecs.last().map_or(&[][..], |iovecs| &iovecs[..]);
            let len = iovecs.iter().map(|iov| iov.iov_len as u64).sum();
            // SAFETY: the tests keep the memory, which keeps the boxed iovecs where they are,
            // alive and untouched until the request completes; `len` is their sum.
            unsafe { IoBuffers::borrowed(iovecs, len) }
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
