//! A virtio-pci function seen as a vfio-user device: regions, IRQ indices and kicks mapped onto
//! the transport of the `virtio` crate.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use slog::{debug, info, warn, Logger};
use vfio_user_server::{Device, DeviceError, IoFd, IrqAction, IrqInfo, RegionInfo};
use virtio::{TransportError, VirtioDevice, VirtioPciFunction, WriteEffect};
use vmm_sys_util::eventfd::EventFd;

use crate::iothread_pool::IothreadPool;
use crate::mapping::QueueOwner;

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
    /// Kick eventfds in queue order, kept here so `event_fds` can lend them out.
    kicks: Vec<Arc<EventFd>>,
    /// The threads serving the queues, when the device hands its queues out (its queue host);
    /// without it, the device serves kicks inline through the transport.
    pool: Option<Arc<IothreadPool>>,
    /// A client mapped memory that can shrink; the device guards its accesses for good.
    shrinkable_mapped: bool,
    log: Logger,
}

impl<D: VirtioDevice> VirtioFunction<D> {
    pub fn new(
        function: VirtioPciFunction<D>,
        pool: Option<Arc<IothreadPool>>,
        log: Logger,
    ) -> Self {
        let mut addresses = function.queue_notify_addresses();
        addresses.sort_by_key(|a| a.queue);
        let kicks = addresses.into_iter().map(|a| a.eventfd).collect();
        VirtioFunction {
            function,
            kicks,
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

    fn kick(&mut self, queue: u16) {
        match &self.pool {
            // An iothread waits on the eventfd the transport has just written.
            Some(pool) if pool.owner(queue) != QueueOwner::MainLoop => {}
            Some(pool) => pool.main_loop().kick(queue),
            None => {
                if let Err(e) = self.function.kick_ready(queue) {
                    warn!(self.log, "kick failed"; "vq" => queue, "error" => %e);
                }
            }
        }
    }
}

fn borrow(kick: &Arc<EventFd>) -> BorrowedFd<'_> {
    // SAFETY: the eventfd is owned by the `Arc` that `kick` borrows, so the descriptor stays
    // open for as long as the returned borrow lives.
    unsafe { BorrowedFd::borrow_raw(kick.as_raw_fd()) }
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
        match result.map_err(|e| transport_error(region, offset, data.len(), e))? {
            // Serving the queue now saves a trip through the poll loop for the kick eventfd
            // that the transport has just written.
            WriteEffect::QueueNotified(queue) => self.kick(queue),
            WriteEffect::None => {}
        }
        Ok(())
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
                let kick = self.kicks.get(usize::from(a.queue))?;
                Some(IoFd {
                    offset: a.offset,
                    size: a.size,
                    fd: borrow(kick),
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
        if let Some(pool) = &self.pool {
            pool.pause();
        }
        self.function.device_mut().memory_may_shrink();
        if let Some(pool) = &self.pool {
            pool.resume();
        }
    }

    fn dma_mapped(&mut self, _iova: u64, _size: u64) {}

    // Without a pool, queues are served on the thread that handles the socket, so no request
    // touches guest memory while a DMA message is being handled.
    fn dma_unmapping(&mut self, _iova: u64, _size: u64) {
        if let Some(pool) = &self.pool {
            pool.pause();
        }
    }

    fn dma_unmapped(&mut self) {
        if let Some(pool) = &self.pool {
            pool.resume();
        }
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
                "bytes_read" => queue.bytes_read, "bytes_written" => queue.bytes_written,
                "errors" => queue.errors(), "transport_failures" => queue.transport_failures,
                "in_flight" => queue.in_flight);
        }
        for iothread in self.pool.iter().flat_map(|pool| pool.iothread_stats()) {
            info!(self.log, "iothread stats"; "iothread" => iothread.name,
                "busy_ns" => iothread.busy_ns, "poll_ns" => iothread.poll_ns,
                "sleep_ns" => iothread.sleep_ns);
        }
    }

    fn event_fds(&self) -> Vec<BorrowedFd<'_>> {
        match &self.pool {
            // SAFETY: the pool owns the main loop's `Poll` and lives as long as `self`, which
            // the borrow is tied to.
            Some(pool) => vec![unsafe { BorrowedFd::borrow_raw(pool.main_loop_fd()) }],
            None => self.kicks.iter().map(borrow).collect(),
        }
    }

    fn event_ready(&mut self, index: usize) {
        match &self.pool {
            Some(pool) => {
                if let Err(e) = pool.main_loop().serve_ready() {
                    warn!(self.log, "serving main-loop queues failed"; "error" => %e);
                }
            }
            None => {
                if let Ok(queue) = u16::try_from(index) {
                    self.kick(queue);
                }
            }
        }
    }
}
