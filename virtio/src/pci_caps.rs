//! The virtio-pci vendor capabilities (virtio 1.2, 4.1.4): where each structure lives.

/// PCI capability ID of vendor-specific capabilities.
pub const VENDOR_CAPABILITY_ID: u8 = 0x09;

/// `cfg_type` values.
pub const COMMON_CFG: u8 = 1;
pub const NOTIFY_CFG: u8 = 2;
pub const ISR_CFG: u8 = 3;
pub const DEVICE_CFG: u8 = 4;
pub const PCI_CFG: u8 = 5;

/// Length of `struct virtio_pci_cap`, header included.
const CAP_LENGTH: u8 = 16;
/// The notify and PCI configuration access capabilities append one dword.
const EXTENDED_CAP_LENGTH: u8 = 20;

/// Offsets inside `struct virtio_pci_cfg_cap`, from the start of the capability.
pub const PCI_CFG_BAR: u64 = 4;
pub const PCI_CFG_OFFSET: u64 = 8;
pub const PCI_CFG_LENGTH: u64 = 12;
pub const PCI_CFG_DATA: u64 = 16;

/// One `struct virtio_pci_cap`: a structure of type `cfg_type` at `offset..offset + length` of
/// BAR `bar`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioPciCap {
    pub cfg_type: u8,
    pub bar: u8,
    pub offset: u32,
    pub length: u32,
}

impl VirtioPciCap {
    /// The capability body after the ID and next-pointer bytes, with `extra` (the notify
    /// multiplier or the PCI access data window) appended. All of it is read-only.
    fn body(&self, extra: Option<u32>) -> Vec<u8> {
        let cap_len = if extra.is_some() {
            EXTENDED_CAP_LENGTH
        } else {
            CAP_LENGTH
        };
        // cap_len, cfg_type, bar, id (one structure of each type), two bytes of padding.
        let mut body = vec![cap_len, self.cfg_type, self.bar, 0, 0, 0];
        body.extend_from_slice(&self.offset.to_le_bytes());
        body.extend_from_slice(&self.length.to_le_bytes());
        if let Some(extra) = extra {
            body.extend_from_slice(&extra.to_le_bytes());
        }
        debug_assert_eq!(body.len() + 2, usize::from(cap_len));
        body
    }

    /// A capability whose body the driver cannot write.
    pub fn read_only(&self) -> (Vec<u8>, Vec<u8>) {
        let body = self.body(None);
        let mask = vec![0; body.len()];
        (body, mask)
    }

    /// `struct virtio_pci_notify_cap`.
    pub fn notify(&self, notify_off_multiplier: u32) -> (Vec<u8>, Vec<u8>) {
        let body = self.body(Some(notify_off_multiplier));
        let mask = vec![0; body.len()];
        (body, mask)
    }

    /// `struct virtio_pci_cfg_cap`: bar, offset, length and the data window are the driver's.
    pub fn pci_cfg() -> (Vec<u8>, Vec<u8>) {
        let empty = VirtioPciCap {
            cfg_type: PCI_CFG,
            bar: 0,
            offset: 0,
            length: 0,
        };
        let body = empty.body(Some(0));
        let mut mask = vec![0; body.len()];
        let writable = |field: u64| (field - 2) as usize;
        mask[writable(PCI_CFG_BAR)] = 0xff;
        for field in [PCI_CFG_OFFSET, PCI_CFG_LENGTH, PCI_CFG_DATA] {
            mask[writable(field)..writable(field) + 4].fill(0xff);
        }
        (body, mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_cap_layout() {
        let cap = VirtioPciCap {
            cfg_type: COMMON_CFG,
            bar: 4,
            offset: 0x1000,
            length: 0x38,
        };
        let (body, mask) = cap.read_only();
        assert_eq!(body, [16, 1, 4, 0, 0, 0, 0, 0x10, 0, 0, 0x38, 0, 0, 0]);
        assert!(mask.iter().all(|&m| m == 0));
    }

    #[test]
    fn notify_cap_carries_the_multiplier() {
        let cap = VirtioPciCap {
            cfg_type: NOTIFY_CFG,
            bar: 4,
            offset: 0x3000,
            length: 0x1000,
        };
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
