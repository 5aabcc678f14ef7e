//! Guest tests: boot a VM through `scripts/run-vm.sh`, run a shell script inside it, and hand back
//! its exit status and console output.
//!
//! Nothing here skips: a missing script or environment is an error that names what is missing
//! (`scripts/run-vm.sh` builds the guest environment itself when it is not cached).
//!
//! Guest scripts that start with [`SCRIPT_PRELUDE`] can split their output into named sections
//! (`section NAME`), so that a test asserts each tool's output where it belongs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Lines of console output a failure message quotes.
const TAIL_LINES: usize = 40;

/// What a guest script prints to start a section of its output; the section's name follows.
const SECTION_MARKER: &str = "VUS-SECTION ";

/// Shell that a guest script can start with: stop at the first failing command, `section NAME`
/// to start a section of the output, and `$(lun_disk N)`: the block device of LUN N, once it
/// exists (up to 10 s; run-vm.sh waits only for /dev/sda). Linux probes disks asynchronously,
/// so with several LUNs /dev/sda is not always LUN 0.
pub const SCRIPT_PRELUDE: &str = r#"set -e
section() { echo "VUS-SECTION $1"; }
lun_disk() {
    tries=100
    while [ "$tries" -gt 0 ]; do
        for block in /sys/bus/scsi/devices/*:0:0:"$1"/block/*; do
            [ -b "/dev/${block##*/}" ] && { echo "/dev/${block##*/}"; return 0; }
        done
        sleep 0.1
        tries=$((tries - 1))
    done
    echo "VUS-TEST: LUN $1 has no block device" >&2
    ls /sys/bus/scsi/devices >&2
    return 1
}
"#;

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("{path} does not exist: the guest tests need the workspace's scripts")]
    MissingScript { path: PathBuf },
    #[error("cannot start {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the output of run-vm.sh: {0}")]
    Output(std::io::Error),
    #[error("waiting for run-vm.sh: {0}")]
    Wait(std::io::Error),
}

/// What one `run-vm.sh` invocation produced.
#[derive(Debug)]
pub struct GuestRun {
    /// run-vm.sh's exit status: the guest script's, or 124 (timeout) / 125 (harness failure);
    /// `None` if run-vm.sh was killed by a signal.
    pub status: Option<i32>,
    /// stdout and stderr of run-vm.sh, interleaved as they came: the guest console and its messages.
    pub output: String,
}

impl GuestRun {
    /// The last lines of the output, for failure messages.
    pub fn tail(&self) -> String {
        let lines: Vec<&str> = self.output.lines().collect();
        lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
    }

    /// Panics, quoting the end of the output, unless run-vm.sh exited with `expected`.
    pub fn assert_status(&self, expected: i32) {
        assert_eq!(
            self.status,
            Some(expected),
            "run-vm.sh exited with {:?}, expected {expected}; last lines of its output:\n{}",
            self.status,
            self.tail()
        );
    }

    /// Panics, quoting the end of the output, unless some output line contains `needle`.
    pub fn assert_line_contains(&self, needle: &str) {
        assert!(
            self.output.lines().any(|line| line.contains(needle)),
            "no output line contains {needle:?}; last lines of the output:\n{}",
            self.tail()
        );
    }

    /// Panics, quoting the end of the output, unless some output line is exactly `expected`
    /// (trailing blanks aside): for marker lines such as `SIZE=131072`, which a `contains` would
    /// also find in `SIZE=1310720`.
    pub fn assert_line(&self, expected: &str) {
        assert!(
            self.output.lines().any(|line| line.trim_end() == expected),
            "no output line is {expected:?}; last lines of the output:\n{}",
            self.tail()
        );
    }

    /// The lines after the guest script's `section NAME`, up to the next section (empty when
    /// the script never reached it).
    pub fn section(&self, name: &str) -> Vec<&str> {
        let mut lines = self.output.lines();
        let start = format!("{SECTION_MARKER}{name}");
        if !lines.any(|line| line.trim_end() == start) {
            return Vec::new();
        }
        lines
            .take_while(|line| !line.starts_with(SECTION_MARKER))
            .collect()
    }

    /// Panics unless some line of section `name` contains `needle`; quotes the section, or the
    /// end of the output when the section is missing.
    pub fn assert_section_contains(&self, name: &str, needle: &str) {
        let section = self.section(name);
        if section.is_empty() {
            panic!(
                "the guest printed no section {name:?}; last lines of the output:\n{}",
                self.tail()
            );
        }
        assert!(
            section.iter().any(|line| line.contains(needle)),
            "no line of section {name:?} contains {needle:?}; the section:\n{}",
            section.join("\n")
        );
    }
}

/// Numbered lines `TAG-00000000042\n`, the same bytes [`pattern_command`] prints in the guest.
pub fn pattern(tag: &str, lines: usize) -> Vec<u8> {
    (0..lines)
        .flat_map(|n| format!("{tag}-{n:011}\n").into_bytes())
        .collect()
}

/// A guest shell command (busybox awk) that prints [`pattern`]`(tag, lines)`. `tag` must not
/// need shell or awk quoting.
pub fn pattern_command(tag: &str, lines: usize) -> String {
    format!("awk 'BEGIN {{ for (n = 0; n < {lines}; n++) printf \"{tag}-%011d\\n\", n }}'")
}

/// A sparse file of `bytes` bytes for a guest disk, removed when dropped. It lives in /var/tmp,
/// not /tmp: disks opened with O_DIRECT need a file system that allows it, which a tmpfs may not.
pub fn sparse_disk(name: &str, bytes: u64) -> std::io::Result<tempfile::NamedTempFile> {
    let disk = tempfile::Builder::new()
        .prefix(&format!("vus-{name}-"))
        .suffix(".raw")
        .tempfile_in("/var/tmp")?;
    disk.as_file().set_len(bytes)?;
    Ok(disk)
}

/// The workspace root (the parent of this crate's folder).
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Runs `scripts/run-vm.sh ARGS -- GUEST_SCRIPT`, echoing its output as it arrives (the test
/// harness shows it when a test fails) and collecting it.
pub fn run_vm(args: &[&str], guest_script: &str) -> Result<GuestRun, GuestError> {
    let mut all_args = args.to_vec();
    all_args.extend(["--", guest_script]);
    run_script("run-vm.sh", &all_args)
}

/// [`run_vm`], calling `on_line` with each output line as it arrives: the host side of a test
/// can act when the guest prints a marker.
pub fn run_vm_with(
    args: &[&str],
    guest_script: &str,
    on_line: impl FnMut(&str),
) -> Result<GuestRun, GuestError> {
    let mut all_args = args.to_vec();
    all_args.extend(["--", guest_script]);
    run_script_with("run-vm.sh", &all_args, on_line)
}

/// Runs `scripts/NAME ARGS` (a script that boots a guest, such as `run.sh`), echoing and
/// collecting its output as [`run_vm`] does.
pub fn run_script(name: &str, args: &[&str]) -> Result<GuestRun, GuestError> {
    run_script_with(name, args, |_| {})
}

fn run_script_with(
    name: &str,
    args: &[&str],
    mut on_line: impl FnMut(&str),
) -> Result<GuestRun, GuestError> {
    let script = repo_root().join("scripts").join(name);
    if !script.is_file() {
        return Err(GuestError::MissingScript { path: script });
    }
    // One pipe for both streams keeps the harness's messages in order with the console.
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(r#"exec "$0" "$@" 2>&1"#)
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|source| GuestError::Spawn {
            path: script.clone(),
            source,
        })?;
    let mut output = String::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).split(b'\n') {
            let line = line.map_err(GuestError::Output)?;
            let line = String::from_utf8_lossy(&line);
            println!("{line}");
            on_line(&line);
            output.push_str(&line);
            output.push('\n');
        }
    }
    let status = child.wait().map_err(GuestError::Wait)?;
    Ok(GuestRun {
        status: status.code(),
        output,
    })
}

/// The interrupt count of one `/proc/interrupts` row, summed over the CPUs.
pub fn interrupt_total(row: &str) -> u64 {
    row.split_whitespace()
        .skip(1)
        .map_while(|field| field.parse::<u64>().ok())
        .sum()
}
