//! The control socket's transport: a UNIX listener and its connections, each carrying
//! line-delimited requests and replies. What a request means is the caller's business.
//!
//! Everything is non-blocking and served from the main loop: a slow or silent client holds
//! only its own connection. A request may be answered later (`ControlReply::Later`, then `deliver`):
//! its connection waits for that reply before its next request is read, so replies keep the
//! order of the requests, while other connections and the main loop go on.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use vfio_user_server::{BoundSocket, SocketAccess, SocketPathError};

/// Longest request line; a longer one is answered with an error and the connection closed.
pub const MAX_REQUEST: usize = 64 * 1024;

/// A request line that cannot be a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("the request is longer than {MAX_REQUEST} bytes")]
    TooLong,
    #[error("the request is not UTF-8")]
    NotUtf8,
}

/// What a request handler makes of a request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlReply {
    /// The reply line.
    Now(String),
    /// The reply comes through `ControlSocket::deliver`.
    Later,
}

/// A control connection, for a reply that comes later; never reused, so a reply for a
/// connection that closed meanwhile goes nowhere rather than to the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionId(u64);

struct ControlConnection {
    id: ConnectionId,
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Close once the output is written (after an oversized request or the peer's EOF).
    closing: bool,
    /// A request's reply comes later; the lines after it wait.
    awaiting: bool,
}

pub struct ControlSocket {
    _socket: BoundSocket,
    listener: UnixListener,
    connections: Vec<Option<ControlConnection>>,
    first_token: usize,
    next_id: u64,
}

/// Tokens from `first_token` on belong to the control socket: the listener first, then its
/// connections.
impl ControlSocket {
    pub fn bind(
        path: &Path,
        access: &SocketAccess,
        registry: &Registry,
        first_token: usize,
    ) -> Result<ControlSocket, SocketPathError> {
        let (socket, listener) = BoundSocket::bind(path, access)?;
        let mut listener = UnixListener::from_std(listener);
        registry
            .register(&mut listener, Token(first_token), Interest::READABLE)
            .map_err(|source| SocketPathError::Io {
                path: PathBuf::from(path),
                source,
            })?;
        Ok(ControlSocket {
            _socket: socket,
            listener,
            connections: Vec::new(),
            first_token,
            next_id: 0,
        })
    }

    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.first_token && token.0 <= self.first_token + self.connections.len()
    }

    /// Serves `token`'s readiness: accepts connections, or answers every complete request line
    /// of one connection with `handle(connection, line)`.
    pub fn ready(
        &mut self,
        registry: &Registry,
        token: Token,
        mut handle: impl FnMut(ConnectionId, Result<&str, LineError>) -> ControlReply,
    ) -> io::Result<()> {
        if token.0 == self.first_token {
            return self.accept(registry);
        }
        self.serve(registry, token.0 - self.first_token - 1, &mut handle);
        Ok(())
    }

    /// Sends the reply `connection` was waiting for, then serves the requests that waited
    /// behind it. A connection that has gone is not an error: its reply is dropped.
    pub fn deliver(
        &mut self,
        registry: &Registry,
        connection: ConnectionId,
        reply: &str,
        mut handle: impl FnMut(ConnectionId, Result<&str, LineError>) -> ControlReply,
    ) {
        let found = self
            .connections
            .iter_mut()
            .enumerate()
            .find_map(|(index, slot)| match slot {
                Some(open) if open.id == connection && open.awaiting => Some((index, open)),
                _ => None,
            });
        let Some((index, open)) = found else {
            return;
        };
        open.awaiting = false;
        open.output.extend_from_slice(reply.as_bytes());
        open.output.push(b'\n');
        self.serve(registry, index, &mut handle);
    }

    fn serve(
        &mut self,
        registry: &Registry,
        index: usize,
        handle: &mut impl FnMut(ConnectionId, Result<&str, LineError>) -> ControlReply,
    ) {
        let Some(Some(connection)) = self.connections.get_mut(index) else {
            return;
        };
        if !connection.serve(handle) {
            if let Some(mut connection) = self.connections[index].take() {
                let _ = registry.deregister(&mut connection.stream);
            }
        }
    }

    fn accept(&mut self, registry: &Registry) -> io::Result<()> {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let index = match self.connections.iter().position(Option::is_none) {
                Some(index) => index,
                None => {
                    self.connections.push(None);
                    self.connections.len() - 1
                }
            };
            registry.register(
                &mut stream,
                Token(self.first_token + 1 + index),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            self.connections[index] = Some(ControlConnection {
                id: ConnectionId(self.next_id),
                stream,
                input: Vec::new(),
                output: Vec::new(),
                closing: false,
                awaiting: false,
            });
            self.next_id += 1;
        }
    }
}

impl ControlConnection {
    /// Reads what is there, answers complete lines, writes what it can; false once the
    /// connection is finished.
    fn serve(
        &mut self,
        handle: &mut impl FnMut(ConnectionId, Result<&str, LineError>) -> ControlReply,
    ) -> bool {
        let mut chunk = [0u8; 4096];
        // Lines read while a reply was awaited.
        self.answer_lines(handle);
        while !self.closing {
            // While a reply is awaited, a client sending more than a request's worth is not
            // read on: the socket's buffer holds the rest.
            if self.awaiting && self.input.len() > MAX_REQUEST {
                break;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => self.closing = true,
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
            self.answer_lines(handle);
            if !self.awaiting && self.input.len() > MAX_REQUEST {
                if let ControlReply::Now(reply) = handle(self.id, Err(LineError::TooLong)) {
                    self.output.extend_from_slice(reply.as_bytes());
                    self.output.push(b'\n');
                }
                self.input.clear();
                self.closing = true;
            }
        }
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        // A peer that half-closed after its request still gets the reply awaited for it.
        !self.closing || self.awaiting
    }

    /// Answers the complete lines in the input, up to one whose reply comes later.
    fn answer_lines(
        &mut self,
        handle: &mut impl FnMut(ConnectionId, Result<&str, LineError>) -> ControlReply,
    ) {
        while !self.awaiting {
            let Some(end) = self.input.iter().position(|b| *b == b'\n') else {
                return;
            };
            let line: Vec<u8> = self.input.drain(..=end).collect();
            let answer = match std::str::from_utf8(&line[..end]) {
                Ok(text) => handle(self.id, Ok(text.trim_end_matches('\r'))),
                Err(_) => handle(self.id, Err(LineError::NotUtf8)),
            };
            match answer {
                ControlReply::Now(reply) => {
                    self.output.extend_from_slice(reply.as_bytes());
                    self.output.push(b'\n');
                }
                ControlReply::Later => self.awaiting = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixStream as StdStream;
    use std::time::Duration;

    use mio::{Events, Poll};

    use super::*;

    /// Serves every event of `poll` with `handle`.
    fn serve(
        poll: &mut Poll,
        socket: &mut ControlSocket,
        handle: &mut impl FnMut(ConnectionId, Result<&str, LineError>) -> ControlReply,
    ) {
        let mut events = Events::with_capacity(8);
        poll.poll(&mut events, Some(Duration::from_millis(200)))
            .unwrap();
        for event in events.iter() {
            socket
                .ready(poll.registry(), event.token(), &mut *handle)
                .unwrap();
        }
    }

    #[test]
    fn a_reply_that_comes_later_keeps_the_order_and_holds_only_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let mut poll = Poll::new().unwrap();
        let mut socket =
            ControlSocket::bind(&path, &SocketAccess::default(), poll.registry(), 0).unwrap();
        let waiting = std::cell::Cell::new(None);
        let mut handle = |id: ConnectionId, line: Result<&str, LineError>| match line {
            Ok("wait") => {
                waiting.set(Some(id));
                ControlReply::Later
            }
            Ok(line) => ControlReply::Now(format!("re {line}")),
            Err(e) => ControlReply::Now(e.to_string()),
        };
        let slow = StdStream::connect(&path).unwrap();
        let other = StdStream::connect(&path).unwrap();
        for stream in [&slow, &other] {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
        }
        serve(&mut poll, &mut socket, &mut handle);
        (&slow).write_all(b"wait\nafter\n").unwrap();
        (&other).write_all(b"meanwhile\n").unwrap();
        for _ in 0..3 {
            serve(&mut poll, &mut socket, &mut handle);
        }
        let mut other_reader = BufReader::new(&other);
        let mut line = String::new();
        other_reader.read_line(&mut line).unwrap();
        assert_eq!(
            line, "re meanwhile\n",
            "another connection is served meanwhile"
        );
        slow.set_nonblocking(true).unwrap();
        let mut early = [0u8; 16];
        assert!(
            (&slow).read(&mut early).is_err(),
            "nothing before the awaited reply"
        );
        slow.set_nonblocking(false).unwrap();

        let id = waiting.get().expect("the request that waits");
        socket.deliver(poll.registry(), id, "done", &mut handle);
        let mut slow_reader = BufReader::new(&slow);
        for expected in ["done\n", "re after\n"] {
            line.clear();
            slow_reader.read_line(&mut line).unwrap();
            assert_eq!(line, expected);
        }
        // A connection that has gone, or that waits for nothing, gets nothing.
        socket.deliver(poll.registry(), id, "again", &mut handle);
        drop(slow_reader);
        drop(slow);
        serve(&mut poll, &mut socket, &mut handle);
        socket.deliver(poll.registry(), id, "gone", &mut handle);
    }
}
