//! UNMAP (SBC-4 5.32): a parameter list of block ranges to deallocate.

use super::cdb::Cdb;
use super::lun_config::LunConfig;
use super::outcome::{DiskIo, Outcome};
use super::sense::Sense;

/// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT in the block limits page.
pub(crate) const MAX_DESCRIPTORS: u32 = 256;

const HEADER_LEN: usize = 8;
const DESCRIPTOR_LEN: usize = 16;

pub(crate) fn unmap(
    cdb: Cdb<'_>,
    lun: &LunConfig,
    data_out: &[u8],
    data_out_len: u64,
) -> Result<Outcome, Sense> {
    lun.check_writable()?;
    let list_len = usize::from(cdb.be16(7));
    if list_len == 0 {
        return Ok(Outcome::good());
    }
    if list_len < HEADER_LEN || data_out_len < list_len as u64 {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    let list = data_out
        .get(..list_len)
        .ok_or(Sense::PARAMETER_LIST_LENGTH_ERROR)?;
    // The parameter list is read with the same big-endian field reader as a CDB.
    let list = Cdb(list);
    let data_len = usize::from(list.be16(0));
    let descriptors_len = usize::from(list.be16(2));
    if data_len + 2 > list_len || descriptors_len + HEADER_LEN > list_len {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    // SBC: an incomplete last descriptor is ignored.
    let count = descriptors_len / DESCRIPTOR_LEN;
    if count > MAX_DESCRIPTORS as usize {
        return Err(Sense::invalid_field_in_parameter_list(2, None));
    }
    let max_blocks = u64::from(lun.max_unmap_blocks());
    let mut total_blocks = 0u64;
    let mut ranges = Vec::with_capacity(count);
    for index in 0..count {
        let at = HEADER_LEN + index * DESCRIPTOR_LEN;
        let lba = list.be64(at);
        let blocks = u64::from(list.be32(at + 8));
        total_blocks += blocks;
        if total_blocks > max_blocks {
            return Err(Sense::invalid_field_in_parameter_list(
                (at + 8) as u16,
                None,
            ));
        }
        let (offset, len) = lun.byte_range(lba, blocks)?;
        if len != 0 {
            ranges.push((offset, len));
        }
    }
    if ranges.is_empty() {
        return Ok(Outcome::good());
    }
    Ok(Outcome::Io(DiskIo::Discard { ranges }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lun_config::tests::config;

    fn cdb(list_len: u16) -> Vec<u8> {
        let [high, low] = list_len.to_be_bytes();
        vec![0x42, 0, 0, 0, 0, 0, 0, high, low, 0]
    }

    fn list(descriptors: &[(u64, u32)]) -> Vec<u8> {
        let descriptors_len = (descriptors.len() * DESCRIPTOR_LEN) as u16;
        let mut list = Vec::new();
        list.extend_from_slice(&(descriptors_len + 6).to_be_bytes());
        list.extend_from_slice(&descriptors_len.to_be_bytes());
        list.extend_from_slice(&[0; 4]);
        for &(lba, blocks) in descriptors {
            list.extend_from_slice(&lba.to_be_bytes());
            list.extend_from_slice(&blocks.to_be_bytes());
            list.extend_from_slice(&[0; 4]);
        }
        list
    }

    fn run(lun: &LunConfig, list: &[u8]) -> Result<Outcome, Sense> {
        unmap(Cdb(&cdb(list.len() as u16)), lun, list, list.len() as u64)
    }

    #[test]
    fn descriptors_become_byte_ranges() {
        let list = list(&[(1, 2), (100, 0), (8, 8)]);
        assert_eq!(
            run(&config(0), &list),
            Ok(Outcome::Io(DiskIo::Discard {
                ranges: vec![(512, 1024), (4096, 4096)]
            }))
        );
    }

    #[test]
    fn empty_lists_do_nothing() {
        assert_eq!(unmap(Cdb(&cdb(0)), &config(0), &[], 0), Ok(Outcome::good()));
        assert_eq!(run(&config(0), &list(&[])), Ok(Outcome::good()));
        assert_eq!(run(&config(0), &list(&[(5, 0)])), Ok(Outcome::good()));
    }

    #[test]
    fn length_errors() {
        let lun = config(0);
        assert_eq!(
            unmap(Cdb(&cdb(4)), &lun, &[0; 4], 4),
            Err(Sense::PARAMETER_LIST_LENGTH_ERROR)
        );
        let full = list(&[(1, 1)]);
        assert_eq!(
            unmap(Cdb(&cdb(full.len() as u16)), &lun, &full[..16], 16),
            Err(Sense::PARAMETER_LIST_LENGTH_ERROR),
            "driver sent less than the CDB says"
        );
        let mut overlong = full.clone();
        overlong[3] = 32;
        assert_eq!(
            run(&lun, &overlong),
            Err(Sense::PARAMETER_LIST_LENGTH_ERROR)
        );
    }

    #[test]
    fn range_and_count_limits() {
        let lun = config(0);
        assert_eq!(
            run(&lun, &list(&[(lun.block_count, 1)])),
            Err(Sense::LBA_OUT_OF_RANGE)
        );
        let max = lun.max_unmap_blocks();
        assert!(run(&lun, &list(&[(0, max)])).is_ok());
        assert_eq!(
            run(&lun, &list(&[(0, max), (0, 1)])),
            Err(Sense::invalid_field_in_parameter_list(32, None))
        );
        let many = vec![(0, 1); MAX_DESCRIPTORS as usize + 1];
        assert_eq!(
            run(&lun, &list(&many)),
            Err(Sense::invalid_field_in_parameter_list(2, None))
        );
        let read_only = LunConfig {
            read_only: true,
            ..config(0)
        };
        assert_eq!(
            run(&read_only, &list(&[(0, 1)])),
            Err(Sense::WRITE_PROTECTED)
        );
    }
}
