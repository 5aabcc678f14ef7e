//! One I/O request as the device layer hands it to an engine.

use crate::{Disk, IoBuffers};

/// Offsets and lengths are in bytes and must be multiples of the disk's logical block size.
#[derive(Debug)]
pub enum IoRequest {
    /// Reads `buffers.len()` bytes at `offset` into the buffers.
    Read { offset: u64, buffers: IoBuffers },
    /// Writes the buffers at `offset`; with `fua` the data is durable when the request completes.
    Write {
        offset: u64,
        buffers: IoBuffers,
        fua: bool,
    },
    /// Makes every completed write durable.
    Flush,
    /// Lets the backend forget a range (its content becomes unspecified).
    Discard { offset: u64, len: u64 },
    /// Makes a range read back as zeroes; `may_unmap` lets the backend deallocate it.
    WriteZeroes {
        offset: u64,
        len: u64,
        may_unmap: bool,
    },
}

impl IoRequest {
    /// Bytes this request covers: what a successful completion reports (0 for a flush).
    pub(crate) fn byte_len(&self) -> u64 {
        match self {
            IoRequest::Read { buffers, .. } | IoRequest::Write { buffers, .. } => buffers.len(),
            IoRequest::Flush => 0,
            IoRequest::Discard { len, .. } | IoRequest::WriteZeroes { len, .. } => *len,
        }
    }

    /// The checks every engine makes before touching the backend, as the errno to complete with:
    /// EROFS for modifications of a read-only disk, EINVAL for ranges past the end or not
    /// aligned to the logical block size, EIO for a flush once an earlier flush has failed.
    /// Passed, they give the request's `byte_len`, which the engine goes on with.
    #[inline]
    pub(crate) fn check(&self, disk: &Disk) -> Result<u64, i32> {
        let offset = match self {
            IoRequest::Flush => return disk.flush_state().check().map(|()| 0),
            IoRequest::Read { offset, .. } => *offset,
            IoRequest::Write { offset, .. }
            | IoRequest::Discard { offset, .. }
            | IoRequest::WriteZeroes { offset, .. } => {
                if disk.read_only() {
                    return Err(libc::EROFS);
                }
                *offset
            }
        };
        let len = self.byte_len();
        // A mask, not a division per request: a disk's block size is a power of two (512 or
        // 4096, checked when it is opened).
        let misaligned = u64::from(disk.logical_block_size()) - 1;
        let end = offset.checked_add(len).ok_or(libc::EINVAL)?;
        if (offset | len) & misaligned != 0 || end > disk.size() {
            return Err(libc::EINVAL);
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io_buffers::test_memory::TestMemory;

    #[test]
    fn checks_range_alignment_and_read_only() {
        let disk = Disk::null(1 << 20, 512).unwrap();
        let mut memory = TestMemory::new(4096);
        let mut read = |offset, len| IoRequest::Read {
            offset,
            buffers: memory.buffers(&[(0, len)]),
        };
        assert_eq!(read(0, 512).check(&disk), Ok(512));
        assert_eq!(read((1 << 20) - 512, 512).check(&disk), Ok(512));
        assert_eq!(read(1 << 20, 512).check(&disk), Err(libc::EINVAL));
        assert_eq!(read(100, 512).check(&disk), Err(libc::EINVAL));
        assert_eq!(read(0, 100).check(&disk), Err(libc::EINVAL));
        let huge = IoRequest::Discard {
            offset: u64::MAX - 511,
            len: 1024,
        };
        assert_eq!(huge.check(&disk), Err(libc::EINVAL));
        let large_blocks = Disk::null(1 << 20, 4096).unwrap();
        let discard = |offset, len| IoRequest::Discard { offset, len };
        assert_eq!(discard(4096, 8192).check(&large_blocks), Ok(8192));
        assert_eq!(discard(512, 4096).check(&large_blocks), Err(libc::EINVAL));
        assert_eq!(discard(4096, 2048).check(&large_blocks), Err(libc::EINVAL));
        assert_eq!(Disk::null(1 << 20, 1024).err().map(|_| ()), Some(()));
        assert_eq!(IoRequest::Flush.byte_len(), 0);
        assert_eq!(
            IoRequest::Discard {
                offset: 0,
                len: 4096
            }
            .byte_len(),
            4096
        );
    }
}
