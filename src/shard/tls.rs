//! TLS record I/O of one connection: ciphertext moves through the same raw non-blocking
//! calls as a plain socket (the ring only says when), rustls decrypts into the shard's
//! shared read buffer and encrypts the outbound queue in vectored batches.
//!
//! Owns: nothing; functions over a connection's `rustls::ServerConnection`. Must not
//! touch: other connections. Runs on: the connection's shard.

use super::sys::ReadOutcome;
use bytes::Bytes;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::RawFd;

/// A socket as `Read`/`Write` for rustls: a full or empty socket is `WouldBlock`.
pub struct FdIo(pub RawFd);

impl Read for FdIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match super::sys::recv(self.0, buf)? {
            ReadOutcome::Data(n) => Ok(n),
            ReadOutcome::Eof => Ok(0),
            ReadOutcome::WouldBlock => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for FdIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match super::sys::send(self.0, buf)? {
            0 if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // rustls hands over its queued records as separate slices: one sendmsg for all.
        if bufs.is_empty() {
            return Ok(0);
        }
        // SAFETY: IoSlice is ABI-compatible with iovec; a zeroed msghdr is valid.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        header.msg_iovlen = bufs.len().min(1024) as _;
        loop {
            // SAFETY: header and the slices it points to are valid for the call.
            let n = unsafe { libc::sendmsg(self.0, &header, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads decrypted bytes into `out`: first what rustls already holds, then from the
/// socket. `Data(n)` plaintext; `WouldBlock` nothing more now; `Eof` closed (cleanly or
/// not). `ciphertext` counts socket bytes read. A TLS error (bad record, alert) is `Err`;
/// rustls may have queued an alert, which the next flush sends.
pub fn read_plain(session: &mut rustls::ServerConnection, fd: RawFd, out: &mut [u8], ciphertext: &mut u64) -> io::Result<ReadOutcome> {
    loop {
        match session.reader().read(out) {
            Ok(0) => return Ok(ReadOutcome::Eof),
            Ok(n) => return Ok(ReadOutcome::Data(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(ReadOutcome::Eof),
            Err(e) => return Err(e),
        }
        match session.read_tls(&mut FdIo(fd)) {
            Ok(0) => return Ok(ReadOutcome::Eof),
            Ok(n) => *ciphertext += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadOutcome::WouldBlock),
            Err(e) => return Err(e),
        }
        if let Err(e) = session.process_new_packets() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
}

/// What one TLS flush step did.
pub enum TlsFlushed {
    /// Everything (queue and records) is on the wire.
    Empty,
    /// The socket is full.
    Blocked,
    Failed,
}

/// Encrypts the queued frames (from `offset` into the head) and writes the records.
/// Calls `advance(n)` for every `n` plaintext bytes taken from the queue and
/// `wrote(n)` for every `n` ciphertext bytes on the wire.
pub fn flush(
    session: &mut rustls::ServerConnection,
    fd: RawFd,
    queue: &mut VecDeque<Bytes>,
    offset: &mut usize,
    iovecs_max: usize,
    mut advance: impl FnMut(&mut VecDeque<Bytes>, &mut usize, usize),
    mut wrote: impl FnMut(usize),
) -> TlsFlushed {
    const IOVECS_STACK_MAX: usize = 64;
    loop {
        while session.wants_write() {
            match session.write_tls(&mut FdIo(fd)) {
                Ok(n) => wrote(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return TlsFlushed::Blocked,
                Err(_) => return TlsFlushed::Failed,
            }
        }
        if queue.is_empty() {
            return TlsFlushed::Empty;
        }
        let taken = {
            let mut slices: [IoSlice<'_>; IOVECS_STACK_MAX] = [IoSlice::new(&[]); IOVECS_STACK_MAX];
            let mut count = 0;
            for (i, frame) in queue.iter().take(iovecs_max.min(IOVECS_STACK_MAX)).enumerate() {
                slices[count] = IoSlice::new(if i == 0 { &frame[*offset..] } else { &frame[..] });
                count += 1;
            }
            match session.writer().write_vectored(&slices[..count]) {
                Ok(n) => n,
                Err(_) => return TlsFlushed::Failed,
            }
        };
        if taken == 0 && !session.wants_write() {
            // Nothing accepted and nothing to send: rustls is not ready (cannot happen
            // after the handshake); leave the queue for the next flush.
            return TlsFlushed::Empty;
        }
        advance(queue, offset, taken);
    }
}
