//! The SCSI target: an immutable snapshot of its logical units, read by every request queue
//! at once without a lock. Adding, removing or resizing a LUN builds a new snapshot; each LUN's
//! run-time state (unit attention, write cache) is shared by the snapshots it appears in.

use std::sync::Arc;

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

/// Every logical unit of the one target the virtio-scsi device exposes, sorted by LUN.
///
/// The device passes every request for target 0 here, whether its LUN exists or not: like
/// QEMU's SCSI bus, the target itself answers for absent LUNs (see [`Target::execute`]).
#[derive(Debug, Clone)]
pub struct Target<D = ()> {
    luns: Vec<Lun<D>>,
    /// What REPORT LUNS lists: every LUN, sorted, and LUN 0 even when absent.
    lun_list: Vec<u16>,
}

impl<D: Clone> Target<D> {
    /// Each LUN starts with a POWER ON, RESET unit attention pending and its write cache on.
    pub fn new(luns: impl IntoIterator<Item = (LunConfig, D)>) -> Result<Target<D>, TargetError> {
        let mut target = Target {
            luns: Vec::new(),
            lun_list: Vec::new(),
        };
        for (config, data) in luns {
            target.insert(config, data)?;
        }
        target.list_luns();
        Ok(target)
    }

    /// This target with one more logical unit, which starts with POWER ON, RESET pending.
    /// Publish it, then call [`Target::report_luns_changed`].
    pub fn with_lun(&self, config: LunConfig, data: D) -> Result<Target<D>, TargetError> {
        let mut target = self.clone();
        target.insert(config, data)?;
        target.list_luns();
        Ok(target)
    }

    /// This target without `lun`, and the unit taken out: later commands for it fail with
    /// LOGICAL UNIT NOT SUPPORTED. Publish it, then call [`Target::report_luns_changed`].
    pub fn without_lun(&self, lun: u16) -> Result<(Target<D>, Lun<D>), TargetError> {
        let at = self.position(lun)?;
        let mut target = self.clone();
        let removed = target.luns.remove(at);
        target.list_luns();
        Ok((target, removed))
    }

    /// This target with `lun` at `block_count` blocks. Publish it, then call
    /// [`Target::report_capacity_changed`].
    pub fn with_block_count(&self, lun: u16, block_count: u64) -> Result<Target<D>, TargetError> {
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
    fn position(&self, lun: u16) -> Result<usize, TargetError> {
        self.luns
            .binary_search_by_key(&lun, |unit| unit.config.lun)
            .map_err(|_| TargetError::NoSuchLun(lun))
    }

    pub fn lun(&self, lun: u16) -> Option<&Lun<D>> {
        self.position(lun).ok().map(|at| &self.luns[at])
    }

    /// The logical units, by LUN number.
    pub fn luns(&self) -> impl Iterator<Item = &Lun<D>> {
        self.luns.iter()
    }

    /// Every LUN but `changed` reports REPORTED LUNS DATA HAS CHANGED: `changed` was added or
    /// removed. Call it once the snapshot is published, so that a driver acting on the unit
    /// attention reads the new list.
    pub fn report_luns_changed(&self, changed: u16) {
        for unit in self.luns.iter().filter(|unit| unit.config.lun != changed) {
            unit.state.raise(UnitAttention::ReportedLunsDataChanged);
        }
    }

    /// `lun` reports CAPACITY DATA HAS CHANGED. Call it once the snapshot with the new size is
    /// published.
    pub fn report_capacity_changed(&self, lun: u16) {
        if let Some(unit) = self.lun(lun) {
            unit.state.raise(UnitAttention::CapacityDataChanged);
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
        let unit = self.lun(lun).map(|unit| Unit {
            config: &unit.config,
            state: &unit.state,
        });
        commands::execute(unit, lun, cdb, data_out, data_out_len, &self.lun_list)
    }
}
