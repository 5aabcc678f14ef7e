//! A running Linux guest under operator actions on the control socket and signals: a LUN added
//! with `ctl add-disk` appears, `ctl resize` after growing its file shows the new size,
//! `ctl remove-disk` takes it away while fio keeps running on another LUN; SIGHUP (after the log
//! was moved), SIGPIPE and SIGUSR1, a second vfio-user client and a second server on the same
//! image leave the guest's fio running without errors.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tests::guest::{run_vm_with, sparse_disk, GuestRun, SCRIPT_PRELUDE};
use tests::server_process::server_binary;
use tests::ServerProcess;

const RUN_TIMEOUT_S: &str = "200";
const STEP: &str = "VUS-STEP ";

/// `vfio-user-scsi ctl SOCKET ARGS`: its exit status and the reply line.
fn ctl(socket: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(server_binary().unwrap())
        .arg("ctl")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
    )
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
    let disk_arg = format!("path={}", first.path().display());
    let server = ServerProcess::start(&[
        "--control-socket",
        control.to_str().unwrap(),
        "--disk",
        &disk_arg,
        "--num-queues",
        "2",
        "--iothread",
        "io0",
    ])
    .unwrap();
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
        for signal in [libc::SIGHUP, libc::SIGPIPE, libc::SIGUSR1] {
            // SAFETY: kill(2) on the server we started, which is still running.
            assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        }
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

/// `ctl stats` totals: (requests, bytes read).
fn stats_totals(control: &Path) -> (u64, u64) {
    let (ok, reply) = ctl(control, &["stats"]);
    assert!(ok, "{reply}");
    let value: serde_json::Value = serde_json::from_str(&reply).unwrap();
    let total = &value["result"]["total"];
    (
        total["requests"].as_u64().unwrap(),
        total["bytes_read"].as_u64().unwrap(),
    )
}

#[test]
fn ctl_stats_counts_what_fio_did() {
    const READS: u64 = 2048;
    let image = sparse_disk("ops-stats", 64 << 20).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("ctl.sock");
    let disk_arg = format!("path={}", image.path().display());
    let server = ServerProcess::start(&[
        "--control-socket",
        control.to_str().unwrap(),
        "--disk",
        &disk_arg,
        "--iothread",
        "io0",
    ])
    .unwrap();
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
    let requests = after.0 - before.0;
    let bytes = after.1 - before.1;
    // The kernel may add a few commands of its own (TEST UNIT READY, cache flushes) meanwhile.
    assert!(
        (READS..=READS + 64).contains(&requests),
        "fio read {READS} blocks; the server counted {requests} requests"
    );
    assert!(
        (READS * 4096..=READS * 4096 + (1 << 20)).contains(&bytes),
        "fio read {} bytes; the server counted {bytes}",
        READS * 4096
    );
}
