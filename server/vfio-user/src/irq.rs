//! DEVICE_SET_IRQS: from the wire's flag combinations to one `IrqAction`.

use std::os::fd::OwnedFd;

use crate::device::IrqAction;
use crate::protocol::{
    SetIrqs, MAX_IRQ_VECTORS, VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_TYPE_MASK, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_TYPE_MASK,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IrqError {
    #[error("flags {0:#x} name no single data type and action")]
    BadFlags(u32),
    #[error("vectors {start} + {count} overflow")]
    Overflow { start: u32, count: u32 },
    #[error("{0} vectors exceed the {MAX_IRQ_VECTORS} any index can have")]
    TooManyVectors(u32),
    #[error("{fds} fds for {count} vectors")]
    TooManyFds { fds: usize, count: u32 },
    #[error("fds sent with a data type other than EVENTFD")]
    UnexpectedFds,
    #[error("DATA_BOOL needs {count} bytes, got {got}")]
    ShortBoolData { count: u32, got: usize },
    #[error("{0} is not supported")]
    Unsupported(&'static str),
}

impl IrqError {
    pub fn errno(&self) -> i32 {
        match self {
            IrqError::Unsupported(_) => libc::ENOTSUP,
            _ => libc::EINVAL,
        }
    }
}

/// Decodes one SET_IRQS request; `data` is what follows the fixed part, `fds` came with it.
pub fn decode_set_irqs(
    args: &SetIrqs,
    data: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<IrqAction, IrqError> {
    let flags = args.flags.get();
    let data_type = flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
    let action = flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
    let known = VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK;
    if flags & !known != 0 || data_type.count_ones() != 1 || action.count_ones() != 1 {
        return Err(IrqError::BadFlags(flags));
    }
    let (start, count) = (args.start.get(), args.count.get());
    if start.checked_add(count).is_none() {
        return Err(IrqError::Overflow { start, count });
    }
    if count > MAX_IRQ_VECTORS {
        return Err(IrqError::TooManyVectors(count));
    }
    if data_type != VFIO_IRQ_SET_DATA_EVENTFD && !fds.is_empty() {
        return Err(IrqError::UnexpectedFds);
    }
    match (action, data_type) {
        (VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD) => {
            if fds.len() > count as usize {
                return Err(IrqError::TooManyFds {
                    fds: fds.len(),
                    count,
                });
            }
            let missing = count as usize - fds.len();
            let fds = fds
                .into_iter()
                .map(Some)
                .chain(std::iter::repeat_with(|| None).take(missing))
                .collect();
            Ok(IrqAction::Assign { start, fds })
        }
        (VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_NONE) if count == 0 => {
            Ok(IrqAction::Disable)
        }
        (VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_NONE) => {
            Ok(IrqAction::Trigger { start, count })
        }
        (VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_BOOL) => {
            let values = data.get(..count as usize).ok_or(IrqError::ShortBoolData {
                count,
                got: data.len(),
            })?;
            Ok(IrqAction::TriggerBool {
                start,
                values: values.iter().map(|&v| v != 0).collect(),
            })
        }
        (VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_NONE) => {
            Ok(IrqAction::Mask {
                start,
                count,
                masked: action == VFIO_IRQ_SET_ACTION_MASK,
            })
        }
        (VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_BOOL) => {
            Err(IrqError::Unsupported("masking with DATA_BOOL"))
        }
        // What is left is MASK or UNMASK with DATA_EVENTFD (the flags were checked above).
        _ => Err(IrqError::Unsupported(
            "masking or unmasking through an eventfd",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: u32, start: u32, count: u32) -> SetIrqs {
        SetIrqs {
            argsz: 20.into(),
            flags: flags.into(),
            index: 2.into(),
            start: start.into(),
            count: count.into(),
        }
    }

    fn some_fd() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").unwrap())
    }

    const TRIGGER_EVENTFD: u32 = VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_EVENTFD;
    const TRIGGER_NONE: u32 = VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_NONE;

    #[test]
    fn fewer_fds_than_count_deassigns_the_rest() {
        let action = decode_set_irqs(&args(TRIGGER_EVENTFD, 3, 3), &[], vec![some_fd()]).unwrap();
        let IrqAction::Assign { start, fds } = action else {
            panic!("{action:?}")
        };
        assert_eq!(start, 3);
        assert_eq!(
            fds.iter().map(Option::is_some).collect::<Vec<_>>(),
            [true, false, false]
        );
    }

    #[test]
    fn count_without_fds_deassigns_all() {
        let action = decode_set_irqs(&args(TRIGGER_EVENTFD, 0, 2), &[], vec![]).unwrap();
        assert!(
            matches!(action, IrqAction::Assign { start: 0, ref fds } if fds.len() == 2 && fds.iter().all(Option::is_none))
        );
    }

    #[test]
    fn data_none_count_zero_disables_and_otherwise_triggers() {
        assert!(matches!(
            decode_set_irqs(&args(TRIGGER_NONE, 0, 0), &[], vec![]),
            Ok(IrqAction::Disable)
        ));
        assert!(matches!(
            decode_set_irqs(&args(TRIGGER_NONE, 1, 2), &[], vec![]),
            Ok(IrqAction::Trigger { start: 1, count: 2 })
        ));
    }

    #[test]
    fn data_bool_reads_one_byte_per_vector() {
        let flags = VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_BOOL;
        let action = decode_set_irqs(&args(flags, 0, 3), &[1, 0, 7], vec![]).unwrap();
        assert!(
            matches!(action, IrqAction::TriggerBool { start: 0, ref values } if values == &[true, false, true])
        );
        assert_eq!(
            decode_set_irqs(&args(flags, 0, 3), &[1], vec![]).unwrap_err(),
            IrqError::ShortBoolData { count: 3, got: 1 }
        );
    }

    #[test]
    fn mask_and_unmask() {
        let mask = VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_DATA_NONE;
        let unmask = VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_DATA_NONE;
        assert!(matches!(
            decode_set_irqs(&args(mask, 4, 1), &[], vec![]),
            Ok(IrqAction::Mask {
                start: 4,
                count: 1,
                masked: true
            })
        ));
        assert!(matches!(
            decode_set_irqs(&args(unmask, 4, 1), &[], vec![]),
            Ok(IrqAction::Mask { masked: false, .. })
        ));
        for action in [VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_UNMASK] {
            let error = decode_set_irqs(
                &args(action | VFIO_IRQ_SET_DATA_EVENTFD, 0, 1),
                &[],
                vec![some_fd()],
            )
            .unwrap_err();
            assert_eq!(error.errno(), libc::ENOTSUP);
            assert_eq!(
                error.to_string(),
                "masking or unmasking through an eventfd is not supported"
            );
        }
    }

    #[test]
    fn malformed_requests_are_rejected() {
        let two_actions = VFIO_IRQ_SET_ACTION_MASK | TRIGGER_NONE;
        assert_eq!(
            decode_set_irqs(&args(two_actions, 0, 1), &[], vec![]).unwrap_err(),
            IrqError::BadFlags(two_actions)
        );
        assert_eq!(
            decode_set_irqs(&args(TRIGGER_NONE | 1 << 8, 0, 1), &[], vec![]).unwrap_err(),
            IrqError::BadFlags(TRIGGER_NONE | 1 << 8)
        );
        assert_eq!(
            decode_set_irqs(&args(TRIGGER_NONE, u32::MAX, 2), &[], vec![]).unwrap_err(),
            IrqError::Overflow {
                start: u32::MAX,
                count: 2
            }
        );
        assert_eq!(
            decode_set_irqs(
                &args(TRIGGER_EVENTFD, 0, 1),
                &[],
                vec![some_fd(), some_fd()]
            )
            .unwrap_err(),
            IrqError::TooManyFds { fds: 2, count: 1 }
        );
        assert_eq!(
            decode_set_irqs(&args(TRIGGER_NONE, 0, 1), &[], vec![some_fd()]).unwrap_err(),
            IrqError::UnexpectedFds
        );
        // Found by the fuzzer: a huge count with one fd must not allocate a vector per count.
        assert_eq!(
            decode_set_irqs(&args(TRIGGER_EVENTFD, 0, 0x5f00_2a14), &[], vec![some_fd()])
                .unwrap_err(),
            IrqError::TooManyVectors(0x5f00_2a14)
        );
    }
}
