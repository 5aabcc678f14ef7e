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

use tests::guest_memory::DriverMemory;
use tests::scsi::{self, cdb};
use tests::split_queue::{
    Descriptor, UsedElement, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use tests::DriverQueue;

use crate::args::Pattern;
use crate::cpu_time::thread_cpu_time;
use crate::error::BenchError;
use crate::latency::{Latencies, PassTimes};

/// Bytes reserved for a slot's indirect table (four descriptors at most).
const TABLE_BYTES: u64 = 64;
/// Alignment of a slot's control block: the request header and the response, back to back as
/// in Linux's `struct virtio_scsi_cmd`, so that with a 32-byte CDB the bytes the driver writes
/// per request (tag, LBA, poisoned response header) and the response header the device writes
/// share one cache line; the indirect table, written once, follows.
const CONTROL_ALIGN: u64 = 64;
/// The response's fields are 32-bit.
const RESPONSE_ALIGN: u64 = 4;
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
    /// Inside the window, the driver's own work: its time less its waits for completions and
    /// its kicks (see `QueueJob::busy`).
    pub driver_busy: Duration,
    /// The driver's work per request, pass by pass.
    pub passes: PassTimes,
}

/// The guest buffers of one in-flight position.
struct Slot {
    /// Start of the control block: the request header, the response, then the indirect table.
    control: u64,
    table: u64,
    data: u64,
    table_len: u32,
    request: u64,
    response: u64,
}

pub struct QueueJob {
    queue: DriverQueue,
    mem: Arc<DriverMemory>,
    workload: Workload,
    slots: Vec<Slot>,
    free_slots: Vec<usize>,
    /// Slot and submission time of each head in flight.
    issued: Vec<Option<(usize, Instant)>>,
    /// The slot whose table each ring descriptor points to now. Free lists of slots and of
    /// descriptors are both last-in first-out, so a slot mostly gets the same descriptor back
    /// and the descriptor need not be written again (nor its cache line taken from the device).
    descriptor_slot: Vec<Option<usize>>,
    rng: XorShift,
    /// Next position of a sequential pattern.
    cursor: u64,
    next_tag: u64,
    response_len: usize,
    /// Heads of the batch being submitted, and the used elements being reaped.
    heads: Vec<u16>,
    used: Vec<UsedElement>,
}

/// Where a request's tag and its CDB's LBA sit in `virtio_scsi_cmd_req`: the only bytes that
/// change from one request of a slot to the next.
const TAG_OFFSET: u64 = 8;
const LBA_OFFSET: u64 = scsi::CMD_REQ_HEADER_SIZE as u64 + 2;
/// Written over a response before its request goes out, so that a response the device did not
/// write can never pass for GOOD: 0xff is neither a virtio-scsi response nor a SCSI status.
const UNANSWERED: [u8; scsi::CMD_RESP_HEADER_SIZE] = [0xff; scsi::CMD_RESP_HEADER_SIZE];

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
        let depth = usize::from(workload.depth);
        let mut job = QueueJob {
            queue,
            mem,
            slots: Vec::with_capacity(depth),
            free_slots: Vec::with_capacity(depth),
            issued: vec![None; ring_size],
            descriptor_slot: vec![None; ring_size],
            rng: XorShift::new(u64::from(ordinal) + 1),
            cursor: workload.slots / u64::from(queues.max(1)) * u64::from(ordinal),
            next_tag: 1,
            response_len,
            heads: Vec::with_capacity(ring_size),
            used: Vec::with_capacity(ring_size),
            workload,
        };
        for index in 0..depth {
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

    /// Lays out a slot's buffers and writes everything in them that stays the same from one
    /// request to the next: the indirect table, and the request header but its tag and LBA.
    fn allocate_slot(&self) -> Result<Slot, BenchError> {
        let w = &self.workload;
        let request_len = (scsi::CMD_REQ_HEADER_SIZE + w.cdb_size as usize) as u64;
        let response_offset = request_len.next_multiple_of(RESPONSE_ALIGN);
        let table_offset = (response_offset + self.response_len as u64).next_multiple_of(16);
        let control = self.mem.alloc(table_offset + TABLE_BYTES, CONTROL_ALIGN)?;
        let data = self.mem.alloc(u64::from(w.bs), DATA_ALIGN)?;
        let (request, response) = (control, control + response_offset);
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
        self.mem.write(control + table_offset, &table)?;
        let opcode = if w.pattern.is_write() {
            cdb::WRITE_16
        } else {
            cdb::READ_16
        };
        let command = cdb::lba16(opcode, 0, 0, w.bs / w.block_size);
        let header = scsi::encode_cmd_req(w.lun, 0, &command, w.cdb_size as usize)?;
        self.mem.write(request, &header)?;
        Ok(Slot {
            control,
            table: control + table_offset,
            data,
            table_len: table.len() as u32,
            request,
            response,
        })
    }

    pub fn run(mut self, window: Window) -> Result<QueueOutcome, BenchError> {
        let mut counters = Counters::new(window.end.saturating_duration_since(window.start));
        self.submit_free_slots()?;
        // The first pass inside the window: its clock and the thread's CPU time.
        let mut measured_from = None;
        let mut measured_to = window.start;
        // The previous pass: when it had its completions, how many, and how long it kicked.
        let mut previous: Option<(Instant, usize, Duration)> = None;
        loop {
            let waited = self.queue.reap_raw(&mut self.used, usize::MAX)?;
            let now = Instant::now();
            let measuring = now >= window.start && now < window.end;
            if measuring {
                match measured_from {
                    None => measured_from = Some((now, thread_cpu_time())),
                    Some(_) => counters.waited += waited,
                }
                if let Some((then, requests, kicking)) = previous {
                    let work = now
                        .saturating_duration_since(then)
                        .saturating_sub(waited)
                        .saturating_sub(kicking);
                    counters.passes.record(work, requests);
                }
                measured_to = now;
                counters.wakeups += 1;
            }
            // Requests submitted in one batch share their submission time, and so their latency.
            let mut last_latency: Option<(Instant, Duration)> = None;
            for index in 0..self.used.len() {
                let head = self.used[index].id;
                let issued = self.complete(head, &mut counters)?;
                if measuring {
                    let latency = match last_latency {
                        Some((at, latency)) if at == issued => latency,
                        _ => now.saturating_duration_since(issued),
                    };
                    last_latency = Some((issued, latency));
                    counters.completed += 1;
                    counters.latencies.record(latency);
                }
            }
            if now >= window.end {
                break;
            }
            let kicking = self.submit_free_slots()?;
            if measuring {
                counters.kicking += kicking;
            }
            previous = Some((now, self.used.len(), kicking));
        }
        let (driver_cpu, driver_busy) = match measured_from {
            Some((at, cpu)) => {
                let cpu = thread_cpu_time().saturating_sub(cpu);
                let span = measured_to.saturating_duration_since(at);
                (cpu, Self::busy(span, &counters))
            }
            None => (Duration::ZERO, Duration::ZERO),
        };
        while self.free_slots.len() < self.slots.len() {
            self.queue.reap_raw(&mut self.used, usize::MAX)?;
            for index in 0..self.used.len() {
                let head = self.used[index].id;
                self.complete(head, &mut counters)?;
            }
        }
        for slot in &self.slots {
            self.mem.free(slot.control)?;
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
            driver_busy,
            passes: counters.passes,
        })
    }

    /// The driver's own work over a `span` of wall time: the span less its waits for
    /// completions and its kicks (a kick wakes the server's thread, which may take the driver's
    /// core at once). Preemption stretches it on a busy machine, which the median pass does not
    /// see (`PassTimes`).
    fn busy(span: Duration, counters: &Counters) -> Duration {
        span.saturating_sub(counters.waited)
            .saturating_sub(counters.kicking)
    }

    /// Checks a completion's response and frees its slot; returns when the request was
    /// submitted. Only the response header is read unless it reports a failure.
    fn complete(&mut self, id: u32, counters: &mut Counters) -> Result<Instant, BenchError> {
        let unknown = || BenchError::UnknownHead {
            queue: self.queue.index(),
            id,
        };
        let (slot, issued) = usize::try_from(id)
            .ok()
            .and_then(|head| self.issued.get_mut(head))
            .and_then(Option::take)
            .ok_or_else(unknown)?;
        self.free_slots.push(slot);
        let mut header = [0u8; scsi::CMD_RESP_HEADER_SIZE];
        self.mem.read(self.slots[slot].response, &mut header)?;
        // virtio_scsi_cmd_resp: sense_len, resid, status_qualifier, status, response.
        let resid = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let (status, response) = (header[10], header[11]);
        if response != scsi::VIRTIO_SCSI_S_OK || status != scsi::SAM_STAT_GOOD {
            let whole = self
                .mem
                .read_vec(self.slots[slot].response, self.response_len)?;
            let r = scsi::decode_cmd_resp(&whole)?;
            counters.fail(format!(
                "response {:#04x} status {:#04x} sense {:?}",
                r.response,
                r.status,
                scsi::sense_key_asc_ascq(&r.sense)
            ));
        } else if resid != 0 {
            counters.fail(format!(
                "GOOD but residual {resid} of {} bytes",
                self.workload.bs
            ));
        }
        Ok(issued)
    }

    /// Puts every free slot back in flight with one avail-index update and at most one kick.
    /// Per request: the tag, the LBA, the poisoned response header and one ring descriptor.
    /// Returns how long the kick took (the clock is read only around a kick).
    fn submit_free_slots(&mut self) -> Result<Duration, BenchError> {
        if self.free_slots.is_empty() {
            return Ok(Duration::ZERO);
        }
        self.heads.clear();
        let issued = Instant::now();
        while let Some(slot) = self.free_slots.pop() {
            let lba = self.next_lba();
            let tag = self.next_tag;
            self.next_tag += 1;
            let s = &self.slots[slot];
            self.mem.write(s.request + TAG_OFFSET, &tag.to_le_bytes())?;
            self.mem.write(s.request + LBA_OFFSET, &lba.to_be_bytes())?;
            self.mem.write(s.response, &UNANSWERED)?;
            let ring = self.queue.ring();
            let head = ring.reserve_head()?;
            let (Some(entry), Some(pointed)) = (
                self.issued.get_mut(usize::from(head)),
                self.descriptor_slot.get_mut(usize::from(head)),
            ) else {
                return Err(BenchError::UnknownHead {
                    queue: self.queue.index(),
                    id: u32::from(head),
                });
            };
            if *pointed != Some(slot) {
                ring.write_descriptor(
                    head,
                    Descriptor {
                        addr: s.table,
                        len: s.table_len,
                        flags: VIRTQ_DESC_F_INDIRECT,
                        next: 0,
                    },
                )?;
                *pointed = Some(slot);
            }
            *entry = Some((slot, issued));
            self.heads.push(head);
        }
        if !self.queue.ring().publish_many(&self.heads)? {
            return Ok(Duration::ZERO);
        }
        let kicked = Instant::now();
        self.queue.kick()?;
        Ok(kicked.elapsed())
    }

    /// The first block of the next request.
    fn next_lba(&mut self) -> u64 {
        let w = &self.workload;
        let position = if w.pattern.is_random() {
            self.rng.next() % w.slots
        } else {
            let position = self.cursor % w.slots;
            self.cursor = self.cursor.wrapping_add(1);
            position
        };
        position * u64::from(w.bs / w.block_size)
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
    /// Time spent looking at an empty used ring (or asleep on the interrupt) inside the window.
    waited: Duration,
    /// Time spent kicking inside the window.
    kicking: Duration,
    passes: PassTimes,
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
            waited: Duration::ZERO,
            kicking: Duration::ZERO,
            passes: PassTimes::with_capacity(expected.min(16 << 20) / 4),
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
