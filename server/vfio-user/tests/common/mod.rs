//! A small device for the server's integration tests, and helpers to run a server in a thread.
//!
//! Region 0 (BAR0, 4 KiB) is served by messages; writing a guest address to its doorbell makes
//! the device read a u64 there through `DmaMemory`, write it back plus one 8 bytes further, and
//! fire MSI-X vector 0. Region 1 (BAR1, 8 KiB) is backed by a memfd whose second page is mappable
//! (sparse mmap). Region 7 is a 256-byte config space. Region 0 also hands out one eventfd
//! (GET_REGION_IO_FDS) that the main loop watches for the device.

#![allow(dead_code)]

pub mod raw;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vfio_user_server::{
    Device, DeviceError, DmaMemory, IoFd, IrqAction, IrqInfo, MmapArea, RegionInfo, RegionMmap,
    Server, ShutdownHandle,
};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryMmap};

pub const BAR0_SIZE: u64 = 0x1000;
pub const DOORBELL: u64 = 0x200;
pub const KICK_OFFSET: u64 = 0x100;
pub const BAR1_SIZE: u64 = 0x2000;
pub const CONFIG: u32 = 7;
pub const MSIX: u32 = 2;
pub const MSIX_VECTORS: u32 = 4;

/// What the device was asked to do; shared with the test.
#[derive(Debug, Default)]
pub struct DeviceRecord {
    pub resets: usize,
    pub mapped: Vec<(u64, u64)>,
    pub unmapping: Vec<(u64, u64)>,
    pub irq_actions: Vec<String>,
    pub kicks: usize,
}

pub struct TestDevice {
    memory: DmaMemory,
    bar0: Vec<u8>,
    config: [u8; 256],
    bar1: Arc<OwnedFd>,
    msix: Vec<Option<OwnedFd>>,
    kick: OwnedFd,
    pub record: Arc<Mutex<DeviceRecord>>,
}

pub fn memfd(size: u64) -> OwnedFd {
    // SAFETY: memfd_create takes a NUL-terminated name and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fd was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = std::fs::File::from(fd);
    file.set_len(size).unwrap();
    file.into()
}

/// A non-blocking eventfd.
pub fn eventfd() -> OwnedFd {
    // SAFETY: eventfd returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fd was just created and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Adds one to the eventfd's counter.
pub fn write_eventfd(fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer to a live fd.
    let n = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
    assert_eq!(n, 8);
}

/// The eventfd's counter, or `None` if it is zero.
pub fn read_eventfd(fd: &OwnedFd) -> Option<u64> {
    let mut value = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a live buffer from a live fd.
    let n = unsafe { libc::read(fd.as_raw_fd(), value.as_mut_ptr().cast(), 8) };
    (n == 8).then(|| u64::from_ne_bytes(value))
}

impl TestDevice {
    pub fn new(memory: DmaMemory) -> TestDevice {
        let mut config = [0u8; 256];
        config[..2].copy_from_slice(&0x1af4u16.to_le_bytes());
        TestDevice {
            memory,
            bar0: vec![0; BAR0_SIZE as usize],
            config,
            bar1: Arc::new(memfd(BAR1_SIZE)),
            msix: (0..MSIX_VECTORS).map(|_| None).collect(),
            kick: eventfd(),
            record: Arc::default(),
        }
    }

    fn fire(&self, vector: usize) {
        if let Some(Some(fd)) = self.msix.get(vector) {
            write_eventfd(fd);
        }
    }

    fn doorbell(&mut self, iova: u64) {
        let memory = self.memory.memory();
        if let Ok(value) = memory.read_obj::<u64>(GuestAddress(iova)) {
            let _ = memory.write_obj(value + 1, GuestAddress(iova + 8));
        }
        self.fire(0);
    }

    fn buffer(&mut self, region: u32) -> Result<&mut [u8], DeviceError> {
        match region {
            0 => Ok(&mut self.bar0),
            CONFIG => Ok(&mut self.config),
            _ => Err(DeviceError::NoSuchRegion(region)),
        }
    }
}

fn span(
    region: u32,
    offset: u64,
    len: usize,
    size: usize,
) -> Result<std::ops::Range<usize>, DeviceError> {
    let start = offset as usize;
    if start + len > size {
        return Err(DeviceError::OutOfRange {
            region,
            offset,
            len,
        });
    }
    Ok(start..start + len)
}

impl Device for TestDevice {
    fn regions(&self) -> Vec<RegionInfo> {
        (0..9)
            .map(|index| {
                let (size, mmap) = match index {
                    0 => (BAR0_SIZE, None),
                    1 => (
                        BAR1_SIZE,
                        Some(RegionMmap {
                            fd: Arc::clone(&self.bar1),
                            file_offset: 0,
                            areas: vec![MmapArea {
                                offset: 0x1000,
                                size: 0x1000,
                            }],
                        }),
                    ),
                    CONFIG => (256, None),
                    _ => (0, None),
                };
                RegionInfo {
                    index,
                    size,
                    readable: size > 0,
                    writable: size > 0,
                    mmap,
                }
            })
            .collect()
    }

    fn irqs(&self) -> Vec<IrqInfo> {
        (0..5)
            .map(|index| IrqInfo {
                index,
                count: match index {
                    MSIX => MSIX_VECTORS,
                    1 => 0,
                    _ => 1,
                },
                eventfd: true,
                maskable: index == MSIX,
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
        let buffer = self.buffer(region)?;
        let range = span(region, offset, data.len(), buffer.len())?;
        data.copy_from_slice(&buffer[range]);
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        if region == 0 && offset == DOORBELL && data.len() == 8 {
            self.doorbell(u64::from_le_bytes(data.try_into().unwrap()));
            return Ok(());
        }
        let buffer = self.buffer(region)?;
        let range = span(region, offset, data.len(), buffer.len())?;
        buffer[range].copy_from_slice(data);
        Ok(())
    }

    fn region_io_fds(&self, region: u32) -> Result<Vec<IoFd<'_>>, DeviceError> {
        Ok(match region {
            0 => vec![IoFd {
                offset: KICK_OFFSET,
                size: 4,
                fd: self.kick.as_fd(),
                datamatch: Some(0),
            }],
            _ => Vec::new(),
        })
    }

    fn set_irqs(&mut self, index: u32, action: IrqAction) -> Result<(), DeviceError> {
        self.record
            .lock()
            .unwrap()
            .irq_actions
            .push(format!("{index}:{action:?}"));
        if index != MSIX {
            return Ok(());
        }
        match action {
            IrqAction::Assign { start, fds } => {
                for (i, fd) in fds.into_iter().enumerate() {
                    self.msix[start as usize + i] = fd;
                }
            }
            IrqAction::Disable => self.msix.iter_mut().for_each(|fd| *fd = None),
            IrqAction::Trigger { start, count } => {
                (start..start + count).for_each(|v| self.fire(v as usize))
            }
            IrqAction::TriggerBool { start, values } => {
                for (i, value) in values.into_iter().enumerate() {
                    if value {
                        self.fire(start as usize + i);
                    }
                }
            }
            IrqAction::Mask { .. } => {}
        }
        Ok(())
    }

    fn dma_mapped(&mut self, iova: u64, size: u64) {
        self.record.lock().unwrap().mapped.push((iova, size));
    }

    fn dma_unmapping(&mut self, iova: u64, size: u64) {
        self.record.lock().unwrap().unmapping.push((iova, size));
    }

    fn reset(&mut self) {
        self.bar0.fill(0);
        self.msix.iter_mut().for_each(|fd| *fd = None);
        self.record.lock().unwrap().resets += 1;
    }

    fn event_fds(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.kick.as_fd()]
    }

    fn event_ready(&mut self, index: usize) {
        assert_eq!(index, 0);
        while let Some(count) = read_eventfd(&self.kick) {
            self.record.lock().unwrap().kicks += count as usize;
        }
    }
}

/// A server with a `TestDevice`, running in its own thread until dropped.
pub struct Running {
    pub path: PathBuf,
    pub record: Arc<Mutex<DeviceRecord>>,
    shutdown: ShutdownHandle,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Running {
    pub fn start() -> Running {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vfio-user.sock");
        let memory = DmaMemory::new(GuestMemoryMmap::new());
        let device = TestDevice::new(memory.clone());
        let record = Arc::clone(&device.record);
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let server = Server::new(&path, device, memory, log).unwrap();
        let shutdown = server.shutdown_handle();
        let thread = std::thread::spawn(move || server.run().unwrap());
        Running {
            path,
            record,
            shutdown,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Waits (up to 5 s) until `done` holds for the record.
    pub fn wait_for(&self, done: impl Fn(&DeviceRecord) -> bool) {
        for _ in 0..500 {
            if done(&self.record.lock().unwrap()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("timed out; record: {:?}", self.record.lock().unwrap());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.shutdown.shutdown();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
