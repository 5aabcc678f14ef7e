//! The one table of commands we implement. The dispatcher looks commands up here and REPORT
//! SUPPORTED OPERATION CODES lists this table, so the two can never disagree. Each entry's CDB
//! usage data (SPC-5 6.35.3) also drives the reserved-bit check: a CDB bit set where the usage
//! data has a zero is refused with INVALID FIELD IN CDB pointing at it.

use super::cdb::Cdb;
use super::lun_config::LunConfig;
use super::sense::Sense;

pub(crate) mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const VERIFY_10: u8 = 0x2f;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8a;
    pub const VERIFY_16: u8 = 0x8f;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    pub const MAINTENANCE_IN: u8 = 0xa3;
    pub const READ_12: u8 = 0xa8;
    pub const WRITE_12: u8 = 0xaa;
}

pub(crate) mod service_action {
    pub const READ_CAPACITY_16: u8 = 0x10;
    pub const REPORT_SUPPORTED_OPERATION_CODES: u8 = 0x0c;
    pub const REPORT_SUPPORTED_TASK_MANAGEMENT_FUNCTIONS: u8 = 0x0d;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    TestUnitReady,
    RequestSense,
    Read6,
    Write6,
    Inquiry,
    ModeSelect6,
    ModeSense6,
    StartStopUnit,
    PreventAllowMediumRemoval,
    ReadCapacity10,
    Read10,
    Write10,
    Verify10,
    SynchronizeCache10,
    WriteSame10,
    Unmap,
    ModeSelect10,
    ModeSense10,
    Read16,
    Write16,
    Verify16,
    SynchronizeCache16,
    WriteSame16,
    ReadCapacity16,
    ReportLuns,
    ReportSupportedOperationCodes,
    ReportSupportedTaskManagementFunctions,
    Read12,
    Write12,
}

pub(crate) struct CommandSpec {
    pub command: Command,
    pub opcode: u8,
    /// Service action in byte 1 bits 4..0, for opcodes that have them.
    pub service_action: Option<u8>,
    /// CDB usage data as REPORT SUPPORTED OPERATION CODES returns it; its length is the CDB's.
    pub usage: &'static [u8],
}

impl CommandSpec {
    /// Whether `lun` implements this command: UNMAP only exists where discard does.
    pub(crate) fn available_on(&self, lun: &LunConfig) -> bool {
        self.command != Command::Unmap || lun.discard
    }

    /// Checks the CDB's length and that no bit is set outside the usage data.
    pub(crate) fn check(&self, cdb: Cdb<'_>) -> Result<(), Sense> {
        if cdb.0.len() < self.usage.len() {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        for (index, &usage) in self.usage.iter().enumerate().skip(1) {
            let allowed = if index == 1 && self.service_action.is_some() {
                usage | 0x1f
            } else {
                usage
            };
            let stray = cdb.byte(index) & !allowed;
            if stray != 0 {
                let bit = 7 - stray.leading_zeros() as u8;
                return Err(Sense::invalid_field_in_cdb(index as u16, Some(bit)));
            }
        }
        Ok(())
    }
}

const fn spec(command: Command, usage: &'static [u8]) -> CommandSpec {
    CommandSpec {
        command,
        opcode: usage[0],
        service_action: None,
        usage,
    }
}

const fn spec_sa(command: Command, usage: &'static [u8]) -> CommandSpec {
    CommandSpec {
        command,
        opcode: usage[0],
        service_action: Some(usage[1] & 0x1f),
        usage,
    }
}

// Usage data notes: control bytes are 0 (no NACA, no linking); READ/WRITE allow DPO and FUA but
// no protection fields; VERIFY has no BYTCHK (only medium verification); WRITE SAME has no
// ANCHOR; REPORT SUPPORTED OPERATION CODES has no RCTD.
#[rustfmt::skip]
pub(crate) const COMMANDS: &[CommandSpec] = &[
    spec(Command::TestUnitReady, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0]),
    spec(Command::RequestSense, &[op::REQUEST_SENSE, 0x01, 0, 0, 0xff, 0]),
    spec(Command::Read6, &[op::READ_6, 0x1f, 0xff, 0xff, 0xff, 0]),
    spec(Command::Write6, &[op::WRITE_6, 0x1f, 0xff, 0xff, 0xff, 0]),
    spec(Command::Inquiry, &[op::INQUIRY, 0x01, 0xff, 0xff, 0xff, 0]),
    spec(Command::ModeSelect6, &[op::MODE_SELECT_6, 0x11, 0, 0, 0xff, 0]),
    spec(Command::ModeSense6, &[op::MODE_SENSE_6, 0x08, 0xff, 0xff, 0xff, 0]),
    spec(Command::StartStopUnit, &[op::START_STOP_UNIT, 0x01, 0, 0x0f, 0xf7, 0]),
    spec(Command::PreventAllowMediumRemoval, &[op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0x03, 0]),
    spec(Command::ReadCapacity10, &[op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    spec(Command::Read10, &[op::READ_10, 0x18, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]),
    spec(Command::Write10, &[op::WRITE_10, 0x18, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]),
    spec(Command::Verify10, &[op::VERIFY_10, 0x10, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]),
    spec(Command::SynchronizeCache10,
         &[op::SYNCHRONIZE_CACHE_10, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]),
    spec(Command::WriteSame10, &[op::WRITE_SAME_10, 0x08, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]),
    spec(Command::Unmap, &[op::UNMAP, 0, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0]),
    spec(Command::ModeSelect10, &[op::MODE_SELECT_10, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    spec(Command::ModeSense10, &[op::MODE_SENSE_10, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0]),
    spec(Command::Read16, &[op::READ_16, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                            0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
    spec(Command::Write16, &[op::WRITE_16, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                             0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
    spec(Command::Verify16, &[op::VERIFY_16, 0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                              0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
    spec(Command::SynchronizeCache16, &[op::SYNCHRONIZE_CACHE_16, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff,
                                        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
    spec(Command::WriteSame16, &[op::WRITE_SAME_16, 0x09, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
    spec_sa(Command::ReadCapacity16, &[op::SERVICE_ACTION_IN_16, service_action::READ_CAPACITY_16,
                                       0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0]),
    spec(Command::ReportLuns, &[op::REPORT_LUNS, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0]),
    spec_sa(Command::ReportSupportedOperationCodes,
            &[op::MAINTENANCE_IN, service_action::REPORT_SUPPORTED_OPERATION_CODES, 0x07, 0xff,
              0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]),
    spec_sa(Command::ReportSupportedTaskManagementFunctions,
            &[op::MAINTENANCE_IN, service_action::REPORT_SUPPORTED_TASK_MANAGEMENT_FUNCTIONS, 0x80,
              0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0]),
    spec(Command::Read12, &[op::READ_12, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
    spec(Command::Write12, &[op::WRITE_12, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
];

/// Whether any command with `opcode` has service actions.
pub(crate) fn has_service_actions(opcode: u8) -> bool {
    COMMANDS
        .iter()
        .any(|spec| spec.opcode == opcode && spec.service_action.is_some())
}

/// The table entry for `opcode` (and `service_action`, ignored for opcodes without them).
pub(crate) fn find(opcode: u8, service_action: u8) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|spec| {
        spec.opcode == opcode && spec.service_action.is_none_or(|sa| sa == service_action)
    })
}

/// Finds the command in `cdb`: unknown opcodes are INVALID COMMAND OPERATION CODE, unknown
/// service actions INVALID FIELD IN CDB.
pub(crate) fn lookup(cdb: Cdb<'_>) -> Result<&'static CommandSpec, Sense> {
    let Some(&opcode) = cdb.0.first() else {
        return Err(Sense::INVALID_COMMAND_OPERATION_CODE);
    };
    find(opcode, cdb.byte(1) & 0x1f).ok_or(if has_service_actions(opcode) {
        Sense::invalid_field_in_cdb(1, Some(4))
    } else {
        Sense::INVALID_COMMAND_OPERATION_CODE
    })
}

/// Finds the command in `cdb` and checks its fields against the usage data.
pub(crate) fn decode(cdb: Cdb<'_>) -> Result<&'static CommandSpec, Sense> {
    let spec = lookup(cdb)?;
    spec.check(cdb)?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_unique_and_sized_by_its_opcode_group() {
        for (i, spec) in COMMANDS.iter().enumerate() {
            let expected = match spec.opcode >> 5 {
                0 => 6,
                1 | 2 => 10,
                4 => 16,
                5 => 12,
                group => panic!("opcode {:#x} in group {group}", spec.opcode),
            };
            assert_eq!(spec.usage.len(), expected, "opcode {:#x}", spec.opcode);
            for other in &COMMANDS[i + 1..] {
                assert!(
                    (spec.opcode, spec.service_action) != (other.opcode, other.service_action),
                    "duplicate {:#x}",
                    spec.opcode
                );
                assert_ne!(spec.command, other.command);
            }
        }
    }

    #[test]
    fn stray_bits_point_at_the_highest_offending_bit() {
        let cdb = [op::READ_10, 0x38, 0, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(
            decode(Cdb(&cdb)).err(),
            Some(Sense::invalid_field_in_cdb(1, Some(5)))
        );
        let naca = [op::TEST_UNIT_READY, 0, 0, 0, 0, 0x04];
        assert_eq!(
            decode(Cdb(&naca)).err(),
            Some(Sense::invalid_field_in_cdb(5, Some(2)))
        );
    }

    #[test]
    fn unknown_opcode_service_action_and_short_cdb() {
        assert_eq!(
            decode(Cdb(&[0x04, 0, 0, 0, 0, 0])).err(),
            Some(Sense::INVALID_COMMAND_OPERATION_CODE)
        );
        assert_eq!(
            decode(Cdb(&[])).err(),
            Some(Sense::INVALID_COMMAND_OPERATION_CODE)
        );
        let mut sai = [0u8; 16];
        sai[0] = op::SERVICE_ACTION_IN_16;
        sai[1] = 0x11;
        assert_eq!(
            decode(Cdb(&sai)).err(),
            Some(Sense::invalid_field_in_cdb(1, Some(4)))
        );
        assert_eq!(
            decode(Cdb(&[op::READ_10, 0, 0])).err(),
            Some(Sense::INVALID_FIELD_IN_CDB)
        );
        sai[1] = 0x10;
        assert_eq!(
            decode(Cdb(&sai)).map(|s| s.command),
            Ok(Command::ReadCapacity16)
        );
    }
}
