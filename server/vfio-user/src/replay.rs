//! Messages handled without a socket: the decoding and dispatch the server runs for each
//! message of a connection, against a real device and DMA table, for fuzzing a whole connection.
//! Replies are dropped; what a message did shows in the device.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::connection::decode_message;
use crate::device::{Device, DmaMemory, RegionInfo};
use crate::dma::DmaTable;
use crate::protocol::HEADER_SIZE;
use crate::server::{handle, Session};

/// One client's connection state over `device`.
pub struct Replay<D: Device> {
    device: D,
    regions: Vec<RegionInfo>,
    dma: DmaTable,
    session: Session,
}

impl<D: Device> Replay<D> {
    /// A fresh connection (before VERSION) to `device`, whose DMA view is `memory`.
    pub fn new(device: D, memory: DmaMemory) -> Self {
        Replay {
            regions: device.regions(),
            device,
            dma: DmaTable::new(memory),
            session: Session::default(),
        }
    }

    /// Handles one message (header included) that arrived with `fds`, as the server would,
    /// then serves the device's event fds the message made readable, as the server's loop
    /// would next.
    pub fn message(&mut self, bytes: &[u8], fds: Vec<OwnedFd>) {
        let Ok((_, request)) = decode_message(bytes, fds) else {
            return;
        };
        let body_len = bytes.len().saturating_sub(HEADER_SIZE);
        let _ = handle(
            &mut self.device,
            &self.regions,
            &mut self.dma,
            &mut self.session,
            request,
            body_len,
        );
        self.serve_device_events();
    }

    fn serve_device_events(&mut self) {
        let mut polled: Vec<libc::pollfd> = self
            .device
            .event_fds()
            .iter()
            .map(|fd| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `polled` is a live array of `polled.len()` pollfd structs, and poll with a
        // zero timeout only writes their `revents`.
        let ready = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, 0) };
        if ready <= 0 {
            return;
        }
        for (index, fd) in polled.iter().enumerate() {
            if fd.revents & libc::POLLIN != 0 {
                self.device.event_ready(index);
            }
        }
    }
}
