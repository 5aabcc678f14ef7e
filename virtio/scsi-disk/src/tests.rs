//! Tests of the whole target through its public face, as the virtio-scsi device uses it.

use std::sync::Arc;

use super::*;
use crate::lun_config::tests::config;
use crate::outcome::tests::good as data;

const TUR: [u8; 6] = [0, 0, 0, 0, 0, 0];
const INQUIRY: [u8; 6] = [0x12, 0, 0, 0, 0xff, 0];
const REQUEST_SENSE: [u8; 6] = [0x03, 0, 0, 0, 0xff, 0];

fn new(configs: Vec<LunConfig>) -> Result<Target, TargetError> {
    Target::new(configs.into_iter().map(|config| (config, ())))
}

fn target(luns: &[u16]) -> Target {
    let target = new(luns.iter().map(|&lun| config(lun)).collect()).unwrap();
    for &lun in luns {
        target.execute(lun, &TUR, &[], 0);
    }
    target
}

fn report_luns_cdb() -> [u8; 12] {
    [0xa0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]
}

#[test]
fn configuration_errors() {
    assert_eq!(
        new(vec![config(1), config(1)]).err(),
        Some(TargetError::DuplicateLun(1))
    );
    assert_eq!(
        new(vec![config(16384)]).err(),
        Some(TargetError::Config(LunConfigError::LunOutOfRange(16384)))
    );
    assert!(new(vec![config(16383)]).is_ok());
    let odd = LunConfig {
        block_size: 1024,
        ..config(0)
    };
    assert_eq!(
        new(vec![odd]).err(),
        Some(TargetError::Config(LunConfigError::BadBlockSize {
            lun: 0,
            block_size: 1024
        }))
    );
    let empty = LunConfig {
        block_count: 0,
        ..config(0)
    };
    assert_eq!(
        new(vec![empty]).err(),
        Some(TargetError::Config(LunConfigError::NoBlocks(0)))
    );
    let huge = LunConfig {
        block_count: u64::MAX / 2,
        ..config(0)
    };
    assert_eq!(
        new(vec![huge]).err(),
        Some(TargetError::Config(LunConfigError::TooLarge(0)))
    );
    let bad_serial = LunConfig {
        serial: "a\nb".into(),
        ..config(0)
    };
    assert!(matches!(
        new(vec![bad_serial]),
        Err(TargetError::Config(LunConfigError::BadSerial {
            lun: 0,
            ..
        }))
    ));
    let long_serial = LunConfig {
        serial: "x".repeat(37),
        ..config(0)
    };
    assert!(matches!(
        new(vec![long_serial]),
        Err(TargetError::Config(LunConfigError::BadSerial { .. }))
    ));
}

#[test]
fn accessors() {
    let target = new(vec![config(3), config(1)]).unwrap();
    assert!(target.lun(1).is_some() && target.lun(3).is_some() && target.lun(0).is_none());
    assert_eq!(
        target
            .luns()
            .map(|lun| lun.config().lun)
            .collect::<Vec<_>>(),
        vec![1, 3]
    );
    assert!(target.lun(1).unwrap().write_cache_enabled());
}

#[test]
fn unit_attention_once_after_power_on_and_resets() {
    let target = new(vec![config(0), config(1)]).unwrap();
    // INQUIRY and REPORT LUNS do not report nor clear it.
    assert!(matches!(
        target.execute(0, &INQUIRY, &[], 0),
        Outcome::Good { .. }
    ));
    assert!(matches!(
        target.execute(0, &report_luns_cdb(), &[], 0),
        Outcome::Good { .. }
    ));
    assert_eq!(
        target.execute(0, &TUR, &[], 0),
        Outcome::CheckCondition(Sense::POWER_ON_RESET_OCCURRED)
    );
    assert_eq!(target.execute(0, &TUR, &[], 0), Outcome::good());
    // REQUEST SENSE returns it as data and clears it.
    let sense = data(target.execute(1, &REQUEST_SENSE, &[], 0));
    assert_eq!((sense[2], sense[12], sense[13]), (0x06, 0x29, 0x00));
    assert_eq!(target.execute(1, &TUR, &[], 0), Outcome::good());
    let sense = data(target.execute(1, &REQUEST_SENSE, &[], 0));
    assert_eq!((sense[2], sense[12]), (0, 0), "NO SENSE afterwards");

    assert!(target.reset_lun(1));
    assert!(!target.reset_lun(2));
    assert_eq!(target.execute(0, &TUR, &[], 0), Outcome::good());
    assert_eq!(
        target.execute(1, &TUR, &[], 0),
        Outcome::CheckCondition(Sense::POWER_ON_RESET_OCCURRED)
    );
    target.reset_all();
    for lun in [0, 1] {
        let read = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(
            target.execute(lun, &read, &[], 0),
            Outcome::CheckCondition(Sense::POWER_ON_RESET_OCCURRED)
        );
        assert!(matches!(
            target.execute(lun, &read, &[], 0),
            Outcome::Io(DiskIo::Read { .. })
        ));
    }
}

#[test]
fn luns_are_found_by_number_with_or_without_gaps() {
    for luns in [&[0u16, 1, 2][..], &[0, 2, 5], &[1, 3], &[2], &[0, 1, 300]] {
        let target = new(luns.iter().map(|&lun| config(lun)).collect()).unwrap();
        for number in 0..=301 {
            let found = target.lun(number).map(|unit| unit.config().lun);
            let expected = luns.contains(&number).then_some(number);
            assert_eq!(found, expected, "LUN {number} of {luns:?}");
        }
    }
}

#[test]
fn missing_luns_answer_like_qemu() {
    let target = target(&[1]);
    let lun0 = data(target.execute(0, &INQUIRY, &[], 0));
    assert_eq!(lun0[0], 0x3f);
    let lun5 = data(target.execute(5, &INQUIRY, &[], 0));
    assert_eq!(lun5[0], 0x7f);
    let luns = data(target.execute(0, &report_luns_cdb(), &[], 0));
    assert_eq!(&luns[..4], &[0, 0, 0, 16]);
    assert_eq!(&luns[8..10], &[0, 0]);
    assert_eq!(&luns[16..18], &[0, 1]);
    assert_eq!(target.execute(0, &TUR, &[], 0), Outcome::good());
    let sense = data(target.execute(5, &REQUEST_SENSE, &[], 0));
    assert_eq!((sense[2], sense[12]), (0x05, 0x25));
    for lun in [0, 5] {
        assert_eq!(
            target.execute(lun, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[], 0),
            Outcome::CheckCondition(Sense::LOGICAL_UNIT_NOT_SUPPORTED)
        );
    }
    assert_eq!(
        target.execute(5, &TUR, &[], 0),
        Outcome::CheckCondition(Sense::LOGICAL_UNIT_NOT_SUPPORTED)
    );
    assert_eq!(
        target.execute(0, &[0x12, 0, 1, 0, 0xff, 0], &[], 0),
        Outcome::CheckCondition(Sense::invalid_field_in_cdb(2, None))
    );
    assert_eq!(
        target.execute(0, &[], &[], 0),
        Outcome::CheckCondition(Sense::INVALID_COMMAND_OPERATION_CODE)
    );
}

#[test]
fn report_luns_works_on_an_existing_lun() {
    let target = target(&[0, 2]);
    let luns = data(target.execute(2, &report_luns_cdb(), &[], 0));
    assert_eq!(&luns[..4], &[0, 0, 0, 16]);
}

#[test]
fn long_cdb_fields_are_ignored_beyond_the_command() {
    let target = target(&[0]);
    let mut cdb = [0xffu8; 32];
    cdb[..10].copy_from_slice(&[0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0]);
    assert_eq!(
        target.execute(0, &cdb, &[], 0),
        Outcome::Io(DiskIo::Read {
            offset: 512,
            len: 512
        })
    );
}

fn listed_commands(target: &Target) -> Vec<(u8, Option<u8>, usize)> {
    let rsoc = [0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0];
    let list = data(target.execute(0, &rsoc, &[], 0));
    list[4..]
        .chunks(8)
        .map(|d| {
            let service_action = (d[5] & 1 != 0).then_some(d[3]);
            (
                d[0],
                service_action,
                usize::from(u16::from_be_bytes([d[6], d[7]])),
            )
        })
        .collect()
}

#[test]
fn every_listed_command_is_dispatched_and_no_other() {
    for discard in [true, false] {
        let target = new(vec![LunConfig {
            discard,
            ..config(0)
        }])
        .unwrap();
        target.execute(0, &TUR, &[], 0);
        let listed = listed_commands(&target);
        assert!(listed.len() >= 28);
        for &(opcode, service_action, len) in &listed {
            let mut cdb = vec![0u8; len];
            cdb[0] = opcode;
            cdb[1] = service_action.unwrap_or(0);
            // The few fields for which zero is not a valid value.
            match opcode {
                0x15 | 0x55 => cdb[1] = 0x10, // PF: the only page format we take
                0x1a | 0x5a => cdb[2] = 0x3f, // all pages
                0xa0 => cdb[9] = 0x10,        // REPORT LUNS needs 16 bytes
                0x41 => cdb[8] = 1,           // WRITE SAME needs a block count
                0x93 => cdb[13] = 1,
                _ => {}
            }
            let outcome = target.execute(0, &cdb, &[0; 4096], 4096);
            assert_ne!(
                outcome,
                Outcome::CheckCondition(Sense::INVALID_COMMAND_OPERATION_CODE),
                "listed opcode {opcode:#x}"
            );
            if let Outcome::CheckCondition(sense) = outcome {
                assert_ne!(
                    sense.asc, 0x24,
                    "opcode {opcode:#x} refused a zero CDB: {sense:?}"
                );
            }
            // MODE SELECT with no parameters is fine; re-enable the write cache anyway.
            target.execute(0, &[0x15, 0x10, 0, 0, 0, 0], &[], 0);
        }
        for opcode in 0..=255u8 {
            if listed.iter().any(|&(listed, _, _)| listed == opcode) {
                continue;
            }
            assert_eq!(
                target.execute(0, &[opcode; 16], &[], 0),
                Outcome::CheckCondition(Sense::INVALID_COMMAND_OPERATION_CODE),
                "unlisted opcode {opcode:#x}"
            );
        }
        let mut unknown_service_action = [0u8; 16];
        unknown_service_action[0] = 0x9e;
        unknown_service_action[1] = 0x11;
        assert_eq!(
            target.execute(0, &unknown_service_action, &[], 0),
            Outcome::CheckCondition(Sense::invalid_field_in_cdb(1, Some(4)))
        );
    }
}

#[test]
fn mode_select_turns_the_write_cache_off_and_writes_become_fua() {
    let target = target(&[0]);
    let sense10 = [0x5a, 0x08, 0x08, 0, 0, 0, 0, 0, 0xff, 0];
    let mut page = data(target.execute(0, &sense10, &[], 0));
    assert_eq!(page.len(), 28);
    page[0] = 0;
    page[1] = 0;
    page[8 + 2] &= !0x04;
    let select10 = [0x55, 0x10, 0, 0, 0, 0, 0, 0, 28, 0];
    assert_eq!(data_out_use(&select10), DataOutUse::Parameters { max: 28 });
    assert_eq!(target.execute(0, &select10, &page, 28), Outcome::good());
    assert!(!target.lun(0).unwrap().write_cache_enabled());
    assert_eq!(data(target.execute(0, &sense10, &[], 0))[10], 0);
    let write = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    assert_eq!(
        target.execute(0, &write, &[], 512),
        Outcome::Io(DiskIo::Write {
            offset: 0,
            len: 512,
            fua: true
        })
    );
    target.reset_all();
    target.execute(0, &TUR, &[], 0);
    assert!(
        !target.lun(0).unwrap().write_cache_enabled(),
        "a reset keeps the setting"
    );
    page[8 + 2] |= 0x04;
    assert_eq!(target.execute(0, &select10, &page, 28), Outcome::good());
    assert!(target.lun(0).unwrap().write_cache_enabled());
}

#[test]
fn read_only_lun_refuses_every_write() {
    let target = new(vec![LunConfig {
        read_only: true,
        ..config(0)
    }])
    .unwrap();
    target.execute(0, &TUR, &[], 0);
    let unmap_list = [
        0, 22, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0,
    ];
    let cdbs: [&[u8]; 7] = [
        &[0x0a, 0, 0, 0, 1, 0],
        &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        &[0xaa, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
        &[0x8a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
        &[0x41, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        &[0x93, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
        &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],
    ];
    for cdb in cdbs {
        assert_eq!(
            target.execute(0, cdb, &unmap_list, 24),
            Outcome::CheckCondition(Sense::WRITE_PROTECTED),
            "opcode {:#x}",
            cdb[0]
        );
    }
}

#[test]
fn hotplug_and_resize_raise_unit_attentions() {
    let table = LunTable::new([(config(0), ())]).unwrap();
    table.load().execute(0, &TUR, &[], 0);
    table.add(config(3), ()).unwrap();
    assert_eq!(
        table.add(config(3), ()).err(),
        Some(TargetError::DuplicateLun(3))
    );
    let target = table.load();
    assert_eq!(
        target.execute(0, &TUR, &[], 0),
        Outcome::CheckCondition(Sense::REPORTED_LUNS_DATA_HAS_CHANGED)
    );
    assert_eq!(
        target.execute(3, &TUR, &[], 0),
        Outcome::CheckCondition(Sense::POWER_ON_RESET_OCCURRED)
    );
    assert_eq!(target.execute(3, &TUR, &[], 0), Outcome::good());
    let listed = data(target.execute(0, &report_luns_cdb(), &[], 0));
    assert_eq!(&listed[..4], &16u32.to_be_bytes(), "two LUNs listed");

    table.resize(3, 4 * 1024 * 1024).unwrap();
    assert_eq!(
        target.lun(3).unwrap().config().block_count,
        2 * 1024 * 1024,
        "the old snapshot keeps its size"
    );
    assert_eq!(
        target.execute(3, &TUR, &[], 0),
        Outcome::CheckCondition(Sense::CAPACITY_DATA_HAS_CHANGED),
        "both snapshots share the unit's state"
    );
    let resized = table.load();
    assert_eq!(resized.execute(3, &TUR, &[], 0), Outcome::good());
    assert_eq!(
        resized.luns().last().unwrap().config().block_count,
        4 * 1024 * 1024
    );
    assert_eq!(table.resize(9, 1).err(), Some(TargetError::NoSuchLun(9)));
    assert_eq!(
        table.resize(3, 0).err(),
        Some(TargetError::Config(LunConfigError::NoBlocks(3)))
    );

    let removed = table.remove(3).unwrap();
    assert_eq!(removed.lun(), 3);
    assert_eq!(table.remove(3).err(), Some(TargetError::NoSuchLun(3)));
    let after = table.load();
    assert_eq!(
        after.execute(3, &TUR, &[], 0),
        Outcome::CheckCondition(Sense::LOGICAL_UNIT_NOT_SUPPORTED)
    );
    assert_eq!(
        after.execute(0, &TUR, &[], 0),
        Outcome::CheckCondition(Sense::REPORTED_LUNS_DATA_HAS_CHANGED)
    );
}

#[test]
fn a_removed_lun_is_reachable_until_no_guard_holds_a_snapshot_with_it() {
    let held = Arc::new(());
    let table = LunTable::new([(config(0), Arc::clone(&held))]).unwrap();
    let mut guard = table.load();
    let removed = table.remove(0).unwrap();
    assert!(guard.lun(0).is_some(), "the pass goes on with its snapshot");
    assert!(removed.reachable(), "so a command may still start");
    table.refresh(&mut guard);
    assert!(guard.lun(0).is_none());
    assert!(
        guard.data(0).is_some(),
        "draining: its commands still complete"
    );
    assert!(!removed.reachable());
    assert_eq!(
        table.add(config(0), Arc::clone(&held)).err(),
        Some(TargetError::DuplicateLun(0)),
        "not while it drains"
    );
    table.forget(0);
    assert!(guard.data(0).is_some(), "the guard keeps its snapshot");
    drop(guard);
    assert!(table.load().data(0).is_none());
    drop(removed);
    assert_eq!(Arc::strong_count(&held), 1, "nothing holds the data");
    table.add(config(0), held).unwrap();
}

#[test]
fn a_resize_is_published_before_its_unit_attention() {
    let table = LunTable::new([(config(0), ())]).unwrap();
    let mut guard = table.load();
    assert_eq!(
        guard.execute(0, &TUR, &[], 0),
        Outcome::CheckCondition(Sense::POWER_ON_RESET_OCCURRED)
    );
    table.resize(0, 4096).unwrap();
    // The pass's snapshot is old, but the command that takes the unit attention makes the
    // next one refresh.
    assert_eq!(
        guard.execute(0, &TUR, &[], 0),
        Outcome::CheckCondition(Sense::CAPACITY_DATA_HAS_CHANGED)
    );
    table.refresh(&mut guard);
    let read_capacity_10 = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let capacity = data(guard.execute(0, &read_capacity_10, &[], 0));
    assert_eq!(capacity[..4], 4095u32.to_be_bytes());
}

/// The crate's modules use each other in one direction only: each file's `super::`/`crate::`
/// references (outside its unit tests) form a graph without a cycle.
#[test]
fn module_graph_is_acyclic() {
    use std::collections::{BTreeMap, BTreeSet};

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name != "lib" && name != "tests" {
            let text = std::fs::read_to_string(&path).unwrap();
            let production = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
            sources.insert(name, production);
        }
    }
    let names: BTreeSet<String> = sources.keys().cloned().collect();
    let mut uses: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (module, text) in &sources {
        let used = uses.entry(module).or_default();
        for prefix in ["super::", "crate::"] {
            for (at, _) in text.match_indices(prefix) {
                let rest = &text[at + prefix.len()..];
                // `super::name` or `super::{a, b::c, ...}`.
                let items: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => group[..group.find('}').unwrap_or(group.len())]
                        .split(',')
                        .collect(),
                    None => vec![rest],
                };
                for item in items {
                    let word: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if let Some(name) = names.get(&word) {
                        if name != module {
                            used.insert(name);
                        }
                    }
                }
            }
        }
    }
    // Kahn's algorithm: repeatedly drop modules that use nothing left.
    let mut left = uses.clone();
    while !left.is_empty() {
        let leaves: Vec<&str> = left
            .iter()
            .filter(|(_, used)| used.iter().all(|name| !left.contains_key(name)))
            .map(|(module, _)| *module)
            .collect();
        assert!(!leaves.is_empty(), "import cycle among {:?}", left.keys());
        for leaf in leaves {
            left.remove(leaf);
        }
    }
    assert!(uses["commands"].contains("io_commands"), "{uses:?}");
    assert!(uses["target"].contains("commands"), "{uses:?}");
}
