//! The virtio-pci function driven the way a guest driver drives it, with a fake device behind.

use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use virtio::common_cfg::{
    CONFIG_GENERATION, CONFIG_MSIX_VECTOR, DEVICE_FEATURE, DEVICE_FEATURE_SELECT, DEVICE_STATUS,
    DRIVER_FEATURE, DRIVER_FEATURE_SELECT, QUEUE_DESC, QUEUE_DEVICE, QUEUE_DRIVER, QUEUE_ENABLE,
    QUEUE_MSIX_VECTOR, QUEUE_NOTIFY_OFF, QUEUE_SELECT, QUEUE_SIZE,
};
use virtio::status::{ACKNOWLEDGE, DEVICE_NEEDS_RESET, DRIVER, DRIVER_OK, FEATURES_OK};
use virtio::{
    ActivateError, Activation, InlineQueueHost, QueueHost, QueueWorker, VirtioDevice,
    VirtioPciFunction, NO_VECTOR,
};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const VIRTIO_BAR: u8 = 4;
const MSIX_BAR: u8 = 1;
const VERSION_1: u64 = 1 << 32;
const EVENT_IDX: u64 = 1 << 29;
const DEVICE_BIT: u64 = 1 << 1;
const QUEUES: u16 = 4;

const NEEDS_RESET: u8 = DEVICE_NEEDS_RESET;

#[derive(Debug, PartialEq)]
struct SeenQueue {
    index: u16,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    event_idx: bool,
}

/// Records, in the order served, the queues whose kick woke it.
struct NotifierRecorder {
    queue: u16,
    notifier: Arc<EventFd>,
    served: Arc<Mutex<Vec<u16>>>,
}

impl QueueWorker for NotifierRecorder {
    fn queue_index(&self) -> u16 {
        self.queue
    }
    fn notifier(&self) -> &Arc<EventFd> {
        &self.notifier
    }
    fn notifier_ready(&mut self) {
        if self.notifier.read().is_ok() {
            self.served.lock().unwrap().push(self.queue);
        }
    }
    fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    fn completions_ready(&mut self) {}
    fn in_flight(&self) -> usize {
        0
    }
}

struct FakeDevice {
    config: [u8; 8],
    fail_activation: bool,
    activations: Vec<(u64, Vec<SeenQueue>)>,
    active: Option<Activation>,
    /// Serves the queues of an activation with `NotifierRecorder`s.
    host: Arc<InlineQueueHost>,
    served: Arc<Mutex<Vec<u16>>>,
    resets: usize,
}

impl Default for FakeDevice {
    fn default() -> Self {
        FakeDevice {
            config: [0; 8],
            fail_activation: false,
            activations: Vec::new(),
            active: None,
            host: Arc::new(InlineQueueHost::new().unwrap()),
            served: Arc::default(),
            resets: 0,
        }
    }
}

impl FakeDevice {
    fn served(&self) -> Vec<u16> {
        self.served.lock().unwrap().clone()
    }
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        8
    }
    fn queue_count(&self) -> u16 {
        QUEUES
    }
    fn max_queue_size(&self) -> u16 {
        128
    }
    fn features(&self) -> u64 {
        DEVICE_BIT | VERSION_1
    }
    fn config_size(&self) -> usize {
        self.config.len()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let start = offset as usize;
        data.copy_from_slice(&self.config[start..start + data.len()]);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let start = offset as usize;
        self.config[start..start + data.len()].copy_from_slice(data);
    }
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if self.fail_activation {
            return Err(ActivateError::NoSuchQueue {
                index: QUEUES,
                count: QUEUES,
            });
        }
        let queues = activation
            .queues
            .iter()
            .map(|q| SeenQueue {
                index: q.index,
                size: q.queue.size(),
                desc: q.queue.desc_table(),
                avail: q.queue.avail_ring(),
                used: q.queue.used_ring(),
                event_idx: q.queue.event_idx_enabled(),
            })
            .collect();
        self.activations.push((activation.acked_features, queues));
        for queue in &activation.queues {
            self.host.adopt(Box::new(NotifierRecorder {
                queue: queue.index,
                notifier: queue.notifier.clone(),
                served: self.served.clone(),
            }));
        }
        self.active = Some(activation);
        Ok(())
    }
    fn reset(&mut self) {
        self.host.release_all();
        self.resets += 1;
        self.active = None;
    }
}

fn function(device: FakeDevice) -> VirtioPciFunction<FakeDevice> {
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let log = slog::Logger::root(slog::Discard, slog::o!());
    VirtioPciFunction::new(device, 0x010000, GuestMemoryAtomic::new(memory), log).unwrap()
}

fn read(f: &mut VirtioPciFunction<FakeDevice>, offset: u64, len: usize) -> u64 {
    let mut data = [0u8; 8];
    f.bar_read(VIRTIO_BAR, offset, &mut data[..len]).unwrap();
    u64::from_le_bytes(data)
}

fn write(f: &mut VirtioPciFunction<FakeDevice>, offset: u64, value: u64, len: usize) {
    f.bar_write(VIRTIO_BAR, offset, &value.to_le_bytes()[..len])
        .unwrap()
}

fn config_u8(f: &mut VirtioPciFunction<FakeDevice>, offset: u64) -> u8 {
    let mut data = [0u8];
    f.config_read(offset, &mut data).unwrap();
    data[0]
}

fn config_u32(f: &mut VirtioPciFunction<FakeDevice>, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    f.config_read(offset, &mut data).unwrap();
    u32::from_le_bytes(data)
}

fn eventfd_pair() -> (EventFd, OwnedFd) {
    let fd = EventFd::new(EFD_NONBLOCK).unwrap();
    let raw = fd.try_clone().unwrap().into_raw_fd();
    // SAFETY: `raw` was just released by `into_raw_fd`, so nothing else owns it.
    (fd, unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A driver's walk of the capability list: (id, offset) of every capability.
fn capabilities(f: &mut VirtioPciFunction<FakeDevice>) -> Vec<(u8, u64)> {
    let mut caps = Vec::new();
    let mut next = u64::from(config_u8(f, 0x34));
    while next != 0 {
        caps.push((config_u8(f, next), next));
        next = u64::from(config_u8(f, next + 1));
    }
    caps
}

/// The virtio structure of `cfg_type`: (bar, offset, length, capability offset).
fn virtio_cap(f: &mut VirtioPciFunction<FakeDevice>, cfg_type: u8) -> (u8, u32, u32, u64) {
    let caps = capabilities(f);
    let &(_, at) = caps
        .iter()
        .find(|&&(id, at)| id == 0x09 && config_u8(f, at + 3) == cfg_type)
        .unwrap();
    (
        config_u8(f, at + 4),
        config_u32(f, at + 8),
        config_u32(f, at + 12),
        at,
    )
}

/// ACKNOWLEDGE, DRIVER, feature negotiation and FEATURES_OK; returns the status read back.
fn negotiate(f: &mut VirtioPciFunction<FakeDevice>, features: u64) -> u8 {
    write(f, DEVICE_STATUS, u64::from(ACKNOWLEDGE | DRIVER), 1);
    write(f, DRIVER_FEATURE_SELECT, 0, 4);
    write(f, DRIVER_FEATURE, features & 0xffff_ffff, 4);
    write(f, DRIVER_FEATURE_SELECT, 1, 4);
    write(f, DRIVER_FEATURE, features >> 32, 4);
    write(
        f,
        DEVICE_STATUS,
        u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK),
        1,
    );
    read(f, DEVICE_STATUS, 1) as u8
}

fn configure_queue(
    f: &mut VirtioPciFunction<FakeDevice>,
    queue: u16,
    size: u16,
    vector: u16,
    base: u64,
) {
    write(f, QUEUE_SELECT, u64::from(queue), 2);
    write(f, QUEUE_SIZE, u64::from(size), 2);
    write(f, QUEUE_MSIX_VECTOR, u64::from(vector), 2);
    write(f, QUEUE_DESC, base, 4);
    write(f, QUEUE_DESC + 4, 0, 4);
    write(f, QUEUE_DRIVER, base + 0x1000, 8);
    write(f, QUEUE_DEVICE, base + 0x2000, 8);
    write(f, QUEUE_ENABLE, 1, 2);
}

#[test]
fn config_space_identifies_a_modern_virtio_scsi_function() {
    let mut f = function(FakeDevice::default());
    assert_eq!(config_u32(&mut f, 0), 0x1048_1af4);
    assert_eq!(config_u32(&mut f, 0x08), 0x0100_0001);
    // Subsystem device ID 0x1100 as QEMU's modern devices: OVMF binds only 0x40 and above.
    assert_eq!(config_u32(&mut f, 0x2c), 0x1100_1af4);
    assert_eq!(config_u8(&mut f, 0x3d), 0);
    // BAR1 32-bit, BAR4 64-bit prefetchable; sizing reads back the sizes.
    f.config_write(0x14, &[0xff; 4]).unwrap();
    f.config_write(0x20, &[0xff; 4]).unwrap();
    f.config_write(0x24, &[0xff; 4]).unwrap();
    assert_eq!(config_u32(&mut f, 0x14), 0xffff_e000);
    assert_eq!(config_u32(&mut f, 0x20), 0xffff_c00c);
    assert_eq!(config_u32(&mut f, 0x24), 0xffff_ffff);
    assert_eq!(f.bar_size(MSIX_BAR), Some(0x2000));
    assert_eq!(f.bar_size(VIRTIO_BAR), Some(0x4000));
    assert_eq!(f.bar_size(0), None);
}

#[test]
fn capabilities_describe_every_structure_and_msix() {
    let mut f = function(FakeDevice::default());
    let ids: Vec<u8> = capabilities(&mut f).iter().map(|&(id, _)| id).collect();
    assert_eq!(ids, [0x09, 0x09, 0x09, 0x09, 0x09, 0x11]);
    let (bar, offset, length, _) = virtio_cap(&mut f, 1);
    assert_eq!((bar, offset, length), (4, 0, 0x38));
    let (bar, offset, length, notify_at) = virtio_cap(&mut f, 2);
    assert_eq!((bar, offset, length), (4, 0x3000, u32::from(QUEUES) * 4));
    assert_eq!(config_u8(&mut f, notify_at + 2), 20);
    assert_eq!(
        config_u32(&mut f, notify_at + 16),
        4,
        "notify_off_multiplier"
    );
    let (bar, offset, length, _) = virtio_cap(&mut f, 3);
    assert_eq!((bar, offset, length), (4, 0x1000, 1));
    let (bar, offset, length, _) = virtio_cap(&mut f, 4);
    assert_eq!((bar, offset, length), (4, 0x2000, 8));
    let (_, _, _, pci_cfg_at) = virtio_cap(&mut f, 5);
    assert_eq!(config_u8(&mut f, pci_cfg_at + 2), 20);

    let (_, msix_at) = *capabilities(&mut f).last().unwrap();
    let control = config_u32(&mut f, msix_at) >> 16;
    assert_eq!(
        control & 0x7ff,
        u32::from(QUEUES),
        "table size is queues + 1 vectors"
    );
    assert_eq!(config_u32(&mut f, msix_at + 4), 1, "table at BAR1 offset 0");
    assert_eq!(
        config_u32(&mut f, msix_at + 8),
        0x1001,
        "PBA at BAR1 offset 0x1000"
    );
    assert_eq!(f.msix_vectors().count(), QUEUES + 1);
}

#[test]
fn driver_configures_queues_and_driver_ok_activates_the_device() {
    let mut f = function(FakeDevice::default());
    write(&mut f, DEVICE_FEATURE_SELECT, 0, 4);
    let low = read(&mut f, DEVICE_FEATURE, 4);
    write(&mut f, DEVICE_FEATURE_SELECT, 1, 4);
    let high = read(&mut f, DEVICE_FEATURE, 4);
    let offered = low | high << 32;
    assert_eq!(offered, DEVICE_BIT | VERSION_1 | EVENT_IDX | 1 << 28);

    let status = negotiate(&mut f, VERSION_1 | EVENT_IDX | DEVICE_BIT);
    assert_eq!(status, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    configure_queue(&mut f, 2, 64, 3, 0x10000);
    write(&mut f, QUEUE_SELECT, 2, 2);
    assert_eq!(read(&mut f, QUEUE_NOTIFY_OFF, 2), 2);
    assert!(!f.is_active());
    write(
        &mut f,
        DEVICE_STATUS,
        u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK),
        1,
    );
    assert!(f.is_active());
    assert_eq!(
        f.device().activations,
        [(
            VERSION_1 | EVENT_IDX | DEVICE_BIT,
            vec![SeenQueue {
                index: 2,
                size: 64,
                desc: 0x10000,
                avail: 0x11000,
                used: 0x12000,
                event_idx: true
            }]
        )]
    );

    // A notify write signals the queue's notifier, which wakes that queue's owner once.
    let notify = f.queue_notify_addresses();
    assert_eq!(notify.len(), usize::from(QUEUES));
    assert_eq!((notify[2].bar, notify[2].offset), (VIRTIO_BAR, 0x3008));
    let host = f.device().host.clone();
    assert!(host.serve_ready().unwrap().is_empty());
    assert!(
        f.device().served().is_empty(),
        "adoption found no notification"
    );
    write(&mut f, 0x3008, 2, 2);
    write(&mut f, 0x3008, 2, 2);
    assert_eq!(host.serve_ready().unwrap(), [(2, true)]);
    assert_eq!(f.device().served(), [2]);
    assert!(notify[2].eventfd.read().is_err(), "the worker drained it");
    // A queue the driver did not enable has no owner: its eventfd stays set for later.
    write(&mut f, 0x3004, 1, 2);
    assert!(host.serve_ready().unwrap().is_empty());
    assert_eq!(f.device().served(), [2]);
    assert_eq!(notify[1].eventfd.read().unwrap(), 1);
}

#[test]
fn features_ok_is_refused_for_unacceptable_features() {
    let mut f = function(FakeDevice::default());
    assert_eq!(negotiate(&mut f, VERSION_1 | 1 << 5), ACKNOWLEDGE | DRIVER);
    // DRIVER_OK without FEATURES_OK does not activate.
    write(
        &mut f,
        DEVICE_STATUS,
        u64::from(ACKNOWLEDGE | DRIVER | DRIVER_OK),
        1,
    );
    assert!(!f.is_active());
    write(&mut f, DEVICE_STATUS, 0, 1);
    assert_eq!(
        negotiate(&mut f, DEVICE_BIT),
        ACKNOWLEDGE | DRIVER,
        "VERSION_1 is required"
    );
}

#[test]
fn failed_activation_sets_needs_reset_and_raises_the_config_vector() {
    let mut f = function(FakeDevice {
        fail_activation: true,
        ..FakeDevice::default()
    });
    let (config_fd, owned) = eventfd_pair();
    f.msix_vectors().set(0, Some(owned)).unwrap();
    negotiate(&mut f, VERSION_1);
    write(&mut f, CONFIG_MSIX_VECTOR, 0, 2);
    configure_queue(&mut f, 0, 16, NO_VECTOR, 0x10000);
    write(
        &mut f,
        DEVICE_STATUS,
        u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK),
        1,
    );
    assert!(!f.is_active());
    assert_eq!(
        read(&mut f, DEVICE_STATUS, 1) as u8 & NEEDS_RESET,
        NEEDS_RESET
    );
    assert_eq!(config_fd.read().unwrap(), 1);
    assert_eq!(read(&mut f, 0x1000, 1), 2, "ISR has the config bit");
    assert_eq!(read(&mut f, 0x1000, 1), 0, "ISR clears on read");
}

#[test]
fn rings_outside_guest_memory_fail_activation() {
    let mut f = function(FakeDevice::default());
    negotiate(&mut f, VERSION_1);
    configure_queue(&mut f, 0, 16, NO_VECTOR, 0x1_0000_0000);
    write(
        &mut f,
        DEVICE_STATUS,
        u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK),
        1,
    );
    assert!(!f.is_active());
    assert!(f.device().activations.is_empty());
    assert_eq!(
        read(&mut f, DEVICE_STATUS, 1) as u8 & NEEDS_RESET,
        NEEDS_RESET
    );
}

#[test]
fn status_zero_resets_device_and_registers_but_keeps_notifiers() {
    let mut f = function(FakeDevice::default());
    let before = f.queue_notify_addresses();
    negotiate(&mut f, VERSION_1);
    configure_queue(&mut f, 1, 32, 1, 0x10000);
    write(
        &mut f,
        DEVICE_STATUS,
        u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK),
        1,
    );
    write(&mut f, 0x3004, 1, 2);
    write(&mut f, DEVICE_STATUS, 0, 1);
    assert_eq!(f.device().resets, 1);
    assert!(!f.is_active());
    assert_eq!(read(&mut f, DEVICE_STATUS, 1), 0);
    write(&mut f, QUEUE_SELECT, 1, 2);
    assert_eq!(read(&mut f, QUEUE_SIZE, 2), 128);
    assert_eq!(read(&mut f, QUEUE_ENABLE, 2), 0);
    assert_eq!(read(&mut f, QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    assert_eq!(read(&mut f, CONFIG_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    let after = f.queue_notify_addresses();
    assert!(std::sync::Arc::ptr_eq(
        &before[1].eventfd,
        &after[1].eventfd
    ));
    assert!(
        after[1].eventfd.read().is_err(),
        "reset drained stale kicks"
    );
}

#[test]
fn queue_interrupts_signal_the_assigned_vector() {
    let mut f = function(FakeDevice::default());
    let (fd2, owned2) = eventfd_pair();
    f.msix_vectors().set(2, Some(owned2)).unwrap();
    negotiate(&mut f, VERSION_1);
    configure_queue(&mut f, 0, 16, 2, 0x10000);
    configure_queue(&mut f, 1, 16, NO_VECTOR, 0x20000);
    configure_queue(&mut f, 3, 16, 4, 0x30000);
    write(
        &mut f,
        DEVICE_STATUS,
        u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK),
        1,
    );
    let activation = f.device_mut().active.take().unwrap();
    assert_eq!(activation.queues.len(), 3);
    activation.queues[0].interrupt.trigger();
    assert_eq!(fd2.read().unwrap(), 1);
    // NO_VECTOR: nothing to signal, only the ISR queue bit.
    activation.queues[1].interrupt.trigger();
    assert_eq!(read(&mut f, 0x1000, 1), 1);
    // Vector 4 has no eventfd yet: pending, visible in the PBA, fired on assignment.
    activation.queues[2].interrupt.trigger();
    let mut pba = [0u8; 8];
    f.bar_read(MSIX_BAR, 0x1000, &mut pba).unwrap();
    assert_eq!(u64::from_le_bytes(pba), 1 << 4);
    let (fd4, owned4) = eventfd_pair();
    f.msix_vectors().set(4, Some(owned4)).unwrap();
    assert_eq!(fd4.read().unwrap(), 1);
    f.bar_read(MSIX_BAR, 0x1000, &mut pba).unwrap();
    assert_eq!(u64::from_le_bytes(pba), 0);
}

#[test]
fn msix_table_is_reachable_through_bar1() {
    let mut f = function(FakeDevice::default());
    f.bar_write(MSIX_BAR, 0x10, &0xfee0_0000u32.to_le_bytes())
        .unwrap();
    let mut data = [0u8; 4];
    f.bar_read(MSIX_BAR, 0x10, &mut data).unwrap();
    assert_eq!(u32::from_le_bytes(data), 0xfee0_0000);
    f.bar_read(MSIX_BAR, 0x1c, &mut data).unwrap();
    assert_eq!(u32::from_le_bytes(data), 1, "vector control starts masked");
}

#[test]
fn config_notifier_bumps_generation_and_sets_needs_reset() {
    let mut f = function(FakeDevice::default());
    let (fd, owned) = eventfd_pair();
    f.msix_vectors().set(1, Some(owned)).unwrap();
    write(&mut f, CONFIG_MSIX_VECTOR, 1, 2);
    let notifier = f.config_notifier();
    notifier.config_changed();
    assert_eq!(read(&mut f, CONFIG_GENERATION, 1), 1);
    assert_eq!(fd.read().unwrap(), 1);
    notifier.needs_reset();
    assert_eq!(read(&mut f, DEVICE_STATUS, 1) as u8, NEEDS_RESET);
    assert_eq!(fd.read().unwrap(), 1);
}

#[test]
fn device_config_window_forwards_to_the_device() {
    let mut f = function(FakeDevice::default());
    f.bar_write(VIRTIO_BAR, 0x2004, &[1, 2, 3, 4]).unwrap();
    assert_eq!(f.device().config, [0, 0, 0, 0, 1, 2, 3, 4]);
    assert_eq!(read(&mut f, 0x2006, 2), 0x0403);
    assert!(f.bar_write(VIRTIO_BAR, 0x2006, &[0; 4]).is_err());
}

#[test]
fn pci_cfg_capability_reaches_bar_registers() {
    let mut f = function(FakeDevice::default());
    let (_, _, _, cap) = virtio_cap(&mut f, 5);
    // Write device_status through the window: bar 4, offset 0x14, length 1.
    f.config_write(cap + 4, &[VIRTIO_BAR]).unwrap();
    f.config_write(cap + 8, &(DEVICE_STATUS as u32).to_le_bytes())
        .unwrap();
    f.config_write(cap + 12, &1u32.to_le_bytes()).unwrap();
    f.config_write(cap + 16, &[ACKNOWLEDGE, 0, 0, 0]).unwrap();
    assert_eq!(read(&mut f, DEVICE_STATUS, 1), u64::from(ACKNOWLEDGE));
    // Read num_queues (2 bytes at 0x12) through the window.
    f.config_write(cap + 8, &0x12u32.to_le_bytes()).unwrap();
    f.config_write(cap + 12, &2u32.to_le_bytes()).unwrap();
    assert_eq!(config_u32(&mut f, cap + 16), u32::from(QUEUES));
    // A notify through the window signals the queue's notifier.
    f.config_write(cap + 8, &0x300cu32.to_le_bytes()).unwrap();
    f.config_write(cap + 16, &[3, 0, 0, 0]).unwrap();
    assert_eq!(f.queue_notify_addresses()[3].eventfd.read().unwrap(), 1);
    // A misaligned target is ignored.
    f.config_write(cap + 8, &0x13u32.to_le_bytes()).unwrap();
    assert_eq!(config_u32(&mut f, cap + 16), 0);
}

#[test]
fn bad_accesses_are_errors() {
    let mut f = function(FakeDevice::default());
    let mut data = [0u8; 4];
    assert!(f.bar_read(0, 0, &mut data).is_err());
    assert!(f.bar_read(VIRTIO_BAR, 0x800, &mut data).is_err());
    assert!(f.bar_read(VIRTIO_BAR, 0x4000, &mut data).is_err());
    assert!(f.bar_write(VIRTIO_BAR, 0x3001, &[0; 2]).is_err());
    assert!(f.bar_write(VIRTIO_BAR, DEVICE_STATUS, &[0; 2]).is_err());
    assert!(f.bar_read(MSIX_BAR, 0x3, &mut data).is_err());
    assert!(f.bar_write(VIRTIO_BAR, u64::MAX, &[0; 2]).is_err());
    assert!(f.config_read(0x100, &mut data).is_err());
    assert!(f.config_write(0xfe, &data).is_err());
}

#[test]
fn function_reset_restores_config_space() {
    let mut f = function(FakeDevice::default());
    f.config_write(0x04, &[0x06, 0]).unwrap();
    negotiate(&mut f, VERSION_1);
    f.reset();
    assert_eq!(config_u8(&mut f, 0x04), 0);
    assert_eq!(read(&mut f, DEVICE_STATUS, 1), 0);
    assert_eq!(f.device().resets, 1);
}

/// Hostile accesses: arbitrary regions, offsets, widths and values never panic, and the
/// function still works afterwards.
#[test]
fn arbitrary_accesses_never_panic() {
    let mut f = function(FakeDevice::default());
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..200_000 {
        let choice = next();
        let len = [0, 1, 2, 3, 4, 8, 16][(choice % 7) as usize];
        let offset = match (choice >> 8) % 4 {
            0 => next() % 0x110,
            1 => next() % 0x4100,
            2 => 0x3000 + next() % 0x20,
            _ => next(),
        };
        let value = next().to_le_bytes();
        let mut data = vec![0u8; len];
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = value[i % 8];
        }
        let bar = [1, 4, 0, 6, 255][((choice >> 16) % 5) as usize];
        // Resets and reconfigurations are fine; panics are not.
        let _ = match (choice >> 24) % 4 {
            0 => f.config_read(offset, &mut data),
            1 => f.config_write(offset, &data),
            2 => f.bar_read(bar, offset, &mut data),
            _ => f.bar_write(bar, offset, &data),
        };
        let _ = f.device().host.serve_ready();
    }
    f.reset();
    assert_eq!(
        negotiate(&mut f, VERSION_1),
        ACKNOWLEDGE | DRIVER | FEATURES_OK
    );
}
