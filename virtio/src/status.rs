//! The device status state machine (virtio 1.2, 2.1 and 3.1).

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};

pub const ACKNOWLEDGE: u8 = VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
pub const DRIVER: u8 = VIRTIO_CONFIG_S_DRIVER as u8;
pub const DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
pub const FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
pub const DEVICE_NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;
pub const FAILED: u8 = VIRTIO_CONFIG_S_FAILED as u8;

/// Bits the driver may set.
const DRIVER_BITS: u8 = ACKNOWLEDGE | DRIVER | DRIVER_OK | FEATURES_OK | FAILED;

/// What a driver write to device_status leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusTransition {
    /// 0 was written: reset the device.
    Reset,
    /// The new status; `activate` when DRIVER_OK was just set.
    Set { status: u8, activate: bool },
}

/// Applies a driver write of `written` over `current`. Bits cannot be cleared except by reset;
/// FEATURES_OK stays clear unless `features_acceptable`; DRIVER_OK needs FEATURES_OK.
pub fn transition(current: u8, written: u8, features_acceptable: bool) -> StatusTransition {
    if written == 0 {
        return StatusTransition::Reset;
    }
    let mut status = current | (written & DRIVER_BITS);
    if current & FEATURES_OK == 0 && status & FEATURES_OK != 0 && !features_acceptable {
        status &= !FEATURES_OK;
    }
    if status & FEATURES_OK == 0 {
        status &= !DRIVER_OK;
    }
    let activate = current & DRIVER_OK == 0 && status & DRIVER_OK != 0;
    StatusTransition::Set { status, activate }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_resets() {
        assert_eq!(transition(DRIVER_OK, 0, true), StatusTransition::Reset);
    }

    #[test]
    fn features_ok_is_refused_when_features_are_not_acceptable() {
        let status = ACKNOWLEDGE | DRIVER;
        assert_eq!(
            transition(status, status | FEATURES_OK, false),
            StatusTransition::Set {
                status,
                activate: false
            }
        );
        assert_eq!(
            transition(status, status | FEATURES_OK, true),
            StatusTransition::Set {
                status: status | FEATURES_OK,
                activate: false
            }
        );
    }

    #[test]
    fn driver_ok_activates_once_and_needs_features_ok() {
        let ready = ACKNOWLEDGE | DRIVER | FEATURES_OK;
        assert_eq!(
            transition(ready, ready | DRIVER_OK, true),
            StatusTransition::Set {
                status: ready | DRIVER_OK,
                activate: true
            }
        );
        assert_eq!(
            transition(ready | DRIVER_OK, ready | DRIVER_OK, true),
            StatusTransition::Set {
                status: ready | DRIVER_OK,
                activate: false
            }
        );
        assert_eq!(
            transition(ACKNOWLEDGE | DRIVER, ACKNOWLEDGE | DRIVER | DRIVER_OK, true),
            StatusTransition::Set {
                status: ACKNOWLEDGE | DRIVER,
                activate: false
            }
        );
    }

    #[test]
    fn driver_cannot_clear_bits_or_set_needs_reset() {
        let current = ACKNOWLEDGE | DRIVER | DEVICE_NEEDS_RESET;
        assert_eq!(
            transition(current, ACKNOWLEDGE | FAILED, true),
            StatusTransition::Set {
                status: current | FAILED,
                activate: false
            }
        );
        assert_eq!(
            transition(ACKNOWLEDGE, ACKNOWLEDGE | DEVICE_NEEDS_RESET, true),
            StatusTransition::Set {
                status: ACKNOWLEDGE,
                activate: false
            }
        );
    }
}
