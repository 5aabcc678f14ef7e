//! A SCSI command as the driver submits it, the guest buffers it occupies while in flight, and
//! its result.

use crate::guest_memory::{DriverMemory, MemoryError};
use crate::scsi::{self, CmdResp, ScsiError};
use crate::split_queue::{Buffer, UsedElement};

/// A SCSI command to send on a request queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiRequest {
    pub lun: [u8; 8],
    /// None: the queue assigns the next tag.
    pub tag: Option<u64>,
    pub cdb: Vec<u8>,
    pub data_out: Option<Vec<u8>>,
    pub data_in_len: u32,
}

impl ScsiRequest {
    pub fn new(lun: [u8; 8], cdb: &[u8]) -> Self {
        ScsiRequest {
            lun,
            tag: None,
            cdb: cdb.to_vec(),
            data_out: None,
            data_in_len: 0,
        }
    }

    pub fn data_in(mut self, len: u32) -> Self {
        self.data_in_len = len;
        self
    }

    pub fn data_out(mut self, data: &[u8]) -> Self {
        self.data_out = Some(data.to_vec());
        self
    }

    pub fn tag(mut self, tag: u64) -> Self {
        self.tag = Some(tag);
        self
    }
}

/// The outcome of a SCSI command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiResult {
    pub tag: u64,
    pub response: u8,
    pub status: u8,
    pub status_qualifier: u16,
    pub sense_len: u32,
    pub sense: Vec<u8>,
    pub resid: u32,
    /// The data-in bytes the device transferred (buffer length minus resid).
    pub data_in: Vec<u8>,
    /// The used element's length: bytes the device says it wrote into the chain.
    pub used_len: u32,
}

impl ScsiResult {
    /// Sense key, ASC, ASCQ of the returned sense data.
    pub fn sense_key(&self) -> Option<(u8, u8, u8)> {
        scsi::sense_key_asc_ascq(&self.sense)
    }

    /// Response OK and status GOOD.
    pub fn is_good(&self) -> bool {
        self.response == scsi::VIRTIO_SCSI_S_OK && self.status == scsi::SAM_STAT_GOOD
    }
}

/// What came back for a published chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsedChain {
    Scsi(ScsiResult),
    /// A chain the caller built (or an event buffer): the used element only.
    Raw(UsedElement),
}

/// The guest buffers of an in-flight command.
#[derive(Debug)]
pub(crate) struct InFlightCommand {
    pub tag: u64,
    req: u64,
    data_out: Option<u64>,
    resp: u64,
    resp_len: u32,
    data_in: Option<(u64, u32)>,
}

impl InFlightCommand {
    /// Allocates and fills the command's buffers; returns them with the chain to publish
    /// (request, data-out, response, data-in, in the order §5.6.6 requires).
    pub fn build(
        mem: &DriverMemory,
        request: &ScsiRequest,
        tag: u64,
        cdb_size: u32,
        sense_size: u32,
    ) -> Result<(Self, Vec<Buffer>), BuildError> {
        let req_bytes = scsi::encode_cmd_req(request.lun, tag, &request.cdb, cdb_size as usize)?;
        let resp_len = (scsi::CMD_RESP_HEADER_SIZE as u32).saturating_add(sense_size);
        let mut command = InFlightCommand {
            tag,
            req: 0,
            data_out: None,
            resp: 0,
            resp_len,
            data_in: None,
        };
        let mut allocated = Vec::new();
        let filled = (|| -> Result<Vec<Buffer>, MemoryError> {
            command.req = mem.alloc(req_bytes.len() as u64, 8)?;
            allocated.push(command.req);
            mem.write(command.req, &req_bytes)?;
            let mut chain = vec![Buffer::readable(command.req, req_bytes.len() as u32)];
            if let Some(data) = &request.data_out {
                let gpa = mem.alloc(data.len() as u64, 512)?;
                allocated.push(gpa);
                mem.write(gpa, data)?;
                chain.push(Buffer::readable(gpa, data.len() as u32));
                command.data_out = Some(gpa);
            }
            command.resp = mem.alloc(u64::from(resp_len), 8)?;
            allocated.push(command.resp);
            chain.push(Buffer::writable(command.resp, resp_len));
            if request.data_in_len > 0 {
                let gpa = mem.alloc(u64::from(request.data_in_len), 512)?;
                allocated.push(gpa);
                chain.push(Buffer::writable(gpa, request.data_in_len));
                command.data_in = Some((gpa, request.data_in_len));
            }
            Ok(chain)
        })();
        match filled {
            Ok(chain) => Ok((command, chain)),
            Err(e) => {
                for gpa in allocated {
                    mem.free(gpa)?;
                }
                Err(e.into())
            }
        }
    }

    /// Reads the response and data-in buffers after the device used the chain.
    pub fn finish(&self, mem: &DriverMemory, used: UsedElement) -> Result<ScsiResult, BuildError> {
        let resp_bytes = mem.read_vec(self.resp, self.resp_len as usize)?;
        let CmdResp {
            sense_len,
            resid,
            status_qualifier,
            status,
            response,
            sense,
        } = scsi::decode_cmd_resp(&resp_bytes)?;
        let data_in = match self.data_in {
            Some((gpa, len)) => mem.read_vec(gpa, len.saturating_sub(resid) as usize)?,
            None => Vec::new(),
        };
        Ok(ScsiResult {
            tag: self.tag,
            response,
            status,
            status_qualifier,
            sense_len,
            sense,
            resid,
            data_in,
            used_len: used.len,
        })
    }

    /// Returns the command's buffers to the allocator.
    pub fn release(&self, mem: &DriverMemory) -> Result<(), MemoryError> {
        for gpa in [
            Some(self.req),
            self.data_out,
            Some(self.resp),
            self.data_in.map(|(gpa, _)| gpa),
        ]
        .into_iter()
        .flatten()
        {
            mem.free(gpa)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    #[error("virtio-scsi: {0}")]
    Scsi(#[from] ScsiError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_lays_out_the_chain_and_finish_reads_the_result() {
        let mem = DriverMemory::new(0, 1 << 20).unwrap();
        let request =
            ScsiRequest::new([1, 0, 0, 0, 0, 0, 0, 0], &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0])
                .data_out(&[7u8; 512])
                .data_in(64);
        let (command, chain) = InFlightCommand::build(&mem, &request, 42, 32, 96).unwrap();
        assert_eq!(chain.len(), 4);
        assert_eq!(
            chain
                .iter()
                .map(|b| (b.len, b.writable))
                .collect::<Vec<_>>(),
            vec![(51, false), (512, false), (108, true), (64, true)]
        );
        assert_eq!(mem.read_vec(chain[1].addr, 512).unwrap(), vec![7u8; 512]);
        // The device answers: GOOD, 16 of 64 data-in bytes not transferred.
        let mut resp = vec![0u8; 12];
        resp[4..8].copy_from_slice(&16u32.to_le_bytes());
        mem.write(chain[2].addr, &resp).unwrap();
        mem.write(chain[3].addr, &[5u8; 48]).unwrap();
        let result = command
            .finish(&mem, UsedElement { id: 0, len: 60 })
            .unwrap();
        assert!(result.is_good());
        assert_eq!((result.tag, result.resid, result.used_len), (42, 16, 60));
        assert_eq!(result.data_in, vec![5u8; 48]);
        command.release(&mem).unwrap();
        assert_eq!(mem.alloc(1 << 20, 1).unwrap(), 0, "everything was freed");
    }
}
