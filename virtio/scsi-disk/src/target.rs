//! The SCSI target: its logical units, unit attention after resets, and the answers for LUNs
//! that do not exist.

use std::collections::BTreeMap;

use super::cdb::Cdb;
use super::inquiry::inquiry_missing_lun;
use super::lun_config::{request_sense_data, Lun, LunConfig};
use super::commands::{decode, lookup, op, Command};
use super::outcome::Outcome;
use super::report_luns::report_luns;
use super::sense::Sense;

/// LUNs are addressed with 14 bits (flat space addressing).
pub const MAX_LUN: u16 = 16383;
/// Longest serial number we report (QEMU's limit too).
pub const MAX_SERIAL_LEN: usize = 36;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("LUN {0} is configured more than once")]
    DuplicateLun(u16),
    #[error("LUN {0} does not exist")]
    NoSuchLun(u16),
    #[error("LUN {0} is out of range (at most {MAX_LUN})")]
    LunOutOfRange(u16),
    #[error("LUN {lun}: logical block size {block_size} is neither 512 nor 4096")]
    BadBlockSize { lun: u16, block_size: u32 },
    #[error("LUN {0} has no blocks")]
    NoBlocks(u16),
    #[error("LUN {0} is larger than 2^64 bytes")]
    TooLarge(u16),
    #[error(
        "LUN {lun}: serial {serial:?} is not printable ASCII of at most {MAX_SERIAL_LEN} bytes"
    )]
    BadSerial { lun: u16, serial: String },
}

fn validate(config: &LunConfig) -> Result<(), TargetError> {
    let lun = config.lun;
    if lun > MAX_LUN {
        return Err(TargetError::LunOutOfRange(lun));
    }
    if !matches!(config.block_size, 512 | 4096) {
        return Err(TargetError::BadBlockSize {
            lun,
            block_size: config.block_size,
        });
    }
    if config.block_count == 0 {
        return Err(TargetError::NoBlocks(lun));
    }
    if config
        .block_count
        .checked_mul(u64::from(config.block_size))
        .is_none()
    {
        return Err(TargetError::TooLarge(lun));
    }
    let serial = &config.serial;
    if serial.len() > MAX_SERIAL_LEN
        || !serial
            .bytes()
            .all(|byte| byte.is_ascii_graphic() || byte == b' ')
    {
        return Err(TargetError::BadSerial {
            lun,
            serial: serial.clone(),
        });
    }
    Ok(())
}

/// Every logical unit of the one target the virtio-scsi device exposes.
///
/// The device passes every request for target 0 here, whether its LUN exists or not: like
/// QEMU's SCSI bus, the target itself answers for absent LUNs (see [`Target::execute`]).
#[derive(Debug)]
pub struct Target {
    luns: BTreeMap<u16, Lun>,
    /// What REPORT LUNS lists: every LUN, sorted, and LUN 0 even when absent.
    lun_list: Vec<u16>,
}

impl Target {
    /// Each LUN starts with a POWER ON, RESET unit attention pending and its write cache on.
    pub fn new(luns: Vec<LunConfig>) -> Result<Target, TargetError> {
        let mut map = BTreeMap::new();
        for config in luns {
            validate(&config)?;
            let lun = config.lun;
            if map.insert(lun, Lun::new(config)).is_some() {
                return Err(TargetError::DuplicateLun(lun));
            }
        }
        let mut lun_list: Vec<u16> = map.keys().copied().collect();
        if lun_list.first() != Some(&0) {
            lun_list.insert(0, 0);
        }
        Ok(Target {
            luns: map,
            lun_list,
        })
    }

    /// Adds a logical unit while the target runs: it starts with POWER ON, RESET pending, and
    /// every other LUN reports REPORTED LUNS DATA HAS CHANGED.
    pub fn add_lun(&mut self, config: LunConfig) -> Result<(), TargetError> {
        validate(&config)?;
        let lun = config.lun;
        if self.luns.contains_key(&lun) {
            return Err(TargetError::DuplicateLun(lun));
        }
        self.luns.insert(lun, Lun::new(config));
        self.luns_changed(lun);
        Ok(())
    }

    /// Removes a logical unit: later commands for it fail with LOGICAL UNIT NOT SUPPORTED, and
    /// every other LUN reports REPORTED LUNS DATA HAS CHANGED.
    pub fn remove_lun(&mut self, lun: u16) -> Result<LunConfig, TargetError> {
        let removed = self.luns.remove(&lun).ok_or(TargetError::NoSuchLun(lun))?;
        self.luns_changed(lun);
        Ok(removed.config)
    }

    /// The LUN now has `block_count` blocks; it reports CAPACITY DATA HAS CHANGED.
    pub fn resize_lun(&mut self, lun: u16, block_count: u64) -> Result<(), TargetError> {
        let unit = self.luns.get_mut(&lun).ok_or(TargetError::NoSuchLun(lun))?;
        let config = LunConfig {
            block_count,
            ..unit.config.clone()
        };
        validate(&config)?;
        unit.config = config;
        raise(unit, Sense::CAPACITY_DATA_HAS_CHANGED);
        Ok(())
    }

    fn luns_changed(&mut self, changed: u16) {
        self.lun_list = self.luns.keys().copied().collect();
        if self.lun_list.first() != Some(&0) {
            self.lun_list.insert(0, 0);
        }
        for (_, unit) in self.luns.iter_mut().filter(|(lun, _)| **lun != changed) {
            raise(unit, Sense::REPORTED_LUNS_DATA_HAS_CHANGED);
        }
    }

    pub fn has_lun(&self, lun: u16) -> bool {
        self.luns.contains_key(&lun)
    }

    /// The configured LUNs, by LUN number.
    pub fn luns(&self) -> impl Iterator<Item = &LunConfig> {
        self.luns.values().map(|lun| &lun.config)
    }

    /// Whether the LUN's write cache is on (MODE SELECT may turn it off). When it is off, every
    /// `DiskIo::Write` already has `fua` set. `false` for a LUN that does not exist.
    pub fn write_cache_enabled(&self, lun: u16) -> bool {
        self.luns.get(&lun).is_some_and(|lun| lun.write_cache)
    }

    /// I_T nexus reset or device reset: every LUN reports POWER ON, RESET once. The write cache
    /// setting survives, as in QEMU.
    pub fn reset_all(&mut self) {
        for lun in self.luns.values_mut() {
            lun.unit_attention = Some(Sense::POWER_ON_RESET_OCCURRED);
        }
    }

    /// LOGICAL UNIT RESET; returns `false` when the LUN does not exist.
    pub fn reset_lun(&mut self, lun: u16) -> bool {
        match self.luns.get_mut(&lun) {
            Some(lun) => {
                lun.unit_attention = Some(Sense::POWER_ON_RESET_OCCURRED);
                true
            }
            None => false,
        }
    }

    /// Executes one command. `cdb` may be longer than the command (the device passes all of
    /// virtio's cdb field); `data_out` holds the parameter data described by
    /// [`super::data_out_use`] and `data_out_len` is how many data-out bytes the driver supplied.
    ///
    /// A pending unit attention is reported (and cleared) by the first command other than
    /// INQUIRY, REPORT LUNS and REQUEST SENSE; REQUEST SENSE returns it and clears it.
    ///
    /// For a LUN that does not exist: INQUIRY says so (peripheral 0x3f for LUN 0, as QEMU, and
    /// 0x7f otherwise), REQUEST SENSE returns LOGICAL UNIT NOT SUPPORTED (NO SENSE for LUN 0),
    /// LUN 0 also answers REPORT LUNS and TEST UNIT READY, and anything else is CHECK
    /// CONDITION, LOGICAL UNIT NOT SUPPORTED.
    pub fn execute(&mut self, lun: u16, cdb: &[u8], data_out: &[u8], data_out_len: u64) -> Outcome {
        let cdb = Cdb(cdb);
        let Some(unit) = self.luns.get_mut(&lun) else {
            return missing_lun(lun, cdb, &self.lun_list).into();
        };
        if cdb.0.is_empty() {
            return Sense::INVALID_COMMAND_OPERATION_CODE.into();
        }
        if !matches!(
            cdb.byte(0),
            op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE
        ) {
            if let Some(sense) = unit.unit_attention.take() {
                return sense.into();
            }
        }
        let spec = match lookup(cdb) {
            Ok(spec) if spec.available_on(&unit.config) => spec,
            Ok(_) => return Sense::INVALID_COMMAND_OPERATION_CODE.into(),
            Err(sense) => return sense.into(),
        };
        if let Err(sense) = spec.check(cdb) {
            return sense.into();
        }
        unit.execute(spec, cdb, data_out, data_out_len, &self.lun_list)
            .into()
    }
}

/// A pending POWER ON, RESET stays: it already tells the initiator to re-read everything.
fn raise(unit: &mut Lun, sense: Sense) {
    if unit.unit_attention != Some(Sense::POWER_ON_RESET_OCCURRED) {
        unit.unit_attention = Some(sense);
    }
}

fn missing_lun(lun: u16, cdb: Cdb<'_>, lun_list: &[u16]) -> Result<Outcome, Sense> {
    let opcode = cdb.byte(0);
    if cdb.0.is_empty() {
        return Err(Sense::INVALID_COMMAND_OPERATION_CODE);
    }
    if lun != 0 && !matches!(opcode, op::INQUIRY | op::REQUEST_SENSE) {
        return Err(Sense::LOGICAL_UNIT_NOT_SUPPORTED);
    }
    match decode(cdb)?.command {
        Command::Inquiry => inquiry_missing_lun(cdb, lun),
        Command::RequestSense => {
            let sense = if lun == 0 {
                Sense::NO_SENSE
            } else {
                Sense::LOGICAL_UNIT_NOT_SUPPORTED
            };
            Ok(request_sense_data(cdb, sense))
        }
        Command::ReportLuns => report_luns(cdb, lun_list),
        Command::TestUnitReady => Ok(Outcome::good()),
        _ => Err(Sense::LOGICAL_UNIT_NOT_SUPPORTED),
    }
}
