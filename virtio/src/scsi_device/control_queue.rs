//! The control queue: task management functions and asynchronous notification requests
//! (virtio 1.2 §5.6.6.2).
//!
//! Request queues may run on other threads with commands in flight (see `task_set`): queries
//! answer from what is in flight; aborts and resets are answered once the commands they name
//! have completed (they are not cancelled), so the driver sees every affected command finished
//! before the TMF response, as virtio 1.2 §5.6.6.2 promises it.

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use slog::debug;
use virtio_bindings::virtio_scsi::{
    VIRTIO_SCSI_S_BAD_TARGET, VIRTIO_SCSI_S_FAILURE, VIRTIO_SCSI_S_FUNCTION_REJECTED,
    VIRTIO_SCSI_S_FUNCTION_SUCCEEDED, VIRTIO_SCSI_S_INCORRECT_LUN, VIRTIO_SCSI_S_OK,
    VIRTIO_SCSI_T_AN_QUERY, VIRTIO_SCSI_T_AN_SUBSCRIBE, VIRTIO_SCSI_T_TMF,
    VIRTIO_SCSI_T_TMF_ABORT_TASK, VIRTIO_SCSI_T_TMF_ABORT_TASK_SET,
    VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET, VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET,
    VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, VIRTIO_SCSI_T_TMF_QUERY_TASK,
    VIRTIO_SCSI_T_TMF_QUERY_TASK_SET,
};
use vmm_sys_util::eventfd::EventFd;

use super::lun_address;
use super::lun_data::LunTable;
use super::task_set::{TaskScope, TaskSet};
use super::virtqueue::{CachedMemory, Chain, ChainBuffers, Virtqueue};
use super::wire_format::{
    an_response, ctrl_type, AnRequest, TmfRequest, AN_REQ_SIZE, CTRL_TYPE_SIZE, TMF_REQ_SIZE,
    TMF_RESP_SIZE,
};
use crate::queue_worker::QueueWorker;

/// The spec's VIRTIO_SCSI_S_FUNCTION_COMPLETE, missing from the bindings (same value as OK).
const FUNCTION_COMPLETE: u32 = VIRTIO_SCSI_S_OK;

/// Asynchronous notification classes we report: none of them (operational change, power
/// management, external request, media change, multi-host, device busy) happen to our disks.
const SUPPORTED_EVENTS: u32 = 0;

/// A TMF held until the commands it names have completed.
struct WaitingTmf {
    head: u16,
    buffers: ChainBuffers,
    request: TmfRequest,
    scope: TaskScope,
}

pub struct ControlQueue {
    queue: Virtqueue,
    luns: Arc<LunTable>,
    tasks: Arc<TaskSet>,
    waiting: Vec<WaitingTmf>,
}

impl ControlQueue {
    pub fn new(queue: Virtqueue, luns: Arc<LunTable>, tasks: Arc<TaskSet>) -> ControlQueue {
        ControlQueue {
            queue,
            luns,
            tasks,
            waiting: Vec::new(),
        }
    }

    pub fn serve_available(&mut self) {
        let snapshot = self.queue.snapshot();
        let mem = CachedMemory::new(&snapshot);
        loop {
            for chain in self.queue.pop_all(&mem) {
                let head = chain.head_index();
                if let Some(used) = self.handle(chain, &mem) {
                    self.queue.add_used(&mem, head, used);
                }
            }
            if !self.queue.more_available(&mem) {
                break;
            }
        }
        self.queue.interrupt_if_wanted(&mem);
    }

    /// Commands completed while TMFs waited: answer those whose tasks are all gone.
    pub fn tasks_left(&mut self) {
        self.tasks.clear_left();
        let snapshot = self.queue.snapshot();
        let mem = CachedMemory::new(&snapshot);
        for tmf in std::mem::take(&mut self.waiting) {
            if self.tasks.any(tmf.scope) {
                self.waiting.push(tmf);
                continue;
            }
            self.tasks.done_waiting(tmf.scope);
            let used = self.answer_tmf(&tmf.buffers, &mem, &tmf.request);
            self.queue.add_used(&mem, tmf.head, used);
        }
        self.queue.interrupt_if_wanted(&mem);
    }

    /// Answers one request; returns the used length, or None when a TMF has to wait.
    fn handle(&mut self, chain: Chain, mem: &CachedMemory<'_>) -> Option<u32> {
        let head = chain.head_index();
        let (buffers, defect) = ChainBuffers::collect(chain, mem);
        let mut kind = [0u8; CTRL_TYPE_SIZE];
        let kind = match buffers.readable.read(mem, 0, &mut kind) {
            Ok(CTRL_TYPE_SIZE) => ctrl_type(&kind),
            _ => {
                debug!(self.queue.logger(), "control request without type";
                    "head" => head, "readable" => buffers.readable.len());
                return Some(0);
            }
        };
        if let Some(defect) = defect {
            debug!(self.queue.logger(), "bad chain";
                "head" => head, "type" => kind, "defect" => defect.name());
            return Some(respond(&buffers, mem, kind, 0, VIRTIO_SCSI_S_FAILURE));
        }
        let answer = match kind {
            VIRTIO_SCSI_T_TMF => {
                let mut bytes = [0u8; TMF_REQ_SIZE];
                if !matches!(buffers.readable.read(mem, 0, &mut bytes), Ok(TMF_REQ_SIZE)) {
                    debug!(self.queue.logger(), "tmf request too short"; "head" => head);
                    return Some(respond(&buffers, mem, kind, 0, VIRTIO_SCSI_S_FAILURE));
                }
                let request = TmfRequest::parse(&bytes);
                if let Some(scope) = waits_for(&request) {
                    if self.tasks.wait(scope) {
                        debug!(self.queue.logger(), "tmf waits for commands in flight";
                            "subtype" => request.subtype, "lun" => ?request.lun, "tag" => request.tag);
                        self.waiting.push(WaitingTmf {
                            head,
                            buffers,
                            request,
                            scope,
                        });
                        return None;
                    }
                }
                self.answer_tmf(&buffers, mem, &request)
            }
            VIRTIO_SCSI_T_AN_QUERY | VIRTIO_SCSI_T_AN_SUBSCRIBE => {
                let mut bytes = [0u8; AN_REQ_SIZE];
                if !matches!(buffers.readable.read(mem, 0, &mut bytes), Ok(AN_REQ_SIZE)) {
                    debug!(self.queue.logger(), "an request too short"; "head" => head);
                    return Some(respond(&buffers, mem, kind, 0, VIRTIO_SCSI_S_FAILURE));
                }
                let request = AnRequest::parse(&bytes);
                let (actual, response) = match self.check_lun(&request.lun) {
                    Ok(_) => (request.event_requested & SUPPORTED_EVENTS, VIRTIO_SCSI_S_OK),
                    Err(response) => (0, response),
                };
                debug!(self.queue.logger(), "async notification";
                    "type" => kind, "lun" => ?request.lun,
                    "requested" => request.event_requested, "actual" => actual,
                    "response" => response);
                respond(&buffers, mem, kind, actual, response)
            }
            _ => {
                debug!(self.queue.logger(), "unknown control request"; "type" => kind);
                respond(&buffers, mem, kind, 0, VIRTIO_SCSI_S_FUNCTION_REJECTED)
            }
        };
        Some(answer)
    }

    fn answer_tmf(
        &mut self,
        buffers: &ChainBuffers,
        mem: &CachedMemory<'_>,
        request: &TmfRequest,
    ) -> u32 {
        let response = self.task_management(request);
        debug!(self.queue.logger(), "tmf";
            "subtype" => request.subtype, "lun" => ?request.lun, "tag" => request.tag,
            "response" => response);
        respond(buffers, mem, VIRTIO_SCSI_T_TMF, 0, response)
    }

    /// The LUN a control request addresses, or the response for a bad address.
    fn check_lun(&self, lun: &[u8; 8]) -> Result<u16, u32> {
        let lun = lun_address::parse(lun).map_err(|_| VIRTIO_SCSI_S_BAD_TARGET)?;
        if self.luns.load().lun(lun).is_some() {
            Ok(lun)
        } else {
            Err(VIRTIO_SCSI_S_INCORRECT_LUN)
        }
    }

    fn task_management(&mut self, request: &TmfRequest) -> u32 {
        match request.subtype {
            // The commands named have completed (the TMF waited for them): nothing is left
            // to abort.
            VIRTIO_SCSI_T_TMF_ABORT_TASK
            | VIRTIO_SCSI_T_TMF_ABORT_TASK_SET
            | VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET => match self.check_lun(&request.lun) {
                Ok(_) => FUNCTION_COMPLETE,
                Err(response) => response,
            },
            VIRTIO_SCSI_T_TMF_QUERY_TASK | VIRTIO_SCSI_T_TMF_QUERY_TASK_SET => {
                match self.check_lun(&request.lun) {
                    Ok(lun) => {
                        let scope = match request.subtype {
                            VIRTIO_SCSI_T_TMF_QUERY_TASK => TaskScope::Task {
                                lun,
                                tag: request.tag,
                            },
                            _ => TaskScope::Lun(lun),
                        };
                        if self.tasks.any(scope) {
                            VIRTIO_SCSI_S_FUNCTION_SUCCEEDED
                        } else {
                            FUNCTION_COMPLETE
                        }
                    }
                    Err(response) => response,
                }
            }
            VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET => match self.check_lun(&request.lun) {
                Ok(lun) => {
                    self.luns.load().reset_lun(lun);
                    VIRTIO_SCSI_S_FUNCTION_SUCCEEDED
                }
                Err(response) => response,
            },
            VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET => match lun_address::parse(&request.lun) {
                // The nexus is the target, whichever of its LUNs the request names.
                Ok(_) => {
                    self.luns.load().reset_all();
                    VIRTIO_SCSI_S_FUNCTION_SUCCEEDED
                }
                Err(_) => VIRTIO_SCSI_S_BAD_TARGET,
            },
            // CLEAR ACA (we never establish an ACA) and unknown functions.
            _ => VIRTIO_SCSI_S_FUNCTION_REJECTED,
        }
    }
}

impl QueueWorker for ControlQueue {
    fn queue_index(&self) -> u16 {
        self.queue.index()
    }

    fn notifier(&self) -> &Arc<EventFd> {
        self.queue.notifier()
    }

    fn notifier_ready(&mut self) {
        self.queue.clear_notifier();
        ControlQueue::serve_available(self);
    }

    fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.tasks.left_fd())
    }

    fn completions_ready(&mut self) {
        self.tasks_left();
    }

    /// Waiting TMFs count: a quiesce answers them once their commands completed.
    fn in_flight(&self) -> usize {
        self.waiting.len()
    }
}

/// The commands a TMF must see completed before it is answered.
fn waits_for(request: &TmfRequest) -> Option<TaskScope> {
    let lun = lun_address::parse(&request.lun).ok()?;
    match request.subtype {
        VIRTIO_SCSI_T_TMF_ABORT_TASK => Some(TaskScope::Task {
            lun,
            tag: request.tag,
        }),
        VIRTIO_SCSI_T_TMF_ABORT_TASK_SET
        | VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET
        | VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET => Some(TaskScope::Lun(lun)),
        VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET => Some(TaskScope::All),
        _ => None,
    }
}

/// Writes the response for a control request of type `kind`; returns the used length (0 when
/// the buffers cannot hold it).
fn respond(
    buffers: &ChainBuffers,
    mem: &CachedMemory<'_>,
    kind: u32,
    event_actual: u32,
    response: u32,
) -> u32 {
    let an;
    let bytes: &[u8] = match kind {
        VIRTIO_SCSI_T_AN_QUERY | VIRTIO_SCSI_T_AN_SUBSCRIBE => {
            an = an_response(event_actual, response);
            &an
        }
        // TMF responses, and unknown types whose layout we cannot know: the response byte.
        _ => &[response as u8; TMF_RESP_SIZE],
    };
    if buffers.writable.len() < bytes.len() as u64 {
        return 0;
    }
    match buffers.writable.write(mem, 0, bytes) {
        Ok(written) => written as u32,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use block::Disk;
    use virtio_bindings::virtio_scsi::{
        VIRTIO_SCSI_T_TMF_CLEAR_ACA, VIRTIO_SCSI_T_TMF_QUERY_TASK_SET,
    };

    use super::*;
    use crate::scsi_device::test_driver::{lun_field, Buf, Harness};

    const CTRL: usize = 0;

    fn harness() -> Harness {
        Harness::new(vec![Disk::null(1 << 20, 512).unwrap()])
    }

    fn tmf_bytes(subtype: u32, lun: [u8; 8], tag: u64) -> Vec<u8> {
        let mut bytes = VIRTIO_SCSI_T_TMF.to_le_bytes().to_vec();
        bytes.extend_from_slice(&subtype.to_le_bytes());
        bytes.extend_from_slice(&lun);
        bytes.extend_from_slice(&tag.to_le_bytes());
        bytes
    }

    /// Sends a control request; returns the used length and the response bytes.
    fn control(harness: &mut Harness, request: &[u8], response_len: u32) -> (u32, Vec<u8>) {
        let mut bufs = vec![harness.data_buf(CTRL, request, false)];
        if response_len > 0 {
            bufs.push(harness.response_buf(CTRL, response_len));
        }
        let used = harness.submit(CTRL, &bufs);
        assert_eq!(used.len(), 1);
        let response = match bufs.get(1) {
            Some(buf) => harness.read(buf.addr, buf.len as usize),
            None => Vec::new(),
        };
        (used[0].1, response)
    }

    fn tmf(harness: &mut Harness, subtype: u32, lun: [u8; 8]) -> u32 {
        let (used, response) = control(harness, &tmf_bytes(subtype, lun, 42), 1);
        assert_eq!(used, 1);
        u32::from(response[0])
    }

    fn unit_attention_pending(harness: &mut Harness) -> bool {
        let result = harness.command(0, &[0; 6], &[], 0);
        result.resp.status == 2 && result.sense[12] == 0x29
    }

    #[test]
    fn task_management_functions() {
        let mut harness = harness();
        assert!(unit_attention_pending(&mut harness));
        let lun0 = lun_field(0);
        for (subtype, expected) in [
            (VIRTIO_SCSI_T_TMF_ABORT_TASK, FUNCTION_COMPLETE),
            (VIRTIO_SCSI_T_TMF_ABORT_TASK_SET, FUNCTION_COMPLETE),
            (VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET, FUNCTION_COMPLETE),
            (VIRTIO_SCSI_T_TMF_QUERY_TASK, FUNCTION_COMPLETE),
            (VIRTIO_SCSI_T_TMF_QUERY_TASK_SET, FUNCTION_COMPLETE),
            (VIRTIO_SCSI_T_TMF_CLEAR_ACA, VIRTIO_SCSI_S_FUNCTION_REJECTED),
            (99, VIRTIO_SCSI_S_FUNCTION_REJECTED),
        ] {
            assert_eq!(
                tmf(&mut harness, subtype, lun0),
                expected,
                "subtype {subtype}"
            );
        }
        assert!(
            !unit_attention_pending(&mut harness),
            "aborts and queries reset nothing"
        );

        assert_eq!(
            tmf(&mut harness, VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun0),
            VIRTIO_SCSI_S_FUNCTION_SUCCEEDED
        );
        assert!(unit_attention_pending(&mut harness));
        assert_eq!(
            tmf(&mut harness, VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET, lun0),
            VIRTIO_SCSI_S_FUNCTION_SUCCEEDED
        );
        assert!(unit_attention_pending(&mut harness));
    }

    #[test]
    fn task_management_addressing() {
        let mut harness = harness();
        let other_target = [1, 1, 0x40, 0, 0, 0, 0, 0];
        for subtype in [
            VIRTIO_SCSI_T_TMF_ABORT_TASK,
            VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET,
            VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET,
        ] {
            assert_eq!(
                tmf(&mut harness, subtype, other_target),
                VIRTIO_SCSI_S_BAD_TARGET
            );
        }
        assert_eq!(
            tmf(
                &mut harness,
                VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET,
                lun_field(9)
            ),
            VIRTIO_SCSI_S_INCORRECT_LUN
        );
        assert_eq!(
            tmf(&mut harness, VIRTIO_SCSI_T_TMF_QUERY_TASK, lun_field(9)),
            VIRTIO_SCSI_S_INCORRECT_LUN
        );
        // The nexus is the target's: any LUN number of target 0 names it.
        assert_eq!(
            tmf(
                &mut harness,
                VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET,
                lun_field(9)
            ),
            VIRTIO_SCSI_S_FUNCTION_SUCCEEDED
        );
    }

    #[test]
    fn asynchronous_notification_requests() {
        let mut harness = harness();
        for kind in [VIRTIO_SCSI_T_AN_QUERY, VIRTIO_SCSI_T_AN_SUBSCRIBE] {
            let mut request = kind.to_le_bytes().to_vec();
            request.extend_from_slice(&lun_field(0));
            request.extend_from_slice(&0x7Eu32.to_le_bytes());
            let (used, response) = control(&mut harness, &request, 8);
            assert_eq!(used, 5);
            assert_eq!(&response[..5], &[0, 0, 0, 0, VIRTIO_SCSI_S_OK as u8]);
            assert_eq!(&response[5..], &[0xEE; 3]);

            request[4..12].copy_from_slice(&[1, 3, 0x40, 0, 0, 0, 0, 0]);
            let (_, response) = control(&mut harness, &request, 5);
            assert_eq!(response[4], VIRTIO_SCSI_S_BAD_TARGET as u8);
        }
    }

    #[test]
    fn malformed_control_requests() {
        let mut harness = harness();
        // A TMF cut short: FAILURE when there is room for the response, nothing otherwise.
        let short = &tmf_bytes(VIRTIO_SCSI_T_TMF_ABORT_TASK, lun_field(0), 1)[..8];
        assert_eq!(
            control(&mut harness, short, 1),
            (1, vec![VIRTIO_SCSI_S_FAILURE as u8])
        );
        assert_eq!(control(&mut harness, short, 0).0, 0);
        let short_an = &VIRTIO_SCSI_T_AN_QUERY.to_le_bytes();
        let (used, response) = control(&mut harness, short_an, 5);
        assert_eq!((used, response[4]), (5, VIRTIO_SCSI_S_FAILURE as u8));
        // An AN response buffer too small for the response.
        let mut an = VIRTIO_SCSI_T_AN_QUERY.to_le_bytes().to_vec();
        an.extend_from_slice(&[0; 12]);
        assert_eq!(control(&mut harness, &an, 3).0, 0);
        // No type at all.
        assert_eq!(control(&mut harness, &[0, 0], 1).0, 0);
        // Unknown type.
        assert_eq!(control(&mut harness, &7u32.to_le_bytes(), 1), (1, vec![11]));
        // Buffers in the wrong order.
        let response = harness.response_buf(CTRL, 1);
        let request = harness.data_buf(CTRL, &tmf_bytes(0, lun_field(0), 1), false);
        let used = harness.submit(CTRL, &[response, request]);
        assert_eq!(used[0].1, 1);
        assert_eq!(
            harness.read(response.addr, 1),
            vec![VIRTIO_SCSI_S_FAILURE as u8]
        );
        // Outside memory.
        let outside = Buf {
            addr: 1 << 40,
            len: 24,
            writable: false,
        };
        let response = harness.response_buf(CTRL, 1);
        assert_eq!(harness.submit(CTRL, &[outside, response])[0].1, 0);

        assert_eq!(
            tmf(&mut harness, VIRTIO_SCSI_T_TMF_ABORT_TASK, lun_field(0)),
            FUNCTION_COMPLETE
        );
    }
}
