//! Reading fields of a command descriptor block, and what a command's data-out buffer carries.

use super::commands::op;

/// The largest logical block size a LUN may have: WRITE SAME's data-out is one block.
pub const MAX_BLOCK_SIZE: usize = 4096;

/// A CDB as sent by the driver. Fields beyond its end read as zero: the dispatcher has already
/// checked the length against the opcode table, so this only keeps hostile input from panicking.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cdb<'a>(pub(crate) &'a [u8]);

impl Cdb<'_> {
    pub(crate) fn byte(&self, index: usize) -> u8 {
        self.0.get(index).copied().unwrap_or(0)
    }

    pub(crate) fn bit(&self, index: usize, bit: u8) -> bool {
        self.byte(index) & (1 << bit) != 0
    }

    fn be<const N: usize>(&self, index: usize) -> [u8; N] {
        std::array::from_fn(|i| self.byte(index + i))
    }

    pub(crate) fn be16(&self, index: usize) -> u16 {
        u16::from_be_bytes(self.be(index))
    }

    pub(crate) fn be32(&self, index: usize) -> u32 {
        u32::from_be_bytes(self.be(index))
    }

    pub(crate) fn be64(&self, index: usize) -> u64 {
        u64::from_be_bytes(self.be(index))
    }
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
    match cdb.byte(0) {
        op::MODE_SELECT_6 => DataOutUse::Parameters {
            max: usize::from(cdb.byte(4)),
        },
        op::MODE_SELECT_10 | op::UNMAP => DataOutUse::Parameters {
            max: usize::from(cdb.be16(7)),
        },
        op::WRITE_SAME_16 if cdb.bit(1, 0) => DataOutUse::None,
        op::WRITE_SAME_10 | op::WRITE_SAME_16 => DataOutUse::Parameters {
            max: MAX_BLOCK_SIZE,
        },
        op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => DataOutUse::Payload,
        _ => DataOutUse::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_big_endian_and_zero_past_the_end() {
        let cdb = Cdb(&[0x88, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(cdb.be16(2), 0x0102);
        assert_eq!(cdb.be32(2), 0x0102_0304);
        assert_eq!(cdb.be64(2), 0x0102_0304_0506_0708);
        assert_eq!(cdb.be32(8), 0x0708_0000);
        assert_eq!(cdb.byte(100), 0);
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
    }
}
