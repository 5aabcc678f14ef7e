//! The LUNs every queue reads: one immutable snapshot (a `scsi_disk::Target` whose LUNs carry
//! their disk), swapped whole when a LUN is added, removed or resized.
//!
//! A command reads the snapshot through an `arc-swap` guard: no lock, no map, and no write to
//! a cache line another queue reads (the guard borrows a slot of its own thread). A LUN's
//! run-time state (unit attention, write cache) is atomics inside the snapshot, shared by every
//! snapshot the LUN appears in.
//!
//! Only the main loop changes the table (the device's `&mut` methods); a change builds the new
//! snapshot, publishes it, and only then raises the unit attentions it causes, so that a driver
//! acting on one already reads the new snapshot.
//!
//! Who holds a disk: the snapshots that list it, a guard alive on a queue's thread (arc-swap
//! counts those once a snapshot is replaced), and the I/O engine for each request it holds
//! (see `block::Engine`). So when only the remover holds a removed LUN's disk, no command can
//! reach it any more.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use block::Disk;
use scsi_disk::{LunConfig, Target, TargetError};

/// What the device keeps per LUN beside its SCSI state.
#[derive(Clone)]
pub struct LunData {
    pub disk: Arc<Disk>,
}

pub type LunSnapshot = Target<LunData>;

pub struct LunTable {
    current: ArcSwap<LunSnapshot>,
}

impl LunTable {
    pub fn new(luns: Vec<(LunConfig, Arc<Disk>)>) -> Result<LunTable, TargetError> {
        let snapshot = Target::new(
            luns.into_iter()
                .map(|(config, disk)| (config, LunData { disk })),
        )?;
        Ok(LunTable {
            current: ArcSwap::from_pointee(snapshot),
        })
    }

    /// The snapshot to run a command against; hold it no longer than the command's start.
    pub fn load(&self) -> Guard<Arc<LunSnapshot>> {
        self.current.load()
    }

    /// Adds a LUN: it starts with POWER ON, RESET pending, and every other LUN reports
    /// REPORTED LUNS DATA HAS CHANGED.
    pub fn add(&self, config: LunConfig, disk: Arc<Disk>) -> Result<(), TargetError> {
        let lun = config.lun;
        let next = self.current.load().with_lun(config, LunData { disk })?;
        self.publish(next).report_luns_changed(lun);
        Ok(())
    }

    /// Removes a LUN and returns its disk: new commands for it fail with LOGICAL UNIT NOT
    /// SUPPORTED, and the other LUNs report REPORTED LUNS DATA HAS CHANGED. The LUN is drained
    /// once the caller holds the only reference to the disk.
    pub fn remove(&self, lun: u16) -> Result<Arc<Disk>, TargetError> {
        let (next, removed) = self.current.load().without_lun(lun)?;
        self.publish(next).report_luns_changed(lun);
        Ok(Arc::clone(&removed.data().disk))
    }

    /// The LUN's disk has a new size: the LUN takes it and reports CAPACITY DATA HAS CHANGED.
    pub fn resize(&self, lun: u16) -> Result<(), TargetError> {
        let current = self.current.load();
        let disk = &current
            .lun(lun)
            .ok_or(TargetError::NoSuchLun(lun))?
            .data()
            .disk;
        let block_count = disk.size() / u64::from(disk.logical_block_size());
        let next = current.with_block_count(lun, block_count)?;
        drop(current);
        self.publish(next).report_capacity_changed(lun);
        Ok(())
    }

    fn publish(&self, next: LunSnapshot) -> Arc<LunSnapshot> {
        let next = Arc::new(next);
        self.current.store(Arc::clone(&next));
        next
    }
}
