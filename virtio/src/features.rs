//! Feature negotiation: what the transport adds to the device's offer and what it accepts.

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

pub const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
pub const RING_EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
pub const RING_INDIRECT_DESC: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;

/// Bits 24 to 41 belong to the transport and queue mechanisms (virtio 1.2, 6).
const TRANSPORT_BITS: u64 = ((1 << 42) - 1) & !((1 << 24) - 1);
/// The transport bits this transport implements (split rings from `virtio-queue`).
const TRANSPORT_SUPPORTED: u64 = VERSION_1 | RING_EVENT_IDX | RING_INDIRECT_DESC;

/// The features offered to the driver: the device's own bits, and of the transport bits only
/// those this transport implements.
pub fn offered(device_features: u64) -> u64 {
    (device_features & !TRANSPORT_BITS) | TRANSPORT_SUPPORTED
}

/// Whether the driver may set FEATURES_OK with `driver` features: a subset of the offer that
/// includes VERSION_1 (this transport has no legacy interface).
pub fn acceptable(offered: u64, driver: u64) -> bool {
    driver & !offered == 0 && driver & VERSION_1 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCSI_HOTPLUG: u64 = 1 << 1;
    const RING_PACKED: u64 = 1 << 34;

    #[test]
    fn offer_keeps_device_bits_and_only_supported_transport_bits() {
        let offer = offered(SCSI_HOTPLUG | RING_PACKED | VERSION_1);
        assert_eq!(
            offer,
            SCSI_HOTPLUG | VERSION_1 | RING_EVENT_IDX | RING_INDIRECT_DESC
        );
    }

    #[test]
    fn driver_must_pick_a_subset_with_version_1() {
        let offer = offered(SCSI_HOTPLUG);
        assert!(acceptable(offer, VERSION_1 | SCSI_HOTPLUG));
        assert!(!acceptable(offer, SCSI_HOTPLUG));
        assert!(!acceptable(offer, VERSION_1 | RING_PACKED));
    }
}
