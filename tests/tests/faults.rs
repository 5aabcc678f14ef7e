//! A failing disk under the real server: a FUSE file system whose image fails reads, writes and
//! fsyncs on demand (tests::fault_fs) backs LUN 0, a null disk is LUN 1. The guest must get the
//! right sense, a failed flush must stay failed, the other LUN must keep serving, and the log
//! must say so at warn. With werror=/rerror= saying stop, the failing request is held instead,
//! the LUN pauses, `ctl query` shows it and `ctl cont` resubmits it. Needs root (mount) and /dev/fuse: the tests fail, not skip, without.
//!
//! Build the server first: `cargo build -p server && cargo test -p tests --test faults`.

use std::time::{Duration, Instant};

use tests::driver::FIRST_REQUEST_QUEUE;
use tests::fault_fs::FaultFs;
use tests::scsi::{self, cdb};
use tests::small_tmpfs::SmallTmpfs;
use tests::{DriverOptions, ScsiRequest, ScsiResult, ServerProcess, VirtioScsiDriver};

const BLOCK: u32 = 512;
const IMAGE_SIZE: u64 = 8 << 20;
const FAILING_LUN: u16 = 0;
const HEALTHY_LUN: u16 = 1;

const MEDIUM_ERROR: u8 = 0x03;
const DATA_PROTECT: u8 = 0x07;
const UNIT_ATTENTION: u8 = 0x06;
const WRITE_ERROR: (u8, u8) = (0x0c, 0x00);
const UNRECOVERED_READ_ERROR: (u8, u8) = (0x11, 0x00);
const SPACE_ALLOCATION_FAILED: (u8, u8) = (0x27, 0x07);
const REPORTED_LUNS_DATA_HAS_CHANGED: (u8, u8) = (0x3f, 0x0e);

struct Rig {
    driver: VirtioScsiDriver,
    server: ServerProcess,
    fs: FaultFs,
}

/// The failing LUN reports every error, so that each reaches the driver.
fn start(cache: &str) -> Rig {
    start_with(cache, "werror=report,rerror=report", &[])
}

/// `policy`: the failing LUN's werror=/rerror= options ("" for the defaults).
fn start_with(cache: &str, policy: &str, extra: &[&str]) -> Rig {
    let fs = FaultFs::mount(IMAGE_SIZE).unwrap_or_else(|e| panic!("{e}"));
    let failing = format!(
        "path={},lun={FAILING_LUN},cache={cache},{policy}",
        fs.image().display()
    );
    let (driver, server) = serve(failing.trim_end_matches(','), extra);
    Rig { driver, server, fs }
}

/// A server with `failing` as LUN 0 and a null disk as LUN 1, and a driver on it.
fn serve(failing: &str, extra: &[&str]) -> (VirtioScsiDriver, ServerProcess) {
    let healthy = format!("null,size=1M,lun={HEALTHY_LUN}");
    let mut args = vec![
        "--disk",
        failing,
        "--disk",
        &healthy,
        "--log-format",
        "json",
    ];
    args.extend_from_slice(extra);
    let server = ServerProcess::start(&args).unwrap_or_else(|e| panic!("{e}"));
    let options = DriverOptions {
        timeout: Duration::from_secs(10),
        ..DriverOptions::default()
    };
    let mut driver = VirtioScsiDriver::connect(server.socket(), options)
        .unwrap_or_else(|e| panic!("driver: {e}\nserver stderr:\n{}", server.stderr()));
    for lun in [FAILING_LUN, HEALTHY_LUN] {
        let ready = (0..4).any(|_| driver.test_unit_ready(lun).unwrap().is_good());
        assert!(ready, "LUN {lun} never became ready");
    }
    (driver, server)
}

fn assert_sense(result: &ScsiResult, key: u8, (asc, ascq): (u8, u8), what: &str) {
    assert!(!result.is_good(), "{what}: GOOD where an error was due");
    assert_eq!(
        result.sense_key(),
        Some((key, asc, ascq)),
        "{what}: sense {:02x?}",
        result.sense
    );
}

fn assert_healthy_lun_serves(driver: &mut VirtioScsiDriver) {
    let data = vec![0xa5u8; 4096];
    assert!(driver
        .write10(HEALTHY_LUN, 8, &data, BLOCK)
        .unwrap()
        .is_good());
    assert!(driver.read10(HEALTHY_LUN, 8, 8, BLOCK).unwrap().is_good());
    assert!(driver.sync_cache(HEALTHY_LUN).unwrap().is_good());
}

/// The server's log records (JSON lines) at WARN whose message is `msg`, once there are at
/// least `count` of them or after a few seconds: records reach stderr through an async drain.
fn warnings_at_least(server: &ServerProcess, msg: &str, count: usize) -> Vec<serde_json::Value> {
    let mut found = Vec::new();
    eventually(Duration::from_secs(5), || {
        found = warnings(server, msg);
        found.len() >= count
    });
    found
}

/// The server's log records (JSON lines) at WARN whose message is `msg`.
fn warnings(server: &ServerProcess, msg: &str) -> Vec<serde_json::Value> {
    records(server, "WARN", msg)
}

/// The server's log records (JSON lines) at `level` whose message is `msg`.
fn records(server: &ServerProcess, level: &str, msg: &str) -> Vec<serde_json::Value> {
    server
        .stderr()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|record| record["level"] == level && record["msg"] == msg)
        .collect()
}

fn failed_flush_stays_failed(cache: &str) {
    let mut rig = start(cache);
    let data = vec![0x5au8; 4096];
    assert!(rig
        .driver
        .write10(FAILING_LUN, 0, &data, BLOCK)
        .unwrap()
        .is_good());
    assert!(rig.driver.sync_cache(FAILING_LUN).unwrap().is_good());
    let fsyncs = rig.fs.faults().fsyncs();
    assert!(fsyncs >= 1, "SYNCHRONIZE CACHE reached the backend");

    rig.fs.faults().fail_fsyncs(libc::EIO);
    let flush = rig.driver.sync_cache(FAILING_LUN).unwrap();
    assert_sense(&flush, MEDIUM_ERROR, WRITE_ERROR, "failed flush");

    // The backend heals, but data acknowledged before may be gone: no later flush succeeds
    // and none reaches the backend, even with no write in between.
    rig.fs.faults().fail_fsyncs(0);
    let fsyncs = rig.fs.faults().fsyncs();
    for _ in 0..3 {
        let flush = rig.driver.sync_cache(FAILING_LUN).unwrap();
        assert_sense(
            &flush,
            MEDIUM_ERROR,
            WRITE_ERROR,
            "flush after a failed one",
        );
    }
    assert!(rig
        .driver
        .write10(FAILING_LUN, 8, &data, BLOCK)
        .unwrap()
        .is_good());
    let flush = rig.driver.sync_cache(FAILING_LUN).unwrap();
    assert_sense(&flush, MEDIUM_ERROR, WRITE_ERROR, "flush after a new write");
    assert_eq!(
        rig.fs.faults().fsyncs(),
        fsyncs,
        "no flush reached the backend"
    );

    assert_healthy_lun_serves(&mut rig.driver);
    let warned = warnings_at_least(&rig.server, "backend error", 1);
    assert_eq!(
        warned.len(),
        1,
        "one warning for the kind:\n{}",
        rig.server.stderr()
    );
    assert_eq!(warned[0]["lun"], FAILING_LUN);
    assert_eq!(warned[0]["errno"], libc::EIO);
    assert_eq!(warned[0]["operation"], "write");
}

#[test]
fn failed_flush_fails_every_later_flush_writeback() {
    failed_flush_stays_failed("writeback");
}

#[test]
fn failed_flush_fails_every_later_flush_cache_none() {
    failed_flush_stays_failed("none");
}

#[test]
fn backend_errors_give_their_sense_while_other_luns_serve() {
    let mut rig = start("none");
    let data = vec![0x3cu8; 4096];

    rig.fs.faults().fail_reads(libc::EIO);
    for _ in 0..5 {
        let read = rig.driver.read10(FAILING_LUN, 0, 8, BLOCK).unwrap();
        assert_sense(&read, MEDIUM_ERROR, UNRECOVERED_READ_ERROR, "EIO read");
    }
    assert_healthy_lun_serves(&mut rig.driver);
    rig.fs.faults().fail_reads(0);

    rig.fs.faults().fail_writes(libc::EIO);
    for _ in 0..5 {
        let write = rig.driver.write10(FAILING_LUN, 0, &data, BLOCK).unwrap();
        assert_sense(&write, MEDIUM_ERROR, WRITE_ERROR, "EIO write");
    }
    rig.fs.faults().fail_writes(libc::ENOSPC);
    for _ in 0..5 {
        let write = rig.driver.write10(FAILING_LUN, 0, &data, BLOCK).unwrap();
        assert_sense(
            &write,
            DATA_PROTECT,
            SPACE_ALLOCATION_FAILED,
            "ENOSPC write",
        );
    }
    assert_healthy_lun_serves(&mut rig.driver);

    rig.fs.faults().fail_writes(0);
    assert!(rig
        .driver
        .write10(FAILING_LUN, 0, &data, BLOCK)
        .unwrap()
        .is_good());
    let read = rig.driver.read10(FAILING_LUN, 0, 8, BLOCK).unwrap();
    assert!(read.is_good());
    assert_eq!(read.data_in, data, "the LUN recovers with the backend");

    // 15 failures of three kinds: three warnings, the rest counted.
    let warned = warnings_at_least(&rig.server, "backend error", 3);
    let kinds: Vec<(String, i64)> = warned
        .iter()
        .map(|r| {
            (
                r["operation"].as_str().unwrap_or_default().to_string(),
                r["errno"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("read".to_string(), i64::from(libc::EIO)),
            ("write".to_string(), i64::from(libc::EIO)),
            ("write".to_string(), i64::from(libc::ENOSPC)),
        ],
        "{}",
        rig.server.stderr()
    );
    assert_eq!(warned[2]["errors"], 11, "failures are counted");
}

/// Polls `condition` for up to `timeout`.
fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

/// SIGTERM while the backend never answers a write: after --shutdown-timeout the server logs
/// the stuck request, removes its socket and exits with status 1 instead of waiting forever.
/// Returns the watchdog's "shutdown timed out" record.
fn stuck_write_at_sigterm(extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--shutdown-timeout", "1"];
    args.extend_from_slice(extra);
    let mut rig = start_with("none", "", &args);
    rig.fs.faults().hold_writes();
    let data = vec![0x77u8; 4096];
    let request = ScsiRequest::new(
        scsi::encode_lun(0, FAILING_LUN).unwrap(),
        &cdb::lba10(cdb::WRITE_10, 0, 0, 8),
    )
    .data_out(&data)
    .tag(0x5157);
    rig.driver.submit(FIRST_REQUEST_QUEUE, &request).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || rig.fs.faults().held() > 0),
        "the write never reached the file system"
    );

    let started = Instant::now();
    // SAFETY: kill only sends a signal to the server process this test started.
    assert_eq!(
        unsafe { libc::kill(rig.server.pid() as i32, libc::SIGTERM) },
        0
    );
    let timed_out = eventually(Duration::from_secs(10), || {
        !warnings(&rig.server, "request still in flight at exit").is_empty()
    });
    // The kernel finishes exiting only once the hung request is answered.
    rig.fs.release_held();
    assert!(
        timed_out,
        "no stuck request logged:\n{}",
        rig.server.stderr()
    );
    let stuck = warnings(&rig.server, "request still in flight at exit");
    assert_eq!(stuck.len(), 1, "{}", rig.server.stderr());
    assert_eq!(stuck[0]["lun"], FAILING_LUN);
    assert_eq!(stuck[0]["tag"], 0x5157);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the timeout was waited for"
    );

    let socket = rig.server.socket().to_path_buf();
    assert!(
        eventually(Duration::from_secs(10), || !rig.server.is_running()),
        "the server did not exit"
    );
    assert!(!socket.exists(), "the socket file is removed");
    let summary = warnings(&rig.server, "shutdown timed out");
    assert_eq!(summary.len(), 1, "{}", rig.server.stderr());
    assert_eq!(summary[0]["requests"], 1);
    summary[0].clone()
}

/// The queue on the main loop: whether the main loop itself is held by the write depends on
/// the kernel (here io_uring issues a FUSE write inline and waits in it), so the step is not
/// checked.
#[test]
fn sigterm_with_stuck_backend_io_logs_the_requests_and_exits() {
    stuck_write_at_sigterm(&[]);
}

/// The queue on an iothread: the main loop reads the signal and waits for the stuck request
/// in the client's release, which the watchdog names.
#[test]
fn sigterm_with_stuck_backend_io_on_an_iothread_names_the_release() {
    let summary = stuck_write_at_sigterm(&["--iothread", "io0"]);
    assert_eq!(summary["step"], "releasing the client");
}

/// SIGTERM flushes each writable disk before the server exits, so that the writes it
/// acknowledged are on stable storage, and logs the flush; a null disk has none to do.
#[test]
fn sigterm_flushes_each_writable_disk_before_exit() {
    let mut rig = start("none");
    let data = vec![0x3cu8; 4096];
    assert!(rig
        .driver
        .write10(FAILING_LUN, 0, &data, BLOCK)
        .unwrap()
        .is_good());
    let fsyncs = rig.fs.faults().fsyncs();
    let status = rig.server.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status:?}\n{}", rig.server.stderr());
    assert_eq!(rig.fs.faults().fsyncs(), fsyncs + 1, "one flush at exit");
    let flushed = records(&rig.server, "INFO", "disk flushed");
    assert_eq!(flushed.len(), 1, "{}", rig.server.stderr());
    assert_eq!(flushed[0]["lun"], FAILING_LUN);
}

/// SIGTERM while the disk's flush at exit never returns (a hung backend): the server still
/// exits after --shutdown-timeout, and its warning names the step and the disk it waited for.
#[test]
fn sigterm_with_a_hung_exit_flush_names_the_disk_and_exits() {
    let mut rig = start_with("none", "", &["--shutdown-timeout", "1"]);
    rig.fs.faults().hold_fsyncs();
    let started = Instant::now();
    // SAFETY: kill only sends a signal to the server process this test started.
    assert_eq!(
        unsafe { libc::kill(rig.server.pid() as i32, libc::SIGTERM) },
        0
    );
    let timed_out = eventually(Duration::from_secs(10), || {
        !warnings(&rig.server, "shutdown timed out").is_empty()
    });
    let held = rig.fs.faults().held();
    // The kernel finishes exiting only once the hung flush is answered.
    rig.fs.release_held();
    assert!(timed_out, "no timeout logged:\n{}", rig.server.stderr());
    assert_eq!(held, 1, "the flush at exit reached the backend");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the timeout was waited for"
    );
    let summary = warnings(&rig.server, "shutdown timed out");
    assert_eq!(summary.len(), 1, "{}", rig.server.stderr());
    assert_eq!(summary[0]["step"], "flushing a disk");
    assert_eq!(summary[0]["lun"], FAILING_LUN);
    assert_eq!(summary[0]["path"], rig.fs.image().display().to_string());
    assert_eq!(summary[0]["requests"], 0);
    assert!(
        eventually(Duration::from_secs(10), || !rig.server.is_running()),
        "the server did not exit"
    );
    assert!(!rig.server.socket().exists(), "the socket file is removed");
}

/// A rig whose failing LUN has the error policy `policy`, with a control socket.
fn start_with_control(policy: &str) -> (Rig, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("ctl.sock");
    let rig = start_with(
        "none",
        policy,
        &["--control-socket", control.to_str().unwrap()],
    );
    (rig, dir, control)
}

fn ctl(control: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let (status, reply) = tests::server_process::ctl(control, args).unwrap();
    assert_eq!(status, Some(0), "ctl {args:?}: {reply}");
    serde_json::from_str::<serde_json::Value>(&reply).unwrap()["result"].clone()
}

/// The failing LUN's `error_policy` object in `ctl query`.
fn lun_policy(control: &std::path::Path) -> serde_json::Value {
    let query = ctl(control, &["query"]);
    query["luns"]
        .as_array()
        .and_then(|luns| luns.iter().find(|lun| lun["lun"] == FAILING_LUN))
        .map(|lun| lun["error_policy"].clone())
        .unwrap_or_else(|| panic!("no LUN {FAILING_LUN} in {query}"))
}

/// Waits until the failing LUN's `error_policy` has `key` equal to `value`.
fn wait_for_policy(control: &std::path::Path, key: &str, value: impl Into<serde_json::Value>) {
    let value = value.into();
    let mut policy = serde_json::Value::Null;
    let reached = eventually(Duration::from_secs(10), || {
        policy = lun_policy(control);
        policy[key] == value
    });
    assert!(reached, "{key} never became {value}: {policy}");
}

fn write_request(lba: u32, data: &[u8], tag: u64) -> ScsiRequest {
    ScsiRequest::new(
        scsi::encode_lun(0, FAILING_LUN).unwrap(),
        &cdb::lba10(cdb::WRITE_10, 0, lba, (data.len() / BLOCK as usize) as u16),
    )
    .data_out(data)
    .tag(tag)
}

fn scsi_completion(completion: tests::UsedChain) -> ScsiResult {
    match completion {
        tests::UsedChain::Scsi(result) => result,
        other => panic!("not a SCSI completion: {other:?}"),
    }
}

/// werror=enospc, the default: ENOSPC holds the write (the driver sees nothing), pauses the
/// LUN (a later write waits too), `query` says why and how many wait, the other LUN serves;
/// once there is room, `ctl cont` resubmits both in order and the data is in the image.
#[test]
fn enospc_holds_writes_until_cont_then_they_complete() {
    let (mut rig, _dir, control) = start_with_control("");
    assert_eq!(lun_policy(&control)["werror"], "enospc", "QEMU's default");
    assert_eq!(lun_policy(&control)["rerror"], "report", "QEMU's default");
    rig.fs.faults().fail_writes(libc::ENOSPC);
    let first = vec![0x11u8; 4096];
    let second = vec![0x22u8; 4096];
    let queue = FIRST_REQUEST_QUEUE;
    let first_head = rig
        .driver
        .submit(queue, &write_request(0, &first, 1))
        .unwrap();
    wait_for_policy(&control, "paused", true);
    let second_head = rig
        .driver
        .submit(queue, &write_request(64, &second, 2))
        .unwrap();
    wait_for_policy(&control, "held", 2);
    let policy = lun_policy(&control);
    assert_eq!(policy["io_status"], "nospace", "{policy}");
    assert_eq!(policy["pauses"], 1, "{policy}");
    let stats = ctl(&control, &["stats"]);
    let lun_stats = stats["luns"]
        .as_array()
        .and_then(|luns| luns.iter().find(|lun| lun["lun"] == FAILING_LUN))
        .unwrap_or_else(|| panic!("no LUN {FAILING_LUN} in {stats}"));
    assert_eq!(
        (&lun_stats["held"], &lun_stats["pauses"]),
        (&serde_json::json!(2), &serde_json::json!(1)),
        "{lun_stats}"
    );
    assert_healthy_lun_serves(&mut rig.driver);
    assert!(
        rig.driver.poll_completions(queue).unwrap().is_empty(),
        "held writes are not answered"
    );
    let stopped = warnings_at_least(&rig.server, "lun stopped by its error policy", 1);
    assert_eq!(stopped.len(), 1, "{}", rig.server.stderr());
    assert_eq!(stopped[0]["lun"], FAILING_LUN);
    assert_eq!(stopped[0]["errno"], libc::ENOSPC);

    // Still no room: cont resubmits, the write fails again and the LUN pauses again.
    let resumed = ctl(&control, &["cont", &FAILING_LUN.to_string()]);
    assert_eq!(resumed["resumed"][0]["held"], 2, "{resumed}");
    wait_for_policy(&control, "pauses", 2);

    rig.fs.faults().fail_writes(0);
    let resumed = ctl(&control, &["cont"]);
    assert_eq!(resumed["resumed"][0]["lun"], FAILING_LUN, "{resumed}");
    for head in [first_head, second_head] {
        let result = scsi_completion(rig.driver.wait_for(queue, head).unwrap());
        assert!(result.is_good(), "resubmitted write: {result:?}");
    }
    let policy = lun_policy(&control);
    assert_eq!(
        (&policy["paused"], &policy["held"], &policy["io_status"]),
        (
            &serde_json::json!(false),
            &serde_json::json!(0),
            &serde_json::json!("ok")
        ),
        "{policy}"
    );
    let image = std::fs::read(rig.fs.image()).unwrap();
    assert_eq!(
        &image[..4096],
        &first[..],
        "the first write is in the image"
    );
    assert_eq!(&image[64 * 512..64 * 512 + 4096], &second[..]);
    let (status, reply) = tests::server_process::ctl(&control, &["cont", "9"]).unwrap();
    assert_eq!(status, Some(1), "{reply}");
    assert!(reply.contains("LUN 9 does not exist"), "{reply}");
}

/// werror=report: the same ENOSPC reaches the driver as DATA PROTECT at once; nothing pauses.
#[test]
fn werror_report_gives_the_sense_at_once() {
    let (mut rig, _dir, control) = start_with_control("werror=report");
    rig.fs.faults().fail_writes(libc::ENOSPC);
    let write = rig
        .driver
        .write10(FAILING_LUN, 0, &[0x33; 4096], BLOCK)
        .unwrap();
    assert_sense(
        &write,
        DATA_PROTECT,
        SPACE_ALLOCATION_FAILED,
        "ENOSPC write",
    );
    let policy = lun_policy(&control);
    assert_eq!(
        (&policy["paused"], &policy["werror"]),
        (&serde_json::json!(false), &serde_json::json!("report"))
    );
    let added = ctl(
        &control,
        &["add-disk", "null,size=1M,lun=5,werror=stop,rerror=stop"],
    );
    assert_eq!(
        (
            &added["error_policy"]["werror"],
            &added["error_policy"]["rerror"]
        ),
        (&serde_json::json!("stop"), &serde_json::json!("stop")),
        "add-disk takes the policy: {added}"
    );
}

/// rerror=stop: an EIO read is held; ABORT TASK answers it as aborted; a later read, held
/// too, completes once the disk heals and `cont` resumes the LUN.
#[test]
fn rerror_stop_holds_failed_reads_abort_and_cont() {
    let (mut rig, _dir, control) = start_with_control("rerror=stop");
    let data = vec![0x44u8; 4096];
    assert!(rig
        .driver
        .write10(FAILING_LUN, 0, &data, BLOCK)
        .unwrap()
        .is_good());
    rig.fs.faults().fail_reads(libc::EIO);
    let read = |tag| {
        ScsiRequest::new(
            scsi::encode_lun(0, FAILING_LUN).unwrap(),
            &cdb::lba10(cdb::READ_10, 0, 0, 8),
        )
        .data_in(4096)
        .tag(tag)
    };
    let queue = FIRST_REQUEST_QUEUE;
    let aborted_head = rig.driver.submit(queue, &read(0xab)).unwrap();
    wait_for_policy(&control, "held", 1);
    assert_eq!(lun_policy(&control)["io_status"], "failed");
    let tmf = rig
        .driver
        .tmf(FAILING_LUN, scsi::VIRTIO_SCSI_T_TMF_ABORT_TASK, 0xab)
        .unwrap();
    assert_eq!(tmf, scsi::VIRTIO_SCSI_S_OK, "FUNCTION COMPLETE");
    let aborted = scsi_completion(rig.driver.wait_for(queue, aborted_head).unwrap());
    assert_eq!(aborted.response, scsi::VIRTIO_SCSI_S_ABORTED, "{aborted:?}");
    assert_eq!(lun_policy(&control)["held"], 0);
    assert_eq!(lun_policy(&control)["paused"], true, "still paused");

    let later_head = rig.driver.submit(queue, &read(0xac)).unwrap();
    wait_for_policy(&control, "held", 1);
    assert_healthy_lun_serves(&mut rig.driver);
    rig.fs.faults().fail_reads(0);
    ctl(&control, &["cont", &FAILING_LUN.to_string()]);
    let later = scsi_completion(rig.driver.wait_for(queue, later_head).unwrap());
    assert!(later.is_good(), "{later:?}");
    assert_eq!(later.data_in, data);
    let stopped = warnings_at_least(&rig.server, "lun stopped by its error policy", 1);
    assert_eq!(stopped[0]["errno"], libc::EIO, "{}", rig.server.stderr());
}

/// remove-disk of a LUN paused with held reads finishes at once, as QEMU's device_del of a
/// paused scsi-hd does: the held requests (never acknowledged) are answered as aborted, the
/// LUN is gone, and the other LUN keeps serving.
#[test]
fn remove_disk_aborts_the_held_requests_of_a_paused_lun() {
    let (mut rig, _dir, control) = start_with_control("rerror=stop");
    rig.fs.faults().fail_reads(libc::EIO);
    let queue = FIRST_REQUEST_QUEUE;
    let heads: Vec<u16> = [0x70, 0x71]
        .into_iter()
        .map(|tag| {
            let read = ScsiRequest::new(
                scsi::encode_lun(0, FAILING_LUN).unwrap(),
                &cdb::lba10(cdb::READ_10, 0, tag as u32, 8),
            )
            .data_in(4096)
            .tag(tag);
            rig.driver.submit(queue, &read).unwrap()
        })
        .collect();
    wait_for_policy(&control, "held", 2);

    // Waiting for the held requests would fail it with a drain timeout after 5 s.
    let removed = ctl(&control, &["remove-disk", &FAILING_LUN.to_string()]);
    assert_eq!(removed["lun"], FAILING_LUN, "{removed}");
    for head in heads {
        let aborted = scsi_completion(rig.driver.wait_for(queue, head).unwrap());
        assert_eq!(aborted.response, scsi::VIRTIO_SCSI_S_ABORTED, "{aborted:?}");
    }
    let luns = ctl(&control, &["query"])["luns"].clone();
    assert!(
        luns.as_array()
            .is_some_and(|luns| luns.iter().all(|lun| lun["lun"] != FAILING_LUN)),
        "{luns}"
    );
    let changed = rig.driver.test_unit_ready(HEALTHY_LUN).unwrap();
    assert_sense(
        &changed,
        UNIT_ATTENTION,
        REPORTED_LUNS_DATA_HAS_CHANGED,
        "other LUN",
    );
    assert_healthy_lun_serves(&mut rig.driver);
}

/// A real ENOSPC: the image is a sparse 8 MiB file on a 256 KiB tmpfs. Once the tmpfs is full,
/// writes to new blocks get DATA PROTECT/SPACE ALLOCATION FAILED (werror=report), overwrites of
/// blocks already stored still succeed, the null LUN keeps serving, and the log warns.
#[test]
fn full_tmpfs_gives_space_allocation_failed_while_other_luns_serve() {
    let tmpfs = SmallTmpfs::mount(256 << 10).unwrap_or_else(|e| panic!("{e}"));
    let image = tmpfs.path().join("disk.img");
    std::fs::File::create(&image)
        .and_then(|file| file.set_len(IMAGE_SIZE))
        .unwrap();
    let failing = format!("path={},lun={FAILING_LUN},werror=report", image.display());
    let (mut driver, server) = serve(&failing, &[]);
    let chunk = vec![0x5eu8; 64 << 10];
    let blocks_per_chunk = (chunk.len() / BLOCK as usize) as u32;
    let mut stored = 0;
    let full = (0..(IMAGE_SIZE / chunk.len() as u64) as u32)
        .map(|n| {
            driver
                .write10(FAILING_LUN, n * blocks_per_chunk, &chunk, BLOCK)
                .unwrap()
        })
        .find(|result| {
            stored += usize::from(result.is_good());
            !result.is_good()
        })
        .expect("an 8 MiB image filled a 256 KiB tmpfs without an error");
    assert_sense(
        &full,
        DATA_PROTECT,
        SPACE_ALLOCATION_FAILED,
        "write to a full tmpfs",
    );
    assert!(stored >= 1, "the first 64 KiB fit");
    let again = driver.write10(FAILING_LUN, 0, &chunk, BLOCK).unwrap();
    assert!(
        again.is_good(),
        "overwriting stored blocks needs no space: {again:?}"
    );
    assert_healthy_lun_serves(&mut driver);
    let warned = warnings_at_least(&server, "backend error", 1);
    assert_eq!(warned.len(), 1, "{}", server.stderr());
    assert_eq!(
        (
            &warned[0]["lun"],
            &warned[0]["errno"],
            &warned[0]["operation"]
        ),
        (
            &serde_json::json!(FAILING_LUN),
            &serde_json::json!(libc::ENOSPC),
            &serde_json::json!("write")
        )
    );
}

/// SIGTERM with a request held by rerror=stop: the server does not wait for `cont` (nothing
/// else would answer it) nor for --shutdown-timeout; it names the dropped request in a warning,
/// removes its socket and exits cleanly. The request was never acknowledged.
#[test]
fn sigterm_with_held_requests_lists_them_and_exits() {
    let (mut rig, _dir, control) = start_with_control("rerror=stop");
    rig.fs.faults().fail_reads(libc::EIO);
    let read = ScsiRequest::new(
        scsi::encode_lun(0, FAILING_LUN).unwrap(),
        &cdb::lba10(cdb::READ_10, 0, 0, 8),
    )
    .data_in(4096)
    .tag(0x4e1d);
    rig.driver.submit(FIRST_REQUEST_QUEUE, &read).unwrap();
    wait_for_policy(&control, "held", 1);
    let status = rig.server.terminate(Duration::from_secs(5)).unwrap();
    assert!(status.success(), "{status:?}\n{}", rig.server.stderr());
    let dropped = warnings_at_least(&rig.server, "held request dropped", 1);
    assert_eq!(dropped.len(), 1, "{}", rig.server.stderr());
    assert_eq!(
        (&dropped[0]["lun"], &dropped[0]["tag"]),
        (&serde_json::json!(FAILING_LUN), &serde_json::json!(0x4e1d))
    );
    assert!(!rig.server.socket().exists(), "the socket file is removed");
}
