//! What a SCSI command comes to: data to return, an error, or work for the storage backend.

use super::sense::Sense;

/// Backend work a command needs, in bytes: the device multiplies nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskIo {
    /// Read `len` bytes at `offset` into the data-in buffers (`len` is the CDB's transfer length,
    /// which may differ from the driver's buffers: the device reports residual or overrun).
    Read { offset: u64, len: u64 },
    /// Write `len` bytes at `offset` from the data-out buffers. `fua` is set when the CDB asked
    /// for it and also whenever the write cache is disabled (MODE SELECT WCE=0).
    Write { offset: u64, len: u64, fua: bool },
    /// Make every completed write durable.
    Flush,
    /// VERIFY without byte comparison: the range is valid; the device may read it to check that
    /// it is readable, or complete GOOD at once.
    Verify { offset: u64, len: u64 },
    /// Deallocate these ranges (UNMAP descriptors, validated, zero-length ones dropped).
    Discard { ranges: Vec<(u64, u64)> },
    /// WRITE SAME with an all-zero block; `may_unmap` when the driver allowed deallocation and
    /// the LUN has discard.
    WriteZeroes {
        offset: u64,
        len: u64,
        may_unmap: bool,
    },
    /// WRITE SAME with a non-zero block: write `block` repeatedly over `len` bytes at `offset`;
    /// `fua` when the write cache is disabled.
    WriteSame {
        offset: u64,
        len: u64,
        block: Vec<u8>,
        fua: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Status GOOD; `data_in` goes to the driver's data-in buffers and may be shorter than them
    /// (the rest is residual).
    Good { data_in: Vec<u8> },
    /// Status CHECK CONDITION with this sense data.
    CheckCondition(Sense),
    /// The backend must do this; its result decides the status.
    Io(DiskIo),
}

impl Outcome {
    pub(crate) fn good() -> Self {
        Outcome::Good {
            data_in: Vec::new(),
        }
    }

    /// GOOD with `data` cut to the CDB's allocation length.
    pub(crate) fn data_in(mut data: Vec<u8>, allocation_length: usize) -> Self {
        data.truncate(allocation_length);
        Outcome::Good { data_in: data }
    }
}

impl From<Sense> for Outcome {
    fn from(sense: Sense) -> Self {
        Outcome::CheckCondition(sense)
    }
}

impl From<Result<Outcome, Sense>> for Outcome {
    fn from(result: Result<Outcome, Sense>) -> Self {
        result.unwrap_or_else(Outcome::CheckCondition)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The data-in of a GOOD outcome; panics on anything else.
    pub(crate) fn good(outcome: impl Into<Outcome>) -> Vec<u8> {
        match outcome.into() {
            Outcome::Good { data_in } => data_in,
            other => panic!("expected GOOD, got {other:?}"),
        }
    }

    #[test]
    fn data_in_is_cut_to_the_allocation_length() {
        assert_eq!(good(Outcome::data_in(vec![1, 2, 3], 2)), vec![1, 2]);
        assert_eq!(good(Outcome::data_in(vec![1, 2, 3], 10)), vec![1, 2, 3]);
        let error: Result<Outcome, Sense> = Err(Sense::LBA_OUT_OF_RANGE);
        assert_eq!(
            Outcome::from(error),
            Outcome::CheckCondition(Sense::LBA_OUT_OF_RANGE)
        );
    }
}
