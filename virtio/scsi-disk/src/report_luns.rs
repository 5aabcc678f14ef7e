//! REPORT LUNS (SPC-5 6.33).

use super::cdb::Cdb;
use super::outcome::Outcome;
use super::sense::Sense;

/// Single-level LUN in the form Linux's virtio-scsi driver and QEMU use: peripheral device
/// addressing below 256, flat space addressing from 256 on.
fn encode(lun: u16) -> [u8; 8] {
    let [high, low] = lun.to_be_bytes();
    let first = if lun < 256 { 0 } else { 0x40 | high };
    [first, low, 0, 0, 0, 0, 0, 0]
}

/// `lun_list` is sorted and already holds LUN 0: like QEMU, we always report LUN 0, which
/// SPC requires to be addressable, even when no disk sits there.
pub(crate) fn report_luns(cdb: Cdb<'_>, lun_list: &[u16]) -> Result<Outcome, Sense> {
    let select_report = cdb.byte(2);
    if !matches!(select_report, 0x00 | 0x02) {
        return Err(Sense::invalid_field_in_cdb(2, None));
    }
    let allocation_length = cdb.be32(6) as usize;
    if allocation_length < 16 {
        return Err(Sense::invalid_field_in_cdb(6, None));
    }
    let mut data = Vec::with_capacity(8 + 8 * lun_list.len());
    data.extend_from_slice(&((8 * lun_list.len()) as u32).to_be_bytes());
    data.extend_from_slice(&[0; 4]);
    for &lun in lun_list {
        data.extend_from_slice(&encode(lun));
    }
    Ok(Outcome::data_in(data, allocation_length))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdb(select_report: u8, allocation_length: u32) -> [u8; 12] {
        let mut cdb = [0u8; 12];
        cdb[0] = 0xa0;
        cdb[2] = select_report;
        cdb[6..10].copy_from_slice(&allocation_length.to_be_bytes());
        cdb
    }

    #[test]
    fn lists_every_lun_in_the_linux_format() {
        let Ok(Outcome::Good { data_in }) = report_luns(Cdb(&cdb(0, 4096)), &[0, 1, 300]) else {
            panic!()
        };
        assert_eq!(&data_in[..8], &[0, 0, 0, 24, 0, 0, 0, 0]);
        assert_eq!(&data_in[8..16], &[0; 8]);
        assert_eq!(&data_in[16..24], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&data_in[24..32], &[0x41, 0x2c, 0, 0, 0, 0, 0, 0]);
        assert_eq!(data_in.len(), 32);
        assert!(report_luns(Cdb(&cdb(2, 4096)), &[0]).is_ok());
    }

    #[test]
    fn truncates_but_keeps_the_full_list_length() {
        let Ok(Outcome::Good { data_in }) = report_luns(Cdb(&cdb(0, 16)), &[0, 1, 2]) else {
            panic!()
        };
        assert_eq!(
            data_in,
            vec![0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn refuses_bad_select_report_and_short_allocation() {
        assert_eq!(
            report_luns(Cdb(&cdb(1, 4096)), &[0]),
            Err(Sense::invalid_field_in_cdb(2, None))
        );
        assert_eq!(
            report_luns(Cdb(&cdb(0, 15)), &[0]),
            Err(Sense::invalid_field_in_cdb(6, None))
        );
    }
}
