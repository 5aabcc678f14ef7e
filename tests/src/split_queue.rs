//! The driver side of a split virtqueue (virtio 1.2 §2.7), laid out in guest memory.
//!
//! Besides well-formed chains it can write arbitrary descriptors, so that tests can hand the device
//! loops, out-of-table links, bad addresses and indirect tables.

use std::sync::Arc;

use crate::guest_memory::{DriverMemory, MemoryError};

pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// used.flags: the device asks not to be kicked.
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;
/// avail.flags: the driver asks for no interrupts.
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

const DESC_SIZE: u64 = 16;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue size {0} is not a power of two in 1..=32768")]
    BadSize(u16),
    #[error("a chain needs at least one buffer")]
    EmptyChain,
    #[error("{wanted} descriptors wanted, {free} free")]
    Full { wanted: usize, free: usize },
    #[error("descriptor index {0} is outside the table")]
    BadIndex(u16),
    #[error("the device returned id {id}, which is not an outstanding head")]
    UnknownHead { id: u32 },
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
}

pub type Result<T> = std::result::Result<T, QueueError>;

/// One descriptor as stored in the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Descriptor {
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; 16]) -> Self {
        Descriptor {
            addr: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        }
    }
}

/// A buffer of a chain: device-readable, or device-writable when `writable`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

impl Buffer {
    pub fn readable(addr: u64, len: u32) -> Self {
        Buffer {
            addr,
            len,
            writable: false,
        }
    }

    pub fn writable(addr: u64, len: u32) -> Self {
        Buffer {
            addr,
            len,
            writable: true,
        }
    }
}

/// A used-ring element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElement {
    pub id: u32,
    pub len: u32,
}

/// Where the three parts of a queue live, for the common configuration registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueAddresses {
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

/// What the driver remembers of each descriptor index. A chain's descriptors are linked here
/// (not read back from the table, which hostile tests may have written anything into), so that
/// returning a chain to the free list needs no allocation.
#[derive(Clone, Copy, Debug, Default)]
struct DescriptorState {
    /// Set on the head of a chain in flight.
    head_in_flight: bool,
    /// The chain's next descriptor after this one, if any.
    next: Option<u16>,
    /// An indirect table the chain headed here owns.
    indirect_table: Option<u64>,
}

#[derive(Debug)]
pub struct SplitQueue {
    mem: Arc<DriverMemory>,
    size: u16,
    addresses: QueueAddresses,
    free: Vec<u16>,
    descriptors: Vec<DescriptorState>,
    /// Chains in flight.
    outstanding: usize,
    next_avail: u16,
    last_used: u16,
    event_idx: bool,
    /// False for a driver that polls the used ring: it asks the device for no interrupt.
    interrupts_wanted: bool,
}

impl SplitQueue {
    /// Allocates the descriptor table and both rings (zeroed) in `mem`.
    pub fn new(mem: Arc<DriverMemory>, size: u16, event_idx: bool) -> Result<Self> {
        if size == 0 || !size.is_power_of_two() || size > 32768 {
            return Err(QueueError::BadSize(size));
        }
        let n = u64::from(size);
        let desc = mem.alloc(DESC_SIZE * n, 4096)?;
        let driver = mem.alloc(6 + 2 * n, 4096)?;
        let device = mem.alloc(6 + 8 * n, 4096)?;
        Ok(SplitQueue {
            mem,
            size,
            addresses: QueueAddresses {
                desc,
                driver,
                device,
            },
            free: (0..size).rev().collect(),
            descriptors: vec![DescriptorState::default(); usize::from(size)],
            outstanding: 0,
            next_avail: 0,
            last_used: 0,
            event_idx,
            interrupts_wanted: true,
        })
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    pub fn addresses(&self) -> QueueAddresses {
        self.addresses
    }

    pub fn memory(&self) -> &Arc<DriverMemory> {
        &self.mem
    }

    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    pub fn in_flight(&self) -> usize {
        self.outstanding
    }

    /// Takes `count` descriptors off the free list; the first is the head. They are returned to
    /// the free list when the device uses that head. Write them with `write_descriptor`.
    pub fn reserve(&mut self, count: usize) -> Result<Vec<u16>> {
        self.check_free(count)?;
        let taken: Vec<u16> = self.free.iter().rev().take(count).copied().collect();
        self.free.truncate(self.free.len() - count);
        for pair in taken.windows(2) {
            self.descriptors[usize::from(pair[0])].next = Some(pair[1]);
        }
        self.start_chain(taken[0], taken[count - 1]);
        Ok(taken)
    }

    /// Takes one descriptor off the free list as a chain of its own (one INDIRECT descriptor, as
    /// a batching driver sends most requests), without allocating.
    pub fn reserve_head(&mut self) -> Result<u16> {
        self.check_free(1)?;
        let head = self.free.pop().ok_or(QueueError::EmptyChain)?;
        self.start_chain(head, head);
        Ok(head)
    }

    fn check_free(&self, count: usize) -> Result<()> {
        if count == 0 {
            return Err(QueueError::EmptyChain);
        }
        if count > self.free.len() {
            return Err(QueueError::Full {
                wanted: count,
                free: self.free.len(),
            });
        }
        Ok(())
    }

    fn start_chain(&mut self, head: u16, last: u16) {
        self.descriptors[usize::from(last)].next = None;
        let state = &mut self.descriptors[usize::from(head)];
        state.head_in_flight = true;
        state.indirect_table = None;
        self.outstanding += 1;
    }

    /// Writes descriptor `index` of the table verbatim.
    pub fn write_descriptor(&self, index: u16, desc: Descriptor) -> Result<()> {
        if index >= self.size {
            return Err(QueueError::BadIndex(index));
        }
        let gpa = self.addresses.desc + u64::from(index) * DESC_SIZE;
        self.mem.write(gpa, &desc.to_bytes())?;
        Ok(())
    }

    pub fn read_descriptor(&self, index: u16) -> Result<Descriptor> {
        if index >= self.size {
            return Err(QueueError::BadIndex(index));
        }
        let mut b = [0u8; 16];
        self.mem
            .read(self.addresses.desc + u64::from(index) * DESC_SIZE, &mut b)?;
        Ok(Descriptor::from_bytes(&b))
    }

    /// Writes `buffers` as a linked chain and returns its head (not yet published).
    pub fn add_chain(&mut self, buffers: &[Buffer]) -> Result<u16> {
        let indices = self.reserve(buffers.len())?;
        for (i, (buffer, &index)) in buffers.iter().zip(&indices).enumerate() {
            let next = indices.get(i + 1).copied();
            let mut flags = if buffer.writable {
                VIRTQ_DESC_F_WRITE
            } else {
                0
            };
            if next.is_some() {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            self.write_descriptor(
                index,
                Descriptor {
                    addr: buffer.addr,
                    len: buffer.len,
                    flags,
                    next: next.unwrap_or(0),
                },
            )?;
        }
        Ok(indices[0])
    }

    /// Writes `buffers` into an indirect table in guest memory and one INDIRECT descriptor
    /// pointing to it; returns the head (not yet published).
    pub fn add_indirect_chain(&mut self, buffers: &[Buffer]) -> Result<u16> {
        if buffers.is_empty() {
            return Err(QueueError::EmptyChain);
        }
        let table: Vec<Descriptor> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let last = i + 1 == buffers.len();
                let mut flags = if b.writable { VIRTQ_DESC_F_WRITE } else { 0 };
                if !last {
                    flags |= VIRTQ_DESC_F_NEXT;
                }
                Descriptor {
                    addr: b.addr,
                    len: b.len,
                    flags,
                    next: if last { 0 } else { (i + 1) as u16 },
                }
            })
            .collect();
        self.add_raw_indirect(&table)
    }

    /// Writes `table` verbatim as an indirect table and one INDIRECT descriptor pointing to it.
    pub fn add_raw_indirect(&mut self, table: &[Descriptor]) -> Result<u16> {
        let bytes: Vec<u8> = table.iter().flat_map(|d| d.to_bytes()).collect();
        let gpa = self.mem.alloc(bytes.len() as u64, 16)?;
        self.mem.write(gpa, &bytes)?;
        let head = match self.reserve(1) {
            Ok(indices) => indices[0],
            Err(e) => {
                self.mem.free(gpa)?;
                return Err(e);
            }
        };
        self.descriptors[usize::from(head)].indirect_table = Some(gpa);
        self.write_descriptor(
            head,
            Descriptor {
                addr: gpa,
                len: bytes.len() as u32,
                flags: VIRTQ_DESC_F_INDIRECT,
                next: 0,
            },
        )?;
        Ok(head)
    }

    fn avail_ring_slot(&self, idx: u16) -> u64 {
        self.addresses.driver + 4 + 2 * u64::from(idx % self.size)
    }

    fn used_event_addr(&self) -> u64 {
        self.addresses.driver + 4 + 2 * u64::from(self.size)
    }

    fn avail_event_addr(&self) -> u64 {
        self.addresses.device + 4 + 8 * u64::from(self.size)
    }

    /// Makes `head` available to the device. Returns whether the device wants a kick for it
    /// (EVENT_IDX avail_event, or used.flags NO_NOTIFY otherwise).
    pub fn publish(&mut self, head: u16) -> Result<bool> {
        self.publish_many(&[head])
    }

    /// Publishes several heads with a single index update, as a batching driver does.
    pub fn publish_many(&mut self, heads: &[u16]) -> Result<bool> {
        let old = self.next_avail;
        for &head in heads {
            self.mem
                .store_u16(self.avail_ring_slot(self.next_avail), head)?;
            self.next_avail = self.next_avail.wrapping_add(1);
        }
        // Release ordering on the index store publishes the ring entries and descriptors.
        self.mem
            .store_u16(self.addresses.driver + 2, self.next_avail)?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.needs_kick(old)
    }

    fn needs_kick(&self, old: u16) -> Result<bool> {
        if self.event_idx {
            let event = self.mem.load_u16(self.avail_event_addr())?;
            Ok(need_event(event, self.next_avail, old))
        } else {
            let flags = self.mem.load_u16(self.addresses.device)?;
            Ok(flags & VIRTQ_USED_F_NO_NOTIFY == 0)
        }
    }

    /// The device's used index as last written.
    pub fn used_idx(&self) -> Result<u16> {
        Ok(self.mem.load_u16(self.addresses.device + 2)?)
    }

    /// Takes the next used element, if any, and returns its descriptors to the free list.
    pub fn pop_used(&mut self) -> Result<Option<UsedElement>> {
        let mut popped = None;
        self.pop_used_batch(1, |used| popped = Some(used))?;
        Ok(popped)
    }

    /// Takes up to `max` used elements, handing each to `take` and returning its descriptors to
    /// the free list, with one look at the used index and one used_event update for the whole
    /// batch, as Linux's `virtqueue_get_buf` loop does between two `virtqueue_enable_cb`s.
    /// Returns how many.
    pub fn pop_used_batch(
        &mut self,
        max: usize,
        mut take: impl FnMut(UsedElement),
    ) -> Result<usize> {
        let ready = usize::from(self.used_idx()?.wrapping_sub(self.last_used)).min(max);
        for _ in 0..ready {
            let slot = self.addresses.device + 4 + 8 * u64::from(self.last_used % self.size);
            let id = self.mem.load_u32(slot)?;
            let len = self.mem.load_u32(slot + 4)?;
            self.last_used = self.last_used.wrapping_add(1);
            self.release_chain(id)?;
            take(UsedElement { id, len });
        }
        if ready > 0 && self.event_idx {
            // Ask for an interrupt as soon as anything beyond what was consumed is used, or,
            // polling, only once the device's used index gets half the index space ahead.
            let event = if self.interrupts_wanted {
                self.last_used
            } else {
                self.last_used.wrapping_add(0x8000)
            };
            self.mem.store_u16(self.used_event_addr(), event)?;
            // The next look at the used index (the one before the caller sleeps on its
            // interrupt) must not pass this store: otherwise the device may read the old
            // used_event after adding an element that look misses, and no interrupt comes
            // (as Linux orders its virtqueue_enable_cb_prepare and virtqueue_poll).
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        }
        Ok(ready)
    }

    /// Returns the chain headed by `id` to the free list and frees its indirect table.
    fn release_chain(&mut self, id: u32) -> Result<()> {
        let head = u16::try_from(id)
            .ok()
            .filter(|&head| head < self.size)
            .ok_or(QueueError::UnknownHead { id })?;
        let state = &mut self.descriptors[usize::from(head)];
        if !state.head_in_flight {
            return Err(QueueError::UnknownHead { id });
        }
        state.head_in_flight = false;
        let table = state.indirect_table.take();
        self.outstanding -= 1;
        // The head ends on top of the free list, to be taken again first.
        let start = self.free.len();
        let mut next = Some(head);
        while let Some(index) = next {
            self.free.push(index);
            next = self.descriptors[usize::from(index)].next.take();
        }
        self.free[start..].reverse();
        if let Some(table) = table {
            self.mem.free(table)?;
        }
        Ok(())
    }

    /// Whether the device should interrupt when it returns buffers: a driver that polls the
    /// used ring asks for none (avail.flags NO_INTERRUPT, or a used_event kept out of reach).
    pub fn set_interrupts_wanted(&mut self, wanted: bool) -> Result<()> {
        self.interrupts_wanted = wanted;
        if self.event_idx {
            let event = if wanted {
                self.last_used
            } else {
                self.last_used.wrapping_add(0x8000)
            };
            self.set_used_event(event)
        } else {
            self.set_no_interrupt(!wanted)
        }
    }

    /// Sets avail.flags NO_INTERRUPT (only meaningful without EVENT_IDX).
    pub fn set_no_interrupt(&self, suppress: bool) -> Result<()> {
        let flags = if suppress {
            VIRTQ_AVAIL_F_NO_INTERRUPT
        } else {
            0
        };
        Ok(self.mem.store_u16(self.addresses.driver, flags)?)
    }

    /// Writes used_event directly (EVENT_IDX), e.g. to ask for an interrupt only after `n` more.
    pub fn set_used_event(&self, value: u16) -> Result<()> {
        Ok(self.mem.store_u16(self.used_event_addr(), value)?)
    }

    pub fn avail_event(&self) -> Result<u16> {
        Ok(self.mem.load_u16(self.avail_event_addr())?)
    }

    pub fn used_flags(&self) -> Result<u16> {
        Ok(self.mem.load_u16(self.addresses.device)?)
    }
}

impl Drop for SplitQueue {
    fn drop(&mut self) {
        let tables: Vec<u64> = self
            .descriptors
            .iter()
            .filter(|d| d.head_in_flight)
            .filter_map(|d| d.indirect_table)
            .collect();
        // Freeing can only fail for addresses this queue never allocated, which cannot happen.
        for gpa in tables.into_iter().chain([
            self.addresses.desc,
            self.addresses.driver,
            self.addresses.device,
        ]) {
            let _ = self.mem.free(gpa);
        }
    }
}

/// virtio 1.2 §2.7.10: whether moving an index from `old` to `new` crosses `event`.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal device side: consumes every available chain and writes a used element whose
    /// length is the total length of the chain's writable descriptors.
    fn device_consume(q: &SplitQueue, mem: &DriverMemory, last_avail: &mut u16, used: &mut u16) {
        let a = q.addresses();
        let avail_idx = mem.load_u16(a.driver + 2).unwrap();
        while *last_avail != avail_idx {
            let head = mem
                .load_u16(a.driver + 4 + 2 * u64::from(*last_avail % q.size()))
                .unwrap();
            let mut index = head;
            let mut written = 0;
            loop {
                let d = q.read_descriptor(index).unwrap();
                if d.flags & VIRTQ_DESC_F_WRITE != 0 {
                    written += d.len;
                }
                if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                    break;
                }
                index = d.next;
            }
            let slot = a.device + 4 + 8 * u64::from(*used % q.size());
            mem.store_u32(slot, u32::from(head)).unwrap();
            mem.store_u32(slot + 4, written).unwrap();
            *used = used.wrapping_add(1);
            mem.store_u16(a.device + 2, *used).unwrap();
            *last_avail = last_avail.wrapping_add(1);
        }
    }

    #[test]
    fn chains_round_trip_through_a_simulated_device() {
        let mem = Arc::new(DriverMemory::new(0, 1 << 20).unwrap());
        let mut q = SplitQueue::new(mem.clone(), 8, false).unwrap();
        let (mut last_avail, mut used) = (0u16, 0u16);
        // Wrap the 16-bit indices' ring positions several times.
        for round in 0..20u32 {
            let a = q
                .add_chain(&[
                    Buffer::readable(0x8000, 19),
                    Buffer::writable(0x9000, 108 + round),
                ])
                .unwrap();
            let b = q.add_chain(&[Buffer::writable(0xa000, 7)]).unwrap();
            assert!(q.publish_many(&[a, b]).unwrap());
            assert_eq!(q.in_flight(), 2);
            device_consume(&q, &mem, &mut last_avail, &mut used);
            let first = q.pop_used().unwrap().unwrap();
            assert_eq!(
                first,
                UsedElement {
                    id: u32::from(a),
                    len: 108 + round
                }
            );
            let second = q.pop_used().unwrap().unwrap();
            assert_eq!(
                second,
                UsedElement {
                    id: u32::from(b),
                    len: 7
                }
            );
            assert_eq!(q.pop_used().unwrap(), None);
            assert_eq!(q.free_descriptors(), 8);
        }
    }

    #[test]
    fn a_batch_is_reaped_with_one_look_and_every_chain_goes_back_to_the_free_list() {
        let mem = Arc::new(DriverMemory::new(0, 1 << 20).unwrap());
        let mut q = SplitQueue::new(mem.clone(), 8, true).unwrap();
        q.set_interrupts_wanted(false).unwrap();
        let single = q.reserve_head().unwrap();
        let chain = q
            .add_chain(&[Buffer::readable(0x1000, 4), Buffer::writable(0x2000, 8)])
            .unwrap();
        let indirect = q
            .add_indirect_chain(&[Buffer::readable(0x3000, 4), Buffer::writable(0x4000, 8)])
            .unwrap();
        q.write_descriptor(single, Descriptor::default()).unwrap();
        q.publish_many(&[single, chain, indirect]).unwrap();
        assert_eq!((q.in_flight(), q.free_descriptors()), (3, 4));
        let (mut last_avail, mut used) = (0, 0);
        device_consume(&q, &mem, &mut last_avail, &mut used);
        let mut reaped = Vec::new();
        assert_eq!(q.pop_used_batch(2, |e| reaped.push(e.id)).unwrap(), 2);
        assert_eq!(reaped, [u32::from(single), u32::from(chain)]);
        let used_event = q.addresses().driver + 4 + 2 * 8;
        assert_eq!(
            mem.load_u16(used_event).unwrap(),
            0x8002,
            "one used_event update for the batch, kept out of reach while polling"
        );
        assert_eq!(
            q.pop_used_batch(usize::MAX, |e| reaped.push(e.id)).unwrap(),
            1
        );
        assert_eq!(q.pop_used_batch(usize::MAX, |_| {}).unwrap(), 0);
        assert_eq!((q.in_flight(), q.free_descriptors()), (0, 8));
        // The indirect table was freed, and a head cannot be returned twice.
        assert_eq!(
            mem.alloc(32, 16).unwrap(),
            q.read_descriptor(indirect).unwrap().addr
        );
        let slot = q.addresses().device + 4 + 8 * u64::from(used % 8);
        mem.store_u32(slot, u32::from(single)).unwrap();
        mem.store_u16(q.addresses().device + 2, used.wrapping_add(1))
            .unwrap();
        assert!(matches!(
            q.pop_used_batch(1, |_| {}),
            Err(QueueError::UnknownHead { .. })
        ));
    }

    #[test]
    fn chain_layout_marks_direction_and_links() {
        let mem = Arc::new(DriverMemory::new(0, 1 << 20).unwrap());
        let mut q = SplitQueue::new(mem, 4, false).unwrap();
        let head = q
            .add_chain(&[Buffer::readable(0x1000, 10), Buffer::writable(0x2000, 20)])
            .unwrap();
        let d0 = q.read_descriptor(head).unwrap();
        assert_eq!(d0.flags, VIRTQ_DESC_F_NEXT);
        let d1 = q.read_descriptor(d0.next).unwrap();
        assert_eq!(
            d1,
            Descriptor {
                addr: 0x2000,
                len: 20,
                flags: VIRTQ_DESC_F_WRITE,
                next: 0
            }
        );
        assert!(matches!(
            q.reserve(3),
            Err(QueueError::Full { wanted: 3, free: 2 })
        ));
        assert!(matches!(
            q.write_descriptor(4, Descriptor::default()),
            Err(QueueError::BadIndex(4))
        ));
    }

    #[test]
    fn indirect_table_is_written_and_released() {
        let mem = Arc::new(DriverMemory::new(0, 1 << 20).unwrap());
        let mut q = SplitQueue::new(mem.clone(), 4, false).unwrap();
        let head = q
            .add_indirect_chain(&[Buffer::readable(0x1000, 10), Buffer::writable(0x2000, 20)])
            .unwrap();
        let d = q.read_descriptor(head).unwrap();
        assert_eq!(d.flags, VIRTQ_DESC_F_INDIRECT);
        assert_eq!(d.len, 32);
        let mut second = [0u8; 16];
        mem.read(d.addr + 16, &mut second).unwrap();
        assert_eq!(Descriptor::from_bytes(&second).flags, VIRTQ_DESC_F_WRITE);
        q.publish(head).unwrap();
        // The device returns the head (a real one would follow the table first).
        let a = q.addresses();
        mem.store_u32(a.device + 4, u32::from(head)).unwrap();
        mem.store_u16(a.device + 2, 1).unwrap();
        assert_eq!(q.pop_used().unwrap().unwrap().id, u32::from(head));
        // The table was freed: allocating its size again reuses its address.
        assert_eq!(mem.alloc(32, 16).unwrap(), d.addr);
    }

    #[test]
    fn event_idx_decides_kicks_and_sets_used_event() {
        let mem = Arc::new(DriverMemory::new(0, 1 << 20).unwrap());
        let mut q = SplitQueue::new(mem.clone(), 8, true).unwrap();
        let a = q.addresses();
        // avail_event = 0: the device wants a kick when entry 0 becomes available.
        let h = q.add_chain(&[Buffer::writable(0x1000, 4)]).unwrap();
        assert!(q.publish(h).unwrap());
        // avail_event still 0: publishing entry 1 does not cross it.
        let h2 = q.add_chain(&[Buffer::writable(0x1000, 4)]).unwrap();
        assert!(!q.publish(h2).unwrap());
        mem.store_u16(a.device + 4 + 8 * 8, 2).unwrap();
        let h3 = q.add_chain(&[Buffer::writable(0x1000, 4)]).unwrap();
        assert!(q.publish(h3).unwrap());
        let (mut last_avail, mut used) = (0, 0);
        device_consume(&q, &mem, &mut last_avail, &mut used);
        q.pop_used().unwrap().unwrap();
        assert_eq!(mem.load_u16(a.driver + 4 + 2 * 8).unwrap(), 1);
    }

    #[test]
    fn a_polling_driver_asks_for_no_interrupt() {
        let mem = Arc::new(DriverMemory::new(0, 1 << 20).unwrap());
        let mut q = SplitQueue::new(mem.clone(), 8, true).unwrap();
        let used_event = q.addresses().driver + 4 + 2 * 8;
        q.set_interrupts_wanted(false).unwrap();
        assert_eq!(mem.load_u16(used_event).unwrap(), 0x8000);
        let h = q.add_chain(&[Buffer::writable(0x1000, 4)]).unwrap();
        q.publish(h).unwrap();
        let (mut last_avail, mut used) = (0, 0);
        device_consume(&q, &mem, &mut last_avail, &mut used);
        q.pop_used().unwrap().unwrap();
        assert_eq!(
            mem.load_u16(used_event).unwrap(),
            0x8001,
            "kept out of reach"
        );
        q.set_interrupts_wanted(true).unwrap();
        assert_eq!(mem.load_u16(used_event).unwrap(), 1);

        let mut plain = SplitQueue::new(mem.clone(), 8, false).unwrap();
        plain.set_interrupts_wanted(false).unwrap();
        assert_eq!(
            mem.load_u16(plain.addresses().driver).unwrap(),
            VIRTQ_AVAIL_F_NO_INTERRUPT
        );
    }

    #[test]
    fn no_notify_flag_suppresses_kicks_without_event_idx() {
        let mem = Arc::new(DriverMemory::new(0, 1 << 20).unwrap());
        let mut q = SplitQueue::new(mem.clone(), 8, false).unwrap();
        mem.store_u16(q.addresses().device, VIRTQ_USED_F_NO_NOTIFY)
            .unwrap();
        let h = q.add_chain(&[Buffer::writable(0x1000, 4)]).unwrap();
        assert!(!q.publish(h).unwrap());
    }

    #[test]
    fn need_event_matches_the_spec_formula_across_wraparound() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(1, 1, 0));
        assert!(need_event(0xffff, 2, 0xfffe));
        assert!(!need_event(5, 2, 0xfffe));
    }
}
