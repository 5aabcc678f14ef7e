//! Telling the operator about a disk's failing requests without flooding the log: the first
//! failure of each kind per LUN is a warning, the rest are counted and summed up now and then.

use block::{Disk, ErrorReport};
use slog::{debug, warn, Logger};

use super::disk_io::Direction;

/// Logs a request that failed in the backend with `errno`; the guest gets the matching sense.
pub fn report(
    logger: &Logger,
    disk: &Disk,
    lun: u16,
    tag: u64,
    opcode: u8,
    errno: i32,
    direction: Direction,
) {
    let write = direction == Direction::ToDisk;
    let error = std::io::Error::from_raw_os_error(errno);
    let operation = if write { "write" } else { "read" };
    match disk.record_error(errno, write) {
        ErrorReport::FirstOfKind => warn!(logger, "backend error";
            "lun" => lun, "tag" => tag, "opcode" => opcode, "operation" => operation,
            "errno" => errno, "error" => %error, "first_of_kind" => true,
            "errors" => disk.error_count()),
        ErrorReport::Summary { unreported } => warn!(logger, "backend errors continue";
            "lun" => lun, "opcode" => opcode, "operation" => operation, "errno" => errno,
            "error" => %error, "since_last_report" => unreported,
            "errors" => disk.error_count()),
        ErrorReport::Counted => debug!(logger, "backend error";
            "lun" => lun, "tag" => tag, "opcode" => opcode, "operation" => operation,
            "errno" => errno),
    }
}
