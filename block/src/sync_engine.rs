//! The synchronous engine: each request runs to completion inside `submit`.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::Arc;

use vmm_sys_util::ioctl_io_nr;

use crate::aligned_buffer::AlignedBuffer;
use crate::null_latency;
use crate::{BlockError, Completion, Disk, Engine, IoBuffers, IoRequest, Submitted};

ioctl_io_nr!(BLKDISCARD, 0x12, 119);

/// The most iovecs one preadv/pwritev call takes (Linux's UIO_MAXIOV).
pub(crate) const IOV_MAX: usize = 1024;
/// The largest zero buffer written when the backend cannot zero a range by itself.
const ZERO_CHUNK: usize = 1 << 20;

/// Executes requests with blocking system calls inside `submit`, which returns their result:
/// nothing is left to reap.
pub struct SyncEngine;

impl SyncEngine {
    pub fn new() -> Result<SyncEngine, BlockError> {
        Ok(SyncEngine)
    }
}

impl Engine for SyncEngine {
    fn submit(
        &mut self,
        disk: &Arc<Disk>,
        request: IoRequest,
        _user_data: u64,
    ) -> Result<Submitted, BlockError> {
        Ok(Submitted::Done(execute(disk, &request)))
    }

    fn submit_pending(&mut self) {}

    fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn reap(&mut self, _out: &mut Vec<Completion>) {}
}

/// Runs one request with blocking calls: bytes done, or the errno to complete with.
pub(crate) fn execute(disk: &Disk, request: &IoRequest) -> Result<u64, i32> {
    let len = request.check(disk)?;
    let Some(fd) = disk.fd() else {
        null_latency::sleep(disk.null_latency());
        return Ok(len);
    };
    match request {
        IoRequest::Read { offset, buffers } => {
            transfer(disk, fd, *offset, buffers, Direction::Read)
        }
        IoRequest::Write {
            offset,
            buffers,
            fua,
        } => transfer(disk, fd, *offset, buffers, Direction::Write { fua: *fua }),
        IoRequest::Flush => disk.flush_state().record(fdatasync(fd).map(|()| 0)),
        IoRequest::Discard { offset, len } => discard(disk, fd, *offset, *len).map(|()| *len),
        IoRequest::WriteZeroes {
            offset,
            len,
            may_unmap,
        } => write_zeroes(disk, fd, *offset, *len, *may_unmap).map(|()| *len),
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write { fua: bool },
}

/// Moves the buffers' bytes, through an aligned bounce buffer when O_DIRECT could not take
/// them as they are.
fn transfer(
    disk: &Disk,
    fd: RawFd,
    offset: u64,
    buffers: &IoBuffers,
    direction: Direction,
) -> Result<u64, i32> {
    let len = buffers.len();
    if len == 0 {
        return Ok(0);
    }
    let Some(alignment) = disk
        .direct_io_alignment()
        .filter(|a| !buffers.is_aligned(a.memory, a.offset))
    else {
        transfer_all(fd, buffers.iovecs(), offset, direction)?;
        return Ok(len);
    };
    let len_usize = usize::try_from(len).map_err(|_| libc::ENOMEM)?;
    let align = alignment.memory.max(alignment.offset) as usize;
    let mut bounce = AlignedBuffer::zeroed(len_usize, align).ok_or(libc::ENOMEM)?;
    if let Direction::Write { .. } = direction {
        buffers.copy_to_slice(bounce.as_mut_slice());
    }
    transfer_all(fd, &[bounce.iovec(len_usize)], offset, direction)?;
    if let Direction::Read = direction {
        buffers.copy_from_slice(bounce.as_slice());
    }
    Ok(len)
}

/// preadv/pwritev until every byte moved, retrying on EINTR and short transfers. A FUA write
/// uses RWF_DSYNC, or fdatasync afterwards on kernels without it.
fn transfer_all(
    fd: RawFd,
    iovecs: &[libc::iovec],
    mut offset: u64,
    direction: Direction,
) -> Result<(), i32> {
    let mut iovecs = iovecs.to_vec();
    let mut first = 0;
    let mut dsync = matches!(direction, Direction::Write { fua: true });
    let mut sync_after = false;
    while first < iovecs.len() {
        if iovecs[first].iov_len == 0 {
            first += 1;
            continue;
        }
        let batch = &iovecs[first..iovecs.len().min(first + IOV_MAX)];
        let file_offset = libc::off_t::try_from(offset).map_err(|_| libc::EINVAL)?;
        let count = batch.len() as libc::c_int;
        // SAFETY: the iovecs point to memory valid for their lengths: guest memory under the
        // IoBuffers contract, or a bounce buffer the caller owns for the whole call.
        let ret = unsafe {
            match direction {
                Direction::Read => libc::preadv(fd, batch.as_ptr(), count, file_offset),
                Direction::Write { .. } if dsync => {
                    libc::pwritev2(fd, batch.as_ptr(), count, file_offset, libc::RWF_DSYNC)
                }
                Direction::Write { .. } => libc::pwritev(fd, batch.as_ptr(), count, file_offset),
            }
        };
        let done = match usize::try_from(ret) {
            Ok(0) => return Err(libc::EIO),
            Ok(done) => done,
            Err(_) => match last_errno() {
                libc::EINTR => continue,
                libc::EOPNOTSUPP | libc::ENOSYS if dsync => {
                    dsync = false;
                    sync_after = true;
                    continue;
                }
                errno => return Err(errno),
            },
        };
        offset += done as u64;
        let mut left = done;
        while left > 0 {
            let iov = &mut iovecs[first];
            if left < iov.iov_len {
                // SAFETY: left < iov_len, so the new base stays inside the same segment.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(left) }.cast();
                iov.iov_len -= left;
                left = 0;
            } else {
                left -= iov.iov_len;
                first += 1;
            }
        }
    }
    if sync_after {
        fdatasync(fd)?;
    }
    Ok(())
}

fn fdatasync(fd: RawFd) -> Result<(), i32> {
    loop {
        // SAFETY: fdatasync only takes the fd, which the disk keeps open.
        if unsafe { libc::fdatasync(fd) } == 0 {
            return Ok(());
        }
        match last_errno() {
            libc::EINTR => continue,
            errno => return Err(errno),
        }
    }
}

fn fallocate(fd: RawFd, mode: libc::c_int, offset: u64, len: u64) -> Result<(), i32> {
    let offset = libc::off_t::try_from(offset).map_err(|_| libc::EINVAL)?;
    let len = libc::off_t::try_from(len).map_err(|_| libc::EINVAL)?;
    loop {
        // SAFETY: fallocate only takes integers and the fd, which the disk keeps open.
        if unsafe { libc::fallocate(fd, mode, offset, len) } == 0 {
            return Ok(());
        }
        match last_errno() {
            libc::EINTR => continue,
            errno => return Err(errno),
        }
    }
}

/// Deallocates a range. Discards are advisory, so a backend that turns out not to support them
/// completes them as done.
fn discard(disk: &Disk, fd: RawFd, offset: u64, len: u64) -> Result<(), i32> {
    if !disk.discard_supported() || len == 0 {
        return Ok(());
    }
    let result = if disk.is_block_device() {
        let range = [offset, len];
        // SAFETY: BLKDISCARD reads two u64 (start, length) from the pointer, a live array.
        if unsafe { libc::ioctl(fd, BLKDISCARD() as _, range.as_ptr()) } == 0 {
            Ok(())
        } else {
            Err(last_errno())
        }
    } else {
        fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    match result {
        Err(libc::EOPNOTSUPP | libc::ENOTTY) => Ok(()),
        other => other,
    }
}

/// Zeroes a range: by deallocating it when allowed, else by asking the backend to zero it
/// (fallocate works on files and block devices alike), else by writing zeroes.
fn write_zeroes(disk: &Disk, fd: RawFd, offset: u64, len: u64, may_unmap: bool) -> Result<(), i32> {
    if len == 0 {
        return Ok(());
    }
    let unmap = may_unmap && disk.discard_supported();
    for mode in [libc::FALLOC_FL_PUNCH_HOLE, libc::FALLOC_FL_ZERO_RANGE] {
        if mode == libc::FALLOC_FL_PUNCH_HOLE && !unmap {
            continue;
        }
        match fallocate(fd, mode | libc::FALLOC_FL_KEEP_SIZE, offset, len) {
            Ok(()) => return Ok(()),
            Err(libc::EOPNOTSUPP | libc::EINVAL | libc::ENODEV | libc::ENOTTY) => continue,
            Err(errno) => return Err(errno),
        }
    }
    write_zero_buffers(disk, fd, offset, len)
}

fn write_zero_buffers(disk: &Disk, fd: RawFd, mut offset: u64, len: u64) -> Result<(), i32> {
    let chunk = usize::try_from(len).map_or(ZERO_CHUNK, |len| len.min(ZERO_CHUNK));
    let align = disk
        .direct_io_alignment()
        .map_or(disk.logical_block_size(), |a| a.memory.max(a.offset));
    let mut zeroes = AlignedBuffer::zeroed(chunk, align as usize).ok_or(libc::ENOMEM)?;
    let end = offset + len;
    while offset < end {
        let n = usize::try_from(end - offset).map_or(chunk, |left| left.min(chunk));
        transfer_all(
            fd,
            &[zeroes.iovec(n)],
            offset,
            Direction::Write { fua: false },
        )?;
        offset += n as u64;
    }
    Ok(())
}

fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CacheMode, DiskOptions};
    use std::os::unix::fs::FileExt;

    /// The last resort of write-zeroes, which no local filesystem makes us take.
    #[test]
    fn write_zeroes_by_writing_when_the_backend_cannot() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let len = 3 << 20;
        file.as_file().write_all_at(&vec![0x5a; len], 0).unwrap();
        let options = DiskOptions {
            cache: CacheMode::None,
            ..DiskOptions::new(file.path())
        };
        let disk = Disk::open(&options).unwrap();
        let (offset, zero_len) = (4096u64, (2 << 20) + 4096);
        write_zero_buffers(&disk, disk.fd().unwrap(), offset, zero_len).unwrap();
        let mut back = vec![1u8; len];
        file.as_file().read_exact_at(&mut back, 0).unwrap();
        let zero_range = offset as usize..(offset + zero_len) as usize;
        assert!(back[zero_range.clone()].iter().all(|&b| b == 0));
        assert!(back[..zero_range.start].iter().all(|&b| b == 0x5a));
        assert!(back[zero_range.end..].iter().all(|&b| b == 0x5a));
    }
}
