//! Messages handled without a socket: the decoding and dispatch the server runs for each
//! message of a connection, against a real device and DMA table, for fuzzing a whole connection.
//! Replies are dropped; what a message did shows in the device.

use std::os::fd::OwnedFd;

use crate::device::{Device, DmaMemory};
use crate::dispatch::{handle, Session};
use crate::dma::DmaTable;
use crate::message::decode_message;
use crate::protocol::HEADER_SIZE;

/// One client's connection state over `device`.
pub struct Replay<D: Device> {
    device: D,
    dma: DmaTable,
    session: Session,
}

impl<D: Device> Replay<D> {
    /// A fresh connection (before VERSION) to `device`, whose DMA view is `memory`.
    pub fn new(device: D, memory: DmaMemory) -> Self {
        Replay {
            device,
            dma: DmaTable::new(memory),
            session: Session::default(),
        }
    }

    /// Handles one message (header included) that arrived with `fds`, as the server would.
    pub fn message(&mut self, bytes: &[u8], fds: Vec<OwnedFd>) {
        let Ok((_, request)) = decode_message(bytes, fds) else {
            return;
        };
        let body_len = bytes.len().saturating_sub(HEADER_SIZE);
        let _ = handle(
            &mut self.device,
            &mut self.dma,
            &mut self.session,
            request,
            body_len,
        );
    }
}
