//! A virtio-scsi driver for the unit tests: it lays out queues in guest memory with
//! `MockSplitQueue`, builds descriptor chains (well-formed or hostile), kicks the device and
//! reads the used rings back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use block::Disk;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::wire_format::{CmdRequestHeader, CmdResponseHeader, CMD_RESP_HEADER_SIZE};
use super::{EngineFactory, ScsiDevice, ScsiDeviceConfig};
use crate::virtio_device::{Activation, ActiveQueue, Interrupt, VirtioDevice};
use crate::InlineQueueHost;
use scsi_disk::LunConfig;

pub const MEMORY_SIZE: u64 = 64 << 20;
const QUEUE_AREA: u64 = 0x1_0000;
const DATA_START: u64 = 0x10_0000;
const DATA_AREA: u64 = 0x40_0000;

/// Counts the interrupts of one queue.
#[derive(Default)]
pub struct CountingInterrupt(AtomicUsize);

impl CountingInterrupt {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Interrupt for CountingInterrupt {
    fn trigger(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// One descriptor as the tests describe it.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

pub struct TestQueue {
    mem: &'static GuestMemoryMmap,
    pub mock: MockSplitQueue<'static, GuestMemoryMmap>,
    /// What the transport's notifier is: written on a notify, kept across activations.
    notifier: Arc<EventFd>,
    pub interrupt: Arc<CountingInterrupt>,
    size: u16,
    next_desc: u16,
    next_data: u64,
    data_end: u64,
    used_seen: u16,
    /// The used ring, placed after the whole avail ring: the mock puts it `size` bytes after
    /// the avail ring's entries, over the avail ring's tail and its `used_event`.
    used_addr: GuestAddress,
}

impl TestQueue {
    fn new(mem: &'static GuestMemoryMmap, index: u16, size: u16) -> TestQueue {
        let data = DATA_START + u64::from(index) * DATA_AREA;
        let mock = MockSplitQueue::create(mem, GuestAddress(u64::from(index) * QUEUE_AREA), size);
        let avail_end = mock.avail_addr().0 + 4 + 2 * u64::from(size) + 2;
        TestQueue {
            mem,
            mock,
            notifier: Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()),
            interrupt: Arc::new(CountingInterrupt::default()),
            size,
            next_desc: 0,
            next_data: data,
            data_end: data + DATA_AREA,
            used_seen: 0,
            used_addr: GuestAddress(avail_end.next_multiple_of(4)),
        }
    }

    /// Guest memory for one buffer, from this queue's data area (reused round-robin).
    pub fn alloc(&mut self, len: u32) -> u64 {
        let len = u64::from(len).div_ceil(64) * 64;
        if self.next_data + len > self.data_end {
            self.next_data = self.data_end - DATA_AREA;
        }
        let addr = self.next_data;
        self.next_data += len;
        addr
    }

    /// Writes descriptors at explicit table indices, exactly as given.
    pub fn store(&mut self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let descriptor = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
        self.mock.desc_table().store(index, descriptor).unwrap();
    }

    /// Writes a well-formed chain and returns its head.
    pub fn chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, buf) in bufs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let next = (index + 1) % self.size;
            let mut flags = if buf.writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.store(index, buf.addr, buf.len, flags, next);
        }
        self.next_desc = (head + bufs.len().max(1) as u16) % self.size;
        head
    }

    /// Makes `head` available to the device.
    pub fn publish(&mut self, head: u16) {
        self.stage(head, 0);
        let idx = self.mock.avail().idx().load();
        self.mock.avail().idx().store(idx.wrapping_add(1));
    }

    /// Used entries added since the last call, as (head, len).
    pub fn used(&mut self) -> Vec<(u32, u32)> {
        let idx = u16::from_le(self.mem.read_obj(self.used_addr.unchecked_add(2)).unwrap());
        let mut entries = Vec::new();
        while self.used_seen != idx {
            let at = self.used_addr.0 + 4 + 8 * u64::from(self.used_seen % self.size);
            let id = u32::from_le(self.mem.read_obj(GuestAddress(at)).unwrap());
            let len = u32::from_le(self.mem.read_obj(GuestAddress(at + 4)).unwrap());
            entries.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        // Like Linux with callbacks enabled: interrupt me for the next used entry.
        self.set_used_event(self.used_seen);
        entries
    }

    /// The EVENT_IDX field after the avail ring.
    pub fn set_used_event(&self, value: u16) {
        let at = self.mock.avail_addr().0 + 4 + 2 * u64::from(self.size);
        self.mem.write_obj(value.to_le(), GuestAddress(at)).unwrap();
    }

    /// The avail idx the driver published last.
    pub fn avail_idx(&self) -> u16 {
        self.mock.avail().idx().load()
    }

    /// The EVENT_IDX field after the used ring: where the device wants the next kick.
    pub fn avail_event(&self) -> u16 {
        u16::from_le(self.mem.read_obj(self.avail_event_addr()).unwrap())
    }

    /// What a notify write of this queue writes.
    pub fn notifier(&self) -> &Arc<EventFd> {
        &self.notifier
    }

    /// Where the used ring is (flags, idx, then the entries).
    pub fn used_addr(&self) -> GuestAddress {
        self.used_addr
    }

    pub fn avail_event_addr(&self) -> GuestAddress {
        GuestAddress(self.used_addr.0 + 4 + 8 * u64::from(self.size))
    }

    /// Writes `head` into the avail ring `ahead` entries after the published ones, leaving
    /// the index alone: a driver on another vCPU publishes it later by moving the index.
    pub fn stage(&mut self, head: u16, ahead: u16) {
        let idx = self.mock.avail().idx().load().wrapping_add(ahead);
        self.mock
            .avail()
            .ring()
            .ref_at(usize::from(idx % self.size))
            .unwrap()
            .store(head);
    }

    /// The used ring's flags (NO_NOTIFY without EVENT_IDX).
    pub fn used_flags(&self) -> u16 {
        u16::from_le(self.mem.read_obj(self.used_addr).unwrap())
    }

    /// The rings as a driver initialises them before DRIVER_OK.
    fn reset_rings(&mut self) {
        self.mock.avail().idx().store(0);
        self.mem
            .write_obj(0u16, self.used_addr.unchecked_add(2))
            .unwrap();
        self.used_seen = 0;
        self.next_desc = 0;
        self.set_used_event(0);
    }

    fn queue(&self) -> Queue {
        let mut queue: Queue = self.mock.create_queue().unwrap();
        queue.try_set_used_ring_address(self.used_addr).unwrap();
        queue
    }
}

/// What came back for one command.
#[derive(Debug)]
pub struct CmdResult {
    pub resp: CmdResponseHeader,
    pub sense: Vec<u8>,
    pub data_in: Vec<u8>,
    pub used_len: u32,
}

pub fn lun_config(lun: u16, disk: &Disk) -> LunConfig {
    LunConfig {
        lun,
        block_count: disk.size() / u64::from(disk.logical_block_size()),
        block_size: disk.logical_block_size(),
        read_only: disk.read_only(),
        discard: disk.discard_supported(),
        write_zeroes: disk.write_zeroes_supported(),
        serial: format!("SERIAL{lun}"),
        rotational: false,
        optimal_transfer_blocks: 0,
        max_transfer_blocks: 0,
    }
}

/// Request queues do synchronous I/O, so that a command completes within its kick.
pub fn sync_engines() -> EngineFactory {
    Arc::new(|| Ok(Box::new(block::SyncEngine::new()?)))
}

/// A LUN field in the flat space addressing Linux uses.
pub fn lun_field(lun: u16) -> [u8; 8] {
    super::lun_address::encode(lun)
}

pub struct Harness {
    pub mem: &'static GuestMemoryMmap,
    /// What the device sees of `mem`: `unmap_all` and `map_again` play a client's DMA messages.
    pub memory: GuestMemoryAtomic<GuestMemoryMmap>,
    pub device: ScsiDevice,
    /// Serves the device's queues when the test calls `notify` (or `host.serve_ready()`).
    pub host: Arc<InlineQueueHost>,
    pub queues: Vec<TestQueue>,
    pub config_interrupt: Arc<CountingInterrupt>,
    pub sense_size: u32,
    pub cdb_size: u32,
}

impl Harness {
    /// A device with one request queue serving `disks` as LUNs 0, 1, ...
    pub fn new(disks: Vec<Disk>) -> Harness {
        let luns = disks
            .into_iter()
            .enumerate()
            .map(|(lun, disk)| (lun_config(lun as u16, &disk), Arc::new(disk)))
            .collect();
        Harness::with_luns(luns, 1, 0)
    }

    pub fn with_luns(
        luns: Vec<(LunConfig, Arc<Disk>)>,
        num_queues: u16,
        extra_features: u64,
    ) -> Harness {
        Harness::with_engines(luns, num_queues, extra_features, sync_engines())
    }

    pub fn with_engines(
        luns: Vec<(LunConfig, Arc<Disk>)>,
        num_queues: u16,
        extra_features: u64,
        engines: EngineFactory,
    ) -> Harness {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let host = Arc::new(InlineQueueHost::new().unwrap());
        let device = ScsiDevice::new(ScsiDeviceConfig {
            num_queues,
            queue_size: 64,
            luns,
            queue_host: host.clone(),
            engines,
            logger,
        })
        .unwrap();
        // Leaked so that the mock queues can borrow it for the whole test.
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_SIZE as usize)]).unwrap(),
        ));
        let queues = (0..num_queues + 2)
            .map(|index| TestQueue::new(mem, index, 64))
            .collect();
        let mut harness = Harness {
            mem,
            memory: GuestMemoryAtomic::new(mem.clone()),
            device,
            host,
            queues,
            config_interrupt: Arc::new(CountingInterrupt::default()),
            sense_size: 96,
            cdb_size: 32,
        };
        harness.activate(harness.device.features() | extra_features);
        harness
    }

    /// Hands fresh queues (rings as the driver left them) to the device.
    pub fn activate(&mut self, acked_features: u64) {
        for queue in &mut self.queues {
            queue.reset_rings();
        }
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(index, queue)| ActiveQueue {
                index: index as u16,
                queue: queue.queue(),
                notifier: queue.notifier.clone(),
                interrupt: queue.interrupt.clone(),
            })
            .collect();
        self.device
            .activate(Activation {
                memory: self.memory.clone(),
                acked_features,
                queues,
                config_interrupt: self.config_interrupt.clone(),
            })
            .unwrap();
    }

    /// Takes all of the device's memory away, as a client's DMA_UNMAP does.
    pub fn unmap_all(&self) {
        self.memory.lock().unwrap().replace(GuestMemoryMmap::new());
    }

    /// Gives the device its memory back, as a client's DMA_MAP does.
    pub fn map_again(&self) {
        self.memory.lock().unwrap().replace(self.mem.clone());
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        self.mem.read_slice(&mut data, GuestAddress(addr)).unwrap();
        data
    }

    /// A request header with `cdb` in a driver-readable buffer.
    pub fn request_buf(&mut self, vq: usize, lun: [u8; 8], tag: u64, cdb: &[u8]) -> Buf {
        let header = CmdRequestHeader {
            lun,
            tag,
            task_attr: 0,
            prio: 0,
            crn: 0,
        }
        .to_bytes();
        let len = header.len() as u32 + self.cdb_size;
        let addr = self.queues[vq].alloc(len);
        let mut bytes = header.to_vec();
        let mut cdb_field = cdb.to_vec();
        cdb_field.resize(self.cdb_size as usize, 0);
        bytes.extend_from_slice(&cdb_field);
        self.write(addr, &bytes);
        Buf {
            addr,
            len,
            writable: false,
        }
    }

    pub fn data_buf(&mut self, vq: usize, data: &[u8], writable: bool) -> Buf {
        let addr = self.queues[vq].alloc(data.len() as u32);
        self.write(addr, data);
        Buf {
            addr,
            len: data.len() as u32,
            writable,
        }
    }

    pub fn response_buf(&mut self, vq: usize, len: u32) -> Buf {
        self.data_buf(vq, &vec![0xEE; len as usize], true)
    }

    /// What a driver's notify write does: the transport writes the queue's notifier and
    /// its owner (here the inline host, on this thread) serves what became ready.
    pub fn notify(&self, vq: usize) {
        self.kick(vq);
        self.host.serve_ready().unwrap();
    }

    /// A driver's notify write that its queue's owner has not looked at yet.
    pub fn kick(&self, vq: usize) {
        self.queues[vq].notifier.write(1).unwrap();
    }

    /// Publishes a chain and notifies; returns the used entries of that notification.
    pub fn submit(&mut self, vq: usize, bufs: &[Buf]) -> Vec<(u32, u32)> {
        let head = self.queues[vq].chain(bufs);
        self.queues[vq].publish(head);
        self.notify(vq);
        self.queues[vq].used()
    }

    /// Runs one command on request queue 0 with a data-in buffer of `data_in_len` bytes.
    pub fn command(
        &mut self,
        lun: u16,
        cdb: &[u8],
        data_out: &[u8],
        data_in_len: u32,
    ) -> CmdResult {
        let vq = 2;
        let mut bufs = vec![self.request_buf(vq, lun_field(lun), 7, cdb)];
        if !data_out.is_empty() {
            bufs.push(self.data_buf(vq, data_out, false));
        }
        let resp_len = CMD_RESP_HEADER_SIZE as u32 + self.sense_size;
        bufs.push(self.response_buf(vq, resp_len));
        if data_in_len > 0 {
            bufs.push(self.response_buf(vq, data_in_len));
        }
        let used = self.submit(vq, &bufs);
        assert_eq!(used.len(), 1, "one used entry per command");
        self.result(&bufs, used[0].1)
    }

    /// Reads back the response of a command whose buffers were `bufs`.
    pub fn result(&self, bufs: &[Buf], used_len: u32) -> CmdResult {
        let resp_buf = bufs.iter().find(|buf| buf.writable).unwrap();
        let resp_bytes = self.read(resp_buf.addr, resp_buf.len as usize);
        let resp = CmdResponseHeader::parse(&resp_bytes);
        let sense_end = CMD_RESP_HEADER_SIZE + resp.sense_len as usize;
        let sense = resp_bytes[CMD_RESP_HEADER_SIZE..sense_end].to_vec();
        let data_in = bufs
            .iter()
            .filter(|buf| buf.writable)
            .skip(1)
            .flat_map(|buf| self.read(buf.addr, buf.len as usize))
            .collect();
        CmdResult {
            resp,
            sense,
            data_in,
            used_len,
        }
    }
}
