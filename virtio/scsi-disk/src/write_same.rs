//! WRITE SAME (10) and (16) (SBC-4 5.48, 5.50): one block written over a range, or zeros, or a
//! deallocation when the driver allows it.

use super::cdb::{Cdb, CdbSize};
use super::lun_config::LunConfig;
use super::outcome::{DiskIo, Outcome};
use super::sense::Sense;

pub(crate) fn write_same(
    cdb: Cdb<'_>,
    lun: &LunConfig,
    write_cache: bool,
    data_out: &[u8],
    data_out_len: u64,
) -> Result<Outcome, Sense> {
    lun.check_writable()?;
    let sixteen = cdb.size() == CdbSize::Sixteen;
    let (lba, blocks, length_byte) = if sixteen {
        (cdb.be64(2), u64::from(cdb.be32(10)), 10)
    } else {
        (u64::from(cdb.be32(2)), u64::from(cdb.be16(7)), 7)
    };
    let unmap = cdb.bit(1, 3);
    let no_data_out = sixteen && cdb.bit(1, 0);
    // The block limits page sets WSNZ: a zero block count is not "up to the end".
    if blocks == 0 || blocks > u64::from(lun.max_write_same_blocks()) {
        return Err(Sense::invalid_field_in_cdb(length_byte, None));
    }
    let (offset, len) = lun.byte_range(lba, blocks)?;
    let block = if no_data_out {
        None
    } else {
        let block_size = lun.block_size as usize;
        if data_out_len < u64::from(lun.block_size) {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        let block = data_out
            .get(..block_size)
            .ok_or(Sense::PARAMETER_LIST_LENGTH_ERROR)?;
        Some(block).filter(|block| block.iter().any(|&byte| byte != 0))
    };
    let io = match block {
        None => DiskIo::WriteZeroes {
            offset,
            len,
            may_unmap: unmap && lun.discard,
        },
        Some(block) => DiskIo::WriteSame {
            offset,
            len,
            block: block.to_vec(),
            fua: !write_cache,
        },
    };
    Ok(Outcome::Io(io))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lun_config::tests::config;

    fn ws10(flags: u8, lba: u32, blocks: u16) -> Vec<u8> {
        let mut cdb = vec![0x41, flags];
        cdb.extend_from_slice(&lba.to_be_bytes());
        cdb.push(0);
        cdb.extend_from_slice(&blocks.to_be_bytes());
        cdb.push(0);
        cdb
    }

    fn ws16(flags: u8, lba: u64, blocks: u32) -> Vec<u8> {
        let mut cdb = vec![0x93, flags];
        cdb.extend_from_slice(&lba.to_be_bytes());
        cdb.extend_from_slice(&blocks.to_be_bytes());
        cdb.extend_from_slice(&[0, 0]);
        cdb
    }

    fn run(cdb: &[u8], lun: &LunConfig, data_out: &[u8]) -> Result<Outcome, Sense> {
        write_same(Cdb(cdb), lun, true, data_out, data_out.len() as u64)
    }

    fn zeroes(offset: u64, len: u64, may_unmap: bool) -> Result<Outcome, Sense> {
        Ok(Outcome::Io(DiskIo::WriteZeroes {
            offset,
            len,
            may_unmap,
        }))
    }

    #[test]
    fn zero_block_becomes_write_zeroes() {
        let zeros = [0u8; 512];
        assert_eq!(
            run(&ws10(0, 2, 4), &config(0), &zeros),
            zeroes(1024, 2048, false)
        );
        assert_eq!(
            run(&ws10(0x08, 2, 4), &config(0), &zeros),
            zeroes(1024, 2048, true)
        );
        let no_discard = LunConfig {
            discard: false,
            ..config(0)
        };
        assert_eq!(
            run(&ws10(0x08, 2, 4), &no_discard, &zeros),
            zeroes(1024, 2048, false)
        );
    }

    #[test]
    fn ndob_needs_no_data_out() {
        assert_eq!(
            run(&ws16(0x09, 1 << 20, 8), &config(0), &[]),
            zeroes((1 << 20) * 512, 4096, true)
        );
    }

    #[test]
    fn pattern_block_becomes_write_same() {
        let mut block = vec![0u8; 4096];
        block[511] = 0xaa;
        let expected = DiskIo::WriteSame {
            offset: 0,
            len: 1024,
            block: block[..512].to_vec(),
            fua: false,
        };
        assert_eq!(
            run(&ws16(0x08, 0, 2), &config(0), &block),
            Ok(Outcome::Io(expected))
        );
        let without_write_cache =
            write_same(Cdb(&ws16(0x08, 0, 2)), &config(0), false, &block, 4096);
        assert!(matches!(
            without_write_cache,
            Ok(Outcome::Io(DiskIo::WriteSame { fua: true, .. }))
        ));
    }

    #[test]
    fn errors() {
        let zeros = [0u8; 512];
        let lun = config(0);
        assert_eq!(
            run(&ws10(0, 0, 0), &lun, &zeros),
            Err(Sense::invalid_field_in_cdb(7, None)),
            "WSNZ"
        );
        let too_many = lun.max_write_same_blocks() + 1;
        assert_eq!(
            run(&ws16(0, 0, too_many), &lun, &zeros),
            Err(Sense::invalid_field_in_cdb(10, None))
        );
        assert_eq!(
            run(&ws16(0, lun.block_count, 1), &lun, &zeros),
            Err(Sense::LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            run(&ws10(0, 0, 1), &lun, &zeros[..100]),
            Err(Sense::PARAMETER_LIST_LENGTH_ERROR)
        );
        let read_only = LunConfig {
            read_only: true,
            ..config(0)
        };
        assert_eq!(
            run(&ws10(0, 0, 1), &read_only, &zeros),
            Err(Sense::WRITE_PROTECTED)
        );
    }
}
