//! SCSI sense data (SPC-5 4.4): the key/ASC/ASCQ triple, with an optional sense-key specific
//! field pointer, in fixed (0x70) or descriptor (0x72) format.

/// Sense keys (SPC-5 table 54).
pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
}

/// Length of fixed-format sense data with the additional sense bytes we fill in.
pub const FIXED_SENSE_LEN: usize = 18;

/// Points at the CDB or parameter-list byte (and bit) that made an ILLEGAL REQUEST, so that the
/// driver's log says exactly which field was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// `true` when the offending byte is in the CDB, `false` when in the parameter list.
    pub in_cdb: bool,
    pub byte: u16,
    /// The offending bit (0..=7) within `byte`, when known.
    pub bit: Option<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    pub field: Option<FieldPointer>,
}

impl Sense {
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        Sense {
            key,
            asc,
            ascq,
            field: None,
        }
    }

    pub const NO_SENSE: Sense = Sense::new(key::NO_SENSE, 0x00, 0x00);
    pub const UNRECOVERED_READ_ERROR: Sense = Sense::new(key::MEDIUM_ERROR, 0x11, 0x00);
    pub const WRITE_ERROR: Sense = Sense::new(key::MEDIUM_ERROR, 0x0c, 0x00);
    pub const INTERNAL_TARGET_FAILURE: Sense = Sense::new(key::HARDWARE_ERROR, 0x44, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x1a, 0x00);
    pub const INVALID_COMMAND_OPERATION_CODE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x24, 0x00);
    pub const LOGICAL_UNIT_NOT_SUPPORTED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x00);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x39, 0x00);
    pub const POWER_ON_RESET_OCCURRED: Sense = Sense::new(key::UNIT_ATTENTION, 0x29, 0x00);
    pub const CAPACITY_DATA_HAS_CHANGED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2a, 0x09);
    pub const REPORTED_LUNS_DATA_HAS_CHANGED: Sense = Sense::new(key::UNIT_ATTENTION, 0x3f, 0x0e);
    pub const WRITE_PROTECTED: Sense = Sense::new(key::DATA_PROTECT, 0x27, 0x00);
    /// Thin provisioning ran out of space (the backend's ENOSPC).
    pub const SPACE_ALLOCATION_FAILED_WRITE_PROTECT: Sense =
        Sense::new(key::DATA_PROTECT, 0x27, 0x07);

    /// INVALID FIELD IN CDB pointing at `byte` (and `bit`) of the CDB.
    pub const fn invalid_field_in_cdb(byte: u16, bit: Option<u8>) -> Self {
        Sense::INVALID_FIELD_IN_CDB.with_field(true, byte, bit)
    }

    /// INVALID FIELD IN PARAMETER LIST pointing at `byte` (and `bit`) of the parameter list.
    pub const fn invalid_field_in_parameter_list(byte: u16, bit: Option<u8>) -> Self {
        Sense::INVALID_FIELD_IN_PARAMETER_LIST.with_field(false, byte, bit)
    }

    const fn with_field(self, in_cdb: bool, byte: u16, bit: Option<u8>) -> Self {
        Sense {
            field: Some(FieldPointer { in_cdb, byte, bit }),
            ..self
        }
    }

    fn sense_key_specific(&self) -> Option<[u8; 3]> {
        self.field.map(|field| {
            let mut flags = 0x80; // SKSV
            if field.in_cdb {
                flags |= 0x40;
            }
            if let Some(bit) = field.bit {
                flags |= 0x08 | (bit & 0x7);
            }
            let [high, low] = field.byte.to_be_bytes();
            [flags, high, low]
        })
    }

    /// Writes fixed-format sense data (response code 0x70, current error) into `out`, truncated
    /// to its length, and returns the number of bytes written.
    pub fn to_fixed_format(&self, out: &mut [u8]) -> usize {
        let mut data = [0u8; FIXED_SENSE_LEN];
        data[0] = 0x70;
        data[2] = self.key & 0x0f;
        data[7] = (FIXED_SENSE_LEN - 8) as u8;
        data[12] = self.asc;
        data[13] = self.ascq;
        if let Some(sks) = self.sense_key_specific() {
            data[15..18].copy_from_slice(&sks);
        }
        copy_truncated(&data, out)
    }

    /// Writes descriptor-format sense data (response code 0x72) into `out`, truncated to its
    /// length, and returns the number of bytes written. A field pointer becomes a sense-key
    /// specific descriptor.
    pub fn to_descriptor_format(&self, out: &mut [u8]) -> usize {
        let mut data = [0u8; 16];
        data[0] = 0x72;
        data[1] = self.key & 0x0f;
        data[2] = self.asc;
        data[3] = self.ascq;
        let len = match self.sense_key_specific() {
            Some(sks) => {
                data[7] = 8;
                data[8] = 0x02; // sense key specific descriptor
                data[9] = 0x06;
                data[12..15].copy_from_slice(&sks);
                16
            }
            None => 8,
        };
        copy_truncated(&data[..len], out)
    }
}

fn copy_truncated(data: &[u8], out: &mut [u8]) -> usize {
    let len = data.len().min(out.len());
    out[..len].copy_from_slice(&data[..len]);
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_has_key_asc_ascq_and_additional_length() {
        let mut out = [0xffu8; 32];
        assert_eq!(Sense::LBA_OUT_OF_RANGE.to_fixed_format(&mut out), 18);
        assert_eq!(out[0], 0x70);
        assert_eq!(out[2], 0x05);
        assert_eq!(out[7], 10);
        assert_eq!((out[12], out[13]), (0x21, 0x00));
        assert_eq!(&out[14..18], &[0, 0, 0, 0]);
        assert_eq!(out[18], 0xff, "nothing written past 18 bytes");
    }

    #[test]
    fn fixed_format_truncates_to_the_buffer() {
        let mut out = [0u8; 4];
        assert_eq!(Sense::WRITE_PROTECTED.to_fixed_format(&mut out), 4);
        assert_eq!(out, [0x70, 0, 0x07, 0]);
    }

    #[test]
    fn field_pointer_sets_sksv_cd_bpv() {
        let mut out = [0u8; 18];
        Sense::invalid_field_in_cdb(0x102, Some(5)).to_fixed_format(&mut out);
        assert_eq!(out[15], 0x80 | 0x40 | 0x08 | 5);
        assert_eq!(&out[16..18], &[0x01, 0x02]);
        Sense::invalid_field_in_parameter_list(3, None).to_fixed_format(&mut out);
        assert_eq!(out[15], 0x80);
        assert_eq!(&out[16..18], &[0, 3]);
    }

    #[test]
    fn descriptor_format() {
        let mut out = [0u8; 32];
        assert_eq!(
            Sense::POWER_ON_RESET_OCCURRED.to_descriptor_format(&mut out),
            8
        );
        assert_eq!(&out[..8], &[0x72, 0x06, 0x29, 0x00, 0, 0, 0, 0]);
        let len = Sense::invalid_field_in_cdb(2, Some(0)).to_descriptor_format(&mut out);
        assert_eq!(len, 16);
        assert_eq!(out[7], 8);
        assert_eq!(&out[8..10], &[0x02, 0x06]);
        assert_eq!(&out[12..15], &[0xc8, 0, 2]);
    }
}
