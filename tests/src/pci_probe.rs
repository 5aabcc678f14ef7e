//! Probing a config-space snapshot as a virtio-pci driver does (virtio 1.2 §4.1.4), parsed with
//! `pci-driver`'s `PciConfig`.

use std::io;

use pci_driver::config::caps::{Capability, MsiXCapability, VendorSpecificCapability};
use pci_driver::config::PciConfig;
use pci_driver::regions::{AsPciSubregion, BackedByPciSubregion, PciMemoryRegion, PciRegion};

pub const VIRTIO_VENDOR_ID: u16 = 0x1af4;
/// 0x1040 + virtio device id 8 (SCSI host).
pub const VIRTIO_SCSI_MODERN_DEVICE_ID: u16 = 0x1048;

pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
pub const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;

pub const PCI_CAP_ID_VNDR: u8 = 0x09;
pub const PCI_CAP_ID_MSIX: u8 = 0x11;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("config space is {0} bytes, at least 256 needed")]
    Short(usize),
    #[error("parsing config space: {0}")]
    Parse(#[from] io::Error),
    #[error("vendor {vendor:#06x} device {device:#06x} is not modern virtio-scsi")]
    NotVirtioScsi { vendor: u16, device: u16 },
    #[error("virtio capability {cfg_type} at {offset:#x} is {len} bytes, shorter than {min}")]
    CapTooShort {
        cfg_type: u8,
        offset: u8,
        len: u8,
        min: u8,
    },
    #[error("no virtio-pci capability of type {0}")]
    MissingVirtioCap(u8),
    #[error("no MSI-X capability")]
    MissingMsix,
}

/// A `virtio_pci_cap` (§4.1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioCap {
    /// Where the capability sits in config space.
    pub cap_offset: u8,
    pub cap_len: u8,
    pub cfg_type: u8,
    pub bar: u8,
    pub id: u8,
    pub offset: u32,
    pub length: u32,
}

/// The MSI-X capability (PCI 7.7.2) as the driver found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbedMsixCap {
    pub cap_offset: u8,
    /// Number of vectors (table size field + 1).
    pub table_size: u16,
    pub enabled: bool,
    pub function_mask: bool,
    pub table_bir: u8,
    pub table_offset: u32,
    pub pba_bir: u8,
    pub pba_offset: u32,
}

/// Everything a driver learns from config space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciProbe {
    pub vendor_id: u16,
    pub device_id: u16,
    pub revision_id: u8,
    /// base class << 16 | sub-class << 8 | programming interface.
    pub class_code: u32,
    pub header_type: u8,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
    pub interrupt_pin: u8,
    pub has_capability_list: bool,
    /// Raw BAR registers 0-5.
    pub bars: [u32; 6],
    /// (offset, id) of every capability in list order.
    pub capabilities: Vec<(u8, u8)>,
    /// Every virtio vendor capability, in list order (a device may offer alternatives).
    pub virtio_caps: Vec<VirtioCap>,
    pub common: VirtioCap,
    pub notify: VirtioCap,
    pub notify_off_multiplier: u32,
    pub isr: VirtioCap,
    pub device: VirtioCap,
    pub pci_cfg: VirtioCap,
    pub msix: ProbedMsixCap,
}

impl PciProbe {
    /// Parses `config` (a snapshot of at least the 256 bytes of conventional config space).
    pub fn parse(config: &[u8]) -> Result<Self, ProbeError> {
        if config.len() < 256 {
            return Err(ProbeError::Short(config.len()));
        }
        let region = PciMemoryRegion::new(config);
        let cfg = PciConfig::backed_by(&region);
        let vendor_id = cfg.vendor_id().read()?;
        let device_id = cfg.device_id().read()?;
        if vendor_id != VIRTIO_VENDOR_ID || device_id != VIRTIO_SCSI_MODERN_DEVICE_ID {
            return Err(ProbeError::NotVirtioScsi {
                vendor: vendor_id,
                device: device_id,
            });
        }
        // pci-driver 0.1.4's PciClassCode puts the base class at 0x09, where PCI has the
        // programming interface, so the three bytes are read directly.
        let class_code = u32::from(region.read_u8(0x0b)?) << 16
            | u32::from(region.read_u8(0x0a)?) << 8
            | u32::from(region.read_u8(0x09)?);
        let mut bars = [0u32; 6];
        for (i, bar) in bars.iter_mut().enumerate() {
            *bar = region.read_le_u32(0x10 + 4 * i as u64)?;
        }

        let caps = cfg.capabilities()?;
        let capabilities = caps
            .iter()
            .map(|c| {
                let at = c.as_subregion().offset_in_underlying_region() as u8;
                Ok((at, c.header().capability_id().read()?))
            })
            .collect::<io::Result<Vec<_>>>()?;

        let mut virtio_caps = Vec::new();
        let mut notify_off_multiplier = None;
        for cap in caps.of_type::<VendorSpecificCapability>()? {
            let cap_offset = cap.as_subregion().offset_in_underlying_region() as u8;
            let cap_len = cap.capability_length().read()?;
            if cap_len < 16 {
                return Err(ProbeError::CapTooShort {
                    cfg_type: 0,
                    offset: cap_offset,
                    len: cap_len,
                    min: 16,
                });
            }
            let parsed = VirtioCap {
                cap_offset,
                cap_len,
                cfg_type: cap.read_u8(3)?,
                bar: cap.read_u8(4)?,
                id: cap.read_u8(5)?,
                offset: cap.read_le_u32(8)?,
                length: cap.read_le_u32(12)?,
            };
            let min = match parsed.cfg_type {
                VIRTIO_PCI_CAP_NOTIFY_CFG => 20,
                VIRTIO_PCI_CAP_PCI_CFG => 20,
                _ => 16,
            };
            if cap_len < min {
                return Err(ProbeError::CapTooShort {
                    cfg_type: parsed.cfg_type,
                    offset: cap_offset,
                    len: cap_len,
                    min,
                });
            }
            if parsed.cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG && notify_off_multiplier.is_none() {
                notify_off_multiplier = Some(cap.read_le_u32(16)?);
            }
            virtio_caps.push(parsed);
        }
        // §4.1.4.1: the driver uses the first capability of each type it understands.
        let first = |t: u8| {
            virtio_caps
                .iter()
                .find(|c| c.cfg_type == t)
                .copied()
                .ok_or(ProbeError::MissingVirtioCap(t))
        };

        let msix_cap = caps
            .of_type::<MsiXCapability>()?
            .next()
            .ok_or(ProbeError::MissingMsix)?;
        let control = msix_cap.read_le_u16(2)?;
        let table = msix_cap.read_le_u32(4)?;
        let pba = msix_cap.read_le_u32(8)?;
        let msix = ProbedMsixCap {
            cap_offset: msix_cap.as_subregion().offset_in_underlying_region() as u8,
            table_size: (control & 0x7ff) + 1,
            enabled: control & 0x8000 != 0,
            function_mask: control & 0x4000 != 0,
            table_bir: (table & 7) as u8,
            table_offset: table & !7,
            pba_bir: (pba & 7) as u8,
            pba_offset: pba & !7,
        };

        Ok(PciProbe {
            vendor_id,
            device_id,
            revision_id: cfg.revision_id().read()?,
            class_code,
            header_type: cfg.header_type().header_layout().read()?,
            subsystem_vendor_id: cfg.subsystem_vendor_id().read()?,
            subsystem_id: cfg.subsystem_id().read()?,
            interrupt_pin: cfg.interrupt_pin().read()?,
            has_capability_list: cfg.status().capabilities_list().read()?,
            bars,
            capabilities,
            common: first(VIRTIO_PCI_CAP_COMMON_CFG)?,
            notify: first(VIRTIO_PCI_CAP_NOTIFY_CFG)?,
            notify_off_multiplier: notify_off_multiplier
                .ok_or(ProbeError::MissingVirtioCap(VIRTIO_PCI_CAP_NOTIFY_CFG))?,
            isr: first(VIRTIO_PCI_CAP_ISR_CFG)?,
            device: first(VIRTIO_PCI_CAP_DEVICE_CFG)?,
            pci_cfg: first(VIRTIO_PCI_CAP_PCI_CFG)?,
            virtio_caps,
            msix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config space laid out as a modern virtio-scsi function would be.
    fn sample() -> Vec<u8> {
        let mut c = vec![0u8; 256];
        c[0..2].copy_from_slice(&0x1af4u16.to_le_bytes());
        c[2..4].copy_from_slice(&0x1048u16.to_le_bytes());
        c[6] = 0x10; // status: capability list
        c[8] = 1;
        c[0x09] = 0x00;
        c[0x0a] = 0x00;
        c[0x0b] = 0x01;
        c[0x10..0x14].copy_from_slice(&0x0000_000cu32.to_le_bytes());
        c[0x2c..0x2e].copy_from_slice(&0x1af4u16.to_le_bytes());
        c[0x2e..0x30].copy_from_slice(&0x0008u16.to_le_bytes());
        c[0x34] = 0x40;
        let mut at = 0x40usize;
        let caps: [(u8, u8, u32, u32, u8); 5] = [
            (1, 0, 0x0000, 0x1000, 16),
            (3, 0, 0x1000, 0x1000, 16),
            (4, 0, 0x2000, 0x1000, 16),
            (2, 0, 0x3000, 0x1000, 20),
            (5, 0, 0, 0, 20),
        ];
        for (i, &(t, bar, off, len, cap_len)) in caps.iter().enumerate() {
            let next = at + cap_len as usize;
            c[at] = PCI_CAP_ID_VNDR;
            c[at + 1] = if i + 1 == caps.len() {
                0x98
            } else {
                next as u8
            };
            c[at + 2] = cap_len;
            c[at + 3] = t;
            c[at + 4] = bar;
            c[at + 8..at + 12].copy_from_slice(&off.to_le_bytes());
            c[at + 12..at + 16].copy_from_slice(&len.to_le_bytes());
            if t == 2 {
                c[at + 16..at + 20].copy_from_slice(&4u32.to_le_bytes());
            }
            at = next;
        }
        c[0x98] = PCI_CAP_ID_MSIX;
        c[0x99] = 0;
        c[0x9a..0x9c].copy_from_slice(&(5u16 - 1).to_le_bytes());
        c[0x9c..0xa0].copy_from_slice(&(0x0000_0002u32).to_le_bytes());
        c[0xa0..0xa4].copy_from_slice(&(0x0000_0802u32).to_le_bytes());
        c
    }

    #[test]
    fn parses_every_capability() {
        let p = PciProbe::parse(&sample()).unwrap();
        assert_eq!(p.class_code, 0x010000);
        assert_eq!(p.revision_id, 1);
        assert_eq!(p.subsystem_id, 8);
        assert_eq!(p.capabilities.len(), 6);
        assert_eq!(p.common.offset, 0);
        assert_eq!(p.isr.offset, 0x1000);
        assert_eq!(p.device.offset, 0x2000);
        assert_eq!(p.notify.offset, 0x3000);
        assert_eq!(p.notify_off_multiplier, 4);
        assert_eq!(p.pci_cfg.cap_len, 20);
        assert_eq!(p.msix.cap_offset, 0x98);
        assert_eq!(p.msix.table_size, 5);
        assert_eq!((p.msix.table_bir, p.msix.table_offset), (2, 0));
        assert_eq!((p.msix.pba_bir, p.msix.pba_offset), (2, 0x800));
        assert!(!p.msix.enabled);
    }

    #[test]
    fn rejects_wrong_ids_and_missing_caps() {
        let mut c = sample();
        c[2] = 0x41;
        assert!(matches!(
            PciProbe::parse(&c),
            Err(ProbeError::NotVirtioScsi { .. })
        ));
        let mut c = sample();
        c[0x40 + 3] = 9;
        assert!(matches!(
            PciProbe::parse(&c),
            Err(ProbeError::MissingVirtioCap(VIRTIO_PCI_CAP_COMMON_CFG))
        ));
        let mut c = sample();
        c[0x85] = 0;
        assert!(matches!(PciProbe::parse(&c), Err(ProbeError::MissingMsix)));
        assert!(matches!(
            PciProbe::parse(&[0u8; 64]),
            Err(ProbeError::Short(64))
        ));
    }
}
