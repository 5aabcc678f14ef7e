//! The operator's interface with the userspace driver attached, without a guest: hotplug events
//! the driver had no buffer for, per-LUN stats, a remove-disk that waits for a held request
//! while the main loop goes on answering, and systemd's socket activation with READY=1.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::driver::FIRST_REQUEST_QUEUE;
use tests::scsi::{self, VIRTIO_SCSI_T_EVENTS_MISSED, VIRTIO_SCSI_T_TRANSPORT_RESET};
use tests::server_process::{self, server_binary};
use tests::{DriverOptions, ScsiRequest, ServerProcess, VirtioScsiDriver};

const BLOCK: u32 = 512;

/// The server and its control socket, in a directory of their own.
struct Served {
    server: ServerProcess,
    control: PathBuf,
    _dir: tempfile::TempDir,
}

fn start(args: &[&str]) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("ctl.sock");
    let mut full = vec!["--control-socket", control.to_str().unwrap()];
    full.extend_from_slice(args);
    let server = ServerProcess::start(&full).unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..500 {
        if control.exists() {
            return Served {
                server,
                control,
                _dir: dir,
            };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} never appeared", control.display());
}

fn connect(server: &ServerProcess) -> VirtioScsiDriver {
    let options = DriverOptions {
        timeout: Duration::from_secs(10),
        ..DriverOptions::default()
    };
    VirtioScsiDriver::connect(server.socket(), options)
        .unwrap_or_else(|e| panic!("driver init failed: {e}\n{}", server.stderr()))
}

/// Clears the POWER ON / RESET (or REPORTED LUNS DATA HAS CHANGED) unit attention.
fn settle(driver: &mut VirtioScsiDriver, lun: u16) {
    for _ in 0..4 {
        if driver.test_unit_ready(lun).unwrap().is_good() {
            return;
        }
    }
    panic!("LUN {lun} never became ready");
}

/// `vfio-user-scsi ctl`: its exit status and its reply.
fn ctl(control: &Path, args: &[&str]) -> (Option<i32>, Value) {
    let (status, reply) = server_process::ctl(control, args).unwrap();
    let reply =
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("ctl {args:?}: {e}: {reply}"));
    (status, reply)
}

/// The result of a reply that must be a success.
fn ctl_ok(control: &Path, args: &[&str]) -> Value {
    let (status, reply) = ctl(control, args);
    assert_eq!(status, Some(0), "ctl {args:?}: {reply}");
    reply
}

/// The error of a reply that must be one.
fn ctl_error(control: &Path, args: &[&str]) -> String {
    let (status, reply) = ctl(control, args);
    assert_eq!(status, Some(1), "ctl {args:?}: {reply}");
    reply["error"].as_str().unwrap().to_string()
}

#[test]
fn an_event_without_a_buffer_is_reported_as_events_missed() {
    let served = start(&["--disk", "null,size=1M"]);
    let control = &served.control;
    let mut driver = connect(&served.server);
    settle(&mut driver, 0);
    // HOTPLUG negotiated, no event buffer posted: both events are dropped.
    let added = ctl_ok(control, &["add-disk", "null,size=2M"]);
    assert_eq!(added["result"]["event"], "missed (EVENTS_MISSED follows)");
    let removed = ctl_ok(control, &["remove-disk", "1"]);
    assert_eq!(removed["result"]["event"], "missed (EVENTS_MISSED follows)");
    // The first buffer posted carries the flag, with no event of its own.
    driver.post_event_buffers(2).unwrap();
    let events = driver.take_events(Duration::from_secs(5)).unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].event, VIRTIO_SCSI_T_EVENTS_MISSED, "{events:?}");
    // Then events are whole again, without the flag.
    let added = ctl_ok(control, &["add-disk", "null,size=2M"]);
    assert_eq!(added["result"]["event"], "delivered");
    let events = driver.take_events(Duration::from_secs(5)).unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].event, VIRTIO_SCSI_T_TRANSPORT_RESET, "{events:?}");
    assert_eq!(events[0].lun, scsi::encode_lun(0, 1).unwrap());
}

/// The server as systemd starts it for a `.socket` unit: the listening socket is fd 3,
/// `LISTEN_FDS=1`, `LISTEN_PID` its own pid, and `NOTIFY_SOCKET` where READY=1 goes.
struct ActivatedServer {
    child: Child,
}

impl ActivatedServer {
    fn spawn(listener: &UnixListener, notify: &Path, socket: &Path, stderr: &Path) -> Self {
        let binary = server_binary().unwrap();
        let listener_fd = listener.as_raw_fd();
        let mut command = Command::new("/bin/sh");
        // LISTEN_PID must be the server's pid: the shell's, which exec keeps.
        command
            .args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\""])
            .arg(binary)
            .arg("--socket")
            .arg(socket)
            .args(["--disk", "null,size=1M"])
            .env("NOTIFY_SOCKET", notify)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(stderr).unwrap());
        // SAFETY: between fork and exec only dup2 or fcntl, which are async-signal-safe; the new fd 3
        // has no close-on-exec flag, so the server inherits it as systemd's would be.
        unsafe {
            command.pre_exec(move || {
                let moved = if listener_fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(listener_fd, 3)
                };
                if moved < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        ActivatedServer {
            child: command.spawn().unwrap(),
        }
    }
}

impl Drop for ActivatedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn socket_activation_serves_the_inherited_socket_and_leaves_it_to_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vus.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let stderr = dir.path().join("server.stderr");
    let mut server = ActivatedServer::spawn(&listener, &notify_path, &socket, &stderr);
    let log = || std::fs::read_to_string(&stderr).unwrap_or_default();

    let mut message = [0u8; 256];
    let n = notify
        .recv(&mut message)
        .unwrap_or_else(|e| panic!("no READY=1: {e}\n{}", log()));
    assert_eq!(&message[..n], b"READY=1\n");

    let options = DriverOptions {
        timeout: Duration::from_secs(10),
        ..DriverOptions::default()
    };
    let mut driver = VirtioScsiDriver::connect(&socket, options)
        .unwrap_or_else(|e| panic!("driver through the inherited socket: {e}\n{}", log()));
    settle(&mut driver, 0);
    assert!(driver
        .write10(0, 8, &[0x5a; 4096], BLOCK)
        .unwrap()
        .is_good());
    let read = driver.read10(0, 8, 8, BLOCK).unwrap();
    assert!(
        read.is_good() && read.data_in.len() == 4096,
        "{:?}",
        read.sense
    );
    drop(driver);

    // READY=1 is sent once, not again for a client.
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(notify.recv(&mut message).is_err(), "a second notification");

    let pid = libc::pid_t::try_from(server.child.id()).unwrap();
    // SAFETY: kill(2) on our own child, not reaped yet.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{}", log());
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}\n{}", log());
    // systemd owns the socket file and keeps listening on it for the next start: the server
    // neither unlinks it nor creates a lock file beside it.
    assert!(socket.exists(), "the server removed systemd's socket");
    assert!(!dir.path().join("vus.sock.lock").exists());
    let client = UnixStream::connect(&socket).unwrap();
    listener.set_nonblocking(false).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    drop((client, accepted));
}

/// `stats`' entry of each LUN, by LUN number.
fn lun_stats(control: &Path) -> Vec<Value> {
    let stats = ctl_ok(control, &["stats"]);
    stats["result"]["luns"].as_array().unwrap().clone()
}

fn counter(stats: &Value, field: &str) -> u64 {
    stats[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {stats}"))
}

#[test]
fn stats_count_each_luns_requests_bytes_and_errors() {
    let served = start(&[
        "--disk",
        "null,size=1M",
        "--disk",
        "null,size=2M",
        "--num-queues",
        "2",
    ]);
    let control = &served.control;
    let mut driver = connect(&served.server);
    settle(&mut driver, 0);
    settle(&mut driver, 1);
    let before = lun_stats(control);
    assert_eq!(before.len(), 2, "{before:?}");

    // LUN 0 on both queues: three 4 KiB reads and a 1 KiB write.
    for lba in 0..3 {
        let cdb = scsi::cdb::lba10(scsi::cdb::READ_10, 0, lba * 8, 8);
        assert!(driver
            .scsi_command(0, 0, &cdb, None, 4096)
            .unwrap()
            .is_good());
    }
    let cdb = scsi::cdb::lba10(scsi::cdb::WRITE_10, 0, 64, 2);
    let write = driver.scsi_command(1, 0, &cdb, Some(&[7; 1024]), 0);
    assert!(write.unwrap().is_good());
    // LUN 1: two 2 KiB writes, and a read past its end (2 MiB = 4096 blocks).
    for lba in [0, 100] {
        let cdb = scsi::cdb::lba10(scsi::cdb::WRITE_10, 0, lba, 4);
        let write = driver.scsi_command(1, 1, &cdb, Some(&[9; 2048]), 0);
        assert!(write.unwrap().is_good());
    }
    let cdb = scsi::cdb::lba10(scsi::cdb::READ_10, 0, 4096, 1);
    let beyond = driver.scsi_command(0, 1, &cdb, None, 512).unwrap();
    assert!(!beyond.is_good(), "{beyond:?}");

    let after = lun_stats(control);
    let delta =
        |lun: usize, field: &str| counter(&after[lun], field) - counter(&before[lun], field);
    assert_eq!(after[0]["lun"], 0);
    assert_eq!(delta(0, "requests"), 4, "{after:?}");
    assert_eq!(delta(0, "bytes_read"), 3 * 4096);
    assert_eq!(delta(0, "bytes_written"), 1024);
    assert_eq!(delta(0, "errors"), 0);
    assert_eq!(after[1]["lun"], 1);
    assert_eq!(delta(1, "requests"), 3, "{after:?}");
    assert_eq!(delta(1, "bytes_read"), 0);
    assert_eq!(delta(1, "bytes_written"), 2 * 2048);
    assert_eq!(delta(1, "errors"), 1);
    let illegal = |stats: &Value| stats["errors_by_sense_key"]["illegal_request"].as_u64();
    assert_eq!(
        illegal(&after[1]),
        Some(illegal(&before[1]).unwrap_or(0) + 1)
    );
    for lun in &after {
        assert_eq!(counter(lun, "in_flight"), 0);
        let histogram = lun["latency_us"]["histogram"].as_array().unwrap();
        let answered: u64 = histogram.iter().filter_map(Value::as_u64).sum();
        assert_eq!(answered, counter(lun, "requests"), "{lun}");
    }

    // A removed LUN's stats go with it; added again, it starts from zero.
    ctl_ok(control, &["remove-disk", "1"]);
    let luns = lun_stats(control);
    assert_eq!(luns.len(), 1, "{luns:?}");
    ctl_ok(control, &["add-disk", "null,size=2M,lun=1"]);
    let luns = lun_stats(control);
    assert_eq!(luns[1]["lun"], 1);
    assert_eq!(counter(&luns[1], "requests"), 0, "{luns:?}");
    assert_eq!(
        counter(&luns[0], "requests"),
        counter(&after[0], "requests")
    );
}

/// Requests for targets that do not exist (what a driver's target scan sends, 255 of them at
/// every Linux boot) are counted as bad targets, not as transport failures.
#[test]
fn stats_count_bad_targets_apart_from_transport_failures() {
    let served = start(&["--disk", "null,size=1M"]);
    let control = &served.control;
    let mut driver = connect(&served.server);
    settle(&mut driver, 0);
    let total = |stats: &Value, field: &str| counter(&stats["result"]["total"], field);
    let before = ctl_ok(control, &["stats"]);
    for target in [1, 2, 3] {
        let lun = scsi::encode_lun(target, 0).unwrap();
        let probe = ScsiRequest::new(lun, &scsi::cdb::test_unit_ready());
        let answer = driver.command(0, &probe).unwrap();
        assert_eq!(answer.response, scsi::VIRTIO_SCSI_S_BAD_TARGET);
    }
    let after = ctl_ok(control, &["stats"]);
    assert_eq!(
        total(&after, "bad_targets") - total(&before, "bad_targets"),
        3,
        "{after}"
    );
    assert_eq!(
        total(&after, "transport_failures"),
        total(&before, "transport_failures"),
        "{after}"
    );
    assert_eq!(after["result"]["queues"][0]["bad_targets"], 3, "{after}");
}

/// A line-delimited JSON exchange on the control socket, for requests whose reply comes later.
struct ControlClient {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl ControlClient {
    fn open(control: &Path) -> Self {
        let stream = UnixStream::connect(control).unwrap();
        ControlClient {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, request: &str) {
        writeln!(self.writer, "{request}").unwrap();
    }

    /// The next reply, or None when none came within `timeout`.
    fn reply_within(&mut self, timeout: Duration) -> Option<Value> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .unwrap();
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) if n > 0 => Some(serde_json::from_str(&line).unwrap()),
            Ok(_) => panic!("control connection closed"),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                assert!(line.is_empty(), "partial reply {line:?}");
                None
            }
            Err(e) => panic!("control connection: {e}"),
        }
    }
}

/// Config space (PCI and the device's BAR) answers within this while a removal waits; a main
/// loop blocked by the wait would take seconds.
const PROMPT: Duration = Duration::from_millis(1000);

/// Reads PCI config space and the device config in BAR memory, each answered promptly.
fn config_answers_promptly(driver: &mut VirtioScsiDriver) {
    let started = Instant::now();
    let mut header = [0u8; 4];
    driver.pci().config_read(0, &mut header).unwrap();
    assert_eq!(u16::from_le_bytes([header[0], header[1]]), 0x1af4);
    let config = driver.read_config().unwrap();
    assert!(config.num_queues >= 1);
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
}

#[test]
fn remove_disk_waits_for_a_held_request_without_holding_the_main_loop() {
    // LUN 1 answers every read after 6.5 s: longer than remove-disk's 5 s wait.
    let served = start(&[
        "--disk",
        "null,size=1M",
        "--disk",
        "null,size=1M,latency-us=6500000",
    ]);
    let control = &served.control;
    let mut driver = connect(&served.server);
    settle(&mut driver, 0);
    settle(&mut driver, 1);
    let queue = FIRST_REQUEST_QUEUE;
    let cdb = scsi::cdb::lba10(scsi::cdb::READ_10, 0, 0, 8);
    let held = ScsiRequest::new(scsi::encode_lun(0, 1).unwrap(), &cdb)
        .data_in(4096)
        .tag(0x51);
    let head = driver.submit(queue, &held).unwrap();
    let submitted = Instant::now();
    // The iothread takes the request on its own time: wait until the stats see it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let stats = ctl_ok(control, &["stats"]);
        let seen = stats["result"]["luns"][1]["in_flight"] == 1
            && stats["result"]["queues"][0]["in_flight"] == 1;
        if seen || Instant::now() > deadline {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(stats["result"]["luns"][1]["in_flight"], 1, "{stats}");
    assert_eq!(stats["result"]["luns"][0]["in_flight"], 0, "{stats}");
    assert_eq!(stats["result"]["queues"][0]["in_flight"], 1, "{stats}");

    let mut removing = ControlClient::open(control);
    removing.send(r#"{"command":"remove-disk","lun":1}"#);
    // While it waits: the client's config accesses, I/O on LUN 0, other control requests.
    let mut other = ControlClient::open(control);
    for _ in 0..5 {
        config_answers_promptly(&mut driver);
        // The first one may report REPORTED LUNS DATA HAS CHANGED.
        settle(&mut driver, 0);
        assert!(driver.read10(0, 0, 8, BLOCK).unwrap().is_good());
        other.send(r#"{"command":"query"}"#);
        let query = other
            .reply_within(PROMPT)
            .expect("query answered while remove-disk waits");
        let luns = query["result"]["luns"].as_array().unwrap();
        assert_eq!(luns.len(), 1, "LUN 1 left the target at once: {query}");
        let again = ctl_error(control, &["remove-disk", "1"]);
        assert!(again.contains("being removed already"), "{again}");
        assert!(removing.reply_within(Duration::from_millis(200)).is_none());
    }

    // After 5 s it gives up, naming what it waits for; the request is still held.
    let timed_out = removing
        .reply_within(Duration::from_secs(10))
        .expect("remove-disk timed out");
    assert_eq!(timed_out["ok"], false, "{timed_out}");
    let error = timed_out["error"].as_str().unwrap();
    assert!(error.contains("1 request(s) in flight"), "{error}");
    assert!(error.contains(&0x51.to_string()), "{error}");
    let in_flight = &timed_out["in_flight"];
    assert_eq!(
        (&in_flight["lun"], &in_flight["requests"]),
        (&1.into(), &1.into())
    );
    assert_eq!(in_flight["tags"], serde_json::json!([0x51]), "{timed_out}");
    assert!(driver.poll_completions(queue).unwrap().is_empty());
    config_answers_promptly(&mut driver);

    // remove-disk again: the reply comes once the held request has been answered.
    removing.send(r#"{"command":"remove-disk","lun":1}"#);
    let removed = removing
        .reply_within(Duration::from_secs(10))
        .expect("remove-disk after the drain");
    assert_eq!(removed["ok"], true, "{removed}");
    assert_eq!(removed["result"]["lun"], 1);
    assert!(submitted.elapsed() >= Duration::from_millis(6500));
    let completions = driver.poll_completions(queue).unwrap();
    assert_eq!(completions.len(), 1, "{completions:?}");
    assert_eq!(completions[0].0, head);
    assert!(ctl_error(control, &["remove-disk", "1"]).contains("LUN 1 does not exist"));
}
