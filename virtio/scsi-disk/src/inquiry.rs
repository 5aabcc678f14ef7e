//! INQUIRY (SPC-5 6.7): standard data, or a vital product data page.

use super::cdb::Cdb;
use super::lun_config::LunConfig;
use super::outcome::Outcome;
use super::sense::Sense;
use super::vpd::{self, PRODUCT, VENDOR};

const REVISION: &[u8; 4] = b"1.0 ";

/// Peripheral qualifier 0, device type 0: a direct-access block device is connected.
const DISK: u8 = 0x00;
/// Qualifier 1, type 0x1f: QEMU's answer for an absent LUN 0, so that Linux still scans the
/// target with REPORT LUNS.
const ABSENT_LUN_0: u8 = 0x3f;
/// Qualifier 3, type 0x1f: no logical unit can exist at this LUN.
const NO_LUN: u8 = 0x7f;

const STANDARD_LEN: usize = 36;

fn standard_data(peripheral: u8) -> Vec<u8> {
    let mut data = vec![0u8; STANDARD_LEN];
    data[0] = peripheral;
    data[2] = 0x06; // SPC-4
    data[3] = 0x10 | 0x02; // HISUP, response data format 2
    data[4] = (STANDARD_LEN - 5) as u8;
    data[7] = 0x02; // CMDQUE
    data[8..16].copy_from_slice(VENDOR);
    data[16..32].copy_from_slice(PRODUCT);
    data[32..36].copy_from_slice(REVISION);
    data
}

fn allocation_length(cdb: Cdb<'_>) -> usize {
    usize::from(cdb.be16(3))
}

/// INQUIRY on an existing LUN.
pub(crate) fn inquiry(cdb: Cdb<'_>, lun: &LunConfig) -> Result<Outcome, Sense> {
    let page_code = cdb.byte(2);
    let data = if cdb.bit(1, 0) {
        vpd::page(page_code, lun).ok_or(Sense::invalid_field_in_cdb(2, None))?
    } else if page_code != 0 {
        return Err(Sense::invalid_field_in_cdb(2, None));
    } else {
        standard_data(DISK)
    };
    Ok(Outcome::data_in(data, allocation_length(cdb)))
}

/// INQUIRY addressed to a LUN that does not exist: standard data says nothing is there, and the
/// only VPD page is the list of pages.
pub(crate) fn inquiry_missing_lun(cdb: Cdb<'_>, lun: u16) -> Result<Outcome, Sense> {
    let page_code = cdb.byte(2);
    let data = if cdb.bit(1, 0) {
        if page_code != vpd::SUPPORTED_PAGES {
            return Err(Sense::invalid_field_in_cdb(2, None));
        }
        vpd::supported_pages_of_missing_lun()
    } else if page_code != 0 {
        return Err(Sense::invalid_field_in_cdb(2, None));
    } else {
        standard_data(if lun == 0 { ABSENT_LUN_0 } else { NO_LUN })
    };
    Ok(Outcome::data_in(data, allocation_length(cdb)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lun_config::tests::config;
    use crate::outcome::tests::good;

    #[test]
    fn standard_inquiry_fields() {
        let data = good(inquiry(Cdb(&[0x12, 0, 0, 0, 0xff, 0]), &config(0)));
        assert_eq!(data.len(), 36);
        assert_eq!(data[0], 0x00, "connected direct-access device");
        assert_eq!(data[1], 0x00, "not removable");
        assert_eq!(data[2], 0x06);
        assert_eq!(data[3], 0x12);
        assert_eq!(usize::from(data[4]), data.len() - 5);
        assert_eq!(data[7], 0x02);
        assert_eq!(&data[8..16], b"VFIOUSER");
        assert_eq!(&data[16..32], b"VIRTUAL DISK    ");
        assert_eq!(&data[32..36], b"1.0 ");
    }

    #[test]
    fn allocation_length_truncates() {
        assert_eq!(
            good(inquiry(Cdb(&[0x12, 0, 0, 0, 5, 0]), &config(0))).len(),
            5
        );
        assert!(good(inquiry(Cdb(&[0x12, 0, 0, 0, 0, 0]), &config(0))).is_empty());
        let vpd = good(inquiry(Cdb(&[0x12, 1, 0xb0, 0, 8, 0]), &config(0)));
        assert_eq!(vpd.len(), 8);
        assert_eq!(
            &vpd[..4],
            &[0, 0xb0, 0, 0x3c],
            "page length is not truncated"
        );
    }

    #[test]
    fn page_code_without_evpd_and_unknown_pages_are_refused() {
        assert_eq!(
            inquiry(Cdb(&[0x12, 0, 0x80, 0, 0xff, 0]), &config(0)),
            Err(Sense::invalid_field_in_cdb(2, None))
        );
        assert_eq!(
            inquiry(Cdb(&[0x12, 1, 0x81, 0, 0xff, 0]), &config(0)),
            Err(Sense::invalid_field_in_cdb(2, None))
        );
    }

    #[test]
    fn missing_luns() {
        let lun0 = good(inquiry_missing_lun(Cdb(&[0x12, 0, 0, 0, 0xff, 0]), 0));
        assert_eq!(lun0[0], 0x3f);
        let lun5 = good(inquiry_missing_lun(Cdb(&[0x12, 0, 0, 0, 0xff, 0]), 5));
        assert_eq!(lun5[0], 0x7f);
        let pages = good(inquiry_missing_lun(Cdb(&[0x12, 1, 0, 0, 0xff, 0]), 5));
        assert_eq!(pages, vec![0x7f, 0, 0, 1, 0]);
        assert_eq!(
            inquiry_missing_lun(Cdb(&[0x12, 1, 0x80, 0, 0xff, 0]), 5),
            Err(Sense::invalid_field_in_cdb(2, None))
        );
    }
}
