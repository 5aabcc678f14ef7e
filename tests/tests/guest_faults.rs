//! A Linux guest recovers from faults around our device with its data intact: a PCI remove and
//! rescan of the controller while fio writes through both request queues, and ten guests booted
//! one after the other against one server, which keeps its RSS, fds and threads flat. QEMU
//! SIGKILLed while its guest writes loses no block the guest saw acknowledged, and a guest
//! rebooted while fio writes finds its verified data intact after the reboot. A write that hits
//! ENOSPC under werror=enospc waits, unseen by the guest, until `ctl cont`.

use std::time::Duration;

use tests::guest::{run_vm, run_vm_with};
use tests::server_process::{settled_usage, sparse_image};
use tests::ServerProcess;

/// fio's job for one region per vCPU (so one per request queue): `$1` is the extra option.
const FIO: &str = "fio_job() { fio --name=\"$1\" --filename=/dev/sda --ioengine=libaio --direct=1 \
    --rw=randwrite --bs=4k --iodepth=16 --numjobs=2 --size=8m --offset=\"$2\" --offset_increment=64m \
    --verify=crc32c --cpus_allowed=0,1 --cpus_allowed_policy=split --group_reporting $3; }";

#[test]
fn guest_pci_remove_and_rescan_during_fio_loses_no_acknowledged_data() {
    let script = format!(
        "{FIO}
controller=
for d in /sys/bus/pci/devices/*; do
    [ \"$(cat $d/vendor)\" = 0x1af4 ] && [ \"$(cat $d/device)\" = 0x1048 ] && controller=$d
done
[ -n \"$controller\" ] || {{ echo NO-CONTROLLER; exit 1; }}
fio_job before 0 '--do_verify=1' > /tmp/before.out || {{ cat /tmp/before.out; exit 2; }}
echo BEFORE-VERIFY-OK
fio_job during 16m '--do_verify=0 --time_based --runtime=30' > /tmp/during.out 2>&1 &
sleep 2
echo 1 > $controller/remove
wait
echo 1 > /sys/bus/pci/rescan
waited=0
while [ ! -b /dev/sda ] && [ $waited -lt 300 ]; do sleep 0.1; waited=$((waited + 1)); done
[ -b /dev/sda ] || {{ echo NO-DISK-AFTER-RESCAN; exit 3; }}
echo RESCAN-OK
fio_job before 0 '--verify_only' > /tmp/again.out || {{ cat /tmp/again.out; exit 4; }}
echo OLD-DATA-OK
fio_job after 32m '--do_verify=1' > /tmp/after.out || {{ cat /tmp/after.out; exit 5; }}
echo AFTER-VERIFY-OK"
    );
    let run = run_vm(
        &[
            "--server",
            "--num-queues 2 --iothread io0 --iothread io1",
            "--smp",
            "2",
        ],
        &script,
    )
    .unwrap();
    run.assert_status(0);
    for marker in [
        "BEFORE-VERIFY-OK",
        "RESCAN-OK",
        "OLD-DATA-OK",
        "AFTER-VERIFY-OK",
    ] {
        run.assert_line_contains(marker);
    }
}

/// The guest reboots (`reboot -f`, QEMU resets the machine and our device) while fio writes
/// through both request queues; the second boot, told apart by a marker the first wrote on
/// the disk, finds the device again, verifies what was written and verified before the reboot
/// with 0 corrupt blocks, and writes and verifies a fresh region.
#[test]
fn guest_reboot_during_fio_loses_no_acknowledged_data() {
    // 1 MiB per job (256 blocks on each queue) keeps the two boots under TCG short; the
    // verify covers every block written either way.
    let script = format!(
        "{FIO}
marker_block=131072
marker=$(dd if=/dev/sda bs=4k skip=$marker_block count=1 iflag=direct status=none | head -c 12)
if [ \"$marker\" = VUS-REBOOTED ]; then
    echo SECOND-BOOT T=$(cut -d' ' -f1 /proc/uptime)
    fio_job before 0 '--verify_only --size=1m' > /tmp/again.out || {{ cat /tmp/again.out; exit 4; }}
    echo OLD-DATA-OK T=$(cut -d' ' -f1 /proc/uptime)
    fio_job after 32m '--do_verify=1 --size=1m' > /tmp/after.out || {{ cat /tmp/after.out; exit 5; }}
    echo AFTER-VERIFY-OK T=$(cut -d' ' -f1 /proc/uptime)
    exit 0
fi
echo FIRST-BOOT T=$(cut -d' ' -f1 /proc/uptime)
fio_job before 0 '--do_verify=1 --size=1m' > /tmp/before.out || {{ cat /tmp/before.out; exit 2; }}
echo BEFORE-VERIFY-OK T=$(cut -d' ' -f1 /proc/uptime)
printf VUS-REBOOTED > /tmp/marker
dd if=/tmp/marker of=/dev/sda bs=4k seek=$marker_block conv=sync,fsync oflag=direct status=none
fio_job during 16m '--do_verify=0 --time_based --runtime=20' > /tmp/during.out 2>&1 &
sleep 1
echo REBOOTING T=$(cut -d' ' -f1 /proc/uptime)
reboot -f
sleep 30
echo NO-REBOOT
exit 6"
    );
    let run = run_vm(
        &[
            "--server",
            "--num-queues 2 --iothread io0 --iothread io1",
            "--smp",
            "2",
            "--reboot",
        ],
        &script,
    )
    .unwrap();
    run.assert_status(0);
    for marker in [
        "FIRST-BOOT",
        "BEFORE-VERIFY-OK",
        "REBOOTING",
        "SECOND-BOOT",
        "OLD-DATA-OK",
        "AFTER-VERIFY-OK",
    ] {
        run.assert_line_contains(marker);
    }
}

#[test]
fn guest_ten_boots_against_one_server_leave_it_flat() {
    let (_dir, image) = sparse_image(64 << 20).unwrap();
    let disk = format!("path={},cache=none", image.display());
    let server = ServerProcess::start(&["--disk", &disk, "--num-queues", "2", "--iothread", "io0"])
        .unwrap_or_else(|e| panic!("{e}"));
    let socket = server.socket().display().to_string();
    let mut after_first = None;
    for boot in 1..=10 {
        let script = format!(
            "dd if=/dev/urandom of=/tmp/block bs=4k count=1 2>/dev/null
dd if=/tmp/block of=/dev/sda bs=4k seek={boot} oflag=direct 2>/dev/null
dd if=/dev/sda of=/tmp/back bs=4k skip={boot} count=1 iflag=direct 2>/dev/null
cmp /tmp/block /tmp/back && echo BOOT-{boot}-OK"
        );
        let run = run_vm(&["--socket", &socket, "--smp", "2"], &script).unwrap();
        run.assert_status(0);
        run.assert_line_contains(&format!("BOOT-{boot}-OK"));
        if boot == 2 {
            after_first = Some(settled_usage(server.pid()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let baseline = after_first.unwrap();
    let last = settled_usage(server.pid());
    println!("after 2 boots: {baseline:?}; after 10: {last:?}");
    // QEMU may still be tearing down when the first sample is taken: no growth is the test.
    assert!(
        last.fds <= baseline.fds,
        "fds leak: {baseline:?} -> {last:?}"
    );
    assert!(
        last.threads <= baseline.threads,
        "threads leak: {baseline:?} -> {last:?}"
    );
    assert!(
        last.rss_kib <= baseline.rss_kib + 8192,
        "RSS grows: {baseline:?} -> {last:?}"
    );
}

/// How many blocks the guest sees acknowledged before QEMU is killed.
const ACKED_BEFORE_KILL: u64 = 20;

/// The guest writes numbered 4 KiB blocks, each with O_DIRECT followed by a flush (dd
/// conv=fsync: SYNCHRONIZE CACHE), and prints `ACKED n` once dd returned; a second writer keeps
/// requests in flight elsewhere on the disk. The test SIGKILLs QEMU mid-run: the server stays
/// up, and every block the guest saw acknowledged is in the backing file.
fn qemu_killed_mid_write(cache: &str) {
    let (_dir, image) = sparse_image(64 << 20).unwrap();
    let disk = format!("path={},cache={cache}", image.display());
    let mut server = ServerProcess::start(&["--disk", &disk, "--num-queues", "2"])
        .unwrap_or_else(|e| panic!("{e}"));
    let socket = server.socket().display().to_string();
    let script = "while :; do dd if=/dev/zero of=$VUS_DISK bs=64k count=16 seek=256 \
        oflag=direct status=none; done &
n=0
while [ $n -lt 2048 ]; do
    printf 'VUS-BLOCK-%011d\\n' $n > /tmp/block
    dd if=/tmp/block of=$VUS_DISK bs=4096 seek=$n conv=sync,fsync,notrunc oflag=direct \
        status=none || { echo WRITE-FAILED $n; exit 1; }
    echo ACKED $n
    n=$((n + 1))
done
echo NEVER-KILLED";
    let kill_at = format!("ACKED {ACKED_BEFORE_KILL}");
    let mut killed = None;
    let run = run_vm_with(&["--socket", &socket, "--smp", "2"], script, |line| {
        if killed.is_none() && line.trim_end() == kill_at {
            killed = Some(kill_qemu_on(&socket));
        }
    })
    .unwrap();
    assert_eq!(
        killed,
        Some(true),
        "QEMU was not found to kill:\n{}",
        run.tail()
    );
    run.assert_status(125);
    run.assert_line_contains("run-vm: QEMU KILLED by signal 9 (SIGKILL, exit status 137)");
    assert!(server.is_running(), "the server outlives its client");

    let acked: Vec<u64> = run
        .output
        .lines()
        .filter_map(|line| line.trim_end().strip_prefix("ACKED "))
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(acked.len() as u64 > ACKED_BEFORE_KILL, "{}", run.tail());
    let contents = std::fs::read(&image).unwrap();
    for n in acked {
        let start = n as usize * 4096;
        let mut expected = format!("VUS-BLOCK-{n:011}\n").into_bytes();
        expected.resize(4096, 0);
        assert!(
            contents[start..start + 4096] == expected[..],
            "cache={cache}: block {n} was acknowledged but is not in the file"
        );
    }
    server.terminate(Duration::from_secs(10)).unwrap();
}

/// SIGKILLs the QEMU process attached to `socket` (found by its command line); true when one
/// was found.
fn kill_qemu_on(socket: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    let mut found = false;
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("qemu-system") && cmdline.contains(socket) {
            // SAFETY: kill only sends a signal, to the QEMU this test's run-vm.sh started.
            found |= unsafe { libc::kill(pid, libc::SIGKILL) } == 0;
        }
    }
    found
}

#[test]
fn guest_acknowledged_writes_survive_qemu_sigkilled_cache_none() {
    qemu_killed_mid_write("none");
}

#[test]
fn guest_acknowledged_writes_survive_qemu_sigkilled_writeback() {
    qemu_killed_mid_write("writeback");
}

/// werror=enospc (the default) with a real guest: the guest's write hits ENOSPC in the backend
/// (the FUSE fault file system), is held and the LUN paused, and the guest sees no error; once
/// the fault is cleared and `ctl cont` resumes the LUN, its dd completes and reads its data back.
#[test]
fn guest_write_held_on_enospc_completes_after_cont() {
    let fs = tests::fault_fs::FaultFs::mount(8 << 20).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("ctl.sock");
    let disk = format!("path={},cache=none", fs.image().display());
    let server = ServerProcess::start(&[
        "--disk",
        &disk,
        "--control-socket",
        control.to_str().unwrap(),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let socket = server.socket().display().to_string();
    fs.faults().fail_writes(libc::ENOSPC);
    let script = "printf 'VUS-HELD-WRITE\\n' > /tmp/block
echo WRITE-STARTED
dd if=/tmp/block of=$VUS_DISK bs=4096 conv=sync,fsync oflag=direct status=none
echo WRITE-DONE
[ \"$(dd if=$VUS_DISK bs=4096 count=1 iflag=direct status=none | head -n 1)\" = VUS-HELD-WRITE ]
echo DATA-OK
if dmesg | grep 'I/O error'; then exit 3; fi";
    let query = || {
        let (_, reply) = tests::server_process::ctl(&control, &["query"]).unwrap();
        let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
        reply["result"]["luns"][0]["error_policy"].clone()
    };
    let mut paused = serde_json::Value::Null;
    let run = run_vm_with(&["--socket", &socket, "--smp", "2"], script, |line| {
        if line.trim_end() != "WRITE-STARTED" {
            return;
        }
        for _ in 0..200 {
            paused = query();
            if paused["held"] == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        fs.faults().fail_writes(0);
        tests::server_process::ctl(&control, &["cont"]).unwrap();
    })
    .unwrap();
    run.assert_status(0);
    run.assert_line_contains("DATA-OK");
    assert_eq!(
        (&paused["paused"], &paused["io_status"], &paused["held"]),
        (
            &serde_json::json!(true),
            &serde_json::json!("nospace"),
            &serde_json::json!(1)
        ),
        "the write was held while the guest waited: {paused}"
    );
    assert_eq!(query()["paused"], false, "cont resumed the LUN");
}
