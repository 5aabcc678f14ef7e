//! Carrying out one decoded request against the device and the DMA table, and building the
//! reply body. Nothing here touches the socket.

use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use zerocopy::{Immutable, IntoBytes};

use crate::device::{Device, DeviceError, IrqAction, RegionInfo};
use crate::dma::{DmaChange, DmaError, DmaTable};
use crate::message::{ClientCaps, DecodeError, Request};
use crate::protocol::{
    DmaUnmap, InfoHead, IoFdSubRegion, RegionAccess, RegionInfoHead, SparseMmapArea, SparseMmapCap,
    Version, IO_FD_FLAG_DATAMATCH, IO_FD_TYPE_IOEVENTFD, MAX_DATA_XFER_SIZE, MAX_MSG_FDS,
    PAGE_SIZE, VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_AUTOMASKED,
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_INFO_NORESIZE,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};

/// Why a request failed; its errno goes into the error reply.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("DMA: {0}")]
    Dma(#[from] DmaError),
    #[error("device: {0}")]
    Device(#[from] DeviceError),
    #[error("VERSION must come first, and only once")]
    VersionOrder,
    #[error("no region {0}")]
    NoSuchRegion(u32),
    #[error("region {region}: {count} bytes at {offset:#x} exceed its {size} bytes")]
    RegionRange {
        region: u32,
        offset: u64,
        count: u32,
        size: u64,
    },
    #[error("region {0} does not allow this access")]
    RegionAccess(u32),
    #[error("no IRQ index {0}")]
    NoSuchIrq(u32),
    #[error("IRQ index {index}: vectors {start}+{count} exceed its {max}")]
    IrqRange {
        index: u32,
        start: u32,
        count: u32,
        max: u32,
    },
    #[error("duplicating an fd for the reply: {0}")]
    Dup(std::io::Error),
    #[error("out of file descriptors: only {received} of the message's fds could be received")]
    FdsExhausted { received: usize },
}

impl RequestError {
    pub fn errno(&self) -> i32 {
        match self {
            RequestError::Decode(e) => e.errno(),
            RequestError::Dma(e) => e.errno(),
            RequestError::Device(e) => e.errno(),
            RequestError::RegionAccess(_) => libc::EACCES,
            RequestError::Dup(e) => e.raw_os_error().unwrap_or(libc::EIO),
            RequestError::FdsExhausted { .. } => libc::EMFILE,
            _ => libc::EINVAL,
        }
    }

    /// Whether the server ran out of a resource, which an operator should hear about.
    pub fn is_exhaustion(&self) -> bool {
        match self {
            RequestError::Dma(e) => e.is_exhaustion(),
            RequestError::FdsExhausted { .. } => true,
            _ => false,
        }
    }
}

/// A reply body and the fds that go with it.
#[derive(Debug, Default)]
pub struct Reply {
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Reply {
    /// A reply of one wire struct and no fds.
    fn of<T: IntoBytes + Immutable>(fixed: &T) -> Reply {
        Reply {
            body: fixed.as_bytes().to_vec(),
            fds: Vec::new(),
        }
    }
}

/// Per-connection protocol state.
#[derive(Debug, Default)]
pub struct Session {
    /// Set once VERSION succeeded.
    pub caps: Option<ClientCaps>,
}

/// What the server itself advertises, in the order it gives them up when the client's VERSION
/// request is too short to hold them all.
const SERVER_CAPS: [(&str, u64); 3] = [
    ("max_msg_fds", MAX_MSG_FDS as u64),
    ("max_data_xfer_size", MAX_DATA_XFER_SIZE as u64),
    ("pgsizes", PAGE_SIZE),
];

/// The VERSION reply body: major 0, minor 0, then as many of our capabilities as keep the reply
/// no larger than the request (`request_len` body bytes), NUL-terminated.
pub fn version_reply(request_len: usize) -> Vec<u8> {
    for kept in (0..=SERVER_CAPS.len()).rev() {
        let caps: serde_json::Map<String, serde_json::Value> = SERVER_CAPS[..kept]
            .iter()
            .map(|&(name, value)| (name.to_owned(), value.into()))
            .collect();
        let json = serde_json::json!({ "capabilities": caps }).to_string();
        let body = [Version::default().as_bytes(), json.as_bytes(), b"\0"].concat();
        if body.len() <= request_len {
            return body;
        }
    }
    Version::default().as_bytes().to_vec()
}

fn region<D: Device>(device: &D, index: u32) -> Result<RegionInfo, RequestError> {
    device
        .regions()
        .into_iter()
        .find(|r| r.index == index)
        .ok_or(RequestError::NoSuchRegion(index))
}

fn check_access(
    region: &RegionInfo,
    access: &RegionAccess,
    allowed: bool,
) -> Result<(), RequestError> {
    let (offset, count) = (access.offset.get(), access.count.get());
    let end = offset.checked_add(u64::from(count));
    if end.is_none_or(|end| end > region.size) {
        return Err(RequestError::RegionRange {
            region: access.region.get(),
            offset,
            count,
            size: region.size,
        });
    }
    if !allowed {
        return Err(RequestError::RegionAccess(access.region.get()));
    }
    Ok(())
}

fn region_info_reply(info: &RegionInfo, argsz: u32) -> Result<Reply, RequestError> {
    let mut flags = 0;
    if info.readable {
        flags |= VFIO_REGION_INFO_FLAG_READ;
    }
    if info.writable {
        flags |= VFIO_REGION_INFO_FLAG_WRITE;
    }
    let mut caps = Vec::new();
    let mut file_offset = 0;
    let mut fds = Vec::new();
    if let Some(mmap) = &info.mmap {
        flags |= VFIO_REGION_INFO_FLAG_MMAP;
        file_offset = mmap.file_offset;
        fds.push(
            mmap.fd
                .as_fd()
                .try_clone_to_owned()
                .map_err(RequestError::Dup)?,
        );
        if !mmap.areas.is_empty() {
            flags |= VFIO_REGION_INFO_FLAG_CAPS;
            let cap = SparseMmapCap {
                id: (VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16).into(),
                version: 1.into(),
                next: 0.into(),
                nr_areas: (mmap.areas.len() as u32).into(),
                reserved: 0.into(),
            };
            caps.extend_from_slice(cap.as_bytes());
            for area in &mmap.areas {
                let area = SparseMmapArea {
                    offset: area.offset.into(),
                    size: area.size.into(),
                };
                caps.extend_from_slice(area.as_bytes());
            }
        }
    }
    let needed = size_of::<RegionInfoHead>() + caps.len();
    let fits = argsz as usize >= needed;
    let cap_offset = if fits && !caps.is_empty() {
        size_of::<RegionInfoHead>() as u32
    } else {
        0
    };
    let head = RegionInfoHead {
        argsz: (needed as u32).into(),
        flags: flags.into(),
        index: info.index.into(),
        cap_offset: cap_offset.into(),
        size: info.size.into(),
        offset: file_offset.into(),
    };
    let mut body = head.as_bytes().to_vec();
    if fits {
        body.extend_from_slice(&caps);
    }
    Ok(Reply { body, fds })
}

/// The GET_REGION_IO_FDS reply: the device's sub-regions in its order of preference, as many as
/// the client can take the fds of in one message (its `max_msg_fds`). The spec lets sub-regions
/// share an fd but has no way to continue a list in a second reply, so the rest are left out:
/// the client goes on writing those through REGION_WRITE, which serves them just the same.
fn io_fds_reply<D: Device>(
    device: &D,
    index: u32,
    argsz: u32,
    max_fds: usize,
) -> Result<Reply, RequestError> {
    region(device, index)?;
    let io_fds = device.region_io_fds(index)?;
    let mut distinct: Vec<RawFd> = Vec::new();
    let mut sub_regions = Vec::new();
    for io_fd in &io_fds {
        let raw = io_fd.fd.as_raw_fd();
        let fd_index = match distinct.iter().position(|&d| d == raw) {
            Some(i) => i,
            None if distinct.len() < max_fds => {
                distinct.push(raw);
                distinct.len() - 1
            }
            None => continue,
        };
        let flags = if io_fd.datamatch.is_some() {
            IO_FD_FLAG_DATAMATCH
        } else {
            0
        };
        sub_regions.push((
            io_fd,
            IoFdSubRegion {
                offset: io_fd.offset.into(),
                size: io_fd.size.into(),
                fd_index: (fd_index as u32).into(),
                kind: IO_FD_TYPE_IOEVENTFD.into(),
                flags: flags.into(),
                padding: 0.into(),
                datamatch: io_fd.datamatch.unwrap_or(0).into(),
            },
        ));
    }
    let needed = size_of::<InfoHead>() + size_of::<IoFdSubRegion>() * sub_regions.len();
    let head = InfoHead {
        argsz: (needed as u32).into(),
        flags: 0.into(),
        index: index.into(),
        count: (sub_regions.len() as u32).into(),
    };
    if (argsz as usize) < needed {
        return Ok(Reply::of(&head));
    }
    let mut body = head.as_bytes().to_vec();
    let mut fds = Vec::with_capacity(distinct.len());
    for (io_fd, sub_region) in &sub_regions {
        body.extend_from_slice(sub_region.as_bytes());
        if fds.len() == sub_region.fd_index.get() as usize {
            fds.push(io_fd.fd.try_clone_to_owned().map_err(RequestError::Dup)?);
        }
    }
    Ok(Reply { body, fds })
}

fn check_irq_range<D: Device>(
    device: &D,
    index: u32,
    action: &IrqAction,
) -> Result<(), RequestError> {
    let info = device
        .irqs()
        .into_iter()
        .find(|i| i.index == index)
        .ok_or(RequestError::NoSuchIrq(index))?;
    let (start, count) = match action {
        IrqAction::Disable => return Ok(()),
        IrqAction::Assign { start, fds } => (*start, fds.len() as u32),
        IrqAction::Trigger { start, count } | IrqAction::Mask { start, count, .. } => {
            (*start, *count)
        }
        IrqAction::TriggerBool { start, values } => (*start, values.len() as u32),
    };
    if u64::from(start) + u64::from(count) > u64::from(info.count) {
        return Err(RequestError::IrqRange {
            index,
            start,
            count,
            max: info.count,
        });
    }
    Ok(())
}

/// Applies a DMA change to the device.
pub fn notify_device<D: Device>(device: &mut D, change: DmaChange) {
    match change {
        DmaChange::Unmapping { iova, size } => device.dma_unmapping(iova, size),
        DmaChange::Mapped { iova, size } => device.dma_mapped(iova, size),
        DmaChange::Shrinkable { iova, size } => device.dma_shrinkable(iova, size),
    }
}

/// Carries out `request`; `request_len` is the size of its body on the wire.
pub fn handle<D: Device>(
    device: &mut D,
    dma: &mut DmaTable,
    session: &mut Session,
    request: Request,
    request_len: usize,
) -> Result<Reply, RequestError> {
    let caps = match (&request, session.caps) {
        (Request::Version { caps, .. }, None) => {
            session.caps = Some(*caps);
            return Ok(Reply {
                body: version_reply(request_len),
                fds: Vec::new(),
            });
        }
        (Request::Version { .. }, Some(_)) | (_, None) => return Err(RequestError::VersionOrder),
        (_, Some(caps)) => caps,
    };
    match request {
        Request::Version { .. } => Err(RequestError::VersionOrder),
        Request::DmaMap { map, fd } => {
            if dma.map(&map, fd, |change| notify_device(device, change))? {
                device.dma_mapped(map.address.get(), map.size.get());
            }
            Ok(Reply::default())
        }
        Request::DmaUnmap(unmap) => {
            let unmapped = dma.unmap(&unmap, |change| notify_device(device, change));
            device.dma_unmapped();
            unmapped?;
            Ok(Reply::of(&DmaUnmap {
                argsz: (size_of::<DmaUnmap>() as u32).into(),
                ..unmap
            }))
        }
        Request::DeviceGetInfo { .. } => {
            let flags = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET;
            Ok(Reply::of(&InfoHead {
                argsz: (size_of::<InfoHead>() as u32).into(),
                flags: flags.into(),
                index: (device.regions().len() as u32).into(),
                count: (device.irqs().len() as u32).into(),
            }))
        }
        Request::DeviceGetRegionInfo { argsz, index } => {
            region_info_reply(&region(device, index)?, argsz)
        }
        Request::DeviceGetRegionIoFds { argsz, index } => io_fds_reply(
            device,
            index,
            argsz,
            (caps.max_msg_fds as usize).min(MAX_MSG_FDS),
        ),
        Request::DeviceGetIrqInfo { index, .. } => {
            let info = device
                .irqs()
                .into_iter()
                .find(|i| i.index == index)
                .ok_or(RequestError::NoSuchIrq(index))?;
            let flags = [
                (info.eventfd, VFIO_IRQ_INFO_EVENTFD),
                (info.maskable, VFIO_IRQ_INFO_MASKABLE),
                (info.automasked, VFIO_IRQ_INFO_AUTOMASKED),
                (info.noresize, VFIO_IRQ_INFO_NORESIZE),
            ]
            .iter()
            .filter(|(set, _)| *set)
            .fold(0, |flags, (_, bit)| flags | bit);
            Ok(Reply::of(&InfoHead {
                argsz: (size_of::<InfoHead>() as u32).into(),
                flags: flags.into(),
                index: index.into(),
                count: info.count.into(),
            }))
        }
        Request::DeviceSetIrqs { index, action } => {
            check_irq_range(device, index, &action)?;
            device.set_irqs(index, action)?;
            Ok(Reply::default())
        }
        Request::RegionRead(access) => {
            let info = region(device, access.region.get())?;
            check_access(&info, &access, info.readable)?;
            let mut body = vec![0u8; size_of::<RegionAccess>() + access.count.get() as usize];
            let (head, data) = body.split_at_mut(size_of::<RegionAccess>());
            device.region_read(access.region.get(), access.offset.get(), data)?;
            head.copy_from_slice(access.as_bytes());
            Ok(Reply {
                body,
                fds: Vec::new(),
            })
        }
        Request::RegionWrite { access, data } => {
            let info = region(device, access.region.get())?;
            check_access(&info, &access, info.writable)?;
            device.region_write(access.region.get(), access.offset.get(), &data)?;
            Ok(Reply::of(&access))
        }
        Request::DeviceReset => {
            device.reset();
            Ok(Reply::default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_reply_never_exceeds_the_request() {
        let full = version_reply(usize::MAX);
        assert_eq!(&full[..4], &[0, 0, 0, 0]);
        assert_eq!(full.last(), Some(&0));
        let json: serde_json::Value = serde_json::from_slice(&full[4..full.len() - 1]).unwrap();
        assert_eq!(json["capabilities"]["max_msg_fds"], 16);
        assert_eq!(json["capabilities"]["max_data_xfer_size"], 1 << 20);
        assert_eq!(json["capabilities"]["pgsizes"], 4096);
        for limit in [4, 10, 30, 50, 70, full.len() - 1] {
            let reply = version_reply(limit);
            assert!(reply.len() <= limit, "{limit}: {}", reply.len());
        }
        assert!(version_reply(full.len() - 1).len() > 4);
    }

    /// A device with one doorbell eventfd per queue in region 0, a dword apart; queue 0 and 1
    /// share one, as sub-regions may.
    struct Doorbells(Vec<OwnedFd>);

    impl Doorbells {
        fn new(queues: usize) -> Doorbells {
            Doorbells(
                (0..queues)
                    .map(|_| {
                        // SAFETY: eventfd takes no pointer; the fd it returns is new and ours.
                        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
                        assert!(fd >= 0);
                        // SAFETY: see above.
                        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
                    })
                    .collect(),
            )
        }
    }

    impl Device for Doorbells {
        fn regions(&self) -> Vec<RegionInfo> {
            vec![RegionInfo {
                index: 0,
                size: 0x1000,
                readable: true,
                writable: true,
                mmap: None,
            }]
        }
        fn irqs(&self) -> Vec<crate::device::IrqInfo> {
            Vec::new()
        }
        fn region_read(&mut self, _: u32, _: u64, _: &mut [u8]) -> Result<(), DeviceError> {
            Ok(())
        }
        fn region_write(&mut self, _: u32, _: u64, _: &[u8]) -> Result<(), DeviceError> {
            Ok(())
        }
        fn region_io_fds(&self, _: u32) -> Result<Vec<crate::device::IoFd<'_>>, DeviceError> {
            Ok((0..self.0.len())
                .map(|queue| crate::device::IoFd {
                    offset: 4 * queue as u64,
                    size: 2,
                    fd: self.0[queue.saturating_sub(1)].as_fd(),
                    datamatch: None,
                })
                .collect())
        }
        fn set_irqs(&mut self, _: u32, _: IrqAction) -> Result<(), DeviceError> {
            Ok(())
        }
        fn dma_mapped(&mut self, _: u64, _: u64) {}
        fn dma_unmapping(&mut self, _: u64, _: u64) {}
        fn reset(&mut self) {}
        fn event_fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
            Vec::new()
        }
        fn event_ready(&mut self, _: usize) {}
    }

    fn le32(body: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(body[at..at + 4].try_into().unwrap())
    }

    /// (sub-regions listed, fds sent, fd index of each sub-region)
    fn io_fds(queues: usize, max_fds: usize) -> (u32, usize, Vec<u32>) {
        let device = Doorbells::new(queues);
        let reply = io_fds_reply(&device, 0, u32::MAX, max_fds).unwrap();
        let count = le32(&reply.body, 12);
        let entry = size_of::<IoFdSubRegion>();
        assert_eq!(le32(&reply.body, 0) as usize, reply.body.len(), "argsz");
        assert_eq!(reply.body.len(), 16 + entry * count as usize);
        let indices = (0..count as usize)
            .map(|i| le32(&reply.body, 16 + i * entry + 16))
            .collect();
        (count, reply.fds.len(), indices)
    }

    #[test]
    fn io_fds_never_exceed_the_clients_max_msg_fds() {
        // 18 doorbells in 17 eventfds (queues 0 and 1 share one): 16 eventfds fit, which cover
        // 17 sub-regions; the last is left to REGION_WRITE.
        let (count, fds, indices) = io_fds(18, 16);
        assert_eq!((count, fds), (17, 16));
        assert_eq!(indices[..3], [0, 0, 1]);
        assert_eq!(indices[16], 15);
        let (count, fds, _) = io_fds(66, 16);
        assert_eq!((count, fds), (17, 16));
        // A client that did not say how many it takes gets one.
        let (count, fds, indices) = io_fds(18, 1);
        assert_eq!((count, fds, indices), (2, 1, vec![0, 0]));
        let (count, fds, _) = io_fds(4, 16);
        assert_eq!((count, fds), (4, 3));
    }

    #[test]
    fn a_short_io_fds_request_learns_the_size_of_what_fits() {
        let device = Doorbells::new(18);
        let reply = io_fds_reply(&device, 0, 16, 16).unwrap();
        assert_eq!(reply.body.len(), 16);
        assert_eq!(
            le32(&reply.body, 0) as usize,
            16 + 17 * size_of::<IoFdSubRegion>()
        );
        assert_eq!(le32(&reply.body, 12), 17);
        assert!(reply.fds.is_empty());
    }
}
