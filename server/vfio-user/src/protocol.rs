//! vfio-user wire format: the message header, command numbers, fixed payload layouts and the
//! limits this server advertises. Every field is little-endian on the wire; structs are parsed
//! field by field from byte slices whose length has been checked first.

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
pub const MAX_BODY_SIZE: usize = RegionAccess::SIZE + MAX_DATA_XFER_SIZE as usize;

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
pub enum Command {
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

impl Command {
    pub fn from_u16(value: u16) -> Option<Command> {
        Some(match value {
            1 => Command::Version,
            2 => Command::DmaMap,
            3 => Command::DmaUnmap,
            4 => Command::DeviceGetInfo,
            5 => Command::DeviceGetRegionInfo,
            6 => Command::DeviceGetRegionIoFds,
            7 => Command::DeviceGetIrqInfo,
            8 => Command::DeviceSetIrqs,
            9 => Command::RegionRead,
            10 => Command::RegionWrite,
            13 => Command::DeviceReset,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Command::Version => "VERSION",
            Command::DmaMap => "DMA_MAP",
            Command::DmaUnmap => "DMA_UNMAP",
            Command::DeviceGetInfo => "DEVICE_GET_INFO",
            Command::DeviceGetRegionInfo => "DEVICE_GET_REGION_INFO",
            Command::DeviceGetRegionIoFds => "DEVICE_GET_REGION_IO_FDS",
            Command::DeviceGetIrqInfo => "DEVICE_GET_IRQ_INFO",
            Command::DeviceSetIrqs => "DEVICE_SET_IRQS",
            Command::RegionRead => "REGION_READ",
            Command::RegionWrite => "REGION_WRITE",
            Command::DeviceReset => "DEVICE_RESET",
        }
    }
}

/// Reads little-endian fields from a byte slice whose length the caller has checked.
pub struct LeReader<'a> {
    bytes: &'a [u8],
}

impl<'a> LeReader<'a> {
    /// `None` unless `bytes` holds at least `len` bytes.
    pub fn new(bytes: &'a [u8], len: usize) -> Option<LeReader<'a>> {
        bytes.get(..len).map(|bytes| LeReader { bytes })
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let (head, rest) = self.bytes.split_at(N.min(self.bytes.len()));
        out[..head.len()].copy_from_slice(head);
        self.bytes = rest;
        out
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

/// Appends little-endian fields to a reply.
#[derive(Default)]
pub struct LeWriter {
    pub bytes: Vec<u8>,
}

impl LeWriter {
    pub fn u16(&mut self, value: u16) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn u32(&mut self, value: u32) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }
}

/// The 16-byte header of every message.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub message_id: u16,
    pub command: u16,
    pub message_size: u32,
    pub flags: u32,
    pub error: u32,
}

const _: () = assert!(std::mem::size_of::<Header>() == HEADER_SIZE);

impl Header {
    pub fn parse(bytes: &[u8; HEADER_SIZE]) -> Header {
        let mut r = LeReader { bytes };
        Header {
            message_id: r.u16(),
            command: r.u16(),
            message_size: r.u32(),
            flags: r.u32(),
            error: r.u32(),
        }
    }

    pub fn write(&self, w: &mut LeWriter) {
        w.u16(self.message_id)
            .u16(self.command)
            .u32(self.message_size)
            .u32(self.flags)
            .u32(self.error);
    }

    pub fn no_reply(&self) -> bool {
        self.flags & FLAG_NO_REPLY != 0
    }
}

/// Payload of DMA_MAP.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaMap {
    pub argsz: u32,
    pub flags: u32,
    pub offset: u64,
    pub address: u64,
    pub size: u64,
}

impl DmaMap {
    pub const SIZE: usize = 32;

    pub fn parse(bytes: &[u8]) -> Option<DmaMap> {
        let mut r = LeReader::new(bytes, Self::SIZE)?;
        Some(DmaMap {
            argsz: r.u32(),
            flags: r.u32(),
            offset: r.u64(),
            address: r.u64(),
            size: r.u64(),
        })
    }
}

/// Payload of DMA_UNMAP, also echoed in its reply.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaUnmap {
    pub argsz: u32,
    pub flags: u32,
    pub address: u64,
    pub size: u64,
}

impl DmaUnmap {
    pub const SIZE: usize = 24;

    pub fn parse(bytes: &[u8]) -> Option<DmaUnmap> {
        let mut r = LeReader::new(bytes, Self::SIZE)?;
        Some(DmaUnmap {
            argsz: r.u32(),
            flags: r.u32(),
            address: r.u64(),
            size: r.u64(),
        })
    }

    pub fn write(&self, w: &mut LeWriter) {
        w.u32(self.argsz)
            .u32(self.flags)
            .u64(self.address)
            .u64(self.size);
    }
}

/// The `argsz, flags, index, count` head shared by GET_INFO, GET_IRQ_INFO, GET_REGION_IO_FDS,
/// and (with `cap_offset` in place of `count`) the first half of GET_REGION_INFO.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoHead {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub count: u32,
}

impl InfoHead {
    pub const SIZE: usize = 16;

    pub fn parse(bytes: &[u8]) -> Option<InfoHead> {
        let mut r = LeReader::new(bytes, Self::SIZE)?;
        Some(InfoHead {
            argsz: r.u32(),
            flags: r.u32(),
            index: r.u32(),
            count: r.u32(),
        })
    }

    pub fn write(&self, w: &mut LeWriter) {
        w.u32(self.argsz)
            .u32(self.flags)
            .u32(self.index)
            .u32(self.count);
    }
}

/// Size of `struct vfio_region_info` (argsz, flags, index, cap_offset, size, offset).
pub const REGION_INFO_SIZE: usize = 32;
/// Size of one ioeventfd sub-region of GET_REGION_IO_FDS.
pub const IO_FD_SUB_REGION_SIZE: usize = 40;

/// Payload of SET_IRQS before its optional data.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetIrqs {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub start: u32,
    pub count: u32,
}

impl SetIrqs {
    pub const SIZE: usize = 20;

    pub fn parse(bytes: &[u8]) -> Option<SetIrqs> {
        let mut r = LeReader::new(bytes, Self::SIZE)?;
        Some(SetIrqs {
            argsz: r.u32(),
            flags: r.u32(),
            index: r.u32(),
            start: r.u32(),
            count: r.u32(),
        })
    }
}

/// Payload of REGION_READ and REGION_WRITE before the data.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionAccess {
    pub offset: u64,
    pub region: u32,
    pub count: u32,
}

impl RegionAccess {
    pub const SIZE: usize = 16;

    pub fn parse(bytes: &[u8]) -> Option<RegionAccess> {
        let mut r = LeReader::new(bytes, Self::SIZE)?;
        Some(RegionAccess {
            offset: r.u64(),
            region: r.u32(),
            count: r.u32(),
        })
    }

    pub fn write(&self, w: &mut LeWriter) {
        w.u64(self.offset).u32(self.region).u32(self.count);
    }
}

const _: () = assert!(std::mem::size_of::<DmaMap>() == DmaMap::SIZE);
const _: () = assert!(std::mem::size_of::<DmaUnmap>() == DmaUnmap::SIZE);
const _: () = assert!(std::mem::size_of::<InfoHead>() == InfoHead::SIZE);
const _: () = assert!(std::mem::size_of::<SetIrqs>() == SetIrqs::SIZE);
const _: () = assert!(std::mem::size_of::<RegionAccess>() == RegionAccess::SIZE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_little_endian() {
        let header = Header {
            message_id: 0x0102,
            command: 9,
            message_size: 0x30,
            flags: FLAG_TYPE_REPLY,
            error: 22,
        };
        let mut w = LeWriter::default();
        header.write(&mut w);
        assert_eq!(w.bytes[..4], [0x02, 0x01, 9, 0]);
        let bytes: [u8; HEADER_SIZE] = w.bytes.try_into().unwrap();
        assert_eq!(Header::parse(&bytes), header);
    }

    #[test]
    fn short_payloads_do_not_parse() {
        assert!(DmaMap::parse(&[0u8; DmaMap::SIZE - 1]).is_none());
        assert!(RegionAccess::parse(&[0u8; 15]).is_none());
        assert!(SetIrqs::parse(&[0u8; 20]).is_some());
    }
}
