//! MODE SENSE and MODE SELECT (SPC-5 6.14-6.16) with the caching page (SBC-4 6.5.5), whose WCE
//! bit is the one thing a driver may change, and the control page (SPC-5 7.5.10).

use super::cdb::{Cdb, CdbSize};
use super::lun_config::LunConfig;
use super::outcome::Outcome;
use super::sense::Sense;

const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0a;
const ALL_PAGES: u8 = 0x3f;
const ALL_SUBPAGES: u8 = 0xff;

const WCE: u8 = 0x04;
/// Device-specific parameter: write protected.
const WP: u8 = 0x80;
/// Device-specific parameter: DPO and FUA are supported (Linux only sends FUA when set).
const DPOFUA: u8 = 0x10;

#[derive(Clone, Copy, PartialEq, Eq)]
enum PageControl {
    Current,
    Changeable,
    Default,
}

fn caching_page(control: PageControl, write_cache: bool) -> Vec<u8> {
    let mut page = vec![0u8; 20];
    page[0] = CACHING;
    page[1] = 0x12;
    page[2] = match control {
        PageControl::Current if !write_cache => 0,
        PageControl::Current | PageControl::Changeable | PageControl::Default => WCE,
    };
    page
}

fn control_page(control: PageControl) -> Vec<u8> {
    let mut page = vec![0u8; 12];
    page[0] = CONTROL;
    page[1] = 0x0a;
    if control != PageControl::Changeable {
        page[3] = 0x10; // queue algorithm modifier 1: unrestricted reordering
    }
    page
}

fn page(code: u8, control: PageControl, write_cache: bool) -> Option<Vec<u8>> {
    match code {
        CACHING => Some(caching_page(control, write_cache)),
        CONTROL => Some(control_page(control)),
        _ => None,
    }
}

fn block_descriptor(lun: &LunConfig, long_lba: bool) -> Vec<u8> {
    let mut descriptor;
    if long_lba {
        descriptor = vec![0u8; 16];
        descriptor[0..8].copy_from_slice(&lun.block_count.to_be_bytes());
        descriptor[12..16].copy_from_slice(&lun.block_size.to_be_bytes());
    } else {
        descriptor = vec![0u8; 8];
        let blocks = u32::try_from(lun.block_count).unwrap_or(u32::MAX);
        descriptor[0..4].copy_from_slice(&blocks.to_be_bytes());
        descriptor[5..8].copy_from_slice(&lun.block_size.to_be_bytes()[1..]);
    }
    descriptor
}

pub(crate) fn mode_sense(
    cdb: Cdb<'_>,
    lun: &LunConfig,
    write_cache: bool,
) -> Result<Outcome, Sense> {
    let six = cdb.size() == CdbSize::Six;
    let disable_block_descriptors = cdb.bit(1, 3);
    let long_lba = !six && cdb.bit(1, 4);
    let control = match cdb.byte(2) >> 6 {
        0 => PageControl::Current,
        1 => PageControl::Changeable,
        2 => PageControl::Default,
        _ => return Err(Sense::SAVING_PARAMETERS_NOT_SUPPORTED),
    };
    let page_code = cdb.byte(2) & 0x3f;
    let subpage = cdb.byte(3);
    if subpage != 0 && !(subpage == ALL_SUBPAGES && page_code == ALL_PAGES) {
        return Err(Sense::invalid_field_in_cdb(3, None));
    }
    let pages = if page_code == ALL_PAGES {
        [CACHING, CONTROL]
            .iter()
            .filter_map(|&code| page(code, control, write_cache))
            .flatten()
            .collect()
    } else {
        page(page_code, control, write_cache).ok_or(Sense::invalid_field_in_cdb(2, Some(5)))?
    };
    let descriptor = if disable_block_descriptors {
        Vec::new()
    } else {
        block_descriptor(lun, long_lba)
    };
    let device_specific = DPOFUA | if lun.read_only { WP } else { 0 };

    let mut data;
    let allocation_length;
    if six {
        data = vec![0, 0, device_specific, descriptor.len() as u8];
        allocation_length = usize::from(cdb.byte(4));
    } else {
        data = vec![
            0,
            0,
            0,
            device_specific,
            u8::from(long_lba && !descriptor.is_empty()),
            0,
            0,
        ];
        data.push(descriptor.len() as u8);
        allocation_length = usize::from(cdb.be16(7));
    }
    data.extend_from_slice(&descriptor);
    data.extend_from_slice(&pages);
    let len = data.len();
    if six {
        data[0] = (len - 1) as u8;
    } else {
        data[0..2].copy_from_slice(&((len - 2) as u16).to_be_bytes());
    }
    Ok(Outcome::data_in(data, allocation_length))
}

/// Validates a MODE SELECT parameter list and returns the write cache state it asks for.
/// Anything but the caching page's WCE bit must match what MODE SENSE reports.
pub(crate) fn mode_select(
    cdb: Cdb<'_>,
    lun: &LunConfig,
    write_cache: bool,
    data_out: &[u8],
    data_out_len: u64,
) -> Result<bool, Sense> {
    if !cdb.bit(1, 4) {
        return Err(Sense::invalid_field_in_cdb(1, Some(4)));
    }
    if cdb.bit(1, 0) {
        return Err(Sense::invalid_field_in_cdb(1, Some(0)));
    }
    let six = cdb.size() == CdbSize::Six;
    let list_len = if six {
        usize::from(cdb.byte(4))
    } else {
        usize::from(cdb.be16(7))
    };
    if list_len == 0 {
        return Ok(write_cache);
    }
    if data_out_len < list_len as u64 {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    let list = data_out
        .get(..list_len)
        .ok_or(Sense::PARAMETER_LIST_LENGTH_ERROR)?;
    // The parameter list is read with the same big-endian field reader as a CDB.
    let fields = Cdb(list);
    let (header_len, descriptors_len, long_lba, descriptors_len_at) = if six {
        (4, usize::from(fields.byte(3)), false, 3)
    } else {
        (8, usize::from(fields.be16(6)), fields.bit(4, 0), 6)
    };
    if list_len < header_len + descriptors_len {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    if descriptors_len != 0 {
        if descriptors_len != if long_lba { 16 } else { 8 } {
            return Err(Sense::invalid_field_in_parameter_list(
                descriptors_len_at,
                None,
            ));
        }
        let ours = block_descriptor(lun, long_lba);
        let (blocks_len, block_size_at) = if long_lba { (8, 12) } else { (4, 5) };
        let theirs = &list[header_len..header_len + descriptors_len];
        if theirs[block_size_at..] != ours[block_size_at..] {
            return Err(Sense::invalid_field_in_parameter_list(
                (header_len + block_size_at) as u16,
                None,
            ));
        }
        // A block count of zero leaves the capacity alone.
        if theirs[..blocks_len].iter().any(|&byte| byte != 0)
            && theirs[..blocks_len] != ours[..blocks_len]
        {
            return Err(Sense::invalid_field_in_parameter_list(
                header_len as u16,
                None,
            ));
        }
    }

    let mut new_write_cache = write_cache;
    let mut at = header_len + descriptors_len;
    while at < list_len {
        if fields.bit(at, 6) {
            return Err(Sense::invalid_field_in_parameter_list(at as u16, Some(6)));
        }
        if at + 2 > list_len {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        let code = fields.byte(at) & 0x3f;
        let current = page(code, PageControl::Current, write_cache)
            .ok_or(Sense::invalid_field_in_parameter_list(at as u16, None))?;
        let changeable = page(code, PageControl::Changeable, write_cache)
            .ok_or(Sense::invalid_field_in_parameter_list(at as u16, None))?;
        if fields.byte(at + 1) != current[1] {
            return Err(Sense::invalid_field_in_parameter_list(
                (at + 1) as u16,
                None,
            ));
        }
        let end = at + current.len();
        let theirs = list
            .get(at..end)
            .ok_or(Sense::PARAMETER_LIST_LENGTH_ERROR)?;
        for index in 2..current.len() {
            let stray = (theirs[index] ^ current[index]) & !changeable[index];
            if stray != 0 {
                let bit = 7 - stray.leading_zeros() as u8;
                return Err(Sense::invalid_field_in_parameter_list(
                    (at + index) as u16,
                    Some(bit),
                ));
            }
        }
        if code == CACHING {
            new_write_cache = theirs[2] & WCE != 0;
        }
        at = end;
    }
    Ok(new_write_cache)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lun_config::tests::config;
    use crate::outcome::tests::good;

    fn sense6(flags: u8, page: u8, subpage: u8, allocation_length: u8) -> [u8; 6] {
        [0x1a, flags, page, subpage, allocation_length, 0]
    }

    fn sense10(flags: u8, page: u8, allocation_length: u16) -> [u8; 10] {
        let [high, low] = allocation_length.to_be_bytes();
        [0x5a, flags, page, 0, 0, 0, 0, high, low, 0]
    }

    #[test]
    fn mode_sense_6_caching_page_with_block_descriptor() {
        let lun = config(0);
        let data = good(mode_sense(Cdb(&sense6(0, 0x08, 0, 255)), &lun, true));
        assert_eq!(data.len(), 4 + 8 + 20);
        assert_eq!(data[0], 31, "mode data length");
        assert_eq!(data[1], 0, "medium type");
        assert_eq!(data[2], 0x10, "DPOFUA, not write protected");
        assert_eq!(data[3], 8);
        assert_eq!(&data[4..12], &[0, 0x20, 0, 0, 0, 0, 2, 0]);
        assert_eq!(&data[12..14], &[0x08, 0x12]);
        assert_eq!(data[14], 0x04, "WCE");
        assert!(data[15..].iter().all(|&b| b == 0));
    }

    #[test]
    fn mode_sense_reflects_write_cache_and_read_only() {
        let read_only = LunConfig {
            read_only: true,
            ..config(0)
        };
        let data = good(mode_sense(
            Cdb(&sense6(0x08, 0x08, 0, 255)),
            &read_only,
            false,
        ));
        assert_eq!(data[2], 0x90);
        assert_eq!(data[3], 0, "DBD");
        assert_eq!(data[6], 0, "WCE off");
    }

    #[test]
    fn mode_sense_10_all_pages_long_lba() {
        let lun = LunConfig {
            block_count: 1 << 33,
            block_size: 4096,
            ..config(0)
        };
        let data = good(mode_sense(Cdb(&sense10(0x10, 0x3f, 1000)), &lun, true));
        assert_eq!(data.len(), 8 + 16 + 20 + 12);
        assert_eq!(
            u16::from_be_bytes([data[0], data[1]]) as usize,
            data.len() - 2
        );
        assert_eq!(data[3], 0x10);
        assert_eq!(data[4], 0x01, "LONGLBA");
        assert_eq!(&data[6..8], &[0, 16]);
        assert_eq!(&data[8..16], &(1u64 << 33).to_be_bytes());
        assert_eq!(&data[20..24], &4096u32.to_be_bytes());
        assert_eq!(&data[24..26], &[0x08, 0x12]);
        assert_eq!(&data[44..48], &[0x0a, 0x0a, 0, 0x10]);

        let short = good(mode_sense(Cdb(&sense10(0, 0x3f, 1000)), &lun, true));
        assert_eq!(short[4], 0);
        assert_eq!(&short[8..12], &[0xff; 4], "saturated block count");
    }

    #[test]
    fn mode_sense_page_controls() {
        let lun = config(0);
        let changeable = good(mode_sense(Cdb(&sense6(0x08, 0x7f, 0, 255)), &lun, false));
        assert_eq!(changeable[4 + 2], 0x04, "only WCE is changeable");
        assert!(changeable[4 + 3..4 + 20].iter().all(|&b| b == 0));
        assert!(changeable[4 + 22..].iter().all(|&b| b == 0));
        let default = good(mode_sense(Cdb(&sense6(0x08, 0x88, 0, 255)), &lun, false));
        assert_eq!(default[4 + 2], 0x04, "write cache on by default");
        assert_eq!(
            mode_sense(Cdb(&sense6(0, 0xc8, 0, 255)), &lun, true),
            Err(Sense::SAVING_PARAMETERS_NOT_SUPPORTED)
        );
    }

    #[test]
    fn mode_sense_errors_and_truncation() {
        let lun = config(0);
        assert_eq!(
            mode_sense(Cdb(&sense6(0, 0x1c, 0, 255)), &lun, true),
            Err(Sense::invalid_field_in_cdb(2, Some(5)))
        );
        assert_eq!(
            mode_sense(Cdb(&sense6(0, 0x08, 1, 255)), &lun, true),
            Err(Sense::invalid_field_in_cdb(3, None))
        );
        assert!(mode_sense(Cdb(&sense6(0, 0x3f, 0xff, 255)), &lun, true).is_ok());
        let data = good(mode_sense(Cdb(&sense6(0, 0x3f, 0, 4)), &lun, true));
        assert_eq!(data, vec![43, 0, 0x10, 8]);
    }

    fn select10(list: &[u8], flags: u8) -> [u8; 10] {
        let [high, low] = (list.len() as u16).to_be_bytes();
        [0x55, flags, 0, 0, 0, 0, 0, high, low, 0]
    }

    fn select(list: &[u8], write_cache: bool) -> Result<bool, Sense> {
        let cdb = select10(list, 0x10);
        mode_select(Cdb(&cdb), &config(0), write_cache, list, list.len() as u64)
    }

    fn caching_list(wce: bool) -> Vec<u8> {
        let mut list = vec![0u8; 8];
        list.extend(caching_page(PageControl::Current, wce));
        list
    }

    #[test]
    fn mode_select_wce_round_trip() {
        let lun = config(0);
        let sensed = good(mode_sense(Cdb(&sense6(0, 0x08, 0, 255)), &lun, true));
        let mut list = sensed.clone();
        list[0] = 0;
        list[4 + 8 + 2] &= !WCE;
        let cdb = [0x15, 0x10, 0, 0, list.len() as u8, 0];
        let wce = mode_select(Cdb(&cdb), &lun, true, &list, list.len() as u64);
        assert_eq!(wce, Ok(false));
        let after = good(mode_sense(Cdb(&sense6(0, 0x08, 0, 255)), &lun, false));
        assert_eq!(after[14], 0);
        assert_eq!(select(&caching_list(true), false), Ok(true));
    }

    #[test]
    fn mode_select_cdb_errors() {
        let list = caching_list(true);
        let lun = config(0);
        let no_pf = select10(&list, 0);
        assert_eq!(
            mode_select(Cdb(&no_pf), &lun, true, &list, 28),
            Err(Sense::invalid_field_in_cdb(1, Some(4)))
        );
        let save = select10(&list, 0x11);
        assert_eq!(
            mode_select(Cdb(&save), &lun, true, &list, 28),
            Err(Sense::invalid_field_in_cdb(1, Some(0)))
        );
        let empty = select10(&[], 0x10);
        assert_eq!(mode_select(Cdb(&empty), &lun, false, &[], 0), Ok(false));
        let cdb = select10(&list, 0x10);
        assert_eq!(
            mode_select(Cdb(&cdb), &lun, true, &list[..10], 10),
            Err(Sense::PARAMETER_LIST_LENGTH_ERROR)
        );
    }

    #[test]
    fn mode_select_parameter_list_errors() {
        let mut other_bit = caching_list(true);
        other_bit[8 + 2] |= 0x01; // RCD is not changeable
        assert_eq!(
            select(&other_bit, true),
            Err(Sense::invalid_field_in_parameter_list(10, Some(0)))
        );
        let mut unknown_page = caching_list(true);
        unknown_page[8] = 0x1c;
        assert_eq!(
            select(&unknown_page, true),
            Err(Sense::invalid_field_in_parameter_list(8, None))
        );
        let mut subpage = caching_list(true);
        subpage[8] |= 0x40;
        assert_eq!(
            select(&subpage, true),
            Err(Sense::invalid_field_in_parameter_list(8, Some(6)))
        );
        let mut bad_length = caching_list(true);
        bad_length[9] = 0x10;
        assert_eq!(
            select(&bad_length, true),
            Err(Sense::invalid_field_in_parameter_list(9, None))
        );
        let truncated = caching_list(true);
        assert_eq!(
            select(&truncated[..20], true),
            Err(Sense::PARAMETER_LIST_LENGTH_ERROR)
        );
        let mut control = vec![0u8; 8];
        control.extend(control_page(PageControl::Current));
        assert_eq!(select(&control, false), Ok(false));
        control[8 + 2] = 0x04; // D_SENSE
        assert_eq!(
            select(&control, false),
            Err(Sense::invalid_field_in_parameter_list(10, Some(2)))
        );
    }

    #[test]
    fn mode_select_block_descriptor() {
        let mut list = vec![0, 0, 0, 0, 0, 0, 0, 8];
        list.extend_from_slice(&[0, 0, 0, 0, 0, 0, 2, 0]);
        list.extend(caching_page(PageControl::Current, true));
        assert_eq!(
            select(&list, true),
            Ok(true),
            "zero block count, same block size"
        );
        list[8 + 6] = 0x10;
        assert_eq!(
            select(&list, true),
            Err(Sense::invalid_field_in_parameter_list(13, None))
        );
        list[8 + 6] = 2;
        list[8 + 3] = 1;
        assert_eq!(
            select(&list, true),
            Err(Sense::invalid_field_in_parameter_list(8, None))
        );
        list[7] = 4;
        assert_eq!(
            select(&list, true),
            Err(Sense::invalid_field_in_parameter_list(6, None))
        );
    }
}
