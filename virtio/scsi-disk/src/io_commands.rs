//! READ, WRITE, VERIFY, SYNCHRONIZE CACHE and START STOP UNIT (SBC-4 5): the commands that turn
//! into one backend operation on a range of blocks.

use super::cdb::{Cdb, CdbSize};
use super::lun_config::LunConfig;
use super::outcome::{DiskIo, Outcome};
use super::sense::Sense;

/// Logical block address, transfer length, and the CDB byte holding the transfer length.
struct BlockRange {
    lba: u64,
    blocks: u64,
    length_byte: u16,
}

/// Where the LBA and length sit in each CDB size.
#[inline(always)]
fn block_range(cdb: Cdb<'_>) -> BlockRange {
    match cdb.size() {
        CdbSize::Six => {
            let lba = u64::from(cdb.byte(1) & 0x1f) << 16 | u64::from(cdb.be16(2));
            // A READ/WRITE (6) transfer length of 0 means 256 blocks.
            let blocks = match cdb.byte(4) {
                0 => 256,
                n => u64::from(n),
            };
            BlockRange {
                lba,
                blocks,
                length_byte: 4,
            }
        }
        CdbSize::Twelve => BlockRange {
            lba: u64::from(cdb.be32(2)),
            blocks: u64::from(cdb.be32(6)),
            length_byte: 6,
        },
        CdbSize::Sixteen => BlockRange {
            lba: cdb.be64(2),
            blocks: u64::from(cdb.be32(10)),
            length_byte: 10,
        },
        CdbSize::Ten => BlockRange {
            lba: u64::from(cdb.be32(2)),
            blocks: u64::from(cdb.be16(7)),
            length_byte: 7,
        },
    }
}

/// The checked byte range of a READ or WRITE, or `None` for a transfer length of zero.
#[inline(always)]
fn transfer(cdb: Cdb<'_>, lun: &LunConfig) -> Result<Option<(u64, u64)>, Sense> {
    let range = block_range(cdb);
    if lun.max_transfer_blocks != 0 && range.blocks > u64::from(lun.max_transfer_blocks) {
        return Err(Sense::invalid_field_in_cdb(range.length_byte, None));
    }
    let (offset, len) = lun.byte_range(range.lba, range.blocks)?;
    Ok((len != 0).then_some((offset, len)))
}

#[inline(always)]
pub(crate) fn read(cdb: Cdb<'_>, lun: &LunConfig) -> Outcome {
    match transfer(cdb, lun) {
        Ok(Some((offset, len))) => Outcome::Io(DiskIo::Read { offset, len }),
        Ok(None) => Outcome::good(),
        Err(sense) => sense.into(),
    }
}

pub(crate) fn write(cdb: Cdb<'_>, lun: &LunConfig, write_cache: bool) -> Outcome {
    let checked = lun.check_writable().and_then(|()| transfer(cdb, lun));
    match checked {
        Ok(Some((offset, len))) => {
            // WRITE(6) has no FUA bit.
            let fua = cdb.size() != CdbSize::Six && cdb.bit(1, 3);
            Outcome::Io(DiskIo::Write {
                offset,
                len,
                fua: fua || !write_cache,
            })
        }
        Ok(None) => Outcome::good(),
        Err(sense) => sense.into(),
    }
}

pub(crate) fn verify(cdb: Cdb<'_>, lun: &LunConfig) -> Result<Outcome, Sense> {
    let range = block_range(cdb);
    let (offset, len) = lun.byte_range(range.lba, range.blocks)?;
    if len == 0 {
        return Ok(Outcome::good());
    }
    Ok(Outcome::Io(DiskIo::Verify { offset, len }))
}

pub(crate) fn synchronize_cache(cdb: Cdb<'_>, lun: &LunConfig) -> Result<Outcome, Sense> {
    let range = block_range(cdb);
    // A block count of 0 means "to the end": only the start has to be on the medium.
    lun.byte_range(range.lba, range.blocks)?;
    Ok(Outcome::Io(DiskIo::Flush))
}

/// Stopping the unit flushes the write cache unless NO_FLUSH says otherwise; everything else
/// (start, power conditions, LOEJ as QEMU accepts it for disks) has nothing to do.
pub(crate) fn start_stop_unit(cdb: Cdb<'_>) -> Outcome {
    let byte = cdb.byte(4);
    let power_condition = byte >> 4;
    let no_flush = byte & 0x04 != 0;
    let start = byte & 0x01 != 0;
    if power_condition == 0 && !start && !no_flush {
        Outcome::Io(DiskIo::Flush)
    } else {
        Outcome::good()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lun_config::tests::config;

    fn rw10(opcode: u8, flags: u8, lba: u32, blocks: u16) -> Vec<u8> {
        let mut cdb = vec![opcode, flags];
        cdb.extend_from_slice(&lba.to_be_bytes());
        cdb.push(0);
        cdb.extend_from_slice(&blocks.to_be_bytes());
        cdb.push(0);
        cdb
    }

    #[test]
    fn every_cdb_size_finds_lba_and_length() {
        let lun = config(0);
        let read6 = [0x08, 0x01, 0x02, 0x03, 4, 0];
        assert_eq!(
            read(Cdb(&read6), &lun),
            Outcome::Io(DiskIo::Read {
                offset: 0x010203 * 512,
                len: 4 * 512
            })
        );
        let read12 = [0xa8, 0, 0, 0, 0, 9, 0, 0, 0, 2, 0, 0];
        assert_eq!(
            read(Cdb(&read12), &lun),
            Outcome::Io(DiskIo::Read {
                offset: 9 * 512,
                len: 1024
            })
        );
        let mut write16 = [0u8; 16];
        write16[0] = 0x8a;
        write16[1] = 0x08;
        write16[2..10].copy_from_slice(&7u64.to_be_bytes());
        write16[10..14].copy_from_slice(&3u32.to_be_bytes());
        assert_eq!(
            write(Cdb(&write16), &lun, true),
            Outcome::Io(DiskIo::Write {
                offset: 7 * 512,
                len: 3 * 512,
                fua: true
            })
        );
    }

    #[test]
    fn read6_length_zero_means_256_blocks() {
        let read6 = [0x08, 0, 0, 0, 0, 0];
        assert_eq!(
            read(Cdb(&read6), &config(0)),
            Outcome::Io(DiskIo::Read {
                offset: 0,
                len: 256 * 512
            })
        );
    }

    #[test]
    fn length_zero_transfers_nothing() {
        let cdb = rw10(0x28, 0, 5, 0);
        assert_eq!(read(Cdb(&cdb), &config(0)), Outcome::good());
    }

    #[test]
    fn fua_from_the_cdb_or_a_disabled_write_cache() {
        let lun = config(0);
        let plain = rw10(0x2a, 0x10, 1, 1);
        assert_eq!(
            write(Cdb(&plain), &lun, true),
            Outcome::Io(DiskIo::Write {
                offset: 512,
                len: 512,
                fua: false
            }),
            "DPO is ignored"
        );
        assert_eq!(
            write(Cdb(&plain), &lun, false),
            Outcome::Io(DiskIo::Write {
                offset: 512,
                len: 512,
                fua: true
            })
        );
        let fua = rw10(0x2a, 0x08, 1, 1);
        assert_eq!(
            write(Cdb(&fua), &lun, true),
            Outcome::Io(DiskIo::Write {
                offset: 512,
                len: 512,
                fua: true
            })
        );
    }

    #[test]
    fn out_of_range_read_only_and_too_long() {
        let lun = config(0);
        let end = lun.block_count as u32;
        let past = rw10(0x28, 0, end - 1, 2);
        assert_eq!(
            read(Cdb(&past), &lun),
            Outcome::CheckCondition(Sense::LBA_OUT_OF_RANGE)
        );
        let last = rw10(0x28, 0, end - 1, 1);
        assert!(matches!(read(Cdb(&last), &lun), Outcome::Io(_)));
        let read_only = LunConfig {
            read_only: true,
            ..config(0)
        };
        let write10 = rw10(0x2a, 0, 0, 1);
        assert_eq!(
            write(Cdb(&write10), &read_only, true),
            Outcome::CheckCondition(Sense::WRITE_PROTECTED)
        );
        let read10 = rw10(0x28, 0, 0, 1);
        assert!(matches!(read(Cdb(&read10), &read_only), Outcome::Io(_)));
        let long = rw10(0x28, 0, 0, 4097);
        assert_eq!(
            read(Cdb(&long), &lun),
            Outcome::CheckCondition(Sense::invalid_field_in_cdb(7, None))
        );
        let unlimited = LunConfig {
            max_transfer_blocks: 0,
            ..config(0)
        };
        assert!(matches!(read(Cdb(&long), &unlimited), Outcome::Io(_)));
    }

    #[test]
    fn verify_checks_the_range() {
        let lun = config(0);
        let cdb = rw10(0x2f, 0, 2, 2);
        assert_eq!(
            verify(Cdb(&cdb), &lun),
            Ok(Outcome::Io(DiskIo::Verify {
                offset: 1024,
                len: 1024
            }))
        );
        let empty = rw10(0x2f, 0, 2, 0);
        assert_eq!(verify(Cdb(&empty), &lun), Ok(Outcome::good()));
        let past = rw10(0x2f, 0, lun.block_count as u32, 1);
        assert_eq!(verify(Cdb(&past), &lun), Err(Sense::LBA_OUT_OF_RANGE));
    }

    #[test]
    fn synchronize_cache_flushes() {
        let lun = config(0);
        let cdb = rw10(0x35, 0, 0, 0);
        assert_eq!(
            synchronize_cache(Cdb(&cdb), &lun),
            Ok(Outcome::Io(DiskIo::Flush))
        );
        let past = rw10(0x35, 0, lun.block_count as u32 + 1, 0);
        assert_eq!(
            synchronize_cache(Cdb(&past), &lun),
            Err(Sense::LBA_OUT_OF_RANGE)
        );
    }

    #[test]
    fn start_stop_unit_flushes_on_stop() {
        assert_eq!(
            start_stop_unit(Cdb(&[0x1b, 0, 0, 0, 0, 0])),
            Outcome::Io(DiskIo::Flush)
        );
        assert_eq!(
            start_stop_unit(Cdb(&[0x1b, 0, 0, 0, 0x04, 0])),
            Outcome::good()
        );
        assert_eq!(
            start_stop_unit(Cdb(&[0x1b, 0, 0, 0, 0x01, 0])),
            Outcome::good()
        );
        assert_eq!(
            start_stop_unit(Cdb(&[0x1b, 0, 0, 0, 0x03, 0])),
            Outcome::good()
        );
    }
}
