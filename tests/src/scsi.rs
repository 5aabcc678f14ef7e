//! virtio-scsi wire formats (virtio 1.2 §5.6) and the CDBs the tests send, as a driver writes them.

/// virtio-scsi feature bits.
pub const VIRTIO_SCSI_F_INOUT: u32 = 0;
pub const VIRTIO_SCSI_F_HOTPLUG: u32 = 1;
pub const VIRTIO_SCSI_F_CHANGE: u32 = 2;
pub const VIRTIO_SCSI_F_T10_PI: u32 = 3;

/// `response` values of command, TMF and AN replies.
pub const VIRTIO_SCSI_S_OK: u8 = 0;
pub const VIRTIO_SCSI_S_OVERRUN: u8 = 1;
pub const VIRTIO_SCSI_S_ABORTED: u8 = 2;
pub const VIRTIO_SCSI_S_BAD_TARGET: u8 = 3;
pub const VIRTIO_SCSI_S_RESET: u8 = 4;
pub const VIRTIO_SCSI_S_BUSY: u8 = 5;
pub const VIRTIO_SCSI_S_TRANSPORT_FAILURE: u8 = 6;
pub const VIRTIO_SCSI_S_TARGET_FAILURE: u8 = 7;
pub const VIRTIO_SCSI_S_NEXUS_FAILURE: u8 = 8;
pub const VIRTIO_SCSI_S_FAILURE: u8 = 9;
pub const VIRTIO_SCSI_S_FUNCTION_SUCCEEDED: u8 = 10;
pub const VIRTIO_SCSI_S_FUNCTION_REJECTED: u8 = 11;
pub const VIRTIO_SCSI_S_INCORRECT_LUN: u8 = 12;

/// Control request types.
pub const VIRTIO_SCSI_T_TMF: u32 = 0;
pub const VIRTIO_SCSI_T_AN_QUERY: u32 = 1;
pub const VIRTIO_SCSI_T_AN_SUBSCRIBE: u32 = 2;

/// TMF subtypes.
pub const VIRTIO_SCSI_T_TMF_ABORT_TASK: u32 = 0;
pub const VIRTIO_SCSI_T_TMF_ABORT_TASK_SET: u32 = 1;
pub const VIRTIO_SCSI_T_TMF_CLEAR_ACA: u32 = 2;
pub const VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET: u32 = 3;
pub const VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET: u32 = 4;
pub const VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET: u32 = 5;
pub const VIRTIO_SCSI_T_TMF_QUERY_TASK: u32 = 6;
pub const VIRTIO_SCSI_T_TMF_QUERY_TASK_SET: u32 = 7;

/// Event types of the event queue.
pub const VIRTIO_SCSI_T_NO_EVENT: u32 = 0;
pub const VIRTIO_SCSI_T_TRANSPORT_RESET: u32 = 1;
pub const VIRTIO_SCSI_T_ASYNC_NOTIFY: u32 = 2;
pub const VIRTIO_SCSI_T_PARAM_CHANGE: u32 = 3;
pub const VIRTIO_SCSI_T_EVENTS_MISSED: u32 = 0x8000_0000;

/// Task attributes.
pub const VIRTIO_SCSI_S_SIMPLE: u8 = 0;

/// SCSI status bytes.
pub const SAM_STAT_GOOD: u8 = 0x00;
pub const SAM_STAT_CHECK_CONDITION: u8 = 0x02;

/// Bytes of a command request before its CDB (lun, id, task_attr, prio, crn).
pub const CMD_REQ_HEADER_SIZE: usize = 19;
/// Bytes of a command response before its sense data.
pub const CMD_RESP_HEADER_SIZE: usize = 12;
pub const TMF_REQ_SIZE: usize = 24;
pub const TMF_RESP_SIZE: usize = 1;
pub const AN_REQ_SIZE: usize = 16;
pub const AN_RESP_SIZE: usize = 5;
pub const EVENT_SIZE: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScsiError {
    #[error("CDB of {len} bytes does not fit cdb_size {cdb_size}")]
    CdbTooLong { len: usize, cdb_size: usize },
    #[error("LUN {0} cannot be encoded (flat space addressing stops at 16383)")]
    LunTooLarge(u16),
    #[error("{what} is {len} bytes, at least {min} needed")]
    Short {
        what: &'static str,
        len: usize,
        min: usize,
    },
}

/// The 8-byte virtio-scsi LUN field: 1, target, then the LUN in SAM single-level form —
/// peripheral addressing below 256, flat space (0x40 prefix) from 256 on.
pub fn encode_lun(target: u8, lun: u16) -> Result<[u8; 8], ScsiError> {
    if lun > 0x3fff {
        return Err(ScsiError::LunTooLarge(lun));
    }
    let high = if lun >= 256 {
        0x40 | (lun >> 8) as u8
    } else {
        0
    };
    Ok([1, target, high, (lun & 0xff) as u8, 0, 0, 0, 0])
}

/// The LUN field as Linux's virtio_scsi writes it: always flat space addressing.
pub fn encode_lun_flat(target: u8, lun: u16) -> Result<[u8; 8], ScsiError> {
    if lun > 0x3fff {
        return Err(ScsiError::LunTooLarge(lun));
    }
    Ok([
        1,
        target,
        0x40 | (lun >> 8) as u8,
        (lun & 0xff) as u8,
        0,
        0,
        0,
        0,
    ])
}

/// `virtio_scsi_cmd_req` with the CDB zero-padded to `cdb_size`.
pub fn encode_cmd_req(
    lun: [u8; 8],
    tag: u64,
    cdb: &[u8],
    cdb_size: usize,
) -> Result<Vec<u8>, ScsiError> {
    if cdb.len() > cdb_size {
        return Err(ScsiError::CdbTooLong {
            len: cdb.len(),
            cdb_size,
        });
    }
    let mut req = Vec::with_capacity(CMD_REQ_HEADER_SIZE + cdb_size);
    req.extend_from_slice(&lun);
    req.extend_from_slice(&tag.to_le_bytes());
    req.extend_from_slice(&[VIRTIO_SCSI_S_SIMPLE, 0, 0]);
    req.extend_from_slice(cdb);
    req.resize(CMD_REQ_HEADER_SIZE + cdb_size, 0);
    Ok(req)
}

/// A parsed `virtio_scsi_cmd_resp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmdResp {
    pub sense_len: u32,
    pub resid: u32,
    pub status_qualifier: u16,
    pub status: u8,
    pub response: u8,
    /// The sense bytes, `sense_len` of them (clamped to what the buffer holds).
    pub sense: Vec<u8>,
}

pub fn decode_cmd_resp(bytes: &[u8]) -> Result<CmdResp, ScsiError> {
    if bytes.len() < CMD_RESP_HEADER_SIZE {
        return Err(ScsiError::Short {
            what: "virtio_scsi_cmd_resp",
            len: bytes.len(),
            min: CMD_RESP_HEADER_SIZE,
        });
    }
    let sense_len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let available = bytes.len() - CMD_RESP_HEADER_SIZE;
    let take = (sense_len as usize).min(available);
    Ok(CmdResp {
        sense_len,
        resid: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        status_qualifier: u16::from_le_bytes([bytes[8], bytes[9]]),
        status: bytes[10],
        response: bytes[11],
        sense: bytes[CMD_RESP_HEADER_SIZE..CMD_RESP_HEADER_SIZE + take].to_vec(),
    })
}

pub fn encode_tmf_req(subtype: u32, lun: [u8; 8], tag: u64) -> Vec<u8> {
    let mut req = Vec::with_capacity(TMF_REQ_SIZE);
    req.extend_from_slice(&VIRTIO_SCSI_T_TMF.to_le_bytes());
    req.extend_from_slice(&subtype.to_le_bytes());
    req.extend_from_slice(&lun);
    req.extend_from_slice(&tag.to_le_bytes());
    req
}

/// `virtio_scsi_ctrl_an_req` for AN_QUERY or AN_SUBSCRIBE.
pub fn encode_an_req(kind: u32, lun: [u8; 8], event_requested: u32) -> Vec<u8> {
    let mut req = Vec::with_capacity(AN_REQ_SIZE);
    req.extend_from_slice(&kind.to_le_bytes());
    req.extend_from_slice(&lun);
    req.extend_from_slice(&event_requested.to_le_bytes());
    req
}

/// A parsed `virtio_scsi_ctrl_an_resp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnResp {
    pub event_actual: u32,
    pub response: u8,
}

pub fn decode_an_resp(bytes: &[u8]) -> Result<AnResp, ScsiError> {
    if bytes.len() < AN_RESP_SIZE {
        return Err(ScsiError::Short {
            what: "virtio_scsi_ctrl_an_resp",
            len: bytes.len(),
            min: AN_RESP_SIZE,
        });
    }
    Ok(AnResp {
        event_actual: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        response: bytes[4],
    })
}

/// A parsed `virtio_scsi_event`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub event: u32,
    pub lun: [u8; 8],
    pub reason: u32,
}

pub fn decode_event(bytes: &[u8]) -> Result<Event, ScsiError> {
    if bytes.len() < EVENT_SIZE {
        return Err(ScsiError::Short {
            what: "virtio_scsi_event",
            len: bytes.len(),
            min: EVENT_SIZE,
        });
    }
    let mut lun = [0u8; 8];
    lun.copy_from_slice(&bytes[4..12]);
    Ok(Event {
        event: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        lun,
        reason: u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
    })
}

/// Sense key, ASC and ASCQ from fixed (0x70/0x71) or descriptor (0x72/0x73) format sense data.
pub fn sense_key_asc_ascq(sense: &[u8]) -> Option<(u8, u8, u8)> {
    match sense.first()? & 0x7f {
        0x70 | 0x71 if sense.len() >= 14 => Some((sense[2] & 0x0f, sense[12], sense[13])),
        0x72 | 0x73 if sense.len() >= 4 => Some((sense[1] & 0x0f, sense[2], sense[3])),
        _ => None,
    }
}

/// `virtio_scsi_config` (§5.6.4) as the driver read it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParsedScsiConfig {
    pub num_queues: u32,
    pub seg_max: u32,
    pub max_sectors: u32,
    pub cmd_per_lun: u32,
    pub event_info_size: u32,
    pub sense_size: u32,
    pub cdb_size: u32,
    pub max_channel: u16,
    pub max_target: u16,
    pub max_lun: u32,
}

impl ParsedScsiConfig {
    pub const SIZE: usize = 36;
    pub const SENSE_SIZE_OFFSET: u32 = 20;
    pub const CDB_SIZE_OFFSET: u32 = 24;

    pub fn parse(b: &[u8; Self::SIZE]) -> Self {
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        ParsedScsiConfig {
            num_queues: u32_at(0),
            seg_max: u32_at(4),
            max_sectors: u32_at(8),
            cmd_per_lun: u32_at(12),
            event_info_size: u32_at(16),
            sense_size: u32_at(20),
            cdb_size: u32_at(24),
            max_channel: u16::from_le_bytes([b[28], b[29]]),
            max_target: u16::from_le_bytes([b[30], b[31]]),
            max_lun: u32_at(32),
        }
    }
}

/// CDB builders for the commands the tests send (SBC-4 / SPC-5 layouts, big-endian fields).
pub mod cdb {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const VERIFY_10: u8 = 0x2f;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8a;
    pub const VERIFY_16: u8 = 0x8f;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const SAI_READ_CAPACITY_16: u8 = 0x10;
    pub const REPORT_LUNS: u8 = 0xa0;
    pub const MAINTENANCE_IN: u8 = 0xa3;
    pub const MI_REPORT_SUPPORTED_OPERATION_CODES: u8 = 0x0c;
    pub const MI_REPORT_SUPPORTED_TMFS: u8 = 0x0d;
    pub const READ_12: u8 = 0xa8;
    pub const WRITE_12: u8 = 0xaa;

    /// FUA bit in byte 1 of READ/WRITE 10/12/16.
    pub const FUA: u8 = 0x08;

    pub fn test_unit_ready() -> Vec<u8> {
        vec![TEST_UNIT_READY, 0, 0, 0, 0, 0]
    }

    pub fn request_sense(alloc: u8) -> Vec<u8> {
        vec![REQUEST_SENSE, 0, 0, 0, alloc, 0]
    }

    pub fn inquiry(evpd: bool, page: u8, alloc: u16) -> Vec<u8> {
        let a = alloc.to_be_bytes();
        vec![INQUIRY, u8::from(evpd), page, a[0], a[1], 0]
    }

    pub fn read_capacity10() -> Vec<u8> {
        vec![READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    }

    pub fn read_capacity16(alloc: u32) -> Vec<u8> {
        let mut c = vec![0u8; 16];
        c[0] = SERVICE_ACTION_IN_16;
        c[1] = SAI_READ_CAPACITY_16;
        c[10..14].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    pub fn report_luns(select: u8, alloc: u32) -> Vec<u8> {
        let mut c = vec![0u8; 12];
        c[0] = REPORT_LUNS;
        c[2] = select;
        c[6..10].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    pub fn rw6(opcode: u8, lba: u32, blocks: u8) -> Vec<u8> {
        let l = lba.to_be_bytes();
        vec![opcode, l[1] & 0x1f, l[2], l[3], blocks, 0]
    }

    /// READ/WRITE/VERIFY 10 (also WRITE SAME 10, SYNCHRONIZE CACHE 10): opcode, byte-1 flags,
    /// 32-bit LBA, 16-bit count.
    pub fn lba10(opcode: u8, flags: u8, lba: u32, blocks: u16) -> Vec<u8> {
        let mut c = vec![0u8; 10];
        c[0] = opcode;
        c[1] = flags;
        c[2..6].copy_from_slice(&lba.to_be_bytes());
        c[7..9].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    pub fn lba12(opcode: u8, flags: u8, lba: u32, blocks: u32) -> Vec<u8> {
        let mut c = vec![0u8; 12];
        c[0] = opcode;
        c[1] = flags;
        c[2..6].copy_from_slice(&lba.to_be_bytes());
        c[6..10].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    /// READ/WRITE/VERIFY 16 (also WRITE SAME 16, SYNCHRONIZE CACHE 16): 64-bit LBA, 32-bit count.
    pub fn lba16(opcode: u8, flags: u8, lba: u64, blocks: u32) -> Vec<u8> {
        let mut c = vec![0u8; 16];
        c[0] = opcode;
        c[1] = flags;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    /// UNMAP with a parameter list of `(lba, blocks)` descriptors; returns (cdb, parameter list).
    pub fn unmap(ranges: &[(u64, u32)]) -> (Vec<u8>, Vec<u8>) {
        let len = 8 + 16 * ranges.len();
        let mut param = vec![0u8; len];
        param[0..2].copy_from_slice(&((len - 2) as u16).to_be_bytes());
        param[2..4].copy_from_slice(&((16 * ranges.len()) as u16).to_be_bytes());
        for (i, &(lba, blocks)) in ranges.iter().enumerate() {
            let d = &mut param[8 + 16 * i..8 + 16 * (i + 1)];
            d[0..8].copy_from_slice(&lba.to_be_bytes());
            d[8..12].copy_from_slice(&blocks.to_be_bytes());
        }
        let mut c = vec![0u8; 10];
        c[0] = UNMAP;
        c[7..9].copy_from_slice(&(len as u16).to_be_bytes());
        (c, param)
    }

    /// WRITE SAME 16 byte 1: UNMAP bit 0x08, NDOB 0x01.
    pub const WS_UNMAP: u8 = 0x08;
    pub const WS_NDOB: u8 = 0x01;

    pub fn mode_sense6(dbd: bool, page: u8, subpage: u8, alloc: u8) -> Vec<u8> {
        vec![
            MODE_SENSE_6,
            if dbd { 0x08 } else { 0 },
            page,
            subpage,
            alloc,
            0,
        ]
    }

    pub fn mode_sense10(dbd: bool, page: u8, subpage: u8, alloc: u16) -> Vec<u8> {
        let a = alloc.to_be_bytes();
        vec![
            MODE_SENSE_10,
            if dbd { 0x08 } else { 0 },
            page,
            subpage,
            0,
            0,
            0,
            a[0],
            a[1],
            0,
        ]
    }

    /// MODE SELECT 6 with PF set; `len` is the parameter list length.
    pub fn mode_select6(len: u8) -> Vec<u8> {
        vec![MODE_SELECT_6, 0x10, 0, 0, len, 0]
    }

    pub fn mode_select10(len: u16) -> Vec<u8> {
        let l = len.to_be_bytes();
        vec![MODE_SELECT_10, 0x10, 0, 0, 0, 0, 0, l[0], l[1], 0]
    }

    pub fn start_stop_unit(start: bool, load_eject: bool) -> Vec<u8> {
        vec![
            START_STOP_UNIT,
            0,
            0,
            0,
            u8::from(start) | (u8::from(load_eject) << 1),
            0,
        ]
    }

    pub fn prevent_allow(prevent: bool) -> Vec<u8> {
        vec![PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, u8::from(prevent), 0]
    }

    pub fn report_supported_opcodes(
        options: u8,
        opcode: u8,
        service_action: u16,
        alloc: u32,
    ) -> Vec<u8> {
        let mut c = vec![0u8; 12];
        c[0] = MAINTENANCE_IN;
        c[1] = MI_REPORT_SUPPORTED_OPERATION_CODES;
        c[2] = options;
        c[3] = opcode;
        c[4..6].copy_from_slice(&service_action.to_be_bytes());
        c[6..10].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    pub fn report_supported_tmfs(alloc: u32) -> Vec<u8> {
        let mut c = vec![0u8; 12];
        c[0] = MAINTENANCE_IN;
        c[1] = MI_REPORT_SUPPORTED_TMFS;
        c[6..10].copy_from_slice(&alloc.to_be_bytes());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luns_use_peripheral_then_flat_addressing() {
        assert_eq!(encode_lun(0, 0).unwrap(), [1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(2, 5).unwrap(), [1, 2, 0, 5, 0, 0, 0, 0]);
        assert_eq!(encode_lun(0, 256).unwrap(), [1, 0, 0x41, 0, 0, 0, 0, 0]);
        assert_eq!(
            encode_lun(0, 0x3fff).unwrap(),
            [1, 0, 0x7f, 0xff, 0, 0, 0, 0]
        );
        assert_eq!(encode_lun_flat(0, 5).unwrap(), [1, 0, 0x40, 5, 0, 0, 0, 0]);
        assert_eq!(encode_lun(0, 0x4000), Err(ScsiError::LunTooLarge(0x4000)));
    }

    #[test]
    fn cmd_req_pads_the_cdb_and_places_the_tag() {
        let req = encode_cmd_req(
            encode_lun(0, 1).unwrap(),
            0x0102030405060708,
            &[0x12, 0, 0, 0, 36, 0],
            32,
        )
        .unwrap();
        assert_eq!(req.len(), 51);
        assert_eq!(&req[8..16], &0x0102030405060708u64.to_le_bytes());
        assert_eq!(&req[16..19], &[0, 0, 0]);
        assert_eq!(&req[19..25], &[0x12, 0, 0, 0, 36, 0]);
        assert!(req[25..].iter().all(|&b| b == 0));
        assert_eq!(
            encode_cmd_req([0; 8], 0, &[0; 33], 32),
            Err(ScsiError::CdbTooLong {
                len: 33,
                cdb_size: 32
            })
        );
    }

    #[test]
    fn cmd_resp_parses_and_clamps_sense() {
        let mut resp = vec![0u8; CMD_RESP_HEADER_SIZE + 18];
        resp[0..4].copy_from_slice(&100u32.to_le_bytes());
        resp[4..8].copy_from_slice(&512u32.to_le_bytes());
        resp[8..10].copy_from_slice(&7u16.to_le_bytes());
        resp[10] = SAM_STAT_CHECK_CONDITION;
        resp[11] = VIRTIO_SCSI_S_OK;
        resp[12] = 0x70;
        resp[14] = 0x05;
        resp[24] = 0x24;
        let parsed = decode_cmd_resp(&resp).unwrap();
        assert_eq!(parsed.sense_len, 100);
        assert_eq!(parsed.sense.len(), 18);
        assert_eq!(parsed.resid, 512);
        assert_eq!(parsed.status_qualifier, 7);
        assert_eq!(parsed.status, SAM_STAT_CHECK_CONDITION);
        assert_eq!(sense_key_asc_ascq(&parsed.sense), Some((5, 0x24, 0)));
        assert!(decode_cmd_resp(&resp[..11]).is_err());
    }

    #[test]
    fn control_requests_have_the_spec_sizes() {
        let tmf = encode_tmf_req(VIRTIO_SCSI_T_TMF_ABORT_TASK, encode_lun(0, 0).unwrap(), 9);
        assert_eq!(tmf.len(), TMF_REQ_SIZE);
        assert_eq!(&tmf[0..4], &[0, 0, 0, 0]);
        assert_eq!(&tmf[16..24], &9u64.to_le_bytes());
        let an = encode_an_req(VIRTIO_SCSI_T_AN_QUERY, encode_lun(0, 0).unwrap(), 0x10);
        assert_eq!(an.len(), AN_REQ_SIZE);
        assert_eq!(&an[12..16], &0x10u32.to_le_bytes());
        assert_eq!(
            decode_an_resp(&[4, 0, 0, 0, 10]).unwrap(),
            AnResp {
                event_actual: 4,
                response: 10
            }
        );
        let mut ev = [0u8; 16];
        ev[0..4].copy_from_slice(&VIRTIO_SCSI_T_EVENTS_MISSED.to_le_bytes());
        ev[12] = 3;
        let e = decode_event(&ev).unwrap();
        assert_eq!((e.event, e.reason), (VIRTIO_SCSI_T_EVENTS_MISSED, 3));
    }

    #[test]
    fn cdbs_are_big_endian() {
        assert_eq!(
            cdb::lba10(cdb::READ_10, 0, 0x01020304, 0x0506),
            vec![0x28, 0, 1, 2, 3, 4, 0, 5, 6, 0]
        );
        let c = cdb::lba16(cdb::WRITE_16, cdb::FUA, 0x0102030405060708, 0x090a0b0c);
        assert_eq!(&c[2..14], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 0xa, 0xb, 0xc]);
        assert_eq!(c[1], 0x08);
        let (c, p) = cdb::unmap(&[(8, 16)]);
        assert_eq!(c[8], 24);
        assert_eq!(&p[0..4], &[0, 22, 0, 16]);
        assert_eq!(&p[8..20], &[0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 16]);
        assert_eq!(cdb::read_capacity16(32)[13], 32);
        assert_eq!(
            sense_key_asc_ascq(&[0x72, 0x06, 0x29, 0x00]),
            Some((6, 0x29, 0))
        );
    }
}
