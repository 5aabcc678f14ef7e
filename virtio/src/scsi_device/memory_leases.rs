//! The guest memory snapshots a queue's requests in flight point into.
//!
//! A request's iovecs point straight into guest memory, which must stay mapped until the engine
//! is done with them, even if the client unmaps it meanwhile. Rather than each request holding a
//! reference to its snapshot (a reference count shared by every queue, touched twice per
//! request), the queue leases each snapshot to its requests: it keeps one reference per snapshot
//! and counts the leases itself.

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::virtqueue::MemorySnapshot;

/// Which snapshot a request has leased (its address, unique while a lease on it is open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLease(usize);

#[derive(Default)]
pub struct MemoryLeases {
    /// The snapshot of the latest `lease`, with its open leases.
    newest: Option<(Arc<GuestMemoryMmap>, usize)>,
    /// Snapshots from before a remap that requests still lease (rarely any).
    older: Vec<(Arc<GuestMemoryMmap>, usize)>,
}

fn address(mem: &GuestMemoryMmap) -> usize {
    std::ptr::from_ref(mem) as usize
}

impl MemoryLeases {
    /// Keeps `snapshot` mapped for one more request, until `end`.
    #[inline]
    pub fn lease(&mut self, snapshot: &MemorySnapshot) -> MemoryLease {
        let id = address(snapshot);
        match &mut self.newest {
            Some((leased, requests)) if address(leased) == id => *requests += 1,
            _ => self.lease_another(snapshot),
        }
        MemoryLease(id)
    }

    /// `lease` of a snapshot other than the newest leased: the first request of a pass after
    /// the last one let go, or after a remap.
    #[inline(never)]
    fn lease_another(&mut self, snapshot: &MemorySnapshot) {
        let newest = Some((snapshot.clone().into_inner(), 1));
        if let Some(older) = std::mem::replace(&mut self.newest, newest) {
            self.older.push(older);
        }
    }

    /// The request of `lease` is done: its snapshot is dropped with its last lease.
    #[inline]
    pub fn end(&mut self, lease: MemoryLease) {
        match &mut self.newest {
            Some((leased, requests)) if address(leased) == lease.0 => {
                *requests -= 1;
                if *requests == 0 {
                    self.newest = None;
                }
            }
            _ => self.end_older(lease),
        }
    }

    /// `end` of a lease from before a remap.
    #[inline(never)]
    fn end_older(&mut self, lease: MemoryLease) {
        let Some(at) = self
            .older
            .iter()
            .position(|(leased, _)| address(leased) == lease.0)
        else {
            return;
        };
        self.older[at].1 -= 1;
        if self.older[at].1 == 0 {
            self.older.swap_remove(at);
        }
    }

    /// Snapshots leased (for tests).
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
    fn snapshots_live_until_their_last_lease() {
        let atomic = GuestMemoryAtomic::new(memory(0x1000));
        let mut leases = MemoryLeases::default();
        let first = atomic.memory();
        let a = leases.lease(&first);
        let b = leases.lease(&first);
        assert_eq!(a, b);
        assert_eq!(leases.len(), 1);

        // The client remaps: the old snapshot stays while its requests are out.
        atomic.lock().unwrap().replace(memory(0x2000));
        let weak = Arc::downgrade(&first.clone().into_inner());
        drop(first);
        let second = atomic.memory();
        let c = leases.lease(&second);
        assert_ne!(a, c);
        assert_eq!(leases.len(), 2);
        leases.end(a);
        assert!(weak.upgrade().is_some(), "one request still points into it");
        leases.end(b);
        assert!(weak.upgrade().is_none(), "dropped with its last lease");
        leases.end(c);
        assert_eq!(leases.len(), 0);
    }
}
