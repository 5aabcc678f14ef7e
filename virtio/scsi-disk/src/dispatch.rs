//! Runs one command: reports a pending unit attention, finds the command in the table, checks
//! its CDB, and hands it to the module that implements it; or answers for a LUN that does not
//! exist.

use super::cdb::Cdb;
use super::commands::{by_opcode, decode, lookup, Command, CommandSpec, MissingLun};
use super::lun_config::LunConfig;
use super::outcome::Outcome;
use super::sense::Sense;
use super::unit_state::UnitState;
use super::{
    capacity, inquiry, io_commands, mode_pages, report_luns, report_opcodes, unmap, write_same,
};

/// An existing logical unit, as a command sees it.
#[derive(Clone, Copy)]
pub(crate) struct Unit<'a> {
    pub config: &'a LunConfig,
    pub state: &'a UnitState,
}

/// Executes `cdb` for LUN `lun`, which is `unit` or does not exist. See
/// [`crate::Target::execute`] for the contract.
pub(crate) fn execute(
    unit: Option<Unit<'_>>,
    lun: u16,
    cdb: &[u8],
    data_out: &[u8],
    data_out_len: u64,
    lun_list: &[u16],
) -> Outcome {
    let cdb = Cdb(cdb);
    let Some(unit) = unit else {
        return missing_lun(lun, cdb, lun_list).into();
    };
    let Some(&opcode) = cdb.0.first() else {
        return Sense::INVALID_COMMAND_OPERATION_CODE.into();
    };
    if !by_opcode(opcode).is_some_and(|spec| spec.ignores_unit_attention) {
        if let Some(sense) = unit.state.take_unit_attention() {
            return sense.into();
        }
    }
    let spec = match lookup(cdb) {
        Ok(spec) if spec.available_on(unit.config) => spec,
        Ok(_) => return Sense::INVALID_COMMAND_OPERATION_CODE.into(),
        Err(sense) => return sense.into(),
    };
    if let Err(sense) = spec.check(cdb) {
        return sense.into();
    }
    run(spec, cdb, unit, data_out, data_out_len, lun_list).into()
}

fn run(
    spec: &CommandSpec,
    cdb: Cdb<'_>,
    unit: Unit<'_>,
    data_out: &[u8],
    data_out_len: u64,
    lun_list: &[u16],
) -> Result<Outcome, Sense> {
    let Unit { config, state } = unit;
    match spec.command {
        Command::TestUnitReady | Command::PreventAllowMediumRemoval => Ok(Outcome::good()),
        Command::RequestSense => {
            let sense = state.take_unit_attention().unwrap_or(Sense::NO_SENSE);
            Ok(request_sense(cdb, sense))
        }
        Command::Inquiry => inquiry::inquiry(cdb, config),
        Command::ReadCapacity10 => Ok(capacity::read_capacity_10(config)),
        Command::ReadCapacity16 => Ok(capacity::read_capacity_16(cdb, config)),
        Command::Read6 | Command::Read10 | Command::Read12 | Command::Read16 => {
            io_commands::read(cdb, config)
        }
        Command::Write6 | Command::Write10 | Command::Write12 | Command::Write16 => {
            io_commands::write(cdb, config, state.write_cache())
        }
        Command::Verify10 | Command::Verify16 => io_commands::verify(cdb, config),
        Command::SynchronizeCache10 | Command::SynchronizeCache16 => {
            io_commands::synchronize_cache(cdb, config)
        }
        Command::StartStopUnit => Ok(io_commands::start_stop_unit(cdb)),
        Command::WriteSame10 | Command::WriteSame16 => {
            write_same::write_same(cdb, config, state.write_cache(), data_out, data_out_len)
        }
        Command::Unmap => unmap::unmap(cdb, config, data_out, data_out_len),
        Command::ModeSense6 | Command::ModeSense10 => {
            mode_pages::mode_sense(cdb, config, state.write_cache())
        }
        Command::ModeSelect6 | Command::ModeSelect10 => {
            let write_cache =
                mode_pages::mode_select(cdb, config, state.write_cache(), data_out, data_out_len)?;
            state.set_write_cache(write_cache);
            Ok(Outcome::good())
        }
        Command::ReportSupportedOperationCodes => {
            report_opcodes::report_supported_operation_codes(cdb, config)
        }
        Command::ReportSupportedTaskManagementFunctions => Ok(
            report_opcodes::report_supported_task_management_functions(cdb),
        ),
        Command::ReportLuns => report_luns::report_luns(cdb, lun_list),
    }
}

/// The answers for a LUN that does not exist follow the table's missing-LUN column: INQUIRY
/// says nothing is there (peripheral 0x3f for LUN 0, as QEMU, and 0x7f otherwise), REQUEST
/// SENSE says why (NO SENSE for LUN 0), LUN 0 also answers REPORT LUNS and TEST UNIT READY,
/// and anything else is LOGICAL UNIT NOT SUPPORTED, before its CDB is even checked.
fn missing_lun(lun: u16, cdb: Cdb<'_>, lun_list: &[u16]) -> Result<Outcome, Sense> {
    let Some(&opcode) = cdb.0.first() else {
        return Err(Sense::INVALID_COMMAND_OPERATION_CODE);
    };
    let answered = |spec: &CommandSpec| match spec.missing_lun {
        MissingLun::Unsupported => false,
        MissingLun::OnLunZero => lun == 0,
        MissingLun::OnAnyLun => true,
    };
    if lun != 0 && !by_opcode(opcode).is_some_and(answered) {
        return Err(Sense::LOGICAL_UNIT_NOT_SUPPORTED);
    }
    let spec = decode(cdb)?;
    if !answered(spec) {
        return Err(Sense::LOGICAL_UNIT_NOT_SUPPORTED);
    }
    match spec.command {
        Command::Inquiry => inquiry::inquiry_missing_lun(cdb, lun),
        Command::RequestSense => {
            let sense = if lun == 0 {
                Sense::NO_SENSE
            } else {
                Sense::LOGICAL_UNIT_NOT_SUPPORTED
            };
            Ok(request_sense(cdb, sense))
        }
        Command::ReportLuns => report_luns::report_luns(cdb, lun_list),
        Command::TestUnitReady => Ok(Outcome::good()),
        _ => Err(Sense::LOGICAL_UNIT_NOT_SUPPORTED),
    }
}

/// REQUEST SENSE data for `sense`, in the format the DESC bit asks for, status GOOD.
fn request_sense(cdb: Cdb<'_>, sense: Sense) -> Outcome {
    let mut data = vec![0u8; 32];
    let len = if cdb.bit(1, 0) {
        sense.to_descriptor_format(&mut data)
    } else {
        sense.to_fixed_format(&mut data)
    };
    data.truncate(len);
    Outcome::data_in(data, usize::from(cdb.byte(4)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_sense_formats() {
        let fixed = request_sense(Cdb(&[0x03, 0, 0, 0, 252, 0]), Sense::WRITE_PROTECTED);
        let Outcome::Good { data_in } = fixed else {
            panic!()
        };
        assert_eq!(data_in.len(), 18);
        assert_eq!((data_in[0], data_in[2], data_in[12]), (0x70, 0x07, 0x27));
        let desc = request_sense(Cdb(&[0x03, 1, 0, 0, 252, 0]), Sense::WRITE_PROTECTED);
        assert_eq!(
            desc,
            Outcome::Good {
                data_in: vec![0x72, 0x07, 0x27, 0, 0, 0, 0, 0]
            }
        );
        let short = request_sense(Cdb(&[0x03, 0, 0, 0, 3, 0]), Sense::WRITE_PROTECTED);
        assert_eq!(
            short,
            Outcome::Good {
                data_in: vec![0x70, 0, 0x07]
            }
        );
    }
}
