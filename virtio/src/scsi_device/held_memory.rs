//! The guest memory snapshots a queue's requests in flight point into.
//!
//! A request's iovecs point straight into guest memory, which must stay mapped until the engine
//! is done with them, even if the client unmaps it meanwhile. Rather than each request holding a
//! reference to its snapshot (a reference count shared by every queue, touched twice per
//! request), the queue holds each snapshot once and counts its requests itself.

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::virtqueue::MemorySnapshot;

/// Which snapshot a request holds (its address, unique while it is held).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryHold(usize);

#[derive(Default)]
pub struct HeldMemory {
    /// The snapshot of the latest `hold`, with its requests.
    newest: Option<(Arc<GuestMemoryMmap>, usize)>,
    /// Snapshots from before a remap that requests still hold (rarely any).
    older: Vec<(Arc<GuestMemoryMmap>, usize)>,
}

fn address(mem: &GuestMemoryMmap) -> usize {
    std::ptr::from_ref(mem) as usize
}

impl HeldMemory {
    /// Keeps `snapshot` mapped for one more request, until `release`.
    #[inline]
    pub fn hold(&mut self, snapshot: &MemorySnapshot) -> MemoryHold {
        let id = address(snapshot);
        match &mut self.newest {
            Some((held, requests)) if address(held) == id => *requests += 1,
            _ => self.hold_another(snapshot),
        }
        MemoryHold(id)
    }

    /// `hold` of a snapshot other than the newest held: the first request of a pass after
    /// the last one let go, or after a remap.
    #[inline(never)]
    fn hold_another(&mut self, snapshot: &MemorySnapshot) {
        let newest = Some((snapshot.clone().into_inner(), 1));
        if let Some(older) = std::mem::replace(&mut self.newest, newest) {
            self.older.push(older);
        }
    }

    /// A request holding `hold` is done: its snapshot is dropped with its last request.
    #[inline]
    pub fn release(&mut self, hold: MemoryHold) {
        match &mut self.newest {
            Some((held, requests)) if address(held) == hold.0 => {
                *requests -= 1;
                if *requests == 0 {
                    self.newest = None;
                }
            }
            _ => self.release_older(hold),
        }
    }

    /// `release` of a request from before a remap.
    #[inline(never)]
    fn release_older(&mut self, hold: MemoryHold) {
        let Some(at) = self
            .older
            .iter()
            .position(|(held, _)| address(held) == hold.0)
        else {
            return;
        };
        self.older[at].1 -= 1;
        if self.older[at].1 == 0 {
            self.older.swap_remove(at);
        }
    }

    /// Snapshots held (for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        usize::from(self.newest.is_some()) + self.older.len()
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryAtomic};

    use super::*;

    fn memory(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    #[test]
    fn snapshots_live_until_their_last_request() {
        let atomic = GuestMemoryAtomic::new(memory(0x1000));
        let mut held = HeldMemory::default();
        let first = atomic.memory();
        let a = held.hold(&first);
        let b = held.hold(&first);
        assert_eq!(a, b);
        assert_eq!(held.len(), 1);

        // The client remaps: the old snapshot stays while its requests are out.
        atomic.lock().unwrap().replace(memory(0x2000));
        let weak = Arc::downgrade(&first.clone().into_inner());
        drop(first);
        let second = atomic.memory();
        let c = held.hold(&second);
        assert_ne!(a, c);
        assert_eq!(held.len(), 2);
        held.release(a);
        assert!(weak.upgrade().is_some(), "one request still points into it");
        held.release(b);
        assert!(weak.upgrade().is_none(), "dropped with its last request");
        held.release(c);
        assert_eq!(held.len(), 0);
    }
}
