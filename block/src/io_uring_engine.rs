//! The io_uring engine: batched submissions, guest buffers handed to the kernel as they are.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::aligned_buffer::AlignedBuffer;
use crate::null_latency::Delay;
use crate::sync_engine::{self, IOV_MAX};
use crate::{BlockError, Completion, Disk, Engine, IoBuffers, IoRequest, Submitted};

/// Submits requests to an io_uring; the ring writes the completion eventfd for each CQE.
///
/// At most as many requests as the ring has submission entries are in the kernel at once;
/// further ones wait inside the engine and start as others complete.
///
/// Its queue's thread writes it at every request: it sits on 128-byte blocks of its own (two
/// cache lines, which the adjacent-line prefetcher pairs), apart from other queues' engines.
#[repr(align(128))]
pub struct IoUringEngine {
    ring: IoUring,
    eventfd: EventFd,
    /// Requests in the kernel, indexed by their SQE's user_data.
    slots: Vec<Option<InKernel>>,
    free_slots: Vec<usize>,
    waiting: VecDeque<Waiting>,
    ready: Vec<Completion>,
    cqes: Vec<(u64, i32)>,
    unsubmitted: bool,
    /// The disks of the requests in `slots`.
    disks: HeldDisks,
}

struct Waiting {
    disk: Arc<Disk>,
    request: IoRequest,
    user_data: u64,
}

/// A request in the kernel, from its SQE to its CQE.
struct InKernel {
    user_data: u64,
    /// Its entry in `disks`, which keeps the file descriptor open until the CQE.
    disk: DiskId,
    operation: Operation,
}

/// The disks of the requests in the kernel, each kept once with a count of its requests:
/// a request touches no reference count, which every queue of a disk would share. A disk goes
/// with its last request, so the engine never keeps a removed disk open.
#[derive(Default)]
struct HeldDisks(Vec<Option<(Arc<Disk>, usize)>>);

/// A disk's entry in [`HeldDisks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DiskId(usize);

impl HeldDisks {
    /// Keeps `disk` for one more request, until `release`.
    fn hold(&mut self, disk: &Arc<Disk>) -> DiskId {
        let mut free = None;
        for (at, entry) in self.0.iter_mut().enumerate() {
            match entry {
                Some((held, requests)) if Arc::ptr_eq(held, disk) => {
                    *requests += 1;
                    return DiskId(at);
                }
                None => {
                    free.get_or_insert(at);
                }
                Some(_) => {}
            }
        }
        let entry = Some((Arc::clone(disk), 1));
        match free {
            Some(at) => {
                self.0[at] = entry;
                DiskId(at)
            }
            None => {
                self.0.push(entry);
                DiskId(self.0.len() - 1)
            }
        }
    }

    fn get(&self, id: DiskId) -> Option<&Arc<Disk>> {
        self.0.get(id.0)?.as_ref().map(|(disk, _)| disk)
    }

    /// A request holding `id` is done: the disk goes with its last request.
    fn release(&mut self, id: DiskId) {
        let Some(entry) = self.0.get_mut(id.0) else {
            return;
        };
        if let Some((_, requests)) = entry {
            *requests -= 1;
            if *requests == 0 {
                *entry = None;
            }
        }
    }
}

enum Operation {
    Transfer(Transfer),
    /// A null disk's request waiting out its latency.
    Delay(Delay),
    Flush,
    Discard {
        offset: u64,
        len: u64,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
        may_unmap: bool,
        punch: bool,
    },
}

/// A read or write, possibly resubmitted after a short transfer.
struct Transfer {
    offset: u64,
    buffers: IoBuffers,
    write: bool,
    /// RWF_DSYNC on the write (a FUA write on a kernel that accepts it).
    dsync: bool,
    /// A FUA write whose kernel refused RWF_DSYNC: fdatasync once the data is written.
    sync_after: bool,
    syncing: bool,
    done: u64,
    bounce: Option<AlignedBuffer>,
    /// The iovecs of the current SQE when they are not the request's own.
    current: Vec<libc::iovec>,
}

// SAFETY: `current` only points into `buffers` (Send by its contract) or into `bounce`, both
// owned by this value and moved with it.
unsafe impl Send for Transfer {}

enum Next {
    Resubmit,
    Done(Result<u64, i32>),
    /// The backend refused the cheap way: finish with the synchronous engine's fallbacks.
    Blocking(IoRequest),
}

impl IoUringEngine {
    /// A ring with `depth` submission entries; fails when io_uring is unavailable (old kernel,
    /// disabled by sysctl or seccomp), so that the caller can fall back to [`crate::SyncEngine`].
    pub fn new(depth: u32) -> Result<IoUringEngine, BlockError> {
        let ring = IoUring::new(depth).map_err(BlockError::IoUringSetup)?;
        let eventfd = EventFd::new(EFD_NONBLOCK).map_err(BlockError::Eventfd)?;
        ring.submitter()
            .register_eventfd(eventfd.as_raw_fd())
            .map_err(BlockError::IoUringSetup)?;
        // One SQE per slot at most, so the submission queue can never overflow.
        let slots = ring.params().sq_entries() as usize;
        Ok(IoUringEngine {
            ring,
            eventfd,
            slots: (0..slots).map(|_| None).collect(),
            free_slots: (0..slots).rev().collect(),
            waiting: VecDeque::new(),
            ready: Vec::new(),
            cqes: Vec::new(),
            unsubmitted: false,
            disks: HeldDisks::default(),
        })
    }

    /// Starts a request that has a free slot or queues it; finishes it at once when the kernel
    /// has nothing to do.
    #[inline(always)]
    fn start(&mut self, disk: &Arc<Disk>, request: IoRequest, user_data: u64) -> Submitted {
        let len = match request.check(disk) {
            Ok(len) => len,
            Err(errno) => return Submitted::Done(Err(errno)),
        };
        // A null disk's request does nothing but, with a latency, wait it out.
        if disk.is_null() && disk.null_latency().is_zero() {
            return Submitted::Done(Ok(len));
        }
        self.start_in_kernel(disk, request, user_data, len)
    }

    /// `start` of a checked request of `len` bytes that is not finished at once, which mostly
    /// goes to the kernel: out of line, so that a request finished at once takes no frame for
    /// what this keeps.
    #[inline(never)]
    fn start_in_kernel(
        &mut self,
        disk: &Arc<Disk>,
        request: IoRequest,
        user_data: u64,
        len: u64,
    ) -> Submitted {
        // A null disk's request waits out its latency; a file's does the I/O. Each kind of
        // disk takes only its own checks.
        let null_latency = if disk.is_null() {
            Some(disk.null_latency())
        } else {
            let nothing_to_do = match &request {
                IoRequest::Flush => false,
                IoRequest::Discard { .. } if !disk.discard_supported() => true,
                _ => len == 0,
            };
            if nothing_to_do {
                return Submitted::Done(Ok(len));
            }
            if let IoRequest::Discard { .. } = request {
                if disk.is_block_device() {
                    // io_uring has no plain discard: BLKDISCARD is an ioctl.
                    return Submitted::Done(sync_engine::execute(disk, &request));
                }
            }
            None
        };
        let Some(slot) = self.free_slots.pop() else {
            let disk = Arc::clone(disk);
            self.waiting.push_back(Waiting {
                disk,
                request,
                user_data,
            });
            return Submitted::Started;
        };
        let operation = match null_latency {
            Some(latency) => Ok(Operation::Delay(Delay::new(latency, len))),
            None => Operation::new(disk, request),
        };
        let operation = match operation {
            Ok(operation) => operation,
            Err(errno) => {
                self.free_slots.push(slot);
                return Submitted::Done(Err(errno));
            }
        };
        self.slots[slot] = Some(InKernel {
            user_data,
            disk: self.disks.hold(disk),
            operation,
        });
        self.push(slot);
        Submitted::Started
    }

    /// Puts the current SQE of the request in `slot` on the submission queue.
    fn push(&mut self, slot: usize) {
        let Some(in_flight) = self.slots[slot].as_mut() else {
            return;
        };
        let disk = self.disks.get(in_flight.disk);
        let fd = disk.and_then(|disk| disk.fd());
        let punt = disk.is_some_and(|disk| disk.blocks_on_submit());
        let entry = match (&mut in_flight.operation, fd) {
            (Operation::Delay(delay), _) => delay.entry(),
            (operation, Some(fd)) => operation.entry(types::Fd(fd)),
            // Null disks without latency complete in `start`; this only guards against a
            // hanging request.
            (_, None) => return self.complete_slot(slot, Err(libc::EIO)),
        }
        .user_data(slot as u64);
        // Issued on this thread, such a request could hold it (and every queue and socket it
        // serves) until a hung backend answers: a worker of the ring waits instead.
        let entry = if punt {
            entry.flags(squeue::Flags::ASYNC)
        } else {
            entry
        };
        // SAFETY: everything the entry points to (iovecs, guest memory, bounce buffer, timespec) and the
        // fd belong to the InKernel in slots[slot], which stays there until this SQE's CQE is
        // reaped (or the engine's Drop has waited for it).
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            // Unreachable while each slot has at most one SQE, but never leave a request hanging.
            self.complete_slot(slot, Err(libc::EBUSY));
            return;
        }
        self.unsubmitted = true;
    }

    fn finish(&mut self, user_data: u64, result: Result<u64, i32>) {
        self.ready.push(Completion { user_data, result });
    }

    fn complete_slot(&mut self, slot: usize, result: Result<u64, i32>) {
        if let Some(in_flight) = self.slots[slot].take() {
            self.free_slots.push(slot);
            self.disks.release(in_flight.disk);
            self.finish(in_flight.user_data, result);
        }
    }

    fn on_cqe(&mut self, slot: usize, result: i32) {
        let Some(in_flight) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let disk = self.disks.get(in_flight.disk);
        match in_flight.operation.advance(result) {
            Next::Resubmit => self.push(slot),
            Next::Done(result) => {
                let result = match (&in_flight.operation, disk) {
                    (Operation::Flush, Some(disk)) => disk.flush_state().record(result),
                    _ => result,
                };
                self.complete_slot(slot, result);
            }
            Next::Blocking(request) => {
                let result =
                    disk.map_or(Err(libc::EIO), |disk| sync_engine::execute(disk, &request));
                self.complete_slot(slot, result);
            }
        }
    }

    /// Enters the kernel with whatever the submission queue holds.
    fn enter(&mut self) {
        if !self.unsubmitted {
            return;
        }
        loop {
            match self.ring.submit() {
                Ok(_) => {
                    self.unsubmitted = false;
                    return;
                }
                Err(error) if error.raw_os_error() == Some(libc::EINTR) => continue,
                // The kernel is short of resources (EAGAIN, EBUSY): the entries stay queued,
                // and a wake-up of our own makes the loop reap, which enters again.
                Err(_) => {
                    let _ = self.eventfd.write(1);
                    return;
                }
            }
        }
    }
}

impl Engine for IoUringEngine {
    fn submit(
        &mut self,
        disk: &Arc<Disk>,
        request: IoRequest,
        user_data: u64,
    ) -> Result<Submitted, BlockError> {
        Ok(self.start(disk, request, user_data))
    }

    fn submit_pending(&mut self) {
        self.enter();
    }

    fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(crate::borrow_eventfd(&self.eventfd))
    }

    fn clear_completion_fd(&mut self) {
        // Before the CQ is read (the caller reaps next), so that a CQE posted meanwhile
        // signals again. EAGAIN only says that the counter was already clear.
        let _ = self.eventfd.read();
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result())),
        );
        for &(slot, result) in &cqes {
            self.on_cqe(slot as usize, result);
        }
        cqes.clear();
        self.cqes = cqes;
        while !self.free_slots.is_empty() {
            let Some(Waiting {
                disk,
                request,
                user_data,
            }) = self.waiting.pop_front()
            else {
                break;
            };
            if let Submitted::Done(result) = self.start(&disk, request, user_data) {
                self.finish(user_data, result);
            }
        }
        self.enter();
        out.append(&mut self.ready);
    }
}

impl Drop for IoUringEngine {
    /// The kernel may still write into guest memory or a bounce buffer: wait for every CQE
    /// before the buffers go.
    fn drop(&mut self) {
        while self.slots.iter().any(Option::is_some) {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(error) if error.raw_os_error() == Some(libc::EINTR) => continue,
                Err(_) => break,
            }
            let cqes: Vec<u64> = self.ring.completion().map(|cqe| cqe.user_data()).collect();
            for slot in cqes {
                if let Some(in_flight) = self.slots.get_mut(slot as usize) {
                    in_flight.take();
                }
            }
        }
        // Only reached with requests left when the ring itself failed: leaking their memory is
        // the only way to be sure the kernel never writes into freed buffers.
        for in_flight in self.slots.iter_mut().filter_map(Option::take) {
            std::mem::forget(in_flight);
        }
    }
}

impl Operation {
    /// The I/O of `request` on the file behind `disk`.
    fn new(disk: &Disk, request: IoRequest) -> Result<Operation, i32> {
        Ok(match request {
            IoRequest::Read { offset, buffers } => {
                Operation::Transfer(Transfer::new(disk, offset, buffers, None)?)
            }
            IoRequest::Write {
                offset,
                buffers,
                fua,
            } => Operation::Transfer(Transfer::new(disk, offset, buffers, Some(fua))?),
            IoRequest::Flush => Operation::Flush,
            IoRequest::Discard { offset, len } => Operation::Discard { offset, len },
            IoRequest::WriteZeroes {
                offset,
                len,
                may_unmap,
            } => {
                let punch = may_unmap && disk.discard_supported();
                Operation::WriteZeroes {
                    offset,
                    len,
                    may_unmap,
                    punch,
                }
            }
        })
    }

    fn entry(&mut self, fd: types::Fd) -> squeue::Entry {
        match self {
            Operation::Transfer(transfer) => transfer.entry(fd),
            Operation::Delay(delay) => delay.entry(),
            Operation::Flush => datasync(fd),
            Operation::Discard { offset, len } => opcode::Fallocate::new(fd, *len)
                .offset(*offset)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
            Operation::WriteZeroes {
                offset, len, punch, ..
            } => {
                let mode = if *punch {
                    libc::FALLOC_FL_PUNCH_HOLE
                } else {
                    libc::FALLOC_FL_ZERO_RANGE
                };
                opcode::Fallocate::new(fd, *len)
                    .offset(*offset)
                    .mode(mode | libc::FALLOC_FL_KEEP_SIZE)
                    .build()
            }
        }
    }

    /// What a CQE with `result` means for this operation.
    fn advance(&mut self, result: i32) -> Next {
        if result == -libc::EINTR {
            return Next::Resubmit;
        }
        match self {
            Operation::Transfer(transfer) => transfer.advance(result),
            Operation::Delay(delay) => Next::Done(delay.result(result)),
            Operation::Flush if result < 0 => Next::Done(Err(-result)),
            Operation::Flush => Next::Done(Ok(0)),
            Operation::Discard { len, .. } => match -result {
                // Discards are advisory: a backend without them has done all it should.
                0 | libc::EOPNOTSUPP => Next::Done(Ok(*len)),
                errno => Next::Done(Err(errno)),
            },
            Operation::WriteZeroes {
                offset,
                len,
                may_unmap,
                ..
            } => match -result {
                0 => Next::Done(Ok(*len)),
                libc::EOPNOTSUPP | libc::EINVAL | libc::ENODEV | libc::ENOTTY => {
                    Next::Blocking(IoRequest::WriteZeroes {
                        offset: *offset,
                        len: *len,
                        may_unmap: *may_unmap,
                    })
                }
                errno => Next::Done(Err(errno)),
            },
        }
    }
}

fn datasync(fd: types::Fd) -> squeue::Entry {
    opcode::Fsync::new(fd)
        .flags(types::FsyncFlags::DATASYNC)
        .build()
}

impl Transfer {
    /// `fua` is `None` for a read.
    fn new(
        disk: &Disk,
        offset: u64,
        buffers: IoBuffers,
        fua: Option<bool>,
    ) -> Result<Transfer, i32> {
        let write = fua.is_some();
        let bounce = match disk.direct_io_alignment() {
            Some(alignment) if !buffers.is_aligned(alignment.memory, alignment.offset) => {
                let len = usize::try_from(buffers.len()).map_err(|_| libc::ENOMEM)?;
                let align = alignment.memory.max(alignment.offset) as usize;
                let mut bounce = AlignedBuffer::zeroed(len, align).ok_or(libc::ENOMEM)?;
                if write {
                    buffers.copy_to_slice(bounce.as_mut_slice());
                }
                Some(bounce)
            }
            _ => None,
        };
        Ok(Transfer {
            offset,
            buffers,
            write,
            dsync: fua == Some(true),
            sync_after: false,
            syncing: false,
            done: 0,
            bounce,
            current: Vec::new(),
        })
    }

    fn entry(&mut self, fd: types::Fd) -> squeue::Entry {
        if self.syncing {
            return datasync(fd);
        }
        let own = self.buffers.iovecs();
        let (iovecs, count) = if self.bounce.is_none() && self.done == 0 && own.len() <= IOV_MAX {
            (own.as_ptr(), own.len())
        } else {
            let whole;
            let base = match &mut self.bounce {
                Some(bounce) => {
                    whole = [bounce.iovec(usize::MAX)];
                    &whole[..]
                }
                None => own,
            };
            self.current = remaining_iovecs(base, self.done);
            (self.current.as_ptr(), self.current.len())
        };
        let offset = self.offset + self.done;
        let count = count as u32;
        if self.write {
            let flags = if self.dsync { libc::RWF_DSYNC } else { 0 };
            opcode::Writev::new(fd, iovecs, count)
                .offset(offset)
                .rw_flags(flags)
                .build()
        } else {
            opcode::Readv::new(fd, iovecs, count).offset(offset).build()
        }
    }

    fn advance(&mut self, result: i32) -> Next {
        let len = self.buffers.len();
        if result < 0 {
            if self.dsync && result == -libc::EOPNOTSUPP {
                self.dsync = false;
                self.sync_after = true;
                return Next::Resubmit;
            }
            return Next::Done(Err(-result));
        }
        if self.syncing {
            return Next::Done(Ok(len));
        }
        if result == 0 {
            return Next::Done(Err(libc::EIO));
        }
        self.done += result as u64;
        if self.done < len {
            return Next::Resubmit;
        }
        if self.sync_after {
            self.syncing = true;
            return Next::Resubmit;
        }
        if let (false, Some(bounce)) = (self.write, &self.bounce) {
            self.buffers.copy_from_slice(bounce.as_slice());
        }
        Next::Done(Ok(len))
    }
}

/// The iovecs after the first `done` bytes of `base`, at most IOV_MAX of them.
fn remaining_iovecs(base: &[libc::iovec], done: u64) -> Vec<libc::iovec> {
    let mut skip = done;
    let mut out = Vec::with_capacity(base.len().min(IOV_MAX));
    for iov in base {
        if out.len() == IOV_MAX {
            break;
        }
        let len = iov.iov_len as u64;
        if skip >= len {
            skip -= len;
            continue;
        }
        // SAFETY: skip < iov_len, so the new base stays inside the same segment.
        let start = unsafe { iov.iov_base.cast::<u8>().add(skip as usize) };
        out.push(libc::iovec {
            iov_base: start.cast(),
            iov_len: iov.iov_len - skip as usize,
        });
        skip = 0;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io_buffers::test_memory::TestMemory;
    use crate::DiskOptions;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn remaining_iovecs_skips_done_bytes_and_caps_the_count() {
        let mut memory = TestMemory::new(4096);
        let buffers = memory.buffers(&[(0, 100), (1000, 200), (2000, 300)]);
        let base = buffers.iovecs();
        let rest = remaining_iovecs(base, 150);
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0].iov_base as usize, base[1].iov_base as usize + 50);
        assert_eq!(rest[0].iov_len, 150);
        assert_eq!(rest[1].iov_len, 300);
        assert!(remaining_iovecs(base, 600).is_empty());
        let many = vec![base[0]; IOV_MAX + 10];
        assert_eq!(remaining_iovecs(&many, 0).len(), IOV_MAX);
    }

    #[test]
    fn zero_depth_fails_cleanly() {
        assert!(matches!(
            IoUringEngine::new(0),
            Err(BlockError::IoUringSetup(_))
        ));
    }

    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// Dropping the engine with requests in the kernel waits for them and then releases their
    /// buffers' keep-alive owners.
    #[test]
    fn drop_waits_for_requests_in_flight() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(1 << 20).unwrap();
        let disk = Arc::new(Disk::open(&DiskOptions::new(file.path())).unwrap());
        let mut engine = IoUringEngine::new(4).unwrap();
        let mut memory = TestMemory::new(1 << 16);
        let released = Arc::new(AtomicBool::new(false));
        let iovec = memory.buffers(&[(0, 1 << 16)]).iovecs()[0];
        // SAFETY: `memory` outlives the engine, which is dropped below.
        let buffers = unsafe { IoBuffers::owned(iovec, Arc::new(DropFlag(Arc::clone(&released)))) };
        let read = engine.submit(&disk, IoRequest::Read { offset: 0, buffers }, 1);
        assert_eq!(read.unwrap(), Submitted::Started);
        let flush = engine.submit(&disk, IoRequest::Flush, 2);
        assert_eq!(flush.unwrap(), Submitted::Started);
        engine.submit_pending();
        assert!(!released.load(Ordering::SeqCst));
        drop(engine);
        assert!(released.load(Ordering::SeqCst));
        assert_eq!(Arc::strong_count(&disk), 1, "the engine let go of the disk");
    }

    /// Requests in the kernel keep their disk open with one reference for all of them, given
    /// back with the last one.
    #[test]
    fn a_disk_is_held_once_for_its_requests_and_let_go_with_the_last() {
        let open = || {
            let file = tempfile::NamedTempFile::new().unwrap();
            file.as_file().set_len(1 << 20).unwrap();
            let disk = Arc::new(Disk::open(&DiskOptions::new(file.path())).unwrap());
            (file, disk)
        };
        let ((_file, disk), (_other_file, other)) = (open(), open());
        let mut engine = IoUringEngine::new(8).unwrap();
        let mut memory = TestMemory::new(1 << 16);
        for (user_data, on) in [(1, &disk), (2, &disk), (3, &other), (4, &disk)] {
            let offset = user_data * 4096;
            let buffers = memory.buffers(&[(offset as usize, 4096)]);
            let read = engine.submit(on, IoRequest::Read { offset, buffers }, user_data);
            assert_eq!(read.unwrap(), Submitted::Started);
        }
        assert_eq!(
            Arc::strong_count(&disk),
            2,
            "one reference for three requests"
        );
        assert_eq!(Arc::strong_count(&other), 2);
        engine.submit_pending();
        let mut done = Vec::new();
        while done.len() < 4 {
            engine.reap(&mut done);
        }
        assert!(done.iter().all(|completion| completion.result == Ok(4096)));
        assert_eq!(Arc::strong_count(&disk), 1, "let go with the last request");
        assert_eq!(Arc::strong_count(&other), 1);
        assert!(engine.disks.0.iter().all(Option::is_none));
    }
}
