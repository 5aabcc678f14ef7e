//! The SCSI target: its logical units, as every request queue reads them at once without a
//! lock. The LUNs form one immutable snapshot ([`Target`]); the [`LunTable`] swaps it whole
//! when a LUN is added, removed or resized. Each LUN's run-time state (unit attention, write
//! cache) is atomics shared by every snapshot the LUN appears in.
//!
//! A queue takes the snapshot once per pass through an `arc-swap` guard (it borrows a slot of
//! its own thread: no lock, no map, and no write to a cache line another queue reads), and
//! before each command compares the table's generation with the guard's, a read of a line that
//! changes only when the LUNs do.
//!
//! One thread changes the table; a change builds the new snapshot, publishes it, bumps the
//! generation, and only then raises the unit attentions it causes: a command that reports one
//! makes the next command of its queue see the new generation, so a driver acting on a unit
//! attention reads the new snapshot.
//!
//! A removed LUN stays in the snapshots as draining, without a unit, so that its commands
//! still in flight find the data `D` its user keeps beside it (the device keeps the disk and
//! the counters there). Once no guard holds a snapshot in which it was a unit, no new command
//! can reach it, and its user decides, from its own counters, when it has drained.

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use arc_swap::{ArcSwap, Guard};

use super::commands::{self, Unit};
use super::lun_config::{LunConfig, LunConfigError};
use super::outcome::Outcome;
use super::unit_state::{UnitAttention, UnitState};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("LUN {0} is configured more than once")]
    DuplicateLun(u16),
    #[error("LUN {0} does not exist")]
    NoSuchLun(u16),
    #[error(transparent)]
    Config(#[from] LunConfigError),
}

/// One logical unit of a snapshot, with the data `D` its user keeps beside it (the device
/// keeps the disk there).
#[derive(Debug, Clone)]
pub struct Lun<D> {
    config: LunConfig,
    state: Arc<UnitState>,
    data: D,
}

impl<D> Lun<D> {
    pub fn config(&self) -> &LunConfig {
        &self.config
    }

    pub fn data(&self) -> &D {
        &self.data
    }

    /// Whether the write cache is on (MODE SELECT may turn it off). When it is off, every
    /// `DiskIo::Write` and `DiskIo::WriteSame` already has `fua` set.
    pub fn write_cache_enabled(&self) -> bool {
        self.state.write_cache()
    }
}

/// One snapshot of every logical unit of the one target the virtio-scsi device exposes, sorted
/// by LUN, and of the removed LUNs that still drain.
///
/// The device passes every request for target 0 here, whether its LUN exists or not: like
/// QEMU's SCSI bus, the target itself answers for absent LUNs (see [`Target::execute`]).
#[derive(Debug, Clone)]
pub struct Target<D = ()> {
    luns: Vec<Lun<D>>,
    /// What REPORT LUNS lists: every LUN, sorted, and LUN 0 even when absent.
    lun_list: Vec<u16>,
    /// Removed LUNs whose commands may still be in flight.
    draining: Vec<(u16, D)>,
}

impl<D: Clone> Target<D> {
    /// Each LUN starts with a POWER ON, RESET unit attention pending and its write cache on.
    pub fn new(luns: impl IntoIterator<Item = (LunConfig, D)>) -> Result<Target<D>, TargetError> {
        let mut target = Target {
            luns: Vec::new(),
            lun_list: Vec::new(),
            draining: Vec::new(),
        };
        for (config, data) in luns {
            target.insert(config, data)?;
        }
        target.list_luns();
        Ok(target)
    }

    /// This target with one more logical unit, which starts with POWER ON, RESET pending.
    fn with_lun(&self, config: LunConfig, data: D) -> Result<Target<D>, TargetError> {
        if self.data(config.lun).is_some() {
            return Err(TargetError::DuplicateLun(config.lun));
        }
        let mut target = self.clone();
        target.insert(config, data)?;
        target.list_luns();
        Ok(target)
    }

    /// This target with `lun` draining instead of a unit, and the unit's data.
    fn without_lun(&self, lun: u16) -> Result<(Target<D>, D), TargetError> {
        let at = self.position(lun)?;
        let mut target = self.clone();
        let removed = target.luns.remove(at);
        target.draining.push((lun, removed.data.clone()));
        target.list_luns();
        Ok((target, removed.data))
    }

    /// This target without the draining `lun`.
    fn without_draining(&self, lun: u16) -> Target<D> {
        let mut target = self.clone();
        target.draining.retain(|(draining, _)| *draining != lun);
        target
    }

    /// This target with `lun` at `block_count` blocks.
    fn with_block_count(&self, lun: u16, block_count: u64) -> Result<Target<D>, TargetError> {
        let at = self.position(lun)?;
        let config = LunConfig {
            block_count,
            ..self.luns[at].config.clone()
        };
        config.validate()?;
        let mut target = self.clone();
        target.luns[at].config = config;
        Ok(target)
    }

    fn insert(&mut self, config: LunConfig, data: D) -> Result<(), TargetError> {
        config.validate()?;
        let lun = config.lun;
        let at = match self.luns.binary_search_by_key(&lun, |unit| unit.config.lun) {
            Ok(_) => return Err(TargetError::DuplicateLun(lun)),
            Err(at) => at,
        };
        let unit = Lun {
            config,
            state: Arc::new(UnitState::new()),
            data,
        };
        self.luns.insert(at, unit);
        Ok(())
    }

    fn list_luns(&mut self) {
        self.lun_list = self.luns.iter().map(|unit| unit.config.lun).collect();
        if self.lun_list.first() != Some(&0) {
            self.lun_list.insert(0, 0);
        }
    }
}

impl<D> Target<D> {
    #[inline(always)]
    fn position(&self, lun: u16) -> Result<usize, TargetError> {
        // LUNs numbered from 0 without gaps, the usual case, sit at their own number: one
        // comparison instead of a search.
        if self
            .luns
            .get(usize::from(lun))
            .is_some_and(|unit| unit.config.lun == lun)
        {
            return Ok(usize::from(lun));
        }
        self.luns
            .binary_search_by_key(&lun, |unit| unit.config.lun)
            .map_err(|_| TargetError::NoSuchLun(lun))
    }

    #[inline(always)]
    pub fn lun(&self, lun: u16) -> Option<&Lun<D>> {
        self.position(lun).ok().map(|at| &self.luns[at])
    }

    /// The data of `lun`, a unit or draining: what its commands in flight complete against.
    pub fn data(&self, lun: u16) -> Option<&D> {
        match self.lun(lun) {
            Some(unit) => Some(&unit.data),
            None => self
                .draining
                .iter()
                .find(|(draining, _)| *draining == lun)
                .map(|(_, data)| data),
        }
    }

    /// The logical units, by LUN number.
    pub fn luns(&self) -> impl Iterator<Item = &Lun<D>> {
        self.luns.iter()
    }

    /// Every LUN but `changed` reports REPORTED LUNS DATA HAS CHANGED: `changed` was added or
    /// removed.
    fn report_luns_changed(&self, changed: u16) {
        for unit in self.luns.iter().filter(|unit| unit.config.lun != changed) {
            unit.state.raise(UnitAttention::ReportedLunsDataChanged);
        }
    }

    /// I_T nexus reset or device reset: every LUN reports POWER ON, RESET once. The write cache
    /// setting survives, as in QEMU.
    pub fn reset_all(&self) {
        for unit in &self.luns {
            unit.state.reset();
        }
    }

    /// LOGICAL UNIT RESET; returns `false` when the LUN does not exist.
    pub fn reset_lun(&self, lun: u16) -> bool {
        self.lun(lun).map(|unit| unit.state.reset()).is_some()
    }

    /// Executes one command. `cdb` may be longer than the command (the device passes all of
    /// virtio's cdb field); `data_out` holds the parameter data described by
    /// [`crate::data_out_use`] and `data_out_len` is how many data-out bytes the driver
    /// supplied.
    ///
    /// A pending unit attention is reported (and cleared) by the first command other than
    /// INQUIRY, REPORT LUNS and REQUEST SENSE, on whichever queue it comes; REQUEST SENSE
    /// returns it and clears it.
    ///
    /// For a LUN that does not exist: INQUIRY says so (peripheral 0x3f for LUN 0, as QEMU, and
    /// 0x7f otherwise), REQUEST SENSE returns LOGICAL UNIT NOT SUPPORTED (NO SENSE for LUN 0),
    /// LUN 0 also answers REPORT LUNS and TEST UNIT READY, and anything else is CHECK
    /// CONDITION, LOGICAL UNIT NOT SUPPORTED.
    pub fn execute(&self, lun: u16, cdb: &[u8], data_out: &[u8], data_out_len: u64) -> Outcome {
        self.execute_on(lun, self.lun(lun), cdb, data_out, data_out_len)
    }

    /// `execute` for a caller that looked `lun` up already: `unit` is `self.lun(lun)`, so the
    /// request path finds a LUN once per command.
    pub fn execute_on(
        &self,
        lun: u16,
        unit: Option<&Lun<D>>,
        cdb: &[u8],
        data_out: &[u8],
        data_out_len: u64,
    ) -> Outcome {
        let unit = unit.map(|unit| Unit {
            config: &unit.config,
            state: &unit.state,
        });
        commands::execute(unit, lun, cdb, data_out, data_out_len, &self.lun_list)
    }
}

/// The target every queue reads: the current snapshot, and a generation that changes with it.
pub struct LunTable<D> {
    current: ArcSwap<Target<D>>,
    generation: AtomicU64,
}

/// A snapshot held for a pass of a queue, with the generation it was taken at.
pub struct LunGuard<D> {
    snapshot: Guard<Arc<Target<D>>>,
    generation: u64,
}

impl<D> std::ops::Deref for LunGuard<D> {
    type Target = Target<D>;

    fn deref(&self) -> &Target<D> {
        &self.snapshot
    }
}

/// A LUN taken away from the target, while its commands may still be in flight.
#[derive(Debug)]
pub struct RemovedLun<D> {
    lun: u16,
    data: D,
    /// The last snapshot in which the LUN was a unit, alive while a queue holds it (weak, so
    /// that it does not keep the other LUNs' data).
    last_with_it: Weak<Target<D>>,
}

impl<D> RemovedLun<D> {
    pub fn lun(&self) -> u16 {
        self.lun
    }

    pub fn data(&self) -> &D {
        &self.data
    }

    /// Whether a queue may still start a command for the LUN: one holds a snapshot in which it
    /// was a unit. Once it returns `false`, what the queues recorded in `data` before dropping
    /// their snapshots is visible.
    pub fn reachable(&self) -> bool {
        if self.last_with_it.strong_count() != 0 {
            return true;
        }
        // Pairs with the release of the last guard.
        fence(Ordering::Acquire);
        false
    }
}

impl<D: Clone> LunTable<D> {
    pub fn new(luns: impl IntoIterator<Item = (LunConfig, D)>) -> Result<LunTable<D>, TargetError> {
        Ok(LunTable {
            current: ArcSwap::from_pointee(Target::new(luns)?),
            generation: AtomicU64::new(0),
        })
    }

    /// The snapshot to run commands against; hold it for one pass at most, so that a removed
    /// LUN drains while its queue is idle.
    pub fn load(&self) -> LunGuard<D> {
        // The generation first: a snapshot published in between is newer than the generation
        // says, which only costs one more load.
        let generation = self.generation.load(Ordering::Acquire);
        LunGuard {
            snapshot: self.current.load(),
            generation,
        }
    }

    /// Replaces `guard` with the current snapshot if the LUNs changed since it was taken.
    pub fn refresh(&self, guard: &mut LunGuard<D>) {
        if self.generation.load(Ordering::Acquire) != guard.generation {
            *guard = self.load();
        }
    }

    /// Adds a LUN (not while a LUN of that number drains): it starts with POWER ON, RESET
    /// pending, and every other LUN reports REPORTED LUNS DATA HAS CHANGED.
    pub fn add(&self, config: LunConfig, data: D) -> Result<(), TargetError> {
        let lun = config.lun;
        let next = self.current.load().with_lun(config, data)?;
        self.publish(next).report_luns_changed(lun);
        Ok(())
    }

    /// Removes a LUN: new commands for it fail with LOGICAL UNIT NOT SUPPORTED, and the other
    /// LUNs report REPORTED LUNS DATA HAS CHANGED. Once the returned LUN has drained, call
    /// [`LunTable::forget`].
    pub fn remove(&self, lun: u16) -> Result<RemovedLun<D>, TargetError> {
        let current = self.current.load_full();
        let (next, data) = current.without_lun(lun)?;
        self.publish(next).report_luns_changed(lun);
        Ok(RemovedLun {
            lun,
            data,
            last_with_it: Arc::downgrade(&current),
        })
    }

    /// Drops a drained LUN from the snapshots, and with it its data.
    pub fn forget(&self, lun: u16) {
        let current = self.current.load();
        if current.lun(lun).is_some() || current.data(lun).is_none() {
            return;
        }
        let next = current.without_draining(lun);
        drop(current);
        self.publish(next);
    }

    /// `lun` takes `block_count` blocks and reports CAPACITY DATA HAS CHANGED.
    pub fn resize(&self, lun: u16, block_count: u64) -> Result<(), TargetError> {
        let next = self.current.load().with_block_count(lun, block_count)?;
        let published = self.publish(next);
        if let Some(unit) = published.lun(lun) {
            unit.state.raise(UnitAttention::CapacityDataChanged);
        }
        Ok(())
    }

    fn publish(&self, next: Target<D>) -> Arc<Target<D>> {
        let next = Arc::new(next);
        self.current.store(Arc::clone(&next));
        self.generation.fetch_add(1, Ordering::Release);
        next
    }
}
