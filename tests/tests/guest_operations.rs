//! A running Linux guest under operator actions on the control socket and signals: a LUN added
//! with `ctl add-disk` appears, `ctl resize` after growing its file shows the new size,
//! `ctl remove-disk` takes it away while fio keeps running on another LUN; SIGHUP (after the log
//! was moved), SIGPIPE and SIGUSR1, a second vfio-user client and a second server on the same
//! image leave the guest's fio running without errors.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tests::guest::{run_vm_with, sparse_disk, GuestRun, SCRIPT_PRELUDE};
use tests::server_process;
use tests::ServerProcess;

const RUN_TIMEOUT_S: &str = "200";
const STEP: &str = "VUS-STEP ";

/// `vfio-user-scsi ctl SOCKET ARGS`: whether it succeeded, and the reply line.
fn ctl(socket: &Path, args: &[&str]) -> (bool, String) {
    let (status, reply) = server_process::ctl(socket, args).unwrap();
    (status == Some(0), reply)
}

/// A server on `image` with a control socket at `control`, and `extra` options.
fn server_with_control(control: &Path, image: &Path, extra: &[&str]) -> ServerProcess {
    let disk = format!("path={}", image.display());
    let mut args = vec![
        "--control-socket",
        control.to_str().unwrap(),
        "--disk",
        &disk,
    ];
    args.extend_from_slice(extra);
    ServerProcess::start(&args).unwrap()
}

/// Boots a guest on `server`, runs `script`, and calls `step(name)` when the guest prints
/// `VUS-STEP name`.
fn run_with_steps(server: &ServerProcess, script: &str, mut step: impl FnMut(&str)) -> GuestRun {
    let socket = server.socket().to_str().unwrap().to_string();
    let args = ["--timeout", RUN_TIMEOUT_S, "--socket", &socket];
    run_vm_with(&args, &format!("{SCRIPT_PRELUDE}{script}"), |line| {
        if let Some(name) = line.trim_end().strip_prefix(STEP) {
            step(name);
        }
    })
    .unwrap()
}

fn fio_on(device: &str, seconds: u32) -> String {
    format!(
        "fio --name=busy --filename={device} --ioengine=libaio --direct=1 --rw=randrw --bs=4k \
         --iodepth=8 --time_based --runtime={seconds} --output-format=terse > /tmp/fio.out 2>&1 &
fio_pid=$!
"
    )
}

const WAIT_FIO: &str =
    "if wait $fio_pid; then echo FIO-OK; else echo FIO-FAILED; cat /tmp/fio.out; fi
";

#[test]
fn hotplug_resize_and_remove_reach_a_running_guest() {
    let first = sparse_disk("ops-a", 256 << 20).unwrap();
    let added = sparse_disk("ops-b", 64 << 20).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let control: PathBuf = dir.path().join("ctl.sock");
    let server = server_with_control(
        &control,
        first.path(),
        &["--num-queues", "2", "--iothread", "io0"],
    );
    let script = r#"
echo "VUS-STEP add"
disk=$(lun_disk 1)
name=${disk#/dev/}
echo "ADDED-SIZE=$(cat /sys/block/$name/size)"
echo "VUS-STEP resize"
tries=200
while [ "$(cat /sys/block/$name/size)" = 131072 ] && [ "$tries" -gt 0 ]; do sleep 0.1; tries=$((tries - 1)); done
echo "RESIZED-SIZE=$(cat /sys/block/$name/size)"
lun0=$(lun_disk 0)
"#
    .to_string()
        + &fio_on("$lun0", 8)
        + r#"sleep 2
echo "VUS-STEP remove"
tries=200
while [ -e "/sys/block/$name" ] && [ "$tries" -gt 0 ]; do sleep 0.1; tries=$((tries - 1)); done
if [ -e "/sys/block/$name" ]; then echo STILL-THERE; else echo REMOVED; fi
"# + WAIT_FIO;
    let spec = format!("path={},lun=1", added.path().display());
    let mut replies = Vec::new();
    let run = run_with_steps(&server, &script, |step| {
        let reply = match step {
            "add" => ctl(&control, &["add-disk", &spec]),
            "resize" => {
                added.as_file().set_len(128 << 20).unwrap();
                ctl(&control, &["resize", "1"])
            }
            "remove" => ctl(&control, &["remove-disk", "1"]),
            _ => return,
        };
        replies.push((step.to_string(), reply));
    });
    run.assert_status(0);
    for (step, (ok, reply)) in &replies {
        assert!(ok, "ctl {step}: {reply}");
        assert!(
            reply.contains("\"event\":\"delivered\""),
            "ctl {step}: {reply}"
        );
    }
    assert_eq!(replies.len(), 3, "{replies:?}");
    run.assert_line("ADDED-SIZE=131072");
    run.assert_line("RESIZED-SIZE=262144");
    run.assert_line("REMOVED");
    run.assert_line("FIO-OK");
}

#[test]
fn signals_second_client_and_second_server_leave_the_guest_running() {
    let image = sparse_disk("ops-signals", 256 << 20).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("server.log");
    let disk_arg = format!("path={}", image.path().display());
    let server =
        ServerProcess::start(&["--disk", &disk_arg, "--log-file", log.to_str().unwrap()]).unwrap();
    let pid = server.pid() as libc::pid_t;
    let script = fio_on("/dev/sda", 10) + "sleep 2\necho \"VUS-STEP act\"\n" + WAIT_FIO;
    let mut second_client_closed = false;
    let mut second_server = None;
    let run = run_with_steps(&server, &script, |step| {
        if step != "act" {
            return;
        }
        std::fs::rename(&log, logs.path().join("server.log.1")).unwrap();
        let send = |signal| {
            // SAFETY: kill(2) on the server we started, which is still running.
            assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        };
        send(libc::SIGHUP);
        // Records logged before the log thread reopens the file still go to the renamed one:
        // the other signals and the second client come once the new file exists.
        let reopened = Instant::now();
        while !std::fs::read_to_string(&log).is_ok_and(|text| text.contains("log reopened")) {
            assert!(
                reopened.elapsed() < Duration::from_secs(10),
                "SIGHUP reopened no log"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        send(libc::SIGPIPE);
        send(libc::SIGUSR1);
        let mut stream = UnixStream::connect(server.socket()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut byte = [0u8; 1];
        second_client_closed = matches!(std::io::Read::read(&mut stream, &mut byte), Ok(0));
        let socket = logs.path().join("second.sock");
        second_server = Some(
            ServerProcess::run_to_exit(
                &["--socket", socket.to_str().unwrap(), "--disk", &disk_arg],
                Duration::from_secs(10),
            )
            .unwrap(),
        );
    });
    run.assert_status(0);
    run.assert_line("FIO-OK");
    assert!(second_client_closed, "the second client was not refused");
    let (status, stderr) = second_server.unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is locked"), "{stderr}");
    let mut server = server;
    assert!(server.is_running());
    let old = std::fs::read_to_string(logs.path().join("server.log.1")).unwrap();
    let new = std::fs::read_to_string(&log).unwrap();
    assert!(old.contains("client connected"), "{old}");
    assert!(new.contains("log reopened"), "{new}");
    assert!(new.contains("second client refused"), "{new}");
    assert!(new.contains("signal ignored"), "{new}");
}

/// `ctl stats`: (requests, bytes read) in total and of LUN 0.
fn stats_totals(control: &Path) -> [(u64, u64); 2] {
    let (ok, reply) = ctl(control, &["stats"]);
    assert!(ok, "{reply}");
    let value: serde_json::Value = serde_json::from_str(&reply).unwrap();
    let lun0 = &value["result"]["luns"][0];
    assert_eq!(lun0["lun"], 0, "{reply}");
    [&value["result"]["total"], lun0].map(|counters| {
        (
            counters["requests"].as_u64().unwrap(),
            counters["bytes_read"].as_u64().unwrap(),
        )
    })
}

#[test]
fn ctl_stats_counts_what_fio_did() {
    const READS: u64 = 2048;
    let image = sparse_disk("ops-stats", 64 << 20).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("ctl.sock");
    let server = server_with_control(&control, image.path(), &["--iothread", "io0"]);
    let script = format!(
        "echo \"VUS-STEP before\"
sleep 1
fio --name=count --filename=/dev/sda --ioengine=libaio --direct=1 --rw=randread --bs=4k \
    --iodepth=8 --io_size={} --output-format=terse > /tmp/fio.out
echo \"VUS-STEP after\"
sleep 1
",
        READS * 4096
    );
    let mut before = None;
    let mut after = None;
    let run = run_with_steps(&server, &script, |step| match step {
        "before" => before = Some(stats_totals(&control)),
        "after" => after = Some(stats_totals(&control)),
        _ => {}
    });
    run.assert_status(0);
    let (before, after) = (before.unwrap(), after.unwrap());
    // The totals of the queues, then LUN 0's, the only LUN.
    for (what, before, after) in [
        ("total", before[0], after[0]),
        ("LUN 0", before[1], after[1]),
    ] {
        let requests = after.0 - before.0;
        let bytes = after.1 - before.1;
        // The kernel may add a few commands of its own (TEST UNIT READY, cache flushes).
        assert!(
            (READS..=READS + 64).contains(&requests),
            "fio read {READS} blocks; the server counted {requests} requests ({what})"
        );
        assert!(
            (READS * 4096..=READS * 4096 + (1 << 20)).contains(&bytes),
            "fio read {} bytes; the server counted {bytes} ({what})",
            READS * 4096
        );
    }
}

#[test]
fn set_mapping_moves_a_queue_under_fio_verify() {
    let image = sparse_disk("ops-mapping", 256 << 20).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("ctl.sock");
    let log = dir.path().join("server.log");
    let server = server_with_control(
        &control,
        image.path(),
        &[
            "--num-queues",
            "2",
            "--iothread",
            "io0",
            "--iothread",
            "io1",
            "--log-level",
            "trace",
            "--log-format",
            "json",
            "--log-file",
            log.to_str().unwrap(),
        ],
    );
    // One job per vCPU, so through both request queues; writes, then reads them back.
    let script =
        "fio --name=verify --filename=/dev/sda --ioengine=libaio --direct=1 --rw=randwrite \
    --bs=4k --iodepth=16 --numjobs=2 --size=48m --offset_increment=64m --verify=crc32c \
    --do_verify=1 --verify_fatal=1 --cpus_allowed=0,1 --cpus_allowed_policy=split \
    --group_reporting --output-format=terse > /tmp/fio.out 2>&1 &
fio_pid=$!
sleep 3
echo \"VUS-STEP move\"
"
        .to_string()
            + WAIT_FIO;
    let mut reply = None;
    let run = run_with_steps(&server, &script, |step| {
        if step == "move" {
            reply = Some(ctl(
                &control,
                &[
                    "set-mapping",
                    r#"[{"iothread":"io0","vqs":[0,1]},{"iothread":"io1","vqs":["ctrl","event"]}]"#,
                ],
            ));
        }
    });
    run.assert_status(0);
    run.assert_line("FIO-OK");
    let (ok, reply) = reply.expect("the guest never asked for the move");
    assert!(ok, "{reply}");
    assert!(
        reply.contains(r#"{"from":"io1","to":"io0","vq":3}"#),
        "{reply}"
    );
    let (_, query) = ctl(&control, &["query"]);
    assert!(
        query.contains(r#"{"iothread":"io0","name":"request1","vq":3}"#),
        "{query}"
    );
    // After the move, io0 serves virtqueue 3.
    let text = std::fs::read_to_string(&log).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let moved_at = records
        .iter()
        .position(|r| r["msg"] == "queue moved" && r["vq"] == 3)
        .expect("no 'queue moved' record for vq 3");
    let served_before = records[..moved_at]
        .iter()
        .any(|r| r["msg"] == "queue served" && r["vq"] == 3 && r["iothread"] == "io1");
    let served_after = records[moved_at..]
        .iter()
        .any(|r| r["msg"] == "queue served" && r["vq"] == 3 && r["iothread"] == "io0");
    assert!(served_before, "io1 served vq 3 before the move");
    assert!(served_after, "io0 serves vq 3 after the move");
}
