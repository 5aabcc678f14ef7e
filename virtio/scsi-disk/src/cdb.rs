//! Reading the fields of a command descriptor block.

/// A CDB as sent by the driver. Fields beyond its end read as zero: the dispatcher has already
/// checked the length against the opcode table, so this only keeps hostile input from panicking.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cdb<'a>(pub(crate) &'a [u8]);

impl Cdb<'_> {
    #[inline(always)]
    pub(crate) fn byte(&self, index: usize) -> u8 {
        self.0.get(index).copied().unwrap_or(0)
    }

    pub(crate) fn bit(&self, index: usize, bit: u8) -> bool {
        self.byte(index) & (1 << bit) != 0
    }

    #[inline(always)]
    fn be<const N: usize>(&self, index: usize) -> [u8; N] {
        match self.0.get(index..).and_then(<[u8]>::first_chunk::<N>) {
            Some(bytes) => *bytes,
            None => std::array::from_fn(|i| self.byte(index + i)),
        }
    }

    #[inline(always)]
    pub(crate) fn be16(&self, index: usize) -> u16 {
        u16::from_be_bytes(self.be(index))
    }

    #[inline(always)]
    pub(crate) fn be32(&self, index: usize) -> u32 {
        u32::from_be_bytes(self.be(index))
    }

    #[inline(always)]
    pub(crate) fn be64(&self, index: usize) -> u64 {
        u64::from_be_bytes(self.be(index))
    }

    /// The CDB's length as its operation code's group says (SPC-5 4.2.5.1): where the fields
    /// of commands that exist in several sizes (READ, WRITE, MODE SENSE ...) sit.
    pub(crate) fn size(&self) -> CdbSize {
        match self.byte(0) >> 5 {
            0 => CdbSize::Six,
            4 => CdbSize::Sixteen,
            5 => CdbSize::Twelve,
            _ => CdbSize::Ten,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CdbSize {
    Six,
    Ten,
    Twelve,
    Sixteen,
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
    fn size_follows_the_opcode_group() {
        assert_eq!(Cdb(&[0x08]).size(), CdbSize::Six);
        assert_eq!(Cdb(&[0x28]).size(), CdbSize::Ten);
        assert_eq!(Cdb(&[0x55]).size(), CdbSize::Ten);
        assert_eq!(Cdb(&[0xa8]).size(), CdbSize::Twelve);
        assert_eq!(Cdb(&[0x88]).size(), CdbSize::Sixteen);
    }
}
