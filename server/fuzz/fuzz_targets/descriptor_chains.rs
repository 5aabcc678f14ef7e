//! Descriptor chains over hostile guest memory, through the production request-queue path:
//! the virtio-pci function is set up by its common-config registers, and each kick goes from
//! the notify write through the transport to the request queue's worker, which pops, walks and
//! answers the chains (SCSI commands against two null LUNs).
//!
//! Guest memory has holes (see `server_fuzz::guest_memory`), and the input can take the HIGH
//! area away and give it back between kicks. Chains can loop, carry huge lengths, overlap,
//! point into holes or across the top of the address space, and nest indirect tables.
//!
//! Input: [setup] then operations, each [op] and its operands (little-endian):
//! - setup: bits 0-2 queue size 2 << n, bit 3 EVENT_IDX, bit 4 INDIRECT_DESC, bit 5 the rings in
//!   HIGH instead of LOW;
//! - 0 bytes [area][offset u16][len u8][bytes]; 1 descriptor [table][index u16][addr u64]
//!   [len u32][flags u16][next u16]; 2 publish [head u16]; 3 kick; 4 HIGH unmapped or mapped
//!   again; 5 device reset and set up again; 6 publish [first u8][count u8] heads; 7 the avail
//!   index set to [idx u16].

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use server_fuzz::{Driver, Input, AREA, DATA_BASE, HIGH, LOW, TOP};
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryMmap, GuestRegionMmap};

const REQUEST_QUEUE: u16 = 2;
const EVENT_IDX: u64 = 1 << 29;
const INDIRECT_DESC: u64 = 1 << 28;

/// An area of guest memory by number: the data part of LOW, HIGH, TOP, the queue's rings, or
/// the last bytes of HIGH (running into the hole after it).
fn area(selector: u8, rings: u64) -> u64 {
    match selector % 5 {
        0 => LOW + DATA_BASE,
        1 => HIGH,
        2 => TOP,
        3 => rings,
        _ => HIGH + AREA - 8,
    }
}

struct Queue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    features: u64,
}

fn start(driver: &mut Driver, queue: &Queue) {
    driver.negotiate(queue.features);
    driver.setup_queue(
        REQUEST_QUEUE,
        queue.size,
        queue.desc,
        queue.avail,
        queue.used,
    );
    driver.driver_ok();
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some([setup]) = input.take::<1>() else {
        return;
    };
    let Some(mut driver) = Driver::new(1, 256, None) else {
        return;
    };
    let (desc, avail, used) = Driver::rings(REQUEST_QUEUE);
    let base = if setup & 0x20 != 0 { HIGH - LOW } else { 0 };
    let queue = Queue {
        size: 2 << (setup & 7),
        desc: desc + base,
        avail: avail + base,
        used: used + base,
        features: (if setup & 8 != 0 { EVENT_IDX } else { 0 })
            | (if setup & 0x10 != 0 { INDIRECT_DESC } else { 0 }),
    };
    start(&mut driver, &queue);
    let mut removed: Option<Arc<GuestRegionMmap>> = None;
    while let Some([op]) = input.take::<1>() {
        match op % 8 {
            0 => {
                let Some([selector, lo, hi, len]) = input.take::<4>() else {
                    return;
                };
                let bytes = input.bytes(usize::from(len));
                let at = area(selector, queue.desc) + u64::from(u16::from_le_bytes([lo, hi]));
                driver.poke(at, bytes);
            }
            1 => {
                let Some(d) = input.take::<19>() else {
                    return;
                };
                let [table, i0, i1, rest @ ..] = d;
                let addr = u64::from_le_bytes(rest[0..8].try_into().unwrap_or_default());
                let len = u32::from_le_bytes(rest[8..12].try_into().unwrap_or_default());
                let flags = u16::from_le_bytes([rest[12], rest[13]]);
                let next = u16::from_le_bytes([rest[14], rest[15]]);
                let index = u16::from_le_bytes([i0, i1]);
                driver.descriptor(area(table, queue.desc), index, addr, len, flags, next);
            }
            2 => {
                let Some(head) = input.take::<2>() else {
                    return;
                };
                driver.publish(queue.avail, queue.size, u16::from_le_bytes(head));
            }
            3 => driver.notify(REQUEST_QUEUE),
            4 => toggle_high(&driver, &mut removed),
            5 => {
                driver.set_status(0);
                start(&mut driver, &queue);
            }
            6 => {
                let Some([first, count]) = input.take::<2>() else {
                    return;
                };
                for head in (u16::from(first)..).take(usize::from(count)) {
                    driver.publish(queue.avail, queue.size, head);
                }
            }
            _ => {
                let Some(idx) = input.take::<2>() else {
                    return;
                };
                driver.poke(queue.avail + 2, &idx);
            }
        }
    }
    driver.notify(REQUEST_QUEUE);
});

/// Takes the HIGH area out of guest memory, as a DMA_UNMAP does, or puts it back.
fn toggle_high(driver: &Driver, removed: &mut Option<Arc<GuestRegionMmap>>) {
    let Ok(guard) = driver.memory.lock() else {
        return;
    };
    let current: &GuestMemoryMmap = &driver.memory.memory();
    let updated = match removed.take() {
        Some(region) => current.insert_region(region).ok(),
        None => current
            .remove_region(GuestAddress(HIGH), AREA)
            .ok()
            .map(|(updated, region)| {
                *removed = Some(region);
                updated
            }),
    };
    if let Some(updated) = updated {
        guard.replace(updated);
    }
}
