//! A Linux guest on our device with its request queues on iothreads (smp 2, 2 request queues):
//! fio verifies data written by one job per vCPU (so through both request queues), and every
//! request queue's MSI-X vector took interrupts. With 2 iothreads (and a mapping that also
//! names ctrl and event), with 1, and with none.

use tests::guest::{interrupt_total, run_vm, GuestRun};

/// Two jobs, one per vCPU and so one per request queue, each verifying its own region.
const SCRIPT: &str = "set -e
fio --name=verify --filename=/dev/sda --ioengine=libaio --direct=1 --rw=randwrite --bs=4k \
    --iodepth=16 --numjobs=2 --size=8m --offset_increment=64m --verify=crc32c --do_verify=1 \
    --cpus_allowed=0,1 --cpus_allowed_policy=split --group_reporting --output-format=terse \
    > /tmp/fio.out
echo FIO-VERIFY-OK
grep 'virtio[0-9]*-request' /proc/interrupts | sed 's/^/REQUEST-IRQ /'";

/// Interrupt counts (summed over the vCPUs) of each request queue's vector.
fn request_queue_interrupts(run: &GuestRun) -> Vec<u64> {
    run.output
        .lines()
        .filter_map(|line| line.split("REQUEST-IRQ ").nth(1))
        .map(interrupt_total)
        .collect()
}

fn verify_with(server_args: &str) {
    let run = run_vm(&["--server", server_args, "--smp", "2"], SCRIPT).unwrap();
    run.assert_status(0);
    run.assert_line_contains("FIO-VERIFY-OK");
    let interrupts = request_queue_interrupts(&run);
    assert_eq!(
        interrupts.len(),
        2,
        "one MSI-X vector per request queue; last lines:\n{}",
        run.tail()
    );
    assert!(
        interrupts.iter().all(|&count| count > 0),
        "every request queue's vector took interrupts: {interrupts:?}; last lines:\n{}",
        run.tail()
    );
}

#[test]
fn guest_two_iothreads_with_ctrl_and_event_mapped() {
    verify_with(
        r#"--num-queues 2 --iothread io0 --iothread io1 --iothread-vq-mapping '[{"iothread":"io0","vqs":["ctrl",0]},{"iothread":"io1","vqs":["event",1]}]'"#,
    );
}

#[test]
fn guest_one_iothread() {
    verify_with("--num-queues 2 --iothread io0");
}

#[test]
fn guest_main_loop_only() {
    verify_with("--num-queues 2");
}
