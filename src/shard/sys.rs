//! Raw non-blocking socket calls. The ring tells us *when* a socket is ready (a poll
//! op, or epoll in the fallback); these calls move the bytes, so an idle connection
//! holds no buffer and reads land in the shard's one shared buffer.

use bytes::Bytes;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

pub enum ReadOutcome {
    Data(usize),
    WouldBlock,
    Eof,
}

pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<ReadOutcome> {
    loop {
        // SAFETY: buf is a valid writable region of buf.len() bytes for the call.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n > 0 {
            return Ok(ReadOutcome::Data(n as usize));
        }
        if n == 0 {
            return Ok(ReadOutcome::Eof);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => return Ok(ReadOutcome::WouldBlock),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(err),
        }
    }
}

/// Sends as much of `queue` (starting `offset` bytes into its head) as the socket takes
/// in one vectored call of at most `iovecs_max` buffers. Returns bytes written; 0 with
/// `Ok` means the socket would block.
pub fn send_queue(fd: RawFd, queue: &VecDeque<Bytes>, offset: usize, iovecs_max: usize) -> io::Result<usize> {
    const IOVECS_STACK_MAX: usize = 64;
    let mut iovecs: [libc::iovec; IOVECS_STACK_MAX] =
        [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; IOVECS_STACK_MAX];
    let limit = iovecs_max.min(IOVECS_STACK_MAX);
    let mut count = 0;
    for (i, frame) in queue.iter().take(limit).enumerate() {
        let bytes = if i == 0 { &frame[offset..] } else { &frame[..] };
        iovecs[count] = libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() };
        count += 1;
    }
    if count == 0 {
        return Ok(0);
    }
    // SAFETY: a zeroed msghdr is valid; iovecs point into Bytes alive for the call.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = iovecs.as_mut_ptr();
    header.msg_iovlen = count as _;
    // SAFETY: header and the iovecs it points to are valid for the call.
    retry_send(|| unsafe { libc::sendmsg(fd, &header, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) })
}

/// Runs a send call until it is not interrupted; a full socket is `Ok(0)`.
fn retry_send(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => return Ok(0),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(err),
        }
    }
}

/// Sends a small control buffer (HTTP responses) directly; returns bytes written.
pub fn send(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: bytes is a valid readable region of bytes.len() for the call.
    retry_send(|| unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) })
}

/// Wakes a reader parked on this socket (it sees EOF) without closing the descriptor,
/// which the owning task still holds.
pub fn shutdown(fd: RawFd) {
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}
