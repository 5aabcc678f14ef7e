//! The virtio-pci vendor capabilities (virtio 1.2, 4.1.4): where each structure lives.

use std::mem::{offset_of, size_of};

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// PCI capability ID of vendor-specific capabilities.
pub const VENDOR_CAPABILITY_ID: u8 = 0x09;

/// `cfg_type` values.
pub const COMMON_CFG: u8 = 1;
pub const NOTIFY_CFG: u8 = 2;
pub const ISR_CFG: u8 = 3;
pub const DEVICE_CFG: u8 = 4;
pub const PCI_CFG: u8 = 5;

/// `struct virtio_pci_cap`: a structure of type `cfg_type` at `offset..offset + length` of BAR
/// `bar`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VirtioPciCap {
    pub cap_vndr: u8,
    pub cap_next: u8,
    pub cap_len: u8,
    pub cfg_type: u8,
    pub bar: u8,
    pub id: u8,
    pub padding: [u8; 2],
    pub offset: U32,
    pub length: U32,
}

/// `struct virtio_pci_notify_cap`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VirtioPciNotifyCap {
    pub cap: VirtioPciCap,
    pub notify_off_multiplier: U32,
}

/// `struct virtio_pci_cfg_cap`: a window through which the driver reaches the BARs.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VirtioPciCfgCap {
    pub cap: VirtioPciCap,
    pub pci_cfg_data: [u8; 4],
}

const _: () = assert!(size_of::<VirtioPciCap>() == 16);
const _: () = assert!(size_of::<VirtioPciNotifyCap>() == 20);
const _: () = assert!(size_of::<VirtioPciCfgCap>() == 20);

/// Offsets inside `struct virtio_pci_cfg_cap`, from the start of the capability.
pub const PCI_CFG_BAR: u64 = offset_of!(VirtioPciCfgCap, cap.bar) as u64;
pub const PCI_CFG_OFFSET: u64 = offset_of!(VirtioPciCfgCap, cap.offset) as u64;
pub const PCI_CFG_LENGTH: u64 = offset_of!(VirtioPciCfgCap, cap.length) as u64;
pub const PCI_CFG_DATA: u64 = offset_of!(VirtioPciCfgCap, pci_cfg_data) as u64;

/// The capability list adds the ID and next-pointer bytes itself; it takes what follows.
const BODY: usize = offset_of!(VirtioPciCap, cap_len);

/// A capability's body and the write mask of that body.
fn body_and_mask<T: IntoBytes + Immutable>(cap: &T, mask: &T) -> (Vec<u8>, Vec<u8>) {
    (
        cap.as_bytes()[BODY..].to_vec(),
        mask.as_bytes()[BODY..].to_vec(),
    )
}

impl VirtioPciCap {
    /// One structure of each type, so `id` stays 0.
    pub fn new(cfg_type: u8, bar: u8, offset: u32, length: u32) -> VirtioPciCap {
        VirtioPciCap {
            cap_vndr: VENDOR_CAPABILITY_ID,
            cap_len: size_of::<VirtioPciCap>() as u8,
            cfg_type,
            bar,
            offset: offset.into(),
            length: length.into(),
            ..Default::default()
        }
    }

    /// A capability whose body the driver cannot write.
    pub fn read_only(&self) -> (Vec<u8>, Vec<u8>) {
        body_and_mask(self, &VirtioPciCap::default())
    }

    /// `struct virtio_pci_notify_cap`, read-only.
    pub fn notify(&self, notify_off_multiplier: u32) -> (Vec<u8>, Vec<u8>) {
        let cap = VirtioPciNotifyCap {
            cap: VirtioPciCap {
                cap_len: size_of::<VirtioPciNotifyCap>() as u8,
                ..*self
            },
            notify_off_multiplier: notify_off_multiplier.into(),
        };
        body_and_mask(&cap, &VirtioPciNotifyCap::default())
    }

    /// `struct virtio_pci_cfg_cap`: bar, offset, length and the data window are the driver's.
    pub fn pci_cfg() -> (Vec<u8>, Vec<u8>) {
        let cap = VirtioPciCfgCap {
            cap: VirtioPciCap {
                cap_len: size_of::<VirtioPciCfgCap>() as u8,
                ..VirtioPciCap::new(PCI_CFG, 0, 0, 0)
            },
            pci_cfg_data: [0; 4],
        };
        let writable = VirtioPciCfgCap {
            cap: VirtioPciCap {
                bar: 0xff,
                offset: u32::MAX.into(),
                length: u32::MAX.into(),
                ..Default::default()
            },
            pci_cfg_data: [0xff; 4],
        };
        body_and_mask(&cap, &writable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_cap_layout() {
        let cap = VirtioPciCap::new(COMMON_CFG, 4, 0x1000, 0x38);
        let (body, mask) = cap.read_only();
        assert_eq!(body, [16, 1, 4, 0, 0, 0, 0, 0x10, 0, 0, 0x38, 0, 0, 0]);
        assert!(mask.iter().all(|&m| m == 0));
    }

    #[test]
    fn notify_cap_carries_the_multiplier() {
        let cap = VirtioPciCap::new(NOTIFY_CFG, 4, 0x3000, 0x1000);
        let (body, _) = cap.notify(4);
        assert_eq!(body.len(), 18);
        assert_eq!(body[0], 20);
        assert_eq!(&body[14..], &[4, 0, 0, 0]);
    }

    #[test]
    fn pci_cfg_cap_fields_are_writable() {
        let (body, mask) = VirtioPciCap::pci_cfg();
        assert_eq!(body[0], 20);
        assert_eq!(body[1], PCI_CFG);
        assert_eq!(
            mask,
            [
                0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                0xff, 0xff
            ]
        );
    }
}
