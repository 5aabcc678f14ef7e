//! One virtqueue as the driver runs it: its ring, the commands in flight, its MSI-X eventfd and
//! its kick. A queue can be taken out of the driver and run on its own thread (benchmarks), as
//! long as its kick does not need the driver's socket conversation.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::driver::{DriverError, Result, WaitMode};
use crate::guest_memory::DriverMemory;
use crate::scsi::{self, Event};
use crate::scsi_request::{InFlightCommand, ScsiRequest, ScsiResult, UsedChain};
use crate::split_queue::{Buffer, QueueError, SplitQueue, UsedElement};
use crate::vfio_client::PostedWriter;

/// How a queue tells the device about new buffers.
pub enum Kicker {
    /// A posted REGION_WRITE of the queue index to its notify address.
    Posted(PostedWriter),
    /// The ioeventfd the server handed out for the notify address.
    IoEventFd(File),
    /// The driver kicks with a waited REGION_WRITE; the queue only records that it owes one.
    Owner,
}

#[derive(Debug)]
/// What the driver made available at a chain head, until the device uses the chain.
enum PendingChain {
    Command(InFlightCommand),
    /// An event-queue buffer at this guest address.
    Event(u64),
    Raw,
}

/// Empty looks at the used ring between two clock reads of a polling `reap_raw`.
const RAW_SPINS_PER_CLOCK_READ: u32 = 64;

pub struct DriverQueue {
    index: u16,
    ring: SplitQueue,
    mem: Arc<DriverMemory>,
    notify: (u32, u64),
    vector: u16,
    irq: Option<EventFd>,
    kicker: Kicker,
    kick_owed: bool,
    in_flight: HashMap<u16, PendingChain>,
    done: VecDeque<(u16, UsedChain)>,
    events: VecDeque<Event>,
    next_tag: u64,
    cdb_size: u32,
    sense_size: u32,
    indirect_commands: bool,
    wait: WaitMode,
    timeout: Duration,
}

/// Settings a queue takes from the driver.
pub struct QueueSettings {
    /// (BAR, offset) of the queue's notify address.
    pub notify: (u32, u64),
    pub vector: u16,
    pub irq: Option<EventFd>,
    pub kicker: Kicker,
    pub cdb_size: u32,
    pub sense_size: u32,
    pub indirect_commands: bool,
    pub wait: WaitMode,
    pub timeout: Duration,
}

impl DriverQueue {
    pub fn new(index: u16, mut ring: SplitQueue, settings: QueueSettings) -> Result<Self> {
        if settings.wait == WaitMode::Poll {
            ring.set_interrupts_wanted(false)?;
        }
        Ok(DriverQueue {
            index,
            mem: ring.memory().clone(),
            ring,
            notify: settings.notify,
            vector: settings.vector,
            irq: settings.irq,
            kicker: settings.kicker,
            kick_owed: false,
            in_flight: HashMap::new(),
            done: VecDeque::new(),
            events: VecDeque::new(),
            // Tags carry the queue index so that they are unique across queues.
            next_tag: (u64::from(index) << 48) | 1,
            cdb_size: settings.cdb_size,
            sense_size: settings.sense_size,
            indirect_commands: settings.indirect_commands,
            wait: settings.wait,
            timeout: settings.timeout,
        })
    }

    /// The virtqueue index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// (BAR, offset) the queue's kicks are written to.
    pub fn notify_address(&self) -> (u32, u64) {
        self.notify
    }

    pub fn vector(&self) -> u16 {
        self.vector
    }

    /// The ring, to write raw descriptors for hostile tests.
    pub fn ring(&mut self) -> &mut SplitQueue {
        &mut self.ring
    }

    pub fn memory(&self) -> &Arc<DriverMemory> {
        &self.mem
    }

    /// Chains published and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether kicks go through an ioeventfd from GET_REGION_IO_FDS (not by message).
    pub fn kicks_by_eventfd(&self) -> bool {
        matches!(self.kicker, Kicker::IoEventFd(_))
    }

    /// Whether a kick is owed that only the driver can send (see `Kicker::Owner`).
    pub(crate) fn take_kick_owed(&mut self) -> bool {
        std::mem::take(&mut self.kick_owed)
    }

    pub fn kick(&mut self) -> Result<()> {
        match &mut self.kicker {
            Kicker::Posted(writer) => {
                let (bar, offset) = self.notify;
                writer.write(bar, offset, &self.index.to_le_bytes())?
            }
            Kicker::IoEventFd(fd) => fd
                .write_all(&1u64.to_ne_bytes())
                .map_err(DriverError::EventFd)?,
            Kicker::Owner => self.kick_owed = true,
        }
        Ok(())
    }

    fn publish(&mut self, heads: &[u16]) -> Result<()> {
        if self.ring.publish_many(heads)? {
            self.kick()?;
        }
        Ok(())
    }

    /// Adds a chain of caller-owned buffers, publishes and kicks; returns its head.
    pub fn submit_chain(&mut self, buffers: &[Buffer]) -> Result<u16> {
        let head = self.ring.add_chain(buffers)?;
        self.in_flight.insert(head, PendingChain::Raw);
        self.publish(&[head])?;
        Ok(head)
    }

    /// The same through an indirect table.
    pub fn submit_indirect_chain(&mut self, buffers: &[Buffer]) -> Result<u16> {
        let head = self.ring.add_indirect_chain(buffers)?;
        self.in_flight.insert(head, PendingChain::Raw);
        self.publish(&[head])?;
        Ok(head)
    }

    /// Publishes `head`, whose descriptors the caller wrote through `ring()`, and kicks.
    pub fn publish_raw(&mut self, head: u16) -> Result<()> {
        self.in_flight.insert(head, PendingChain::Raw);
        self.publish(&[head])
    }

    fn prepare(&mut self, request: &ScsiRequest) -> Result<u16> {
        let tag = request.tag.unwrap_or_else(|| {
            let tag = self.next_tag;
            self.next_tag += 1;
            tag
        });
        let (command, chain) =
            InFlightCommand::build(&self.mem, request, tag, self.cdb_size, self.sense_size)?;
        let added = if self.indirect_commands {
            self.ring.add_indirect_chain(&chain)
        } else {
            self.ring.add_chain(&chain)
        };
        match added {
            Ok(head) => {
                self.in_flight.insert(head, PendingChain::Command(command));
                Ok(head)
            }
            Err(e) => {
                command.release(&self.mem)?;
                Err(e.into())
            }
        }
    }

    /// Queues one command; returns its head.
    pub fn submit(&mut self, request: &ScsiRequest) -> Result<u16> {
        let head = self.prepare(request)?;
        self.publish(&[head])?;
        Ok(head)
    }

    /// Queues several commands with one avail-index update and at most one kick.
    pub fn submit_batch(&mut self, requests: &[ScsiRequest]) -> Result<Vec<u16>> {
        let mut heads = Vec::with_capacity(requests.len());
        for request in requests {
            heads.push(self.prepare(request)?);
        }
        self.publish(&heads)?;
        Ok(heads)
    }

    /// Posts `count` device-writable event buffers of `len` bytes (event queue only).
    pub fn post_event_buffers(&mut self, count: usize, len: u32) -> Result<Vec<u16>> {
        let mut heads = Vec::with_capacity(count);
        for _ in 0..count {
            let gpa = self.mem.alloc(u64::from(len), 8)?;
            let head = match self.ring.add_chain(&[Buffer::writable(gpa, len)]) {
                Ok(head) => head,
                Err(e) => {
                    self.mem.free(gpa)?;
                    return Err(e.into());
                }
            };
            self.in_flight.insert(head, PendingChain::Event(gpa));
            heads.push(head);
        }
        self.publish(&heads)?;
        Ok(heads)
    }

    /// Moves every used element into the completion list; returns how many.
    fn collect(&mut self) -> Result<usize> {
        let mut count = 0;
        while let Some(used) = self.ring.pop_used()? {
            let head = used.id as u16;
            let completion = match self.in_flight.remove(&head) {
                Some(PendingChain::Command(command)) => {
                    let result = command.finish(&self.mem, used);
                    command.release(&self.mem)?;
                    UsedChain::Scsi(result?)
                }
                Some(PendingChain::Event(gpa)) => {
                    let bytes = self.mem.read_vec(gpa, scsi::EVENT_SIZE)?;
                    self.mem.free(gpa)?;
                    self.events.push_back(scsi::decode_event(&bytes)?);
                    count += 1;
                    continue;
                }
                Some(PendingChain::Raw) | None => UsedChain::Raw(used),
            };
            self.done.push_back((head, completion));
            count += 1;
        }
        Ok(count)
    }

    /// Sleeps on the queue's interrupt (or spins once when polling), or reports a timeout when
    /// `deadline` has passed. Callers check the used ring just before; the eventfd counts
    /// interrupts raised since, so none is lost.
    fn sleep_until(&self, deadline: Instant) -> Result<()> {
        let now = Instant::now();
        if now >= deadline {
            return Err(DriverError::Timeout {
                queue: self.index,
                timeout: self.timeout,
            });
        }
        match (&self.irq, self.wait) {
            (Some(fd), WaitMode::Interrupt) => wait_eventfd(fd, deadline - now),
            (None, WaitMode::Interrupt) => {
                std::thread::sleep(Duration::from_millis(1));
                Ok(())
            }
            (_, WaitMode::Poll) => {
                std::hint::spin_loop();
                Ok(())
            }
        }
    }

    /// Completions available now or within the timeout (at least one, or a timeout error).
    pub fn reap(&mut self) -> Result<Vec<(u16, UsedChain)>> {
        let deadline = Instant::now() + self.timeout;
        loop {
            self.collect()?;
            if !self.done.is_empty() {
                return Ok(self.done.drain(..).collect());
            }
            self.sleep_until(deadline)?;
        }
    }

    /// Waits as `reap` does until the device has used a chain, then takes up to `max` used
    /// elements into `out` (cleared first) with one look at the used index: the benchmark's
    /// path, which allocates nothing and makes no syscall while polling finds work. For chains
    /// published through `ring()` only. Returns how long it waited for the first element (zero
    /// when it was there at the first look; the clock is read only when it was not).
    pub fn reap_raw(&mut self, out: &mut Vec<UsedElement>, max: usize) -> Result<Duration> {
        if !self.in_flight.is_empty() {
            return Err(DriverError::RawReapWithCommands(self.index));
        }
        out.clear();
        if self.ring.pop_used_batch(max, |used| out.push(used))? > 0 {
            return Ok(Duration::ZERO);
        }
        let started = Instant::now();
        let deadline = started + self.timeout;
        // A polling look costs a few nanoseconds: the deadline is checked every so many only.
        let looks_per_sleep = match self.wait {
            WaitMode::Interrupt => 1,
            WaitMode::Poll => RAW_SPINS_PER_CLOCK_READ,
        };
        let mut looks = 0;
        loop {
            looks += 1;
            if looks == looks_per_sleep {
                looks = 0;
                self.sleep_until(deadline)?;
            } else {
                std::hint::spin_loop();
            }
            if self.ring.pop_used_batch(max, |used| out.push(used))? > 0 {
                return Ok(started.elapsed());
            }
        }
    }

    /// Completions already in the used ring, without waiting.
    pub fn poll_completions(&mut self) -> Result<Vec<(u16, UsedChain)>> {
        self.collect()?;
        Ok(self.done.drain(..).collect())
    }

    /// Waits for the completion of `head`; other completions stay queued for `reap`.
    pub fn wait_for(&mut self, head: u16) -> Result<UsedChain> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(at) = self.done.iter().position(|(h, _)| *h == head) {
                if let Some((_, completion)) = self.done.remove(at) {
                    return Ok(completion);
                }
            }
            if self.collect()? == 0 {
                self.sleep_until(deadline)?;
            }
        }
    }

    /// Submits `request` and waits for its result.
    pub fn command(&mut self, request: &ScsiRequest) -> Result<ScsiResult> {
        let head = self.submit(request)?;
        self.owed_kick_unsupported()?;
        match self.wait_for(head)? {
            UsedChain::Scsi(result) => Ok(result),
            UsedChain::Raw(used) => Err(QueueError::UnknownHead { id: used.id }.into()),
        }
    }

    /// A queue on its own cannot send a waited kick.
    fn owed_kick_unsupported(&mut self) -> Result<()> {
        if self.take_kick_owed() {
            return Err(DriverError::KickNeedsDriver(self.index));
        }
        Ok(())
    }

    /// Events returned on this (event) queue, waiting up to `timeout` for at least one.
    pub fn take_events(&mut self, timeout: Duration) -> Result<Vec<Event>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.collect()?;
            if !self.events.is_empty() {
                return Ok(self.events.drain(..).collect());
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            match self.sleep_until(deadline) {
                Err(DriverError::Timeout { .. }) => return Ok(Vec::new()),
                other => other?,
            }
        }
    }

    /// Frees the buffers of everything in flight (after a device reset).
    pub fn release_all(&mut self) -> Result<()> {
        for (_, in_flight) in self.in_flight.drain() {
            match in_flight {
                PendingChain::Command(command) => command.release(&self.mem)?,
                PendingChain::Event(gpa) => self.mem.free(gpa)?,
                PendingChain::Raw => {}
            }
        }
        Ok(())
    }
}

/// Waits up to `timeout` for `fd` to become readable and clears its counter.
fn wait_eventfd(fd: &EventFd, timeout: Duration) -> Result<()> {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd that lives through the call.
    let ready = unsafe { libc::poll(&mut pollfd, 1, millis) };
    if ready < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(DriverError::EventFd(e));
        }
    }
    if ready > 0 {
        // Non-blocking eventfd: an empty counter here only means a spurious wake-up.
        let _ = fd.read();
    }
    Ok(())
}
