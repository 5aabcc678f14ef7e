//! The MSI-X capability structure: where the table and the PBA live and the control bits.

/// Capability ID of MSI-X.
pub const MSIX_CAPABILITY_ID: u8 = 0x11;
/// Offset of Message Control from the start of the capability.
pub const MESSAGE_CONTROL: u8 = 2;
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
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&(vectors - 1).to_le_bytes());
        let table = (self.table_offset & !7) | u32::from(self.table_bar & 7);
        let pba = (self.pba_offset & !7) | u32::from(self.pba_bar & 7);
        body[2..6].copy_from_slice(&table.to_le_bytes());
        body[6..10].copy_from_slice(&pba.to_le_bytes());
        let mut mask = [0u8; 10];
        mask[0..2].copy_from_slice(&(CONTROL_ENABLE | CONTROL_FUNCTION_MASK).to_le_bytes());
        (body, mask)
    }
}
