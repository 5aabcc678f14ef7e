//! Wire formats of the virtio-scsi request, control and event structures (virtio 1.2 §5.6.6).
//!
//! Layouts and sizes come from `virtio_bindings::virtio_scsi`; the CDB and sense fields are
//! variable, sized by the driver-writable `cdb_size` and `sense_size`. All fields are
//! little-endian.

use std::mem::{offset_of, size_of};

use virtio_bindings::virtio_scsi::{
    virtio_scsi_cmd_req, virtio_scsi_cmd_resp, virtio_scsi_ctrl_an_req, virtio_scsi_ctrl_an_resp,
    virtio_scsi_ctrl_tmf_req, virtio_scsi_ctrl_tmf_resp, virtio_scsi_event,
};

/// Bytes of a command request before its CDB (LUN, tag, task attribute, priority, CRN).
pub const CMD_REQ_HEADER_SIZE: usize = offset_of!(virtio_scsi_cmd_req, cdb);
/// Bytes of a command response before its sense field.
pub const CMD_RESP_HEADER_SIZE: usize = offset_of!(virtio_scsi_cmd_resp, sense);
pub const TMF_REQ_SIZE: usize = size_of::<virtio_scsi_ctrl_tmf_req>();
pub const TMF_RESP_SIZE: usize = size_of::<virtio_scsi_ctrl_tmf_resp>();
pub const AN_REQ_SIZE: usize = size_of::<virtio_scsi_ctrl_an_req>();
pub const AN_RESP_SIZE: usize = size_of::<virtio_scsi_ctrl_an_resp>();
pub const EVENT_SIZE: usize = size_of::<virtio_scsi_event>();
/// Every control request starts with its type.
pub const CTRL_TYPE_SIZE: usize = 4;

/// The CDB bytes kept from a request: enough for every command we emulate (variable-length CDBs
/// go up to 260 bytes); the rest of a larger driver-chosen `cdb_size` is skipped.
pub const MAX_CDB_KEPT: usize = 260;

const _: () = assert!(CMD_REQ_HEADER_SIZE == 19);
const _: () = assert!(CMD_RESP_HEADER_SIZE == 12);
const _: () = assert!(TMF_REQ_SIZE == 24 && TMF_RESP_SIZE == 1);
const _: () = assert!(AN_REQ_SIZE == 16 && AN_RESP_SIZE == 5);
const _: () = assert!(EVENT_SIZE == 16);

fn le_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([
        bytes[offset],
        bytes[offset + 1],
        bytes[offset + 2],
        bytes[offset + 3],
    ])
}

fn le_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut value = [0u8; 8];
    value.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(value)
}

fn lun_field(bytes: &[u8], offset: usize) -> [u8; 8] {
    let mut lun = [0u8; 8];
    lun.copy_from_slice(&bytes[offset..offset + 8]);
    lun
}

/// The fixed part of a command request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmdRequestHeader {
    pub lun: [u8; 8],
    pub tag: u64,
    pub task_attr: u8,
    pub prio: u8,
    pub crn: u8,
}

impl CmdRequestHeader {
    pub fn parse(bytes: &[u8; CMD_REQ_HEADER_SIZE]) -> CmdRequestHeader {
        CmdRequestHeader {
            lun: lun_field(bytes, offset_of!(virtio_scsi_cmd_req, lun)),
            tag: le_u64(bytes, offset_of!(virtio_scsi_cmd_req, tag)),
            task_attr: bytes[offset_of!(virtio_scsi_cmd_req, task_attr)],
            prio: bytes[offset_of!(virtio_scsi_cmd_req, prio)],
            crn: bytes[offset_of!(virtio_scsi_cmd_req, crn)],
        }
    }

    #[cfg(test)]
    pub fn to_bytes(self) -> [u8; CMD_REQ_HEADER_SIZE] {
        let mut bytes = [0u8; CMD_REQ_HEADER_SIZE];
        bytes[0..8].copy_from_slice(&self.lun);
        bytes[8..16].copy_from_slice(&self.tag.to_le_bytes());
        bytes[16] = self.task_attr;
        bytes[17] = self.prio;
        bytes[18] = self.crn;
        bytes
    }
}

/// The fixed part of a command response; the sense bytes follow it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CmdResponseHeader {
    pub sense_len: u32,
    pub resid: u32,
    pub status_qualifier: u16,
    pub status: u8,
    pub response: u8,
}

impl CmdResponseHeader {
    /// A response with only a virtio-level `response` code (no SCSI status, no sense).
    pub fn transport(response: u32, resid: u32) -> CmdResponseHeader {
        CmdResponseHeader {
            response: response as u8,
            resid,
            ..Default::default()
        }
    }

    pub fn to_bytes(self) -> [u8; CMD_RESP_HEADER_SIZE] {
        let mut bytes = [0u8; CMD_RESP_HEADER_SIZE];
        let sense_len = offset_of!(virtio_scsi_cmd_resp, sense_len);
        bytes[sense_len..sense_len + 4].copy_from_slice(&self.sense_len.to_le_bytes());
        let resid = offset_of!(virtio_scsi_cmd_resp, resid);
        bytes[resid..resid + 4].copy_from_slice(&self.resid.to_le_bytes());
        let qualifier = offset_of!(virtio_scsi_cmd_resp, status_qualifier);
        bytes[qualifier..qualifier + 2].copy_from_slice(&self.status_qualifier.to_le_bytes());
        bytes[offset_of!(virtio_scsi_cmd_resp, status)] = self.status;
        bytes[offset_of!(virtio_scsi_cmd_resp, response)] = self.response;
        bytes
    }

    #[cfg(test)]
    pub fn parse(bytes: &[u8]) -> CmdResponseHeader {
        CmdResponseHeader {
            sense_len: le_u32(bytes, 0),
            resid: le_u32(bytes, 4),
            status_qualifier: u16::from_le_bytes([bytes[8], bytes[9]]),
            status: bytes[10],
            response: bytes[11],
        }
    }
}

/// The type of a control request, its first field.
pub fn ctrl_type(bytes: &[u8; CTRL_TYPE_SIZE]) -> u32 {
    u32::from_le_bytes(*bytes)
}

/// A task management function request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TmfRequest {
    pub subtype: u32,
    pub lun: [u8; 8],
    pub tag: u64,
}

impl TmfRequest {
    pub fn parse(bytes: &[u8; TMF_REQ_SIZE]) -> TmfRequest {
        TmfRequest {
            subtype: le_u32(bytes, offset_of!(virtio_scsi_ctrl_tmf_req, subtype)),
            lun: lun_field(bytes, offset_of!(virtio_scsi_ctrl_tmf_req, lun)),
            tag: le_u64(bytes, offset_of!(virtio_scsi_ctrl_tmf_req, tag)),
        }
    }
}

/// An asynchronous notification query or subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnRequest {
    pub lun: [u8; 8],
    pub event_requested: u32,
}

impl AnRequest {
    pub fn parse(bytes: &[u8; AN_REQ_SIZE]) -> AnRequest {
        AnRequest {
            lun: lun_field(bytes, offset_of!(virtio_scsi_ctrl_an_req, lun)),
            event_requested: le_u32(bytes, offset_of!(virtio_scsi_ctrl_an_req, event_requested)),
        }
    }
}

pub fn an_response(event_actual: u32, response: u32) -> [u8; AN_RESP_SIZE] {
    let mut bytes = [0u8; AN_RESP_SIZE];
    let actual = offset_of!(virtio_scsi_ctrl_an_resp, event_actual);
    bytes[actual..actual + 4].copy_from_slice(&event_actual.to_le_bytes());
    bytes[offset_of!(virtio_scsi_ctrl_an_resp, response)] = response as u8;
    bytes
}

/// An event for the event queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRecord {
    pub event: u32,
    pub lun: [u8; 8],
    pub reason: u32,
}

impl EventRecord {
    pub fn to_bytes(self) -> [u8; EVENT_SIZE] {
        let mut bytes = [0u8; EVENT_SIZE];
        let event = offset_of!(virtio_scsi_event, event);
        bytes[event..event + 4].copy_from_slice(&self.event.to_le_bytes());
        let lun = offset_of!(virtio_scsi_event, lun);
        bytes[lun..lun + 8].copy_from_slice(&self.lun);
        let reason = offset_of!(virtio_scsi_event, reason);
        bytes[reason..reason + 4].copy_from_slice(&self.reason.to_le_bytes());
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_header_round_trip() {
        let header = CmdRequestHeader {
            lun: [1, 0, 0x40, 2, 0, 0, 0, 0],
            tag: 0x1122_3344_5566_7788,
            task_attr: 1,
            prio: 2,
            crn: 3,
        };
        let bytes = header.to_bytes();
        assert_eq!(
            &bytes[8..16],
            &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
        );
        assert_eq!(CmdRequestHeader::parse(&bytes), header);
    }

    #[test]
    fn response_layout() {
        let header = CmdResponseHeader {
            sense_len: 18,
            resid: 0x0102_0304,
            status_qualifier: 0x0506,
            status: 2,
            response: 9,
        };
        let bytes = header.to_bytes();
        assert_eq!(bytes, [18, 0, 0, 0, 4, 3, 2, 1, 6, 5, 2, 9]);
        assert_eq!(CmdResponseHeader::parse(&bytes), header);
    }

    #[test]
    fn control_and_event_layouts() {
        let mut tmf = [0u8; TMF_REQ_SIZE];
        tmf[4] = 5;
        tmf[8..16].copy_from_slice(&[1, 0, 0x40, 1, 0, 0, 0, 0]);
        tmf[16] = 0x42;
        let parsed = TmfRequest::parse(&tmf);
        assert_eq!((parsed.subtype, parsed.lun[3], parsed.tag), (5, 1, 0x42));

        let mut an = [0u8; AN_REQ_SIZE];
        an[12..16].copy_from_slice(&0x10u32.to_le_bytes());
        assert_eq!(AnRequest::parse(&an).event_requested, 0x10);
        assert_eq!(an_response(0, 0), [0, 0, 0, 0, 0]);
        assert_eq!(ctrl_type(&[2, 0, 0, 0]), 2);

        let event = EventRecord {
            event: 0x8000_0001,
            lun: [1, 0, 0x40, 3, 0, 0, 0, 0],
            reason: 2,
        };
        assert_eq!(
            event.to_bytes(),
            [1, 0, 0, 0x80, 1, 0, 0x40, 3, 0, 0, 0, 0, 2, 0, 0, 0]
        );
    }
}
