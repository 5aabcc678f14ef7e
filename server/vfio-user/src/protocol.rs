//! vfio-user wire format: the message header, command numbers, fixed payload layouts and the
//! limits this server advertises. Every layout is a `#[repr(C)]` struct of little-endian fields,
//! its size checked at compile time and, where the kernel's VFIO ABI has the same struct, its
//! offsets checked against vfio-bindings.

use std::mem::{offset_of, size_of};

use vfio_bindings::bindings::vfio::{
    vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap, vfio_irq_info, vfio_irq_set,
    vfio_region_info, vfio_region_info_cap_sparse_mmap, vfio_region_sparse_mmap_area,
};
pub use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_DMA_MAP_FLAG_READ,
    VFIO_DMA_MAP_FLAG_WRITE, VFIO_DMA_UNMAP_FLAG_ALL, VFIO_IRQ_INFO_AUTOMASKED,
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_INFO_NORESIZE,
    VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_TYPE_MASK,
    VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_TYPE_MASK, VFIO_REGION_INFO_CAP_SPARSE_MMAP,
    VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};

/// Size of the header that starts every message.
pub const HEADER_SIZE: usize = 16;
/// Largest `count` of a REGION_READ/REGION_WRITE we accept (advertised as max_data_xfer_size).
pub const MAX_DATA_XFER_SIZE: u32 = 1 << 20;
/// Most file descriptors we accept in one message (advertised as max_msg_fds).
pub const MAX_MSG_FDS: usize = 16;
/// The only DMA page size we support (advertised as pgsizes).
pub const PAGE_SIZE: u64 = 4096;
/// Most DMA mappings valid at once (the protocol default of max_dma_maps).
pub const MAX_DMA_MAPS: usize = 65535;
/// Most vectors one IRQ index can have (the PCI MSI-X maximum); bounds SET_IRQS before the
/// device is asked.
pub const MAX_IRQ_VECTORS: u32 = 2048;
/// The largest message body we read: a REGION_WRITE of MAX_DATA_XFER_SIZE bytes.
pub const MAX_BODY_SIZE: usize = size_of::<RegionAccess>() + MAX_DATA_XFER_SIZE as usize;

/// Flag bits of the header.
pub const FLAG_TYPE_MASK: u32 = 0xf;
pub const FLAG_TYPE_COMMAND: u32 = 0;
pub const FLAG_TYPE_REPLY: u32 = 1;
pub const FLAG_NO_REPLY: u32 = 1 << 4;
pub const FLAG_ERROR: u32 = 1 << 5;

/// Sub-region type of GET_REGION_IO_FDS for an ioeventfd.
pub const IO_FD_TYPE_IOEVENTFD: u32 = 0;
/// KVM_IOEVENTFD_FLAG_DATAMATCH, as GET_REGION_IO_FDS carries KVM's ioeventfd flags.
pub const IO_FD_FLAG_DATAMATCH: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum VfioUserCommand {
    Version = 1,
    DmaMap = 2,
    DmaUnmap = 3,
    DeviceGetInfo = 4,
    DeviceGetRegionInfo = 5,
    DeviceGetRegionIoFds = 6,
    DeviceGetIrqInfo = 7,
    DeviceSetIrqs = 8,
    RegionRead = 9,
    RegionWrite = 10,
    DeviceReset = 13,
}

impl VfioUserCommand {
    pub fn from_u16(value: u16) -> Option<VfioUserCommand> {
        Some(match value {
            1 => VfioUserCommand::Version,
            2 => VfioUserCommand::DmaMap,
            3 => VfioUserCommand::DmaUnmap,
            4 => VfioUserCommand::DeviceGetInfo,
            5 => VfioUserCommand::DeviceGetRegionInfo,
            6 => VfioUserCommand::DeviceGetRegionIoFds,
            7 => VfioUserCommand::DeviceGetIrqInfo,
            8 => VfioUserCommand::DeviceSetIrqs,
            9 => VfioUserCommand::RegionRead,
            10 => VfioUserCommand::RegionWrite,
            13 => VfioUserCommand::DeviceReset,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            VfioUserCommand::Version => "VERSION",
            VfioUserCommand::DmaMap => "DMA_MAP",
            VfioUserCommand::DmaUnmap => "DMA_UNMAP",
            VfioUserCommand::DeviceGetInfo => "DEVICE_GET_INFO",
            VfioUserCommand::DeviceGetRegionInfo => "DEVICE_GET_REGION_INFO",
            VfioUserCommand::DeviceGetRegionIoFds => "DEVICE_GET_REGION_IO_FDS",
            VfioUserCommand::DeviceGetIrqInfo => "DEVICE_GET_IRQ_INFO",
            VfioUserCommand::DeviceSetIrqs => "DEVICE_SET_IRQS",
            VfioUserCommand::RegionRead => "REGION_READ",
            VfioUserCommand::RegionWrite => "REGION_WRITE",
            VfioUserCommand::DeviceReset => "DEVICE_RESET",
        }
    }
}

/// The 16-byte header of every message.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Header {
    pub message_id: U16,
    pub command: U16,
    pub message_size: U32,
    pub flags: U32,
    pub error: U32,
}

impl Header {
    pub fn no_reply(&self) -> bool {
        self.flags.get() & FLAG_NO_REPLY != 0
    }
}

/// The fixed start of VERSION's payload and reply; JSON capabilities follow.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Version {
    pub major: U16,
    pub minor: U16,
}

/// Payload of DMA_MAP.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct DmaMap {
    pub argsz: U32,
    pub flags: U32,
    pub offset: U64,
    pub address: U64,
    pub size: U64,
}

/// Payload of DMA_UNMAP, also echoed in its reply.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct DmaUnmap {
    pub argsz: U32,
    pub flags: U32,
    pub address: U64,
    pub size: U64,
}

/// The `argsz, flags, index, count` head of GET_IRQ_INFO and GET_REGION_IO_FDS (whose reply
/// continues with `count` sub-regions), and of GET_INFO (as `num_regions`, `num_irqs`).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct InfoHead {
    pub argsz: U32,
    pub flags: U32,
    pub index: U32,
    pub count: U32,
}

/// GET_REGION_INFO's payload and reply (`struct vfio_region_info`); capabilities follow the
/// reply at `cap_offset`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct RegionInfoHead {
    pub argsz: U32,
    pub flags: U32,
    pub index: U32,
    pub cap_offset: U32,
    pub size: U64,
    pub offset: U64,
}

/// The sparse-mmap capability of a region (`struct vfio_region_info_cap_sparse_mmap`), before
/// its `nr_areas` areas.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct SparseMmapCap {
    pub id: U16,
    pub version: U16,
    pub next: U32,
    pub nr_areas: U32,
    pub reserved: U32,
}

/// One area of the sparse-mmap capability (`struct vfio_region_sparse_mmap_area`).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct SparseMmapArea {
    pub offset: U64,
    pub size: U64,
}

/// One ioeventfd sub-region of GET_REGION_IO_FDS's reply.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IoFdSubRegion {
    pub offset: U64,
    pub size: U64,
    pub fd_index: U32,
    pub kind: U32,
    pub flags: U32,
    pub padding: U32,
    pub datamatch: U64,
}

/// Payload of SET_IRQS before its optional data (`struct vfio_irq_set`).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct SetIrqs {
    pub argsz: U32,
    pub flags: U32,
    pub index: U32,
    pub start: U32,
    pub count: U32,
}

/// Payload of REGION_READ and REGION_WRITE before the data.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct RegionAccess {
    pub offset: U64,
    pub region: U32,
    pub count: U32,
}

/// The wire structs the kernel's VFIO ABI also defines keep its layout.
macro_rules! same_layout {
    ($ours:ty, $vfio:ty, $($field:ident => $vfio_field:ident),*) => {
        const _: () = assert!(size_of::<$ours>() == size_of::<$vfio>());
        $(const _: () = assert!(offset_of!($ours, $field) == offset_of!($vfio, $vfio_field));)*
    };
}

same_layout!(DmaMap, vfio_iommu_type1_dma_map, flags => flags, address => iova, size => size);
same_layout!(DmaUnmap, vfio_iommu_type1_dma_unmap, flags => flags, address => iova, size => size);
same_layout!(InfoHead, vfio_irq_info, flags => flags, index => index, count => count);
same_layout!(RegionInfoHead, vfio_region_info, index => index, cap_offset => cap_offset, size => size, offset => offset);
same_layout!(SparseMmapCap, vfio_region_info_cap_sparse_mmap, nr_areas => nr_areas, reserved => reserved);
same_layout!(SparseMmapArea, vfio_region_sparse_mmap_area, offset => offset, size => size);
same_layout!(SetIrqs, vfio_irq_set, index => index, start => start, count => count);
const _: () = assert!(size_of::<Header>() == HEADER_SIZE);
const _: () = assert!(size_of::<Version>() == 4);
const _: () = assert!(size_of::<RegionAccess>() == 16);
const _: () = assert!(size_of::<IoFdSubRegion>() == 40);

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromBytes;

    #[test]
    fn header_round_trips_little_endian() {
        let header = Header {
            message_id: 0x0102.into(),
            command: 9.into(),
            message_size: 0x30.into(),
            flags: FLAG_TYPE_REPLY.into(),
            error: 22.into(),
        };
        let bytes = header.as_bytes();
        assert_eq!(bytes[..4], [0x02, 0x01, 9, 0]);
        assert_eq!(bytes[12..], [22, 0, 0, 0]);
        assert_eq!(Header::read_from_bytes(bytes).unwrap(), header);
    }

    #[test]
    fn payloads_read_from_unaligned_prefixes() {
        let mut bytes = vec![0xff];
        bytes.extend_from_slice(
            RegionAccess {
                offset: 0x1122_3344_5566_7788.into(),
                region: 7.into(),
                count: 4.into(),
            }
            .as_bytes(),
        );
        bytes.push(0xaa);
        let (access, rest) = RegionAccess::read_from_prefix(&bytes[1..]).unwrap();
        assert_eq!(access.offset.get(), 0x1122_3344_5566_7788);
        assert_eq!((access.region.get(), access.count.get()), (7, 4));
        assert_eq!(rest, [0xaa]);
    }

    #[test]
    fn short_payloads_do_not_read() {
        assert!(DmaMap::read_from_prefix(&[0u8; 31]).is_err());
        assert!(RegionAccess::read_from_prefix(&[0u8; 15]).is_err());
        assert!(SetIrqs::read_from_prefix(&[0u8; 20]).is_ok());
    }
}
