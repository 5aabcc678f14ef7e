//! One request queue driven from its own thread at a fixed depth: every wake-up reaps all
//! completions, checks them, and resubmits as many requests in one batch (one avail-index
//! update, at most one kick).
//!
//! Like fio with registered buffers, each of the `depth` slots owns its guest buffers for the
//! whole run: an indirect table (written once, as Linux's virtio-scsi sends every command
//! through one), the request header, the response and the data. A request then costs the driver
//! a header write and one ring descriptor, so the figures measure the server rather than the
//! driver's allocator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tests::guest_memory::GuestMemory;
use tests::scsi::{self, cdb};
use tests::split_queue::{
    Descriptor, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use tests::{Completion, DriverQueue};

use crate::args::Pattern;
use crate::cpu_time::thread_cpu_time;
use crate::error::BenchError;
use crate::latency::Latencies;

/// Bytes reserved for a slot's indirect table (four descriptors at most).
const TABLE_BYTES: u64 = 64;
/// Alignment of the request header and the response inside a slot's control block.
const CONTROL_ALIGN: u64 = 64;
const DATA_ALIGN: u64 = 4096;

/// When load starts being measured and when it stops.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

/// What the requests look like.
#[derive(Clone, Debug)]
pub struct Workload {
    pub lun: [u8; 8],
    pub pattern: Pattern,
    pub bs: u32,
    pub block_size: u32,
    /// The disk in `bs` units.
    pub slots: u64,
    pub depth: u16,
    /// From the device configuration: the sizes the request header and response must have.
    pub cdb_size: u32,
    pub sense_size: u32,
}

/// What one queue did inside the window.
pub struct QueueOutcome {
    pub queue: DriverQueue,
    pub completed: u64,
    pub latencies: Latencies,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Reaps that returned completions.
    pub wakeups: u64,
    pub driver_cpu: Duration,
}

/// The guest buffers of one in-flight position.
struct Slot {
    /// Start of the control block: the indirect table, then the header and the response.
    table: u64,
    data: u64,
    table_len: u32,
    request: u64,
    response: u64,
}

pub struct QueueJob {
    queue: DriverQueue,
    mem: Arc<GuestMemory>,
    workload: Workload,
    slots: Vec<Slot>,
    free_slots: Vec<usize>,
    /// Slot and submission time of each head in flight.
    issued: Vec<Option<(usize, Instant)>>,
    rng: XorShift,
    /// Next position of a sequential pattern.
    cursor: u64,
    next_tag: u64,
    response_len: usize,
    /// Where each response is read back.
    response: Vec<u8>,
}

impl QueueJob {
    /// `ordinal` is the queue's position among the benchmark's queues: it seeds the random
    /// offsets and spreads sequential streams over the disk.
    pub fn new(
        mut queue: DriverQueue,
        workload: Workload,
        ordinal: u16,
        queues: u16,
    ) -> Result<Self, BenchError> {
        let mem = queue.memory().clone();
        let ring_size = usize::from(queue.ring().size());
        let response_len = scsi::CMD_RESP_HEADER_SIZE + workload.sense_size as usize;
        let mut job = QueueJob {
            queue,
            mem,
            slots: Vec::new(),
            free_slots: Vec::new(),
            issued: vec![None; ring_size],
            rng: XorShift::new(u64::from(ordinal) + 1),
            cursor: workload.slots / u64::from(queues.max(1)) * u64::from(ordinal),
            next_tag: 1,
            response_len,
            response: vec![0; response_len],
            workload,
        };
        for index in 0..usize::from(job.workload.depth) {
            let slot = job.allocate_slot()?;
            job.slots.push(slot);
            job.free_slots.push(index);
        }
        Ok(job)
    }

    /// The virtqueue index.
    pub fn index(&self) -> u16 {
        self.queue.index()
    }

    fn allocate_slot(&self) -> Result<Slot, BenchError> {
        let w = &self.workload;
        let request_len = (scsi::CMD_REQ_HEADER_SIZE + w.cdb_size as usize) as u64;
        let request_offset = TABLE_BYTES;
        let response_offset = request_offset + request_len.next_multiple_of(CONTROL_ALIGN);
        let control_len = response_offset + self.response_len as u64;
        let control = self.mem.alloc(control_len, CONTROL_ALIGN)?;
        let data = self.mem.alloc(u64::from(w.bs), DATA_ALIGN)?;
        let (request, response) = (control + request_offset, control + response_offset);
        // virtio 1.2 §5.6.6: device-readable parts first, then the device-writable ones; the
        // three descriptors of the table link 0 -> 1 -> 2.
        let header = descriptor(request, request_len as u32, 0, Some(1));
        let descriptors = if w.pattern.is_write() {
            let pattern: Vec<u8> = (0..w.bs).map(|i| (i % 251) as u8).collect();
            self.mem.write(data, &pattern)?;
            [
                header,
                descriptor(data, w.bs, 0, Some(2)),
                descriptor(response, self.response_len as u32, VIRTQ_DESC_F_WRITE, None),
            ]
        } else {
            [
                header,
                descriptor(
                    response,
                    self.response_len as u32,
                    VIRTQ_DESC_F_WRITE,
                    Some(2),
                ),
                descriptor(data, w.bs, VIRTQ_DESC_F_WRITE, None),
            ]
        };
        let table: Vec<u8> = descriptors.iter().flat_map(|d| d.to_bytes()).collect();
        self.mem.write(control, &table)?;
        Ok(Slot {
            table: control,
            data,
            table_len: table.len() as u32,
            request,
            response,
        })
    }

    pub fn run(mut self, window: Window) -> Result<QueueOutcome, BenchError> {
        let mut counters = Counters::new(window.end.saturating_duration_since(window.start));
        self.submit_free_slots()?;
        let mut cpu_at_start = None;
        loop {
            let completions = self.queue.reap()?;
            let now = Instant::now();
            let measuring = now >= window.start && now < window.end;
            if measuring && cpu_at_start.is_none() {
                cpu_at_start = Some(thread_cpu_time());
            }
            for (head, completion) in completions {
                let issued = self.complete(head, &completion, &mut counters)?;
                if measuring {
                    counters.completed += 1;
                    counters.latencies.record(now - issued);
                }
            }
            if measuring {
                counters.wakeups += 1;
            }
            if now >= window.end {
                break;
            }
            self.submit_free_slots()?;
        }
        let driver_cpu = cpu_at_start.map_or(Duration::ZERO, |at| thread_cpu_time() - at);
        while self.free_slots.len() < self.slots.len() {
            for (head, completion) in self.queue.reap()? {
                self.complete(head, &completion, &mut counters)?;
            }
        }
        for slot in &self.slots {
            self.mem.free(slot.table)?;
            self.mem.free(slot.data)?;
        }
        Ok(QueueOutcome {
            queue: self.queue,
            completed: counters.completed,
            latencies: counters.latencies,
            errors: counters.errors,
            first_error: counters.first_error,
            wakeups: counters.wakeups,
            driver_cpu,
        })
    }

    /// Checks a completion and frees its slot; returns when the request was submitted.
    fn complete(
        &mut self,
        head: u16,
        completion: &Completion,
        counters: &mut Counters,
    ) -> Result<Instant, BenchError> {
        let (slot, issued) = self
            .issued
            .get_mut(usize::from(head))
            .and_then(Option::take)
            .ok_or(BenchError::UnknownHead {
                queue: self.queue.index(),
                head,
            })?;
        self.free_slots.push(slot);
        if let Completion::Scsi(result) = completion {
            // Only our own raw chains are in flight on this queue.
            counters.fail(format!("a driver-built command completed: {result:?}"));
            return Ok(issued);
        }
        self.mem
            .read(self.slots[slot].response, &mut self.response)?;
        let r = scsi::decode_cmd_resp(&self.response)?;
        if r.response != scsi::VIRTIO_SCSI_S_OK || r.status != scsi::SAM_STAT_GOOD {
            counters.fail(format!(
                "response {} status {:#04x} sense {:?}",
                r.response,
                r.status,
                scsi::sense_key_asc_ascq(&r.sense)
            ));
        } else if r.resid != 0 {
            counters.fail(format!(
                "GOOD but residual {} of {} bytes",
                r.resid, self.workload.bs
            ));
        }
        Ok(issued)
    }

    /// Puts every free slot back in flight with one avail-index update and at most one kick.
    fn submit_free_slots(&mut self) -> Result<(), BenchError> {
        if self.free_slots.is_empty() {
            return Ok(());
        }
        let mut heads = Vec::with_capacity(self.free_slots.len());
        let issued = Instant::now();
        while let Some(slot) = self.free_slots.pop() {
            let command = self.next_cdb();
            let tag = self.next_tag;
            self.next_tag += 1;
            let header = scsi::encode_cmd_req(
                self.workload.lun,
                tag,
                &command,
                self.workload.cdb_size as usize,
            )?;
            let s = &self.slots[slot];
            self.mem.write(s.request, &header)?;
            let ring = self.queue.ring();
            let head = ring.reserve(1)?[0];
            ring.write_descriptor(
                head,
                Descriptor {
                    addr: s.table,
                    len: s.table_len,
                    flags: VIRTQ_DESC_F_INDIRECT,
                    next: 0,
                },
            )?;
            let entry = self
                .issued
                .get_mut(usize::from(head))
                .ok_or(BenchError::UnknownHead {
                    queue: self.queue.index(),
                    head,
                })?;
            *entry = Some((slot, issued));
            heads.push(head);
        }
        if self.queue.ring().publish_many(&heads)? {
            self.queue.kick()?;
        }
        Ok(())
    }

    fn next_cdb(&mut self) -> Vec<u8> {
        let w = &self.workload;
        let position = if w.pattern.is_random() {
            self.rng.next() % w.slots
        } else {
            let position = self.cursor % w.slots;
            self.cursor = self.cursor.wrapping_add(1);
            position
        };
        let blocks = w.bs / w.block_size;
        let opcode = if w.pattern.is_write() {
            cdb::WRITE_16
        } else {
            cdb::READ_16
        };
        cdb::lba16(opcode, 0, position * u64::from(blocks), blocks)
    }
}

/// A descriptor of an indirect table, linked to `next` when there is one.
fn descriptor(addr: u64, len: u32, flags: u16, next: Option<u16>) -> Descriptor {
    Descriptor {
        addr,
        len,
        flags: flags | next.map_or(0, |_| VIRTQ_DESC_F_NEXT),
        next: next.unwrap_or(0),
    }
}

struct Counters {
    completed: u64,
    latencies: Latencies,
    errors: u64,
    first_error: Option<String>,
    wakeups: u64,
}

impl Counters {
    fn new(window: Duration) -> Self {
        // Room for about half a million requests a second without regrowing.
        let expected = (window.as_secs_f64() * 500_000.0) as usize;
        Counters {
            completed: 0,
            latencies: Latencies::with_capacity(expected.min(16 << 20)),
            errors: 0,
            first_error: None,
            wakeups: 0,
        }
    }

    /// Counts a failed request, keeping the first description.
    fn fail(&mut self, problem: String) {
        self.errors += 1;
        self.first_error.get_or_insert(problem);
    }
}

/// xorshift64*: fast, and good enough to scatter offsets.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
