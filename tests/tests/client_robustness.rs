//! A client must not be able to kill the server or keep others out: DMA maps beyond their fd,
//! guest memory shrunk under a queue, a client that never says VERSION, and descriptor
//! exhaustion. Each against the real binary.

use std::io::Read;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use tests::guest_memory::MemoryKind;
use tests::vfio_client::{ClientError, VfioUserClient};
use tests::virtio_pci::STATUS_DEVICE_NEEDS_RESET;
use tests::{DriverOptions, ServerProcess, VirtioScsiDriver};

const MIB: u64 = 1 << 20;

fn start(args: &[&str]) -> ServerProcess {
    ServerProcess::start(args).unwrap_or_else(|e| panic!("{e}"))
}

fn client(server: &ServerProcess) -> VfioUserClient {
    VfioUserClient::connect(server.socket(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect: {e}\nserver stderr:\n{}", server.stderr()))
}

/// A memfd of `size` bytes.
fn memfd(size: u64) -> OwnedFd {
    // SAFETY: memfd_create reads a NUL-terminated name and returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"vus-robustness".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    std::fs::File::from(fd.try_clone().unwrap())
        .set_len(size)
        .unwrap();
    fd
}

fn errno_of(result: Result<(), ClientError>) -> u32 {
    match result {
        Err(ClientError::Server { errno, .. }) => errno,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

fn open_fds(server: &ServerProcess) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .unwrap()
        .count()
}

/// Polls `condition` for up to 5 s.
fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Log records reach stderr through an asynchronous drain: wait for them.
fn assert_logged(server: &ServerProcess, needle: &str) {
    assert!(
        eventually(|| server.stderr().contains(needle)),
        "no log record with {needle:?}; server stderr:\n{}",
        server.stderr()
    );
}

/// The issue's case: a 1 TiB map over a 1 MiB memfd used to be accepted, and a buffer at 512 MiB
/// then killed the server with SIGBUS.
#[test]
fn dma_maps_beyond_their_fd_are_einval() {
    let mut server = start(&[]);
    let mut client = client(&server);
    let fd = memfd(MIB);
    assert_eq!(
        errno_of(client.dma_map(0, 1 << 40, fd.as_fd(), 0)),
        libc::EINVAL as u32
    );
    assert_eq!(
        errno_of(client.dma_map(0, MIB, fd.as_fd(), 4096)),
        libc::EINVAL as u32
    );
    assert_eq!(
        errno_of(client.dma_map(0, 4096, fd.as_fd(), MIB)),
        libc::EINVAL as u32
    );
    client.dma_map(0, MIB, fd.as_fd(), 0).unwrap();
    assert!(server.is_running());
}

/// The issue's other case: the rings in guest memory (`options`), which the client truncates to
/// 0 and kicks. The queue fails (DEVICE_NEEDS_RESET), the server lives on and serves the next
/// client.
fn truncated_memory_fails_only_the_queue_with(server: &mut ServerProcess, options: DriverOptions) {
    let mut driver = VirtioScsiDriver::connect(server.socket(), options.clone())
        .unwrap_or_else(|e| panic!("{e}\n{}", server.stderr()));
    driver.test_unit_ready(0).unwrap();
    driver.memory().file().set_len(0).unwrap();
    driver.queue(2).unwrap().kick().unwrap();
    let needs_reset = eventually(|| {
        driver
            .pci()
            .status()
            .is_ok_and(|status| status & STATUS_DEVICE_NEEDS_RESET != 0)
    });
    assert!(
        needs_reset,
        "no DEVICE_NEEDS_RESET; server stderr:\n{}",
        server.stderr()
    );
    assert!(server.is_running(), "the server died:\n{}", server.stderr());
    assert_logged(server, "guest memory vanished");
    drop(driver);
    let mut next = VirtioScsiDriver::connect(server.socket(), options).unwrap();
    next.test_unit_ready(0).unwrap();
    let result = next.test_unit_ready(0).unwrap();
    assert_eq!(result.status, 0, "GOOD after the unit attention");
}

fn truncated_memory_fails_only_the_queue(args: &[&str]) {
    let mut server = start(args);
    let options = DriverOptions {
        mem_size: MIB,
        timeout: Duration::from_secs(5),
        ..DriverOptions::default()
    };
    truncated_memory_fails_only_the_queue_with(&mut server, options);
}

#[test]
fn truncated_memory_fails_only_the_queue_on_the_main_loop() {
    truncated_memory_fails_only_the_queue(&[]);
}

#[test]
fn truncated_memory_fails_only_the_queue_on_an_iothread() {
    truncated_memory_fails_only_the_queue(&["--iothread", "io0"]);
}

const HUGE_PAGE: u64 = 2 << 20;

fn meminfo(field: &str) -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    meminfo
        .lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .trim()
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/meminfo"))
}

/// 2 MiB huge pages reserved for one test through /proc/sys/vm/nr_hugepages; the old value is
/// written back when it goes.
struct HugePages {
    restore: Option<u64>,
}

impl HugePages {
    const KNOB: &'static str = "/proc/sys/vm/nr_hugepages";

    /// Makes sure `pages` huge pages are free, reserving more if needed; fails saying why the
    /// machine cannot give them.
    fn reserve(pages: u64) -> HugePages {
        assert_eq!(
            meminfo("Hugepagesize:"),
            HUGE_PAGE >> 10,
            "the default huge page size is not 2 MiB"
        );
        let free = meminfo("HugePages_Free:");
        if free >= pages {
            return HugePages { restore: None };
        }
        let old: u64 = std::fs::read_to_string(Self::KNOB)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let wanted = old + pages - free;
        if let Err(e) = std::fs::write(Self::KNOB, wanted.to_string()) {
            panic!(
                "this test needs {pages} free 2 MiB huge pages and reserves them through {}, \
                 which needs root: {e}",
                Self::KNOB
            );
        }
        let reserved = HugePages { restore: Some(old) };
        let now = meminfo("HugePages_Free:");
        assert!(
            now >= pages,
            "the kernel gave only {now} free huge pages after nr_hugepages={wanted} (was {old}): \
             not enough contiguous free memory for {pages} 2 MiB pages"
        );
        reserved
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if let Some(old) = self.restore {
            let _ = std::fs::write(Self::KNOB, old.to_string());
        }
    }
}

/// The guard's huge-page path: guest memory on hugetlbfs (QEMU's hugepage backends), whose
/// mappings can only be replaced a whole huge page at a time. Truncated under request queue 0,
/// only that queue stops (DEVICE_NEEDS_RESET, logged for its vq and no other), the server lives
/// and serves the next client.
#[test]
fn truncated_hugetlbfs_memory_fails_only_the_queue() {
    let _pages = HugePages::reserve(8);
    let mut server = start(&["--num-queues", "2", "--log-format", "json"]);
    let options = DriverOptions {
        mem_size: 4 * HUGE_PAGE,
        memory: MemoryKind::HugeTlb,
        timeout: Duration::from_secs(5),
        ..DriverOptions::default()
    };
    truncated_memory_fails_only_the_queue_with(&mut server, options);
    let stderr = server.stderr();
    let faulted: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("guest memory vanished"))
        .collect();
    assert_eq!(faulted.len(), 1, "{stderr}");
    assert!(faulted[0].contains(r#""vq":2"#), "{}", faulted[0]);
}

/// QEMU's memfd backend seals its memory against shrinking: such memory cannot fault, and the
/// queues skip the guard; the first map that can shrink turns it on.
#[test]
fn only_memory_that_can_shrink_turns_the_fault_guard_on() {
    let server = start(&["--log-level", "debug"]);
    let sealed = DriverOptions {
        mem_size: 4 * MIB,
        memory: MemoryKind::SealedMemfd,
        timeout: Duration::from_secs(5),
        ..DriverOptions::default()
    };
    let mut driver = VirtioScsiDriver::connect(server.socket(), sealed).unwrap();
    driver.test_unit_ready(0).unwrap();
    assert!(
        driver.memory().file().set_len(0).is_err(),
        "the seal refuses shrinking"
    );
    assert!(driver.test_unit_ready(0).unwrap().is_good());
    drop(driver);
    let shrinkable = DriverOptions {
        mem_size: 4 * MIB,
        timeout: Duration::from_secs(5),
        ..DriverOptions::default()
    };
    let mut driver = VirtioScsiDriver::connect(server.socket(), shrinkable).unwrap();
    driver.test_unit_ready(0).unwrap();
    assert_logged(&server, "guest memory can shrink");
    let stderr = server.stderr();
    assert_eq!(
        stderr.matches("guest memory can shrink").count(),
        1,
        "{stderr}"
    );
}

/// A client that connects and says nothing is sent away, and the next one is served: until
/// then, the server refuses other clients (it serves one at a time).
#[test]
fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let server = start(&[]);
    let mut silent = UnixStream::connect(server.socket()).unwrap();
    let started = Instant::now();
    let mut next = loop {
        match VfioUserClient::connect(server.socket(), Duration::from_secs(10)) {
            Ok(client) => break client,
            Err(_) if started.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("connect: {e}\nserver stderr:\n{}", server.stderr()),
        }
    };
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(5),
        "the next client was served after {waited:?}"
    );
    next.device_info().unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        silent.read(&mut byte).unwrap(),
        0,
        "the silent client's socket is closed"
    );
    assert_logged(&server, "no VERSION in time");
}

fn open_file_limit(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// Sets this test process's open file limit, which the server it starts inherits.
fn set_open_file_limit(soft: u64, hard: u64) {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads one rlimit.
    assert_eq!(
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) },
        0,
        "{}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let (_, hard) = open_file_limit(std::process::id());
    set_open_file_limit(256.min(hard), hard);
    let server = start(&[]);
    assert_eq!(open_file_limit(server.pid()), (hard, hard));
}

/// QEMU sends one fd per memory section, many of them of the same memfd.
#[test]
fn maps_of_one_memfd_share_one_open_file() {
    let server = start(&[]);
    let mut client = client(&server);
    let fd = memfd(MIB);
    let before = open_fds(&server);
    for page in 0..200u64 {
        client
            .dma_map(page * 0x10000, 4096, fd.as_fd(), page * 4096)
            .unwrap();
    }
    let after = open_fds(&server);
    assert!(after <= before + 1, "{before} fds before, {after} after");
}

/// With the hard limit low, distinct memfds run the server out of descriptors: the map fails
/// with EMFILE, the operator is told, and the server keeps serving once fds are free again.
#[test]
fn descriptor_exhaustion_is_emfile_and_logged() {
    set_open_file_limit(64, 64);
    let mut server = start(&[]);
    let mut client = client(&server);
    let mut exhausted_at = None;
    for map in 0..64u64 {
        // Each memfd is closed here right after it is sent: only the server holds it.
        let fd = memfd(4096);
        match client.dma_map(map * 4096, 4096, fd.as_fd(), 0) {
            Ok(()) => {}
            Err(ClientError::Server { errno, .. }) => {
                assert_eq!(errno, libc::EMFILE as u32);
                exhausted_at = Some(map);
                break;
            }
            Err(e) => panic!("map {map}: {e}\n{}", server.stderr()),
        }
    }
    let exhausted_at = exhausted_at.expect("64 memfds fit under a limit of 64 fds");
    assert_logged(&server, "out of resources");
    client.dma_unmap(0, 4096).unwrap();
    let fd = memfd(4096);
    client
        .dma_map(exhausted_at * 4096, 4096, fd.as_fd(), 0)
        .unwrap();
    assert!(server.is_running());
}
