//! A virtio device behind the modern virtio-pci transport: the PCI function a vfio-user server
//! exposes.
//!
//! The server forwards configuration-space accesses (region 7) and BAR accesses (regions 0-5)
//! here, hands MSI-X eventfds from SET_IRQS to [`VirtioPciFunction::msix_vectors`], and watches
//! the per-queue notifiers.
//!
//! Notifications between driver and device (virtio 1.2 §2.3) are the transport's too:
//! - driver to device: a notify write to a queue's notify address writes that queue's notifier
//!   eventfd, created once and kept across resets, so that it can be handed out
//!   (GET_REGION_IO_FDS) and watched by the queue's owner for the life of the function;
//! - device to driver: an interrupt raises the MSI-X vector the driver assigned, or, with
//!   NO_VECTOR, only the read-to-clear ISR status byte; configuration changes and
//!   DEVICE_NEEDS_RESET raise the configuration vector.

use std::io::{self, ErrorKind};
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::Arc;

use pci::{Bar, BarWidth, ConfigSpace, MsixVectors, PciIdentity};
use slog::{debug, warn, Logger};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bar_layout::{BarLayout, BarTarget, MSIX_BAR, NOTIFY_OFF_MULTIPLIER, VIRTIO_BAR};
use crate::common_cfg::{CommonCfg, CommonCfgWrite, QueueConfig};
use crate::features;
use crate::pci_caps::{
    VirtioPciCap, COMMON_CFG, DEVICE_CFG, ISR_CFG, NOTIFY_CFG, PCI_CFG_BAR, PCI_CFG_DATA,
    PCI_CFG_LENGTH, PCI_CFG_OFFSET, VENDOR_CAPABILITY_ID,
};
use crate::status::{transition, StatusTransition, DEVICE_NEEDS_RESET, DRIVER_OK};
use crate::transport_error::{Region, StartError, TransportError};
use crate::virtio_device::{Activation, ActiveQueue, GuestMemory, Interrupt, VirtioDevice};

/// PCI vendor ID of virtio devices.
pub const VIRTIO_VENDOR_ID: u16 = 0x1af4;
/// Modern device IDs are this plus the virtio device type.
const MODERN_DEVICE_ID_BASE: u16 = 0x1040;
/// PCI Subsystem Device ID. Virtio 1.2 §4.1.2.1 asks non-transitional devices for 0x40 or more,
/// and OVMF's Virtio10Dxe binds only those; QEMU's modern-only devices report this value.
const MODERN_SUBSYSTEM_ID: u16 = 0x1100;
/// Largest queue size of split virtqueues.
const MAX_QUEUE_SIZE: u16 = 32768;

/// A queue's notifier and the BAR address whose writes land in it.
#[derive(Debug, Clone)]
pub struct QueueNotifyAddress {
    pub queue: u16,
    pub bar: u8,
    pub offset: u64,
    /// Width of the notify write the driver does (queue index as le16).
    pub size: u64,
    pub eventfd: Arc<EventFd>,
}

pub struct VirtioPciFunction<D: VirtioDevice> {
    device: D,
    config: ConfigSpace,
    /// Offset of the PCI configuration access capability.
    pci_cfg_cap: u64,
    layout: BarLayout,
    msix: Arc<MsixVectors>,
    common: CommonCfg,
    isr: Arc<Isr>,
    notifiers: QueueNotifiers,
    memory: GuestMemory,
    activated: bool,
    log: Logger,
}

impl<D: VirtioDevice> VirtioPciFunction<D> {
    /// Builds the function for `device`; `class_code` is the PCI class (0xBBSSPP, 0x010000 for
    /// SCSI) and `memory` the guest memory the queues live in (updated by DMA map/unmap).
    pub fn new(
        device: D,
        class_code: u32,
        memory: GuestMemory,
        log: Logger,
    ) -> Result<Self, TransportError> {
        let queue_count = device.queue_count();
        if queue_count == 0 || queue_count > 2047 {
            return Err(TransportError::QueueCount(queue_count));
        }
        let max_size = device.max_queue_size();
        if !max_size.is_power_of_two() || max_size > MAX_QUEUE_SIZE {
            return Err(TransportError::QueueSize(max_size));
        }
        // One vector for configuration changes and one per queue.
        let vector_count = queue_count + 1;
        let layout = BarLayout::new(queue_count, device.config_size(), vector_count);
        let msix = Arc::new(MsixVectors::new(vector_count).map_err(TransportError::Setup)?);
        let device_type = device.device_type();
        let device_id = u16::try_from(device_type)
            .ok()
            .and_then(|id| MODERN_DEVICE_ID_BASE.checked_add(id))
            .ok_or(TransportError::DeviceType(device_type))?;
        let mut config = ConfigSpace::new(PciIdentity {
            vendor_id: VIRTIO_VENDOR_ID,
            device_id,
            revision: 1,
            class_code,
            subsystem_vendor_id: VIRTIO_VENDOR_ID,
            subsystem_id: MODERN_SUBSYSTEM_ID,
        });
        let pci_cfg_cap = Self::build_config(&mut config, &layout, msix.clone())
            .map_err(TransportError::Setup)?;
        let common = CommonCfg::new(
            features::offered(device.features()),
            queue_count,
            max_size,
            vector_count,
        );
        let notifiers =
            QueueNotifiers::new(queue_count).map_err(TransportError::NotifierEventFds)?;
        Ok(VirtioPciFunction {
            device,
            config,
            pci_cfg_cap,
            layout,
            msix,
            common,
            isr: Arc::new(Isr::default()),
            notifiers,
            memory,
            activated: false,
            log,
        })
    }

    fn build_config(
        config: &mut ConfigSpace,
        layout: &BarLayout,
        msix: Arc<MsixVectors>,
    ) -> Result<u64, pci::PciError> {
        config.set_bar(
            MSIX_BAR,
            Bar {
                width: BarWidth::Bits32,
                prefetchable: false,
                size: layout.msix_bar_size,
            },
        )?;
        config.set_bar(
            VIRTIO_BAR,
            Bar {
                width: BarWidth::Bits64,
                prefetchable: true,
                size: layout.virtio_bar_size,
            },
        )?;
        let structure = |cfg_type, range: &std::ops::Range<u64>| {
            VirtioPciCap::new(
                cfg_type,
                VIRTIO_BAR,
                range.start as u32,
                (range.end - range.start) as u32,
            )
        };
        let add = |config: &mut ConfigSpace, (body, mask): (Vec<u8>, Vec<u8>)| {
            config.add_capability(VENDOR_CAPABILITY_ID, &body, &mask)
        };
        add(config, structure(COMMON_CFG, &layout.common).read_only())?;
        add(
            config,
            structure(NOTIFY_CFG, &layout.notify).notify(NOTIFY_OFF_MULTIPLIER),
        )?;
        add(config, structure(ISR_CFG, &layout.isr).read_only())?;
        if !layout.device.is_empty() {
            add(config, structure(DEVICE_CFG, &layout.device).read_only())?;
        }
        let pci_cfg = add(config, VirtioPciCap::pci_cfg())?;
        config.add_msix(msix, layout.msix)?;
        Ok(u64::from(pci_cfg))
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Whether DRIVER_OK activated the device (and no reset happened since).
    pub fn is_active(&self) -> bool {
        self.activated
    }

    /// Size of BAR `index` for DEVICE_GET_REGION_INFO; None for an unused BAR.
    pub fn bar_size(&self, index: u8) -> Option<u64> {
        self.config.bar(index).map(|bar| bar.size)
    }

    /// The MSI-X vectors; SET_IRQS on the MSI-X index assigns their eventfds.
    pub fn msix_vectors(&self) -> &Arc<MsixVectors> {
        &self.msix
    }

    /// The notifier and notify address of every queue (for GET_REGION_IO_FDS and for the
    /// loops that watch kicks).
    pub fn queue_notify_addresses(&self) -> Vec<QueueNotifyAddress> {
        (0..self.device.queue_count())
            .filter_map(|queue| {
                self.notifiers.get(queue).map(|eventfd| QueueNotifyAddress {
                    queue,
                    bar: VIRTIO_BAR,
                    offset: self.layout.notify_offset(queue),
                    size: 2,
                    eventfd: eventfd.clone(),
                })
            })
            .collect()
    }

    /// A handle for configuration-change and DEVICE_NEEDS_RESET notifications from any thread.
    pub fn config_notifier(&self) -> ConfigNotifier {
        ConfigNotifier {
            status: self.common.shared_status().clone(),
            generation: self.common.shared_generation().clone(),
            interrupt: self.config_interrupt(),
        }
    }

    fn config_interrupt(&self) -> MsixInterrupt {
        MsixInterrupt::new(
            self.msix.clone(),
            self.common.config_vector().clone(),
            self.isr.clone(),
            CONFIG_INTERRUPT,
        )
    }

    pub fn config_read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), TransportError> {
        let pci = |source| TransportError::Pci {
            region: Region::Config,
            source,
        };
        self.config.read(offset, data).map_err(pci)?;
        let window = self.pci_cfg_cap + PCI_CFG_DATA;
        if let Some((overlap_start, overlap_end)) = overlap(offset, data.len(), window, 4) {
            let mut window_data = [0u8; 4];
            if let Some((bar, bar_offset, len)) = self.pci_cfg_target() {
                // The spec has the device ignore a failing access; the window then reads zeros.
                if self
                    .bar_read(bar, bar_offset, &mut window_data[..len])
                    .is_err()
                {
                    window_data = [0; 4];
                }
            }
            let from = (overlap_start - window) as usize..(overlap_end - window) as usize;
            let to = (overlap_start - offset) as usize..(overlap_end - offset) as usize;
            data[to].copy_from_slice(&window_data[from]);
        }
        Ok(())
    }

    pub fn config_write(&mut self, offset: u64, data: &[u8]) -> Result<(), TransportError> {
        let pci = |source| TransportError::Pci {
            region: Region::Config,
            source,
        };
        self.config.write(offset, data).map_err(pci)?;
        let window = self.pci_cfg_cap + PCI_CFG_DATA;
        if overlap(offset, data.len(), window, 4).is_some() {
            if let Some((bar, bar_offset, len)) = self.pci_cfg_target() {
                let mut window_data = [0u8; 4];
                self.config.read(window, &mut window_data).map_err(pci)?;
                // The spec has the device ignore a failing access.
                let _ = self.bar_write(bar, bar_offset, &window_data[..len]);
            }
        }
        Ok(())
    }

    /// The BAR access the PCI configuration access capability describes, if it is a valid one:
    /// 1, 2 or 4 bytes, aligned, in a BAR of the function.
    fn pci_cfg_target(&self) -> Option<(u8, u64, usize)> {
        let mut bar = [0u8; 1];
        let mut offset = [0u8; 4];
        let mut length = [0u8; 4];
        self.config
            .read(self.pci_cfg_cap + PCI_CFG_BAR, &mut bar)
            .ok()?;
        self.config
            .read(self.pci_cfg_cap + PCI_CFG_OFFSET, &mut offset)
            .ok()?;
        self.config
            .read(self.pci_cfg_cap + PCI_CFG_LENGTH, &mut length)
            .ok()?;
        let offset = u64::from(u32::from_le_bytes(offset));
        let length = u32::from_le_bytes(length) as usize;
        let valid = matches!(length, 1 | 2 | 4)
            && offset % length as u64 == 0
            && self.bar_size(bar[0]).is_some();
        valid.then_some((bar[0], offset, length))
    }

    fn locate(&self, bar: u8, offset: u64, len: usize) -> Result<BarTarget, TransportError> {
        if self.bar_size(bar).is_none() {
            return Err(TransportError::NoSuchBar(bar));
        }
        self.layout
            .locate(bar, offset, len)
            .ok_or_else(|| unmapped(bar, offset, len))
    }

    pub fn bar_read(
        &mut self,
        bar: u8,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), TransportError> {
        let pci = |source| TransportError::Pci {
            region: Region::Bar(bar),
            source,
        };
        match self.locate(bar, offset, data.len())? {
            BarTarget::Common(within) => {
                // A queue worker that found a broken ring flags the device rather than the
                // transport; the driver learns it from the status it reads.
                if self.device.needs_reset() {
                    self.common
                        .set_status(self.common.status() | DEVICE_NEEDS_RESET);
                }
                self.common
                    .read(within, data)
                    .map_err(|_| unmapped(bar, offset, data.len()))
            }
            BarTarget::Isr => {
                data.fill(0);
                data[0] = self.isr.take();
                Ok(())
            }
            BarTarget::Device(within) => {
                self.device.read_config(within, data);
                Ok(())
            }
            BarTarget::Notify(_) => {
                data.fill(0);
                Ok(())
            }
            BarTarget::MsixTable(within) => self.msix.table_read(within, data).map_err(pci),
            BarTarget::MsixPba(within) => self.msix.pba_read(within, data).map_err(pci),
        }
    }

    /// A write to the notify area writes that queue's notifier, the one eventfd write that wakes
    /// the queue's owner (the same eventfd a GET_REGION_IO_FDS client writes itself).
    pub fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), TransportError> {
        let pci = |source| TransportError::Pci {
            region: Region::Bar(bar),
            source,
        };
        match self.locate(bar, offset, data.len())? {
            BarTarget::Common(within) => {
                let written = self
                    .common
                    .write(within, data)
                    .map_err(|_| unmapped(bar, offset, data.len()))?;
                if let CommonCfgWrite::Status(status) = written {
                    self.write_status(status);
                }
            }
            // ISR status is read-only.
            BarTarget::Isr => {}
            BarTarget::Device(within) => self.device.write_config(within, data),
            BarTarget::Notify(within) => {
                let multiplier = u64::from(NOTIFY_OFF_MULTIPLIER);
                if !matches!(data.len(), 2 | 4) || within % multiplier != 0 {
                    return Err(unmapped(bar, offset, data.len()));
                }
                let queue = (within / multiplier) as u16;
                self.notifiers
                    .notify(queue)
                    .map_err(|source| TransportError::Notifier { queue, source })?;
            }
            BarTarget::MsixTable(within) => self.msix.table_write(within, data).map_err(pci)?,
            BarTarget::MsixPba(within) => self.msix.pba_write(within, data).map_err(pci)?,
        }
        Ok(())
    }

    /// Function-level reset (vfio-user DEVICE_RESET, or the client went away): the device, the
    /// virtio registers and PCI configuration space. MSI-X eventfds stay: the client owns them.
    pub fn reset(&mut self) {
        self.reset_device();
        self.config.reset();
    }

    fn reset_device(&mut self) {
        debug!(self.log, "virtio reset"; "was_active" => self.activated);
        self.device.reset();
        self.activated = false;
        self.common.reset();
        self.isr.clear();
        if let Err(e) = self.notifiers.drain_all() {
            warn!(self.log, "draining notifier eventfds failed"; "error" => %e);
        }
    }

    fn write_status(&mut self, written: u8) {
        let current = self.common.status();
        let acceptable = features::acceptable(
            self.common.offered_features(),
            self.common.driver_features(),
        );
        match transition(current, written, acceptable) {
            StatusTransition::Reset => self.reset_device(),
            StatusTransition::Set { status, activate } => {
                debug!(self.log, "device status"; "old" => current, "written" => written, "new" => status);
                self.common.set_status(status);
                if activate {
                    self.activate();
                }
            }
        }
    }

    fn activate(&mut self) {
        let result = self.build_queues().and_then(|queues| {
            let activation = Activation {
                memory: self.memory.clone(),
                acked_features: self.common.driver_features(),
                queues,
                config_interrupt: Arc::new(self.config_interrupt()),
            };
            Ok(self.device.activate(activation)?)
        });
        match result {
            Ok(()) => {
                debug!(self.log, "device activated"; "features" => self.common.driver_features());
                self.activated = true;
            }
            Err(reason) => {
                warn!(self.log, "device activation failed"; "reason" => %reason);
                self.common
                    .shared_status()
                    .fetch_or(DEVICE_NEEDS_RESET, Ordering::SeqCst);
                self.config_interrupt().trigger();
            }
        }
    }

    fn build_queues(&self) -> Result<Vec<ActiveQueue>, StartError> {
        let event_idx = self.common.driver_features() & features::RING_EVENT_IDX != 0;
        let memory = self.memory.memory();
        let mut active = Vec::new();
        for (index, config) in self.common.queues().iter().enumerate() {
            if !config.enabled {
                continue;
            }
            let index = index as u16;
            let queue =
                build_queue(config, event_idx).map_err(|source| StartError::QueueConfig {
                    queue: index,
                    source,
                })?;
            if !queue.is_valid(&*memory) {
                return Err(StartError::Rings(index));
            }
            let notifier = self
                .notifiers
                .get(index)
                .ok_or(StartError::NoNotifier(index))?;
            active.push(ActiveQueue {
                index,
                queue,
                notifier: notifier.clone(),
                interrupt: Arc::new(MsixInterrupt::new(
                    self.msix.clone(),
                    config.vector.clone(),
                    self.isr.clone(),
                    QUEUE_INTERRUPT,
                )),
            });
        }
        Ok(active)
    }

    /// The current device status (for logs and tests).
    pub fn device_status(&self) -> u8 {
        self.common.status()
    }

    /// Whether the driver has set DRIVER_OK.
    pub fn driver_ok(&self) -> bool {
        self.common.status() & DRIVER_OK != 0
    }
}

fn build_queue(config: &QueueConfig, event_idx: bool) -> Result<Queue, virtio_queue::Error> {
    let mut queue = Queue::new(config.max_size)?;
    queue.try_set_size(config.size)?;
    queue.try_set_desc_table_address(GuestAddress(config.desc))?;
    queue.try_set_avail_ring_address(GuestAddress(config.driver))?;
    queue.try_set_used_ring_address(GuestAddress(config.device))?;
    queue.set_event_idx(event_idx);
    queue.set_ready(true);
    Ok(queue)
}

fn unmapped(bar: u8, offset: u64, len: usize) -> TransportError {
    TransportError::Unmapped {
        region: Region::Bar(bar),
        offset,
        len,
    }
}

/// The overlap of `offset..offset + len` with `start..start + size`, if any.
fn overlap(offset: u64, len: usize, start: u64, size: u64) -> Option<(u64, u64)> {
    let from = offset.max(start);
    let to = offset.saturating_add(len as u64).min(start + size);
    (from < to).then_some((from, to))
}

/// The notifier eventfd of every queue.
#[derive(Debug)]
pub struct QueueNotifiers {
    fds: Vec<Arc<EventFd>>,
}

impl QueueNotifiers {
    pub fn new(queue_count: u16) -> io::Result<Self> {
        let fds = (0..queue_count)
            .map(|_| EventFd::new(EFD_NONBLOCK).map(Arc::new))
            .collect::<io::Result<_>>()?;
        Ok(QueueNotifiers { fds })
    }

    pub fn get(&self, queue: u16) -> Option<&Arc<EventFd>> {
        self.fds.get(usize::from(queue))
    }

    /// Forgets notifications that were not consumed (the count is not needed, only readiness).
    pub fn drain(&self, queue: u16) -> io::Result<()> {
        if let Some(fd) = self.get(queue) {
            match fd.read() {
                Err(e) if e.kind() != ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn drain_all(&self) -> io::Result<()> {
        (0..self.fds.len() as u16).try_for_each(|queue| self.drain(queue))
    }

    /// What a driver write to the queue's notify address does.
    pub fn notify(&self, queue: u16) -> io::Result<()> {
        match self.get(queue) {
            Some(fd) => match add_one(fd) {
                // The counter is saturated: the queue is already marked as notified.
                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(()),
                other => other,
            },
            None => Ok(()),
        }
    }
}

/// Adds one to `fd`'s counter with a single write(2) made through `syscall`, which is no
/// cancellation point: glibc's `write` wrapper and std's `write_all` loop cost as many
/// instructions again as the rest of a socket kick's handling on the main loop.
fn add_one(fd: &EventFd) -> io::Result<()> {
    let one = 1u64;
    // SAFETY: write(2) reads the 8 bytes of `one`, which lives across the call, from a descriptor
    // `fd` keeps open; it touches no other memory.
    let written = unsafe {
        libc::syscall(
            libc::SYS_write,
            fd.as_raw_fd(),
            std::ptr::from_ref(&one),
            size_of::<u64>(),
        )
    };
    if written < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// ISR status bits.
pub const QUEUE_INTERRUPT: u8 = 1;
pub const CONFIG_INTERRUPT: u8 = 2;

/// The ISR status byte: read-to-clear, set by interrupts (mostly unused with MSI-X).
#[derive(Debug, Default)]
pub struct Isr(AtomicU8);

impl Isr {
    pub fn raise(&self, bits: u8) {
        self.0.fetch_or(bits, Ordering::SeqCst);
    }

    /// What the driver reads: the bits, cleared by the read.
    pub fn take(&self) -> u8 {
        self.0.swap(0, Ordering::SeqCst)
    }

    pub fn clear(&self) {
        self.0.store(0, Ordering::SeqCst);
    }
}

/// The vector number meaning "no interrupt" (virtio 1.2, 4.1.5.1.2).
pub const NO_VECTOR: u16 = 0xffff;

/// Raises the MSI-X vector currently assigned to a queue or to configuration changes.
pub struct MsixInterrupt {
    vectors: Arc<MsixVectors>,
    vector: Arc<AtomicU16>,
    isr: Arc<Isr>,
    isr_bit: u8,
}

impl MsixInterrupt {
    pub fn new(
        vectors: Arc<MsixVectors>,
        vector: Arc<AtomicU16>,
        isr: Arc<Isr>,
        isr_bit: u8,
    ) -> Self {
        MsixInterrupt {
            vectors,
            vector,
            isr,
            isr_bit,
        }
    }
}

impl Interrupt for MsixInterrupt {
    fn trigger(&self) {
        let vector = self.vector.load(Ordering::Acquire);
        if vector == NO_VECTOR {
            // No MSI-X message: the ISR bit is all the driver can find (by polling).
            self.isr.raise(self.isr_bit);
            return;
        }
        if self.isr_bit == CONFIG_INTERRUPT {
            self.isr.raise(self.isr_bit);
        }
        // The register only ever holds NO_VECTOR or a vector that exists, and an eventfd write
        // can only fail on a closed descriptor, which the client replaces with SET_IRQS.
        let _ = self.vectors.signal(vector);
    }
}

/// Device-side changes the driver must hear about: configuration changes and
/// DEVICE_NEEDS_RESET. A handle any thread may hold.
pub struct ConfigNotifier {
    pub(crate) status: Arc<AtomicU8>,
    pub(crate) generation: Arc<AtomicU8>,
    pub(crate) interrupt: MsixInterrupt,
}

impl ConfigNotifier {
    /// The device configuration changed: bump config_generation and raise the config vector.
    pub fn config_changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.interrupt.trigger();
    }

    /// The device cannot go on until the driver resets it.
    pub fn needs_reset(&self) {
        self.status.fetch_or(DEVICE_NEEDS_RESET, Ordering::SeqCst);
        self.interrupt.trigger();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_then_drain() {
        let notifiers = QueueNotifiers::new(2).unwrap();
        notifiers.notify(1).unwrap();
        notifiers.notify(1).unwrap();
        assert_eq!(notifiers.get(1).unwrap().read().unwrap(), 2);
        notifiers.notify(0).unwrap();
        notifiers.drain_all().unwrap();
        assert!(notifiers.get(0).unwrap().read().is_err());
        assert!(notifiers.get(2).is_none());
    }

    #[test]
    fn reading_clears() {
        let isr = Isr::default();
        isr.raise(CONFIG_INTERRUPT);
        isr.raise(QUEUE_INTERRUPT);
        assert_eq!(isr.take(), 3);
        assert_eq!(isr.take(), 0);
    }
}
