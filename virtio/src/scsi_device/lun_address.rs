//! The 8-byte LUN field of virtio-scsi requests (virtio 1.2 §5.6.6.1).
//!
//! Byte 0 is 1, byte 1 the target, bytes 2-3 the LUN in SAM flat space addressing (0x40 prefix)
//! or peripheral device addressing (byte 2 zero); the remaining bytes are not used.

/// Why a LUN field does not name a logical unit of our single target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LunAddressError {
    #[error("first LUN byte is {0}, not 1")]
    NotSingleLevel(u8),
    #[error("target {0} does not exist (only target 0)")]
    Target(u8),
    #[error("address method byte {0:#04x} is neither peripheral nor flat space")]
    AddressMethod(u8),
}

const FLAT_SPACE: u8 = 0x40;
const ADDRESS_METHOD_MASK: u8 = 0xC0;

/// The LUN number addressed by `lun`.
#[inline(always)]
pub fn parse(lun: &[u8; 8]) -> Result<u16, LunAddressError> {
    // Bytes 0-3 as one word, tested against both valid forms at once: every request names a
    // LUN, and the byte-by-byte tests cost some 20 instructions more.
    let [first, target, method, low, ..] = *lun;
    let word = u32::from_le_bytes([first, target, method, low]);
    if word & 0x00C0_FFFF == 0x0040_0001 {
        return Ok(u16::from_be_bytes([method & !ADDRESS_METHOD_MASK, low]));
    }
    if word & 0x00FF_FFFF == 0x0000_0001 {
        return Ok(u16::from(low));
    }
    refused(lun)
}

/// Why `lun`, which names no LUN, was refused.
#[cold]
fn refused(lun: &[u8; 8]) -> Result<u16, LunAddressError> {
    if lun[0] != 1 {
        return Err(LunAddressError::NotSingleLevel(lun[0]));
    }
    if lun[1] != 0 {
        return Err(LunAddressError::Target(lun[1]));
    }
    match lun[2] & ADDRESS_METHOD_MASK {
        // Peripheral device addressing: byte 2 is the bus (only bus 0 exists).
        0 if lun[2] == 0 => Ok(u16::from(lun[3])),
        FLAT_SPACE => Ok(u16::from_be_bytes([lun[2] & !ADDRESS_METHOD_MASK, lun[3]])),
        _ => Err(LunAddressError::AddressMethod(lun[2])),
    }
}

/// The LUN field naming `lun` of target 0 in an event, encoded as REPORT LUNS lists it
/// (peripheral below 256, flat space above): Linux reads an event's LUN as bytes 2 and 3 and
/// must find the number its scan gave the device.
pub fn encode(lun: u16) -> [u8; 8] {
    let [high, low] = (lun & 0x3FFF).to_be_bytes();
    let method = if lun < 256 { 0 } else { FLAT_SPACE };
    [1, 0, method | high, low, 0, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_and_peripheral_addressing() {
        assert_eq!(parse(&[1, 0, 0x40, 0, 0, 0, 0, 0]), Ok(0));
        assert_eq!(parse(&[1, 0, 0x40, 5, 0, 0, 0, 0]), Ok(5));
        assert_eq!(parse(&[1, 0, 0x7F, 0xFF, 0, 0, 0, 0]), Ok(16383));
        assert_eq!(parse(&[1, 0, 0, 7, 0, 0, 0, 0]), Ok(7));
    }

    #[test]
    fn every_address_method_byte() {
        for method in 0..=u8::MAX {
            let expected = match method & ADDRESS_METHOD_MASK {
                0 if method == 0 => Ok(9),
                FLAT_SPACE => Ok(u16::from(method & !ADDRESS_METHOD_MASK) << 8 | 9),
                _ => Err(LunAddressError::AddressMethod(method)),
            };
            assert_eq!(
                parse(&[1, 0, method, 9, 0, 0, 0, 0]),
                expected,
                "{method:#04x}"
            );
            let first = parse(&[2, 0, method, 9, 0, 0, 0, 0]);
            assert_eq!(first, Err(LunAddressError::NotSingleLevel(2)));
            let target = parse(&[1, 3, method, 9, 0, 0, 0, 0]);
            assert_eq!(target, Err(LunAddressError::Target(3)));
        }
    }

    #[test]
    fn bad_addresses() {
        assert_eq!(
            parse(&[0, 0, 0x40, 0, 0, 0, 0, 0]),
            Err(LunAddressError::NotSingleLevel(0))
        );
        assert_eq!(
            parse(&[1, 1, 0x40, 0, 0, 0, 0, 0]),
            Err(LunAddressError::Target(1))
        );
        assert_eq!(
            parse(&[1, 0, 0x80, 0, 0, 0, 0, 0]),
            Err(LunAddressError::AddressMethod(0x80))
        );
        assert_eq!(
            parse(&[1, 0, 0x01, 0, 0, 0, 0, 0]),
            Err(LunAddressError::AddressMethod(0x01))
        );
    }

    #[test]
    fn encode_round_trips() {
        for lun in [0u16, 1, 255, 256, 16383] {
            assert_eq!(parse(&encode(lun)), Ok(lun));
        }
    }
}
