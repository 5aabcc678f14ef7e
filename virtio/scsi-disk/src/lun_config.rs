//! What a logical unit is: the configuration it was created with, checked once, then only
//! read.

use super::sense::Sense;

/// LUNs are addressed with 14 bits (flat space addressing).
pub const MAX_LUN: u16 = 16383;
/// Longest serial number we report (QEMU's limit too).
pub const MAX_SERIAL_LEN: usize = 36;

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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LunConfigError {
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

impl LunConfig {
    pub(crate) fn validate(&self) -> Result<(), LunConfigError> {
        let lun = self.lun;
        if lun > MAX_LUN {
            return Err(LunConfigError::LunOutOfRange(lun));
        }
        if !matches!(self.block_size, 512 | 4096) {
            return Err(LunConfigError::BadBlockSize {
                lun,
                block_size: self.block_size,
            });
        }
        if self.block_count == 0 {
            return Err(LunConfigError::NoBlocks(lun));
        }
        if self
            .block_count
            .checked_mul(u64::from(self.block_size))
            .is_none()
        {
            return Err(LunConfigError::TooLarge(lun));
        }
        let serial = &self.serial;
        if serial.len() > MAX_SERIAL_LEN
            || !serial
                .bytes()
                .all(|byte| byte.is_ascii_graphic() || byte == b' ')
        {
            return Err(LunConfigError::BadSerial {
                lun,
                serial: serial.clone(),
            });
        }
        Ok(())
    }

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
}
