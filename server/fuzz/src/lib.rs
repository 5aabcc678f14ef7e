//! What the device-level fuzz targets share: guest memory with holes, a driver that sets up the
//! production virtio-pci function through its common-config registers as a guest does, and a
//! queue host whose engine holds requests in flight until the input lets them complete.
//!
//! Only the driver's side is written here; everything the device does runs the production code
//! (`VirtioPciFunction`, `ScsiDevice`, its queue workers and the SCSI emulation).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use block::{
    borrow_eventfd, BlockError, Completion, Disk, Engine, IoRequest, Submitted, SyncEngine,
};
use scsi_disk::LunConfig;
use server::controller;
use server::disk_spec::DiskSpec;
use slog::{o, Discard, Logger};
use virtio::bar_layout::{BarLayout, VIRTIO_BAR};
use virtio::common_cfg::{
    DEVICE_STATUS, DRIVER_FEATURE, DRIVER_FEATURE_SELECT, QUEUE_DESC, QUEUE_DEVICE, QUEUE_DRIVER,
    QUEUE_ENABLE, QUEUE_SELECT, QUEUE_SIZE,
};
use virtio::scsi_device::{CONFIG_SIZE, PCI_CLASS};
use virtio::{
    EngineFactory, GuestMemory, InlineQueueHost, QueueHost, QueueWorker, ScsiDevice,
    ScsiDeviceConfig, VirtioDevice, VirtioPciFunction,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Guest memory: two mapped areas with a hole between them, and one at the very top of the
/// address space, where address arithmetic overflows.
pub const LOW: u64 = 0;
pub const HIGH: u64 = 0x2_0000;
pub const TOP: u64 = 0xFFFF_FFFF_FFFE_0000;
pub const AREA: u64 = 0x1_0000;

/// Where the driver puts each queue's rings: a page per queue for each ring, in LOW.
pub const DESC_BASE: u64 = 0x0000;
pub const AVAIL_BASE: u64 = 0x4000;
pub const USED_BASE: u64 = 0x8000;
/// Free for buffers and indirect tables: LOW from here, HIGH and TOP.
pub const DATA_BASE: u64 = 0xC000;

pub fn guest_memory() -> GuestMemoryMmap {
    // Anonymous memory at fixed, valid ranges cannot fail to map.
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(LOW), AREA as usize),
        (GuestAddress(HIGH), AREA as usize),
        (GuestAddress(TOP), AREA as usize),
    ])
    .expect("fixed guest memory ranges")
}

/// LUN 0 a null disk of 512-byte blocks, LUN 1 one of 4096-byte blocks, opened as the
/// command line's `--disk` opens them.
pub fn luns() -> Vec<(LunConfig, Arc<Disk>)> {
    let log = Logger::root(Discard, o!());
    ["null,size=1M", "null,size=1M,logical-block-size=4096"]
        .iter()
        .zip(0..)
        .filter_map(|(spec, lun)| {
            let spec: DiskSpec = spec.parse().ok()?;
            controller::open_lun(&spec, lun, &log).ok()
        })
        .collect()
}

/// The fuzz input, read from the front.
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    /// The next `N` bytes, if there are as many.
    pub fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.0.split_first_chunk::<N>()?;
        self.0 = tail;
        Some(*head)
    }

    /// The next `len` bytes, or what is left.
    pub fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(len.min(self.0.len()));
        self.0 = tail;
        head
    }
}

/// The virtio-scsi function as a guest's driver sees it, with the queues served by the
/// production `InlineQueueHost` (a kick is served before `notify` returns) unless another host
/// takes them.
pub struct Driver {
    pub function: VirtioPciFunction<ScsiDevice>,
    pub memory: GuestMemory,
    common: u64,
    pub queue_size: u16,
    inline: Option<Arc<InlineQueueHost>>,
}

impl Driver {
    pub fn new(
        num_queues: u16,
        queue_size: u16,
        host: Option<(Arc<dyn QueueHost>, EngineFactory)>,
    ) -> Option<Driver> {
        let log = Logger::root(Discard, o!());
        let (queue_host, engines, inline) = match host {
            Some((host, engines)) => (host, engines, None),
            None => {
                let inline = Arc::new(InlineQueueHost::new().ok()?);
                let sync: EngineFactory = Arc::new(|| Ok(Box::new(SyncEngine::new()?)));
                let host: Arc<dyn QueueHost> = inline.clone();
                (host, sync, Some(inline))
            }
        };
        let device = ScsiDevice::new(ScsiDeviceConfig {
            num_queues,
            queue_size,
            luns: luns(),
            queue_host,
            engines,
            logger: log.clone(),
        })
        .ok()?;
        let queue_count = device.queue_count();
        let memory = GuestMemory::new(guest_memory());
        let function = VirtioPciFunction::new(device, PCI_CLASS, memory.clone(), log).ok()?;
        let common = BarLayout::new(queue_count, CONFIG_SIZE, queue_count + 1)
            .common
            .start;
        Some(Driver {
            function,
            memory,
            common,
            queue_size,
            inline,
        })
    }

    pub fn common_write(&mut self, field: u64, value: &[u8]) {
        let _ = self
            .function
            .bar_write(VIRTIO_BAR, self.common + field, value);
    }

    pub fn set_status(&mut self, status: u8) {
        self.common_write(DEVICE_STATUS, &[status]);
    }

    /// ACKNOWLEDGE, DRIVER, the features (VERSION_1 always), FEATURES_OK.
    pub fn negotiate(&mut self, features: u64) {
        self.set_status(0);
        self.set_status(1);
        self.set_status(3);
        for select in 0..2u32 {
            self.common_write(DRIVER_FEATURE_SELECT, &select.to_le_bytes());
            let half = (features >> (32 * select)) as u32 | if select == 1 { 1 } else { 0 };
            self.common_write(DRIVER_FEATURE, &half.to_le_bytes());
        }
        self.set_status(0xB);
    }

    /// Enables `queue` with its rings at the given addresses.
    pub fn setup_queue(&mut self, queue: u16, size: u16, desc: u64, avail: u64, used: u64) {
        self.common_write(QUEUE_SELECT, &queue.to_le_bytes());
        self.common_write(QUEUE_SIZE, &size.to_le_bytes());
        self.common_write(QUEUE_DESC, &desc.to_le_bytes());
        self.common_write(QUEUE_DRIVER, &avail.to_le_bytes());
        self.common_write(QUEUE_DEVICE, &used.to_le_bytes());
        self.common_write(QUEUE_ENABLE, &1u16.to_le_bytes());
    }

    /// The standard place of `queue`'s rings.
    pub fn rings(queue: u16) -> (u64, u64, u64) {
        let page = 0x1000 * u64::from(queue % 4);
        (DESC_BASE + page, AVAIL_BASE + page, USED_BASE + page)
    }

    pub fn driver_ok(&mut self) {
        self.set_status(0xF);
    }

    /// The driver's notify write for `queue`; a queue served inline is served before this
    /// returns, as `VirtioFunction` does for kicks on the main loop.
    pub fn notify(&mut self, queue: u16) {
        let offset = self
            .function
            .queue_notify_addresses()
            .into_iter()
            .find(|address| address.queue == queue)
            .map(|address| address.offset);
        let Some(offset) = offset else {
            return;
        };
        let _ = self
            .function
            .bar_write(VIRTIO_BAR, offset, &queue.to_le_bytes());
        if let Some(inline) = &self.inline {
            let _ = inline.serve_ready();
        }
    }

    /// Puts `bytes` in guest memory where they fit; what falls into a hole is dropped.
    pub fn poke(&self, address: u64, bytes: &[u8]) {
        let memory = vm_memory::GuestAddressSpace::memory(&self.memory);
        let _ = memory.write_slice(bytes, GuestAddress(address));
    }

    /// A descriptor at `index` of the table at `table`.
    pub fn descriptor(&self, table: u64, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut bytes = [0u8; 16];
        bytes[0..8].copy_from_slice(&addr.to_le_bytes());
        bytes[8..12].copy_from_slice(&len.to_le_bytes());
        bytes[12..14].copy_from_slice(&flags.to_le_bytes());
        bytes[14..16].copy_from_slice(&next.to_le_bytes());
        self.poke(table.wrapping_add(16 * u64::from(index)), &bytes);
    }

    /// Makes `head` available on the avail ring at `avail` of a queue of `size` entries.
    pub fn publish(&self, avail: u64, size: u16, head: u16) {
        let memory = vm_memory::GuestAddressSpace::memory(&self.memory);
        let idx: u16 = memory.read_obj(GuestAddress(avail + 2)).unwrap_or_default();
        let slot = avail + 4 + 2 * u64::from(idx % size.max(1));
        let _ = memory.write_obj(head, GuestAddress(slot));
        let _ = memory.write_obj(idx.wrapping_add(1), GuestAddress(avail + 2));
    }
}

/// An engine that does each request's I/O at once (a real `SyncEngine`) but hands its
/// completions back only as the fuzz input releases them: requests stay in flight meanwhile.
pub struct HeldEngine {
    inner: SyncEngine,
    done: Vec<Completion>,
    release: Arc<AtomicUsize>,
    eventfd: EventFd,
}

impl Engine for HeldEngine {
    fn submit(
        &mut self,
        disk: &Arc<Disk>,
        request: IoRequest,
        user_data: u64,
    ) -> Result<Submitted, BlockError> {
        // Held like the others: the fuzz input decides when it completes.
        if let Submitted::Done(result) = self.inner.submit(disk, request, user_data)? {
            self.done.push(Completion { user_data, result });
        }
        Ok(Submitted::Started)
    }

    fn submit_pending(&mut self) {
        self.inner.submit_pending();
    }

    fn completion_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        Some(borrow_eventfd(&self.eventfd))
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        let mut taken = 0;
        let _ = self
            .release
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |budget| {
                taken = budget.min(self.done.len());
                Some(budget - taken)
            });
        out.extend(self.done.drain(..taken));
    }
}

/// Takes the device's workers at activation and serves them on the fuzzing thread when the
/// input says so; on reset it completes everything in flight first, as the iothread pool does.
#[derive(Default)]
pub struct InlineHost {
    pub workers: Mutex<Vec<Box<dyn QueueWorker>>>,
    /// How many more completions the engines may hand back, whichever reaps first.
    pub release: Arc<AtomicUsize>,
}

impl InlineHost {
    pub fn new() -> Arc<InlineHost> {
        Arc::new(InlineHost::default())
    }

    /// The engine factory to give the device with this host.
    pub fn engines(self: &Arc<Self>) -> EngineFactory {
        let release = Arc::clone(&self.release);
        Arc::new(move || {
            Ok(Box::new(HeldEngine {
                inner: SyncEngine::new()?,
                done: Vec::new(),
                release: Arc::clone(&release),
                eventfd: EventFd::new(libc::EFD_NONBLOCK).map_err(BlockError::Eventfd)?,
            }))
        })
    }

    /// Runs `call` on the worker of virtqueue `queue`, if the device has handed it over.
    pub fn with_worker(&self, queue: u16, call: impl FnOnce(&mut dyn QueueWorker)) {
        let mut workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(worker) = workers.iter_mut().find(|w| w.queue_index() == queue) {
            call(&mut **worker);
        }
    }
}

impl QueueHost for InlineHost {
    fn adopt(&self, worker: Box<dyn QueueWorker>) {
        self.workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(worker);
    }

    fn release_all(&self) {
        let mut workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        // Every request's I/O is done; handing back all completions must empty every queue,
        // TMFs waiting on those requests included, within a few passes.
        for _ in 0..4 {
            self.release.store(usize::MAX, Ordering::SeqCst);
            for worker in workers.iter_mut() {
                worker.completions_ready();
            }
        }
        for worker in workers.iter() {
            assert_eq!(
                worker.in_flight(),
                0,
                "vq {}: requests still in flight after all I/O completed: a reset would wait forever",
                worker.queue_index()
            );
        }
        workers.clear();
        self.release.store(0, Ordering::SeqCst);
    }
}
