//! The virtio-scsi device configuration structure (virtio 1.2 §5.6.4).
//!
//! Every field is read-only except `sense_size` and `cdb_size`, which the driver may write to
//! change the layout of later requests; the request queues read them through [`HeaderSizes`].

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use virtio_bindings::virtio_scsi::{
    virtio_scsi_config, virtio_scsi_event, VIRTIO_SCSI_CDB_DEFAULT_SIZE,
    VIRTIO_SCSI_SENSE_DEFAULT_SIZE,
};

/// `struct virtio_scsi_config` as the driver sees it.
#[repr(C)]
#[derive(Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VirtioScsiConfig {
    pub num_queues: U32,
    pub seg_max: U32,
    pub max_sectors: U32,
    pub cmd_per_lun: U32,
    pub event_info_size: U32,
    pub sense_size: U32,
    pub cdb_size: U32,
    pub max_channel: U16,
    pub max_target: U16,
    pub max_lun: U32,
}

/// Size of the configuration structure in bytes.
pub const CONFIG_SIZE: usize = size_of::<VirtioScsiConfig>();

const _: () = assert!(CONFIG_SIZE == size_of::<virtio_scsi_config>());
const _: () = assert!(
    offset_of!(VirtioScsiConfig, event_info_size)
        == offset_of!(virtio_scsi_config, event_info_size)
);
const _: () =
    assert!(offset_of!(VirtioScsiConfig, cdb_size) == offset_of!(virtio_scsi_config, cdb_size));
const _: () = assert!(
    offset_of!(VirtioScsiConfig, max_channel) == offset_of!(virtio_scsi_config, max_channel)
);
const _: () =
    assert!(offset_of!(VirtioScsiConfig, max_lun) == offset_of!(virtio_scsi_config, max_lun));

/// The driver-writable sizes of the CDB and sense fields, shared with every queue worker so that
/// a write is honoured by the next request, whichever thread processes it.
#[derive(Debug)]
pub struct HeaderSizes {
    sense_size: AtomicU32,
    cdb_size: AtomicU32,
}

impl HeaderSizes {
    fn new() -> HeaderSizes {
        HeaderSizes {
            sense_size: AtomicU32::new(VIRTIO_SCSI_SENSE_DEFAULT_SIZE),
            cdb_size: AtomicU32::new(VIRTIO_SCSI_CDB_DEFAULT_SIZE),
        }
    }

    pub fn sense_size(&self) -> u32 {
        self.sense_size.load(Ordering::Relaxed)
    }

    pub fn cdb_size(&self) -> u32 {
        self.cdb_size.load(Ordering::Relaxed)
    }

    fn restore_defaults(&self) {
        self.sense_size
            .store(VIRTIO_SCSI_SENSE_DEFAULT_SIZE, Ordering::Relaxed);
        self.cdb_size
            .store(VIRTIO_SCSI_CDB_DEFAULT_SIZE, Ordering::Relaxed);
    }
}

/// The configuration the device presents to the driver.
#[derive(Debug)]
pub struct ScsiConfig {
    num_queues: u32,
    seg_max: u32,
    max_sectors: u32,
    cmd_per_lun: u32,
    max_lun: u32,
    sizes: Arc<HeaderSizes>,
}

impl ScsiConfig {
    /// `num_queues` counts request queues only; `max_lun` is the highest LUN served.
    pub fn new(num_queues: u16, queue_size: u16, max_sectors: u32, max_lun: u16) -> ScsiConfig {
        ScsiConfig {
            num_queues: u32::from(num_queues),
            // Two descriptors of every chain carry the request and response headers.
            seg_max: u32::from(queue_size.saturating_sub(2)),
            max_sectors,
            cmd_per_lun: u32::from(queue_size),
            max_lun: u32::from(max_lun),
            sizes: Arc::new(HeaderSizes::new()),
        }
    }

    pub fn header_sizes(&self) -> &Arc<HeaderSizes> {
        &self.sizes
    }

    /// The structure as the driver sees it.
    fn image(&self) -> VirtioScsiConfig {
        // max_channel and max_target stay 0: one channel, one target.
        VirtioScsiConfig {
            num_queues: self.num_queues.into(),
            seg_max: self.seg_max.into(),
            max_sectors: self.max_sectors.into(),
            cmd_per_lun: self.cmd_per_lun.into(),
            event_info_size: (size_of::<virtio_scsi_event>() as u32).into(),
            sense_size: self.sizes.sense_size().into(),
            cdb_size: self.sizes.cdb_size().into(),
            max_lun: self.max_lun.into(),
            ..Default::default()
        }
    }

    /// Reads of any width at any offset; bytes past the structure read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let image = self.image();
        let bytes = image.as_bytes();
        for (i, out) in data.iter_mut().enumerate() {
            *out = offset
                .checked_add(i as u64)
                .and_then(|at| usize::try_from(at).ok())
                .and_then(|at| bytes.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Applies the bytes of a driver write that fall on `sense_size` or `cdb_size`; returns
    /// whether any did (bytes on read-only fields are ignored).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        let mut image = self.image();
        let writable = offset_of!(VirtioScsiConfig, sense_size)
            ..offset_of!(VirtioScsiConfig, cdb_size) + size_of::<U32>();
        let mut changed = false;
        for (i, value) in data.iter().enumerate() {
            let Some(at) = offset
                .checked_add(i as u64)
                .and_then(|at| usize::try_from(at).ok())
            else {
                continue;
            };
            if writable.contains(&at) {
                image.as_mut_bytes()[at] = *value;
                changed = true;
            }
        }
        if changed {
            self.sizes
                .sense_size
                .store(image.sense_size.get(), Ordering::Relaxed);
            self.sizes
                .cdb_size
                .store(image.cdb_size.get(), Ordering::Relaxed);
        }
        changed
    }

    /// Device reset: the writable fields go back to their defaults.
    pub fn reset(&mut self) {
        self.sizes.restore_defaults();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(config: &ScsiConfig, offset: usize) -> u32 {
        let mut data = [0u8; 4];
        config.read(offset as u64, &mut data);
        u32::from_le_bytes(data)
    }

    #[test]
    fn layout_and_values() {
        let config = ScsiConfig::new(4, 256, 0xFFFF, 3);
        assert_eq!(CONFIG_SIZE, 36);
        assert_eq!(field(&config, 0), 4);
        assert_eq!(field(&config, 4), 254);
        assert_eq!(field(&config, 8), 0xFFFF);
        assert_eq!(field(&config, 12), 256);
        assert_eq!(field(&config, 16), 16);
        assert_eq!(field(&config, 20), 96);
        assert_eq!(field(&config, 24), 32);
        assert_eq!(field(&config, 28), 0);
        assert_eq!(field(&config, 32), 3);
    }

    #[test]
    fn reads_of_any_width_and_past_the_end() {
        let config = ScsiConfig::new(2, 128, 0xFFFF, 0);
        let mut one = [0xAAu8; 1];
        config.read(4, &mut one);
        assert_eq!(one, [126]);
        let mut tail = [0xAAu8; 8];
        config.read(32, &mut tail);
        assert_eq!(tail, [0, 0, 0, 0, 0, 0, 0, 0]);
        let mut far = [0xAAu8; 2];
        config.read(u64::MAX, &mut far);
        assert_eq!(far, [0, 0]);
    }

    #[test]
    fn only_sense_and_cdb_size_are_writable() {
        let mut config = ScsiConfig::new(2, 128, 0xFFFF, 0);
        assert!(!config.write(0, &7u32.to_le_bytes()));
        assert_eq!(field(&config, 0), 2);
        assert!(config.write(20, &64u32.to_le_bytes()));
        assert!(config.write(24, &[16]));
        assert_eq!(config.header_sizes().sense_size(), 64);
        assert_eq!(config.header_sizes().cdb_size(), 16);
        // A write straddling a read-only field changes only the writable bytes.
        assert!(config.write(18, &[9, 9, 65, 0]));
        assert_eq!(field(&config, 16), 16);
        assert_eq!(config.header_sizes().sense_size(), 65);
        config.reset();
        assert_eq!(config.header_sizes().sense_size(), 96);
        assert_eq!(config.header_sizes().cdb_size(), 32);
    }
}
