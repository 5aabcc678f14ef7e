//! The SCSI disk emulation against arbitrary commands with parameter lists (MODE SELECT,
//! UNMAP, WRITE SAME, REPORT LUNS ...). Input: records of [lun, cdb length, cdb, data-out
//! length (u16 LE), data-out], executed in order against one target with two LUNs so that
//! state (mode pages, unit attentions, resets) carries from one command to the next.

#![no_main]

use libfuzzer_sys::fuzz_target;
use scsi_disk::{LunConfig, Target};

fn lun(lun: u16, block_size: u32, read_only: bool) -> LunConfig {
    LunConfig {
        lun,
        block_count: (64 << 20) / u64::from(block_size),
        block_size,
        read_only,
        discard: !read_only,
        write_zeroes: true,
        serial: format!("fuzz{lun}"),
        rotational: false,
        optimal_transfer_blocks: 0,
        max_transfer_blocks: 16384,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(target) = Target::new([(lun(0, 512, false), ()), (lun(1, 4096, true), ())]) else {
        return;
    };
    let mut rest = data;
    while let [lun, cdb_len, tail @ ..] = rest {
        let cdb_len = usize::from(*cdb_len % 33).min(tail.len());
        let (cdb, tail) = tail.split_at(cdb_len);
        let [lo, hi, tail @ ..] = tail else {
            return;
        };
        let data_len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (data_out, tail) = tail.split_at(data_len);
        match lun % 8 {
            7 => target.reset_all(),
            6 => {
                target.reset_lun(u16::from(*lun >> 4));
            }
            _ => {
                let _ = target.execute(u16::from(lun % 4), cdb, data_out, data_out.len() as u64);
            }
        }
        rest = tail;
    }
});
