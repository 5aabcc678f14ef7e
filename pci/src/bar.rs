//! Base Address Registers: what a BAR is and how its register answers the sizing protocol.
//!
//! The driver sizes a BAR by writing all ones and reading back; the bits below the size are
//! read-only zeros. Expressing that as a write mask lets the configuration space implement the
//! protocol with no special case.

use crate::error::PciError;

/// Address width of a memory BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarWidth {
    Bits32,
    /// Takes two BAR slots: this one and the next.
    Bits64,
}

/// A memory BAR as the function declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    pub width: BarWidth,
    pub prefetchable: bool,
    /// A power of two, at least 16 bytes.
    pub size: u64,
}

const TYPE_64_BIT: u32 = 0b10 << 1;
const PREFETCHABLE: u32 = 1 << 3;
const FLAG_BITS: u64 = 0xf;

impl Bar {
    pub(crate) fn validate(&self) -> Result<(), PciError> {
        let limit = match self.width {
            BarWidth::Bits32 => 1 << 31,
            BarWidth::Bits64 => 1 << 63,
        };
        if !self.size.is_power_of_two() || self.size < 16 || self.size > limit {
            return Err(PciError::BarSize(self.size));
        }
        Ok(())
    }

    /// Number of 32-bit BAR slots the BAR occupies.
    pub fn slots(&self) -> usize {
        match self.width {
            BarWidth::Bits32 => 1,
            BarWidth::Bits64 => 2,
        }
    }

    /// Initial register values (low dword, then the high dword for a 64-bit BAR).
    pub(crate) fn registers(&self) -> [u32; 2] {
        let mut low = 0;
        if self.width == BarWidth::Bits64 {
            low |= TYPE_64_BIT;
        }
        if self.prefetchable {
            low |= PREFETCHABLE;
        }
        [low, 0]
    }

    /// Writable bits of the register slots: the address bits at or above the size.
    pub(crate) fn write_masks(&self) -> [u32; 2] {
        let address_bits = !(self.size - 1) & !FLAG_BITS;
        match self.width {
            BarWidth::Bits32 => [address_bits as u32, 0],
            BarWidth::Bits64 => [address_bits as u32, (address_bits >> 32) as u32],
        }
    }
}
