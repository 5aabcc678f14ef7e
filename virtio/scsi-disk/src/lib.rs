//! SCSI disk emulation (SPC-5, SBC-4), as pure logic: a CDB and its parameter data go in, and
//! out come data-in bytes, sense data, or a description of the backend I/O to do. Nothing here
//! touches guest memory, virtqueues or files.
//!
//! [`Target`] is an immutable snapshot of the logical units ([`LunConfig`] each), which the
//! [`LunTable`] swaps whole for every queue at once; `commands` holds the one command table and
//! runs each command through it to the module implementing it.

mod capacity;
mod cdb;
mod commands;
mod inquiry;
mod io_commands;
mod lun_config;
mod mode_pages;
mod outcome;
mod report_luns;
mod sense;
mod target;
mod unit_state;
mod unmap;
mod vpd;
mod write_same;

#[cfg(test)]
mod tests;

pub use commands::{command_name, data_out_use, DataOutUse, MAX_BLOCK_SIZE};
pub use lun_config::{LunConfig, LunConfigError, MAX_LUN, MAX_SERIAL_LEN};
pub use outcome::{DiskIo, Outcome};
pub use sense::{key as sense_key, FieldPointer, Sense, FIXED_SENSE_LEN};
pub use target::{Lun, LunGuard, LunTable, RemovedLun, Target, TargetError};
