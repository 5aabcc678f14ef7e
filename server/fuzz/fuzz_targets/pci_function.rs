//! Configuration space, BAR and MSI-X accesses and the virtio common-config state machine
//! (feature negotiation, queue setup and enable, status transitions, reset), through the
//! production PCI function as the vfio-user server drives it (`VirtioFunction`, the
//! `vfio_user_server::Device` of the application, inline queues).
//!
//! After every operation what no access may change is checked: the vendor and device IDs in
//! config space, and the regions' sizes.
//!
//! Input: operations, each [op] and its operands (little-endian):
//! 0 read [region][offset u32][len u8]; 1 write [region][offset u32][len u8][bytes];
//! 2 common-config field [field][value u64] (written at the field's width);
//! 3 SET_IRQS [index][action][start][count]; 4 function reset; 5 kick [queue];
//! 6 read or 7 write [region][offset u32][len u8] at the end of the address space (offset
//! counted back from u64::MAX); 8 DMA unmapping then unmapped; 9 the client disconnects.

#![no_main]

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use libfuzzer_sys::fuzz_target;
use server::controller::{self, ControllerConfig, QueueServing};
use server::disk_spec::DiskSpec;
use server_fuzz::{guest_memory, Input};
use slog::{o, Discard, Logger};
use vfio_user_server::{Device, DmaMemory, IrqAction};
use virtio::bar_layout::{BarLayout, VIRTIO_BAR};
use virtio::scsi_device::CONFIG_SIZE;
use vmm_sys_util::eventfd::EventFd;

const CONFIG_REGION: u32 = 7;
const NUM_QUEUES: u16 = 2;
/// Widths of the common-config fields, in their order.
const FIELD_WIDTHS: [usize; 16] = [4, 4, 4, 4, 2, 2, 1, 1, 2, 2, 2, 2, 2, 8, 8, 8];

fn eventfd() -> Option<OwnedFd> {
    let fd = EventFd::new(libc::EFD_NONBLOCK).ok()?;
    // SAFETY: `into_raw_fd` hands over the eventfd's descriptor, which nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd.into_raw_fd()) })
}

fn irq_action(action: u8, start: u8, count: u8) -> IrqAction {
    let (start, count) = (u32::from(start % 8), u32::from(count % 8));
    match action % 6 {
        0 => IrqAction::Assign {
            start,
            fds: (0..count)
                .map(|n| if n % 3 == 2 { None } else { eventfd() })
                .collect(),
        },
        1 => IrqAction::Disable,
        2 => IrqAction::Trigger { start, count },
        3 => IrqAction::TriggerBool {
            start,
            values: (0..count).map(|n| n % 2 == 0).collect(),
        },
        _ => IrqAction::Mask {
            start,
            count,
            masked: action & 1 == 0,
        },
    }
}

/// The IDs at the start of config space and every region's size.
fn invariants<D: Device>(function: &mut D) -> (Vec<u8>, Vec<u64>) {
    let mut ids = vec![0u8; 4];
    let _ = function.region_read(CONFIG_REGION, 0, &mut ids);
    let sizes = function
        .regions()
        .iter()
        .map(|region| region.size)
        .collect();
    (ids, sizes)
}

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = "null,size=1M".parse::<DiskSpec>() else {
        return;
    };
    let log = Logger::root(Discard, o!());
    let Ok(serving) = QueueServing::main_loop(NUM_QUEUES, &log) else {
        return;
    };
    let config = ControllerConfig {
        disks: std::slice::from_ref(&spec),
        num_queues: NUM_QUEUES,
        queue_size: 64,
        serving,
    };
    let memory = DmaMemory::new(guest_memory());
    let Ok(controller) = controller::build(&config, memory, &log) else {
        return;
    };
    let mut function = controller.function;
    let common = BarLayout::new(NUM_QUEUES + 2, CONFIG_SIZE, NUM_QUEUES + 3)
        .common
        .start;
    let expected = invariants(&mut function);
    let mut input = Input(data);
    let mut buffer = [0u8; 256];
    while let Some([op]) = input.take::<1>() {
        match op % 10 {
            op @ (0 | 1 | 6 | 7) => {
                let Some([region, o0, o1, o2, o3, len]) = input.take::<6>() else {
                    return;
                };
                let offset = u64::from(u32::from_le_bytes([o0, o1, o2, o3]));
                let offset = if op >= 6 { u64::MAX - offset } else { offset };
                let region = u32::from(region % 10);
                let len = usize::from(len);
                if op % 2 == 0 {
                    let _ = function.region_read(region, offset, &mut buffer[..len]);
                } else {
                    let _ = function.region_write(region, offset, input.bytes(len));
                }
            }
            2 => {
                let Some([field, value @ ..]) = input.take::<9>() else {
                    return;
                };
                let field = usize::from(field) % FIELD_WIDTHS.len();
                let offset: u64 = FIELD_WIDTHS[..field].iter().map(|&w| w as u64).sum();
                let _ = function.region_write(
                    u32::from(VIRTIO_BAR),
                    common + offset,
                    &value[..FIELD_WIDTHS[field]],
                );
            }
            3 => {
                let Some([index, action, start, count]) = input.take::<4>() else {
                    return;
                };
                let _ = function.set_irqs(u32::from(index % 6), irq_action(action, start, count));
            }
            4 => function.reset(),
            5 => {
                let Some([queue]) = input.take::<1>() else {
                    return;
                };
                function.event_ready(usize::from(queue % 6));
            }
            8 => {
                function.dma_unmapping(0, 1 << 20);
                function.dma_unmapped();
            }
            _ => {
                function.client_disconnected();
                function.reset();
            }
        }
        assert_eq!(invariants(&mut function), expected, "after op {op}");
    }
});
