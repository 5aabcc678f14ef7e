//! Control-queue TMFs and asynchronous notification (AN) query and subscribe requests, through
//! the production control-queue worker, while commands are in flight on the request queues.
//!
//! The device hands its workers to `server_fuzz::InlineHost`, whose engines do each command's
//! I/O at once but hold its completion until the input releases it, so ABORT TASK, ABORT TASK
//! SET, LOGICAL UNIT RESET, I_T NEXUS RESET and QUERY TASK meet commands in flight on either of
//! two request queues; a reset completes everything and must leave nothing waiting.
//!
//! Input: [features] then operations, each [op] and its operands:
//! - features: bit 0 EVENT_IDX, bit 1 INDIRECT_DESC, bit 2 HOTPLUG, bit 3 CHANGE;
//! - 0 bytes [area][offset u16][len u8][bytes]; 1 descriptor [queue][index u8][addr u32]
//!   [len u32][flags u16][next u16]; 2 publish [queue][head u16]; 3 kick [queue];
//!   4 release [count] completions; 5 device reset and set up again;
//!   6 TMF [subtype][lun][tag][response descriptor length]; 7 AN [query or subscribe][lun]
//!   [event mask u32]; 8 command [queue][lun][tag][cdb: 10 bytes]; 9 raw control request
//!   [len u8][bytes].

#![no_main]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use server_fuzz::{Driver, InlineHost, Input, DATA_BASE, HIGH};
use virtio::{EngineFactory, QueueHost};

const CONTROL: u16 = 0;
const QUEUES: u16 = 4;
const QUEUE_SIZE: u16 = 16;
const READABLE: u16 = 0;
const NEXT: u16 = 1;
const WRITE: u16 = 2;
/// Each request's bytes, then its response, in a slot of its own in LOW's data area.
const SLOT: u64 = 0x200;
const SLOTS: u64 = 16;

fn lun_field(lun: u8) -> [u8; 8] {
    [1, 0, 0x40, lun, 0, 0, 0, 0]
}

/// The driver's view of each queue: where the next chain goes.
struct Queues {
    next_desc: [u16; QUEUES as usize],
    next_slot: u64,
    features: u64,
}

impl Queues {
    fn start(&mut self, driver: &mut Driver) {
        driver.negotiate(self.features);
        for queue in 0..QUEUES {
            let (desc, avail, used) = Driver::rings(queue);
            driver.setup_queue(queue, QUEUE_SIZE, desc, avail, used);
        }
        driver.driver_ok();
        self.next_desc = [0; QUEUES as usize];
    }

    fn slot(&mut self) -> u64 {
        self.next_slot = (self.next_slot + 1) % SLOTS;
        DATA_BASE + self.next_slot * SLOT
    }

    /// Puts `request` and a writable response of `response_len` bytes on `queue` as one
    /// chain, publishes it and kicks.
    fn submit(
        &mut self,
        driver: &Driver,
        host: &InlineHost,
        queue: u16,
        request: &[u8],
        response_len: u32,
    ) {
        let slot = self.slot();
        driver.poke(slot, request);
        let (desc, avail, _) = Driver::rings(queue);
        let next = &mut self.next_desc[usize::from(queue)];
        let head = *next;
        let second = (head + 1) % QUEUE_SIZE;
        *next = (head + 2) % QUEUE_SIZE;
        driver.descriptor(
            desc,
            head,
            slot,
            request.len() as u32,
            NEXT | READABLE,
            second,
        );
        driver.descriptor(desc, second, slot + 0x100, response_len, WRITE, 0);
        driver.publish(avail, QUEUE_SIZE, head);
        host.with_worker(queue, |worker| worker.notifier_ready());
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some([features]) = input.take::<1>() else {
        return;
    };
    let host = InlineHost::new();
    let engines: EngineFactory = host.engines();
    let served: Arc<dyn QueueHost> = host.clone();
    let Some(mut driver) = Driver::new(2, 64, Some((served, engines))) else {
        return;
    };
    let mut queues = Queues {
        next_desc: [0; QUEUES as usize],
        next_slot: 0,
        features: [(0, 29), (1, 28), (2, 0), (3, 1)]
            .iter()
            .filter(|(bit, _)| features & (1 << bit) != 0)
            .fold(0, |acc, (_, feature)| acc | 1u64 << feature),
    };
    queues.start(&mut driver);
    while let Some([op]) = input.take::<1>() {
        match op % 10 {
            0 => {
                let Some([selector, lo, hi, len]) = input.take::<4>() else {
                    return;
                };
                let bytes = input.bytes(usize::from(len));
                let base = if selector % 2 == 0 { DATA_BASE } else { HIGH };
                driver.poke(base + u64::from(u16::from_le_bytes([lo, hi])), bytes);
            }
            1 => {
                let Some(d) = input.take::<15>() else {
                    return;
                };
                let queue = u16::from(d[0]) % QUEUES;
                let addr = u64::from(u32::from_le_bytes([d[2], d[3], d[4], d[5]]));
                let len = u32::from_le_bytes([d[6], d[7], d[8], d[9]]);
                let flags = u16::from_le_bytes([d[10], d[11]]);
                let next = u16::from_le_bytes([d[12], d[13]]);
                let (desc, _, _) = Driver::rings(queue);
                driver.descriptor(desc, u16::from(d[1]), addr, len, flags, next);
            }
            2 => {
                let Some([queue, lo, hi]) = input.take::<3>() else {
                    return;
                };
                let (_, avail, _) = Driver::rings(u16::from(queue) % QUEUES);
                driver.publish(avail, QUEUE_SIZE, u16::from_le_bytes([lo, hi]));
            }
            3 => {
                let Some([queue]) = input.take::<1>() else {
                    return;
                };
                host.with_worker(u16::from(queue) % QUEUES, |worker| worker.notifier_ready());
            }
            4 => {
                let Some([count]) = input.take::<1>() else {
                    return;
                };
                host.release.fetch_add(usize::from(count), Ordering::SeqCst);
                for queue in [2, 3, CONTROL] {
                    host.with_worker(queue, |worker| worker.completions_ready());
                }
            }
            5 => {
                driver.set_status(0);
                queues.start(&mut driver);
            }
            6 => {
                let Some([subtype, lun, tag, response_len]) = input.take::<4>() else {
                    return;
                };
                let mut request = 0u32.to_le_bytes().to_vec();
                request.extend_from_slice(&u32::from(subtype % 8).to_le_bytes());
                request.extend_from_slice(&lun_field(lun % 3));
                request.extend_from_slice(&u64::from(tag % 8).to_le_bytes());
                let response_len = u32::from(response_len % 4);
                queues.submit(&driver, &host, CONTROL, &request, response_len);
            }
            7 => {
                let Some([kind, lun, m0, m1, m2, m3]) = input.take::<6>() else {
                    return;
                };
                let mut request = (1 + u32::from(kind % 2)).to_le_bytes().to_vec();
                request.extend_from_slice(&lun_field(lun % 3));
                request.extend_from_slice(&[m0, m1, m2, m3]);
                queues.submit(&driver, &host, CONTROL, &request, 8);
            }
            8 => {
                let Some(d) = input.take::<13>() else {
                    return;
                };
                let queue = 2 + u16::from(d[0] % 2);
                let mut request = lun_field(d[1] % 3).to_vec();
                request.extend_from_slice(&u64::from(d[2] % 8).to_le_bytes());
                request.extend_from_slice(&[0, 0, 0]);
                let mut cdb = [0u8; 32];
                cdb[..10].copy_from_slice(&d[3..13]);
                request.extend_from_slice(&cdb);
                queues.submit(&driver, &host, queue, &request, 108 + 4096);
            }
            _ => {
                let Some([len]) = input.take::<1>() else {
                    return;
                };
                let request = input.bytes(usize::from(len));
                queues.submit(&driver, &host, CONTROL, request, 16);
            }
        }
    }
    driver.set_status(0);
});
