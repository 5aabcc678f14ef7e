//! Every engine against real files: the same behaviours, completions through the eventfd.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

use block::{
    CacheMode, Completion, DiscardMode, Disk, DiskOptions, Engine, IoBuffers, IoRequest,
    IoUringEngine, Submitted, SyncEngine, ThreadPoolEngine,
};

fn engines() -> Vec<(&'static str, Box<dyn Engine>)> {
    vec![
        ("sync", Box::new(SyncEngine::new().unwrap())),
        ("io_uring", Box::new(IoUringEngine::new(8).unwrap())),
        ("threads", Box::new(ThreadPoolEngine::new(3).unwrap())),
    ]
}

/// Page-aligned memory standing in for guest memory, which keeps the iovecs of the buffers it
/// handed out in place, as a device keeps them in its command records.
struct Memory {
    storage: Vec<u8>,
    start: usize,
    len: usize,
    iovecs: Vec<Box<[libc::iovec]>>,
}

impl Memory {
    fn new(len: usize) -> Memory {
        let storage = vec![0u8; len + 4096];
        let start = storage.as_ptr().align_offset(4096);
        Memory {
            storage,
            start,
            len,
            iovecs: Vec::new(),
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }

    /// Buffers for (offset, length) segments; the memory must outlive the request.
    fn buffers(&mut self, segments: &[(usize, usize)]) -> IoBuffers {
        let base = self.bytes_mut().as_mut_ptr();
        let iovecs: Box<[libc::iovec]> = segments
            .iter()
            .map(|&(offset, len)| {
                assert!(offset + len <= self.len);
                // SAFETY: offset + len is inside the memory (asserted above).
                libc::iovec {
                    iov_base: unsafe { base.add(offset) }.cast(),
                    iov_len: len,
                }
            })
            .collect();
        self.iovecs.push(iovecs);
        let iovecs = self.iovecs.last().map_or(&[][..], |iovecs| &iovecs[..]);
        let len = iovecs.iter().map(|iov| iov.iov_len as u64).sum();
        // SAFETY: each test keeps the memory, and with it the boxed iovecs, alive and untouched
        // until the request completes; `len` is their sum.
        unsafe { IoBuffers::borrowed(iovecs, len) }
    }
}

fn wait_readable(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    let mut pollfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: pollfd is a live, initialised struct and the count is 1.
    unsafe { libc::poll(&mut pollfd, 1, 5000) == 1 }
}

/// Submits a request; one that the engine finished inside `submit` comes back as its
/// completion.
fn submit(
    engine: &mut dyn Engine,
    disk: &Arc<Disk>,
    request: IoRequest,
    user_data: u64,
) -> Option<Completion> {
    match engine.submit(disk, request, user_data).unwrap() {
        Submitted::Done(result) => Some(Completion { user_data, result }),
        Submitted::Started => None,
    }
}

/// Submits what the engine queued, reaps what completed at once, then waits on the completion
/// eventfd and reaps until the completions of `count` requests are in, counting those `done`
/// inside `submit`.
fn collect(engine: &mut dyn Engine, done: Vec<Completion>, count: usize) -> Vec<Completion> {
    engine.submit_pending();
    let mut out = done;
    engine.reap(&mut out);
    while out.len() < count {
        let fd = engine
            .completion_fd()
            .expect("requests still out need a completion eventfd");
        assert!(wait_readable(fd), "a completion is signalled");
        engine.clear_completion_fd();
        engine.reap(&mut out);
    }
    // An asynchronous engine may signal a completion that was already reaped (its eventfd
    // write lands after the reap): that wakeup must find nothing, never a second completion.
    let mut again = Vec::new();
    engine.reap(&mut again);
    assert!(again.is_empty(), "completions reaped twice: {again:?}");
    out
}

fn run(engine: &mut dyn Engine, disk: &Arc<Disk>, request: IoRequest) -> Result<u64, i32> {
    let done = submit(engine, disk, request, 77);
    let out = collect(engine, done.into_iter().collect(), 1);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].user_data, 77);
    out[0].result
}

fn disk_file(dir: Option<&str>, len: u64) -> tempfile::NamedTempFile {
    let file = match dir {
        Some(dir) => tempfile::NamedTempFile::new_in(dir).unwrap(),
        None => tempfile::NamedTempFile::new().unwrap(),
    };
    file.as_file().set_len(len).unwrap();
    file
}

fn open(file: &tempfile::NamedTempFile, cache: CacheMode, discard: DiscardMode) -> Arc<Disk> {
    Arc::new(
        Disk::open(&DiskOptions {
            cache,
            discard,
            ..DiskOptions::new(file.path())
        })
        .unwrap(),
    )
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes `segments` of fresh memory at `offset`, checks the file, reads them back into other
/// memory laid out the same way and checks that too.
fn round_trip(
    engine: &mut dyn Engine,
    disk: &Arc<Disk>,
    file: &tempfile::NamedTempFile,
    segments: &[(usize, usize)],
    offset: u64,
) {
    let span = segments.iter().map(|(o, l)| o + l).max().unwrap();
    let total: usize = segments.iter().map(|(_, l)| l).sum();
    let data = pattern(total, offset as u8 + 1);
    let mut memory = Memory::new(span);
    let mut at = 0;
    for &(o, l) in segments {
        memory.bytes_mut()[o..o + l].copy_from_slice(&data[at..at + l]);
        at += l;
    }
    let buffers = memory.buffers(segments);
    assert_eq!(
        run(
            engine,
            disk,
            IoRequest::Write {
                offset,
                buffers,
                fua: false
            }
        ),
        Ok(total as u64)
    );
    let mut on_disk = vec![0u8; total];
    file.as_file().read_exact_at(&mut on_disk, offset).unwrap();
    assert!(on_disk == data, "file holds what was written");

    let mut back = Memory::new(span);
    let buffers = back.buffers(segments);
    assert_eq!(
        run(engine, disk, IoRequest::Read { offset, buffers }),
        Ok(total as u64)
    );
    let mut at = 0;
    for &(o, l) in segments {
        assert!(
            back.bytes()[o..o + l] == data[at..at + l],
            "segment at {o} read back"
        );
        at += l;
    }
}

#[test]
fn writeback_round_trip_through_several_iovecs() {
    for (name, mut engine) in engines() {
        let file = disk_file(None, 1 << 20);
        let disk = open(&file, CacheMode::Writeback, DiscardMode::Ignore);
        round_trip(
            &mut *engine,
            &disk,
            &file,
            &[(0, 512), (1000, 1536), (8192, 3 * 1024)],
            4096,
        );
        round_trip(&mut *engine, &disk, &file, &[(3, 100), (200, 412)], 0);
        eprintln!("{name}: ok");
    }
}

#[test]
fn more_iovecs_than_one_call_takes() {
    for (_, mut engine) in engines() {
        let file = disk_file(None, 4 << 20);
        let disk = open(&file, CacheMode::Writeback, DiscardMode::Ignore);
        let segments: Vec<(usize, usize)> = (0..1500).map(|i| (i * 1024, 512)).collect();
        round_trip(&mut *engine, &disk, &file, &segments, 8192);
    }
}

#[test]
fn direct_io_aligned_and_bounced() {
    for (_, mut engine) in engines() {
        let file = disk_file(None, 1 << 20);
        let disk = open(&file, CacheMode::None, DiscardMode::Ignore);
        assert!(disk.direct_io_alignment().is_some());
        round_trip(
            &mut *engine,
            &disk,
            &file,
            &[(0, 4096), (8192, 8192)],
            65536,
        );
        // Addresses and lengths that O_DIRECT refuses with EINVAL unless bounced.
        round_trip(
            &mut *engine,
            &disk,
            &file,
            &[(1, 512), (1000, 100), (2000, 412)],
            512,
        );
        round_trip(&mut *engine, &disk, &file, &[(7, 4096)], 1 << 19);
    }
}

#[test]
fn fua_write_and_flush() {
    for (_, mut engine) in engines() {
        for cache in [CacheMode::Writeback, CacheMode::None] {
            let file = disk_file(None, 1 << 20);
            let disk = open(&file, cache, DiscardMode::Ignore);
            let mut memory = Memory::new(4096);
            memory.bytes_mut().copy_from_slice(&pattern(4096, 9));
            let buffers = memory.buffers(&[(0, 4096)]);
            let write = IoRequest::Write {
                offset: 4096,
                buffers,
                fua: true,
            };
            assert_eq!(run(&mut *engine, &disk, write), Ok(4096));
            let mut on_disk = vec![0u8; 4096];
            file.as_file().read_exact_at(&mut on_disk, 4096).unwrap();
            assert_eq!(on_disk, pattern(4096, 9));
            assert_eq!(run(&mut *engine, &disk, IoRequest::Flush), Ok(0));
        }
    }
}

fn fill(file: &tempfile::NamedTempFile, len: usize) {
    file.as_file().write_all_at(&pattern(len, 5), 0).unwrap();
    file.as_file().sync_all().unwrap();
}

fn allocated_blocks(file: &tempfile::NamedTempFile) -> u64 {
    file.as_file().metadata().unwrap().blocks()
}

fn zeroed(file: &tempfile::NamedTempFile, offset: u64, len: usize) -> bool {
    let mut bytes = vec![1u8; len];
    file.as_file().read_exact_at(&mut bytes, offset).unwrap();
    bytes.iter().all(|&b| b == 0)
}

#[test]
fn discard_punches_holes_on_ext4_and_tmpfs() {
    for (name, mut engine) in engines() {
        for dir in [None, Some("/dev/shm")] {
            let file = disk_file(dir, 1 << 20);
            fill(&file, 1 << 20);
            let disk = open(&file, CacheMode::Writeback, DiscardMode::Unmap);
            assert!(disk.discard_supported());
            let before = allocated_blocks(&file);
            let request = IoRequest::Discard {
                offset: 1 << 18,
                len: 1 << 19,
            };
            assert_eq!(run(&mut *engine, &disk, request), Ok(1 << 19));
            assert!(
                allocated_blocks(&file) < before,
                "{name} {dir:?}: blocks freed"
            );
            assert!(zeroed(&file, 1 << 18, 1 << 19));
            assert!(!zeroed(&file, 0, 4096), "data before the range kept");
            assert_eq!(
                file.as_file().metadata().unwrap().len(),
                1 << 20,
                "size kept"
            );
        }
    }
}

#[test]
fn discard_ignore_leaves_the_file_alone() {
    for (_, mut engine) in engines() {
        let file = disk_file(None, 1 << 20);
        fill(&file, 1 << 20);
        let disk = open(&file, CacheMode::Writeback, DiscardMode::Ignore);
        let before = allocated_blocks(&file);
        let discard = IoRequest::Discard {
            offset: 0,
            len: 1 << 19,
        };
        assert_eq!(run(&mut *engine, &disk, discard), Ok(1 << 19));
        assert_eq!(allocated_blocks(&file), before);
        assert!(!zeroed(&file, 0, 4096));
    }
}

#[test]
fn write_zeroes_with_and_without_unmap() {
    for (name, mut engine) in engines() {
        for cache in [CacheMode::Writeback, CacheMode::None] {
            let file = disk_file(None, 1 << 20);
            fill(&file, 1 << 20);
            let disk = open(&file, cache, DiscardMode::Unmap);
            let keep = IoRequest::WriteZeroes {
                offset: 4096,
                len: 8192,
                may_unmap: false,
            };
            assert_eq!(run(&mut *engine, &disk, keep), Ok(8192));
            assert!(zeroed(&file, 4096, 8192));
            assert!(
                !zeroed(&file, 0, 4096) && !zeroed(&file, 12288, 4096),
                "neighbours kept"
            );

            let before = allocated_blocks(&file);
            let unmap = IoRequest::WriteZeroes {
                offset: 1 << 19,
                len: 1 << 18,
                may_unmap: true,
            };
            assert_eq!(run(&mut *engine, &disk, unmap), Ok(1 << 18));
            assert!(zeroed(&file, 1 << 19, 1 << 18));
            assert!(
                allocated_blocks(&file) < before,
                "{name}: may_unmap deallocated"
            );
        }
    }
}

#[test]
fn read_only_refuses_modifications() {
    for (_, mut engine) in engines() {
        let file = disk_file(None, 1 << 20);
        fill(&file, 1 << 20);
        let options = DiskOptions {
            read_only: true,
            discard: DiscardMode::Unmap,
            ..DiskOptions::new(file.path())
        };
        let disk = Arc::new(Disk::open(&options).unwrap());
        let mut memory = Memory::new(4096);
        let write = IoRequest::Write {
            offset: 0,
            buffers: memory.buffers(&[(0, 4096)]),
            fua: false,
        };
        assert_eq!(run(&mut *engine, &disk, write), Err(libc::EROFS));
        let discard = IoRequest::Discard {
            offset: 0,
            len: 4096,
        };
        assert_eq!(run(&mut *engine, &disk, discard), Err(libc::EROFS));
        let zeroes = IoRequest::WriteZeroes {
            offset: 0,
            len: 4096,
            may_unmap: true,
        };
        assert_eq!(run(&mut *engine, &disk, zeroes), Err(libc::EROFS));
        assert!(!zeroed(&file, 0, 4096));
        let read = IoRequest::Read {
            offset: 0,
            buffers: memory.buffers(&[(0, 4096)]),
        };
        assert_eq!(run(&mut *engine, &disk, read), Ok(4096));
        assert_eq!(memory.bytes(), &pattern(4096, 5)[..]);
        assert_eq!(run(&mut *engine, &disk, IoRequest::Flush), Ok(0));
    }
}

#[test]
fn out_of_range_and_misaligned_are_invalid() {
    for (_, mut engine) in engines() {
        let file = disk_file(None, 1 << 20);
        let disk = open(&file, CacheMode::Writeback, DiscardMode::Unmap);
        let mut memory = Memory::new(8192);
        let past_end = IoRequest::Read {
            offset: (1 << 20) - 4096,
            buffers: memory.buffers(&[(0, 8192)]),
        };
        assert_eq!(run(&mut *engine, &disk, past_end), Err(libc::EINVAL));
        let misaligned = IoRequest::Write {
            offset: 100,
            buffers: memory.buffers(&[(0, 512)]),
            fua: false,
        };
        assert_eq!(run(&mut *engine, &disk, misaligned), Err(libc::EINVAL));
        let zeroes = IoRequest::WriteZeroes {
            offset: 1 << 20,
            len: 512,
            may_unmap: false,
        };
        assert_eq!(run(&mut *engine, &disk, zeroes), Err(libc::EINVAL));
        assert_eq!(
            file.as_file().metadata().unwrap().len(),
            1 << 20,
            "nothing written past the end"
        );
    }
}

#[test]
fn null_disk_completes_everything_without_touching_buffers() {
    for (_, mut engine) in engines() {
        let disk = Arc::new(Disk::null(1 << 30, 512).unwrap());
        let mut memory = Memory::new(8192);
        memory.bytes_mut().fill(0xab);
        let read = IoRequest::Read {
            offset: 0,
            buffers: memory.buffers(&[(0, 4096), (4096, 4096)]),
        };
        assert_eq!(run(&mut *engine, &disk, read), Ok(8192));
        assert!(memory.bytes().iter().all(|&b| b == 0xab));
        let write = IoRequest::Write {
            offset: 1 << 20,
            buffers: memory.buffers(&[(0, 512)]),
            fua: true,
        };
        assert_eq!(run(&mut *engine, &disk, write), Ok(512));
        assert_eq!(run(&mut *engine, &disk, IoRequest::Flush), Ok(0));
        let discard = IoRequest::Discard {
            offset: 0,
            len: 1 << 20,
        };
        assert_eq!(run(&mut *engine, &disk, discard), Ok(1 << 20));
        let zeroes = IoRequest::WriteZeroes {
            offset: 0,
            len: 4096,
            may_unmap: true,
        };
        assert_eq!(run(&mut *engine, &disk, zeroes), Ok(4096));
        let past_end = IoRequest::Discard {
            offset: 1 << 30,
            len: 512,
        };
        assert_eq!(run(&mut *engine, &disk, past_end), Err(libc::EINVAL));
    }
}

/// A null disk without latency, and the synchronous engine, finish a request inside `submit`
/// and say so: nothing is left to reap and the completion eventfd stays quiet. The thread pool
/// always finishes later.
#[test]
fn requests_finished_inside_submit_leave_nothing_to_reap() {
    for (name, mut engine) in engines() {
        let disk = Arc::new(Disk::null(1 << 20, 512).unwrap());
        let mut memory = Memory::new(4096);
        let read = IoRequest::Read {
            offset: 4096,
            buffers: memory.buffers(&[(0, 4096)]),
        };
        let submitted = engine.submit(&disk, read, 5).unwrap();
        if name == "threads" {
            assert_eq!(submitted, Submitted::Started);
            assert_eq!(collect(&mut *engine, Vec::new(), 1)[0].result, Ok(4096));
            continue;
        }
        assert_eq!(submitted, Submitted::Done(Ok(4096)), "{name}");
        let past_end = IoRequest::Discard {
            offset: 1 << 20,
            len: 512,
        };
        let refused = engine.submit(&disk, past_end, 6).unwrap();
        assert_eq!(refused, Submitted::Done(Err(libc::EINVAL)), "{name}");
        engine.submit_pending();
        let mut out = Vec::new();
        engine.reap(&mut out);
        assert!(out.is_empty(), "{name}: {out:?}");
        if let Some(fd) = engine.completion_fd() {
            let mut pollfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: pollfd is a live, initialised struct and the count is 1.
            assert_eq!(unsafe { libc::poll(&mut pollfd, 1, 0) }, 0, "{name}");
        }
    }
}

/// A null disk with a latency completes no request before it; io_uring waits on timers, so
/// requests in flight overlap instead of taking the latency one after another.
#[test]
fn null_disk_latency_delays_completions() {
    let latency = Duration::from_millis(50);
    for (name, mut engine) in engines() {
        let disk = Arc::new(Disk::null_with_latency(1 << 20, 512, latency).unwrap());
        let mut memory = Memory::new(8 * 4096);
        let started = Instant::now();
        let mut done = Vec::new();
        for i in 0..8 {
            let read = IoRequest::Read {
                offset: (i * 4096) as u64,
                buffers: memory.buffers(&[(i * 4096, 4096)]),
            };
            done.extend(submit(&mut *engine, &disk, read, i as u64));
        }
        let completions = collect(&mut *engine, done, 8);
        let elapsed = started.elapsed();
        assert!(elapsed >= latency, "{name}: done after {elapsed:?}");
        assert!(completions.iter().all(|c| c.result == Ok(4096)), "{name}");
        if name == "io_uring" {
            assert!(
                elapsed < latency * 6,
                "io_uring serialised the delays: 8 requests took {elapsed:?}"
            );
        }
    }
}

/// More requests than the io_uring engine has slots: the rest wait and all complete, once.
#[test]
fn many_requests_in_one_batch() {
    for (name, mut engine) in engines() {
        let file = disk_file(None, 1 << 20);
        let disk = open(&file, CacheMode::None, DiscardMode::Ignore);
        let mut memory = Memory::new(64 * 4096);
        memory.bytes_mut().copy_from_slice(&pattern(64 * 4096, 3));
        let mut done = Vec::new();
        for i in 0..64 {
            let buffers = memory.buffers(&[(i * 4096, 4096)]);
            let write = IoRequest::Write {
                offset: (i * 4096) as u64,
                buffers,
                fua: false,
            };
            done.extend(submit(&mut *engine, &disk, write, i as u64));
        }
        let mut completions = collect(&mut *engine, done, 64);
        completions.sort_by_key(|c| c.user_data);
        assert_eq!(completions.len(), 64, "{name}");
        for (i, completion) in completions.iter().enumerate() {
            assert_eq!(
                *completion,
                Completion {
                    user_data: i as u64,
                    result: Ok(4096)
                }
            );
        }
        let mut on_disk = vec![0u8; 64 * 4096];
        file.as_file().read_exact_at(&mut on_disk, 0).unwrap();
        assert!(on_disk == pattern(64 * 4096, 3));
    }
}
