//! READ CAPACITY (10) and (16) (SBC-4 5.20, 5.21).

use super::cdb::Cdb;
use super::lun_config::LunConfig;
use super::outcome::Outcome;

fn last_lba(lun: &LunConfig) -> u64 {
    lun.block_count.saturating_sub(1)
}

pub(crate) fn read_capacity_10(lun: &LunConfig) -> Outcome {
    // 0xffffffff tells the driver to ask again with READ CAPACITY (16).
    let last = u32::try_from(last_lba(lun)).unwrap_or(u32::MAX);
    let mut data = Vec::with_capacity(8);
    data.extend_from_slice(&last.to_be_bytes());
    data.extend_from_slice(&lun.block_size.to_be_bytes());
    Outcome::Good { data_in: data }
}

pub(crate) fn read_capacity_16(cdb: Cdb<'_>, lun: &LunConfig) -> Outcome {
    let mut data = vec![0u8; 32];
    data[0..8].copy_from_slice(&last_lba(lun).to_be_bytes());
    data[8..12].copy_from_slice(&lun.block_size.to_be_bytes());
    if lun.discard {
        data[14] = 0x80; // LBPME
        if lun.write_zeroes {
            data[14] |= 0x40; // LBPRZ
        }
    }
    Outcome::data_in(data, cdb.be32(10) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lun_config::tests::config;

    fn rc16(allocation_length: u8) -> [u8; 16] {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x10;
        cdb[13] = allocation_length;
        cdb
    }

    #[test]
    fn read_capacity_10_fields() {
        let lun = config(0);
        let expected = [0x00, 0x1f, 0xff, 0xff, 0, 0, 2, 0];
        assert_eq!(
            read_capacity_10(&lun),
            Outcome::Good {
                data_in: expected.to_vec()
            }
        );
    }

    #[test]
    fn read_capacity_10_saturates_for_large_disks() {
        let lun = LunConfig {
            block_count: 1 << 33,
            block_size: 4096,
            ..config(0)
        };
        assert_eq!(
            read_capacity_10(&lun),
            Outcome::Good {
                data_in: vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0x10, 0]
            }
        );
        let exact = LunConfig {
            block_count: 1 << 32,
            ..config(0)
        };
        let Outcome::Good { data_in } = read_capacity_10(&exact) else {
            panic!()
        };
        assert_eq!(&data_in[..4], &[0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn read_capacity_16_fields() {
        let lun = LunConfig {
            block_count: (1 << 33) + 1,
            block_size: 4096,
            ..config(0)
        };
        let Outcome::Good { data_in } = read_capacity_16(Cdb(&rc16(32)), &lun) else {
            panic!()
        };
        assert_eq!(data_in.len(), 32);
        assert_eq!(&data_in[0..8], &(1u64 << 33).to_be_bytes());
        assert_eq!(&data_in[8..12], &4096u32.to_be_bytes());
        assert_eq!(data_in[12], 0, "no protection");
        assert_eq!(data_in[13], 0, "one logical block per physical block");
        assert_eq!(data_in[14], 0xc0, "LBPME and LBPRZ");
        assert_eq!(data_in[15], 0);
        let no_discard = LunConfig {
            discard: false,
            ..config(0)
        };
        let Outcome::Good { data_in } = read_capacity_16(Cdb(&rc16(32)), &no_discard) else {
            panic!()
        };
        assert_eq!(data_in[14], 0);
    }

    #[test]
    fn read_capacity_16_truncates() {
        let Outcome::Good { data_in } = read_capacity_16(Cdb(&rc16(12)), &config(0)) else {
            panic!()
        };
        assert_eq!(data_in.len(), 12);
    }
}
