//! When a busy request queue asks its driver for the next kick.
//!
//! A kick costs the guest a vCPU exit and the device a wake-up (two with QEMU's vfio-user
//! client: a socket message to the main loop, then the queue's iothread). Linux's driver kicks
//! only when the chains it added since its last kick include `avail_event` (virtio 1.2 §2.7.10,
//! `vring_need_event`), so a device that asks for the kick a batch ahead gets one kick per
//! batch instead of one per chain, as long as it looks at the ring by itself for a batch that
//! stays shorter.
//!
//! The rule, applied whenever notifications go back on:
//! - a queue that got fewer than two chains since the last time is not busy: the driver kicks
//!   for the next chain, as without batching, so a lone request (queue depth 1) gets no delay;
//! - a busy queue asks for the kick once as many chains as it just got are available (a guest
//!   resubmits about as many requests as were completed together), up to half the queue, and
//!   asks its host for a re-check after about the time those chains took to come. The re-check
//!   serves whatever a shorter batch left; one that finds nothing puts the queue back to "kick
//!   for the next chain", then looks at the ring once more before sleeping.
//!
//! Polling looks at the ring by itself, so no re-check is asked for while it runs.

use std::time::Duration;

/// A queue that got fewer chains than this since notifications last went on is not busy.
const MIN_BATCH: usize = 2;
/// Bounds of the re-check delay: soon enough that a short batch waits little, long enough that
/// a re-check is not a spinning poll.
const MIN_RECHECK: Duration = Duration::from_micros(20);
const MAX_RECHECK: Duration = Duration::from_micros(1_000);

#[derive(Debug)]
pub(crate) struct KickBatching {
    max_ahead: u16,
    /// Chains popped since notifications last went back on.
    popped: usize,
    /// The clock (ns) when they last went back on.
    rearmed_at: u64,
    recheck: Option<Duration>,
    polling: bool,
}

impl KickBatching {
    pub fn new(queue_size: u16) -> KickBatching {
        KickBatching {
            max_ahead: (queue_size / 2).max(1),
            popped: 0,
            rearmed_at: 0,
            recheck: None,
            polling: false,
        }
    }

    pub fn popped(&mut self, chains: usize) {
        self.popped += chains;
    }

    /// Notifications go back on at `now` (ns): how many chains ahead the driver's next kick
    /// should come (1: at the next chain), with the re-check that goes with it.
    pub fn rearm(&mut self, now: u64) -> u16 {
        self.polling = false;
        let popped = std::mem::take(&mut self.popped);
        let elapsed = now.saturating_sub(std::mem::replace(&mut self.rearmed_at, now));
        if popped < MIN_BATCH {
            self.recheck = None;
            return 1;
        }
        let ahead = u16::try_from(popped)
            .unwrap_or(u16::MAX)
            .min(self.max_ahead);
        self.recheck = Some(Duration::from_nanos(elapsed).clamp(MIN_RECHECK, MAX_RECHECK));
        ahead
    }

    /// Polling starts: it looks at the ring by itself until `rearm`.
    pub fn start_polling(&mut self) {
        self.polling = true;
        self.recheck = None;
    }

    pub fn polling(&self) -> bool {
        self.polling
    }

    pub fn recheck_in(&self) -> Option<Duration> {
        self.recheck
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    #[test]
    fn a_lone_chain_asks_for_the_next_kick_and_no_recheck() {
        let mut batching = KickBatching::new(128);
        batching.popped(1);
        assert_eq!(batching.rearm(500 * US), 1);
        assert_eq!(batching.recheck_in(), None);
        assert_eq!(batching.rearm(900 * US), 1, "nothing came");
        assert_eq!(batching.recheck_in(), None);
    }

    #[test]
    fn a_batch_asks_for_the_kick_as_many_chains_ahead_with_a_recheck() {
        let mut batching = KickBatching::new(128);
        batching.rearm(0);
        batching.popped(3);
        batching.popped(2);
        assert_eq!(batching.rearm(300 * US), 5);
        assert_eq!(batching.recheck_in(), Some(Duration::from_micros(300)));
        batching.popped(200);
        assert_eq!(batching.rearm(310 * US), 64, "half the queue at most");
        assert_eq!(batching.recheck_in(), Some(MIN_RECHECK));
        batching.popped(2);
        assert_eq!(batching.rearm(60_000 * US), 2);
        assert_eq!(batching.recheck_in(), Some(MAX_RECHECK));
    }

    #[test]
    fn a_recheck_that_finds_nothing_ends_the_batching() {
        let mut batching = KickBatching::new(128);
        batching.popped(4);
        assert_eq!(batching.rearm(100 * US), 4);
        assert_eq!(batching.rearm(200 * US), 1);
        assert_eq!(batching.recheck_in(), None);
    }

    #[test]
    fn polling_drops_the_recheck_until_notifications_go_back_on() {
        let mut batching = KickBatching::new(128);
        batching.popped(4);
        batching.rearm(100 * US);
        batching.start_polling();
        assert!(batching.polling());
        assert_eq!(batching.recheck_in(), None);
        batching.popped(6);
        assert_eq!(batching.rearm(150 * US), 6);
        assert!(!batching.polling());
        assert!(batching.recheck_in().is_some());
    }
}

/// The mechanism end to end: a request queue served through the inline host, with a driver
/// that kicks only when Linux's would.
#[cfg(test)]
mod through_the_inline_host {
    use block::Disk;
    use virtio_bindings::virtio_ring::VRING_USED_F_NO_NOTIFY;

    use super::MAX_RECHECK;
    use crate::features::RING_EVENT_IDX;
    use crate::scsi_device::test_driver::{lun_field, Harness};
    use crate::virtio_device::VirtioDevice;

    const VQ: usize = 2;
    const TEST_UNIT_READY: [u8; 6] = [0; 6];

    /// Linux's `vring_need_event`: whether a driver that moved its avail idx from `old` to
    /// `new` since its last kick kicks now.
    fn driver_kicks(avail_event: u16, new: u16, old: u16) -> bool {
        new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old)
    }

    /// Makes `count` commands available one by one, as a driver that looks at `avail_event`
    /// after each does; returns how many of them it would have kicked for.
    fn publish(harness: &mut Harness, count: u16) -> usize {
        let mut kicks = 0;
        for tag in 0..count {
            let bufs = [
                harness.request_buf(VQ, lun_field(0), u64::from(tag), &TEST_UNIT_READY),
                harness.response_buf(VQ, 108),
            ];
            let head = harness.queues[VQ].chain(&bufs);
            let old = harness.queues[VQ].avail_idx();
            harness.queues[VQ].publish(head);
            let event = harness.queues[VQ].avail_event();
            kicks += usize::from(driver_kicks(event, old.wrapping_add(1), old));
        }
        kicks
    }

    /// Waits past the longest re-check and serves what is due.
    fn after_a_recheck(harness: &mut Harness) -> usize {
        std::thread::sleep(MAX_RECHECK * 3);
        harness.host.serve_ready().unwrap();
        harness.queues[VQ].used().len()
    }

    fn ready_harness(features: impl FnOnce(u64) -> u64) -> Harness {
        let mut harness = Harness::new(vec![Disk::null(1 << 20, 512).unwrap()]);
        harness.device.reset();
        harness.activate(features(harness.device.features()));
        // The power-on unit attention, and a lone command: the next chain is kicked for.
        harness.command(0, &TEST_UNIT_READY, &[], 0);
        harness
    }

    #[test]
    fn a_lone_command_asks_for_the_kick_of_the_next_chain() {
        let mut harness = ready_harness(|features| features);
        let queue = &harness.queues[VQ];
        assert_eq!(queue.avail_event(), queue.avail_idx());
        assert_eq!(publish(&mut harness, 1), 1, "the driver kicks at once");
        assert_eq!(
            after_a_recheck(&mut harness),
            0,
            "no re-check was asked for"
        );
        harness.notify(VQ);
        assert_eq!(harness.queues[VQ].used().len(), 1);
    }

    #[test]
    fn a_batch_moves_the_kick_a_batch_ahead_and_a_shorter_one_is_served_by_the_recheck() {
        let mut harness = ready_harness(|features| features);
        publish(&mut harness, 4);
        harness.notify(VQ);
        assert_eq!(harness.queues[VQ].used().len(), 4);
        let queue = &harness.queues[VQ];
        assert_eq!(queue.avail_event(), queue.avail_idx().wrapping_add(3));

        assert_eq!(publish(&mut harness, 2), 0, "two of four: no kick");
        assert_eq!(after_a_recheck(&mut harness), 2, "served without a kick");
        assert_eq!(
            publish(&mut harness, 2),
            1,
            "two ahead now: kicked at the second"
        );
        harness.notify(VQ);
        assert_eq!(harness.queues[VQ].used().len(), 2);
    }

    #[test]
    fn a_recheck_that_finds_nothing_asks_for_the_next_kick_and_asks_for_no_more_rechecks() {
        let mut harness = ready_harness(|features| features);
        publish(&mut harness, 3);
        harness.notify(VQ);
        assert_eq!(harness.queues[VQ].used().len(), 3);
        assert_eq!(after_a_recheck(&mut harness), 0);
        let queue = &harness.queues[VQ];
        assert_eq!(
            queue.avail_event(),
            queue.avail_idx(),
            "kick for the next chain"
        );
        // The queue now sleeps until kicked: the chain waits for its kick, not for a timer.
        assert_eq!(publish(&mut harness, 1), 1);
        assert_eq!(after_a_recheck(&mut harness), 0, "no timer left running");
        harness.notify(VQ);
        assert_eq!(harness.queues[VQ].used().len(), 1);
    }

    #[test]
    fn without_event_idx_a_batch_turns_kicks_off_until_a_recheck_finds_the_queue_quiet() {
        let mut harness = ready_harness(|features| features & !RING_EVENT_IDX);
        assert_eq!(harness.queues[VQ].used_flags(), 0);
        publish(&mut harness, 3);
        harness.notify(VQ);
        assert_eq!(harness.queues[VQ].used().len(), 3);
        assert_eq!(
            harness.queues[VQ].used_flags(),
            VRING_USED_F_NO_NOTIFY as u16
        );
        publish(&mut harness, 1);
        assert_eq!(after_a_recheck(&mut harness), 1, "served without a kick");
        assert_eq!(
            harness.queues[VQ].used_flags(),
            0,
            "a lone chain: kicks back on"
        );
    }
}
