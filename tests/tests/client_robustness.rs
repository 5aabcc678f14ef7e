//! A client must not be able to kill the server or keep others out: DMA maps beyond their fd,
//! guest memory shrunk under a queue, a client that never says VERSION, and descriptor
//! exhaustion. Each against the real binary.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

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

/// The case: a 1 TiB map over a 1 MiB memfd used to be accepted, and a buffer at 512 MiB
/// then killed the server with SIGBUS.
#[test]
fn dma_maps_beyond_their_fd_are_einval() {
    let mut server = start(&[]);
    let mut client = client(&server);
    let fd = memfd(MIB);
    let raw = fd.as_raw_fd();
    assert_eq!(
        errno_of(client.dma_map(0, 1 << 40, raw, 0)),
        libc::EINVAL as u32
    );
    assert_eq!(
        errno_of(client.dma_map(0, MIB, raw, 4096)),
        libc::EINVAL as u32
    );
    assert_eq!(
        errno_of(client.dma_map(0, 4096, raw, MIB)),
        libc::EINVAL as u32
    );
    client.dma_map(0, MIB, raw, 0).unwrap();
    assert!(server.is_running());
}

/// The other case: the rings in a 1 MiB memfd, which the client truncates to 0 and
/// kicks. The queue fails (DEVICE_NEEDS_RESET), the server lives on and serves the next client.
fn truncated_memory_fails_only_the_queue(args: &[&str]) {
    let mut server = start(args);
    let options = DriverOptions {
        mem_size: MIB,
        timeout: Duration::from_secs(5),
        ..DriverOptions::default()
    };
    let mut driver = VirtioScsiDriver::connect(server.socket(), options.clone()).unwrap();
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
    assert_logged(&server, "guest memory vanished");
    drop(driver);
    let mut next = VirtioScsiDriver::connect(server.socket(), options).unwrap();
    next.test_unit_ready(0).unwrap();
    let result = next.test_unit_ready(0).unwrap();
    assert_eq!(result.status, 0, "GOOD after the unit attention");
}

#[test]
fn truncated_memory_fails_only_the_queue_on_the_main_loop() {
    truncated_memory_fails_only_the_queue(&[]);
}

#[test]
fn truncated_memory_fails_only_the_queue_on_an_iothread() {
    truncated_memory_fails_only_the_queue(&["--iothread", "io0"]);
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
            .dma_map(page * 0x10000, 4096, fd.as_raw_fd(), page * 4096)
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
        match client.dma_map(map * 4096, 4096, fd.as_raw_fd(), 0) {
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
        .dma_map(exhausted_at * 4096, 4096, fd.as_raw_fd(), 0)
        .unwrap();
    assert!(server.is_running());
}
