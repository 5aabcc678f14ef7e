//! A zeroed heap buffer with a chosen alignment, for O_DIRECT bounces and zero writes.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

pub(crate) struct AlignedBuffer {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer exclusively owns its allocation; nothing else points into it.
unsafe impl Send for AlignedBuffer {}

impl AlignedBuffer {
    /// `None` when `len` is 0, `align` is not a power of two, or memory is exhausted.
    pub(crate) fn zeroed(len: usize, align: usize) -> Option<AlignedBuffer> {
        if len == 0 {
            return None;
        }
        let layout = Layout::from_size_align(len, align).ok()?;
        // SAFETY: the layout has a non-zero size (checked above).
        let ptr = NonNull::new(unsafe { alloc::alloc_zeroed(layout) })?;
        Some(AlignedBuffer { ptr, layout })
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr points to layout.size() initialised (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice, and &mut self makes this the only live reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }

    /// An iovec covering the first `len` bytes (at most the whole buffer).
    pub(crate) fn iovec(&mut self, len: usize) -> libc::iovec {
        libc::iovec {
            iov_base: self.ptr.as_ptr().cast(),
            iov_len: len.min(self.layout.size()),
        }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated in `zeroed` with exactly this layout and is freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_aligned_and_zeroed() {
        let mut buffer = AlignedBuffer::zeroed(8192, 4096).unwrap();
        assert_eq!(buffer.as_slice().as_ptr() as usize % 4096, 0);
        assert!(buffer.as_slice().iter().all(|&b| b == 0));
        assert_eq!(buffer.as_slice().len(), 8192);
        assert_eq!(buffer.iovec(100).iov_len, 100);
        assert_eq!(buffer.iovec(100_000).iov_len, 8192);
        buffer.as_mut_slice()[0] = 1;
        assert_eq!(buffer.as_slice()[0], 1);
    }

    #[test]
    fn refuses_empty_and_bad_alignment() {
        assert!(AlignedBuffer::zeroed(0, 512).is_none());
        assert!(AlignedBuffer::zeroed(512, 3).is_none());
    }
}
