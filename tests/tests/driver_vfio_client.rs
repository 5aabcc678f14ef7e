//! The driver's vfio-user client and its attach sequence against an independent server: the
//! rust-vmm `vfio_user::Server` with a small recording backend. This checks message framing, fd
//! passing and error replies without depending on our own server.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vfio_bindings::bindings::vfio::{
    vfio_region_info, VFIO_DEVICE_FLAGS_PCI, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, IrqInfo, Server, ServerBackend, ServerRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use tests::guest_memory::DriverMemory;
use tests::vfio_client::{ClientError, CommandNumber, VfioUserClient};
use tests::VirtioScsiDriver;

const MSIX_VECTORS: u32 = 5;

#[derive(Default)]
struct State {
    config: Vec<u8>,
    bar0: Vec<u8>,
    /// (iova, size, first 8 bytes of the mapped file at its offset)
    dma_maps: Vec<(u64, u64, [u8; 8])>,
    /// (index, flags, start, count, fds received)
    set_irqs: Vec<(u32, u32, u32, u32, usize)>,
    resets: u32,
}

struct RecordingBackend(Arc<Mutex<State>>);

fn region_mut(state: &mut State, region: u32) -> io::Result<&mut Vec<u8>> {
    match region {
        0 => Ok(&mut state.bar0),
        7 => Ok(&mut state.config),
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

impl ServerBackend for RecordingBackend {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        let mut state = self.0.lock().unwrap();
        let bytes = region_mut(&mut state, region)?;
        let at = offset as usize;
        data.copy_from_slice(&bytes[at..at + data.len()]);
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.0.lock().unwrap();
        let bytes = region_mut(&mut state, region)?;
        let at = offset as usize;
        bytes[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn dma_map(
        &mut self,
        _: DmaMapFlags,
        offset: u64,
        iova: u64,
        size: u64,
        fd: Option<File>,
    ) -> io::Result<()> {
        let mut head = [0u8; 8];
        if let Some(file) = fd {
            file.read_exact_at(&mut head, offset)?;
        }
        self.0.lock().unwrap().dma_maps.push((iova, size, head));
        Ok(())
    }

    fn dma_unmap(&mut self, _: DmaUnmapFlags, iova: u64, _: u64) -> io::Result<()> {
        self.0.lock().unwrap().dma_maps.retain(|m| m.0 != iova);
        Ok(())
    }

    fn reset(&mut self) -> io::Result<()> {
        self.0.lock().unwrap().resets += 1;
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> io::Result<()> {
        // Signal each eventfd once, proving it arrived intact.
        for fd in &fds {
            (&*fd).write_all(&1u64.to_ne_bytes())?;
        }
        self.0
            .lock()
            .unwrap()
            .set_irqs
            .push((index, flags, start, count, fds.len()));
        Ok(())
    }
}

/// Writes a `virtio_pci_cap` of `len` bytes at `at`, linked to `next`.
fn virtio_cap(c: &mut [u8], at: usize, next: u8, len: u8, cfg_type: u8, offset: u32, length: u32) {
    c[at] = 0x09;
    c[at + 1] = next;
    c[at + 2] = len;
    c[at + 3] = cfg_type;
    c[at + 4] = 4;
    c[at + 8..at + 12].copy_from_slice(&offset.to_le_bytes());
    c[at + 12..at + 16].copy_from_slice(&length.to_le_bytes());
}

/// A modern virtio-scsi config space: virtio structures in BAR 4, MSI-X in BAR 1.
fn config_space() -> Vec<u8> {
    let mut c = vec![0u8; 256];
    c[0..4].copy_from_slice(&[0xf4, 0x1a, 0x48, 0x10]);
    c[0x06] = 0x10;
    c[0x08] = 1;
    c[0x0b] = 0x01;
    c[0x20] = 0x0c;
    c[0x34] = 0x40;
    virtio_cap(&mut c, 0x40, 0x50, 16, 1, 0x0000, 0x40);
    virtio_cap(&mut c, 0x50, 0x60, 16, 3, 0x1000, 4);
    virtio_cap(&mut c, 0x60, 0x70, 16, 4, 0x2000, 36);
    virtio_cap(&mut c, 0x70, 0x84, 20, 2, 0x3000, 0x1000);
    c[0x80..0x84].copy_from_slice(&4u32.to_le_bytes());
    virtio_cap(&mut c, 0x84, 0x98, 20, 5, 0, 0);
    c[0x98] = 0x11;
    c[0x9a..0x9c].copy_from_slice(&((MSIX_VECTORS - 1) as u16).to_le_bytes());
    c[0x9c..0xa0].copy_from_slice(&1u32.to_le_bytes());
    c[0xa0..0xa4].copy_from_slice(&(0x800u32 | 1).to_le_bytes());
    c
}

fn region(index: u32, size: u64) -> ServerRegion {
    ServerRegion {
        region_info: vfio_region_info {
            argsz: std::mem::size_of::<vfio_region_info>() as u32,
            flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
            index,
            cap_offset: 0,
            size,
            offset: 0,
        },
        sparse_areas: Vec::new(),
        mmap_fd: None,
    }
}

/// Starts the rust-vmm server on `path` for one connection with `backend`, BAR 0 of 4 KiB,
/// BAR 1 (MSI-X) and BAR 4 (virtio structures) of 16 KiB.
fn serve_backend(path: &Path, mut backend: impl ServerBackend + Send + 'static) -> JoinHandle<()> {
    let regions = (0..8)
        .map(|i| match i {
            0 | 1 => region(i, 4096),
            4 => region(4, 0x4000),
            7 => region(7, 256),
            _ => region(i, 0),
        })
        .collect();
    let irqs = (0..5)
        .map(|index| IrqInfo {
            index,
            flags: VFIO_IRQ_INFO_EVENTFD,
            count: if index == VFIO_PCI_MSIX_IRQ_INDEX {
                MSIX_VECTORS
            } else {
                1
            },
        })
        .collect();
    let server = Server::new(path, true, irqs, regions).unwrap();
    std::thread::spawn(move || {
        server.run(&mut backend).unwrap();
    })
}

/// The recording backend on `path`.
fn serve(path: &Path) -> (Arc<Mutex<State>>, JoinHandle<()>) {
    let state = Arc::new(Mutex::new(State {
        config: config_space(),
        bar0: vec![0; 4096],
        ..State::default()
    }));
    let handle = serve_backend(path, RecordingBackend(state.clone()));
    (state, handle)
}

#[test]
fn client_messages_round_trip_with_fds_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let (state, handle) = serve(&path);
    let mut client = VfioUserClient::connect(&path, Duration::from_secs(5)).unwrap();
    assert!(client.server_capabilities().contains("capabilities"));

    let mem = DriverMemory::new(0x10000, 1 << 20).unwrap();
    mem.write(0x10000, b"memfd-ok").unwrap();
    client
        .dma_map(0x10000, 1 << 20, mem.file().as_fd(), 0)
        .unwrap();
    assert_eq!(
        state.lock().unwrap().dma_maps,
        vec![(0x10000, 1 << 20, *b"memfd-ok")]
    );

    let info = client.device_info().unwrap();
    assert_ne!(info.flags & VFIO_DEVICE_FLAGS_PCI, 0);
    assert_eq!((info.num_regions, info.num_irqs), (8, 5));
    assert_eq!(client.region_info(7).unwrap().size, 256);
    assert_eq!(
        client.irq_info(VFIO_PCI_MSIX_IRQ_INDEX).unwrap().count,
        MSIX_VECTORS
    );

    let mut ids = [0u8; 4];
    client.region_read(7, 0, &mut ids).unwrap();
    assert_eq!(ids, [0xf4, 0x1a, 0x48, 0x10]);
    client.region_write(0, 8, &[1, 2, 3]).unwrap();
    client.region_write_posted(0, 16, &[9, 9]).unwrap();
    let mut back = [0u8; 10];
    client.region_read(0, 8, &mut back).unwrap();
    assert_eq!(back, [1, 2, 3, 0, 0, 0, 0, 0, 9, 9]);

    let fd = EventFd::new(EFD_NONBLOCK).unwrap();
    client
        .set_irqs(
            VFIO_PCI_MSIX_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            3,
            1,
            &[&fd],
        )
        .unwrap();
    assert_eq!(fd.read().unwrap(), 1);

    // An error reply comes back as an error, and the conversation goes on.
    match client.region_info(99) {
        Err(ClientError::Server {
            command: CommandNumber::DeviceGetRegionInfo,
            errno,
        }) => {
            assert_eq!(errno, libc::EINVAL as u32)
        }
        other => panic!("expected EINVAL, got {other:?}"),
    }
    client.device_reset().unwrap();
    assert_eq!(state.lock().unwrap().resets, 1);
    client.dma_unmap(0x10000, 1 << 20).unwrap();
    assert!(state.lock().unwrap().dma_maps.is_empty());
    drop(client);
    handle.join().unwrap();
}

#[test]
fn attach_probes_and_wires_msix_like_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let (state, handle) = serve(&path);
    let driver = VirtioScsiDriver::attach(&path, tests::DriverOptions::default()).unwrap();
    let probe = driver.probe().clone();
    assert_eq!(
        (
            probe.common.bar,
            probe.notify.offset,
            probe.notify_off_multiplier
        ),
        (4, 0x3000, 4)
    );
    assert_eq!(
        (
            probe.msix.table_size,
            probe.msix.table_bir,
            probe.msix.pba_offset
        ),
        (5, 1, 0x800)
    );
    {
        let state = state.lock().unwrap();
        // Memory space and bus master on, MSI-X enabled, as a guest leaves them.
        assert_eq!(state.config[0x04] & 0x6, 0x6);
        assert_ne!(state.config[0x9b] & 0x80, 0);
        // One SET_IRQS per vector, each with one eventfd.
        let expected: Vec<_> = (0..MSIX_VECTORS)
            .map(|v| {
                (
                    VFIO_PCI_MSIX_IRQ_INDEX,
                    VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                    v,
                    1,
                    1,
                )
            })
            .collect();
        assert_eq!(state.set_irqs, expected);
        assert_eq!(state.dma_maps.len(), 1);
    }
    for vector in 0..MSIX_VECTORS as u16 {
        assert_eq!(driver.irq_eventfd(vector).unwrap().read().unwrap(), 1);
    }
    drop(driver);
    handle.join().unwrap();
}

/// A minimal virtio-scsi device, written here from the spec as a fixture: it runs the common
/// configuration, answers every command with GOOD and data-in bytes of 0xa5 ("FAKE" for
/// INQUIRY), every control request with OK, and raises the queue's MSI-X eventfd each time.
/// It lets the driver's whole path run without our server.
#[derive(Default)]
struct FakeScsi {
    config: Vec<u8>,
    feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_vector: u16,
    queue_select: u16,
    queues: [FakeQueue; 3],
    memory: Option<(u64, File)>,
    irqs: Vec<Option<File>>,
}

#[derive(Clone, Copy, Default)]
struct FakeQueue {
    size: u16,
    vector: u16,
    enable: u16,
    desc: u64,
    driver: u64,
    device: u64,
    last_avail: u16,
    used: u16,
}

/// A chain as the fake device sees it: the bytes it may read, the (address, length) it may write.
type FakeChain = (Vec<u8>, Vec<(u64, u32)>);

const FAKE_FEATURES: u64 = 1 << 32 | 1 << 28;
const FAKE_QUEUE_MAX: u16 = 32;

impl FakeScsi {
    fn new() -> Self {
        FakeScsi {
            config: config_space(),
            queues: [FakeQueue {
                size: FAKE_QUEUE_MAX,
                vector: 0xffff,
                ..FakeQueue::default()
            }; 3],
            irqs: (0..MSIX_VECTORS).map(|_| None).collect(),
            ..FakeScsi::default()
        }
    }

    fn common_image(&self) -> [u8; 0x40] {
        let q = self
            .queues
            .get(usize::from(self.queue_select))
            .copied()
            .unwrap_or_default();
        let mut b = [0u8; 0x40];
        b[0..4].copy_from_slice(&self.feature_select.to_le_bytes());
        let features = (FAKE_FEATURES >> (32 * self.feature_select.min(1))) as u32;
        b[4..8].copy_from_slice(&features.to_le_bytes());
        b[8..12].copy_from_slice(&self.driver_feature_select.to_le_bytes());
        let driver = (self.driver_features >> (32 * self.driver_feature_select.min(1))) as u32;
        b[12..16].copy_from_slice(&driver.to_le_bytes());
        b[0x10..0x12].copy_from_slice(&self.config_vector.to_le_bytes());
        b[0x12..0x14].copy_from_slice(&3u16.to_le_bytes());
        b[0x14] = self.status;
        b[0x16..0x18].copy_from_slice(&self.queue_select.to_le_bytes());
        b[0x18..0x1a].copy_from_slice(&q.size.to_le_bytes());
        b[0x1a..0x1c].copy_from_slice(&q.vector.to_le_bytes());
        b[0x1c..0x1e].copy_from_slice(&q.enable.to_le_bytes());
        b[0x1e..0x20].copy_from_slice(&self.queue_select.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&q.desc.to_le_bytes());
        b[0x28..0x30].copy_from_slice(&q.driver.to_le_bytes());
        b[0x30..0x38].copy_from_slice(&q.device.to_le_bytes());
        b
    }

    fn common_write(&mut self, offset: usize, data: &[u8]) {
        let mut b = self.common_image();
        b[offset..offset + data.len()].copy_from_slice(data);
        let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        self.feature_select = u32_at(0);
        self.driver_feature_select = u32_at(8);
        if offset == 0x0c {
            let shift = 32 * self.driver_feature_select.min(1);
            self.driver_features = (self.driver_features & !(0xffff_ffffu64 << shift))
                | u64::from(u32_at(12)) << shift;
        }
        self.config_vector = u16_at(0x10);
        if offset == 0x14 {
            self.status = b[0x14];
            if self.status == 0 {
                let fresh = FakeQueue {
                    size: FAKE_QUEUE_MAX,
                    vector: 0xffff,
                    ..FakeQueue::default()
                };
                self.queues = [fresh; 3];
            } else if self.status & 8 != 0 && self.driver_features & !FAKE_FEATURES != 0 {
                self.status &= !8;
            }
        }
        // Queue fields belong to the queue selected before this write.
        if let Some(q) = self.queues.get_mut(usize::from(self.queue_select)) {
            q.size = u16_at(0x18);
            q.vector = u16_at(0x1a);
            q.enable = u16_at(0x1c);
            q.desc = u64_at(0x20);
            q.driver = u64_at(0x28);
            q.device = u64_at(0x30);
        }
        self.queue_select = u16_at(0x16);
    }

    fn device_config(&self) -> [u8; 36] {
        let mut b = [0u8; 36];
        for (i, v) in [1u32, 30, 0xffff, 128, 16, 96, 32].iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        b[32..36].copy_from_slice(&255u32.to_le_bytes());
        b
    }

    fn read_mem(&self, gpa: u64, len: usize) -> io::Result<Vec<u8>> {
        let (iova, file) = self
            .memory
            .as_ref()
            .ok_or_else(|| io::Error::other("no DMA map"))?;
        let mut data = vec![0u8; len];
        file.read_exact_at(&mut data, gpa - iova)?;
        Ok(data)
    }

    fn write_mem(&self, gpa: u64, data: &[u8]) -> io::Result<()> {
        let (iova, file) = self
            .memory
            .as_ref()
            .ok_or_else(|| io::Error::other("no DMA map"))?;
        file.write_all_at(data, gpa - iova)
    }

    /// (readable bytes, writable buffers) of the chain at `head`, following one indirect table.
    fn walk(&self, q: &FakeQueue, head: u16) -> io::Result<FakeChain> {
        let mut table = (q.desc, q.size);
        let mut index = head;
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        for _ in 0..64 {
            let d = self.read_mem(table.0 + 16 * u64::from(index), 16)?;
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
            let flags = u16::from_le_bytes([d[12], d[13]]);
            let next = u16::from_le_bytes([d[14], d[15]]);
            if flags & 4 != 0 {
                table = (addr, (len / 16) as u16);
                index = 0;
                continue;
            }
            if flags & 2 != 0 {
                writable.push((addr, len));
            } else {
                readable.extend(self.read_mem(addr, len as usize)?);
            }
            if flags & 1 == 0 {
                return Ok((readable, writable));
            }
            index = next;
        }
        Err(io::Error::other("chain too long"))
    }

    fn process(&mut self, queue: usize) -> io::Result<()> {
        let mut q = self.queues[queue];
        let avail_idx = u16::from_le_bytes(self.read_mem(q.driver + 2, 2)?.try_into().unwrap());
        while q.last_avail != avail_idx {
            let slot = q.driver + 4 + 2 * u64::from(q.last_avail % q.size);
            let head = u16::from_le_bytes(self.read_mem(slot, 2)?.try_into().unwrap());
            let (request, writable) = self.walk(&q, head)?;
            let mut reply = if queue == 2 {
                let mut r = vec![0u8; 12 + 96];
                let opcode = request.get(19).copied().unwrap_or(0);
                let data_len: u32 = writable.iter().skip(1).map(|w| w.1).sum();
                let data = if opcode == 0x12 {
                    b"FAKE".repeat(data_len as usize / 4 + 1)
                } else {
                    vec![0xa5; data_len as usize]
                };
                r.extend_from_slice(&data[..data_len as usize]);
                r
            } else {
                vec![0u8; writable.first().map_or(0, |w| w.1 as usize)]
            };
            let mut written = 0u32;
            for (addr, len) in writable {
                let take = (len as usize).min(reply.len());
                let chunk: Vec<u8> = reply.drain(..take).collect();
                self.write_mem(addr, &chunk)?;
                written += take as u32;
            }
            let used_slot = q.device + 4 + 8 * u64::from(q.used % q.size);
            let mut elem = u32::from(head).to_le_bytes().to_vec();
            elem.extend_from_slice(&written.to_le_bytes());
            self.write_mem(used_slot, &elem)?;
            q.used = q.used.wrapping_add(1);
            q.last_avail = q.last_avail.wrapping_add(1);
            self.write_mem(q.device + 2, &q.used.to_le_bytes())?;
        }
        self.queues[queue] = q;
        if let Some(Some(fd)) = self.irqs.get(usize::from(q.vector)) {
            (&*fd).write_all(&1u64.to_ne_bytes())?;
        }
        Ok(())
    }
}

impl ServerBackend for FakeScsi {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        let at = offset as usize;
        let (source, base) = match (region, at) {
            (7, _) => (self.config.clone(), 0),
            (4, 0..0x40) => (self.common_image().to_vec(), 0),
            (4, 0x2000..0x2024) => (self.device_config().to_vec(), 0x2000),
            _ => (vec![0u8; at + data.len()], 0),
        };
        data.copy_from_slice(&source[at - base..at - base + data.len()]);
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let at = offset as usize;
        match (region, at) {
            (7, _) => self.config[at..at + data.len()].copy_from_slice(data),
            (4, 0..0x40) => self.common_write(at, data),
            (4, 0x3000..0x4000) => {
                let queue = usize::from(u16::from_le_bytes([data[0], data[1]]));
                if queue < 3 {
                    self.process(queue)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn dma_map(
        &mut self,
        _: DmaMapFlags,
        _: u64,
        iova: u64,
        _: u64,
        fd: Option<File>,
    ) -> io::Result<()> {
        self.memory = fd.map(|f| (iova, f));
        Ok(())
    }

    fn dma_unmap(&mut self, _: DmaUnmapFlags, _: u64, _: u64) -> io::Result<()> {
        self.memory = None;
        Ok(())
    }

    fn reset(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn set_irqs(&mut self, _: u32, _: u32, start: u32, _: u32, fds: Vec<File>) -> io::Result<()> {
        for (i, fd) in fds.into_iter().enumerate() {
            if let Some(slot) = self.irqs.get_mut(start as usize + i) {
                *slot = Some(fd);
            }
        }
        Ok(())
    }
}

#[test]
fn the_whole_driver_path_runs_against_a_fake_device() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let handle = serve_backend(&path, FakeScsi::new());
    let options = tests::DriverOptions {
        event_idx: false,
        timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let mut driver = VirtioScsiDriver::connect(&path, options).unwrap();
    assert_eq!(driver.features(), 1 << 32 | 1 << 28);
    assert_eq!(driver.config().num_queues, 1);
    assert_eq!(
        (driver.config().sense_size, driver.config().cdb_size),
        (96, 32)
    );

    let inquiry = driver.inquiry(0, false, 0, 36).unwrap();
    assert!(inquiry.is_good());
    assert_eq!(&inquiry.data_in[..4], b"FAKE");
    assert_eq!(inquiry.used_len, 12 + 96 + 36);
    let read = driver.read10(0, 0, 2, 512).unwrap();
    assert_eq!(read.data_in, vec![0xa5; 1024]);
    let write = driver.write10(0, 0, &[1u8; 512], 512).unwrap();
    assert!(write.is_good());
    assert_eq!(
        driver
            .tmf(0, tests::scsi::VIRTIO_SCSI_T_TMF_ABORT_TASK, 1)
            .unwrap(),
        0
    );

    // Many in flight, reaped in batches; then the same through an indirect table.
    let lun = tests::scsi::encode_lun(0, 0).unwrap();
    let reads: Vec<_> = (0..8)
        .map(|i| tests::ScsiRequest::new(lun, &tests::scsi::cdb::lba10(0x28, 0, i, 1)).data_in(512))
        .collect();
    let heads = driver.submit_batch(2, &reads).unwrap();
    let mut done = 0;
    while done < heads.len() {
        done += driver.reap(2).unwrap().len();
    }
    let queue = driver.queue(2).unwrap();
    let buffer = queue.memory().alloc(12 + 96, 8).unwrap();
    let req = tests::scsi::encode_cmd_req(lun, 5, &[0, 0, 0, 0, 0, 0], 32).unwrap();
    let req_gpa = queue.memory().alloc(req.len() as u64, 8).unwrap();
    queue.memory().write(req_gpa, &req).unwrap();
    let head = queue
        .submit_indirect_chain(&[
            tests::split_queue::Buffer::readable(req_gpa, req.len() as u32),
            tests::split_queue::Buffer::writable(buffer, 108),
        ])
        .unwrap();
    assert!(matches!(queue.wait_for(head).unwrap(), tests::UsedChain::Raw(u) if u.len == 108));
    drop(driver);
    handle.join().unwrap();
}
