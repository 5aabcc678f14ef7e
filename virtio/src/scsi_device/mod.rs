//! The virtio-scsi device (virtio 1.2 §5.6): one target with the configured disk LUNs, a control
//! queue, an event queue and `num_queues` request queues.
//!
//! Each request queue is served by a worker that owns its queue and I/O engine (and can move to
//! an iothread); the workers read the LUNs from one immutable snapshot (`scsi_disk::LunTable`).

mod backend_errors;
mod config;
mod control_queue;
mod disk_io;
mod event_queue;
mod kick_batching;
mod lun_address;
mod lun_counters;
mod lun_data;
mod memory_leases;
mod queue_counters;
mod request_queue;
mod task_set;
#[cfg(test)]
mod test_driver;
mod virtqueue;
mod wire_format;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use block::{BlockError, Disk, Engine};
use slog::{debug, Logger};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_SCSI;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_bindings::virtio_scsi::{VIRTIO_SCSI_F_CHANGE, VIRTIO_SCSI_F_HOTPLUG};

use crate::memory_fault::{FaultScope, GuardedWorker, ShrinkableMemory};
use crate::queue_worker::{QueueHost, QueueWorker};
use crate::virtio_device::{ActivateError, Activation, VirtioDevice};
use scsi_disk::{LunConfig, TargetError};

pub use config::CONFIG_SIZE;
pub use event_queue::{EventDelivery, ScsiEvent};
pub use lun_counters::LunStats;
pub use lun_data::RemovedLun;
pub use queue_counters::{QueueCounters, QueueStats, LATENCY_BUCKETS, SENSE_KEYS};

use config::ScsiConfig;
use control_queue::ControlQueue;
use event_queue::{EventQueue, SharedEventQueue};
use lun_data::{LunData, LunTable};
use request_queue::RequestQueueWorker;
use task_set::TaskSet;
use virtqueue::{NeedsReset, Virtqueue};

/// PCI class code of a SCSI storage controller (mass storage, SCSI, no programming interface).
pub const PCI_CLASS: u32 = 0x01_00_00;

const CONTROL_QUEUE: u16 = 0;
const EVENT_QUEUE: u16 = 1;
const FIRST_REQUEST_QUEUE: u16 = 2;

/// Virtqueues are limited to 1024 per device by virtio-pci drivers (and QEMU).
const MAX_QUEUES: u16 = 1024;
const MAX_QUEUE_SIZE: u16 = 32768;
/// Largest transfer the driver may send, in 512-byte sectors, unless the LUNs set a lower one.
const DEFAULT_MAX_SECTORS: u32 = 0xFFFF;

/// How the device is built.
pub struct ScsiDeviceConfig {
    /// Request queues (the control and event queues come on top).
    pub num_queues: u16,
    /// Largest queue size, a power of two.
    pub queue_size: u16,
    /// The target's logical units, each with the disk that stores it.
    pub luns: Vec<(LunConfig, Arc<Disk>)>,
    /// Serves the queues from activation to reset, on the threads it chooses.
    pub queue_host: Arc<dyn QueueHost>,
    /// Builds each request queue's I/O engine at activation.
    pub engines: EngineFactory,
    pub logger: Logger,
}

#[derive(Debug, thiserror::Error)]
pub enum ScsiDeviceError {
    #[error("num-queues {0} is out of range 1..={max}", max = MAX_QUEUES - 2)]
    NumQueues(u16),
    #[error("queue-size {0} is not a power of two in 4..={MAX_QUEUE_SIZE}")]
    QueueSize(u16),
    #[error("LUN {lun}: its configuration ({config_bytes} bytes in {config_block_size}-byte blocks) does not match its disk ({disk_bytes} bytes in {disk_block_size}-byte blocks)")]
    DiskMismatch {
        lun: u16,
        config_bytes: u64,
        config_block_size: u32,
        disk_bytes: u64,
        disk_block_size: u32,
    },
    #[error("SCSI target: {0}")]
    Target(#[from] TargetError),
}

/// A LUN as the device serves it.
#[derive(Debug, Clone)]
pub struct LunState {
    pub config: LunConfig,
    pub disk: Arc<Disk>,
}

/// Builds the I/O engine of each request queue at activation.
pub type EngineFactory = Arc<dyn Fn() -> Result<Box<dyn Engine>, BlockError> + Send + Sync>;

/// Queues being served, from DRIVER_OK to reset.
struct ActiveQueues {
    events: Option<SharedEventQueue>,
    acked_features: u64,
    /// Raises DEVICE_NEEDS_RESET when guest memory faults under the device.
    on_fault: Arc<dyn Fn() + Send + Sync>,
}

pub struct ScsiDevice {
    config: ScsiConfig,
    num_queues: u16,
    queue_size: u16,
    luns: Arc<LunTable>,
    needs_reset: Arc<AtomicBool>,
    /// Whether the queue workers must guard their accesses to guest memory.
    shrinkable: ShrinkableMemory,
    /// Per virtqueue, kept across resets.
    counters: Vec<Arc<QueueCounters>>,
    active: Option<ActiveQueues>,
    /// Where the queues go at activation.
    host: Arc<dyn QueueHost>,
    engines: EngineFactory,
    /// The task set of the current activation, for listing the commands in flight from any
    /// thread (locked only at activation and by that listing, never per request).
    tasks: Arc<Mutex<Option<Arc<TaskSet>>>>,
    logger: Logger,
}

impl ScsiDevice {
    pub fn new(config: ScsiDeviceConfig) -> Result<ScsiDevice, ScsiDeviceError> {
        let ScsiDeviceConfig {
            num_queues,
            queue_size,
            luns,
            queue_host,
            engines,
            logger,
        } = config;
        if num_queues == 0 || num_queues > MAX_QUEUES - 2 {
            return Err(ScsiDeviceError::NumQueues(num_queues));
        }
        if !queue_size.is_power_of_two() || !(4..=MAX_QUEUE_SIZE).contains(&queue_size) {
            return Err(ScsiDeviceError::QueueSize(queue_size));
        }
        let mut max_sectors = DEFAULT_MAX_SECTORS;
        let mut max_lun = 0;
        for (lun_config, disk) in &luns {
            let lun = lun_config.lun;
            check_disk(lun_config, disk)?;
            if lun_config.max_transfer_blocks > 0 {
                let sectors = u64::from(lun_config.max_transfer_blocks)
                    * u64::from(lun_config.block_size)
                    / 512;
                max_sectors = max_sectors.min(u32::try_from(sectors).unwrap_or(u32::MAX));
            }
            max_lun = max_lun.max(lun);
        }
        let luns = LunTable::new(
            luns.into_iter()
                .map(|(config, disk)| (config, LunData::new(disk, num_queues))),
        )?;
        Ok(ScsiDevice {
            config: ScsiConfig::new(num_queues, queue_size, max_sectors.max(1), max_lun),
            num_queues,
            queue_size,
            luns: Arc::new(luns),
            needs_reset: Arc::new(AtomicBool::new(false)),
            shrinkable: ShrinkableMemory::default(),
            counters: (0..num_queues + FIRST_REQUEST_QUEUE)
                .map(|_| Arc::default())
                .collect(),
            active: None,
            host: queue_host,
            engines,
            tasks: Arc::new(Mutex::new(None)),
            logger,
        })
    }

    /// Lists the commands in flight as (lun, tag), from any thread, for as long as it is kept.
    pub fn in_flight_probe(&self) -> impl Fn() -> Vec<(u16, u64)> + Send + 'static {
        let tasks = Arc::clone(&self.tasks);
        move || commands_in_flight(&tasks)
    }

    /// Lists the disks of the LUNs served as (lun, disk), from any thread, for as long as it is
    /// kept. It keeps the LUN table, and so the disks, open after the device is gone: the
    /// application flushes and closes them as steps of its exit.
    pub fn disks_probe(&self) -> impl Fn() -> Vec<(u16, Arc<Disk>)> + Send + 'static {
        let luns = Arc::clone(&self.luns);
        move || {
            luns.load()
                .luns()
                .map(|unit| (unit.config().lun, Arc::clone(&unit.data().disk)))
                .collect()
        }
    }

    /// The commands in flight now, as (lun, tag).
    pub fn commands_in_flight(&self) -> Vec<(u16, u64)> {
        commands_in_flight(&self.tasks)
    }

    /// The LUNs served now, by LUN number.
    pub fn luns(&self) -> Vec<LunState> {
        self.luns
            .load()
            .luns()
            .map(|unit| LunState {
                config: unit.config().clone(),
                disk: Arc::clone(&unit.data().disk),
            })
            .collect()
    }

    /// What each LUN served now has done since it was added, by LUN number.
    pub fn lun_stats(&self) -> Vec<LunStats> {
        self.luns
            .load()
            .luns()
            .map(|unit| unit.data().counters.snapshot(unit.config().lun))
            .collect()
    }

    /// Adds a LUN while the device runs and tells the driver to scan it (TRANSPORT_RESET,
    /// RESCAN); the other LUNs report REPORTED LUNS DATA HAS CHANGED.
    pub fn add_lun(
        &mut self,
        config: LunConfig,
        disk: Arc<Disk>,
    ) -> Result<EventDelivery, ScsiDeviceError> {
        check_disk(&config, &disk)?;
        let lun = config.lun;
        self.luns.add(config, LunData::new(disk, self.num_queues))?;
        Ok(self.post_event(ScsiEvent::LunAdded { lun }))
    }

    /// Takes a LUN away from the target: new commands for it fail, and its stats are gone. The
    /// LUN is returned so that the caller can wait until it is drained, then call
    /// `lun_removed`. Commands its error policy held are answered as aborted, as QEMU
    /// cancels the requests of a paused SCSI device it unplugs; none was acknowledged.
    pub fn remove_lun(&mut self, lun: u16) -> Result<RemovedLun, ScsiDeviceError> {
        let removed = RemovedLun(self.luns.remove(lun)?);
        self.wake_held_requests();
        Ok(removed)
    }

    /// The LUN's requests are drained: the device lets go of it and tells the driver it is
    /// gone (TRANSPORT_RESET, REMOVED).
    pub fn lun_removed(&mut self, lun: u16) -> EventDelivery {
        self.luns.forget(lun);
        self.post_event(ScsiEvent::LunRemoved { lun })
    }

    /// The LUN's disk has a new size: the LUN reports CAPACITY DATA HAS CHANGED and the driver
    /// is told (PARAM_CHANGE 2A/09).
    pub fn lun_resized(&mut self, lun: u16) -> Result<EventDelivery, ScsiDeviceError> {
        let block_count = {
            let luns = self.luns.load();
            let disk = &luns
                .lun(lun)
                .ok_or(TargetError::NoSuchLun(lun))?
                .data()
                .disk;
            disk.size() / u64::from(disk.logical_block_size())
        };
        self.luns.resize(lun, block_count)?;
        let sense = scsi_disk::Sense::CAPACITY_DATA_HAS_CHANGED;
        Ok(self.post_event(ScsiEvent::ParamChange {
            lun,
            asc: sense.asc,
            ascq: sense.ascq,
        }))
    }

    /// Wakes the request queues that hold commands for LUNs their error policy stopped, after
    /// an operator resumed some (`IoStatus::resume`, QMP's `cont`) or removed one: they
    /// resubmit the held commands of running LUNs in the order they came, and abort those of
    /// removed LUNs.
    pub fn wake_held_requests(&self) {
        if let Some(tasks) = self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            tasks.wake_holders();
        }
    }

    /// Tells the driver about a LUN change through the event queue.
    pub fn post_event(&mut self, event: ScsiEvent) -> EventDelivery {
        let Some(active) = self.active.as_mut() else {
            return EventDelivery::Inactive;
        };
        let feature = match event {
            ScsiEvent::LunAdded { .. } | ScsiEvent::LunRemoved { .. } => VIRTIO_SCSI_F_HOTPLUG,
            ScsiEvent::ParamChange { .. } => VIRTIO_SCSI_F_CHANGE,
        };
        if active.acked_features & (1 << feature) == 0 {
            return EventDelivery::NotNegotiated;
        }
        let Some(events) = active.events.as_ref() else {
            return EventDelivery::Inactive;
        };
        // Posting writes an event into a guest buffer from this thread, outside any worker.
        let scope = FaultScope::enter();
        let delivery = events.post(event);
        if scope.faulted() {
            (active.on_fault)();
        }
        delivery
    }
}

fn commands_in_flight(tasks: &Mutex<Option<Arc<TaskSet>>>) -> Vec<(u16, u64)> {
    tasks
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .map(|tasks| tasks.snapshot())
        .unwrap_or_default()
}

/// A LUN's configuration must describe its disk.
fn check_disk(config: &LunConfig, disk: &Disk) -> Result<(), ScsiDeviceError> {
    let config_bytes = config
        .block_count
        .saturating_mul(u64::from(config.block_size));
    if config.block_size != disk.logical_block_size() || config_bytes != disk.size() {
        return Err(ScsiDeviceError::DiskMismatch {
            lun: config.lun,
            config_bytes,
            config_block_size: config.block_size,
            disk_bytes: disk.size(),
            disk_block_size: disk.logical_block_size(),
        });
    }
    Ok(())
}

impl VirtioDevice for ScsiDevice {
    fn memory_may_shrink(&mut self) {
        self.shrinkable.mapped();
    }

    fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    fn queue_stats(&self) -> Vec<QueueStats> {
        (FIRST_REQUEST_QUEUE..)
            .zip(&self.counters[usize::from(FIRST_REQUEST_QUEUE)..])
            .map(|(vq, counters)| counters.snapshot(vq))
            .collect()
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_SCSI
    }

    fn queue_count(&self) -> u16 {
        self.num_queues + FIRST_REQUEST_QUEUE
    }

    fn max_queue_size(&self) -> u16 {
        self.queue_size
    }

    fn features(&self) -> u64 {
        [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_RING_F_INDIRECT_DESC,
            VIRTIO_SCSI_F_HOTPLUG,
            VIRTIO_SCSI_F_CHANGE,
        ]
        .iter()
        .fold(0, |features, bit| features | 1 << bit)
    }

    fn config_size(&self) -> usize {
        CONFIG_SIZE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if !self.config.write(offset, data) {
            debug!(self.logger, "read-only config write ignored"; "offset" => offset, "len" => data.len());
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation {
            memory,
            acked_features,
            queues,
            config_interrupt,
        } = activation;
        let event_idx = acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let needs_reset = NeedsReset::new(Arc::clone(&self.needs_reset), config_interrupt);
        let on_fault: Arc<dyn Fn() + Send + Sync> = {
            let needs_reset = needs_reset.clone();
            Arc::new(move || needs_reset.raise())
        };
        let mut table_sizes = vec![0; usize::from(self.num_queues)];
        for active in &queues {
            if let Some(size) = active
                .index
                .checked_sub(FIRST_REQUEST_QUEUE)
                .and_then(|queue| table_sizes.get_mut(usize::from(queue)))
            {
                *size = virtio_queue::QueueT::size(&active.queue);
            }
        }
        let tasks = Arc::new(TaskSet::new(&table_sizes).map_err(ActivateError::TaskEventfd)?);
        *self.tasks.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&tasks));
        let mut events = None;
        let mut workers: Vec<Box<dyn QueueWorker>> = Vec::new();
        for active in queues {
            let index = active.index;
            if index >= self.queue_count() {
                return Err(ActivateError::NoSuchQueue {
                    index,
                    count: self.queue_count(),
                });
            }
            let queue = Virtqueue::new(
                active,
                memory.clone(),
                event_idx,
                needs_reset.clone(),
                Arc::clone(&self.counters[usize::from(index)]),
                &self.logger,
            );
            let worker: Box<dyn QueueWorker> = match index {
                CONTROL_QUEUE => Box::new(ControlQueue::new(
                    queue,
                    Arc::clone(&self.luns),
                    Arc::clone(&tasks),
                )),
                EVENT_QUEUE => {
                    let shared = SharedEventQueue::new(EventQueue::new(queue));
                    events = Some(shared.handle());
                    Box::new(shared)
                }
                _ => {
                    let engine = (self.engines)().map_err(ActivateError::Engine)?;
                    Box::new(RequestQueueWorker::new(
                        queue,
                        Arc::clone(&self.luns),
                        Arc::clone(self.config.header_sizes()),
                        engine,
                        Arc::clone(&tasks),
                    ))
                }
            };
            workers.push(Box::new(GuardedWorker::new(
                worker,
                Arc::clone(&on_fault),
                self.shrinkable.clone(),
                &self.logger,
            )));
        }
        // Any queue may be missing: SeaBIOS, for one, enables only the first request queue.
        workers
            .into_iter()
            .for_each(|worker| self.host.adopt(worker));
        self.active = Some(ActiveQueues {
            events,
            acked_features,
            on_fault,
        });
        Ok(())
    }

    fn reset(&mut self) {
        // The host waits for the requests in flight on its threads.
        self.host.release_all();
        self.active = None;
        self.config.reset();
        self.needs_reset.store(false, Ordering::SeqCst);
        self.luns.load().reset_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi_device::test_driver::{lun_config, sync_engines};
    use crate::InlineQueueHost;

    fn device(
        num_queues: u16,
        queue_size: u16,
        luns: Vec<(LunConfig, Arc<Disk>)>,
    ) -> Result<ScsiDevice, ScsiDeviceError> {
        let logger = Logger::root(slog::Discard, slog::o!());
        ScsiDevice::new(ScsiDeviceConfig {
            num_queues,
            queue_size,
            luns,
            queue_host: Arc::new(InlineQueueHost::new().unwrap()),
            engines: sync_engines(),
            logger,
        })
    }

    fn null_lun(lun: u16) -> (LunConfig, Arc<Disk>) {
        let disk = Disk::null(1 << 20, 512).unwrap();
        (lun_config(lun, &disk), Arc::new(disk))
    }

    #[test]
    fn identity_features_and_config() {
        let device = device(4, 128, vec![null_lun(0), null_lun(5)]).unwrap();
        assert_eq!(device.device_type(), 8);
        assert_eq!(device.queue_count(), 6);
        assert_eq!(device.max_queue_size(), 128);
        assert_eq!(
            device.features(),
            1 << 32 | 1 << 29 | 1 << 28 | 1 << 1 | 1 << 2
        );
        assert_eq!(device.config_size(), 36);
        let mut config = [0u8; 36];
        device.read_config(0, &mut config);
        assert_eq!(&config[0..4], &4u32.to_le_bytes());
        assert_eq!(&config[4..8], &126u32.to_le_bytes());
        assert_eq!(&config[32..36], &5u32.to_le_bytes(), "max_lun");
        assert_eq!(PCI_CLASS, 0x010000);
        assert!(!device.needs_reset());
    }

    #[test]
    fn max_sectors_follows_the_luns_transfer_limit() {
        let (mut config, disk) = null_lun(0);
        config.max_transfer_blocks = 256;
        let device = device(1, 64, vec![(config, disk)]).unwrap();
        let mut max_sectors = [0u8; 4];
        device.read_config(8, &mut max_sectors);
        assert_eq!(u32::from_le_bytes(max_sectors), 256);
    }

    #[test]
    fn bad_configurations() {
        assert!(matches!(
            device(0, 64, vec![null_lun(0)]),
            Err(ScsiDeviceError::NumQueues(0))
        ));
        assert!(matches!(
            device(1023, 64, vec![null_lun(0)]),
            Err(ScsiDeviceError::NumQueues(1023))
        ));
        assert!(matches!(
            device(1, 100, vec![null_lun(0)]),
            Err(ScsiDeviceError::QueueSize(100))
        ));
        assert!(matches!(
            device(1, 2, vec![null_lun(0)]),
            Err(ScsiDeviceError::QueueSize(2))
        ));
        assert!(matches!(
            device(1, 64, vec![null_lun(1), null_lun(1)]),
            Err(ScsiDeviceError::Target(TargetError::DuplicateLun(1)))
        ));
        let (mut config, disk) = null_lun(0);
        config.block_count += 1;
        let error = device(1, 64, vec![(config, disk)]).err().unwrap();
        assert!(matches!(
            error,
            ScsiDeviceError::DiskMismatch { lun: 0, .. }
        ));
        assert!(error.to_string().contains("1049088 bytes"), "{error}");
    }

    #[test]
    fn activation_accepts_any_subset_of_queues() {
        let mut device = device(1, 64, vec![null_lun(0)]).unwrap();
        let activation = Activation {
            memory: crate::virtio_device::GuestMemory::new(
                vm_memory::GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x10000)])
                    .unwrap(),
            ),
            acked_features: device.features(),
            queues: Vec::new(),
            config_interrupt: Arc::new(
                crate::scsi_device::test_driver::CountingInterrupt::default(),
            ),
        };
        // SeaBIOS enables only some queues; the others have no worker to wake.
        device.activate(activation).unwrap();
        assert_eq!(
            device.post_event(ScsiEvent::LunAdded { lun: 0 }),
            EventDelivery::Inactive
        );
    }

    /// Holds every request until the test lets them complete.
    struct HeldEngine {
        released: Arc<AtomicBool>,
        held: Vec<(u64, u64)>,
        eventfd: Arc<vmm_sys_util::eventfd::EventFd>,
    }

    impl Engine for HeldEngine {
        fn submit(
            &mut self,
            _disk: &Arc<Disk>,
            request: block::IoRequest,
            user_data: u64,
        ) -> Result<(), BlockError> {
            let len = match &request {
                block::IoRequest::Read { buffers, .. } => buffers.len(),
                _ => 0,
            };
            self.held.push((user_data, len));
            Ok(())
        }
        fn submit_pending(&mut self) {}
        fn completion_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
            Some(block::borrow_eventfd(&self.eventfd))
        }
        fn reap(&mut self, out: &mut Vec<block::Completion>) {
            if self.released.load(Ordering::SeqCst) {
                out.extend(
                    self.held
                        .drain(..)
                        .map(|(user_data, len)| block::Completion {
                            user_data,
                            result: Ok(len),
                        }),
                );
            }
        }
    }

    #[test]
    fn tmfs_see_and_wait_for_commands_in_flight_on_other_queues() {
        use crate::scsi_device::test_driver::{lun_field, Harness};
        use virtio_bindings::virtio_scsi::{
            VIRTIO_SCSI_T_TMF, VIRTIO_SCSI_T_TMF_ABORT_TASK, VIRTIO_SCSI_T_TMF_QUERY_TASK,
        };
        const CTRL: usize = 0;
        const REQUEST: usize = 2;

        let released = Arc::new(AtomicBool::new(false));
        let completions = Arc::new(vmm_sys_util::eventfd::EventFd::new(0).unwrap());
        let (engine_released, engine_completions) = (released.clone(), completions.clone());
        let disk = Disk::null(1 << 20, 512).unwrap();
        let mut harness = Harness::with_engines(
            vec![(lun_config(0, &disk), Arc::new(disk))],
            1,
            0,
            Arc::new(move || {
                Ok(Box::new(HeldEngine {
                    released: engine_released.clone(),
                    held: Vec::new(),
                    eventfd: engine_completions.clone(),
                }))
            }),
        );
        // Takes the POWER ON unit attention, which would answer the READ below at once.
        harness.command(0, &[0; 6], &[], 0);

        // READ(10) of one block, tag 5, held by the engine.
        let read = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        let bufs = [
            harness.request_buf(REQUEST, lun_field(0), 5, &read),
            harness.response_buf(REQUEST, 108),
            harness.response_buf(REQUEST, 512),
        ];
        assert!(harness.submit(REQUEST, &bufs).is_empty(), "held");
        assert_eq!(harness.host.in_flight(), 1);

        let tmf = |harness: &mut Harness, subtype: u32| {
            let mut bytes = VIRTIO_SCSI_T_TMF.to_le_bytes().to_vec();
            bytes.extend_from_slice(&subtype.to_le_bytes());
            bytes.extend_from_slice(&lun_field(0));
            bytes.extend_from_slice(&5u64.to_le_bytes());
            let bufs = [
                harness.data_buf(CTRL, &bytes, false),
                harness.response_buf(CTRL, 1),
            ];
            (harness.submit(CTRL, &bufs), bufs[1].addr)
        };
        // The task is in flight: QUERY TASK says so at once.
        let (used, query) = tmf(&mut harness, VIRTIO_SCSI_T_TMF_QUERY_TASK);
        assert_eq!(used.len(), 1);
        assert_eq!(
            harness.read(query, 1)[0],
            virtio_bindings::virtio_scsi::VIRTIO_SCSI_S_FUNCTION_SUCCEEDED as u8
        );
        // ABORT TASK waits until the command has completed.
        let (used, abort) = tmf(&mut harness, VIRTIO_SCSI_T_TMF_ABORT_TASK);
        assert!(used.is_empty(), "the abort waits");
        assert_eq!(
            harness.host.in_flight(),
            2,
            "a waiting TMF keeps the control queue busy"
        );

        // The engine completes: its eventfd wakes the request queue, whose completion wakes
        // the control queue through the task set, in one pass of the host.
        released.store(true, Ordering::SeqCst);
        completions.write(1).unwrap();
        let served = harness.host.serve_ready().unwrap();
        assert_eq!(served, [(2, false), (0, false)], "request queue, then ctrl");
        assert_eq!(
            harness.queues[REQUEST].used().len(),
            1,
            "the command completed"
        );
        assert_eq!(
            harness.queues[CTRL].used().len(),
            1,
            "then the abort is answered"
        );
        assert_eq!(harness.read(abort, 1)[0], 0, "FUNCTION COMPLETE");
        assert_eq!(harness.host.in_flight(), 0);
    }
}
