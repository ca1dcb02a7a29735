//! A client connection's byte stream: plain TCP or TLS (rustls), non-blocking.
//!
//! Writes never block and never fail with `WouldBlock`: what the socket does not
//! take is kept in an output buffer (bounded by `max_out`; past it the write fails
//! and the connection is dropped), flushed when the socket turns writable. So the
//! HTTP and WebSocket layers above never hold half-written frames. Reads return
//! `WouldBlock` when nothing is buffered, `Ok(0)` at end of stream.

use std::io::{self, Read, Write};

use mio::net::TcpStream;

/// Plain or TLS.
pub struct Transport {
    sock: TcpStream,
    tls: Option<Box<rustls::ServerConnection>>,
    /// Plain mode's unsent bytes (TLS keeps its own in rustls).
    out: Vec<u8>,
    max_out: usize,
}

impl Transport {
    /// A plain connection.
    pub fn plain(sock: TcpStream, max_out: usize) -> Self {
        Self {
            sock,
            tls: None,
            out: Vec::new(),
            max_out,
        }
    }

    /// A TLS connection (handshake driven by reads and flushes).
    pub fn tls(sock: TcpStream, conn: rustls::ServerConnection, max_out: usize) -> Self {
        let mut conn = conn;
        conn.set_buffer_limit(Some(max_out));
        Self {
            sock,
            tls: Some(Box::new(conn)),
            out: Vec::new(),
            max_out,
        }
    }

    /// The socket, for (de)registration.
    pub fn socket(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    /// Whether this is TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Bytes waiting to be sent.
    pub fn has_pending_output(&self) -> bool {
        match &self.tls {
            Some(t) => t.wants_write(),
            None => !self.out.is_empty(),
        }
    }

    /// Sends what the socket takes now. `Ok` even when some stays buffered.
    pub fn flush_out(&mut self) -> io::Result<()> {
        match &mut self.tls {
            Some(t) => {
                while t.wants_write() {
                    match t.write_tls(&mut self.sock) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            None => {
                while !self.out.is_empty() {
                    match self.sock.write(&self.out) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => {
                            self.out.drain(..n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
        }
    }

    /// Closes the write side once everything is flushed (TLS: close_notify first).
    pub fn send_close_notify(&mut self) {
        if let Some(t) = &mut self.tls {
            t.send_close_notify();
        }
    }

    /// Shuts the TCP write side.
    pub fn shutdown_write(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(t) = &mut self.tls else {
            return self.sock.read(buf);
        };
        loop {
            match t.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match t.read_tls(&mut self.sock) {
                Ok(0) => return Ok(0),
                Ok(_) => {
                    if let Err(e) = t.process_new_packets() {
                        // Tell the peer why (the alert is queued by rustls), then fail.
                        let _ = t.write_tls(&mut self.sock);
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    // Handshake messages and key updates go out at once.
                    while t.wants_write() {
                        match t.write_tls(&mut self.sock) {
                            Ok(_) => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.tls {
            Some(t) => {
                let n = t.writer().write(buf)?;
                if n < buf.len() {
                    return Err(io::Error::other("connection output buffer full"));
                }
                self.flush_out()?;
                Ok(n)
            }
            None => {
                if self.out.len() + buf.len() > self.max_out {
                    return Err(io::Error::other("connection output buffer full"));
                }
                self.out.extend_from_slice(buf);
                self.flush_out()?;
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_out()
    }
}
