//! A hand-rolled client that sends any bytes and fds, for malformed-input tests.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

pub const REPLY: u32 = 1;
pub const NO_REPLY: u32 = 1 << 4;
pub const ERROR: u32 = 1 << 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHeader {
    pub id: u16,
    pub command: u16,
    pub size: u32,
    pub flags: u32,
    pub error: u32,
}

#[derive(Debug)]
pub struct RawReply {
    pub header: RawHeader,
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

pub struct RawClient {
    pub stream: UnixStream,
    next_id: u16,
}

pub fn header_bytes(id: u16, command: u16, size: u32, flags: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&command.to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b
}

impl RawClient {
    pub fn connect(path: &Path) -> RawClient {
        let stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        RawClient {
            stream,
            next_id: 100,
        }
    }

    /// Connects and negotiates VERSION.
    pub fn negotiated(path: &Path) -> RawClient {
        let mut client = RawClient::connect(path);
        let mut body = vec![0, 0, 0, 0];
        body.extend_from_slice(
            b"{\"capabilities\":{\"max_msg_fds\":16,\"max_data_xfer_size\":1048576}}\0",
        );
        let reply = client.request(1, &body, &[]);
        assert_eq!(reply.header.flags, REPLY, "{reply:?}");
        client
    }

    /// Sends one message and returns its id.
    pub fn send(&mut self, command: u16, flags: u32, body: &[u8], fds: &[RawFd]) -> u16 {
        let id = self.next_id;
        self.next_id += 1;
        let mut bytes = header_bytes(id, command, (16 + body.len()) as u32, flags);
        bytes.extend_from_slice(body);
        if fds.is_empty() {
            self.stream.write_all(&bytes).unwrap();
        } else {
            let sent = self.stream.send_with_fds(&[&bytes[..]], fds).unwrap();
            assert_eq!(sent, bytes.len());
        }
        id
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads one whole reply with its fds.
    pub fn receive(&mut self) -> RawReply {
        let mut head = [0u8; 16];
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: head.as_mut_ptr().cast(),
            iov_len: 16,
        };
        // SAFETY: zeroed msghdr is valid; pointers are to live buffers of the stated sizes.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: as above; MSG_WAITALL fills the 16 bytes or fails.
        let n = unsafe { libc::recvmsg(self.stream.as_raw_fd(), &mut msg, libc::MSG_WAITALL) };
        assert_eq!(
            n,
            16,
            "short reply header: {n} ({})",
            std::io::Error::last_os_error()
        );
        let mut fds = Vec::new();
        // SAFETY: msg was filled by recvmsg.
        let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        if !cmsg.is_null() {
            // SAFETY: cmsg points into `control`.
            let count = unsafe { ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4 };
            for i in 0..count {
                // SAFETY: i < count; the kernel installed these fds for us.
                fds.push(unsafe {
                    OwnedFd::from_raw_fd(
                        libc::CMSG_DATA(cmsg)
                            .cast::<RawFd>()
                            .add(i)
                            .read_unaligned(),
                    )
                });
            }
        }
        let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(head[o..o + 4].try_into().unwrap());
        let header = RawHeader {
            id: u16_at(0),
            command: u16_at(2),
            size: u32_at(4),
            flags: u32_at(8),
            error: u32_at(12),
        };
        let mut body = vec![0u8; header.size as usize - 16];
        self.stream.read_exact(&mut body).unwrap();
        RawReply { header, body, fds }
    }

    pub fn request(&mut self, command: u16, body: &[u8], fds: &[RawFd]) -> RawReply {
        let id = self.send(command, 0, body, fds);
        let reply = self.receive();
        assert_eq!(reply.header.id, id);
        assert_eq!(reply.header.command, command);
        reply
    }

    /// Sends a request and asserts it fails with `errno`.
    pub fn expect_error(&mut self, command: u16, body: &[u8], fds: &[RawFd], errno: i32) {
        let reply = self.request(command, body, fds);
        assert_eq!(reply.header.flags, REPLY | ERROR, "{reply:?}");
        assert_eq!(reply.header.error, errno as u32, "{reply:?}");
        assert!(reply.body.is_empty());
        assert!(reply.fds.is_empty());
    }

    /// Asserts that the stream is still in sync: GET_INFO gets its normal reply.
    pub fn assert_in_sync(&mut self) {
        let reply = self.request(4, &le(&[16, 0, 0, 0]), &[]);
        assert_eq!(reply.header.flags, REPLY, "{reply:?}");
        assert_eq!(reply.body.len(), 16);
        assert_eq!(u32::from_le_bytes(reply.body[8..12].try_into().unwrap()), 9);
    }

    /// True once the server has closed the connection.
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0))
    }
}

/// u32 fields, little-endian.
pub fn le(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// A REGION_READ/REGION_WRITE head.
pub fn access(offset: u64, region: u32, count: u32) -> Vec<u8> {
    let mut b = offset.to_le_bytes().to_vec();
    b.extend_from_slice(&region.to_le_bytes());
    b.extend_from_slice(&count.to_le_bytes());
    b
}
