//! Which thread serves which virtqueue: `--iothread` names and `--iothread-vq-mapping`.
//!
//! The mapping is QEMU's JSON list (`[{"iothread":"io0","vqs":[0,2]},...]`) where numbers are
//! request-queue indices, plus the names `"ctrl"` and `"event"` for the two fixed queues. Queues
//! that no entry names (ctrl and event by default) stay on the main loop.

use serde_json::Value;

/// The thread that serves one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueOwner {
    MainLoop,
    /// Index into the `--iothread` list.
    Iothread(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMapping {
    pub ctrl: QueueOwner,
    pub event: QueueOwner,
    /// Owner of request queue `n` (virtqueue `2 + n`).
    pub request: Vec<QueueOwner>,
}

impl QueueMapping {
    /// Owner of virtqueue `index` (0 ctrl, 1 event, then request queues).
    pub fn owner_of_virtqueue(&self, index: usize) -> Option<QueueOwner> {
        match index {
            0 => Some(self.ctrl),
            1 => Some(self.event),
            n => self.request.get(n - 2).copied(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("--iothread: the name is empty")]
    EmptyIothreadName,
    #[error("--iothread '{name}' is given twice")]
    DuplicateIothread { name: String },
    #[error("--iothread-vq-mapping needs at least one --iothread")]
    NoIothreads,
    #[error("--iothread-vq-mapping: malformed JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("--iothread-vq-mapping: expected a JSON list of {{\"iothread\": NAME, \"vqs\": [...]}} objects")]
    NotAList,
    #[error("--iothread-vq-mapping: the list is empty")]
    Empty,
    #[error("--iothread-vq-mapping[{entry}]: {problem}")]
    Entry { entry: usize, problem: EntryProblem },
    #[error("--iothread-vq-mapping: either every entry lists \"vqs\" or none does (entry {with} does, entry {without} does not)")]
    MixedVqs { with: usize, without: usize },
    #[error("--iothread-vq-mapping: request queue {0} is not mapped to any iothread")]
    Unmapped(usize),
}

/// What is wrong with one entry of the mapping list.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum EntryProblem {
    #[error("{0} is not an object")]
    NotAnObject(Value),
    #[error("unknown key \"{key}\"")]
    UnknownKey { key: String },
    #[error("iothread {0} is not a string")]
    IothreadNotAString(Value),
    #[error("\"iothread\" is missing")]
    IothreadMissing,
    #[error("iothread \"{name}\" is not defined by --iothread")]
    UndefinedIothread { name: String },
    #[error("iothread \"{name}\" is already listed in entry {earlier}")]
    IothreadListedTwice { name: String, earlier: usize },
    #[error("vqs {0} is not a list")]
    VqsNotAList(Value),
    #[error(
        "unknown queue name \"{name}\" (names are \"ctrl\" and \"event\"; request queues are numbers)"
    )]
    UnknownQueueName { name: String },
    #[error("request queue {queue} is out of range (num-queues is {num_queues}, so 0 to {})", num_queues.saturating_sub(1))]
    RequestQueueOutOfRange {
        queue: serde_json::Number,
        num_queues: usize,
    },
    #[error("queue {0} is neither a number nor \"ctrl\"/\"event\"")]
    NotAQueue(Value),
    #[error("{vq} is already mapped in entry {earlier}")]
    MappedTwice { vq: Vq, earlier: usize },
}

/// Checks the `--iothread` names: non-empty and unique.
pub fn check_iothread_names(names: &[String]) -> Result<(), MappingError> {
    for (i, name) in names.iter().enumerate() {
        if name.is_empty() {
            return Err(MappingError::EmptyIothreadName);
        }
        if names[..i].contains(name) {
            return Err(MappingError::DuplicateIothread { name: name.clone() });
        }
    }
    Ok(())
}

/// Builds the mapping from the command line. Without a JSON mapping, request queues are spread
/// round-robin over the iothreads, or all stay on the main loop when there is none.
pub fn build_mapping(
    iothreads: &[String],
    mapping_json: Option<&str>,
    num_queues: usize,
) -> Result<QueueMapping, MappingError> {
    check_iothread_names(iothreads)?;
    let Some(json) = mapping_json else {
        let request = (0..num_queues)
            .map(|n| match iothreads.len() {
                0 => QueueOwner::MainLoop,
                count => QueueOwner::Iothread(n % count),
            })
            .collect();
        return Ok(QueueMapping {
            ctrl: QueueOwner::MainLoop,
            event: QueueOwner::MainLoop,
            request,
        });
    };
    if iothreads.is_empty() {
        return Err(MappingError::NoIothreads);
    }
    let entries = parse_entries(json, iothreads, num_queues)?;
    assign(&entries, num_queues)
}

/// What one mapping entry names, validated on its own.
struct Entry {
    iothread: usize,
    vqs: Option<Vec<Vq>>,
}

/// A queue as the mapping names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vq {
    Ctrl,
    Event,
    Request(usize),
}

impl std::fmt::Display for Vq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Vq::Ctrl => write!(f, "\"ctrl\""),
            Vq::Event => write!(f, "\"event\""),
            Vq::Request(n) => write!(f, "request queue {n}"),
        }
    }
}

fn parse_entries(
    json: &str,
    iothreads: &[String],
    num_queues: usize,
) -> Result<Vec<Entry>, MappingError> {
    let value: Value = serde_json::from_str(json).map_err(MappingError::Json)?;
    let list = value.as_array().ok_or(MappingError::NotAList)?;
    if list.is_empty() {
        return Err(MappingError::Empty);
    }
    let mut entries: Vec<Entry> = Vec::with_capacity(list.len());
    for (index, item) in list.iter().enumerate() {
        let problem = |problem: EntryProblem| MappingError::Entry {
            entry: index,
            problem,
        };
        let object = item
            .as_object()
            .ok_or_else(|| problem(EntryProblem::NotAnObject(item.clone())))?;
        if let Some(key) = object.keys().find(|k| *k != "iothread" && *k != "vqs") {
            return Err(problem(EntryProblem::UnknownKey { key: key.clone() }));
        }
        let name = match object.get("iothread") {
            Some(Value::String(name)) => name,
            Some(other) => return Err(problem(EntryProblem::IothreadNotAString(other.clone()))),
            None => return Err(problem(EntryProblem::IothreadMissing)),
        };
        let iothread = iothreads
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| problem(EntryProblem::UndefinedIothread { name: name.clone() }))?;
        if let Some(earlier) = entries.iter().position(|e| e.iothread == iothread) {
            return Err(problem(EntryProblem::IothreadListedTwice {
                name: name.clone(),
                earlier,
            }));
        }
        let vqs = match object.get("vqs") {
            None => None,
            Some(Value::Array(vqs)) => Some(
                vqs.iter()
                    .map(|vq| parse_vq(vq, num_queues).map_err(&problem))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(other) => return Err(problem(EntryProblem::VqsNotAList(other.clone()))),
        };
        entries.push(Entry { iothread, vqs });
    }
    Ok(entries)
}

fn parse_vq(vq: &Value, num_queues: usize) -> Result<Vq, EntryProblem> {
    match vq {
        Value::String(name) if name == "ctrl" => Ok(Vq::Ctrl),
        Value::String(name) if name == "event" => Ok(Vq::Event),
        Value::String(name) => Err(EntryProblem::UnknownQueueName { name: name.clone() }),
        Value::Number(n) => match n.as_u64() {
            Some(n) if n < num_queues as u64 => Ok(Vq::Request(n as usize)),
            _ => Err(EntryProblem::RequestQueueOutOfRange {
                queue: n.clone(),
                num_queues,
            }),
        },
        other => Err(EntryProblem::NotAQueue(other.clone())),
    }
}

fn assign(entries: &[Entry], num_queues: usize) -> Result<QueueMapping, MappingError> {
    let with = entries.iter().position(|e| e.vqs.is_some());
    let without = entries.iter().position(|e| e.vqs.is_none());
    let mut mapping = QueueMapping {
        ctrl: QueueOwner::MainLoop,
        event: QueueOwner::MainLoop,
        request: vec![QueueOwner::MainLoop; num_queues],
    };
    match (with, without) {
        (Some(with), Some(without)) => Err(MappingError::MixedVqs { with, without }),
        (None, _) => {
            for (n, owner) in mapping.request.iter_mut().enumerate() {
                *owner = QueueOwner::Iothread(entries[n % entries.len()].iothread);
            }
            Ok(mapping)
        }
        (Some(_), None) => {
            // Where each queue was first named, to point at both entries of a duplicate.
            let mut named_in: Vec<(Vq, usize)> = Vec::new();
            for (index, entry) in entries.iter().enumerate() {
                for &vq in entry.vqs.iter().flatten() {
                    if let Some((_, earlier)) = named_in.iter().find(|(seen, _)| *seen == vq) {
                        return Err(MappingError::Entry {
                            entry: index,
                            problem: EntryProblem::MappedTwice {
                                vq,
                                earlier: *earlier,
                            },
                        });
                    }
                    named_in.push((vq, index));
                    let owner = QueueOwner::Iothread(entry.iothread);
                    match vq {
                        Vq::Ctrl => mapping.ctrl = owner,
                        Vq::Event => mapping.event = owner,
                        Vq::Request(n) => mapping.request[n] = owner,
                    }
                }
            }
            match (0..num_queues).find(|n| !named_in.iter().any(|(vq, _)| *vq == Vq::Request(*n))) {
                Some(unmapped) => Err(MappingError::Unmapped(unmapped)),
                None => Ok(mapping),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use QueueOwner::{Iothread, MainLoop};

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn error(iothreads: &[&str], json: &str, num_queues: usize) -> String {
        build_mapping(&names(iothreads), Some(json), num_queues)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn design_example() {
        let mapping = build_mapping(
            &names(&["io0", "io1"]),
            Some(
                r#"[{"iothread":"io0","vqs":["ctrl","event",0,2]},{"iothread":"io1","vqs":[1,3]}]"#,
            ),
            4,
        )
        .unwrap();
        assert_eq!(
            mapping,
            QueueMapping {
                ctrl: Iothread(0),
                event: Iothread(0),
                request: vec![Iothread(0), Iothread(1), Iothread(0), Iothread(1)],
            }
        );
        assert_eq!(mapping.owner_of_virtqueue(5), Some(Iothread(1)));
        assert_eq!(mapping.owner_of_virtqueue(6), None);
    }

    #[test]
    fn no_mapping_is_round_robin_or_main_loop() {
        let mapping = build_mapping(&names(&["a", "b"]), None, 3).unwrap();
        assert_eq!(mapping.request, vec![Iothread(0), Iothread(1), Iothread(0)]);
        assert_eq!((mapping.ctrl, mapping.event), (MainLoop, MainLoop));
        let mapping = build_mapping(&[], None, 2).unwrap();
        assert_eq!(mapping.request, vec![MainLoop, MainLoop]);
    }

    #[test]
    fn entries_without_vqs_share_request_queues_round_robin() {
        let mapping = build_mapping(
            &names(&["a", "b", "c"]),
            Some(r#"[{"iothread":"c"},{"iothread":"a"}]"#),
            3,
        )
        .unwrap();
        assert_eq!(mapping.request, vec![Iothread(2), Iothread(0), Iothread(2)]);
        assert_eq!(mapping.ctrl, MainLoop);
    }

    #[test]
    fn every_rule_has_its_message() {
        assert_eq!(
            error(&["io0"], r#"[{"iothread":"io9","vqs":[0]}]"#, 1),
            "--iothread-vq-mapping[0]: iothread \"io9\" is not defined by --iothread"
        );
        assert_eq!(
            error(&["io0"], r#"[{"iothread":"io0","vqs":[0,4]}]"#, 4),
            "--iothread-vq-mapping[0]: request queue 4 is out of range (num-queues is 4, so 0 to 3)"
        );
        assert_eq!(
            error(&["io0"], r#"[{"iothread":"io0","vqs":[-1]}]"#, 4),
            "--iothread-vq-mapping[0]: request queue -1 is out of range (num-queues is 4, so 0 to 3)"
        );
        assert_eq!(
            error(
                &["a", "b"],
                r#"[{"iothread":"a","vqs":[0,1]},{"iothread":"b","vqs":[1]}]"#,
                2
            ),
            "--iothread-vq-mapping[1]: request queue 1 is already mapped in entry 0"
        );
        assert_eq!(
            error(
                &["a", "b"],
                r#"[{"iothread":"a","vqs":["ctrl",0]},{"iothread":"b","vqs":["ctrl",1]}]"#,
                2
            ),
            "--iothread-vq-mapping[1]: \"ctrl\" is already mapped in entry 0"
        );
        assert_eq!(
            error(&["a"], r#"[{"iothread":"a","vqs":[0]}]"#, 2),
            "--iothread-vq-mapping: request queue 1 is not mapped to any iothread"
        );
        assert_eq!(
            error(
                &["a"],
                r#"[{"iothread":"a","vqs":[0]},{"iothread":"a","vqs":[1]}]"#,
                2
            ),
            "--iothread-vq-mapping[1]: iothread \"a\" is already listed in entry 0"
        );
        assert_eq!(
            error(&["a", "b"], r#"[{"iothread":"a","vqs":[0]},{"iothread":"b"}]"#, 2),
            "--iothread-vq-mapping: either every entry lists \"vqs\" or none does (entry 0 does, entry 1 does not)"
        );
        assert_eq!(
            error(&["a"], r#"[{"iothread":"a","vqs":["events",0]}]"#, 1),
            "--iothread-vq-mapping[0]: unknown queue name \"events\" (names are \"ctrl\" and \"event\"; request queues are numbers)"
        );
        assert!(error(&["a"], r#"[{"iothread":"a""#, 1)
            .starts_with("--iothread-vq-mapping: malformed JSON: "));
        assert_eq!(
            error(&["a"], r#"{"iothread":"a"}"#, 1),
            "--iothread-vq-mapping: expected a JSON list of {\"iothread\": NAME, \"vqs\": [...]} objects"
        );
        assert_eq!(
            error(&["a"], "[]", 1),
            "--iothread-vq-mapping: the list is empty"
        );
        assert_eq!(
            error(&["a"], r#"[{"iothread":"a","queues":[0]}]"#, 1),
            "--iothread-vq-mapping[0]: unknown key \"queues\""
        );
        assert_eq!(
            error(&["a"], r#"[{"vqs":[0]}]"#, 1),
            "--iothread-vq-mapping[0]: \"iothread\" is missing"
        );
        assert_eq!(
            error(&["a"], r#"[{"iothread":"a","vqs":[true]}]"#, 1),
            "--iothread-vq-mapping[0]: queue true is neither a number nor \"ctrl\"/\"event\""
        );
        assert_eq!(
            build_mapping(&[], Some(r#"[{"iothread":"a"}]"#), 1)
                .unwrap_err()
                .to_string(),
            "--iothread-vq-mapping needs at least one --iothread"
        );
    }

    #[test]
    fn iothread_names_are_checked() {
        assert!(matches!(
            build_mapping(&names(&["a", "a"]), None, 1).unwrap_err(),
            MappingError::DuplicateIothread { name } if name == "a"
        ));
        assert!(matches!(
            build_mapping(&names(&[""]), None, 1).unwrap_err(),
            MappingError::EmptyIothreadName
        ));
    }
}
