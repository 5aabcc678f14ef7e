//! The DMA map table: which client memory the device may reach, and the `DmaMemory` view of it.
//!
//! A mapping sent with an fd is mmapped and inserted into `DmaMemory`; one without an fd is only
//! recorded (it still takes part in overlap checks and unmaps). A mapping the client grants
//! without WRITE is mapped MAP_PRIVATE: a device write then lands in a private copy-on-write page,
//! so it can neither reach the client's memory nor fault the server on a read-only mapping.
//!
//! A mapping must lie within its fd's size when it arrives. Maps of the same file share one open
//! file: QEMU sends one fd per memory section, often of one memfd, and each would otherwise cost
//! a descriptor of the process.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Weak};

use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestAddressSpace, GuestMemoryMmap, GuestRegionMmap};

use crate::device::DmaMemory;
use crate::protocol::{
    DmaMap, DmaUnmap, MAX_DMA_MAPS, PAGE_SIZE, VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE,
    VFIO_DMA_UNMAP_FLAG_ALL,
};

#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    #[error(
        "[{address:#x}, +{size:#x}) at file offset {offset:#x} is empty, unaligned or overflows"
    )]
    BadRange {
        address: u64,
        size: u64,
        offset: u64,
    },
    #[error("flags {0:#x} not supported")]
    BadFlags(u32),
    #[error("[{address:#x}, +{size:#x}) overlaps the mapping at {existing:#x}")]
    Overlap {
        address: u64,
        size: u64,
        existing: u64,
    },
    #[error("already {MAX_DMA_MAPS} mappings")]
    TooMany,
    #[error("[{offset:#x}, +{size:#x}) of the fd lies beyond its {file_size:#x} bytes")]
    BeyondFile {
        offset: u64,
        size: u64,
        file_size: u64,
    },
    #[error("fstat of the mapped fd: {0}")]
    Stat(std::io::Error),
    #[error("nothing mapped in [{address:#x}, +{size:#x})")]
    NotMapped { address: u64, size: u64 },
    #[error("UNMAP_ALL with a non-zero range")]
    UnmapAllWithRange,
    #[error("mmap: {0}")]
    Mmap(#[from] vm_memory::mmap::MmapRegionError),
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestRegionCollectionError),
    #[error("DMA memory lock poisoned")]
    Poisoned,
}

impl DmaError {
    pub fn errno(&self) -> i32 {
        match self {
            DmaError::Overlap { .. } => libc::EEXIST,
            DmaError::TooMany => libc::ENOSPC,
            DmaError::Stat(e) => e.raw_os_error().unwrap_or(libc::EINVAL),
            DmaError::NotMapped { .. } => libc::ENOENT,
            DmaError::Mmap(vm_memory::mmap::MmapRegionError::Mmap(e)) => {
                e.raw_os_error().unwrap_or(libc::EINVAL)
            }
            _ => libc::EINVAL,
        }
    }

    /// Whether the server ran out of a resource (maps, descriptors, address space): an operator
    /// should hear about it, unlike a client's malformed request.
    pub fn is_exhaustion(&self) -> bool {
        matches!(
            self.errno(),
            libc::ENOSPC | libc::ENOMEM | libc::EMFILE | libc::ENFILE
        )
    }
}

/// A change of `DmaMemory` the device must hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaChange {
    /// About to join `DmaMemory`, backed by a file that can still shrink (no `F_SEAL_SHRINK`):
    /// an access past its new end would fault.
    Shrinkable { iova: u64, size: u64 },
    /// About to leave `DmaMemory`.
    Unmapping { iova: u64, size: u64 },
    /// Now in `DmaMemory`.
    Mapped { iova: u64, size: u64 },
}

#[derive(Debug, Clone)]
struct Mapping {
    size: u64,
    file_offset: u64,
    flags: u32,
    /// The file backing the mapping; `None` if the device cannot reach it.
    file: Option<Arc<File>>,
    /// Whether the file can shrink under the mapping: a regular file without `F_SEAL_SHRINK`.
    shrinkable: bool,
}

impl Mapping {
    fn accessible(&self) -> bool {
        self.file.is_some()
    }
}

/// Identifies an open file for sharing: the same file opened with the same access mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    device: u64,
    inode: u64,
    access_mode: i32,
}

/// Every DMA mapping of the current client, keyed by IOVA.
pub struct DmaTable {
    maps: BTreeMap<u64, Mapping>,
    /// The open files of the mappings, by what they are; entries die with their last mapping.
    files: HashMap<FileKey, Weak<File>>,
    memory: DmaMemory,
}

fn aligned(value: u64) -> bool {
    value % PAGE_SIZE == 0
}

impl DmaTable {
    pub fn new(memory: DmaMemory) -> DmaTable {
        DmaTable {
            maps: BTreeMap::new(),
            files: HashMap::new(),
            memory,
        }
    }

    /// How many open files the mappings hold.
    #[cfg(test)]
    fn open_files(&self) -> usize {
        self.files.values().filter(|f| f.strong_count() > 0).count()
    }

    /// The open file for `fd` after checking that `size` bytes from `offset` lie within it: one
    /// already held for the same file if there is one (`fd` is then closed), or `fd` itself;
    /// and whether the file can still shrink.
    fn backing_file(
        &mut self,
        offset: u64,
        size: u64,
        fd: OwnedFd,
    ) -> Result<(Arc<File>, bool), DmaError> {
        let file = File::from(fd);
        let metadata = file.metadata().map_err(DmaError::Stat)?;
        // Sizes of other kinds of files (block and character devices) say nothing.
        if metadata.file_type().is_file() && offset + size > metadata.len() {
            return Err(DmaError::BeyondFile {
                offset,
                size,
                file_size: metadata.len(),
            });
        }
        // Block and character devices never shrink. Seals only accumulate, so a sealed file stays
        // sealed; files that cannot be sealed (EINVAL) can shrink.
        // SAFETY: F_GET_SEALS on an fd we own reads its seals and changes nothing.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        let shrinkable =
            metadata.file_type().is_file() && (seals < 0 || seals & libc::F_SEAL_SHRINK == 0);
        // SAFETY: F_GETFL on an fd we own reads its status flags and changes nothing.
        let status_flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        let key = FileKey {
            device: metadata.dev(),
            inode: metadata.ino(),
            access_mode: status_flags & libc::O_ACCMODE,
        };
        if let Some(held) = self.files.get(&key).and_then(Weak::upgrade) {
            return Ok((held, shrinkable));
        }
        let file = Arc::new(file);
        if self.files.len() > 2 * self.maps.len() + 16 {
            self.files.retain(|_, held| held.strong_count() > 0);
        }
        self.files.insert(key, Arc::downgrade(&file));
        Ok((file, shrinkable))
    }

    /// Adds a mapping; returns whether the device can reach it through `DmaMemory`. `on_change`
    /// hears of a shrinkable mapping before the device can reach it.
    pub fn map(
        &mut self,
        map: &DmaMap,
        fd: Option<OwnedFd>,
        mut on_change: impl FnMut(DmaChange),
    ) -> Result<bool, DmaError> {
        let (address, size, offset, flags) = (
            map.address.get(),
            map.size.get(),
            map.offset.get(),
            map.flags.get(),
        );
        let bad_range = DmaError::BadRange {
            address,
            size,
            offset,
        };
        let end = address.checked_add(size);
        if size == 0 || end.is_none() || offset.checked_add(size).is_none() {
            return Err(bad_range);
        }
        if !aligned(address) || !aligned(size) || !aligned(offset) {
            return Err(bad_range);
        }
        if flags & !(VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE) != 0 {
            return Err(DmaError::BadFlags(flags));
        }
        if let Some(existing) = self.first_overlap(address, size) {
            return Err(DmaError::Overlap {
                address,
                size,
                existing,
            });
        }
        if self.maps.len() >= MAX_DMA_MAPS {
            return Err(DmaError::TooMany);
        }
        let reachable = flags & (VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE) != 0;
        let (file, shrinkable) = match fd.filter(|_| reachable) {
            Some(fd) => {
                let (file, shrinkable) = self.backing_file(offset, size, fd)?;
                (Some(file), shrinkable)
            }
            None => (None, false),
        };
        let mapping = Mapping {
            size,
            file_offset: offset,
            flags,
            file,
            shrinkable,
        };
        if mapping.accessible() && mapping.shrinkable {
            on_change(DmaChange::Shrinkable {
                iova: address,
                size,
            });
        }
        if mapping.accessible() {
            self.insert_into_memory(address, &mapping)?;
        }
        let accessible = mapping.accessible();
        self.maps.insert(address, mapping);
        Ok(accessible)
    }

    fn first_overlap(&self, address: u64, size: u64) -> Option<u64> {
        let end = address.saturating_add(size);
        self.maps
            .range(..end)
            .next_back()
            .filter(|(&start, m)| start.saturating_add(m.size) > address)
            .map(|(&start, _)| start)
            .or_else(|| {
                self.maps
                    .range(address..end)
                    .next()
                    .map(|(&start, _)| start)
            })
    }

    fn insert_into_memory(&self, address: u64, mapping: &Mapping) -> Result<(), DmaError> {
        let Some(file) = &mapping.file else {
            return Ok(());
        };
        let size = usize::try_from(mapping.size).map_err(|_| DmaError::BadRange {
            address,
            size: mapping.size,
            offset: mapping.file_offset,
        })?;
        let shared = mapping.flags & VFIO_DMA_MAP_FLAG_WRITE != 0;
        let flags = if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE | libc::MAP_NORESERVE
        };
        let region = MmapRegion::build(
            Some(FileOffset::from_arc(Arc::clone(file), mapping.file_offset)),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
        )?;
        let region =
            GuestRegionMmap::new(region, GuestAddress(address)).ok_or(DmaError::BadRange {
                address,
                size: mapping.size,
                offset: mapping.file_offset,
            })?;
        let guard = self.memory.lock().map_err(|_| DmaError::Poisoned)?;
        let updated = self.memory.memory().insert_region(Arc::new(region))?;
        guard.replace(updated);
        Ok(())
    }

    fn remove_from_memory(&self, address: u64, size: u64) -> Result<(), DmaError> {
        let guard = self.memory.lock().map_err(|_| DmaError::Poisoned)?;
        let (updated, _) = self
            .memory
            .memory()
            .remove_region(GuestAddress(address), size)?;
        guard.replace(updated);
        Ok(())
    }

    /// Removes what `unmap` covers, telling `on_change` before an accessible mapping leaves
    /// `DmaMemory` and after the remainder of a partly unmapped one returns to it.
    pub fn unmap(
        &mut self,
        unmap: &DmaUnmap,
        mut on_change: impl FnMut(DmaChange),
    ) -> Result<(), DmaError> {
        if unmap.flags.get() == VFIO_DMA_UNMAP_FLAG_ALL {
            if unmap.address.get() != 0 || unmap.size.get() != 0 {
                return Err(DmaError::UnmapAllWithRange);
            }
            return self.clear(on_change);
        }
        if unmap.flags.get() != 0 {
            return Err(DmaError::BadFlags(unmap.flags.get()));
        }
        let (address, size) = (unmap.address.get(), unmap.size.get());
        let end = address
            .checked_add(size)
            .filter(|_| size != 0 && aligned(address) && aligned(size));
        let end = end.ok_or(DmaError::BadRange {
            address,
            size,
            offset: 0,
        })?;
        let hit: Vec<u64> = self
            .maps
            .range(..end)
            .filter(|(&start, m)| start + m.size > address)
            .map(|(&start, _)| start)
            .collect();
        if hit.is_empty() {
            return Err(DmaError::NotMapped { address, size });
        }
        for start in hit {
            let Some(mapping) = self.maps.remove(&start) else {
                continue;
            };
            if mapping.accessible() {
                on_change(DmaChange::Unmapping {
                    iova: start,
                    size: mapping.size,
                });
                self.remove_from_memory(start, mapping.size)?;
            }
            let map_end = start + mapping.size;
            let mut remainders = Vec::new();
            if start < address {
                remainders.push((
                    start,
                    Mapping {
                        size: address - start,
                        ..mapping.clone()
                    },
                ));
            }
            if map_end > end {
                let skip = end - start;
                remainders.push((
                    end,
                    Mapping {
                        size: map_end - end,
                        file_offset: mapping.file_offset + skip,
                        ..mapping.clone()
                    },
                ));
            }
            for (piece_start, piece) in remainders {
                self.insert_into_memory(piece_start, &piece)?;
                if piece.accessible() {
                    on_change(DmaChange::Mapped {
                        iova: piece_start,
                        size: piece.size,
                    });
                }
                self.maps.insert(piece_start, piece);
            }
        }
        Ok(())
    }

    /// Removes every mapping (UNMAP_ALL, or the client went away) and closes their fds.
    pub fn clear(&mut self, mut on_change: impl FnMut(DmaChange)) -> Result<(), DmaError> {
        for (&start, mapping) in &self.maps {
            if mapping.accessible() {
                on_change(DmaChange::Unmapping {
                    iova: start,
                    size: mapping.size,
                });
            }
        }
        self.maps.clear();
        self.files.clear();
        self.memory
            .lock()
            .map_err(|_| DmaError::Poisoned)?
            .replace(GuestMemoryMmap::new());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::{Bytes, GuestMemoryBackend};

    const RW: u32 = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;

    fn backing(pages: u64) -> File {
        let mut file = tempfile::tempfile().unwrap();
        let bytes: Vec<u8> = (0..pages * PAGE_SIZE)
            .map(|i| (i / PAGE_SIZE) as u8)
            .collect();
        file.write_all(&bytes).unwrap();
        file
    }

    fn map(address: u64, size: u64, offset: u64, flags: u32) -> DmaMap {
        DmaMap {
            argsz: 32.into(),
            flags: flags.into(),
            offset: offset.into(),
            address: address.into(),
            size: size.into(),
        }
    }

    fn unmap(address: u64, size: u64) -> DmaUnmap {
        DmaUnmap {
            argsz: 24.into(),
            flags: 0.into(),
            address: address.into(),
            size: size.into(),
        }
    }

    fn table() -> (DmaTable, DmaMemory) {
        let memory = DmaMemory::new(GuestMemoryMmap::new());
        (DmaTable::new(memory.clone()), memory)
    }

    #[test]
    fn mapped_fd_is_visible_at_its_offset() {
        let (mut t, memory) = table();
        let file = backing(4);
        assert!(t
            .map(
                &map(0x10000, 2 * PAGE_SIZE, PAGE_SIZE, RW),
                Some(file.into()),
                |_| {},
            )
            .unwrap());
        let mem = memory.memory();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10000)).unwrap(), 1);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x10000 + PAGE_SIZE))
                .unwrap(),
            2
        );
        assert!(mem
            .read_obj::<u8>(GuestAddress(0x10000 + 2 * PAGE_SIZE))
            .is_err());
    }

    #[test]
    fn writes_reach_the_file_only_when_writable() {
        let (mut t, memory) = table();
        let shared = backing(1);
        let private = backing(1);
        t.map(
            &map(0, PAGE_SIZE, 0, RW),
            Some(shared.try_clone().unwrap().into()),
            |_| {},
        )
        .unwrap();
        t.map(
            &map(PAGE_SIZE, PAGE_SIZE, 0, VFIO_DMA_MAP_FLAG_READ),
            Some(private.try_clone().unwrap().into()),
            |_| {},
        )
        .unwrap();
        let mem = memory.memory();
        mem.write_obj(0xaau8, GuestAddress(0)).unwrap();
        mem.write_obj(0xbbu8, GuestAddress(PAGE_SIZE)).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(PAGE_SIZE)).unwrap(), 0xbb);
        let read_first = |f: &File| {
            let mut b = [0u8; 1];
            std::os::unix::fs::FileExt::read_at(f, &mut b, 0).unwrap();
            b[0]
        };
        assert_eq!(read_first(&shared), 0xaa);
        assert_eq!(read_first(&private), 0);
    }

    #[test]
    fn the_map_after_the_last_is_enospc_and_an_exhaustion() {
        let (mut t, _) = table();
        for n in 0..MAX_DMA_MAPS as u64 {
            t.map(&map(n * PAGE_SIZE, PAGE_SIZE, 0, RW), None, |_| {})
                .unwrap();
        }
        let past = MAX_DMA_MAPS as u64 * PAGE_SIZE;
        let error = t
            .map(&map(past, PAGE_SIZE, 0, RW), None, |_| {})
            .unwrap_err();
        assert_eq!(error.errno(), libc::ENOSPC);
        assert!(error.is_exhaustion());
        assert!(!DmaError::BadFlags(0).is_exhaustion());
        t.unmap(&unmap(0, PAGE_SIZE), |_| ()).unwrap();
        t.map(&map(past, PAGE_SIZE, 0, RW), None, |_| {}).unwrap();
    }

    #[test]
    fn overlaps_are_eexist_and_fdless_maps_are_recorded() {
        let (mut t, memory) = table();
        assert!(!t.map(&map(0x4000, 0x4000, 0, RW), None, |_| {}).unwrap());
        assert!(memory.memory().num_regions() == 0);
        for (address, size) in [
            (0x4000, 0x1000),
            (0x3000, 0x2000),
            (0x7000, 0x1000),
            (0, 0x10000),
        ] {
            assert_eq!(
                t.map(&map(address, size, 0, RW), None, |_| {})
                    .unwrap_err()
                    .errno(),
                libc::EEXIST
            );
        }
        t.map(&map(0x8000, 0x1000, 0, RW), None, |_| {}).unwrap();
        t.map(&map(0x3000, 0x1000, 0, RW), None, |_| {}).unwrap();
        assert_eq!(t.maps.len(), 3);
    }

    #[test]
    fn bad_ranges_are_einval() {
        let (mut t, _) = table();
        for m in [
            map(0, 0, 0, RW),
            map(0x100, 0x1000, 0, RW),
            map(u64::MAX - 0xfff, 0x2000, 0, RW),
            map(0, 0x1000, 0, 1 << 5),
        ] {
            assert_eq!(t.map(&m, None, |_| {}).unwrap_err().errno(), libc::EINVAL);
        }
    }

    #[test]
    fn partial_unmap_keeps_the_rest_at_the_right_offset() {
        let (mut t, memory) = table();
        t.map(
            &map(0x100000, 4 * PAGE_SIZE, 0, RW),
            Some(backing(4).into()),
            |_| {},
        )
        .unwrap();
        let mut changes = vec![];
        t.unmap(&unmap(0x100000 + PAGE_SIZE, PAGE_SIZE), |c| changes.push(c))
            .unwrap();
        assert_eq!(
            changes,
            [
                DmaChange::Unmapping {
                    iova: 0x100000,
                    size: 4 * PAGE_SIZE
                },
                DmaChange::Mapped {
                    iova: 0x100000,
                    size: PAGE_SIZE
                },
                DmaChange::Mapped {
                    iova: 0x100000 + 2 * PAGE_SIZE,
                    size: 2 * PAGE_SIZE
                },
            ]
        );
        let mem = memory.memory();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x100000)).unwrap(), 0);
        assert!(mem
            .read_obj::<u8>(GuestAddress(0x100000 + PAGE_SIZE))
            .is_err());
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x100000 + 3 * PAGE_SIZE))
                .unwrap(),
            3
        );
        assert_eq!(
            t.unmap(&unmap(0x100000 + PAGE_SIZE, PAGE_SIZE), |_| ())
                .unwrap_err()
                .errno(),
            libc::ENOENT
        );
    }

    #[test]
    fn exact_unmap_and_unmap_all() {
        let (mut t, memory) = table();
        t.map(&map(0, PAGE_SIZE, 0, RW), Some(backing(1).into()), |_| {})
            .unwrap();
        t.map(
            &map(PAGE_SIZE, PAGE_SIZE, 0, RW),
            Some(backing(1).into()),
            |_| {},
        )
        .unwrap();
        t.map(&map(4 * PAGE_SIZE, PAGE_SIZE, 0, RW), None, |_| {})
            .unwrap();
        t.unmap(&unmap(0, PAGE_SIZE), |_| ()).unwrap();
        assert_eq!(memory.memory().num_regions(), 1);
        let all = DmaUnmap {
            argsz: 24.into(),
            flags: VFIO_DMA_UNMAP_FLAG_ALL.into(),
            ..Default::default()
        };
        let bad_all = DmaUnmap {
            size: 1.into(),
            ..all
        };
        assert_eq!(t.unmap(&bad_all, |_| ()).unwrap_err().errno(), libc::EINVAL);
        let mut changes = vec![];
        t.unmap(&all, |c| changes.push(c)).unwrap();
        assert_eq!(
            changes,
            [DmaChange::Unmapping {
                iova: PAGE_SIZE,
                size: PAGE_SIZE
            }]
        );
        assert!(t.maps.is_empty());
        assert_eq!(memory.memory().num_regions(), 0);
    }

    #[test]
    fn maps_beyond_the_file_are_einval() {
        let (mut t, memory) = table();
        let file = backing(256);
        let one_mib = 256 * PAGE_SIZE;
        for m in [
            map(0, 1 << 40, 0, RW),
            map(0, one_mib, PAGE_SIZE, RW),
            map(0, PAGE_SIZE, one_mib, RW),
        ] {
            let fd = file.try_clone().unwrap().into();
            assert_eq!(
                t.map(&m, Some(fd), |_| {}).unwrap_err().errno(),
                libc::EINVAL
            );
        }
        assert!(t.maps.is_empty());
        assert_eq!(memory.memory().num_regions(), 0);
        assert!(t
            .map(&map(0, one_mib, 0, RW), Some(file.into()), |_| {})
            .unwrap());
    }

    #[test]
    fn maps_of_one_file_share_one_open_file() {
        let (mut t, memory) = table();
        let file = backing(4);
        let fds: Vec<OwnedFd> = (0..4).map(|_| file.try_clone().unwrap().into()).collect();
        let raw: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        for (page, fd) in fds.into_iter().enumerate() {
            let page = page as u64;
            t.map(
                &map(page * 0x10000, PAGE_SIZE, page * PAGE_SIZE, RW),
                Some(fd),
                |_| {},
            )
            .unwrap();
        }
        assert_eq!(t.open_files(), 1);
        // The first fd is kept, the later ones closed.
        // SAFETY: F_GETFD only asks whether the number is an open descriptor.
        let open = |fd: i32| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
        assert!(open(raw[0]));
        assert!(raw[1..].iter().all(|&fd| !open(fd)));
        let mem = memory.memory();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x30000)).unwrap(), 3);
        drop(mem);
        for page in 0..4u64 {
            t.unmap(&unmap(page * 0x10000, PAGE_SIZE), |_| ()).unwrap();
        }
        assert_eq!(t.open_files(), 0);
        assert!(!open(raw[0]));
    }

    fn memfd(flags: libc::c_uint, seals: libc::c_int) -> File {
        // SAFETY: memfd_create reads a NUL-terminated name and returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(c"dma-test".as_ptr(), libc::MFD_CLOEXEC | flags) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor nothing else owns.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(PAGE_SIZE).unwrap();
        if seals != 0 {
            // SAFETY: F_ADD_SEALS on our own memfd.
            assert_eq!(
                unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) },
                0
            );
        }
        file
    }

    /// Only memory whose file can still shrink is announced, before the device can reach it.
    #[test]
    fn maps_of_files_that_can_shrink_are_announced_first() {
        let (mut t, memory) = table();
        let cases = [
            (memfd(0, 0), true),
            (memfd(libc::MFD_ALLOW_SEALING, libc::F_SEAL_GROW), true),
            (
                memfd(
                    libc::MFD_ALLOW_SEALING,
                    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
                ),
                false,
            ),
            (backing(1), true),
        ];
        for (n, (file, shrinkable)) in cases.into_iter().enumerate() {
            let iova = n as u64 * 0x10000;
            let mut announced = Vec::new();
            let regions = memory.memory().num_regions();
            t.map(&map(iova, PAGE_SIZE, 0, RW), Some(file.into()), |change| {
                // Not in memory yet when announced.
                announced.push((change, memory.memory().num_regions() == regions));
            })
            .unwrap();
            let expected: Vec<_> = shrinkable
                .then_some((
                    DmaChange::Shrinkable {
                        iova,
                        size: PAGE_SIZE,
                    },
                    true,
                ))
                .into_iter()
                .collect();
            assert_eq!(announced, expected, "case {n}");
            assert_eq!(t.maps[&iova].shrinkable, shrinkable);
        }
        // Without an fd the device never reaches the memory: nothing to announce.
        let mut announced = 0;
        t.map(&map(0x100000, PAGE_SIZE, 0, RW), None, |_| announced += 1)
            .unwrap();
        assert_eq!(announced, 0);
    }
}
