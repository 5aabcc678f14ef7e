//! The worker serving one request queue: it parses command requests, runs them against the
//! snapshot of the SCSI target's LUNs, hands disk work to its I/O engine with iovecs straight
//! into guest memory, and writes responses when the engine completes.
//!
//! A worker owns everything it writes per request; the LUN snapshot it only reads (see
//! `scsi_disk::LunTable`), so it can be moved to the iothread that serves its queue.
//!
//! When a disk's error policy says stop, the failing command is held instead of answered, the
//! disk stops, and its later commands are held too; once the operator resumes the disk, the
//! held commands run again from the start, in the order they came. Removing the LUN answers
//! them as aborted instead: they were never acknowledged.

use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use block::{Completion, Disk, Engine, ErrorAction, IoBuffers, IoRequest, Submitted};
use slog::{debug, trace, warn, Drain, Logger};
use virtio_bindings::virtio_scsi::{
    VIRTIO_SCSI_CDB_DEFAULT_SIZE, VIRTIO_SCSI_S_ABORTED, VIRTIO_SCSI_S_BAD_TARGET,
    VIRTIO_SCSI_S_FAILURE, VIRTIO_SCSI_S_OK, VIRTIO_SCSI_S_OVERRUN,
};
use vmm_sys_util::eventfd::EventFd;

use super::backend_errors;
use super::config::HeaderSizes;
use super::disk_io::{error_sense, Direction, PendingIo};
use super::kick_batching::KickBatching;
use super::lun_address;
use super::lun_counters::LunQueueCounters;
use super::lun_data::{LunData, LunGuard, LunTable};
use super::memory_leases::{MemoryLease, MemoryLeases};
use super::queue_counters::LatencyBucket;
use super::task_set::TaskSet;
use super::virtqueue::{CachedMemory, Chain, ChainBuffers, IoVecs, MemorySnapshot, Virtqueue};
use super::wire_format::{
    CmdRequestHeader, CmdResponseHeader, CMD_REQ_HEADER_SIZE, CMD_RESP_HEADER_SIZE, MAX_CDB_KEPT,
};
use super::FIRST_REQUEST_QUEUE;
use crate::queue_worker::QueueWorker;
use scsi_disk::{data_out_use, DataOutUse, DiskIo, Lun, Outcome, Sense, FIXED_SENSE_LEN};

/// SCSI status codes (SAM-5).
const STATUS_GOOD: u8 = 0x00;
const STATUS_CHECK_CONDITION: u8 = 0x02;
/// A request header with a CDB field of the default size.
const DEFAULT_REQUEST_BYTES: usize = CMD_REQ_HEADER_SIZE + VIRTIO_SCSI_CDB_DEFAULT_SIZE as usize;
/// The longest a pass's interrupt waits for later looks (ns): the bound on what deferring
/// adds to a request's latency.
const MAX_INTERRUPT_DELAY_NS: u64 = 500_000;

/// A command from the pop of its chain to its answer. It stays in the slot it got at the pop
/// (the record is a few hundred bytes, and moving it showed in profiles): the worker reaches it
/// by slot number, which is also its engine user_data and its place in the task set. A free
/// slot keeps the last command's record, overwritten field by field by the next one. Records
/// start 128-byte blocks (two cache lines, which the adjacent-line prefetcher moves together),
/// so that the queue's record array shares no line with what the heap put beside it, maybe
/// another queue's.
#[derive(Default)]
#[repr(align(128))]
struct CommandSlot {
    reply: Reply,
    io: DiskWork,
}

/// A slot's iovecs, on 128-byte blocks of their own as the records are (written at every read
/// and write, they share no line with what the heap put beside the array).
#[derive(Default)]
#[repr(align(128))]
struct SlotIovecs(IoVecs);

/// A command's disk work, set afresh each time the command goes to the engine.
struct DiskWork {
    /// Keeps the guest memory its iovecs point into mapped.
    memory_lease: Option<MemoryLease>,
    /// The disk, kept only by commands done in several steps (VERIFY, WRITE SAME with a
    /// pattern): for a single step the engine keeps it while it holds the request, so that
    /// the common command touches no reference count shared with other queues.
    disk: Option<Arc<Disk>>,
    direction: Direction,
    /// Bytes the command moves through the driver's buffers (READ/WRITE only).
    transfer_len: u64,
    /// Whether the moved bytes are data-in (counted in the used length).
    data_in: bool,
    /// What is left to submit of a command of several requests or steps; None for a command
    /// of one request, handed to the engine at once.
    pending: Option<PendingIo>,
    outstanding: usize,
    moved: u64,
    error: Option<i32>,
}

impl Default for DiskWork {
    fn default() -> DiskWork {
        DiskWork {
            memory_lease: None,
            disk: None,
            direction: Direction::FromDisk,
            transfer_len: 0,
            data_in: false,
            pending: None,
            outstanding: 0,
            moved: 0,
            error: None,
        }
    }
}

impl DiskWork {
    /// Starts afresh for a command moving `transfer_len` bytes, data-in if `data_in` (the last
    /// command's work ended when it was settled).
    fn start(&mut self, direction: Direction, transfer_len: u64, data_in: bool) {
        self.memory_lease = None;
        self.direction = direction;
        self.transfer_len = transfer_len;
        self.data_in = data_in;
        self.outstanding = 0;
        self.moved = 0;
        self.error = None;
    }

    /// Counts the result of one of its requests.
    fn record(&mut self, result: Result<u64, i32>) {
        match result {
            Ok(bytes) => self.moved += bytes,
            Err(errno) => {
                self.error.get_or_insert(errno);
            }
        }
    }

    /// Lets go of what the work kept (its disk, a pattern buffer) once the engine is done.
    #[inline(always)]
    fn end(&mut self) {
        self.disk = None;
        // Tested first: dropping in place is a call, and most commands kept nothing here.
        if self.pending.is_some() {
            self.pending = None;
        }
    }
}

/// A command waiting, in its slot, for its stopped disk to resume; it keeps the slot, so that
/// task management and shutdown see it.
struct Held {
    slot: usize,
    disk: HeldOn,
}

/// Counts a held command on its disk for as long as it is held.
struct HeldOn(Arc<Disk>);

impl HeldOn {
    fn new(disk: Arc<Disk>) -> HeldOn {
        disk.io_status().hold();
        HeldOn(disk)
    }
}

impl Drop for HeldOn {
    fn drop(&mut self) {
        self.0.io_status().released();
    }
}

/// Where and how a command's response goes.
#[derive(Default)]
struct Reply {
    head: u16,
    buffers: ChainBuffers,
    /// The response header plus the sense field (sense_size when the request was parsed).
    resp_size: u64,
    sense_size: u64,
    /// The driver's data-in or data-out buffer size, for the residual.
    data_len: u64,
    /// Data-out bytes handed to the target as parameter data.
    parameters_len: u64,
    lun: u16,
    tag: u64,
    opcode: u8,
    /// When the pass that popped the chain began (the worker's clock).
    started: u64,
}

/// What to write into a response.
struct Answer<'a> {
    response: u32,
    status: u8,
    sense: Option<Sense>,
    resid: u64,
    data_in: &'a [u8],
    /// Data-in bytes already in the buffers (written by the engine).
    data_in_moved: u64,
}

impl Answer<'_> {
    fn transport(response: u32, resid: u64) -> Answer<'static> {
        Answer {
            response,
            status: STATUS_GOOD,
            sense: None,
            resid,
            data_in: &[],
            data_in_moved: 0,
        }
    }

    fn check_condition(sense: Sense, resid: u64) -> Answer<'static> {
        Answer {
            response: VIRTIO_SCSI_S_OK,
            status: STATUS_CHECK_CONDITION,
            sense: Some(sense),
            resid,
            data_in: &[],
            data_in_moved: 0,
        }
    }
}

/// On 128-byte blocks of its own, as its records: a queue's thread writes it at every command.
#[repr(align(128))]
pub struct RequestQueueWorker {
    queue: Virtqueue,
    luns: Arc<LunTable>,
    sizes: Arc<HeaderSizes>,
    engine: Box<dyn Engine>,
    /// Keeps the guest memory of the requests in flight mapped; declared after the engine,
    /// which is dropped first and waits for its requests.
    memory_leases: MemoryLeases,
    /// Commands from pop to answer, by slot; sized to the queue, plus the spare, at creation
    /// so that the steady state allocates nothing.
    in_flight: Vec<CommandSlot>,
    /// The iovecs of each slot's read or write, built in place and handed to the engine by
    /// address, so that the request moved on the way to the kernel is a few words. They are
    /// apart from the records, which the worker borrows whole while the engine (maybe on
    /// another thread) reads them, and stay as they are until the next command in the slot,
    /// after this one's completion: never resized, and declared after the engine.
    iovecs: Vec<SlotIovecs>,
    /// Free slots, the spare not among them.
    free_slots: Vec<usize>,
    /// The last slot: it takes a chain popped while every other slot is taken (only a driver
    /// that made the same head available twice gets there). Its command may be answered at
    /// once, but neither goes to the engine nor is held.
    spare: usize,
    /// Where commands in flight are visible to task management: in table `task_queue`, slot
    /// for slot as in `in_flight`.
    tasks: Arc<TaskSet>,
    task_queue: usize,
    /// Whether commands left the task set in this pass.
    tasks_left: bool,
    completions: Vec<Completion>,
    /// Requests that failed inside the engine's `submit`, reaped as its completions are.
    failed_in_submit: Vec<Completion>,
    /// Slots of the commands that completions answered, until the task set hears.
    leaving: Vec<usize>,
    /// Chains popped in the current pass (kept for its capacity).
    popped: Vec<Chain>,
    /// Commands held for stopped disks, oldest first.
    held: VecDeque<Held>,
    /// The clock of the latency histogram, in nanoseconds since `epoch`: read once per pass
    /// (and again when completions arrive), not per request.
    clock: u64,
    epoch: Instant,
    /// The request header and CDB of the command being parsed, read in one piece (kept here,
    /// not zeroed on the stack per command).
    request_bytes: [u8; CMD_REQ_HEADER_SIZE + MAX_CDB_KEPT],
    /// Whether the logger takes trace records, asked once per pass (the level may change
    /// while the server runs), so that a request pays one test, not a record, when it does not.
    tracing: bool,
    /// How far ahead the driver's next kick is asked for.
    batching: KickBatching,
    /// Whether the current pass popped chains.
    found_chains: bool,
    /// The clock when the first pass that left its interrupt to a later look ended.
    interrupt_owed_since: Option<u64>,
}

impl RequestQueueWorker {
    pub fn new(
        queue: Virtqueue,
        luns: Arc<LunTable>,
        sizes: Arc<HeaderSizes>,
        engine: Box<dyn Engine>,
        tasks: Arc<TaskSet>,
    ) -> RequestQueueWorker {
        let task_queue = usize::from(queue.index() - FIRST_REQUEST_QUEUE);
        queue.counters().count_kicks_in(queue.notifier());
        let slots = tasks.capacity(task_queue);
        let batching = KickBatching::new(queue.size());
        RequestQueueWorker {
            queue,
            luns,
            sizes,
            engine,
            memory_leases: MemoryLeases::default(),
            in_flight: (0..=slots).map(|_| CommandSlot::default()).collect(),
            iovecs: (0..=slots).map(|_| SlotIovecs::default()).collect(),
            free_slots: (0..slots).rev().collect(),
            spare: slots,
            tasks,
            task_queue,
            tasks_left: false,
            completions: Vec::with_capacity(slots),
            failed_in_submit: Vec::with_capacity(slots),
            leaving: Vec::with_capacity(slots),
            popped: Vec::with_capacity(slots),
            held: VecDeque::new(),
            clock: 0,
            epoch: Instant::now(),
            request_bytes: [0; CMD_REQ_HEADER_SIZE + MAX_CDB_KEPT],
            tracing: false,
            batching,
            found_chains: false,
            interrupt_owed_since: None,
        }
    }

    /// Reads the clock of the latency histogram, and whether requests are traced.
    fn tick(&mut self) {
        self.clock = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.tracing = self.queue.logger().is_trace_enabled();
    }

    /// The driver kicked: serve the available chains, then interrupt once if needed.
    ///
    /// A driver that keeps sending keeps the pass going, but only for about a ring's worth of
    /// chains (whole rounds: what one look found is always served): the thread owes its other
    /// queues, its control messages and this queue's interrupt a turn. A pass that stops with
    /// chains left asks its host for a look at once (`KickBatching::pass_ended`), with
    /// notifications left off, as they are while the driver keeps sending.
    pub fn serve_available(&mut self) {
        self.tick();
        let snapshot = self.queue.snapshot();
        let mem = CachedMemory::new(&snapshot);
        self.serve_held(&mem, &snapshot);
        let mut first = true;
        let mut started = 0;
        let chains_left = loop {
            started += self.start_available(&mem, &snapshot);
            self.engine.submit_pending();
            // Commands the engine finished inside `submit` left nothing to reap.
            if self.in_flight_count() > 0 {
                self.reap(&mem);
            }
            // A driver that keeps sending sees each round's answers.
            self.queue.publish_used(&mem);
            // Notifications are asked for again only once the ring is empty, as QEMU's
            // virtqueues do: a driver that keeps chains coming would otherwise pass each
            // `avail_event` moved at every look, and kick for it.
            if self.queue.has_available(&mem) {
                if started >= usize::from(self.queue.size()) {
                    break true;
                }
                continue;
            }
            let in_flight = self.in_flight_count();
            let ahead = if std::mem::take(&mut first) {
                self.batching.rearm(self.clock, in_flight)
            } else {
                self.batching.rearm_within_pass(in_flight)
            };
            // Chains already there are served now, even short of the batch the kick was asked
            // for: only those still to come are left to the kick or the re-check.
            if !self.queue.kick_at_batch(&mem, ahead) && !self.queue.has_available(&mem) {
                break false;
            }
            if started >= usize::from(self.queue.size()) {
                break true;
            }
        };
        self.batching.pass_ended(chains_left);
        self.end_pass(&mem);
    }

    /// Starts every chain the driver made available; returns how many there were.
    fn start_available(&mut self, mem: &CachedMemory<'_>, snapshot: &MemorySnapshot) -> usize {
        let mut chains = std::mem::take(&mut self.popped);
        self.queue.pop_all_into(mem, &mut chains);
        let count = chains.len();
        if count > 0 {
            self.found_chains = true;
            let with_device = chains.len() + self.in_flight_count();
            let held = self.queue.driver_holds(mem).map_or(0, usize::from);
            self.batching.popped(chains.len(), with_device.max(held));
        }
        let mut luns = self.luns.load();
        for chain in chains.drain(..) {
            self.luns.refresh(&mut luns);
            self.start(chain, mem, snapshot, &luns);
        }
        self.popped = chains;
        count
    }

    /// Shows the driver the pass's answers, with one interrupt if it wants one, and has one
    /// word to a TMF waiting for commands that left.
    fn end_pass(&mut self, mem: &CachedMemory<'_>) {
        self.queue.publish_used(mem);
        let found = std::mem::take(&mut self.found_chains);
        if !self.defers_interrupt(mem, found) {
            self.interrupt_owed_since = None;
            self.queue.interrupt_if_wanted(mem);
        }
        if std::mem::take(&mut self.tasks_left) {
            self.tasks.tell_waiters();
        }
        self.queue.counters().set_in_flight(self.in_flight_count());
    }

    /// Whether a pass that returned chains leaves its interrupt to the queue's next look: under
    /// TCG the guest pays for each interrupt, and a busy driver that can still send as many
    /// again reads more answers per interrupt. Only a pass that found new chains defers (the
    /// driver is still sending, not waiting for us), and not for longer than
    /// `MAX_INTERRUPT_DELAY_NS` in all.
    fn defers_interrupt(&mut self, mem: &CachedMemory<'_>, found: bool) -> bool {
        if !found || !self.queue.returned() {
            return false;
        }
        let Some(holds) = self.queue.driver_holds(mem) else {
            return false;
        };
        let since = *self.interrupt_owed_since.get_or_insert(self.clock);
        if self.clock.saturating_sub(since) >= MAX_INTERRUPT_DELAY_NS
            || !self.batching.may_defer_interrupt(usize::from(holds))
        {
            return false;
        }
        self.queue.counters().interrupt_deferred();
        true
    }

    /// Commands with the engine (held ones are not); between passes, every other slot but the
    /// spare is free.
    fn in_flight_count(&self) -> usize {
        self.spare - self.free_slots.len() - self.held.len()
    }

    /// The command in `slot` left the task set (its TMF waiters hear at the end of the pass),
    /// after the used idx shows the driver its answer, if it got one: a TMF that no longer
    /// sees the command may answer at once.
    fn task_left(&mut self, slot: usize, mem: &CachedMemory<'_>) {
        self.queue.publish_used(mem);
        self.tasks.finished(self.task_queue, slot);
        self.tasks_left = true;
    }

    /// `task_left` for the commands completions answered, after one publication of the used idx
    /// for them all.
    fn leave_task_set(&mut self, mem: &CachedMemory<'_>) {
        if self.leaving.is_empty() {
            return;
        }
        self.queue.publish_used(mem);
        for slot in self.leaving.drain(..) {
            self.tasks.finished(self.task_queue, slot);
        }
        self.tasks_left = true;
    }

    /// The command in `slot`.
    fn command(&self, slot: usize) -> Option<&CommandSlot> {
        self.in_flight.get(slot)
    }

    /// Resubmits the held commands whose disk runs again, oldest first, and answers as
    /// aborted those that a waiting TMF names or whose LUN was removed (as QEMU cancels the
    /// requests of a SCSI device it unplugs); true when any left the hold.
    fn serve_held(&mut self, mem: &CachedMemory<'_>, snapshot: &MemorySnapshot) -> bool {
        if self.held.is_empty() {
            return false;
        }
        let mut served = false;
        let mut luns = self.luns.load();
        // Rotates in place: a command held again while this runs goes behind the older ones.
        for _ in 0..self.held.len() {
            let Some(Held { slot, disk }) = self.held.pop_front() else {
                break;
            };
            let Some((lun, tag)) = self.command(slot).map(|c| (c.reply.lun, c.reply.tag)) else {
                continue;
            };
            self.luns.refresh(&mut luns);
            if removed_from(&luns, lun, &disk.0) || self.tasks.aborting(lun, tag) {
                drop(disk);
                self.abort_held(slot, mem, &luns);
            } else if disk.0.io_status().is_stopped() {
                self.held.push_back(Held { slot, disk });
                continue;
            } else {
                drop(disk);
                self.task_left(slot, mem);
                self.run(slot, mem, snapshot, &luns);
            }
            served = true;
        }
        if served {
            self.engine.submit_pending();
        }
        served
    }

    /// Answers the held command in `slot` as aborted.
    fn abort_held(&mut self, slot: usize, mem: &CachedMemory<'_>, luns: &LunGuard) {
        let Some(reply) = self.command(slot).map(|command| &command.reply) else {
            return;
        };
        debug!(self.queue.logger(), "held command aborted"; "lun" => reply.lun, "tag" => reply.tag);
        let answer = Answer::transport(VIRTIO_SCSI_S_ABORTED, reply.data_len);
        let lun = luns.data(reply.lun);
        self.finish(slot, mem, answer, lun);
        self.task_left(slot, mem);
    }

    /// Holds the command in `slot` until its disk resumes; `errno` is the failure that stops
    /// the disk, None for a command that came while it was stopped. A command that a waiting
    /// TMF already names is answered as aborted instead.
    fn hold(&mut self, slot: usize, mem: &CachedMemory<'_>, disk: Arc<Disk>, errno: Option<i32>) {
        let Some((lun, tag, opcode)) = self
            .command(slot)
            .map(|command| (command.reply.lun, command.reply.tag, command.reply.opcode))
        else {
            return;
        };
        if let Some(errno) = errno {
            let newly_stopped = disk.io_status().stop(errno);
            let error = std::io::Error::from_raw_os_error(errno);
            let policy = disk.error_policy();
            if newly_stopped {
                warn!(self.queue.logger(), "lun stopped by its error policy";
                    "lun" => lun, "tag" => tag, "opcode" => opcode,
                    "errno" => errno, "error" => %error,
                    "werror" => ?policy.write, "rerror" => ?policy.read,
                    "held" => disk.io_status().held() + 1);
            } else {
                debug!(self.queue.logger(), "command failed on a stopped lun";
                    "lun" => lun, "tag" => tag, "errno" => errno);
            }
        }
        self.tasks.started(self.task_queue, slot, lun, tag);
        self.tasks.add_holder(self.queue.notifier());
        // Checked once this queue is a holder: a removal published before the load aborts the
        // command here, one published after it wakes this queue to abort it.
        let luns = self.luns.load();
        if removed_from(&luns, lun, &disk) || self.tasks.aborting(lun, tag) {
            return self.abort_held(slot, mem, &luns);
        }
        drop(luns);
        self.held.push_back(Held {
            slot,
            disk: HeldOn::new(disk),
        });
    }

    /// The engine is done with the command in `slot`: answers it, or holds it when its disk's
    /// error policy says stop. `listed` when the command is in the task set (its engine kept
    /// it past `submit`); one the engine finished inside `submit` never was, and is answered in
    /// the pass that started it, like a command that needs no disk. Inlined with `finish_io`,
    /// as a READ of a null disk takes them once each: the calls cost some 40 instructions.
    #[inline(always)]
    fn settle(&mut self, slot: usize, lun: Option<&LunData>, mem: &CachedMemory<'_>, listed: bool) {
        let Some(command) = self.in_flight.get_mut(slot) else {
            return;
        };
        command.io.end();
        if let (Some(errno), Some(lun)) = (command.io.error, lun) {
            let write = command.io.direction == Direction::ToDisk;
            if lun.disk.error_policy().action(errno, write) == ErrorAction::Stop {
                let disk = Arc::clone(&lun.disk);
                return self.hold(slot, mem, disk, Some(errno));
            }
        }
        self.finish_io(slot, lun, mem);
        if listed {
            // Its slot is free, but no command takes it before `reap` has the task set hear.
            self.leaving.push(slot);
        }
    }

    /// The engine's completion eventfd fired: answer what completed, interrupt once.
    pub fn completions_ready(&mut self) {
        let snapshot = self.queue.snapshot();
        let mem = CachedMemory::new(&snapshot);
        self.engine.clear_completion_fd();
        self.reap(&mem);
        self.end_pass(&mem);
    }

    /// Serves new chains and completions with notifications left suppressed; true when there
    /// was something to serve.
    pub fn poll(&mut self) -> bool {
        let snapshot = self.queue.snapshot();
        let mem = CachedMemory::new(&snapshot);
        // Most looks find nothing: the clock is read only for work (reap reads its own).
        let available = self.queue.has_available(&mem);
        if available || !self.held.is_empty() {
            self.tick();
        }
        let mut served = self.serve_held(&mem, &snapshot);
        if available {
            self.start_available(&mem, &snapshot);
            self.engine.submit_pending();
            served = true;
        }
        if self.in_flight_count() > 0 && self.reap(&mem) > 0 {
            served = true;
        }
        self.end_pass(&mem);
        served
    }

    /// Collects completions, with the failures `submit` left, until none is left (a completion
    /// may submit the next chunk of a sequential job); returns how many there were.
    fn reap(&mut self, mem: &CachedMemory<'_>) -> usize {
        let mut reaped = 0;
        loop {
            let mut completions = std::mem::take(&mut self.completions);
            completions.append(&mut self.failed_in_submit);
            self.engine.reap(&mut completions);
            if completions.is_empty() {
                self.completions = completions;
                return reaped;
            }
            reaped += completions.len();
            self.tick();
            let luns = self.luns.load();
            for completion in completions.drain(..) {
                self.complete(completion, &luns, mem);
            }
            self.leave_task_set(mem);
            self.completions = completions;
            self.engine.submit_pending();
        }
    }

    /// Collects the chain's buffers into a slot and runs its command.
    fn start(
        &mut self,
        chain: Chain,
        mem: &CachedMemory<'_>,
        snapshot: &MemorySnapshot,
        luns: &LunGuard,
    ) {
        let head = chain.head_index();
        let slot = self.free_slots.pop().unwrap_or(self.spare);
        let sense_size = u64::from(self.sizes.sense_size());
        let Some(reply) = reply_in(&mut self.in_flight, slot) else {
            return;
        };
        let defect = reply.buffers.collect_again(chain, mem);
        reply.head = head;
        reply.resp_size = CMD_RESP_HEADER_SIZE as u64 + sense_size;
        reply.sense_size = sense_size;
        reply.data_len = 0;
        reply.parameters_len = 0;
        reply.lun = 0;
        reply.tag = 0;
        reply.opcode = 0;
        reply.started = self.clock;
        if let Some(defect) = defect {
            debug!(self.queue.logger(), "bad chain"; "head" => head, "defect" => defect.name());
            let answer = Answer::transport(VIRTIO_SCSI_S_FAILURE, 0);
            return self.finish(slot, mem, answer, None);
        }
        self.run(slot, mem, snapshot, luns);
    }

    /// Parses and executes the command in `slot` (again, for a command that was held).
    fn run(
        &mut self,
        slot: usize,
        mem: &CachedMemory<'_>,
        snapshot: &MemorySnapshot,
        luns: &LunGuard,
    ) {
        let cdb_size = u64::from(self.sizes.cdb_size());
        let header_len = CMD_REQ_HEADER_SIZE as u64 + cdb_size;
        let kept = CMD_REQ_HEADER_SIZE + cdb_size.min(MAX_CDB_KEPT as u64) as usize;
        let Some(reply) = reply_in(&mut self.in_flight, slot) else {
            return;
        };
        let readable = &reply.buffers.readable;
        let request = &mut self.request_bytes[..kept];
        // The length check makes every kept byte available: none is left from the last command.
        // A header with the default CDB size is copied as an array, not by a call of memcpy.
        let read = readable.len() >= header_len
            && match request.first_chunk_mut::<DEFAULT_REQUEST_BYTES>() {
                Some(usual) if kept == DEFAULT_REQUEST_BYTES => readable.read(mem, 0, usual),
                _ => readable.read(mem, 0, request),
            }
            .is_ok_and(|read| read == kept);
        let (Some((header, cdb)), true) = (request.split_first_chunk(), read) else {
            debug!(self.queue.logger(), "request header too short";
                "head" => reply.head, "readable" => readable.len());
            let answer = Answer::transport(VIRTIO_SCSI_S_FAILURE, 0);
            return self.finish(slot, mem, answer, None);
        };
        let header = CmdRequestHeader::parse(header);
        reply.tag = header.tag;
        reply.opcode = cdb.first().copied().unwrap_or(0);
        let data_out_len = reply.buffers.readable.len() - header_len;
        let data_in_len = reply.buffers.writable.len().saturating_sub(reply.resp_size);
        reply.data_len = data_out_len.max(data_in_len);
        let resid = reply.data_len;

        let lun = match lun_address::parse(&header.lun) {
            Ok(lun) => lun,
            Err(error) => {
                debug!(self.queue.logger(), "bad lun address";
                    "tag" => header.tag, "error" => %error);
                let answer = Answer::transport(VIRTIO_SCSI_S_BAD_TARGET, resid);
                return self.finish(slot, mem, answer, None);
            }
        };
        reply.lun = lun;
        let found = luns.lun(lun);
        let unit = found.map(Lun::data);
        if data_out_len > 0 && data_in_len > 0 {
            // Bidirectional commands need VIRTIO_SCSI_F_INOUT, which we do not offer.
            debug!(self.queue.logger(), "bidirectional request";
                "lun" => lun, "tag" => header.tag);
            let answer = Answer::transport(VIRTIO_SCSI_S_FAILURE, resid);
            return self.finish(slot, mem, answer, unit);
        }

        let mut parameters = Vec::new();
        // Without data-out bytes there are no parameters to copy, whatever the command.
        let data_out_use = match data_out_len {
            0 => DataOutUse::None,
            _ => data_out_use(cdb),
        };
        if let DataOutUse::Parameters { max } = data_out_use {
            parameters.resize(data_out_len.min(max as u64) as usize, 0);
            if reply
                .buffers
                .readable
                .read(mem, header_len, &mut parameters)
                .is_err()
            {
                let answer = Answer::transport(VIRTIO_SCSI_S_FAILURE, resid);
                return self.finish(slot, mem, answer, unit);
            }
            reply.parameters_len = parameters.len() as u64;
        }
        let parameters_len = reply.parameters_len;
        match luns.execute_on(lun, found, cdb, &parameters, data_out_len) {
            Outcome::Good { data_in } => {
                if data_in.len() as u64 > data_in_len {
                    let answer = Answer::transport(VIRTIO_SCSI_S_OVERRUN, resid);
                    return self.finish(slot, mem, answer, unit);
                }
                let answer = Answer {
                    response: VIRTIO_SCSI_S_OK,
                    status: STATUS_GOOD,
                    sense: None,
                    resid: resid.saturating_sub(parameters_len + data_in.len() as u64),
                    data_in: &data_in,
                    data_in_moved: 0,
                };
                self.finish(slot, mem, answer, unit)
            }
            Outcome::CheckCondition(sense) => {
                self.finish(slot, mem, Answer::check_condition(sense, resid), unit)
            }
            Outcome::Io(io) => {
                let Some(unit) = unit else {
                    let answer = Answer::check_condition(Sense::LOGICAL_UNIT_NOT_SUPPORTED, resid);
                    return self.finish(slot, mem, answer, None);
                };
                let lengths = (header_len, data_out_len, data_in_len);
                self.start_io(slot, mem, snapshot, io, unit, lengths)
            }
        }
    }

    /// Hands the disk work of the command in `slot` to the engine. Inlined into `run`, its
    /// only caller: the call and the slot's lookup again cost some 20 instructions a READ.
    #[inline(always)]
    fn start_io(
        &mut self,
        slot: usize,
        mem: &CachedMemory<'_>,
        snapshot: &MemorySnapshot,
        io: DiskIo,
        lun: &LunData,
        (header_len, data_out_len, data_in_len): (u64, u64, u64),
    ) {
        let disk = &lun.disk;
        if disk.io_status().is_stopped() && slot != self.spare {
            return self.hold(slot, mem, Arc::clone(disk), None);
        }
        let (Some(reply), Some(iovecs)) = (
            self.in_flight.get(slot).map(|command| &command.reply),
            self.iovecs.get_mut(slot).map(|iovecs| &mut iovecs.0),
        ) else {
            return;
        };
        let resid = reply.data_len;
        let answer_with = |response: u32, this: &mut Self| {
            this.finish(slot, mem, Answer::transport(response, resid), Some(lun));
        };
        let (request, work) = match io {
            DiskIo::Read { offset, len } => {
                if len > data_in_len || data_out_len > 0 {
                    return answer_with(VIRTIO_SCSI_S_OVERRUN, self);
                }
                let writable = &reply.buffers.writable;
                let Ok(covered) = writable.iovecs_into(mem, reply.resp_size, len, iovecs) else {
                    return answer_with(VIRTIO_SCSI_S_FAILURE, self);
                };
                // SAFETY: the iovecs point into guest memory regions of `snapshot`, checked to
                // be mapped (CachedMemory); the snapshot is alive until this pass ends, and
                // its lease keeps it mapped while the request is in flight after that; the
                // chain belongs to the device until we return it, which happens only after the
                // completion. The iovecs themselves stay in place, unchanged, until the next
                // command in the slot, after the completion, and do not outlive the engine;
                // they cover `covered` bytes.
                let buffers = unsafe { IoBuffers::borrowed(iovecs, covered) };
                let request = IoRequest::Read { offset, buffers };
                (request, (Direction::FromDisk, len, true))
            }
            DiskIo::Write { offset, len, fua } => {
                if len > data_out_len || data_in_len > 0 {
                    return answer_with(VIRTIO_SCSI_S_OVERRUN, self);
                }
                let readable = &reply.buffers.readable;
                let Ok(covered) = readable.iovecs_into(mem, header_len, len, iovecs) else {
                    return answer_with(VIRTIO_SCSI_S_FAILURE, self);
                };
                // SAFETY: as for reads: checked, kept mapped by the pass and its lease, owned
                // by the device until the chain is returned after the completion, the iovecs
                // kept in place until then, covering `covered` bytes.
                let buffers = unsafe { IoBuffers::borrowed(iovecs, covered) };
                let request = IoRequest::Write {
                    offset,
                    buffers,
                    fua,
                };
                (request, (Direction::ToDisk, len, false))
            }
            DiskIo::Flush => (IoRequest::Flush, (Direction::ToDisk, 0, false)),
            DiskIo::WriteZeroes {
                offset,
                len,
                may_unmap,
            } => {
                let request = IoRequest::WriteZeroes {
                    offset,
                    len,
                    may_unmap,
                };
                (request, (Direction::ToDisk, 0, false))
            }
            DiskIo::Verify { offset, len } => {
                let pending = PendingIo::Verify {
                    next: offset,
                    end: offset.saturating_add(len),
                };
                let work = (Direction::FromDisk, 0, false);
                return self.start_steps(slot, mem, snapshot, lun, work, pending);
            }
            DiskIo::Discard { ranges } => {
                let requests = ranges
                    .into_iter()
                    .map(|(offset, len)| IoRequest::Discard { offset, len })
                    .collect();
                let pending = PendingIo::Batch(requests);
                let work = (Direction::ToDisk, 0, false);
                return self.start_steps(slot, mem, snapshot, lun, work, pending);
            }
            DiskIo::WriteSame {
                offset,
                len,
                block,
                fua,
            } => {
                let pending = PendingIo::pattern(offset, len, &block, fua);
                let work = (Direction::ToDisk, 0, false);
                return self.start_steps(slot, mem, snapshot, lun, work, pending);
            }
        };
        let Some(task) = self.begin_work(slot, mem, lun, work) else {
            return;
        };
        let Some(command) = self.in_flight.get_mut(slot) else {
            return;
        };
        let mut submitter = Submitter {
            engine: &mut *self.engine,
            logger: self.queue.logger(),
            failed: &mut self.failed_in_submit,
        };
        submitter.submit(slot, &mut command.io, task, &lun.disk, request);
        self.submitted(slot, mem, snapshot, lun, task);
    }

    /// Hands the engine the first requests of a command done in several requests or steps
    /// (`pending`).
    fn start_steps(
        &mut self,
        slot: usize,
        mem: &CachedMemory<'_>,
        snapshot: &MemorySnapshot,
        lun: &LunData,
        work: (Direction, u64, bool),
        pending: PendingIo,
    ) {
        let Some(task) = self.begin_work(slot, mem, lun, work) else {
            return;
        };
        let Some(command) = self.in_flight.get_mut(slot) else {
            return;
        };
        let work = &mut command.io;
        if !matches!(pending, PendingIo::Batch(_)) {
            work.disk = Some(Arc::clone(&lun.disk));
        }
        work.pending = Some(pending);
        let mut submitter = Submitter {
            engine: &mut *self.engine,
            logger: self.queue.logger(),
            failed: &mut self.failed_in_submit,
        };
        submitter.submit_ready(slot, work, task, &lun.disk);
        self.submitted(slot, mem, snapshot, lun, task);
    }

    /// Readies the disk work of the command in `slot`, which moves `transfer_len` bytes in
    /// `direction` (data-in if `data_in`); returns its (lun, tag), or None when it was
    /// answered instead.
    #[inline(always)]
    fn begin_work(
        &mut self,
        slot: usize,
        mem: &CachedMemory<'_>,
        lun: &LunData,
        (direction, transfer_len, data_in): (Direction, u64, bool),
    ) -> Option<(u16, u64)> {
        let command = self.in_flight.get_mut(slot)?;
        let reply = &command.reply;
        // More commands than descriptors in flight only comes from a driver that made the same
        // head available twice.
        if slot == self.spare {
            debug!(self.queue.logger(), "more commands than descriptors";
                "head" => reply.head, "tag" => reply.tag);
            let answer = Answer::transport(VIRTIO_SCSI_S_FAILURE, reply.data_len);
            self.finish(slot, mem, answer, Some(lun));
            return None;
        }
        let task = (reply.lun, reply.tag);
        command.io.start(direction, transfer_len, data_in);
        Some(task)
    }

    /// The engine has the command in `slot`: answers it when the engine took nothing, else
    /// keeps its memory mapped and shows it to task management as `task`.
    #[inline(always)]
    fn submitted(
        &mut self,
        slot: usize,
        mem: &CachedMemory<'_>,
        snapshot: &MemorySnapshot,
        lun: &LunData,
        (lun_number, tag): (u16, u64),
    ) {
        let Some(work) = self.in_flight.get_mut(slot).map(|command| &mut command.io) else {
            return;
        };
        if work.outstanding == 0 {
            return self.settle(slot, Some(lun), mem, false);
        }
        work.memory_lease = Some(self.memory_leases.lease(snapshot));
        self.lun_counters(lun).started();
        self.tasks.started(self.task_queue, slot, lun_number, tag);
    }

    /// Counts a completion of the command in its slot, submits its next chunk, and answers it
    /// when nothing is left.
    fn complete(&mut self, completion: Completion, luns: &LunGuard, mem: &CachedMemory<'_>) {
        let slot = usize::try_from(completion.user_data).unwrap_or(usize::MAX);
        let Some(command) = self
            .in_flight
            .get_mut(slot)
            .filter(|command| command.io.outstanding > 0)
        else {
            debug!(self.queue.logger(), "completion without request"; "user_data" => completion.user_data);
            return;
        };
        let task = (command.reply.lun, command.reply.tag);
        let work = &mut command.io;
        work.outstanding -= 1;
        work.record(completion.result);
        if work.error.is_none() {
            if let Some(disk) = work.disk.take() {
                let mut submitter = Submitter {
                    engine: &mut *self.engine,
                    logger: self.queue.logger(),
                    failed: &mut self.failed_in_submit,
                };
                submitter.submit_ready(slot, work, task, &disk);
                work.disk = Some(disk);
            }
        }
        if work.outstanding > 0 {
            return;
        }
        if let Some(lease) = work.memory_lease.take() {
            self.memory_leases.end(lease);
        }
        // A command in flight keeps its LUN in the snapshots, removed or not (see
        // `lun_data`), until the counters below say it is done.
        let lun = luns.data(task.0);
        if let Some(lun) = lun {
            self.lun_counters(lun).finished();
        }
        self.settle(slot, lun, mem, true);
    }

    /// Answers the command in `slot` from what its disk work did.
    #[inline(always)]
    fn finish_io(&mut self, slot: usize, lun: Option<&LunData>, mem: &CachedMemory<'_>) {
        let Some(CommandSlot { reply, io }) = self.command(slot) else {
            return;
        };
        let answer = match io.error {
            Some(errno) => {
                if let Some(lun) = lun {
                    backend_errors::report(
                        self.queue.logger(),
                        &lun.disk,
                        reply.lun,
                        reply.tag,
                        reply.opcode,
                        errno,
                        io.direction,
                    );
                }
                Answer::check_condition(error_sense(errno, io.direction), reply.data_len)
            }
            None => {
                let moved = io.moved.min(io.transfer_len);
                let lun_counters = lun.map(|lun| self.lun_counters(lun));
                if io.data_in {
                    self.queue.counters().read(moved);
                    lun_counters.inspect(|counters| counters.read(moved));
                } else {
                    self.queue.counters().written(moved);
                    lun_counters.inspect(|counters| counters.written(moved));
                }
                Answer {
                    response: VIRTIO_SCSI_S_OK,
                    status: STATUS_GOOD,
                    sense: None,
                    resid: reply.data_len.saturating_sub(reply.parameters_len + moved),
                    data_in: &[],
                    data_in_moved: if io.data_in { moved } else { 0 },
                }
            }
        };
        self.answer(slot, mem, answer, lun);
    }

    /// This queue's share of a LUN's counters.
    fn lun_counters<'a>(&self, lun: &'a LunData) -> LunQueueCounters<'a> {
        lun.counters.queue(self.task_queue)
    }

    /// Writes the response of the command in `slot` (when the buffers can hold its header),
    /// returns the chain, counts the command for the queue and for `lun`, the LUN that
    /// answered it, if one did, and frees the slot.
    #[inline(never)]
    fn finish(
        &mut self,
        slot: usize,
        mem: &CachedMemory<'_>,
        answer: Answer<'_>,
        lun: Option<&LunData>,
    ) {
        self.answer(slot, mem, answer, lun);
    }

    /// `finish` inlined into its caller: the answer to a command that the engine finished
    /// inside `submit`, the usual READ of a null disk, takes no call (some 25 instructions).
    #[inline(always)]
    fn answer(
        &mut self,
        slot: usize,
        mem: &CachedMemory<'_>,
        answer: Answer<'_>,
        lun: Option<&LunData>,
    ) {
        let Some(reply) = self.command(slot).map(|command| &command.reply) else {
            return;
        };
        let used = write_response(reply, mem, &answer);
        if used.is_none() {
            debug!(self.queue.logger(), "response not writable";
                "head" => reply.head, "writable" => reply.buffers.writable.len());
        }
        if self.tracing {
            trace!(self.queue.logger(), "request";
                "lun" => reply.lun, "tag" => reply.tag, "opcode" => reply.opcode,
                "response" => answer.response, "status" => answer.status);
        }
        let counters = self.queue.counters();
        if answer.response != VIRTIO_SCSI_S_OK {
            counters.refused(answer.response);
        }
        let sense_key = answer.sense.map(|sense| sense.key);
        let latency = LatencyBucket::of_nanos(self.clock.saturating_sub(reply.started));
        counters.answered(sense_key, latency);
        if let Some(lun) = lun {
            self.lun_counters(lun).answered(sense_key, latency);
        }
        let head = reply.head;
        self.queue.add_used(mem, head, used.unwrap_or(0));
        if slot != self.spare {
            self.free_slots.push(slot);
        }
    }
}

impl Drop for RequestQueueWorker {
    /// A reset or shutdown ends the queue: held commands were never answered, so no data the
    /// driver was told about is lost, but an operator should know which ones went.
    fn drop(&mut self) {
        for held in &self.held {
            let Some(reply) = self.command(held.slot).map(|command| &command.reply) else {
                continue;
            };
            warn!(self.queue.logger(), "held request dropped";
                "lun" => reply.lun, "tag" => reply.tag, "opcode" => reply.opcode);
        }
    }
}

impl QueueWorker for RequestQueueWorker {
    fn queue_index(&self) -> u16 {
        self.queue.index()
    }

    fn notifier(&self) -> &Arc<EventFd> {
        self.queue.notifier()
    }

    /// Hosts watch the notifier edge-triggered, so every write wakes them whatever its counter
    /// holds: it is not read (one system call a kick), and the kicks it counts are read with
    /// the queue's counters (`QueueCounters::count_kicks_in`). A kick that came while the host
    /// polls (sent before polling suppressed notifications) is served as a poll: a pass would
    /// turn notifications back on behind the host's back.
    fn notifier_ready(&mut self) {
        if self.batching.polling() {
            RequestQueueWorker::poll(self);
        } else {
            RequestQueueWorker::serve_available(self);
        }
    }

    fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
        self.engine.completion_fd()
    }

    fn completions_ready(&mut self) {
        RequestQueueWorker::completions_ready(self);
    }

    fn in_flight(&self) -> usize {
        self.in_flight_count()
    }

    fn start_polling(&mut self) {
        self.batching.start_polling();
        let snapshot = self.queue.snapshot();
        self.queue
            .suppress_notifications(&CachedMemory::new(&snapshot));
    }

    fn poll(&mut self) -> bool {
        RequestQueueWorker::poll(self)
    }

    fn stop_polling(&mut self) {
        if !self.batching.polling() {
            return;
        }
        let snapshot = self.queue.snapshot();
        let ahead = self.batching.rearm(self.clock, self.in_flight_count());
        let mem = CachedMemory::new(&snapshot);
        if self.queue.kick_at_batch(&mem, ahead) || self.queue.has_available(&mem) {
            self.serve_available();
        }
    }

    fn serve_waiting(&mut self) -> bool {
        if self.batching.polling() {
            return false;
        }
        let waiting = {
            let snapshot = self.queue.snapshot();
            self.queue.has_available(&CachedMemory::new(&snapshot))
        };
        if waiting {
            self.serve_available();
        }
        waiting
    }

    fn recheck_in(&self) -> Option<Duration> {
        self.batching.recheck_in()
    }

    /// Serves what a batch shorter than the driver was told left (or, while polling, nothing:
    /// the poller looks by itself).
    fn recheck(&mut self) {
        self.queue.counters().rechecked();
        if !self.batching.polling() {
            self.serve_available();
        }
    }
}

/// The queue's engine as a command hands it requests.
struct Submitter<'a> {
    engine: &'a mut dyn Engine,
    logger: &'a Logger,
    /// Where requests that failed inside `submit` wait for the next reap.
    failed: &'a mut Vec<Completion>,
}

impl Submitter<'_> {
    /// Hands one request of the command in `slot` (its LUN and tag in `task`) to the engine; a
    /// refused submission counts as an I/O error. One done inside `submit` counts at once if it
    /// succeeded; one that failed stays outstanding and is reaped like a later completion, so
    /// that what its failure decides (a disk its error policy stops) comes after the pass has
    /// handed the disk its other commands, whichever way the engine reports. Inlined, so that
    /// the request goes to the engine without one more move.
    #[inline(always)]
    fn submit(
        &mut self,
        slot: usize,
        work: &mut DiskWork,
        (lun, tag): (u16, u64),
        disk: &Arc<Disk>,
        request: IoRequest,
    ) {
        match self.engine.submit(disk, request, slot as u64) {
            Ok(Submitted::Started) => work.outstanding += 1,
            Ok(Submitted::Done(Ok(bytes))) => work.moved += bytes,
            Ok(Submitted::Done(result)) => {
                work.outstanding += 1;
                let user_data = slot as u64;
                self.failed.push(Completion { user_data, result });
            }
            Err(error) => {
                debug!(self.logger, "submit refused"; "lun" => lun, "tag" => tag, "error" => %error);
                work.error.get_or_insert(libc::EIO);
            }
        }
    }

    /// Submits what the pending requests of `work` have ready, and the next chunks of a
    /// sequential job while the engine finishes them inside `submit`.
    fn submit_ready(
        &mut self,
        slot: usize,
        work: &mut DiskWork,
        task: (u16, u64),
        disk: &Arc<Disk>,
    ) {
        while work.outstanding == 0 && work.error.is_none() {
            let Some(requests) = work.pending.as_mut().map(PendingIo::take_ready) else {
                return;
            };
            if requests.is_empty() {
                return;
            }
            for request in requests {
                self.submit(slot, work, task, disk, request);
            }
        }
    }
}

/// The reply of the command in `slot`, borrowing only the records.
fn reply_in(in_flight: &mut [CommandSlot], slot: usize) -> Option<&mut Reply> {
    in_flight.get_mut(slot).map(|command| &mut command.reply)
}

/// Whether `lun` no longer serves `disk`: it was removed (and maybe added again).
fn removed_from(luns: &LunGuard, lun: u16, disk: &Arc<Disk>) -> bool {
    luns.lun(lun)
        .is_none_or(|unit| !Arc::ptr_eq(&unit.data().disk, disk))
}

/// The used length, or None when not even the response header fits.
#[inline(always)]
fn write_response(reply: &Reply, mem: &CachedMemory<'_>, answer: &Answer<'_>) -> Option<u32> {
    let writable = &reply.buffers.writable;
    if writable.len() < CMD_RESP_HEADER_SIZE as u64 {
        return None;
    }
    if writable.len() < reply.resp_size {
        // No room for the sense field: the command cannot be answered, only failed.
        let header = CmdResponseHeader::transport(VIRTIO_SCSI_S_FAILURE, 0);
        writable.write(mem, 0, &header.to_bytes()).ok()?;
        return u32::try_from(writable.len()).ok();
    }
    let mut sense = [0u8; FIXED_SENSE_LEN];
    let sense_len = match answer.sense {
        Some(data) => data
            .to_fixed_format(&mut sense[..reply.sense_size.min(FIXED_SENSE_LEN as u64) as usize]),
        None => 0,
    };
    let header = CmdResponseHeader {
        sense_len: sense_len as u32,
        resid: u32::try_from(answer.resid).unwrap_or(u32::MAX),
        status_qualifier: 0,
        status: answer.status,
        response: answer.response as u8,
    };
    writable.write(mem, 0, &header.to_bytes()).ok()?;
    if sense_len > 0 {
        writable
            .write(mem, CMD_RESP_HEADER_SIZE as u64, &sense[..sense_len])
            .ok()?;
    }
    let data_in = if answer.data_in.is_empty() {
        answer.data_in_moved
    } else {
        writable.write(mem, reply.resp_size, answer.data_in).ok()? as u64
    };
    u32::try_from(reply.resp_size + data_in).ok()
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom, Write};

    use block::{Disk, DiskOptions};
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::scsi_device::test_driver::{
        lun_config, lun_field, Buf, CmdResult, Harness, MEMORY_SIZE,
    };
    use crate::virtio_device::VirtioDevice;

    const TEST_UNIT_READY: [u8; 6] = [0; 6];
    const INQUIRY: [u8; 6] = [0x12, 0, 0, 0, 96, 0];
    const READ_CAPACITY_10: [u8; 10] = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    fn read10(lba: u32, blocks: u16) -> [u8; 10] {
        let [a, b, c, d] = lba.to_be_bytes();
        let [h, l] = blocks.to_be_bytes();
        [0x28, 0, a, b, c, d, 0, h, l, 0]
    }

    fn write10(lba: u32, blocks: u16) -> [u8; 10] {
        let mut cdb = read10(lba, blocks);
        cdb[0] = 0x2A;
        cdb
    }

    fn null_harness() -> Harness {
        let mut harness = Harness::new(vec![Disk::null(1 << 20, 512).unwrap()]);
        // The first command after power on reports the unit attention.
        let result = harness.command(0, &TEST_UNIT_READY, &[], 0);
        assert_eq!(result.resp.status, STATUS_CHECK_CONDITION);
        harness
    }

    fn sense_key_asc(result: &CmdResult) -> (u8, u8, u8) {
        (result.sense[2] & 0xF, result.sense[12], result.sense[13])
    }

    fn assert_queue_works(harness: &mut Harness) {
        let result = harness.command(0, &TEST_UNIT_READY, &[], 0);
        assert_eq!(result.resp.response, VIRTIO_SCSI_S_OK as u8);
        assert_eq!(result.resp.status, STATUS_GOOD);
        assert!(!harness.device.needs_reset());
    }

    #[test]
    fn what_a_queue_writes_per_command_starts_its_own_cache_lines() {
        assert_eq!(std::mem::align_of::<RequestQueueWorker>(), 128);
        assert_eq!(std::mem::align_of::<CommandSlot>(), 128);
        let records: Vec<CommandSlot> = (0..3).map(|_| CommandSlot::default()).collect();
        assert_eq!(records.as_ptr() as usize % 128, 0);
        assert_eq!(std::mem::align_of::<SlotIovecs>(), 128);
        assert_eq!(std::mem::size_of::<SlotIovecs>() % 128, 0);
    }

    #[test]
    fn inquiry_and_read_capacity() {
        let mut harness = Harness::new(vec![Disk::null(1 << 20, 512).unwrap()]);
        let inquiry = harness.command(0, &INQUIRY, &[], 96);
        assert_eq!(
            (inquiry.resp.response, inquiry.resp.status),
            (0, STATUS_GOOD)
        );
        assert_eq!(inquiry.data_in[0], 0, "direct access block device");
        let returned = 96 - inquiry.resp.resid as usize;
        assert!(returned >= 36);
        assert_eq!(
            returned,
            usize::from(inquiry.data_in[4]) + 5,
            "additional length"
        );
        assert_eq!(inquiry.used_len as usize, 12 + 96 + returned);

        let attention = harness.command(0, &READ_CAPACITY_10, &[], 8);
        assert_eq!(attention.resp.status, STATUS_CHECK_CONDITION);
        assert_eq!(attention.resp.sense_len, 18);
        assert_eq!(sense_key_asc(&attention), (6, 0x29, 0));
        assert_eq!(attention.resp.resid, 8);

        let capacity = harness.command(0, &READ_CAPACITY_10, &[], 8);
        assert_eq!(capacity.resp.status, STATUS_GOOD);
        assert_eq!(capacity.data_in, [0, 0, 0x07, 0xFF, 0, 0, 0x02, 0]);
        assert_eq!(capacity.resp.resid, 0);
    }

    #[test]
    fn write_then_read_through_a_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(1 << 20).unwrap();
        let disk = Disk::open(&DiskOptions::new(file.path())).unwrap();
        let mut harness = Harness::new(vec![disk]);
        harness.command(0, &TEST_UNIT_READY, &[], 0);

        let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
        let written = harness.command(0, &write10(2, 2), &pattern, 0);
        assert_eq!(
            (written.resp.response, written.resp.status),
            (0, STATUS_GOOD)
        );
        assert_eq!(written.resp.resid, 0);
        let mut on_disk = vec![0u8; 1024];
        file.as_file_mut().seek(SeekFrom::Start(1024)).unwrap();
        file.as_file_mut().read_exact(&mut on_disk).unwrap();
        assert_eq!(on_disk, pattern);

        file.as_file_mut().seek(SeekFrom::Start(4096)).unwrap();
        file.as_file_mut().write_all(&[0x5A; 512]).unwrap();
        let read = harness.command(0, &read10(8, 1), &[], 512);
        assert_eq!(read.resp.status, STATUS_GOOD);
        assert_eq!(read.data_in, vec![0x5A; 512]);
        assert_eq!(read.used_len, 12 + 96 + 512);

        let back = harness.command(0, &read10(2, 2), &[], 1024);
        assert_eq!(back.data_in, pattern);
    }

    #[test]
    fn counters_see_requests_bytes_errors_and_interrupts() {
        let mut harness = null_harness();
        harness.command(0, &read10(0, 2), &[], 1024);
        harness.command(0, &write10(4, 1), &[0x11; 512], 0);
        let stats = harness.device.queue_stats();
        assert_eq!(stats.len(), 1);
        let queue = stats[0];
        assert_eq!(queue.vq, 2);
        assert_eq!(queue.requests, 3);
        assert_eq!(
            queue.errors_by_sense_key[6], 1,
            "the power-on unit attention"
        );
        assert_eq!((queue.bytes_read, queue.bytes_written), (1024, 512));
        assert_eq!(
            queue.interrupts, 3,
            "one per kick: every batch returned a chain"
        );
        assert_eq!(queue.in_flight, 0);
        assert_eq!(queue.latency.iter().sum::<u64>(), 3);
    }

    #[test]
    fn residual_and_overrun() {
        let mut harness = null_harness();
        let short = harness.command(0, &read10(0, 1), &[], 4096);
        assert_eq!((short.resp.response, short.resp.status), (0, STATUS_GOOD));
        assert_eq!(short.resp.resid, 4096 - 512);

        let overrun = harness.command(0, &read10(0, 4), &[], 512);
        assert_eq!(overrun.resp.response, VIRTIO_SCSI_S_OVERRUN as u8);
        assert_eq!(overrun.data_in, vec![0xEE; 512], "nothing transferred");

        let overrun = harness.command(0, &write10(0, 2), &[1; 512], 0);
        assert_eq!(overrun.resp.response, VIRTIO_SCSI_S_OVERRUN as u8);

        let inquiry_overrun = harness.command(0, &INQUIRY, &[], 8);
        assert_eq!(inquiry_overrun.resp.response, VIRTIO_SCSI_S_OVERRUN as u8);
        assert_queue_works(&mut harness);
    }

    #[test]
    fn bad_target_and_missing_lun() {
        let mut harness = null_harness();
        let vq = 2;
        for lun in [
            [1, 1, 0x40, 0, 0, 0, 0, 0],
            [2, 0, 0x40, 0, 0, 0, 0, 0],
            [1, 0, 0x80, 0, 0, 0, 0, 0],
        ] {
            let bufs = [
                harness.request_buf(vq, lun, 1, &TEST_UNIT_READY),
                harness.response_buf(vq, 108),
            ];
            let used = harness.submit(vq, &bufs);
            let result = harness.result(&bufs, used[0].1);
            assert_eq!(result.resp.response, VIRTIO_SCSI_S_BAD_TARGET as u8);
        }
        let missing = harness.command(3, &TEST_UNIT_READY, &[], 0);
        assert_eq!(missing.resp.status, STATUS_CHECK_CONDITION);
        assert_eq!(sense_key_asc(&missing), (5, 0x25, 0));
        let inquiry = harness.command(3, &INQUIRY, &[], 96);
        assert_eq!(inquiry.resp.status, STATUS_GOOD);
        assert_eq!(inquiry.data_in[0], 0x7F, "no logical unit at this LUN");
        assert_queue_works(&mut harness);
    }

    #[test]
    fn descriptor_loop_gets_failure() {
        let mut harness = null_harness();
        let vq = 2;
        let request = harness.request_buf(vq, lun_field(0), 1, &TEST_UNIT_READY);
        let response = harness.response_buf(vq, 108);
        let queue = &mut harness.queues[vq];
        queue.store(10, request.addr, request.len, VRING_DESC_F_NEXT as u16, 11);
        queue.store(
            11,
            response.addr,
            response.len,
            (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
            10,
        );
        queue.publish(10);
        harness.notify(vq);
        let used = harness.queues[vq].used();
        assert_eq!(used, vec![(10, 108)]);
        let result = harness.result(&[request, response], used[0].1);
        assert_eq!(result.resp.response, VIRTIO_SCSI_S_FAILURE as u8);
        assert_queue_works(&mut harness);
    }

    #[test]
    fn next_index_out_of_range_is_returned_unanswered() {
        let mut harness = null_harness();
        let vq = 2;
        let request = harness.request_buf(vq, lun_field(0), 1, &TEST_UNIT_READY);
        harness.queues[vq].store(12, request.addr, request.len, VRING_DESC_F_NEXT as u16, 500);
        harness.queues[vq].publish(12);
        harness.notify(vq);
        assert_eq!(harness.queues[vq].used(), vec![(12, 0)]);
        assert_queue_works(&mut harness);
    }

    #[test]
    fn buffers_outside_memory() {
        let mut harness = null_harness();
        let vq = 2;
        let outside = Buf {
            addr: MEMORY_SIZE + 0x1000,
            len: 51,
            writable: false,
        };
        let response = harness.response_buf(vq, 108);
        let used = harness.submit(vq, &[outside, response]);
        let result = harness.result(&[outside, response], used[0].1);
        assert_eq!(result.resp.response, VIRTIO_SCSI_S_FAILURE as u8);

        let request = harness.request_buf(vq, lun_field(0), 1, &read10(0, 1));
        let response = harness.response_buf(vq, 108);
        let data_in = Buf {
            addr: MEMORY_SIZE - 256,
            len: 512,
            writable: true,
        };
        let used = harness.submit(vq, &[request, response, data_in]);
        let result = harness.result(&[request, response], used[0].1);
        assert_eq!(result.resp.response, VIRTIO_SCSI_S_FAILURE as u8);

        let request = harness.request_buf(vq, lun_field(0), 1, &TEST_UNIT_READY);
        let response = Buf {
            addr: u64::MAX - 16,
            len: 108,
            writable: true,
        };
        assert_eq!(harness.submit(vq, &[request, response])[0].1, 0);
        assert_queue_works(&mut harness);
    }

    #[test]
    fn wrong_direction_buffers() {
        let mut harness = null_harness();
        let vq = 2;
        let response = harness.response_buf(vq, 108);
        let request = harness.request_buf(vq, lun_field(0), 1, &TEST_UNIT_READY);
        let used = harness.submit(vq, &[response, request]);
        assert_eq!(
            harness.result(&[response], used[0].1).resp.response,
            VIRTIO_SCSI_S_FAILURE as u8
        );

        // Data-in placed in a driver-readable descriptor.
        let request = harness.request_buf(vq, lun_field(0), 1, &read10(0, 1));
        let data = harness.data_buf(vq, &[0x11; 512], false);
        let response = harness.response_buf(vq, 108);
        let used = harness.submit(vq, &[request, data, response]);
        let result = harness.result(&[response], used[0].1);
        assert_eq!(result.resp.response, VIRTIO_SCSI_S_OVERRUN as u8);
        assert_eq!(harness.read(data.addr, 512), vec![0x11; 512]);

        // Data-out and data-in together need VIRTIO_SCSI_F_INOUT.
        let request = harness.request_buf(vq, lun_field(0), 1, &write10(0, 1));
        let data_out = harness.data_buf(vq, &[0x22; 512], false);
        let response = harness.response_buf(vq, 108);
        let data_in = harness.response_buf(vq, 512);
        let used = harness.submit(vq, &[request, data_out, response, data_in]);
        assert_eq!(
            harness.result(&[response], used[0].1).resp.response,
            VIRTIO_SCSI_S_FAILURE as u8
        );
        assert_queue_works(&mut harness);
    }

    #[test]
    fn response_buffer_too_small_and_empty_descriptors() {
        let mut harness = null_harness();
        let vq = 2;
        let request = harness.request_buf(vq, lun_field(0), 1, &TEST_UNIT_READY);
        let tiny = harness.response_buf(vq, 8);
        assert_eq!(harness.submit(vq, &[request, tiny])[0].1, 0);
        assert_eq!(harness.read(tiny.addr, 8), vec![0xEE; 8], "nothing written");

        let request = harness.request_buf(vq, lun_field(0), 1, &TEST_UNIT_READY);
        let short = harness.response_buf(vq, 20);
        let used = harness.submit(vq, &[request, short]);
        assert_eq!(used[0].1, 20);
        assert_eq!(
            harness.result(&[short], used[0].1).resp.response,
            VIRTIO_SCSI_S_FAILURE as u8
        );

        let empty = Buf {
            addr: 0x20_0000,
            len: 0,
            writable: false,
        };
        assert_eq!(harness.submit(vq, &[empty])[0].1, 0);
        let response = harness.response_buf(vq, 108);
        let used = harness.submit(vq, &[empty, response]);
        assert_eq!(
            harness.result(&[response], used[0].1).resp.response,
            VIRTIO_SCSI_S_FAILURE as u8
        );
        assert_queue_works(&mut harness);
    }

    #[test]
    fn indirect_tables() {
        let mut harness = null_harness();
        let vq = 2;
        let request = harness.request_buf(vq, lun_field(0), 1, &INQUIRY);
        let response = harness.response_buf(vq, 108);
        let data_in = harness.response_buf(vq, 96);
        let table = harness.queues[vq].alloc(48);
        let descriptors = [
            Descriptor::new(request.addr, request.len, VRING_DESC_F_NEXT as u16, 1),
            Descriptor::new(
                response.addr,
                response.len,
                (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
                2,
            ),
            Descriptor::new(data_in.addr, data_in.len, VRING_DESC_F_WRITE as u16, 0),
        ];
        for (i, descriptor) in descriptors.into_iter().enumerate() {
            harness
                .mem
                .write_obj(
                    RawDescriptor::from(descriptor),
                    GuestAddress(table + 16 * i as u64),
                )
                .unwrap();
        }
        harness.queues[vq].store(20, table, 48, VRING_DESC_F_INDIRECT as u16, 0);
        harness.queues[vq].publish(20);
        harness.notify(vq);
        let used = harness.queues[vq].used();
        let result = harness.result(&[request, response, data_in], used[0].1);
        assert_eq!(result.resp.status, STATUS_GOOD);
        assert_eq!(result.data_in[0], 0);
        assert_eq!(result.resp.resid, 96 - (u32::from(result.data_in[4]) + 5));

        // A table length that is not a whole number of descriptors.
        harness.queues[vq].store(21, table, 47, VRING_DESC_F_INDIRECT as u16, 0);
        harness.queues[vq].publish(21);
        harness.notify(vq);
        assert_eq!(harness.queues[vq].used(), vec![(21, 0)]);
        assert_queue_works(&mut harness);
    }

    #[test]
    fn broken_avail_ring_needs_reset() {
        let mut harness = null_harness();
        let vq = 2;
        let idx = harness.queues[vq].mock.avail().idx().load();
        harness.queues[vq]
            .mock
            .avail()
            .idx()
            .store(idx.wrapping_add(200));
        harness.notify(vq);
        assert!(harness.device.needs_reset());
        assert_eq!(harness.config_interrupt.count(), 1);
        assert!(harness.queues[vq].used().is_empty());
        harness.notify(vq);
        assert_eq!(harness.config_interrupt.count(), 1, "raised once");

        harness.device.reset();
        assert!(!harness.device.needs_reset());
        harness.activate(harness.device.features());
        let result = harness.command(0, &TEST_UNIT_READY, &[], 0);
        assert_eq!(sense_key_asc(&result), (6, 0x29, 0), "power on after reset");
        assert_queue_works(&mut harness);
    }

    /// QEMU unmaps and remaps the firmware areas holding SeaBIOS's rings between two uses of
    /// the queue, and the queue is served in between as if kicked.
    #[test]
    fn rings_unmapped_while_idle_work_once_mapped_again() {
        let mut harness = null_harness();
        harness.unmap_all();
        harness.notify(2);
        assert!(!harness.device.needs_reset());
        assert_eq!(harness.config_interrupt.count(), 0);
        harness.map_again();
        assert_queue_works(&mut harness);
    }

    #[test]
    fn head_index_out_of_range_needs_reset() {
        let mut harness = null_harness();
        harness.queues[2].publish(300);
        harness.notify(2);
        assert!(harness.device.needs_reset());
    }

    #[test]
    fn written_sense_and_cdb_sizes_are_honoured() {
        let mut harness = Harness::new(vec![Disk::null(1 << 20, 512).unwrap()]);
        harness.device.write_config(20, &24u32.to_le_bytes());
        harness.device.write_config(24, &16u32.to_le_bytes());
        harness.sense_size = 24;
        harness.cdb_size = 16;
        let attention = harness.command(0, &READ_CAPACITY_10, &[], 8);
        assert_eq!(attention.resp.sense_len, 18);
        assert_eq!(sense_key_asc(&attention), (6, 0x29, 0));
        let capacity = harness.command(0, &READ_CAPACITY_10, &[], 8);
        assert_eq!(capacity.data_in, [0, 0, 0x07, 0xFF, 0, 0, 0x02, 0]);
        assert_eq!(capacity.used_len, 12 + 24 + 8);

        // A sense field smaller than the sense data: truncated to it.
        harness.device.write_config(20, &8u32.to_le_bytes());
        harness.sense_size = 8;
        let missing = harness.command(5, &TEST_UNIT_READY, &[], 0);
        assert_eq!(missing.resp.sense_len, 8);
        assert_eq!(missing.sense[..3], [0x70, 0, 5]);
    }

    #[test]
    fn one_interrupt_per_batch() {
        let mut harness = null_harness();
        let vq = 2;
        let before = harness.queues[vq].interrupt.count();
        let mut heads = Vec::new();
        for tag in 0..3 {
            let bufs = [
                harness.request_buf(vq, lun_field(0), tag, &TEST_UNIT_READY),
                harness.response_buf(vq, 108),
            ];
            let head = harness.queues[vq].chain(&bufs);
            harness.queues[vq].publish(head);
            heads.push(u32::from(head));
        }
        harness.notify(vq);
        assert_eq!(used_heads(&mut harness, vq), heads);
        assert_eq!(harness.queues[vq].interrupt.count(), before + 1);

        // A kick with nothing new raises nothing.
        harness.notify(vq);
        assert_eq!(harness.queues[vq].interrupt.count(), before + 1);
    }

    /// The heads the device returned on `vq` since the last look.
    fn used_heads(harness: &mut Harness, vq: usize) -> Vec<u32> {
        harness.queues[vq]
            .used()
            .into_iter()
            .map(|(head, _)| head)
            .collect()
    }

    /// Publishes a TEST UNIT READY on `vq` without kicking; returns its head.
    fn publish_unit_ready(harness: &mut Harness, vq: usize, tag: u64) -> u32 {
        let bufs = [
            harness.request_buf(vq, lun_field(0), tag, &TEST_UNIT_READY),
            harness.response_buf(vq, 108),
        ];
        let head = harness.queues[vq].chain(&bufs);
        harness.queues[vq].publish(head);
        u32::from(head)
    }

    #[test]
    fn chains_waiting_on_another_queue_are_served_in_the_same_wake_up_and_once() {
        let disk = Disk::null(1 << 20, 512).unwrap();
        let luns = vec![(lun_config(0, &disk), Arc::new(disk))];
        let mut harness = Harness::with_luns(luns, 2, 0);
        let (kicked, other) = (2, 3);
        // The other queue's driver sends while the kicked queue is served, its kick not there yet.
        let waiting = publish_unit_ready(&mut harness, other, 1);
        publish_unit_ready(&mut harness, kicked, 2);
        let interrupts = harness.queues[other].interrupt.count();
        harness.notify(kicked);
        assert_eq!(harness.queues[kicked].used().len(), 1);
        let used = used_heads(&mut harness, other);
        assert_eq!(used, [waiting], "served in the kicked queue's wake-up");
        assert_eq!(harness.queues[other].interrupt.count(), interrupts + 1);
        // Its late kick wakes the host, and finds nothing to serve twice.
        harness.notify(other);
        assert!(harness.queues[other].used().is_empty(), "served twice");
        assert_eq!(harness.queues[other].interrupt.count(), interrupts + 1);
        // The look left the queue asking for a kick at its next chain, as a kick's pass does.
        assert_eq!(
            harness.queues[other].avail_event(),
            harness.queues[other].avail_idx()
        );
        let next = publish_unit_ready(&mut harness, other, 3);
        harness.notify(other);
        let used = used_heads(&mut harness, other);
        assert_eq!(used, [next]);
    }

    #[test]
    fn a_kick_that_a_stats_snapshot_counted_before_the_host_woke_still_wakes_it() {
        let mut harness = null_harness();
        let vq = 2;
        let kicks = harness.device.queue_stats()[0].kicks;
        let head = publish_unit_ready(&mut harness, vq, 1);
        harness.kick(vq);
        // The control socket's `stats`, on the main loop, while the kick's iothread wakes up.
        assert_eq!(harness.device.queue_stats()[0].kicks, kicks + 1);
        harness.host.serve_ready().unwrap();
        let used = used_heads(&mut harness, vq);
        assert_eq!(used, [head], "the snapshot took the kick's wake-up");
    }

    #[test]
    fn event_idx_suppresses_interrupts_the_driver_does_not_want() {
        let mut harness = null_harness();
        let vq = 2;
        // Ask for an interrupt only at used index 100.
        harness.queues[vq].set_used_event(100);
        let before = harness.queues[vq].interrupt.count();
        let bufs = [
            harness.request_buf(vq, lun_field(0), 1, &TEST_UNIT_READY),
            harness.response_buf(vq, 108),
        ];
        let head = harness.queues[vq].chain(&bufs);
        harness.queues[vq].publish(head);
        harness.notify(vq);
        assert_eq!(harness.queues[vq].interrupt.count(), before);
        assert_eq!(harness.queues[vq].used().len(), 1);

        // used() asked for the next entry, as a driver re-enabling callbacks does.
        assert_eq!(harness.submit(vq, &bufs).len(), 1);
        assert_eq!(harness.queues[vq].interrupt.count(), before + 1);
    }

    #[test]
    fn write_same_pattern_verify_and_flush() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(1 << 20).unwrap();
        let disk = Disk::open(&DiskOptions::new(file.path())).unwrap();
        let mut harness = Harness::new(vec![disk]);
        harness.command(0, &TEST_UNIT_READY, &[], 0);

        // WRITE SAME(10), LBA 4, 3 blocks, from one block of 0xC3.
        let write_same = [0x41, 0, 0, 0, 0, 4, 0, 0, 3, 0];
        let result = harness.command(0, &write_same, &[0xC3; 512], 0);
        assert_eq!(result.resp.status, STATUS_GOOD, "{result:?}");
        assert_eq!(result.resp.resid, 0, "the block was consumed");
        let mut on_disk = vec![0u8; 4 * 512];
        file.as_file_mut().seek(SeekFrom::Start(3 * 512)).unwrap();
        file.as_file_mut().read_exact(&mut on_disk).unwrap();
        assert_eq!(&on_disk[..512], &[0u8; 512]);
        assert!(on_disk[512..].iter().all(|&b| b == 0xC3));

        let verify = [0x2F, 0, 0, 0, 0, 0, 0, 0x08, 0, 0];
        assert_eq!(harness.command(0, &verify, &[], 0).resp.status, STATUS_GOOD);
        let synchronize_cache = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            harness.command(0, &synchronize_cache, &[], 0).resp.status,
            STATUS_GOOD
        );
    }

    #[test]
    fn unmap_punches_the_ranges() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.as_file_mut().write_all(&[0xAB; 1 << 20]).unwrap();
        let mut options = DiskOptions::new(file.path());
        options.discard = block::DiscardMode::Unmap;
        let mut harness = Harness::new(vec![Disk::open(&options).unwrap()]);
        harness.command(0, &TEST_UNIT_READY, &[], 0);

        let mut parameters = vec![0, 22, 0, 16, 0, 0, 0, 0];
        parameters.extend_from_slice(&16u64.to_be_bytes());
        parameters.extend_from_slice(&8u32.to_be_bytes());
        parameters.extend_from_slice(&[0; 4]);
        let unmap = [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0];
        let result = harness.command(0, &unmap, &parameters, 0);
        assert_eq!(result.resp.status, STATUS_GOOD, "{result:?}");
        assert_eq!(result.resp.resid, 0);
        let back = harness.command(0, &read10(15, 10), &[], 5120);
        assert_eq!(&back.data_in[..512], &[0xAB; 512]);
        assert!(back.data_in[512..4608].iter().all(|&b| b == 0), "punched");
        assert_eq!(&back.data_in[4608..], &[0xAB; 512]);
    }

    #[test]
    fn error_policy_stop_holds_failed_and_later_requests_until_resumed() {
        use block::{ErrorPolicy, OnReadError, OnWriteError};
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(1 << 20).unwrap();
        let mut options = DiskOptions::new(file.path());
        options.read_only = true;
        let disk = Disk::open(&options)
            .unwrap()
            .with_error_policy(ErrorPolicy {
                write: OnWriteError::Stop,
                read: OnReadError::Report,
            });
        // The target believes the LUN is writable; the backend refuses with EROFS.
        let mut config = crate::scsi_device::test_driver::lun_config(0, &disk);
        config.read_only = false;
        let disk = Arc::new(disk);
        let mut harness = Harness::with_luns(vec![(config, Arc::clone(&disk))], 1, 0);
        harness.command(0, &TEST_UNIT_READY, &[], 0);
        const VQ: usize = 2;

        let write = [
            harness.request_buf(VQ, lun_field(0), 1, &write10(0, 1)),
            harness.data_buf(VQ, &[1; 512], false),
            harness.response_buf(VQ, 108),
        ];
        assert!(harness.submit(VQ, &write).is_empty(), "held, not answered");
        let status = disk.io_status();
        assert!(status.is_stopped());
        assert_eq!(
            (status.reason(), status.held(), status.stops()),
            (Some(libc::EROFS), 1, 1)
        );
        let read = [
            harness.request_buf(VQ, lun_field(0), 2, &read10(0, 1)),
            harness.response_buf(VQ, 108),
            harness.response_buf(VQ, 512),
        ];
        assert!(
            harness.submit(VQ, &read).is_empty(),
            "a later request of the stopped LUN waits too"
        );
        assert_eq!(status.held(), 2);
        let inquiry = harness.command(0, &INQUIRY, &[], 96);
        assert_eq!(
            inquiry.resp.status, STATUS_GOOD,
            "commands without disk I/O run"
        );

        // Resumed, both go to the backend again in order (as QEMU resubmits them all): the
        // write fails again and stops the LUN again, the read completes.
        assert!(status.resume());
        assert!(!status.resume(), "running already");
        // The wake-up writes the holding queue's notifier, which its host serves.
        harness.device.wake_held_requests();
        harness.host.serve_ready().unwrap();
        let used = harness.queues[VQ].used();
        assert_eq!(used.len(), 1, "{used:?}");
        assert_eq!(harness.result(&read, used[0].1).resp.status, STATUS_GOOD);
        assert_eq!((status.held(), status.stops()), (1, 2));
        assert!(status.is_stopped());

        // A reset drops what is held.
        harness.device.reset();
        assert_eq!(status.held(), 0);
    }

    #[test]
    fn backend_errors_become_check_conditions() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(1 << 20).unwrap();
        let disk = Arc::new(Disk::open(&DiskOptions::new(file.path())).unwrap());
        let mut config = crate::scsi_device::test_driver::lun_config(0, &disk);
        config.read_only = false;
        let mut options = DiskOptions::new(file.path());
        options.read_only = true;
        options.locking = false;
        let read_only_disk = Arc::new(Disk::open(&options).unwrap());
        // The target believes the LUN is writable; the backend refuses with EROFS.
        let mut harness = Harness::with_luns(vec![(config, read_only_disk)], 1, 0);
        harness.command(0, &TEST_UNIT_READY, &[], 0);
        let result = harness.command(0, &write10(0, 1), &[1; 512], 0);
        assert_eq!(result.resp.status, STATUS_CHECK_CONDITION);
        assert_eq!(sense_key_asc(&result), (7, 0x27, 0));
        assert_eq!(result.resp.resid, 512);
        assert_eq!(
            error_sense(libc::EIO, Direction::FromDisk),
            Sense::UNRECOVERED_READ_ERROR
        );
    }
}
