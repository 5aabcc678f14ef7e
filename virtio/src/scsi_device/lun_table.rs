//! The LUNs every queue reads: one immutable snapshot (a `scsi_disk::Target` whose LUNs carry
//! their disk), swapped whole when a LUN is added, removed or resized.
//!
//! A queue takes the snapshot once per pass through an `arc-swap` guard (it borrows a slot of
//! its own thread: no lock, no map, and no write to a cache line another queue reads), and
//! before each command compares the table's generation with the guard's, a read of a line that
//! changes only when the LUNs do. A LUN's run-time state (unit attention, write cache) is
//! atomics inside the snapshot, shared by every snapshot the LUN appears in.
//!
//! Only the main loop changes the table (the device's `&mut` methods); a change builds the new
//! snapshot, publishes it, bumps the generation, and only then raises the unit attentions it
//! causes: a command that reports one makes the next command of its queue see the new
//! generation, so a driver acting on a unit attention reads the new snapshot.
//!
//! Who holds a disk: the snapshots that list it, a guard alive on a queue's thread (arc-swap
//! counts those once a snapshot is replaced), and the I/O engine for each request it holds
//! (see `block::Engine`). So when only the remover holds a removed LUN's disk, no command can
//! reach it any more.

use std::sync::atomic::{AtomicU64, Ordering};
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
    generation: AtomicU64,
}

/// A snapshot held for a pass of a queue, with the generation it was taken at.
pub struct LunGuard {
    snapshot: Guard<Arc<LunSnapshot>>,
    generation: u64,
}

impl std::ops::Deref for LunGuard {
    type Target = LunSnapshot;

    fn deref(&self) -> &LunSnapshot {
        &self.snapshot
    }
}

impl LunTable {
    pub fn new(luns: Vec<(LunConfig, Arc<Disk>)>) -> Result<LunTable, TargetError> {
        let snapshot = Target::new(
            luns.into_iter()
                .map(|(config, disk)| (config, LunData { disk })),
        )?;
        Ok(LunTable {
            current: ArcSwap::from_pointee(snapshot),
            generation: AtomicU64::new(0),
        })
    }

    /// The snapshot to run commands against; hold it for one pass at most, so that an idle
    /// queue holds no disk.
    pub fn load(&self) -> LunGuard {
        // The generation first: a snapshot published in between is newer than the generation
        // says, which only costs one more load.
        let generation = self.generation.load(Ordering::Acquire);
        LunGuard {
            snapshot: self.current.load(),
            generation,
        }
    }

    /// Replaces `guard` with the current snapshot if the LUNs changed since it was taken.
    pub fn refresh(&self, guard: &mut LunGuard) {
        if self.generation.load(Ordering::Acquire) != guard.generation {
            *guard = self.load();
        }
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
        self.generation.fetch_add(1, Ordering::Release);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi_device::test_driver::lun_config;
    use scsi_disk::{Outcome, Sense};

    const TUR: [u8; 6] = [0; 6];
    const READ_CAPACITY_10: [u8; 10] = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    fn table() -> (LunTable, Arc<Disk>) {
        let disk = Arc::new(Disk::null(1 << 20, 512).unwrap());
        let table = LunTable::new(vec![(lun_config(0, &disk), Arc::clone(&disk))]).unwrap();
        (table, disk)
    }

    #[test]
    fn a_held_guard_keeps_a_removed_disk_and_refresh_drops_it() {
        let (table, disk) = table();
        let mut guard = table.load();
        let removed = table.remove(0).unwrap();
        drop(disk);
        assert!(guard.lun(0).is_some(), "the pass goes on with its snapshot");
        assert_eq!(Arc::strong_count(&removed), 2, "so the LUN is not drained");
        table.refresh(&mut guard);
        assert!(guard.lun(0).is_none());
        assert_eq!(Arc::strong_count(&removed), 1, "drained");
        assert_eq!(table.remove(0).err(), Some(TargetError::NoSuchLun(0)));
    }

    #[test]
    fn a_resize_is_published_before_its_unit_attention() {
        let (table, disk) = table();
        let mut guard = table.load();
        assert_eq!(
            guard.execute(0, &TUR, &[], 0),
            Outcome::CheckCondition(Sense::POWER_ON_RESET_OCCURRED)
        );
        disk.resize(Some(2 << 20)).unwrap();
        table.resize(0).unwrap();
        // The pass's snapshot is old, but the command that takes the unit attention makes the
        // next one refresh.
        assert_eq!(
            guard.execute(0, &TUR, &[], 0),
            Outcome::CheckCondition(Sense::CAPACITY_DATA_HAS_CHANGED)
        );
        table.refresh(&mut guard);
        let Outcome::Good { data_in } = guard.execute(0, &READ_CAPACITY_10, &[], 0) else {
            panic!("READ CAPACITY failed");
        };
        assert_eq!(data_in[..4], 4095u32.to_be_bytes());
    }

    #[test]
    fn an_added_lun_is_seen_after_refresh_and_the_others_are_told() {
        let (table, _) = table();
        let mut guard = table.load();
        guard.execute(0, &TUR, &[], 0);
        let disk = Arc::new(Disk::null(1 << 20, 512).unwrap());
        table.add(lun_config(3, &disk), disk).unwrap();
        assert!(guard.lun(3).is_none());
        table.refresh(&mut guard);
        assert!(guard.lun(3).is_some());
        assert_eq!(
            guard.execute(0, &TUR, &[], 0),
            Outcome::CheckCondition(Sense::REPORTED_LUNS_DATA_HAS_CHANGED)
        );
    }
}
