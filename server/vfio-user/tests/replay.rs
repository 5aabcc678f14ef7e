//! `Replay` handles a message the way the server does, including what the server's loop does
//! next: serving the device's event fds the message left readable.

mod common;

use std::sync::Arc;

use common::{write_eventfd, TestDevice};
use vfio_user_server::{Device, DmaMemory, Replay};
use vm_memory::GuestMemoryMmap;

#[test]
fn a_replayed_message_is_followed_by_the_device_events_it_left_ready() {
    let memory = DmaMemory::new(GuestMemoryMmap::new());
    let device = TestDevice::new(memory.clone());
    let record = Arc::clone(&device.record);
    let kick = device.event_fds()[0].try_clone_to_owned().unwrap();
    let mut replay = Replay::new(device, memory);
    let seed =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/message/get_info");
    let seed = std::fs::read(seed).unwrap();
    let (&fd_count, message) = seed.split_first().unwrap();
    assert_eq!(fd_count, 0);

    replay.message(message, Vec::new());
    assert_eq!(record.lock().unwrap().kicks, 0, "nothing was ready");
    write_eventfd(&kick);
    write_eventfd(&kick);
    replay.message(message, Vec::new());
    assert_eq!(record.lock().unwrap().kicks, 2, "served after the message");
    replay.message(message, Vec::new());
    assert_eq!(record.lock().unwrap().kicks, 2, "and only while ready");
}
