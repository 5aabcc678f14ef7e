//! The common configuration structure (virtio 1.2, 4.1.4.3): feature negotiation, status,
//! MSI-X vector numbers and per-queue configuration.

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::Arc;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::pci_function::NO_VECTOR;
use crate::status::DRIVER_OK;
use crate::status::FEATURES_OK;

/// `struct virtio_pci_common_cfg` as the driver sees it, without the 1.2 notify-data and reset
/// fields, whose features this transport does not offer.
#[repr(C)]
#[derive(Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VirtioPciCommonCfg {
    pub device_feature_select: U32,
    pub device_feature: U32,
    pub driver_feature_select: U32,
    pub driver_feature: U32,
    pub config_msix_vector: U16,
    pub num_queues: U16,
    pub device_status: u8,
    pub config_generation: u8,
    pub queue_select: U16,
    pub queue_size: U16,
    pub queue_msix_vector: U16,
    pub queue_enable: U16,
    pub queue_notify_off: U16,
    pub queue_desc: U64,
    pub queue_driver: U64,
    pub queue_device: U64,
}

pub const COMMON_CFG_SIZE: u64 = size_of::<VirtioPciCommonCfg>() as u64;
const _: () = assert!(COMMON_CFG_SIZE == 0x38);

/// Field offsets of `VirtioPciCommonCfg`.
pub const DEVICE_FEATURE_SELECT: u64 = offset_of!(VirtioPciCommonCfg, device_feature_select) as u64;
pub const DEVICE_FEATURE: u64 = offset_of!(VirtioPciCommonCfg, device_feature) as u64;
pub const DRIVER_FEATURE_SELECT: u64 = offset_of!(VirtioPciCommonCfg, driver_feature_select) as u64;
pub const DRIVER_FEATURE: u64 = offset_of!(VirtioPciCommonCfg, driver_feature) as u64;
pub const CONFIG_MSIX_VECTOR: u64 = offset_of!(VirtioPciCommonCfg, config_msix_vector) as u64;
pub const NUM_QUEUES: u64 = offset_of!(VirtioPciCommonCfg, num_queues) as u64;
pub const DEVICE_STATUS: u64 = offset_of!(VirtioPciCommonCfg, device_status) as u64;
pub const CONFIG_GENERATION: u64 = offset_of!(VirtioPciCommonCfg, config_generation) as u64;
pub const QUEUE_SELECT: u64 = offset_of!(VirtioPciCommonCfg, queue_select) as u64;
pub const QUEUE_SIZE: u64 = offset_of!(VirtioPciCommonCfg, queue_size) as u64;
pub const QUEUE_MSIX_VECTOR: u64 = offset_of!(VirtioPciCommonCfg, queue_msix_vector) as u64;
pub const QUEUE_ENABLE: u64 = offset_of!(VirtioPciCommonCfg, queue_enable) as u64;
pub const QUEUE_NOTIFY_OFF: u64 = offset_of!(VirtioPciCommonCfg, queue_notify_off) as u64;
pub const QUEUE_DESC: u64 = offset_of!(VirtioPciCommonCfg, queue_desc) as u64;
pub const QUEUE_DRIVER: u64 = offset_of!(VirtioPciCommonCfg, queue_driver) as u64;
pub const QUEUE_DEVICE: u64 = offset_of!(VirtioPciCommonCfg, queue_device) as u64;

/// Every field's offset in order. The struct has no padding (`IntoBytes`), so a field ends where
/// the next one starts.
const FIELDS: [u64; 16] = [
    DEVICE_FEATURE_SELECT,
    DEVICE_FEATURE,
    DRIVER_FEATURE_SELECT,
    DRIVER_FEATURE,
    CONFIG_MSIX_VECTOR,
    NUM_QUEUES,
    DEVICE_STATUS,
    CONFIG_GENERATION,
    QUEUE_SELECT,
    QUEUE_SIZE,
    QUEUE_MSIX_VECTOR,
    QUEUE_ENABLE,
    QUEUE_NOTIFY_OFF,
    QUEUE_DESC,
    QUEUE_DRIVER,
    QUEUE_DEVICE,
];

/// Start and width of the field that holds byte `offset`.
fn field_at(offset: u64) -> Option<(u64, usize)> {
    let index = FIELDS
        .partition_point(|&start| start <= offset)
        .checked_sub(1)?;
    let start = FIELDS[index];
    let end = FIELDS.get(index + 1).copied().unwrap_or(COMMON_CFG_SIZE);
    (offset < end).then_some((start, (end - start) as usize))
}

/// A write the common configuration cannot carry out alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommonCfgWrite {
    Done,
    /// The driver wrote this to device_status.
    Status(u8),
}

/// The access does not match the structure's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadCommonAccess;

/// One queue's registers.
#[derive(Debug)]
pub struct QueueConfig {
    pub max_size: u16,
    pub size: u16,
    pub enabled: bool,
    /// Shared with the queue's interrupt, which reads it at every trigger.
    pub vector: Arc<AtomicU16>,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        QueueConfig {
            max_size,
            size: max_size,
            enabled: false,
            vector: Arc::new(AtomicU16::new(NO_VECTOR)),
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    fn reset(&mut self) {
        self.size = self.max_size;
        self.enabled = false;
        self.vector.store(NO_VECTOR, Ordering::Release);
        self.desc = 0;
        self.driver = 0;
        self.device = 0;
    }
}

#[derive(Debug)]
pub struct CommonCfg {
    offered_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    config_vector: Arc<AtomicU16>,
    /// Shared so that the device can set DEVICE_NEEDS_RESET from any thread.
    status: Arc<AtomicU8>,
    generation: Arc<AtomicU8>,
    queue_select: u16,
    queues: Vec<QueueConfig>,
    vector_count: u16,
}

impl CommonCfg {
    pub fn new(
        offered_features: u64,
        queue_count: u16,
        max_queue_size: u16,
        vector_count: u16,
    ) -> Self {
        CommonCfg {
            offered_features,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            config_vector: Arc::new(AtomicU16::new(NO_VECTOR)),
            status: Arc::new(AtomicU8::new(0)),
            generation: Arc::new(AtomicU8::new(0)),
            queue_select: 0,
            queues: (0..queue_count)
                .map(|_| QueueConfig::new(max_queue_size))
                .collect(),
            vector_count,
        }
    }

    pub fn offered_features(&self) -> u64 {
        self.offered_features
    }

    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    pub fn status(&self) -> u8 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn set_status(&self, status: u8) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn shared_status(&self) -> &Arc<AtomicU8> {
        &self.status
    }

    pub fn shared_generation(&self) -> &Arc<AtomicU8> {
        &self.generation
    }

    pub fn config_vector(&self) -> &Arc<AtomicU16> {
        &self.config_vector
    }

    pub fn queues(&self) -> &[QueueConfig] {
        &self.queues
    }

    /// Device reset: everything but the generation counter goes back to its initial value.
    pub fn reset(&mut self) {
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.config_vector.store(NO_VECTOR, Ordering::Release);
        self.status.store(0, Ordering::SeqCst);
        self.queue_select = 0;
        self.queues.iter_mut().for_each(QueueConfig::reset);
    }

    fn selected(&self) -> Option<&QueueConfig> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// A vector number as the driver may assign it: NO_VECTOR if the table has no such entry.
    fn vector_or_none(&self, vector: u16) -> u16 {
        if vector < self.vector_count {
            vector
        } else {
            NO_VECTOR
        }
    }

    fn image(&self) -> VirtioPciCommonCfg {
        let feature_word = |features: u64, select: u32| match select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        let mut image = VirtioPciCommonCfg {
            device_feature_select: self.device_feature_select.into(),
            device_feature: feature_word(self.offered_features, self.device_feature_select).into(),
            driver_feature_select: self.driver_feature_select.into(),
            driver_feature: feature_word(self.driver_features, self.driver_feature_select).into(),
            config_msix_vector: self.config_vector.load(Ordering::Acquire).into(),
            num_queues: (self.queues.len() as u16).into(),
            device_status: self.status(),
            config_generation: self.generation.load(Ordering::SeqCst),
            queue_select: self.queue_select.into(),
            ..Default::default()
        };
        // An unavailable queue reads as size 0 and everything else 0.
        if let Some(queue) = self.selected() {
            image.queue_size = queue.size.into();
            image.queue_msix_vector = queue.vector.load(Ordering::Acquire).into();
            image.queue_enable = u16::from(queue.enabled).into();
            image.queue_notify_off = self.queue_select.into();
            image.queue_desc = queue.desc.into();
            image.queue_driver = queue.driver.into();
            image.queue_device = queue.device.into();
        }
        image
    }

    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), BadCommonAccess> {
        if !matches!(data.len(), 1 | 2 | 4 | 8) {
            return Err(BadCommonAccess);
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(BadCommonAccess)?;
        if end > COMMON_CFG_SIZE {
            return Err(BadCommonAccess);
        }
        data.copy_from_slice(&self.image().as_bytes()[offset as usize..end as usize]);
        Ok(())
    }

    /// Applies a write that covers exactly one field (or one dword half of a 64-bit field).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<CommonCfgWrite, BadCommonAccess> {
        let (field, width) = field_at(offset).ok_or(BadCommonAccess)?;
        let half = width == 8 && data.len() == 4 && (offset == field || offset == field + 4);
        if !(offset == field && data.len() == width || half) {
            return Err(BadCommonAccess);
        }
        let mut bytes = [0u8; 8];
        bytes[..data.len()].copy_from_slice(data);
        let value = u64::from_le_bytes(bytes);
        let value16 = value as u16;
        match field {
            DEVICE_FEATURE_SELECT => self.device_feature_select = value as u32,
            DRIVER_FEATURE_SELECT => self.driver_feature_select = value as u32,
            DRIVER_FEATURE => self.write_driver_feature(value as u32),
            CONFIG_MSIX_VECTOR => {
                let vector = self.vector_or_none(value16);
                self.config_vector.store(vector, Ordering::Release);
            }
            DEVICE_STATUS => return Ok(CommonCfgWrite::Status(value as u8)),
            QUEUE_SELECT => self.queue_select = value16,
            QUEUE_MSIX_VECTOR => {
                let vector = self.vector_or_none(value16);
                if let Some(queue) = self.selected() {
                    queue.vector.store(vector, Ordering::Release);
                }
            }
            QUEUE_SIZE | QUEUE_ENABLE | QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE => {
                self.write_queue(field, offset - field, data.len(), value);
            }
            // Read-only fields: device_feature, num_queues, config_generation, queue_notify_off.
            _ => {}
        }
        Ok(CommonCfgWrite::Done)
    }

    fn write_driver_feature(&mut self, value: u32) {
        // The features are fixed once FEATURES_OK is set.
        if self.status() & FEATURES_OK != 0 {
            return;
        }
        let shift = match self.driver_feature_select {
            0 => 0,
            1 => 32,
            _ => return,
        };
        self.driver_features =
            (self.driver_features & !(0xffff_ffff << shift)) | (u64::from(value) << shift);
    }

    /// Queue configuration only changes while the queue is disabled and before DRIVER_OK.
    fn write_queue(&mut self, field: u64, within: u64, len: usize, value: u64) {
        let running = self.status() & DRIVER_OK != 0;
        let Some(queue) = self.queues.get_mut(usize::from(self.queue_select)) else {
            return;
        };
        if running || queue.enabled {
            return;
        }
        let address = |old: u64| -> u64 {
            match (len, within) {
                (8, _) => value,
                (_, 0) => (old & !0xffff_ffff) | value,
                _ => (old & 0xffff_ffff) | (value << 32),
            }
        };
        match field {
            QUEUE_SIZE => {
                let size = value as u16;
                if size.is_power_of_two() && size <= queue.max_size {
                    queue.size = size;
                }
            }
            // Writing 0 is not allowed (the driver resets instead); ignore it.
            QUEUE_ENABLE => queue.enabled |= value as u16 == 1,
            QUEUE_DESC => queue.desc = address(queue.desc),
            QUEUE_DRIVER => queue.driver = address(queue.driver),
            _ => queue.device = address(queue.device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_offsets_are_the_specs() {
        assert_eq!(
            FIELDS,
            [
                0x00, 0x04, 0x08, 0x0c, 0x10, 0x12, 0x14, 0x15, 0x16, 0x18, 0x1a, 0x1c, 0x1e, 0x20,
                0x28, 0x30
            ]
        );
        assert_eq!(field_at(0x15), Some((CONFIG_GENERATION, 1)));
        assert_eq!(field_at(0x2c), Some((QUEUE_DRIVER, 8)));
        assert_eq!(field_at(0x37), Some((QUEUE_DEVICE, 8)));
        assert_eq!(field_at(0x38), None);
    }

    fn common() -> CommonCfg {
        CommonCfg::new(0x1_3000_0006, 3, 256, 4)
    }

    fn read(cfg: &CommonCfg, offset: u64, len: usize) -> u64 {
        let mut data = [0u8; 8];
        cfg.read(offset, &mut data[..len]).unwrap();
        u64::from_le_bytes(data)
    }

    fn write(cfg: &mut CommonCfg, offset: u64, value: u64, len: usize) -> CommonCfgWrite {
        cfg.write(offset, &value.to_le_bytes()[..len]).unwrap()
    }

    #[test]
    fn device_features_by_select() {
        let mut cfg = common();
        assert_eq!(read(&cfg, DEVICE_FEATURE, 4), 0x3000_0006);
        write(&mut cfg, DEVICE_FEATURE_SELECT, 1, 4);
        assert_eq!(read(&cfg, DEVICE_FEATURE_SELECT, 4), 1);
        assert_eq!(read(&cfg, DEVICE_FEATURE, 4), 1);
        write(&mut cfg, DEVICE_FEATURE_SELECT, 2, 4);
        assert_eq!(read(&cfg, DEVICE_FEATURE, 4), 0);
        write(&mut cfg, DEVICE_FEATURE, 0xffff, 4);
        assert_eq!(cfg.offered_features(), 0x1_3000_0006);
    }

    #[test]
    fn driver_features_by_select_until_features_ok() {
        let mut cfg = common();
        write(&mut cfg, DRIVER_FEATURE, 0x6, 4);
        write(&mut cfg, DRIVER_FEATURE_SELECT, 1, 4);
        write(&mut cfg, DRIVER_FEATURE, 0x1, 4);
        assert_eq!(cfg.driver_features(), 0x1_0000_0006);
        assert_eq!(read(&cfg, DRIVER_FEATURE, 4), 1);
        write(&mut cfg, DRIVER_FEATURE_SELECT, 5, 4);
        write(&mut cfg, DRIVER_FEATURE, 0xff, 4);
        assert_eq!(cfg.driver_features(), 0x1_0000_0006);
        cfg.set_status(FEATURES_OK);
        write(&mut cfg, DRIVER_FEATURE_SELECT, 0, 4);
        write(&mut cfg, DRIVER_FEATURE, 0, 4);
        assert_eq!(cfg.driver_features(), 0x1_0000_0006);
    }

    #[test]
    fn vectors_out_of_range_read_back_no_vector() {
        let mut cfg = common();
        assert_eq!(read(&cfg, CONFIG_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
        write(&mut cfg, CONFIG_MSIX_VECTOR, 3, 2);
        assert_eq!(read(&cfg, CONFIG_MSIX_VECTOR, 2), 3);
        write(&mut cfg, CONFIG_MSIX_VECTOR, 4, 2);
        assert_eq!(read(&cfg, CONFIG_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
        write(&mut cfg, QUEUE_SELECT, 1, 2);
        write(&mut cfg, QUEUE_MSIX_VECTOR, 2, 2);
        assert_eq!(read(&cfg, QUEUE_MSIX_VECTOR, 2), 2);
        write(&mut cfg, QUEUE_MSIX_VECTOR, 9, 2);
        assert_eq!(read(&cfg, QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    }

    #[test]
    fn queue_registers_follow_queue_select() {
        let mut cfg = common();
        assert_eq!(read(&cfg, NUM_QUEUES, 2), 3);
        write(&mut cfg, QUEUE_SELECT, 2, 2);
        assert_eq!(read(&cfg, QUEUE_SIZE, 2), 256);
        assert_eq!(read(&cfg, QUEUE_NOTIFY_OFF, 2), 2);
        write(&mut cfg, QUEUE_SIZE, 64, 2);
        write(&mut cfg, QUEUE_DESC, 0x1_0000_1000, 8);
        write(&mut cfg, QUEUE_DRIVER, 0x2000, 4);
        write(&mut cfg, QUEUE_DRIVER + 4, 0x2, 4);
        write(&mut cfg, QUEUE_DEVICE, 0x3000, 4);
        write(&mut cfg, QUEUE_ENABLE, 1, 2);
        assert_eq!(read(&cfg, QUEUE_DESC, 8), 0x1_0000_1000);
        assert_eq!(read(&cfg, QUEUE_DRIVER, 8), 0x2_0000_2000);
        assert_eq!(read(&cfg, QUEUE_DEVICE + 4, 4), 0);
        assert_eq!(read(&cfg, QUEUE_ENABLE, 2), 1);
        let queue = &cfg.queues()[2];
        assert_eq!(
            (queue.size, queue.desc, queue.enabled),
            (64, 0x1_0000_1000, true)
        );
        // Enabled: configuration is frozen.
        write(&mut cfg, QUEUE_SIZE, 32, 2);
        write(&mut cfg, QUEUE_ENABLE, 0, 2);
        assert_eq!(read(&cfg, QUEUE_SIZE, 2), 64);
        assert_eq!(read(&cfg, QUEUE_ENABLE, 2), 1);
        write(&mut cfg, QUEUE_SELECT, 0, 2);
        assert_eq!(read(&cfg, QUEUE_ENABLE, 2), 0);
    }

    #[test]
    fn queue_size_must_be_a_power_of_two_up_to_max() {
        let mut cfg = common();
        for bad in [0, 48, 512] {
            write(&mut cfg, QUEUE_SIZE, bad, 2);
            assert_eq!(read(&cfg, QUEUE_SIZE, 2), 256);
        }
        write(&mut cfg, QUEUE_SIZE, 128, 2);
        assert_eq!(read(&cfg, QUEUE_SIZE, 2), 128);
    }

    #[test]
    fn queue_configuration_is_frozen_after_driver_ok() {
        let mut cfg = common();
        cfg.set_status(DRIVER_OK | FEATURES_OK);
        write(&mut cfg, QUEUE_SIZE, 16, 2);
        write(&mut cfg, QUEUE_ENABLE, 1, 2);
        assert_eq!(read(&cfg, QUEUE_SIZE, 2), 256);
        assert_eq!(read(&cfg, QUEUE_ENABLE, 2), 0);
    }

    #[test]
    fn missing_queue_reads_zero_and_ignores_writes() {
        let mut cfg = common();
        write(&mut cfg, QUEUE_SELECT, 3, 2);
        assert_eq!(read(&cfg, QUEUE_SIZE, 2), 0);
        write(&mut cfg, QUEUE_SIZE, 16, 2);
        write(&mut cfg, QUEUE_MSIX_VECTOR, 1, 2);
        assert_eq!(read(&cfg, QUEUE_MSIX_VECTOR, 2), 0);
    }

    #[test]
    fn status_and_read_only_fields() {
        let mut cfg = common();
        assert_eq!(
            write(&mut cfg, DEVICE_STATUS, 3, 1),
            CommonCfgWrite::Status(3)
        );
        write(&mut cfg, NUM_QUEUES, 9, 2);
        write(&mut cfg, CONFIG_GENERATION, 9, 1);
        write(&mut cfg, QUEUE_NOTIFY_OFF, 9, 2);
        assert_eq!(read(&cfg, NUM_QUEUES, 2), 3);
        assert_eq!(read(&cfg, CONFIG_GENERATION, 1), 0);
        assert_eq!(read(&cfg, QUEUE_NOTIFY_OFF, 2), 0);
    }

    #[test]
    fn misfit_accesses_are_errors() {
        let mut cfg = common();
        assert_eq!(
            cfg.write(DEVICE_FEATURE_SELECT, &[1, 0]),
            Err(BadCommonAccess)
        );
        assert_eq!(cfg.write(QUEUE_SIZE + 1, &[1]), Err(BadCommonAccess));
        assert_eq!(cfg.write(QUEUE_DESC + 2, &[0; 4]), Err(BadCommonAccess));
        assert_eq!(cfg.write(COMMON_CFG_SIZE, &[0; 4]), Err(BadCommonAccess));
        let mut three = [0u8; 3];
        assert_eq!(cfg.read(0, &mut three), Err(BadCommonAccess));
        let mut eight = [0u8; 8];
        assert_eq!(cfg.read(0x34, &mut eight), Err(BadCommonAccess));
    }

    #[test]
    fn reset_restores_defaults_but_keeps_generation() {
        let mut cfg = common();
        write(&mut cfg, QUEUE_SIZE, 16, 2);
        write(&mut cfg, QUEUE_ENABLE, 1, 2);
        write(&mut cfg, QUEUE_MSIX_VECTOR, 1, 2);
        write(&mut cfg, DRIVER_FEATURE, 6, 4);
        cfg.set_status(7);
        cfg.shared_generation().store(5, Ordering::SeqCst);
        cfg.reset();
        assert_eq!(read(&cfg, QUEUE_SIZE, 2), 256);
        assert_eq!(read(&cfg, QUEUE_ENABLE, 2), 0);
        assert_eq!(read(&cfg, QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
        assert_eq!(cfg.driver_features(), 0);
        assert_eq!(cfg.status(), 0);
        assert_eq!(read(&cfg, CONFIG_GENERATION, 1), 5);
    }
}
