//! One emulated disk logical unit: its configuration, its state (write cache, pending unit
//! attention) and the dispatch of commands addressed to it.

use super::cdb::Cdb;
use super::commands::{Command, CommandSpec};
use super::outcome::Outcome;
use super::sense::Sense;
use super::{
    capacity, inquiry, io_commands, mode_pages, report_luns, report_opcodes, unmap, write_same,
};

/// Largest range one UNMAP or WRITE SAME may cover, so a single command cannot hold an
/// iothread for long.
const MAX_RANGE_BYTES: u64 = 1 << 30;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunConfig {
    pub lun: u16,
    pub block_count: u64,
    /// 512 or 4096.
    pub block_size: u32,
    pub read_only: bool,
    /// The backend can deallocate (UNMAP, WRITE SAME with UNMAP).
    pub discard: bool,
    /// Deallocated blocks read back as zeros (reported as LBPRZ with discard).
    pub write_zeroes: bool,
    /// Printable ASCII, at most 36 bytes; may be empty (then there is no VPD page 0x80 and no
    /// NAA identifier).
    pub serial: String,
    pub rotational: bool,
    /// Reported in the block limits page; 0 means not reported.
    pub optimal_transfer_blocks: u32,
    /// Reads and writes longer than this are refused; 0 means no limit.
    pub max_transfer_blocks: u32,
}

impl LunConfig {
    pub(crate) fn max_unmap_blocks(&self) -> u32 {
        (MAX_RANGE_BYTES / u64::from(self.block_size.max(1))) as u32
    }

    pub(crate) fn max_write_same_blocks(&self) -> u32 {
        self.max_unmap_blocks()
    }

    /// Byte range of `blocks` blocks at `lba`, or LBA OUT OF RANGE.
    pub(crate) fn byte_range(&self, lba: u64, blocks: u64) -> Result<(u64, u64), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.block_count => {
                let block_size = u64::from(self.block_size);
                Ok((lba * block_size, blocks * block_size))
            }
            _ => Err(Sense::LBA_OUT_OF_RANGE),
        }
    }

    pub(crate) fn check_writable(&self) -> Result<(), Sense> {
        if self.read_only {
            Err(Sense::WRITE_PROTECTED)
        } else {
            Ok(())
        }
    }
}

#[derive(Debug)]
pub(crate) struct Lun {
    pub config: LunConfig,
    pub write_cache: bool,
    pub unit_attention: Option<Sense>,
}

impl Lun {
    pub(crate) fn new(config: LunConfig) -> Self {
        Lun {
            config,
            write_cache: true,
            unit_attention: Some(Sense::POWER_ON_RESET_OCCURRED),
        }
    }

    /// REQUEST SENSE returns the pending unit attention, and so clears it.
    fn request_sense(&mut self, cdb: Cdb<'_>) -> Outcome {
        let sense = self.unit_attention.take().unwrap_or(Sense::NO_SENSE);
        request_sense_data(cdb, sense)
    }

    pub(crate) fn execute(
        &mut self,
        spec: &CommandSpec,
        cdb: Cdb<'_>,
        data_out: &[u8],
        data_out_len: u64,
        lun_list: &[u16],
    ) -> Result<Outcome, Sense> {
        let config = &self.config;
        match spec.command {
            Command::TestUnitReady | Command::PreventAllowMediumRemoval => Ok(Outcome::good()),
            Command::RequestSense => Ok(self.request_sense(cdb)),
            Command::Inquiry => inquiry::inquiry(cdb, config),
            Command::ReadCapacity10 => Ok(capacity::read_capacity_10(config)),
            Command::ReadCapacity16 => Ok(capacity::read_capacity_16(cdb, config)),
            Command::Read6
            | Command::Read10
            | Command::Read12
            | Command::Read16
            | Command::Write6
            | Command::Write10
            | Command::Write12
            | Command::Write16 => {
                io_commands::read_write(spec.command, cdb, config, self.write_cache)
            }
            Command::Verify10 | Command::Verify16 => io_commands::verify(spec.command, cdb, config),
            Command::SynchronizeCache10 | Command::SynchronizeCache16 => {
                io_commands::synchronize_cache(spec.command, cdb, config)
            }
            Command::StartStopUnit => Ok(io_commands::start_stop_unit(cdb)),
            Command::WriteSame10 | Command::WriteSame16 => {
                write_same::write_same(spec.command, cdb, config, data_out, data_out_len)
            }
            Command::Unmap => unmap::unmap(cdb, config, data_out, data_out_len),
            Command::ModeSense6 | Command::ModeSense10 => {
                mode_pages::mode_sense(spec.command, cdb, config, self.write_cache)
            }
            Command::ModeSelect6 | Command::ModeSelect10 => {
                let wce = mode_pages::mode_select(
                    spec.command,
                    cdb,
                    config,
                    self.write_cache,
                    data_out,
                    data_out_len,
                )?;
                self.write_cache = wce;
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
}

/// REQUEST SENSE data for `sense`, in the format the DESC bit asks for, status GOOD.
pub(crate) fn request_sense_data(cdb: Cdb<'_>, sense: Sense) -> Outcome {
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
pub(crate) mod tests {
    use super::*;

    /// A 1 GiB test LUN of 512-byte blocks with discard and serial "SERIAL<lun>".
    pub(crate) fn config(lun: u16) -> LunConfig {
        LunConfig {
            lun,
            block_count: 2 * 1024 * 1024,
            block_size: 512,
            read_only: false,
            discard: true,
            write_zeroes: true,
            serial: format!("SERIAL{lun}"),
            rotational: false,
            optimal_transfer_blocks: 128,
            max_transfer_blocks: 4096,
        }
    }

    #[test]
    fn byte_range_checks_the_end_and_overflow() {
        let lun = config(0);
        assert_eq!(lun.byte_range(1, 2), Ok((512, 1024)));
        assert_eq!(
            lun.byte_range(lun.block_count - 1, 1),
            Ok(((lun.block_count - 1) * 512, 512))
        );
        assert_eq!(
            lun.byte_range(lun.block_count, 1),
            Err(Sense::LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            lun.byte_range(lun.block_count, 0),
            Ok((lun.block_count * 512, 0))
        );
        assert_eq!(lun.byte_range(u64::MAX, 2), Err(Sense::LBA_OUT_OF_RANGE));
    }

    #[test]
    fn request_sense_formats() {
        let fixed = request_sense_data(Cdb(&[0x03, 0, 0, 0, 252, 0]), Sense::WRITE_PROTECTED);
        let Outcome::Good { data_in } = fixed else {
            panic!()
        };
        assert_eq!(data_in.len(), 18);
        assert_eq!((data_in[0], data_in[2], data_in[12]), (0x70, 0x07, 0x27));
        let desc = request_sense_data(Cdb(&[0x03, 1, 0, 0, 252, 0]), Sense::WRITE_PROTECTED);
        assert_eq!(
            desc,
            Outcome::Good {
                data_in: vec![0x72, 0x07, 0x27, 0, 0, 0, 0, 0]
            }
        );
        let short = request_sense_data(Cdb(&[0x03, 0, 0, 0, 3, 0]), Sense::WRITE_PROTECTED);
        assert_eq!(
            short,
            Outcome::Good {
                data_in: vec![0x70, 0, 0x07]
            }
        );
    }
}
