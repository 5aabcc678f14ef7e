//! The iothread-vq-mapping JSON against arbitrary text. The first byte picks the number of
//! request queues, the second how many iothreads (io0, io1, ...) the command line names.

#![no_main]

use libfuzzer_sys::fuzz_target;
use server::mapping::build_mapping;

fuzz_target!(|data: &[u8]| {
    let [queues, iothreads, json @ ..] = data else {
        return;
    };
    let Ok(json) = std::str::from_utf8(json) else {
        return;
    };
    let names: Vec<String> = (0..iothreads % 8).map(|n| format!("io{n}")).collect();
    let _ = build_mapping(&names, Some(json), usize::from(*queues));
});
