//! MSI-X vector state: the eventfd the client gave for each vector, pending bits, and the table
//! and PBA as seen through BAR accesses.
//!
//! Clients such as QEMU emulate the table themselves and mask a vector by handing over a different
//! eventfd, so a table entry's mask bit only counts once the client has written that entry's
//! Vector Control word; until then the entry reads back masked as the PCI spec wants but does not
//! hold interrupts back. The function mask bit always counts (config writes reach the server).

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::mem::{offset_of, size_of};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::error::{check_range, PciError};
use crate::msix_capability::{MsixLayout, TABLE_ENTRY_SIZE};

const MAX_VECTORS: u32 = 2048;
const VECTOR_CONTROL_MASKED: u32 = 1;

/// One MSI-X table entry as the driver sees it through the BAR (PCI Local Bus 3.0 §6.8.2).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct MsixTableEntry {
    message_address_low: U32,
    message_address_high: U32,
    message_data: U32,
    vector_control: U32,
}

const _: () = assert!(size_of::<MsixTableEntry>() as u64 == TABLE_ENTRY_SIZE);
const VECTOR_CONTROL: usize = offset_of!(MsixTableEntry, vector_control);
const _: () = assert!(VECTOR_CONTROL == 12);

#[derive(Debug)]
struct Vector {
    fd: Option<File>,
    pending: bool,
    entry: MsixTableEntry,
    /// The client wrote Vector Control, so it drives masking through the table.
    table_masking: bool,
}

impl Vector {
    fn power_on() -> Self {
        Vector {
            fd: None,
            pending: false,
            entry: MsixTableEntry {
                message_address_low: U32::ZERO,
                message_address_high: U32::ZERO,
                message_data: U32::ZERO,
                vector_control: U32::new(VECTOR_CONTROL_MASKED),
            },
            table_masking: false,
        }
    }

    fn entry_masked(&self) -> bool {
        self.table_masking && self.entry.vector_control.get() & VECTOR_CONTROL_MASKED != 0
    }

    /// Writes the eventfd if the vector can fire now, else records the interrupt as pending.
    fn deliver(&mut self, function_masked: bool) -> Result<(), PciError> {
        match &self.fd {
            Some(fd) if !function_masked && !self.entry_masked() => {
                self.pending = false;
                write_eventfd(fd)
            }
            _ => {
                self.pending = true;
                Ok(())
            }
        }
    }

    fn flush_pending(&mut self, function_masked: bool) -> Result<(), PciError> {
        if self.pending {
            self.deliver(function_masked)
        } else {
            Ok(())
        }
    }
}

fn write_eventfd(fd: &File) -> Result<(), PciError> {
    let mut writer = fd;
    match writer.write(&1u64.to_ne_bytes()) {
        Ok(_) => Ok(()),
        // The counter is saturated: an interrupt is already waiting to be seen.
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(PciError::Signal(e.kind())),
    }
}

/// One vector on cache lines of its own. Each request queue raises its own vector once a
/// batch from the thread that serves it; vectors packed together would put two iothreads'
/// locks (and pending bits) on one line, which then moves between their cores at every batch.
/// The lock itself stays: it is taken once a batch, uncontended but for the client's rare
/// table and SET_IRQS changes, and it keeps the eventfd, the mask and the pending bit in step.
#[repr(align(128))]
#[derive(Debug)]
struct VectorSlot(Mutex<Vector>);

/// The MSI-X vectors of a function; shared (`Arc`) between the thread serving the client and
/// the threads that raise interrupts.
#[derive(Debug)]
pub struct MsixVectors {
    vectors: Box<[VectorSlot]>,
    function_masked: AtomicBool,
}

impl MsixVectors {
    pub fn new(count: u16) -> Result<Self, PciError> {
        if count == 0 || u32::from(count) > MAX_VECTORS {
            return Err(PciError::VectorCount(count.into()));
        }
        Ok(MsixVectors {
            vectors: (0..count)
                .map(|_| VectorSlot(Mutex::new(Vector::power_on())))
                .collect(),
            function_masked: AtomicBool::new(false),
        })
    }

    pub fn count(&self) -> u16 {
        // The constructor bounds the length to 2048.
        self.vectors.len() as u16
    }

    fn vector(&self, vector: u16) -> Result<MutexGuard<'_, Vector>, PciError> {
        let slot = self
            .vectors
            .get(usize::from(vector))
            .ok_or(PciError::NoSuchVector {
                vector,
                count: self.count(),
            })?;
        // A panic while holding the lock cannot leave a vector half-updated in a harmful way.
        Ok(slot
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    fn function_masked(&self) -> bool {
        self.function_masked.load(Ordering::SeqCst)
    }

    /// Assigns (Some) or removes (None) the eventfd of `vector`; a pending interrupt fires on
    /// the new eventfd at once.
    pub fn set(&self, vector: u16, fd: Option<OwnedFd>) -> Result<(), PciError> {
        let mut state = self.vector(vector)?;
        state.fd = fd.map(File::from);
        state.flush_pending(self.function_masked())
    }

    /// Removes every eventfd (SET_IRQS with DATA_NONE and count 0).
    pub fn clear_all(&self) {
        for slot in self.vectors.iter() {
            slot.0.lock().unwrap_or_else(|p| p.into_inner()).fd = None;
        }
    }

    /// Raises `vector`: writes its eventfd, or sets its pending bit while it is masked or has
    /// no eventfd.
    pub fn signal(&self, vector: u16) -> Result<(), PciError> {
        let masked = self.function_masked();
        self.vector(vector)?.deliver(masked)
    }

    pub fn is_pending(&self, vector: u16) -> Result<bool, PciError> {
        Ok(self.vector(vector)?.pending)
    }

    /// Follows the Function Mask bit of Message Control; unmasking fires pending vectors.
    pub(crate) fn set_function_mask(&self, masked: bool) -> Result<(), PciError> {
        self.function_masked.store(masked, Ordering::SeqCst);
        if !masked {
            for index in 0..self.count() {
                self.vector(index)?.flush_pending(false)?;
            }
        }
        Ok(())
    }

    /// Function-level reset: table and pending bits back to power-on; the eventfds stay, they
    /// belong to the client.
    pub fn reset(&self) {
        self.function_masked.store(false, Ordering::SeqCst);
        for slot in self.vectors.iter() {
            let mut state = slot.0.lock().unwrap_or_else(|p| p.into_inner());
            let fd = state.fd.take();
            *state = Vector::power_on();
            state.fd = fd;
        }
    }

    /// Size of the MSI-X table in bytes.
    pub fn table_size(&self) -> u64 {
        MsixLayout::table_size(self.count())
    }

    /// Size of the Pending Bit Array in bytes.
    pub fn pba_size(&self) -> u64 {
        MsixLayout::pba_size(self.count())
    }

    /// Table accesses are one dword or one aligned qword (PCI spec).
    fn check_table_access(offset: u64, len: usize, size: u64) -> Result<(), PciError> {
        check_range(offset, len, size)?;
        let aligned = match len {
            4 => offset % 4 == 0,
            8 => offset % 8 == 0,
            _ => false,
        };
        if aligned {
            Ok(())
        } else {
            Err(PciError::BadAccess { offset, len })
        }
    }

    /// Each dword of an access: (vector, offset within its entry, the dword's bytes).
    fn dwords(offset: u64, len: usize) -> impl Iterator<Item = (u16, usize, usize)> {
        (0..len / 4).map(move |i| {
            let at = offset + 4 * i as u64;
            // check_table_access bounds `at` by the table, which holds at most 2048 entries.
            (
                (at / TABLE_ENTRY_SIZE) as u16,
                (at % TABLE_ENTRY_SIZE) as usize,
                4 * i,
            )
        })
    }

    pub fn table_read(&self, offset: u64, data: &mut [u8]) -> Result<(), PciError> {
        Self::check_table_access(offset, data.len(), self.table_size())?;
        for (vector, within, at) in Self::dwords(offset, data.len()) {
            let state = self.vector(vector)?;
            data[at..at + 4].copy_from_slice(&state.entry.as_bytes()[within..within + 4]);
        }
        Ok(())
    }

    pub fn table_write(&self, offset: u64, data: &[u8]) -> Result<(), PciError> {
        Self::check_table_access(offset, data.len(), self.table_size())?;
        let masked = self.function_masked();
        for (vector, within, at) in Self::dwords(offset, data.len()) {
            let mut state = self.vector(vector)?;
            state.entry.as_mut_bytes()[within..within + 4].copy_from_slice(&data[at..at + 4]);
            if within == VECTOR_CONTROL {
                // Only the mask bit of Vector Control is defined; the rest is reserved.
                let control = state.entry.vector_control.get() & VECTOR_CONTROL_MASKED;
                state.entry.vector_control = U32::new(control);
                state.table_masking = true;
                state.flush_pending(masked)?;
            }
        }
        Ok(())
    }

    pub fn pba_read(&self, offset: u64, data: &mut [u8]) -> Result<(), PciError> {
        Self::check_table_access(offset, data.len(), self.pba_size())?;
        let mut bits = 0u64;
        let first = offset * 8;
        for bit in 0..(data.len() as u64 * 8) {
            let vector = first + bit;
            if vector < u64::from(self.count()) && self.vector(vector as u16)?.pending {
                bits |= 1 << bit;
            }
        }
        data.copy_from_slice(&bits.to_le_bytes()[..data.len()]);
        Ok(())
    }

    /// PBA writes are ignored: the array is read-only.
    pub fn pba_write(&self, offset: u64, data: &[u8]) -> Result<(), PciError> {
        Self::check_table_access(offset, data.len(), self.pba_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, IntoRawFd};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    /// An eventfd for the test to read, and an owned duplicate to hand to the vectors.
    fn eventfd_pair() -> (EventFd, OwnedFd) {
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        let raw = fd.try_clone().unwrap().into_raw_fd();
        // SAFETY: `raw` was just released by `into_raw_fd`, so nothing else owns it.
        (fd, unsafe { OwnedFd::from_raw_fd(raw) })
    }

    fn fired(fd: &EventFd) -> bool {
        fd.read().is_ok()
    }

    #[test]
    fn signal_writes_the_vectors_eventfd() {
        let vectors = MsixVectors::new(3).unwrap();
        let (fd0, owned0) = eventfd_pair();
        let (fd2, owned2) = eventfd_pair();
        vectors.set(0, Some(owned0)).unwrap();
        vectors.set(2, Some(owned2)).unwrap();
        vectors.signal(2).unwrap();
        assert!(fired(&fd2));
        assert!(!fired(&fd0));
        assert!(!vectors.is_pending(2).unwrap());
    }

    #[test]
    fn signal_without_eventfd_pends_until_one_is_assigned() {
        let vectors = MsixVectors::new(2).unwrap();
        vectors.signal(1).unwrap();
        assert!(vectors.is_pending(1).unwrap());
        let mut pba = [0u8; 8];
        vectors.pba_read(0, &mut pba).unwrap();
        assert_eq!(u64::from_le_bytes(pba), 0b10);
        let (fd, owned) = eventfd_pair();
        vectors.set(1, Some(owned)).unwrap();
        assert!(fired(&fd));
        assert!(!vectors.is_pending(1).unwrap());
        vectors.pba_read(0, &mut pba).unwrap();
        assert_eq!(u64::from_le_bytes(pba), 0);
    }

    #[test]
    fn clear_all_removes_eventfds() {
        let vectors = MsixVectors::new(1).unwrap();
        let (fd, owned) = eventfd_pair();
        vectors.set(0, Some(owned)).unwrap();
        vectors.clear_all();
        vectors.signal(0).unwrap();
        assert!(!fired(&fd));
        assert!(vectors.is_pending(0).unwrap());
    }

    #[test]
    fn function_mask_holds_interrupts_until_cleared() {
        let vectors = MsixVectors::new(1).unwrap();
        let (fd, owned) = eventfd_pair();
        vectors.set(0, Some(owned)).unwrap();
        vectors.set_function_mask(true).unwrap();
        vectors.signal(0).unwrap();
        assert!(!fired(&fd));
        vectors.set_function_mask(false).unwrap();
        assert!(fired(&fd));
    }

    #[test]
    fn table_mask_counts_once_the_client_writes_vector_control() {
        let vectors = MsixVectors::new(2).unwrap();
        let (fd, owned) = eventfd_pair();
        vectors.set(1, Some(owned)).unwrap();
        let mut control = [0u8; 4];
        vectors.table_read(16 + 12, &mut control).unwrap();
        assert_eq!(control, [1, 0, 0, 0]);
        // Never written by the client: the entry does not hold interrupts back.
        vectors.signal(1).unwrap();
        assert!(fired(&fd));
        vectors.table_write(16 + 12, &1u32.to_le_bytes()).unwrap();
        vectors.signal(1).unwrap();
        assert!(!fired(&fd));
        assert!(vectors.is_pending(1).unwrap());
        vectors.table_write(16 + 12, &0u32.to_le_bytes()).unwrap();
        assert!(fired(&fd));
        assert!(!vectors.is_pending(1).unwrap());
    }

    #[test]
    fn table_entries_store_messages() {
        let vectors = MsixVectors::new(2).unwrap();
        let address = 0x0000_0001_fee0_0000u64;
        vectors.table_write(16, &address.to_le_bytes()).unwrap();
        vectors.table_write(24, &0x4041u32.to_le_bytes()).unwrap();
        let mut entry = [0u8; 8];
        vectors.table_read(16, &mut entry).unwrap();
        assert_eq!(u64::from_le_bytes(entry), address);
        let mut data = [0u8; 4];
        vectors.table_read(24, &mut data).unwrap();
        assert_eq!(u32::from_le_bytes(data), 0x4041);
    }

    #[test]
    fn bad_accesses_are_errors() {
        let vectors = MsixVectors::new(2).unwrap();
        let mut two = [0u8; 2];
        let mut four = [0u8; 4];
        let mut eight = [0u8; 8];
        assert_eq!(
            vectors.table_read(0, &mut two),
            Err(PciError::BadAccess { offset: 0, len: 2 })
        );
        assert_eq!(
            vectors.table_read(4, &mut eight),
            Err(PciError::BadAccess { offset: 4, len: 8 })
        );
        assert!(vectors.table_read(32, &mut four).is_err());
        assert!(vectors.pba_read(8, &mut four).is_err());
        assert_eq!(
            vectors.signal(2),
            Err(PciError::NoSuchVector {
                vector: 2,
                count: 2
            })
        );
        assert!(MsixVectors::new(0).is_err());
        assert!(MsixVectors::new(2049).is_err());
    }

    #[test]
    fn reset_keeps_eventfds_and_clears_pending() {
        let vectors = MsixVectors::new(1).unwrap();
        vectors.table_write(12, &1u32.to_le_bytes()).unwrap();
        let (fd, owned) = eventfd_pair();
        vectors.set(0, Some(owned)).unwrap();
        vectors.signal(0).unwrap();
        assert!(vectors.is_pending(0).unwrap());
        vectors.reset();
        assert!(!vectors.is_pending(0).unwrap());
        vectors.signal(0).unwrap();
        assert!(fired(&fd));
    }

    #[test]
    fn concurrent_signals_are_never_lost_across_function_masking() {
        let vectors = std::sync::Arc::new(MsixVectors::new(4).unwrap());
        let fds: Vec<EventFd> = (0..4)
            .map(|vector| {
                let (fd, owned) = eventfd_pair();
                vectors.set(vector, Some(owned)).unwrap();
                fd
            })
            .collect();
        let signallers: Vec<_> = (0..4u16)
            .map(|vector| {
                let vectors = vectors.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        vectors.signal(vector).unwrap();
                    }
                })
            })
            .collect();
        for round in 0..500 {
            vectors.set_function_mask(round % 2 == 0).unwrap();
        }
        signallers.into_iter().for_each(|t| t.join().unwrap());
        vectors.set_function_mask(false).unwrap();
        for (vector, fd) in fds.iter().enumerate() {
            assert!(!vectors.is_pending(vector as u16).unwrap());
            assert!(fired(fd), "vector {vector} never fired");
        }
    }
}
