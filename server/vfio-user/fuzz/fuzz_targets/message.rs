//! The message decoder against arbitrary bytes. The first byte says how many fds (0-3) arrive
//! with the message, so that the paths that keep or refuse fds are reached too; the rest is the
//! message itself.

#![no_main]

use std::fs::File;
use std::os::fd::OwnedFd;

use libfuzzer_sys::fuzz_target;
use vfio_user_server::decode_message;

fuzz_target!(|data: &[u8]| {
    let Some((&fd_count, message)) = data.split_first() else {
        return;
    };
    let fds: Vec<OwnedFd> = (0..fd_count % 4)
        .filter_map(|_| File::open("/dev/null").ok().map(OwnedFd::from))
        .collect();
    let _ = decode_message(message, fds);
});
