//! The boundary between the vfio-user protocol and the device it serves.
//!
//! The protocol layer knows regions, IRQs, DMA and reset; it never sees PCI or what the device
//! emulates. The device behind this trait never sees a socket.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// The guest memory that DMA_MAP and DMA_UNMAP edit. Regions mapped without a file descriptor
/// are not part of it: the device cannot reach them.
pub type DmaMemory = GuestMemoryAtomic<GuestMemoryMmap>;

/// Why a device refused an access; the server turns it into the errno of its reply.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("no region {0}")]
    NoSuchRegion(u32),
    #[error("region {region}: {len} bytes at offset {offset:#x} are out of range")]
    OutOfRange {
        region: u32,
        offset: u64,
        len: usize,
    },
    #[error("region {region}: unsupported access of {len} bytes at offset {offset:#x}")]
    BadAccess {
        region: u32,
        offset: u64,
        len: usize,
    },
    #[error("no IRQ index {0}")]
    NoSuchIrq(u32),
    #[error("IRQ index {index}: vectors {start}..{end} exceed its {count} vectors")]
    IrqOutOfRange {
        index: u32,
        start: u32,
        end: u64,
        count: u32,
    },
    #[error("IRQ index {index}: {what} is not supported")]
    IrqUnsupported { index: u32, what: &'static str },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl DeviceError {
    /// The errno a vfio-user error reply carries for this error.
    pub fn errno(&self) -> i32 {
        match self {
            DeviceError::IrqUnsupported { .. } => libc::ENOTSUP,
            DeviceError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EINVAL,
        }
    }
}

/// A part of a region the client may map into its own address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmapArea {
    pub offset: u64,
    pub size: u64,
}

/// What DEVICE_GET_REGION_INFO reports for one region.
#[derive(Debug, Clone)]
pub struct RegionInfo {
    pub index: u32,
    /// Zero for a region the device does not implement.
    pub size: u64,
    pub readable: bool,
    pub writable: bool,
    /// Mappable parts and the file that backs them; `None` for regions served by messages only.
    /// Any mappable region makes QEMU stop posting BAR writes for the whole device.
    pub mmap: Option<RegionMmap>,
}

#[derive(Debug, Clone)]
pub struct RegionMmap {
    pub fd: Arc<OwnedFd>,
    /// Offset of the region in `fd`.
    pub file_offset: u64,
    /// Sparse areas; empty means the whole region is mappable.
    pub areas: Vec<MmapArea>,
}

/// What DEVICE_GET_IRQ_INFO reports for one IRQ index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfo {
    pub index: u32,
    pub count: u32,
    pub eventfd: bool,
    pub maskable: bool,
    pub automasked: bool,
    pub noresize: bool,
}

/// An eventfd that the client may write instead of sending a REGION_WRITE
/// (DEVICE_GET_REGION_IO_FDS).
#[derive(Debug)]
pub struct IoFd<'a> {
    pub offset: u64,
    /// Access width in bytes that the eventfd stands for.
    pub size: u64,
    pub fd: BorrowedFd<'a>,
    /// Only writes of this value trigger the eventfd.
    pub datamatch: Option<u64>,
}

/// One DEVICE_SET_IRQS request, decoded.
#[derive(Debug)]
pub enum IrqAction {
    /// Use these eventfds for vectors `start..start + fds.len()`; `None` deassigns a vector
    /// (a -1 fd, or fewer fds than `count`).
    Assign {
        start: u32,
        fds: Vec<Option<OwnedFd>>,
    },
    /// Deassign every vector of the index (DATA_NONE with count 0).
    Disable,
    /// Fire vectors `start..start + count` as if the device raised them (DATA_NONE).
    Trigger { start: u32, count: u32 },
    /// Fire the vectors whose flag is set (DATA_BOOL).
    TriggerBool { start: u32, values: Vec<bool> },
    /// Mask or unmask vectors `start..start + count` (ACTION_MASK / ACTION_UNMASK).
    Mask {
        start: u32,
        count: u32,
        masked: bool,
    },
}

/// A device served over vfio-user.
pub trait Device {
    /// Every region index from 0 up to the highest the device has (QEMU expects at least 8,
    /// CONFIG at index 7 for PCI).
    fn regions(&self) -> Vec<RegionInfo>;
    /// Every IRQ index from 0 up (INTx, MSI, MSI-X, ERR, REQ for PCI).
    fn irqs(&self) -> Vec<IrqInfo>;

    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8])
        -> Result<(), DeviceError>;
    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError>;

    /// Eventfds that stand for writes inside `region`.
    fn region_io_fds(&self, region: u32) -> Result<Vec<IoFd<'_>>, DeviceError>;

    fn set_irqs(&mut self, index: u32, action: IrqAction) -> Result<(), DeviceError>;

    /// `[iova, iova + size)` is about to join `memory`, backed by a file that can still shrink
    /// (a regular file without `F_SEAL_SHRINK`): from now on an access to guest memory may fault
    /// (SIGBUS) after the client truncates the file. Memory the device reached before came from
    /// sealed files or devices only.
    fn dma_shrinkable(&mut self, _iova: u64, _size: u64) {}
    /// `memory` now also holds `[iova, iova + size)`.
    fn dma_mapped(&mut self, iova: u64, size: u64);
    /// `[iova, iova + size)` is about to leave `memory`: stop touching it before returning.
    fn dma_unmapping(&mut self, iova: u64, size: u64);
    /// The unmapping announced by `dma_unmapping` calls is done (successfully or not): the
    /// device may touch `memory` again.
    fn dma_unmapped(&mut self) {}

    /// Back to power-on state; also called when a client disconnects.
    fn reset(&mut self);
    /// The client went away (the reset follows): the place to log what the device did for it.
    fn client_disconnected(&mut self) {}

    /// Fds the main loop watches for the device (doorbell eventfds, ...). The list must not
    /// change during the device's life; index `i` in it is what `event_ready` receives.
    fn event_fds(&self) -> Vec<BorrowedFd<'_>>;
    /// `event_fds()[index]` became readable. Readiness is edge-triggered: drain the fd here.
    fn event_ready(&mut self, index: usize);
}
