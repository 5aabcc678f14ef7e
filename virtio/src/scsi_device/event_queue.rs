//! The event queue: the driver's buffers are kept until the device has something to report
//! (virtio 1.2 §5.6.6.3). An event with no buffer to go to is dropped, and the next event
//! delivered carries VIRTIO_SCSI_T_EVENTS_MISSED so that the driver rescans.

use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex, PoisonError};

use slog::debug;
use virtio_bindings::virtio_scsi::{
    VIRTIO_SCSI_EVT_RESET_REMOVED, VIRTIO_SCSI_EVT_RESET_RESCAN, VIRTIO_SCSI_T_EVENTS_MISSED,
    VIRTIO_SCSI_T_NO_EVENT, VIRTIO_SCSI_T_PARAM_CHANGE, VIRTIO_SCSI_T_TRANSPORT_RESET,
};
use vmm_sys_util::eventfd::EventFd;

use super::lun_address;
use super::virtqueue::{CachedMemory, ChainBuffers, Segments, Virtqueue};
use super::wire_format::{EventRecord, EVENT_SIZE};
use crate::queue_worker::QueueWorker;

/// Something the device tells the driver about a logical unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScsiEvent {
    /// A LUN appeared: the driver scans it (needs VIRTIO_SCSI_F_HOTPLUG).
    LunAdded { lun: u16 },
    /// A LUN went away: the driver removes it (needs VIRTIO_SCSI_F_HOTPLUG).
    LunRemoved { lun: u16 },
    /// A parameter of the LUN changed, as the unit attention `asc`/`ascq` says (for example
    /// 2A/09 CAPACITY DATA HAS CHANGED; needs VIRTIO_SCSI_F_CHANGE).
    ParamChange { lun: u16, asc: u8, ascq: u8 },
}

impl ScsiEvent {
    fn record(self) -> EventRecord {
        let (event, lun, reason) = match self {
            ScsiEvent::LunAdded { lun } => (
                VIRTIO_SCSI_T_TRANSPORT_RESET,
                lun,
                VIRTIO_SCSI_EVT_RESET_RESCAN,
            ),
            ScsiEvent::LunRemoved { lun } => (
                VIRTIO_SCSI_T_TRANSPORT_RESET,
                lun,
                VIRTIO_SCSI_EVT_RESET_REMOVED,
            ),
            ScsiEvent::ParamChange { lun, asc, ascq } => (
                VIRTIO_SCSI_T_PARAM_CHANGE,
                lun,
                u32::from(asc) | u32::from(ascq) << 8,
            ),
        };
        EventRecord {
            event,
            lun: lun_address::encode(lun),
            reason,
        }
    }
}

/// What became of a posted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventDelivery {
    Delivered,
    /// No buffer was available; the driver will see EVENTS_MISSED.
    Dropped,
    /// The driver did not accept the feature the event needs.
    NotNegotiated,
    /// The device is not running (no DRIVER_OK yet, or reset).
    Inactive,
}

struct EventBuffer {
    head: u16,
    writable: Segments,
}

pub struct EventQueue {
    queue: Virtqueue,
    buffers: VecDeque<EventBuffer>,
    missed: bool,
}

impl EventQueue {
    pub fn new(queue: Virtqueue) -> EventQueue {
        EventQueue {
            queue,
            buffers: VecDeque::new(),
            missed: false,
        }
    }

    /// Takes the driver's new buffers; reports missed events at once if some were dropped.
    pub fn serve_available(&mut self) {
        let snapshot = self.queue.snapshot();
        let mem = CachedMemory::new(&snapshot);
        loop {
            for chain in self.queue.pop_all(&mem) {
                let head = chain.head_index();
                let (buffers, defect) = ChainBuffers::collect(chain, &mem);
                if defect.is_some()
                    || !buffers.readable.is_empty()
                    || buffers.writable.len() < EVENT_SIZE as u64
                {
                    debug!(self.queue.logger(), "unusable event buffer";
                        "head" => head, "defect" => defect.map(|d| d.name()),
                        "readable" => buffers.readable.len(), "writable" => buffers.writable.len());
                    self.queue.add_used(&mem, head, 0);
                    continue;
                }
                self.buffers.push_back(EventBuffer {
                    head,
                    writable: buffers.writable,
                });
            }
            if !self.queue.more_available(&mem) {
                break;
            }
        }
        if self.missed {
            let record = EventRecord {
                event: VIRTIO_SCSI_T_NO_EVENT,
                lun: [0; 8],
                reason: 0,
            };
            self.deliver(&mem, record);
        }
        self.queue.interrupt_if_wanted(&mem);
    }

    pub fn post(&mut self, event: ScsiEvent) -> EventDelivery {
        let snapshot = self.queue.snapshot();
        let mem = CachedMemory::new(&snapshot);
        let delivery = self.deliver(&mem, event.record());
        self.queue.interrupt_if_wanted(&mem);
        debug!(self.queue.logger(), "event"; "event" => ?event, "delivery" => ?delivery);
        delivery
    }

    fn deliver(&mut self, mem: &CachedMemory<'_>, mut record: EventRecord) -> EventDelivery {
        if self.missed {
            record.event |= VIRTIO_SCSI_T_EVENTS_MISSED;
        }
        while let Some(buffer) = self.buffers.pop_front() {
            match buffer.writable.write(mem, 0, &record.to_bytes()) {
                Ok(EVENT_SIZE) => {
                    self.queue.add_used(mem, buffer.head, EVENT_SIZE as u32);
                    self.missed = false;
                    return EventDelivery::Delivered;
                }
                // The buffer's memory went away since the driver gave it: return it empty.
                _ => self.queue.add_used(mem, buffer.head, 0),
            }
        }
        self.missed = true;
        EventDelivery::Dropped
    }
}

/// The event queue as its serving thread sees it; the device keeps another handle to post
/// events from the thread that learns about LUN changes.
pub struct SharedEventQueue {
    queue: Arc<Mutex<EventQueue>>,
    index: u16,
    notifier: Arc<EventFd>,
}

impl SharedEventQueue {
    pub fn new(queue: EventQueue) -> SharedEventQueue {
        SharedEventQueue {
            index: queue.queue.index(),
            notifier: Arc::clone(queue.queue.notifier()),
            queue: Arc::new(Mutex::new(queue)),
        }
    }

    pub fn handle(&self) -> SharedEventQueue {
        SharedEventQueue {
            queue: Arc::clone(&self.queue),
            index: self.index,
            notifier: Arc::clone(&self.notifier),
        }
    }

    pub fn post(&self, event: ScsiEvent) -> EventDelivery {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .post(event)
    }
}

impl QueueWorker for SharedEventQueue {
    fn queue_index(&self) -> u16 {
        self.index
    }

    fn notifier(&self) -> &Arc<EventFd> {
        &self.notifier
    }

    fn notifier_ready(&mut self) {
        let mut events = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        events.queue.clear_notifier();
        events.serve_available();
    }

    fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn completions_ready(&mut self) {}

    fn in_flight(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use block::Disk;
    use virtio_bindings::virtio_scsi::VIRTIO_SCSI_F_HOTPLUG;

    use super::*;
    use crate::scsi_device::test_driver::{lun_field, Buf, Harness};
    use crate::virtio_device::VirtioDevice;

    const EVENTS: usize = 1;

    fn harness() -> Harness {
        Harness::new(vec![Disk::null(1 << 20, 512).unwrap()])
    }

    fn give_buffer(harness: &mut Harness, len: u32) -> (Buf, Vec<(u32, u32)>) {
        let buf = harness.response_buf(EVENTS, len);
        let used = harness.submit(EVENTS, &[buf]);
        (buf, used)
    }

    fn event_of(harness: &Harness, buf: Buf) -> (u32, [u8; 8], u32) {
        let bytes = harness.read(buf.addr, EVENT_SIZE);
        let mut lun = [0u8; 8];
        lun.copy_from_slice(&bytes[4..12]);
        (
            u32::from_le_bytes(bytes[0..4].try_into().unwrap()),
            lun,
            u32::from_le_bytes(bytes[12..16].try_into().unwrap()),
        )
    }

    #[test]
    fn buffers_are_kept_until_an_event() {
        let mut harness = harness();
        let (first, used) = give_buffer(&mut harness, 16);
        assert!(used.is_empty(), "kept, not returned");
        let (second, used) = give_buffer(&mut harness, 32);
        assert!(used.is_empty());
        let interrupts = harness.queues[EVENTS].interrupt.count();

        let delivery = harness.device.post_event(ScsiEvent::LunAdded { lun: 3 });
        assert_eq!(delivery, EventDelivery::Delivered);
        assert_eq!(harness.queues[EVENTS].used(), vec![(0, 16)]);
        assert_eq!(harness.queues[EVENTS].interrupt.count(), interrupts + 1);
        assert_eq!(
            event_of(&harness, first),
            (
                VIRTIO_SCSI_T_TRANSPORT_RESET,
                lun_field(3),
                VIRTIO_SCSI_EVT_RESET_RESCAN
            )
        );

        let change = ScsiEvent::ParamChange {
            lun: 0,
            asc: 0x2A,
            ascq: 0x09,
        };
        assert_eq!(harness.device.post_event(change), EventDelivery::Delivered);
        assert_eq!(harness.queues[EVENTS].used(), vec![(1, 16)]);
        assert_eq!(
            event_of(&harness, second),
            (VIRTIO_SCSI_T_PARAM_CHANGE, lun_field(0), 0x092A)
        );
    }

    #[test]
    fn dropped_events_are_reported_as_missed() {
        let mut harness = harness();
        let removed = ScsiEvent::LunRemoved { lun: 1 };
        assert_eq!(harness.device.post_event(removed), EventDelivery::Dropped);
        // The next buffer reports the loss at once.
        let (buf, used) = give_buffer(&mut harness, 16);
        assert_eq!(used.len(), 1);
        assert_eq!(
            event_of(&harness, buf).0,
            VIRTIO_SCSI_T_NO_EVENT | VIRTIO_SCSI_T_EVENTS_MISSED
        );
        // Reported once: the next event comes without the flag.
        let (buf, _) = give_buffer(&mut harness, 16);
        assert_eq!(harness.device.post_event(removed), EventDelivery::Delivered);
        assert_eq!(
            event_of(&harness, buf),
            (
                VIRTIO_SCSI_T_TRANSPORT_RESET,
                lun_field(1),
                VIRTIO_SCSI_EVT_RESET_REMOVED
            )
        );
    }

    #[test]
    fn unusable_buffers_are_returned_empty() {
        let mut harness = harness();
        let (_, used) = give_buffer(&mut harness, 8);
        assert_eq!(used, vec![(0, 0)]);
        let readable = harness.data_buf(EVENTS, &[0; 16], false);
        assert_eq!(harness.submit(EVENTS, &[readable])[0].1, 0);
        assert_eq!(
            harness.device.post_event(ScsiEvent::LunAdded { lun: 0 }),
            EventDelivery::Dropped
        );
    }

    #[test]
    fn features_and_activity_gate_events() {
        let mut harness = harness();
        harness.device.reset();
        assert_eq!(
            harness.device.post_event(ScsiEvent::LunAdded { lun: 0 }),
            EventDelivery::Inactive
        );
        harness.activate(harness.device.features() & !(1 << VIRTIO_SCSI_F_HOTPLUG));
        give_buffer(&mut harness, 16);
        assert_eq!(
            harness.device.post_event(ScsiEvent::LunAdded { lun: 0 }),
            EventDelivery::NotNegotiated
        );
        let change = ScsiEvent::ParamChange {
            lun: 0,
            asc: 0x2A,
            ascq: 0x09,
        };
        assert_eq!(harness.device.post_event(change), EventDelivery::Delivered);
    }
}
