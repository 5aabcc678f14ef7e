//! The control socket's transport: a UNIX listener and its connections, each carrying
//! line-delimited requests and replies. What a request means is the caller's business.
//!
//! Everything is non-blocking and served from the main loop: a slow or silent client holds
//! only its own connection.

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

struct ControlConnection {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Close once the output is written (after an oversized request or the peer's EOF).
    closing: bool,
}

pub struct ControlSocket {
    _socket: BoundSocket,
    listener: UnixListener,
    connections: Vec<Option<ControlConnection>>,
    first_token: usize,
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
        })
    }

    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.first_token && token.0 <= self.first_token + self.connections.len()
    }

    /// Serves `token`'s readiness: accepts connections, or answers every complete request line
    /// of one connection with `handle(line)`.
    pub fn ready(
        &mut self,
        registry: &Registry,
        token: Token,
        mut handle: impl FnMut(Result<&str, LineError>) -> String,
    ) -> io::Result<()> {
        if token.0 == self.first_token {
            return self.accept(registry);
        }
        let index = token.0 - self.first_token - 1;
        let Some(Some(connection)) = self.connections.get_mut(index) else {
            return Ok(());
        };
        let open = connection.serve(&mut handle);
        if !open {
            if let Some(mut connection) = self.connections[index].take() {
                let _ = registry.deregister(&mut connection.stream);
            }
        }
        Ok(())
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
                stream,
                input: Vec::new(),
                output: Vec::new(),
                closing: false,
            });
        }
    }
}

impl ControlConnection {
    /// Reads what is there, answers complete lines, writes what it can; false once the
    /// connection is finished.
    fn serve(&mut self, handle: &mut impl FnMut(Result<&str, LineError>) -> String) -> bool {
        let mut chunk = [0u8; 4096];
        while !self.closing {
            match self.stream.read(&mut chunk) {
                Ok(0) => self.closing = true,
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
            while let Some(end) = self.input.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.input.drain(..=end).collect();
                let reply = match std::str::from_utf8(&line[..end]) {
                    Ok(text) => handle(Ok(text.trim_end_matches('\r'))),
                    Err(_) => handle(Err(LineError::NotUtf8)),
                };
                self.output.extend_from_slice(reply.as_bytes());
                self.output.push(b'\n');
            }
            if self.input.len() > MAX_REQUEST {
                let reply = handle(Err(LineError::TooLong));
                self.output.extend_from_slice(reply.as_bytes());
                self.output.push(b'\n');
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
        !self.closing
    }
}
