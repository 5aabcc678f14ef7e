//! The userspace virtio-scsi driver: probe, MSI-X, virtio initialisation and queues over vfio-user,
//! in the order QEMU and a Linux guest perform them.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_PCI_MSIX_IRQ_INDEX,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::driver_queue::{DriverQueue, Kicker, QueueSettings};
use crate::guest_memory::{DriverMemory, MemoryError, MemoryKind};
use crate::pci_probe::{PciProbe, ProbeError};
use crate::scsi::{self, ParsedScsiConfig, ScsiError};
use crate::scsi_request::{BuildError, ScsiRequest, ScsiResult, UsedChain};
use crate::split_queue::{Buffer, QueueError, SplitQueue};
use crate::vfio_client::{ClientError, VfioUserClient};
use crate::virtio_pci::{self, common, VirtioPci, CONFIG_REGION};

/// Virtqueue indices of the fixed queues; request queue n is virtqueue 2 + n.
pub const CONTROL_QUEUE: u16 = 0;
pub const EVENT_QUEUE: u16 = 1;
pub const FIRST_REQUEST_QUEUE: u16 = 2;

/// PCI command register bits a guest sets before using the function.
const PCI_COMMAND_MEMORY: u16 = 0x2;
const PCI_COMMAND_BUS_MASTER: u16 = 0x4;
const MSIX_CONTROL_ENABLE: u16 = 0x8000;
const KVM_IOEVENTFD_FLAG_DATAMATCH: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("vfio-user: {0}")]
    Client(#[from] ClientError),
    #[error("probe: {0}")]
    Probe(#[from] ProbeError),
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    #[error("virtqueue: {0}")]
    Queue(#[from] QueueError),
    #[error("virtio-scsi: {0}")]
    Scsi(#[from] ScsiError),
    #[error("the device is not a PCI device (info flags {0:#x})")]
    NotPci(u32),
    #[error("the device does not offer VIRTIO_F_VERSION_1 (features {0:#x})")]
    NotModern(u64),
    #[error("FEATURES_OK did not stick: status {0:#x}")]
    FeaturesRejected(u8),
    #[error("the device has {found} virtqueues, {expected} expected (2 + num_queues)")]
    QueueCount { found: u16, expected: u32 },
    #[error("virtqueue {0} reports size 0 (not available)")]
    QueueUnavailable(u16),
    #[error("MSI-X vector {vector} for {what} was not accepted (read back {read})")]
    VectorRejected {
        what: String,
        vector: u16,
        read: u16,
    },
    #[error("virtqueue {0} is not set up or was taken out of the driver")]
    NoSuchQueue(u16),
    #[error("no completion on virtqueue {queue} within {timeout:?}")]
    Timeout { queue: u16, timeout: Duration },
    #[error("device status {0:#x} does not clear after reset")]
    ResetStuck(u8),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("the server offers no ioeventfd for virtqueue {0}'s notify address")]
    NoIoEventFd(u16),
    #[error("virtqueue {0} kicks with waited writes, which only the driver can send")]
    KickNeedsDriver(u16),
    #[error("virtqueue {0} has driver-built commands in flight, which a raw reap would lose")]
    RawReapWithCommands(u16),
}

impl From<BuildError> for DriverError {
    fn from(e: BuildError) -> Self {
        match e {
            BuildError::Memory(e) => DriverError::Memory(e),
            BuildError::Scsi(e) => DriverError::Scsi(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, DriverError>;

/// How the driver notifies the device of new buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KickMode {
    /// REGION_WRITE with NO_REPLY, as QEMU sends a guest's notify write.
    PostedWrite,
    /// REGION_WRITE waiting for the reply.
    Write,
    /// Writing the ioeventfd the server handed out with GET_REGION_IO_FDS.
    IoEventFd,
}

/// How the driver waits for completions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitMode {
    /// Sleep on the queue's MSI-X eventfd: a missing interrupt is a timeout.
    Interrupt,
    /// Poll the used ring (for benchmarks).
    Poll,
}

#[derive(Clone, Debug)]
pub struct DriverOptions {
    /// Guest address where the memfd is DMA-mapped.
    pub mem_base: u64,
    pub mem_size: u64,
    pub memory: MemoryKind,
    pub event_idx: bool,
    pub indirect_desc: bool,
    /// Send SCSI commands through indirect tables (when INDIRECT_DESC was negotiated).
    pub indirect_commands: bool,
    /// virtio-scsi HOTPLUG and CHANGE, when offered.
    pub scsi_hotplug_change: bool,
    /// Queue size to use (clamped to the device's maximum); None keeps the maximum.
    pub queue_size: Option<u16>,
    pub kick: KickMode,
    pub wait: WaitMode,
    /// Bound on every wait: socket replies and completions.
    pub timeout: Duration,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            mem_base: 0,
            mem_size: 64 << 20,
            memory: MemoryKind::Memfd,
            event_idx: true,
            indirect_desc: true,
            indirect_commands: false,
            scsi_hotplug_change: true,
            queue_size: None,
            kick: KickMode::PostedWrite,
            wait: WaitMode::Interrupt,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A virtio-scsi function driven over vfio-user.
pub struct VirtioScsiDriver {
    pci: VirtioPci,
    mem: Arc<DriverMemory>,
    options: DriverOptions,
    features: u64,
    config: ParsedScsiConfig,
    irqs: Vec<EventFd>,
    queues: Vec<Option<DriverQueue>>,
}

impl VirtioScsiDriver {
    /// Connects to `socket` and brings the device to DRIVER_OK with every queue enabled.
    pub fn connect(socket: &Path, options: DriverOptions) -> Result<Self> {
        let mut driver = Self::attach(socket, options)?;
        driver.initialize()?;
        Ok(driver)
    }

    /// Connects, maps guest memory, probes config space and wires MSI-X, but leaves the virtio
    /// device untouched, for tests of the initialisation sequence itself.
    pub fn attach(socket: &Path, options: DriverOptions) -> Result<Self> {
        let mut client = VfioUserClient::connect(socket, options.timeout)?;
        let mem = Arc::new(DriverMemory::of_kind(
            options.mem_base,
            options.mem_size,
            options.memory,
        )?);
        // QEMU maps guest RAM before it asks anything about the device.
        client.dma_map(mem.base(), mem.size(), mem.file().as_fd(), 0)?;
        let info = client.device_info()?;
        if info.flags & VFIO_DEVICE_FLAGS_PCI == 0 {
            return Err(DriverError::NotPci(info.flags));
        }
        let config_size = client.region_info(CONFIG_REGION)?.size.clamp(256, 4096) as usize;
        let mut config = vec![0u8; config_size];
        client.region_read(CONFIG_REGION, 0, &mut config)?;
        let probe = PciProbe::parse(&config)?;
        let mut pci = VirtioPci::new(client, probe);

        let mut command = [0u8; 2];
        pci.config_read(0x04, &mut command)?;
        let command = u16::from_le_bytes(command) | PCI_COMMAND_MEMORY | PCI_COMMAND_BUS_MASTER;
        pci.config_write(0x04, &command.to_le_bytes())?;

        let mut driver = VirtioScsiDriver {
            pci,
            mem,
            options,
            features: 0,
            config: ParsedScsiConfig::default(),
            irqs: Vec::new(),
            queues: Vec::new(),
        };
        driver.enable_msix()?;
        Ok(driver)
    }

    /// Enables MSI-X in the capability and gives the server one eventfd per vector, one
    /// SET_IRQS per vector as QEMU does.
    fn enable_msix(&mut self) -> Result<()> {
        let msix = self.pci.probe().msix;
        let control_offset = u64::from(msix.cap_offset) + 2;
        let mut control = [0u8; 2];
        self.pci.config_read(control_offset, &mut control)?;
        let control = u16::from_le_bytes(control) | MSIX_CONTROL_ENABLE;
        self.pci
            .config_write(control_offset, &control.to_le_bytes())?;
        let info = self.pci.client().irq_info(VFIO_PCI_MSIX_IRQ_INDEX)?;
        let count = info.count.min(u32::from(msix.table_size));
        for vector in 0..count {
            let fd = EventFd::new(EFD_NONBLOCK).map_err(DriverError::EventFd)?;
            self.pci.client().set_irqs(
                VFIO_PCI_MSIX_IRQ_INDEX,
                VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                vector,
                1,
                &[&fd],
            )?;
            self.irqs.push(fd);
        }
        Ok(())
    }

    /// The virtio initialisation of §3.1.1, then every queue, then DRIVER_OK.
    pub fn initialize(&mut self) -> Result<()> {
        self.reset()?;
        self.pci.set_status(virtio_pci::STATUS_ACKNOWLEDGE)?;
        self.pci
            .set_status(virtio_pci::STATUS_ACKNOWLEDGE | virtio_pci::STATUS_DRIVER)?;
        let offered = self.pci.device_features()?;
        let features = self.choose_features(offered)?;
        self.negotiate(features)?;
        self.read_config()?;
        self.set_config_vector(0)?;
        let total = self.pci.common_read16(common::NUM_QUEUES)?;
        let expected = self.config.num_queues.saturating_add(2);
        if u32::from(total) != expected {
            return Err(DriverError::QueueCount {
                found: total,
                expected,
            });
        }
        for queue in 0..total {
            self.setup_queue(queue)?;
        }
        self.driver_ok()
    }

    /// Features this driver accepts out of `offered`, per the options.
    pub fn choose_features(&self, offered: u64) -> Result<u64> {
        let bit = |b: u32| 1u64 << b;
        if offered & bit(virtio_pci::VIRTIO_F_VERSION_1) == 0 {
            return Err(DriverError::NotModern(offered));
        }
        let mut wanted = bit(virtio_pci::VIRTIO_F_VERSION_1);
        if self.options.event_idx {
            wanted |= bit(virtio_pci::VIRTIO_F_EVENT_IDX);
        }
        if self.options.indirect_desc {
            wanted |= bit(virtio_pci::VIRTIO_F_INDIRECT_DESC);
        }
        if self.options.scsi_hotplug_change {
            wanted |= bit(scsi::VIRTIO_SCSI_F_HOTPLUG) | bit(scsi::VIRTIO_SCSI_F_CHANGE);
        }
        Ok(offered & wanted)
    }

    /// Writes `features`, sets FEATURES_OK and checks that the device kept it.
    pub fn negotiate(&mut self, features: u64) -> Result<()> {
        self.pci.set_driver_features(features)?;
        let status = virtio_pci::STATUS_ACKNOWLEDGE | virtio_pci::STATUS_DRIVER;
        self.pci
            .set_status(status | virtio_pci::STATUS_FEATURES_OK)?;
        let read = self.pci.status()?;
        if read & virtio_pci::STATUS_FEATURES_OK == 0 {
            return Err(DriverError::FeaturesRejected(read));
        }
        self.features = features;
        Ok(())
    }

    /// Reads `virtio_scsi_config`.
    pub fn read_config(&mut self) -> Result<ParsedScsiConfig> {
        let mut b = [0u8; ParsedScsiConfig::SIZE];
        self.pci.device_config_read(0, &mut b)?;
        self.config = ParsedScsiConfig::parse(&b);
        Ok(self.config)
    }

    /// Writes the driver-writable sense_size and cdb_size (before queues are set up: queues
    /// take the sizes current when they are created).
    pub fn set_sense_and_cdb_size(&mut self, sense_size: u32, cdb_size: u32) -> Result<()> {
        self.pci.device_config_write(
            ParsedScsiConfig::SENSE_SIZE_OFFSET,
            &sense_size.to_le_bytes(),
        )?;
        self.pci
            .device_config_write(ParsedScsiConfig::CDB_SIZE_OFFSET, &cdb_size.to_le_bytes())?;
        self.read_config()?;
        Ok(())
    }

    fn set_config_vector(&mut self, vector: u16) -> Result<()> {
        self.pci
            .common_write16(common::CONFIG_MSIX_VECTOR, vector)?;
        let read = self.pci.common_read16(common::CONFIG_MSIX_VECTOR)?;
        if read != vector {
            return Err(DriverError::VectorRejected {
                what: "config changes".to_string(),
                vector,
                read,
            });
        }
        Ok(())
    }

    /// Sets up and enables virtqueue `queue`: size, vector (queue + 1, or the last vector when
    /// there are fewer), ring addresses.
    pub fn setup_queue(&mut self, queue: u16) -> Result<()> {
        self.pci.select_queue(queue)?;
        let max = self.pci.common_read16(common::QUEUE_SIZE)?;
        if max == 0 {
            return Err(DriverError::QueueUnavailable(queue));
        }
        let size = self.options.queue_size.map_or(max, |s| s.min(max));
        let ring = SplitQueue::new(self.mem.clone(), size, self.event_idx())?;
        self.pci.common_write16(common::QUEUE_SIZE, size)?;
        let last_vector = self.irqs.len().saturating_sub(1) as u16;
        let vector = (queue + 1).min(last_vector);
        self.pci.common_write16(common::QUEUE_MSIX_VECTOR, vector)?;
        let read = self.pci.common_read16(common::QUEUE_MSIX_VECTOR)?;
        if read != vector {
            return Err(DriverError::VectorRejected {
                what: format!("virtqueue {queue}"),
                vector,
                read,
            });
        }
        let addresses = ring.addresses();
        self.pci
            .common_write64(common::QUEUE_DESC, addresses.desc)?;
        self.pci
            .common_write64(common::QUEUE_DRIVER, addresses.driver)?;
        self.pci
            .common_write64(common::QUEUE_DEVICE, addresses.device)?;
        let notify_off = self.pci.common_read16(common::QUEUE_NOTIFY_OFF)?;
        self.pci.common_write16(common::QUEUE_ENABLE, 1)?;

        let (bar, offset) = self.pci.notify_address(notify_off);
        let kicker = match self.options.kick {
            KickMode::PostedWrite => Kicker::Posted(self.pci.client().posted_writer()?),
            KickMode::Write => Kicker::Owner,
            // A server hands out only as many ioeventfds as one reply may carry (the client's
            // max_msg_fds); the other queues are kicked by message, as QEMU does.
            KickMode::IoEventFd => match self.find_io_eventfd(queue, bar, offset) {
                Ok(fd) => Kicker::IoEventFd(fd),
                Err(DriverError::NoIoEventFd(_)) => {
                    Kicker::Posted(self.pci.client().posted_writer()?)
                }
                Err(e) => return Err(e),
            },
        };
        let irq = match self.irqs.get(usize::from(vector)) {
            Some(fd) => Some(fd.try_clone().map_err(DriverError::EventFd)?),
            None => None,
        };
        let settings = QueueSettings {
            notify: (bar, offset),
            vector,
            irq,
            kicker,
            cdb_size: self.config.cdb_size,
            sense_size: self.config.sense_size,
            indirect_commands: self.options.indirect_commands
                && self.features & (1 << virtio_pci::VIRTIO_F_INDIRECT_DESC) != 0,
            wait: self.options.wait,
            timeout: self.options.timeout,
        };
        let index = usize::from(queue);
        if self.queues.len() <= index {
            self.queues.resize_with(index + 1, || None);
        }
        self.queues[index] = Some(DriverQueue::new(queue, ring, settings)?);
        Ok(())
    }

    fn find_io_eventfd(&mut self, queue: u16, bar: u32, offset: u64) -> Result<std::fs::File> {
        let fds = self.pci.client().region_io_fds(bar)?;
        fds.into_iter()
            .find(|f| {
                let covers = f.offset == offset
                    || (f.offset <= offset && offset < f.offset.saturating_add(f.size));
                let matches =
                    f.flags & KVM_IOEVENTFD_FLAG_DATAMATCH == 0 || f.datamatch == u64::from(queue);
                covers && matches
            })
            .map(|f| f.fd)
            .ok_or(DriverError::NoIoEventFd(queue))
    }

    pub fn driver_ok(&mut self) -> Result<()> {
        let status = virtio_pci::STATUS_ACKNOWLEDGE
            | virtio_pci::STATUS_DRIVER
            | virtio_pci::STATUS_FEATURES_OK
            | virtio_pci::STATUS_DRIVER_OK;
        self.pci.set_status(status)?;
        Ok(())
    }

    /// Writes 0 to device_status and waits until it reads back 0 (§4.1.4.3.2); drops all
    /// queues still held by the driver.
    pub fn reset(&mut self) -> Result<()> {
        self.pci.set_status(0)?;
        let deadline = std::time::Instant::now() + self.options.timeout;
        loop {
            let status = self.pci.status()?;
            if status == 0 {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(DriverError::ResetStuck(status));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        for mut queue in self.queues.drain(..).flatten() {
            queue.release_all()?;
        }
        Ok(())
    }

    pub fn event_idx(&self) -> bool {
        self.features & (1 << virtio_pci::VIRTIO_F_EVENT_IDX) != 0
    }

    pub fn features(&self) -> u64 {
        self.features
    }

    pub fn config(&self) -> ParsedScsiConfig {
        self.config
    }

    pub fn probe(&self) -> &PciProbe {
        self.pci.probe()
    }

    /// Register access (common configuration, config space, the vfio-user client itself).
    pub fn pci(&mut self) -> &mut VirtioPci {
        &mut self.pci
    }

    pub fn memory(&self) -> &Arc<DriverMemory> {
        &self.mem
    }

    pub fn options(&self) -> &DriverOptions {
        &self.options
    }

    /// Number of request queues the device has (virtqueues 2..).
    pub fn num_request_queues(&self) -> u16 {
        self.config.num_queues as u16
    }

    /// The MSI-X eventfd of `vector`.
    pub fn irq_eventfd(&self, vector: u16) -> Option<&EventFd> {
        self.irqs.get(usize::from(vector))
    }

    /// Virtqueue `queue` (0 control, 1 event, 2 + n request queue n).
    pub fn queue(&mut self, queue: u16) -> Result<&mut DriverQueue> {
        self.queues
            .get_mut(usize::from(queue))
            .and_then(|q| q.as_mut())
            .ok_or(DriverError::NoSuchQueue(queue))
    }

    /// Takes virtqueue `queue` out of the driver, to run it on another thread. Its kicks must
    /// not need the driver (posted writes or ioeventfds).
    pub fn take_queue(&mut self, queue: u16) -> Result<DriverQueue> {
        if self.options.kick == KickMode::Write {
            return Err(DriverError::KickNeedsDriver(queue));
        }
        self.queues
            .get_mut(usize::from(queue))
            .and_then(Option::take)
            .ok_or(DriverError::NoSuchQueue(queue))
    }

    /// Gives back a queue taken with `take_queue`.
    pub fn return_queue(&mut self, queue: DriverQueue) {
        let index = usize::from(queue.index());
        if self.queues.len() <= index {
            self.queues.resize_with(index + 1, || None);
        }
        self.queues[index] = Some(queue);
    }

    /// Sends the waited kick a queue owes (KickMode::Write).
    fn settle_kick(&mut self, queue: u16) -> Result<()> {
        let q = self.queue(queue)?;
        if q.take_kick_owed() {
            let (bar, offset) = q.notify_address();
            self.pci
                .client()
                .region_write(bar, offset, &queue.to_le_bytes())?;
        }
        Ok(())
    }

    /// Adds a chain of caller-owned buffers to `queue`, publishes and kicks; returns its head.
    pub fn submit_chain(&mut self, queue: u16, buffers: &[Buffer]) -> Result<u16> {
        let head = self.queue(queue)?.submit_chain(buffers)?;
        self.settle_kick(queue)?;
        Ok(head)
    }

    /// The same through an indirect table.
    pub fn submit_indirect_chain(&mut self, queue: u16, buffers: &[Buffer]) -> Result<u16> {
        let head = self.queue(queue)?.submit_indirect_chain(buffers)?;
        self.settle_kick(queue)?;
        Ok(head)
    }

    /// Publishes `head`, whose descriptors the caller wrote through `queue(q)?.ring()`.
    pub fn publish_raw(&mut self, queue: u16, head: u16) -> Result<()> {
        self.queue(queue)?.publish_raw(head)?;
        self.settle_kick(queue)
    }

    /// Queues one command on virtqueue `queue`; returns its head.
    pub fn submit(&mut self, queue: u16, request: &ScsiRequest) -> Result<u16> {
        let head = self.queue(queue)?.submit(request)?;
        self.settle_kick(queue)?;
        Ok(head)
    }

    /// Queues several commands with one avail-index update and at most one kick.
    pub fn submit_batch(&mut self, queue: u16, requests: &[ScsiRequest]) -> Result<Vec<u16>> {
        let heads = self.queue(queue)?.submit_batch(requests)?;
        self.settle_kick(queue)?;
        Ok(heads)
    }

    pub fn in_flight(&mut self, queue: u16) -> Result<usize> {
        Ok(self.queue(queue)?.in_flight())
    }

    /// Completions of `queue` available now or within the timeout (at least one).
    pub fn reap(&mut self, queue: u16) -> Result<Vec<(u16, UsedChain)>> {
        self.queue(queue)?.reap()
    }

    /// Completions already in the used ring, without waiting.
    pub fn poll_completions(&mut self, queue: u16) -> Result<Vec<(u16, UsedChain)>> {
        self.queue(queue)?.poll_completions()
    }

    /// Waits for the completion of `head` on `queue`.
    pub fn wait_for(&mut self, queue: u16, head: u16) -> Result<UsedChain> {
        self.queue(queue)?.wait_for(head)
    }

    /// Sends `request` on request queue `request_queue` (0-based) and waits for its result.
    pub fn command(&mut self, request_queue: u16, request: &ScsiRequest) -> Result<ScsiResult> {
        let queue = FIRST_REQUEST_QUEUE + request_queue;
        let head = self.submit(queue, request)?;
        match self.wait_for(queue, head)? {
            UsedChain::Scsi(result) => Ok(result),
            UsedChain::Raw(used) => Err(QueueError::UnknownHead { id: used.id }.into()),
        }
    }

    /// One SCSI command to `lun` of target 0 on request queue `request_queue`.
    pub fn scsi_command(
        &mut self,
        request_queue: u16,
        lun: u16,
        cdb: &[u8],
        data_out: Option<&[u8]>,
        data_in_len: u32,
    ) -> Result<ScsiResult> {
        let mut request = ScsiRequest::new(scsi::encode_lun(0, lun)?, cdb).data_in(data_in_len);
        request.data_out = data_out.map(<[u8]>::to_vec);
        self.command(request_queue, &request)
    }

    /// Sends a control-queue request (`req` readable, `resp_len` writable) and returns the bytes
    /// the device wrote.
    pub fn control(&mut self, req: &[u8], resp_len: u32) -> Result<Vec<u8>> {
        let mem = self.mem.clone();
        let req_gpa = mem.alloc(req.len() as u64, 8)?;
        let resp_gpa = match mem.alloc(u64::from(resp_len), 8) {
            Ok(gpa) => gpa,
            Err(e) => {
                mem.free(req_gpa)?;
                return Err(e.into());
            }
        };
        let outcome = (|| {
            mem.write(req_gpa, req)?;
            let head = self.submit_chain(
                CONTROL_QUEUE,
                &[
                    Buffer::readable(req_gpa, req.len() as u32),
                    Buffer::writable(resp_gpa, resp_len),
                ],
            )?;
            self.wait_for(CONTROL_QUEUE, head)?;
            Ok(mem.read_vec(resp_gpa, resp_len as usize)?)
        })();
        mem.free(req_gpa)?;
        mem.free(resp_gpa)?;
        outcome
    }

    /// A task management function for `lun` of target 0; returns the response byte.
    pub fn tmf(&mut self, lun: u16, subtype: u32, tag: u64) -> Result<u8> {
        let req = scsi::encode_tmf_req(subtype, scsi::encode_lun(0, lun)?, tag);
        let resp = self.control(&req, scsi::TMF_RESP_SIZE as u32)?;
        Ok(resp[0])
    }

    /// AN_QUERY for the events in `event_requested`.
    pub fn an_query(&mut self, lun: u16, event_requested: u32) -> Result<scsi::AnResp> {
        self.an(scsi::VIRTIO_SCSI_T_AN_QUERY, lun, event_requested)
    }

    fn an(&mut self, kind: u32, lun: u16, event_requested: u32) -> Result<scsi::AnResp> {
        let req = scsi::encode_an_req(kind, scsi::encode_lun(0, lun)?, event_requested);
        let resp = self.control(&req, scsi::AN_RESP_SIZE as u32)?;
        Ok(scsi::decode_an_resp(&resp)?)
    }

    /// Posts `count` event buffers of event_info_size (at least 16) bytes on the event queue.
    pub fn post_event_buffers(&mut self, count: usize) -> Result<Vec<u16>> {
        let len = self.config.event_info_size.max(scsi::EVENT_SIZE as u32);
        let heads = self.queue(EVENT_QUEUE)?.post_event_buffers(count, len)?;
        self.settle_kick(EVENT_QUEUE)?;
        Ok(heads)
    }

    /// Events the device returned, waiting up to `timeout` for at least one.
    pub fn take_events(&mut self, timeout: Duration) -> Result<Vec<scsi::Event>> {
        self.queue(EVENT_QUEUE)?.take_events(timeout)
    }

    // Convenience wrappers on request queue 0.

    pub fn test_unit_ready(&mut self, lun: u16) -> Result<ScsiResult> {
        self.scsi_command(0, lun, &scsi::cdb::test_unit_ready(), None, 0)
    }

    pub fn inquiry(&mut self, lun: u16, evpd: bool, page: u8, alloc: u16) -> Result<ScsiResult> {
        let cdb = scsi::cdb::inquiry(evpd, page, alloc);
        self.scsi_command(0, lun, &cdb, None, u32::from(alloc))
    }

    pub fn read_capacity10(&mut self, lun: u16) -> Result<ScsiResult> {
        self.scsi_command(0, lun, &scsi::cdb::read_capacity10(), None, 8)
    }

    pub fn read_capacity16(&mut self, lun: u16) -> Result<ScsiResult> {
        self.scsi_command(0, lun, &scsi::cdb::read_capacity16(32), None, 32)
    }

    /// (number of blocks, logical block size) from READ CAPACITY 16, None when it fails.
    pub fn capacity(&mut self, lun: u16) -> Result<Option<(u64, u32)>> {
        let r = self.read_capacity16(lun)?;
        if !r.is_good() || r.data_in.len() < 12 {
            return Ok(None);
        }
        let d = &r.data_in;
        let last = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
        let block = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
        Ok(Some((last + 1, block)))
    }

    pub fn report_luns(&mut self, lun: u16, alloc: u32) -> Result<ScsiResult> {
        self.scsi_command(0, lun, &scsi::cdb::report_luns(0, alloc), None, alloc)
    }

    pub fn read10(
        &mut self,
        lun: u16,
        lba: u32,
        blocks: u16,
        block_size: u32,
    ) -> Result<ScsiResult> {
        let cdb = scsi::cdb::lba10(scsi::cdb::READ_10, 0, lba, blocks);
        self.scsi_command(0, lun, &cdb, None, u32::from(blocks) * block_size)
    }

    pub fn write10(
        &mut self,
        lun: u16,
        lba: u32,
        data: &[u8],
        block_size: u32,
    ) -> Result<ScsiResult> {
        let blocks = (data.len() as u32 / block_size.max(1)) as u16;
        let cdb = scsi::cdb::lba10(scsi::cdb::WRITE_10, 0, lba, blocks);
        self.scsi_command(0, lun, &cdb, Some(data), 0)
    }

    pub fn read16(
        &mut self,
        lun: u16,
        lba: u64,
        blocks: u32,
        block_size: u32,
    ) -> Result<ScsiResult> {
        let cdb = scsi::cdb::lba16(scsi::cdb::READ_16, 0, lba, blocks);
        self.scsi_command(0, lun, &cdb, None, blocks * block_size)
    }

    pub fn write16(
        &mut self,
        lun: u16,
        lba: u64,
        data: &[u8],
        block_size: u32,
        fua: bool,
    ) -> Result<ScsiResult> {
        let blocks = data.len() as u32 / block_size.max(1);
        let flags = if fua { scsi::cdb::FUA } else { 0 };
        let cdb = scsi::cdb::lba16(scsi::cdb::WRITE_16, flags, lba, blocks);
        self.scsi_command(0, lun, &cdb, Some(data), 0)
    }

    pub fn sync_cache(&mut self, lun: u16) -> Result<ScsiResult> {
        let cdb = scsi::cdb::lba10(scsi::cdb::SYNCHRONIZE_CACHE_10, 0, 0, 0);
        self.scsi_command(0, lun, &cdb, None, 0)
    }

    pub fn unmap(&mut self, lun: u16, ranges: &[(u64, u32)]) -> Result<ScsiResult> {
        let (cdb, param) = scsi::cdb::unmap(ranges);
        self.scsi_command(0, lun, &cdb, Some(&param), 0)
    }

    /// WRITE SAME 16 of one block `block` (NDOB when empty), optionally with UNMAP.
    pub fn write_same16(
        &mut self,
        lun: u16,
        lba: u64,
        blocks: u32,
        block: &[u8],
        unmap: bool,
    ) -> Result<ScsiResult> {
        let mut flags = if unmap { scsi::cdb::WS_UNMAP } else { 0 };
        if block.is_empty() {
            flags |= scsi::cdb::WS_NDOB;
        }
        let cdb = scsi::cdb::lba16(scsi::cdb::WRITE_SAME_16, flags, lba, blocks);
        let out = (!block.is_empty()).then_some(block);
        self.scsi_command(0, lun, &cdb, out, 0)
    }

    pub fn mode_sense6(
        &mut self,
        lun: u16,
        page: u8,
        subpage: u8,
        alloc: u8,
    ) -> Result<ScsiResult> {
        let cdb = scsi::cdb::mode_sense6(true, page, subpage, alloc);
        self.scsi_command(0, lun, &cdb, None, u32::from(alloc))
    }

    pub fn mode_sense10(
        &mut self,
        lun: u16,
        page: u8,
        subpage: u8,
        alloc: u16,
    ) -> Result<ScsiResult> {
        let cdb = scsi::cdb::mode_sense10(true, page, subpage, alloc);
        self.scsi_command(0, lun, &cdb, None, u32::from(alloc))
    }

    pub fn request_sense(&mut self, lun: u16) -> Result<ScsiResult> {
        self.scsi_command(0, lun, &scsi::cdb::request_sense(252), None, 252)
    }
}
