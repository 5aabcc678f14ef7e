//! A type-0 PCI configuration space: the header, BARs and the capability list.
//!
//! Every byte has a write mask (bits the driver may change) and a write-one-to-clear mask; the
//! BAR sizing protocol falls out of the BAR write masks.

use std::mem::{offset_of, size_of};
use std::sync::Arc;

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::bar::Bar;
use crate::error::{check_range, PciError};
use crate::msix_capability::{
    MsixLayout, CONTROL_FUNCTION_MASK, MESSAGE_CONTROL, MSIX_CAPABILITY_ID,
};
use crate::msix_vectors::MsixVectors;

/// Size of conventional configuration space.
pub const CONFIG_SPACE_SIZE: u64 = 256;

/// The type-0 header (PCI Local Bus 3.0 §6.1), the first 64 bytes of configuration space.
#[repr(C)]
#[derive(Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct Type0Header {
    vendor_id: U16,
    device_id: U16,
    command: U16,
    status: U16,
    revision_id: u8,
    /// Programming interface, sub-class, base class.
    class_code: [u8; 3],
    cache_line_size: u8,
    latency_timer: u8,
    header_type: u8,
    bist: u8,
    bars: [U32; 6],
    cardbus_cis_pointer: U32,
    subsystem_vendor_id: U16,
    subsystem_id: U16,
    expansion_rom_base: U32,
    capabilities_pointer: u8,
    reserved: [u8; 7],
    interrupt_line: u8,
    interrupt_pin: u8,
    min_grant: u8,
    max_latency: u8,
}

const _: () = assert!(size_of::<Type0Header>() == 64);

const STATUS: usize = offset_of!(Type0Header, status);
const BAR0: usize = offset_of!(Type0Header, bars);
const CAPABILITIES_POINTER: usize = offset_of!(Type0Header, capabilities_pointer);
const FIRST_CAPABILITY: usize = size_of::<Type0Header>();

/// Memory Space Enable, Bus Master Enable, Parity Error Response, SERR# Enable, Interrupt Disable.
const COMMAND_WRITABLE: u16 = (1 << 1) | (1 << 2) | (1 << 6) | (1 << 8) | (1 << 10);
const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;
/// The error bits of the Status register, cleared by writing one.
const STATUS_WRITE_ONE_TO_CLEAR: u16 = (1 << 8) | 0xf800;

/// What identifies the function to a driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIdentity {
    pub vendor_id: u16,
    pub device_id: u16,
    pub revision: u8,
    /// Base class, sub-class and programming interface as 0xBBSSPP.
    pub class_code: u32,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
}

#[derive(Debug, Clone)]
struct Registers {
    bytes: [u8; CONFIG_SPACE_SIZE as usize],
    writable: [u8; CONFIG_SPACE_SIZE as usize],
    write_one_to_clear: [u8; CONFIG_SPACE_SIZE as usize],
}

impl Registers {
    fn put(&mut self, offset: usize, value: &[u8], writable: &[u8]) {
        self.bytes[offset..offset + value.len()].copy_from_slice(value);
        self.writable[offset..offset + writable.len()].copy_from_slice(writable);
    }
}

/// The configuration space of one function.
#[derive(Debug)]
pub struct ConfigSpace {
    registers: Registers,
    /// The registers as built, for function-level reset.
    power_on: Registers,
    bars: [Option<Bar>; 6],
    /// Offset of the last capability added, whose next pointer the next one fills in.
    last_capability: Option<usize>,
    next_free: usize,
    msix: Option<(usize, Arc<MsixVectors>)>,
}

impl ConfigSpace {
    pub fn new(identity: PciIdentity) -> Self {
        let mut registers = Registers {
            bytes: [0; CONFIG_SPACE_SIZE as usize],
            writable: [0; CONFIG_SPACE_SIZE as usize],
            write_one_to_clear: [0; CONFIG_SPACE_SIZE as usize],
        };
        let [class_code @ .., _] = identity.class_code.to_le_bytes();
        // Interrupt Pin stays 0: the function raises MSI-X only.
        let header = Type0Header {
            vendor_id: identity.vendor_id.into(),
            device_id: identity.device_id.into(),
            revision_id: identity.revision,
            class_code,
            subsystem_vendor_id: identity.subsystem_vendor_id.into(),
            subsystem_id: identity.subsystem_id.into(),
            ..Default::default()
        };
        let writable = Type0Header {
            command: COMMAND_WRITABLE.into(),
            cache_line_size: 0xff,
            interrupt_line: 0xff,
            ..Default::default()
        };
        let write_one_to_clear = Type0Header {
            status: STATUS_WRITE_ONE_TO_CLEAR.into(),
            ..Default::default()
        };
        registers.put(0, header.as_bytes(), writable.as_bytes());
        registers.write_one_to_clear[..FIRST_CAPABILITY]
            .copy_from_slice(write_one_to_clear.as_bytes());
        ConfigSpace {
            power_on: registers.clone(),
            registers,
            bars: [None; 6],
            last_capability: None,
            next_free: FIRST_CAPABILITY,
            msix: None,
        }
    }

    /// Declares BAR `index` (a 64-bit BAR also takes `index + 1`).
    pub fn set_bar(&mut self, index: u8, bar: Bar) -> Result<(), PciError> {
        bar.validate()?;
        let first = usize::from(index);
        let slots = first..first + bar.slots();
        if slots.end > self.bars.len() || self.bars[slots.clone()].iter().any(Option::is_some) {
            return Err(PciError::BarUnavailable(index));
        }
        if slots
            .clone()
            .any(|slot| self.slot_taken_by_64_bit_bar(slot))
        {
            return Err(PciError::BarUnavailable(index));
        }
        let values = bar.registers();
        let masks = bar.write_masks();
        for (i, slot) in slots.enumerate() {
            let offset = BAR0 + slot * 4;
            self.registers
                .put(offset, &values[i].to_le_bytes(), &masks[i].to_le_bytes());
        }
        self.bars[first] = Some(bar);
        self.power_on = self.registers.clone();
        Ok(())
    }

    fn slot_taken_by_64_bit_bar(&self, slot: usize) -> bool {
        slot > 0 && matches!(self.bars[slot - 1], Some(bar) if bar.slots() == 2)
    }

    /// The BAR declared at `index`, if any (not the upper half of a 64-bit BAR).
    pub fn bar(&self, index: u8) -> Option<Bar> {
        self.bars.get(usize::from(index)).copied().flatten()
    }

    /// Appends a capability; `body` follows the ID and next-pointer bytes and `write_mask`
    /// (same length) says which of its bits the driver may write. Returns the capability offset.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        write_mask: &[u8],
    ) -> Result<u8, PciError> {
        if write_mask.len() != body.len() {
            return Err(PciError::MaskLength {
                mask: write_mask.len(),
                body: body.len(),
            });
        }
        let length = body.len() + 2;
        let offset = self.next_free;
        if offset + length > CONFIG_SPACE_SIZE as usize {
            return Err(PciError::CapabilitySpace(length));
        }
        self.registers.put(offset, &[id, 0], &[]);
        self.registers.put(offset + 2, body, write_mask);
        match self.last_capability {
            Some(last) => self.registers.bytes[last + 1] = offset as u8,
            None => self.registers.bytes[CAPABILITIES_POINTER] = offset as u8,
        }
        let status = u16::from_le_bytes([
            self.registers.bytes[STATUS],
            self.registers.bytes[STATUS + 1],
        ]) | STATUS_CAPABILITIES_LIST;
        self.registers.put(STATUS, &status.to_le_bytes(), &[]);
        self.last_capability = Some(offset);
        // Capabilities are dword aligned.
        self.next_free = (offset + length).next_multiple_of(4);
        self.power_on = self.registers.clone();
        Ok(offset as u8)
    }

    /// Adds the MSI-X capability for `vectors`, whose Function Mask bit then follows the
    /// driver's writes. Returns the capability offset.
    pub fn add_msix(
        &mut self,
        vectors: Arc<MsixVectors>,
        layout: MsixLayout,
    ) -> Result<u8, PciError> {
        if self.msix.is_some() {
            return Err(PciError::MsixTwice);
        }
        let (body, mask) = layout.body(vectors.count());
        let offset = self.add_capability(MSIX_CAPABILITY_ID, &body, &mask)?;
        self.msix = Some((usize::from(offset), vectors));
        Ok(offset)
    }

    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), PciError> {
        let start = check_range(offset, data.len(), CONFIG_SPACE_SIZE)?;
        data.copy_from_slice(&self.registers.bytes[start..start + data.len()]);
        Ok(())
    }

    /// Applies a driver write through the write masks.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), PciError> {
        let start = check_range(offset, data.len(), CONFIG_SPACE_SIZE)?;
        for (i, &value) in data.iter().enumerate() {
            let at = start + i;
            let writable = self.registers.writable[at];
            let clear = self.registers.write_one_to_clear[at] & value;
            let byte = &mut self.registers.bytes[at];
            *byte = ((*byte & !writable) | (value & writable)) & !clear;
        }
        if let Some((cap, vectors)) = &self.msix {
            let control = cap + usize::from(MESSAGE_CONTROL);
            if start < control + 2 && control < start + data.len() {
                let value = u16::from_le_bytes([
                    self.registers.bytes[control],
                    self.registers.bytes[control + 1],
                ]);
                vectors.set_function_mask(value & CONTROL_FUNCTION_MASK != 0)?;
            }
        }
        Ok(())
    }

    /// Function-level reset: every register back to its value as built, MSI-X state too.
    pub fn reset(&mut self) {
        self.registers = self.power_on.clone();
        if let Some((_, vectors)) = &self.msix {
            vectors.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bar::BarWidth;

    fn identity() -> PciIdentity {
        PciIdentity {
            vendor_id: 0x1af4,
            device_id: 0x1048,
            revision: 1,
            class_code: 0x010000,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x0008,
        }
    }

    fn read_u32(config: &ConfigSpace, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        config.read(offset, &mut data).unwrap();
        u32::from_le_bytes(data)
    }

    fn read_u16(config: &ConfigSpace, offset: u64) -> u16 {
        let mut data = [0u8; 2];
        config.read(offset, &mut data).unwrap();
        u16::from_le_bytes(data)
    }

    #[test]
    fn header_fields_sit_at_their_spec_offsets() {
        let config = ConfigSpace::new(PciIdentity {
            class_code: 0x010203,
            revision: 7,
            ..identity()
        });
        assert_eq!(read_u32(&config, 0x00), 0x1048_1af4);
        assert_eq!(read_u32(&config, 0x08), 0x0102_0307);
        assert_eq!(read_u32(&config, 0x2c), 0x0008_1af4);
        assert_eq!(read_u32(&config, 0x3c), 0);
    }

    #[test]
    fn identity_fields_are_read_only() {
        let mut config = ConfigSpace::new(identity());
        config.write(0, &[0xff; 4]).unwrap();
        config.write(0x08, &[0xff; 4]).unwrap();
        config.write(0x2c, &[0xff; 4]).unwrap();
        config.write(0x3d, &[0xff]).unwrap();
        assert_eq!(read_u32(&config, 0), 0x1048_1af4);
        assert_eq!(read_u32(&config, 0x08), 0x0100_0001);
        assert_eq!(read_u32(&config, 0x2c), 0x0008_1af4);
        let mut pin = [0u8];
        config.read(0x3d, &mut pin).unwrap();
        assert_eq!(pin, [0]);
    }

    #[test]
    fn interrupt_line_and_command_are_writable_within_mask() {
        let mut config = ConfigSpace::new(identity());
        config.write(0x3c, &[0x0b]).unwrap();
        config.write(0x04, &0xffffu16.to_le_bytes()).unwrap();
        let mut line = [0u8];
        config.read(0x3c, &mut line).unwrap();
        assert_eq!(line, [0x0b]);
        assert_eq!(read_u16(&config, 0x04), COMMAND_WRITABLE);
    }

    #[test]
    fn status_error_bits_are_write_one_to_clear() {
        let mut config = ConfigSpace::new(identity());
        config.registers.bytes[STATUS + 1] = 0x81;
        config
            .write(STATUS as u64, &0x0100u16.to_le_bytes())
            .unwrap();
        assert_eq!(read_u16(&config, STATUS as u64), 0x8000);
        config
            .write(STATUS as u64, &0xffffu16.to_le_bytes())
            .unwrap();
        assert_eq!(read_u16(&config, STATUS as u64), 0);
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut config = ConfigSpace::new(identity());
        let bar64 = Bar {
            width: BarWidth::Bits64,
            prefetchable: true,
            size: 0x4000,
        };
        let bar32 = Bar {
            width: BarWidth::Bits32,
            prefetchable: false,
            size: 0x2000,
        };
        config.set_bar(4, bar64).unwrap();
        config.set_bar(1, bar32).unwrap();
        assert_eq!(read_u32(&config, 0x20), 0b1100);
        for offset in [0x14, 0x20, 0x24] {
            config.write(offset, &[0xff; 4]).unwrap();
        }
        assert_eq!(read_u32(&config, 0x14), 0xffff_e000);
        assert_eq!(read_u32(&config, 0x20), 0xffff_c00c);
        assert_eq!(read_u32(&config, 0x24), 0xffff_ffff);
        config.write(0x20, &0xfebf_0000u32.to_le_bytes()).unwrap();
        assert_eq!(read_u32(&config, 0x20), 0xfebf_000c);
        // Unused BARs and the ROM BAR size to zero.
        config.write(0x10, &[0xff; 4]).unwrap();
        config.write(0x30, &[0xff; 4]).unwrap();
        assert_eq!(read_u32(&config, 0x10), 0);
        assert_eq!(read_u32(&config, 0x30), 0);
        assert_eq!(config.bar(4), Some(bar64));
        assert_eq!(config.bar(5), None);
    }

    #[test]
    fn bars_reject_overlap_and_bad_sizes() {
        let mut config = ConfigSpace::new(identity());
        let bar64 = Bar {
            width: BarWidth::Bits64,
            prefetchable: false,
            size: 0x1000,
        };
        let bar32 = Bar {
            width: BarWidth::Bits32,
            prefetchable: false,
            size: 0x1000,
        };
        assert_eq!(config.set_bar(5, bar64), Err(PciError::BarUnavailable(5)));
        config.set_bar(2, bar64).unwrap();
        assert_eq!(config.set_bar(3, bar32), Err(PciError::BarUnavailable(3)));
        assert_eq!(config.set_bar(2, bar32), Err(PciError::BarUnavailable(2)));
        let odd = Bar {
            size: 0x1800,
            ..bar32
        };
        assert_eq!(config.set_bar(0, odd), Err(PciError::BarSize(0x1800)));
        let tiny = Bar { size: 8, ..bar32 };
        assert_eq!(config.set_bar(0, tiny), Err(PciError::BarSize(8)));
    }

    #[test]
    fn capabilities_are_chained_and_flagged() {
        let mut config = ConfigSpace::new(identity());
        assert_eq!(
            read_u16(&config, STATUS as u64) & STATUS_CAPABILITIES_LIST,
            0
        );
        let first = config
            .add_capability(0x09, &[3, 1, 2], &[0, 0, 0xff])
            .unwrap();
        let second = config.add_capability(0x09, &[4, 0, 0, 0], &[0; 4]).unwrap();
        assert_eq!(first, 0x40);
        assert_eq!(second, 0x48);
        assert_ne!(
            read_u16(&config, STATUS as u64) & STATUS_CAPABILITIES_LIST,
            0
        );
        let mut byte = [0u8];
        config.read(0x34, &mut byte).unwrap();
        assert_eq!(byte, [0x40]);
        config.read(0x41, &mut byte).unwrap();
        assert_eq!(byte, [0x48]);
        config.read(0x49, &mut byte).unwrap();
        assert_eq!(byte, [0]);
        config.write(0x42, &[0xaa, 0xbb, 0xcc]).unwrap();
        let mut body = [0u8; 3];
        config.read(0x42, &mut body).unwrap();
        assert_eq!(body, [3, 1, 0xcc]);
    }

    #[test]
    fn capability_errors() {
        let mut config = ConfigSpace::new(identity());
        assert_eq!(
            config.add_capability(0x09, &[0; 4], &[0; 3]),
            Err(PciError::MaskLength { mask: 3, body: 4 })
        );
        assert_eq!(
            config.add_capability(0x09, &[0; 200], &[0; 200]),
            Err(PciError::CapabilitySpace(202))
        );
    }

    #[test]
    fn accesses_out_of_range_are_errors() {
        let mut config = ConfigSpace::new(identity());
        let mut data = [0u8; 4];
        assert!(config.read(0xfe, &mut data).is_err());
        assert!(config.write(u64::MAX, &data).is_err());
        let mut all = [0u8; 256];
        config.read(0, &mut all).unwrap();
    }

    #[test]
    fn reset_restores_registers_and_msix_state() {
        let mut config = ConfigSpace::new(identity());
        let vectors = Arc::new(MsixVectors::new(2).unwrap());
        let layout = MsixLayout {
            table_bar: 1,
            table_offset: 0,
            pba_bar: 1,
            pba_offset: 0x1000,
        };
        let cap = u64::from(config.add_msix(vectors.clone(), layout).unwrap());
        config.write(0x04, &[0x06, 0]).unwrap();
        config.write(cap + 2, &0xc000u16.to_le_bytes()).unwrap();
        vectors.signal(0).unwrap();
        assert!(vectors.is_pending(0).unwrap());
        config.reset();
        assert_eq!(read_u16(&config, 0x04), 0);
        assert_eq!(read_u16(&config, cap + 2), 1);
        assert!(!vectors.is_pending(0).unwrap());
        assert_eq!(config.add_msix(vectors, layout), Err(PciError::MsixTwice));
    }
}
