//! What the device keeps per LUN beside its SCSI state: the disk and the LUN's counters, carried
//! by every snapshot of the LUN table the queues read (`scsi_disk::LunTable`), and a removed
//! LUN until its commands in flight have come back.
//!
//! Commands in flight hold no reference count on their LUN: the I/O engine keeps the disk of
//! each request it holds (see `block::Engine`), and a removed LUN's data stays in the snapshots,
//! draining, until the device forgets it.

use std::sync::Arc;

use block::Disk;

use super::lun_counters::{LunCounters, LunStats};

/// The LUNs every queue reads, each with its disk and counters.
pub type LunTable = scsi_disk::LunTable<LunData>;
/// The snapshot of the LUNs a queue holds for one pass.
pub type LunGuard = scsi_disk::LunGuard<LunData>;

#[derive(Debug, Clone)]
pub struct LunData {
    pub disk: Arc<Disk>,
    /// Shared by every snapshot of the LUN, so a resize keeps them.
    pub counters: Arc<LunCounters>,
}

impl LunData {
    /// A LUN served by `disk`, its counters from zero.
    pub fn new(disk: Arc<Disk>, request_queues: u16) -> LunData {
        LunData {
            disk,
            counters: Arc::new(LunCounters::new(request_queues)),
        }
    }
}

/// A LUN taken away from the target, while its commands may still be in flight.
#[derive(Debug)]
pub struct RemovedLun(pub(super) scsi_disk::RemovedLun<LunData>);

impl RemovedLun {
    pub fn lun(&self) -> u16 {
        self.0.lun()
    }

    /// Whether no command can reach the LUN any more: no queue holds a snapshot in which it
    /// was a unit, and none has a command for it in flight.
    pub fn drained(&self) -> bool {
        !self.0.reachable() && self.stats().in_flight == 0
    }

    /// The disk that served it, for the flush that ends its removal.
    pub fn disk(&self) -> &Arc<Disk> {
        &self.0.data().disk
    }

    /// Its counters, as they stand: `in_flight` says what has not come back.
    pub fn stats(&self) -> LunStats {
        self.0.data().counters.snapshot(self.lun())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi_device::test_driver::lun_config;

    #[test]
    fn a_removed_lun_drains_once_no_guard_can_reach_it_and_nothing_is_in_flight() {
        let disk = Arc::new(Disk::null(1 << 20, 512).unwrap());
        let data = LunData::new(Arc::clone(&disk), 1);
        let table = LunTable::new([(lun_config(0, &disk), data)]).unwrap();
        let mut guard = table.load();
        let removed = RemovedLun(table.remove(0).unwrap());
        assert!(!removed.drained(), "the pass may still start a command");
        let counters = Arc::clone(&guard.data(0).unwrap().counters);
        counters.queue(0).started();
        table.refresh(&mut guard);
        drop(guard);
        assert!(!removed.drained(), "one command in flight");
        counters.queue(0).finished();
        assert!(removed.drained());
        table.forget(0);
        drop((removed, counters));
        assert_eq!(Arc::strong_count(&disk), 1, "nothing holds the disk");
    }
}
