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
//! A removed LUN stays in the snapshots as draining, without a unit, so that its commands
//! still in flight find its counters when they complete. It is drained once no guard holds a
//! snapshot in which it was a unit (no new command can reach it) and its counters show
//! nothing in flight; then the device forgets it. Commands in flight hold no reference count
//! on their LUN: the I/O engine keeps the disk of each request it holds (see `block::Engine`).

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use arc_swap::{ArcSwap, Guard};
use block::Disk;
use scsi_disk::{LunConfig, Target, TargetError};

use super::lun_counters::{LunCounters, LunStats};

/// What the device keeps per LUN beside its SCSI state.
#[derive(Debug, Clone)]
pub struct LunData {
    pub disk: Arc<Disk>,
    /// Shared by every snapshot of the LUN, so a resize keeps them.
    pub counters: Arc<LunCounters>,
}

#[derive(Debug)]
pub struct LunSnapshot {
    target: Target<LunData>,
    /// Removed LUNs whose commands may still be in flight.
    draining: Vec<(u16, LunData)>,
}

impl std::ops::Deref for LunSnapshot {
    type Target = Target<LunData>;

    fn deref(&self) -> &Target<LunData> {
        &self.target
    }
}

impl LunSnapshot {
    /// The data of `lun`, a unit or draining: what its commands in flight complete against.
    pub fn data(&self, lun: u16) -> Option<&LunData> {
        match self.target.lun(lun) {
            Some(unit) => Some(unit.data()),
            None => self
                .draining
                .iter()
                .find(|(draining, _)| *draining == lun)
                .map(|(_, data)| data),
        }
    }
}

pub struct LunTable {
    current: ArcSwap<LunSnapshot>,
    generation: AtomicU64,
    request_queues: u16,
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

/// A LUN taken away from the target, while its commands may still be in flight.
#[derive(Debug)]
pub struct RemovedLun {
    lun: u16,
    data: LunData,
    /// The last snapshot in which the LUN was a unit, alive while a queue holds it (weak, so
    /// that it does not keep the other LUNs' disks open).
    last_with_it: Weak<LunSnapshot>,
}

impl RemovedLun {
    pub fn lun(&self) -> u16 {
        self.lun
    }

    /// Whether no command can reach the LUN any more: no queue holds a snapshot in which it
    /// was a unit, and none has a command for it in flight.
    pub fn drained(&self) -> bool {
        if self.last_with_it.strong_count() != 0 {
            return false;
        }
        // Pairs with the release of the last guard: what its queue counted before dropping it
        // is visible.
        fence(Ordering::Acquire);
        self.stats().in_flight == 0
    }

    /// Its counters, as they stand: `in_flight` says what has not come back.
    pub fn stats(&self) -> LunStats {
        self.data.counters.snapshot(self.lun)
    }
}

impl LunTable {
    pub fn new(
        luns: Vec<(LunConfig, Arc<Disk>)>,
        request_queues: u16,
    ) -> Result<LunTable, TargetError> {
        let target = Target::new(luns.into_iter().map(|(config, disk)| {
            let counters = Arc::new(LunCounters::new(request_queues));
            (config, LunData { disk, counters })
        }))?;
        Ok(LunTable {
            current: ArcSwap::from_pointee(LunSnapshot {
                target,
                draining: Vec::new(),
            }),
            generation: AtomicU64::new(0),
            request_queues,
        })
    }

    /// The snapshot to run commands against; hold it for one pass at most, so that a removed
    /// LUN drains while its queue is idle.
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

    /// What each LUN has done since it was added, by LUN number.
    pub fn stats(&self) -> Vec<LunStats> {
        self.current
            .load()
            .luns()
            .map(|unit| unit.data().counters.snapshot(unit.config().lun))
            .collect()
    }

    /// Adds a LUN, with counters from zero: it starts with POWER ON, RESET pending, and every
    /// other LUN reports REPORTED LUNS DATA HAS CHANGED.
    pub fn add(&self, config: LunConfig, disk: Arc<Disk>) -> Result<(), TargetError> {
        let lun = config.lun;
        let current = self.current.load();
        if current.data(lun).is_some() {
            return Err(TargetError::DuplicateLun(lun));
        }
        let counters = Arc::new(LunCounters::new(self.request_queues));
        let next = LunSnapshot {
            target: current
                .target
                .with_lun(config, LunData { disk, counters })?,
            draining: current.draining.clone(),
        };
        drop(current);
        self.publish(next).report_luns_changed(lun);
        Ok(())
    }

    /// Removes a LUN: new commands for it fail with LOGICAL UNIT NOT SUPPORTED, and the other
    /// LUNs report REPORTED LUNS DATA HAS CHANGED. Once the returned LUN is drained, call
    /// `forget`.
    pub fn remove(&self, lun: u16) -> Result<RemovedLun, TargetError> {
        let current = self.current.load_full();
        let (target, unit) = current.target.without_lun(lun)?;
        let mut draining = current.draining.clone();
        draining.push((lun, unit.data().clone()));
        self.publish(LunSnapshot { target, draining })
            .report_luns_changed(lun);
        Ok(RemovedLun {
            lun,
            data: unit.data().clone(),
            last_with_it: Arc::downgrade(&current),
        })
    }

    /// Drops a drained LUN from the snapshots, and with it its disk and counters.
    pub fn forget(&self, lun: u16) {
        let current = self.current.load();
        if current.target.lun(lun).is_some() || current.data(lun).is_none() {
            return;
        }
        let next = LunSnapshot {
            target: current.target.clone(),
            draining: current
                .draining
                .iter()
                .filter(|(draining, _)| *draining != lun)
                .cloned()
                .collect(),
        };
        drop(current);
        self.publish(next);
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
        let next = LunSnapshot {
            target: current.target.with_block_count(lun, block_count)?,
            draining: current.draining.clone(),
        };
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
        let table = LunTable::new(vec![(lun_config(0, &disk), Arc::clone(&disk))], 1).unwrap();
        (table, disk)
    }

    #[test]
    fn a_removed_lun_drains_once_no_guard_can_reach_it_and_nothing_is_in_flight() {
        let (table, disk) = table();
        let mut guard = table.load();
        let removed = table.remove(0).unwrap();
        assert!(guard.lun(0).is_some(), "the pass goes on with its snapshot");
        assert!(!removed.drained(), "so a command may still start");
        let counters = Arc::clone(&guard.data(0).unwrap().counters);
        counters.queue(0).started();
        table.refresh(&mut guard);
        assert!(guard.lun(0).is_none());
        assert!(
            guard.data(0).is_some(),
            "draining: its commands still complete"
        );
        assert!(!removed.drained(), "one command in flight");
        counters.queue(0).finished();
        assert!(removed.drained());
        assert_eq!(table.remove(0).err(), Some(TargetError::NoSuchLun(0)));
        let again = lun_config(0, &disk);
        assert_eq!(
            table.add(again.clone(), Arc::clone(&disk)).err(),
            Some(TargetError::DuplicateLun(0)),
            "not while it drains"
        );
        drop(guard);
        table.forget(0);
        assert!(table.load().data(0).is_none());
        drop(removed);
        assert_eq!(Arc::strong_count(&disk), 1, "nothing holds the disk");
        table.add(again, disk).unwrap();
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
