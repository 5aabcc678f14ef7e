//! Decoding one client message (header, body and the fds that came with it) into a `Request`.
//! Every length is checked before anything is read or allocated; the fuzz target calls
//! `decode_message` directly.

use std::mem::size_of;
use std::os::fd::OwnedFd;

use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::device::IrqAction;
use crate::irq::{decode_set_irqs, IrqError};
use crate::protocol::{
    DmaMap, DmaUnmap, Header, InfoHead, RegionAccess, RegionInfoHead, SetIrqs, Version,
    VfioUserCommand, FLAG_TYPE_COMMAND, FLAG_TYPE_MASK, HEADER_SIZE, MAX_BODY_SIZE,
    MAX_DATA_XFER_SIZE, MAX_MSG_FDS, U32,
};

/// What the client says it can take, from its VERSION capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCaps {
    pub max_msg_fds: u32,
    pub max_data_xfer_size: u32,
}

impl Default for ClientCaps {
    /// The protocol's defaults for a client that names no capability.
    fn default() -> Self {
        ClientCaps {
            max_msg_fds: 1,
            max_data_xfer_size: MAX_DATA_XFER_SIZE,
        }
    }
}

#[derive(Debug)]
pub enum Request<'a> {
    Version {
        major: u16,
        minor: u16,
        caps: ClientCaps,
    },
    DmaMap {
        map: DmaMap,
        fd: Option<OwnedFd>,
    },
    DmaUnmap(DmaUnmap),
    DeviceGetInfo {
        argsz: u32,
    },
    DeviceGetRegionInfo {
        argsz: u32,
        index: u32,
    },
    DeviceGetRegionIoFds {
        argsz: u32,
        index: u32,
    },
    DeviceGetIrqInfo {
        argsz: u32,
        index: u32,
    },
    DeviceSetIrqs {
        index: u32,
        action: IrqAction,
    },
    RegionRead(RegionAccess),
    RegionWrite {
        access: RegionAccess,
        data: &'a [u8],
    },
    DeviceReset,
}

/// A header that makes the stream unusable: the connection ends.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FramingError {
    #[error("message size {0} is smaller than the header")]
    TooShort(u32),
    #[error("flags {0:#x} do not mark a command")]
    NotACommand(u32),
}

/// Why the JSON capabilities of VERSION were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapabilitiesError {
    #[error("version data is not NUL-terminated")]
    NotTerminated,
    #[error("not valid JSON (line {line}, column {column})")]
    Json { line: usize, column: usize },
    #[error("not a JSON object")]
    NotAnObject,
    #[error("capabilities is not an object")]
    CapabilitiesNotAnObject,
    #[error("{0} is not a 32-bit number")]
    NotU32(&'static str),
}

/// A well-framed message the server refuses: it gets an error reply and the stream stays in sync.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("unknown command {0}")]
    UnknownCommand(u16),
    #[error("body of {got} bytes, {command:?} needs {need}")]
    BadLength {
        command: VfioUserCommand,
        got: usize,
        need: usize,
    },
    #[error("body of {0} bytes exceeds the {MAX_BODY_SIZE}-byte limit")]
    TooLarge(usize),
    #[error("{got} fds, at most {allowed} allowed")]
    TooManyFds { got: usize, allowed: usize },
    #[error("argsz {argsz} is below the {need}-byte reply")]
    ArgszTooSmall { argsz: u32, need: usize },
    #[error("count {0} exceeds max_data_xfer_size")]
    CountTooLarge(u32),
    #[error("protocol major version {0} not supported")]
    Version(u16),
    #[error("capabilities: {0}")]
    Capabilities(#[from] CapabilitiesError),
    #[error("SET_IRQS: {0}")]
    Irq(#[from] IrqError),
}

impl DecodeError {
    pub fn errno(&self) -> i32 {
        match self {
            DecodeError::UnknownCommand(_) => libc::ENOSYS,
            DecodeError::TooLarge(_) | DecodeError::CountTooLarge(_) => libc::E2BIG,
            DecodeError::Version(_) => libc::ENOTSUP,
            DecodeError::Irq(e) => e.errno(),
            _ => libc::EINVAL,
        }
    }
}

/// Checks a header before its body is read.
pub fn check_header(header: &Header) -> Result<(), FramingError> {
    let (size, flags) = (header.message_size.get(), header.flags.get());
    if (size as usize) < HEADER_SIZE {
        return Err(FramingError::TooShort(size));
    }
    if flags & FLAG_TYPE_MASK != FLAG_TYPE_COMMAND {
        return Err(FramingError::NotACommand(flags));
    }
    Ok(())
}

/// Length of the body that follows `header`, once `check_header` accepted it.
pub fn body_len(header: &Header) -> usize {
    (header.message_size.get() as usize).saturating_sub(HEADER_SIZE)
}

/// How a whole message decodes: a framing error ends the connection; a decode error is replied to.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("header shorter than {HEADER_SIZE} bytes")]
    ShortHeader,
    #[error(transparent)]
    Framing(#[from] FramingError),
    #[error("message size {declared} but {got} bytes present")]
    ShortBody { declared: u32, got: usize },
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Decodes one complete message from `bytes` (header and body, nothing after).
pub fn decode_message(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<(Header, Request<'_>), MessageError> {
    let (header, body) = Header::read_from_prefix(bytes).map_err(|_| MessageError::ShortHeader)?;
    check_header(&header)?;
    if body.len() != body_len(&header) {
        return Err(MessageError::ShortBody {
            declared: header.message_size.get(),
            got: body.len(),
        });
    }
    let request = decode_request(&header, body, fds)?;
    Ok((header, request))
}

/// The fixed part `T` that starts `body`.
fn fixed<T: FromBytes + KnownLayout + Immutable>(
    command: VfioUserCommand,
    body: &[u8],
) -> Result<T, DecodeError> {
    T::read_from_prefix(body)
        .map(|(fixed, _)| fixed)
        .map_err(|_| DecodeError::BadLength {
            command,
            got: body.len(),
            need: size_of::<T>(),
        })
}

fn no_fds(fds: &[OwnedFd]) -> Result<(), DecodeError> {
    match fds.len() {
        0 => Ok(()),
        got => Err(DecodeError::TooManyFds { got, allowed: 0 }),
    }
}

/// `argsz` of a request whose reply needs at least `T`.
fn argsz_at_least<T>(argsz: U32) -> Result<u32, DecodeError> {
    let (argsz, need) = (argsz.get(), size_of::<T>());
    if (argsz as usize) < need {
        return Err(DecodeError::ArgszTooSmall { argsz, need });
    }
    Ok(argsz)
}

/// Decodes the body of a message whose header passed `check_header`. Fds not kept by the request
/// are closed when this returns.
pub fn decode_request<'a>(
    header: &Header,
    body: &'a [u8],
    fds: Vec<OwnedFd>,
) -> Result<Request<'a>, DecodeError> {
    let command = header.command.get();
    let command = VfioUserCommand::from_u16(command).ok_or(DecodeError::UnknownCommand(command))?;
    if body.len() > MAX_BODY_SIZE {
        return Err(DecodeError::TooLarge(body.len()));
    }
    if fds.len() > MAX_MSG_FDS {
        return Err(DecodeError::TooManyFds {
            got: fds.len(),
            allowed: MAX_MSG_FDS,
        });
    }
    match command {
        VfioUserCommand::Version => {
            no_fds(&fds)?;
            decode_version(body)
        }
        VfioUserCommand::DmaMap => {
            let map = fixed::<DmaMap>(command, body)?;
            if fds.len() > 1 {
                return Err(DecodeError::TooManyFds {
                    got: fds.len(),
                    allowed: 1,
                });
            }
            Ok(Request::DmaMap {
                map,
                fd: fds.into_iter().next(),
            })
        }
        VfioUserCommand::DmaUnmap => {
            no_fds(&fds)?;
            let unmap = fixed::<DmaUnmap>(command, body)?;
            argsz_at_least::<DmaUnmap>(unmap.argsz)?;
            Ok(Request::DmaUnmap(unmap))
        }
        VfioUserCommand::DeviceGetInfo
        | VfioUserCommand::DeviceGetRegionIoFds
        | VfioUserCommand::DeviceGetIrqInfo => {
            no_fds(&fds)?;
            let head = fixed::<InfoHead>(command, body)?;
            let argsz = argsz_at_least::<InfoHead>(head.argsz)?;
            let index = head.index.get();
            Ok(match command {
                VfioUserCommand::DeviceGetInfo => Request::DeviceGetInfo { argsz },
                VfioUserCommand::DeviceGetRegionIoFds => {
                    Request::DeviceGetRegionIoFds { argsz, index }
                }
                _ => Request::DeviceGetIrqInfo { argsz, index },
            })
        }
        VfioUserCommand::DeviceGetRegionInfo => {
            no_fds(&fds)?;
            let head = fixed::<RegionInfoHead>(command, body)?;
            let argsz = argsz_at_least::<RegionInfoHead>(head.argsz)?;
            Ok(Request::DeviceGetRegionInfo {
                argsz,
                index: head.index.get(),
            })
        }
        VfioUserCommand::DeviceSetIrqs => {
            let args = fixed::<SetIrqs>(command, body)?;
            let action = decode_set_irqs(&args, &body[size_of::<SetIrqs>()..], fds)?;
            Ok(Request::DeviceSetIrqs {
                index: args.index.get(),
                action,
            })
        }
        VfioUserCommand::RegionRead => {
            no_fds(&fds)?;
            let access = fixed::<RegionAccess>(command, body)?;
            if access.count.get() > MAX_DATA_XFER_SIZE {
                return Err(DecodeError::CountTooLarge(access.count.get()));
            }
            Ok(Request::RegionRead(access))
        }
        VfioUserCommand::RegionWrite => {
            no_fds(&fds)?;
            let access = fixed::<RegionAccess>(command, body)?;
            let count = access.count.get();
            if count > MAX_DATA_XFER_SIZE {
                return Err(DecodeError::CountTooLarge(count));
            }
            let data = &body[size_of::<RegionAccess>()..];
            if data.len() != count as usize {
                return Err(DecodeError::BadLength {
                    command,
                    got: body.len(),
                    need: size_of::<RegionAccess>() + count as usize,
                });
            }
            Ok(Request::RegionWrite { access, data })
        }
        VfioUserCommand::DeviceReset => {
            no_fds(&fds)?;
            Ok(Request::DeviceReset)
        }
    }
}

fn decode_version(body: &[u8]) -> Result<Request<'static>, DecodeError> {
    let (version, json) = Version::read_from_prefix(body).map_err(|_| DecodeError::BadLength {
        command: VfioUserCommand::Version,
        got: body.len(),
        need: size_of::<Version>(),
    })?;
    let (major, minor) = (version.major.get(), version.minor.get());
    if major != 0 {
        return Err(DecodeError::Version(major));
    }
    let caps = match json {
        [] => ClientCaps::default(),
        [json @ .., 0] => parse_capabilities(json)?,
        _ => return Err(CapabilitiesError::NotTerminated.into()),
    };
    Ok(Request::Version { major, minor, caps })
}

fn parse_capabilities(json: &[u8]) -> Result<ClientCaps, CapabilitiesError> {
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| CapabilitiesError::Json {
            line: e.line(),
            column: e.column(),
        })?;
    let object = value.as_object().ok_or(CapabilitiesError::NotAnObject)?;
    let mut caps = ClientCaps::default();
    let Some(capabilities) = object.get("capabilities") else {
        return Ok(caps);
    };
    let capabilities = capabilities
        .as_object()
        .ok_or(CapabilitiesError::CapabilitiesNotAnObject)?;
    let number = |name: &'static str| -> Result<Option<u32>, CapabilitiesError> {
        capabilities
            .get(name)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or(CapabilitiesError::NotU32(name))
            })
            .transpose()
    };
    if let Some(n) = number("max_msg_fds")? {
        caps.max_msg_fds = n;
    }
    if let Some(n) = number("max_data_xfer_size")? {
        caps.max_data_xfer_size = n;
    }
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    fn message(command: u16, flags: u32, body: &[u8]) -> Vec<u8> {
        let header = Header {
            message_id: 7.into(),
            command: command.into(),
            message_size: ((HEADER_SIZE + body.len()) as u32).into(),
            flags: flags.into(),
            error: 0.into(),
        };
        [header.as_bytes(), body].concat()
    }

    fn decode_err(bytes: &[u8]) -> DecodeError {
        match decode_message(bytes, vec![]) {
            Err(MessageError::Decode(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn version_with_qemu_capabilities() {
        let mut body = vec![0, 0, 0, 0];
        body.extend_from_slice(br#"{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"migration":{"pgsize":4096,"max_bitmap_size":1048576},"write_multiple":true}}"#);
        body.push(0);
        let bytes = message(1, 0, &body);
        let (header, request) = decode_message(&bytes, vec![]).unwrap();
        assert_eq!(header.message_id.get(), 7);
        assert!(matches!(
            request,
            Request::Version {
                major: 0,
                minor: 0,
                caps: ClientCaps {
                    max_msg_fds: 16,
                    max_data_xfer_size: 1048576
                }
            }
        ));
    }

    #[test]
    fn version_errors() {
        assert_eq!(
            decode_err(&message(1, 0, &[1, 0, 0, 0])).errno(),
            libc::ENOTSUP
        );
        assert!(matches!(
            decode_err(&message(1, 0, b"\0\0\0\0{}")),
            DecodeError::Capabilities(CapabilitiesError::NotTerminated)
        ));
        assert!(matches!(
            decode_err(&message(1, 0, b"\0\0\0\0{\0")),
            DecodeError::Capabilities(CapabilitiesError::Json { .. })
        ));
        assert!(matches!(
            decode_err(&message(
                1,
                0,
                b"\0\0\0\0{\"capabilities\":{\"max_msg_fds\":-1}}\0"
            )),
            DecodeError::Capabilities(CapabilitiesError::NotU32("max_msg_fds"))
        ));
    }

    #[test]
    fn unknown_command_is_enosys() {
        assert_eq!(decode_err(&message(99, 0, &[])).errno(), libc::ENOSYS);
        assert_eq!(decode_err(&message(11, 0, &[])).errno(), libc::ENOSYS);
    }

    #[test]
    fn framing_errors() {
        assert!(matches!(
            decode_message(&[0; 8], vec![]),
            Err(MessageError::ShortHeader)
        ));
        let mut bytes = message(4, 0, &[]);
        bytes[4] = 8;
        assert!(matches!(
            decode_message(&bytes, vec![]),
            Err(MessageError::Framing(FramingError::TooShort(8)))
        ));
        assert!(matches!(
            decode_message(&message(4, 1, &[0; 16]), vec![]),
            Err(MessageError::Framing(FramingError::NotACommand(1)))
        ));
        let mut bytes = message(4, 0, &[0; 16]);
        bytes.pop();
        assert!(matches!(
            decode_message(&bytes, vec![]),
            Err(MessageError::ShortBody { .. })
        ));
    }

    #[test]
    fn short_bodies_and_small_argsz_are_einval() {
        assert_eq!(decode_err(&message(2, 0, &[0; 31])).errno(), libc::EINVAL);
        assert!(matches!(
            decode_err(&message(
                4,
                0,
                &[8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
            )),
            DecodeError::ArgszTooSmall { argsz: 8, need: 16 }
        ));
        let mut region_info = [0u8; 32];
        region_info[0] = 16;
        assert!(matches!(
            decode_err(&message(5, 0, &region_info)),
            DecodeError::ArgszTooSmall {
                argsz: 16,
                need: 32
            }
        ));
    }

    #[test]
    fn region_write_length_must_match_count() {
        let access = RegionAccess {
            count: 4.into(),
            ..Default::default()
        };
        let mut body = [access.as_bytes(), &[1, 2, 3]].concat();
        assert!(matches!(
            decode_err(&message(10, 0, &body)),
            DecodeError::BadLength { .. }
        ));
        body.push(4);
        let bytes = message(10, 0, &body);
        let (_, request) = decode_message(&bytes, vec![]).unwrap();
        assert!(matches!(request, Request::RegionWrite { data, .. } if data == [1, 2, 3, 4]));
    }

    #[test]
    fn oversized_read_is_e2big() {
        let access = RegionAccess {
            count: (MAX_DATA_XFER_SIZE + 1).into(),
            ..Default::default()
        };
        assert_eq!(
            decode_err(&message(9, 0, access.as_bytes())).errno(),
            libc::E2BIG
        );
    }

    #[test]
    fn fds_where_none_belong_are_einval() {
        let fd = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        match decode_message(&message(13, 0, &[]), vec![fd]) {
            Err(MessageError::Decode(e)) => {
                assert_eq!(e, DecodeError::TooManyFds { got: 1, allowed: 0 })
            }
            other => panic!("{other:?}"),
        }
    }
}
