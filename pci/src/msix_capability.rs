//! The MSI-X capability structure: where the table and the PBA live and the control bits.

use std::mem::{offset_of, size_of};

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Capability ID of MSI-X.
pub const MSIX_CAPABILITY_ID: u8 = 0x11;
/// The MSI-X capability (PCI Local Bus 3.0 §6.8.2).
#[repr(C)]
#[derive(Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MsixCap {
    pub cap_id: u8,
    pub cap_next: u8,
    pub message_control: U16,
    /// Table offset with the table's BIR in the low three bits.
    pub table: U32,
    /// PBA offset with the PBA's BIR in the low three bits.
    pub pba: U32,
}

const _: () = assert!(size_of::<MsixCap>() == 12);

/// Offset of Message Control from the start of the capability.
pub const MESSAGE_CONTROL: u8 = offset_of!(MsixCap, message_control) as u8;
/// The capability list adds the ID and next-pointer bytes itself; it takes what follows.
const BODY: usize = MESSAGE_CONTROL as usize;
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
pub const CONTROL_ENABLE: u16 = 1 << 15;
/// Bytes per MSI-X table entry.
pub const TABLE_ENTRY_SIZE: u64 = 16;

/// Location of the MSI-X table and the Pending Bit Array in the function's BARs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    pub table_bar: u8,
    /// 8-byte aligned.
    pub table_offset: u32,
    pub pba_bar: u8,
    /// 8-byte aligned.
    pub pba_offset: u32,
}

impl MsixLayout {
    /// Bytes the table takes for `vectors` vectors.
    pub fn table_size(vectors: u16) -> u64 {
        u64::from(vectors) * TABLE_ENTRY_SIZE
    }

    /// Bytes the PBA takes for `vectors` vectors (whole qwords).
    pub fn pba_size(vectors: u16) -> u64 {
        u64::from(vectors).div_ceil(64) * 8
    }

    /// The capability body after the ID and next-pointer bytes, and its write mask.
    pub(crate) fn body(&self, vectors: u16) -> ([u8; 10], [u8; 10]) {
        let cap = MsixCap {
            message_control: (vectors - 1).into(),
            table: ((self.table_offset & !7) | u32::from(self.table_bar & 7)).into(),
            pba: ((self.pba_offset & !7) | u32::from(self.pba_bar & 7)).into(),
            ..Default::default()
        };
        let writable = MsixCap {
            message_control: (CONTROL_ENABLE | CONTROL_FUNCTION_MASK).into(),
            ..Default::default()
        };
        let mut body = [0u8; 10];
        let mut mask = [0u8; 10];
        body.copy_from_slice(&cap.as_bytes()[BODY..]);
        mask.copy_from_slice(&writable.as_bytes()[BODY..]);
        (body, mask)
    }
}
