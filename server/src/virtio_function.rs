//! A virtio-pci function seen as a vfio-user device: regions, IRQ indices and kicks mapped onto
//! the transport of the `virtio` crate, its queues served by the iothread pool.
//!
//! A driver's notify write reaches the transport as a REGION_WRITE, and the transport writes
//! that queue's notifier: the one eventfd write that wakes the queue's owner, an iothread or the
//! main loop's queue set (whose `Poll` is one of this device's event fds).

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use slog::{debug, info, warn, Logger};
use vfio_user_server::{Device, DeviceError, IoFd, IrqAction, IrqInfo, RegionInfo};
use virtio::{TransportError, VirtioDevice, VirtioPciFunction};
use vmm_sys_util::eventfd::EventFd;

use crate::iothread_pool::IothreadPool;

/// vfio-user region indices of a PCI device (BAR0-5, ROM, config space, VGA).
const CONFIG_REGION: u32 = 7;
const REGION_COUNT: u32 = 9;
/// vfio-user IRQ indices of a PCI device: INTx, MSI, MSI-X, ERR, REQ.
const MSIX_IRQ: u32 = 2;
const IRQ_COUNT: u32 = 5;
/// Virtqueues 0 and 1 are virtio-scsi's control and event queues.
const FIRST_REQUEST_QUEUE: u16 = 2;

pub struct VirtioFunction<D: VirtioDevice> {
    function: VirtioPciFunction<D>,
    /// Notifiers in queue order, kept here so `event_fds` can lend them out.
    notifiers: Vec<Arc<EventFd>>,
    /// The threads serving the queues: the device's queue host.
    pool: Arc<IothreadPool>,
    /// A client mapped memory that can shrink; the device guards its accesses for good.
    shrinkable_mapped: bool,
    log: Logger,
}

impl<D: VirtioDevice> VirtioFunction<D> {
    pub fn new(function: VirtioPciFunction<D>, pool: Arc<IothreadPool>, log: Logger) -> Self {
        let mut addresses = function.queue_notify_addresses();
        addresses.sort_by_key(|a| a.queue);
        let notifiers = addresses.into_iter().map(|a| a.eventfd).collect();
        VirtioFunction {
            function,
            notifiers,
            pool,
            shrinkable_mapped: false,
            log,
        }
    }

    pub fn function(&self) -> &VirtioPciFunction<D> {
        &self.function
    }

    pub fn function_mut(&mut self) -> &mut VirtioPciFunction<D> {
        &mut self.function
    }
}

fn transport_error(region: u32, offset: u64, len: usize, error: TransportError) -> DeviceError {
    match error {
        TransportError::NoSuchBar(_) => DeviceError::NoSuchRegion(region),
        TransportError::Unmapped { .. } => DeviceError::OutOfRange {
            region,
            offset,
            len,
        },
        _ => DeviceError::BadAccess {
            region,
            offset,
            len,
        },
    }
}

impl<D: VirtioDevice> Device for VirtioFunction<D> {
    fn regions(&self) -> Vec<RegionInfo> {
        (0..REGION_COUNT)
            .map(|index| {
                let size = match index {
                    CONFIG_REGION => pci::CONFIG_SPACE_SIZE,
                    0..=5 => self.function.bar_size(index as u8).unwrap_or(0),
                    _ => 0,
                };
                RegionInfo {
                    index,
                    size,
                    readable: size > 0,
                    writable: size > 0,
                    mmap: None,
                }
            })
            .collect()
    }

    fn irqs(&self) -> Vec<IrqInfo> {
        (0..IRQ_COUNT)
            .map(|index| IrqInfo {
                index,
                count: if index == MSIX_IRQ {
                    u32::from(self.function.msix_vectors().count())
                } else {
                    0
                },
                eventfd: true,
                maskable: false,
                automasked: false,
                noresize: false,
            })
            .collect()
    }

    fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), DeviceError> {
        let len = data.len();
        let result = match region {
            CONFIG_REGION => self.function.config_read(offset, data),
            0..=5 => self.function.bar_read(region as u8, offset, data),
            _ => return Err(DeviceError::NoSuchRegion(region)),
        };
        result.map_err(|e| transport_error(region, offset, len, e))
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let result = match region {
            CONFIG_REGION => self.function.config_write(offset, data),
            0..=5 => self.function.bar_write(region as u8, offset, data),
            _ => return Err(DeviceError::NoSuchRegion(region)),
        };
        result.map_err(|e| transport_error(region, offset, data.len(), e))
    }

    fn region_io_fds(&self, region: u32) -> Result<Vec<IoFd<'_>>, DeviceError> {
        if region >= REGION_COUNT {
            return Err(DeviceError::NoSuchRegion(region));
        }
        let mut addresses = self.function.queue_notify_addresses();
        // A client takes only so many fds in one reply (max_msg_fds): the request queues come
        // first, since their kicks are the ones on the data path.
        addresses.sort_by_key(|a| (a.queue < FIRST_REQUEST_QUEUE, a.queue));
        Ok(addresses
            .into_iter()
            .filter(|a| u32::from(a.bar) == region)
            .filter_map(|a| {
                let notifier = self.notifiers.get(usize::from(a.queue))?;
                Some(IoFd {
                    offset: a.offset,
                    size: a.size,
                    fd: block::borrow_eventfd(notifier),
                    datamatch: None,
                })
            })
            .collect())
    }

    fn set_irqs(&mut self, index: u32, action: IrqAction) -> Result<(), DeviceError> {
        if index >= IRQ_COUNT {
            return Err(DeviceError::NoSuchIrq(index));
        }
        let vectors = self.function.msix_vectors();
        let count = if index == MSIX_IRQ {
            u32::from(vectors.count())
        } else {
            0
        };
        let check = |start: u32, len: u64| {
            let end = u64::from(start) + len;
            if end > u64::from(count) {
                Err(DeviceError::IrqOutOfRange {
                    index,
                    start,
                    end,
                    count,
                })
            } else {
                Ok(start as u16)
            }
        };
        let pci = |e: pci::PciError| DeviceError::Io(std::io::Error::other(e));
        match action {
            IrqAction::Disable if index == MSIX_IRQ => vectors.clear_all(),
            // QEMU disables INTx and MSI while it sets up MSI-X; with no vectors there, that
            // is already true.
            IrqAction::Disable => {}
            IrqAction::Assign { start, fds } => {
                let first = check(start, fds.len() as u64)?;
                for (vector, fd) in (first..).zip(fds) {
                    vectors.set(vector, fd).map_err(pci)?;
                }
            }
            IrqAction::Trigger { start, count: n } => {
                let first = check(start, u64::from(n))?;
                for vector in first..first + n as u16 {
                    vectors.signal(vector).map_err(pci)?;
                }
            }
            IrqAction::TriggerBool { start, values } => {
                let first = check(start, values.len() as u64)?;
                for (vector, fire) in (first..).zip(values) {
                    if fire {
                        vectors.signal(vector).map_err(pci)?;
                    }
                }
            }
            IrqAction::Mask { .. } => {
                return Err(DeviceError::IrqUnsupported {
                    index,
                    what: "masking (the client masks MSI-X by swapping eventfds)",
                })
            }
        }
        Ok(())
    }

    fn dma_shrinkable(&mut self, iova: u64, size: u64) {
        if self.shrinkable_mapped {
            return;
        }
        self.shrinkable_mapped = true;
        debug!(self.log, "guest memory can shrink: guarding queue accesses from now on";
            "iova" => iova, "size" => size);
        // No worker may be inside a call while the guard is turned on (`memory_may_shrink`).
        self.pool.pause();
        self.function.device_mut().memory_may_shrink();
        self.pool.resume();
    }

    fn dma_mapped(&mut self, _iova: u64, _size: u64) {}

    fn dma_unmapping(&mut self, _iova: u64, _size: u64) {
        self.pool.pause();
    }

    fn dma_unmapped(&mut self) {
        self.pool.resume();
    }

    fn reset(&mut self) {
        self.function.reset();
        // QEMU disables interrupts before a reset and sets them up again afterwards; a client
        // that goes away must not leave its eventfds with us.
        self.function.msix_vectors().clear_all();
        debug!(self.log, "function reset");
    }

    fn client_disconnected(&mut self) {
        // Read before the records below, whose own allocations would count otherwise.
        if let Some(count) = crate::allocation_counter::allocations() {
            info!(self.log, "allocations"; "count" => count);
        }
        for queue in self.function.device().queue_stats() {
            info!(self.log, "queue stats"; "vq" => queue.vq, "requests" => queue.requests,
                "kicks" => queue.kicks, "interrupts" => queue.interrupts,
                "interrupts_deferred" => queue.interrupts_deferred,
                "rechecks" => queue.rechecks, "bytes_read" => queue.bytes_read, "bytes_written" => queue.bytes_written,
                "errors" => queue.errors(), "transport_failures" => queue.transport_failures,
                "bad_targets" => queue.bad_targets,
                "in_flight" => queue.in_flight);
        }
        for iothread in self.pool.iothread_stats() {
            info!(self.log, "iothread stats"; "iothread" => iothread.name,
                "busy_ns" => iothread.busy_ns, "poll_ns" => iothread.poll_ns,
                "sleep_ns" => iothread.sleep_ns);
        }
    }

    fn event_fds(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.pool.main_loop_fd()]
    }

    /// The main loop's queue set has a notifier, a completion eventfd or a re-check to serve.
    fn event_ready(&mut self, _index: usize) {
        if let Err(e) = self.pool.main_loop().serve_ready() {
            warn!(self.log, "serving main-loop queues failed"; "error" => %e);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use virtio::common_cfg::{
        DEVICE_STATUS, DRIVER_FEATURE, DRIVER_FEATURE_SELECT, QUEUE_DESC, QUEUE_DEVICE,
        QUEUE_DRIVER, QUEUE_ENABLE, QUEUE_SELECT, QUEUE_SIZE,
    };
    use virtio::status::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK};
    use virtio::{ActivateError, Activation, QueueHost, QueueWorker};
    use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

    use super::*;
    use crate::mapping::{QueueMapping, QueueOwner};

    const VIRTIO_BAR: u32 = 4;
    const QUEUES: u16 = 4;

    /// Every wake-up of every queue, as (virtqueue, thread that served it).
    type Wakeups = Arc<Mutex<Vec<(u16, String)>>>;

    struct RecordingWorker {
        queue: u16,
        notifier: Arc<EventFd>,
        wakeups: Wakeups,
    }

    impl QueueWorker for RecordingWorker {
        fn queue_index(&self) -> u16 {
            self.queue
        }
        fn notifier(&self) -> &Arc<EventFd> {
            &self.notifier
        }
        fn notifier_ready(&mut self) {
            let _ = self.notifier.read();
            let thread = std::thread::current().name().unwrap_or("").to_string();
            self.wakeups.lock().unwrap().push((self.queue, thread));
        }
        fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
            None
        }
        fn completions_ready(&mut self) {}
        fn in_flight(&self) -> usize {
            0
        }
    }

    /// Hands each queue to the pool as a `RecordingWorker`.
    struct RecordingDevice {
        pool: Arc<IothreadPool>,
        wakeups: Wakeups,
    }

    impl VirtioDevice for RecordingDevice {
        fn device_type(&self) -> u32 {
            8
        }
        fn queue_count(&self) -> u16 {
            QUEUES
        }
        fn max_queue_size(&self) -> u16 {
            16
        }
        fn features(&self) -> u64 {
            1 << 32
        }
        fn config_size(&self) -> usize {
            0
        }
        fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
            for queue in activation.queues {
                self.pool.adopt(Box::new(RecordingWorker {
                    queue: queue.index,
                    notifier: queue.notifier,
                    wakeups: self.wakeups.clone(),
                }));
            }
            Ok(())
        }
        fn reset(&mut self) {
            self.pool.release_all();
        }
    }

    fn write(function: &mut VirtioFunction<RecordingDevice>, offset: u64, value: u64, len: usize) {
        function
            .region_write(VIRTIO_BAR, offset, &value.to_le_bytes()[..len])
            .unwrap();
    }

    /// The driver's side: features, four queues of 16 entries, DRIVER_OK.
    fn start(function: &mut VirtioFunction<RecordingDevice>) {
        write(function, DEVICE_STATUS, u64::from(ACKNOWLEDGE | DRIVER), 1);
        write(function, DRIVER_FEATURE_SELECT, 1, 4);
        write(function, DRIVER_FEATURE, 1, 4);
        let features_ok = ACKNOWLEDGE | DRIVER | FEATURES_OK;
        write(function, DEVICE_STATUS, u64::from(features_ok), 1);
        for queue in 0..QUEUES {
            let base = 0x10000 * (u64::from(queue) + 1);
            write(function, QUEUE_SELECT, u64::from(queue), 2);
            write(function, QUEUE_SIZE, 16, 2);
            write(function, QUEUE_DESC, base, 8);
            write(function, QUEUE_DRIVER, base + 0x1000, 8);
            write(function, QUEUE_DEVICE, base + 0x2000, 8);
            write(function, QUEUE_ENABLE, 1, 2);
        }
        write(
            function,
            DEVICE_STATUS,
            u64::from(features_ok | DRIVER_OK),
            1,
        );
    }

    #[test]
    fn a_notify_write_wakes_exactly_its_owner_once() {
        let log = Logger::root(slog::Discard, slog::o!());
        let mapping = QueueMapping {
            ctrl: QueueOwner::Iothread(0),
            event: QueueOwner::MainLoop,
            request: vec![QueueOwner::Iothread(1), QueueOwner::MainLoop],
        };
        let pool =
            Arc::new(IothreadPool::start(&["io0".into(), "io1".into()], mapping, 0, &log).unwrap());
        let wakeups = Wakeups::default();
        let device = RecordingDevice {
            pool: pool.clone(),
            wakeups: wakeups.clone(),
        };
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let transport = VirtioPciFunction::new(
            device,
            0x010000,
            GuestMemoryAtomic::new(memory),
            log.clone(),
        )
        .unwrap();
        let mut function = VirtioFunction::new(transport, pool, log);
        start(&mut function);
        let main = std::thread::current().name().unwrap().to_string();
        let owners = ["io0", &main, "io1", &main];
        // The server's loop serves the main loop's queue set when its fd is readable; the test
        // offers it every millisecond instead.
        let settle = |function: &mut VirtioFunction<RecordingDevice>, count: usize| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while wakeups.lock().unwrap().len() < count {
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {count} wakeups"
                );
                function.event_ready(0);
                std::thread::sleep(Duration::from_millis(1));
            }
            // Long enough for a second wake-up of anyone to show.
            std::thread::sleep(Duration::from_millis(50));
            function.event_ready(0);
            std::mem::take(&mut *wakeups.lock().unwrap())
        };
        // Adoption serves each queue once, on its owner.
        let mut adopted = settle(&mut function, 4);
        adopted.sort();
        let expected: Vec<_> = (0..QUEUES)
            .map(|q| (q, owners[usize::from(q)].to_string()))
            .collect();
        assert_eq!(adopted, expected);

        let notify = function.function().queue_notify_addresses();
        for queue in 0..QUEUES {
            let address = &notify[usize::from(queue)];
            write(&mut function, address.offset, u64::from(queue), 2);
            let woken = settle(&mut function, 1);
            assert_eq!(
                woken,
                [(queue, owners[usize::from(queue)].to_string())],
                "one wake-up, of the owner only"
            );
        }
    }
}
