//! The backend requests a SCSI command's disk work turns into, and the sense data its errors
//! turn into.

use std::sync::Arc;

use block::{IoBuffers, IoRequest};
use smallvec::{smallvec, SmallVec};

use scsi_disk::Sense;

/// Largest buffer a WRITE SAME pattern or a VERIFY read uses at a time.
const CHUNK_BYTES: u64 = 1 << 20;

/// Which way data went, for choosing the sense of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    FromDisk,
    ToDisk,
}

/// The sense data for a backend errno (SBC-4 error reporting as QEMU's scsi-disk does it).
pub fn error_sense(errno: i32, direction: Direction) -> Sense {
    match (errno, direction) {
        (libc::ENOSPC, _) => Sense::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
        (libc::EROFS, _) => Sense::WRITE_PROTECTED,
        (_, Direction::FromDisk) => Sense::UNRECOVERED_READ_ERROR,
        (_, Direction::ToDisk) => Sense::WRITE_ERROR,
    }
}

/// Backend requests of one command; most commands have one, kept inline.
pub type IoRequests = SmallVec<[IoRequest; 1]>;

/// The backend requests of one command that are not submitted yet.
pub enum PendingIo {
    /// Independent requests, all submitted at once.
    Batch(IoRequests),
    /// WRITE SAME with a non-zero block: the pattern buffer (whole blocks) written chunk after
    /// chunk.
    Pattern {
        buffer: Arc<Vec<u8>>,
        next: u64,
        end: u64,
        fua: bool,
    },
    /// VERIFY: the range read chunk after chunk into scratch memory.
    Verify { next: u64, end: u64 },
}

impl PendingIo {
    /// A pattern job repeating `block` over `len` bytes at `offset`.
    pub fn pattern(offset: u64, len: u64, block: &[u8], fua: bool) -> PendingIo {
        let block_len = block.len().max(1) as u64;
        let repeats = (CHUNK_BYTES / block_len)
            .max(1)
            .min(len.div_ceil(block_len).max(1));
        let buffer = block.repeat(repeats as usize);
        PendingIo::Pattern {
            buffer: Arc::new(buffer),
            next: offset,
            end: offset.saturating_add(len),
            fua,
        }
    }

    /// The requests that may be submitted now: everything for a batch, the next chunk for a
    /// sequential job (call again after each completion).
    pub fn take_ready(&mut self) -> IoRequests {
        match self {
            PendingIo::Batch(requests) => std::mem::take(requests),
            PendingIo::Pattern {
                buffer,
                next,
                end,
                fua,
            } => {
                if *next >= *end || buffer.is_empty() {
                    return IoRequests::new();
                }
                let len = (*end - *next).min(buffer.len() as u64) as usize;
                let iovec = libc::iovec {
                    iov_base: buffer.as_ptr() as *mut libc::c_void,
                    iov_len: len,
                };
                // SAFETY: the iovec covers `len` <= buffer.len() bytes of the pattern buffer,
                // which the Arc in keep_alive keeps allocated until the request is dropped. The
                // buffer is never modified and is only read from (this is a write to the disk).
                let buffers = unsafe { IoBuffers::owned(iovec, Arc::clone(buffer) as _) };
                let request = IoRequest::Write {
                    offset: *next,
                    buffers,
                    fua: *fua,
                };
                *next += len as u64;
                smallvec![request]
            }
            PendingIo::Verify { next, end } => {
                if *next >= *end {
                    return IoRequests::new();
                }
                let len = (*end - *next).min(CHUNK_BYTES) as usize;
                let mut scratch = vec![0u8; len];
                let iovec = libc::iovec {
                    iov_base: scratch.as_mut_ptr().cast(),
                    iov_len: len,
                };
                // SAFETY: the iovec covers the whole scratch vector, whose heap allocation moves
                // with it into keep_alive and is used by nothing else until the request drops.
                let buffers = unsafe { IoBuffers::owned(iovec, Arc::new(scratch)) };
                let request = IoRequest::Read {
                    offset: *next,
                    buffers,
                };
                *next += len as u64;
                smallvec![request]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths(requests: &[IoRequest]) -> Vec<(u64, u64)> {
        requests
            .iter()
            .map(|request| match request {
                IoRequest::Write {
                    offset, buffers, ..
                }
                | IoRequest::Read { offset, buffers } => (*offset, buffers.len()),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn pattern_is_written_in_bounded_chunks() {
        let block = vec![0xA5u8; 512];
        let mut job = PendingIo::pattern(4096, 3 * CHUNK_BYTES / 2, &block, false);
        assert_eq!(lengths(&job.take_ready()), vec![(4096, CHUNK_BYTES)]);
        assert_eq!(
            lengths(&job.take_ready()),
            vec![(4096 + CHUNK_BYTES, CHUNK_BYTES / 2)]
        );
        assert!(job.take_ready().is_empty());

        let mut small = PendingIo::pattern(0, 1024, &block, true);
        let requests = small.take_ready();
        match &requests[0] {
            IoRequest::Write { buffers, fua, .. } => {
                assert!(*fua);
                assert_eq!(buffers.len(), 1024);
                // SAFETY: the iovec points into the live pattern buffer owned by `buffers`.
                let bytes = unsafe {
                    std::slice::from_raw_parts(buffers.iovecs()[0].iov_base.cast::<u8>(), 1024)
                };
                assert!(bytes.iter().all(|&b| b == 0xA5));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn verify_reads_chunk_after_chunk() {
        let mut job = PendingIo::Verify {
            next: 0,
            end: CHUNK_BYTES + 512,
        };
        assert_eq!(lengths(&job.take_ready()), vec![(0, CHUNK_BYTES)]);
        assert_eq!(lengths(&job.take_ready()), vec![(CHUNK_BYTES, 512)]);
        assert!(job.take_ready().is_empty());
    }

    #[test]
    fn errno_to_sense() {
        for (errno, direction, sense) in [
            (
                libc::EIO,
                Direction::FromDisk,
                Sense::UNRECOVERED_READ_ERROR,
            ),
            (libc::EIO, Direction::ToDisk, Sense::WRITE_ERROR),
            (
                libc::ENOSPC,
                Direction::ToDisk,
                Sense::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
            ),
            (libc::EROFS, Direction::ToDisk, Sense::WRITE_PROTECTED),
        ] {
            assert_eq!(error_sense(errno, direction), sense, "errno {errno}");
        }
    }
}
