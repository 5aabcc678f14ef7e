//! The one table of commands we implement, one row per command and one column per fact about
//! it, and the dispatch that runs a command through it. Every consumer reads the table instead
//! of matching on opcodes: [`execute`] finds and checks commands here and hands each to the
//! module implementing it, the device asks how to treat the data-out buffer, unit attention and
//! missing LUNs follow their columns, and REPORT SUPPORTED OPERATION CODES lists the rows, so
//! none of them can disagree. Each row's CDB usage data (SPC-5 6.35.3) also drives the
//! reserved-bit check: a CDB bit set where the usage data has a zero is refused with INVALID
//! FIELD IN CDB pointing at it.

use super::cdb::Cdb;
use super::lun_config::LunConfig;
use super::outcome::Outcome;
use super::sense::Sense;
use super::unit_state::UnitState;
use super::{capacity, inquiry, io_commands, mode_pages, report_luns, unmap, write_same};

/// The largest logical block size a LUN may have: WRITE SAME's data-out is one block.
pub const MAX_BLOCK_SIZE: usize = 4096;

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

/// What a command's data-out buffer carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DataOut {
    None,
    /// The data written to the medium (WRITE 6/10/12/16).
    Payload,
    /// A parameter list whose length is the big-endian field of `width` bytes at `at`.
    ParameterList {
        at: usize,
        width: usize,
    },
    /// One logical block (WRITE SAME), absent when the NDOB bit (byte 1 bit 0) exists and is
    /// set.
    OneBlock {
        ndob: bool,
    },
}

/// How a command is answered when its LUN does not exist (as QEMU's SCSI bus answers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MissingLun {
    /// CHECK CONDITION, LOGICAL UNIT NOT SUPPORTED.
    Unsupported,
    /// Answered for LUN 0, which SPC requires to be addressable; unsupported elsewhere.
    OnLunZero,
    /// Answered for every LUN (INQUIRY says nothing is there, REQUEST SENSE says why).
    OnAnyLun,
}

/// What a LUN must have for the command to exist there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Requires {
    Nothing,
    /// The backend can deallocate blocks.
    Discard,
}

pub(crate) struct CommandSpec {
    pub command: Command,
    /// For logs.
    pub name: &'static str,
    pub opcode: u8,
    /// Service action in byte 1 bits 4..0, for opcodes that have them.
    pub service_action: Option<u8>,
    /// CDB usage data as REPORT SUPPORTED OPERATION CODES returns it; its length is the CDB's.
    pub usage: &'static [u8],
    /// The bits the usage data leaves clear (the service action's allowed), byte `i` of the
    /// CDB at bits `8 * i`: the reserved-bit check is one AND of the CDB's first 16 bytes.
    stray_bits: u128,
    pub data_out: DataOut,
    /// Runs with a unit attention pending instead of reporting it (INQUIRY, REPORT LUNS,
    /// REQUEST SENSE: SAM-5 5.14, SPC-5 5.14).
    pub ignores_unit_attention: bool,
    pub missing_lun: MissingLun,
    pub requires: Requires,
}

impl CommandSpec {
    /// Whether `lun` implements this command.
    pub(crate) fn available_on(&self, lun: &LunConfig) -> bool {
        match self.requires {
            Requires::Nothing => true,
            Requires::Discard => lun.discard,
        }
    }

    /// Checks the CDB's length and that no bit is set outside the usage data; the sense
    /// points at the first offending byte and its highest offending bit.
    #[inline(always)]
    pub(crate) fn check(&self, cdb: Cdb<'_>) -> Result<(), Sense> {
        if cdb.0.len() < self.usage.len() {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        let head = match cdb.0.first_chunk::<CHECKED_BYTES>() {
            Some(head) => *head,
            None => std::array::from_fn(|index| cdb.byte(index)),
        };
        let stray = u128::from_le_bytes(head) & self.stray_bits;
        if stray == 0 {
            return Ok(());
        }
        let index = stray.trailing_zeros() / 8;
        let byte = (stray >> (8 * index)) as u8;
        let bit = 7 - byte.leading_zeros() as u8;
        Err(Sense::invalid_field_in_cdb(index as u16, Some(bit)))
    }

    fn data_out_use(&self, cdb: Cdb<'_>) -> DataOutUse {
        match self.data_out {
            DataOut::None => DataOutUse::None,
            DataOut::Payload => DataOutUse::Payload,
            DataOut::ParameterList { at, width } => {
                let max =
                    (at..at + width).fold(0, |len, index| len << 8 | usize::from(cdb.byte(index)));
                DataOutUse::Parameters { max }
            }
            DataOut::OneBlock { ndob } if ndob && cdb.bit(1, 0) => DataOutUse::None,
            DataOut::OneBlock { .. } => DataOutUse::Parameters {
                max: MAX_BLOCK_SIZE,
            },
        }
    }
}

/// The longest CDB in the table, and so the bytes the reserved-bit check covers.
const CHECKED_BYTES: usize = 16;

/// The bits of the first [`CHECKED_BYTES`] bytes of a CDB that `usage` leaves clear, past the
/// opcode; with `service_action`, byte 1's low five bits are allowed too.
const fn stray_bits(usage: &[u8], service_action: bool) -> u128 {
    assert!(
        usage.len() <= CHECKED_BYTES,
        "a CDB longer than the check covers"
    );
    let mut stray = 0;
    let mut index = 1;
    while index < usage.len() {
        let allowed = if index == 1 && service_action {
            usage[index] | 0x1f
        } else {
            usage[index]
        };
        stray |= (!allowed as u128) << (8 * index);
        index += 1;
    }
    stray
}

/// A row with the facts most commands share: no data-out, reports a pending unit attention,
/// unsupported on a missing LUN, available on every LUN.
const fn spec(command: Command, name: &'static str, usage: &'static [u8]) -> CommandSpec {
    CommandSpec {
        command,
        name,
        opcode: usage[0],
        service_action: None,
        usage,
        stray_bits: stray_bits(usage, false),
        data_out: DataOut::None,
        ignores_unit_attention: false,
        missing_lun: MissingLun::Unsupported,
        requires: Requires::Nothing,
    }
}

/// A row for a command selected by opcode and service action.
const fn spec_sa(command: Command, name: &'static str, usage: &'static [u8]) -> CommandSpec {
    CommandSpec {
        service_action: Some(usage[1] & 0x1f),
        stray_bits: stray_bits(usage, true),
        ..spec(command, name, usage)
    }
}

const fn data_out(spec: CommandSpec, data_out: DataOut) -> CommandSpec {
    CommandSpec { data_out, ..spec }
}

const fn parameter_list(spec: CommandSpec, at: usize, width: usize) -> CommandSpec {
    data_out(spec, DataOut::ParameterList { at, width })
}

const fn on_missing_lun(spec: CommandSpec, missing_lun: MissingLun) -> CommandSpec {
    CommandSpec {
        missing_lun,
        ..spec
    }
}

const fn despite_unit_attention(spec: CommandSpec) -> CommandSpec {
    CommandSpec {
        ignores_unit_attention: true,
        ..spec
    }
}

const PAYLOAD: DataOut = DataOut::Payload;

// Usage data notes: control bytes are 0 (no NACA, no linking); READ/WRITE allow DPO and FUA but
// no protection fields; VERIFY has no BYTCHK (only medium verification); WRITE SAME has no
// ANCHOR; REPORT SUPPORTED OPERATION CODES has no RCTD.
#[rustfmt::skip]
pub(crate) const COMMANDS: &[CommandSpec] = &[
    on_missing_lun(spec(Command::TestUnitReady, "TEST UNIT READY", &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0]),
                   MissingLun::OnLunZero),
    despite_unit_attention(on_missing_lun(
        spec(Command::RequestSense, "REQUEST SENSE", &[op::REQUEST_SENSE, 0x01, 0, 0, 0xff, 0]),
        MissingLun::OnAnyLun)),
    spec(Command::Read6, "READ(6)", &[op::READ_6, 0x1f, 0xff, 0xff, 0xff, 0]),
    data_out(spec(Command::Write6, "WRITE(6)", &[op::WRITE_6, 0x1f, 0xff, 0xff, 0xff, 0]), PAYLOAD),
    despite_unit_attention(on_missing_lun(
        spec(Command::Inquiry, "INQUIRY", &[op::INQUIRY, 0x01, 0xff, 0xff, 0xff, 0]),
        MissingLun::OnAnyLun)),
    parameter_list(spec(Command::ModeSelect6, "MODE SELECT(6)", &[op::MODE_SELECT_6, 0x11, 0, 0, 0xff, 0]),
                   4, 1),
    spec(Command::ModeSense6, "MODE SENSE(6)", &[op::MODE_SENSE_6, 0x08, 0xff, 0xff, 0xff, 0]),
    spec(Command::StartStopUnit, "START STOP UNIT", &[op::START_STOP_UNIT, 0x01, 0, 0x0f, 0xf7, 0]),
    spec(Command::PreventAllowMediumRemoval, "PREVENT ALLOW MEDIUM REMOVAL",
         &[op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0x03, 0]),
    spec(Command::ReadCapacity10, "READ CAPACITY(10)", &[op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    spec(Command::Read10, "READ(10)", &[op::READ_10, 0x18, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]),
    data_out(spec(Command::Write10, "WRITE(10)",
                  &[op::WRITE_10, 0x18, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]), PAYLOAD),
    spec(Command::Verify10, "VERIFY(10)", &[op::VERIFY_10, 0x10, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]),
    spec(Command::SynchronizeCache10, "SYNCHRONIZE CACHE(10)",
         &[op::SYNCHRONIZE_CACHE_10, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]),
    data_out(spec(Command::WriteSame10, "WRITE SAME(10)",
                  &[op::WRITE_SAME_10, 0x08, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]),
             DataOut::OneBlock { ndob: false }),
    CommandSpec {
        requires: Requires::Discard,
        ..parameter_list(spec(Command::Unmap, "UNMAP", &[op::UNMAP, 0, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0]),
                         7, 2)
    },
    parameter_list(spec(Command::ModeSelect10, "MODE SELECT(10)",
                        &[op::MODE_SELECT_10, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0]), 7, 2),
    spec(Command::ModeSense10, "MODE SENSE(10)", &[op::MODE_SENSE_10, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0]),
    spec(Command::Read16, "READ(16)", &[op::READ_16, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                        0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
    data_out(spec(Command::Write16, "WRITE(16)", &[op::WRITE_16, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                                   0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0]), PAYLOAD),
    spec(Command::Verify16, "VERIFY(16)", &[op::VERIFY_16, 0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                            0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
    spec(Command::SynchronizeCache16, "SYNCHRONIZE CACHE(16)",
         &[op::SYNCHRONIZE_CACHE_16, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
           0xff, 0x1f, 0]),
    data_out(spec(Command::WriteSame16, "WRITE SAME(16)",
                  &[op::WRITE_SAME_16, 0x09, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                    0xff, 0xff, 0x1f, 0]),
             DataOut::OneBlock { ndob: true }),
    spec_sa(Command::ReadCapacity16, "READ CAPACITY(16)",
            &[op::SERVICE_ACTION_IN_16, service_action::READ_CAPACITY_16, 0, 0, 0, 0, 0, 0, 0, 0, 0xff,
              0xff, 0xff, 0xff, 0, 0]),
    despite_unit_attention(on_missing_lun(
        spec(Command::ReportLuns, "REPORT LUNS", &[op::REPORT_LUNS, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
                                                   0, 0]),
        MissingLun::OnLunZero)),
    spec_sa(Command::ReportSupportedOperationCodes, "REPORT SUPPORTED OPERATION CODES",
            &[op::MAINTENANCE_IN, service_action::REPORT_SUPPORTED_OPERATION_CODES, 0x07, 0xff,
              0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]),
    spec_sa(Command::ReportSupportedTaskManagementFunctions,
            "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS",
            &[op::MAINTENANCE_IN, service_action::REPORT_SUPPORTED_TASK_MANAGEMENT_FUNCTIONS, 0x80,
              0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0]),
    spec(Command::Read12, "READ(12)", &[op::READ_12, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
    data_out(spec(Command::Write12, "WRITE(12)",
                  &[op::WRITE_12, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0]), PAYLOAD),
];

/// Where each opcode's rows are in [`COMMANDS`] (rows of one opcode are adjacent): the first
/// and how many.
const ROW_SPANS: [(usize, usize); 256] = {
    let mut spans = [(0, 0); 256];
    let mut row = COMMANDS.len();
    while row > 0 {
        row -= 1;
        let (_, count) = spans[COMMANDS[row].opcode as usize];
        spans[COMMANDS[row].opcode as usize] = (row, count + 1);
    }
    spans
};

/// Each opcode's rows, cut out of [`COMMANDS`] at compile time, so that finding a command costs
/// one index, neither a scan of the table nor the bounds checks of a slicing.
static ROWS: [&[CommandSpec]; 256] = {
    let mut rows: [&[CommandSpec]; 256] = [&[]; 256];
    let mut opcode = 0;
    while opcode < 256 {
        let (first, count) = ROW_SPANS[opcode];
        rows[opcode] = COMMANDS.split_at(first).1.split_at(count).0;
        opcode += 1;
    }
    rows
};

/// The rows of `opcode`: none, one, or one per service action.
fn rows(opcode: u8) -> &'static [CommandSpec] {
    ROWS[usize::from(opcode)]
}

/// Whether `opcode` selects its command with a service action.
fn has_service_actions(opcode: u8) -> bool {
    rows(opcode)
        .iter()
        .any(|spec| spec.service_action.is_some())
}

/// The row of the command in `cdb`: unknown opcodes are INVALID COMMAND OPERATION CODE,
/// unknown service actions INVALID FIELD IN CDB.
pub(crate) fn lookup(cdb: Cdb<'_>) -> Result<&'static CommandSpec, Sense> {
    let Some(&opcode) = cdb.0.first() else {
        return Err(Sense::INVALID_COMMAND_OPERATION_CODE);
    };
    find(rows(opcode), cdb)
}

/// The row among `rows`, those of the CDB's opcode, that its service action selects.
fn find(rows: &'static [CommandSpec], cdb: Cdb<'_>) -> Result<&'static CommandSpec, Sense> {
    let service_action = cdb.byte(1) & 0x1f;
    let found = rows
        .iter()
        .find(|spec| spec.service_action.is_none_or(|sa| sa == service_action));
    found.ok_or(if rows.is_empty() {
        Sense::INVALID_COMMAND_OPERATION_CODE
    } else {
        Sense::invalid_field_in_cdb(1, Some(4))
    })
}

/// The row of the command in `cdb`, whose fields are checked against its usage data.
pub(crate) fn decode(cdb: Cdb<'_>) -> Result<&'static CommandSpec, Sense> {
    let spec = lookup(cdb)?;
    spec.check(cdb)?;
    Ok(spec)
}

/// The first row of `opcode`, for the facts every service action of it shares.
pub(crate) fn by_opcode(opcode: u8) -> Option<&'static CommandSpec> {
    rows(opcode).first()
}

/// What the data-out buffer of a command carries, so the device knows whether to copy it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataOutUse {
    /// The command has no data-out.
    None,
    /// A parameter list (MODE SELECT, UNMAP) or WRITE SAME's single block: the device copies up
    /// to `max` bytes of data-out and passes them to `Target::execute` as `data_out`.
    Parameters { max: usize },
    /// WRITE 6/10/12/16: the data goes from the guest's buffers to the backend without copying.
    Payload,
}

/// Tells the device how to treat the data-out buffer of `cdb`.
pub fn data_out_use(cdb: &[u8]) -> DataOutUse {
    let cdb = Cdb(cdb);
    lookup(cdb).map_or(DataOutUse::None, |spec| spec.data_out_use(cdb))
}

/// The name of the command in `cdb`, for logs.
pub fn command_name(cdb: &[u8]) -> &'static str {
    lookup(Cdb(cdb)).map_or("unknown", |spec| spec.name)
}

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
    let rows = rows(opcode);
    if !rows.first().is_some_and(|spec| spec.ignores_unit_attention) {
        if let Some(sense) = unit.state.take_unit_attention() {
            return sense.into();
        }
    }
    let spec = match find(rows, cdb) {
        Ok(spec) if spec.available_on(unit.config) => spec,
        Ok(_) => return Sense::INVALID_COMMAND_OPERATION_CODE.into(),
        Err(sense) => return sense.into(),
    };
    if let Err(sense) = spec.check(cdb) {
        return sense.into();
    }
    run(spec, cdb, unit, data_out, data_out_len, lun_list)
}

/// Returns the outcome itself, not a `Result`: each command's answer is built where the caller
/// reads it, rather than copied out of a `Result` (some 10 instructions a READ).
fn run(
    spec: &CommandSpec,
    cdb: Cdb<'_>,
    unit: Unit<'_>,
    data_out: &[u8],
    data_out_len: u64,
    lun_list: &[u16],
) -> Outcome {
    let Unit { config, state } = unit;
    match spec.command {
        Command::TestUnitReady | Command::PreventAllowMediumRemoval => Outcome::good(),
        Command::RequestSense => {
            let sense = state.take_unit_attention().unwrap_or(Sense::NO_SENSE);
            request_sense(cdb, sense)
        }
        Command::Inquiry => inquiry::inquiry(cdb, config).into(),
        Command::ReadCapacity10 => capacity::read_capacity_10(config),
        Command::ReadCapacity16 => capacity::read_capacity_16(cdb, config),
        Command::Read6 | Command::Read10 | Command::Read12 | Command::Read16 => {
            io_commands::read(cdb, config)
        }
        Command::Write6 | Command::Write10 | Command::Write12 | Command::Write16 => {
            io_commands::write(cdb, config, state.write_cache())
        }
        Command::Verify10 | Command::Verify16 => io_commands::verify(cdb, config).into(),
        Command::SynchronizeCache10 | Command::SynchronizeCache16 => {
            io_commands::synchronize_cache(cdb, config).into()
        }
        Command::StartStopUnit => io_commands::start_stop_unit(cdb),
        Command::WriteSame10 | Command::WriteSame16 => {
            write_same::write_same(cdb, config, state.write_cache(), data_out, data_out_len).into()
        }
        Command::Unmap => unmap::unmap(cdb, config, data_out, data_out_len).into(),
        Command::ModeSense6 | Command::ModeSense10 => {
            mode_pages::mode_sense(cdb, config, state.write_cache()).into()
        }
        Command::ModeSelect6 | Command::ModeSelect10 => {
            match mode_pages::mode_select(cdb, config, state.write_cache(), data_out, data_out_len)
            {
                Ok(write_cache) => {
                    state.set_write_cache(write_cache);
                    Outcome::good()
                }
                Err(sense) => sense.into(),
            }
        }
        Command::ReportSupportedOperationCodes => {
            report_supported_operation_codes(cdb, config).into()
        }
        Command::ReportSupportedTaskManagementFunctions => {
            report_supported_task_management_functions(cdb)
        }
        Command::ReportLuns => report_luns::report_luns(cdb, lun_list).into(),
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

// REPORT SUPPORTED OPERATION CODES and REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-5 6.35,
// 6.36), both answered from what we really implement: the first lists the table's rows.

/// SUPPORT field values of the one-command format.
const NOT_SUPPORTED: u8 = 0b001;
const SUPPORTED: u8 = 0b011;

fn all_commands(lun: &LunConfig) -> Vec<u8> {
    let mut data = vec![0u8; 4];
    for spec in COMMANDS.iter().filter(|spec| spec.available_on(lun)) {
        let servactv = u8::from(spec.service_action.is_some());
        let service_action = u16::from(spec.service_action.unwrap_or(0));
        data.extend_from_slice(&[spec.opcode, 0]);
        data.extend_from_slice(&service_action.to_be_bytes());
        data.extend_from_slice(&[0, servactv]);
        data.extend_from_slice(&(spec.usage.len() as u16).to_be_bytes());
    }
    let len = (data.len() - 4) as u32;
    data[0..4].copy_from_slice(&len.to_be_bytes());
    data
}

fn one_command(spec: Option<&CommandSpec>) -> Vec<u8> {
    match spec {
        Some(spec) => {
            let mut data = vec![0, SUPPORTED];
            data.extend_from_slice(&(spec.usage.len() as u16).to_be_bytes());
            data.extend_from_slice(spec.usage);
            data
        }
        None => vec![0, NOT_SUPPORTED, 0, 0],
    }
}

pub(crate) fn report_supported_operation_codes(
    cdb: Cdb<'_>,
    lun: &LunConfig,
) -> Result<Outcome, Sense> {
    let opcode = cdb.byte(3);
    let service_action = cdb.be16(4);
    let with_service_actions = has_service_actions(opcode);
    let find = |service_action: Option<u16>| {
        COMMANDS.iter().find(|spec| {
            spec.opcode == opcode
                && spec.service_action.map(u16::from) == service_action
                && spec.available_on(lun)
        })
    };
    let data = match cdb.byte(2) & 0x07 {
        0 => all_commands(lun),
        // Options 1 and 2 must name the opcode the right way: without or with a service action.
        1 if with_service_actions => return Err(Sense::invalid_field_in_cdb(3, None)),
        1 => one_command(find(None)),
        2 if !with_service_actions => return Err(Sense::invalid_field_in_cdb(3, None)),
        2 | 3 if with_service_actions => one_command(find(Some(service_action))),
        3 => one_command(find(None)),
        _ => return Err(Sense::invalid_field_in_cdb(2, Some(2))),
    };
    Ok(Outcome::data_in(data, cdb.be32(6) as usize))
}

/// The TMFs the virtio-scsi control queue implements: ABORT TASK, ABORT TASK SET, CLEAR TASK
/// SET, LOGICAL UNIT RESET, QUERY TASK, QUERY TASK SET, I_T NEXUS RESET (no CLEAR ACA).
pub(crate) fn report_supported_task_management_functions(cdb: Cdb<'_>) -> Outcome {
    const ATS: u8 = 0x80;
    const ATSS: u8 = 0x40;
    const CTSS: u8 = 0x10;
    const LURS: u8 = 0x08;
    const QTS: u8 = 0x04;
    const QTSS: u8 = 0x02;
    const ITNRS: u8 = 0x01;
    let repd = cdb.bit(2, 7);
    let mut data = vec![ATS | ATSS | CTSS | LURS | QTS, QTSS | ITNRS, 0, 0];
    if repd {
        data[3] = 0x0c;
        data.resize(16, 0);
    }
    Outcome::data_in(data, cdb.be32(6) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lun_config::tests::config;
    use crate::outcome::tests::good;

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
            let rows = rows(spec.opcode);
            assert!(
                rows.iter().any(|row| row.command == spec.command)
                    && rows.iter().all(|row| row.opcode == spec.opcode),
                "rows of {:#x} are not adjacent",
                spec.opcode
            );
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

    /// The reserved-bit check as the usage data states it, byte after byte.
    fn stray_bit_by_bytes(spec: &CommandSpec, cdb: &[u8]) -> Result<(), Sense> {
        if cdb.len() < spec.usage.len() {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        for (index, &usage) in spec.usage.iter().enumerate().skip(1) {
            let allowed = if index == 1 && spec.service_action.is_some() {
                usage | 0x1f
            } else {
                usage
            };
            let stray = cdb[index] & !allowed;
            if stray != 0 {
                let bit = 7 - stray.leading_zeros() as u8;
                return Err(Sense::invalid_field_in_cdb(index as u16, Some(bit)));
            }
        }
        Ok(())
    }

    #[test]
    fn the_stray_bit_mask_agrees_with_the_usage_data_byte_by_byte() {
        for spec in COMMANDS {
            let len = spec.usage.len();
            for cdb_len in [len - 1, len, 32] {
                for flipped in 0..cdb_len * 8 {
                    for also in [None, Some(flipped / 2)] {
                        let mut cdb = vec![0u8; cdb_len];
                        cdb[0] = spec.opcode;
                        if let (Some(sa), Some(byte)) = (spec.service_action, cdb.get_mut(1)) {
                            *byte = sa;
                        }
                        for bit in std::iter::once(flipped).chain(also) {
                            if bit >= 8 {
                                cdb[bit / 8] ^= 1 << (bit % 8);
                            }
                        }
                        assert_eq!(
                            spec.check(Cdb(&cdb)),
                            stray_bit_by_bytes(spec, &cdb),
                            "{} {cdb:02x?}",
                            spec.name
                        );
                    }
                }
            }
        }
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

    #[test]
    fn data_out_use_per_command() {
        assert_eq!(
            data_out_use(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0]),
            DataOutUse::Payload
        );
        assert_eq!(data_out_use(&[0x0a, 0, 0, 0, 1, 0]), DataOutUse::Payload);
        assert_eq!(data_out_use(&[0xaa; 12]), DataOutUse::Payload);
        assert_eq!(data_out_use(&[0x8a; 16]), DataOutUse::Payload);
        assert_eq!(
            data_out_use(&[0x15, 0x10, 0, 0, 24, 0]),
            DataOutUse::Parameters { max: 24 }
        );
        assert_eq!(
            data_out_use(&[0x55, 0x10, 0, 0, 0, 0, 0, 0x01, 0x02, 0]),
            DataOutUse::Parameters { max: 0x102 }
        );
        assert_eq!(
            data_out_use(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]),
            DataOutUse::Parameters { max: 24 }
        );
        assert_eq!(
            data_out_use(&[0x41; 10]),
            DataOutUse::Parameters {
                max: MAX_BLOCK_SIZE
            }
        );
        let mut ws16 = [0u8; 16];
        ws16[0] = 0x93;
        assert_eq!(
            data_out_use(&ws16),
            DataOutUse::Parameters {
                max: MAX_BLOCK_SIZE
            }
        );
        ws16[1] = 0x01;
        assert_eq!(data_out_use(&ws16), DataOutUse::None, "NDOB: no data-out");
        assert_eq!(data_out_use(&[0x28; 10]), DataOutUse::None);
        assert_eq!(data_out_use(&[]), DataOutUse::None);
        assert_eq!(data_out_use(&[0x04; 6]), DataOutUse::None, "unknown opcode");
    }

    #[test]
    fn only_inquiry_report_luns_and_request_sense_run_despite_a_unit_attention() {
        let exempt: Vec<u8> = COMMANDS
            .iter()
            .filter(|spec| spec.ignores_unit_attention)
            .map(|spec| spec.opcode)
            .collect();
        assert_eq!(
            exempt,
            vec![op::REQUEST_SENSE, op::INQUIRY, op::REPORT_LUNS]
        );
        assert_eq!(command_name(&[0x28; 10]), "READ(10)");
        assert_eq!(command_name(&[0x9e, 0x10]), "READ CAPACITY(16)");
        assert_eq!(command_name(&[0x04]), "unknown");
    }

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

    fn rsoc(options: u8, opcode: u8, service_action: u16, allocation_length: u32) -> [u8; 12] {
        let mut cdb = [0u8; 12];
        cdb[0] = 0xa3;
        cdb[1] = 0x0c;
        cdb[2] = options;
        cdb[3] = opcode;
        cdb[4..6].copy_from_slice(&service_action.to_be_bytes());
        cdb[6..10].copy_from_slice(&allocation_length.to_be_bytes());
        cdb
    }

    #[test]
    fn all_commands_lists_the_table() {
        let lun = config(0);
        let data = good(report_supported_operation_codes(
            Cdb(&rsoc(0, 0, 0, 65536)),
            &lun,
        ));
        let len = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, data.len() - 4);
        assert_eq!(len, 8 * COMMANDS.len());
        let read16 = data[4..].chunks(8).find(|d| d[0] == 0x88).unwrap();
        assert_eq!(read16, &[0x88, 0, 0, 0, 0, 0, 0, 16]);
        let rc16 = data[4..].chunks(8).find(|d| d[0] == 0x9e).unwrap();
        assert_eq!(rc16, &[0x9e, 0, 0, 0x10, 0, 1, 0, 16]);

        let no_discard = LunConfig {
            discard: false,
            ..config(0)
        };
        let data = good(report_supported_operation_codes(
            Cdb(&rsoc(0, 0, 0, 65536)),
            &no_discard,
        ));
        assert!(
            data[4..].chunks(8).all(|d| d[0] != 0x42),
            "no UNMAP without discard"
        );
    }

    #[test]
    fn one_command_formats() {
        let lun = config(0);
        let data = good(report_supported_operation_codes(
            Cdb(&rsoc(1, 0x28, 0, 100)),
            &lun,
        ));
        assert_eq!(&data[..4], &[0, 0x03, 0, 10]);
        assert_eq!(
            &data[4..],
            &[0x28, 0x18, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]
        );
        let data = good(report_supported_operation_codes(
            Cdb(&rsoc(1, 0x04, 0, 100)),
            &lun,
        ));
        assert_eq!(data, vec![0, 0x01, 0, 0]);
        let data = good(report_supported_operation_codes(
            Cdb(&rsoc(2, 0x9e, 0x10, 100)),
            &lun,
        ));
        assert_eq!(&data[..6], &[0, 0x03, 0, 16, 0x9e, 0x10]);
        let data = good(report_supported_operation_codes(
            Cdb(&rsoc(2, 0x9e, 0x11, 100)),
            &lun,
        ));
        assert_eq!(data, vec![0, 0x01, 0, 0]);
        let data = good(report_supported_operation_codes(
            Cdb(&rsoc(3, 0x12, 0x55, 100)),
            &lun,
        ));
        assert_eq!(&data[..4], &[0, 0x03, 0, 6]);
    }

    #[test]
    fn option_errors_and_truncation() {
        let lun = config(0);
        assert_eq!(
            report_supported_operation_codes(Cdb(&rsoc(1, 0x9e, 0, 100)), &lun),
            Err(Sense::invalid_field_in_cdb(3, None))
        );
        assert_eq!(
            report_supported_operation_codes(Cdb(&rsoc(2, 0x28, 0, 100)), &lun),
            Err(Sense::invalid_field_in_cdb(3, None))
        );
        assert_eq!(
            report_supported_operation_codes(Cdb(&rsoc(4, 0, 0, 100)), &lun),
            Err(Sense::invalid_field_in_cdb(2, Some(2)))
        );
        let data = good(report_supported_operation_codes(
            Cdb(&rsoc(0, 0, 0, 6)),
            &lun,
        ));
        assert_eq!(data.len(), 6);
    }

    #[test]
    fn task_management_functions() {
        let mut cdb = [0xa3, 0x0d, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0];
        assert_eq!(
            report_supported_task_management_functions(Cdb(&cdb)),
            Outcome::Good {
                data_in: vec![0xdc, 0x03, 0, 0]
            }
        );
        cdb[2] = 0x80;
        let Outcome::Good { data_in } = report_supported_task_management_functions(Cdb(&cdb))
        else {
            panic!()
        };
        assert_eq!(data_in.len(), 16);
        assert_eq!(&data_in[..4], &[0xdc, 0x03, 0, 0x0c]);
        cdb[9] = 2;
        assert_eq!(
            report_supported_task_management_functions(Cdb(&cdb)),
            Outcome::Good {
                data_in: vec![0xdc, 0x03]
            }
        );
    }
}
