//! The `--disk` spec parser and LUN assignment against arbitrary text: one spec per line.

#![no_main]

use libfuzzer_sys::fuzz_target;
use server::disk_spec::{assign_luns, DiskSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let specs: Vec<DiskSpec> = text.lines().filter_map(|line| line.parse().ok()).collect();
    let _ = assign_luns(&specs);
});
