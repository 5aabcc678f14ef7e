//! REPORT SUPPORTED OPERATION CODES and REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-5
//! 6.35, 6.36), both answered from what we really implement.

use super::cdb::Cdb;
use super::commands::{has_service_actions, CommandSpec, COMMANDS};
use super::lun_config::LunConfig;
use super::outcome::Outcome;
use super::sense::Sense;

/// SUPPORT field values of the one-command format.
const NOT_SUPPORTED: u8 = 0b001;
const SUPPORTED: u8 = 0b011;

fn all_commands(lun: &LunConfig) -> Vec<u8> {
    let mut data = vec![0u8; 4];
    for spec in COMMANDS.iter().filter(|spec| spec.available_on(lun)) {
        let servactv = u8::from(spec.service_action.is_some());
        let service_action = u16::from(spec.service_action.unwrap_or(0));
        data.extend_from_slice(&[spec.opcode, 0]);
        data.extend_from_slice(&service_action.to_be_bytes());
        data.extend_from_slice(&[0, servactv]);
        data.extend_from_slice(&(spec.usage.len() as u16).to_be_bytes());
    }
    let len = (data.len() - 4) as u32;
    data[0..4].copy_from_slice(&len.to_be_bytes());
    data
}

fn one_command(spec: Option<&CommandSpec>) -> Vec<u8> {
    match spec {
        Some(spec) => {
            let mut data = vec![0, SUPPORTED];
            data.extend_from_slice(&(spec.usage.len() as u16).to_be_bytes());
            data.extend_from_slice(spec.usage);
            data
        }
        None => vec![0, NOT_SUPPORTED, 0, 0],
    }
}

pub(crate) fn report_supported_operation_codes(
    cdb: Cdb<'_>,
    lun: &LunConfig,
) -> Result<Outcome, Sense> {
    let opcode = cdb.byte(3);
    let service_action = cdb.be16(4);
    let with_service_actions = has_service_actions(opcode);
    let find = |service_action: Option<u16>| {
        COMMANDS.iter().find(|spec| {
            spec.opcode == opcode
                && spec.service_action.map(u16::from) == service_action
                && spec.available_on(lun)
        })
    };
    let data = match cdb.byte(2) & 0x07 {
        0 => all_commands(lun),
        // Options 1 and 2 must name the opcode the right way: without or with a service action.
        1 if with_service_actions => return Err(Sense::invalid_field_in_cdb(3, None)),
        1 => one_command(find(None)),
        2 if !with_service_actions => return Err(Sense::invalid_field_in_cdb(3, None)),
        2 | 3 if with_service_actions => one_command(find(Some(service_action))),
        3 => one_command(find(None)),
        _ => return Err(Sense::invalid_field_in_cdb(2, Some(2))),
    };
    Ok(Outcome::data_in(data, cdb.be32(6) as usize))
}

/// The TMFs the virtio-scsi control queue implements: ABORT TASK, ABORT TASK SET, CLEAR TASK
/// SET, LOGICAL UNIT RESET, QUERY TASK, QUERY TASK SET, I_T NEXUS RESET (no CLEAR ACA).
pub(crate) fn report_supported_task_management_functions(cdb: Cdb<'_>) -> Outcome {
    const ATS: u8 = 0x80;
    const ATSS: u8 = 0x40;
    const CTSS: u8 = 0x10;
    const LURS: u8 = 0x08;
    const QTS: u8 = 0x04;
    const QTSS: u8 = 0x02;
    const ITNRS: u8 = 0x01;
    let repd = cdb.bit(2, 7);
    let mut data = vec![ATS | ATSS | CTSS | LURS | QTS, QTSS | ITNRS, 0, 0];
    if repd {
        data[3] = 0x0c;
        data.resize(16, 0);
    }
    Outcome::data_in(data, cdb.be32(6) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lun_config::tests::config;
    use crate::outcome::tests::good;

    fn rsoc(options: u8, opcode: u8, service_action: u16, allocation_length: u32) -> [u8; 12] {
        let mut cdb = [0u8; 12];
        cdb[0] = 0xa3;
        cdb[1] = 0x0c;
        cdb[2] = options;
        cdb[3] = opcode;
        cdb[4..6].copy_from_slice(&service_action.to_be_bytes());
        cdb[6..10].copy_from_slice(&allocation_length.to_be_bytes());
        cdb
    }

    #[test]
    fn all_commands_lists_the_table() {
        let lun = config(0);
        let data = good(report_supported_operation_codes(
            Cdb(&rsoc(0, 0, 0, 65536)),
            &lun,
        ));
        let len = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, data.len() - 4);
        assert_eq!(len, 8 * COMMANDS.len());
        let read16 = data[4..].chunks(8).find(|d| d[0] == 0x88).unwrap();
        assert_eq!(read16, &[0x88, 0, 0, 0, 0, 0, 0, 16]);
        let rc16 = data[4..].chunks(8).find(|d| d[0] == 0x9e).unwrap();
        assert_eq!(rc16, &[0x9e, 0, 0, 0x10, 0, 1, 0, 16]);

        let no_discard = LunConfig {
            discard: false,
            ..config(0)
        };
        let data = good(report_supported_operation_codes(
            Cdb(&rsoc(0, 0, 0, 65536)),
            &no_discard,
        ));
        assert!(
            data[4..].chunks(8).all(|d| d[0] != 0x42),
            "no UNMAP without discard"
        );
    }

    #[test]
    fn one_command_formats() {
        let lun = config(0);
        let data = good(report_supported_operation_codes(
            Cdb(&rsoc(1, 0x28, 0, 100)),
            &lun,
        ));
        assert_eq!(&data[..4], &[0, 0x03, 0, 10]);
        assert_eq!(
            &data[4..],
            &[0x28, 0x18, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]
        );
        let data = good(report_supported_operation_codes(
            Cdb(&rsoc(1, 0x04, 0, 100)),
            &lun,
        ));
        assert_eq!(data, vec![0, 0x01, 0, 0]);
        let data = good(report_supported_operation_codes(
            Cdb(&rsoc(2, 0x9e, 0x10, 100)),
            &lun,
        ));
        assert_eq!(&data[..6], &[0, 0x03, 0, 16, 0x9e, 0x10]);
        let data = good(report_supported_operation_codes(
            Cdb(&rsoc(2, 0x9e, 0x11, 100)),
            &lun,
        ));
        assert_eq!(data, vec![0, 0x01, 0, 0]);
        let data = good(report_supported_operation_codes(
            Cdb(&rsoc(3, 0x12, 0x55, 100)),
            &lun,
        ));
        assert_eq!(&data[..4], &[0, 0x03, 0, 6]);
    }

    #[test]
    fn option_errors_and_truncation() {
        let lun = config(0);
        assert_eq!(
            report_supported_operation_codes(Cdb(&rsoc(1, 0x9e, 0, 100)), &lun),
            Err(Sense::invalid_field_in_cdb(3, None))
        );
        assert_eq!(
            report_supported_operation_codes(Cdb(&rsoc(2, 0x28, 0, 100)), &lun),
            Err(Sense::invalid_field_in_cdb(3, None))
        );
        assert_eq!(
            report_supported_operation_codes(Cdb(&rsoc(4, 0, 0, 100)), &lun),
            Err(Sense::invalid_field_in_cdb(2, Some(2)))
        );
        let data = good(report_supported_operation_codes(
            Cdb(&rsoc(0, 0, 0, 6)),
            &lun,
        ));
        assert_eq!(data.len(), 6);
    }

    #[test]
    fn task_management_functions() {
        let mut cdb = [0xa3, 0x0d, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0];
        assert_eq!(
            report_supported_task_management_functions(Cdb(&cdb)),
            Outcome::Good {
                data_in: vec![0xdc, 0x03, 0, 0]
            }
        );
        cdb[2] = 0x80;
        let Outcome::Good { data_in } = report_supported_task_management_functions(Cdb(&cdb))
        else {
            panic!()
        };
        assert_eq!(data_in.len(), 16);
        assert_eq!(&data_in[..4], &[0xdc, 0x03, 0, 0x0c]);
        cdb[9] = 2;
        assert_eq!(
            report_supported_task_management_functions(Cdb(&cdb)),
            Outcome::Good {
                data_in: vec![0xdc, 0x03]
            }
        );
    }
}
