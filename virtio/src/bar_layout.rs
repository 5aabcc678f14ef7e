//! Where the virtio structures and the MSI-X table sit in the function's BARs.
//!
//! BAR4 (64-bit memory) holds the virtio structures, each on its own page; BAR1 (32-bit memory)
//! holds the MSI-X table and PBA, as QEMU's own virtio-pci does.

use std::ops::Range;

use pci::MsixLayout;

use crate::common_cfg::COMMON_CFG_SIZE;

pub const MSIX_BAR: u8 = 1;
pub const VIRTIO_BAR: u8 = 4;
/// One notify address per queue, a dword apart.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;

const PAGE: u64 = 0x1000;

fn pages(bytes: u64) -> u64 {
    bytes.max(1).next_multiple_of(PAGE)
}

/// The structure a BAR access reaches, with the offset inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarTarget {
    Common(u64),
    /// The ISR byte (accesses of 1, 2 or 4 bytes at its offset).
    Isr,
    Device(u64),
    Notify(u64),
    MsixTable(u64),
    MsixPba(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BarLayout {
    pub common: Range<u64>,
    pub isr: Range<u64>,
    pub device: Range<u64>,
    pub notify: Range<u64>,
    pub virtio_bar_size: u64,
    pub msix: MsixLayout,
    pub msix_bar_size: u64,
}

impl BarLayout {
    pub fn new(queue_count: u16, config_size: usize, vectors: u16) -> Self {
        let common = 0..COMMON_CFG_SIZE;
        let isr = PAGE..PAGE + 1;
        let device_start = 2 * PAGE;
        let device = device_start..device_start + config_size as u64;
        let notify_start = device_start + pages(config_size as u64);
        let notify =
            notify_start..notify_start + u64::from(queue_count) * u64::from(NOTIFY_OFF_MULTIPLIER);
        let virtio_bar_size = (notify_start + pages(notify.end - notify_start)).next_power_of_two();

        let pba_offset = pages(MsixLayout::table_size(vectors));
        let msix_bar_size = (pba_offset + pages(MsixLayout::pba_size(vectors))).next_power_of_two();
        BarLayout {
            common,
            isr,
            device,
            notify,
            virtio_bar_size,
            msix: MsixLayout {
                table_bar: MSIX_BAR,
                table_offset: 0,
                pba_bar: MSIX_BAR,
                // A 32-bit BAR cannot be larger than 2 GiB, and 2048 vectors need 40 KiB.
                pba_offset: pba_offset as u32,
            },
            msix_bar_size,
        }
    }

    /// Which structure an access of `len` bytes at `offset` of BAR `bar` falls in; offsets in
    /// the answer are relative to that structure.
    pub fn locate(&self, bar: u8, offset: u64, len: usize) -> Option<BarTarget> {
        let within = |range: &Range<u64>| {
            let end = offset.checked_add(len as u64)?;
            (offset >= range.start && end <= range.end).then(|| offset - range.start)
        };
        match bar {
            VIRTIO_BAR => {
                if let Some(at) = within(&self.common) {
                    Some(BarTarget::Common(at))
                } else if offset == self.isr.start && matches!(len, 1 | 2 | 4) {
                    Some(BarTarget::Isr)
                } else if let Some(at) = within(&self.device) {
                    Some(BarTarget::Device(at))
                } else {
                    within(&self.notify).map(BarTarget::Notify)
                }
            }
            MSIX_BAR => {
                let pba = u64::from(self.msix.pba_offset);
                if offset >= pba {
                    Some(BarTarget::MsixPba(offset - pba))
                } else {
                    Some(BarTarget::MsixTable(offset))
                }
            }
            _ => None,
        }
    }

    /// BAR offset of the notify address of `queue`.
    pub fn notify_offset(&self, queue: u16) -> u64 {
        self.notify.start + u64::from(queue) * u64::from(NOTIFY_OFF_MULTIPLIER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scsi_layout() {
        // virtio-scsi with 4 request queues: 7 queues, 36-byte config, 8 vectors.
        let layout = BarLayout::new(7, 36, 8);
        assert_eq!(layout.common, 0..0x38);
        assert_eq!(layout.isr.start, 0x1000);
        assert_eq!(layout.device, 0x2000..0x2024);
        assert_eq!(layout.notify, 0x3000..0x301c);
        assert_eq!(layout.notify_offset(2), 0x3008);
        assert_eq!(layout.virtio_bar_size, 0x4000);
        assert_eq!(layout.msix.pba_offset, 0x1000);
        assert_eq!(layout.msix_bar_size, 0x2000);
    }

    #[test]
    fn accesses_are_located_in_their_structure() {
        let layout = BarLayout::new(7, 36, 8);
        assert_eq!(layout.locate(4, 0x14, 1), Some(BarTarget::Common(0x14)));
        assert_eq!(layout.locate(4, 0x34, 8), None);
        assert_eq!(layout.locate(4, 0x1000, 1), Some(BarTarget::Isr));
        assert_eq!(layout.locate(4, 0x1001, 1), None);
        assert_eq!(layout.locate(4, 0x2020, 4), Some(BarTarget::Device(0x20)));
        assert_eq!(layout.locate(4, 0x2022, 4), None);
        assert_eq!(layout.locate(4, 0x3018, 2), Some(BarTarget::Notify(0x18)));
        assert_eq!(layout.locate(4, u64::MAX, 2), None);
        assert_eq!(layout.locate(1, 0x10, 4), Some(BarTarget::MsixTable(0x10)));
        assert_eq!(layout.locate(1, 0x1000, 8), Some(BarTarget::MsixPba(0)));
        assert_eq!(layout.locate(0, 0, 4), None);
    }

    #[test]
    fn sizes_stay_powers_of_two_for_large_layouts() {
        let layout = BarLayout::new(1100, 0x1800, 1101);
        assert_eq!(layout.notify.start, 0x4000);
        assert_eq!(layout.virtio_bar_size, 0x8000);
        assert_eq!(layout.msix.pba_offset, 0x5000);
        assert_eq!(layout.msix_bar_size, 0x8000);
    }
}
