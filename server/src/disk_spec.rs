//! The `--disk` option: `path=FILE[,lun=N][,readonly=on][,serial=S][,cache=none|writeback]
//! [,discard=unmap|ignore][,logical-block-size=512|4096][,locking=on|off]` or
//! `null,size=BYTES[,latency-us=U][,lun=N]...`; either takes QEMU's error policy
//! `[,werror=report|enospc|stop][,rerror=report|stop]`.
//!
//! As in QEMU's option syntax, `,,` stands for a literal comma inside a value.

use std::path::PathBuf;
use std::str::FromStr;

use block::{CacheMode, DiscardMode, ErrorPolicy, OnReadError, OnWriteError};

/// Highest LUN that flat-space addressing in the virtio-scsi LUN field can carry.
pub const MAX_LUN: u16 = 16383;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    File {
        path: PathBuf,
        cache: CacheMode,
        discard: DiscardMode,
        /// Take QEMU-compatible OFD locks on the image (`locking=on`, the default).
        locking: bool,
    },
    Null {
        size: u64,
        /// Completion latency in microseconds (`latency-us=U`), 0 for none.
        latency_us: u64,
    },
}

/// One parsed `--disk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The spec as the operator wrote it, for the messages about the disk it names.
    pub given: String,
    pub backing: Backing,
    /// `None`: the next LUN after the disks listed before it.
    pub lun: Option<u16>,
    pub read_only: bool,
    pub serial: Option<String>,
    pub logical_block_size: u32,
    /// `werror=` and `rerror=`.
    pub error_policy: ErrorPolicy,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("--disk '{spec}': {problem}")]
pub struct DiskSpecError {
    spec: String,
    problem: DiskSpecProblem,
}

/// What is wrong in a `--disk` spec; each names the option and the value as given.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiskSpecProblem {
    #[error("'{option}' is not KEY=VALUE")]
    NotKeyValue { option: String },
    #[error("{key} is given twice")]
    GivenTwice { key: String },
    #[error("path is empty")]
    EmptyPath,
    #[error(transparent)]
    Size(#[from] SizeError),
    #[error(
        "latency-us '{value}' is not a number of microseconds from 0 to {MAX_NULL_LATENCY_US}"
    )]
    LatencyUs { value: String },
    #[error("lun '{value}' is not a number from 0 to {MAX_LUN}")]
    Lun { value: String },
    #[error("serial '{value}' must be at most 36 printable ASCII characters without spaces")]
    Serial { value: String },
    #[error("{key} '{value}' is not {accepted}")]
    NotOneOf {
        key: &'static str,
        value: String,
        accepted: &'static str,
    },
    #[error("unknown option '{key}' for a null disk")]
    UnknownNullOption { key: String },
    #[error("unknown option '{key}'")]
    UnknownOption { key: String },
    #[error("a null disk needs size=BYTES")]
    NullWithoutSize,
    #[error("path=FILE is missing (or use 'null,size=BYTES')")]
    NoPath,
    #[error(
        "size {size} is not a positive multiple of the logical block size {logical_block_size}"
    )]
    SizeNotMultiple { size: u64, logical_block_size: u32 },
}

/// `key`'s `value` is none of the `accepted` ones.
fn not_one_of(key: &'static str, value: &str, accepted: &'static str) -> DiskSpecProblem {
    DiskSpecProblem::NotOneOf {
        key,
        value: value.to_string(),
        accepted,
    }
}

impl FromStr for DiskSpec {
    type Err = DiskSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        parse(spec).map_err(|problem| DiskSpecError {
            spec: spec.to_string(),
            problem,
        })
    }
}

/// Splits on single commas, turning `,,` into a literal comma.
fn split_options(spec: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c != ',' {
            current.push(c);
        } else if chars.peek() == Some(&',') {
            chars.next();
            current.push(',');
        } else {
            parts.push(std::mem::take(&mut current));
        }
    }
    parts.push(current);
    parts
}

fn parse(spec: &str) -> Result<DiskSpec, DiskSpecProblem> {
    let parts = split_options(spec);
    let is_null = parts.first().is_some_and(|first| first == "null");
    let options = if is_null { &parts[1..] } else { &parts[..] };

    let mut path = None;
    let mut size = None;
    let mut latency_us = 0;
    let mut lun = None;
    let mut read_only = false;
    let mut serial = None;
    // QEMU's defaults, so that a disk behaves as it would behind QEMU's own virtio-scsi.
    let mut cache = CacheMode::Writeback;
    let mut discard = DiscardMode::Ignore;
    let mut logical_block_size = 512;
    let mut locking = true;
    let mut error_policy = ErrorPolicy::default();
    let mut seen: Vec<&str> = Vec::new();

    for option in options {
        let (key, value) = option
            .split_once('=')
            .ok_or_else(|| DiskSpecProblem::NotKeyValue {
                option: option.clone(),
            })?;
        if seen.contains(&key) {
            return Err(DiskSpecProblem::GivenTwice {
                key: key.to_string(),
            });
        }
        match key {
            "path" if !is_null => {
                if value.is_empty() {
                    return Err(DiskSpecProblem::EmptyPath);
                }
                path = Some(PathBuf::from(value));
            }
            "size" if is_null => size = Some(parse_size(value)?),
            "latency-us" if is_null => latency_us = parse_latency_us(value)?,
            "lun" => {
                let n: u16 = value
                    .parse()
                    .ok()
                    .filter(|n| *n <= MAX_LUN)
                    .ok_or_else(|| DiskSpecProblem::Lun {
                        value: value.to_string(),
                    })?;
                lun = Some(n);
            }
            "readonly" => read_only = parse_switch("readonly", value)?,
            "serial" => {
                if value.len() > 36 || !value.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(DiskSpecProblem::Serial {
                        value: value.to_string(),
                    });
                }
                serial = Some(value.to_string());
            }
            "cache" if !is_null => {
                cache = match value {
                    "none" => CacheMode::None,
                    "writeback" => CacheMode::Writeback,
                    _ => return Err(not_one_of("cache", value, "none or writeback")),
                }
            }
            "discard" if !is_null => {
                discard = match value {
                    "unmap" => DiscardMode::Unmap,
                    "ignore" => DiscardMode::Ignore,
                    _ => return Err(not_one_of("discard", value, "unmap or ignore")),
                }
            }
            "locking" if !is_null => locking = parse_switch("locking", value)?,
            "werror" => {
                error_policy.write = match value {
                    "report" => OnWriteError::Report,
                    "enospc" => OnWriteError::Enospc,
                    "stop" => OnWriteError::Stop,
                    _ => return Err(not_one_of("werror", value, "report, enospc or stop")),
                }
            }
            "rerror" => {
                error_policy.read = match value {
                    "report" => OnReadError::Report,
                    "stop" => OnReadError::Stop,
                    _ => return Err(not_one_of("rerror", value, "report or stop")),
                }
            }
            "logical-block-size" => {
                logical_block_size = match value {
                    "512" => 512,
                    "4096" => 4096,
                    _ => return Err(not_one_of("logical-block-size", value, "512 or 4096")),
                }
            }
            _ if is_null => {
                return Err(DiskSpecProblem::UnknownNullOption {
                    key: key.to_string(),
                })
            }
            _ => {
                return Err(DiskSpecProblem::UnknownOption {
                    key: key.to_string(),
                })
            }
        }
        seen.push(key);
    }

    let backing = if is_null {
        let size = size.ok_or(DiskSpecProblem::NullWithoutSize)?;
        Backing::Null { size, latency_us }
    } else {
        let path = path.ok_or(DiskSpecProblem::NoPath)?;
        Backing::File {
            path,
            cache,
            discard,
            locking,
        }
    };
    if let Backing::Null { size, .. } = backing {
        if size == 0 || size % u64::from(logical_block_size) != 0 {
            return Err(DiskSpecProblem::SizeNotMultiple {
                size,
                logical_block_size,
            });
        }
    }
    Ok(DiskSpec {
        given: spec.to_string(),
        backing,
        lun,
        read_only,
        serial,
        logical_block_size,
        error_policy,
    })
}

fn parse_switch(key: &'static str, value: &str) -> Result<bool, DiskSpecProblem> {
    match value {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(not_one_of(key, value, "on or off")),
    }
}

/// Bytes, with an optional binary suffix K, M, G or T.
/// A size that is not a number of bytes (the value as given).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("size '{value}' is not a number of bytes (suffixes K, M, G, T)")]
pub struct SizeError {
    value: String,
}

pub fn parse_size(value: &str) -> Result<u64, SizeError> {
    let (digits, shift) = match value.char_indices().last() {
        Some((i, 'K' | 'k')) => (&value[..i], 10),
        Some((i, 'M' | 'm')) => (&value[..i], 20),
        Some((i, 'G' | 'g')) => (&value[..i], 30),
        Some((i, 'T' | 't')) => (&value[..i], 40),
        _ => (value, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| SizeError {
            value: value.to_string(),
        })
}

/// Longest null-disk latency accepted: a request slower than this is a hung disk to a guest.
const MAX_NULL_LATENCY_US: u64 = 10_000_000;

fn parse_latency_us(value: &str) -> Result<u64, DiskSpecProblem> {
    value
        .parse::<u64>()
        .ok()
        .filter(|us| *us <= MAX_NULL_LATENCY_US)
        .ok_or_else(|| DiskSpecProblem::LatencyUs {
            value: value.to_string(),
        })
}

/// Why the `--disk` options cannot all have a LUN.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LunAssignError {
    #[error("--disk: no free LUN left")]
    NoFreeLun,
    /// Numbers are 1-based positions among the `--disk` options.
    #[error("--disk number {first} and --disk number {second} both use lun {lun}")]
    Shared {
        first: usize,
        second: usize,
        lun: u16,
    },
}

/// Gives every disk its LUN: an explicit `lun=`, or the lowest free number after the previous
/// disk's. Two disks on one LUN are an error naming both.
pub fn assign_luns(specs: &[DiskSpec]) -> Result<Vec<u16>, LunAssignError> {
    let mut luns: Vec<u16> = Vec::with_capacity(specs.len());
    let mut next = 0u16;
    for (i, spec) in specs.iter().enumerate() {
        let lun = match spec.lun {
            Some(lun) => lun,
            None => {
                while specs.iter().any(|s| s.lun == Some(next)) || luns.contains(&next) {
                    next = next
                        .checked_add(1)
                        .filter(|n| *n <= MAX_LUN)
                        .ok_or(LunAssignError::NoFreeLun)?;
                }
                next
            }
        };
        if let Some(other) = luns.iter().position(|l| *l == lun) {
            return Err(LunAssignError::Shared {
                first: other + 1,
                second: i + 1,
                lun,
            });
        }
        luns.push(lun);
    }
    Ok(luns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(spec: &str) -> String {
        spec.parse::<DiskSpec>().unwrap_err().to_string()
    }

    #[test]
    fn file_disk_with_every_option() {
        let spec: DiskSpec = "path=/d/x,,y.img,lun=3,readonly=on,serial=ABC-1,cache=none,discard=unmap,logical-block-size=4096,locking=off,werror=stop,rerror=stop"
            .parse()
            .unwrap();
        assert_eq!(
            spec,
            DiskSpec {
                given: "path=/d/x,,y.img,lun=3,readonly=on,serial=ABC-1,cache=none,discard=unmap,logical-block-size=4096,locking=off,werror=stop,rerror=stop".into(),
                backing: Backing::File {
                    path: "/d/x,y.img".into(),
                    cache: CacheMode::None,
                    discard: DiscardMode::Unmap,
                    locking: false,
                },
                lun: Some(3),
                read_only: true,
                serial: Some("ABC-1".into()),
                logical_block_size: 4096,
                error_policy: ErrorPolicy {
                    write: OnWriteError::Stop,
                    read: OnReadError::Stop,
                },
            }
        );
    }

    #[test]
    fn file_disk_defaults() {
        let spec: DiskSpec = "path=disk.img".parse().unwrap();
        assert_eq!(
            spec.backing,
            Backing::File {
                path: "disk.img".into(),
                cache: CacheMode::Writeback,
                discard: DiscardMode::Ignore,
                locking: true,
            }
        );
        assert_eq!(
            (spec.lun, spec.read_only, spec.logical_block_size),
            (None, false, 512)
        );
        assert_eq!(
            spec.error_policy,
            ErrorPolicy {
                write: OnWriteError::Enospc,
                read: OnReadError::Report,
            },
            "QEMU's scsi-hd defaults"
        );
        let report: DiskSpec = "null,size=1M,werror=report".parse().unwrap();
        assert_eq!(report.error_policy.write, OnWriteError::Report);
    }

    #[test]
    fn null_disk_sizes() {
        let spec: DiskSpec = "null,size=1G,lun=2".parse().unwrap();
        assert_eq!(
            spec.backing,
            Backing::Null {
                size: 1 << 30,
                latency_us: 0
            }
        );
        assert_eq!(spec.lun, Some(2));
        let slow: DiskSpec = "null,size=1M,latency-us=2000".parse().unwrap();
        assert_eq!(
            slow.backing,
            Backing::Null {
                size: 1 << 20,
                latency_us: 2000
            }
        );
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("3k").unwrap(), 3072);
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn errors_name_the_option_and_value() {
        assert_eq!(
            problem("null,size=1M,latency-us=-5"),
            "--disk 'null,size=1M,latency-us=-5': latency-us '-5' is not a number of \
             microseconds from 0 to 10000000"
        );
        assert_eq!(
            problem("path=a,latency-us=5"),
            "--disk 'path=a,latency-us=5': unknown option 'latency-us'"
        );
        assert_eq!(
            problem("path=a,lun=x"),
            "--disk 'path=a,lun=x': lun 'x' is not a number from 0 to 16383"
        );
        assert_eq!(
            problem("path=a,lun=16384"),
            "--disk 'path=a,lun=16384': lun '16384' is not a number from 0 to 16383"
        );
        assert_eq!(
            problem("path=a,cache=off"),
            "--disk 'path=a,cache=off': cache 'off' is not none or writeback"
        );
        assert_eq!(
            problem("path=a,discard=on"),
            "--disk 'path=a,discard=on': discard 'on' is not unmap or ignore"
        );
        assert_eq!(
            problem("path=a,werror=ignore"),
            "--disk 'path=a,werror=ignore': werror 'ignore' is not report, enospc or stop"
        );
        assert_eq!(
            problem("path=a,rerror=enospc"),
            "--disk 'path=a,rerror=enospc': rerror 'enospc' is not report or stop"
        );
        assert_eq!(
            problem("path=a,readonly=maybe"),
            "--disk 'path=a,readonly=maybe': readonly 'maybe' is not on or off"
        );
        assert_eq!(
            problem("path=a,logical-block-size=1024"),
            "--disk 'path=a,logical-block-size=1024': logical-block-size '1024' is not 512 or 4096"
        );
        assert_eq!(
            problem("path=a,colour=red"),
            "--disk 'path=a,colour=red': unknown option 'colour'"
        );
        assert_eq!(
            problem("path=a,path=b"),
            "--disk 'path=a,path=b': path is given twice"
        );
        assert_eq!(
            problem("lun=1"),
            "--disk 'lun=1': path=FILE is missing (or use 'null,size=BYTES')"
        );
        assert_eq!(
            problem("disk.img"),
            "--disk 'disk.img': 'disk.img' is not KEY=VALUE"
        );
        assert_eq!(
            problem("null"),
            "--disk 'null': a null disk needs size=BYTES"
        );
        assert_eq!(problem("null,size=1000"), "--disk 'null,size=1000': size 1000 is not a positive multiple of the logical block size 512");
        assert_eq!(
            problem("null,size=1G,path=x"),
            "--disk 'null,size=1G,path=x': unknown option 'path' for a null disk"
        );
        assert_eq!(
            problem("null,size=lots"),
            "--disk 'null,size=lots': size 'lots' is not a number of bytes (suffixes K, M, G, T)"
        );
        assert!(problem("path=a,serial=has space").contains("serial 'has space'"));
    }

    #[test]
    fn luns_are_assigned_around_explicit_ones() {
        let specs: Vec<DiskSpec> = ["path=a", "path=b,lun=1", "path=c", "path=d,lun=7"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(assign_luns(&specs).unwrap(), vec![0, 1, 2, 7]);
    }

    #[test]
    fn duplicate_luns_are_refused() {
        let specs: Vec<DiskSpec> = ["path=a,lun=4", "path=b,lun=4"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let error = assign_luns(&specs).unwrap_err();
        assert_eq!(
            error,
            LunAssignError::Shared {
                first: 1,
                second: 2,
                lun: 4
            }
        );
        assert_eq!(
            error.to_string(),
            "--disk number 1 and --disk number 2 both use lun 4"
        );
    }
}
