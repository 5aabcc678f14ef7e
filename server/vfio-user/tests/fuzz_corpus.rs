//! The fuzz target's seed corpus stays made of valid messages (first byte: fd count).

use std::fs::File;
use std::os::fd::OwnedFd;

use vfio_user_server::decode_message;

#[test]
fn every_seed_decodes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/message");
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let (&fd_count, message) = data.split_first().unwrap();
        let fds = (0..fd_count)
            .map(|_| OwnedFd::from(File::open("/dev/null").unwrap()))
            .collect();
        if let Err(e) = decode_message(message, fds) {
            panic!("{}: {e}", path.display());
        }
        seeds += 1;
    }
    assert!(seeds >= 10, "{seeds} seeds");
}
