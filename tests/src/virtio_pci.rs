//! The virtio-pci modern transport seen from the driver (virtio 1.2 §4.1.4): common configuration,
//! notifications, ISR and device configuration, reached through REGION_READ/WRITE on the BARs.

use crate::pci_probe::{PciProbe, VirtioCap};
use crate::vfio_client::{ClientError, VfioUserClient};

/// Offsets in `virtio_pci_common_cfg`.
pub mod common {
    pub const DEVICE_FEATURE_SELECT: u32 = 0x00;
    pub const DEVICE_FEATURE: u32 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u32 = 0x08;
    pub const DRIVER_FEATURE: u32 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u32 = 0x10;
    pub const NUM_QUEUES: u32 = 0x12;
    pub const DEVICE_STATUS: u32 = 0x14;
    pub const CONFIG_GENERATION: u32 = 0x15;
    pub const QUEUE_SELECT: u32 = 0x16;
    pub const QUEUE_SIZE: u32 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u32 = 0x1a;
    pub const QUEUE_ENABLE: u32 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u32 = 0x1e;
    pub const QUEUE_DESC: u32 = 0x20;
    pub const QUEUE_DRIVER: u32 = 0x28;
    pub const QUEUE_DEVICE: u32 = 0x30;
    pub const QUEUE_NOTIF_CONFIG_DATA: u32 = 0x38;
    pub const QUEUE_RESET: u32 = 0x3a;
    /// Size of the structure up to and including queue_reset.
    pub const SIZE: u32 = 0x3c;
}

/// Device status bits (§2.1).
pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 64;
pub const STATUS_FAILED: u8 = 128;

/// Reserved feature bits (§6).
pub const VIRTIO_F_INDIRECT_DESC: u32 = 28;
pub const VIRTIO_F_EVENT_IDX: u32 = 29;
pub const VIRTIO_F_VERSION_1: u32 = 32;
pub const VIRTIO_F_ACCESS_PLATFORM: u32 = 33;
pub const VIRTIO_F_RING_PACKED: u32 = 34;
pub const VIRTIO_F_RING_RESET: u32 = 40;

/// MSI-X "no vector".
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

/// Register access to one function's virtio structures.
pub struct VirtioPci {
    client: VfioUserClient,
    probe: PciProbe,
}

impl VirtioPci {
    pub fn new(client: VfioUserClient, probe: PciProbe) -> Self {
        VirtioPci { client, probe }
    }

    pub fn probe(&self) -> &PciProbe {
        &self.probe
    }

    pub fn client(&mut self) -> &mut VfioUserClient {
        &mut self.client
    }

    fn read(&mut self, cap: VirtioCap, offset: u32, data: &mut [u8]) -> Result<(), ClientError> {
        self.client.region_read(
            u32::from(cap.bar),
            u64::from(cap.offset) + u64::from(offset),
            data,
        )
    }

    fn write(&mut self, cap: VirtioCap, offset: u32, data: &[u8]) -> Result<(), ClientError> {
        // Configuration writes are waited for: the driver reads its effect right after.
        self.client.region_write(
            u32::from(cap.bar),
            u64::from(cap.offset) + u64::from(offset),
            data,
        )
    }

    pub fn common_read8(&mut self, offset: u32) -> Result<u8, ClientError> {
        let mut b = [0u8; 1];
        self.read(self.probe.common, offset, &mut b)?;
        Ok(b[0])
    }

    pub fn common_read16(&mut self, offset: u32) -> Result<u16, ClientError> {
        let mut b = [0u8; 2];
        self.read(self.probe.common, offset, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    pub fn common_read32(&mut self, offset: u32) -> Result<u32, ClientError> {
        let mut b = [0u8; 4];
        self.read(self.probe.common, offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn common_write8(&mut self, offset: u32, value: u8) -> Result<(), ClientError> {
        self.write(self.probe.common, offset, &[value])
    }

    pub fn common_write16(&mut self, offset: u32, value: u16) -> Result<(), ClientError> {
        self.write(self.probe.common, offset, &value.to_le_bytes())
    }

    pub fn common_write32(&mut self, offset: u32, value: u32) -> Result<(), ClientError> {
        self.write(self.probe.common, offset, &value.to_le_bytes())
    }

    /// 64-bit fields are written as two 32-bit halves, low first, as Linux does.
    pub fn common_write64(&mut self, offset: u32, value: u64) -> Result<(), ClientError> {
        self.common_write32(offset, value as u32)?;
        self.common_write32(offset + 4, (value >> 32) as u32)
    }

    pub fn status(&mut self) -> Result<u8, ClientError> {
        self.common_read8(common::DEVICE_STATUS)
    }

    pub fn set_status(&mut self, status: u8) -> Result<(), ClientError> {
        self.common_write8(common::DEVICE_STATUS, status)
    }

    pub fn device_features(&mut self) -> Result<u64, ClientError> {
        self.common_write32(common::DEVICE_FEATURE_SELECT, 0)?;
        let low = self.common_read32(common::DEVICE_FEATURE)?;
        self.common_write32(common::DEVICE_FEATURE_SELECT, 1)?;
        let high = self.common_read32(common::DEVICE_FEATURE)?;
        Ok(u64::from(high) << 32 | u64::from(low))
    }

    pub fn set_driver_features(&mut self, features: u64) -> Result<(), ClientError> {
        self.common_write32(common::DRIVER_FEATURE_SELECT, 0)?;
        self.common_write32(common::DRIVER_FEATURE, features as u32)?;
        self.common_write32(common::DRIVER_FEATURE_SELECT, 1)?;
        self.common_write32(common::DRIVER_FEATURE, (features >> 32) as u32)
    }

    pub fn select_queue(&mut self, queue: u16) -> Result<(), ClientError> {
        self.common_write16(common::QUEUE_SELECT, queue)
    }

    /// Reads `data.len()` bytes of device configuration at `offset`, retrying until
    /// config_generation is stable across the read (§4.1.4.3.2).
    pub fn device_config_read(&mut self, offset: u32, data: &mut [u8]) -> Result<(), ClientError> {
        loop {
            let before = self.common_read8(common::CONFIG_GENERATION)?;
            self.read(self.probe.device, offset, data)?;
            let after = self.common_read8(common::CONFIG_GENERATION)?;
            if before == after {
                return Ok(());
            }
        }
    }

    pub fn device_config_write(&mut self, offset: u32, data: &[u8]) -> Result<(), ClientError> {
        self.write(self.probe.device, offset, data)
    }

    /// Reading the ISR clears it.
    pub fn isr(&mut self) -> Result<u8, ClientError> {
        let mut b = [0u8; 1];
        self.read(self.probe.isr, 0, &mut b)?;
        Ok(b[0])
    }

    /// (BAR, offset in the BAR) of the notify address for a queue's queue_notify_off.
    pub fn notify_address(&self, queue_notify_off: u16) -> (u32, u64) {
        (
            u32::from(self.probe.notify.bar),
            u64::from(self.probe.notify.offset)
                + u64::from(queue_notify_off) * u64::from(self.probe.notify_off_multiplier),
        )
    }

    /// Kicks `queue`: writes its index to the notify address, posted (NO_REPLY) as QEMU does for
    /// BAR writes, or waiting for the reply.
    pub fn notify(
        &mut self,
        queue: u16,
        queue_notify_off: u16,
        posted: bool,
    ) -> Result<(), ClientError> {
        let (bar, offset) = self.notify_address(queue_notify_off);
        if posted {
            self.client
                .region_write_posted(bar, offset, &queue.to_le_bytes())
        } else {
            self.client.region_write(bar, offset, &queue.to_le_bytes())
        }
    }

    /// Reads `data.len()` bytes of PCI config space (region 7).
    pub fn config_read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), ClientError> {
        self.client.region_read(CONFIG_REGION, offset, data)
    }

    pub fn config_write(&mut self, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.client.region_write(CONFIG_REGION, offset, data)
    }
}

/// vfio-user region index of PCI config space.
pub const CONFIG_REGION: u32 = 7;
